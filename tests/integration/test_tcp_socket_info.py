"""tcp_socket_info on a lab host against ss with the same filter: the same 4-tuples.

The module runs inside the lab namespace as Ansible would run it (a subprocess
with ANSIBLE_MODULE_ARGS); ss in the same namespace is the independent source.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys

import pytest

from netstate_lab import Lab

PYTHONPATH = os.pathsep.join(sys.path)


def run_module(host, args):
    payload = json.dumps({"ANSIBLE_MODULE_ARGS": args})
    proc = host.run(
        [sys.executable, "-m", "ansible_collections.netstate.tcp.plugins.modules.tcp_socket_info", payload],
        env=dict(os.environ, PYTHONPATH=PYTHONPATH),
        timeout=120,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    result = json.loads(proc.stdout)
    assert not result.get("failed"), result
    return result


def _endpoint(text):
    address, port = text.rsplit(":", 1)
    address = address.strip("[]").split("%")[0]
    address = "0.0.0.0" if address == "*" else address
    return ipaddress.ip_address(address), 0 if port == "*" else int(port)


def ss_tuples(host, *args):
    out = host.run(["ss", "-Htan", *args], check=True).stdout
    # with one `state` ss drops the State column: local and peer are always the last two fields
    return sorted((*_endpoint(line.split()[-2]), *_endpoint(line.split()[-1])) for line in out.splitlines() if line)


def module_tuples(result):
    assert result["matched"] == len(result["sockets"]), "raise the limit: the test compares every socket"
    return sorted(
        (
            ipaddress.ip_address(s["local_address"]),
            s["local_port"],
            ipaddress.ip_address(s["peer_address"]),
            s["peer_port"],
        )
        for s in result["sockets"]
    )


@pytest.fixture(scope="module")
def leak_host(lab_available):
    lab = Lab.create(hosts=1, ssh=False)
    try:
        host = lab.hosts[0]
        leak = host.start_scenario("close_wait_leak", count=60)
        est = host.start_scenario("established", count=25)
        yield host, leak.report, est.report
    finally:
        lab.destroy()


def test_state_and_local_port_like_ss(leak_host):
    host, leak = leak_host[:2]
    (port,) = leak["ports"]["server"]
    expected = ss_tuples(host, "state", "close-wait", f"( sport = :{port} )")
    assert len(expected) == leak["observed"]["CLOSE_WAIT"]
    result = run_module(host, {"states": ["close_wait"], "local_ports": [port], "limit": 1000})
    assert module_tuples(result) == expected
    assert {s["state"] for s in result["sockets"]} == {"CLOSE_WAIT"}


def test_state_and_peer_port_like_ss(leak_host):
    host, leak = leak_host[:2]
    (port,) = leak["ports"]["server"]
    expected = ss_tuples(host, "state", "fin-wait-2", f"( dport = :{port} )")
    assert expected
    assert module_tuples(run_module(host, {"states": ["FIN-WAIT2"], "peer_ports": [port], "limit": 1000})) == expected


def test_port_range_all_states_like_ss(leak_host):
    host = leak_host[0]
    low, high = 20005, 20030
    expected = ss_tuples(host, f"( sport >= :{low} and sport <= :{high} )")
    assert expected
    result = run_module(host, {"local_ports": [f"{low}-{high}"], "limit": 1000})
    assert module_tuples(result) == expected


def test_peer_cidr_and_two_ports_like_ss(leak_host):
    host, leak, est = leak_host
    peers = ss_tuples(host, "state", "close-wait")
    network = ipaddress.ip_network(f"{peers[0][2]}/16", strict=False)
    ports = [leak["ports"]["server"][0], est["ports"]["server"][0]]
    expected = ss_tuples(host, "dst", str(network), f"( sport = :{ports[0]} or sport = :{ports[1]} )")
    assert expected
    result = run_module(host, {"peer_addresses": [str(network)], "local_ports": ports, "limit": 1000})
    assert module_tuples(result) == expected


def test_owner_filter_like_ss_process_column(leak_host):
    host, leak = leak_host[:2]
    out = host.run(["ss", "-Htanp"], check=True).stdout
    expected = sorted(
        (*_endpoint(line.split()[3]), *_endpoint(line.split()[4]))
        for line in out.splitlines()
        if f'"{leak["comm"]}",pid={leak["pid"]},' in line
    )
    assert len(expected) == leak["observed"]["CLOSE_WAIT"] + leak["observed"]["LISTEN"]
    result = run_module(host, {"comms": [leak["comm"]], "limit": 1000})
    assert module_tuples(result) == expected
    assert {(s["owner"]["pid"], s["owner"]["comm"]) for s in result["sockets"]} == {(leak["pid"], leak["comm"])}
    assert module_tuples(run_module(host, {"pids": [leak["pid"]], "limit": 1000})) == expected


def test_limit_sort_and_details(leak_host):
    host, est = leak_host[0], leak_host[2]
    (port,) = est["ports"]["server"]
    everything = ss_tuples(host, "state", "established")
    result = run_module(
        host, {"states": ["established"], "limit": 5, "sort": "peer_port", "details": True, "local_ports": [port]}
    )
    on_port = [t for t in everything if t[1] == port]
    assert result["matched"] == len(on_port) and result["truncated"] is True
    assert [s["peer_port"] for s in result["sockets"]] == sorted(t[3] for t in on_port)[:5]
    for sock in result["sockets"]:
        assert sock["tcp_info"]["cwnd"] > 0 and sock["tcp_info"]["snd_wnd"] > 0
        assert sock["meminfo"]["rcvbuf"] > 0
        assert sock["timer"]["kind"] in (None, "keepalive", "retransmit")


PROCFS_QUERY = r"""
import json, sys
from ansible_collections.netstate.tcp.plugins.module_utils import _socket_info as si
options = si.normalize_options(json.loads(sys.argv[1]))
print(json.dumps(si.query(options, dump=si.iter_procfs)))
"""


def test_procfs_fallback_filters_like_the_kernel(leak_host):
    """Without netlink the same bytecode runs in user space on /proc/net/tcp: same sockets as ss."""
    host, leak, est = leak_host
    (port,) = leak["ports"]["server"]
    network = ipaddress.ip_network(f"{ss_tuples(host, 'state', 'close-wait')[0][2]}/16", strict=False)
    cases = [
        ({"states": ["close_wait"], "local_ports": [port]}, ["state", "close-wait", f"( sport = :{port} )"]),
        ({"local_ports": ["20005-20030"]}, ["( sport >= :20005 and sport <= :20030 )"]),
        (
            {"peer_addresses": [str(network)], "local_ports": [port, est["ports"]["server"][0]]},
            ["dst", str(network), f"( sport = :{port} or sport = :{est['ports']['server'][0]} )"],
        ),
    ]
    for params, ss_args in cases:
        proc = host.run(
            [sys.executable, "-c", PROCFS_QUERY, json.dumps(dict(params, limit=1000))],
            env=dict(os.environ, PYTHONPATH=PYTHONPATH),
            check=True,
        )
        expected = ss_tuples(host, *ss_args)
        assert expected
        assert module_tuples(json.loads(proc.stdout)) == expected, params


MULTIBYTE_NAME = "ab日本語のプロセス"  # 26 UTF-8 bytes: the kernel keeps 15, cut inside "プ"


def test_comms_match_a_multibyte_name_the_kernel_cut(lab_available):
    """Before the fix names were cut at 15 characters and compared as text: nothing matched."""
    lab = Lab.create(hosts=1, ssh=False)
    try:
        host = lab.hosts[0]
        leak = host.start_scenario("close_wait_leak", count=20, comm=MULTIBYTE_NAME).report
        kernel_comm = bytes.fromhex(leak["kernel_comm_hex"])
        assert kernel_comm == MULTIBYTE_NAME.encode()[:15]
        by_pid = run_module(host, {"pids": [leak["pid"]], "limit": 1000})
        assert by_pid["matched"] == leak["observed"]["CLOSE_WAIT"] + leak["observed"]["LISTEN"]
        for given in (MULTIBYTE_NAME, kernel_comm.decode("utf-8", "replace")):
            result = run_module(host, {"comms": [given], "limit": 1000})
            assert module_tuples(result) == module_tuples(by_pid), given
            owners = {(s["owner"]["pid"], s["owner"]["comm"]) for s in result["sockets"]}
            assert owners == {(leak["pid"], kernel_comm.decode("utf-8", "replace"))}
    finally:
        lab.destroy()
