"""Compatibility smoke on one ansible-core (see conftest.py): every module ad hoc, the audit with and without
prom and with --limit, gate.yml passing and failing, the remediate role in check+diff mode, all over SSH on
lab hosts. Every figure is checked against the lab host itself (ss, /proc/sys, its sysctl.d), not against
what the collection reports about itself.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOKS = os.path.join(REPO, "playbooks")
DROPIN = "60-netstate-tcp.conf"


def close_wait(host):
    return host.ss_count("close-wait")


def ad_hoc(ansible_run, lab, module, args, *extra):
    """Run one module on every lab host; returns (rc, {host: result}) from the one-line output (-o).

    Each result gets "status": the line's SUCCESS, CHANGED or FAILED! (the result itself has no "failed").
    """
    module_args = ("-a", json.dumps(args)) if args else ()  # "{}" would be taken as free-form raw params
    done = ansible_run("ansible", "lab", "-i", lab.inventory, "-o", "-m", module, *module_args, *extra)
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    results = {
        m.group(1): dict(json.loads(m.group(3)), status=m.group(2))
        for m in re.finditer(r"^(h[0-9]+) \| ([A-Z!]+) => (\{.*\})$", done.stdout, re.M)
    }
    assert sorted(results) == ["h1", "h2", "h3"], done.stdout[-3000:] + done.stderr[-3000:]
    return done.returncode, results


def playbook(ansible_run, lab, name, *args):
    done = ansible_run("ansible-playbook", "-i", lab.inventory, os.path.join(PLAYBOOKS, name), *args)
    assert "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    assert "MODULE FAILURE" not in done.stdout, done.stdout
    return done


def test_the_core_under_test_runs(ansible_run, ansible_bin):
    done = ansible_run("ansible-playbook", "--version")
    version = re.search(r"\[core ([0-9.]+)\]", done.stdout).group(1)
    wanted = os.path.basename(os.path.dirname(ansible_bin.rstrip("/")))
    if re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", wanted):  # .build/compat/<version>/bin
        assert version == wanted


def test_tcp_state_facts_ad_hoc(ansible_run, compat_lab):
    thresholds = {"close_wait_warning": compat_lab.leak["count"] // 2}
    rc, results = ad_hoc(ansible_run, compat_lab, "netstate.tcp.tcp_state_facts", {"thresholds": thresholds})
    assert rc == 0, results
    for host in compat_lab.hosts:
        facts = results[host.alias]["ansible_facts"]["tcp_state"]
        assert facts["states"]["CLOSE_WAIT"] == close_wait(host)
        assert facts["namespace"]["inode"] == host.netns_inode
    assert results["h1"]["ansible_facts"]["tcp_state"]["states"]["CLOSE_WAIT"] >= compat_lab.leak["count"]
    assert "CLOSE_WAIT_LEAK" in [f["code"] for f in results["h1"]["ansible_facts"]["tcp_state"]["findings"]]


def test_tcp_socket_info_ad_hoc(ansible_run, compat_lab):
    rc, results = ad_hoc(
        ansible_run, compat_lab, "netstate.tcp.tcp_socket_info", {"states": ["close_wait"], "comms": ["leaky-proxy"]}
    )
    assert rc == 0
    assert results["h1"]["matched"] == compat_lab.leak["expected"]["CLOSE_WAIT"] == close_wait(compat_lab.hosts[0])
    assert results["h2"]["matched"] == results["h3"]["matched"] == 0


def test_tcp_gate_ad_hoc(ansible_run, compat_lab):
    rc, results = ad_hoc(ansible_run, compat_lab, "netstate.tcp.tcp_gate", {"max": {"close_wait": 5}})
    assert rc != 0
    h1 = results["h1"]
    assert h1["status"] == "FAILED!" and h1["passed"] is False
    assert f"CLOSE_WAIT {close_wait(compat_lab.hosts[0])} > 5" in h1["msg"]
    assert results["h2"]["passed"] and results["h3"]["passed"]


def test_tcp_sysctl_check_mode_changes_nothing(ansible_run, compat_lab):
    before = {h.alias: int(h.sysctl("net.ipv4.tcp_fin_timeout")) for h in compat_lab.hosts}
    wanted = {"net.ipv4.tcp_fin_timeout": max(before.values()) + 1}
    rc, results = ad_hoc(ansible_run, compat_lab, "netstate.tcp.tcp_sysctl", {"sysctls": wanted}, "--check", "--diff")
    assert rc == 0
    for host in compat_lab.hosts:
        assert results[host.alias]["changed"] is True
        assert int(host.sysctl("net.ipv4.tcp_fin_timeout")) == before[host.alias]
        assert not os.path.exists(os.path.join(host.sysctl_dir, DROPIN))


def test_tcp_sysctl_rolls_back_when_the_drop_in_cannot_be_replaced(ansible_run, compat_lab):
    """An immutable drop-in (chattr +i: the rename over it fails with EPERM) after the live values were written.

    ansible-core before 2.19 ends a failed atomic_move through fail_json; the live values must still be rolled back.
    """
    dropins = [os.path.join(host.sysctl_dir, DROPIN) for host in compat_lab.hosts]
    before = {h.alias: int(h.sysctl("net.ipv4.tcp_fin_timeout")) for h in compat_lab.hosts}
    first = {"net.ipv4.tcp_fin_timeout": max(before.values()) + 1}
    try:
        rc, results = ad_hoc(ansible_run, compat_lab, "netstate.tcp.tcp_sysctl", {"sysctls": first})
        assert rc == 0, results
        written = {path: Path(path).read_text() for path in dropins}
        subprocess.run(["chattr", "+i", *dropins], check=True)
        second = {"net.ipv4.tcp_fin_timeout": first["net.ipv4.tcp_fin_timeout"] + 1}
        rc, results = ad_hoc(ansible_run, compat_lab, "netstate.tcp.tcp_sysctl", {"sysctls": second})
        assert rc != 0
        for host in compat_lab.hosts:
            result = results[host.alias]
            assert result["status"] == "FAILED!", result
            assert "rolled back: net.ipv4.tcp_fin_timeout restored as before" in result["msg"], result["msg"]
            assert int(host.sysctl("net.ipv4.tcp_fin_timeout")) == first["net.ipv4.tcp_fin_timeout"]
        assert {path: Path(path).read_text() for path in dropins} == written
    finally:
        subprocess.run(["chattr", "-i", *[path for path in dropins if os.path.exists(path)]], check=False)
        ad_hoc(ansible_run, compat_lab, "netstate.tcp.tcp_sysctl", {"state": "absent"})
    for host in compat_lab.hosts:
        assert int(host.sysctl("net.ipv4.tcp_fin_timeout")) == before[host.alias]
        assert not os.path.exists(os.path.join(host.sysctl_dir, DROPIN))


def audit(ansible_run, lab, tmp_path, *args, formats=("json",)):
    """Run playbooks/audit.yml with its reports and each host's prom directory under tmp_path."""
    return playbook(
        ansible_run,
        lab,
        "audit.yml",
        "-e",
        json.dumps(
            {
                "audit_output_dir": str(tmp_path / "reports"),
                "audit_formats": list(formats),
                "audit_prom_dir": str(tmp_path / "prom") + "/{{ inventory_hostname }}",
            }
        ),
        *args,
    )


def report_json(tmp_path):
    found = sorted((tmp_path / "reports").rglob("report.json"))
    return json.loads(found[-1].read_text()) if found else None


def test_audit_without_prom_writes_no_prom_file(ansible_run, compat_lab, tmp_path):
    done = audit(ansible_run, compat_lab, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    report = report_json(tmp_path)
    assert report is not None, done.stdout[-3000:]
    by_name = {h["name"]: h for h in report["hosts"]}
    assert sorted(by_name) == ["h1", "h2", "h3"]
    assert by_name["h1"]["states"]["CLOSE_WAIT"] == close_wait(compat_lab.hosts[0])
    # ansible-core 2.16-2.18 rendered default(none) as "" and wrote an empty tcp_state.prom anyway
    assert not (tmp_path / "prom").exists(), sorted(str(p) for p in (tmp_path / "prom").rglob("*"))


def test_audit_with_prom_writes_each_hosts_metrics(ansible_run, compat_lab, tmp_path):
    done = audit(ansible_run, compat_lab, tmp_path, formats=("json", "prom"))
    assert done.returncode == 0, done.stdout[-3000:]
    for host in compat_lab.hosts:
        prom = (tmp_path / "prom" / host.alias / "tcp_state.prom").read_text()
        assert f'netstate_tcp_sockets{{state="CLOSE_WAIT"}} {close_wait(host)}\n' in prom


def test_audit_with_limit_reports_the_limited_hosts_or_fails(ansible_run, compat_lab, tmp_path):
    done = audit(ansible_run, compat_lab, tmp_path, "--limit", "h1")
    report = report_json(tmp_path)
    # AWX's Limit field: a report on the limited hosts, or a loud failure; never rc 0 without a report
    if done.returncode == 0:
        assert report is not None, "the audit succeeded with --limit but wrote no report:\n" + done.stdout[-3000:]
        assert [h["name"] for h in report["hosts"]] == ["h1"]
    else:
        assert "limit" in done.stdout + done.stderr, done.stdout[-3000:]  # says why it wrote no report


def gate(ansible_run, lab, hosts):
    return playbook(
        ansible_run, lab, "gate.yml", "-e", json.dumps({"gate_hosts": hosts, "gate_max": {"close_wait": 5}})
    )


def test_gate_playbook_passes_on_clean_hosts(ansible_run, compat_lab):
    done = gate(ansible_run, compat_lab, "h2:h3")
    assert done.returncode == 0, done.stdout[-3000:]


def test_gate_playbook_fails_on_the_leaking_host(ansible_run, compat_lab):
    done = gate(ansible_run, compat_lab, "lab")
    assert done.returncode != 0, done.stdout[-3000:]
    assert re.search(r"h1\b.*CLOSE_WAIT", done.stdout), done.stdout[-3000:]


def test_remediate_role_in_check_and_diff_mode_changes_nothing(ansible_run, compat_lab):
    keys = ("net.ipv4.tcp_tw_reuse", "net.ipv4.tcp_max_tw_buckets", "net.ipv4.ip_local_port_range")
    before = {h.alias: [h.sysctl(k) for k in keys] for h in compat_lab.hosts}
    done = playbook(
        ansible_run,
        compat_lab,
        "remediate.yml",
        "--check",
        "--diff",
        "-e",
        json.dumps({"remediate_hosts": "lab", "remediate_profiles": ["time_wait"], "remediate_summary_facts": False}),
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert re.search(r"^\+net\.ipv4\.\S+ = ", done.stdout, re.M), done.stdout[-3000:]  # the drop-in's diff
    for host in compat_lab.hosts:
        assert [host.sysctl(k) for k in keys] == before[host.alias]
        assert not os.path.exists(os.path.join(host.sysctl_dir, DROPIN))


# The Pythons each ansible-core still runs modules on (its target minimum); older ones it refuses itself.
CORE_TARGET_MINIMUM = {"2.16": (3, 6), "2.17": (3, 7), "2.18": (3, 8), "2.19": (3, 8)}
MANAGED_NODE_MODULES = ("tcp_state_facts", "tcp_socket_info", "tcp_gate", "tcp_sysctl")


def find_python(version):
    """An interpreter of ``version`` on this machine (pyenv's versions, then PATH without shims), or None."""
    name = "python{}.{}".format(*version)
    pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    versions = os.path.join(pyenv, "versions")
    candidates = (
        [os.path.join(versions, v, "bin", name) for v in sorted(os.listdir(versions))]
        if os.path.isdir(versions)
        else []
    )
    candidates += [
        os.path.join(d, name) for d in os.environ.get("PATH", "").split(os.pathsep) if d and "shims" not in d
    ]
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


@pytest.mark.parametrize("version", [(3, 6), (3, 7)], ids=["python3.6", "python3.7"])
def test_managed_node_python_minimum_on_a_real_interpreter(ansible_run, compat_lab, version):
    core = re.search(r"\[core ([0-9]+\.[0-9]+)", ansible_run("ansible", "--version").stdout).group(1)
    if CORE_TARGET_MINIMUM.get(core, (3, 8)) > version:
        pytest.skip(f"ansible-core {core} itself refuses Python {version[0]}.{version[1]} on targets")
    python = find_python(version)
    if python is None:
        pytest.skip(f"no Python {version[0]}.{version[1]} on this machine")
    interpreter = ("-e", f"ansible_python_interpreter={python}")
    if version < (3, 7):  # below the collection's minimum: a clear failure naming it, never a SyntaxError
        for module in MANAGED_NODE_MODULES:
            _rc, results = ad_hoc(ansible_run, compat_lab, f"netstate.tcp.{module}", {}, *interpreter)
            for result in results.values():
                assert result["status"] == "FAILED!"
                assert f"netstate.tcp.{module} needs Python 3.7 or newer" in result["msg"], result
    else:
        rc, results = ad_hoc(
            ansible_run, compat_lab, "netstate.tcp.tcp_socket_info", {"states": ["close_wait"]}, *interpreter
        )
        assert rc == 0, results
        for host in compat_lab.hosts:
            assert results[host.alias]["matched"] == close_wait(host)
