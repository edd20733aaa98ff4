# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""tcp_state_facts on lab hosts with real sockets.

Facts are gathered inside each namespace with the module_utils the module runs
(`ip netns exec ... python -c`), from the host with the `namespaces` option, as
an unprivileged user with the module's real AnsiballZ payload, and through
Ansible over the lab's ssh. Expected values come from the scenarios' own
reports, ss(8) and /proc read inside and outside the namespaces.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from lab_probes import COLLECTIONS, ROOT, VENV_BIN, facts_over_ansible, gather, gather_all, netstat_counter, ss_rows

from ansible_collections.netstate.tcp.plugins.module_utils import _facts, _owners

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
]


def sockstat_tcp(text):
    line = next(line for line in text.splitlines() if line.startswith("TCP:"))
    words = line.split()[1:]
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


def host_sockstat():
    with open("/proc/net/sockstat") as handle:
        return sockstat_tcp(handle.read())


def netns_sockstat(host):
    return sockstat_tcp(host.run(["cat", "/proc/net/sockstat"], check=True).stdout)


def ss_send_q(host, state):
    return sum(send_q for _rq, send_q, _local, _peer in ss_rows(host, state))


def test_close_wait_leak_owner_is_the_scenario_process(lab):
    host = lab.hosts[0]
    sc = host.start_scenario("close_wait_leak", count=40)
    try:
        facts = gather(host)
        held = host.ss_count("close-wait")
        assert held == sc.report["expected"]["CLOSE_WAIT"] == facts["states"]["CLOSE_WAIT"]
        for state, ss_state in (("FIN_WAIT2", "fin-wait-2"), ("LISTEN", "listening")):
            assert facts["states"][state] == host.ss_count(ss_state), state
        (owner,) = facts["owners"]["CLOSE_WAIT"]
        assert owner["pid"] == sc.report["owners"]["CLOSE_WAIT"] == sc.report["pid"]
        assert owner["comm"] == sc.report["comm"] == "leaky-proxy"
        assert owner["sockets"] == held
        assert owner["user"] == "root"
        assert "close_wait_leak" in owner["cmdline"]
        port = sc.report["ports"]["server"][0]
        (listener,) = [item for item in facts["listeners"] if item["local"].endswith(f":{port}")]
        assert listener["owner"] == {"pid": sc.report["pid"], "comm": "leaky-proxy"}
        assert facts["namespace"] == {"inode": host.netns_inode, "name": host.name, "initial": False}
    finally:
        sc.stop()


def test_owner_walkers_beside_the_dump_name_the_same_owners(lab, monkeypatch):
    """The forked fd walkers (a host with many fds) and the in-process pass give the same owners."""
    if not _owners._kernel_counts_fds() or (os.cpu_count() or 1) < 2:
        pytest.skip("walkers need the kernel's fd counts (Linux 6.2+) and two CPUs")
    host = lab.hosts[0]
    sc = host.start_scenario("close_wait_leak", count=60)
    try:
        options = _facts.normalize_options({"namespaces": [host.name]})
        started = []
        real_start = _owners.start_scan

        def start_scan(*args, **kwargs):
            started.append(real_start(*args, **kwargs))
            return started[-1]

        monkeypatch.setattr(_owners, "start_scan", start_scan)
        monkeypatch.setattr(_owners, "OVERLAP_MIN_FDS", 0)
        beside = _facts.gather_facts(options)["tcp_state_namespaces"][host.name]
        assert [type(scan).__name__ for scan in started] == ["_ScanBeside"]
        monkeypatch.setattr(_owners, "OVERLAP_MIN_FDS", 10**12)
        after = _facts.gather_facts(options)["tcp_state_namespaces"][host.name]
        assert type(started[-1]).__name__ == "_ScanLater"
        (owner,) = beside["owners"]["CLOSE_WAIT"]
        assert (owner["pid"], owner["sockets"]) == (sc.report["pid"], host.ss_count("close-wait"))
        assert beside["owners"] == after["owners"]
        assert [item["owner"] for item in beside["listeners"]] == [item["owner"] for item in after["listeners"]]
        assert any(item["owner"] == {"pid": sc.report["pid"], "comm": "leaky-proxy"} for item in beside["listeners"])
    finally:
        sc.stop()


def test_listen_overflows_grow_on_listen_overflow(lab):
    host = lab.hosts[1]
    before = gather(host, owners=[])["counters"]["ListenOverflows"]
    assert before == netstat_counter(host, "ListenOverflows")
    sc = host.start_scenario("listen_overflow", count=16, backlog=4)
    try:
        facts = gather(host, owners=["listen"])
        after = facts["counters"]["ListenOverflows"]
        assert after > before
        assert sc.report["listen_overflows"]["after"] <= after <= netstat_counter(host, "ListenOverflows")
        port = sc.report["ports"]["server"][0]
        (listener,) = [item for item in facts["listeners"] if item["local"].endswith(f":{port}")]
        assert listener["owner"] == {"pid": sc.report["pid"], "comm": sc.report["comm"]}
        # With an interval the overflows keep growing (the clients retransmit their SYNs).
        facts = gather(host, owners=[], interval=2)
        assert facts["rates"]["ListenOverflows"] >= 0
        assert facts["interval"] >= 2
    finally:
        sc.stop()


def test_sockstat_split_namespace_local_and_host_wide(lab):
    host = lab.hosts[2]
    sc = host.start_scenario("time_wait_churn", count=300)
    try:
        facts = None
        for _attempt in range(10):
            inside_before, outside_before = netns_sockstat(host), host_sockstat()
            facts = gather(host, owners=[])
            inside_after, outside_after = netns_sockstat(host), host_sockstat()
            stable_inside = inside_before == inside_after
            stable_host = all(outside_before[key] == outside_after[key] for key in ("orphan", "alloc"))
            if stable_inside and stable_host:
                break
        else:
            pytest.skip("sockstat kept changing under other load on this machine")
        sockstat = facts["sockstat"]
        # Namespace-local: the namespace's own figures, not the host's.
        assert sockstat["tcp_inuse"] == inside_after["inuse"]
        assert sockstat["tcp_tw"] == inside_after["tw"] >= sc.report["expected"]["TIME_WAIT"]
        assert sockstat["tcp_tw"] == host.ss_count("time-wait")
        # Host-wide even inside the namespace: equal to /proc/net/sockstat read outside it.
        assert sockstat["tcp_orphan"] == outside_after["orphan"] == inside_after["orphan"]
        assert sockstat["tcp_alloc"] == outside_after["alloc"] == inside_after["alloc"]
        assert sockstat["scope"]["tcp_inuse"] == sockstat["scope"]["tcp_tw"] == "namespace"
        assert sockstat["scope"]["tcp_orphan"] == sockstat["scope"]["tcp_alloc"] == "host"
        assert sockstat["scope"]["tcp_mem_pages"] == "host"
        # The global limits do not exist inside the namespace.
        assert facts["sysctls"]["net.ipv4.tcp_max_orphans"] is None
        assert facts["sysctls"]["net.ipv4.tcp_mem"] is None
        assert facts["pressure"]["orphans"]["limit"] is None
        assert facts["pressure"]["time_wait"]["count"] == sockstat["tcp_tw"]
        assert facts["pressure"]["time_wait"]["limit"] == int(host.sysctl("net.ipv4.tcp_max_tw_buckets"))

        # From the host: host-wide figures once, in tcp_state; null in the namespace's block.
        gathered = _facts.gather_facts(_facts.normalize_options({"namespaces": [host.name], "owners": []}))
        assert gathered["tcp_state"]["namespace"]["initial"] is True
        assert gathered["tcp_state"]["sysctls"]["net.ipv4.tcp_max_orphans"] == int(
            Path("/proc/sys/net/ipv4/tcp_max_orphans").read_text()
        )
        block = gathered["tcp_state_namespaces"][host.name]
        assert block["sockstat"]["tcp_orphan"] is None
        assert block["sockstat"]["tcp_alloc"] is None
        assert block["sockstat"]["tcp_tw"] == host.ss_count("time-wait")
    finally:
        sc.stop()


def test_namespaces_list_and_all_return_lab_namespaces_by_name(lab):
    first, second = lab.hosts[3], lab.hosts[4]
    sc = first.start_scenario("close_wait_leak", count=12)
    try:
        names = [first.name, second.name]
        gathered = _facts.gather_facts(_facts.normalize_options({"namespaces": names}))
        assert list(gathered["tcp_state_namespaces"]) == names
        for host in (first, second):
            block = gathered["tcp_state_namespaces"][host.name]
            assert block["namespace"] == {"inode": host.netns_inode, "name": host.name, "initial": False}
            assert block["states"]["CLOSE_WAIT"] == host.ss_count("close-wait")
            assert block["states"]["LISTEN"] == host.ss_count("listening")
        assert gathered["tcp_state_namespaces"][first.name]["owners"]["CLOSE_WAIT"][0]["pid"] == sc.report["pid"]

        gathered = _facts.gather_facts(_facts.normalize_options({"namespaces": "all", "owners": []}))
        blocks = gathered["tcp_state_namespaces"]
        for host in lab.hosts:
            assert blocks[host.name]["namespace"]["inode"] == host.netns_inode
        assert blocks[first.name]["states"]["CLOSE_WAIT"] == sc.report["expected"]["CLOSE_WAIT"]
        # Every block is a distinct namespace; the current (initial) one is among them.
        inodes = [block["namespace"]["inode"] for block in blocks.values()]
        assert len(inodes) == len(set(inodes))
        assert gathered["tcp_state"]["namespace"]["inode"] in inodes

        # Inside a lab namespace `all` still sees the others (shared /run/netns and pid namespace).
        inside = gather_all(second, namespaces="all", owners=[])
        assert first.name in inside["tcp_state_namespaces"]
        assert inside["tcp_state"]["namespace"]["name"] == second.name
    finally:
        sc.stop()


def test_interval_gives_rates_and_persistent_sockets(lab):
    host = lab.hosts[5]
    zero_window = host.start_scenario("fin_wait1_zero_window", count=10)
    leak = host.start_scenario("close_wait_leak", count=15)
    try:
        facts = gather(host, interval=1.5)
        assert facts["interval"] >= 1.5
        assert set(facts["rates"]) >= {"ListenOverflows", "ActiveOpens", "TCPAbortOnMemory"}
        assert all(rate >= 0 for rate in facts["rates"].values())
        persistent = facts["persistent"]
        assert persistent["FIN_WAIT1"]["count"] == host.ss_count("fin-wait-1") == 10
        assert persistent["FIN_WAIT1"]["send_bytes"] == ss_send_q(host, "fin-wait-1")
        assert persistent["FIN_WAIT1"]["send_bytes"] == zero_window.report["send_bytes"]["FIN_WAIT1"]
        assert persistent["CLOSE_WAIT"]["count"] == host.ss_count("close-wait") == 15
        assert persistent["LAST_ACK"]["count"] == 0
        assert facts["timers"]["FIN_WAIT1"]["persist"] == zero_window.report["timers"]["FIN_WAIT1"]["persist"]
        assert facts["queues"]["FIN_WAIT1"]["send_bytes"] == ss_send_q(host, "fin-wait-1")
        assert leak.report["pid"] in [owner["pid"] for owner in facts["owners"]["CLOSE_WAIT"]]
        # Without an interval: no rates, no persistent.
        facts = gather(host, owners=[])
        assert facts["rates"] == {}
        assert facts["persistent"] == {}
    finally:
        leak.stop()
        zero_window.stop()


def ansiballz(args, nobody):
    """The module's real AnsiballZ payload (as Ansible ships it to a host) with `args` embedded, readable by nobody."""
    workdir = nobody.workdir("facts-")
    keep = Path(tempfile.mkdtemp(prefix="remote-tmp-", dir=workdir))
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
        ANSIBLE_KEEP_REMOTE_FILES="1",
        # both names: the Makefile exports ANSIBLE_REMOTE_TMP, which would win over ANSIBLE_REMOTE_TEMP
        ANSIBLE_REMOTE_TEMP=str(keep),
        ANSIBLE_REMOTE_TMP=str(keep),
    )
    subprocess.run(
        [str(VENV_BIN / "ansible"), "localhost", "-m", "netstate.tcp.tcp_state_facts", "-a", json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    (payload,) = glob.glob(str(keep / "*" / "AnsiballZ_tcp_state_facts.py"))
    target = workdir / "AnsiballZ_tcp_state_facts.py"
    shutil.copy(payload, target)
    target.chmod(0o644)
    return str(target)


def run_as_nobody(host, nobody, payload):
    # the payload carries its module_utils: nothing of the collection on PYTHONPATH
    res = host.run(nobody.command(payload, collection=False), timeout=120)
    assert "Traceback" not in res.stdout + res.stderr
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout)


def test_non_root_reports_what_it_can_and_warns(lab, nobody):
    host = lab.hosts[0]
    sc = host.start_scenario("close_wait_leak", count=20)
    try:
        result = run_as_nobody(host, nobody, ansiballz({"owners": ["CLOSE_WAIT", "LISTEN"]}, nobody))
        assert result.get("failed") is not True, result.get("msg")
        facts = result["ansible_facts"]["tcp_state"]
        # sock_diag works unprivileged: counts are complete.
        assert facts["states"]["CLOSE_WAIT"] == host.ss_count("close-wait") == 20
        assert facts["sockstat"]["tcp_inuse"] == netns_sockstat(host)["inuse"]
        # The root-owned leaker's fds are not readable: no owner, and a warning says so.
        assert facts["owners"]["CLOSE_WAIT"] == []
        assert any("permission denied" in warning for warning in facts["warnings"])

        # Two samples (interval) meet the same unenterable namespace twice: one warning each all the same.
        result = run_as_nobody(host, nobody, ansiballz({"namespaces": "all", "owners": [], "interval": 0.1}, nobody))
        assert result.get("failed") is not True, result.get("msg")
        warnings = result["ansible_facts"]["tcp_state"]["warnings"]
        cannot_enter = [warning for warning in warnings if f"namespace {lab.hosts[1].name}: cannot enter" in warning]
        assert len(cannot_enter) == 1, warnings
        assert len(warnings) == len(set(warnings)), warnings
    finally:
        sc.stop()


def test_module_through_ansible_over_ssh(ssh_lab, ansible_env):
    h1 = ssh_lab.host("h1")
    sc = h1.start_scenario("close_wait_leak", count=25)
    try:
        results = facts_over_ansible(ansible_env, ssh_lab.inventory_path, "h1", {"owners": ["close-wait"], "top": 3})
        assert list(results) == ["h1"]
        facts = results["h1"]
        assert facts["namespace"]["name"] == h1.name
        assert facts["namespace"]["inode"] == h1.netns_inode
        assert facts["states"]["CLOSE_WAIT"] == h1.ss_count("close-wait") == 25
        (owner,) = facts["owners"]["CLOSE_WAIT"]
        assert (owner["pid"], owner["comm"], owner["sockets"]) == (sc.report["pid"], "leaky-proxy", 25)
    finally:
        sc.stop()
