# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""tcp_state_facts option prometheus_textfile through the real AnsibleModule (its atomic_move included).

The facts are those of the test process's own namespace; the file must be exactly the renderer's
text of the facts the same call returned.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from module_harness import argument_spec

from ansible_collections.netstate.tcp.plugins.module_utils import _prometheus
from ansible_collections.netstate.tcp.plugins.modules import tcp_state_facts


def run(args, capsys):
    with patch_module_args(args), pytest.raises(SystemExit):
        tcp_state_facts.main()
    return json.loads(capsys.readouterr().out)


def test_option_documented_as_specified():
    documented = yaml.safe_load(tcp_state_facts.DOCUMENTATION)["options"]["prometheus_textfile"]
    spec = argument_spec(tcp_state_facts)["argument_spec"]["prometheus_textfile"]
    assert documented["type"] == spec["type"] == "str"
    assert "default" not in documented and "default" not in spec


def test_textfile_is_the_facts_of_the_same_call(tmp_path, capsys):
    path = tmp_path / "textfile" / "tcp_state.prom"
    old = os.umask(0o077)  # a strict umask must not keep node_exporter out
    try:
        result = run({"prometheus_textfile": str(path), "owners": []}, capsys)
    finally:
        os.umask(old)
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is True
    assert path.read_text() == _prometheus.render_tcp_state(result["ansible_facts"]["tcp_state"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
    assert os.listdir(path.parent) == ["tcp_state.prom"]


def test_check_mode_writes_nothing(tmp_path, capsys):
    path = tmp_path / "textfile" / "tcp_state.prom"
    result = run({"prometheus_textfile": str(path), "owners": [], "_ansible_check_mode": True}, capsys)
    assert result["changed"] is False
    assert "tcp_state" in result["ansible_facts"]
    assert not path.parent.exists()


@pytest.mark.parametrize(
    ("value", "needle"),
    [("relative.prom", "is relative"), ("/tmp/x.txt", "does not end in .prom"), ("/tmp/a\nb.prom", "control")],
)
def test_bad_path_fails_before_any_work(value, needle, capsys):
    result = run({"prometheus_textfile": value}, capsys)
    assert result["failed"] is True
    assert "exception" not in result
    assert result["msg"].startswith("prometheus_textfile: must be an absolute path")
    assert needle in result["msg"]
    assert "ansible_facts" not in result


def test_unwritable_target_fails_clearly(tmp_path, capsys):
    path = tmp_path / "tcp_state.prom"
    path.mkdir()
    result = run({"prometheus_textfile": str(path), "owners": []}, capsys)
    assert result["failed"] is True
    assert "exception" not in result
    assert result["msg"] == f"prometheus_textfile: cannot write {path}: {path} exists and is not a regular file"
