# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one forked helper of the collection: a function run in a forked child while the caller goes on,
its bytes sent back through a pipe.

The owner walk (_owners) reads /proc/*/fd beside the socket dump, and a large fleet merge
(_fleet_report) reads some partial reports beside the others, each on a second CPU.  The child
writes nothing anywhere but the pipe and ends with os._exit, so no buffered output, atexit or
Ansible handler of the caller runs twice.  Python stdlib only (runs on managed nodes).
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def can_fork() -> bool:
    """Whether a forked child would help and be safe here: a second CPU, and no other thread (a fork
    copies the locks other threads hold but not the threads; Python 3.12 warns about such forks)."""
    return hasattr(os, "fork") and (os.cpu_count() or 1) >= 2 and threading.active_count() == 1


class ForkedCall:
    """``function(*args)`` (which returns bytes) run in a forked child; ``result()`` gives its bytes.

    Raises OSError when no process can be started (EAGAIN, ENOMEM): the caller does the work itself.
    Call ``close()`` in a finally: it ends a child whose result was never asked for.
    """

    def __init__(self, function, *args):
        sys.stdout.flush()  # nothing buffered may be written twice (a module's result goes to stdout)
        sys.stderr.flush()
        read_end, write_end = os.pipe()
        try:
            self.pid = os.fork()
        except BaseException:
            os.close(read_end)
            os.close(write_end)
            raise
        if self.pid == 0:
            status = 1
            try:
                os.close(read_end)
                data = memoryview(function(*args))
                while data:
                    data = data[os.write(write_end, data) :]
                status = 0
            finally:
                os._exit(status)
        os.close(write_end)
        self.read_end = read_end

    def result(self):
        """The child's bytes, or None when it failed (an exception, a signal): the caller then does the work."""
        chunks = []
        try:
            while True:
                chunk = os.read(self.read_end, 1 << 22)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            status = self._reap()  # after the end of its data the child has ended; a failed read ends it (EPIPE)
        return b"".join(chunks) if status == 0 else None

    def close(self):
        """End and reap the child when result() was never called (the caller failed meanwhile)."""
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass
        self._reap()

    def _reap(self):
        os.close(self.read_end)
        _pid, status = os.waitpid(self.pid, 0)
        self.pid = None
        return status
