# Copyright (c) 2026, netstate.tcp contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The facts aggregator: streaming per-state aggregates over the socket records of one source.

Python stdlib only (runs on managed nodes).  :func:`collect_sockets` reads every
TCP socket of the current network namespace through ``_socket_records`` (netlink
sock_diag, or /proc/net/tcp{,6} when netlink is refused; never both in one
collection) and feeds :class:`SocketAggregator`, which keeps counts, queue
bytes, timers, top-N tables, listeners and the few per-socket keys owners and
persistent-socket detection need.
"""

from __future__ import annotations

import heapq
import itertools
import os
import socket
import struct
from array import array
from bisect import bisect_left
from collections import defaultdict

from ansible_collections.netstate.tcp.plugins.module_utils._netlink import (
    ALL_STATES_MASK,
    FAMILIES,
    RECORD_KEEP,
    ST_LISTEN,
    ST_NEW_SYN_RECV,
    STATE_NUMBERS,
    STATES,
    SWAP16,
    DiagUnavailable,
    decode_batches,
    family_name,
    iter_diag_rows,
    message_layouts,
    normalize_state,
    retry_interrupted,
)

# The /proc path (netlink refused) imports _socket_records and _procfs where it starts: AnsiballZ ships
# module_utils as source, so each file imported is compiled again on every module run.

TIMER_KINDS = ("retransmit", "persist", "keepalive", "time_wait", "zero_window", "max_retransmits")
# The /proc path has no socket cookie: a socket is known by a 64-bit hash of its four-tuple there.
_COOKIE_MASK = (1 << 64) - 1
# The fields the aggregator reads from each sock_diag message, unpacked as rows of
# (len, type_flags, state, timer, retrans, sport, dport, src, dst, cookie, rqueue, wqueue, inode);
# ports stay in network order (SWAP16 maps them when a result is built), and IPv4 addresses
# are native ints: an int hashes and compares faster than a fresh bytes object, and the hot
# loop's dict keys are made of them.
FACTS_LAYOUTS = message_layouts(RECORD_KEEP - {"idiag_expires", "idiag_uid"}, v4_address="I12x")
# The same rows with a placeholder (the cookie's first byte) in the cookie slot, for an
# aggregator that tracks no state: it never reads a cookie, and a 64-bit int is one
# allocation per socket in the hot loop.
FACTS_LAYOUTS_NO_COOKIE = message_layouts(RECORD_KEEP - {"idiag_expires", "idiag_uid"}, v4_address="I12x", cookie="B7x")
# port_kind values: what a socket on that local port is for the outgoing-connection tables.
_LISTENING, _FIXED_PORT, _EPHEMERAL_PORT = 0, 1, 2


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


_V4_NATIVE = struct.Struct("=I")


def _addr_text(key):
    """Address key -> text: an int (IPv4 read as a native u32 from netlink) or packed bytes (4 or 16)."""
    if isinstance(key, int):
        key = _V4_NATIVE.pack(key)
    return socket.inet_ntop(socket.AF_INET if len(key) == 4 else socket.AF_INET6, key)


def _endpoint(packed, wire_port):
    text = _addr_text(packed)
    port = SWAP16[wire_port]
    if ":" in text:
        return f"[{text}]:{port}"
    return f"{text}:{port}"


def _first(key):
    return key[0]


def _second(key):
    return key[1]


def _peer_endpoint(triple):
    return triple[1:]


def _contains(sorted_cookies, cookie):
    index = bisect_left(sorted_cookies, cookie)
    return index < len(sorted_cookies) and sorted_cookies[index] == cookie


def _wire_port_kinds(low, high):
    """bytearray indexed by wire-order port: _EPHEMERAL_PORT inside [low, high] (host order), else _FIXED_PORT.

    Built without a Python step per port: the host-order table, seen as 256 rows (high
    byte) of 256 columns (low byte), is transposed by 256 slices, which swaps the bytes
    of every index on a little-endian host.
    """
    low, high = max(low, 0), min(high, 65535)
    host = bytearray([_FIXED_PORT]) * 65536
    if low <= high:
        host[low : high + 1] = bytes([_EPHEMERAL_PORT]) * (high - low + 1)
    if SWAP16[1] == 1:  # pragma: no cover - big-endian hosts: wire order is host order
        return host
    return bytearray(b"".join(host[column::256] for column in range(256)))


class SocketAggregator:
    """Streaming aggregates over TCP socket records (batches from ``_socket_records``).

    Memory grows with distinct keys (ports, addresses, outgoing peer endpoints,
    owner-state sockets), never with a per-socket object; persistent-socket
    detection keeps 8 bytes (a cookie in an array) per socket in a tracked state.
    Per-state tables are lists indexed by the kernel state number (a byte, so any
    value read from a corrupt stream stays in range).

    ``persistent_before``: the sorted cookies (``result()["_tracked"]``) of an
    earlier sample; sockets in a tracked state found there are counted in
    ``result()["_persistent"]``.
    """

    def __init__(
        self,
        top=10,
        owner_states=(),
        track_states=(),
        local_addresses=None,
        ephemeral_range=None,
        *,
        persistent_before=None,
    ):
        self.top = int(top)
        self.local_addresses = local_addresses if local_addresses is not None else set()
        low, high = ephemeral_range or (32768, 60999)
        # Per family, sockets by (state << 8) | idiag_timer, every socket counted (timer 0: none):
        # a state's count is the sum of its row, so the hot loop keeps no separate count.
        # States above NEW_SYN_RECV never get here (``special`` skips them).
        self.state_timers = {"ipv4": [0] * ((ST_NEW_SYN_RECV + 1) << 8), "ipv6": [0] * ((ST_NEW_SYN_RECV + 1) << 8)}
        self.send_bytes = [0] * 256
        self.recv_bytes = [0] * 256
        self.max_retrans = [0] * 256
        # Local-port counts in a flat table indexed (state << 16) | wire port: a slot is much
        # cheaper than a dict insert when ephemeral ports make most keys distinct.  An array, not
        # a list: 3.4 MB of zeros filled at C speed, which the garbage collector never walks (a
        # list of 851,968 slots cost about 10 ms per run to fill, walk and free, on every host).
        self.port_counts = array("I", [0]) * ((ST_NEW_SYN_RECV + 1) << 16)
        # One dict update per socket feeds by_local_address, by_peer, by_peer_endpoint and the
        # busiest tuple (each is summed from these tables when the result is built):
        # - accepted connections (on a port something listens on) count (src, dst) per state:
        #   their peer port is the client's ephemeral port, one key per socket naming nobody;
        # - outgoing connections (on a local port nothing listens on) count (src, dst, wire
        #   dport) per (port kind << 8) | state, the kind telling ephemeral-range ports apart.
        self.incoming = [defaultdict(int) for _state in range(256)]
        self.outgoing = [defaultdict(int) for _slot in range((_EPHEMERAL_PORT + 1) << 8)]
        # Kind of each wire-order local port; both dumps (netlink and /proc) list listeners
        # before connections, so a listener marks its port before any socket on it is counted.
        self.port_kind = _wire_port_kinds(low, high)
        self.owner_inodes = {}
        # The rows this aggregator reads from netlink: cookies only when a state is tracked.
        self.layouts = FACTS_LAYOUTS if track_states else FACTS_LAYOUTS_NO_COOKIE
        self.tracked = array("Q")
        self.before = persistent_before
        self.persistent = {name: {"count": 0, "send_bytes": 0} for name in track_states}
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

    def feed(self, family, batches, listen_backlog_known=True):
        """Aggregate one family's row batches (FACTS_LAYOUTS rows); returns the number of sockets counted.

        ``listen_backlog_known`` False says the rows carry no listen backlog (procfs).
        radon grades this loop above C on purpose: it is the consumer's hot loop (one
        pass per socket over the decoder's rows), and every call split out of it costs
        a measurable share of a 300k-socket dump.
        """
        timers = self.state_timers[family_name(family)]
        send_bytes, recv_bytes, max_retrans = self.send_bytes, self.recv_bytes, self.max_retrans
        port_counts, incoming, outgoing = self.port_counts, self.incoming, self.outgoing
        port_kind, special = self.port_kind, self.special
        listen_slot = ST_LISTEN << 8  # listeners are counted with timer 0: the listener table has their details
        if not listen_backlog_known:
            self.listen_backlog_known = False
        before = sum(timers)
        for batch in batches:
            for _len, _type_flags, st, timer, retrans, sport, dport, src, dst, cookie, rq, wq, ino in batch:
                if special[st]:
                    if special[st] == 2:
                        self.unknown_states += 1
                        continue
                    if st == ST_LISTEN:
                        timers[listen_slot] += 1
                        # LISTEN "queues" are not bytes: rqueue is the accept-queue length, wqueue the backlog.
                        self._add_listener(src, sport, rq, wq if self.listen_backlog_known else None, ino)
                        continue
                    self._special(st, ino, wq, cookie)
                timers[(st << 8) | timer] += 1  # the socket's count too (see state_timers)
                if wq:
                    send_bytes[st] += wq
                if rq:
                    recv_bytes[st] += rq
                # retrans is mostly 0: test it first; only sockets in a timer count towards the maximum.
                if retrans and timer and retrans > max_retrans[st]:
                    max_retrans[st] = retrans
                port_counts[(st << 16) | sport] += 1
                kind = port_kind[sport]
                if kind:
                    outgoing[(kind << 8) | st][(src, dst, dport)] += 1
                else:
                    incoming[st][(src, dst)] += 1
        return sum(timers) - before

    def feed_records(self, family, record_batches, source="netlink"):
        """Aggregate batches of records (the ``_socket_records`` layout) of one family.

        The path of /proc records (``source`` "procfs": no listen backlog, no cookie,
        so a socket is known by its four-tuple); netlink dumps go through
        :meth:`feed_netlink` or :func:`collect_sockets`, which skip the record tuples.
        """
        swap = SWAP16
        rows = (
            [
                (0, 0, st, tm, rt, swap[sp], swap[dp], src, dst, (src, sp, dst, dp) if ck is None else ck, rq, wq, ino)
                for st, src, sp, dst, dp, rq, wq, tm, rt, _ex, _uid, ino, ck, _attrs in batch
            ]
            for batch in record_batches
        )
        return self.feed(family, rows, source != "procfs")

    def feed_netlink(self, family, chunks, status=None):
        """Aggregate recorded or live netlink datagrams of one family's dump."""
        return self.feed(family, decode_batches(chunks, family, self.layouts, warnings=self.warnings, status=status))

    def feed_procfs(self, family, lines):
        """Aggregate /proc/net/tcp or tcp6 text given line by line (malformed lines: one warning)."""
        from ansible_collections.netstate.tcp.plugins.module_utils._procfs import parse_record_batches  # noqa: PLC0415

        return self.feed_records(family, parse_record_batches(lines, family, warnings=self.warnings), "procfs")

    def _add_listener(self, src, wire_port, accept_queue, backlog, inode):
        self.port_kind[wire_port] = _LISTENING
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

    def _special(self, st, inode, send_bytes, cookie):
        """Owner inodes and persistent-socket cookies (a four-tuple from procfs, hashed to 64 bits)."""
        table = self.owner_tables[st]
        if table is not None and inode:
            table[inode] = table.get(inode, 0) + 1
        name = self.track_names[st]
        if name is None:
            return
        if not isinstance(cookie, int):
            cookie = hash(cookie) & _COOKIE_MASK
        self.tracked.append(cookie)
        if self.before is not None and _contains(self.before, cookie):
            persistent = self.persistent[name]
            persistent["count"] += 1
            persistent["send_bytes"] += send_bytes or 0

    # -- result ------------------------------------------------------------
    def _top_rows(self, table, row):
        return [row(key, count) for key, count in heapq.nlargest(self.top, table.items(), key=lambda kv: kv[1])]

    def _address_row(self, key, count):
        return {"address": _addr_text(key), "count": count}

    def _peer_row(self, key, count):
        text = _addr_text(key)
        return {"address": text, "count": count, "scope": address_scope(text, self.local_addresses)}

    def _peer_endpoint_row(self, key, count):
        text = _addr_text(key[0])
        port = SWAP16[key[1]]
        return {"address": text, "port": port, "count": count, "scope": address_scope(text, self.local_addresses)}

    def _top_ports(self, st):
        ports = self.port_counts[st << 16 : (st + 1) << 16]
        used = itertools.compress(range(65536), ports)  # only ports with sockets, at C speed
        return [
            {"port": SWAP16[port], "count": ports[port]}
            for port in heapq.nlargest(self.top, used, key=ports.__getitem__)
        ]

    def _sum_by(self, st, incoming_key, outgoing_key):
        """{key: count} of the sockets in state ``st``, keys picked from the incoming and outgoing tables."""
        merged = defaultdict(int)
        if incoming_key is not None:
            for pair, count in self.incoming[st].items():
                merged[incoming_key(pair)] += count
        for kind in (_FIXED_PORT, _EPHEMERAL_PORT):
            for triple, count in self.outgoing[(kind << 8) | st].items():
                merged[outgoing_key(triple)] += count
        return merged

    def _top(self, states):
        top = {"by_local_port": {}, "by_local_address": {}, "by_peer": {}, "by_peer_endpoint": {}}
        for name, st in STATE_NUMBERS.items():
            if not states[name] or st == ST_LISTEN:
                continue
            top["by_local_port"][name] = self._top_ports(st)
            by_local = self._sum_by(st, _first, _first)
            by_peer = self._sum_by(st, _second, _second)
            by_peer_endpoint = self._sum_by(st, None, _peer_endpoint)
            top["by_local_address"][name] = self._top_rows(by_local, self._address_row)
            top["by_peer"][name] = self._top_rows(by_peer, self._peer_row)
            top["by_peer_endpoint"][name] = self._top_rows(by_peer_endpoint, self._peer_endpoint_row)
        return top

    def _timer_count(self, st, timer):
        return sum(timers[(st << 8) | timer] for timers in self.state_timers.values())

    def _state_counts(self, fam):
        timers = self.state_timers[fam]
        return {name: sum(timers[number << 8 : (number + 1) << 8]) for name, number in STATE_NUMBERS.items()}

    def _timers(self, st):
        persist = self._timer_count(st, 4)
        return {
            "retransmit": self._timer_count(st, 1),
            "persist": persist,
            "keepalive": self._timer_count(st, 2),
            "time_wait": self._timer_count(st, 3),
            # The kernel arms the zero-window probe (persist) timer only while the peer
            # advertises a zero window and data waits: those sockets are the zero-window ones.
            "zero_window": persist,
            "max_retransmits": self.max_retrans[st],
        }

    def _listener_rows(self):
        return [
            {
                "local": _endpoint(src, port),
                "accept_queue": accept_queue,
                "backlog": backlog,
                "fill": fill,
                "inode": inode,
            }
            for _key, accept_queue, _seq, src, port, backlog, fill, inode in sorted(self.listeners, reverse=True)
        ]

    def _busiest_tuple(self):
        tuples = defaultdict(int)  # (src, dst, wire dport) of sockets on an ephemeral local port, all states
        for st in range(256):
            for key, count in self.outgoing[(_EPHEMERAL_PORT << 8) | st].items():
                tuples[key] += count
        if not tuples:
            return {"local_address": None, "peer_address": None, "peer_port": None, "count": 0}
        (src, dst, dport), count = max(tuples.items(), key=lambda kv: kv[1])
        return {
            "local_address": _addr_text(src),
            "peer_address": _addr_text(dst),
            "peer_port": SWAP16[dport],
            "count": count,
        }

    def _warnings(self):
        warnings = list(self.warnings)
        if self.unknown_states:
            warnings.append(f"netlink dump: skipped {self.unknown_states} record(s) with an unknown TCP state")
        if not self.listen_backlog_known:
            warnings.append("listeners: /proc/net/tcp does not show the listen backlog; backlog and fill are null")
        return warnings

    def result(self):
        families = {fam: self._state_counts(fam) for fam in self.state_timers}
        states = {name: families["ipv4"][name] + families["ipv6"][name] for name in STATES}
        queues = {
            name: {"send_bytes": self.send_bytes[st], "recv_bytes": self.recv_bytes[st]}
            for name, st in STATE_NUMBERS.items()
            if st != ST_LISTEN
        }
        return {
            "total": sum(states.values()),
            "states": states,
            "families": families,
            "queues": queues,
            "listeners": self._listener_rows(),
            "timers": {name: self._timers(st) for name, st in STATE_NUMBERS.items()},
            "top": self._top(states),
            "warnings": self._warnings(),
            "_owner_inodes": self.owner_inodes,
            "_tracked": array("Q", sorted(self.tracked)),
            "_persistent": self.persistent if self.before is not None else None,
            "_busiest_tuple": self._busiest_tuple(),
        }


def _check_states(option, names):
    checked = []
    for name in names:
        state = normalize_state(name)
        if state is None:
            raise ValueError("{}: unknown TCP state {!r}; valid states: {}".format(option, name, ", ".join(STATES)))
        checked.append(state)
    return tuple(checked)


def _feed_procfs(aggregator, family, record_tap=None):
    from ansible_collections.netstate.tcp.plugins.module_utils._socket_records import iter_record_batches  # noqa: PLC0415

    try:
        batches = iter_record_batches(family, ALL_STATES_MASK, source="procfs", warnings=aggregator.warnings)
        aggregator.feed_records(family, batches if record_tap is None else record_tap.tap(family, batches), "procfs")
    except OSError as exc:
        path = "/proc/net/tcp" if family == "ipv4" else "/proc/net/tcp6"
        aggregator.warnings.append(f"procfs: cannot read {path}: {exc.strerror or exc}")


def _check_options(families, top):
    for family in families:
        if family not in FAMILIES:
            raise ValueError(f"families: unknown family {family!r}; valid families: ipv4, ipv6")
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ValueError(f"top: must be a non-negative integer, got {top!r}")


def collect_sockets(
    families=("ipv4", "ipv6"),
    top=10,
    owner_states=("CLOSE_WAIT", "LISTEN"),
    track_states=(),
    procfs=False,
    *,
    persistent_before=None,
    record_tap=None,
):
    """Aggregate every TCP socket of the current network namespace.

    One netlink sock_diag dump per family (all states, no extensions); when netlink
    is unavailable, /proc/net/tcp{,6} (``procfs=True`` forces that path).  A dump the
    kernel flags as interrupted (NLM_F_DUMP_INTR) is collected once more, then
    reported in ``warnings``.  Raises ValueError naming the option on bad options,
    DiagError when a dump fails midway.  Returns::

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
                     by_peer: {state: [{address, count, scope}]},
                     by_peer_endpoint: {state: [{address, port, count, scope}]}} for states with
                    sockets (not LISTEN); by_peer_endpoint counts sockets on a local port nothing listens on
        warnings    [str]
        _owner_inodes   {state: {inode: count}} for owner_states (inode 0 never: nobody holds it)
        _tracked        sorted array("Q") of the cookies of the track_states sockets (procfs: a
                        64-bit hash of the four-tuple), for ``persistent_before`` of a later sample
        _persistent     {state: {count, send_bytes}} of track_states sockets also in persistent_before
                        (None without persistent_before)
        _busiest_tuple  {local_address, peer_address, peer_port, count}: the most sockets sharing one
                        local address and peer address:port with a local port in ip_local_port_range
                        that nothing listens on (ephemeral-port pressure); None values and 0 when none

    ``record_tap``: a second consumer of the same dump (the gate's exact counter), with
    ``tap_rows(family, batches)`` (FACTS_LAYOUTS rows; without ``track_states`` the cookie slot holds a
    placeholder) and ``tap(family, batches)`` (records,
    the procfs path) -> the batches, seen on their way, and ``restart()`` when the collection
    starts over (an interrupted dump, the procfs fallback).
    """
    families = tuple(families)
    _check_options(families, top)
    owner_states = _check_states("owner_states", owner_states)
    track_states = _check_states("track_states", track_states)
    local_addresses = read_local_addresses()

    def new_aggregator():
        return SocketAggregator(
            top=top,
            owner_states=owner_states,
            track_states=track_states,
            local_addresses=local_addresses,
            ephemeral_range=read_ephemeral_range(),
            persistent_before=persistent_before,
        )

    def attempt(on_interrupt):
        if procfs:
            return _collect_procfs(new_aggregator(), families, record_tap)
        aggregator = new_aggregator()
        if record_tap is not None:
            record_tap.restart()  # a retried dump is counted afresh
        for family in families:
            # Rows straight from the decoder (no record tuple per socket): the fast path of a full dump.
            batches = iter_diag_rows(
                family, ALL_STATES_MASK, aggregator.layouts, warnings=aggregator.warnings, on_interrupt=on_interrupt
            )
            if record_tap is not None:
                batches = record_tap.tap_rows(family, batches)
            try:
                aggregator.feed(family, batches)
            except DiagUnavailable as exc:
                if family == "ipv6" and not os.path.exists("/proc/net/tcp6"):
                    continue  # IPv6 is off in this kernel: there are no IPv6 sockets to miss
                # Start over so one collection never mixes sources.
                aggregator = new_aggregator()
                aggregator.warnings.append(f"netlink unavailable, using /proc/net/tcp: {exc}")
                return _collect_procfs(aggregator, families, record_tap)
        return aggregator, "netlink"

    aggregator, source = retry_interrupted(attempt)
    result = aggregator.result()
    result["source"] = source
    return result


def _collect_procfs(aggregator, families, record_tap=None):
    if record_tap is not None:
        record_tap.restart()
    for family in families:
        _feed_procfs(aggregator, family, record_tap)
    return aggregator, "procfs"
