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

import array
import os
import pwd
import re
import struct

from ansible_collections.netstate.tcp.plugins.module_utils import _forked

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


# Since Linux 6.2 stat() of /proc/<pid>/fd reports the number of open fds as st_size (before: 0).
FD_COUNT_KERNEL = (6, 2)
# consecutive absent fd numbers after which the probe lists the directory instead (sparse fd tables).
# Small: every bash holds fd 255 above its 0-2, and a failed probe costs about what a listing of a small
# table does (with 1,024, 2,513 of a small host's 2,574 probes failed: about 10 ms of each run)
PROBE_MISSES = 32
# a host with fewer fds than this is walked after the dump, in the module's process (a few hundredths of a second)
OVERLAP_MIN_FDS = 20000
# every link that is exactly socket:[<digits>], in links joined by NUL
_SOCKET_LINKS = re.compile(rb"(?:^|(?<=\0))socket:\[(\d+)\](?=\0|\Z)")


def _kernel_counts_fds(release=None):
    """Whether this kernel reports /proc/<pid>/fd's open-fd count as its size."""
    release = release if release is not None else os.uname().release
    match = re.match(r"(\d+)\.(\d+)", release)
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= FD_COUNT_KERNEL


def _fd_links(dir_fd, count):
    """The link of every fd of one open /proc/<pid>/fd directory, as bytes.

    count: the directory's open-fd count from the kernel, or 0 when unknown.  With a count the
    fd numbers are probed upwards (fds are allocated lowest first, so tables are dense) until
    that many links are read: no directory listing, whose getdents costs about as much as the
    links themselves.  After PROBE_MISSES absent numbers in a row, or without a count, the
    directory is listed and the numbers above the probe are read from it.
    """
    readlink = os.readlink
    links = []
    number = misses = 0
    # a plain loop: map() over functools.partial(readlink, dir_fd=...) measured slower (the keyword
    # argument is merged on every call); the readlink system call is most of the cost either way
    while len(links) < count and misses < PROBE_MISSES:
        try:
            links.append(readlink(b"%d" % number, dir_fd=dir_fd))
            misses = 0
        except OSError:
            misses += 1
        number += 1
    if count and len(links) >= count:
        return links
    for name in sorted(int(name) for name in os.listdir(dir_fd) if name.isdigit() and int(name) >= number):
        try:
            links.append(readlink(b"%d" % name, dir_fd=dir_fd))
        except OSError:
            continue  # closed meanwhile
    return links


def _counts_fds(proc):
    """Whether the fd directories under `proc` report their open-fd counts (the real /proc on Linux 6.2+)."""
    return proc == PROC and _kernel_counts_fds()


def _link_socket_inodes(links):
    """The set of inodes of the links (bytes) that are exactly `socket:[12345]`."""
    # one regex pass over the links joined by NUL (no link holds one) instead of a check per link
    return set(map(int, _SOCKET_LINKS.findall(b"\0".join(links))))


def _socket_inodes(dir_fd, count=0):
    """The set of socket inodes among the fds of one open /proc/<pid>/fd directory."""
    return _link_socket_inodes(_fd_links(dir_fd, count))


def _process_socket_inodes(proc, pid, counts_fds):
    """(socket inodes, denied) for one process; (empty, False) when it exited meanwhile."""
    # Links read relative to the open fd/ directory: the kernel does not walk
    # /proc/<pid>/fd again for every fd (about a third faster at 10k fds).
    try:
        dir_fd = os.open(os.path.join(proc, str(pid), "fd"), os.O_RDONLY | os.O_DIRECTORY)
    except PermissionError:
        return set(), True
    except OSError:
        return set(), False  # the process exited meanwhile
    try:
        return _socket_inodes(dir_fd, os.fstat(dir_fd).st_size if counts_fds else 0), False
    except OSError:
        return set(), False
    finally:
        os.close(dir_fd)


def _all_pids(proc):
    return [int(entry) for entry in os.listdir(proc) if entry.isdigit()]


def _walk(proc, pids, counts_fds):
    """({pid: set of socket inodes}, denied processes) of one pass over the given processes."""
    held, denied = {}, 0
    for pid in pids:
        inodes, refused = _process_socket_inodes(proc, pid, counts_fds)
        denied += refused
        if inodes:
            held[pid] = inodes
    return held, denied


def _denied_warning(denied, warnings):
    if denied:
        warnings.append(
            f"owners: could not read /proc/<pid>/fd of {denied} processes (permission denied); "
            "owners and listener owners may be incomplete"
        )


def _wanted_only(held, wanted):
    """{pid: [inode]} of the wanted inodes among the held ones (sorted: the output does not depend on hashing)."""
    if wanted is ALL_SOCKETS:
        return {pid: sorted(inodes) for pid, inodes in held.items()}
    result = {}
    for pid, inodes in held.items():
        found = inodes.intersection(wanted)
        if found:
            result[pid] = sorted(found)
    return result


def scan_socket_fds(wanted, proc=PROC, warnings=None, pids=None):
    """One pass over /proc/*/fd: {pid: [inode, ...]} for the inodes in `wanted`.

    Every fd of every process is read, so a socket shared by several processes (forked workers,
    an fd passed with SCM_RIGHTS) names each of them, whatever uid created it.  Reading fewer links
    would change results: stopping once every wanted inode is found loses the other holders of a
    shared socket, and skipping processes by uid loses a daemon that binds as root and then drops
    privileges (its accepted sockets keep the listener's uid).  The readlink system calls are
    about 80% of the pass's CPU; on Linux 6.2+ the fd numbers are probed from the kernel's open-fd
    count instead of listing each directory (about 35% cheaper), and tcp_state_facts overlaps the
    pass with its socket dump (start_scan).

    wanted: a set of socket inodes, or ALL_SOCKETS for every socket fd.
    pids: only these processes (default: every process).
    Each process lists a socket once, however many of its fds refer to it.
    Processes whose fds cannot be listed (another user's, without root) are
    counted in one warning; processes that exit during the pass are skipped.
    """
    warnings = warnings if warnings is not None else []
    if not wanted:
        return {}
    if pids is None:
        pids = _all_pids(proc)
    held, denied = _walk(proc, pids, _counts_fds(proc))
    _denied_warning(denied, warnings)
    return _wanted_only(held, wanted)


class _ScanLater:
    """A pass made when its result is asked for (few fds, or no process could be started)."""

    def __init__(self, proc):
        self.proc = proc

    def result(self, wanted, warnings=None):
        return scan_socket_fds(wanted, self.proc, warnings)

    def close(self):
        pass


_RECORD = struct.Struct("=iI")  # pid (-1 ends the stream: then the count is the denied processes), inode count
# at most this many walkers: the pass overlaps the dump on a second CPU; more would only crowd a busy host
WALKERS = 2
WALKER_NICENESS = 10


def _walk_records(proc, pids, counts_fds):
    """One walker's pass (in a forked child) as one message of records: (pid, count) and the inodes of each
    process, then (-1, denied processes)."""
    # below the caller and the host's own work: the dump beside it runs at full speed on one CPU and
    # the walkers take what is left (measured through Ansible at 300k sockets: the run's best 2.81 s
    # against 3.14 s at the caller's priority)
    os.nice(WALKER_NICENESS)
    held, denied = _walk(proc, pids, counts_fds)
    chunks = []
    for pid, inodes in held.items():
        chunks.append(_RECORD.pack(pid, len(inodes)))
        chunks.append(array.array("Q", inodes).tobytes())
    chunks.append(_RECORD.pack(-1, denied))
    yield b"".join(chunks)


def _decode_records(data):
    """({pid: set of inodes}, denied) from a walker's records, or None when they are cut short."""
    held, offset = {}, 0
    while offset + _RECORD.size <= len(data):
        pid, count = _RECORD.unpack_from(data, offset)
        offset += _RECORD.size
        if pid == -1:
            return (held, count) if offset == len(data) else None
        end = offset + 8 * count
        if end > len(data):
            return None
        inodes = array.array("Q")
        inodes.frombytes(data[offset:end])
        held[pid] = set(inodes)
        offset = end
    return None


class _ScanBeside:
    """A pass made by forked walkers while the caller dumps sockets; result() collects it.

    When a walker fails, result() makes the whole pass in the caller's process instead.
    """

    def __init__(self, proc, shares, counts_fds):
        self.proc, self.walkers = proc, []
        try:
            for pids in shares:
                self.walkers.append(_forked.ForkedCall(_walk_records, proc, pids, counts_fds))
        except BaseException:
            self.close()
            raise

    def result(self, wanted, warnings=None):
        warnings = warnings if warnings is not None else []
        held, denied, failed = {}, 0, False
        for walker in self.walkers:
            messages, ended_well = walker.finish()
            decoded = _decode_records(b"".join(messages)) if ended_well else None
            if decoded is None:
                failed = True
                continue
            held.update(decoded[0])
            denied += decoded[1]
        if failed:
            return scan_socket_fds(wanted, self.proc, warnings)
        _denied_warning(denied, warnings)
        return _wanted_only(held, wanted) if wanted else {}

    def close(self):
        for walker in self.walkers:
            walker.close()


def _shares(sized, count):
    """`count` lists of pids with about equal fd counts (largest processes first, each to the lightest list)."""
    shares = [[] for _share in range(count)]
    loads = [0] * count
    for fds, pid in sorted(sized, reverse=True):
        lightest = loads.index(min(loads))
        shares[lightest].append(pid)
        loads[lightest] += fds + 1
    return [share for share in shares if share]


def start_scan(proc=PROC):
    """Start the host's /proc/*/fd pass; `.result(wanted, warnings)` gives scan_socket_fds' answer.

    On a host with many fds (OVERLAP_MIN_FDS, counted from the kernel's per-process fd counts of
    Linux 6.2+) and more than one CPU, WALKERS forked children make the pass while the caller
    dumps the sockets, so the pass, which is mostly readlink system calls (about 7 us per fd),
    overlaps the dump instead of following it.  Otherwise, or where the counts are unknown, no
    process is started and the pass is made when its result is asked for.  Call `.close()` in a
    finally.  Processes started after this call are not read: they did not hold the dumped
    sockets' fds when the dump began.
    """
    counts_fds = _counts_fds(proc)
    if not counts_fds or not _forked.can_fork():
        return _ScanLater(proc)
    sized = []
    for pid in _all_pids(proc):
        try:
            fds = os.stat(os.path.join(proc, str(pid), "fd")).st_size
        except OSError:
            fds = 0  # gone, or another user's: the pass counts it
        sized.append((fds, pid))
    if sum(fds for fds, _pid in sized) < OVERLAP_MIN_FDS:
        return _ScanLater(proc)
    try:
        return _ScanBeside(proc, _shares(sized, WALKERS), counts_fds)
    except OSError:
        return _ScanLater(proc)  # no process could be started (EAGAIN, ENOMEM)


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
