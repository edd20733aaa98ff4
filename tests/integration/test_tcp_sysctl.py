"""tcp_sysctl against the real kernel, inside a bare lab host (a network namespace).

The module runs with `ip netns exec`, as it does over SSH in a lab host: /etc/sysctl.d is then
the host's private /etc/netns/<ns>/sysctl.d, and /proc/sys/net is the namespace's own. Every
check compares against independent readers: procps `sysctl -n` inside the namespace for live
values and the private directory as seen from outside for the file. The controller's own
/etc/sysctl.d and sysctls are checked to stay untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netstate_lab import Lab

MODULE = "ansible_collections.netstate.tcp.plugins.modules.tcp_sysctl"
CONF = "60-netstate-tcp.conf"
STATE = ".60-netstate-tcp.conf.previous.json"
LOCK = ".60-netstate-tcp.conf.lock"
KEYS = (
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_tw_reuse",
    "net.core.somaxconn",
    "net.ipv4.neigh.lo.retrans_time_ms",
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="lab hosts need root")


@pytest.fixture(scope="module")
def host():
    with Lab.create(hosts=1, ssh=False) as lab:
        yield lab.hosts[0]


@pytest.fixture(autouse=True)
def clean(host):
    """Each test starts with no drop-in and the namespace's original values, and leaves it so."""
    original = live(host)
    controller = controller_state()
    yield
    run(host, {"state": "absent"})
    for name, value in original.items():
        if live(host)[name] != value:
            host.set_sysctl(name, value)
    assert live(host) == original
    assert files(host) == {}
    assert controller_state() == controller


def run(host, args, check=False, diff=False):
    payload = json.dumps({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check, _ansible_diff=diff)})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = host.run([sys.executable, "-m", MODULE, payload], env=env, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def live(host):
    """Live values per procps sysctl inside the namespace, whitespace normalised."""
    proc = host.run(["sysctl", "-n", *KEYS], check=True)
    return dict(zip(KEYS, (" ".join(line.split()) for line in proc.stdout.splitlines())))


def files(host):
    directory = Path(host.sysctl_dir)
    return {p.name: p.read_text() for p in sorted(directory.iterdir())}


def controller_state():
    """What the tests must never change on the controller: its /etc/sysctl.d and its own values."""
    directory = Path("/etc/sysctl.d")
    listing = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} if directory.is_dir() else {}
    values = subprocess.run(["sysctl", "-n", *KEYS[:5]], capture_output=True, text=True, check=True).stdout
    return listing, values


def snapshot(host):
    return live(host), files(host)


def test_default_file_lands_in_the_private_sysctl_dir(host):
    before = live(host)
    result = run(host, {"sysctls": {"net.ipv4.tcp_fin_timeout": 30, "net.ipv4.ip_local_port_range": "10240 65000"}})
    assert result["changed"] is True, result
    assert result["namespace"]["initial"] is False
    assert result["file"] == f"/etc/sysctl.d/{CONF}"
    assert set(files(host)) == {CONF, STATE, LOCK}
    assert not Path("/etc/sysctl.d", CONF).exists()
    now = live(host)
    assert now["net.ipv4.tcp_fin_timeout"] == "30"
    assert now["net.ipv4.ip_local_port_range"] == "10240 65000"
    assert result["applied"] == {"net.ipv4.tcp_fin_timeout": "30", "net.ipv4.ip_local_port_range": "10240 65000"}
    saved = json.loads(files(host)[STATE])["previous"]
    assert saved == {k: before[k] for k in ("net.ipv4.tcp_fin_timeout", "net.ipv4.ip_local_port_range")}
    # The rendered file is valid for procps: load it in the namespace after resetting the values.
    host.set_sysctl("net.ipv4.tcp_fin_timeout", before["net.ipv4.tcp_fin_timeout"])
    loaded = host.run(["sysctl", "-p", f"/etc/sysctl.d/{CONF}"])
    assert loaded.returncode == 0, loaded.stderr
    assert live(host)["net.ipv4.tcp_fin_timeout"] == "30"


def test_idempotent_and_check_mode_changes_nothing(host):
    sysctls = {"net.ipv4.tcp_fin_timeout": 30, "net.core.somaxconn": 8192}
    assert run(host, {"sysctls": sysctls})["changed"] is True
    state = snapshot(host)
    again = run(host, {"sysctls": sysctls}, diff=True)
    assert again["changed"] is False and again["changed_sysctls"] == []
    assert again["diff"][0]["before"] == again["diff"][0]["after"]
    assert snapshot(host) == state

    proposed = run(
        host, {"sysctls": {"net.ipv4.tcp_fin_timeout": 25, "net.core.somaxconn": 8192}}, check=True, diff=True
    )
    assert proposed["changed"] is True and proposed["changed_sysctls"] == ["net.ipv4.tcp_fin_timeout"]
    file_diff, live_diff = proposed["diff"]
    assert "net.ipv4.tcp_fin_timeout = 30" in file_diff["before"]
    assert "net.ipv4.tcp_fin_timeout = 25" in file_diff["after"]
    assert "net.ipv4.tcp_fin_timeout = 30" in live_diff["before"]
    assert "net.ipv4.tcp_fin_timeout = 25" in live_diff["after"]
    assert snapshot(host) == state


def test_kernel_rejects_second_key_everything_rolled_back(host):
    assert run(host, {"sysctls": {"net.ipv4.tcp_fin_timeout": 30}})["changed"] is True
    state = snapshot(host)
    # tcp_keepalive_time is seconds kept in jiffies in an int: the kernel answers EINVAL, after
    # tcp_fin_timeout (first in order) has already been written.
    result = run(host, {"sysctls": {"net.ipv4.tcp_fin_timeout": 20, "net.ipv4.tcp_keepalive_time": 99999999}})
    assert result["failed"] is True
    assert "net.ipv4.tcp_keepalive_time: writing '99999999' failed: Invalid argument" in result["msg"]
    assert "rolled back" in result["msg"]
    assert snapshot(host) == state


def rounded_value(host):
    """A retrans_time_ms the kernel stores as jiffies and reads back differently (HZ-dependent)."""
    name = "net.ipv4.neigh.lo.retrans_time_ms"
    original = host.sysctl(name)
    try:
        for candidate in range(1001, 1010):
            host.set_sysctl(name, candidate)
            if host.sysctl(name) != str(candidate):
                return candidate
    finally:
        host.set_sysctl(name, original)
    return None


def test_clamped_value_fails_and_rolls_back(host):
    value = rounded_value(host)
    if value is None:
        pytest.skip("HZ=1000 kernel: retrans_time_ms keeps every value")
    assert run(host, {"sysctls": {"net.ipv4.tcp_fin_timeout": 30}})["changed"] is True
    state = snapshot(host)
    result = run(host, {"sysctls": {"net.ipv4.tcp_fin_timeout": 20, "net.ipv4.neigh.lo.retrans_time_ms": value}})
    assert result["failed"] is True
    assert f"net.ipv4.neigh.lo.retrans_time_ms: the kernel changed '{value}' to" in result["msg"]
    assert "rolled back" in result["msg"]
    assert snapshot(host) == state


@pytest.mark.parametrize(
    ("sysctls", "message"),
    [
        ({"net.ipv4..tcp_fin_timeout": 20}, "invalid name 'net.ipv4..tcp_fin_timeout'"),
        ({"net/ipv4/tcp_fin_timeout": 20}, "invalid name 'net/ipv4/tcp_fin_timeout'"),
        ({"net.ipv4.tcp_fin_timeout.._.._.._etc": 20}, "invalid name"),
        ({"net.ipv4.tcp_no_such_key": 20}, "net.ipv4.tcp_no_such_key does not exist under /proc/sys"),
        ({"net.ipv4.tcp_fin_timeout": "twenty"}, "net.ipv4.tcp_fin_timeout: invalid value 'twenty'"),
        ({"net.ipv4.tcp_tw_reuse": True}, "net.ipv4.tcp_tw_reuse: True is a boolean"),
        ({"net.ipv4.tcp_tw_recycle": 0}, "removed in Linux 4.12"),
        ({"net.ipv4.ip_local_port_range": [1024]}, "net.ipv4.ip_local_port_range takes 2 integer(s)"),
    ],
)
def test_bad_input_clear_message_host_unchanged(host, sysctls, message):
    assert run(host, {"sysctls": {"net.ipv4.tcp_fin_timeout": 30}})["changed"] is True
    state = snapshot(host)
    result = run(host, {"sysctls": {"net.ipv4.tcp_fin_timeout": 20, **sysctls}})
    assert result["failed"] is True
    assert message in result["msg"]
    assert snapshot(host) == state


def test_global_key_in_namespace_skipped_with_warning_or_failed(host):
    result = run(host, {"sysctls": {"net.ipv4.tcp_max_orphans": 4096, "net.ipv4.tcp_fin_timeout": 30}})
    assert result["changed"] is True
    assert [s["name"] for s in result["skipped_sysctls"]] == ["net.ipv4.tcp_max_orphans"]
    assert any("net.ipv4.tcp_max_orphans is global" in str(w) for w in result["warnings"])
    assert "tcp_max_orphans" not in files(host)[CONF]
    state = snapshot(host)
    failed = run(host, {"sysctls": {"net.ipv4.tcp_max_orphans": 4096}, "on_global_in_namespace": "fail"})
    assert failed["failed"] is True and "on_global_in_namespace=fail" in failed["msg"]
    assert snapshot(host) == state


def test_absent_restores_exact_previous_values(host):
    original = snapshot(host)
    run(host, {"sysctls": {"net.ipv4.tcp_fin_timeout": 30, "net.ipv4.tcp_tw_reuse": 1}})
    run(host, {"sysctls": {"net.ipv4.tcp_fin_timeout": 25, "net.ipv4.ip_local_port_range": [20000, 40000]}})
    assert live(host)["net.ipv4.tcp_tw_reuse"] == original[0]["net.ipv4.tcp_tw_reuse"]  # released key restored
    result = run(host, {"state": "absent"}, diff=True)
    assert result["changed"] is True
    assert result["previous"]["net.ipv4.tcp_fin_timeout"] == original[0]["net.ipv4.tcp_fin_timeout"]
    assert snapshot(host) == original
    assert run(host, {"state": "absent"})["changed"] is False


# ---- issue 10: locks, faulty directories, a hostile saved state --------------------------------

# Runs inside the lab host, in a private mount namespace of its own (unshare -m): the steps mount a
# tmpfs, remount it read-only or fill it, and run the module; every mount vanishes with the process.
MOUNT_DRIVER = r"""
import json, subprocess, sys
steps, results = json.loads(sys.argv[1]), []
for step in steps:
    if "sh" in step:
        subprocess.run(["sh", "-c", step["sh"]], check=True)
        continue
    payload = json.dumps({"ANSIBLE_MODULE_ARGS": step["module"]})
    proc = subprocess.run([sys.executable, "-m", sys.argv[2], payload], capture_output=True, text=True)
    results.append({"stdout": proc.stdout, "stderr": proc.stderr})
print(json.dumps(results))
"""


def run_in_private_mounts(host, tmp_path, steps):
    driver = tmp_path / "driver.py"
    driver.write_text(MOUNT_DRIVER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, str(driver)]
    proc = host.run([*argv, json.dumps(steps), MODULE], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = []
    for item in json.loads(proc.stdout):
        assert "Traceback" not in item["stderr"], item["stderr"]
        results.append(json.loads(item["stdout"]))
    return results


@pytest.mark.parametrize("fault", ["read-only", "full"])
def test_faulty_dropin_directory_changes_nothing_and_says_so(host, tmp_path, fault):
    directory = tmp_path / "sysctl.d"
    directory.mkdir()
    conf = str(directory / CONF)
    original = live(host)
    first = {"net.ipv4.tcp_fin_timeout": 30}
    second = {"net.ipv4.tcp_fin_timeout": 20, "net.core.somaxconn": 1000}
    # tmpfs of 1 page: the drop-in fits, a filler file takes the rest
    make_fault = (
        f"mount -o remount,ro {directory}"
        if fault == "read-only"
        else f"dd if=/dev/zero of={directory}/filler bs=4096 count=64 2>/dev/null || true"
    )
    results = run_in_private_mounts(
        host,
        tmp_path,
        [
            {"sh": f"mount -t tmpfs -o size=8k,mode=0755 netstate-test {directory}"},
            {"module": {"sysctls": first, "file": conf}},
            {"sh": make_fault},
            {"sh": f"cp -a {directory}/{CONF} {tmp_path}/conf.before"},
            {"module": {"sysctls": second, "file": conf}},
            {"sh": f"cmp {directory}/{CONF} {tmp_path}/conf.before"},
            {"sh": f"umount {directory}"},
        ],
    )
    applied, failed = results
    assert applied["changed"] is True, applied
    assert failed["failed"] is True, failed
    assert "ROLLBACK INCOMPLETE" not in failed["msg"], failed["msg"]
    assert "nothing was changed" in failed["msg"], failed["msg"]
    assert conf in failed["msg"]
    now = live(host)
    assert now["net.ipv4.tcp_fin_timeout"] == "30"  # the first run's value, kept
    assert now["net.core.somaxconn"] == original["net.core.somaxconn"]
    host.set_sysctl("net.ipv4.tcp_fin_timeout", original["net.ipv4.tcp_fin_timeout"])


def test_saved_state_is_validated_like_user_input(host, tmp_path):
    # State files that name a path outside /proc/sys (the old code wrote "7" into target).
    target = tmp_path / "target"
    target.write_text("5\n")
    directory = Path(host.sysctl_dir)
    for name in (f"x.{target}", "net.ipv4.tcp_fin_timeout/../../../tmp", "net.ipv4.tcp_tw_recycle"):
        (directory / CONF).write_text(f"net.ipv4.tcp_fin_timeout = {live(host)['net.ipv4.tcp_fin_timeout']}\n")
        (directory / STATE).write_text(json.dumps({"schema": 1, "previous": {name: "7"}}))
        before = live(host)
        result = run(host, {"state": "absent"})
        assert result.get("failed") is True, (name, result)
        assert STATE in result["msg"] and name.split("/", maxsplit=1)[0] in result["msg"], result["msg"]
        assert target.read_text() == "5\n"
        assert live(host) == before
        (directory / STATE).unlink()
    # A host-wide key in the saved state is skipped inside the namespace, as it is in sysctls.
    (directory / STATE).write_text(json.dumps({"schema": 1, "previous": {"net.ipv4.tcp_max_orphans": "7"}}))
    result = run(host, {"state": "absent"})
    assert result["changed"] is True and result["changed_sysctls"] == []
    assert any("net.ipv4.tcp_max_orphans is global" in str(w) for w in result["warnings"])


def test_concurrent_applies_never_corrupt_the_saved_values(host):
    original = live(host)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for round_number in range(20):
        procs = []
        for value in (21, 22):
            args = {"sysctls": {"net.ipv4.tcp_fin_timeout": value, "net.core.somaxconn": 1000 + value}}
            payload = json.dumps({"ANSIBLE_MODULE_ARGS": args})
            argv = host.exec_args([sys.executable, "-m", MODULE, payload])
            procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert "Traceback" not in err, err
            assert not json.loads(out).get("failed"), out
        assert run(host, {"state": "absent"})["changed"] is True
        assert live(host) == original, f"round {round_number}"
        assert files(host) == {}
