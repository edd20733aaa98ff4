"""The compatibility smoke: one ansible-core (COMPAT_ANSIBLE_BIN, a venv's bin made by `make smoke`/`make compat`)
against three ssh lab hosts, h1 holding a real CLOSE_WAIT leak.

Fixtures:
    compat_lab   module: 3 ssh lab hosts (.lab, .hosts, .inventory); h1 runs close_wait_leak (.leak: its report)
    ansible_run  session: ansible_run(tool, *args) -> CompletedProcess of that core's ansible/ansible-playbook,
                 everything it writes kept in the session's tmp (ANSIBLE_HOME, remote tmp, control sockets)
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

from netstate_lab import Lab, PrerequisiteError, check_prerequisites

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LEAK_COUNT = 20


@pytest.fixture(scope="session")
def ansible_bin():
    """The bin directory of the ansible-core under test (the dev venv's when COMPAT_ANSIBLE_BIN is unset)."""
    path = os.environ.get("COMPAT_ANSIBLE_BIN") or os.path.dirname(sys.executable)
    if not os.access(os.path.join(path, "ansible-playbook"), os.X_OK):
        pytest.fail(f"COMPAT_ANSIBLE_BIN={path}: no ansible-playbook there (make smoke creates the venvs)")
    return path


@pytest.fixture(scope="session")
def ansible_run(ansible_bin, tmp_path_factory):
    home = tmp_path_factory.mktemp("ansible-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "VIRTUAL_ENV", "MOLECULE_"))}
    env.update(
        PATH=ansible_bin + os.pathsep + "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, ".build", "collections"),
        ANSIBLE_HOME=str(home),
        ANSIBLE_REMOTE_TMP=str(home / "remote-tmp"),
        ANSIBLE_SSH_CONTROL_PATH_DIR=str(home / "cp"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
    )

    def run(tool, *args, timeout=600):
        return subprocess.run(
            [os.path.join(ansible_bin, tool), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run


@pytest.fixture(scope="module")
def compat_lab():
    try:
        check_prerequisites(("ip", "ss", "sshd", "ssh-keygen", "socat", "ssh"), purpose="the compatibility smoke")
    except PrerequisiteError as exc:
        pytest.fail(str(exc))  # make smoke is part of make test: a missing lab is an error, not a skip
    with Lab.create(hosts=3, ssh=True) as lab:
        leak = lab.hosts[0].start_scenario("close_wait_leak", count=LEAK_COUNT)
        yield types.SimpleNamespace(lab=lab, hosts=lab.hosts, inventory=lab.inventory_path, leak=leak.report)
