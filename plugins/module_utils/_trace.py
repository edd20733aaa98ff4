# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Who makes the churn: TCP state changes traced through tracefs (stdlib only).

Every TCP state change passes the ``sock:inet_sock_set_state`` tracepoint (Linux >= 4.16).
A trace session works in a private tracefs instance ``instances/netstate-<pid>-<random>``
(never the global buffer nor another tool's instance) with an in-kernel filter that copies
out only the transitions counted here, a bounded per-CPU buffer and ``record-tgid``. The
instance's ``trace_pipe`` is read without blocking while the session runs; the instance is
removed on every exit path, and the next session sweeps leftovers whose owner pid is gone.

Only events raised in process context are attributed to a process: in softirq or hardirq
context the current task is whatever happened to run (bcc#834, datadog-agent#28500); those
events count toward the session's totals only.

collect_churn(seconds) runs one session and returns a ChurnTrace (or raises TraceUnavailable
with the reason); ChurnTrace.for_namespace(inode, name, top) gives the ``churn`` fact of one
network namespace.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import os
import re
import secrets
import select
import signal
import time

from ansible_collections.netstate.tcp.plugins.module_utils import _netlink, _owners
from ansible_collections.netstate.tcp.plugins.module_utils._facts import MAX_TRACE_SECONDS as MAX_SECONDS

PROC = "/proc"
TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
MOUNT_POINT = "/sys/kernel/tracing"
EVENT = "sock/inet_sock_set_state"
INSTANCE_PREFIX = "netstate-"
_INSTANCE_NAME = re.compile(r"^netstate-(\d+)-[0-9a-f]+$")

# Ring buffer per CPU: the kernel allocates it for every CPU, so the total is bounded too.
BUFFER_TOTAL_KB = 32768
BUFFER_KB_MIN = 256
BUFFER_KB_MAX = 2048
READ_PERIOD = 0.05  # seconds between pipe drains: batches reads without letting the buffer fill
READ_CHUNK = 65536
FEED_BYTES = 1 << 20  # text parsed at once: repeated lines of a churner are counted together
FINAL_DRAIN_SECONDS = 2.0  # bound on the final read after the event is disabled
# Memory bounds of the aggregation: distinct processes, distinct peers per process.
MAX_PROCESSES = 1024
MAX_PEERS_PER_PROCESS = 64
MAX_TOP_PEERS = 5

# Trace options that decide the text of a line, as the parser expects it (record-tgid adds the tgid column,
# irq-info the flags, context-info the task/cpu/timestamp columns; raw, hex, bin and latency-format change
# the layout).
OUTPUT_OPTIONS = (
    ("record-tgid", "1"),
    ("context-info", "1"),
    ("irq-info", "1"),
    ("raw", "0"),
    ("hex", "0"),
    ("bin", "0"),
    ("latency-format", "0"),
)

# The kernel's names in trace lines (show_tcp_state_name): TCP_ and the one state table of _netlink.
TCP_STATE_NUMBERS = {"TCP_" + name: number for name, number in _netlink.STATE_NUMBERS.items()}
IPPROTO_TCP = 6

# The transitions copied out of the kernel, (oldstate, newstate) -> what they count.
# connect() moves CLOSE -> SYN_SENT and close()/shutdown() ESTABLISHED -> FIN_WAIT1 (active close)
# or CLOSE_WAIT -> LAST_ACK (passive close), all in the calling task. ESTABLISHED -> CLOSE_WAIT is
# raised where the peer's FIN is received: usually softirq, i.e. in an arbitrary task.
_ST = _netlink.STATE_NUMBERS
TRANSITIONS = {
    (_ST["CLOSE"], _ST["SYN_SENT"]): "connects",
    (_ST["ESTABLISHED"], _ST["FIN_WAIT1"]): "active_closes",
    (_ST["CLOSE_WAIT"], _ST["LAST_ACK"]): "passive_closes",
    (_ST["ESTABLISHED"], _ST["CLOSE_WAIT"]): "peer_closes",
}
KINDS = ("connects", "active_closes", "passive_closes", "peer_closes")
EVENT_FILTER = (
    f"protocol == {IPPROTO_TCP} && ("
    + " || ".join(f"(oldstate == {old} && newstate == {new})" for old, new in TRANSITIONS)
    + ")"
)

# /proc/<pid>/ns/pid of the initial PID namespace: a fixed inode (PROC_PID_INIT_INO, include/linux/proc_ns.h).
INIT_PID_NS_INODE = 0xEFFFFFFC

# mount(2), unshare(2) constants (include/uapi/linux/sched.h, include/uapi/linux/mount.h)
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

# One trace line (Documentation/trace/ftrace.rst, "Output format"), with or without record-tgid:
#   <comm>-<pid> [(<tgid>)] [<cpu>] <flags> <timestamp>: inet_sock_set_state: <fields of the print fmt>
# comm (at most 15 bytes, TASK_COMM_LEN) may hold spaces, dashes, brackets: the lazy comm stops at the
# first "-<pid>" after which the kernel's own columns match up to the end of the line. `family=`
# arrived after 4.16. Used per line and, in MULTILINE mode, over whole chunks of trace_pipe (the
# regex engine walks the text; Python sees only the matches).
_LINE = re.compile(
    rb"^ *(.*?)-(\d+) +(?:\( *(\d+|-+)\) +)?\[(\d+)\] +(\S+) +\d+\.\d+: inet_sock_set_state: "
    rb"(?:family=(AF_INET6?) )?protocol=(\w+) sport=\d+ dport=(\d+) saddr=\S+ daddr=(\S+) saddrv6=\S+ "
    rb"daddrv6=(\S+) oldstate=(\w+) newstate=(\w+) *$",
    re.MULTILINE,
)
# The groups an event is made of (comm and cpu are not: the process is read from /proc).
_EVENT_GROUPS = (2, 3, 5, 6, 7, 8, 9, 10, 11, 12)
_STATE_NAME = {number: name.encode() for name, number in TCP_STATE_NUMBERS.items()}
_KIND_OF = {(_STATE_NAME[old], _STATE_NAME[new]): kind for (old, new), kind in TRANSITIONS.items()}
# The hardirq/softirq column of the flags (irq-info): '.' means process context;
# 'h'/'H' hardirq, 's' softirq, 'z'/'Z' NMI (Documentation/trace/ftrace.rst).
IRQ_COLUMN = 2
INTERRUPT_MARKS = frozenset(b"hHszZ")
_ADDRESS_CACHE_MAX = 65536
_address_cache = {}


class TraceUnavailable(Exception):
    """Tracing is not possible here; the message says why."""


class TraceInterrupted(Exception):
    """A stop signal arrived during the session (the instance is removed before it propagates)."""

    def __init__(self, signum):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


def _address(raw):
    """Text of a raw address field (IPv4 or IPv6, v4-mapped IPv6 shown as IPv4); None when malformed."""
    text = _address_cache.get(raw)
    if text is not None or raw in _address_cache:
        return text
    try:
        addr = ipaddress.ip_address(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        text = None
    else:
        mapped = getattr(addr, "ipv4_mapped", None)
        text = str(mapped if mapped is not None else addr)
    if len(_address_cache) >= _ADDRESS_CACHE_MAX:
        _address_cache.clear()
    _address_cache[raw] = text
    return text


def _event(fields):
    """The event of a line's _EVENT_GROUPS, or None when a field is out of range."""
    pid, tgid, flags, family, protocol, dport, daddr, daddrv6, old, new = fields
    kind = _KIND_OF.get((old, new))
    if kind is None or protocol not in (b"IPPROTO_TCP", b"6"):
        return None
    port = int(dport)
    if port > 65535:
        return None
    # Linux 4.16-4.19 print no family; a v4 socket's v6 fields are v4-mapped there, so daddrv6 serves
    peer = _address(daddr if family == b"AF_INET" else daddrv6)
    if peer is None:
        return None
    return {
        "kind": kind,
        "pid": int(pid),
        "tgid": int(tgid) if tgid is not None and tgid.isdigit() else None,
        "interrupt": len(flags) > IRQ_COLUMN and flags[IRQ_COLUMN] in INTERRUPT_MARKS,
        "peer": (peer, port),
    }


def parse_event_line(line):
    """One trace line (bytes) -> event dict, or None when it is not a well-formed event of ours.

    The event: {kind, pid, tgid (None when not recorded), interrupt (bool), peer: (address, port),
    comm (bytes), cpu}. Lines of other kinds (lost-event markers, headers, garbage) give None;
    nothing here raises on malformed text.
    """
    match = _LINE.fullmatch(line.rstrip(b"\n"))
    if match is None:
        return None
    event = _event(match.group(*_EVENT_GROUPS))
    if event is not None:
        event["comm"] = match.group(1)
        event["cpu"] = int(match.group(4))
    return event


def parse_cpu_stats(text):
    """Events lost on one CPU from per_cpu/cpuN/stats: overrun (overwritten), dropped, and the
    `entries` still in the buffer (read after the event is disabled: events nobody read)."""
    lost = 0
    for line in (text or "").splitlines():
        key, _sep, value = line.partition(":")
        if key.strip() in ("entries", "overrun", "dropped events") and value.strip().isdigit():
            lost += int(value.strip())
    return lost


def _read_tgid(pid, proc=PROC):
    try:
        with open(os.path.join(proc, str(pid), "status"), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("Tgid:"):
                    value = line.split()[1:2]
                    return int(value[0]) if value and value[0].isdigit() else None
    except OSError:
        return None
    return None


def identify_process(tgid, proc=PROC):
    """{netns, info} of a live process, else None (it exited before the tracer saw it)."""
    try:
        netns = os.stat(os.path.join(proc, str(tgid), "ns", "net")).st_ino
    except OSError:
        return None
    info = _owners.process_info(tgid, proc)
    if info.get("comm") is None:
        return None
    return {"netns": netns, "info": info}


class ChurnAggregate:
    """Counts of traced events: session totals, and per process (bounded) for process context.

    `identify(tgid)` returns {netns, info} for a live process or None; it is called once per
    distinct process, when its first event is seen (short-lived processes are caught while they live).
    """

    def __init__(self, identify=identify_process, max_processes=MAX_PROCESSES, max_peers=MAX_PEERS_PER_PROCESS):
        self.identify = identify
        self.max_processes = max_processes
        self.max_peers = max_peers
        self.events = 0
        self.interrupt_events = 0
        self.unresolved_events = 0  # process context, but the process was gone before it was seen
        self.untracked_events = 0  # process context, but over the process cap
        self.totals = dict.fromkeys(KINDS, 0)
        self.processes = {}  # tgid -> {netns, info, counts, peers: {(addr, port): [connects, active_closes]}}
        self._unknown = set()  # tgids that could not be identified (bounded like processes)

    def add(self, event, times=1):
        """Count `event` (seen `times` times)."""
        self.events += times
        kind = event["kind"]
        self.totals[kind] += times
        if event["interrupt"]:
            self.interrupt_events += times
            return
        tgid = event["tgid"]
        if tgid is None:
            tgid = _read_tgid(event["pid"]) or event["pid"]
        entry = self.processes.get(tgid)
        if entry is None:
            if tgid in self._unknown:
                self.unresolved_events += times
                return
            if len(self.processes) + len(self._unknown) >= self.max_processes:
                self.untracked_events += times
                return
            found = self.identify(tgid)
            if found is None:
                self._unknown.add(tgid)
                self.unresolved_events += times
                return
            entry = {"netns": found["netns"], "info": found["info"], "counts": dict.fromkeys(KINDS, 0), "peers": {}}
            self.processes[tgid] = entry
        entry["counts"][kind] += times
        if kind not in ("connects", "active_closes"):
            return
        peers = entry["peers"]
        counts = peers.get(event["peer"])
        if counts is None:
            if len(peers) >= self.max_peers:
                return
            counts = peers[event["peer"]] = [0, 0]
        counts[0 if kind == "connects" else 1] += times

    def feed(self, data, pending=b""):
        """Count the complete lines of `data` (bytes) after `pending`; returns the incomplete tail.

        Identical lines (same task, context, peer and transition) are counted together: a churner
        repeats itself, so the Python work is per distinct line of a chunk, not per event.
        """
        data = pending + data
        cut = data.rfind(b"\n") + 1
        batch = {}
        for match in _LINE.finditer(data, 0, cut):
            key = match.group(*_EVENT_GROUPS)
            batch[key] = batch.get(key, 0) + 1
        for key, times in batch.items():
            event = _event(key)
            if event is not None:
                self.add(event, times)
        tail = data[cut:]
        # A line longer than a page is not a trace line: drop it rather than grow without bound.
        return tail if len(tail) <= 4096 else b""


class ChurnTrace:
    """The result of one session: counts per process, split by network namespace on request."""

    def __init__(self, aggregate, seconds, lost_events):
        self.aggregate = aggregate
        self.seconds = seconds
        self.lost_events = lost_events

    def for_namespace(self, inode, name=None, top=10):
        """The `churn` fact of one network namespace (processes whose /proc/<pid>/ns/net is `inode`)."""
        agg = self.aggregate
        seconds = self.seconds or 0.0

        def per_second(count):
            return round(count / seconds, 2) if seconds > 0 else 0.0

        members = [(tgid, entry) for tgid, entry in agg.processes.items() if entry["netns"] == inode]
        namespace_events = sum(sum(entry["counts"].values()) for _tgid, entry in members)

        def activity(item):
            counts = item[1]["counts"]
            return (-(counts["connects"] + counts["active_closes"] + counts["passive_closes"]), item[0])

        processes = []
        for tgid, entry in sorted(members, key=activity)[: max(0, top)]:
            info, counts = entry["info"], entry["counts"]
            ranked = sorted(entry["peers"].items(), key=lambda item: (-(item[1][0] + item[1][1]), item[0]))
            processes.append(
                {
                    "pid": tgid,
                    "comm": info.get("comm"),
                    "cmdline": info.get("cmdline"),
                    "user": info.get("user"),
                    "container": info.get("container"),
                    "netns": {"inode": inode, "name": name},
                    "connects": counts["connects"],
                    "active_closes": counts["active_closes"],
                    "passive_closes": counts["passive_closes"],
                    "peer_closes": counts["peer_closes"],
                    "connects_per_second": per_second(counts["connects"]),
                    "active_closes_per_second": per_second(counts["active_closes"]),
                    "top_peers": [
                        {"address": addr, "port": port, "count": c + a}
                        for (addr, port), (c, a) in ranked[:MAX_TOP_PEERS]
                    ],
                }
            )
        peers = {}
        for _tgid, entry in members:
            for key, (c, a) in entry["peers"].items():
                total = peers.setdefault(key, [0, 0])
                total[0] += c
                total[1] += a
        ranked = sorted(peers.items(), key=lambda item: (-(item[1][0] + item[1][1]), item[0]))[: max(0, top)]
        return {
            "source": "tracefs",
            "seconds": round(seconds, 3),
            "events": agg.events,
            "lost_events": self.lost_events,
            "interrupt_events": agg.interrupt_events,
            "unresolved_events": agg.unresolved_events + agg.untracked_events,
            "namespace_events": namespace_events,
            "totals": dict(agg.totals),
            "processes": processes,
            "peers": [
                {"address": addr, "port": port, "connects": c, "active_closes": a} for (addr, port), (c, a) in ranked
            ],
        }


def unavailable(seconds, reason):
    """The `churn` fact when tracing is not possible (the caller adds `reason` to the warnings)."""
    return {
        "source": None,
        "seconds": seconds,
        "events": 0,
        "lost_events": 0,
        "interrupt_events": 0,
        "unresolved_events": 0,
        "namespace_events": 0,
        "totals": dict.fromkeys(KINDS, 0),
        "processes": [],
        "peers": [],
        "reason": reason,
    }


# --------------------------------------------------------------------------- tracefs


def _write(path, value):
    with open(path, "w", encoding="ascii") as handle:
        handle.write(value)


def _libc():
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


def _ctypes_error(what):
    code = ctypes.get_errno()
    return OSError(code, f"{what}: {os.strerror(code)}")


def find_tracefs(candidates=TRACEFS_CANDIDATES):
    """The first mounted tracefs among the usual places (a directory with `instances`), else None."""
    for path in candidates:
        if os.path.isdir(os.path.join(path, "instances")):
            return path
    return None


def mount_private_tracefs(mount_point=MOUNT_POINT):
    """Mount tracefs in a private mount namespace of this process: the host's mount table is unchanged.

    unshare(CLONE_NEWNS) gives this process its own copy of the mount table; making it all private
    (mount --make-rprivate /) keeps the new mount from propagating back to the host.
    """
    libc = _libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        raise _ctypes_error("unshare(CLONE_NEWNS)")
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise _ctypes_error("making the private mount namespace rprivate")
    if libc.mount(b"nodev", mount_point.encode(), b"tracefs", 0, None) != 0:
        raise _ctypes_error(f"mount -t tracefs nodev {mount_point}")
    return mount_point


def _lockdown(path="/sys/kernel/security/lockdown"):
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read()
    except OSError:
        return None
    match = re.search(r"\[(\w+)\]", text)
    return match.group(1) if match else None


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers(tracefs, alive=_pid_alive):
    """Remove instances named netstate-<pid>-<random> whose owner pid is gone; returns their names."""
    removed = []
    base = os.path.join(tracefs, "instances")
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        match = _INSTANCE_NAME.match(name)
        if not match or alive(int(match.group(1))):
            continue
        try:
            os.rmdir(os.path.join(base, name))
            removed.append(name)
        except OSError:
            pass  # busy (someone reads it) or already gone: the next sweep tries again
    return removed


def buffer_kb_per_cpu(cpus):
    return max(BUFFER_KB_MIN, min(BUFFER_KB_MAX, BUFFER_TOTAL_KB // max(1, cpus)))


class TraceSession:
    """A private tracefs instance watching inet_sock_set_state; a context manager that always removes it."""

    def __init__(self, tracefs):
        self.tracefs = tracefs
        self.name = f"{INSTANCE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.path = os.path.join(tracefs, "instances", self.name)
        self.pipe = None
        self.created = False

    def __enter__(self):
        try:
            os.mkdir(self.path, 0o700)
        except OSError as err:
            raise TraceUnavailable(f"cannot create tracefs instance {self.path}: {err.strerror or err}") from err
        self.created = True
        try:
            self._configure()
        except BaseException:
            self.close()
            raise
        return self

    def _configure(self):
        event_dir = os.path.join(self.path, "events", EVENT)
        if not os.path.isdir(event_dir):
            raise TraceUnavailable(f"the kernel has no {EVENT.replace('/', ':')} tracepoint (Linux >= 4.16 needed)")
        try:
            # A new instance inherits the global trace options: pin the ones that shape a line
            for option, value in OUTPUT_OPTIONS:
                path = os.path.join(self.path, "options", option)
                if os.path.exists(path):
                    _write(path, value)
            # consumer mode: when the buffer is full new events are dropped (and counted), not overwritten
            _write(os.path.join(self.path, "options", "overwrite"), "0")
            _write(os.path.join(self.path, "buffer_size_kb"), str(buffer_kb_per_cpu(os.cpu_count() or 1)))
            _write(os.path.join(event_dir, "filter"), EVENT_FILTER)
            self.pipe = os.open(os.path.join(self.path, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
            _write(os.path.join(event_dir, "enable"), "1")
        except OSError as err:
            raise TraceUnavailable(f"cannot configure tracefs instance {self.path}: {err.strerror or err}") from err

    def read_until(self, deadline, aggregate, clock=time.monotonic):
        """Drain trace_pipe into `aggregate` until `deadline` (a clock value); returns the partial line."""
        pending = b""
        while True:
            pending = self._drain(aggregate, pending, deadline, clock)
            left = deadline - clock()
            if left <= 0:
                return pending
            # select wakes early when data arrives; the pause keeps reads batched
            select.select([self.pipe], [], [], min(left, READ_PERIOD))
            time.sleep(min(max(0.0, deadline - clock()), READ_PERIOD / 2))

    def _drain(self, aggregate, pending, until, clock=time.monotonic):
        """Read until the pipe is empty or `until` passes (a busy host may fill it as fast as we read).

        trace_pipe gives at most a page per read: chunks are parsed together, up to FEED_BYTES.
        """
        reads = 0
        chunks = []
        size = 0
        while True:
            try:
                data = os.read(self.pipe, READ_CHUNK)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not data:
                break
            chunks.append(data)
            size += len(data)
            if size >= FEED_BYTES:
                pending = aggregate.feed(b"".join(chunks), pending)
                chunks, size = [], 0
            reads += 1
            if reads % 64 == 0 and clock() >= until:
                break
        if chunks:
            pending = aggregate.feed(b"".join(chunks), pending)
        return pending

    def stop(self, aggregate, pending=b"", clock=time.monotonic):
        """Disable the event, read what is left (bounded in time); returns the events lost or left unread."""
        _write(os.path.join(self.path, "events", EVENT, "enable"), "0")
        pending = self._drain(aggregate, pending, clock() + FINAL_DRAIN_SECONDS, clock)
        if pending:
            aggregate.feed(b"\n", pending)
        return self.lost_events()

    def lost_events(self):
        """Sum over CPUs of dropped, overwritten and still unread events (per_cpu/cpuN/stats)."""
        lost = 0
        per_cpu = os.path.join(self.path, "per_cpu")
        try:
            cpus = os.listdir(per_cpu)
        except OSError:
            return None
        for cpu in cpus:
            try:
                with open(os.path.join(per_cpu, cpu, "stats"), encoding="ascii", errors="replace") as handle:
                    lost += parse_cpu_stats(handle.read())
            except OSError:
                continue
        return lost

    def close(self):
        """Remove the instance (rmdir disables its events and frees its buffer)."""
        if self.pipe is not None:
            os.close(self.pipe)
            self.pipe = None
        if not self.created:
            return
        for _attempt in range(50):
            try:
                os.rmdir(self.path)
                self.created = False
                return
            except FileNotFoundError:
                self.created = False
                return
            except OSError as err:
                if err.errno != errno.EBUSY:
                    raise
                time.sleep(0.02)  # a reader still closing: rmdir refuses a busy instance
        os.rmdir(self.path)
        self.created = False

    def __exit__(self, *exc):
        self.close()
        return False


def check_environment(proc=PROC):
    """Raise TraceUnavailable when tracing cannot attribute events here (before anything is changed)."""
    if os.geteuid() != 0:
        raise TraceUnavailable("tracing needs root (tracefs instances are root-only)")
    try:
        pid_ns = os.stat(os.path.join(proc, "self", "ns", "pid")).st_ino
    except OSError as err:
        raise TraceUnavailable(f"cannot read {proc}/self/ns/pid: {err.strerror or err}") from err
    if pid_ns != INIT_PID_NS_INODE:
        raise TraceUnavailable(
            "running inside a container (not the initial PID namespace): the tracepoint reports host pids, "
            "which cannot be mapped to processes here"
        )


def locate_tracefs():
    """A usable tracefs path: an existing mount, else one mounted in a private mount namespace."""
    found = find_tracefs()
    if found:
        return found
    if _lockdown() == "confidentiality":
        raise TraceUnavailable("kernel lockdown (confidentiality) forbids tracefs")
    try:
        return mount_private_tracefs()
    except OSError as err:
        hint = " (kernel lockdown?)" if _lockdown() not in (None, "none") else ""
        raise TraceUnavailable(f"tracefs is not mounted and cannot be mounted privately: {err}{hint}") from err


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def collect_churn(seconds, *, identify=identify_process, warnings=None):
    """Trace TCP state changes for `seconds`; returns a ChurnTrace or raises TraceUnavailable.

    A stop signal during the session removes the instance first and is then re-delivered with the
    handler that was in place before.
    """
    warnings = warnings if warnings is not None else []
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"trace: must be a number of seconds from 0 to {MAX_SECONDS}, got {seconds!r}")
    check_environment()
    tracefs = locate_tracefs()
    for name in sweep_leftovers(tracefs):
        warnings.append(f"trace: removed tracefs instance {name} left by a run that was killed")
    aggregate = ChurnAggregate(identify)
    previous = {}

    def on_signal(signum, _frame):
        raise TraceInterrupted(signum)

    try:
        for signum in _STOP_SIGNALS:
            previous[signum] = signal.signal(signum, on_signal)
    except ValueError:
        pass  # not the main thread: the caller handles signals
    interrupted = None
    try:
        with TraceSession(tracefs) as session:
            started = time.monotonic()
            pending = session.read_until(started + seconds, aggregate)
            elapsed = time.monotonic() - started
            lost = session.stop(aggregate, pending)
    except TraceInterrupted as exc:
        interrupted = exc.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if interrupted is not None:
        os.kill(os.getpid(), interrupted)  # signal.raise_signal is Python 3.8+; modules run on 3.7
        raise TraceUnavailable(f"interrupted by signal {interrupted}")
    if aggregate.unresolved_events:
        warnings.append(
            f"trace: {aggregate.unresolved_events} process-context events came from processes that exited "
            "before they could be identified"
        )
    if aggregate.untracked_events:
        warnings.append(
            f"trace: more than {MAX_PROCESSES} processes; {aggregate.untracked_events} events not attributed"
        )
    if lost:
        warnings.append(f"trace: the kernel dropped {lost} events (buffer full); rates are lower bounds")
    return ChurnTrace(aggregate, elapsed, lost or 0)


def churn_window(seconds, interval, warnings):
    """Wait once for max(seconds, interval), tracing for `seconds` (> 0) of it.

    Returns a function (inode, name, top) -> the `churn` fact of that namespace (source null, and
    one warning saying why, when tracing failed).  Without tracing, _facts waits for the interval
    itself (and never imports this module).
    """
    started = time.monotonic()
    try:
        trace = collect_churn(seconds, warnings=warnings)
    except (TraceUnavailable, OSError) as err:
        reason = str(err)
        warnings.append(f"trace: not possible here, churn.source is null: {reason}")
        trace = None
    rest = interval - (time.monotonic() - started)
    if rest > 0:
        time.sleep(rest)
    if trace is None:
        return lambda _inode, _name, _top: unavailable(seconds, reason)
    return trace.for_namespace
