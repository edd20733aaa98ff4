"""tcp_gate module: documentation vs argument spec, rejected input, a real run on this host.

The module runs as Ansible runs it (a subprocess with ANSIBLE_MODULE_ARGS); every
run asserts that no traceback reached stderr. Real-run values are compared with
`ss` in the same namespace.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml
from module_harness import argument_spec, assert_options_documented, run_module

from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import CODES
from ansible_collections.netstate.tcp.plugins.modules import tcp_gate


def test_documentation_matches_argument_spec():
    doc = yaml.safe_load(tcp_gate.DOCUMENTATION)
    spec = argument_spec(tcp_gate)
    assert spec["supports_check_mode"] is True
    documented = dict(doc["options"])
    assert "thresholds" not in documented  # documented by the netstate.tcp.thresholds fragment
    args = dict(spec["argument_spec"])
    assert args.pop("thresholds") == {"type": "dict"}
    assert_options_documented(documented, args)
    for code in CODES:  # every valid finding code is documented
        assert f"V({code})" in tcp_gate.DOCUMENTATION
    yaml.safe_load(tcp_gate.EXAMPLES)
    yaml.safe_load(tcp_gate.RETURN)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"max": {"closed_wait": 1}}, "max: unknown state 'closed_wait'; valid states (case-insensitive): ESTABLISHED"),
        ({"max": {"close_wait": -1}}, "max.CLOSE_WAIT: count must be a non-negative integer, got -1"),
        ({"max": {"close_wait": 2.5}}, "max.CLOSE_WAIT: count must be a non-negative integer, got 2.5"),
        ({"max": {"close_wait": True}}, "max.CLOSE_WAIT: count must be a non-negative integer, got True"),
        ({"ports": {"70000": {"listen": 1}}}, "ports: port '70000' must be an integer within 1..65535"),
        ({"ports": {"0": {"listen": 1}}}, "ports: port '0' must be an integer within 1..65535"),
        ({"processes": {"java": {"wait": 1}}}, "processes.java: unknown state 'wait'"),
        ({"ratios": {"orphans": 1.01}}, "ratios.orphans: must be a number between 0 and 1, got 1.01"),
        ({"ratios": {"sockets": 0.5}}, "valid ratios: orphans, memory, time_wait, ephemeral_ports"),
        ({"fail_on_codes": ["NOPE"]}, "fail_on_codes: unknown finding code 'NOPE'; valid codes: CLOSE_WAIT_LEAK"),
        ({"fail_on_severity": "fatal"}, "fail_on_severity must be one of: warning, critical"),
        ({"max": {"listen": 1}, "timeout": -1}, "timeout: must be a finite number of seconds from 0 to 86400"),
        ({"max": {"listen": 1}, "timeout": "nan"}, "timeout: must be a finite number of seconds from 0 to 86400"),
        ({"max": {"listen": 1}, "timeout": "inf"}, "timeout: must be a finite number of seconds from 0 to 86400"),
        ({"max": {"listen": 1}, "timeout": 1e308}, "timeout: must be a finite number of seconds from 0 to 86400"),
        ({"max": {"listen": 1}, "poll_interval": "nan"}, "poll_interval: must be a finite number of seconds from 0.1"),
        ({"max": {"listen": 1}, "poll_interval": 1e-9}, "poll_interval: must be a finite number of seconds from 0.1"),
        ({}, "nothing to check"),
    ],
)
def test_invalid_input_fails_before_sampling(args, fragment):
    result = run_module(tcp_gate, args)
    assert result["failed"] is True
    assert fragment in result["msg"]
    assert "checks" not in result  # rejected before anything was sampled


def _ss_count(state):
    out = subprocess.run(["ss", "-Htan", "state", state], capture_output=True, text=True, check=True).stdout
    return len(out.splitlines())


def test_real_run_in_check_mode_matches_ss():
    listeners = _ss_count("listening")
    result = run_module(tcp_gate, {"max": {"listen": listeners + 50, "syn-sent": 100000}}, check=True)
    assert result["passed"] is True and result["changed"] is False, result
    check = result["checks"][0]
    assert check["metric"] == "LISTEN"
    assert abs(check["value"] - listeners) <= 2  # the host may open or close a listener between the two reads


def test_real_breach_fails_with_paragraph():
    listeners = _ss_count("listening")
    if listeners == 0:
        pytest.skip("no listening socket on this host")
    result = run_module(tcp_gate, {"max": {"LISTEN": 0}})
    assert result["failed"] is True and result["passed"] is False
    assert result["msg"].startswith("TCP gate failed 1 of 1 checks: LISTEN ")
    assert " > 0" in result["msg"]
    assert result["offenders"][0]["metric"] == "LISTEN"
