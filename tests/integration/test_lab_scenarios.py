"""Each lab scenario's report agrees with what ss (netlink sock_diag) sees in the namespace."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest

from netstate_lab import KINDS
from netstate_lab.ss import STATE_TO_SS_FILTER

# small counts: the tests prove agreement, not scale (make bench runs the 300k mix)
SMALL = {
    "time_wait_churn": {"count": 150},
    "close_wait_leak": {"count": 40},
    "fin_wait1_zero_window": {"count": 6},
    "fin_wait2_orphans": {"count": 30},
    "listen_overflow": {"count": 12, "backlog": 3},
    "syn_recv": {"count": 15},
    "established": {"count": 60},
    "mix": {"count": 6000, "workers": 2},
    "conntrack": {"count": 10},
    # churn kinds hold still (delay) while the counts are compared; test_churn_* below runs the churn
    "churn_client": {"count": 50, "delay": 300},
    "churn_server_close": {"count": 50, "delay": 300},
}


# What each kind promises for its `count`, independent of the scenario's own report: (state, sockets per count).
PROMISED = {
    "time_wait_churn": ("TIME_WAIT", 1),
    "close_wait_leak": ("CLOSE_WAIT", 1),
    "fin_wait1_zero_window": ("FIN_WAIT1", 1),
    "fin_wait2_orphans": ("FIN_WAIT2", 1),
    "listen_overflow": ("SYN_SENT", 1),
    "syn_recv": ("SYN_RECV", 1),
    "established": ("ESTABLISHED", 2),
}


def ss_lines(host, *args):
    res = host.run(["ss", "-Htan", *args], check=True)
    return [line.split() for line in res.stdout.splitlines() if line.strip()]


def test_every_kind_is_covered():
    assert set(SMALL) == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_scenario_counts_match_ss(bare_host, kind):
    if kind in ("syn_recv", "conntrack") and shutil.which("nft") is None:
        pytest.skip("nft (nftables) missing")
    opts = dict(SMALL[kind])
    sc = bare_host.start_scenario(kind, hold=300, **opts)
    expected = sc.report["expected"]
    assert sc.report["kind"] == kind
    assert sc.report["pid"] == sc.pid
    assert expected, "a scenario must promise some states"
    for state, count in expected.items():
        assert len(ss_lines(bare_host, "state", STATE_TO_SS_FILTER[state])) == count, state
    # nothing else lives in a bare namespace: the total matches too
    assert len(ss_lines(bare_host)) == sum(expected.values())
    # and the report promises what was asked for, not merely what it happened to make
    if kind in PROMISED:
        state, per_count = PROMISED[kind]
        assert len(ss_lines(bare_host, "state", STATE_TO_SS_FILTER[state])) == per_count * opts["count"], state
    elif kind == "mix":  # `count` sockets besides its listeners
        assert len(ss_lines(bare_host, "exclude", "listening")) == opts["count"]
    # the process that made them runs inside the namespace under its recognisable name
    assert sc.pid in bare_host.pids()
    with open(f"/proc/{sc.pid}/comm", encoding="ascii") as f:
        assert f.read().strip() == sc.report["comm"]
    sc.stop()
    assert not sc.alive()
    assert sc.pid not in bare_host.pids()


def test_close_wait_held_by_leaky_proxy(bare_host):
    sc = bare_host.start_scenario("close_wait_leak", count=25, hold=300)
    rows = ss_lines(bare_host, "-p", "state", "close-wait")
    assert len(rows) == 25
    owners = {m for row in rows for m in re.findall(r'\("([^"]+)",pid=(\d+)', " ".join(row))}
    assert owners == {("leaky-proxy", str(sc.pid))}
    # the client sockets (FIN_WAIT2) belong to the separate client process
    rows = ss_lines(bare_host, "-p", "state", "fin-wait-2")
    owners = {m for row in rows for m in re.findall(r'\("([^"]+)",pid=(\d+)', " ".join(row))}
    assert owners == {("nsl-cw-client", str(sc.report["pids"]["client"]))}
    sc.stop()
    assert len(ss_lines(bare_host, "state", "close-wait")) == 0


def test_fin_wait1_send_queue_and_persist_timer(bare_host):
    sc = bare_host.start_scenario("fin_wait1_zero_window", count=5, hold=300)
    res = bare_host.run(["ss", "-Htano", "state", "fin-wait-1"], check=True)
    rows = [line.split() for line in res.stdout.splitlines() if line.strip()]
    assert len(rows) == 5
    # with a state filter ss prints Recv-Q and Send-Q first
    send_q = sum(int(r[1]) for r in rows)
    assert send_q == sc.report["send_bytes"]["FIN_WAIT1"]
    assert all(int(r[1]) > 1 for r in rows), "every FIN_WAIT1 socket holds unsent bytes"
    assert res.stdout.count("timer:(persist") == 5
    # the receivers advertise a zero window: nothing unread fits any more
    assert sc.report["timers"]["FIN_WAIT1"]["persist"] == 5


def test_listen_overflow_grows_counter(bare_host):
    before = int(bare_host.run(["nstat", "-az", "TcpExtListenOverflows"]).stdout.split()[-2])
    sc = bare_host.start_scenario("listen_overflow", count=10, backlog=2, hold=300)
    rows = ss_lines(bare_host, "state", "listening")
    assert len(rows) == 1
    recv_q, send_q = int(rows[0][0]), int(rows[0][1])
    assert (recv_q, send_q) == (sc.report["accept_queue"], sc.report["backlog"]) == (3, 2)
    after = int(bare_host.run(["nstat", "-az", "TcpExtListenOverflows"]).stdout.split()[-2])
    assert after - before >= 10
    assert sc.report["listen_overflows"]["after"] - sc.report["listen_overflows"]["before"] >= 10


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft (nftables) missing")
def test_syn_recv_rule_is_removed_on_stop(bare_host):
    sc = bare_host.start_scenario("syn_recv", count=5, hold=300)
    table = sc.report["nft_table"]
    assert table.split()[-1] in bare_host.run(["nft", "list", "tables"], check=True).stdout
    sc.stop()
    assert table.split()[-1] not in bare_host.run(["nft", "list", "tables"], check=True).stdout


def test_scenarios_in_different_hosts_are_isolated(bare_lab):
    lab = bare_lab(hosts=2)
    h1, h2 = lab.hosts
    h1.start_scenario("established", count=20, hold=300)
    assert len(ss_lines(h1, "state", "established")) == 40
    assert len(ss_lines(h2)) == 0


def test_two_scenarios_in_one_host_add_up(bare_host):
    a = bare_host.start_scenario("close_wait_leak", count=10, hold=300)
    b = bare_host.start_scenario("close_wait_leak", count=7, hold=300)
    assert a.report["ports"]["server"] != b.report["ports"]["server"]
    assert len(ss_lines(bare_host, "state", "close-wait")) == 17
    assert {s.pid for s in bare_host.scenarios} == {a.pid, b.pid}
    stopped = bare_host.stop_scenarios("close_wait_leak")
    assert {s.pid for s in stopped} == {a.pid, b.pid}
    assert len(ss_lines(bare_host, "state", "close-wait")) == 0


@pytest.mark.parametrize("kind", ["churn_client", "churn_server_close"])
def test_churn_makes_its_count_and_the_closer_holds_time_wait(bare_host, kind):
    sc = bare_host.start_scenario(kind, count=60, rate=200, hold=300)
    port = sc.report["ports"]["server"][0]
    deadline = time.monotonic() + 60
    report = sc.report
    while "done" not in report and time.monotonic() < deadline:
        time.sleep(0.1)
        with open(sc.report_path, encoding="utf-8") as f:
            report = json.load(f)
    done = report["done"]
    assert done["connections"] == 60
    assert done["peer"].get("closed", done["peer"].get("connections")) == 60
    tw = ss_lines(bare_host, "state", "time-wait")
    assert len(tw) == 60
    # TIME_WAIT stays with the side that closed first: the listening port is local only when the server did
    on_listener = [row for row in tw if row[2].endswith(f":{port}")]
    assert len(on_listener) == (60 if kind == "churn_server_close" else 0)
