# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Recorded netlink dumps on disk: the datagrams exactly as recv() returned them.

A ``.chunks`` file is a sequence of ``<u32 little-endian length><bytes>`` records, one per
datagram.  Used by the fixture recorders, the unit tests and the benchmarks.
"""

from __future__ import annotations

import struct

NLMSG_ERROR, NLMSG_DONE = 2, 3


def read_chunk_file(path):
    """The recorded datagrams of one dump: a list of bytes."""
    with open(path, "rb") as fh:
        data = fh.read()
    chunks, off = [], 0
    while off < len(data):
        (length,) = struct.unpack_from("<I", data, off)
        chunks.append(data[off + 4 : off + 4 + length])
        off += 4 + length
    return chunks


def write_chunk_file(path, chunks):
    with open(path, "wb") as fh:
        for chunk in chunks:
            fh.write(struct.pack("<I", len(chunk)))
            fh.write(chunk)


def until_done(chunks):
    """Copies of the datagrams up to the one holding NLMSG_DONE/NLMSG_ERROR (the decoders stop there, recv does not)."""
    out = []
    for chunk in chunks:
        out.append(bytes(chunk))
        off = 0
        while off + 16 <= len(chunk):
            length, typ = struct.unpack_from("=IH", chunk, off)
            if typ in (NLMSG_ERROR, NLMSG_DONE) or length < 16:
                return out
            off += (length + 3) & ~3
    raise SystemExit("dump ended without NLMSG_DONE")
