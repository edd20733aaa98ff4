"""tcp_socket_info module: documentation vs argument spec, rejected input, a real run vs ss."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest
import yaml
from module_harness import argument_spec, assert_options_documented, run_module

from ansible_collections.netstate.tcp.plugins.modules import tcp_socket_info


def test_documentation_matches_argument_spec():
    doc = yaml.safe_load(tcp_socket_info.DOCUMENTATION)
    spec = argument_spec(tcp_socket_info)
    assert spec["supports_check_mode"] is True
    assert_options_documented(doc["options"], spec["argument_spec"])
    yaml.safe_load(tcp_socket_info.EXAMPLES)
    yaml.safe_load(tcp_socket_info.RETURN)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"states": ["closed"]}, "states: unknown state 'closed'; valid states: all, ESTABLISHED"),
        ({"local_ports": [0]}, "local_ports: port must be within 1..65535, got 0"),
        ({"peer_ports": ["9000-80"]}, "peer_ports: port range must be LOW-HIGH with LOW <= HIGH"),
        ({"local_ports": ["http"]}, "local_ports: port must be an integer 1..65535 or a range LOW-HIGH"),
        ({"local_addresses": ["10.0.0.1/8"]}, "local_addresses: not an IPv4/IPv6 address or CIDR: '10.0.0.1/8'"),
        ({"peer_addresses": ["example.org"]}, "peer_addresses: not an IPv4/IPv6 address or CIDR"),
        ({"limit": -1}, "limit: must be an integer >= 0, got -1"),
        ({"comms": [""]}, "comms: must be non-empty process names"),
        ({"sort": "size"}, "sort must be one of: none, state"),
    ],
)
def test_invalid_input_fails_with_message(args, fragment):
    result = run_module(tcp_socket_info, args)
    assert result["failed"] is True
    assert fragment in result["msg"]


def _ss_listeners():
    out = subprocess.run(["ss", "-Htan", "state", "listening"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        local = line.split()[2]
        address, port = local.rsplit(":", 1)
        address = address.strip("[]").split("%")[0]
        found.add((str(ipaddress.ip_address(address if address != "*" else "0.0.0.0")), int(port)))
    return found


def test_listeners_match_ss_in_check_mode():
    expected = _ss_listeners()
    result = run_module(tcp_socket_info, {"states": ["listen"], "limit": 10000}, check=True)
    assert result["changed"] is False
    got = {(str(ipaddress.ip_address(s["local_address"])), s["local_port"]) for s in result["sockets"]}
    assert got == expected
    assert result["matched"] == len(result["sockets"]) and result["truncated"] is False


def test_limit_zero_counts_only():
    result = run_module(tcp_socket_info, {"states": ["listen"], "limit": 0})
    assert result["sockets"] == [] and result["matched"] == len(_ss_listeners())
    assert result["truncated"] is (result["matched"] > 0)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ({"local_ports": list(range(1, 5001))}, "local_ports: filter too large: the kernel takes at most 65531 bytes"),
        (
            {"peer_addresses": [f"10.{i // 256}.{i % 256}.0/24" for i in range(4000)], "peer_ports": [80]},
            "peer_ports, peer_addresses: filter too large",
        ),
    ],
)
def test_huge_filters_fail_naming_the_options_and_the_limit(args, fragment, tmp_path):
    # too long for one argv entry: Ansible reads the arguments from a file, as it does over SSH
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", tcp_socket_info.__name__, str(args_file)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        check=False,
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["failed"] is True
    assert fragment in result["msg"]
