# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_peer_namespaces on three lab namespaces recorded on one bridge (fixtures/peer_namespaces).

Each namespace's own addresses come from its recorded /proc/net/fib_trie and
if_inet6 (read with the collector's reader); the expectations from its recorded
``ip -o addr`` and from meta.json (which host listened, how many connections).
"""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _peer_namespaces as pn
from ansible_collections.netstate.tcp.plugins.module_utils._socket_aggregate import read_local_addresses

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "peer_namespaces")
with open(os.path.join(FIXTURES, "meta.json"), encoding="utf-8") as _fh:
    META = json.load(_fh)
HOSTS = META["hosts"]


def block(alias):
    with open(os.path.join(FIXTURES, alias, "tcp_state.json"), encoding="utf-8") as fh:
        return json.load(fh)


def own_addresses(alias, tmp_path):
    """The namespace's addresses as the facts read them (read_local_addresses on the recorded /proc files)."""
    proc = tmp_path / alias / "proc"
    (proc / "net").mkdir(parents=True)
    for name in ("fib_trie", "if_inet6"):
        shutil.copyfile(os.path.join(FIXTURES, alias, f"{name}.txt"), proc / "net" / name)
    return read_local_addresses(str(proc))


def ip_addr_addresses(alias):
    """Addresses from the recorded ``ip -o addr show``, the independent source."""
    out = set()
    with open(os.path.join(FIXTURES, alias, "ip-addr.txt"), encoding="utf-8") as fh:
        for line in fh:
            words = line.split()
            out.add(words[3].split("/")[0])
    return out


@pytest.fixture
def listed(tmp_path):
    return [(HOSTS[a]["inode"], HOSTS[a]["name"], own_addresses(a, tmp_path)) for a in sorted(HOSTS)]


def lookup(containers=None):
    return pn.ContainerLookup({}) if containers is None else containers.get


def test_owners_are_each_namespaces_own_non_loopback_addresses(listed):
    owners = pn.address_owners(listed)
    for alias, host in HOSTS.items():
        expected = {a for a in ip_addr_addresses(alias) if not a.startswith("127.") and a != "::1"}
        assert {a for a, owner in owners.items() if owner == (host["inode"], host["name"])} == expected
        assert owners[host["bridge_address"]] == (host["inode"], host["name"])
    assert not any(a.startswith("127.") or a == "::1" for a in owners)


def test_peer_in_another_namespace_is_named(listed):
    owners = pn.address_owners(listed)
    one = block("h1")
    named = pn.name_peers(one, owners, lookup())
    h2 = HOSTS["h2"]
    by_peer = one["top"]["by_peer"]
    assert named == 2  # ESTABLISHED and TIME_WAIT, both to h2
    for state, count in (("ESTABLISHED", META["held"]), ("TIME_WAIT", META["closed"])):
        (entry,) = [e for e in by_peer[state] if e["address"] == h2["bridge_address"]]
        assert entry["count"] == count
        assert entry["namespace"] == {"inode": h2["inode"], "name": h2["name"]}
        assert entry["container"] is None


def test_the_listeners_side_names_the_client(listed):
    owners = pn.address_owners(listed)
    two = block("h2")
    assert pn.name_peers(two, owners, lookup()) == 1
    (entry,) = two["top"]["by_peer"]["ESTABLISHED"]
    assert entry["address"] == HOSTS["h1"]["bridge_address"]
    assert entry["namespace"]["name"] == HOSTS["h1"]["name"]


def test_own_address_and_unknown_addresses_are_not_named(listed):
    owners = pn.address_owners(listed)
    one = block("h1")
    one["top"]["by_peer"]["ESTABLISHED"] += [
        {"address": HOSTS["h1"]["bridge_address"], "count": 1, "scope": "local"},
        {"address": "192.0.2.7", "count": 1, "scope": "remote"},
        {"address": "127.0.0.1", "count": 1, "scope": "loopback"},
    ]
    pn.name_peers(one, owners, lookup())
    for entry in one["top"]["by_peer"]["ESTABLISHED"][1:]:
        assert entry["namespace"] is None and entry["container"] is None


def test_address_in_two_namespaces_is_ambiguous(listed):
    inode, _name, addresses = listed[1]  # h2
    twin = (inode + 1000, "other", set(addresses))  # an isolated network reusing h2's range
    owners = pn.address_owners([*listed, twin])
    one = block("h1")
    assert pn.name_peers(one, owners, lookup()) == 0
    assert HOSTS["h2"]["bridge_address"] not in owners


def test_ipv4_mapped_peer_and_other_peer_lists(listed):
    owners = pn.address_owners(listed)
    h2 = HOSTS["h2"]
    one = block("h1")
    one["top"]["by_peer_endpoint"] = {
        "TIME_WAIT": [{"address": "::ffff:" + h2["bridge_address"], "port": META["server_port"], "count": 7}]
    }
    one["churn"] = {"peers": [{"address": h2["bridge_address"], "port": META["server_port"], "connects": 3}]}
    assert pn.name_peers(one, owners, lookup({h2["inode"]: "c0ffee"})) == 4
    assert one["top"]["by_peer_endpoint"]["TIME_WAIT"][0]["namespace"]["inode"] == h2["inode"]
    assert one["churn"]["peers"][0]["container"] == "c0ffee"


def test_same_namespace_listed_twice_keeps_its_name(listed):
    inode, name, addresses = listed[0]
    owners = pn.address_owners([(inode, None, addresses), *listed])
    assert owners[HOSTS["h1"]["bridge_address"]] == (inode, name)


def test_damaged_blocks_do_not_crash(listed):
    owners = pn.address_owners(listed)
    one = copy.deepcopy(block("h1"))
    one["top"]["by_peer"]["ESTABLISHED"].append("not a dict")
    one["top"]["by_peer"]["CLOSE"] = None
    one["churn"] = {"peers": None}
    assert pn.name_peers(one, owners, lookup()) == 2
    assert pn.name_peers({}, owners, lookup()) == 0


def test_container_from_a_process_cgroup(tmp_path):
    container = "a" * 64
    pid_dir = tmp_path / "4242"
    pid_dir.mkdir()
    (pid_dir / "cgroup").write_text(f"0::/system.slice/docker-{container}.scope\n")
    lookup_in = pn.ContainerLookup({7: 4242, 8: 999999}, proc=str(tmp_path))
    assert lookup_in(7) == container
    assert lookup_in(8) is None  # the process is gone
    assert lookup_in(9) is None  # no process known in that namespace
