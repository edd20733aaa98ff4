"""Scenario processes: run inside a lab namespace, make real TCP states, report them, hold them.

Started by the lab as ``ip netns exec <ns> python -m netstate_lab.scenario --kind K ...``.
The process makes the sockets, checks them against /proc/net/tcp of its own namespace,
writes a JSON report (atomically: temp file + rename) and then holds the sockets until
SIGTERM/SIGINT or until ``--hold`` seconds have passed. Every loop is bounded in count
and by an overall deadline.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import json
import os
import resource
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
IP_BIND_ADDRESS_NO_PORT = 24
TIOCOUTQ = 0x5411

# /proc/net/tcp state numbers
TCP_STATES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}

KINDS = (
    "time_wait_churn",
    "close_wait_leak",
    "fin_wait1_zero_window",
    "fin_wait2_orphans",
    "listen_overflow",
    "syn_recv",
    "established",
    "mix",
    "churn_client",
    "churn_server_close",
    "conntrack",
)

DEFAULT_COUNTS = {
    "time_wait_churn": 100,
    "close_wait_leak": 50,
    "fin_wait1_zero_window": 10,
    "fin_wait2_orphans": 50,
    "listen_overflow": 16,
    "syn_recv": 20,
    "established": 50,
    "mix": 300000,
    "churn_client": 200,
    "churn_server_close": 200,
    "conntrack": 20,
}

COMMS = {
    "time_wait_churn": "nsl-tw-churn",
    "close_wait_leak": "leaky-proxy",
    "fin_wait1_zero_window": "nsl-zero-window",
    "fin_wait2_orphans": "nsl-fw2-orphans",
    "listen_overflow": "nsl-slow-accept",
    "syn_recv": "nsl-syn-recv",
    "established": "nsl-established",
    "mix": "nsl-mix",
    "churn_client": "nsl-churner",
    "churn_server_close": "nsl-srv-closer",
    "conntrack": "nsl-conntrack",
}
# The other side of a churn scenario (a separate process, so attribution can tell them apart).
CHURN_PEER_COMMS = {"churn_client": "nsl-churn-srv", "churn_server_close": "nsl-churn-cli"}

# Seconds the kernel keeps a state by itself with default sysctls (TIME_WAIT is fixed at 60 s).
STATE_TTL = {
    "TIME_WAIT": 60,
    "FIN_WAIT2": "net.ipv4.tcp_fin_timeout (orphans only)",
    "SYN_RECV": 60,
    "SYN_SENT": 120,
    "FIN_WAIT1": 180,
}

SERVER_ADDR = "127.0.0.1"
# explicit client ports 20000..31999 per source address: below the default ephemeral range (32768-60999),
# so a client port never equals another scenario's listening port
PORTS_PER_SOURCE = 12000
FIRST_CLIENT_PORT = 20000

_libc = ctypes.CDLL(None, use_errno=True)


class ScenarioFailed(Exception):
    """The scenario could not make or verify its states."""


def set_comm(name):
    """Set this thread's comm; bytes go to the kernel as they are (it keeps the first 15, even mid-character)."""
    raw = name if isinstance(name, bytes) else name.encode()[:15]
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(raw), 0, 0, 0)


def read_comm():
    """This process's comm as the kernel keeps it (bytes, without the newline)."""
    with open("/proc/self/comm", "rb") as f:
        return f.read().rstrip(b"\n")


def set_pdeathsig(sig=signal.SIGTERM):
    _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)


class Deadline:
    def __init__(self, seconds):
        self.end = time.monotonic() + seconds

    def left(self):
        return max(0.0, self.end - time.monotonic())

    def check(self, what):
        if time.monotonic() > self.end:
            raise ScenarioFailed(f"timed out while {what}")


def nofile_ceiling():
    """The most open files one process can get: raises the hard limit to fs.nr_open when allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open", encoding="ascii") as f:
            nr_open = int(f.read())
    except OSError:
        nr_open = hard
    if hard < nr_open:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, nr_open))
            hard = nr_open
        except (ValueError, OSError):
            pass  # no CAP_SYS_RESOURCE: stay below the inherited hard limit
    return hard


def raise_nofile(need):
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return
    ceiling = nofile_ceiling()
    if ceiling < need:
        raise ScenarioFailed(
            f"needs {need} open files but the RLIMIT_NOFILE hard limit is {ceiling} and cannot be raised; "
            "use a smaller count (mix spreads its sockets over more workers by itself)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (need, ceiling))


def read_sysctl(name):
    with open("/proc/sys/" + name.replace(".", "/"), encoding="ascii") as f:
        return f.read().strip()


def write_sysctl(name, value):
    with open("/proc/sys/" + name.replace(".", "/"), "w", encoding="ascii") as f:
        f.write(str(value))


def netstat_counter(name, section="TcpExt"):
    with open("/proc/net/netstat", encoding="ascii") as f:
        lines = f.read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        keys = head.split()
        if keys[0] != section + ":":
            continue
        return int(dict(zip(keys[1:], vals.split()[1:]))[name])
    raise ScenarioFailed(f"{section}.{name} not found in /proc/net/netstat")


def proc_tcp(ports):
    """Count states of the sockets whose local or remote port is in ``ports`` (IPv4 /proc/net/tcp).

    Returns (counts by state name, send-queue bytes by state name, timer codes by state name).
    """
    counts, sendq, timers = {}, {}, {}
    ports = set(ports)
    with open("/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            lport = int(fields[1][-4:], 16)
            rport = int(fields[2][-4:], 16)
            if lport not in ports and rport not in ports:
                continue
            state = TCP_STATES[int(fields[3], 16)]
            counts[state] = counts.get(state, 0) + 1
            tx = int(fields[4].split(":")[0], 16)
            sendq[state] = sendq.get(state, 0) + tx
            tr = int(fields[5].split(":")[0], 16)
            per = timers.setdefault(state, {})
            per[tr] = per.get(tr, 0) + 1
    return counts, sendq, timers


def wait_for_counts(ports, expected, deadline, exact=True, settle=10.0):
    """Poll /proc/net/tcp until the counts match ``expected``; raise with both when they never do."""
    end = min(time.monotonic() + settle, deadline.end)
    while True:
        counts, _sendq, _timers = proc_tcp(ports)
        seen = {state: counts.get(state, 0) for state in expected}
        if exact and seen == expected:
            return counts
        if not exact and all(seen[s] >= n for s, n in expected.items()):
            return counts
        if time.monotonic() > end:
            raise ScenarioFailed(f"states never reached: expected {expected}, /proc/net/tcp shows {counts}")
        time.sleep(0.05)


class Sources:
    """Client (address, port) pairs bound explicitly, each used once per scenario.

    Explicit binds keep the kernel from reusing a TIME_WAIT 4-tuple (tcp_tw_reuse=2 on loopback)
    and spread large counts over many 127/8 addresses so no port range runs out.
    """

    def __init__(self, block):
        self.block = block  # second octet of the client addresses, per scenario/worker
        self.index = 0

    def next(self):
        while True:
            i = self.index
            self.index += 1
            n_addr, port = divmod(i, PORTS_PER_SOURCE)
            if n_addr >= 250 * 250:
                raise ScenarioFailed("ran out of client addresses")
            addr = f"127.{self.block}.{n_addr // 250}.{n_addr % 250 + 1}"
            return addr, FIRST_CLIENT_PORT + port


def client_socket(sources, sndbuf=None, attempts=200000):
    """A TCP socket bound to a fresh (address, port) of ``sources``; skips pairs that are in use.

    Another scenario in the same namespace may hold (address, port) pairs of the same block (TIME_WAIT
    included): those binds fail with EADDRINUSE and are skipped (bounded by ``attempts``).
    """
    for _attempt in range(attempts):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if sndbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        try:
            s.bind(sources.next())
        except OSError as exc:
            s.close()
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        return s
    raise ScenarioFailed(f"no free client address/port after {attempts} attempts")


def listener(port=0, backlog=4096, rcvbuf=None):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        s.bind((SERVER_ADDR, port))
    except OSError as exc:
        s.close()
        raise ScenarioFailed(f"cannot listen on {SERVER_ADDR}:{port}: {exc.strerror}") from None
    s.listen(backlog)
    return s


def make_pairs(lsock, sources, count, deadline, what):
    """``count`` connected (client, server) pairs through ``lsock``; bounded by count and deadline."""
    pairs = []
    dst = lsock.getsockname()
    for i in range(count):
        if i % 256 == 0:
            deadline.check(what)
        c = client_socket(sources)
        c.connect(dst)
        srv, _peer = lsock.accept()
        pairs.append((c, srv))
    return pairs


def connected_pairs(args, deadline):
    """A listener on ``args.port`` and ``args.count`` connected (client, server) pairs through it.

    Returns (listener, its port, pairs); the fd limit is raised to hold them.
    """
    raise_nofile(2 * args.count + 256)
    lsock = listener(args.port)
    port = lsock.getsockname()[1]
    return lsock, port, make_pairs(lsock, Sources(args.block), args.count, deadline, "connecting")


def churn_time_wait(lsock, sources, count, deadline):
    """``count`` short connections, each closed by the client first: the client side ends in TIME_WAIT."""
    dst = lsock.getsockname()
    for i in range(count):
        if i % 256 == 0:
            deadline.check("making TIME_WAIT connections")
        c = client_socket(sources)
        c.connect(dst)
        srv, _peer = lsock.accept()
        c.close()  # active close: FIN_WAIT1 -> FIN_WAIT2
        srv.close()  # passive close: LAST_ACK -> CLOSED; the client goes TIME_WAIT


def ensure_tw_buckets(need):
    """Raise this namespace's net.ipv4.tcp_max_tw_buckets when ``need`` TIME_WAIT would not fit."""
    current = int(read_sysctl("net.ipv4.tcp_max_tw_buckets"))
    if current >= need:
        return {}
    new = need + 10000
    write_sysctl("net.ipv4.tcp_max_tw_buckets", new)
    return {"net.ipv4.tcp_max_tw_buckets": {"from": current, "to": new}}


# --------------------------------------------------------------------------- scenarios
# Each returns (report dict, hold-state object kept alive until the process exits, cleanup callable or None).


def sc_time_wait_churn(args, deadline):
    count = args.count
    changed = ensure_tw_buckets(count + 1000)
    lsock = listener(args.port)
    port = lsock.getsockname()[1]
    churn_time_wait(lsock, Sources(args.block), count, deadline)
    expected = {"TIME_WAIT": count, "LISTEN": 1}
    observed = wait_for_counts([port], expected, deadline)
    report = {
        "ports": {"server": [port]},
        "expected": expected,
        "observed": observed,
        "sysctls_changed": changed,
        "ttl_seconds": {"TIME_WAIT": 60},
        "notes": "TIME_WAIT is on the client side (active closer); the kernel removes it after 60 s",
    }
    return report, [lsock], None


def sc_close_wait_leak(args, deadline):
    count = args.count
    lsock, port, pairs = connected_pairs(args, deadline)
    for c, _srv in pairs:
        c.shutdown(socket.SHUT_WR)  # the client sends FIN and keeps its fd: FIN_WAIT2, not an orphan
    # the peer is its own process (comm nsl-cw-client); the proxy keeps the accepted sockets
    child = os.fork()
    if child == 0:
        try:
            set_pdeathsig(signal.SIGKILL)
            set_comm("nsl-cw-client")
            lsock.close()
            for _c, srv in pairs:
                srv.close()
            hold([c for c, _srv in pairs], args.hold)
        finally:
            os._exit(0)
    for c, _srv in pairs:
        c.close()
    expected = {"CLOSE_WAIT": count, "FIN_WAIT2": count, "LISTEN": 1}
    observed = wait_for_counts([port], expected, deadline)
    report = {
        "ports": {"server": [port]},
        "expected": expected,
        "observed": observed,
        "pids": {"server": os.getpid(), "client": child},
        "owners": {"CLOSE_WAIT": os.getpid(), "FIN_WAIT2": child, "LISTEN": os.getpid()},
        "notes": "leaky-proxy never closes accepted sockets after the peer's FIN; the client (nsl-cw-client) "
        "shut down its sending side and keeps its fds, so FIN_WAIT2 does not time out",
    }
    return report, [lsock, [s for _c, s in pairs]], [child]


def sc_fin_wait1_zero_window(args, deadline):
    count = args.count
    raise_nofile(2 * count + 256)
    lsock = listener(args.port, rcvbuf=args.rcvbuf)
    port = lsock.getsockname()[1]
    sources = Sources(args.block)
    receivers, per_socket = [], []
    dst = lsock.getsockname()
    chunk = b"x" * 65536
    for i in range(count):
        deadline.check(f"filling send queue {i}")
        c = client_socket(sources, sndbuf=args.sndbuf)
        c.connect(dst)
        srv, _peer = lsock.accept()
        receivers.append(srv)  # never read
        c.setblocking(False)
        written = 0
        quiet = 0
        # write until the queue stays full: EAGAIN several times in a row (bounded)
        for _attempt in range(10000):
            deadline.check("filling send queue")
            try:
                written += c.send(chunk)
                quiet = 0
            except BlockingIOError:
                quiet += 1
                if quiet >= 5:
                    break
                time.sleep(0.01)
        else:
            raise ScenarioFailed("send queue never filled")
        outq = struct.unpack("i", fcntl.ioctl(c.fileno(), TIOCOUTQ, b"\0\0\0\0"))[0]
        per_socket.append({"written": written, "unacked_or_unsent": outq})
        c.close()  # FIN queued behind the unsent bytes: FIN_WAIT1, orphaned
    expected = {"FIN_WAIT1": count, "ESTABLISHED": count, "LISTEN": 1}
    observed = wait_for_counts([port], expected, deadline)
    # Send-Q settles once the receiver has ACKed what fits in its window; the FIN takes one sequence
    # number, so Send-Q = unsent/unacked bytes + 1. Wait until two reads agree (bounded).
    last = None
    for _attempt in range(100):
        deadline.check("waiting for FIN_WAIT1 send queues to settle")
        counts, sendq, timers = proc_tcp([port])
        now = (counts.get("FIN_WAIT1", 0), sendq.get("FIN_WAIT1", 0), timers.get("FIN_WAIT1", {}).get(4, 0))
        if now == last and now[0] == count and now[2] == count:
            break
        last = now
        time.sleep(0.3)
    else:
        raise ScenarioFailed(f"FIN_WAIT1 sockets never settled with a persist timer: (count, Send-Q, persist) {last}")
    send_bytes = sendq.get("FIN_WAIT1", 0)
    if send_bytes <= count:
        raise ScenarioFailed(f"FIN_WAIT1 sockets hold no unsent data (Send-Q {send_bytes})")
    persist = timers.get("FIN_WAIT1", {}).get(4, 0)
    report = {
        "ports": {"server": [port]},
        "expected": expected,
        "observed": observed,
        "send_bytes": {"FIN_WAIT1": send_bytes},
        "per_socket": per_socket,
        "timers": {"FIN_WAIT1": {"persist": persist}},
        "rcvbuf": args.rcvbuf,
        "sndbuf": args.sndbuf,
        "notes": "receivers (ESTABLISHED, this pid) never read; senders closed with unsent data and a zero "
        "window: orphaned FIN_WAIT1 with the persist (zero window probe) timer; Send-Q includes the FIN",
    }
    return report, [lsock, receivers], None


def sc_fin_wait2_orphans(args, deadline):
    count = args.count
    lsock, port, pairs = connected_pairs(args, deadline)
    for c, _srv in pairs:
        c.close()  # client closes its fd: orphaned FIN_WAIT2 once the server ACKs the FIN
    expected = {"FIN_WAIT2": count, "CLOSE_WAIT": count, "LISTEN": 1}
    observed = wait_for_counts([port], expected, deadline)
    report = {
        "ports": {"server": [port]},
        "expected": expected,
        "observed": observed,
        "ttl_seconds": {"FIN_WAIT2": int(read_sysctl("net.ipv4.tcp_fin_timeout"))},
        "notes": "client fds are closed (orphans); the server never reads nor closes (CLOSE_WAIT held by this "
        "pid); orphaned FIN_WAIT2 lasts net.ipv4.tcp_fin_timeout",
    }
    return report, [lsock, [s for _c, s in pairs]], None


def sc_listen_overflow(args, deadline):
    backlog = args.backlog
    extra = args.count
    raise_nofile(2 * (backlog + extra) + 256)
    before = netstat_counter("ListenOverflows")
    lsock = listener(args.port, backlog=backlog)
    port = lsock.getsockname()[1]
    sources = Sources(args.block)
    clients = []
    queued = backlog + 1  # the kernel queues backlog + 1 before it is full
    for _attempt in range(queued):
        c = client_socket(sources)
        c.connect(lsock.getsockname())
        clients.append(c)
    for i in range(extra):
        if i % 64 == 0:
            deadline.check("overflowing the accept queue")
        c = client_socket(sources)
        c.setblocking(False)
        err = c.connect_ex(lsock.getsockname())
        if err not in (0, errno.EINPROGRESS):
            raise ScenarioFailed(f"connect failed: {os.strerror(err)}")
        clients.append(c)
    expected = {"LISTEN": 1, "ESTABLISHED": 2 * queued, "SYN_SENT": extra}
    observed = wait_for_counts([port], expected, deadline)
    end = time.monotonic() + 5
    after = netstat_counter("ListenOverflows")
    while after - before < extra and time.monotonic() < end:
        time.sleep(0.05)
        after = netstat_counter("ListenOverflows")
    if after - before < extra:
        raise ScenarioFailed(f"ListenOverflows grew by {after - before}, expected at least {extra}")
    report = {
        "ports": {"server": [port]},
        "expected": expected,
        "observed": observed,
        "backlog": backlog,
        "accept_queue": queued,
        "connects": queued + extra,
        "listen_overflows": {"before": before, "after": after, "min_delta": extra},
        "ttl_seconds": {"SYN_SENT": 127},
        "notes": "LISTEN Recv-Q = accept queue (backlog + 1), Send-Q = backlog; dropped SYNs leave the clients in "
        "SYN_SENT and grow TcpExt ListenOverflows with every retransmission",
    }
    return report, [lsock, clients], None


def nft_input_table(nft, table, rule, priority=0):
    """Add nftables table ``inet <table>`` with one input-hook rule in this namespace; returns its cleanup."""
    rules = (
        f"table inet {table} {{\n chain input {{\n  type filter hook input priority {priority}; policy accept;\n"
        f"  {rule}\n }}\n}}\n"
    )
    res = subprocess.run([nft, "-f", "-"], input=rules, text=True, capture_output=True, timeout=30, check=False)
    if res.returncode:
        raise ScenarioFailed(f"nft failed: {res.stderr.strip()}")

    def cleanup():
        subprocess.run([nft, "delete", "table", "inet", table], capture_output=True, timeout=30, check=False)

    return cleanup


def sc_syn_recv(args, deadline):
    count = args.count
    if not args.nft:
        raise ScenarioFailed("syn_recv needs nft (nftables) to drop the final ACK; nft was not found")
    somaxconn = int(read_sysctl("net.core.somaxconn"))
    if count >= somaxconn:
        raise ScenarioFailed(f"syn_recv count {count} must be below net.core.somaxconn ({somaxconn})")
    raise_nofile(count + 256)
    lsock = listener(args.port, backlog=min(somaxconn, count + 64))
    port = lsock.getsockname()[1]
    table = f"nsl_synrecv_{os.getpid()}"
    rule = f"ip daddr {SERVER_ADDR} tcp dport {port} tcp flags & (syn | ack | fin | rst) == ack drop"
    cleanup = nft_input_table(args.nft, table, rule, priority=-10)
    try:
        sources = Sources(args.block)
        clients = []
        for i in range(count):
            if i % 64 == 0:
                deadline.check("opening half-open connections")
            c = client_socket(sources)
            c.settimeout(5)
            c.connect(lsock.getsockname())  # completes on the client; the server never sees the ACK
            clients.append(c)
        expected = {"SYN_RECV": count, "ESTABLISHED": count, "LISTEN": 1}
        observed = wait_for_counts([port], expected, deadline)
    except BaseException:
        cleanup()
        raise
    report = {
        "ports": {"server": [port]},
        "expected": expected,
        "observed": observed,
        "nft_table": f"inet {table}",
        "ttl_seconds": {"SYN_RECV": 60},
        "notes": "request sockets: the kernel state is NEW_SYN_RECV, sock_diag and ss report them as SYN_RECV; "
        "the clients are ESTABLISHED; they vanish after net.ipv4.tcp_synack_retries (about 60 s)",
    }
    return report, [lsock, clients], cleanup


def sc_established(args, deadline):
    count = args.count
    lsock, port, pairs = connected_pairs(args, deadline)
    expected = {"ESTABLISHED": 2 * count, "LISTEN": 1}
    observed = wait_for_counts([port], expected, deadline)
    report = {"ports": {"server": [port]}, "expected": expected, "observed": observed}
    return report, [lsock, pairs], None


def read_child_line(fd, deadline):
    """One line a child process writes on pipe `fd` (b"" if it died first), or None at the deadline."""
    buf = b""
    while not buf.endswith(b"\n"):
        if deadline.left() <= 0:
            return None
        ready, _w, _x = select.select([fd], [], [], min(1.0, deadline.left()))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
    return buf


def proc_conntrack(port, path="/proc/net/nf_conntrack"):
    """{TCP conntrack state: entries} of this namespace's table whose original destination port is ``port``.

    None when the kernel has no /proc/net/nf_conntrack (CONFIG_NF_CONNTRACK_PROCFS off).
    """
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    counts = {}
    for line in lines:
        fields = line.split()
        # "ipv4 2 tcp 6 <ttl> <STATE> src=.. dst=.. sport=.. dport=.. ...": the first dport is the original's
        if len(fields) < 6 or fields[2] != "tcp":
            continue
        dport = next((f for f in fields if f.startswith("dport=")), None)
        if dport == f"dport={port}":
            counts[fields[5]] = counts.get(fields[5], 0) + 1
    return counts


def sc_conntrack(args, deadline):
    """N ESTABLISHED, N TIME_WAIT and N CLOSE_WAIT connections that nf_conntrack tracks in this namespace.

    nf_conntrack tracks a namespace's packets only once a rule there uses it: an nftables
    ``ct state`` rule (which accepts everything) registers the conntrack hooks.
    """
    count = args.count
    if not args.nft:
        raise ScenarioFailed("conntrack needs nft (nftables) for a ct state rule; nft was not found")
    changed = ensure_tw_buckets(count + 1000)
    raise_nofile(6 * count + 256)
    table = f"nsl_ct_{os.getpid()}"
    cleanup = nft_input_table(args.nft, table, "ct state established,related,new counter accept")
    try:
        lsock = listener(args.port)
        port = lsock.getsockname()[1]
        sources = Sources(args.block)
        established = make_pairs(lsock, sources, count, deadline, "connecting")
        churn_time_wait(lsock, sources, count, deadline)
        half_closed = make_pairs(lsock, sources, count, deadline, "connecting")
        for c, _srv in half_closed:
            c.shutdown(socket.SHUT_WR)  # FIN from the client, ACKed by the server: CLOSE_WAIT on both sides
        expected = {"ESTABLISHED": 2 * count, "TIME_WAIT": count, "CLOSE_WAIT": count, "FIN_WAIT2": count, "LISTEN": 1}
        observed = wait_for_counts([port], expected, deadline)
        expected_ct = {"ESTABLISHED": count, "TIME_WAIT": count, "CLOSE_WAIT": count}
        end = min(time.monotonic() + 10, deadline.end)
        observed_ct = proc_conntrack(port)
        while observed_ct is not None and observed_ct != expected_ct and time.monotonic() < end:
            time.sleep(0.05)
            observed_ct = proc_conntrack(port)
        if observed_ct is not None and observed_ct != expected_ct:
            raise ScenarioFailed(f"conntrack states never reached: expected {expected_ct}, table shows {observed_ct}")
    except BaseException:
        cleanup()
        raise
    report = {
        "ports": {"server": [port]},
        "expected": expected,
        "observed": observed,
        "expected_conntrack": expected_ct,
        "observed_conntrack": observed_ct,
        "nft_table": f"inet {table}",
        "sysctls_changed": changed,
        "ttl_seconds": {"TIME_WAIT": 60, "conntrack TIME_WAIT": 120, "conntrack CLOSE_WAIT": 60},
        "notes": "conntrack entries (one per connection): ESTABLISHED for the idle pairs, TIME_WAIT for the churned "
        "ones, CLOSE_WAIT for the half-closed ones; the kernel expires conntrack CLOSE_WAIT after "
        "nf_conntrack_tcp_timeout_close_wait (60 s) and TIME_WAIT after ..._time_wait (120 s)",
    }
    return report, [lsock, established, half_closed], cleanup


def mix_plan(total, workers):
    """Split ``total`` sockets: 50% ESTABLISHED, 4% each CLOSE_WAIT/FIN_WAIT2, the rest (~42%) TIME_WAIT.

    Each worker adds 2 LISTEN sockets on top.
    """
    est_pairs = total // 4
    cw = total // 25
    tw = total - 2 * est_pairs - 2 * cw
    per = []
    for w in range(workers):

        def share(n, w=w):
            return n // workers + (1 if w < n % workers else 0)

        per.append({"established_pairs": share(est_pairs), "time_wait": share(tw), "close_wait": share(cw)})
    return per


def mix_worker(args, w, plan, deadline, ready_w):
    """One mix worker (a forked child): makes its share, reports on ``ready_w``, holds."""
    set_pdeathsig(signal.SIGKILL)
    set_comm(f"nsl-mix-w{w}")
    result = {"ok": False}
    keep = []
    try:
        raise_nofile(2 * (plan["established_pairs"] + plan["close_wait"]) + 1024)
        base = args.port + 2 * w if args.port else 0
        l_est = listener(base)
        l_cw = listener(base + 1 if args.port else 0)
        sources = Sources(10 + (args.block - 10 + w) % 240)
        pairs = make_pairs(l_est, sources, plan["established_pairs"], deadline, "mix: connecting pairs")
        churn_time_wait(l_est, sources, plan["time_wait"], deadline)
        cw_pairs = make_pairs(l_cw, sources, plan["close_wait"], deadline, "mix: close_wait pairs")
        for c, _s in cw_pairs:
            c.shutdown(socket.SHUT_WR)
        keep = [l_est, l_cw, pairs, cw_pairs]
        result = {"ok": True, "ports": [l_est.getsockname()[1], l_cw.getsockname()[1]], "pid": os.getpid()}
    except Exception as exc:  # reported to the parent, which fails the scenario with it
        result = {"ok": False, "error": f"worker {w}: {type(exc).__name__}: {exc}"}
    os.write(ready_w, (json.dumps(result) + "\n").encode())
    os.close(ready_w)
    if result["ok"]:
        hold(keep, args.hold + args.timeout)  # the main process stops the workers when its own hold ends


def sc_mix(args, deadline):
    # a worker holds 2 fds per ESTABLISHED pair and per CLOSE_WAIT/FIN_WAIT2 pair: use enough workers
    # that each stays under the open-files ceiling (the hard limit may not be raisable)
    per_worker_fds = max(1024, min(nofile_ceiling(), 500000) - 1024)
    plan1 = mix_plan(args.count, 1)[0]
    fds = 2 * (plan1["established_pairs"] + plan1["close_wait"])
    workers = max(1, args.workers, -(-fds // per_worker_fds))
    if workers > 64:
        raise ScenarioFailed(f"mix of {args.count} sockets needs {workers} workers (over 64); raise RLIMIT_NOFILE")
    plans = mix_plan(args.count, workers)
    tw_total = sum(p["time_wait"] for p in plans)
    changed = ensure_tw_buckets(tw_total + 20000)
    children, pipes = [], []
    for w, plan in enumerate(plans):
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                mix_worker(args, w, plan, deadline, wfd)
            finally:
                os._exit(0)
        os.close(wfd)
        children.append(pid)
        pipes.append(r)
    results = []
    for r in pipes:
        buf = read_child_line(r, deadline)
        if buf is None:
            raise ScenarioFailed("timed out waiting for mix workers")
        os.close(r)
        results.append(json.loads(buf) if buf.strip() else {"ok": False, "error": "worker died"})
    bad = [x["error"] for x in results if not x.get("ok")]
    if bad:
        stop_pids(children)
        raise ScenarioFailed("; ".join(bad))
    ports = [p for x in results for p in x["ports"]]
    est = sum(p["established_pairs"] for p in plans)
    cw = sum(p["close_wait"] for p in plans)
    expected = {
        "ESTABLISHED": 2 * est,
        "TIME_WAIT": tw_total,
        "CLOSE_WAIT": cw,
        "FIN_WAIT2": cw,
        "LISTEN": 2 * workers,
    }
    observed = wait_for_counts(ports, expected, deadline, settle=30)
    report = {
        "ports": {"server": ports},
        "expected": expected,
        "observed": observed,
        "total": sum(expected.values()),
        "workers": [{"pid": x["pid"], **plan} for x, plan in zip(results, plans)],
        "pids": {"main": os.getpid(), "workers": children},
        "sysctls_changed": changed,
        "ttl_seconds": {"TIME_WAIT": 60},
    }
    return report, [], children


# --------------------------------------------------------------------------- churn
# A churn scenario reports ready at once, then (after --delay seconds, so a tracer can start first)
# makes --count short connections at --rate per second, bounded by count and by --timeout, and
# rewrites its report with what it did under "done". The side that closes first is the scenario's
# own process; the other side is a child with its own comm.


def stop_requested():
    """A stop signal is pending (they are blocked in scenario processes until hold() takes them)."""
    return bool(signal.sigpending() & set(_STOP_SIGNALS))


def churn_serve(lsock, count, server_closes, deadline):
    """Accept `count` connections; close each at once (server closes first) or after the client's FIN."""
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ)
    accepted = closed = 0
    while closed < count and deadline.left() > 0 and not stop_requested():
        for key, _mask in sel.select(timeout=min(0.2, deadline.left())):
            if key.fileobj is lsock:
                while accepted < count:
                    try:
                        conn, _peer = lsock.accept()
                    except BlockingIOError:
                        break
                    accepted += 1
                    if server_closes:
                        conn.close()  # active close by the server: TIME_WAIT on the listening port
                        closed += 1
                    else:
                        conn.setblocking(False)
                        sel.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(conn)
                conn.close()  # passive close after the client's FIN: CLOSE_WAIT -> LAST_ACK
                closed += 1
    sel.close()
    return {"accepted": accepted, "closed": closed}


def churn_connect(dst, sources, count, rate, *, client_closes, deadline):
    """`count` connections at `rate` per second; the client closes first, or after the server's FIN."""
    started = time.monotonic()
    made = 0
    for i in range(count):
        wait = started + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(min(wait, deadline.left()))
        if deadline.left() <= 0 or (i % 64 == 0 and stop_requested()):
            break
        c = client_socket(sources)
        c.connect(dst)
        if not client_closes:
            c.settimeout(max(0.1, deadline.left()))
            try:
                c.recv(1)  # the server's FIN: b""
            except OSError:
                pass
        c.close()
        made += 1
    elapsed = time.monotonic() - started
    return {"connections": made, "seconds": round(elapsed, 3), "rate": round(made / elapsed, 1) if elapsed else 0.0}


def _churn_child(kind, role, go_r, done_w):
    """The peer side of a churn scenario, in a forked child: waits for go, runs `role`, reports on a pipe."""
    set_pdeathsig(signal.SIGKILL)
    set_comm(CHURN_PEER_COMMS[kind])
    os.read(go_r, 1)
    try:
        result = role()
    except Exception as exc:  # reported to the parent, which records it in the report
        result = {"error": f"{type(exc).__name__}: {exc}"}
    os.write(done_w, (json.dumps(result) + "\n").encode())


def sc_churn(args, deadline, client_closes):
    kind = args.kind
    if not 0 < args.rate <= 100000:
        raise ScenarioFailed(f"--rate must be between 1 and 100000 per second, got {args.rate}")
    changed = ensure_tw_buckets(args.count + 1000)
    lsock = listener(args.port)
    port = lsock.getsockname()[1]
    dst = lsock.getsockname()
    sources = Sources(args.block)
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()

    def child_role():
        if client_closes:
            return churn_serve(lsock, args.count, False, Deadline(args.timeout))
        return churn_connect(dst, sources, args.count, args.rate, client_closes=False, deadline=Deadline(args.timeout))

    child = os.fork()
    if child == 0:
        try:
            _churn_child(kind, child_role, go_r, done_w)
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(done_w)

    def run():
        if args.delay > 0 and signal.sigtimedwait(_STOP_SIGNALS, args.delay) is not None:
            return {"stopped": True, "connections": 0}  # stopped before the churn began
        started_at = time.time()
        os.write(go_w, b"g")
        churn_deadline = Deadline(args.timeout)
        if client_closes:
            own = churn_connect(dst, sources, args.count, args.rate, client_closes=True, deadline=churn_deadline)
        else:
            own = churn_serve(lsock, args.count, True, churn_deadline)
        peer = {"error": "peer process gave no result"}
        buf = read_child_line(done_r, churn_deadline)
        if buf and buf.strip():
            peer = json.loads(buf)
        client = own if client_closes else peer
        return {
            "started_at": started_at,
            "ended_at": time.time(),
            "connections": client.get("connections", 0),
            "seconds": client.get("seconds", 0.0),
            "rate": client.get("rate", 0.0),
            "closer": own,
            "peer": peer,
        }

    closer = "client" if client_closes else "server"
    report = {
        "ports": {"server": [port]},
        "expected": {"LISTEN": 1},
        "observed": {"LISTEN": 1},
        "churn": {
            "count": args.count,
            "rate": args.rate,
            "delay": args.delay,
            "closer": closer,
            "closer_pid": os.getpid(),
            "closer_comm": COMMS[kind],
            "peer_pid": child,
            "peer_comm": CHURN_PEER_COMMS[kind],
        },
        "pids": {"main": os.getpid(), "peer": child},
        "sysctls_changed": changed,
        "ttl_seconds": {"TIME_WAIT": 60},
        "notes": f"the {closer} ({COMMS[kind]}, this pid) closes first and its side ends in TIME_WAIT; "
        f"{CHURN_PEER_COMMS[kind]} (pid {child}) is the other side; report['done'] appears when the churn ended",
    }
    AFTER_READY[os.getpid()] = run
    return report, [lsock], [child]


def sc_churn_client(args, deadline):
    return sc_churn(args, deadline, client_closes=True)


def sc_churn_server_close(args, deadline):
    return sc_churn(args, deadline, client_closes=False)


# Work a scenario does after its report says ready (pid -> callable returning the "done" report entry).
AFTER_READY = {}


SCENARIOS = {
    "time_wait_churn": sc_time_wait_churn,
    "close_wait_leak": sc_close_wait_leak,
    "fin_wait1_zero_window": sc_fin_wait1_zero_window,
    "fin_wait2_orphans": sc_fin_wait2_orphans,
    "listen_overflow": sc_listen_overflow,
    "syn_recv": sc_syn_recv,
    "established": sc_established,
    "mix": sc_mix,
    "churn_client": sc_churn_client,
    "churn_server_close": sc_churn_server_close,
    "conntrack": sc_conntrack,
}

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def hold(_keep, seconds):
    """Keep ``_keep`` (sockets) alive until a stop signal or ``seconds`` pass."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return "hold time over"
        if signal.sigtimedwait(_STOP_SIGNALS, min(left, 60.0)) is not None:
            return "signal"


def stop_pids(pids):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    end = time.monotonic() + 5
    for pid in pids:
        while time.monotonic() < end:
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.02)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def write_json(path, data):
    """Write ``data`` as JSON to ``path`` atomically (temp file + rename): readers never see a partial file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="netstate_lab.scenario")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--count", type=int)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--report", required=True)
    p.add_argument("--hold", type=float, default=1800.0)
    p.add_argument("--timeout", type=float, default=120.0, help="overall deadline to make the states")
    p.add_argument("--block", type=int, default=0, help="second octet of client addresses, 10-249 (0: from pid)")
    p.add_argument("--backlog", type=int, default=4)
    p.add_argument("--rcvbuf", type=int, default=4096)
    p.add_argument("--sndbuf", type=int, default=65536)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--nft", default="")
    p.add_argument("--pdeathsig", action="store_true")
    p.add_argument("--rate", type=int, default=100, help="churn: connections per second")
    p.add_argument("--delay", type=float, default=0.0, help="churn: seconds between ready and the first connection")
    p.add_argument("--comm", help="process name instead of the kind's own (raw bytes of the argument, any length)")
    args = p.parse_args(argv)
    if args.count is None:
        args.count = DEFAULT_COUNTS[args.kind]
    if args.count < 0 or args.count > 2000000:
        p.error("--count must be between 0 and 2000000")
    if not args.block:
        args.block = 10 + os.getpid() % 200
    if not 10 <= args.block <= 249:
        p.error("--block must be between 10 and 249")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.pdeathsig:
        set_pdeathsig(signal.SIGTERM)
    set_comm(os.fsencode(args.comm) if args.comm else COMMS[args.kind])
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    deadline = Deadline(args.timeout)
    started = time.monotonic()
    children, cleanup = [], None
    try:
        report, keep, extra = SCENARIOS[args.kind](args, deadline)
        if callable(extra):
            cleanup = extra
        elif extra:
            children = list(extra)
    except (ScenarioFailed, OSError) as exc:
        write_json(args.report, {"kind": args.kind, "error": str(exc), "pid": os.getpid()})
        print(f"netstate_lab.scenario {args.kind}: {exc}", file=sys.stderr)
        return 3
    pids = report.pop("pids", None)
    report.update(
        {
            "kind": args.kind,
            "pid": os.getpid(),
            "comm": args.comm or COMMS[args.kind],
            # what /proc/<pid>/comm holds: the first 15 bytes, cut possibly inside a character
            "kernel_comm_hex": read_comm().hex(),
            "count": args.count,
            "client_block": f"127.{args.block}.0.0/16",
            "hold_seconds": args.hold,
            "ready_seconds": round(time.monotonic() - started, 3),
            "created_at": time.time(),
        }
    )
    report["pids"] = pids or {"main": os.getpid()}
    try:
        write_json(args.report, report)
        after = AFTER_READY.pop(os.getpid(), None)
        if after is not None:
            report["done"] = after()
            write_json(args.report, report)
        hold(keep, args.hold)
    finally:
        if cleanup:
            cleanup()
        if children:
            stop_pids(children)
    return 0


if __name__ == "__main__":
    sys.exit(main())
