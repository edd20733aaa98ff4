"""playbooks/audit.yml and playbooks/merge.yml on lab hosts over SSH (network namespaces with sshd).

- prom: without `prom` in audit_formats no host gets a tcp_state.prom (issue 10 item 12: ansible-core
  before 2.19 rendered default(none) as "" and wrote an empty file everywhere); with it, every host's
  file is the report's. NETSTATE_AUDIT_ANSIBLE_BIN=/path/to/venv/bin runs the playbooks with another
  ansible-core (e.g. a 2.16 venv).
- history (issue 12 item 4): a CLOSE_WAIT leak started between two audits is a new finding of the
  second, and resolved in the third once the leaking process is gone.
- merge (issue 12 item 5): two --limit slices merged hold the hosts and totals of the slices, and
  the hosts and findings of a full audit.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_BIN = Path(os.environ.get("NETSTATE_AUDIT_ANSIBLE_BIN", Path(os.sys.executable).parent))
LAB_HOSTS = ("h1", "h2", "h3")

pytestmark = pytest.mark.slow


def run_playbook(ansible_env, ssh_lab, playbook, *args, cwd=None):
    env = dict(ansible_env, PATH=f"{ANSIBLE_BIN}{os.pathsep}{ansible_env['PATH']}", ANSIBLE_NOCOLOR="1")
    done = subprocess.run(
        [
            str(ANSIBLE_BIN / "ansible-playbook"),
            "-i",
            str(ssh_lab.inventory_path),
            str(REPO / "playbooks" / playbook),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
        cwd=cwd or REPO,
    )
    assert "Traceback" not in done.stdout + done.stderr
    return done


def audit(ansible_env, ssh_lab, out, *args, **extra):
    variables = {"audit_hosts": "lab", "audit_output_dir": str(out), **extra}
    done = run_playbook(ansible_env, ssh_lab, "audit.yml", "-e", json.dumps(variables), *args)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return done, json.loads((out / "latest" / "report.json").read_text())


def test_prom_only_when_asked(ansible_env, ssh_lab, tmp_path):
    prom_dir = tmp_path / "prom"
    per_host = str(prom_dir) + "/{{ inventory_hostname }}"
    # lab hosts share the controller's filesystem: each writes into its own directory
    audit(ansible_env, ssh_lab, tmp_path / "r1", audit_prom_dir=per_host)
    assert not prom_dir.exists(), sorted(str(p) for p in prom_dir.rglob("*"))
    _done, report = audit(
        ansible_env, ssh_lab, tmp_path / "r2", audit_prom_dir=per_host, audit_formats=["json", "prom"]
    )
    for entry in report["hosts"]:
        text = (prom_dir / entry["name"] / "tcp_state.prom").read_text()
        assert f'netstate_tcp_sockets{{state="LISTEN"}} {entry["states"]["LISTEN"]}' in text.splitlines()
    assert sorted(os.listdir(prom_dir)) == sorted(e["name"] for e in report["hosts"])


@pytest.fixture
def leak_on_h1(ssh_lab):
    host = ssh_lab.host("h1")
    yield host
    host.stop_scenarios(kind="close_wait_leak")


def test_history_new_then_resolved(ansible_env, ssh_lab, tmp_path, leak_on_h1):
    out = tmp_path / "reports"
    thresholds = {"audit_thresholds": {"close_wait_warning": 100, "close_wait_critical": 1000}}
    _done, first = audit(ansible_env, ssh_lab, out, **thresholds)
    assert first["changes"]["previous"] is None
    assert "CLOSE_WAIT_LEAK" not in first["findings_by_code"]

    scenario = leak_on_h1.start_scenario("close_wait_leak", count=150)
    done, second = audit(ansible_env, ssh_lab, out, **thresholds)
    changes = second["changes"]
    assert changes["previous"] == first["generated_at"]
    assert {"host": "h1", "code": "CLOSE_WAIT_LEAK", "severity": "warning"} in changes["new_findings"]
    assert changes["state_deltas"]["h1"]["CLOSE_WAIT"] == scenario.report["expected"]["CLOSE_WAIT"]
    assert changes["resolved_findings"] == []
    assert changes["hosts_added"] == changes["hosts_removed"] == []
    summary = next(line for line in done.stdout.splitlines() if "since the last audit" in line)
    assert f"since the last audit ({first['generated_at']}): {len(changes['new_findings'])} new findings" in summary
    markdown = (out / "latest" / "report.md").read_text()
    assert markdown.index("## Since the last audit") < markdown.index("## Hosts")

    scenario.stop()
    _done, third = audit(ansible_env, ssh_lab, out, **thresholds)
    assert third["changes"]["previous"] == second["generated_at"]
    assert {"host": "h1", "code": "CLOSE_WAIT_LEAK", "severity": "warning"} in third["changes"]["resolved_findings"]
    assert not any(row["code"] == "CLOSE_WAIT_LEAK" for row in third["changes"]["new_findings"])


def test_two_limit_slices_merged_equal_a_full_audit(ansible_env, ssh_lab, tmp_path, leak_on_h1):
    leak_on_h1.start_scenario("close_wait_leak", count=120)
    thresholds = {"audit_thresholds": {"close_wait_warning": 100}}
    _done, slice1 = audit(ansible_env, ssh_lab, tmp_path / "slice1", "--limit", "h1", **thresholds)
    _done, slice2 = audit(ansible_env, ssh_lab, tmp_path / "slice2", "--limit", "h2,h3", **thresholds)
    _done, full = audit(ansible_env, ssh_lab, tmp_path / "full", **thresholds)
    assert [h["name"] for h in slice1["hosts"]] == ["h1"]

    merged_dir = tmp_path / "merged"
    variables = {"merge_reports": [str(tmp_path / "slice1"), str(tmp_path / "slice2" / "latest" / "report.json")]}
    variables["merge_output_dir"] = str(merged_dir)
    done = run_playbook(ansible_env, ssh_lab, "merge.yml", "-e", json.dumps(variables))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    merged = json.loads((merged_dir / "latest" / "report.json").read_text())

    assert sorted(h["name"] for h in merged["hosts"]) == sorted(h["name"] for h in full["hosts"]) == list(LAB_HOSTS)
    assert merged["fleet"] == full["fleet"]
    for state, count in merged["totals"]["states"].items():
        assert count == slice1["totals"]["states"][state] + slice2["totals"]["states"][state]
    assert merged["totals"]["sockets"] == slice1["totals"]["sockets"] + slice2["totals"]["sockets"]
    # the states the scenarios hold do not move between the audits (TIME_WAIT from SSH sessions does)
    for state in ("CLOSE_WAIT", "FIN_WAIT2", "LISTEN"):
        assert merged["totals"]["states"][state] == full["totals"]["states"][state]
    assert merged["findings_by_code"]["CLOSE_WAIT_LEAK"] == full["findings_by_code"]["CLOSE_WAIT_LEAK"] == ["h1"]
    assert merged["offenders"]["processes"][0]["comm"] == full["offenders"]["processes"][0]["comm"] == "leaky-proxy"
    assert [s["generated_at"] for s in merged["merged_from"]] == [slice1["generated_at"], slice2["generated_at"]]
