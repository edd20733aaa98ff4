# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_netns entering a real lab namespace (root), checked with ip(8), ss(8) and pyroute2.

Moved from tests/unit (make unit runs unprivileged); the unprivileged _netns tests stay there.
"""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _netns


@pytest.fixture
def netns(bare_host):
    """The name of a fresh lab namespace (lo up), removed after the test."""
    return bare_host.name


def test_list_namespaces_finds_named_and_current(netns):
    pyroute2_netns = pytest.importorskip("pyroute2.netns")
    warnings = []
    found = _netns.list_namespaces(warnings=warnings)
    named = {ns["name"] for ns in found if ns["name"]}
    assert netns in named
    # Names that are mounted namespaces: pyroute2's list, minus stale entries we warned about.
    assert named == {name for name in pyroute2_netns.listnetns() if f"/{name}:" not in " ".join(warnings)}
    inodes = [ns["inode"] for ns in found]
    assert len(inodes) == len(set(inodes))
    assert _netns.current_inode() in inodes
    ours = next(ns for ns in found if ns["name"] == netns)
    assert ours["path"] == f"/run/netns/{netns}"
    assert _netns.namespace_name(ours["inode"]) == netns


def test_entered_runs_inside_and_returns(netns):
    original = _netns.current_inode()
    target = os.stat(f"/run/netns/{netns}").st_ino
    with _netns.entered(f"/run/netns/{netns}"):
        assert _netns.current_inode() == target
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            sock.listen(1)
            port = sock.getsockname()[1]
            inside = subprocess.run(
                ["ip", "netns", "exec", netns, "ss", "-Htln", f"sport = :{port}"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            assert f":{port}" in inside
    assert _netns.current_inode() == original


def test_entered_returns_after_an_exception(netns):
    original = _netns.current_inode()
    with pytest.raises(RuntimeError), _netns.entered(f"/run/netns/{netns}"):
        raise RuntimeError("boom")
    assert _netns.current_inode() == original
