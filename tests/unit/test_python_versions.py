"""The Python the modules need on a managed node: the stated minimum is the true one, and older fails clearly.

- every module file parses on Python 3.6 (ansible-core 2.16 still targets it) and imports no __future__
  feature newer than 3.6;
- every module_util a module imports (transitively) parses at the stated minimum (_python_version.MINIMUM_PYTHON),
  and the minimum is not overstated: some of them need exactly that version;
- every module's DOCUMENTATION states that minimum in ``requirements``;
- on an older Python (simulated: the module run with sys.version_info replaced) the module fails with a
  message naming the minimum, never a SyntaxError or traceback.

The parse checks use ast.parse(feature_version=...) plus the __future__ imports (which ast accepts on any
version); library APIs newer than the minimum were checked with vermin when the minimum was set.
"""

from __future__ import annotations
import __future__

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.netstate.tcp.plugins.module_utils import _python_version

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted((ROOT / "plugins" / "modules").glob("*.py"))
MODULE_UTILS_PACKAGE = "ansible_collections.netstate.tcp.plugins.module_utils"
MINIMUM = _python_version.MINIMUM_PYTHON
# tcp_fleet_report's module file only documents the action plugin, which runs on the controller
MANAGED_NODE_MODULES = [m for m in MODULES if m.stem != "tcp_fleet_report"]


def parses_at(path: Path, version: tuple[int, int]) -> bool:
    """Whether ``path`` is valid Python ``version`` syntax, __future__ imports included."""
    try:
        tree = ast.parse(path.read_text(), filename=str(path), feature_version=version)
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            for alias in node.names:
                if getattr(__future__, alias.name).getOptionalRelease()[:2] > version:
                    return False
    return True


def imported_module_utils(path: Path) -> set[Path]:
    """The module_utils files ``path`` imports, transitively (wherever the import statement sits)."""
    found: set[Path] = set()
    pending = [path]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(MODULE_UTILS_PACKAGE):
                names = [node.module[len(MODULE_UTILS_PACKAGE) + 1 :]] if node.module != MODULE_UTILS_PACKAGE else []
                names += [alias.name for alias in node.names] if node.module == MODULE_UTILS_PACKAGE else []
                for name in names:
                    target = ROOT / "plugins" / "module_utils" / f"{name}.py"
                    if target.is_file() and target not in found:
                        found.add(target)
                        pending.append(target)
    return found


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.stem)
def test_module_file_parses_on_python_3_6(module):
    assert parses_at(module, (3, 6))


def test_the_guard_itself_parses_on_python_3_6():
    assert parses_at(ROOT / "plugins" / "module_utils" / "_python_version.py", (3, 6))


@pytest.mark.parametrize("module", MANAGED_NODE_MODULES, ids=lambda p: p.stem)
def test_module_utils_parse_at_the_stated_minimum(module):
    used = imported_module_utils(module)
    assert used, "a module that imports no module_utils needs no guard"
    assert [p.name for p in sorted(used) if not parses_at(p, MINIMUM)] == []


def test_the_minimum_is_not_overstated():
    used = set().union(*(imported_module_utils(m) for m in MANAGED_NODE_MODULES))
    below = (MINIMUM[0], MINIMUM[1] - 1)
    assert [p.name for p in used if not parses_at(p, below)], f"nothing needs {MINIMUM}: lower MINIMUM_PYTHON"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.stem)
def test_documentation_states_the_minimum(module):
    source = module.read_text()
    tree = ast.parse(source)
    (doc,) = [
        node.value.value
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "DOCUMENTATION"
    ]
    requirements = " ".join(yaml.safe_load(doc).get("requirements") or [])
    wanted = "Python >= {}.{}".format(*MINIMUM)
    if module.stem == "tcp_fleet_report":  # runs on the controller: its Python is ansible-core's
        wanted = "controller"
    assert wanted in requirements


SIMULATE_OLD_PYTHON = """
import collections, runpy, sys
import ansible.module_utils.basic  # ansible-core 2.17+ refuses 3.6 itself; 2.16 (simulated here) does not
fake = collections.namedtuple("version_info", "major minor micro releaselevel serial")(3, 6, 15, "final", 0)
sys.version_info = fake
runpy.run_module(sys.argv[1], run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize("module", MANAGED_NODE_MODULES, ids=lambda p: p.stem)
def test_an_older_python_fails_naming_the_minimum(module):
    name = f"ansible_collections.netstate.tcp.plugins.modules.{module.stem}"
    args = {"ANSIBLE_MODULE_ARGS": {"_ansible_check_mode": True}}
    proc = subprocess.run(
        [sys.executable, "-c", SIMULATE_OLD_PYTHON, name, json.dumps(args)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        timeout=60,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    result = json.loads(proc.stdout)
    minimum = "{}.{}".format(*MINIMUM)
    assert result["failed"] is True
    assert f"netstate.tcp.{module.stem} needs Python {minimum} or newer" in result["msg"]
    assert "is Python 3.6.15" in result["msg"]
    assert result["minimum_python"] == minimum
