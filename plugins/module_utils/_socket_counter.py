# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The exact counter: per-state socket counts by local port, peer and owner (the gate's consumer).

Where the facts aggregator keeps top-N tables of every state, the counter keeps
exact figures for the few states a gate names: how many sockets, on which local
ports, to which peers, and (after one /proc/<pid>/fd pass of the owners layer)
held by which pid on which port.  It is fed (family, record) pairs from the same
record source as the aggregator: one kernel dump whose state mask holds only
the counted states (and a port filter when no owner is needed), or, as the
record tap of the facts collection, the facts' own dump.
"""

from __future__ import annotations

import socket
import struct

from ansible_collections.netstate.tcp.plugins.module_utils import _diag_filter as df
from ansible_collections.netstate.tcp.plugins.module_utils import _netlink as cs
from ansible_collections.netstate.tcp.plugins.module_utils import _owners, _socket_info

_LISTEN = cs.STATE_NUMBERS["LISTEN"]
# the aggregator's rows hold an IPv4 address as the native int its network-order bytes read as
_V4 = struct.Struct("=I")


class SocketCounter:
    """Exact counts of `states`: {STATE: {total, ports: {port: n}, peers: {addr: n}, pids: {pid: {port: n}}}}.

    peers: a _diag_filter node the sockets must match to be counted (gate's exclude_peers and
    peer_addresses), None for every socket.  The kernel applies it in dump_into(); records
    that reach the counter another way (tap) are checked here with the same program.
    """

    def __init__(self, states, with_inodes=False, peers=None):
        self.with_inodes = with_inodes
        self.peers = peers
        self.peer_program = df.compile_filter(peers)
        self.names = tuple(states)
        self.restart()

    def restart(self):
        """Forget every count (the dump starts over)."""
        self.states = {state: {"total": 0, "ports": {}, "peers": {}, "pids": {}} for state in self.names}
        self.inode_of = {}  # socket inode -> (state, local port), for the owner pass
        self.comm = {}  # pid -> comm bytes

    def tap(self, family, batches):
        """Count record batches of one family on their way to another consumer (the facts aggregator)."""
        number = cs.family_number(family)
        for batch in batches:
            self.feed((number, record) for record in batch)
            yield batch

    def _excluded(self, family, record):
        sock = (family, record[cs.R_SRC], record[cs.R_SPORT], record[cs.R_DST], record[cs.R_DPORT])
        return not df.run_bytecode(self.peer_program, sock)

    def tap_rows(self, family, batches):
        """tap() for the facts aggregator's rows (_socket_aggregate.FACTS_LAYOUTS: wire-order ports,
        IPv4 addresses as native ints), turned into records only for the counted states."""
        number = cs.family_number(family)
        counted = bytearray(256)
        for state in self.names:
            counted[cs.STATE_NUMBERS[state]] = 1
        swap, pack = cs.SWAP16, _V4.pack
        v4 = number == socket.AF_INET
        for batch in batches:
            rows = [row for row in batch if counted[row[2]]]
            if rows:
                self.feed((number, _row_record(row, swap, pack if v4 else None)) for row in rows)
            yield batch

    def feed(self, records, filtered=False):
        """Count every (family, record) pair of an iterable (`filtered`: the peer filter was applied already)."""
        check_peers = bool(self.peer_program) and not filtered
        for family, record in records:
            number = record[cs.R_STATE]
            state = cs.STATES[number - 1]
            detail = self.states.get(state)
            if detail is None or (check_peers and self._excluded(family, record)):
                continue  # a state not counted (NEW_SYN_RECV is reported as SYN_RECV) or a peer not counted
            sport = record[cs.R_SPORT]
            detail["total"] += 1
            detail["ports"][sport] = detail["ports"].get(sport, 0) + 1
            if number != _LISTEN:
                peer = socket.inet_ntop(family, bytes(record[cs.R_DST]))
                detail["peers"][peer] = detail["peers"].get(peer, 0) + 1
            if self.with_inodes and record[cs.R_INODE]:
                self.inode_of[record[cs.R_INODE]] = (state, sport)

    def attribute(self, held, read_comm=_owners.read_comm_bytes):
        """Owners from scan_socket_fds()'s {pid: [inode]}: per pid and local port, plus each pid's comm bytes."""
        for pid, inodes in held.items():
            for inode in inodes:
                state, sport = self.inode_of[inode]
                per_port = self.states[state]["pids"].setdefault(pid, {})
                per_port[sport] = per_port.get(sport, 0) + 1
            self.comm[pid] = read_comm(pid)

    def owner_inodes(self):
        """{STATE: [inode]} of the counted sockets (for _owners.find_owners)."""
        result = {state: [] for state in self.states}
        for inode, (state, _sport) in self.inode_of.items():
            result[state].append(inode)
        return result


def _row_record(row, swap, pack_v4):
    """A FACTS_LAYOUTS row as a record (the fields the counter reads; the others zero or None)."""
    # The cookie slot is not read: the aggregator may fill it with a placeholder (FACTS_LAYOUTS_NO_COOKIE).
    _len, _type, state, timer, retrans, sport, dport, src, dst, _cookie, rqueue, wqueue, inode = row
    if pack_v4 is not None:
        src, dst = pack_v4(src), pack_v4(dst)
    return (state, src, swap[sport], dst, swap[dport], rqueue, wqueue, timer, retrans, 0, 0, inode, None, None)


def dump_into(counter, ports=(), *, records=None, warnings=None):
    """One kernel dump of the counter's states into it; the kernel also filters `ports` (local) when given,
    and the counter's peers.

    records: the record source, `records(query, warnings)` -> (family, record) pairs
    (default: netlink, /proc/net/tcp where netlink is refused).
    """
    port_node = df.any_of(df.port_range("local", p, p) for p in sorted(ports))
    bytecode = df.compile_filter(df.all_of([port_node, counter.peers]))
    query = {"states": list(counter.names), "bytecode": bytecode, "details": False}
    # iter_matches runs the same program in user space where netlink is refused
    source = _socket_info.iter_matches(query, None, warnings=warnings) if records is None else records(query, warnings)
    counter.feed(source, filtered=True)


def resolve_owners(counter, *, scan=None, warnings=None):
    """The one /proc/<pid>/fd pass for the counted sockets' inodes: {pid: [inode]} ({} when none)."""
    if not counter.inode_of:
        return {}
    held = (scan or _owners.scan_socket_fds)(set(counter.inode_of), warnings=warnings)
    counter.attribute(held)
    return held


def count_sockets(states, ports=(), with_owners=True, *, peers=None, records=None, scan=None, warnings=None):
    """dump_into() a new SocketCounter of `states`, then resolve_owners() when `with_owners`: (counter, held).

    ports: filtered by the kernel only when no owner is wanted (owners name every port).
    """
    warnings = warnings if warnings is not None else []
    counter = SocketCounter(states, with_inodes=with_owners, peers=peers)
    if states:
        dump_into(counter, () if with_owners else ports, records=records, warnings=warnings)
    held = resolve_owners(counter, scan=scan, warnings=warnings) if with_owners else {}
    return counter, held
