# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_facts: option checks, and the tcp_state dict assembled from recordings of a lab namespace.

Two collect_sockets() dumps of the same namespace one second apart (fixtures/sockets,
with the ss -tan output taken right after) and the /proc tree of that namespace
(fixtures/proc) stand in for the kernel.
"""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _collect_system, _diagnose, _facts, _socket_aggregate
from ansible_collections.netstate.tcp.plugins.module_utils._netlink import STATES

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

# docs/architecture.md, "The `tcp_state` fact (schema 1): a contract": names are a contract.
SCHEMA_KEYS = [
    "schema",
    "collected_at",
    "source",
    "kernel",
    "namespace",
    "total",
    "states",
    "families",
    "queues",
    "listeners",
    "timers",
    "top",
    "owners",
    "sockstat",
    "counters",
    "rates",
    "persistent",
    "sysctls",
    "effective",
    "pressure",
    "findings",
    "warnings",
]


def load(*parts):
    with open(os.path.join(FIXTURES, *parts)) as handle:
        return json.load(handle)


def recorded_sockets(name, before=None):
    """A recorded collect_sockets() result; its per-socket ``_tracked`` record {cookie: [state, send_bytes]}
    is replayed through the aggregator's own bookkeeping (against ``before``'s cookies when given)."""
    data = load("sockets", name)
    aggregator = _socket_aggregate.SocketAggregator(
        track_states=_facts.PERSISTENT_STATES, persistent_before=before["_tracked"] if before else None
    )
    for cookie, (state, send_bytes) in data["_tracked"].items():
        aggregator._special(STATES.index(state) + 1, 0, send_bytes, int(cookie))
    replayed = aggregator.result()
    data["_tracked"], data["_persistent"] = replayed["_tracked"], replayed["_persistent"]
    return data


def ss_counts():
    """State counts from the recorded `ss -tan` of the namespace."""
    counts = {}
    with open(os.path.join(FIXTURES, "sockets", "close_wait_leak_ss.txt")) as handle:
        for line in handle.read().splitlines()[1:]:
            state = line.split()[0].replace("-", "_").replace("FIN_WAIT_", "FIN_WAIT").replace("SYN_RECV", "SYN_RECV")
            counts[state] = counts.get(state, 0) + 1
    return counts


def sample(name, at, before=None):
    system = _collect_system.collect_system(proc=os.path.join(FIXTURES, "proc", "netns_close_wait_leak"))
    return {
        "time": at,
        "collected_at": "2026-11-21T05:10:30Z",
        "sockets": recorded_sockets(name, before["sockets"] if before else None),
        "system": system,
        "inode": 4026532999,
        "warnings": [],
    }


@pytest.fixture
def options():
    return _facts.normalize_options({})


# ---- options ---------------------------------------------------------------


def test_defaults_are_the_documented_interface(options):
    assert options == {
        "top": 10,
        "owners": ["CLOSE_WAIT", "LISTEN"],
        "interval": 0,
        "namespaces": "current",
        "thresholds": _diagnose.DEFAULT_THRESHOLDS,
        "families": ["ipv4", "ipv6"],
        "trace": 0,
        "conntrack": True,
    }


def test_states_are_case_insensitive_and_accept_dashes():
    options = _facts.normalize_options({"owners": ["close-wait", "Listen", "CLOSE_WAIT", "fin_wait1"]})
    assert options["owners"] == ["CLOSE_WAIT", "LISTEN", "FIN_WAIT1"]
    assert _facts.normalize_options({"owners": []})["owners"] == []
    # `-a owners=` on the command line arrives as [""]: the scan is off.
    assert _facts.normalize_options({"owners": [""]})["owners"] == []


def test_namespaces_forms():
    assert _facts.normalize_options({"namespaces": "all"})["namespaces"] == "all"
    assert _facts.normalize_options({"namespaces": "blue,red"})["namespaces"] == ["blue", "red"]
    assert _facts.normalize_options({"namespaces": ["blue", "blue", "inode:1"]})["namespaces"] == ["blue", "inode:1"]
    # The keywords in any case, also as a list (what `namespaces: [current]` in a playbook gives).
    assert _facts.normalize_options({"namespaces": "ALL"})["namespaces"] == "all"
    assert _facts.normalize_options({"namespaces": ["current"]})["namespaces"] == "current"
    assert _facts.normalize_options({"namespaces": ["all"]})["namespaces"] == "all"
    assert _facts.normalize_options({"namespaces": ["blue", "all"]})["namespaces"] == "all"
    assert _facts.normalize_options({"namespaces": ["current", "blue"]})["namespaces"] == ["blue"]


@pytest.mark.parametrize(
    ("params", "option", "valid"),
    [
        ({"top": -1}, "top", "0 to 10000"),
        ({"top": True}, "top", "0 to 10000"),
        ({"interval": -0.5}, "interval", "0 to 300"),
        ({"interval": 301}, "interval", "0 to 300"),
        ({"owners": ["CLOSED_WAIT"]}, "owners", "CLOSE_WAIT, LAST_ACK"),
        ({"owners": {"a": 1}}, "owners", "ESTABLISHED"),
        ({"families": ["ipv5"]}, "families", "ipv4, ipv6"),
        ({"families": []}, "families", "ipv4, ipv6"),
        ({"namespaces": []}, "namespaces", "'current', 'all'"),
        ({"namespaces": 3}, "namespaces", "'current', 'all'"),
        ({"thresholds": {"close_wait_warnin": 5}}, "thresholds", "close_wait_warning"),
        ({"thresholds": {"close_wait_warning": -5}}, "thresholds", "close_wait_warning"),
        ({"thresholds": "x"}, "thresholds", "dict"),
        ({"conntrack": "no"}, "conntrack", "true or false"),
        ({"conntrack": 0}, "conntrack", "true or false"),
    ],
)
def test_bad_options_name_the_option_and_valid_values(params, option, valid):
    with pytest.raises(ValueError, match="^" + option) as err:
        _facts.normalize_options(params)
    assert valid in str(err.value)


# ---- assembly ------------------------------------------------------------------


def test_block_has_the_schema_keys_in_order(options):
    block = _facts.build_block(None, sample("close_wait_leak_2.json", 10.0), options)
    assert [key for key in block if key in SCHEMA_KEYS] == SCHEMA_KEYS
    assert set(SCHEMA_KEYS) <= set(block)
    assert block["schema"] == 1
    assert set(block["states"]) == set(STATES)
    assert block["namespace"] == {"inode": 4026532999, "name": None, "initial": False}
    assert not any(key.startswith("_") for key in block)
    assert block["rates"] == {}
    assert block["persistent"] == {}
    assert isinstance(block["findings"], list)
    # The block is what diagnose() sees: JSON-serialisable as Ansible needs.
    json.dumps(block)


def test_states_equal_the_recorded_ss(options):
    block = _facts.build_block(None, sample("close_wait_leak_2.json", 10.0), options)
    ss = ss_counts()
    for state in STATES:
        assert block["states"][state] == ss.get(state, 0), state


def test_listeners_get_their_owner(options):
    report = load("reports", "close_wait_leak.json")
    last = sample("close_wait_leak_2.json", 10.0)
    inode = next(
        item["inode"]
        for item in last["sockets"]["listeners"]
        if item["local"].endswith(f":{report['ports']['server'][0]}")
    )
    owners = ({"CLOSE_WAIT": [], "LISTEN": []}, {inode: {"pid": report["pid"], "comm": report["comm"]}})
    block = _facts.build_block(None, last, options, owners_result=owners)
    owned = [item for item in block["listeners"] if item["owner"]]
    assert [item["owner"] for item in owned] == [{"pid": report["pid"], "comm": "leaky-proxy"}]
    assert all("owner" in item for item in block["listeners"])


def test_host_figures_are_nulled_outside_the_initial_block(options):
    last = sample("close_wait_leak_2.json", 10.0)
    block = _facts.build_block(None, last, options, host_figures=False)
    for key, scope in block["sockstat"]["scope"].items():
        if scope == "host":
            assert block["sockstat"][key] is None, key
        else:
            assert block["sockstat"][key] == last["system"]["sockstat"][key], key
    assert block["pressure"]["orphans"]["count"] is None


def test_persistent_and_rates_from_two_samples(options):
    first = sample("close_wait_leak_1.json", 10.0)
    last = sample("close_wait_leak_2.json", 11.5, before=first)
    block = _facts.build_block(first, last, options)
    ss = ss_counts()
    # The leaked CLOSE_WAIT sockets were there in both dumps (same cookies).
    assert block["persistent"]["CLOSE_WAIT"]["count"] == ss["CLOSE_WAIT"] == 40
    assert block["persistent"]["FIN_WAIT1"] == {"count": ss.get("FIN_WAIT1", 0), "send_bytes": 0}
    assert block["persistent"]["LAST_ACK"]["count"] == ss.get("LAST_ACK", 0)
    assert block["interval"] == 1.5
    assert set(block["rates"]) == {name for _section, name in _collect_system.COUNTERS} - _collect_system.GAUGES


def test_persistent_sockets_needs_the_same_cookie_in_both():
    aggregator = _socket_aggregate.SocketAggregator(track_states=("FIN_WAIT1", "CLOSE_WAIT", "LAST_ACK"))
    aggregator._special(STATES.index("FIN_WAIT1") + 1, 0, 100, 1)
    aggregator._special(STATES.index("CLOSE_WAIT") + 1, 0, 0, 2)
    before = aggregator.result()["_tracked"]
    after = _socket_aggregate.SocketAggregator(
        track_states=("FIN_WAIT1", "CLOSE_WAIT", "LAST_ACK"), persistent_before=before
    )
    for state, send_bytes, cookie in (("FIN_WAIT1", 150, 1), ("CLOSE_WAIT", 0, 3), ("LAST_ACK", 7, 4)):
        after._special(STATES.index(state) + 1, 0, send_bytes, cookie)
    assert after.result()["_persistent"] == {
        "FIN_WAIT1": {"count": 1, "send_bytes": 150},
        "CLOSE_WAIT": {"count": 0, "send_bytes": 0},
        "LAST_ACK": {"count": 0, "send_bytes": 0},
    }


@pytest.mark.parametrize("name", ["close_wait_leak_time_wait.json", "listen_overflow.json"])
def test_recorded_facts_follow_the_schema(name):
    facts = load("facts", name)
    assert set(SCHEMA_KEYS) <= set(facts)
    assert set(facts["states"]) == set(STATES)
    assert facts["total"] == sum(facts["states"].values())


def test_recorded_listen_overflow_facts_name_the_slow_acceptor():
    facts = load("facts", "listen_overflow.json")
    report = load("reports", "listen_overflow.json")
    port = report["ports"]["server"][0]
    listener = next(item for item in facts["listeners"] if item["local"].endswith(f":{port}"))
    assert listener["owner"] == {"pid": report["pid"], "comm": report["comm"]}
    assert listener["accept_queue"] == report["accept_queue"]
    assert listener["backlog"] == report["backlog"]
    assert [finding["code"] for finding in facts["findings"]] == ["LISTEN_OVERFLOW"]


# ---- the docs/architecture.md contract, key by key ---------------------------

NUMBER = (int, float)


def check_contract(block):
    """Every name of docs/architecture.md's tcp_state schema, with its type and shape (extra keys are allowed)."""
    assert block["schema"] == 1
    assert isinstance(block["collected_at"], str) and block["collected_at"].endswith("Z")
    assert block["source"] in ("netlink", "procfs")
    assert isinstance(block["kernel"], str)
    assert set(block["namespace"]) >= {"inode", "name", "initial"}
    assert isinstance(block["namespace"]["initial"], bool)
    assert set(block["states"]) == set(STATES)
    assert all(isinstance(v, int) for v in block["states"].values())
    assert block["total"] == sum(block["states"].values())
    assert set(block["families"]) == {"ipv4", "ipv6"}
    for family in block["families"].values():
        assert set(family) == set(STATES)
    assert "LISTEN" not in block["queues"]
    for queue in block["queues"].values():
        assert set(queue) >= {"send_bytes", "recv_bytes"}
    fills = []
    for listener in block["listeners"]:
        assert set(listener) >= {"local", "accept_queue", "backlog", "fill", "owner"}
        assert listener["owner"] is None or set(listener["owner"]) >= {"pid", "comm"}
        fills.append(listener["fill"] or 0.0)
    assert fills == sorted(fills, reverse=True), "listeners are sorted by fill ratio"
    for timers in block["timers"].values():
        assert set(timers) >= {"retransmit", "persist", "keepalive", "time_wait", "zero_window", "max_retransmits"}
    assert set(block["top"]) >= {"by_local_port", "by_local_address", "by_peer"}
    for state, entries in block["top"]["by_local_port"].items():
        assert block["states"][state] > 0, "top lists only states that have sockets"
        assert all(set(e) >= {"port", "count"} for e in entries)
    for entries in block["top"]["by_local_address"].values():
        assert all(set(e) >= {"address", "count"} for e in entries)
    for entries in block["top"]["by_peer"].values():
        assert all(set(e) >= {"address", "count", "scope"} for e in entries)
        assert all(e["scope"] in ("loopback", "local", "remote") for e in entries)
    for entries in block["owners"].values():
        for owner in entries:
            assert set(owner) >= {"pid", "comm", "cmdline", "user", "cgroup", "container", "sockets"}
    sockstat = block["sockstat"]
    host_wide = {"tcp_orphan", "tcp_alloc", "tcp_mem_pages"}
    local = {"tcp_inuse", "tcp_tw"}
    assert set(sockstat) >= host_wide | local | {"tcp_mem_bytes", "tcp6_inuse", "scope"}
    assert all(sockstat["scope"][key] == "host" for key in host_wide)
    assert all(sockstat["scope"][key] == "namespace" for key in local)
    assert isinstance(block["counters"], dict) and isinstance(block["rates"], dict)
    assert isinstance(block["persistent"], dict)
    assert {"net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_orphan_retries", "net.ipv4.tcp_max_orphans"} <= set(
        block["sysctls"]
    )
    retries = block["sysctls"]["net.ipv4.tcp_orphan_retries"]
    assert block["effective"]["tcp_orphan_retries"] == (8 if retries == 0 else retries)
    pressure = block["pressure"]
    assert set(pressure["orphans"]) >= {"count", "limit", "ratio", "ratio_penalized_4x"}
    assert set(pressure["memory"]) >= {"pages", "low", "pressure", "high", "ratio_to_high"}
    assert set(pressure["time_wait"]) >= {"count", "limit", "ratio"}
    assert set(pressure["ephemeral_ports"]) >= {"range", "busiest_tuple", "in_use", "ratio"}
    assert isinstance(pressure["ephemeral_ports"]["busiest_tuple"], dict)
    if not block["namespace"]["initial"]:
        # tcp_max_orphans and tcp_mem do not exist in a non-initial namespace
        assert block["sysctls"]["net.ipv4.tcp_max_orphans"] is None
        assert pressure["orphans"]["limit"] is None and pressure["orphans"]["ratio"] is None
        assert pressure["memory"]["high"] is None and pressure["memory"]["ratio_to_high"] is None
    for finding in block["findings"]:
        assert set(finding) >= {"code", "severity", "summary", "evidence", "remediation"}
        assert finding["code"] in _diagnose.CODES
        assert finding["severity"] in ("info", "warning", "critical")
        assert set(finding["remediation"]) >= {"kind", "text", "sysctls"}
    assert isinstance(block["warnings"], list)


def test_assembled_block_follows_the_design_contract(options):
    options = dict(options, interval=1.5)
    first = sample("close_wait_leak_1.json", 10.0)
    last = sample("close_wait_leak_2.json", 11.5, before=first)
    block = _facts.build_block(first, last, options)
    check_contract(block)
    assert set(block["owners"]) == set(options["owners"])
    assert set(block["persistent"]) == {"FIN_WAIT1", "CLOSE_WAIT", "LAST_ACK"}
    assert set(block["rates"]) <= set(block["counters"]) and block["rates"]


@pytest.mark.parametrize(
    "name", sorted(n for n in os.listdir(os.path.join(FIXTURES, "facts")) if n.endswith(".json") and ".report" not in n)
)
def test_recorded_facts_follow_the_design_contract(name):
    """Facts the module gathered on lab namespaces and the initial one (fixtures/facts/record.py)."""
    check_contract(load("facts", name))
