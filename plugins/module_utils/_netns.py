# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""List and enter network namespaces (stdlib only; os.setns exists only on Python 3.12+)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os

PROC = "/proc"
NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000


class NetnsError(Exception):
    """A namespace could not be found or entered."""


def namespace_label(inode, name=None):
    """The key a namespace gets in tcp_state_namespaces: its name, else inode:<n>."""
    return name if name else f"inode:{inode}"


def current_inode(proc=PROC):
    """Inode of the calling thread's network namespace."""
    return os.stat(os.path.join(proc, "thread-self", "ns", "net")).st_ino


def named_namespaces(run_dir=NETNS_RUN_DIR, warnings=None, proc=PROC):
    """{name: inode} for the `ip netns` names in run_dir that are mounted namespaces."""
    warnings = warnings if warnings is not None else []
    result = {}
    try:
        names = sorted(os.listdir(run_dir))
    except FileNotFoundError:
        return result
    except OSError as err:
        warnings.append(f"{run_dir}: {err.strerror or err}")
        return result
    # Namespace files live on nsfs; a name left behind after its namespace went
    # away is a plain empty file on the run_dir's own filesystem.
    nsfs = os.stat(os.path.join(proc, "thread-self", "ns", "net")).st_dev
    for name in names:
        try:
            info = os.stat(os.path.join(run_dir, name))
        except OSError as err:
            warnings.append(f"{run_dir}/{name}: {err.strerror or err}")
            continue
        if info.st_dev != nsfs:
            warnings.append(f"{run_dir}/{name}: not a mounted network namespace (stale name), skipped")
            continue
        result[name] = info.st_ino
    return result


def list_namespaces(proc=PROC, run_dir=NETNS_RUN_DIR, warnings=None):
    """Every distinct network namespace among run_dir and /proc/*/ns/net.

    Returns [{inode, name, path[, pid]}] sorted by name then inode; `path` is a file that
    setns() can open (the /run/netns entry, else one process's ns/net link); `pid` is
    one process inside it, when any.
    Processes whose ns link cannot be read (not ours, without root) are counted
    in one warning.
    """
    warnings = warnings if warnings is not None else []
    found = {}
    for name, inode in named_namespaces(run_dir, warnings, proc).items():
        if inode not in found:
            found[inode] = {"inode": inode, "name": name, "path": os.path.join(run_dir, name)}
    denied = 0
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        path = os.path.join(proc, entry, "ns", "net")
        try:
            inode = os.stat(path).st_ino
        except PermissionError:
            denied += 1
            continue
        except OSError:
            continue  # the process exited meanwhile
        if inode not in found:
            found[inode] = {"inode": inode, "name": None, "path": path}
        found[inode].setdefault("pid", int(entry))
    if denied:
        warnings.append(f"namespaces: could not read ns/net of {denied} processes (permission denied)")
    return sorted(found.values(), key=lambda ns: (ns["name"] is None, ns["name"] or "", ns["inode"]))


def namespace_name(inode, run_dir=NETNS_RUN_DIR):
    """The /run/netns name of a namespace inode, or None."""
    for name, named_inode in named_namespaces(run_dir).items():
        if named_inode == inode:
            return name
    return None


_libc = None


def _setns(fd):
    global _libc  # noqa: PLW0603 - loaded once, on first use
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


@contextlib.contextmanager
def entered(path, proc=PROC):
    """Run the block inside the network namespace at `path`, then return.

    /proc/net, /proc/sys/net and new netlink sockets follow the thread's
    namespace, so collectors called inside the block see that namespace.
    Failing to return to the original namespace raises NetnsError: nothing may
    run on in the wrong namespace.
    """
    original = os.open(os.path.join(proc, "thread-self", "ns", "net"), os.O_RDONLY)
    try:
        try:
            target = os.open(path, os.O_RDONLY)
        except OSError as err:
            raise NetnsError(f"cannot open {path}: {err.strerror or err}") from err
        try:
            _setns(target)
        except OSError as err:
            raise NetnsError(f"cannot enter {path}: {err.strerror or err}") from err
        finally:
            os.close(target)
        try:
            yield
        finally:
            try:
                _setns(original)
            except OSError as err:
                raise NetnsError(f"cannot return to the original network namespace: {err.strerror}") from err
    finally:
        os.close(original)


def resolve_namespace(value, run_dir=NETNS_RUN_DIR, proc=PROC):
    """The setns() path of a network namespace given as an `ip netns` name or a pid inside it.

    A name in run_dir wins over a pid of the same digits. NetnsError names the
    value and the names available.
    """
    text = str(value).strip()
    if text and "/" not in text and text not in (".", ".."):
        if text in named_namespaces(run_dir, proc=proc):
            return os.path.join(run_dir, text)
        if text.isdigit() and int(text) > 0:
            path = os.path.join(proc, text, "ns", "net")
            if os.path.exists(path):
                return path
            raise NetnsError(f"no process with pid {text} (its network namespace cannot be entered)")
    names = sorted(named_namespaces(run_dir, proc=proc))
    raise NetnsError(
        f"no network namespace named {value!r}; give a name in {run_dir} "
        f"({', '.join(names) or 'none there'}) or the pid of a process inside it"
    )
