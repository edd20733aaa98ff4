# Copyright (c) 2026, netstate.tcp contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""TCP socket collection: netlink sock_diag dump, streaming decoders, /proc/net/tcp fallback.

Python stdlib only (runs on managed nodes, Python 3.7+).

Raw records
-----------
:func:`iter_diag` and :func:`decode_diag_stream` yield one tuple per socket;
use the ``R_*`` index constants below instead of bare numbers:

====  ==========  ==================================================================
idx   name        value
====  ==========  ==================================================================
0     R_STATE     kernel state number (1..12, index into STATES is state - 1)
1     R_SRC       local address, packed network-order bytes (4 for IPv4, 16 for IPv6)
2     R_SPORT     local port (host order int)
3     R_DST       peer address, packed bytes like R_SRC
4     R_DPORT     peer port (host order int)
5     R_RQUEUE    receive queue bytes; on LISTEN the accept-queue length
6     R_WQUEUE    send queue bytes; on LISTEN the configured backlog
7     R_TIMER     idiag_timer: 0 none, 1 retransmit, 2 keepalive, 3 TIME_WAIT, 4 zero-window probe
8     R_RETRANS   idiag_retrans (retransmits, or unanswered zero-window probes when R_TIMER is 4)
9     R_EXPIRES   milliseconds until the timer fires
10    R_UID       owner uid
11    R_INODE     socket inode (0 for TIME_WAIT and request sockets)
12    R_COOKIE    64-bit kernel socket cookie (int)
13    R_ATTRS     memoryview of the netlink attributes when extensions were requested, else None
====  ==========  ==================================================================

Request sockets (half-open connections the kernel keeps as ``TCP_NEW_SYN_RECV``)
are dumped when the states mask has the NEW_SYN_RECV bit, but the kernel
reports them with state SYN_RECV (as ``ss`` shows them); :func:`state_mask`
therefore adds the NEW_SYN_RECV bit whenever SYN_RECV is asked for.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import os
import socket
import struct
import sys
import time
from collections import defaultdict

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
STATE_NUMBERS = {name: number for number, name in enumerate(STATES, 1)}
ALL_STATES_MASK = 0
for _number in STATE_NUMBERS.values():
    ALL_STATES_MASK |= 1 << _number
FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
TIMER_KINDS = ("retransmit", "persist", "keepalive", "time_wait", "zero_window", "max_retransmits")

# Record tuple indices (see the module docstring).
R_STATE, R_SRC, R_SPORT, R_DST, R_DPORT, R_RQUEUE, R_WQUEUE = 0, 1, 2, 3, 4, 5, 6
R_TIMER, R_RETRANS, R_EXPIRES, R_UID, R_INODE, R_COOKIE, R_ATTRS = 7, 8, 9, 10, 11, 12, 13

# Kernel ABI numbers (include/uapi/linux/{netlink,sock_diag,inet_diag}.h).
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE = 1, 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_DUMP = 0x1, 0x2, 0x300
NLM_F_DUMP_INTR = 0x10
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_MEMINFO, INET_DIAG_INFO = 1, 2
MSG_TRUNC = getattr(socket, "MSG_TRUNC", 0x20)

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSGERR = struct.Struct("=i")  # error code that follows the header of NLMSG_ERROR and NLMSG_DONE
RTATTR = struct.Struct("=HH")  # len, type
# inet_diag_req_v2: family, protocol, ext, pad, states, inet_diag_sockid (all zero: no socket filter)
INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")
# nlmsghdr + inet_diag_msg, the full generic layout (ports are big-endian, decoded separately).
DIAG_MSG = struct.Struct("=IHHIIBBBB2s2s16s16sIQIIIII")
DIAG_MSG_LEN = DIAG_MSG.size  # 88
PORT = struct.Struct(">H")
# Hot-loop layouts: length, type, state, timer, retrans, sport, dport (wire order read as native
# ints: converted once per distinct value at the end), src, dst (v4 as ints, v6 as bytes),
# rqueue, wqueue.  Cookie and inode are read only for the few states that need them.
_HOT_V4 = struct.Struct("=IH10xxBBBHHI12xI12x16xII8x")
_HOT_V6 = struct.Struct("=IH10xxBBBHH16s16s16xII8x")
_COOKIE_INODE = struct.Struct("=60xQ16xI")

RECV_BUFSIZE = 1 << 16  # the kernel fills at most ~32 KiB per dump skb
SO_RCVBUF_WANTED = 1 << 22
RECV_TIMEOUT = 10.0  # seconds without any reply before a dump is given up
DUMP_DEADLINE = 120.0  # seconds for a whole dump, however busy the kernel is

ST_LISTEN = STATE_NUMBERS["LISTEN"]
ST_SYN_RECV = STATE_NUMBERS["SYN_RECV"]
ST_NEW_SYN_RECV = STATE_NUMBERS["NEW_SYN_RECV"]
_LITTLE = sys.byteorder == "little"
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


class DiagUnavailable(Exception):
    """Netlink sock_diag cannot be used here (protocol, permission or kernel module missing)."""


class DiagError(Exception):
    """A netlink dump failed or returned a malformed/truncated stream."""


def state_mask(names):
    """Bitmask of kernel states for inet_diag_req_v2.idiag_states.

    ``names`` is an iterable of STATES names (case-insensitive, '-' accepted for '_'),
    or None for every state.  SYN_RECV also sets NEW_SYN_RECV so request sockets
    are dumped (the kernel reports them as SYN_RECV).
    """
    if names is None:
        return ALL_STATES_MASK
    if isinstance(names, str):
        names = [names]
    mask = 0
    for name in names:
        key = str(name).upper().replace("-", "_")
        if key not in STATE_NUMBERS:
            raise ValueError("unknown TCP state {!r}; valid states: {}".format(name, ", ".join(STATES)))
        mask |= 1 << STATE_NUMBERS[key]
    if mask & (1 << ST_SYN_RECV):
        mask |= 1 << ST_NEW_SYN_RECV
    return mask


def _family_number(family):
    if family in FAMILIES:
        return FAMILIES[family]
    if family in (socket.AF_INET, socket.AF_INET6):
        return int(family)
    raise ValueError(f"unknown family {family!r}; valid families: ipv4, ipv6")


def build_request(family, states_mask, extensions=0, bytecode=b"", seq=1):
    """Bytes of one SOCK_DIAG_BY_FAMILY dump request for TCP sockets."""
    payload = INET_DIAG_REQ_V2.pack(_family_number(family), socket.IPPROTO_TCP, extensions & 0xFF, states_mask)
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
    stops at NLMSG_DONE / NLMSG_ERROR (the decoders here do; walking every header
    again just to find the end would cost ~15% of a dump).  DiagError on a
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


def decode_diag_stream(chunks, family, with_attrs=False, warnings=None):
    """Decode an iterable of netlink datagrams (bytes-like) into raw records.

    This is the decoder used on live dumps and on recorded byte streams.
    Stops at NLMSG_DONE; raises DiagError on an error message, a message whose
    length runs past its datagram, or a stream that ends without NLMSG_DONE.
    Diag messages too short to hold an inet_diag_msg are skipped with a
    warning appended to ``warnings`` (a list) when given.
    """
    addr_len = 4 if _family_number(family) == socket.AF_INET else 16
    unpack_msg = DIAG_MSG.unpack_from
    unpack_hdr = NLMSGHDR.unpack_from
    unpack_port = PORT.unpack
    for chunk in chunks:
        n = len(chunk)
        off = 0
        while off < n:
            if n - off < 16:
                raise DiagError(f"netlink dump: {n - off} trailing bytes, not a message header")
            length, typ = unpack_hdr(chunk, off)[:2]
            if length < 16 or off + length > n:
                raise DiagError(f"netlink dump: message length {length} at offset {off} does not fit the datagram")
            if typ == SOCK_DIAG_BY_FAMILY:
                if length < DIAG_MSG_LEN:
                    if warnings is not None:
                        warnings.append(f"netlink dump: skipped a {length}-byte diag message (needs {DIAG_MSG_LEN})")
                else:
                    f = unpack_msg(chunk, off)
                    attrs = None
                    if with_attrs:
                        attrs = memoryview(chunk)[off + DIAG_MSG_LEN : off + length]
                    yield (
                        f[6],
                        f[11][:addr_len],
                        unpack_port(f[9])[0],
                        f[12][:addr_len],
                        unpack_port(f[10])[0],
                        f[16],
                        f[17],
                        f[7],
                        f[8],
                        f[15],
                        f[18],
                        f[19],
                        f[14],
                        attrs,
                    )
            elif _check_end(chunk, off, length, typ):
                return
            off += (length + 3) & ~3
    raise DiagError("netlink dump: stream ended without NLMSG_DONE")


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


def iter_diag(family, states_mask, extensions=0, bytecode=b""):
    """Generator of raw records (see the module docstring) of one TCP dump of ``family``.

    ``family``: "ipv4"/"ipv6" or AF_INET/AF_INET6; ``states_mask`` from state_mask();
    ``extensions``: idiag_ext bits (e.g. ``1 << (INET_DIAG_INFO - 1)``), attributes are
    then exposed in R_ATTRS; ``bytecode``: compiled INET_DIAG_REQ_BYTECODE filter.
    Raises DiagUnavailable or DiagError.
    """
    sock, chunks = dump(family, states_mask, extensions, bytecode)
    try:
        yield from decode_diag_stream(chunks, family, with_attrs=bool(extensions))
    finally:
        sock.close()


# ---------------------------------------------------------------------------
# Streaming aggregation
# ---------------------------------------------------------------------------

if _LITTLE:
    # Ports are read from the wire as native ints; this maps them back (and host -> wire for procfs).
    _SWAP16 = [((p & 0xFF) << 8) | (p >> 8) for p in range(65536)]
else:  # pragma: no cover - big-endian hosts
    _SWAP16 = list(range(65536))


def _read_text(path):
    with open(path, encoding="ascii", errors="replace") as fh:
        return fh.read()


def read_local_addresses(proc="/proc"):
    """This namespace's own addresses as text: IPv4 "/32 host LOCAL" fib entries and /proc/net/if_inet6."""
    local = set()
    try:
        last = None
        for line in _read_text(os.path.join(proc, "net", "fib_trie")).splitlines():
            stripped = line.strip()
            if stripped.startswith("|--") or stripped.startswith("+--"):
                last = stripped[3:].split()[0].split("/")[0]
            elif "/32 host LOCAL" in stripped and last:
                local.add(last)
    except OSError:
        pass
    try:
        for line in _read_text(os.path.join(proc, "net", "if_inet6")).splitlines():
            fields = line.split()
            if fields and len(fields[0]) == 32:
                local.add(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[0])))
    except (OSError, ValueError):
        pass
    return local


def read_ephemeral_range(proc="/proc"):
    try:
        low, high = _read_text(os.path.join(proc, "sys", "net", "ipv4", "ip_local_port_range")).split()[:2]
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # the kernel default


def address_scope(text, local_addresses):
    """loopback | local (one of this host's addresses) | remote; IPv4-mapped IPv6 judged by its IPv4 part."""
    if text.startswith("::ffff:") and "." in text:
        text = text[7:]
    if text.startswith("127.") or text == "::1":
        return "loopback"
    if text in local_addresses or text in ("0.0.0.0", "::"):
        return "local"
    return "remote"


def _addr_text(key):
    """Address key (int: IPv4 bytes read as a native int; bytes: packed IPv6) -> text."""
    if isinstance(key, int):
        return socket.inet_ntop(socket.AF_INET, struct.pack("=I", key))
    if len(key) == 4:
        return socket.inet_ntop(socket.AF_INET, key)
    return socket.inet_ntop(socket.AF_INET6, key)


def _procfs_v6_bytes(hexstr):
    # /proc/net/tcp6 prints the address as four native-endian 32-bit words.
    return struct.pack("=4I", *struct.unpack(">4I", bytes.fromhex(hexstr)))


def _endpoint(key, wire_port):
    text = _addr_text(key)
    port = _SWAP16[wire_port]
    if ":" in text:
        return f"[{text}]:{port}"
    return f"{text}:{port}"


class SocketAggregator:
    """Streaming aggregates over TCP sockets fed from netlink datagrams or /proc/net/tcp lines.

    Memory grows with distinct keys (ports, addresses, tracked/owner sockets), never
    with a per-socket object.  Per-state tables are lists indexed by the kernel state
    number (a byte, so any value read from a corrupt stream stays in range).
    """

    def __init__(self, top=10, owner_states=(), track_states=(), local_addresses=None, ephemeral_range=None):
        self.top = int(top)
        self.local_addresses = local_addresses if local_addresses is not None else set()
        low, high = ephemeral_range or (32768, 60999)
        self.family_counts = {"ipv4": [0] * 256, "ipv6": [0] * 256}
        self.send_bytes = [0] * 256
        self.recv_bytes = [0] * 256
        self.timers = [0] * 65536  # (state << 8) | idiag_timer
        self.max_retrans = [0] * 256
        # Local-port counts in a flat list indexed (state << 16) | wire port: a list slot is
        # much cheaper than a dict insert when ephemeral ports make most keys distinct.
        self.port_counts = [0] * ((ST_NEW_SYN_RECV + 1) << 16)
        self.by_local = [defaultdict(int) for _state in range(256)]
        self.by_peer = [defaultdict(int) for _state in range(256)]
        self.tuples = defaultdict(int)  # (src, dst, wire dport) of sockets on an ephemeral local port
        # Wire-order local ports counted for ephemeral-port pressure: in ip_local_port_range
        # and not a port something listens on (accepted server sockets share the listener's port).
        self.ephemeral = bytearray(65536)
        for port in range(max(low, 0), min(high, 65535) + 1):
            self.ephemeral[_SWAP16[port]] = 1
        self.owner_inodes = {}
        self.tracked = {}
        # Per state number: 0 plain, 1 LISTEN/owner/tracked bookkeeping, 2 not a TCP state.
        self.special = bytearray([2]) + bytearray(len(STATES)) + bytearray([2] * (255 - len(STATES)))
        self.unknown_states = 0
        self.owner_tables = [None] * 256
        self.track_names = [None] * 256
        for name in owner_states:
            number = STATE_NUMBERS[name]
            self.owner_tables[number] = self.owner_inodes.setdefault(name, {})
            self.special[number] = 1
        for name in track_states:
            number = STATE_NUMBERS[name]
            self.track_names[number] = name
            self.special[number] = 1
        self.special[ST_LISTEN] = 1
        self.listeners = []  # heap of the top-N by fill
        self._listener_seq = 0
        self.listen_backlog_known = True
        self.warnings = []

    # -- netlink -----------------------------------------------------------
    def feed_netlink(self, family, chunks):
        """Aggregate one family's dump given as an iterable of datagrams; returns the socket count."""
        fam = _family_number(family)
        hot = _HOT_V4 if fam == socket.AF_INET else _HOT_V6
        unpack = hot.unpack_from
        unpack_ids = _COOKIE_INODE.unpack_from
        need = hot.size
        counts = self.family_counts["ipv4" if fam == socket.AF_INET else "ipv6"]
        send_bytes, recv_bytes, timers, max_retrans = self.send_bytes, self.recv_bytes, self.timers, self.max_retrans
        port_counts, by_local, by_peer, tuples = self.port_counts, self.by_local, self.by_peer, self.tuples
        ephemeral, special = self.ephemeral, self.special
        diag_type = SOCK_DIAG_BY_FAMILY
        before = sum(counts)
        for chunk in chunks:
            n = len(chunk)
            off = 0
            while off < n:
                try:
                    ln, typ, st, timer, retrans, sport, dport, src, dst, rq, wq = unpack(chunk, off)
                except struct.error:
                    ln = typ = -1
                if typ != diag_type or ln < need or off + ln > n:
                    # Rare path: end/error messages, short or corrupt messages.
                    if n - off < 16:
                        raise DiagError(f"netlink dump: {n - off} trailing bytes, not a message header")
                    ln, typ = NLMSGHDR.unpack_from(chunk, off)[:2]
                    if ln < 16 or off + ln > n:
                        raise DiagError(f"netlink dump: message length {ln} at offset {off} does not fit the datagram")
                    if typ == SOCK_DIAG_BY_FAMILY:
                        self.warnings.append(f"netlink dump: skipped a {ln}-byte diag message (needs {need})")
                    elif _check_end(chunk, off, ln, typ):
                        return sum(counts) - before
                    off += (ln + 3) & ~3
                    continue
                off += (ln + 3) & ~3
                if special[st]:
                    if special[st] == 2:
                        self.unknown_states += 1
                        continue
                    cookie, ino = unpack_ids(chunk, off - ((ln + 3) & ~3))
                    if st == ST_LISTEN:
                        counts[st] += 1
                        # LISTEN "queues" are not bytes: rqueue is the accept-queue length, wqueue the backlog.
                        self._add_listener(src, sport, rq, wq, ino)
                        continue
                    self._special(st, ino, cookie, wq)
                counts[st] += 1
                if wq:
                    send_bytes[st] += wq
                if rq:
                    recv_bytes[st] += rq
                if timer:
                    timers[(st << 8) | timer] += 1
                    if retrans > max_retrans[st]:  # noqa: PLR1730 - max() is slower in the hot loop
                        max_retrans[st] = retrans
                port_counts[(st << 16) | sport] += 1
                by_local[st][src] += 1
                by_peer[st][dst] += 1
                if ephemeral[sport]:
                    tuples[(src, dst, dport)] += 1
        raise DiagError("netlink dump: stream ended without NLMSG_DONE")

    def _add_listener(self, src, wire_port, accept_queue, backlog, inode):
        self.ephemeral[wire_port] = 0
        table = self.owner_tables[ST_LISTEN]
        if table is not None and inode:
            table[inode] = table.get(inode, 0) + 1
        if backlog is None:
            fill = None
            sort_key = float(accept_queue)
        else:
            fill = round(accept_queue / backlog, 4) if backlog else (1.0 if accept_queue else 0.0)
            sort_key = fill
        self._listener_seq += 1
        item = (sort_key, accept_queue, -self._listener_seq, src, wire_port, backlog, fill, inode)
        if len(self.listeners) < self.top:
            heapq.heappush(self.listeners, item)
        elif self.top > 0 and item > self.listeners[0]:
            heapq.heapreplace(self.listeners, item)

    def _special(self, st, inode, cookie, send_bytes):
        table = self.owner_tables[st]
        if table is not None and inode:
            table[inode] = table.get(inode, 0) + 1
        name = self.track_names[st]
        if name is not None:
            self.tracked[cookie] = (name, send_bytes)

    # -- procfs ------------------------------------------------------------
    def feed_procfs(self, family, lines):
        """Aggregate /proc/net/tcp or tcp6 text given line by line; malformed lines are skipped with a warning."""
        fam = _family_number(family)
        v4 = fam == socket.AF_INET
        counts = self.family_counts["ipv4" if v4 else "ipv6"]
        swap = _SWAP16
        send_bytes, recv_bytes, timers, max_retrans = self.send_bytes, self.recv_bytes, self.timers, self.max_retrans
        port_counts, by_local, by_peer, tuples = self.port_counts, self.by_local, self.by_peer, self.tuples
        ephemeral, special = self.ephemeral, self.special
        addr_len = 8 if v4 else 32
        seen = skipped = 0
        first_bad = None
        for lineno, line in enumerate(lines):
            if lineno == 0 and "local_address" in line:
                continue
            try:
                f = line.split()
                local, remote = f[1], f[2]
                src_hex, sport_hex = local.split(":")
                dst_hex, dport_hex = remote.split(":")
                if len(src_hex) != addr_len or len(dst_hex) != addr_len:
                    raise ValueError("address length")
                st = int(f[3], 16)
                txq, rxq = f[4].split(":")
                timer_s, _when = f[5].split(":")
                wq, rq, timer = int(txq, 16), int(rxq, 16), int(timer_s, 16)
                retrans = int(f[6], 16) if timer != 4 else int(f[8])
                ino = int(f[9])
                sport_host, dport_host = int(sport_hex, 16), int(dport_hex, 16)
                if v4:
                    src, dst = int(src_hex, 16), int(dst_hex, 16)
                else:
                    # Packed once here: the text keys would need the same check anyway.
                    src, dst = _procfs_v6_bytes(src_hex), _procfs_v6_bytes(dst_hex)
                if (
                    not 0 < st <= ST_NEW_SYN_RECV
                    or not 0 <= timer <= 255
                    or min(wq, rq, retrans, ino, sport_host, dport_host) < 0
                    or (v4 and min(src, dst) < 0)
                ):
                    raise ValueError("field out of range")
                sport, dport = swap[sport_host], swap[dport_host]
            except (ValueError, IndexError, struct.error) as exc:
                if not line.strip():
                    continue  # a blank line is not a socket
                skipped += 1
                if first_bad is None:
                    first_bad = f"line {lineno + 1}: {exc}"
                continue
            seen += 1
            counts[st] += 1
            if special[st]:
                if st == ST_LISTEN:
                    # /proc shows the accept queue as rx_queue but not the backlog.
                    self.listen_backlog_known = False
                    self._add_listener(src, sport, rq, None, ino)
                    continue
                self._special_procfs(st, ino, local + "-" + remote, wq)
            if wq:
                send_bytes[st] += wq
            if rq:
                recv_bytes[st] += rq
            if timer:
                timers[(st << 8) | timer] += 1
                if retrans > max_retrans[st]:  # noqa: PLR1730 - max() is slower in the hot loop
                    max_retrans[st] = retrans
            port_counts[(st << 16) | sport] += 1
            by_local[st][src] += 1
            by_peer[st][dst] += 1
            if ephemeral[sport]:
                tuples[(src, dst, dport)] += 1
        if skipped:
            self.warnings.append(f"procfs {family}: skipped {skipped} malformed line(s) (first: {first_bad})")
        return seen

    def _special_procfs(self, st, inode, key, send_bytes):
        table = self.owner_tables[st]
        if table is not None and inode:
            table[inode] = table.get(inode, 0) + 1
        name = self.track_names[st]
        if name is not None:
            self.tracked[key] = (name, send_bytes)

    # -- result ------------------------------------------------------------
    def _top_addresses(self, table, with_scope):
        out = []
        for key, count in heapq.nlargest(self.top, table.items(), key=lambda kv: kv[1]):
            text = _addr_text(key)
            row = {"address": text, "count": count}
            if with_scope:
                row["scope"] = address_scope(text, self.local_addresses)
            out.append(row)
        return out

    def result(self):
        states = {}
        families = {}
        for fam, counts in self.family_counts.items():
            families[fam] = {name: counts[number] for name, number in STATE_NUMBERS.items()}
        for name in STATES:
            states[name] = families["ipv4"][name] + families["ipv6"][name]
        queues = {}
        timers = {}
        top = {"by_local_port": {}, "by_local_address": {}, "by_peer": {}}
        for name, st in STATE_NUMBERS.items():
            if st != ST_LISTEN:
                queues[name] = {"send_bytes": self.send_bytes[st], "recv_bytes": self.recv_bytes[st]}
            base = st << 8
            persist = self.timers[base | 4]
            timers[name] = {
                "retransmit": self.timers[base | 1],
                "persist": persist,
                "keepalive": self.timers[base | 2],
                "time_wait": self.timers[base | 3],
                # The kernel arms the zero-window probe (persist) timer only while the peer
                # advertises a zero window and data waits: those sockets are the zero-window ones.
                "zero_window": persist,
                "max_retransmits": self.max_retrans[st],
            }
            if not states[name] or st == ST_LISTEN:
                continue
            ports = self.port_counts[st << 16 : (st + 1) << 16]
            used = itertools.compress(range(65536), ports)  # only ports with sockets, at C speed
            top["by_local_port"][name] = [
                {"port": _SWAP16[port], "count": ports[port]}
                for port in heapq.nlargest(self.top, used, key=ports.__getitem__)
            ]
            top["by_local_address"][name] = self._top_addresses(self.by_local[st], False)
            top["by_peer"][name] = self._top_addresses(self.by_peer[st], True)
        listeners = []
        for _key, accept_queue, _seq, src, wire_port, backlog, fill, inode in sorted(self.listeners, reverse=True):
            listeners.append(
                {
                    "local": _endpoint(src, wire_port),
                    "accept_queue": accept_queue,
                    "backlog": backlog,
                    "fill": fill,
                    "inode": inode,
                }
            )
        busiest = {"local_address": None, "peer_address": None, "peer_port": None, "count": 0}
        if self.tuples:
            (src, dst, dport), count = max(self.tuples.items(), key=lambda kv: kv[1])
            busiest = {
                "local_address": _addr_text(src),
                "peer_address": _addr_text(dst),
                "peer_port": _SWAP16[dport],
                "count": count,
            }
        warnings = list(self.warnings)
        if self.unknown_states:
            warnings.append(f"netlink dump: skipped {self.unknown_states} record(s) with an unknown TCP state")
        if not self.listen_backlog_known:
            warnings.append("listeners: /proc/net/tcp does not show the listen backlog; backlog and fill are null")
        return {
            "total": sum(states.values()),
            "states": states,
            "families": families,
            "queues": queues,
            "listeners": listeners,
            "timers": timers,
            "top": top,
            "warnings": warnings,
            "_owner_inodes": self.owner_inodes,
            "_tracked": self.tracked,
            "_busiest_tuple": busiest,
        }


def _check_states(option, names):
    names = tuple(str(n).upper().replace("-", "_") for n in names)
    for name in names:
        if name not in STATE_NUMBERS:
            raise ValueError("{}: unknown TCP state {!r}; valid states: {}".format(option, name, ", ".join(STATES)))
    return names


def _read_procfs(aggregator, family):
    path = "/proc/net/tcp" if family == "ipv4" else "/proc/net/tcp6"
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            aggregator.feed_procfs(family, fh)
    except FileNotFoundError:
        if family == "ipv6":
            return  # IPv6 disabled: no sockets to see
        aggregator.warnings.append(f"procfs: {path} missing")
    except OSError as exc:
        aggregator.warnings.append(f"procfs: cannot read {path}: {exc}")


def collect_sockets(
    families=("ipv4", "ipv6"), top=10, owner_states=("CLOSE_WAIT", "LISTEN"), track_states=(), procfs=False
):
    """Aggregate every TCP socket of the current network namespace.

    One netlink sock_diag dump per family (all states, no extensions); when netlink
    is unavailable, /proc/net/tcp{,6} parsed line by line (``procfs=True`` forces
    that path).  Raises ValueError naming the option on bad options, DiagError when
    a dump fails midway.  Returns::

        source      "netlink" | "procfs"
        total       int
        states      {state: count} for all 12 STATES (request sockets count as SYN_RECV)
        families    {"ipv4": {state: count}, "ipv6": {state: count}}
        queues      {state: {send_bytes, recv_bytes}} for every state but LISTEN
        listeners   top-N LISTEN sockets by fill: [{local "ip:port" / "[v6]:port", accept_queue,
                    backlog (None from procfs), fill (accept_queue / backlog), inode}]
        timers      {state: {retransmit, persist, keepalive, time_wait, zero_window, max_retransmits}}
                    zero_window counts the sockets in the zero-window probe (persist) timer: the
                    kernel arms it only while the peer advertises a zero window and data waits
        top         {by_local_port: {state: [{port, count}]}, by_local_address: {state: [{address, count}]},
                     by_peer: {state: [{address, count, scope}]}} for states with sockets (not LISTEN)
        warnings    [str]
        _owner_inodes   {state: {inode: count}} for owner_states (inode 0 never: nobody holds it)
        _tracked        {cookie (int; procfs: "local-remote" hex text): (state, send_bytes)} for track_states
        _busiest_tuple  {local_address, peer_address, peer_port, count}: the most sockets sharing one
                        local address and peer address:port with a local port in ip_local_port_range
                        that nothing listens on (ephemeral-port pressure); None values and 0 when none
    """
    families = tuple(families)
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"families: unknown family {family!r}; valid families: ipv4, ipv6")
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ValueError(f"top: must be a non-negative integer, got {top!r}")
    owner_states = _check_states("owner_states", owner_states)
    track_states = _check_states("track_states", track_states)
    aggregator = SocketAggregator(
        top=top,
        owner_states=owner_states,
        track_states=track_states,
        local_addresses=read_local_addresses(),
        ephemeral_range=read_ephemeral_range(),
    )
    source = "procfs" if procfs else "netlink"
    mask = ALL_STATES_MASK
    for family in families:
        if source == "netlink":
            try:
                sock, chunks = dump(family, mask)
                try:
                    aggregator.feed_netlink(family, chunks)
                finally:
                    sock.close()
                continue
            except DiagUnavailable as exc:
                if family == "ipv6" and not os.path.exists("/proc/net/tcp6"):
                    continue  # IPv6 is off in this kernel: there are no IPv6 sockets to miss
                source = "procfs"
                # Start over so one collection never mixes sources.
                aggregator = SocketAggregator(
                    top=top,
                    owner_states=owner_states,
                    track_states=track_states,
                    local_addresses=aggregator.local_addresses,
                    ephemeral_range=read_ephemeral_range(),
                )
                aggregator.warnings.append(f"netlink unavailable, using /proc/net/tcp: {exc}")
                for fam in families:
                    _read_procfs(aggregator, fam)
                break
        else:
            _read_procfs(aggregator, family)
    result = aggregator.result()
    result["source"] = source
    return result
