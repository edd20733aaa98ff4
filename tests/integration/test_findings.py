"""Findings raised on real sockets: lab scenarios, facts collected inside each namespace.

Each finding that the lab can make for real is checked on its scenario, through
_facts.gather_facts running inside the namespace (ip netns exec, the same code
the module runs) and once through the module itself over the lab's ssh. The
expected figures come from independent sources: the scenario's own report, ss
and /proc inside the namespace.
"""

from __future__ import annotations

import os

import pytest
from lab_probes import facts_over_ansible, gather, netstat_counter, ss_rows

from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import DEFAULT_THRESHOLDS, severity_rank
from netstate_lab import Lab

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
]

# Host-wide figures (orphans, TCP memory) are shared with everything else on the machine.
HOST_WIDE = {"ORPHAN_PRESSURE", "TCP_MEMORY_PRESSURE"}


def by_code(facts):
    return {f["code"]: f for f in facts["findings"]}


def assert_nothing_above_info(facts):
    for finding in facts["findings"]:
        if severity_rank(finding["severity"]) <= severity_rank("info"):
            continue
        assert finding["code"] in HOST_WIDE, finding
        # Only acceptable when the host itself is under that pressure (other load on this machine).
        ratio = finding["evidence"].get("ratio_penalized_4x") or finding["evidence"].get("ratio_to_high")
        assert ratio is not None and ratio >= 0.5, finding


def test_clean_host_has_nothing_above_info(lab):
    host = lab.hosts[0]
    sc = host.start_scenario("established", count=50)
    try:
        assert len(ss_rows(host, "established")) == 2 * sc.report["count"]
        facts = gather(host)
        assert facts["states"]["ESTABLISHED"] == 2 * sc.report["count"]
        assert_nothing_above_info(facts)
    finally:
        sc.stop()


def test_close_wait_leak_names_the_process(lab):
    host = lab.hosts[1]
    sc = host.start_scenario("close_wait_leak", count=50)
    try:
        held = len(ss_rows(host, "close-wait"))
        assert held == sc.report["expected"]["CLOSE_WAIT"]
        # Thresholds lowered to the scenario's scale: the leak is exactly at the warning level.
        facts = gather(host, thresholds={"close_wait_warning": held, "close_wait_critical": held * 10})
        found = by_code(facts)["CLOSE_WAIT_LEAK"]
        assert found["severity"] == "warning"
        pid = sc.report["owners"]["CLOSE_WAIT"]
        assert f"pid {pid} " in found["summary"]
        assert sc.report["comm"] in found["summary"]
        assert [(o["pid"], o["sockets"]) for o in found["evidence"]["owners"]] == [(pid, held)]
        assert found["remediation"] == {**found["remediation"], "kind": "application", "sysctls": {}}
        # One more than the namespace holds: no finding.
        facts = gather(host, thresholds={"close_wait_warning": held + 1, "close_wait_critical": held * 10})
        assert "CLOSE_WAIT_LEAK" not in by_code(facts)
    finally:
        sc.stop()


def test_time_wait_churn_and_tw_bucket_overflow(lab):
    host = lab.hosts[2]
    count = DEFAULT_THRESHOLDS["time_wait_warning"] + 500
    sc = host.start_scenario("time_wait_churn", count=count)
    try:
        rows = ss_rows(host, "time-wait")
        assert len(rows) >= DEFAULT_THRESHOLDS["time_wait_warning"]
        facts = gather(host)
        found = by_code(facts)["TIME_WAIT_CHURN"]
        assert found["severity"] == "warning"
        # The busiest peer per ss: the scenario's server, which the clients closed on.
        peers = {}
        for _rq, _sq, _local, peer in rows:
            address = peer.rsplit(":", 1)[0]
            peers[address] = peers.get(address, 0) + 1
        top_peer = max(peers, key=peers.get)
        assert top_peer in found["summary"]
        assert found["evidence"]["top_peer"]["count"] == peers[top_peer]
        assert f"local port {facts['top']['by_local_port']['TIME_WAIT'][0]['port']} " in found["summary"]
        assert "net.ipv4.tcp_tw_recycle" not in found["remediation"]["sysctls"]

        # tcp_max_tw_buckets lowered under what the namespace already holds: the table is full.
        before = host.sysctl("net.ipv4.tcp_max_tw_buckets")
        host.set_sysctl("net.ipv4.tcp_max_tw_buckets", len(rows) // 2)
        try:
            facts = gather(host)
            found = by_code(facts)["TW_BUCKET_OVERFLOW"]
            assert found["severity"] == "critical"
            assert found["evidence"]["tcp_max_tw_buckets"] == len(rows) // 2
        finally:
            host.set_sysctl("net.ipv4.tcp_max_tw_buckets", before)
    finally:
        sc.stop()


def test_fin_wait1_stuck_and_orphan_retries(lab):
    host = lab.hosts[3]
    sc = host.start_scenario("fin_wait1_zero_window", count=10)
    try:
        count = sc.report["expected"]["FIN_WAIT1"]
        rows = ss_rows(host, "fin-wait-1")
        assert len(rows) == count
        send_q = sum(sq for _rq, sq, _l, _p in rows)
        assert send_q == sc.report["send_bytes"]["FIN_WAIT1"]
        assert host.sysctl("net.ipv4.tcp_orphan_retries") == "0"

        # Default thresholds: 10 sockets are below them, but unsent data on the persist (zero-window) timer
        # is the hoard's signature: info, and the 0-means-8 pitfall stays info.
        facts = gather(host)
        found = by_code(facts)["FIN_WAIT1_STUCK"]
        assert found["severity"] == "info"
        assert found["evidence"]["persist"] == count and found["evidence"]["send_bytes"] == send_q
        assert found["summary"].startswith(f"{count} FIN_WAIT1 sockets hold ")
        assert by_code(facts)["ORPHAN_RETRIES_DEFAULT"]["severity"] == "info"

        # Persisting across the interval, still below the thresholds: warning.
        assert by_code(gather(host, interval=1))["FIN_WAIT1_STUCK"]["severity"] == "warning"

        facts = gather(host, interval=1, thresholds={"fin_wait1_warning": count})
        found = by_code(facts)["FIN_WAIT1_STUCK"]
        assert found["severity"] == "warning"
        assert found["evidence"]["send_bytes"] == send_q
        assert found["evidence"]["zero_window"] == count
        assert found["evidence"]["persist"] == sc.report["timers"]["FIN_WAIT1"]["persist"]
        assert found["evidence"]["persistent"]["count"] == count
        assert found["remediation"]["sysctls"]["net.ipv4.tcp_orphan_retries"] > 0
        assert by_code(facts)["ORPHAN_RETRIES_DEFAULT"]["severity"] == "warning"

        # An explicit value: the 0-means-8 pitfall is gone.
        host.set_sysctl("net.ipv4.tcp_orphan_retries", 3)
        try:
            assert "ORPHAN_RETRIES_DEFAULT" not in by_code(gather(host))
        finally:
            host.set_sysctl("net.ipv4.tcp_orphan_retries", 0)
    finally:
        sc.stop()


def test_listen_overflow_names_listener_and_owner(lab):
    host = lab.hosts[4]
    sc = host.start_scenario("listen_overflow", count=16, backlog=4)
    try:
        listen = ss_rows(host, "listening")
        port = sc.report["ports"]["server"][0]
        ((accept_queue, backlog, local, _peer),) = [row for row in listen if row[2].endswith(f":{port}")]
        assert accept_queue > backlog  # ss: the accept queue is over full
        facts = gather(host)
        found = by_code(facts)["LISTEN_OVERFLOW"]
        assert found["severity"] == "critical"
        assert local in found["summary"]
        assert f"pid {sc.report['pid']} " in found["summary"]
        overflows = netstat_counter(host, "ListenOverflows")
        # Without interval the evidence is the counter itself, read before ours (counters only grow).
        assert sc.report["listen_overflows"]["min_delta"] <= found["evidence"]["counters"]["ListenOverflows"]
        assert found["evidence"]["counters"]["ListenOverflows"] <= overflows
        assert overflows >= sc.report["listen_overflows"]["min_delta"]
    finally:
        sc.stop()


def test_syn_backlog_pressure_on_half_open_connections(lab):
    host = lab.hosts[5]
    count = 300
    sc = host.start_scenario("syn_recv", count=count)
    try:
        assert len(ss_rows(host, "syn-recv")) == count
        port = sc.report["ports"]["server"][0]
        ((_rq, backlog, local, _peer),) = [row for row in ss_rows(host, "listening") if row[2].endswith(f":{port}")]
        ratio = count / backlog
        facts = gather(host)
        found = by_code(facts).get("SYN_BACKLOG_PRESSURE")
        if ratio >= DEFAULT_THRESHOLDS["syn_backlog_ratio_warning"]:
            assert found is not None and found["severity"] in ("warning", "critical")
        facts = gather(host, thresholds={"syn_backlog_ratio_warning": round(ratio, 4) - 0.001})
        found = by_code(facts)["SYN_BACKLOG_PRESSURE"]
        assert found["evidence"]["busiest_listener"]["half_open"] == count
        assert found["evidence"]["busiest_listener"]["backlog"] == backlog
        assert local in found["summary"]
        assert f"pid {sc.report['pid']} " in found["summary"]
    finally:
        sc.stop()


def test_ephemeral_port_pressure_names_the_busiest_tuple():
    """ip_local_port_range narrowed in a namespace of its own: the scenario's client ports fill most of it."""
    with Lab.create(hosts=1, ssh=False) as lab:
        host = lab.hosts[0]
        count = 150
        sc = host.start_scenario("established", count=count)
        try:
            # The clients' local ports, per ss, give the range that they fill three quarters of.
            rows = ss_rows(host, "established")
            port = sc.report["ports"]["server"][0]
            clients = [(local, peer) for _rq, _sq, local, peer in rows if peer.endswith(f":{port}")]
            assert len(clients) == count
            client_ports = sorted(int(local.rsplit(":", 1)[1]) for local, _peer in clients)
            low = client_ports[0]
            high = low + (count * 4 // 3) - 1
            assert client_ports[-1] <= high
            host.set_sysctl("net.ipv4.ip_local_port_range", f"{low} {high}")
            tuples = {}
            for local, peer in clients:
                key = (local.rsplit(":", 1)[0], peer)
                tuples[key] = tuples.get(key, 0) + 1
            (busiest_key, busiest) = max(tuples.items(), key=lambda item: item[1])

            facts = gather(host)
            ports = facts["pressure"]["ephemeral_ports"]
            assert ports["range"] == high - low + 1
            assert ports["in_use"] == busiest
            tuple_ = ports["busiest_tuple"]
            assert (tuple_["local_address"], f"{tuple_['peer_address']}:{tuple_['peer_port']}") == busiest_key
            found = by_code(facts)["EPHEMERAL_PORT_PRESSURE"]
            ratio = busiest / (high - low + 1)
            expected = "critical" if ratio >= DEFAULT_THRESHOLDS["ephemeral_port_ratio_critical"] else "warning"
            assert ratio >= DEFAULT_THRESHOLDS["ephemeral_port_ratio_warning"]
            assert found["severity"] == expected
            assert found["evidence"]["ip_local_port_range"] == [low, high]
            assert found["remediation"]["kind"] == "capacity"

            # The default range (28232 ports) holds them easily: no finding.
            host.set_sysctl("net.ipv4.ip_local_port_range", "32768 60999")
            assert "EPHEMERAL_PORT_PRESSURE" not in by_code(gather(host))
        finally:
            sc.stop()


def test_module_through_ssh_reports_findings(ansible_env):
    """The real module over the lab's ssh: a leak on h1, nothing above info on h2."""
    with Lab.create(hosts=2, ssh=True) as lab:
        h1 = lab.hosts[0]
        sc = h1.start_scenario("close_wait_leak", count=30)
        try:
            thresholds = {"close_wait_warning": 30, "close_wait_critical": 300}
            results = facts_over_ansible(ansible_env, lab.inventory_path, "lab", {"thresholds": thresholds})
            found = by_code(results["h1"])["CLOSE_WAIT_LEAK"]
            assert found["severity"] == "warning"
            assert f"pid {sc.report['owners']['CLOSE_WAIT']} " in found["summary"]
            assert_nothing_above_info(results["h2"])
        finally:
            sc.stop()
