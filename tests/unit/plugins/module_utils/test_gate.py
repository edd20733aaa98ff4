"""_gate: validation, evaluation and the breach paragraph on samples recorded from lab namespaces.

Fixtures (fixtures/gate/*.json, recorded by fixtures/gate/record.py) hold what
tcp_gate samples (facts + socket breakdown); the *.report.json beside them are the
scenario processes' own accounts (pid, comm, ports, counts): the independent
source the offenders are checked against.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _gate
from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import CODES
from ansible_collections.netstate.tcp.plugins.module_utils._netlink import STATES

FIXTURES = Path(__file__).parent / "fixtures" / "gate"


def _int_keys(mapping):
    return {int(k) if isinstance(k, str) and k.isdigit() else k: v for k, v in mapping.items()}


def load(name):
    sample = json.loads((FIXTURES / f"{name}.json").read_text(encoding="utf-8"))
    report = json.loads((FIXTURES / f"{name}.report.json").read_text(encoding="utf-8"))
    breakdown = sample["breakdown"]
    breakdown["comm"] = _int_keys(breakdown["comm"])
    for detail in breakdown["states"].values():
        detail["ports"] = _int_keys(detail["ports"])
        detail["pids"] = {int(pid): _int_keys(ports) for pid, ports in detail["pids"].items()}
    return sample["facts"], breakdown, report


def spec(**params):
    return _gate.validate_spec(params, STATES, CODES)


# ---- validation --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["TIME_WAIT", "time_wait", "time-wait", " Time-Wait "])
def test_state_names_are_case_and_dash_insensitive(name):
    assert spec(max={name: 5})["max"] == {"TIME_WAIT": 5}


def test_valid_spec_is_normalized():
    result = spec(
        max={"close_wait": "100"},
        ports={"8080": {"Close-Wait": 20}},
        processes={"a-very-long-process-name": {"listen": 0}},
        ratios={"orphans": 0.5, "memory": 1},
        fail_on_severity="critical",
        fail_on_codes=["close_wait_leak"],
        timeout=30,
        poll_interval=0.5,
    )
    assert result["max"] == {"CLOSE_WAIT": 100}
    assert result["ports"] == {8080: {"CLOSE_WAIT": 20}}
    # /proc/<pid>/comm keeps 15 characters
    assert result["processes"] == {"a-very-long-pro": {"LISTEN": 0}}
    assert result["ratios"] == {"orphans": 0.5, "memory": 1.0}
    assert result["fail_on_codes"] == ["CLOSE_WAIT_LEAK"]
    assert (result["timeout"], result["poll_interval"]) == (30, 0.5)


VALID_STATES = "valid states (case-insensitive): " + ", ".join(STATES)
INVALID = [
    ({"max": {"closed_wait": 1}}, ["max: unknown state 'closed_wait'", VALID_STATES]),
    ({"max": {"close_wait": -1}}, ["max.CLOSE_WAIT: count must be a non-negative integer, got -1"]),
    ({"max": {"close_wait": 1.5}}, ["max.CLOSE_WAIT: count must be a non-negative integer, got 1.5"]),
    ({"max": {"close_wait": True}}, ["max.CLOSE_WAIT: count must be a non-negative integer, got True"]),
    ({"max": {"close_wait": "many"}}, ["max.CLOSE_WAIT: count must be a non-negative integer, got 'many'"]),
    ({"max": [1, 2]}, ["max: must be a mapping of TCP state -> maximum count"]),
    ({"ports": {"0": {"close_wait": 1}}}, ["ports: port '0' must be an integer within 1..65535"]),
    ({"ports": {65536: {"close_wait": 1}}}, ["ports: port 65536 must be an integer within 1..65535"]),
    ({"ports": {"http": {"close_wait": 1}}}, ["ports: port 'http' must be an integer within 1..65535"]),
    ({"ports": {"8080": {"bogus": 1}}}, ["ports.8080: unknown state 'bogus'", VALID_STATES]),
    ({"ports": {"8080": {"listen": -3}}}, ["ports.8080.LISTEN: count must be a non-negative integer, got -3"]),
    ({"ports": {"8080": 5}}, ["ports.8080: must be a mapping of TCP state -> maximum count"]),
    ({"processes": {"java": {"close-wiat": 1}}}, ["processes.java: unknown state 'close-wiat'", VALID_STATES]),
    ({"processes": {"java": {"close_wait": 2.0}}}, ["processes.java.CLOSE_WAIT: count must be a non-negative"]),
    (
        {"ratios": {"orphan": 0.5}},
        ["ratios: unknown ratio 'orphan'; valid ratios: orphans, memory, time_wait, ephemeral_ports"],
    ),
    ({"ratios": {"orphans": 1.5}}, ["ratios.orphans: must be a number between 0 and 1, got 1.5"]),
    ({"ratios": {"memory": -0.1}}, ["ratios.memory: must be a number between 0 and 1, got -0.1"]),
    ({"ratios": {"memory": True}}, ["ratios.memory: must be a number between 0 and 1, got True"]),
    (
        {"fail_on_codes": ["CLOSE_WAIT_LAKE"]},
        ["fail_on_codes: unknown finding code 'CLOSE_WAIT_LAKE'", ", ".join(CODES)],
    ),
    ({"fail_on_severity": "info"}, ["fail_on_severity: must be one of warning, critical, got 'info'"]),
    ({"max": {"listen": 1}, "timeout": -5}, ["timeout: must be a number of seconds >= 0, got -5"]),
    ({"max": {"listen": 1}, "poll_interval": 0}, ["poll_interval: must be a number of seconds > 0, got 0"]),
    ({}, ["nothing to check"]),
]


@pytest.mark.parametrize(("params", "fragments"), INVALID)
def test_invalid_input_is_rejected_with_the_valid_keys(params, fragments):
    with pytest.raises(_gate.GateError) as info:
        spec(**params)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(_gate.GateError) as info:
        spec(max={"bogus": 1, "listen": -1}, ports={"99999": {"listen": 1}}, ratios={"orphans": 2})
    message = str(info.value)
    for fragment in ("unknown state 'bogus'", "max.LISTEN", "port '99999'", "ratios.orphans"):
        assert fragment in message


# ---- evaluation on recorded samples ---------------------------------------------------
def test_close_wait_leak_breach_names_process_and_port():
    facts, breakdown, report = load("close_wait_leak")
    expected = report["observed"]["CLOSE_WAIT"]
    (port,) = report["ports"]["server"]
    result = _gate.evaluate(spec(max={"close_wait": expected - 1, "fin_wait2": expected}), facts, breakdown)
    assert result["passed"] is False
    assert [(c["metric"], c["value"], c["passed"]) for c in result["checks"]] == [
        ("CLOSE_WAIT", expected, False),
        ("FIN_WAIT2", report["observed"]["FIN_WAIT2"], True),
    ]
    (offender,) = result["offenders"]
    top = offender["processes"][0]
    assert (top["pid"], top["comm"], top["sockets"]) == (report["owners"]["CLOSE_WAIT"], report["comm"], expected)
    assert top["ports"] == [{"port": port, "count": expected}]
    assert offender["ports"] == [{"port": port, "count": expected}]
    message = _gate.breach_paragraph(result)
    assert f"CLOSE_WAIT {expected} > {expected - 1}; {expected} held by pid {report['pid']} ({report['comm']}) " in (
        message
    )
    assert f"on :{port}" in message
    assert message.startswith("TCP gate failed 1 of 2 checks: ")


def test_threshold_equal_to_value_passes():
    facts, breakdown, report = load("close_wait_leak")
    count = report["observed"]["CLOSE_WAIT"]
    assert _gate.evaluate(spec(max={"close_wait": count}), facts, breakdown)["passed"] is True


def test_per_port_and_per_process_checks():
    facts, breakdown, report = load("close_wait_leak")
    count = report["observed"]["CLOSE_WAIT"]
    (port,) = report["ports"]["server"]
    gate = spec(
        ports={port: {"close_wait": 10}, port + 1: {"close_wait": 0}},
        processes={report["comm"]: {"close_wait": count - 1, "listen": 1}, "nginx": {"close_wait": 0}},
    )
    result = _gate.evaluate(gate, facts, breakdown)
    values = {c["metric"]: (c["value"], c["passed"]) for c in result["checks"]}
    assert values == {
        f":{port} CLOSE_WAIT": (count, False),
        f":{port + 1} CLOSE_WAIT": (0, True),
        f"{report['comm']} CLOSE_WAIT": (count, False),
        f"{report['comm']} LISTEN": (report["observed"]["LISTEN"], True),
        "nginx CLOSE_WAIT": (0, True),
    }
    by_metric = {o["metric"]: o for o in result["offenders"]}
    assert by_metric[f"{report['comm']} CLOSE_WAIT"]["processes"][0]["pid"] == report["pid"]
    assert f":{port} CLOSE_WAIT {count} > 10" in _gate.breach_paragraph(result)


def test_time_wait_breach_names_ports_and_peers_not_processes():
    facts, breakdown, report = load("time_wait_churn")
    count = report["observed"]["TIME_WAIT"]
    result = _gate.evaluate(spec(max={"time-wait": 100}), facts, breakdown)
    (offender,) = result["offenders"]
    assert offender["processes"] == []  # TIME_WAIT sockets belong to no process
    assert offender["peers"] == [{"address": "127.0.0.1", "count": count}]
    assert sum(breakdown["states"]["TIME_WAIT"]["ports"].values()) == count
    message = _gate.breach_paragraph(result)
    assert message.startswith(f"TCP gate failed 1 of 1 checks: TIME_WAIT {count} > 100; top local ports :")
    assert f"top peers 127.0.0.1 ({count})" in message


def test_offenders_fall_back_to_facts_without_breakdown():
    facts, report = load("close_wait_leak")[::2]
    result = _gate.evaluate(spec(max={"close_wait": 1}), facts, None)
    (offender,) = result["offenders"]
    assert offender["processes"][0]["pid"] == report["pid"]
    assert offender["ports"][0]["port"] == report["ports"]["server"][0]


def test_clean_host_passes_everything():
    facts, breakdown, report = load("clean")
    result = _gate.evaluate(
        spec(
            max={"close_wait": 0, "established": report["observed"]["ESTABLISHED"]},
            fail_on_severity="warning",
            fail_on_codes=list(CODES),
            ratios={"time_wait": 0.5},
        ),
        facts,
        breakdown,
    )
    assert result["passed"] is True
    assert result["offenders"] == []


def test_findings_checks_on_the_leak():
    facts, breakdown = load("close_wait_leak")[:2]
    found = {f["code"]: f for f in facts["findings"]}
    assert "CLOSE_WAIT_LEAK" in found
    result = _gate.evaluate(spec(fail_on_codes=["CLOSE_WAIT_LEAK", "TIME_WAIT_CHURN"]), facts, breakdown)
    assert [(c["metric"], c["value"], c["passed"]) for c in result["checks"]] == [
        ("finding CLOSE_WAIT_LEAK", 1, False),
        ("finding TIME_WAIT_CHURN", 0, True),
    ]
    assert found["CLOSE_WAIT_LEAK"]["summary"] in _gate.breach_paragraph(result)
    severity = found["CLOSE_WAIT_LEAK"]["severity"]
    assert _gate.evaluate(spec(fail_on_severity=severity), facts, breakdown)["passed"] is False
    if severity == "warning":
        assert _gate.evaluate(spec(fail_on_severity="critical"), facts, breakdown)["passed"] is True


def test_ratios_measured_and_unmeasurable():
    facts, breakdown = load("time_wait_churn")[:2]
    ratio = facts["pressure"]["time_wait"]["ratio"]
    result = _gate.evaluate(spec(ratios={"time_wait": ratio / 2, "memory": 0.1}), facts, breakdown)
    checks = {c["metric"]: c for c in result["checks"]}
    assert checks["time_wait ratio"]["value"] == pytest.approx(ratio) and not checks["time_wait ratio"]["passed"]
    if facts["pressure"]["memory"]["ratio_to_high"] is None:  # tcp_mem is not visible inside a namespace
        assert checks["memory ratio"] == {"metric": "memory ratio", "value": None, "threshold": 0.1, "passed": True}
        assert any("memory" in w for w in result["warnings"])


# ---- polling ---------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


class Sampler:
    """run_gate's sample(detailed): the next of ``samples`` on each call; ``kinds`` records each detailed flag."""

    def __init__(self, samples):
        self.samples = iter(samples)
        self.kinds = []

    def __call__(self, detailed):
        self.kinds.append(detailed)
        return next(self.samples)


def test_run_gate_passes_when_the_leak_drains_during_the_wait():
    leak, clean = load("close_wait_leak"), load("clean")
    sample = Sampler([leak[:2], leak[:2], clean[:2]])
    clock = FakeClock()
    result = _gate.run_gate(spec(max={"close_wait": 0}, timeout=60, poll_interval=5), sample, clock, clock.sleep)
    assert result["passed"] is True
    assert result["samples"] == 3
    assert clock.sleeps == [5, 5]
    assert sample.kinds == [False, False, False]  # no owner pass while waiting


def test_run_gate_fails_after_the_timeout():
    leak = load("close_wait_leak")
    clock = FakeClock()
    sample = Sampler(itertools.repeat(leak[:2]))
    result = _gate.run_gate(spec(max={"close_wait": 0}, timeout=12, poll_interval=5), sample, clock, clock.sleep)
    assert result["passed"] is False
    assert clock.sleeps == [5, 5, 2]  # the last wait is cut to the deadline
    assert sample.kinds == [False, False, False, False, True]  # then one detailed sample names the offenders
    assert result["samples"] == 5
    assert result["offenders"][0]["processes"]
    assert "after waiting 12s (5 samples)" in _gate.breach_paragraph(result, result["elapsed"], result["samples"])


def test_run_gate_without_timeout_samples_once():
    leak = load("close_wait_leak")
    clock = FakeClock()
    sample = Sampler(itertools.repeat(leak[:2]))
    result = _gate.run_gate(spec(max={"close_wait": 0}), sample, clock, clock.sleep)
    assert (result["passed"], result["samples"], clock.sleeps, sample.kinds) == (False, 1, [], [True])
