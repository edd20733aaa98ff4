# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Run code as the unprivileged user nobody (uid 65534) from integration tests running as root.

The checkout may sit under a directory nobody cannot traverse (``mktemp -d`` makes it 0700, /root is
0700): nobody can then neither exec the venv's python nor import the collection from the checkout.
So nobody gets its own world-readable tree (the conftest fixture ``nobody`` makes one per session):

    <tmp>/collections/ansible_collections/netstate/tcp/plugins   real copies of the collection's plugins
    <tmp>/lab/netstate_lab, <tmp>/lab/yaml                       the lab package and the PyYAML it imports
                                                                 (copied the first time a test asks: lab=True)
    <tmp>/home                                                   nobody's HOME, owned by nobody
    <tmp>/work-*                                                 per-test directories (Nobody.workdir)

and an interpreter it can run (Nobody.python). Imported by basename, like lab_probes.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import sysconfig
import tempfile
from pathlib import Path

import yaml

import netstate_lab

ROOT = Path(__file__).resolve().parents[2]
NOBODY_UID = NOBODY_GID = 65534
# the Makefile's UNPRIV_PYTHON: Debian's interpreter, outside any private directory
SYSTEM_PYTHON = "/usr/bin/python3"


def setpriv_nobody():
    """The command prefix that drops root for nobody (no supplementary groups); None without setpriv."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, f"--reuid={NOBODY_UID}", f"--regid={NOBODY_GID}", "--clear-groups"]


def why_nobody_cannot_reach(path):
    """Why nobody cannot reach ``path`` (a directory on its way, or ``path`` itself when a directory, that others
    cannot search), or None."""
    path = Path(path)
    if not path.exists():
        return f"{path} does not exist"
    way = [*reversed(path.parents), path] if path.is_dir() else reversed(path.parents)
    for directory in way:
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            return f"{directory} (on the way to {path}) is mode {stat.S_IMODE(mode):04o}: others cannot traverse it"
    return None


def why_nobody_cannot_run(python):
    """Why nobody cannot run interpreter ``python`` (the binary and its standard library checked), or None."""
    why = why_nobody_cannot_reach(python)
    if why is None and not Path(python).stat().st_mode & stat.S_IXOTH:
        why = f"{python} is not executable by others"
    return why


def interpreter_for_nobody():
    """(interpreter, None) that nobody can run, or (None, why not).

    The running interpreter's real file first (a venv's python is a link into its base interpreter, the venv
    itself lives in the checkout), when it and its standard library are reachable; else SYSTEM_PYTHON.
    """
    own = os.path.realpath(sys.executable)
    why_not_own = why_nobody_cannot_run(own) or why_nobody_cannot_reach(sysconfig.get_paths()["stdlib"])
    if why_not_own is None:
        return own, None
    why_not_system = why_nobody_cannot_run(os.path.realpath(SYSTEM_PYTHON))
    if why_not_system is None:
        return SYSTEM_PYTHON, None
    return None, f"no Python that nobody (uid {NOBODY_UID}) can run: {own}: {why_not_own}; {why_not_system}"


def _copy_readable(source, target):
    """Copy the tree ``source`` to ``target`` as real files (links followed), readable by everyone.

    Modes are set, not copied: a checkout made under umask 077 has 0600 files.
    """
    shutil.copytree(source, target, symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
    for directory, _dirs, files in os.walk(target):
        os.chmod(directory, 0o755)
        for name in files:
            os.chmod(os.path.join(directory, name), 0o644)


class Nobody:
    """A world-readable tree under /tmp and the argv that runs Python there as nobody; ``remove()`` deletes it."""

    def __init__(self, setpriv, python):
        self.setpriv = setpriv
        self.python = python
        self.root = Path(tempfile.mkdtemp(prefix="netstate-nobody-"))
        self.collections = str(self.root / "collections")
        self.home = self.root / "home"
        self._lab = None
        try:
            self.root.chmod(0o755)
            collection = self.root / "collections" / "ansible_collections" / "netstate" / "tcp"
            _copy_readable(ROOT / "plugins", collection / "plugins")
            for directory in (collection, *collection.parents):
                if directory == self.root:
                    break
                directory.chmod(0o755)
            self.home.mkdir(mode=0o700)
            os.chown(self.home, NOBODY_UID, NOBODY_GID)
        except BaseException:
            self.remove()
            raise

    def lab(self):
        """Directory holding a copy of the lab package (netstate_lab) and the PyYAML it imports, made on first use."""
        if self._lab is None:
            lab = self.root / "lab"
            for package in (netstate_lab, yaml):
                source = Path(package.__file__).parent
                _copy_readable(source, lab / source.name)
            lab.chmod(0o755)
            self._lab = str(lab)
        return self._lab

    def workdir(self, prefix="work-"):
        """A fresh directory in the tree, readable (not writable) by nobody: for files a test hands to nobody."""
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.root))
        path.chmod(0o755)
        return path

    def command(self, *args, collection=True, lab=False):
        """argv running ``python *args`` as nobody, HOME its own directory, the copied collection (``collection``)
        and lab package (``lab``) on PYTHONPATH.

        ``command()`` alone is the argv prefix that runs Python as nobody (trace_probes.start_tracer's python=).
        Put it after ``ip netns exec``: setpriv drops root once inside the namespace.
        """
        pythonpath = ([self.collections] if collection else []) + ([self.lab()] if lab else [])
        # env takes its options (-u) before the assignments
        env = ["env", "PYTHONPATH=" + os.pathsep.join(pythonpath)] if pythonpath else ["env", "-u", "PYTHONPATH"]
        env.append(f"HOME={self.home}")
        return [*self.setpriv, *env, self.python, *args]

    def remove(self):
        shutil.rmtree(self.root)
