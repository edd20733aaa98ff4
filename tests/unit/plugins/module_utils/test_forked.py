# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_forked: a function run in a real forked child, its bytes back through a real pipe."""

from __future__ import annotations

import os
import time

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _forked


def _gone(pid):
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_the_child_answers_with_its_bytes_and_is_reaped():
    parent = os.getpid()
    # more than a pipe holds (64 KiB): the child blocks in write until the caller reads
    call = _forked.ForkedCall(lambda size: b"%d:" % os.getpid() + b"x" * size, 1 << 20)
    pid = call.pid
    data = call.result()
    child, _colon, rest = data.partition(b":")
    assert int(child) == pid != parent and rest == b"x" * (1 << 20)
    assert call.pid is None
    _gone(pid)
    call.close()  # after result(): nothing to do


def test_a_child_that_raises_gives_none():
    def fails():
        raise ValueError("no")

    call = _forked.ForkedCall(fails)
    assert call.result() is None


def test_close_ends_a_child_whose_answer_was_never_read():
    # a child that would answer in 10 minutes: close() kills it instead of waiting
    call = _forked.ForkedCall(lambda: time.sleep(600) or b"late")
    pid = call.pid
    call.close()
    call.close()  # twice is harmless
    _gone(pid)


def test_no_fork_beside_another_thread(monkeypatch):
    monkeypatch.setattr(_forked.threading, "active_count", lambda: 2)
    assert _forked.can_fork() is False
    monkeypatch.setattr(_forked.threading, "active_count", lambda: 1)
    assert _forked.can_fork() is ((os.cpu_count() or 1) >= 2)
