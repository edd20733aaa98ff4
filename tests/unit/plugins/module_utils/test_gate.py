"""_gate: validation, evaluation and the breach paragraph on samples recorded from lab namespaces.

Fixtures (fixtures/gate/*.json, recorded by fixtures/gate/record.py) hold what
tcp_gate samples (facts + socket breakdown); the *.report.json beside them are the
scenario processes' own accounts (pid, comm, ports, counts): the independent
source the offenders are checked against.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import (
    _diag_filter,
    _diagnose,
    _facts,
    _gate,
    _netlink,
    _owners,
)
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
    # kept as given: matching compares what the kernel keeps of it (its first 15 UTF-8 bytes)
    assert result["processes"] == {"a-very-long-process-name": {"LISTEN": 0}}
    assert result["ratios"] == {"orphans": 0.5, "memory": 1.0}
    assert result["fail_on_codes"] == ["CLOSE_WAIT_LEAK"]
    assert (result["timeout"], result["poll_interval"]) == (30, 0.5)
    assert result["peers"] is None and result["namespace"] is None


def test_peer_options_make_one_filter_and_a_pid_names_its_namespace():
    result = spec(
        max={"established": 0},
        peer_addresses=["10.0.0.0/8"],
        exclude_peers=["10.0.5.0/24", "::ffff:10.0.6.0/120"],
        namespace=str(os.getpid()),
    )
    assert result["namespace"] == {"name": str(os.getpid()), "path": f"/proc/{os.getpid()}/ns/net"}
    code = _diag_filter.compile_filter(result["peers"])
    _diag_filter.audit_bytecode(code)

    def counted(peer):
        sock = (socket.AF_INET, bytes(4), 80, socket.inet_aton(peer), 4000)
        return _diag_filter.run_bytecode(code, sock)

    assert [counted(p) for p in ("10.1.2.3", "10.0.5.9", "192.0.2.1")] == [True, False, False]


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
    ({"max": {"listen": 1}, "timeout": -5}, ["timeout: must be a finite number of seconds from 0 to 86400, got -5"]),
    ({"max": {"listen": 1}, "timeout": float("nan")}, ["timeout: must be a finite number of seconds", "got nan"]),
    ({"max": {"listen": 1}, "timeout": float("inf")}, ["timeout: must be a finite number of seconds", "got inf"]),
    ({"max": {"listen": 1}, "timeout": 1e308}, ["timeout: must be a finite number of seconds from 0 to 86400"]),
    ({"max": {"listen": 1}, "timeout": 86400.5}, ["timeout: must be a finite number of seconds from 0 to 86400"]),
    ({"max": {"listen": 1}, "timeout": "30"}, ["timeout: must be a finite number of seconds", "got '30'"]),
    (
        {"max": {"listen": 1}, "poll_interval": 0},
        ["poll_interval: must be a finite number of seconds from 0.1 to 3600"],
    ),
    ({"max": {"listen": 1}, "poll_interval": 1e-9}, ["poll_interval: must be a finite number of seconds", "got 1e-09"]),
    ({"max": {"listen": 1}, "poll_interval": float("nan")}, ["poll_interval: must be a finite number", "got nan"]),
    ({"max": {"listen": 1}, "poll_interval": float("-inf")}, ["poll_interval: must be a finite number", "got -inf"]),
    ({"max": {"listen": 1}, "poll_interval": 3601}, ["poll_interval: must be a finite number of seconds from 0.1"]),
    ({}, ["nothing to check"]),
    (
        {"max": {"listen": 1}, "exclude_peers": ["10.0.0.1/8"]},
        ["exclude_peers: not an IPv4/IPv6 address or CIDR: '10.0.0.1/8'"],
    ),
    ({"max": {"listen": 1}, "peer_addresses": ["lb-1"]}, ["peer_addresses: not an IPv4/IPv6 address or CIDR: 'lb-1'"]),
    ({"max": {"listen": 1}, "peer_addresses": "10.0.0.0/8"}, ["peer_addresses: must be a list of IPv4/IPv6"]),
    (
        {"max": {"listen": 1}, "exclude_peers": [f"2001:db8:{i:x}::/48" for i in range(2100)]},
        ["exclude_peers, peer_addresses: filter too large", "at most 65531 bytes"],
    ),
    ({"max": {"listen": 1}, "namespace": "nsl-no-such-namespace"}, ["namespace: no network namespace named"]),
    ({"max": {"listen": 1}, "namespace": "../../etc"}, ["namespace: no network namespace named '../../etc'"]),
    ({"max": {"listen": 1}, "namespace": "4194305"}, ["namespace: no process with pid 4194305"]),
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


def test_processes_match_a_multibyte_name_cut_by_the_kernel():
    """The kernel keeps 15 bytes of comm, here cut inside a character: full and cut names both match."""
    facts, breakdown, report = load("close_wait_leak")
    name = "ab日本語のプロセス"  # 26 UTF-8 bytes; the 15th is the first byte of "プ"
    kernel_comm = name.encode()[:15]
    count = report["observed"]["CLOSE_WAIT"]
    breakdown["comm"] = {pid: kernel_comm if pid == report["pid"] else comm for pid, comm in breakdown["comm"].items()}
    for given in (name, kernel_comm.decode("utf-8", "replace"), "ab日本語の"):
        result = _gate.evaluate(spec(processes={given: {"close_wait": count - 1}}), facts, breakdown)
        (check,) = result["checks"]
        expected = count if given != "ab日本語の" else 0  # 14 bytes: another name
        assert (check["metric"], check["value"]) == (f"{given} CLOSE_WAIT", expected), given
    result = _gate.evaluate(spec(processes={name: {"close_wait": 0}}), facts, breakdown)
    assert result["offenders"][0]["processes"][0]["comm"] == "ab日本語の\ufffd"


def test_controller_watch_sees_the_reader_go_away():
    read_end, write_end = os.pipe()
    try:
        watch = _gate.ControllerWatch(fds=(write_end,))
        assert watch.gone() is False
        assert watch.sleep(0.05) is False
        os.close(read_end)  # the controller's end of the module's stdout closes
        assert watch.gone() is True
        assert watch.sleep(30) is True  # returns at once
    finally:
        os.close(write_end)


def test_run_gate_stops_polling_when_the_controller_is_gone():
    leak = load("close_wait_leak")
    clock = FakeClock()
    sample = Sampler(itertools.repeat(leak[:2]))
    sleeps = []

    def sleep(seconds):
        sleeps.append(seconds)
        return len(sleeps) == 2  # gone during the second wait

    result = _gate.run_gate(spec(max={"close_wait": 0}, timeout=600, poll_interval=1), sample, clock, sleep)
    assert (result["controller_gone"], result["samples"], result["passed"]) == (True, 2, False)


# ---- one sample: one dump, at most one /proc walk (real loopback sockets of this test) -------
@pytest.fixture
def established_pairs():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    clients = [socket.create_connection(listener.getsockname()) for _client in range(3)]
    servers = [listener.accept()[0] for _client in clients]
    yield listener.getsockname()[1]
    for sock in clients + servers + [listener]:
        sock.close()


@pytest.fixture
def kernel_calls(monkeypatch):
    """How many sock_diag dumps (per family) and /proc/<pid>/fd passes the code under test makes."""
    calls = {"dumps": [], "walks": 0}
    real_dump, real_scan = _netlink.dump, _owners.scan_socket_fds

    def dump(family, *args, **kwargs):
        calls["dumps"].append(_netlink.family_name(family))
        return real_dump(family, *args, **kwargs)

    def scan(*args, **kwargs):
        calls["walks"] += 1
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(_netlink, "dump", dump)
    monkeypatch.setattr(_owners, "scan_socket_fds", scan)
    return calls


def _rediagnose(facts):
    return _diagnose.diagnose(facts, _diagnose.validate_thresholds({}))


@pytest.mark.parametrize("detailed", [False, True])
def test_a_sample_with_facts_and_counts_is_one_dump_and_one_walk(established_pairs, kernel_calls, detailed):
    port = established_pairs
    own = _owners.read_comm(os.getpid())
    gate = spec(
        max={"established": 0},
        ports={port: {"established": 0}},
        processes={own: {"established": 0}},
        ratios={"time_wait": 1},
        fail_on_codes=["CLOSE_WAIT_LEAK"],
    )
    facts, breakdown = _gate.sample_host(gate, _facts.collect_facts, detailed, rediagnose=_rediagnose)
    assert sorted(kernel_calls["dumps"]) == ["ipv4", "ipv6"]  # one dump of each family, shared
    assert kernel_calls["walks"] == 1
    result = _gate.evaluate(gate, facts, breakdown)
    values = {c["metric"]: c["value"] for c in result["checks"]}
    assert values[f":{port} ESTABLISHED"] == 3  # the accepted ends; the clients are on ephemeral ports
    assert values[f"{own} ESTABLISHED"] >= 6  # this process holds all six
    if detailed:
        assert breakdown["states"]["ESTABLISHED"]["total"] == facts["states"]["ESTABLISHED"]


def test_a_count_only_sample_dumps_the_gated_states_once(established_pairs, kernel_calls):
    port = established_pairs
    _facts_dict, breakdown = _gate.sample_host(spec(ports={port: {"established": 1}}), None, detailed=False)
    assert sorted(kernel_calls["dumps"]) == ["ipv4", "ipv6"] and kernel_calls["walks"] == 0
    assert breakdown["states"]["ESTABLISHED"]["ports"] == {port: 3}  # the kernel filtered the other ports


@pytest.mark.parametrize("comm", [b"\x1b[2J\x1b[H", b"ok\nPASSED", b"a\rb\x7f\xc2\x85c", "x\u2028y".encode()])
def test_breach_paragraph_is_one_line_whatever_a_process_is_named(comm):
    # a process picks its own comm (prctl PR_SET_NAME): escape sequences and newlines must not reach the terminal
    facts, breakdown, report = load("close_wait_leak")
    breakdown["comm"][report["pid"]] = comm
    result = _gate.evaluate(spec(max={"close_wait": 1}, processes={"a\nb": {"close_wait": 0}}), facts, breakdown)
    message = _gate.breach_paragraph(result)
    assert f"held by pid {report['pid']} (" in message
    assert not [char for char in message if ord(char) < 32 or 127 <= ord(char) < 160 or char in "\u2028\u2029"]
