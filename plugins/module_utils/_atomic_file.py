# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The one atomic file writer of the modules: a reader sees the old file or the new one, never half of one.

A temporary file is staged in the target's directory (same filesystem, so the move is a rename),
written, fsync'ed and given its mode, then moved over the target by ``mover``: modules pass
AnsibleModule.atomic_move, which keeps the SELinux context and attributes of the file it replaces.
Staging and committing are separate steps so that a caller (tcp_sysctl) can stage every file
before it changes anything else. A target that exists and is not a regular file (a symlink, a
directory) is never replaced: the modules write files of their own. Every failure removes the
temporary file. Python stdlib only (runs on managed nodes).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile


class AtomicFileWriter:
    """Writes whole files through ``mover`` with ``mode``.

    ``prefix``/``suffix`` name the temporary file (default ``.<target name>.`` and ``.tmp``);
    the suffix must keep a directory watcher (node_exporter reads ``*.prom``) from taking the
    temporary file for the target. ``keep_existing_mode``: a replaced file keeps the mode the
    mover gave it (atomic_move copies the old file's); otherwise ``mode`` is applied again.
    A new file always gets ``mode``, whatever the umask.
    """

    def __init__(self, mover=os.replace, mode=0o644, prefix=None, suffix=".tmp", keep_existing_mode=False):
        if not suffix:
            raise ValueError("suffix: a temporary file needs a suffix the target's name cannot end with")
        self.mover = mover
        self.mode = mode
        self.prefix = prefix
        self.suffix = suffix
        self.keep_existing_mode = keep_existing_mode

    def stage(self, path, text):
        """A temporary file beside ``path`` holding ``text`` (UTF-8), synced and with its mode; returns its path."""
        refuse_non_regular(path)
        directory = os.path.dirname(path)
        prefix = self.prefix if self.prefix is not None else f".{os.path.basename(path)}."
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=self.suffix, dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(text.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, self.mode)
        except BaseException:
            self.discard(tmp)
            raise
        return tmp

    def commit(self, tmp, path):
        """Move the staged ``tmp`` over ``path``; OSError (the temporary file removed) when that fails."""
        moved = False
        try:
            created = not refuse_non_regular(path)
            try:
                self.mover(tmp, path)
            except Exception as exc:  # atomic_move raises a bare Exception on ansible-core >= 2.19
                raise OSError(errno.EIO, f"cannot replace {path}: {exc}") from exc
            moved = True
        finally:
            # also when atomic_move exits through fail_json (ansible-core < 2.19): no temporary file stays
            if not moved:
                self.discard(tmp)
        if created or not self.keep_existing_mode:
            os.chmod(path, self.mode)  # atomic_move gives a new file the umask's mode, a replaced one the old mode

    @staticmethod
    def discard(tmp):
        """Remove a staged file that will not be committed (best effort: it may be gone already)."""
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    def write(self, path, text):
        """Put ``text`` in ``path``, all or nothing."""
        self.commit(self.stage(path, text), path)


def refuse_non_regular(path):
    """True when ``path`` is a regular file, False when it does not exist; OSError when it is anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(mode):
        raise OSError(f"{path} exists and is not a regular file")
    return True


def module_mover(module):
    """``module.atomic_move`` as a mover that raises instead of ending the module.

    On ansible-core before 2.19 a failed atomic_move calls ``fail_json``, which prints the result and
    exits: a caller could not undo what it had changed before the move (tcp_sysctl's live values).
    For the length of the move ``fail_json`` raises OSError instead; 2.19's bare Exception becomes
    OSError too.
    """

    def refuse(msg=None, **_kwargs):
        raise OSError(errno.EIO, str(msg))

    def move(src, dest):
        shadowed = "fail_json" in vars(module)
        saved = vars(module).get("fail_json")
        module.fail_json = refuse
        try:
            module.atomic_move(src, dest)
        except Exception as exc:
            if isinstance(exc, OSError):
                raise
            raise OSError(errno.EIO, str(exc)) from exc  # ansible-core >= 2.19: a bare Exception
        finally:
            if shadowed:
                module.fail_json = saved
            else:
                del module.fail_json

    return move
