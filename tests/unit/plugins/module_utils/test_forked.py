# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_forked: work in a real forked child, its messages back through a real shared file and pipe."""

from __future__ import annotations

import os
import signal
import time

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _forked


def _gone(pid):
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _messages(read_fd, sizes):
    """One message per size, each once the caller has written a byte to `read_fd`'s pipe (a step)."""
    for number, size in enumerate(sizes):
        os.read(read_fd, 1)
        yield b"%d:%d:" % (os.getpid(), number) + b"x" * size


def test_messages_come_as_the_child_makes_them_and_the_child_is_reaped():
    step_read, step_write = os.pipe()
    try:
        # more than a pipe holds (64 KiB) per message: the child never waits for the caller to read
        call = _forked.ForkedCall(_messages, step_read, [1 << 20, 5, 0])
        pid = call.pid
        assert pid != os.getpid()
        os.write(step_write, b"s")
        first = []
        while not first:  # the child writes its first message after the first step
            first = call.poll()
        assert first == [b"%d:0:" % pid + b"x" * (1 << 20)]
        assert call.poll() == []  # nothing more before the next step
        os.write(step_write, b"ss")
        rest, ended_well = call.finish()
    finally:
        os.close(step_read)
        os.close(step_write)
    assert ended_well and rest == [b"%d:1:xxxxx" % pid, b"%d:2:" % pid]
    assert call.pid is None and call.poll() == []
    _gone(pid)
    call.close()  # after finish(): nothing to do


def test_a_child_that_fails_keeps_the_messages_it_finished():
    def second_fails():
        yield b"one"
        raise ValueError("no")

    call = _forked.ForkedCall(second_fails)
    assert call.finish() == ([b"one"], False)


def test_close_ends_a_child_that_was_not_finished():
    # a child that would answer in 10 minutes: close() kills it instead of waiting
    call = _forked.ForkedCall(lambda: iter([time.sleep(600) or b"late"]))
    pid = call.pid
    call.close()
    call.close()  # twice is harmless
    _gone(pid)


def test_no_fork_beside_another_thread(monkeypatch):
    monkeypatch.setattr(_forked.threading, "active_count", lambda: 2)
    assert _forked.can_fork() is False
    monkeypatch.setattr(_forked.threading, "active_count", lambda: 1)
    assert _forked.can_fork() is ((os.cpu_count() or 1) >= 2)


def test_a_child_reaped_by_someone_else_did_not_end_well():
    # SIGCHLD ignored: the kernel reaps the child itself, so its exit status is lost
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        call = _forked.ForkedCall(lambda: iter([b"done"]))
        messages, ended_well = call.finish()
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert messages == [b"done"] and ended_well is False
