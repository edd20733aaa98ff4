# Copyright (c) 2026, netstate.tcp contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Netlink sock_diag transport for TCP: requests, receiving, stream decoding into socket records.

Python stdlib only (runs on managed nodes).  This module also holds the TCP
state table and the one state-name normaliser of the collection.

Socket records
--------------
Every record source (this module and ``_procfs``) yields plain tuples in the
layout of :data:`RECORD_FIELDS`; index them with the ``R_*`` constants:

====  ==========  ==================================================================
idx   name        value
====  ==========  ==================================================================
0     R_STATE     kernel state number (1..12, index into STATES is state - 1)
1     R_SRC       local address, packed network-order bytes (4 for IPv4, 16 for IPv6)
2     R_SPORT     local port (host order int)
3     R_DST       peer address, packed bytes like R_SRC
4     R_DPORT     peer port (host order int)
5     R_RQUEUE    receive queue bytes; on LISTEN the accept-queue length
6     R_WQUEUE    send queue bytes; on LISTEN the configured backlog (0 from procfs)
7     R_TIMER     idiag_timer: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe
8     R_RETRANS   idiag_retrans: retransmits (timer 1), unanswered probes (timers 2 and 4), else 0
9     R_EXPIRES   milliseconds until the timer fires
10    R_UID       owner uid
11    R_INODE     socket inode (0 for TIME_WAIT, request and orphaned sockets)
12    R_COOKIE    64-bit kernel socket cookie (int); None from procfs (the file does not show it)
13    R_ATTRS     memoryview of the netlink attributes when extensions were requested, else None
====  ==========  ==================================================================

Request sockets (half-open connections the kernel keeps as ``TCP_NEW_SYN_RECV``)
are dumped when the states mask has the NEW_SYN_RECV bit, but the kernel
reports them with state SYN_RECV (as ``ss`` shows them); :func:`state_mask`
therefore adds the NEW_SYN_RECV bit whenever SYN_RECV is asked for.

One decoding loop, :func:`decode_batches`, yields batches (one list per netlink
datagram) of raw rows: the tuples a layout from :func:`message_layouts` unpacks,
untouched.  Records are built from the rows of RECORD_LAYOUTS; a consumer that
must be as fast as a decoder fused with it (the facts aggregator) declares its
own layout and loops over the rows, so no tuple is built per socket in between.
:func:`iter_diag` flattens record batches for simple callers.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import time
from array import array

STATES = (
    "ESTABLISHED",
    "SYN_SENT",
    "SYN_RECV",
    "FIN_WAIT1",
    "FIN_WAIT2",
    "TIME_WAIT",
    "CLOSE",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LISTEN",
    "CLOSING",
    "NEW_SYN_RECV",
)
# include/net/tcp_states.h: TCP_ESTABLISHED = 1 ... TCP_NEW_SYN_RECV = 12
STATE_NUMBERS = {name: number for number, name in enumerate(STATES, 1)}
ALL_STATES_MASK = sum(1 << number for number in STATE_NUMBERS.values())
FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}

RECORD_FIELDS = (
    "state",
    "src",
    "sport",
    "dst",
    "dport",
    "rqueue",
    "wqueue",
    "timer",
    "retrans",
    "expires",
    "uid",
    "inode",
    "cookie",
    "attrs",
)
R_STATE, R_SRC, R_SPORT, R_DST, R_DPORT, R_RQUEUE, R_WQUEUE = 0, 1, 2, 3, 4, 5, 6
R_TIMER, R_RETRANS, R_EXPIRES, R_UID, R_INODE, R_COOKIE, R_ATTRS = 7, 8, 9, 10, 11, 12, 13

# Kernel ABI numbers (include/uapi/linux/{netlink,sock_diag,inet_diag}.h).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_DUMP = 0x1, 0x2, 0x300
# Set on the messages of a dump whose table changed while it was read (nl_dump_check_consistent).
NLM_F_DUMP_INTR = 0x10
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_MEMINFO, INET_DIAG_INFO = 1, 2
MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)

# ---------------------------------------------------------------------------
# Kernel structs as tables of named fields (struct module codes, no implicit padding)
# ---------------------------------------------------------------------------

NLMSGHDR_FIELDS = (
    ("nlmsg_len", "I"),
    ("nlmsg_type", "H"),
    ("nlmsg_flags", "H"),
    ("nlmsg_seq", "I"),
    ("nlmsg_pid", "I"),
)
NLMSGERR_FIELDS = (("error", "i"),)  # follows the header of NLMSG_ERROR (and of NLMSG_DONE)
RTATTR_FIELDS = (("rta_len", "H"), ("rta_type", "H"))
INET_DIAG_SOCKID_FIELDS = (
    ("idiag_sport", "H"),  # __be16: read natively here, swapped through _SWAP16
    ("idiag_dport", "H"),  # __be16
    ("idiag_src", "16s"),  # __be32[4]; IPv4 uses the first 4 bytes
    ("idiag_dst", "16s"),
    ("idiag_if", "I"),
    ("idiag_cookie", "Q"),  # __u32[2], low word first: one native u64 on little-endian hosts
)
INET_DIAG_REQ_V2_FIELDS = (
    ("sdiag_family", "B"),
    ("sdiag_protocol", "B"),
    ("idiag_ext", "B"),
    ("pad", "B"),
    ("idiag_states", "I"),
    ("id", "48s"),  # inet_diag_sockid, all zero: no socket filter
)
INET_DIAG_MSG_FIELDS = (
    ("idiag_family", "B"),
    ("idiag_state", "B"),
    ("idiag_timer", "B"),
    ("idiag_retrans", "B"),
    *INET_DIAG_SOCKID_FIELDS,
    ("idiag_expires", "I"),
    ("idiag_rqueue", "I"),
    ("idiag_wqueue", "I"),
    ("idiag_uid", "I"),
    ("idiag_inode", "I"),
)


def compile_layout(fields, keep=None, narrow=None):
    """Precompiled ``struct.Struct`` for a table of (name, code) fields in memory order.

    ``keep``: names to unpack (the others become pad bytes, so unpack returns only
    these, in memory order); ``narrow``: {name: code} reading a field with a
    smaller code of the same size (e.g. "4s12x" for an IPv4 address in 16 bytes).
    """
    narrow = narrow or {}
    codes = []
    for name, code in fields:
        if keep is not None and name not in keep:
            codes.append(f"{struct.calcsize('=' + code)}x")
            continue
        wanted = narrow.get(name, code)
        if struct.calcsize("=" + wanted) != struct.calcsize("=" + code):
            raise ValueError(f"{name}: {wanted!r} does not have the size of {code!r}")
        codes.append(wanted)
    return struct.Struct("=" + "".join(codes))


NLMSGHDR = compile_layout(NLMSGHDR_FIELDS)
NLMSGERR = compile_layout(NLMSGERR_FIELDS)
RTATTR = compile_layout(RTATTR_FIELDS)
INET_DIAG_REQ_V2 = compile_layout(INET_DIAG_REQ_V2_FIELDS)
DIAG_MSG_LEN = NLMSGHDR.size + compile_layout(INET_DIAG_MSG_FIELDS).size  # 16 + 72
# The decoder reads nlmsg_type and nlmsg_flags as one u32: a single compare against DIAG_MULTI
# then tells a plain dump message from everything else (end, error, DUMP_INTR flag, odd flags).
_HOT_HEADER_FIELDS = (("nlmsg_len", "I"), ("nlmsg_type_flags", "I"), ("nlmsg_seq", "I"), ("nlmsg_pid", "I"))
# inet_diag_dump_icsk() sends every socket with NLM_F_MULTI.
DIAG_MULTI = struct.unpack("=I", struct.pack("=HH", SOCK_DIAG_BY_FAMILY, NLM_F_MULTI))[0]


def message_layouts(keep, v4_address="4s12x", cookie="Q"):
    """(IPv4, IPv6) layouts of a sock_diag message unpacking the inet_diag_msg fields in ``keep``.

    Each unpacked row starts with nlmsg_len and nlmsg_type_flags, then the kept
    fields in memory order.  IPv4 addresses are the first 4 bytes of idiag_src/dst,
    read with ``v4_address``: "4s12x" packed bytes, "I12x" a native int (a cheaper
    dict key: see ``_socket_aggregate``).  Ports stay as read (network order in a
    native int: map them with SWAP16).  ``cookie`` reads idiag_cookie (when kept):
    "Q" the whole cookie; "B7x" only its first byte, a placeholder that keeps the
    row layout for a consumer that never reads the cookie (a small int costs no
    allocation, a 64-bit one does, once per socket).
    """
    keep = {"nlmsg_len", "nlmsg_type_flags", *keep}
    fields = _HOT_HEADER_FIELDS + INET_DIAG_MSG_FIELDS
    v4 = compile_layout(fields, keep, {"idiag_src": v4_address, "idiag_dst": v4_address, "idiag_cookie": cookie})
    return v4, compile_layout(fields, keep, {"idiag_cookie": cookie})


# Every inet_diag_msg field a record needs (rows: len, type_flags, state, timer, retrans,
# sport, dport, src, dst, cookie, expires, rqueue, wqueue, uid, inode).
RECORD_KEEP = frozenset(
    {
        "idiag_state",
        "idiag_timer",
        "idiag_retrans",
        "idiag_sport",
        "idiag_dport",
        "idiag_src",
        "idiag_dst",
        "idiag_cookie",
        "idiag_expires",
        "idiag_rqueue",
        "idiag_wqueue",
        "idiag_uid",
        "idiag_inode",
    }
)
RECORD_LAYOUTS = message_layouts(RECORD_KEEP)

RECV_BUFSIZE = 1 << 16  # the kernel fills at most ~32 KiB per dump skb
SO_RCVBUF_WANTED = 1 << 22
RECV_TIMEOUT = 10.0  # seconds without any reply before a dump is given up
DUMP_DEADLINE = 120.0  # seconds for a whole dump, however busy the kernel is

ST_LISTEN = STATE_NUMBERS["LISTEN"]
ST_SYN_RECV = STATE_NUMBERS["SYN_RECV"]
ST_NEW_SYN_RECV = STATE_NUMBERS["NEW_SYN_RECV"]


def _byte_swap_table():
    """[n with its two bytes swapped for n in 0..65535] on a little-endian host.

    Built from bytes at C speed: a Python loop over the 65536 numbers costs about 8 ms,
    paid on every module run (AnsiballZ imports this file afresh each time).  The
    big-endian bytes of 0..65535 (high byte first), read as native u16, are the swaps.
    """
    big_endian = bytearray(2 * 65536)
    big_endian[0::2] = b"".join(bytes([high]) * 256 for high in range(256))
    big_endian[1::2] = bytes(range(256)) * 256
    return array("H", big_endian).tolist()


if sys.byteorder == "little":
    # Ports are __be16 on the wire but read as native ints: this table maps them to host order (and back).
    SWAP16 = _byte_swap_table()
else:  # pragma: no cover - big-endian hosts
    SWAP16 = list(range(65536))


class DiagUnavailable(Exception):
    """Netlink sock_diag cannot be used here (protocol, permission or kernel module missing)."""


class DiagError(Exception):
    """A netlink dump failed or returned a malformed/truncated stream."""


class DumpInterrupted(DiagError):
    """The kernel flagged the dump NLM_F_DUMP_INTR: the table changed while it was read."""


# ---------------------------------------------------------------------------
# States and families
# ---------------------------------------------------------------------------


def normalize_state(name):
    """'close-wait', ' Close_Wait ' -> 'CLOSE_WAIT'; None when ``name`` is no TCP state name.

    The one state-name normaliser of the collection: options, gate limits and
    filters all accept any case and '-' for '_'.
    """
    if not isinstance(name, str):
        return None
    key = name.strip().upper().replace("-", "_")
    return key if key in STATE_NUMBERS else None


def state_mask(names):
    """Bitmask of kernel states for inet_diag_req_v2.idiag_states.

    ``names`` is an iterable of state names (see :func:`normalize_state`), or None
    for every state.  SYN_RECV also sets NEW_SYN_RECV so request sockets are
    dumped (the kernel reports them as SYN_RECV).
    """
    if names is None:
        return ALL_STATES_MASK
    if isinstance(names, str):
        names = [names]
    mask = 0
    for name in names:
        key = normalize_state(str(name))
        if key is None:
            raise ValueError("unknown TCP state {!r}; valid states: {}".format(name, ", ".join(STATES)))
        mask |= 1 << STATE_NUMBERS[key]
    if mask & (1 << ST_SYN_RECV):
        mask |= 1 << ST_NEW_SYN_RECV
    return mask


def family_number(family):
    """AF_INET / AF_INET6 from "ipv4" / "ipv6" or the number itself; ValueError otherwise."""
    if family in FAMILIES:
        return FAMILIES[family]
    if family in (socket.AF_INET, socket.AF_INET6):
        return int(family)
    raise ValueError(f"unknown family {family!r}; valid families: ipv4, ipv6")


def family_name(family):
    return "ipv4" if family_number(family) == socket.AF_INET else "ipv6"


# ---------------------------------------------------------------------------
# Transport
# ---------------------------------------------------------------------------


def build_request(family, states_mask, extensions=0, bytecode=b"", seq=1):
    """Bytes of one SOCK_DIAG_BY_FAMILY dump request for TCP sockets."""
    payload = INET_DIAG_REQ_V2.pack(family_number(family), socket.IPPROTO_TCP, extensions & 0xFF, 0, states_mask, b"")
    if bytecode:
        attr_len = RTATTR.size + len(bytecode)
        payload += RTATTR.pack(attr_len, INET_DIAG_REQ_BYTECODE) + bytes(bytecode)
        payload += b"\0" * (-attr_len % 4)
    header = NLMSGHDR.pack(NLMSGHDR.size + len(payload), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + payload


def open_diag_socket(protocol=NETLINK_SOCK_DIAG, what="sock_diag"):
    """A netlink socket (NETLINK_SOCK_DIAG unless told) with a large receive buffer; DiagUnavailable if impossible."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    except (OSError, AttributeError) as exc:
        raise DiagUnavailable(f"netlink {what} socket not available: {exc}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SO_RCVBUF_WANTED)
    except OSError:
        pass  # a smaller buffer only costs speed
    sock.settimeout(RECV_TIMEOUT)
    return sock


def recv_chunks(sock, copy=False):
    """Yield each datagram of a dump as a memoryview of one reused buffer (bytes when ``copy``).

    A yielded view is only valid until the next one is requested.  The consumer
    stops at NLMSG_DONE / NLMSG_ERROR (the decoder here does).  DiagError on a
    truncated datagram, RECV_TIMEOUT without data, or a dump past DUMP_DEADLINE.
    """
    buf = bytearray(RECV_BUFSIZE)
    view = memoryview(buf)
    deadline = time.monotonic() + DUMP_DEADLINE
    while True:
        try:
            n = sock.recv_into(buf, 0, MSG_TRUNC)
        except socket.timeout as exc:
            raise DiagError(f"netlink dump: no reply for {RECV_TIMEOUT:.0f} s") from exc
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            raise DiagError(f"netlink dump: recv failed: {exc}") from exc
        if n > len(buf):
            raise DiagError(f"netlink dump: datagram of {n} bytes truncated to {len(buf)}")
        if n == 0:
            raise DiagError("netlink dump: empty datagram")
        yield bytes(view[:n]) if copy else view[:n]
        if time.monotonic() > deadline:
            raise DiagError(f"netlink dump: not finished after {DUMP_DEADLINE:.0f} s")


def dump(family, states_mask, extensions=0, bytecode=b""):
    """Send one dump request; return (socket, chunk iterator).  The caller closes the socket."""
    sock = open_diag_socket()
    try:
        sock.sendall(build_request(family, states_mask, extensions, bytecode))
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.EACCES, errno.EPERM, errno.ECONNREFUSED, errno.EPROTONOSUPPORT):
            raise DiagUnavailable(f"netlink sock_diag request refused: {exc}") from exc
        raise DiagError(f"netlink sock_diag request failed: {exc}") from exc
    return sock, recv_chunks(sock, copy=bool(extensions))


# ---------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------


def _check_end(chunk, off, length, typ):
    """Handle NLMSG_DONE / NLMSG_ERROR at ``off``: return True when the dump is over."""
    if typ == NLMSG_DONE:
        if length >= 20:
            (err,) = NLMSGERR.unpack_from(chunk, off + 16)
            if err < 0:
                raise _diag_errno(-err, "NLMSG_DONE")
        return True
    if typ == NLMSG_ERROR:
        if length < 20:
            raise DiagError("netlink dump: short NLMSG_ERROR message")
        (err,) = NLMSGERR.unpack_from(chunk, off + 16)
        if err == 0:
            return True  # an ACK
        raise _diag_errno(-err, "NLMSG_ERROR")
    return False


def _diag_errno(code, where):
    text = "netlink sock_diag {}: {}".format(where, os.strerror(code) if 0 < code < 4096 else f"error {code}")
    if code in (errno.ENOENT, errno.EPROTONOSUPPORT, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM, errno.EAFNOSUPPORT):
        return DiagUnavailable(text)
    return DiagError(text)


_SKIP, _DONE, _ROW = 0, 1, 2
_SHORT = (-1, -1)  # stands for a message too short to unpack


def _other_message(chunk, off, n, status, warnings):
    """The rare path of the decoder: end/error, flagged, short or corrupt messages.  Returns (length, kind).

    kind is _ROW for a diag message that is whole but carries unusual flags
    (NLM_F_DUMP_INTR, or no NLM_F_MULTI), _DONE at the end of the dump, _SKIP else.
    """
    if n - off < NLMSGHDR.size:
        raise DiagError(f"netlink dump: {n - off} trailing bytes, not a message header")
    length, typ, flags = NLMSGHDR.unpack_from(chunk, off)[:3]
    if length < NLMSGHDR.size or off + length > n:
        raise DiagError(f"netlink dump: message length {length} at offset {off} does not fit the datagram")
    if flags & NLM_F_DUMP_INTR:
        status.interrupted = True
    if typ == SOCK_DIAG_BY_FAMILY:
        if length >= DIAG_MSG_LEN:
            return length, _ROW
        if warnings is not None:
            warnings.append(f"netlink dump: skipped a {length}-byte diag message (needs {DIAG_MSG_LEN})")
        return length, _SKIP
    return length, _DONE if _check_end(chunk, off, length, typ) else _SKIP


class _UniformRows:
    """The fast path of :func:`decode_batches`: a datagram of plain diag messages that all have one length.

    Such datagrams are the common case (a dump of TIME_WAIT, request or full sockets
    without extensions repeats one message length), and their rows come from one
    ``struct.iter_unpack`` in C instead of one Python step per message.  The check
    that every message header is the plain one (length, SOCK_DIAG_BY_FAMILY with
    NLM_F_MULTI only) also runs in C: a strided u32 view of the header words
    compared with the expected words.  Anything else (the end of the dump, a
    flagged or odd message, mixed lengths) is left to the per-message loop.
    """

    __slots__ = ("cache", "msg", "plain")

    def __init__(self, msg):
        self.msg = msg
        self.plain = DIAG_MULTI
        self.cache = {}  # (message length, count) -> (expected lengths, expected type_flags, padded layout)

    def rows(self, chunk, n):
        """The datagram's rows as a list, or None when it is not uniform."""
        if n < self.msg.size or n & 3:
            return None
        words = memoryview(chunk).cast("B").cast("I")
        length = words[0]
        if length < self.msg.size or length & 3 or n % length:
            return None
        count = n // length
        expected = self.cache.get((length, count))
        if expected is None:
            if len(self.cache) > 64:  # bounded: a hostile stream could vary lengths forever
                self.cache.clear()
            layout = struct.Struct(self.msg.format + f"{length - self.msg.size}x")
            expected = (
                memoryview(array("I", [length]) * count),
                memoryview(array("I", [self.plain]) * count),
                layout,
            )
            self.cache[(length, count)] = expected
        lengths, type_flags, layout = expected
        step = length >> 2
        if words[0::step] != lengths or words[1::step] != type_flags:
            return None
        return list(layout.iter_unpack(chunk))


class DumpStatus:
    """What a decoder saw besides records: ``interrupted`` once any message had NLM_F_DUMP_INTR."""

    __slots__ = ("interrupted",)

    def __init__(self):
        self.interrupted = False


def decode_batches(chunks, family, layouts=RECORD_LAYOUTS, *, with_attrs=False, warnings=None, status=None):
    """Decode netlink datagrams into batches (one list per datagram) of raw rows.

    A row is the tuple ``layouts`` (from :func:`message_layouts`) unpacks from one
    message, as is: a consumer that declares the fields it needs loops over it
    with no per-socket object built in between.  With ``with_attrs`` each item is
    (row, memoryview of the message's attributes) instead.

    Stops at NLMSG_DONE; raises DiagError on an error message, a message whose
    length runs past its datagram, or a stream that ends without NLMSG_DONE.
    Diag messages too short to hold an inet_diag_msg are skipped with a warning
    appended to ``warnings`` (a list) when given.  ``status`` (a DumpStatus) gets
    ``interrupted`` set when the kernel flags NLM_F_DUMP_INTR, as iproute2's
    libnetlink checks on every message.

    A datagram of plain messages of one length (the common case) is unpacked by
    :class:`_UniformRows` in C; the loop here handles the rest message by message.

    radon grades this loop above C on purpose: it is the hot loop of every
    netlink dump (one pass per socket), and each helper call it would be split
    into costs a measurable share of a 300k-socket dump.
    """
    msg = layouts[0] if family_number(family) == socket.AF_INET else layouts[1]
    unpack, need, plain = msg.unpack_from, msg.size, DIAG_MULTI
    status = status if status is not None else DumpStatus()
    uniform = _UniformRows(msg)
    for chunk in chunks:
        n = len(chunk)
        if not with_attrs:
            rows = uniform.rows(chunk, n)
            if rows is not None:
                yield rows
                continue
        off = 0
        batch = []
        append = batch.append
        view = memoryview(chunk) if with_attrs else None
        while off < n:
            try:
                row = unpack(chunk, off)
            except struct.error:
                row = _SHORT
            ln = row[0]
            if row[1] != plain or ln < need or off + ln > n:
                ln, kind = _other_message(chunk, off, n, status, warnings)
                if kind == _DONE:
                    if batch:
                        yield batch
                    return
                if kind == _SKIP:
                    off += (ln + 3) & ~3
                    continue
            if with_attrs:
                row = (row, view[off + need : off + ln])
            append(row)
            off += (ln + 3) & ~3
        if batch:
            yield batch
    raise DiagError("netlink dump: stream ended without NLMSG_DONE")


def decode_record_batches(chunks, family, with_attrs=False, warnings=None, status=None):
    """Record batches (see the module docstring) of :func:`decode_batches`."""
    swap = SWAP16
    for rows in decode_batches(chunks, family, RECORD_LAYOUTS, with_attrs=with_attrs, warnings=warnings, status=status):
        if with_attrs:
            yield [
                (st, src, swap[sp], dst, swap[dp], rq, wq, tm, rt, ex, uid, ino, ck, attrs)
                for (_ln, _tf, st, tm, rt, sp, dp, src, dst, ck, ex, rq, wq, uid, ino), attrs in rows
            ]
        else:
            yield [
                (st, src, swap[sp], dst, swap[dp], rq, wq, tm, rt, ex, uid, ino, ck, None)
                for _ln, _tf, st, tm, rt, sp, dp, src, dst, ck, ex, rq, wq, uid, ino in rows
            ]


def decode_diag_stream(chunks, family, with_attrs=False, warnings=None, status=None):
    """Records (not batches) of :func:`decode_record_batches`."""
    for batch in decode_record_batches(chunks, family, with_attrs, warnings, status):
        yield from batch


def parse_attrs(attrs):
    """{attribute type: memoryview of its payload} from a record's R_ATTRS (nested flags masked off)."""
    out = {}
    if attrs is None:
        return out
    view = memoryview(attrs)
    n = len(view)
    off = 0
    while off + 4 <= n:
        length, typ = RTATTR.unpack_from(view, off)
        if length < 4 or off + length > n:
            raise DiagError(f"netlink attribute length {length} at offset {off} does not fit")
        out[typ & 0x3FFF] = view[off + 4 : off + length]
        off += (length + 3) & ~3
    return out


def interrupted_warning(family):
    return (
        f"netlink dump of {family_name(family)} sockets was interrupted twice by concurrent changes "
        "(NLM_F_DUMP_INTR); its figures may be inconsistent"
    )


def _dump_batches(family, states_mask, extensions, bytecode, *, decode, warnings, on_interrupt):
    status = DumpStatus()
    sock, chunks = dump(family, states_mask, extensions, bytecode)
    try:
        yield from decode(chunks, status)
    finally:
        sock.close()
    if status.interrupted:
        if on_interrupt == "raise":
            raise DumpInterrupted(interrupted_warning(family))
        if warnings is not None:
            warnings.append(interrupted_warning(family))


def iter_diag_batches(family, states_mask, extensions=0, bytecode=b"", *, warnings=None, on_interrupt="warn"):
    """Record batches of one TCP dump of ``family`` (see :func:`decode_record_batches`).

    ``on_interrupt``: "raise" raises DumpInterrupted after the last batch of a dump
    the kernel flagged NLM_F_DUMP_INTR (the caller starts over, see
    :func:`retry_interrupted`); "warn" appends a warning to ``warnings`` instead.
    Raises DiagUnavailable or DiagError.
    """

    def decode(chunks, status):
        return decode_record_batches(chunks, family, bool(extensions), warnings, status)

    return _dump_batches(
        family, states_mask, extensions, bytecode, decode=decode, warnings=warnings, on_interrupt=on_interrupt
    )


def iter_diag_rows(family, states_mask, layouts, *, warnings=None, on_interrupt="warn"):
    """Raw row batches (see :func:`decode_batches`) of one TCP dump of ``family``, no extensions."""

    def decode(chunks, status):
        return decode_batches(chunks, family, layouts, warnings=warnings, status=status)

    return _dump_batches(family, states_mask, 0, b"", decode=decode, warnings=warnings, on_interrupt=on_interrupt)


def iter_diag(family, states_mask, extensions=0, bytecode=b"", *, warnings=None, on_interrupt="warn"):
    """Generator of records (see the module docstring) of one TCP dump of ``family``.

    ``family``: "ipv4"/"ipv6" or AF_INET/AF_INET6; ``states_mask`` from state_mask();
    ``extensions``: idiag_ext bits (e.g. ``1 << (INET_DIAG_INFO - 1)``), attributes are
    then exposed in R_ATTRS; ``bytecode``: compiled INET_DIAG_REQ_BYTECODE filter.
    Raises DiagUnavailable or DiagError.
    """
    for batch in iter_diag_batches(
        family, states_mask, extensions, bytecode, warnings=warnings, on_interrupt=on_interrupt
    ):
        yield from batch


def retry_interrupted(attempt):
    """Run ``attempt(on_interrupt)`` once with "raise"; when its dump was interrupted, once more with "warn".

    This is iproute2's answer to NLM_F_DUMP_INTR: the kernel's table changed during the
    dump, so the whole pass (every family, a fresh consumer) starts over once; a second
    interruption is only reported (a busy host may never give a quiet moment).
    """
    try:
        return attempt("raise")
    except DumpInterrupted:
        return attempt("warn")
