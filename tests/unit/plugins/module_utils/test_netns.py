# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_netns against the real kernel, unprivileged (entering namespaces: tests/integration/test_netns.py)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _netns


def test_namespace_label():
    assert _netns.namespace_label(4026532177, "blue") == "blue"
    assert _netns.namespace_label(4026532177) == "inode:4026532177"


def test_current_inode_matches_readlink():
    link = os.readlink("/proc/thread-self/ns/net")
    assert link == f"net:[{_netns.current_inode()}]"


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
