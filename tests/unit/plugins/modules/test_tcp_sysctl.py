"""Unit tests of the tcp_sysctl module: documentation vs argument spec, and the module run for real.

The runs below use the controller's real /proc/sys but only in ways that cannot change it:
check mode, rejected input, or values equal to the live ones (a write is only issued for a
value that differs). The drop-in always lives under tmp_path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import module_harness
import pytest
import yaml

from ansible_collections.netstate.tcp.plugins.modules import tcp_sysctl

MODULE = Path(tcp_sysctl.__file__)


def run_module(args, check=False, diff=False):
    return module_harness.run_module(tcp_sysctl, args, check=check, diff=diff, timeout=60)


def live(name):
    return " ".join(Path("/proc/sys", *name.split(".")).read_text().split())


def test_documentation_matches_argument_spec():
    doc = yaml.safe_load(tcp_sysctl.DOCUMENTATION)
    spec = module_harness.argument_spec(tcp_sysctl)["argument_spec"]
    module_harness.assert_options_documented(doc["options"], spec)
    assert doc["version_added"] == "0.1.0"
    assert doc["attributes"]["check_mode"]["support"] == "full"
    assert doc["attributes"]["diff_mode"]["support"] == "full"


def test_return_documents_every_key_the_module_returns(tmp_path):
    documented = set(yaml.safe_load(tcp_sysctl.RETURN))
    name = "net.ipv4.tcp_fin_timeout"
    result = run_module({"sysctls": {name: live(name)}, "file": str(tmp_path / "t.conf")}, check=True, diff=True)
    returned = set(result) - {"changed", "invocation", "warnings"}
    assert returned <= documented, returned - documented
    assert {"applied", "skipped_sysctls", "previous", "diff"} <= returned


def test_examples_are_valid_yaml_using_documented_options():
    doc_options = set(yaml.safe_load(tcp_sysctl.DOCUMENTATION)["options"])
    for task in yaml.safe_load(tcp_sysctl.EXAMPLES):
        assert set(task["netstate.tcp.tcp_sysctl"]) <= doc_options


def test_check_mode_writes_nothing_and_shows_both_diffs(tmp_path):
    name = "net.ipv4.tcp_fin_timeout"
    before = live(name)
    target = str(int(before) - 1)
    conf = tmp_path / "60-netstate-tcp.conf"
    result = run_module({"sysctls": {name: target}, "file": str(conf)}, check=True, diff=True)
    assert result["changed"] is True
    assert result["changed_sysctls"] == [name]
    assert result["applied"] == {name: target}
    file_diff, live_diff = result["diff"]
    assert f"{name} = {target}" in file_diff["after"]
    assert live_diff["before"] == f"{name} = {before}\n"
    assert live_diff["after"] == f"{name} = {target}\n"
    assert live(name) == before
    assert list(tmp_path.iterdir()) == []


def test_same_values_write_the_file_then_nothing(tmp_path):
    names = ["net.ipv4.tcp_fin_timeout", "net.ipv4.ip_local_port_range"]
    current = {name: live(name) for name in names}
    conf = tmp_path / "60-netstate-tcp.conf"
    first = run_module({"sysctls": current, "file": str(conf)})
    assert first["changed"] is True and first["changed_sysctls"] == []
    assert first["previous"] == current
    assert conf.exists() and (tmp_path / ".60-netstate-tcp.conf.previous.json").exists()
    second = run_module({"sysctls": current, "file": str(conf)})
    assert second["changed"] is False
    gone = run_module({"state": "absent", "file": str(conf)})
    assert gone["changed"] is True and gone["changed_sysctls"] == []
    assert list(tmp_path.iterdir()) == []
    assert {name: live(name) for name in names} == current


@pytest.mark.parametrize(
    ("sysctls", "message"),
    [
        ({"net..ipv4.tcp_fin_timeout": 1}, "invalid name"),
        ({"net/ipv4/tcp_fin_timeout": 1}, "invalid name"),
        ({"net.ipv4.no_such_key": 1}, "does not exist under /proc/sys"),
        ({"net.ipv4.tcp_fin_timeout": "sixty"}, "invalid value 'sixty'"),
        ({"net.ipv4.tcp_tw_reuse": True}, "write 1 or 0"),
        ({"net.ipv4.tcp_tw_recycle": 0}, "removed in Linux 4.12"),
    ],
)
def test_bad_input_fails_before_touching_anything(tmp_path, sysctls, message):
    conf = tmp_path / "60-netstate-tcp.conf"
    result = run_module({"sysctls": sysctls, "file": str(conf)})
    assert result["failed"] is True
    assert message in result["msg"]
    assert result["msg"].startswith("sysctls: ")
    assert list(tmp_path.iterdir()) == []


def test_bad_file_and_choice_name_the_option(tmp_path):
    sysctls = {"net.ipv4.tcp_fin_timeout": 30}
    result = run_module({"sysctls": sysctls, "file": str(tmp_path / "x.txt")})
    assert result["failed"] and result["msg"].startswith("file: ")
    result = run_module({"sysctls": sysctls, "file": str(tmp_path / "x.conf"), "on_global_in_namespace": "maybe"})
    assert result["failed"] and "on_global_in_namespace" in result["msg"] and "skip, fail" in result["msg"]


# ---- issue 10: hostile input reaches a clear message, never a traceback or a revert ----------


def test_null_or_empty_sysctls_with_state_present_never_revert(tmp_path):
    name = "net.ipv4.tcp_fin_timeout"
    current = {name: live(name)}
    conf = tmp_path / "60-netstate-tcp.conf"
    assert run_module({"sysctls": current, "file": str(conf)})["changed"] is True
    files = {p.name: p.read_text() for p in tmp_path.iterdir()}
    for empty in (None, {}):
        result = run_module({"sysctls": empty, "file": str(conf)})
        assert result.get("failed") is True, result
        assert "sysctls" in result["msg"] and "state=absent" in result["msg"]
        assert {p.name: p.read_text() for p in tmp_path.iterdir()} == files
    run_module({"state": "absent", "file": str(conf)})


@pytest.mark.parametrize(
    "path",
    ["evil\n.conf", "x\nkernel.panic = 1\n#.conf", "tab\there.conf", "del\x7f.conf", "esc\x1b[31m.conf"],
)
def test_control_characters_in_file_are_rejected(tmp_path, path):
    name = "net.ipv4.tcp_fin_timeout"
    result = run_module({"sysctls": {name: live(name)}, "file": str(tmp_path / path)})
    assert result.get("failed") is True, result
    assert result["msg"].startswith("file: ") and "control character" in result["msg"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", ["/etc/sysctl.d/../x.conf", "/etc/sysctl.d/./x.conf", "/etc//sysctl.d/x.conf"])
def test_file_must_be_a_normalised_path(path):
    result = run_module({"sysctls": {"net.ipv4.tcp_fin_timeout": 1}, "file": path}, check=True)
    assert result.get("failed") is True, result
    assert result["msg"].startswith("file: ")


def test_symlinked_dropin_is_refused_and_its_target_never_shown(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("root-password = hunter2\n")
    conf = tmp_path / "60-netstate-tcp.conf"
    conf.symlink_to(secret)
    name = "net.ipv4.tcp_fin_timeout"
    result = run_module({"sysctls": {name: live(name)}, "file": str(conf)}, check=True, diff=True)
    assert result.get("failed") is True, result
    assert "symbolic link" in result["msg"] and str(conf) in result["msg"]
    assert "hunter2" not in str(result)
    assert secret.read_text() == "root-password = hunter2\n" and conf.is_symlink()


@pytest.mark.parametrize("which", ["dropin", "state"])
def test_non_utf8_files_fail_naming_the_file(tmp_path, which):
    conf = tmp_path / "60-netstate-tcp.conf"
    bad = conf if which == "dropin" else tmp_path / ".60-netstate-tcp.conf.previous.json"
    bad.write_bytes(b"net.ipv4.tcp_fin_timeout = 3\xff\xfe0\n")
    name = "net.ipv4.tcp_fin_timeout"
    for args in ({"sysctls": {name: live(name)}}, {"state": "absent"}):
        result = run_module(dict(args, file=str(conf)), check=True, diff=True)
        assert result.get("failed") is True, result
        assert str(bad) in result["msg"] and "UTF-8" in result["msg"]


@pytest.mark.parametrize("value", ["9" * 5000, "1 " + "9" * 4400, ["9" * 4301], "9" * 30, -(2**63) - 1])
def test_huge_values_fail_naming_the_key(tmp_path, value):
    name = "net.ipv4.tcp_fin_timeout"
    # Ansible hands a module its arguments in a file; a command line this long would not fit.
    args = tmp_path / "args.json"
    payload = {"sysctls": {name: value}, "file": str(tmp_path / "t.conf"), "_ansible_check_mode": True}
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "-m", tcp_sysctl.__name__, str(args)], capture_output=True, text=True, env=env, check=False
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    result = json.loads(proc.stdout)
    assert result.get("failed") is True, result
    assert result["msg"].startswith(f"sysctls: {name}: ") and "64-bit" in result["msg"]


def test_catalog_options_in_check_mode(tmp_path):
    conf = tmp_path / "60-netstate-tcp.conf"
    args = {
        "from_findings": True,
        "finding_codes": ["TIME_WAIT_CHURN", "CLOSE_WAIT_LEAK"],
        "profiles": [],
        "orphan_cap": {"memory_mb": 1024},
        "sysctls": {"net.ipv4.tcp_tw_reuse": live("net.ipv4.tcp_tw_reuse")},
        "file": str(conf),
    }
    result = run_module(args, check=True, diff=True)
    assert not result.get("failed"), result
    assert result["profiles"] == ["time_wait"]
    assert result["applied"]["net.ipv4.tcp_max_tw_buckets"] == "262144"
    assert result["reasons"]["net.ipv4.tcp_max_tw_buckets"].startswith("time_wait profile: ")
    assert result["reasons"]["net.ipv4.tcp_tw_reuse"] == "requested in sysctls"
    assert result["reasons"]["net.ipv4.tcp_orphan_retries"].startswith("orphan cap: ")
    assert list(result["not_fixed_by_sysctls"]) == ["CLOSE_WAIT_LEAK"]
    assert list(tmp_path.iterdir()) == []
