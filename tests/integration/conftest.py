"""Shared fixtures for integration tests: lab hosts (network namespaces) with real sockets.

Fixtures:
    lab_available   session: skips the test unless root with ip (and sshd, ssh-keygen, socat for ssh fixtures)
    bare_host       function: a fresh namespace without sshd (LabHost), destroyed afterwards
    bare_lab        function: factory ``bare_lab(hosts=2)`` -> Lab without sshd, destroyed afterwards
    lab             module: Lab of 6 hosts without sshd shared by the tests of one module
    ssh_lab         session: Lab with 3 ssh hosts (h1..h3) and an Ansible inventory (ssh_lab.inventory_path)
    ansible_env     session: environment for ansible-playbook/ansible subprocesses (ANSIBLE_CONFIG, collections path)
    nobody          session: runs Python as nobody (uid 65534) on a world-readable copy of the collection
                    (unprivileged.Nobody); skips the test when setpriv or a Python nobody can run is missing
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest
from unprivileged import Nobody, interpreter_for_nobody, setpriv_nobody

from netstate_lab import Lab, PrerequisiteError, check_prerequisites

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)


def _skip_unless(tools, what):
    try:
        check_prerequisites(tools, purpose=what)
    except PrerequisiteError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def lab_available():
    _skip_unless(("ip", "ss"), "lab hosts")


@pytest.fixture
def bare_host(lab_available):
    """A fresh lab host: network namespace with lo up, no sshd."""
    lab = Lab.create(hosts=1, ssh=False)
    try:
        yield lab.hosts[0]
    finally:
        lab.destroy()


@pytest.fixture
def bare_lab(lab_available):
    """Factory: ``bare_lab(hosts=N)`` -> a Lab of N namespaces without sshd; all destroyed after the test."""
    labs = []

    def make(hosts=2):
        lab = Lab.create(hosts=hosts, ssh=False)
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.destroy()


@pytest.fixture(scope="module")
def lab():
    """Six namespaces without sshd shared by the tests of one module (each picks its hosts by index)."""
    with Lab.create(hosts=6, ssh=False) as lab:
        yield lab


@pytest.fixture(scope="session")
def ssh_lab(lab_available):
    """Three lab hosts with sshd, reachable with ``ssh -F ssh_lab.ssh_config_path h1`` or Ansible."""
    _skip_unless(("ip", "sshd", "ssh-keygen", "socat", "ssh"), "ssh lab hosts")
    lab = Lab.create(hosts=3, ssh=True)
    try:
        yield lab
    finally:
        lab.destroy()


@pytest.fixture(scope="session")
def ansible_env():
    """Environment for running ansible-playbook against the lab from tests."""
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = os.path.join(REPO, "ansible.cfg")
    env["ANSIBLE_COLLECTIONS_PATH"] = os.path.join(REPO, ".build", "collections")
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env.setdefault("ANSIBLE_FORCE_COLOR", "0")
    # never the user's ~/.ansible (make exports the same): lab hosts share this machine's filesystem
    env.setdefault("ANSIBLE_HOME", os.path.join(REPO, ".build", "ansible-home"))
    env.setdefault("ANSIBLE_REMOTE_TMP", os.path.join(REPO, ".build", "ansible-home", "remote-tmp"))
    env.setdefault("ANSIBLE_SSH_CONTROL_PATH_DIR", os.path.join(REPO, ".build", "ansible-home", "cp"))
    if shutil.which("ansible-playbook", path=env["PATH"]) is None:
        pytest.skip("ansible-playbook not found in the venv")
    return env


@pytest.fixture(scope="session")
def nobody():
    """Nobody's world-readable tree and interpreter (see unprivileged.py), removed at the end of the session."""
    setpriv = setpriv_nobody()
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not found: it switches to nobody")
    python, why_not = interpreter_for_nobody()
    if python is None:
        pytest.skip(why_not)
    tree = Nobody(setpriv, python)
    try:
        yield tree
    finally:
        tree.remove()
