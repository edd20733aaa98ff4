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

from ansible_collections.netstate.tcp.plugins.module_utils import _collect_system, _diagnose, _facts
from ansible_collections.netstate.tcp.plugins.module_utils._collect_sockets import STATES

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

# DESIGN.md, "Fact schema (ansible_facts.tcp_state, schema 1)": names are a contract.
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


def recorded_sockets(name):
    data = load("sockets", name)
    data["_tracked"] = {int(cookie): tuple(value) for cookie, value in data["_tracked"].items()}
    return data


def ss_counts():
    """State counts from the recorded `ss -tan` of the namespace."""
    counts = {}
    with open(os.path.join(FIXTURES, "sockets", "close_wait_leak_ss.txt")) as handle:
        for line in handle.read().splitlines()[1:]:
            state = line.split()[0].replace("-", "_").replace("FIN_WAIT_", "FIN_WAIT").replace("SYN_RECV", "SYN_RECV")
            counts[state] = counts.get(state, 0) + 1
    return counts


def sample(name, at):
    system = _collect_system.collect_system(proc=os.path.join(FIXTURES, "proc", "netns_close_wait_leak"))
    return {
        "time": at,
        "collected_at": "2026-11-21T05:10:30Z",
        "sockets": recorded_sockets(name),
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
    last = sample("close_wait_leak_2.json", 11.5)
    block = _facts.build_block(first, last, options)
    ss = ss_counts()
    # The leaked CLOSE_WAIT sockets were there in both dumps (same cookies).
    assert block["persistent"]["CLOSE_WAIT"]["count"] == ss["CLOSE_WAIT"] == 40
    assert block["persistent"]["FIN_WAIT1"] == {"count": ss.get("FIN_WAIT1", 0), "send_bytes": 0}
    assert block["persistent"]["LAST_ACK"]["count"] == ss.get("LAST_ACK", 0)
    assert block["interval"] == 1.5
    assert set(block["rates"]) == {name for _section, name in _collect_system.COUNTERS} - _collect_system.GAUGES


def test_persistent_sockets_needs_the_same_cookie_in_both():
    before = {1: ("FIN_WAIT1", 100), 2: ("CLOSE_WAIT", 0)}
    after = {1: ("FIN_WAIT1", 150), 3: ("CLOSE_WAIT", 0), 4: ("LAST_ACK", 7)}
    assert _facts.persistent_sockets(before, after) == {
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
