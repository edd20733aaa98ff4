# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_socket_aggregate.collect_sockets on real sockets: lab namespaces, checked against ss, pyroute2 and /proc.

The collector runs inside the lab namespace in a subprocess (``ip netns exec``),
as the module does on a managed node.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

import pytest

from netstate_lab.ss import SS_LABEL_TO_STATE

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(REPO, ".build", "collections")


COLLECT = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.netstate.tcp.plugins.module_utils import _netlink as nl
from ansible_collections.netstate.tcp.plugins.module_utils import _socket_aggregate as cs
kwargs = json.loads(sys.argv[2])
result = cs.collect_sockets(**kwargs)
result["_tracked"] = list(result["_tracked"])
print(json.dumps(result))
"""

RECORDS = """
import json, socket, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.netstate.tcp.plugins.module_utils import _netlink as nl
from ansible_collections.netstate.tcp.plugins.module_utils import _socket_aggregate as cs
rows = []
for family in ("ipv4", "ipv6"):
    af = nl.FAMILIES[family]
    for r in nl.iter_diag(family, nl.ALL_STATES_MASK):
        rows.append([r[nl.R_STATE], socket.inet_ntop(af, r[nl.R_SRC]), r[nl.R_SPORT],
                     socket.inet_ntop(af, r[nl.R_DST]), r[nl.R_DPORT], r[nl.R_RQUEUE], r[nl.R_WQUEUE], r[nl.R_INODE]])
print(json.dumps(rows))
"""

FALLBACK = """
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.netstate.tcp.plugins.module_utils import _netlink as nl
from ansible_collections.netstate.tcp.plugins.module_utils import _socket_aggregate as cs
def refused(*args, **kwargs):
    # what open_diag_socket raises when socket(AF_NETLINK, ..., NETLINK_SOCK_DIAG) fails with EACCES
    raise nl.DiagUnavailable("netlink sock_diag socket not available: [Errno 13] Permission denied")
nl.dump = refused
result = cs.collect_sockets()
result["_tracked"] = list(result["_tracked"])
print(json.dumps(result))
"""

PYROUTE2 = """
import json, socket
from pyroute2 import DiagSocket
rows = []
with DiagSocket() as ds:
    ds.bind()
    for af in (socket.AF_INET, socket.AF_INET6):
        for m in ds.get_sock_stats(family=af, states=0x1FFE):
            rows.append([m["idiag_state"], m["idiag_src"], m["idiag_sport"], m["idiag_dst"], m["idiag_dport"],
                         m["idiag_rqueue"], m["idiag_wqueue"], m["idiag_inode"]])
print(json.dumps(rows))
"""


def collect(host, **kwargs):
    res = host.run([sys.executable, "-c", COLLECT, COLLECTIONS, json.dumps(kwargs)], timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def ss(host, *args):
    res = host.run(["ss", "-Htanoe", *args], check=True)
    rows = []
    for line in res.stdout.splitlines():
        f = line.split()
        if not f:
            continue
        rows.append(
            {
                "state": SS_LABEL_TO_STATE[f[0]],
                "recvq": int(f[1]),
                "sendq": int(f[2]),
                "local": f[3],
                "peer": f[4],
                "timer": next((x[7:].split(",")[0] for x in f[5:] if x.startswith("timer:(")), None),
                "inode": next((int(x[4:]) for x in f[5:] if x.startswith("ino:")), 0),
            }
        )
    return rows


def _still(row):
    return (row["state"], row["local"], row["peer"], row["recvq"], row["sendq"], row["timer"] or "")


def stable(host, run, attempts=10):
    """run() between two identical ss snapshots (sockets that change mid-read would make flaky tests)."""
    for _attempt in range(attempts):
        before = ss(host)
        value = run()
        after = ss(host)
        if sorted(map(_still, before)) == sorted(map(_still, after)):
            return value, after
    pytest.fail("sockets kept changing")


@pytest.fixture
def host(bare_host):
    return bare_host


@pytest.mark.parametrize(
    "scenarios",
    [
        [("established", 40)],
        [("close_wait_leak", 60)],
        [("listen_overflow", 8)],
        [("syn_recv", 12)],
        [("fin_wait2_orphans", 30), ("time_wait_churn", 300)],
    ],
    ids=lambda s: "+".join(kind for kind, _count in s),
)
def test_state_counts_equal_ss(host, scenarios):
    reports = [host.start_scenario(kind, count=count).report for kind, count in scenarios]
    result, rows = stable(host, lambda: collect(host))
    expected = Counter(r["state"] for r in rows)
    assert result["source"] == "netlink"
    assert result["states"] == {s: expected.get(s, 0) for s in result["states"]}
    assert result["total"] == len(rows)
    for report in reports:
        for state, count in report["expected"].items():
            assert result["states"][state] >= count
    queues = {s: {"send_bytes": 0, "recv_bytes": 0} for s in result["queues"]}
    for r in rows:
        if r["state"] != "LISTEN":
            queues[r["state"]]["send_bytes"] += r["sendq"]
            queues[r["state"]]["recv_bytes"] += r["recvq"]
    assert result["queues"] == queues
    listeners = sorted((r["local"], r["recvq"], r["sendq"]) for r in rows if r["state"] == "LISTEN")
    assert sorted((x["local"], x["accept_queue"], x["backlog"]) for x in result["listeners"]) == listeners


def test_fin_wait1_zero_window(host):
    sc = host.start_scenario("fin_wait1_zero_window", count=8)
    result, rows = stable(host, lambda: collect(host))
    fw1 = [r for r in rows if r["state"] == "FIN_WAIT1"]
    assert len(fw1) == result["states"]["FIN_WAIT1"] == sc.report["expected"]["FIN_WAIT1"]
    assert result["queues"]["FIN_WAIT1"]["send_bytes"] == sum(r["sendq"] for r in fw1) > len(fw1)
    persist = sum(1 for r in fw1 if r["timer"] == "persist")
    assert persist == len(fw1)
    timers = result["timers"]["FIN_WAIT1"]
    assert timers["persist"] == timers["zero_window"] == persist
    # nothing is unacknowledged while the peer's window is zero: no retransmit timer
    assert timers["retransmit"] == sum(1 for r in fw1 if r["timer"] == "on")


def test_owner_inodes_and_tracked(host):
    host.start_scenario("close_wait_leak", count=25)
    host.start_scenario("fin_wait1_zero_window", count=4)
    result, rows = stable(
        host, lambda: collect(host, owner_states=["CLOSE_WAIT", "LISTEN"], track_states=["FIN_WAIT1"])
    )
    for state in ("CLOSE_WAIT", "LISTEN"):
        inodes = Counter(str(r["inode"]) for r in rows if r["state"] == state and r["inode"])
        assert result["_owner_inodes"][state] == dict(inodes)
    fw1 = [r for r in rows if r["state"] == "FIN_WAIT1"]
    # the FIN_WAIT1 sockets' cookies, sorted, for the persistent_before of a later sample
    assert len(result["_tracked"]) == len(fw1) == 4
    assert result["_tracked"] == sorted(result["_tracked"])


def test_iter_diag_equals_pyroute2(host):
    """Our decoder and pyroute2's DiagSocket decode the same namespace to the same sockets."""
    host.start_scenario("established", count=30)
    host.start_scenario("close_wait_leak", count=20)

    def both():
        ours = host.run([sys.executable, "-c", RECORDS, COLLECTIONS], timeout=120)
        theirs = host.run([sys.executable, "-c", PYROUTE2], timeout=120)
        assert ours.returncode == 0, ours.stderr
        assert theirs.returncode == 0, theirs.stderr
        return json.loads(ours.stdout), json.loads(theirs.stdout)

    (ours, theirs), _rows = stable(host, both)
    assert len(ours) > 100
    assert Counter(r[0] for r in ours) == Counter(r[0] for r in theirs)
    assert sorted(map(tuple, ours)) == sorted(map(tuple, theirs))


def test_procfs_equals_netlink(host):
    host.start_scenario("close_wait_leak", count=30)
    host.start_scenario("fin_wait1_zero_window", count=4)
    host.start_scenario("listen_overflow", count=6)

    def both():
        return collect(host), collect(host, procfs=True)

    (nl, pf), _rows = stable(host, both)
    assert (nl["source"], pf["source"]) == ("netlink", "procfs")
    for key in ("states", "families", "total", "queues", "top", "_busiest_tuple", "_owner_inodes"):
        assert pf[key] == nl[key], key
    for state, timers in nl["timers"].items():
        # Retransmit counts grow between the two reads (SYN_SENT backs off): procfs is read second.
        # Probe counts (persist and keepalive timers) do not: tcp_ack() zeroes icsk_probes_out when a
        # probe is answered, so one read can catch 1 and the next 0; the field mapping of those is
        # tested on the recorded fixtures (test_socket_records).
        if not (timers["persist"] or timers["keepalive"]):
            assert pf["timers"][state]["max_retransmits"] >= timers["max_retransmits"], state
        assert {k: v for k, v in pf["timers"][state].items() if k != "max_retransmits"} == {
            k: v for k, v in timers.items() if k != "max_retransmits"
        }
    assert sorted((x["local"], x["accept_queue"]) for x in pf["listeners"]) == sorted(
        (x["local"], x["accept_queue"]) for x in nl["listeners"]
    )


def test_fallback_when_netlink_unavailable(host):
    """collect_sockets falls back to /proc/net/tcp{,6} by itself, says so, and sees the same sockets."""
    host.start_scenario("close_wait_leak", count=20)

    def both():
        res = host.run([sys.executable, "-c", FALLBACK, COLLECTIONS], timeout=120)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout), collect(host)

    (pf, nl), rows = stable(host, both)
    assert (pf["source"], nl["source"]) == ("procfs", "netlink")
    assert any("netlink unavailable" in w and "Permission denied" in w for w in pf["warnings"])
    expected = Counter(r["state"] for r in rows)
    assert pf["states"] == nl["states"] == {s: expected.get(s, 0) for s in nl["states"]}
    assert pf["queues"] == nl["queues"]
    assert pf["top"] == nl["top"]
