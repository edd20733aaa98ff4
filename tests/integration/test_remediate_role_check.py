"""The remediate role run by ansible-playbook (check mode, localhost): bad input fails before any change.

Moved from tests/unit/roles/test_remediate_specs.py: make unit runs without ansible-playbook.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROLE = Path(__file__).resolve().parents[2] / "roles" / "remediate"


@pytest.mark.parametrize(
    ("orphan_cap", "fragment"),
    [
        ({"memory_mb": 1024, "retries": 0}, "orphan_cap: retries must be 1 to 255 (tcp_orphan_retries 0 means 8"),
        ({"memory_mb": 1024, "retries": 256}, "orphan_cap: retries must be 1 to 255"),
        ({"memory_mb": -5}, "orphan_cap: memory_mb must be 1 to"),
    ],
)
def test_bad_orphan_cap_fails_before_anything_is_changed(tmp_path, ansible_env, orphan_cap, fragment):
    # On localhost in check mode, with a drop-in under tmp_path: tcp_sysctl refuses the cap before reading
    # or writing any sysctl, and the message names the option and the rule.
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Remediate with a bad orphan cap",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "roles": [
                        {
                            "role": "netstate.tcp.remediate",
                            "vars": {
                                "remediate_orphan_cap": orphan_cap,
                                "remediate_summary_facts": False,
                                "remediate_file": str(tmp_path / "60-netstate-tcp.conf"),
                            },
                        }
                    ],
                }
            ]
        )
    )
    root = ROLE.parents[1]
    env = dict(ansible_env, ANSIBLE_NOCOLOR="1")
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "--check",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    tasks = [line for line in out.splitlines() if line.startswith("TASK [")]
    # facts are not gathered (remediate_summary_facts false): tcp_sysctl is the first task that runs, and fails
    assert "Apply the TCP sysctls live and persist them" in tasks[-1], tasks
    assert "fatal: [localhost]: FAILED!" in out
    assert fragment in " ".join(out.split())
    assert list(tmp_path.iterdir()) == [playbook]
