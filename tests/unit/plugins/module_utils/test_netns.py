# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_netns against the real kernel: a namespace made for the test, checked with ip(8), ss(8) and pyroute2."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _netns

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="creating and entering namespaces needs root")


@pytest.fixture
def netns():
    name = f"nsf-unit-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=True)


def test_namespace_label():
    assert _netns.namespace_label(4026532177, "blue") == "blue"
    assert _netns.namespace_label(4026532177) == "inode:4026532177"


def test_current_inode_matches_readlink():
    link = os.readlink("/proc/thread-self/ns/net")
    assert link == f"net:[{_netns.current_inode()}]"


@root_only
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


@root_only
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


@root_only
def test_entered_returns_after_an_exception(netns):
    original = _netns.current_inode()
    with pytest.raises(RuntimeError), _netns.entered(f"/run/netns/{netns}"):
        raise RuntimeError("boom")
    assert _netns.current_inode() == original


def test_entering_a_missing_namespace_fails_clearly_and_stays():
    original = _netns.current_inode()
    with pytest.raises(_netns.NetnsError, match="cannot open"), _netns.entered("/run/netns/does-not-exist-xyz"):
        pass
    assert _netns.current_inode() == original


def test_stale_run_netns_entry_is_skipped_with_a_warning(tmp_path):
    # What `ip netns` leaves when a namespace's mount is gone: a plain empty file.
    (tmp_path / "stale").write_text("")
    warnings = []
    assert _netns.named_namespaces(str(tmp_path), warnings) == {}
    assert warnings == [f"{tmp_path}/stale: not a mounted network namespace (stale name), skipped"]
    assert _netns.named_namespaces(str(tmp_path / "missing"), warnings) == {}
