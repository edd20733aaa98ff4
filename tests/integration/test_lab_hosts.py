"""Lab hosts: isolation, ssh/Ansible reachability, private sysctl.d, clean destroy, stale sweep, prerequisites."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from netstate_lab import Lab, LabError, PrerequisiteError, ScenarioError, cleanup_stale
from netstate_lab.lab import NETNS_ETC, REGISTRY_DIR, netns_inode, pid_alive

LAB_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__import__("netstate_lab").__file__)))


def gone(pid):
    """The process has exited (a zombie waiting for its parent counts as exited)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def netns_exists(name):
    return os.path.exists(os.path.join("/run/netns", name))


def cli(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "netstate_lab.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def tool_dir(tmp_path, tools):
    """A PATH directory holding only links to ``tools``."""
    d = tmp_path / "bin"
    d.mkdir()
    for tool in tools:
        real = shutil.which(tool)
        assert real, tool
        (d / tool).symlink_to(real)
    return str(d)


# ---------------------------------------------------------------- bare hosts


def test_bare_host_is_its_own_namespace(bare_lab):
    lab = bare_lab(hosts=2)
    h1, h2 = lab.hosts
    assert h1.name.startswith(lab.run_id + "-") and h1.alias == "h1"
    assert h1.name != h2.name
    inodes = {h.run(["stat", "-L", "-c", "%i", "/proc/self/ns/net"], check=True).stdout.strip() for h in lab.hosts}
    assert inodes == {str(h1.netns_inode), str(h2.netns_inode)}
    assert str(os.stat("/proc/self/ns/net").st_ino) not in inodes
    # lo is up with 127.0.0.1 and nothing else is configured
    out = h1.run(["ip", "-br", "addr"], check=True).stdout.split()
    assert out[:3] == ["lo", "UNKNOWN", "127.0.0.1/8"]


def test_per_namespace_sysctl(bare_lab):
    lab = bare_lab(hosts=2)
    h1, h2 = lab.hosts
    before = h2.sysctl("net.ipv4.tcp_fin_timeout")
    host_value = open("/proc/sys/net/ipv4/tcp_fin_timeout", encoding="ascii").read().strip()
    new = "17" if before != "17" else "18"
    h1.set_sysctl("net.ipv4.tcp_fin_timeout", new)
    assert h1.sysctl("net.ipv4.tcp_fin_timeout") == new
    assert h2.sysctl("net.ipv4.tcp_fin_timeout") == before
    assert open("/proc/sys/net/ipv4/tcp_fin_timeout", encoding="ascii").read().strip() == host_value


def test_private_sysctl_d(bare_host):
    assert bare_host.sysctl_dir == f"/etc/netns/{bare_host.name}/sysctl.d"
    marker = os.path.join(bare_host.sysctl_dir, "90-lab-test.conf")
    with open(marker, "w", encoding="ascii") as f:
        f.write("net.ipv4.tcp_fin_timeout = 21\n")
    seen = bare_host.run(["ls", "/etc/sysctl.d"], check=True).stdout.split()
    assert seen == ["90-lab-test.conf"]
    # sysctl --system inside the namespace applies the private file to the namespace only
    bare_host.run(["sysctl", "-q", "-p", "/etc/sysctl.d/90-lab-test.conf"], check=True)
    assert bare_host.sysctl("net.ipv4.tcp_fin_timeout") == "21"
    assert "90-lab-test.conf" not in os.listdir("/etc/sysctl.d")


def test_destroy_removes_everything_also_on_error(lab_available):
    with pytest.raises(RuntimeError), Lab.create(hosts=2, ssh=False) as lab:
        sc = lab.hosts[0].start_scenario("close_wait_leak", count=5, hold=300)
        names = [h.name for h in lab.hosts]
        pids = [sc.pid, sc.report["pids"]["client"]]
        state_dir = lab.state_dir
        raise RuntimeError("test body failed")
    assert lab.destroyed
    for name in names:
        assert not netns_exists(name)
        assert not os.path.exists(os.path.join(NETNS_ETC, name))
    for pid in pids:
        assert gone(pid)
    assert not os.path.exists(state_dir)
    assert not os.path.exists(os.path.join(REGISTRY_DIR, lab.run_id + ".json"))
    lab.destroy()  # idempotent


def test_stale_run_is_swept_and_live_run_is_kept(bare_host, tmp_path):
    """A creator killed with SIGKILL leaves namespaces behind; cleanup_stale removes them, not ours."""
    script = textwrap.dedent(
        """
        import json, os, sys
        from netstate_lab import Lab
        lab = Lab.create(hosts=2, ssh=False)
        sc = lab.hosts[0].start_scenario("established", count=3, hold=300, pdeathsig=False)
        print(json.dumps({"run_id": lab.run_id, "names": [h.name for h in lab.hosts], "pid": sc.pid,
                          "state_dir": lab.state_dir}), flush=True)
        os.kill(os.getpid(), 9)
        """
    )
    env = dict(os.environ, PYTHONPATH=LAB_PARENT)
    res = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, check=False
    )
    assert res.returncode == -signal.SIGKILL, res.stderr
    dead = json.loads(res.stdout)
    assert all(netns_exists(n) for n in dead["names"]), "the crashed run left its namespaces"
    assert pid_alive(dead["pid"])

    report = cleanup_stale()

    assert dead["run_id"] in report["removed"]["runs"]
    assert set(dead["names"]) <= set(report["removed"]["namespaces"])
    for name in dead["names"]:
        assert not netns_exists(name)
        assert not os.path.exists(os.path.join(NETNS_ETC, name))
    end = time.monotonic() + 10
    while pid_alive(dead["pid"]) and time.monotonic() < end:
        time.sleep(0.05)
    assert not pid_alive(dead["pid"])
    assert not os.path.exists(dead["state_dir"])
    # our own live run is untouched
    assert bare_host.lab.run_id in report["skipped_live"]
    assert netns_exists(bare_host.name)
    assert netns_inode(bare_host.name) == bare_host.netns_inode


# A sweep that reads the registry, then spends time elsewhere (tearing down other runs' leftovers)
# before it lists the namespaces: stretched here to 0.2 s so that labs get created inside that window.
SLOW_SWEEPER = textwrap.dedent(
    """
    import os, sys, time
    from netstate_lab import lab
    counter = sys.argv[1]
    snapshot = lab.live_runs
    def slow_live_runs():
        live = snapshot()
        time.sleep(0.2)
        return live
    lab.live_runs = slow_live_runs
    end = time.monotonic() + 120
    for done in range(1, 401):
        if os.path.exists(counter + ".stop") or time.monotonic() > end:
            break
        lab.cleanup_stale()
        with open(counter + ".tmp", "w") as f:
            f.write(str(done))
        os.replace(counter + ".tmp", counter)
    """
)


def test_concurrent_stale_sweeps_never_remove_a_live_run(lab_available, tmp_path):
    """Two processes sweep stale runs in a loop while this one creates labs: every lab keeps its namespace."""
    env = dict(os.environ, PYTHONPATH=LAB_PARENT)
    counters = [str(tmp_path / f"sweeps-{i}") for i in range(2)]
    sweepers = [
        subprocess.Popen([sys.executable, "-c", SLOW_SWEEPER, c], env=env, stderr=subprocess.PIPE, text=True)
        for c in counters
    ]

    def sweeps():
        counts = []
        for c in counters:
            try:
                with open(c, encoding="ascii") as f:
                    counts.append(int(f.read()))
            except (OSError, ValueError):
                counts.append(0)
        return counts

    try:
        end = time.monotonic() + 60
        while min(sweeps()) < 1 and time.monotonic() < end:
            time.sleep(0.05)
        assert min(sweeps()) >= 1, "the sweepers did not start"
        for attempt in range(12):
            lab = Lab.create(hosts=2, ssh=False)
            try:
                before = sweeps()
                # every sweep running while the lab was made, and one more, has finished
                wait_end = time.monotonic() + 30
                while any(now < was + 2 for now, was in zip(sweeps(), before)) and time.monotonic() < wait_end:
                    assert all(p.poll() is None for p in sweepers), "a sweeper exited"
                    time.sleep(0.05)
                assert all(now >= was + 2 for now, was in zip(sweeps(), before)), "sweeps stalled"
                for h in lab.hosts:
                    assert netns_exists(h.name), f"lab {attempt}: a concurrent sweep removed live {h.name}"
                    assert netns_inode(h.name) == h.netns_inode
                    assert os.path.isdir(h.sysctl_dir)
                assert os.path.isdir(lab.state_dir)
            finally:
                lab.destroy()
    finally:
        for c in counters:
            with open(c + ".stop", "w", encoding="ascii"):
                pass
        errors = [p.communicate(timeout=60)[1] for p in sweepers]
    for err, p in zip(errors, sweepers):
        assert p.returncode == 0 and "Traceback" not in err, err


# ---------------------------------------------------------------- ssh hosts


def ssh(lab, host, command):
    """Run a command on a lab host over its real ssh path (ssh_config with the ProxyCommand)."""
    return subprocess.run(
        ["ssh", "-F", lab.ssh_config_path, host.alias, command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_ssh_reaches_each_host_in_its_namespace(ssh_lab):
    for h in ssh_lab.hosts:
        res = ssh(ssh_lab, h, "stat -L -c %i /proc/self/ns/net")
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == str(h.netns_inode)
    # strict host key checking against the generated known_hosts: a wrong key is refused
    with open(ssh_lab.known_hosts_path, encoding="ascii") as f:
        lines = f.read().splitlines()
    assert [line.split()[0] for line in lines] == [h.name for h in ssh_lab.hosts]


def test_ssh_session_sees_private_sysctl_d(ssh_lab):
    h = ssh_lab.hosts[1]
    marker = os.path.join(h.sysctl_dir, "91-ssh-test.conf")
    with open(marker, "w", encoding="ascii") as f:
        f.write("# marker\n")
    try:
        res = ssh(ssh_lab, h, "ls /etc/sysctl.d")
        assert res.returncode == 0, res.stderr
        assert "91-ssh-test.conf" in res.stdout.split()
    finally:
        os.unlink(marker)


def test_ansible_ping_over_generated_inventory(ssh_lab, ansible_env):
    res = subprocess.run(
        ["ansible", "lab", "-i", ssh_lab.inventory_path, "-m", "ansible.builtin.ping"],
        capture_output=True,
        text=True,
        timeout=180,
        env=ansible_env,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    for h in ssh_lab.hosts:
        assert f"{h.alias} | SUCCESS" in res.stdout


def test_unreachable_inventory_entries(lab_available, ansible_env, tmp_path):
    with Lab.create(hosts=1, ssh=True, unreachable=["dead1", {"name": "dead2", "groups": ["other"]}]) as lab:
        res = subprocess.run(
            ["ansible", "all", "-i", lab.inventory_path, "-m", "ansible.builtin.ping"],
            capture_output=True,
            text=True,
            timeout=180,
            env=ansible_env,
            check=False,
        )
        assert "h1 | SUCCESS" in res.stdout
        assert "dead1 | UNREACHABLE" in res.stdout
        assert "dead2 | UNREACHABLE" in res.stdout
        inv = subprocess.run(
            ["ansible-inventory", "-i", lab.inventory_path, "--list"],
            capture_output=True,
            text=True,
            timeout=60,
            env=ansible_env,
            check=True,
        )
        groups = json.loads(inv.stdout)
        assert sorted(groups["lab"]["hosts"]) == ["dead1", "h1"]
        assert sorted(groups["lab_unreachable"]["hosts"]) == ["dead1", "dead2"]
        assert groups["other"]["hosts"] == ["dead2"]
    with pytest.raises(LabError, match="unknown keys"):
        Lab.create(hosts=1, ssh=False, unreachable=[{"name": "x", "bogus": 1}])


def test_destroy_stops_sshd_and_sessions(lab_available):
    lab = Lab.create(hosts=2, ssh=True)
    sshd = [(h.sshd_pid, h.sshd_start) for h in lab.hosts]
    assert all(pid_alive(p, s) for p, s in sshd)
    # a session left open inside the namespace must not keep anything alive
    session = subprocess.Popen(
        ["ssh", "-F", lab.ssh_config_path, "h1", "sleep 300"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        end = time.monotonic() + 30
        while len(lab.hosts[0].pids()) < 3 and time.monotonic() < end:
            time.sleep(0.1)
        inside = lab.hosts[0].pids()
        assert len(inside) >= 3  # sshd listener, session sshd, sleep
        lab.destroy()
        for pid, start in sshd:
            assert not pid_alive(pid, start)
        for pid in inside:  # incl. the socat of the ProxyCommand, a child of the ssh client here
            assert gone(pid)
        for h in lab.hosts:
            assert not netns_exists(h.name)
            assert not os.path.exists(h.netns_dir)
        session.wait(30)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait(10)
        lab.destroy()


# ---------------------------------------------------------------- CLI and prerequisites


def test_cli_lifecycle(lab_available, tmp_path):
    state = str(tmp_path / "lab")
    up = cli("up", "--hosts", "2", "--state-dir", state)
    assert up.returncode == 0, up.stderr
    info = json.loads(up.stdout)
    names = [h["name"] for h in info["hosts"]]
    try:
        assert all(netns_exists(n) for n in names)
        assert pid_alive(info["keeper_pid"])
        assert os.path.exists(info["inventory_path"])
        # the keeper owns the run: a stale sweep leaves it alone
        assert info["run_id"] in cleanup_stale()["skipped_live"]
        start = cli(
            "scenario", "start", "--state-dir", state, "--host", "h2", "--kind", "close_wait_leak", "--count", "9"
        )
        assert start.returncode == 0, start.stderr
        report = json.loads(start.stdout)
        assert report["expected"]["CLOSE_WAIT"] == 9 and report["comm"] == "leaky-proxy"
        lab = Lab.attach(state)
        assert lab.host("h2").ss_count("close-wait") == 9
        stop = cli("scenario", "stop", "--state-dir", state, "--host", "h2", "--kind", "close_wait_leak")
        assert stop.returncode == 0, stop.stderr
        assert [s["pid"] for s in json.loads(stop.stdout)["stopped"]] == [report["pid"]]
        assert lab.host("h2").ss_count("close-wait") == 0
    finally:
        down = cli("down", "--state-dir", state)
    assert down.returncode == 0, down.stderr
    assert not any(netns_exists(n) for n in names)
    assert not any(os.path.exists(os.path.join(NETNS_ETC, n)) for n in names)
    assert not pid_alive(info["keeper_pid"])
    for h in info["hosts"]:
        assert not pid_alive(h["sshd_pid"], h["sshd_start"])


def test_syn_recv_without_nft_fails_clearly(bare_host, tmp_path):
    path = tool_dir(tmp_path, ["ip", "ss"])
    old = os.environ["PATH"]
    os.environ["PATH"] = path
    try:
        with pytest.raises(PrerequisiteError, match=r"nft \(Debian package nftables\)"):
            bare_host.start_scenario("syn_recv", count=3)
    finally:
        os.environ["PATH"] = old
    assert bare_host.scenarios == []


def test_cli_missing_prerequisite_is_one_line_exit_2(lab_available, tmp_path):
    state = str(tmp_path / "lab")
    env = dict(os.environ, PYTHONPATH=LAB_PARENT, PATH=tool_dir(tmp_path, ["ip", "ss", "sshd", "ssh-keygen"]))
    res = cli("up", "--hosts", "1", "--state-dir", state, env=env)
    assert res.returncode == 2
    assert res.stdout == ""
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert "socat (Debian package socat)" in res.stderr
    assert not os.path.exists(os.path.join(state, "lab.json"))

    up = cli("up", "--hosts", "1", "--no-ssh", "--state-dir", state)
    assert up.returncode == 0, up.stderr
    try:
        res = cli("scenario", "start", "--state-dir", state, "--host", "h1", "--kind", "syn_recv", env=env)
        assert res.returncode == 2
        assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
        assert "nft (Debian package nftables)" in res.stderr and "syn_recv" in res.stderr
    finally:
        assert cli("down", "--state-dir", state).returncode == 0


def test_cli_not_root_is_one_line_exit_2(nobody):
    res = subprocess.run(
        nobody.command("-m", "netstate_lab.cli", "up", lab=True),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("netstate-lab: ") and res.stderr.count("\n") == 1
    assert "root" in res.stderr


def test_bad_scenario_input_is_rejected(bare_host):
    with pytest.raises(ScenarioError, match="valid kinds"):
        bare_host.start_scenario("no_such_kind")
    with pytest.raises(ScenarioError, match="unknown scenario option"):
        bare_host.start_scenario("established", count=1, colour=3)
    with pytest.raises(ScenarioError, match="somaxconn"):
        if shutil.which("nft") is None:
            pytest.skip("nft missing")
        bare_host.start_scenario("syn_recv", count=100000)
    assert bare_host.pids() == []


def test_concurrent_labs_do_not_collide(bare_lab):
    first, second = bare_lab(hosts=2), bare_lab(hosts=2)
    assert first.run_id != second.run_id
    assert not {h.name for h in first.hosts} & {h.name for h in second.hosts}
    sc = second.hosts[0].start_scenario("established", count=5, hold=300)
    first.destroy()
    assert all(not netns_exists(h.name) for h in first.hosts)
    assert all(netns_exists(h.name) for h in second.hosts)
    assert sc.alive()
    assert second.hosts[0].ss_count("established") == 10
