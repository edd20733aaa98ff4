# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one forked helper of the collection: work done in a forked child while the caller goes on, its
messages (bytes) handed back as they are made.

The owner walk (_owners) reads /proc/*/fd beside the socket dump, and a large fleet merge
(_fleet_report) reads some partial reports beside the others, each on a second CPU.  The child
writes its messages into an anonymous file shared with the caller (memfd; an unlinked temporary
file on Python 3.7), so it never waits for the caller to read them, and tells where each one lies
through a pipe.  It writes nothing else anywhere and ends with os._exit, so no buffered output,
atexit or Ansible handler of the caller runs twice.  Python stdlib only (runs on managed nodes).
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import tempfile
import threading

# where one message lies in the shared file: offset, length (16 bytes: a pipe write of it is atomic)
_SPAN = struct.Struct("=QQ")


def can_fork() -> bool:
    """Whether a forked child would help and be safe here: a second CPU, and no other thread (a fork
    copies the locks other threads hold but not the threads; Python 3.12 warns about such forks)."""
    return hasattr(os, "fork") and (os.cpu_count() or 1) >= 2 and threading.active_count() == 1


def _shared_file():
    """(fd, keeper) of an anonymous read-write file; keep `keeper` referenced while the fd is in use."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("netstate-forked", os.MFD_CLOEXEC), None
    keeper = tempfile.TemporaryFile(prefix="netstate-forked-")
    return keeper.fileno(), keeper


def _write_all(fd, data, offset):
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _read_span(fd, length, offset):
    chunks = []
    while length:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            raise EOFError("the shared file ends early")
        chunks.append(chunk)
        length, offset = length - len(chunk), offset + len(chunk)
    return b"".join(chunks)


class ForkedCall:
    """``function(*args)``, a generator of bytes messages, run in a forked child.

    ``poll()`` gives the messages finished so far without waiting; ``finish()`` waits for the child's
    end and gives (the remaining messages, whether it ended well).  Raises OSError when no process can
    be started (EAGAIN, ENOMEM): the caller then does the work itself.  Call ``close()`` in a finally:
    it ends a child that was not finished.
    """

    def __init__(self, function, *args):
        self._fd, self._keeper = _shared_file()
        sys.stdout.flush()  # nothing buffered may be written twice (a module's result goes to stdout)
        sys.stderr.flush()
        try:
            read_end, write_end = os.pipe()
        except BaseException:
            self._close_file()
            raise
        try:
            self.pid = os.fork()
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            self._close_file()
            raise
        if self.pid == 0:
            status = 1
            try:
                os.close(read_end)
                offset = 0
                for message in function(*args):
                    _write_all(self._fd, message, offset)
                    os.write(write_end, _SPAN.pack(offset, len(message)))
                    offset += len(message)
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        self._read_end, self._spans = read_end, b""

    def poll(self):
        """The messages the child finished since the last call (maybe none); never waits."""
        if self.pid is None:
            return []
        os.set_blocking(self._read_end, False)
        try:
            self._read_spans()
        finally:
            os.set_blocking(self._read_end, True)
        return self._take()

    def finish(self):
        """([the remaining messages], ended well): waits for the child's end and reaps it.  When it
        failed (an exception, a signal), the messages given are still whole: those it finished."""
        if self.pid is None:
            return [], False
        try:
            self._read_spans()  # blocking: up to the child's end
            messages = self._take()
        finally:
            status = self._reap()
        return messages, status == 0

    def _read_spans(self):
        """Add what the pipe holds to the spans read so far: up to the child's end, or (non-blocking) to
        what is there now."""
        try:
            while True:
                chunk = os.read(self._read_end, 1 << 16)
                if not chunk:
                    return
                self._spans += chunk
        except BlockingIOError:
            return

    def close(self):
        """End and reap the child when finish() was not reached (the caller failed meanwhile)."""
        if self.pid is not None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
            self._reap()

    def _take(self):
        whole = len(self._spans) - len(self._spans) % _SPAN.size
        spans, self._spans = self._spans[:whole], self._spans[whole:]
        return [_read_span(self._fd, length, offset) for offset, length in _SPAN.iter_unpack(spans)]

    def _reap(self):
        os.close(self._read_end)
        try:
            _pid, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            status = -1  # reaped by a SIGCHLD handler of the caller's: its end is unknown, so not well
        self.pid = None
        self._close_file()
        return status

    def _close_file(self):
        if self._keeper is not None:
            self._keeper.close()
        else:
            os.close(self._fd)
        self._fd = self._keeper = None
