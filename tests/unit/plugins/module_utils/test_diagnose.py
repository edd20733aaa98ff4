"""Unit tests of _diagnose: findings from tcp_state facts recorded in lab namespaces.

Fixtures: fixtures/facts/lab_<case>.json is the tcp_state dict _facts.gather_facts
returned inside a lab namespace holding a scenario's sockets, and
lab_<case>.report.json is the scenario's own account of what it made (the
independent source). Variants change the relevant numbers of a recorded base.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ansible_collections.netstate.tcp.plugins.doc_fragments.thresholds import ModuleDocFragment
from ansible_collections.netstate.tcp.plugins.module_utils import _diagnose as diag
from ansible_collections.netstate.tcp.plugins.module_utils import _remediation
from ansible_collections.netstate.tcp.plugins.module_utils._collect_system import ORPHAN_RETRIES_ZERO_MEANS
from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import (
    CODES,
    DEFAULT_THRESHOLDS,
    SEVERITIES,
    THRESHOLD_SPEC,
    diagnose,
    severity_rank,
    validate_thresholds,
)
from ansible_collections.netstate.tcp.plugins.plugin_utils import _fleet_report

FIXTURES = Path(__file__).parent / "fixtures" / "facts"
CASES = ("clean", "close_wait_leak", "time_wait_churn", "fin_wait1_zero_window", "listen_overflow", "syn_recv")


def load(case):
    facts = json.loads((FIXTURES / f"lab_{case}.json").read_text(encoding="utf-8"))
    facts["findings"] = []  # recorded with an older _diagnose: the tests compute their own
    return facts


def report(case):
    return json.loads((FIXTURES / f"lab_{case}.report.json").read_text(encoding="utf-8"))


def by_code(findings):
    return {f["code"]: f for f in findings}


def with_traced_churn(facts, rep, seconds=5.0):
    """A churn block as tcp_state_facts `trace` reports it (docs/architecture.md `churn`), added to a recorded fixture.

    The trace collector (h7) is not recorded yet: the block is built from the scenario's own report,
    whose process made rep["count"] connections to its server port and closed each one first.
    """
    port = rep["ports"]["server"][0]
    closes = rep["count"]
    facts["churn"] = {
        "source": "tracefs",
        "seconds": seconds,
        "events": 2 * closes,
        "lost_events": 0,
        "processes": [
            {
                "pid": rep["pid"],
                "comm": rep["comm"],
                "cmdline": "python -m netstate_lab.scenario",
                "user": "root",
                "container": None,
                "netns": {"inode": facts["namespace"]["inode"], "name": facts["namespace"]["name"]},
                "connects": closes,
                "active_closes": closes,
                "passive_closes": 0,
                "connects_per_second": closes / seconds,
                "active_closes_per_second": closes / seconds,
                "top_peers": [{"address": "127.0.0.1", "port": port, "count": closes}],
            }
        ],
        "peers": [{"address": "127.0.0.1", "port": port, "connects": closes, "active_closes": closes}],
    }
    return facts


def with_conntrack(facts, count, limit=262144, available=True):
    """A conntrack block (architecture.md `conntrack`) added to a recorded fixture; the collector (h8) is not recorded
    yet. States are split as a TIME_WAIT churn fills the table; timeouts are the kernel's defaults."""
    facts["conntrack"] = {
        "available": available,
        "count": count if available else None,
        "max": limit if available else None,
        "ratio": round(count / limit, 4) if available else None,
        "states": {"ESTABLISHED": count // 10, "TIME_WAIT": count - count // 10, "CLOSE_WAIT": 0},
        "timeouts": {"time_wait": 120, "close_wait": 60, "established": 432000},
    }
    return facts


def worst(findings):
    return max((severity_rank(f["severity"]) for f in findings), default=-1)


def check_shape(findings):
    for f in findings:
        assert set(f) == {"code", "severity", "summary", "evidence", "remediation"}
        assert f["code"] in CODES
        assert f["severity"] in SEVERITIES
        assert isinstance(f["summary"], str) and f["summary"]
        assert isinstance(f["evidence"], dict)
        assert f["remediation"]["kind"] in diag.REMEDIATION_KINDS
        assert isinstance(f["remediation"]["text"], str) and f["remediation"]["text"]
        assert isinstance(f["remediation"]["sysctls"], dict)
        profile = f["remediation"]["profile"]
        assert profile == (_remediation.FINDING_PROFILES.get(f["code"]) if f["remediation"]["sysctls"] else None)
        json.dumps(f)  # facts must serialize
    ranks = [(-severity_rank(f["severity"]), CODES.index(f["code"])) for f in findings]
    assert ranks == sorted(ranks), "findings are not sorted worst first"
    assert len({f["code"] for f in findings}) == len(findings)


# ---- recorded scenarios, default thresholds ---------------------------------


@pytest.mark.parametrize("case", [*CASES, "initial_ns", "fin_wait1_zero_window_interval", "listen_overflow_interval"])
def test_recorded_findings_are_well_formed(case):
    check_shape(diagnose(load(case)))


@pytest.mark.parametrize("case", ["clean", "initial_ns"])
def test_clean_host_has_nothing_above_info(case):
    facts = load(case)
    # The recorder saw no trouble: no CLOSE_WAIT/FIN_WAIT1, listeners with empty accept queues.
    assert facts["states"]["CLOSE_WAIT"] == facts["states"]["FIN_WAIT1"] == 0
    assert all(lst["accept_queue"] == 0 for lst in facts["listeners"])
    assert worst(diagnose(facts)) <= severity_rank("info")


def test_recorded_close_wait_leak_names_the_leaking_process():
    facts, rep = load("close_wait_leak"), report("close_wait_leak")
    assert rep["count"] >= DEFAULT_THRESHOLDS["close_wait_warning"]
    found = by_code(diagnose(facts))["CLOSE_WAIT_LEAK"]
    assert found["severity"] == ("critical" if rep["count"] >= DEFAULT_THRESHOLDS["close_wait_critical"] else "warning")
    pid = rep["owners"]["CLOSE_WAIT"]
    assert f"pid {pid} " in found["summary"]
    assert rep["comm"] in found["summary"]
    assert [o["pid"] for o in found["evidence"]["owners"]] == [pid]
    # The client process holds the FIN_WAIT2 ends, not CLOSE_WAIT: it must not be blamed.
    assert str(rep["pids"]["client"]) not in found["summary"]
    assert rep["ports"]["server"][0] in found["evidence"]["local_ports"]
    assert found["remediation"]["kind"] == "application"
    assert found["remediation"]["sysctls"] == {}
    assert "sysctl" in found["remediation"]["text"].lower()


def test_recorded_listen_overflow_names_listener_and_owner():
    facts, rep = load("listen_overflow"), report("listen_overflow")
    # The scenario queued backlog + 1 connections: the accept queue is over full.
    assert rep["accept_queue"] > rep["backlog"]
    found = by_code(diagnose(facts))["LISTEN_OVERFLOW"]
    assert found["severity"] == "critical"
    assert f"127.0.0.1:{rep['ports']['server'][0]}" in found["summary"]
    assert f"pid {rep['pid']} " in found["summary"]
    assert found["remediation"]["kind"] == "application"


def test_recorded_listen_overflow_with_interval_uses_growth():
    facts = load("listen_overflow_interval")
    assert facts["rates"]["ListenOverflows"] > 0
    found = by_code(diagnose(facts))["LISTEN_OVERFLOW"]
    assert "ListenOverflows_per_second" in found["evidence"]["counters"]
    # Growth alone (listener emptied) is critical above the rate threshold.
    facts["listeners"][0]["accept_queue"] = 0
    facts["listeners"][0]["fill"] = 0.0
    rate = max(facts["rates"]["ListenOverflows"], facts["rates"]["ListenDrops"])
    assert by_code(diagnose(facts, {"listen_drop_rate_critical": rate}))["LISTEN_OVERFLOW"]["severity"] == "critical"
    above = {"listen_drop_rate_critical": rate * 2}
    assert by_code(diagnose(facts, above))["LISTEN_OVERFLOW"]["severity"] == "warning"
    facts["rates"]["ListenOverflows"] = facts["rates"]["ListenDrops"] = 0.0
    assert "LISTEN_OVERFLOW" not in by_code(diagnose(facts)), "old counters that did not grow are not a finding"


def test_recorded_fin_wait1_below_thresholds_is_the_zero_window_signature_at_info():
    # Issue 11 item 5: a few FIN_WAIT1 sockets on the persist timer with unsent data are the hoard's signature.
    facts, rep = load("fin_wait1_zero_window"), report("fin_wait1_zero_window")
    assert rep["count"] < DEFAULT_THRESHOLDS["fin_wait1_warning"]
    assert rep["send_bytes"]["FIN_WAIT1"] < DEFAULT_THRESHOLDS["fin_wait1_bytes_warning"]
    findings = by_code(diagnose(facts))
    found = findings["FIN_WAIT1_STUCK"]
    assert found["severity"] == "info"
    assert found["evidence"]["below_thresholds"] is True
    assert found["evidence"]["persist"] == rep["timers"]["FIN_WAIT1"]["persist"] > 0
    summary = found["summary"]
    assert summary.startswith(f"{rep['count']} FIN_WAIT1 sockets hold ")
    assert diag._human_bytes(rep["send_bytes"]["FIN_WAIT1"]) in summary
    peer = facts["top"]["by_peer"]["FIN_WAIT1"][0]
    assert f"top peers {peer['address']} ({peer['count']})" in summary
    assert found["remediation"]["sysctls"] == {"net.ipv4.tcp_orphan_retries": _remediation.ORPHAN_RETRIES}
    # Info is no FIN_WAIT1 trouble yet: the 0-means-8 pitfall stays info.
    assert facts["sysctls"]["net.ipv4.tcp_orphan_retries"] == 0
    assert findings["ORPHAN_RETRIES_DEFAULT"]["severity"] == "info"


def test_recorded_fin_wait1_zero_window_persisting_across_the_interval_is_a_warning():
    facts = load("fin_wait1_zero_window_interval")
    assert 0 < facts["persistent"]["FIN_WAIT1"]["count"] < DEFAULT_THRESHOLDS["fin_wait1_warning"]
    found = by_code(diagnose(facts))["FIN_WAIT1_STUCK"]
    assert found["severity"] == "warning"
    assert f"{facts['persistent']['FIN_WAIT1']['count']} still there after the interval" in found["summary"]
    # Without the persist timer (peers reading again) the same few sockets are no signature.
    facts["timers"]["FIN_WAIT1"].update(persist=0, zero_window=0)
    assert "FIN_WAIT1_STUCK" not in by_code(diagnose(facts))


def test_fin_wait1_zero_window_needs_unsent_data():
    facts = load("fin_wait1_zero_window")
    facts["queues"]["FIN_WAIT1"]["send_bytes"] = 0
    assert "FIN_WAIT1_STUCK" not in by_code(diagnose(facts))


def test_recorded_fin_wait1_stuck_at_scenario_scale():
    facts, rep = load("fin_wait1_zero_window"), report("fin_wait1_zero_window")
    findings = by_code(diagnose(facts, {"fin_wait1_warning": rep["count"]}))
    found = findings["FIN_WAIT1_STUCK"]
    assert found["severity"] == "warning"
    assert found["evidence"]["send_bytes"] == rep["send_bytes"]["FIN_WAIT1"]
    assert found["evidence"]["persist"] == rep["timers"]["FIN_WAIT1"]["persist"]
    assert found["evidence"]["zero_window"] == facts["timers"]["FIN_WAIT1"]["zero_window"] > 0
    assert str(rep["count"]) in found["summary"]
    sysctls = found["remediation"]["sysctls"]
    assert 0 < sysctls["net.ipv4.tcp_orphan_retries"] < 8
    # tcp_max_orphans does not exist in the lab namespace: no value to set there.
    assert facts["sysctls"]["net.ipv4.tcp_max_orphans"] is None
    assert "net.ipv4.tcp_max_orphans" not in sysctls
    assert "net.ipv4.tcp_fin_timeout" not in sysctls
    assert "tcp_fin_timeout" in found["remediation"]["text"]
    # Combined with FIN_WAIT1 trouble the 0-means-8 pitfall is a warning.
    assert findings["ORPHAN_RETRIES_DEFAULT"]["severity"] == "warning"


def test_recorded_fin_wait1_interval_uses_persistent_sockets():
    facts = load("fin_wait1_zero_window_interval")
    stuck = facts["persistent"]["FIN_WAIT1"]["count"]
    assert stuck == facts["states"]["FIN_WAIT1"] > 0
    assert "FIN_WAIT1_STUCK" in by_code(diagnose(facts, {"fin_wait1_warning": stuck}))
    # Same count now, but none survived the interval: transient, not stuck.
    facts["persistent"]["FIN_WAIT1"] = {"count": 0, "send_bytes": 0}
    assert "FIN_WAIT1_STUCK" not in by_code(diagnose(facts, {"fin_wait1_warning": stuck}))


def test_fin_wait1_caps_orphans_in_the_initial_namespace():
    facts = load("fin_wait1_zero_window")
    limit = 131072
    facts["sysctls"]["net.ipv4.tcp_max_orphans"] = limit
    count = facts["states"]["FIN_WAIT1"]
    # Scale the recorded hoard up: 10x the sockets, each holding 8 MiB (1.6 GiB in all).
    facts["states"]["FIN_WAIT1"] = count * 10
    facts["queues"]["FIN_WAIT1"]["send_bytes"] = count * 10 * 8 * 1024 * 1024
    found = by_code(diagnose(facts))["FIN_WAIT1_STUCK"]
    assert found["severity"] == "critical"
    cap = found["remediation"]["sysctls"]["net.ipv4.tcp_max_orphans"]
    assert cap == _remediation.profile_value("orphans", "net.ipv4.tcp_max_orphans") < limit
    assert found["remediation"]["profile"] == "orphans"
    # A host already capped lower keeps its cap: the catalog value would raise it.
    facts["sysctls"]["net.ipv4.tcp_max_orphans"] = cap // 2
    assert "net.ipv4.tcp_max_orphans" not in by_code(diagnose(facts))["FIN_WAIT1_STUCK"]["remediation"]["sysctls"]


def test_recorded_syn_recv_per_listener_ratio():
    facts, rep = load("syn_recv"), report("syn_recv")
    listener = facts["listeners"][0]
    ratio = rep["count"] / listener["backlog"]
    assert ratio < DEFAULT_THRESHOLDS["syn_backlog_ratio_warning"]
    assert "SYN_BACKLOG_PRESSURE" not in by_code(diagnose(facts))
    found = by_code(diagnose(facts, {"syn_backlog_ratio_warning": ratio}))["SYN_BACKLOG_PRESSURE"]
    assert found["severity"] == "warning"
    assert found["evidence"]["busiest_listener"]["half_open"] == rep["count"]
    assert f"pid {rep['pid']} " in found["summary"]
    assert f":{rep['ports']['server'][0]}" in found["summary"]
    above = min(1.0, ratio + 0.01)
    assert "SYN_BACKLOG_PRESSURE" not in by_code(diagnose(facts, {"syn_backlog_ratio_warning": above}))


def test_syn_recv_syncookies_growth_and_drops():
    facts = load("syn_recv")
    facts["interval"] = 2.0
    facts["rates"] = {"SyncookiesSent": 3.0, "TCPReqQFullDrop": 0.0}
    assert by_code(diagnose(facts))["SYN_BACKLOG_PRESSURE"]["severity"] == "warning"
    facts["rates"]["TCPReqQFullDrop"] = DEFAULT_THRESHOLDS["syn_drop_rate_critical"]
    assert by_code(diagnose(facts))["SYN_BACKLOG_PRESSURE"]["severity"] == "critical"


def test_recorded_time_wait_churn_names_port_and_peer():
    facts, rep = load("time_wait_churn"), report("time_wait_churn")
    count = rep["count"]
    assert facts["states"]["TIME_WAIT"] == count < DEFAULT_THRESHOLDS["time_wait_warning"]
    assert "TIME_WAIT_CHURN" not in by_code(diagnose(facts))
    found = by_code(diagnose(facts, {"time_wait_warning": count}))["TIME_WAIT_CHURN"]
    assert found["severity"] == "warning"
    top_port = facts["top"]["by_local_port"]["TIME_WAIT"][0]
    top_peer = facts["top"]["by_peer"]["TIME_WAIT"][0]
    assert f"local port {top_port['port']} " in found["summary"]
    assert top_peer["address"] in found["summary"]
    # The scenario's clients closed first: TIME_WAIT sits on their ports, towards the server.
    assert found["evidence"]["direction"] == "outgoing"
    text = found["remediation"]["text"]
    assert "tcp_fin_timeout" in text and "60 s" in text and "tcp_tw_recycle" in text
    assert "net.ipv4.tcp_tw_recycle" not in found["remediation"]["sysctls"]
    # tcp_tw_reuse=2 (default) already covers these loopback peers.
    assert facts["sysctls"]["net.ipv4.tcp_tw_reuse"] == 2
    assert found["remediation"]["sysctls"] == {}


def test_time_wait_reuse_recommended_only_for_outgoing():
    facts = load("time_wait_churn")
    facts["sysctls"]["net.ipv4.tcp_tw_reuse"] = 0
    th = {"time_wait_warning": facts["states"]["TIME_WAIT"]}
    assert by_code(diagnose(facts, th))["TIME_WAIT_CHURN"]["remediation"]["sysctls"] == {"net.ipv4.tcp_tw_reuse": 1}
    # Incoming: one service port holds most of them; tcp_tw_reuse cannot help.
    facts["top"]["by_local_port"]["TIME_WAIT"] = [{"port": 80, "count": facts["states"]["TIME_WAIT"]}]
    found = by_code(diagnose(facts, th))["TIME_WAIT_CHURN"]
    assert found["evidence"]["direction"] == "incoming"
    assert found["remediation"]["sysctls"] == {}
    assert "local port 80 " in found["summary"]


# ---- boundaries, derived from recorded bases ----------------------------------


def _boundaries(warning, critical):
    return [(warning - 1, None), (warning, "warning"), (critical - 1, "warning"), (critical, "critical")]


@pytest.mark.parametrize(("count", "expected"), _boundaries(100, 1000))
def test_close_wait_boundaries(count, expected):
    facts = load("close_wait_leak")
    facts["states"]["CLOSE_WAIT"] = count
    facts["owners"]["CLOSE_WAIT"][0]["sockets"] = count
    found = by_code(diagnose(facts, {"close_wait_warning": 100, "close_wait_critical": 1000}))
    assert (found["CLOSE_WAIT_LEAK"]["severity"] if "CLOSE_WAIT_LEAK" in found else None) == expected


def test_close_wait_defaults_from_clean_base():
    facts = load("clean")
    facts["states"]["CLOSE_WAIT"] = DEFAULT_THRESHOLDS["close_wait_critical"]
    found = by_code(diagnose(facts))["CLOSE_WAIT_LEAK"]
    assert found["severity"] == "critical"
    # The clean base recorded no CLOSE_WAIT owners: say the owner is unknown, name nobody.
    assert found["evidence"]["owners"] == []


def test_close_wait_owner_below_min_is_not_named():
    facts = load("close_wait_leak")
    pid = facts["owners"]["CLOSE_WAIT"][0]["pid"]
    facts["owners"]["CLOSE_WAIT"][0]["sockets"] = 9
    found = by_code(diagnose(facts, {"close_wait_min_per_owner": 10}))["CLOSE_WAIT_LEAK"]
    assert str(pid) not in found["summary"]
    assert found["evidence"]["owners"] == []
    found = by_code(diagnose(facts, {"close_wait_min_per_owner": 9}))["CLOSE_WAIT_LEAK"]
    assert f"pid {pid} " in found["summary"]


def test_close_wait_owner_scan_off():
    facts = load("close_wait_leak")
    pid = facts["owners"]["CLOSE_WAIT"][0]["pid"]
    del facts["owners"]
    found = by_code(diagnose(facts))["CLOSE_WAIT_LEAK"]
    assert str(pid) not in found["summary"]
    assert found["remediation"]["sysctls"] == {}


def test_close_wait_interval_counts_only_persistent():
    facts = load("close_wait_leak")
    facts["interval"] = 2.0
    facts["persistent"] = {"CLOSE_WAIT": {"count": 0, "send_bytes": 0}}
    assert "CLOSE_WAIT_LEAK" not in by_code(diagnose(facts))
    facts["persistent"]["CLOSE_WAIT"]["count"] = facts["states"]["CLOSE_WAIT"]
    assert "CLOSE_WAIT_LEAK" in by_code(diagnose(facts))


@pytest.mark.parametrize(("count", "expected"), _boundaries(5000, 30000))
def test_time_wait_boundaries(count, expected):
    facts = load("time_wait_churn")
    facts["states"]["TIME_WAIT"] = count
    found = by_code(diagnose(facts))
    assert (found["TIME_WAIT_CHURN"]["severity"] if "TIME_WAIT_CHURN" in found else None) == expected


@pytest.mark.parametrize(("count", "expected"), _boundaries(100, 1000))
def test_fin_wait1_count_boundaries(count, expected):
    facts = load("fin_wait1_zero_window")
    # Off the persist timer: the thresholds alone decide (below them the zero-window signature gives info).
    facts["timers"]["FIN_WAIT1"].update(persist=0, zero_window=0)
    facts["states"]["FIN_WAIT1"] = count
    found = by_code(diagnose(facts))
    assert (found["FIN_WAIT1_STUCK"]["severity"] if "FIN_WAIT1_STUCK" in found else None) == expected


def test_fin_wait1_bytes_boundaries():
    facts = load("fin_wait1_zero_window")
    facts["timers"]["FIN_WAIT1"].update(persist=0, zero_window=0)  # the thresholds alone decide
    held = facts["queues"]["FIN_WAIT1"]["send_bytes"]
    levels = {"fin_wait1_bytes_warning": held, "fin_wait1_bytes_critical": held * 2}
    assert by_code(diagnose(facts, levels))["FIN_WAIT1_STUCK"]["severity"] == "warning"
    levels = {"fin_wait1_bytes_warning": held // 2, "fin_wait1_bytes_critical": held}
    assert by_code(diagnose(facts, levels))["FIN_WAIT1_STUCK"]["severity"] == "critical"
    levels = {"fin_wait1_bytes_warning": held + 1, "fin_wait1_bytes_critical": held * 2}
    assert "FIN_WAIT1_STUCK" not in by_code(diagnose(facts, levels))


@pytest.mark.parametrize(
    ("orphans", "expected"),
    [(16383, None), (16384, "warning"), (32767, "warning"), (32768, "critical"), (131072, "critical")],
)
def test_orphan_pressure_uses_penalized_ratio(orphans, expected):
    # Recorded initial namespace (limit 131072): 4 x orphans / limit is 0.5 at limit / 8, 1.0 at limit / 4.
    facts = load("initial_ns")
    limit = facts["pressure"]["orphans"]["limit"]
    assert limit == 131072
    facts["pressure"]["orphans"].update(count=orphans, ratio=orphans / limit, ratio_penalized_4x=orphans * 4 / limit)
    found = by_code(diagnose(facts))
    assert (found["ORPHAN_PRESSURE"]["severity"] if "ORPHAN_PRESSURE" in found else None) == expected
    if expected:
        assert "4x" in found["ORPHAN_PRESSURE"]["summary"]


def test_orphan_pressure_needs_the_limit():
    # Inside a lab namespace tcp_max_orphans does not exist: nothing to compare with.
    facts = load("fin_wait1_zero_window")
    facts["pressure"]["orphans"]["count"] = 10**6
    assert facts["pressure"]["orphans"]["limit"] is None
    assert "ORPHAN_PRESSURE" not in by_code(diagnose(facts))


@pytest.mark.parametrize(("share", "expected"), [(0.69, None), (0.7, "warning"), (0.89, "warning"), (0.9, "critical")])
def test_memory_ratio_boundaries(share, expected):
    facts = load("initial_ns")
    memory = facts["pressure"]["memory"]
    memory["pages"] = int(memory["high"] * share)
    memory["ratio_to_high"] = memory["pages"] / memory["high"]
    if memory["pages"] < memory["pressure"]:
        found = by_code(diagnose(facts))
        assert (found["TCP_MEMORY_PRESSURE"]["severity"] if "TCP_MEMORY_PRESSURE" in found else None) == expected
    else:
        assert by_code(diagnose(facts))["TCP_MEMORY_PRESSURE"]["severity"] in ("warning", "critical")


def test_memory_over_tcp_mem_pressure_is_a_warning_at_least():
    facts = load("initial_ns")
    memory = facts["pressure"]["memory"]
    memory["pages"] = memory["pressure"]
    memory["ratio_to_high"] = memory["pages"] / memory["high"]
    found = by_code(diagnose(facts, {"memory_ratio_warning": 0.99, "memory_ratio_critical": 1.0}))
    assert found["TCP_MEMORY_PRESSURE"]["severity"] == "warning"


def test_counters_alone_never_critical_without_rates():
    facts = load("initial_ns")
    facts["counters"].update(TCPAbortOnMemory=10**9, ListenOverflows=10**9, TCPTimeWaitOverflow=10**9)
    facts["rates"] = {}
    found = by_code(diagnose(facts))
    for code in ("TCP_MEMORY_PRESSURE", "LISTEN_OVERFLOW", "TW_BUCKET_OVERFLOW"):
        assert found[code]["severity"] == "warning", code
        assert "interval" in found[code]["summary"], code
    # A handful of events since boot: info only.
    facts["counters"].update(TCPAbortOnMemory=3, ListenOverflows=3, TCPTimeWaitOverflow=3)
    assert worst(diagnose(facts)) == severity_rank("info")


def test_memory_abort_growth_is_critical():
    facts = load("initial_ns")
    facts["interval"] = 1.0
    facts["rates"] = {"TCPAbortOnMemory": 0.5, "TCPMemoryPressures": 0.0}
    assert by_code(diagnose(facts))["TCP_MEMORY_PRESSURE"]["severity"] == "critical"


@pytest.mark.parametrize(("fill", "expected"), [(0.79, None), (0.8, "warning"), (0.99, "warning"), (1.0, "critical")])
def test_listen_fill_boundaries(fill, expected):
    facts = load("listen_overflow")
    facts["counters"].update(ListenOverflows=0, ListenDrops=0)
    listener = facts["listeners"][0]
    listener["backlog"] = 100
    listener["accept_queue"] = int(fill * 100)
    listener["fill"] = fill
    found = by_code(diagnose(facts))
    assert (found["LISTEN_OVERFLOW"]["severity"] if "LISTEN_OVERFLOW" in found else None) == expected


def test_listen_overflow_somaxconn_only_when_it_caps_the_backlog():
    facts = load("listen_overflow")
    assert by_code(diagnose(facts))["LISTEN_OVERFLOW"]["remediation"]["sysctls"] == {}
    somaxconn = facts["sysctls"]["net.core.somaxconn"]
    facts["listeners"][0].update(backlog=somaxconn, accept_queue=somaxconn + 1, fill=(somaxconn + 1) / somaxconn)
    sysctls = by_code(diagnose(facts))["LISTEN_OVERFLOW"]["remediation"]["sysctls"]
    assert sysctls["net.core.somaxconn"] > somaxconn


@pytest.mark.parametrize(("ratio", "expected"), [(0.49, None), (0.5, "warning"), (0.79, "warning"), (0.8, "critical")])
def test_ephemeral_port_boundaries(ratio, expected):
    facts = load("time_wait_churn")
    ports = facts["pressure"]["ephemeral_ports"]
    ports["in_use"] = int(ports["range"] * ratio)
    ports["ratio"] = ratio
    found = by_code(diagnose(facts))
    assert (found["EPHEMERAL_PORT_PRESSURE"]["severity"] if "EPHEMERAL_PORT_PRESSURE" in found else None) == expected


@pytest.mark.parametrize(
    ("limit_factor", "expected"), [(2.0, None), (1 / 0.8, "warning"), (1 / 0.9, "warning"), (1.0, "critical")]
)
def test_tw_bucket_boundaries(limit_factor, expected):
    # As if tcp_max_tw_buckets were lowered under the recorded TIME_WAIT sockets.
    facts = load("time_wait_churn")
    tw = facts["pressure"]["time_wait"]
    tw["limit"] = round(tw["count"] * limit_factor)
    tw["ratio"] = tw["count"] / tw["limit"]
    found = by_code(diagnose(facts))
    assert (found["TW_BUCKET_OVERFLOW"]["severity"] if "TW_BUCKET_OVERFLOW" in found else None) == expected


def test_tw_overflow_counter_growth():
    facts = load("time_wait_churn")
    facts["interval"] = 1.0
    facts["rates"] = {"TCPTimeWaitOverflow": 1.0}
    assert by_code(diagnose(facts))["TW_BUCKET_OVERFLOW"]["severity"] == "warning"
    facts["rates"]["TCPTimeWaitOverflow"] = DEFAULT_THRESHOLDS["tw_overflow_rate_critical"]
    assert by_code(diagnose(facts))["TW_BUCKET_OVERFLOW"]["severity"] == "critical"


@pytest.mark.parametrize(("value", "present"), [(1, True), (2, True), ("1", True), (0, False), (None, False)])
def test_tw_recycle_present(value, present):
    facts = load("clean")
    facts["sysctls"]["net.ipv4.tcp_tw_recycle"] = value
    found = by_code(diagnose(facts))
    assert ("TW_RECYCLE_PRESENT" in found) is present
    if present:
        assert found["TW_RECYCLE_PRESENT"]["severity"] == "critical"
        assert found["TW_RECYCLE_PRESENT"]["remediation"]["sysctls"] == {"net.ipv4.tcp_tw_recycle": 0}
        assert "4.12" in found["TW_RECYCLE_PRESENT"]["remediation"]["text"]


def test_orphan_retries_default_needs_closing_sockets():
    facts = load("clean")
    assert facts["sysctls"]["net.ipv4.tcp_orphan_retries"] == 0
    assert "ORPHAN_RETRIES_DEFAULT" not in by_code(diagnose(facts))
    facts["states"]["LAST_ACK"] = 1
    found = by_code(diagnose(facts))["ORPHAN_RETRIES_DEFAULT"]
    assert found["severity"] == "info"
    assert found["evidence"]["effective"] == facts["effective"]["tcp_orphan_retries"] == ORPHAN_RETRIES_ZERO_MEANS
    assert found["remediation"]["sysctls"] == {"net.ipv4.tcp_orphan_retries": _remediation.ORPHAN_RETRIES}
    assert found["remediation"]["profile"] == "orphans"
    facts["sysctls"]["net.ipv4.tcp_orphan_retries"] = 3
    assert "ORPHAN_RETRIES_DEFAULT" not in by_code(diagnose(facts))


def test_non_initial_namespace_without_sysctls():
    facts = load("close_wait_leak")
    facts["sysctls"] = None
    facts["effective"] = None
    facts["pressure"] = None
    found = by_code(diagnose(facts))
    assert "CLOSE_WAIT_LEAK" in found
    check_shape(list(found.values()))


def test_diagnose_accepts_validated_or_raw_thresholds():
    facts = load("close_wait_leak")
    assert diagnose(facts, validate_thresholds({"close_wait_warning": 200})) == diagnose(
        facts, {"close_wait_warning": 200}
    )
    with pytest.raises(ValueError, match="close_wait_warnin"):
        diagnose(facts, {"close_wait_warnin": 1})


def test_diagnose_does_not_modify_facts():
    facts = load("listen_overflow_interval")
    before = copy.deepcopy(facts)
    diagnose(facts)
    assert facts == before


# ---- hypothesis: damaged facts never crash -------------------------------------

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=3),
)


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


BASES = {case: load(case) for case in (*CASES, "initial_ns", "listen_overflow_interval", "mix_established_owners")}
BASES["traced_churn"] = with_traced_churn(load("time_wait_churn"), report("time_wait_churn"))
BASES["conntrack"] = with_conntrack(load("clean"), 250000)
PATHS = {case: list(_paths(facts)) for case, facts in BASES.items()}


def _owner_pid_is_a_list():
    # Found by hypothesis (issue 9): an owner's pid as a list made diagnose() raise TypeError (unhashable).
    facts = load("close_wait_leak")
    facts["owners"]["CLOSE_WAIT"][0]["pid"] = [0]
    return facts


@st.composite
def damaged_facts(draw):
    case = draw(st.sampled_from(sorted(BASES)))
    facts = copy.deepcopy(BASES[case])
    paths = PATHS[case]
    for _change in range(draw(st.integers(min_value=1, max_value=12))):
        path = paths[draw(st.integers(min_value=0, max_value=len(paths) - 1))]
        parent = facts
        try:
            for step in path[:-1]:
                parent = parent[step]
            action = draw(st.sampled_from(("delete", "none", "junk")))
            if action == "delete" and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = None if action != "junk" else draw(JUNK)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed or replaced this path
    return facts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_facts())
@example(_owner_pid_is_a_list())
def test_diagnose_never_raises_on_damaged_facts(facts):
    check_shape(diagnose(facts))


@settings(max_examples=50, deadline=None)
@given(JUNK)
def test_diagnose_never_raises_on_junk(facts):
    findings = diagnose(facts)
    check_shape(findings)
    if not isinstance(facts, dict):
        assert findings == []


# ---- thresholds ------------------------------------------------------------


def test_validate_thresholds_defaults_and_merge():
    assert validate_thresholds(None) == DEFAULT_THRESHOLDS
    assert validate_thresholds({}) == DEFAULT_THRESHOLDS
    merged = validate_thresholds({"close_wait_warning": 5, "listen_fill_warning": 0.5})
    assert merged["close_wait_warning"] == 5 and merged["listen_fill_warning"] == 0.5
    assert set(merged) == set(DEFAULT_THRESHOLDS)
    merged["close_wait_warning"] = 99999
    assert DEFAULT_THRESHOLDS["close_wait_warning"] == THRESHOLD_SPEC["close_wait_warning"][1]


def test_validate_thresholds_accepts_numeric_strings():
    merged = validate_thresholds({"close_wait_warning": "7", "listen_fill_warning": "0.25", "fin_wait1_warning": 5.0})
    assert merged["close_wait_warning"] == 7 and merged["listen_fill_warning"] == 0.25
    assert merged["fin_wait1_warning"] == 5 and isinstance(merged["fin_wait1_warning"], int)


def test_validate_thresholds_unknown_key_lists_valid_keys():
    with pytest.raises(ValueError) as err:
        validate_thresholds({"close_wait": 5})
    message = str(err.value)
    assert "'close_wait'" in message
    for key in THRESHOLD_SPEC:
        assert key in message


def _bad_values():
    cases = []
    for key, (kind, _default, _why) in THRESHOLD_SPEC.items():
        bad = [True, False, None, "many", [1], {"a": 1}, math.nan, math.inf, -1]
        if kind in ("count", "bytes"):
            bad += [1.5, "1.5"]
        if kind == "ratio":
            bad += [1.01, -0.01, 2]
        cases += [(key, value) for value in bad]
    return cases


@pytest.mark.parametrize(("key", "value"), _bad_values())
def test_validate_thresholds_rejects_bad_values(key, value):
    with pytest.raises(ValueError) as err:
        validate_thresholds({key: value})
    message = str(err.value)
    assert key in message
    assert diag._KIND_HELP[THRESHOLD_SPEC[key][0]] in message


@pytest.mark.parametrize(("low", "high"), diag._ORDERED_PAIRS)
def test_validate_thresholds_warning_above_critical(low, high):
    value = DEFAULT_THRESHOLDS[high]
    # One above the critical level (ratios: critical lowered below the warning instead).
    user = {low: value + 1} if THRESHOLD_SPEC[low][0] != "ratio" else {high: DEFAULT_THRESHOLDS[low] / 2}
    with pytest.raises(ValueError, match=f"{low}.*{high}"):
        validate_thresholds(user)


@pytest.mark.parametrize("value", [[("a", 1)], "close_wait_warning=1", 5])
def test_validate_thresholds_not_a_dict(value):
    with pytest.raises(ValueError, match="thresholds: must be a dict"):
        validate_thresholds(value)


def test_validate_thresholds_is_all_or_nothing():
    before = dict(DEFAULT_THRESHOLDS)
    with pytest.raises(ValueError):
        validate_thresholds({"close_wait_warning": 1, "time_wait_warning": -5})
    assert before == DEFAULT_THRESHOLDS


def test_severity_rank():
    assert [severity_rank(name) for name in SEVERITIES] == [0, 1, 2]
    with pytest.raises(ValueError, match="info, warning, critical"):
        severity_rank("fatal")


def test_doc_fragment_documents_every_key_with_its_default():
    doc = yaml.safe_load(ModuleDocFragment.DOCUMENTATION)
    option = doc["options"]["thresholds"]
    assert option["type"] == "dict"
    lines = [line for line in option["description"] if line.startswith("C(") and "default C(" in line]
    documented = {}
    for line in lines:
        key = line[2 : line.index(")")]
        default = line[line.index("default C(") + len("default C(") :].split(")", 1)[0]
        documented[key] = default
    assert documented == {key: str(value) for key, value in DEFAULT_THRESHOLDS.items()}


# ---- hostile field types ------------------------------------------------------

# Every kind of value a field can wrongly hold, nested ones included.
WRONG_TYPES = st.one_of(
    JUNK,
    st.lists(st.lists(st.integers(), max_size=2), max_size=2),
    st.dictionaries(st.text(max_size=3), st.lists(st.integers(), max_size=2), max_size=2),
)

# The entries findings read field by field: owners, listeners, top lists, churn and conntrack blocks.
ENTRY_FIELDS = {
    ("owners", "CLOSE_WAIT"): ("pid", "comm", "cmdline", "user", "container", "sockets"),
    ("owners", "ESTABLISHED"): ("pid", "comm", "container", "sockets"),
    ("listeners",): ("local", "accept_queue", "backlog", "fill", "owner"),
    ("top", "by_local_port", "TIME_WAIT"): ("port", "count"),
    ("top", "by_peer", "TIME_WAIT"): ("address", "count", "scope"),
    ("top", "by_peer_endpoint", "TIME_WAIT"): ("address", "port", "count"),
    ("churn", "processes"): ("pid", "comm", "container", "active_closes", "active_closes_per_second", "top_peers"),
}


@st.composite
def facts_with_wrongly_typed_entries(draw):
    facts = with_conntrack(with_traced_churn(load("close_wait_leak"), report("time_wait_churn")), 240000)
    facts["states"]["TIME_WAIT"] = DEFAULT_THRESHOLDS["time_wait_warning"]
    facts["top"]["by_peer_endpoint"] = {"TIME_WAIT": [{"address": "127.0.0.1", "port": 1, "count": 1}]}
    facts["owners"]["ESTABLISHED"] = [{"pid": 1, "comm": "x", "container": None, "sockets": 1}]
    for path, fields in ENTRY_FIELDS.items():
        entries = diag._get(facts, *path)
        for entry in entries if isinstance(entries, list) else []:
            for field in fields:
                if draw(st.booleans()):
                    entry[field] = draw(WRONG_TYPES)
    for field in ("count", "max", "ratio", "states", "timeouts", "available"):
        if draw(st.booleans()):
            facts["conntrack"][field] = draw(WRONG_TYPES)
    return facts


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(facts_with_wrongly_typed_entries())
@example(_owner_pid_is_a_list())
def test_diagnose_validates_every_field_it_reads(facts):
    check_shape(diagnose(facts))


def test_owner_and_listener_pids_that_are_not_numbers_name_nobody():
    facts = _owner_pid_is_a_list()
    facts["listeners"][0]["owner"]["pid"] = {"a": 1}
    found = by_code(diagnose(facts))["CLOSE_WAIT_LEAK"]
    assert [o["pid"] for o in found["evidence"]["owners"]] == [None]
    assert found["evidence"]["owner_listeners"] == []


# ---- one remediation table -----------------------------------------------------

# Every threshold at 0: each finding whose figures exist is raised, so its recommendation is checked.
SENSITIVE = {key: 0 for key in THRESHOLD_SPEC}
RECORDED = sorted(p.name[4:-5] for p in FIXTURES.glob("lab_*.json") if not p.name.endswith(".report.json"))


@pytest.mark.parametrize("case", RECORDED)
@pytest.mark.parametrize("thresholds", [None, SENSITIVE], ids=["defaults", "sensitive"])
def test_recommended_sysctls_are_the_catalog_values(case, thresholds):
    recommending = set()
    for facts in (load(case), with_conntrack(load(case), 250000)):
        for finding in diagnose(facts, thresholds):
            sysctls, profile = finding["remediation"]["sysctls"], finding["remediation"]["profile"]
            if finding["code"] in _remediation.MANUAL_SYSCTLS:
                assert sysctls == _remediation.MANUAL_SYSCTLS[finding["code"]]
                assert profile is None
                continue
            if sysctls:
                recommending.add(finding["code"])
                assert profile == _remediation.FINDING_PROFILES[finding["code"]]
            for name, value in sysctls.items():
                assert value == _remediation.profile_value(profile, name), (finding["code"], name)
    if thresholds is SENSITIVE and case in ("fin_wait1_zero_window", "time_wait_churn", "syn_recv"):
        assert recommending, "the sensitive run must recommend something on this fixture"


def test_catalog_knows_how_each_of_its_values_improves():
    for body in _remediation.PROFILES.values():
        for name in body["sysctls"]:
            assert name in _remediation.IMPROVES_WHEN, name
    assert set(_remediation.FINDING_PROFILES) <= set(CODES)
    assert set(_remediation.MANUAL_SYSCTLS) <= set(CODES)


def test_findings_never_recommend_a_worse_value():
    # somaxconn already 65535: the catalog's 8192 would lower it.
    facts = load("listen_overflow")
    facts["sysctls"]["net.core.somaxconn"] = 65535
    facts["listeners"][0].update(backlog=65535, accept_queue=65536, fill=65536 / 65535)
    assert by_code(diagnose(facts))["LISTEN_OVERFLOW"]["remediation"]["sysctls"] == {}
    # tcp_max_tw_buckets already above the catalog's 262144.
    facts = load("time_wait_churn")
    facts["pressure"]["time_wait"].update(limit=300000, ratio=1.0)
    found = by_code(diagnose(facts))["TW_BUCKET_OVERFLOW"]
    assert found["remediation"]["sysctls"] == {} and found["remediation"]["profile"] is None
    # An explicit tcp_orphan_retries below the catalog's.
    facts = load("fin_wait1_zero_window")
    facts["sysctls"]["net.ipv4.tcp_orphan_retries"] = 1
    facts["effective"]["tcp_orphan_retries"] = 1
    assert by_code(diagnose(facts))["FIN_WAIT1_STUCK"]["remediation"]["sysctls"] == {}


def test_findings_recommend_the_roles_values_where_they_improve():
    # Issue 9: findings recommended tcp_orphan_retries 3, 2x tcp_max_tw_buckets and 2x somaxconn.
    facts = load("listen_overflow")
    somaxconn = facts["sysctls"]["net.core.somaxconn"]
    facts["listeners"][0].update(backlog=somaxconn, accept_queue=somaxconn + 1, fill=(somaxconn + 1) / somaxconn)
    found = by_code(diagnose(facts))["LISTEN_OVERFLOW"]
    assert (
        found["remediation"]["sysctls"]["net.core.somaxconn"]
        == 8192
        == (_remediation.profile_value("listen_backlog", "net.core.somaxconn"))
    )
    assert found["remediation"]["profile"] == "listen_backlog"
    facts = load("time_wait_churn")
    facts["pressure"]["time_wait"].update(limit=600, ratio=1.0)
    found = by_code(diagnose(facts))["TW_BUCKET_OVERFLOW"]
    assert found["remediation"]["sysctls"] == {"net.ipv4.tcp_max_tw_buckets": 262144}
    assert found["remediation"]["profile"] == "time_wait"
    found = by_code(diagnose(load("fin_wait1_zero_window"), {"fin_wait1_warning": 20}))["FIN_WAIT1_STUCK"]
    assert found["remediation"]["sysctls"]["net.ipv4.tcp_orphan_retries"] == _remediation.ORPHAN_RETRIES == 2


def test_ephemeral_port_pressure_widens_the_range_only_when_narrower():
    facts = load("time_wait_churn")
    facts["pressure"]["ephemeral_ports"].update(in_use=20000, ratio=20000 / 28232)
    sysctls = by_code(diagnose(facts))["EPHEMERAL_PORT_PRESSURE"]["remediation"]["sysctls"]
    assert sysctls["net.ipv4.ip_local_port_range"] == [10240, 65000]
    facts["sysctls"]["net.ipv4.ip_local_port_range"] = [1024, 65535]
    sysctls = by_code(diagnose(facts))["EPHEMERAL_PORT_PRESSURE"]["remediation"]["sysctls"]
    assert "net.ipv4.ip_local_port_range" not in sysctls


def test_severity_order_is_shared():
    assert diag.worst_severity([None, "info", "critical", "warning"]) == "critical"
    assert diag.worst_severity([None]) is None
    assert [_fleet_report.severity_order(name) for name in SEVERITIES] == [severity_rank(n) + 1 for n in SEVERITIES]
    with pytest.raises(ValueError):
        severity_rank(["critical"])


# ---- TW_BUCKET_OVERFLOW counts every timewait socket ---------------------------


def test_recorded_fin_wait2_orphans_are_timewait_sockets_not_time_wait():
    # Issue 10 item 11: sockstat tw (the count against tcp_max_tw_buckets) includes orphaned FIN_WAIT2
    # sockets kept as timewait minisockets; the socket dump shows them as FIN_WAIT2.
    facts, rep = load("fin_wait2_orphans"), report("fin_wait2_orphans")
    count = rep["expected"]["FIN_WAIT2"]
    assert facts["sockstat"]["tcp_tw"] == facts["pressure"]["time_wait"]["count"] == count
    assert facts["states"]["TIME_WAIT"] == 0
    # As if tcp_max_tw_buckets were lowered to these sockets.
    facts["pressure"]["time_wait"].update(limit=count, ratio=1.0)
    found = by_code(diagnose(facts))["TW_BUCKET_OVERFLOW"]
    assert f"{count} TIME_WAIT sockets" not in found["summary"]
    assert found["summary"].startswith(f"{count} timewait sockets (TIME_WAIT and orphaned FIN_WAIT2; 0 in TIME_WAIT)")
    assert found["evidence"]["time_wait_state"] == 0
    assert found["evidence"]["counted_by"] == "sockstat tw"


def test_tw_bucket_without_sockstat_counts_time_wait_sockets():
    facts = load("time_wait_churn")
    facts["sockstat"]["tcp_tw"] = None  # the collector then counts TIME_WAIT sockets
    facts["pressure"]["time_wait"].update(limit=600, ratio=1.0)
    found = by_code(diagnose(facts))["TW_BUCKET_OVERFLOW"]
    assert found["summary"].startswith("600 TIME_WAIT sockets of tcp_max_tw_buckets 600")


# ---- TIME_WAIT_CHURN: who closes first -----------------------------------------

TW_LOW = {"time_wait_warning": 1}


def test_recorded_time_wait_churn_basis_unknown_says_trace_would_name_it():
    facts = load("time_wait_churn")
    found = by_code(diagnose(facts, TW_LOW))["TIME_WAIT_CHURN"]
    # Client-side TIME_WAIT on ephemeral source ports, no ESTABLISHED sockets left: nothing to infer from.
    assert found["evidence"]["basis"] == "unknown"
    assert found["evidence"]["churners"] == []
    assert "unknown" in found["summary"] and "trace" in found["summary"]


def test_traced_churn_names_the_process_that_closes_first():
    rep = report("time_wait_churn")
    facts = with_traced_churn(load("time_wait_churn"), rep)
    found = by_code(diagnose(facts, TW_LOW))["TIME_WAIT_CHURN"]
    evidence = found["evidence"]
    assert evidence["basis"] == "traced"
    [churner] = evidence["churners"]
    assert (churner["pid"], churner["comm"], churner["container"]) == (rep["pid"], rep["comm"], None)
    assert churner["active_closes_per_second"] == rep["count"] / 5.0
    assert churner["top_peers"] == [{"address": "127.0.0.1", "port": rep["ports"]["server"][0], "count": rep["count"]}]
    assert (
        f"closed first by pid {rep['pid']} ({rep['comm']}) 120/s to 127.0.0.1:{rep['ports']['server'][0]}"
        in (found["summary"])
    )
    # Only processes that closed first are churners; without tracefs the finding falls back.
    facts["churn"]["processes"][0]["active_closes"] = 0
    assert by_code(diagnose(facts, TW_LOW))["TIME_WAIT_CHURN"]["evidence"]["basis"] == "unknown"
    facts = with_traced_churn(load("time_wait_churn"), rep)
    facts["churn"]["source"] = None
    assert by_code(diagnose(facts, TW_LOW))["TIME_WAIT_CHURN"]["evidence"]["basis"] == "unknown"


def test_time_wait_on_a_listening_port_names_the_listener_owner():
    rep = report("time_wait_churn")
    facts = load("time_wait_churn")
    listener = facts["listeners"][0]
    port = rep["ports"]["server"][0]
    assert listener["local"] == f"127.0.0.1:{port}"
    # As a server-side close leaves them: the TIME_WAIT sockets on the listener's port.
    facts["top"]["by_local_port"]["TIME_WAIT"] = [{"port": port, "count": rep["count"]}]
    found = by_code(diagnose(facts, TW_LOW))["TIME_WAIT_CHURN"]
    assert found["evidence"]["basis"] == "listener"
    [closer] = found["evidence"]["listeners"]
    assert closer["owner"]["pid"] == rep["pid"] and closer["time_wait"] == rep["count"]
    assert f"listening port 127.0.0.1:{port} of pid {rep['pid']} ({rep['comm']})" in found["summary"]
    assert "trace" in found["summary"]
    assert found["evidence"]["direction"] == "incoming"


def _mix_with_peer_endpoints():
    """lab_mix_established_owners with top.by_peer_endpoint (the key h1 adds to the collector).

    Each mix worker connected ESTABLISHED pairs to its first listener and churned TIME_WAIT towards the same
    listener; those listener ports are the ESTABLISHED local ports holding a quarter of the pairs each.
    """
    facts = load("mix_established_owners")
    listening = {int(lst["local"].rsplit(":", 1)[1]) for lst in facts["listeners"]}
    targets = [p for p in facts["top"]["by_local_port"]["ESTABLISHED"] if p["port"] in listening]
    tw_each = facts["states"]["TIME_WAIT"] // len(targets)
    facts["top"]["by_peer_endpoint"] = {
        "TIME_WAIT": [
            {"address": "127.0.0.1", "port": p["port"], "count": tw_each, "scope": "loopback"} for p in targets
        ],
        "ESTABLISHED": [
            {"address": "127.0.0.1", "port": p["port"], "count": p["count"], "scope": "loopback"} for p in targets
        ],
    }
    return facts, targets


def test_established_peers_basis_names_the_owners_as_candidates():
    facts, targets = _mix_with_peer_endpoints()
    found = by_code(diagnose(facts, TW_LOW))["TIME_WAIT_CHURN"]
    evidence = found["evidence"]
    assert evidence["basis"] == "established_peers"
    assert evidence["established_to_peer"] == targets[0]["count"]
    owners = facts["owners"]["ESTABLISHED"]
    assert {c["pid"] for c in evidence["candidates"]} == {o["pid"] for o in owners}
    assert f"go to 127.0.0.1:{targets[0]['port']} too (candidates: pid " in found["summary"]
    assert "trace" in found["summary"]
    # Without the owners scan of ESTABLISHED: the basis holds, the summary says how to name them.
    del facts["owners"]["ESTABLISHED"]
    found = by_code(diagnose(facts, TW_LOW))["TIME_WAIT_CHURN"]
    assert found["evidence"]["basis"] == "established_peers" and found["evidence"]["candidates"] == []
    assert "owners including ESTABLISHED" in found["summary"]


def test_recorded_mix_without_peer_endpoints_is_unknown():
    found = by_code(diagnose(load("mix_established_owners"), TW_LOW))["TIME_WAIT_CHURN"]
    assert found["evidence"]["basis"] == "unknown"


# ---- CONNTRACK_TABLE_PRESSURE ---------------------------------------------------


@pytest.mark.parametrize(("share", "expected"), [(0.74, None), (0.75, "warning"), (0.89, "warning"), (0.9, "critical")])
def test_conntrack_boundaries(share, expected):
    limit = 262144
    facts = with_conntrack(load("clean"), round(limit * share), limit)
    facts["conntrack"]["ratio"] = share
    found = by_code(diagnose(facts))
    assert (found["CONNTRACK_TABLE_PRESSURE"]["severity"] if "CONNTRACK_TABLE_PRESSURE" in found else None) == expected


def test_conntrack_names_the_filling_states_timeouts_and_the_kernel_message():
    facts = with_conntrack(load("clean"), 240000)
    found = by_code(diagnose(facts))["CONNTRACK_TABLE_PRESSURE"]
    assert found["severity"] == "critical"
    assert found["evidence"]["states"][0] == {"state": "TIME_WAIT", "count": 216000}
    assert found["evidence"]["timeouts"] == {
        "nf_conntrack_tcp_timeout_time_wait": 120,
        "nf_conntrack_tcp_timeout_close_wait": 60,
        "nf_conntrack_tcp_timeout_established": 432000,
    }
    assert "nf_conntrack: table full, dropping packet" in found["summary"]
    assert "mostly TIME_WAIT 216000, ESTABLISHED 24000" in found["summary"]
    assert found["remediation"]["sysctls"] == {} and found["remediation"]["profile"] is None


def test_conntrack_thresholds_are_overridable():
    facts = with_conntrack(load("clean"), 131072)  # ratio 0.5
    assert "CONNTRACK_TABLE_PRESSURE" not in by_code(diagnose(facts))
    lowered = {"conntrack_ratio_warning": 0.5, "conntrack_ratio_critical": 0.6}
    assert by_code(diagnose(facts, lowered))["CONNTRACK_TABLE_PRESSURE"]["severity"] == "warning"


@pytest.mark.parametrize("block", ["missing", "unavailable", "no_ratio"])
def test_conntrack_skipped_without_a_table(block):
    facts = with_conntrack(load("clean"), 250000)
    if block == "missing":
        del facts["conntrack"]
    elif block == "unavailable":
        facts = with_conntrack(load("clean"), 0, available=False)
    else:
        facts["conntrack"]["ratio"] = None  # not recomputed from count and max
    assert "CONNTRACK_TABLE_PRESSURE" not in by_code(diagnose(facts, SENSITIVE))
