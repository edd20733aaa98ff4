"""Hostile ad hoc runs over SSH against lab hosts: bad options, hostile process names, check/diff, concurrency.

Every run is a real `ansible` ad hoc command (AnsiballZ over SSH into a network namespace) with the json
callback, so what is asserted is what an operator gets: a failure naming the option, never a traceback or
"MODULE FAILURE", and nothing changed on the host. tcp_sysctl's /etc/sysctl.d is the lab host's private
directory (``ip netns exec`` bind-mounts it) and /proc/sys/net is the namespace's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="lab hosts need root")

ANSIBLE = os.path.join(os.path.dirname(sys.executable), "ansible")
FIN = "net.ipv4.tcp_fin_timeout"


def adhoc_command(ssh_lab, host, module, args, *flags):
    command = [ANSIBLE, "-i", ssh_lab.inventory_path, host.alias, "-m", f"netstate.tcp.{module}"]
    return [*command, "-a", json.dumps(args), *flags]


def adhoc_env(ansible_env):
    # the default callback with JSON results: "<alias> | FAILED! => {...}" (the json callback left ansible-core)
    return dict(ansible_env, ANSIBLE_CALLBACK_RESULT_FORMAT="json", ANSIBLE_NOCOLOR="1")


def host_result(stdout, alias):
    """The result dict the default callback printed for ``alias``, with ``failed`` from its status word."""
    line_start = stdout.index(f"{alias} | ")
    status, printed = stdout[line_start + len(alias) + 3 :].split(" => ", 1)
    result = json.JSONDecoder().raw_decode(printed)[0]
    # the callback drops "failed" from what it prints: the status word carries it
    result["failed"] = status.strip() == "FAILED!"
    return result


def adhoc(ssh_lab, ansible_env, host, module, args, *flags, timeout=180):
    """One ad hoc run of ``module`` on ``host``; returns (result dict for the host, raw stdout+stderr)."""
    command = adhoc_command(ssh_lab, host, module, args, *flags)
    env = adhoc_env(ansible_env)
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    raw = proc.stdout + proc.stderr
    assert "Traceback (most recent call last)" not in raw, raw
    assert "MODULE FAILURE" not in raw, raw
    result = host_result(proc.stdout, host.alias)
    assert "exception" not in result, result["exception"]
    return result, raw


LONG = "x" * 50_000  # one argv string may hold 128 KiB: long, yet an ad hoc -a can carry it

ADHOC_CASES = [
    ("tcp_state_facts", {"interval": "nan"}, "interval: must be a number of seconds from 0 to"),
    ("tcp_state_facts", {"trace": 1e308}, "trace: must be a number of seconds from 0 to"),
    ("tcp_state_facts", {"namespaces": ["../../proc/1/ns/net"]}, "namespaces: no network namespace named"),
    ("tcp_state_facts", {"namespaces": [LONG]}, "namespaces: no network namespace named"),
    ("tcp_state_facts", {"owners": [{"a": 1}]}, "unknown TCP state"),
    ("tcp_state_facts", {"prometheus_textfile": "/tmp/a\nb.prom"}, "holds a control character"),
    ("tcp_state_facts", {"thresholds": {"nope": 1}}, "thresholds: unknown key 'nope'"),
    ("tcp_socket_info", {"local_ports": ["1e3"]}, "local_ports: port must be an integer 1..65535"),
    ("tcp_socket_info", {"peer_addresses": [LONG]}, "peer_addresses: not an IPv4/IPv6 address or CIDR"),
    ("tcp_socket_info", {"local_ports": list(range(1, 5000))}, "local_ports: filter too large"),
    ("tcp_socket_info", {"pids": [None]}, "Elements value for option 'pids'"),
    ("tcp_gate", {"max": {"close_wait": 1}, "timeout": "nan"}, "timeout: must be a finite number of seconds"),
    ("tcp_gate", {"max": {"close_wait": 1}, "poll_interval": 1e-9}, "poll_interval: must be a finite number"),
    ("tcp_gate", {"max": {"close_wait": "inf"}}, "max.CLOSE_WAIT: count must be a non-negative integer"),
    ("tcp_gate", {"ports": {"80\n": {"listen": 10**9}}}, None),  # surrounding whitespace is int()'s, port 80
    ("tcp_gate", {"max": {"close_wait": 1}, "namespace": "a\x00b"}, "namespace: no network namespace named"),
    ("tcp_sysctl", {"sysctls": None}, "sysctls: empty (or null) with state=present"),
    ("tcp_sysctl", {"sysctls": {FIN: "30\nkernel.panic = 1"}}, f"sysctls: {FIN}: invalid value"),
    ("tcp_sysctl", {"sysctls": {FIN: "9" * 5000}}, f"sysctls: {FIN}:"),
    ("tcp_sysctl", {"sysctls": {"net.ipv4.x/../../y": 1}}, "a sysctl name is dotted lower-case segments"),
    ("tcp_sysctl", {"sysctls": {FIN: 30}, "file": "/etc/sysctl.d/a\nb.conf"}, "holds a control character"),
    ("tcp_sysctl", {"sysctls": {FIN: 30}, "file": "/etc/sysctl.d/../x.conf"}, "must be a normalised path"),
    ("tcp_sysctl", {"orphan_cap": {"memory_mb": 64, "retries": 256}}, "orphan_cap: retries must be 1 to 255"),
    ("tcp_sysctl", {"sysctls": {FIN: 30}, "lock_timeout": 10**30}, "lock_timeout:"),
]


def sysctl_files(host):
    return {p.name: p.read_bytes() for p in sorted(Path(host.sysctl_dir).iterdir())}


@pytest.mark.parametrize(("module", "args", "fragment"), ADHOC_CASES)
def test_hostile_options_over_ssh_fail_clearly_and_change_nothing(ssh_lab, ansible_env, module, args, fragment):
    host = ssh_lab.hosts[0]
    before = (host.sysctl(FIN), sysctl_files(host))
    result, _raw = adhoc(ssh_lab, ansible_env, host, module, args)
    if fragment is None:
        assert not result["failed"], result
    else:
        assert result["failed"], result
        assert fragment in result["msg"], result["msg"]
    assert (host.sysctl(FIN), sysctl_files(host)) == before


HOSTILE_COMM = b"\x1b[2J\nPASS\xff\xfe"  # a process names itself (PR_SET_NAME): up to 15 arbitrary bytes
LISTENER = (
    "import ctypes,socket,sys,time\n"
    "ctypes.CDLL(None).prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0)\n"
    "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True)\n"
    "time.sleep(120)\n"
)


def test_hostile_process_name_is_data_never_markup(ssh_lab, ansible_env):
    host = ssh_lab.hosts[1]
    proc = subprocess.Popen(
        host.exec_args([sys.executable, "-c", LISTENER, HOSTILE_COMM.hex()]), stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(proc.stdout.readline())
        gate, _raw = adhoc(ssh_lab, ansible_env, host, "tcp_gate", {"ports": {str(port): {"listen": 0}}})
        assert gate["failed"] and f"held by pid {proc.pid} (" in gate["msg"], gate["msg"]
        assert not [c for c in gate["msg"] if ord(c) < 32 or 127 <= ord(c) < 160], gate["msg"]
        (offender,) = gate["offenders"]
        # the data keeps the name as the kernel has it (cut bytes as U+FFFD); only the message is made one line
        assert offender["processes"][0]["comm"] == HOSTILE_COMM.decode("utf-8", "replace")
        info, _raw = adhoc(ssh_lab, ansible_env, host, "tcp_socket_info", {"pids": [proc.pid], "details": True})
        assert info["matched"] == 1 and info["sockets"][0]["owner"]["pid"] == proc.pid, info
        assert info["sockets"][0]["owner"]["comm"] == offender["processes"][0]["comm"]
        facts, _raw = adhoc(ssh_lab, ansible_env, host, "tcp_state_facts", {"owners": ["LISTEN"]})
        owners = facts["ansible_facts"]["tcp_state"]["owners"]["LISTEN"]
        assert any(o["pid"] == proc.pid for o in owners), owners
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize(("check", "diff"), [(True, True), (True, False), (False, True), (False, False)])
def test_sysctl_check_and_diff_combinations_over_ssh(ssh_lab, ansible_env, check, diff):
    host = ssh_lab.hosts[2]
    original = host.sysctl(FIN)
    controller_dropins = sorted(os.listdir("/etc/sysctl.d")) if os.path.isdir("/etc/sysctl.d") else []
    target = str(int(original) + 7)
    flags = [*(["--check"] if check else []), *(["--diff"] if diff else [])]
    try:
        result, raw = adhoc(ssh_lab, ansible_env, host, "tcp_sysctl", {"sysctls": {FIN: target}}, *flags)
        assert not result.get("failed") and result["changed"] is True, result
        assert host.sysctl(FIN) == (original if check else target)
        assert bool(sysctl_files(host)) is not check
        # the callback prints the diff apart from the result: the drop-in's new line shows only with --diff
        assert (f"{FIN} = {target}" in raw) is diff
        again, _raw = adhoc(ssh_lab, ansible_env, host, "tcp_sysctl", {"sysctls": {FIN: target}}, *flags)
        assert again["changed"] is check  # a real run is idempotent; a check run still has all to do
        undo, _raw = adhoc(ssh_lab, ansible_env, host, "tcp_sysctl", {"state": "absent"}, *flags)
        assert undo["changed"] is not check
        assert host.sysctl(FIN) == original
    finally:
        adhoc(ssh_lab, ansible_env, host, "tcp_sysctl", {"state": "absent"})
        if host.sysctl(FIN) != original:
            host.set_sysctl(FIN, original)
    assert set(sysctl_files(host)) <= {".60-netstate-tcp.conf.lock"}  # the lock file stays by design
    assert (sorted(os.listdir("/etc/sysctl.d")) if os.path.isdir("/etc/sysctl.d") else []) == controller_dropins


def test_concurrent_textfile_writes_on_one_host_stay_whole(ssh_lab, ansible_env, tmp_path):
    host = ssh_lab.hosts[0]
    target = tmp_path / "prom" / "tcp_state.prom"  # the lab host shares the controller's filesystem
    env = adhoc_env(ansible_env)
    command = adhoc_command(ssh_lab, host, "tcp_state_facts", {"prometheus_textfile": str(target)})
    for _round in range(3):  # bounded: 3 rounds of 3 runs at once
        runs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
        runs += [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
        runs += [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
        deadline = time.monotonic() + 180
        for run in runs:
            out, _err = run.communicate(timeout=max(1, deadline - time.monotonic()))
            assert run.returncode == 0, out
        text = target.read_text()
        assert text.endswith("\n") and "# TYPE" in text
        samples = [line for line in text.splitlines() if line and not line.startswith("#")]
        assert len(samples) == len({line.rsplit(" ", 1)[0] for line in samples})  # no run's lines mixed in twice
        assert sorted(p.name for p in target.parent.iterdir()) == ["tcp_state.prom"]  # no temporary left
