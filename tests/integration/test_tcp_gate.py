"""tcp_gate on lab hosts with a real CLOSE_WAIT leak (netstate_lab scenario close_wait_leak).

The module runs inside the lab namespace as Ansible runs it; the scenario's own
report (pid, comm, port, counts) and ss are the independent sources.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from netstate_lab import Lab

PYTHONPATH = os.pathsep.join(sys.path)
MODULE = "ansible_collections.netstate.tcp.plugins.modules.tcp_gate"


def gate_command(host, args):
    payload = json.dumps({"ANSIBLE_MODULE_ARGS": args})
    return host.exec_args([sys.executable, "-m", MODULE, payload])


def parse(proc_stdout, proc_stderr):
    assert "Traceback" not in proc_stderr, proc_stderr
    return json.loads(proc_stdout)


def run_gate(host, args):
    proc = host.run(
        [sys.executable, "-m", MODULE, json.dumps({"ANSIBLE_MODULE_ARGS": args})],
        env=dict(os.environ, PYTHONPATH=PYTHONPATH),
        timeout=180,
    )
    return parse(proc.stdout, proc.stderr)


@pytest.fixture
def leak_lab(lab_available):
    lab = Lab.create(hosts=2, ssh=False)
    try:
        leak = lab.hosts[0].start_scenario("close_wait_leak", count=40)
        lab.hosts[1].start_scenario("established", count=10)
        yield lab, leak
    finally:
        lab.destroy()


def test_gate_fails_on_the_leaking_host_naming_process_and_port(leak_lab):
    lab, leak = leak_lab
    leaky, clean = lab.hosts
    (port,) = leak.report["ports"]["server"]
    count = leaky.ss_count("close-wait")
    assert count == leak.report["observed"]["CLOSE_WAIT"]
    args = {
        "max": {"close_wait": 10},
        "ports": {str(port): {"close-wait": 5}},
        "processes": {leak.report["comm"]: {"close_wait": 5}},
    }
    result = run_gate(leaky, args)
    assert result["failed"] is True and result["passed"] is False
    msg = result["msg"]
    assert f"CLOSE_WAIT {count} > 10; {count} held by pid {leak.pid} ({leak.report['comm']}) on :{port}" in msg
    assert f":{port} CLOSE_WAIT {count} > 5" in msg
    assert f"{leak.report['comm']} CLOSE_WAIT {count} > 5" in msg
    assert [c["value"] for c in result["checks"]] == [count, count, count]

    passed = run_gate(clean, args)
    assert passed["passed"] is True and not passed.get("failed"), passed
    assert [c["value"] for c in passed["checks"]] == [clean.ss_count("close-wait"), 0, 0]


def test_gate_passes_when_the_leak_is_stopped_during_the_wait(leak_lab):
    lab, leak = leak_lab
    leaky = lab.hosts[0]
    proc = subprocess.Popen(
        gate_command(leaky, {"max": {"close_wait": 0}, "timeout": 60, "poll_interval": 1}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=PYTHONPATH),
    )
    try:
        time.sleep(3)  # the gate is sampling and finding the leak
        assert proc.poll() is None, "the gate must still be waiting"
        leak.stop()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = parse(out, err)
    assert result["passed"] is True, result
    assert result["samples"] >= 2
    assert result["checks"] == [{"metric": "CLOSE_WAIT", "value": 0, "threshold": 0, "passed": True}]


def test_gate_fails_after_the_timeout_when_the_leak_stays(leak_lab):
    lab, leak = leak_lab
    result = run_gate(lab.hosts[0], {"max": {"close_wait": 0}, "timeout": 3, "poll_interval": 1})
    assert result["failed"] is True and result["samples"] >= 2
    assert result["elapsed"] >= 3
    assert f"after waiting {result['elapsed']:g}s ({result['samples']} samples)" in result["msg"]
    assert f"held by pid {leak.pid} ({leak.report['comm']})" in result["msg"]


def test_a_ratio_the_namespace_cannot_measure_passes_with_a_warning(leak_lab):
    lab, _leak = leak_lab
    clean = lab.hosts[1]
    visible = clean.run(["cat", "/proc/sys/net/ipv4/tcp_max_orphans"])
    if visible.returncode == 0:
        pytest.skip("this kernel shows tcp_max_orphans inside a network namespace")
    result = run_gate(clean, {"ratios": {"orphans": 0.5}})
    assert result["passed"] is True
    assert result["checks"] == [{"metric": "orphans ratio", "value": None, "threshold": 0.5, "passed": True}]
    expected = "ratio orphans cannot be measured here (no limit visible, e.g. inside a namespace)"
    assert expected in result["warnings_list"]
    # shown as a task warning too (ansible-core 2.19 returns warnings as structured events)
    assert expected in json.dumps(result["warnings"])


# 26 UTF-8 bytes: the kernel keeps 15, cut after the first byte of "プ"
MULTIBYTE_NAME = "ab日本語のプロセス"


@pytest.fixture
def multibyte_leak(lab_available):
    lab = Lab.create(hosts=1, ssh=False)
    try:
        host = lab.hosts[0]
        yield host, host.start_scenario("close_wait_leak", count=20, comm=MULTIBYTE_NAME)
    finally:
        lab.destroy()


def test_processes_match_a_multibyte_name_the_kernel_cut(multibyte_leak):
    """Before the fix the gate cut names at 15 characters, matched nothing, reported 0 and passed."""
    host, leak = multibyte_leak
    kernel_comm = bytes.fromhex(leak.report["kernel_comm_hex"])
    assert kernel_comm == MULTIBYTE_NAME.encode()[:15]
    with pytest.raises(UnicodeDecodeError):
        kernel_comm.decode()  # the cut landed inside a character
    count = host.ss_count("close-wait")
    assert count == leak.report["observed"]["CLOSE_WAIT"] > 0
    shown = kernel_comm.decode("utf-8", "replace")
    for given in (MULTIBYTE_NAME, shown):
        result = run_gate(host, {"processes": {given: {"close_wait": 0}}})
        assert result["failed"] is True and result["passed"] is False, given
        assert result["checks"] == [{"metric": f"{given} CLOSE_WAIT", "value": count, "threshold": 0, "passed": False}]
        (proc,) = result["offenders"][0]["processes"]
        assert (proc["pid"], proc["comm"], proc["sockets"]) == (leak.pid, shown, count)
    # 14 bytes is another name: nothing matches it
    other = run_gate(host, {"processes": {"ab日本語の": {"close_wait": 0}}})
    assert other["passed"] is True and other["checks"][0]["value"] == 0


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        return handle.read().split(")")[-1].split()[0] == "Z"


def _wait_gone(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.2)
    return False


WAITING_GATE = {"max": {"close_wait": 0}, "timeout": 600, "poll_interval": 1}


def test_gate_stops_waiting_when_its_output_reader_goes_away(leak_lab):
    """The controller's end of the module's stdout closes (SSH session or Ansible worker gone)."""
    lab, _leak = leak_lab
    proc = subprocess.Popen(
        gate_command(lab.hosts[0], WAITING_GATE),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=PYTHONPATH),
    )
    try:
        time.sleep(3)  # the gate is waiting for the leak to drain
        assert proc.poll() is None, "the gate must still be waiting"
        proc.stdout.close()
        proc.wait(timeout=60)  # far below its 600 s timeout: it stopped because nobody reads it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_gate_stops_waiting_when_its_parent_dies(leak_lab):
    """The parent that started the module exits (the module is reparented); its stdout goes nowhere."""
    lab, _leak = leak_lab
    payload = json.dumps({"ANSIBLE_MODULE_ARGS": WAITING_GATE})
    module = " ".join(shlex.quote(arg) for arg in [sys.executable, "-m", MODULE, payload])
    parent = subprocess.Popen(
        lab.hosts[0].exec_args(["sh", "-c", f"{module} >/dev/null 2>&1 & echo $!; wait"]),
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=PYTHONPATH),
    )
    gate_pid = int(parent.stdout.readline())
    try:
        time.sleep(3)
        assert not _gone(gate_pid), "the gate must still be waiting"
        parent.kill()
        parent.wait()
        assert _wait_gone(gate_pid, 60), "the gate kept polling after its parent died"
    finally:
        if not _gone(gate_pid):
            os.kill(gate_pid, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# ---- drain-aware gate: peers that do not count, another namespace -------------------------------
def test_exclude_peers_and_peer_addresses_count_only_the_chosen_peers(leak_lab):
    """The leak's CLOSE_WAIT peers are its clients (report client_block): excluding them drains the gate."""
    lab, leak = leak_lab
    leaky = lab.hosts[0]
    count = leaky.ss_count("close-wait")
    clients = leak.report["client_block"]
    in_block = len(leaky.run(["ss", "-Htan", "state", "close-wait", "dst", clients], check=True).stdout.splitlines())
    assert in_block == count > 0
    cases = [
        ({"exclude_peers": [clients]}, 0),
        ({"exclude_peers": ["192.0.2.0/24"]}, count),
        ({"peer_addresses": [clients]}, count),
        ({"peer_addresses": ["192.0.2.0/24"]}, 0),
        ({"peer_addresses": [clients], "exclude_peers": [clients]}, 0),
    ]
    for peers, expected in cases:
        for extra in ({}, {"ratios": {"time_wait": 1}}):  # the counter's own dump, then the facts' dump
            result = run_gate(leaky, {"max": {"close_wait": 0}, **peers, **extra})
            assert result["checks"][0]["value"] == expected, (peers, extra)
            assert result["passed"] is (expected == 0), (peers, extra)


def _run_here(args):
    proc = subprocess.run(
        [sys.executable, "-m", MODULE, json.dumps({"ANSIBLE_MODULE_ARGS": args})],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=PYTHONPATH),
        timeout=180,
        check=False,
    )
    return parse(proc.stdout, proc.stderr)


def test_namespace_gates_another_namespace_by_name_or_pid(leak_lab):
    """Run from the test's own namespace: the gate enters the lab host's, named or through the leak's pid."""
    lab, leak = leak_lab
    leaky = lab.hosts[0]
    count = leaky.ss_count("close-wait")
    for namespace in (leaky.name, str(leak.pid)):
        args = {"namespace": namespace, "max": {"close_wait": 0}, "processes": {leak.report["comm"]: {"close_wait": 0}}}
        result = _run_here(args)
        assert [c["value"] for c in result["checks"]] == [count, count], namespace
        assert f"held by pid {leak.pid} ({leak.report['comm']})" in result["msg"]
    clean = _run_here({"namespace": lab.hosts[1].name, "max": {"close_wait": 0}})
    assert clean["passed"] is True and clean["checks"][0]["value"] == 0
    missing = _run_here({"namespace": "nsl-not-there", "max": {"close_wait": 0}})
    assert missing["failed"] is True and "namespace: no network namespace named 'nsl-not-there'" in missing["msg"]


def _module_pids(host):
    """pids in the lab host of Python processes run as Ansible runs a pipelined module (a bare interpreter)."""
    found = []
    for pid in host.pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().rstrip(b"\0").split(b"\0")
        except OSError:
            continue
        if len(argv) == 1 and os.path.basename(argv[0]).startswith(b"python"):
            found.append(pid)
    return found


def _descendants(root):
    """pids of every process below `root` (Ansible workers start their own sessions: not one process group)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_gate_over_ssh_stops_when_the_controller_dies(ssh_lab, ansible_env):
    """ansible, its workers and its ssh client killed mid-wait: the module on the lab host stops polling."""
    host = ssh_lab.hosts[0]
    leak = host.start_scenario("close_wait_leak", count=5)
    # no ControlPersist master: the connection dies with the ssh client, as when the controller is lost
    env = dict(ansible_env, ANSIBLE_SSH_ARGS="-o ControlMaster=no")
    args = json.dumps({"max": {"close_wait": 0}, "timeout": 600, "poll_interval": 1})
    command = [os.path.join(os.path.dirname(sys.executable), "ansible"), "-i", ssh_lab.inventory_path, host.alias]
    controller = subprocess.Popen(
        [*command, "-m", "netstate.tcp.tcp_gate", "-a", args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tree, module = [], []
    try:
        deadline = time.monotonic() + 60
        while not module and time.monotonic() < deadline and controller.poll() is None:
            time.sleep(0.5)
            module = _module_pids(host)
        assert module, "the gate module never started on the lab host"
        time.sleep(2)  # it is waiting for the leak to drain
        assert not _gone(module[0])
        tree = [controller.pid, *_descendants(controller.pid)]
        for pid in tree:  # the whole controller side, ssh client included, as when a CI job is cancelled
            os.kill(pid, signal.SIGKILL)
        controller.wait()
        assert _wait_gone(module[0], 60), "the gate kept polling after its controller died"
    finally:
        for pid in tree + module:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        if controller.poll() is None:
            controller.kill()
            controller.wait()
        leak.stop()
