# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Peers that are other namespaces of the same host are named (lab hosts on one bridge, real sockets).

h1 connects to a listener on h2's bridge address (some connections held ESTABLISHED,
some closed by h1 first: TIME_WAIT in h1); h3 is on the bridge and idle.  Facts
gathered from the host for several namespaces must name h2 as the peer in h1's
block and h1 as the peer in h2's.
"""

from __future__ import annotations

import os

import pytest
from lab_probes import bridge_connections

from ansible_collections.netstate.tcp.plugins.module_utils import _facts, _netns

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
]

HELD = 6
CLOSED = 9


@pytest.fixture
def bridged(bare_lab):
    """(lab, bridge addresses, h2's listening port) with HELD ESTABLISHED and CLOSED TIME_WAIT h1 -> h2."""
    lab = bare_lab(hosts=3)
    addresses = lab.add_bridge()
    port, keep = bridge_connections(lab, "h1", "h2", HELD, CLOSED)
    try:
        yield lab, addresses, port
    finally:
        for sock in keep:
            sock.close()


def peer_entry(block, state, address):
    entries = block["top"]["by_peer"].get(state, [])
    found = [entry for entry in entries if entry["address"] == address]
    assert len(found) == 1, entries
    return found[0]


def gather(namespaces):
    return _facts.gather_facts(_facts.normalize_options({"namespaces": namespaces, "owners": []}))


def test_peer_in_another_namespace_is_named(bridged):
    lab, addresses, port = bridged
    h1, h2, h3 = lab.hosts
    facts = gather([h1.name, h2.name, h3.name])
    blocks = facts["tcp_state_namespaces"]
    one, two = blocks[h1.name], blocks[h2.name]

    established = peer_entry(one, "ESTABLISHED", addresses["h2"])
    assert established["count"] == HELD
    assert established["namespace"] == {"inode": h2.netns_inode, "name": h2.name}
    assert established["container"] is None
    time_wait = peer_entry(one, "TIME_WAIT", addresses["h2"])
    assert time_wait["count"] == CLOSED
    assert time_wait["namespace"] == {"inode": h2.netns_inode, "name": h2.name}

    back = peer_entry(two, "ESTABLISHED", addresses["h1"])
    assert back["count"] == HELD
    assert back["namespace"] == {"inode": h1.netns_inode, "name": h1.name}

    endpoints = one["top"].get("by_peer_endpoint")
    if endpoints is not None:  # the busiest peer address:port per state
        entry = next(e for e in endpoints["TIME_WAIT"] if e["address"] == addresses["h2"] and e["port"] == port)
        assert entry["namespace"] == {"inode": h2.netns_inode, "name": h2.name}
    # Every other peer entry says no other namespace owns it (keys present, null).
    for block in (facts["tcp_state"], one, two, blocks[h3.name]):
        for entries in block["top"]["by_peer"].values():
            for entry in entries:
                assert "namespace" in entry and "container" in entry
                if entry["address"] not in (addresses["h1"], addresses["h2"]):
                    assert entry["namespace"] is None


def test_with_namespaces_all(bridged):
    lab, addresses, _port = bridged
    h1, h2 = lab.hosts[0], lab.hosts[1]
    facts = gather("all")
    one = facts["tcp_state_namespaces"][h1.name]
    assert peer_entry(one, "ESTABLISHED", addresses["h2"])["namespace"] == {"inode": h2.netns_inode, "name": h2.name}


def test_only_with_several_namespaces(bridged):
    """With `namespaces: current` there is no pass over the namespaces: no naming keys."""
    lab, addresses, _port = bridged
    h1 = lab.hosts[0]
    with _netns.entered(f"/run/netns/{h1.name}"):
        facts = gather("current")
    entry = peer_entry(facts["tcp_state"], "ESTABLISHED", addresses["h2"])
    assert "namespace" not in entry and "container" not in entry
