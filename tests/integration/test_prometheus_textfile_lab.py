"""Prometheus textfile written by tcp_state_facts on each lab host over SSH, in the audit's facts task.

Three SSH lab hosts; h2 holds a CLOSE_WAIT leak. audit.yml runs with prom and a per-host textfile
directory (lab hosts share this machine's file system, so the directory names the host). Each
host's file must exist with mode 0644, hold that host's own figures (checked against `ss` inside its
namespace and against the report the controller wrote from the same facts), and no task but the
facts task may run on the hosts.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
AUDIT = os.path.join(REPO, "playbooks", "audit.yml")
LEAK = 20
SAMPLE = re.compile(r"^(netstate_tcp_[a-z_]+)(?:\{(.*)\})? (\S+)$")


def run(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, check=False)
    assert "Traceback (most recent call last)" not in proc.stdout + proc.stderr
    return proc


def samples(text):
    found = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        found[(match.group(1), match.group(2) or "")] = float(match.group(3))
    return found


@pytest.fixture
def leaking_lab(ssh_lab):
    scenario = ssh_lab.host("h2").start_scenario("close_wait_leak", count=LEAK)
    try:
        yield ssh_lab
    finally:
        scenario.stop()


def test_audit_with_prom_writes_each_hosts_file_from_the_facts_task(leaking_lab, ansible_env, tmp_path):
    lab = leaking_lab
    prom_root = tmp_path / "textfile"
    out = tmp_path / "reports"
    proc = run(
        [
            "ansible-playbook",
            "-i",
            str(lab.inventory_path),
            AUDIT,
            "-e",
            json.dumps(
                {
                    "audit_hosts": "lab",
                    "audit_formats": ["json", "prom"],
                    "audit_output_dir": str(out),
                    # h2's leak is a critical finding at this size
                    "audit_thresholds": {
                        "close_wait_warning": LEAK // 4,
                        "close_wait_critical": LEAK // 2,
                        "close_wait_min_per_owner": LEAK // 4,
                    },
                    # templated per host: one directory per lab host
                    "audit_prom_dir": str(prom_root) + "/{{ inventory_hostname }}",
                }
            ),
        ],
        ansible_env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # one task ran on each host, the facts task, and it wrote the file (changed); delegated tasks show
    # "-> localhost", skipped ones run nothing
    for host in lab.hosts:
        on_host = re.findall(rf"^(ok|changed): \[{host.alias}\]$", proc.stdout, re.M)
        assert on_host == ["changed"], (host.alias, on_host, proc.stdout[-3000:])
    report = json.loads((out / "latest" / "report.json").read_text())
    entries = {e["name"]: e for e in report["hosts"]}
    for host in lab.hosts:
        path = prom_root / host.alias / "tcp_state.prom"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
        assert sorted(os.listdir(path.parent)) == ["tcp_state.prom"]  # no temporary file left behind
        text = path.read_text()
        found = samples(text)
        entry = entries[host.alias]
        for state, count in entry["states"].items():
            assert found[("netstate_tcp_sockets", f'state="{state}"')] == count, (host.alias, state)
        codes = {f["code"] for f in entry["findings"]}
        rendered = {
            re.match(r'code="([A-Z0-9_]+)"', labels).group(1) for (name, labels) in found if name.endswith("findings")
        }
        assert rendered == codes
    leak = samples((prom_root / "h2" / "tcp_state.prom").read_text())
    assert leak[("netstate_tcp_sockets", 'state="CLOSE_WAIT"')] == lab.host("h2").ss_count("close-wait") >= LEAK
    assert leak[("netstate_tcp_findings", 'code="CLOSE_WAIT_LEAK",severity="critical"')] == 1
    assert leak[("netstate_tcp_worst_severity", "")] == 3
    quiet = samples((prom_root / "h1" / "tcp_state.prom").read_text())
    assert quiet[("netstate_tcp_sockets", 'state="CLOSE_WAIT"')] == lab.host("h1").ss_count("close-wait") == 0
    assert not [labels for name, labels in quiet if name == "netstate_tcp_findings" and "CLOSE_WAIT_LEAK" in labels]


def test_module_check_mode_writes_nothing_and_bad_paths_fail_clearly(ssh_lab, ansible_env, tmp_path):
    path = tmp_path / "check" / "tcp_state.prom"
    proc = run(
        ["ansible", "-i", str(ssh_lab.inventory_path), "h1", "--check", "-m", "netstate.tcp.tcp_state_facts",
         "-a", f"prometheus_textfile={path}"],
        ansible_env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert not path.parent.exists()
    for bad, why in (("relative/tcp_state.prom", "is relative"), (str(tmp_path / "x.txt"), "does not end in .prom")):
        proc = run(
            ["ansible", "-i", str(ssh_lab.inventory_path), "h1", "-m", "netstate.tcp.tcp_state_facts",
             "-a", f"prometheus_textfile={bad}"],
            ansible_env,
        )  # fmt: skip
        assert proc.returncode != 0
        assert "prometheus_textfile: must be an absolute path" in proc.stdout and why in proc.stdout
        assert "MODULE FAILURE" not in proc.stdout
