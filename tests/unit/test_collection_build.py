"""The collection tarball (`ansible-galaxy collection build`) ships the collection and nothing of the workshop.

Built from a copy of the tracked files plus the leftovers `make test` / `make audit` leave in a working tree
(caches, reports, the venv), so the check holds in a fresh clone and in a used one alike.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
GALAXY = Path(sys.executable).with_name("ansible-galaxy")

# What a user installs: the collection's content and the files an execution environment build reads.
SHIPPED = {
    "LICENSE",
    "MANIFEST.json",
    "FILES.json",
    "README.md",
    "CHANGELOG.rst",
    "requirements.txt",
    "bindep.txt",
    "meta",
    "plugins",
    "roles",
    "playbooks",
    "changelogs",
    "docs",
}
LEFTOVERS = [
    ".venv/bin/python",
    ".build/collections/x",
    ".hypothesis/constants/x",
    ".pytest_cache/v/x",
    ".ruff_cache/0/x",
    ".ansible/x",
    "reports/20261121T000000Z/report.json",
    "molecule/default/.cache/x",
    "tests/lab/netstate_lab.egg-info/PKG-INFO",
    "netstate-tcp-0.0.1.tar.gz",
]


def tracked_copy(dest):
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        src = ROOT / name
        if name and src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for name in LEFTOVERS:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_text("leftover\n")


def test_tarball_ships_the_collection_only(tmp_path):
    tree = tmp_path / "tree"
    tracked_copy(tree)
    out = tmp_path / "out"
    subprocess.run(
        [str(GALAXY), "collection", "build", "--output-path", str(out), str(tree)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    (tarball,) = out.glob("*.tar.gz")
    assert tarball.name == f"{galaxy['namespace']}-{galaxy['name']}-{galaxy['version']}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
    top = {name.split("/", 1)[0] for name in names}
    assert top <= SHIPPED, sorted(top - SHIPPED)
    assert "LICENSE" in top
    assert not [name for name in names if "leftover" in name or "__pycache__" in name or name.endswith(".pyc")]
    # Every module, module_util, role and playbook of the tree is in it.
    for pattern in ("plugins/**/*.py", "roles/*/*/*.yml", "playbooks/*.yml", "meta/*.yml"):
        expected = {str(p.relative_to(ROOT)) for p in ROOT.glob(pattern) if "__pycache__" not in p.parts}
        assert expected <= set(names), sorted(expected - set(names))
    # Code and docs only: far below Galaxy's upload limit.
    assert tarball.stat().st_size < 2 * 1024 * 1024


def test_licence_file_is_the_licence_galaxy_yml_names():
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    text = (ROOT / "LICENSE").read_text()
    # GPL-3.0-or-later: the GPL v3 text itself, whose section 14 grants "or any later version"
    assert galaxy["license"] == ["GPL-3.0-or-later"]
    assert text.split()[:7] == ["GNU", "GENERAL", "PUBLIC", "LICENSE", "Version", "3,", "29"]
    assert "any later version" in text


def test_runtime_action_group_lists_every_module():
    runtime = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())
    modules = {p.stem for p in (ROOT / "plugins" / "modules").glob("*.py") if not p.stem.startswith("_")}
    # tcp_fleet_report runs on the controller (an action plugin) and takes no module_defaults of the group.
    assert set(runtime["action_groups"]["tcp"]) == modules - {"tcp_fleet_report"}


def test_execution_environment_requirements_have_no_pins():
    """ansible-builder merges every collection's requirements: == pins and upper bounds conflict."""
    meta = yaml.safe_load((ROOT / "meta" / "execution-environment.yml").read_text())
    python = ROOT / meta["dependencies"]["python"]
    assert (ROOT / meta["dependencies"]["system"]).is_file()
    lines = [line.split("#", 1)[0].strip() for line in python.read_text().splitlines()]
    requirements = [line for line in lines if line]
    assert requirements
    for requirement in requirements:
        assert "==" not in requirement and "<" not in requirement and "~=" not in requirement, requirement
        name = requirement.split(">", 1)[0].split("[", 1)[0].strip().lower()
        assert name not in ("ansible", "ansible-core"), "execution environments provide ansible-core"
