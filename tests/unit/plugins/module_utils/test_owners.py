# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_owners on a /proc tree recorded while the lab's close_wait_leak scenario ran.

The expected owner is the scenario's own report (fixtures/reports/close_wait_leak.json),
the inodes come from collect_sockets' dump of the same namespace (fixtures/sockets).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.netstate.tcp.plugins.module_utils import _owners as co

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
RECORDED = os.path.join(FIXTURES, "proc", "netns_close_wait_leak")


def materialize_proc(recorded, target):
    """The recorded tree with each <pid>/fd.json turned back into fd/ symlinks (socket:[inode])."""
    shutil.copytree(recorded, target)
    for entry in os.listdir(target):
        links_path = os.path.join(target, entry, "fd.json")
        if os.path.exists(links_path):
            with open(links_path) as handle:
                links = json.load(handle)
            os.makedirs(os.path.join(target, entry, "fd"))
            for fd, link in links.items():
                os.symlink(link, os.path.join(target, entry, "fd", fd))
    return target


@pytest.fixture(scope="module")
def proc(tmp_path_factory):
    return materialize_proc(RECORDED, str(tmp_path_factory.mktemp("proc") / "tree"))


def load(*parts):
    with open(os.path.join(FIXTURES, *parts)) as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def report():
    return load("reports", "close_wait_leak.json")


@pytest.fixture(scope="module")
def sockets():
    return load("sockets", "close_wait_leak_2.json")


def test_close_wait_owner_is_the_scenario_process(report, sockets, proc):
    owner_inodes = sockets["_owner_inodes"]
    listener_inodes = [item["inode"] for item in sockets["listeners"]]
    warnings = []
    owners, listener_owner = co.find_owners(owner_inodes, listener_inodes, top=10, proc=proc, warnings=warnings)
    assert warnings == []
    (leaker,) = owners["CLOSE_WAIT"]
    assert leaker["pid"] == report["owners"]["CLOSE_WAIT"]
    assert leaker["comm"] == report["comm"] == "leaky-proxy"
    assert leaker["sockets"] == report["observed"]["CLOSE_WAIT"] == sockets["states"]["CLOSE_WAIT"]
    assert leaker["user"] == "root"
    assert "--kind close_wait_leak " in leaker["cmdline"]
    # The scenario's listener belongs to it too (server port from its report).
    port = report["ports"]["server"][0]
    inode = next(item["inode"] for item in sockets["listeners"] if item["local"].endswith(f":{port}"))
    assert listener_owner[inode] == {"pid": report["owners"]["LISTEN"], "comm": "leaky-proxy"}


def test_only_wanted_inodes_count(report, sockets, proc):
    # The FIN_WAIT2 client holds sockets too, but nobody asked for FIN_WAIT2.
    owners, listener_owner = co.find_owners({"CLOSE_WAIT": sockets["_owner_inodes"]["CLOSE_WAIT"][:5]}, proc=proc)
    assert [(item["pid"], item["sockets"]) for item in owners["CLOSE_WAIT"]] == [(report["pid"], 5)]
    assert listener_owner == {}
    client = str(report["pids"]["client"])
    with open(os.path.join(RECORDED, client, "fd.json")) as handle:
        client_inodes = {int(link[8:-1]) for link in json.load(handle).values()}
    assert len(client_inodes) >= report["observed"]["FIN_WAIT2"]
    owners, _listeners = co.find_owners({"FIN_WAIT2": sorted(client_inodes)}, proc=proc)
    assert owners["FIN_WAIT2"][0]["pid"] == report["pids"]["client"]


def test_no_wanted_sockets_means_no_scan(tmp_path):
    missing = str(tmp_path / "not-a-proc")
    assert co.find_owners({"CLOSE_WAIT": [], "TIME_WAIT": [0, 0]}, [0], proc=missing) == (
        {"CLOSE_WAIT": [], "TIME_WAIT": []},
        {},
    )
    assert co.scan_socket_fds(set(), proc=missing) == {}


def test_top_limits_and_orders_owners(tmp_path):
    for pid, count in ((10, 1), (11, 3), (12, 2)):
        fd_dir = tmp_path / str(pid) / "fd"
        fd_dir.mkdir(parents=True)
        (tmp_path / str(pid) / "comm").write_text(f"p{pid}\n")
        for fd in range(count):
            os.symlink(f"socket:[{pid * 100 + fd}]", fd_dir / str(fd))
    wanted = {"CLOSE_WAIT": [pid * 100 + fd for pid in (10, 11, 12) for fd in range(3)]}
    owners, _listeners = co.find_owners(wanted, top=2, proc=str(tmp_path))
    assert [(item["pid"], item["comm"], item["sockets"]) for item in owners["CLOSE_WAIT"]] == [
        (11, "p11", 3),
        (12, "p12", 2),
    ]


def test_a_socket_of_this_process_is_found_in_the_real_proc():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        inode = os.fstat(sock.fileno()).st_ino
        owners, listener_owner = co.find_owners({"LISTEN": [inode]}, [inode])
    with open(f"/proc/{os.getpid()}/comm") as handle:
        comm = handle.read().strip()
    assert listener_owner[inode] == {"pid": os.getpid(), "comm": comm}
    assert [(item["pid"], item["sockets"]) for item in owners["LISTEN"]] == [(os.getpid(), 1)]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/system.slice/docker-" + "a" * 64 + ".scope", "a" * 64),
        ("/docker/" + "b" * 64, "b" * 64),
        ("/kubepods.slice/kubepods-burstable.slice/cri-containerd-" + "c" * 64 + ".scope", "c" * 64),
        ("/kubepods.slice/crio-" + "d" * 64 + ".scope", "d" * 64),
        ("/machine.slice/libpod-" + "e" * 64 + ".scope/container", "e" * 64),
        ("/kubepods/besteffort/pod1234/" + "f" * 64, "f" * 64),
        ("/system.slice/nginx.service", None),
        ("/user.slice/user-1000.slice/session-2.scope", None),
        ("/", None),
        (None, None),
    ],
)
def test_container_id(path, expected):
    assert co.container_id(path) == expected


def test_cgroup_prefers_v2_then_systemd(report):
    with open(os.path.join(RECORDED, str(report["pid"]), "cgroup")) as handle:
        recorded = handle.read()
    v2 = next(line.split(":", 2)[2] for line in recorded.splitlines() if line.startswith("0::"))
    assert co.parse_cgroup(recorded) == v2
    assert co.parse_cgroup("4:memory:/a\n1:name=systemd:/b\n") == "/b"
    assert co.parse_cgroup("4:memory:/a\n") == "/a"
    assert co.parse_cgroup("garbage") is None


def test_cmdline_is_truncated_and_printable():
    assert co.parse_cmdline(b"a\0b\0") == "a b"
    long = co.parse_cmdline(b"x" * 500, limit=50)
    assert len(long) == 50
    assert long.endswith("...")
    assert co.parse_cmdline(b"-c\0print(1)\nexit()\0") == "-c print(1) exit()"


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_proc_text_parsers_never_raise(text):
    assert co.parse_cgroup(text) is None or isinstance(co.parse_cgroup(text), str)
    assert co.parse_status_uid(text) is None or co.parse_status_uid(text) >= 0
    assert isinstance(co.parse_cmdline(text.encode("utf-8", "surrogatepass")), str)
    assert co.container_id(text) is None or len(co.container_id(text)) == 64


def test_odd_fd_links_are_skipped(tmp_path):
    fd_dir = tmp_path / "7" / "fd"
    fd_dir.mkdir(parents=True)
    for fd, link in enumerate(("socket:[]", "socket:[12x]", "pipe:[5]", "anon_inode:[eventpoll]", "socket:[42]")):
        os.symlink(link, fd_dir / str(fd))
    assert co.scan_socket_fds({42, 5}, proc=str(tmp_path)) == {7: [42]}


# ---- process names: the kernel keeps 15 bytes, not 15 characters ----------------------------
# 10 characters, 26 UTF-8 bytes: the kernel's 15 bytes end after the first byte of "プ"
MULTIBYTE = "ab日本語のプロセス"


def test_comm_key_cuts_at_15_bytes_inside_a_character():
    key = co.comm_key(MULTIBYTE)
    assert key == MULTIBYTE.encode()[:15] and len(key) == 15
    assert co.comm_key(key) == key  # what the kernel shows matches itself
    assert co.comm_key("données-collecteur") == "données-collecteur".encode()[:15]
    assert co.display_comm(key) == "ab日本語の\ufffd"


def _proc_with_comm(tmp_path, pid, raw):
    (tmp_path / str(pid)).mkdir()
    (tmp_path / str(pid) / "comm").write_bytes(raw + b"\n")


def test_comm_is_read_as_bytes_and_matched_like_the_kernel(tmp_path):
    kernel_cut = MULTIBYTE.encode()[:15]
    _proc_with_comm(tmp_path, 10, kernel_cut)
    _proc_with_comm(tmp_path, 11, b"nginx")
    _proc_with_comm(tmp_path, 12, b"bad\xff\xfename")
    (tmp_path / "self").mkdir()
    proc = str(tmp_path)
    assert co.read_comm_bytes(10, proc) == kernel_cut
    assert co.read_comm(10, proc) == co.display_comm(kernel_cut)
    assert co.read_comm(12, proc) == "bad\ufffd\ufffdname"
    assert co.read_comm_bytes(99, proc) is None
    # the full name and the kernel's cut name both find the process
    assert co.pids_by_comm([MULTIBYTE], proc) == {10: kernel_cut}
    # as the output shows it (U+FFFD for the cut character) it matches too; 14 bytes are another name
    assert co.pids_by_comm([co.display_comm(kernel_cut)], proc) == {10: kernel_cut}
    assert co.pids_by_comm([co.display_comm(kernel_cut).rstrip("\ufffd")], proc) == {}
    assert co.pids_by_comm(["nginx", "bad\ufffd\ufffdname"], proc) == {11: b"nginx", 12: b"bad\xff\xfename"}
    assert co.process_info(10, proc)["comm"] == co.display_comm(kernel_cut)


def test_scan_of_chosen_pids_lists_every_socket(tmp_path):
    for pid, links in ((7, ("socket:[42]", "pipe:[5]", "socket:[43]")), (8, ("socket:[44]",))):
        fd_dir = tmp_path / str(pid) / "fd"
        fd_dir.mkdir(parents=True)
        for fd, link in enumerate(links):
            os.symlink(link, fd_dir / str(fd))
    held = co.scan_socket_fds(co.ALL_SOCKETS, proc=str(tmp_path), pids=[7, 99])
    assert {pid: sorted(inodes) for pid, inodes in held.items()} == {7: [42, 43]}


# ---- the fd pass on the real /proc: probing by the kernel's fd count, and walkers beside the dump --------
needs_fd_count = pytest.mark.skipif(
    not co._kernel_counts_fds(), reason="the kernel reports no open-fd count for /proc/<pid>/fd (Linux < 6.2)"
)


@pytest.mark.parametrize(
    ("release", "expected"),
    [
        ("6.2.0", True),
        ("6.18.44-fc-v782", True),
        ("7.0", True),
        ("6.1.0-13-amd64", False),
        ("5.15.0", False),
        ("4.19", False),
        ("", False),
        ("x6.2", False),
    ],
)
def test_kernel_fd_count_starts_at_6_2(release, expected):
    assert co._kernel_counts_fds(release) is expected


def _own_socket_inodes_by_listing():
    """This process's socket inodes, read the plain way (every name listdir gives)."""
    found = set()
    base = f"/proc/{os.getpid()}/fd"
    for name in os.listdir(base):
        try:
            link = os.readlink(os.path.join(base, name))
        except OSError:
            continue
        if link.startswith("socket:["):
            found.add(int(link[8:-1]))
    return found


@needs_fd_count
def test_probing_finds_every_socket_of_a_sparse_fd_table():
    # a hole (one closed fd among the sockets) and a socket whose only fd sits far above
    # PROBE_MISSES absent numbers (the probe then lists the directory for the rest)
    socks = [socket.socket() for _number in range(6)]
    socks[2].close()
    lone = socket.socket()
    far = os.dup2(lone.fileno(), co.PROBE_MISSES * 3)
    lone_inode = os.fstat(far).st_ino
    lone.close()
    try:
        dir_fd = os.open(f"/proc/{os.getpid()}/fd", os.O_RDONLY | os.O_DIRECTORY)
        try:
            probed = co._socket_inodes(dir_fd, os.fstat(dir_fd).st_size)
            listed = co._socket_inodes(dir_fd, 0)
        finally:
            os.close(dir_fd)
        assert probed == listed == _own_socket_inodes_by_listing()
        assert lone_inode in probed
        assert {os.fstat(s.fileno()).st_ino for s in socks if s.fileno() >= 0} <= probed
    finally:
        os.close(far)
        for sock in socks:
            sock.close()


def test_socket_links_are_read_strictly():
    assert co._link_socket_inodes([b"socket:[42]"]) == {42}
    bad = (b"socket:[]", b"socket:[12x]", b"socket:[42", b"pipe:[5]", b"/tmp/socket:[1]", b"socket:[-1]")
    for link in bad:
        assert co._link_socket_inodes([link]) == set()
        # nor when it sits between good links (the links are read joined)
        assert co._link_socket_inodes([b"socket:[7]", link, b"socket:[8]"]) == {7, 8}


def test_walker_records_cut_short_are_refused():
    good = co._RECORD.pack(7, 2) + co.array.array("Q", [42, 43]).tobytes() + co._RECORD.pack(-1, 3)
    assert co._decode_records(good) == ({7: {42, 43}}, 3)
    for data in (good[:-1], good[: co._RECORD.size + 8], b"", good + b"\0"):
        assert co._decode_records(data) is None


@pytest.fixture
def own_listeners():
    """The inodes of three listening sockets of this process (closed afterwards)."""
    socks = []
    try:
        for _number in range(3):
            sock = socket.socket()
            socks.append(sock)
            sock.bind(("127.0.0.1", 0))
            sock.listen(1)
        yield {os.fstat(sock.fileno()).st_ino for sock in socks}
    finally:
        for sock in socks:
            sock.close()


def _children_of_this_process():
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as handle:
            return handle.read().split()
    except OSError:
        return None


@needs_fd_count
def test_walkers_beside_the_dump_give_the_pass_in_process_answer(monkeypatch, own_listeners):
    monkeypatch.setattr(co, "OVERLAP_MIN_FDS", 0)  # this host has too few fds to start walkers by itself
    scan = co.start_scan()
    try:
        assert isinstance(scan, co._ScanBeside) and 1 <= len(scan.walkers) <= co.WALKERS
        held = scan.result(own_listeners | {1}, [])
    finally:
        scan.close()
    assert held == co.scan_socket_fds(own_listeners | {1}) == {os.getpid(): sorted(own_listeners)}
    assert _children_of_this_process() in (None, [])  # every walker reaped


@needs_fd_count
def test_a_walker_that_dies_leaves_the_pass_to_the_caller(monkeypatch, own_listeners):
    monkeypatch.setattr(co, "OVERLAP_MIN_FDS", 0)
    scan = co.start_scan()
    try:
        os.kill(scan.walkers[0].pid, signal.SIGKILL)
        held = scan.result(own_listeners, [])
    finally:
        scan.close()
    assert held == {os.getpid(): sorted(own_listeners)}


@needs_fd_count
def test_walkers_are_ended_when_the_dump_fails(monkeypatch):
    monkeypatch.setattr(co, "OVERLAP_MIN_FDS", 0)
    scan = co.start_scan()
    pids = [walker.pid for walker in scan.walkers]
    scan.close()  # what gather_facts' finally does when the dump raised
    scan.close()  # twice is harmless
    assert pids and all(walker.pid is None for walker in scan.walkers)
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def test_few_fds_or_a_fake_proc_start_no_process(tmp_path, monkeypatch):
    # a recorded tree has no kernel fd counts: its pass is made when asked, in this process
    assert isinstance(co.start_scan(proc=str(tmp_path)), co._ScanLater)
    monkeypatch.setattr(co, "OVERLAP_MIN_FDS", 10**12)
    scan = co.start_scan()
    assert isinstance(scan, co._ScanLater)
    with socket.socket() as sock:
        inode = os.fstat(sock.fileno()).st_ino
        assert scan.result({inode}) == {os.getpid(): [inode]}


@needs_fd_count
def test_walkers_run_below_the_caller(monkeypatch):
    # the niceness each walker's pass runs at, sent back in place of a pid
    monkeypatch.setattr(co, "OVERLAP_MIN_FDS", 0)
    monkeypatch.setattr(co, "_walk", lambda proc, pids, counts_fds: ({os.getpriority(os.PRIO_PROCESS, 0): {1}}, 0))
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    scan = co.start_scan()
    try:
        held = scan.result(co.ALL_SOCKETS, [])
    finally:
        scan.close()
    assert set(held) == {min(ours + co.WALKER_NICENESS, 19)}
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours
