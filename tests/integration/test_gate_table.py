# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""playbooks/templates/gate_table.j2 rendered by a real ansible-playbook run, as gate.yml renders it.

An integration test: make unit runs without ansible-playbook.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "playbooks" / "templates" / "gate_table.j2"

RESULTS = {
    "h10": {"passed": True, "checks": [{"metric": "CLOSE_WAIT", "value": 0, "threshold": 0}]},
    "h2": {"passed": False, "msg": "TCP gate failed 1 of 1 checks: CLOSE_WAIT 7 > 0."},
    "h1": {"unreachable": True, "msg": "no route"},
    "web-1.rack10": {"passed": True, "checks": []},
    "web-1.rack9": {"passed": True, "checks": []},
    "db": {"passed": True, "checks": []},
}


def test_hosts_are_listed_in_natural_order(tmp_path):
    playbook = tmp_path / "render.yml"
    lookup = f"lookup('ansible.builtin.template', '{TEMPLATE}', template_vars={{'gate_results': results}})"
    task = {"ansible.builtin.copy": {"content": "{{ " + lookup + " }}", "dest": str(tmp_path / "table.txt")}}
    playbook.write_text(
        yaml.safe_dump([{"hosts": "localhost", "gather_facts": False, "vars": {"results": RESULTS}, "tasks": [task]}])
    )
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_HOME=str(tmp_path / "ansible-home"),  # never the user's ~/.ansible
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"),
        ANSIBLE_NOCOLOR="1",
    )
    interpreter = json.dumps({"ansible_python_interpreter": sys.executable})
    command = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local"]
    done = subprocess.run(
        [*command, "-e", interpreter, str(playbook)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = (tmp_path / "table.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].split() == ["HOST", "GATE", "DETAIL"]
    assert [line.split()[0] for line in lines[1:-1]] == ["db", "h1", "h2", "h10", "web-1.rack9", "web-1.rack10"]
    assert lines[3].split()[1] == "FAIL" and lines[2].split()[1] == "UNREACHABLE"
    assert lines[-1] == "4 of 6 hosts passed the gate"
