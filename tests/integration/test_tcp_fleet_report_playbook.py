"""netstate.tcp.tcp_fleet_report through real ansible-playbook runs (no mocked Ansible).

1. playbooks/audit.yml on an inventory with a reachable host (connection local,
   the real tcp_state_facts), an unreachable one (ssh to a closed loopback port)
   and one whose Python does not start: all three are in the report with the
   right status and the run does not fail.
2. The action alone on hosts whose registered results are facts recorded from
   real namespaces (and a malformed copy): the report holds exactly those numbers.
3. Bad input: an invalid audit_query and an unknown format fail with a message
   naming them.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FIXTURES = ROOT / "tests" / "unit" / "plugins" / "plugin_utils" / "fixtures"
RECORDED = ("close_wait_leak", "time_wait_churn", "clean")
ANSIBLE_DIRS = {
    "ANSIBLE_HOME": ROOT / ".build" / "ansible-home",
    "ANSIBLE_REMOTE_TMP": ROOT / ".build" / "ansible-home" / "remote-tmp",
}

# each test runs ansible-playbook
pytestmark = pytest.mark.slow


def playbook(*args, cwd=None) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=str(ROOT / ".build" / "collections"),
        ANSIBLE_NOCOLOR="1",
        PATH=f"{BIN}:{os.environ.get('PATH', '')}",
    )
    for name, path in ANSIBLE_DIRS.items():  # never the user's ~/.ansible (make exports the same)
        env.setdefault(name, str(path))
    return subprocess.run(
        [str(BIN / "ansible-playbook"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
        cwd=cwd or ROOT,
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def three_host_inventory(tmp_path):
    inventory = tmp_path / "inventory.json"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "good": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
                        "down": {
                            "ansible_connection": "ssh",
                            "ansible_host": "127.0.0.1",
                            "ansible_port": closed_port(),
                            "ansible_ssh_common_args": "-o ConnectTimeout=5 -o BatchMode=yes",
                        },
                        "broken": {"ansible_connection": "local", "ansible_python_interpreter": "/bin/false"},
                    }
                }
            }
        )
    )
    return inventory


def test_audit_playbook_records_unreachable_and_failed_hosts(tmp_path):
    inventory = three_host_inventory(tmp_path)
    out = tmp_path / "reports"
    # audit_query is checked first by the action in check mode (no host, no file), then run on the report
    done = playbook(
        "-i",
        str(inventory),
        "playbooks/audit.yml",
        "-e",
        f"audit_output_dir={out}",
        "-e",
        "audit_query=fleet",
        "-e",
        '{"audit_thresholds": {"close_wait_warning": 50}}',
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "latest" / "report.json").read_text())
    hosts = {h["name"]: h for h in report["hosts"]}
    assert set(hosts) == {"good", "down", "broken"}
    assert hosts["good"]["status"] == "ok"
    assert set(hosts["good"]["states"]) >= {"ESTABLISHED", "TIME_WAIT", "CLOSE_WAIT", "LISTEN"}
    assert hosts["down"]["status"] == "unreachable"
    assert "ssh" in hosts["down"]["error"].lower() or "connect" in hosts["down"]["error"].lower()
    assert hosts["broken"]["status"] == "failed"
    assert hosts["broken"]["error"]
    assert report["fleet"] == {"hosts": 3, "ok": 1, "malformed": 0, "failed": 1, "unreachable": 1}
    assert report["query_result"] == report["fleet"]
    # one report directory: the check-mode call wrote nothing
    assert sorted(os.listdir(out)) == sorted([os.readlink(out / "latest"), "latest"])
    for name in ("report.json", "report.md", "report.html", "report.csv"):
        assert stat.S_IMODE((out / "latest" / name).stat().st_mode) == 0o640
    # the terminal summary: one line per host and where the reports are
    for name in ("good", "down", "broken"):
        assert any(line.strip().startswith(name) for line in done.stdout.splitlines())
    assert f"reports: {out}" in done.stdout


def test_audit_with_limit_reports_the_limited_hosts(tmp_path):
    """AWX's Limit: the audit reports on the limited hosts instead of silently skipping the report."""
    out = tmp_path / "reports"
    inventory = three_host_inventory(tmp_path)
    done = playbook(
        "-i", str(inventory), "playbooks/audit.yml", "--limit", "good,down", "-e", f"audit_output_dir={out}"
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "latest" / "report.json").read_text())
    assert {h["name"]: h["status"] for h in report["hosts"]} == {"good": "ok", "down": "unreachable"}
    assert f"reports: {out}" in done.stdout


def test_audit_fails_when_limit_leaves_no_audited_host(tmp_path):
    out = tmp_path / "reports"
    inventory = three_host_inventory(tmp_path)
    done = playbook(
        "-i",
        str(inventory),
        "playbooks/audit.yml",
        "--limit",
        "good",
        "-e",
        "audit_hosts=broken",
        "-e",
        f"audit_output_dir={out}",
    )
    assert done.returncode != 0
    assert "audit_hosts broken with --limit good leaves no host to audit" in done.stdout
    assert not out.exists()


FORMATS_MESSAGE = (
    "audit_formats must be a list of json, md, html, csv, prom with at least one of json, md, html, csv; got "
)


@pytest.mark.parametrize(
    ("extra_vars", "messages"),
    [
        (
            '{"audit_thresholds": {"close_wait_warn": 50}}',
            ["audit_thresholds: thresholds: unknown key 'close_wait_warn'; valid keys:", "close_wait_warning"],
        ),
        ('{"audit_formats": ["json", "yaml"]}', [FORMATS_MESSAGE + "['json', 'yaml']"]),
        ('{"audit_formats": "json"}', [FORMATS_MESSAGE + "json"]),
        ('{"audit_formats": ["prom"]}', [FORMATS_MESSAGE + "['prom']"]),
    ],
    ids=["unknown-threshold", "unknown-format", "formats-a-string", "no-file-format"],
)
def test_audit_playbook_rejects_bad_variables_before_touching_a_host(tmp_path, extra_vars, messages):
    inventory, marker = tmp_path / "inventory.yml", tmp_path / "touched"
    # a host whose "python" leaves a mark: it must never be run
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake.chmod(0o755)
    inventory.write_text(
        json.dumps({"all": {"hosts": {"h": {"ansible_connection": "local", "ansible_python_interpreter": str(fake)}}}})
    )
    out = tmp_path / "reports"
    done = playbook("-i", str(inventory), "playbooks/audit.yml", "-e", f"audit_output_dir={out}", "-e", extra_vars)
    assert done.returncode != 0
    for message in messages:
        assert message in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert "Gather tcp_state facts" not in done.stdout
    assert not marker.exists()
    assert not out.exists()


RECORDED_PLAY = """
- name: Hosts whose registered tcp_state_facts results are recorded facts
  hosts: all
  gather_facts: false
  tasks:
    - name: Load the recorded result
      ansible.builtin.set_fact:
        audit_tcp_facts: "{{ lookup('ansible.builtin.file', result_file) | from_json }}"
      when: result_file is defined

- name: Report
  hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: Write the fleet report
      netstate.tcp.tcp_fleet_report:
        hosts: "{{ groups['all'] }}"
        output_dir: "{{ out }}"
        formats: "{{ formats }}"
        query: "{{ query | default(omit) }}"
      register: audit_report

    - name: Save what the action returned
      ansible.builtin.copy:
        content: "{{ audit_report | to_json }}"
        dest: "{{ out }}/result.json"
        mode: "0600"
"""


@pytest.fixture
def recorded_fleet(tmp_path):
    hosts = {}
    for name in RECORDED:
        facts = json.loads((FIXTURES / f"facts_{name}.json").read_text())
        registered = {"changed": False, "ansible_facts": {"tcp_state": facts}}
        if name == "clean":
            # an inventory variable, not a registered one: read through hostvars
            hosts[name] = {"ansible_connection": "local", "audit_tcp_facts": registered}
            continue
        result = tmp_path / f"{name}.json"
        result.write_text(json.dumps(registered))
        hosts[name] = {"ansible_connection": "local", "result_file": str(result)}
    old = json.loads((FIXTURES / "facts_clean.json").read_text())
    old.pop("states")
    (tmp_path / "old.json").write_text(json.dumps({"ansible_facts": {"tcp_state": old}}))
    hosts["old"] = {"ansible_connection": "local", "result_file": str(tmp_path / "old.json")}
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
    play = tmp_path / "play.yml"
    play.write_text(RECORDED_PLAY)
    return inventory, play


def test_action_reports_the_recorded_numbers(tmp_path, recorded_fleet):
    inventory, play = recorded_fleet
    out = tmp_path / "out"
    extra = json.dumps({"out": str(out), "formats": ["json", "csv", "prom"], "query": "findings_by_code"})
    done = playbook("-i", str(inventory), str(play), "-e", extra)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "latest" / "report.json").read_text())
    hosts = {h["name"]: h for h in report["hosts"]}
    for name in RECORDED:
        facts = json.loads((FIXTURES / f"facts_{name}.json").read_text())
        assert hosts[name]["status"] == "ok"
        assert hosts[name]["states"] == facts["states"]
        assert [f["code"] for f in hosts[name]["findings"]] == [f["code"] for f in facts["findings"]]
    assert hosts["old"]["status"] == "malformed"
    assert "missing key 'states'" in hosts["old"]["error"]
    assert sorted(os.listdir(out / "latest")) == ["report.csv", "report.json"]
    result = json.loads((out / "result.json").read_text())
    assert result["query_result"] == report["findings_by_code"] == report["query_result"]
    assert set(result["prom"]) == set(RECORDED)
    leak = json.loads((FIXTURES / "facts_close_wait_leak.json").read_text())
    expected = f'netstate_tcp_sockets{{state="CLOSE_WAIT"}} {leak["states"]["CLOSE_WAIT"]}'
    assert expected in result["prom"]["close_wait_leak"].splitlines()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"formats": ["json"], "query": "hosts[?"}, "audit_query 'hosts[?' is not a valid JMESPath expression"),
        ({"formats": ["json", "pdf"]}, "formats"),
    ],
)
def test_bad_input_fails_naming_it(tmp_path, recorded_fleet, extra, message):
    inventory, play = recorded_fleet
    out = tmp_path / "out"
    done = playbook("-i", str(inventory), str(play), "-e", json.dumps({"out": str(out), **extra}))
    assert done.returncode != 0
    assert message in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not (out / "latest").exists()


# ---------------------------------------------------------------------------
# issue 10 items 10, 11, 14: the report is always written, never inside the collection


def test_unknown_host_and_failing_query_still_write_the_report(tmp_path, recorded_fleet):
    inventory, play = recorded_fleet
    out = tmp_path / "out"
    play.write_text(
        RECORDED_PLAY.replace("hosts: \"{{ groups['all'] }}\"", "hosts: \"{{ groups['all'] + ['ghost'] }}\"")
    )
    extra = {"out": str(out), "formats": ["json", "md"], "query": "abs(hosts)"}
    done = playbook("-i", str(inventory), str(play), "-e", json.dumps(extra))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    report = json.loads((out / "latest" / "report.json").read_text())
    hosts = {h["name"]: h for h in report["hosts"]}
    assert hosts["ghost"]["status"] == "unreachable"
    assert "not in the inventory" in hosts["ghost"]["error"]
    assert all(hosts[name]["status"] == "ok" for name in RECORDED)
    assert report["query_result"] is None
    assert "audit_query 'abs(hosts)' failed on the report" in report["query_error"]
    result = json.loads((out / "result.json").read_text())
    assert result["query_error"] == report["query_error"]
    assert "failed on the report" in done.stderr + done.stdout


@pytest.mark.parametrize("formats", [[], ["prom"]])
def test_formats_without_a_report_file_are_rejected(tmp_path, recorded_fleet, formats):
    inventory, play = recorded_fleet
    out = tmp_path / "out"
    done = playbook(
        "-i", str(inventory), str(play), "-e", json.dumps({"out": str(out), "formats": formats, "query": "fleet"})
    )
    assert done.returncode != 0
    assert "name no report file: give at least one of json, md, html, csv" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert not out.exists()


def _tree(path):
    """Every path under ``path`` (empty when it does not exist)."""
    return {os.path.join(directory, name) for directory, dirs, files in os.walk(path) for name in dirs + files}


def test_default_output_dir_is_under_the_working_directory(tmp_path, recorded_fleet):
    inventory, play = recorded_fleet
    play.write_text(
        RECORDED_PLAY.replace('        output_dir: "{{ out }}"\n', "").replace(
            'dest: "{{ out }}/result.json"', 'dest: "{{ out }}"'
        )
    )
    work = tmp_path / "work"
    work.mkdir()
    # `make audit` (the README's first command) leaves its reports in the checkout's netstate-reports:
    # what counts is that this run writes nothing under the collection
    under_the_collection = _tree(ROOT / "reports") | _tree(ROOT / "netstate-reports")
    extra = {"out": str(tmp_path / "result.json"), "formats": ["json"], "query": "fleet"}
    done = playbook("-i", str(inventory), str(play), "-e", json.dumps(extra), cwd=work)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["report_dir"].startswith(str(work / "netstate-reports") + "/")
    assert (work / "netstate-reports" / "latest" / "report.json").is_file()
    assert _tree(ROOT / "reports") | _tree(ROOT / "netstate-reports") == under_the_collection
