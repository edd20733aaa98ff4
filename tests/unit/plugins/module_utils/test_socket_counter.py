# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_socket_counter on netlink dumps recorded from lab namespaces, against `ss -tanoe` recorded with them.

ss (iproute2) is the independent decoder: the counter's exact per-state totals,
local-port and peer counts must equal what ss listed, socket by socket.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter

import pytest
from collect_sockets_fixtures import NAMES, read_chunks, ss_rows

from ansible_collections.netstate.tcp.plugins.module_utils import _diag_filter as df
from ansible_collections.netstate.tcp.plugins.module_utils import _netlink as cs
from ansible_collections.netstate.tcp.plugins.module_utils import _socket_aggregate as sa
from ansible_collections.netstate.tcp.plugins.module_utils import _socket_counter as sc

FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


def recorded_records(name):
    for family, number in FAMILIES.items():
        for record in cs.decode_diag_stream(read_chunks(name, family), family):
            yield number, record


@pytest.mark.parametrize("name", NAMES)
def test_counts_equal_ss_for_every_state(name):
    rows = ss_rows(name)
    states = sorted({row["state"] for row in rows})
    counter = sc.SocketCounter(states, with_inodes=True)
    counter.feed(recorded_records(name))
    for state in states:
        mine = [row for row in rows if row["state"] == state]
        detail = counter.states[state]
        assert detail["total"] == len(mine), state
        assert detail["ports"] == dict(Counter(row["local"][1] for row in mine)), state
        if state != "LISTEN":
            # ss prints IPv4-mapped peers as ::ffff:a.b.c.d, as inet_ntop does
            assert detail["peers"] == dict(Counter(row["peer"][0] for row in mine)), state
    with_inode = {row["inode"]: row["state"] for row in rows if row["inode"]}
    assert {inode: state for inode, (state, _port) in counter.inode_of.items()} == with_inode


def test_uncounted_states_and_excluded_peers_are_dropped():
    rows = ss_rows("close_wait_leak")
    close_wait = [row for row in rows if row["state"] == "CLOSE_WAIT"]
    address, port = close_wait[0]["peer"]
    # one peer endpoint excluded, as the kernel would (the same program, run by the reference interpreter)
    counter = sc.SocketCounter(["CLOSE_WAIT"], peers=("not", df.address("peer", ipaddress.ip_network(address), port)))
    counter.feed(recorded_records("close_wait_leak"))
    expected = [row for row in close_wait if row["peer"] != (address, port)]
    assert len(expected) == len(close_wait) - 1
    assert counter.states["CLOSE_WAIT"]["total"] == len(expected)
    assert set(counter.states) == {"CLOSE_WAIT"}


def test_owners_are_attributed_per_pid_and_port():
    rows = ss_rows("close_wait_leak")
    close_wait = [row for row in rows if row["state"] == "CLOSE_WAIT"]
    counter = sc.SocketCounter(["CLOSE_WAIT"], with_inodes=True)
    counter.feed(recorded_records("close_wait_leak"))
    inodes = [row["inode"] for row in close_wait]
    # two processes share the sockets: pid 7 the first ten, pid 9 the rest
    held = {7: inodes[:10], 9: inodes[10:]}
    counter.attribute(held, read_comm=lambda pid: b"leaky-proxy" if pid == 7 else b"\xe5\x8f\xb0")
    port = close_wait[0]["local"][1]
    assert counter.states["CLOSE_WAIT"]["pids"] == {7: {port: 10}, 9: {port: len(inodes) - 10}}
    assert counter.comm == {7: b"leaky-proxy", 9: b"\xe5\x8f\xb0"}
    assert sorted(counter.owner_inodes()["CLOSE_WAIT"]) == sorted(inodes)


def test_count_sockets_makes_one_dump_and_one_pass():
    calls = {"dump": 0, "scan": 0}

    def records(query, warnings):
        calls["dump"] += 1
        assert query["states"] == ["CLOSE_WAIT"] and query["bytecode"] == b""
        return recorded_records("close_wait_leak")

    def scan(wanted, warnings=None):
        calls["scan"] += 1
        return {42: sorted(wanted)}

    counter, held = sc.count_sockets(["CLOSE_WAIT"], ports=(8080,), records=records, scan=scan)
    assert calls == {"dump": 1, "scan": 1}
    assert counter.states["CLOSE_WAIT"]["pids"][42]
    assert held == {42: sorted(counter.inode_of)}


@pytest.mark.parametrize("name", NAMES)
def test_tapping_the_facts_rows_counts_like_the_records(name):
    """The facts aggregator's rows (wire ports, IPv4 as native ints) seen by tap_rows give the same counts."""
    states = sorted({row["state"] for row in ss_rows(name)})
    from_records = sc.SocketCounter(states, with_inodes=True)
    from_records.feed(recorded_records(name))
    tapped = sc.SocketCounter(states, with_inodes=True)
    for family in FAMILIES:
        rows = cs.decode_batches(read_chunks(name, family), family, sa.FACTS_LAYOUTS)
        passed = list(tapped.tap_rows(family, rows))  # the batches go on unchanged to the aggregator
        assert sum(len(batch) for batch in passed) == sum(
            1 for _message in cs.decode_diag_stream(read_chunks(name, family), family)
        )
    assert tapped.states == from_records.states
    assert tapped.inode_of == from_records.inode_of
