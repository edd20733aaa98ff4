"""playbooks/remediate.yml over SSH on three lab hosts: canary batches, stop on the first failure.

The kernel itself provides the failure (it refuses tcp_syn_retries above 127 with EINVAL after
tcp_fin_timeout was written); the live values are read with cat inside each namespace and the
drop-in is looked for in each host's private sysctl.d, independently of the module's own report.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK = os.path.join(REPO, "playbooks", "remediate.yml")
PLAY_HEADER = "PLAY [Remediate TCP connection-state sysctls, canary first]"
DROPIN = "60-netstate-tcp.conf"


def fin_timeout(host):
    return host.run(["cat", "/proc/sys/net/ipv4/tcp_fin_timeout"], check=True).stdout.strip()


def remediate(lab, env, extra):
    return subprocess.run(
        [
            "ansible-playbook",
            "-i",
            lab.inventory_path,
            PLAYBOOK,
            "-e",
            "remediate_hosts=lab",
            "-e",
            json.dumps(dict(extra, remediate_summary_facts=False)),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def recap_hosts(stdout):
    tail = stdout.split("PLAY RECAP", 1)[1]
    return sorted(line.split()[0] for line in tail.splitlines()[1:] if ":" in line and "ok=" in line)


@pytest.fixture
def hosts(ssh_lab):
    before = {h.alias: fin_timeout(h) for h in ssh_lab.hosts}
    yield ssh_lab
    for h in ssh_lab.hosts:  # leave the session's lab as it was, whatever the test did
        h.run(["sh", "-c", f"echo {before[h.alias]} > /proc/sys/net/ipv4/tcp_fin_timeout"], check=True)
        for name in (DROPIN, f".{DROPIN}.previous.json"):
            path = os.path.join(h.sysctl_dir, name)
            if os.path.exists(path):
                os.unlink(path)


def test_first_failure_stops_the_rollout_on_the_canary(hosts, ansible_env):
    before = {h.alias: fin_timeout(h) for h in hosts.hosts}
    new = "31" if before["h1"] != "31" else "32"
    done = remediate(
        hosts,
        ansible_env,
        {"remediate_sysctls": {"net.ipv4.tcp_fin_timeout": int(new), "net.ipv4.tcp_syn_retries": 300}},
    )
    assert done.returncode != 0, done.stdout[-3000:]
    assert "net.ipv4.tcp_syn_retries: writing '300' failed" in done.stdout
    assert "rolled back" in done.stdout
    # only the canary was touched: the play stopped before the next batch
    assert done.stdout.count(PLAY_HEADER) == 1
    assert recap_hosts(done.stdout) == ["h1"]
    # every host holds its old value and no drop-in, the canary included (rolled back)
    assert {h.alias: fin_timeout(h) for h in hosts.hosts} == before
    for h in hosts.hosts:
        assert not os.path.exists(os.path.join(h.sysctl_dir, DROPIN)), h.alias


def test_batches_then_absent_restores(hosts, ansible_env):
    before = {h.alias: fin_timeout(h) for h in hosts.hosts}
    new = "31" if "31" not in before.values() else "33"
    done = remediate(hosts, ansible_env, {"remediate_sysctls": {"net.ipv4.tcp_fin_timeout": int(new)}})
    assert done.returncode == 0, done.stdout[-3000:]
    # serial [1, "25%", "100%"] on three hosts: the canary, then one (25% rounds up to one), then the last
    assert done.stdout.count(PLAY_HEADER) == 3
    assert recap_hosts(done.stdout) == ["h1", "h2", "h3"]
    assert {h.alias: fin_timeout(h) for h in hosts.hosts} == {h.alias: new for h in hosts.hosts}
    for h in hosts.hosts:
        with open(os.path.join(h.sysctl_dir, DROPIN), encoding="utf-8") as f:
            assert f"net.ipv4.tcp_fin_timeout = {new}\n" in f.read()

    done = remediate(hosts, ansible_env, {"remediate_state": "absent"})
    assert done.returncode == 0, done.stdout[-3000:]
    assert {h.alias: fin_timeout(h) for h in hosts.hosts} == before
    for h in hosts.hosts:
        assert not os.path.exists(os.path.join(h.sysctl_dir, DROPIN)), h.alias
