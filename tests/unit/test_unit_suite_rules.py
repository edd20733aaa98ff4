"""The unit suite needs only the venv: no test under tests/unit runs ansible-playbook or needs root.

Root is proven by `make unit-unprivileged` (the suite as nobody); ansible-playbook runs would pass there
too, so they are caught here. Such tests belong in tests/integration.
"""

from __future__ import annotations

import re
from pathlib import Path

UNIT = Path(__file__).resolve().parent
PLAYBOOK_RUN = re.compile(r"""["'/]ansible-playbook["']|\bansible_runner\b""")
ROOT_CHECK = re.compile(r"\bgeteuid\(\)|\bgetuid\(\) *== *0")


def test_no_unit_test_runs_ansible_playbook_or_needs_root():
    offenders = [
        str(path.relative_to(UNIT))
        for path in UNIT.rglob("*.py")
        if path != Path(__file__) and (PLAYBOOK_RUN.search(path.read_text()) or ROOT_CHECK.search(path.read_text()))
    ]
    assert offenders == [], "move these to tests/integration"
