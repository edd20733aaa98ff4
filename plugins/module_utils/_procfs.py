# Copyright (c) 2026, netstate.tcp contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The /proc/net/tcp{,6} fallback: one line parser yielding the socket records of ``_netlink``.

Used where netlink sock_diag is refused (some containers, old kernels, seccomp).
The file is the kernel's tcp4_seq_show()/tcp6_seq_show() text; each field is
mapped to what inet_diag reports for the same socket, so a consumer cannot
tell the sources apart except for what the file lacks:

- R_COOKIE is None (the file shows no socket cookie);
- R_WQUEUE of a LISTEN socket is 0 (the file shows no backlog);
- R_EXPIRES has the file's resolution (USER_HZ ticks, 10 ms) and R_ATTRS is None.

Malformed lines are skipped, counted, and reported as one warning per file.
"""

from __future__ import annotations

import os
import socket
import struct

from ansible_collections.netstate.tcp.plugins.module_utils._netlink import (
    ALL_STATES_MASK,
    ST_NEW_SYN_RECV,
    family_number,
)

PROC = "/proc"
BATCH_LINES = 512
# tm->when is printed in clock_t ticks (jiffies_delta_to_clock_t): USER_HZ, which sysconf calls CLK_TCK.
USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# The file prints each 32-bit word of an address as a native-endian integer in hex.
_V4_WORD = struct.Struct("=I")
_V6_WORDS_NATIVE = struct.Struct("=4I")
_V6_WORDS_TEXT = struct.Struct(">4I")


def _v4_address(hexstr):
    if len(hexstr) != 8:
        raise ValueError(f"IPv4 address {hexstr[:40]!r} is not 8 hex digits")
    return _V4_WORD.pack(int(hexstr, 16))


def _v6_address(hexstr):
    if len(hexstr) != 32:
        raise ValueError(f"IPv6 address {hexstr[:40]!r} is not 32 hex digits")
    return _V6_WORDS_NATIVE.pack(*_V6_WORDS_TEXT.unpack(bytes.fromhex(hexstr)))


def _probe_count(timer, retransmits, probes):
    """idiag_retrans as inet_diag reports it for this timer (inet_sk_diag_fill).

    Column 7 (``retrnsmt``) is icsk_retransmits, column 9 (``timeout``) is
    icsk_probes_out; inet_diag reports retransmits with the retransmit timer (1),
    probes with the keepalive (2) and zero-window probe (4) timers, and 0 else.
    """
    if timer == 1:
        return retransmits
    if timer in (2, 4):
        return probes
    return 0


def parse_line(fields, address):
    """One split line -> record tuple; ValueError/IndexError when malformed."""
    src_hex, sport_hex = fields[1].split(":")
    dst_hex, dport_hex = fields[2].split(":")
    state = int(fields[3], 16)
    tx_hex, rx_hex = fields[4].split(":")
    timer_hex, when_hex = fields[5].split(":")
    wq, rq, timer, when = int(tx_hex, 16), int(rx_hex, 16), int(timer_hex, 16), int(when_hex, 16)
    retransmits, uid, probes, inode = int(fields[6], 16), int(fields[7]), int(fields[8]), int(fields[9])
    sport, dport = int(sport_hex, 16), int(dport_hex, 16)
    if not 0 < state <= ST_NEW_SYN_RECV or not 0 <= timer <= 255 or max(sport, dport) > 0xFFFF:
        raise ValueError("field out of range")
    if min(wq, rq, when, retransmits, uid, probes, inode, sport, dport) < 0:
        raise ValueError("negative field")
    return (
        state,
        address(src_hex),
        sport,
        address(dst_hex),
        dport,
        rq,
        wq,
        timer,
        _probe_count(timer, retransmits, probes),
        when * 1000 // USER_HZ,
        uid,
        inode,
        None,
        None,
    )


def parse_record_batches(lines, family, states_mask=ALL_STATES_MASK, warnings=None, name=None):
    """Records of /proc/net/tcp or tcp6 text given line by line, in lists of up to BATCH_LINES.

    Sockets whose state is not in ``states_mask`` are left out.  Malformed lines
    are skipped; their number and the first one are appended to ``warnings``
    (a list) as one warning naming the file (``name``, else the family's path).

    radon grades this loop above C on purpose: it is the procfs hot loop (one pass
    per socket line) and mirrors the netlink decoder's batching.
    """
    v4 = family_number(family) == socket.AF_INET
    address = _v4_address if v4 else _v6_address
    name = name or os.path.join(PROC, "net", "tcp" if v4 else "tcp6")
    skipped = 0
    first_bad = None
    batch = []
    for lineno, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or (lineno == 1 and "local_address" in fields):
            continue  # a blank line is not a socket; the first line is the header
        try:
            record = parse_line(fields, address)
        except (ValueError, IndexError) as exc:
            skipped += 1
            if first_bad is None:
                first_bad = f"line {lineno}: {exc}"
            continue
        if states_mask & (1 << record[0]):
            batch.append(record)
            if len(batch) >= BATCH_LINES:
                yield batch
                batch = []
    if batch:
        yield batch
    if skipped and warnings is not None:
        warnings.append(f"procfs {name}: skipped {skipped} malformed line(s) (first: {first_bad})")


def iter_procfs_batches(family, states_mask=ALL_STATES_MASK, warnings=None, proc=PROC):
    """Record batches of the sockets in /proc/net/tcp (ipv4) or /proc/net/tcp6 (ipv6).

    A missing tcp6 file means IPv6 is off (no sockets); other OSErrors propagate.
    """
    v4 = family_number(family) == socket.AF_INET
    path = os.path.join(proc, "net", "tcp" if v4 else "tcp6")
    try:
        handle = open(path, encoding="ascii", errors="replace")
    except FileNotFoundError:
        if not v4:
            return
        raise
    with handle:
        yield from parse_record_batches(handle, family, states_mask, warnings, path)


def iter_procfs(family, states_mask=ALL_STATES_MASK, warnings=None, proc=PROC):
    """Records (not batches) of :func:`iter_procfs_batches`."""
    for batch in iter_procfs_batches(family, states_mask, warnings, proc):
        yield from batch
