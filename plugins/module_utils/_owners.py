# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The owners layer: who holds a socket, and who a process is (stdlib only).

The one /proc/<pid>/fd scanner (scan_socket_fds) and the one process-identity
reader (read_comm_bytes, process_info: comm, cmdline, user, cgroup, container)
of the collection; tcp_state_facts, tcp_socket_info and tcp_gate all use them.

A socket fd reads back as the link `socket:[<inode>]`; the inodes come from the
sock_diag dump, so only the wanted inodes are matched, and the pass is skipped
entirely when there are none.

Process names: the kernel keeps comm in TASK_COMM_LEN (16) bytes with the NUL,
so /proc/<pid>/comm holds at most 15 BYTES, cut possibly inside a multi-byte
character.  Names are therefore compared as bytes (comm_key: the first 15 bytes
of the UTF-8 encoding, as prctl(PR_SET_NAME) and exec cut them) and decoded
only for display, with invalid bytes replaced.
"""

from __future__ import annotations

import os
import pwd
import re

PROC = "/proc"
CMDLINE_MAX = 200
COMM_BYTES = 15  # TASK_COMM_LEN (16) minus the NUL: the kernel cuts comm at 15 bytes, not characters

# Container runtimes put the container id in the cgroup path.
_CONTAINER_SCOPE = re.compile(r"(?:docker|cri-containerd|crio|libpod)-([0-9a-f]{64})\.scope")
_CONTAINER_DIR = re.compile(r"/(?:docker|libpod|crio|containerd|lxc|kubepods)[^/]*(?:/[^/]+)*?/([0-9a-f]{64})(?:/|$)")


def container_id(cgroup_path):
    """The container id a cgroup path shows, else None."""
    if not cgroup_path:
        return None
    match = _CONTAINER_SCOPE.search(cgroup_path) or _CONTAINER_DIR.search(cgroup_path)
    return match.group(1) if match else None


def parse_cgroup(text):
    """The process's cgroup path: the v2 (`0::`) entry, else the systemd or first v1 entry."""
    first = systemd = None
    for line in (text or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            return path
        if controllers == "name=systemd":
            systemd = path
        if first is None:
            first = path
    return systemd or first


def parse_cmdline(raw, limit=CMDLINE_MAX):
    """NUL-separated argv as one line, cut to `limit` characters with an ellipsis."""
    text = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
    text = "".join(char if char.isprintable() else " " for char in text)
    if len(text) > limit:
        text = text[: max(0, limit - 3)] + "..."
    return text


def parse_status_uid(text):
    """Effective uid from /proc/<pid>/status, else None."""
    for line in (text or "").splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                return int(fields[2])
    return None


def _read(path, mode="r"):
    try:
        if "b" in mode:
            with open(path, mode) as handle:
                return handle.read()
        with open(path, mode, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


_USER_NAMES = {}


def user_name(uid):
    """Name of a uid (the uid as text when it has none), looked up once per process."""
    if uid is None:
        return None
    if uid not in _USER_NAMES:
        try:
            _USER_NAMES[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            _USER_NAMES[uid] = str(uid)
    return _USER_NAMES[uid]


def comm_key(name):
    """The bytes the kernel keeps of a process name: its first 15 UTF-8 bytes (str in, bytes out)."""
    raw = name if isinstance(name, bytes) else str(name).encode("utf-8", "surrogateescape")
    return raw[:COMM_BYTES]


def display_comm(raw):
    """comm bytes as text for output; a character cut by the kernel shows as U+FFFD (text passes as is)."""
    if raw is None or isinstance(raw, str):
        return raw
    return raw.decode("utf-8", "replace")


def read_comm_bytes(pid, proc=PROC):
    """/proc/<pid>/comm as bytes without its trailing newline; None when the process is gone."""
    raw = _read(os.path.join(proc, str(pid), "comm"), "rb")
    if raw is None:
        return None
    # the kernel appends one newline; a name set with prctl may itself end in one
    return raw[:-1] if raw.endswith(b"\n") else raw


def read_comm(pid, proc=PROC):
    """/proc/<pid>/comm for display (see display_comm), None when the process is gone."""
    return display_comm(read_comm_bytes(pid, proc))


def comm_matches(name, comm):
    """Whether a process named `name` (as a user gives it) has the comm `comm` (bytes as the kernel keeps them).

    True when comm is the first 15 UTF-8 bytes of name (the full name or the
    kernel's cut), or when name is comm as this module displays it (with U+FFFD
    where the kernel cut a character), so a name copied from the output matches.
    """
    if comm is None:
        return False
    comm = comm_key(comm)
    return comm == comm_key(name) or ("\ufffd" in name and display_comm(comm) == name)


def pids_by_comm(names, proc=PROC):
    """{pid: comm bytes} of the processes whose comm matches one of `names` (comm_matches)."""
    names = list(names)
    found = {}
    if not names:
        return found
    for entry in os.listdir(proc):
        if entry.isdigit():
            raw = read_comm_bytes(entry, proc)
            if any(comm_matches(name, raw) for name in names):
                found[int(entry)] = raw
    return found


def process_info(pid, proc=PROC, cmdline_max=CMDLINE_MAX):
    """pid, comm, cmdline, user, cgroup and container of one process."""
    base = os.path.join(proc, str(pid))
    comm = read_comm(pid, proc)
    raw = _read(os.path.join(base, "cmdline"), "rb")
    cgroup = parse_cgroup(_read(os.path.join(base, "cgroup")))
    uid = parse_status_uid(_read(os.path.join(base, "status")))
    return {
        "pid": pid,
        "comm": comm,
        "cmdline": parse_cmdline(raw, cmdline_max) if raw is not None else None,
        "user": user_name(uid),
        "cgroup": cgroup,
        "container": container_id(cgroup),
    }


class _AllInodes:
    """`wanted` that holds every socket inode (owner filters list all sockets of chosen processes)."""

    def __contains__(self, inode):
        return True


ALL_SOCKETS = _AllInodes()


def _socket_inodes(dir_fd, wanted):
    """Inodes in `wanted` among the socket fds of one open /proc/<pid>/fd directory."""
    found = []
    readlink = os.readlink
    for name in os.listdir(dir_fd):
        try:
            link = readlink(name, dir_fd=dir_fd)
        except OSError:
            continue
        # socket:[12345]
        if link.startswith("socket:[") and link[8:-1].isdigit():
            inode = int(link[8:-1])
            if inode in wanted:
                found.append(inode)
    return found


def _process_socket_inodes(proc, pid, wanted):
    """(inodes, denied) for one process; ([], False) when it exited meanwhile."""
    # Links read relative to the open fd/ directory: the kernel does not walk
    # /proc/<pid>/fd again for every fd (about a third faster at 10k fds).
    try:
        dir_fd = os.open(os.path.join(proc, str(pid), "fd"), os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError:
        return [], True
    except OSError:
        return [], False  # the process exited meanwhile
    try:
        return _socket_inodes(dir_fd, wanted), False
    except OSError:
        return [], False
    finally:
        os.close(dir_fd)


def scan_socket_fds(wanted, proc=PROC, warnings=None, pids=None):
    """One pass over /proc/*/fd: {pid: [inode, ...]} for the inodes in `wanted`.

    Why the pass reads every fd of every process (measured, 20k socket fds): the
    readlink system calls are about 80% of its CPU time, the Python work per fd the
    rest, so trimming that work changes nothing measurable; two threads (split by
    process or by the fds of one process) took as long as one.  What would read fewer
    links changes results, so it is not done: stopping once every wanted inode is
    found loses the other holders of a shared socket (forked workers), and skipping
    processes by uid loses every process that holds a socket created under another
    uid (a daemon that binds as root and then drops privileges with setuid, whose
    accepted sockets keep the listener's uid, or an fd passed with SCM_RIGHTS), even
    when the process's real, effective, saved and fs uids are all compared.

    wanted: a set of socket inodes, or ALL_SOCKETS for every socket fd.
    pids: only these processes (default: every process).
    Processes whose fds cannot be listed (another user's, without root) are
    counted in one warning; processes that exit during the pass are skipped.
    """
    warnings = warnings if warnings is not None else []
    held = {}
    if not wanted:
        return held
    if pids is None:
        pids = (int(entry) for entry in os.listdir(proc) if entry.isdigit())
    denied = 0
    for pid in pids:
        found, refused = _process_socket_inodes(proc, pid, wanted)
        denied += refused
        if found:
            held[pid] = found
    if denied:
        warnings.append(
            f"owners: could not read /proc/<pid>/fd of {denied} processes (permission denied); "
            "owners and listener owners may be incomplete"
        )
    return held


def find_owners(owner_inodes, listener_inodes=(), *, top=10, proc=PROC, warnings=None, held=None):
    """Owners of sockets per state and of listeners.

    owner_inodes: {state: iterable of inodes} (collect_sockets' `_owner_inodes`).
    listener_inodes: inodes of the reported LISTEN sockets.
    held: the result of scan_socket_fds when the caller already made the pass
    (one pass serves several namespaces: socket inodes are unique host-wide).
    Returns (owners, listener_owner): owners = {state: [process info + sockets]}
    sorted by sockets held, at most `top` per state; listener_owner =
    {inode: {pid, comm}} (the lowest pid when several processes share the fd).
    """
    warnings = warnings if warnings is not None else []
    state_of = {}
    for state, inodes in owner_inodes.items():
        for inode in inodes:
            if inode:  # TIME_WAIT and orphans have inode 0: nobody holds them
                state_of[inode] = state
    listeners = {inode for inode in listener_inodes if inode}
    owners = {state: [] for state in owner_inodes}
    listener_owner = {}
    if not state_of and not listeners:
        return owners, listener_owner
    if held is None:
        held = scan_socket_fds(set(state_of) | listeners, proc, warnings)
    infos = {}
    per_state = {}
    for pid in sorted(held):
        for inode in held[pid]:
            state = state_of.get(inode)
            if state is not None:
                counts = per_state.setdefault(state, {})
                counts[pid] = counts.get(pid, 0) + 1
            if inode in listeners and inode not in listener_owner:
                if pid not in infos:
                    infos[pid] = process_info(pid, proc)
                listener_owner[inode] = {"pid": pid, "comm": infos[pid]["comm"]}
    for state, counts in per_state.items():
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[: max(1, top)]
        for pid, sockets in ranked:
            if pid not in infos:
                infos[pid] = process_info(pid, proc)
            info = dict(infos[pid])
            info["sockets"] = sockets
            owners[state].append(info)
    return owners, listener_owner
