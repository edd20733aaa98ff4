# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_conntrack on lab namespaces whose packets nf_conntrack tracks (the lab's `conntrack` scenario).

The conntrack figures are collected inside the namespace (setns, as `namespaces: all`
does) and compared with that namespace's own table as the kernel prints it
(/proc/net/nf_conntrack), and with `conntrack -L` when conntrack-tools is installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import Counter

import pytest
from lab_probes import gather

from ansible_collections.netstate.tcp.plugins.module_utils import _conntrack, _netns

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
]

PROC_TABLE = "/proc/thread-self/net/nf_conntrack"


def proc_tcp_states():
    """{state: entries} of the calling thread's namespace table, as the kernel prints it; None without the file."""
    try:
        with open(PROC_TABLE, encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return None
    states = Counter(line.split()[5] for line in lines if line.split()[2] == "tcp")
    return dict(states), len(lines)


def conntrack_tool_states():
    """{state: entries} from `conntrack -L -p tcp` (conntrack-tools), or None when not installed."""
    tool = shutil.which("conntrack")
    if tool is None:
        return None
    res = subprocess.run([tool, "-L", "-p", "tcp"], capture_output=True, text=True, timeout=60, check=True)
    return dict(Counter(line.split()[3] for line in res.stdout.splitlines() if line.startswith("tcp")))


def collect_in(host, attempts=20):
    """(block, warnings, kernel's table) read inside ``host`` at one moment (retried until the table stood still)."""
    with _netns.entered(f"/run/netns/{host.name}"):
        for _attempt in range(attempts):
            before = proc_tcp_states()
            block, warnings = _conntrack.collect_conntrack()
            after = proc_tcp_states()
            if before == after:
                return block, warnings, after
    raise AssertionError("the conntrack table never stood still for one collection")


def nonzero(states):
    return {name: count for name, count in states.items() if count}


def test_states_equal_the_namespaces_own_table(bare_host):
    sc = bare_host.start_scenario("conntrack", count=30)
    with _netns.entered(f"/run/netns/{bare_host.name}"):
        if not os.path.exists(PROC_TABLE):
            pytest.skip("this kernel has no /proc/net/nf_conntrack (CONFIG_NF_CONNTRACK_PROCFS) to compare with")
    block, warnings, (table, lines) = collect_in(bare_host)
    assert warnings == []
    assert block["available"] is True and block["source"] == "ctnetlink"
    assert nonzero(block["states"]) == table == sc.report["expected_conntrack"]
    assert set(block["states"]) == set(_conntrack.TCP_CT_STATES)
    assert block["count"] == lines
    assert block["ratio"] == round(lines / block["max"], 4)
    assert block["timeouts"]["time_wait"] == int(bare_host.sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait"))
    with _netns.entered(f"/run/netns/{bare_host.name}"):
        tool = conntrack_tool_states()
    if tool is not None:
        assert tool == table


def test_states_follow_the_table_when_it_changes(bare_host):
    """A second scenario adds entries: the counts move with the namespace's table, not with a cache."""
    bare_host.start_scenario("conntrack", count=10)
    first, _warnings, _table = collect_in(bare_host)
    bare_host.start_scenario("conntrack", count=25)
    second, warnings, (table, _lines) = collect_in(bare_host)
    assert warnings == []
    assert nonzero(second["states"]) == table
    for state in ("ESTABLISHED", "TIME_WAIT", "CLOSE_WAIT"):
        assert second["states"][state] == first["states"][state] + 25


def test_untracked_namespace(bare_host):
    """No ct rule: nothing is tracked. Without nf_conntrack at all: available false and null figures."""
    block, warnings, table = collect_in(bare_host)
    with _netns.entered(f"/run/netns/{bare_host.name}"):
        loaded = os.path.exists("/proc/sys/net/netfilter/nf_conntrack_count")
    if not loaded:
        assert block == dict.fromkeys(("count", "max", "ratio", "states", "timeouts", "source")) | {"available": False}
        return
    assert warnings == []
    assert block["available"] is True and block["count"] == 0 and block["ratio"] == 0.0
    assert sum(block["states"].values()) == 0
    assert table in (None, ({}, 0))


def test_collection_never_loads_a_module(bare_host):
    """Where the kernel loads modules, gathering conntrack facts must not change /proc/modules."""
    if not os.path.exists("/proc/modules"):
        pytest.skip(
            "this kernel has no module support (no /proc/modules): nothing can be loaded; the guard is "
            "tested on fake /proc and /sys trees in tests/unit/plugins/module_utils/test_conntrack.py"
        )
    with open("/proc/modules", encoding="ascii") as fh:
        before = {line.split()[0] for line in fh}
    block, _warnings, _table = collect_in(bare_host)
    with open("/proc/modules", encoding="ascii") as fh:
        after = {line.split()[0] for line in fh}
    assert after - before == set()
    if "nf_conntrack_netlink" not in before and os.path.exists("/proc/sys/kernel/modprobe"):
        assert block["states"] is None


def test_facts_carry_the_block_and_the_finding_reads_it(bare_host):
    """tcp_state_facts' code in the namespace: the conntrack block, and CONNTRACK_TABLE_PRESSURE built from it."""
    sc = bare_host.start_scenario("conntrack", count=15)
    # 45 entries of nf_conntrack_max: a warning threshold below that ratio makes the finding fire.
    facts = gather(bare_host, thresholds={"conntrack_ratio_warning": 0.00001, "conntrack_ratio_critical": 0.9})
    block = facts["conntrack"]
    assert block["available"] is True and block["source"] == "ctnetlink"
    assert nonzero(block["states"]) == sc.report["expected_conntrack"]
    (finding,) = [f for f in facts["findings"] if f["code"] == "CONNTRACK_TABLE_PRESSURE"]
    assert finding["severity"] == "warning"
    assert finding["evidence"]["count"] == block["count"] and finding["evidence"]["nf_conntrack_max"] == block["max"]
    assert {e["state"]: e["count"] for e in finding["evidence"]["states"]} == sc.report["expected_conntrack"]
    assert finding["evidence"]["timeouts"]["nf_conntrack_tcp_timeout_time_wait"] == block["timeouts"]["time_wait"]


def test_conntrack_false_reports_no_table_where_there_is_one(bare_host):
    """`conntrack: false` on a namespace with tracked connections: the block of a namespace without a table.

    The same options with the default show the table and the finding, so the difference is the option's.
    """
    sc = bare_host.start_scenario("conntrack", count=15)
    thresholds = {"conntrack_ratio_warning": 0.00001, "conntrack_ratio_critical": 0.9}
    read = gather(bare_host, thresholds=thresholds, owners=[])
    assert read["conntrack"]["available"] is True and read["conntrack"]["count"] >= 45
    assert "CONNTRACK_TABLE_PRESSURE" in {f["code"] for f in read["findings"]}

    skipped = gather(bare_host, thresholds=thresholds, owners=[], conntrack=False)
    assert skipped["conntrack"] == dict.fromkeys(("source", "count", "max", "ratio", "states", "timeouts")) | {
        "available": False
    }
    assert list(skipped["conntrack"]) == list(read["conntrack"])  # same keys, same order
    assert "CONNTRACK_TABLE_PRESSURE" not in {f["code"] for f in skipped["findings"]}
    assert not [w for w in skipped["warnings"] if w.startswith("conntrack")]
    # the option changes the report, not the namespace: its table still holds the scenario's entries
    with _netns.entered(f"/run/netns/{bare_host.name}"):
        table = proc_tcp_states()
    if table is not None:
        assert nonzero(table[0]) == sc.report["expected_conntrack"]


UNPRIVILEGED = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.netstate.tcp.plugins.module_utils import _conntrack
print(json.dumps(_conntrack.collect_conntrack()))
"""


def test_unprivileged_gets_the_figures_and_a_warning(bare_host, nobody):
    """nfnetlink wants CAP_NET_ADMIN for a dump: without it the figures stay and the states are null, with a reason."""
    sc = bare_host.start_scenario("conntrack", count=5)
    res = bare_host.run(nobody.command("-c", UNPRIVILEGED, nobody.collections), check=True)
    block, warnings = json.loads(res.stdout)
    assert block["available"] is True and block["count"] == sum(sc.report["expected_conntrack"].values())
    assert block["states"] is None and block["source"] is None
    assert warnings == ["conntrack: states not read: ctnetlink dump: Operation not permitted"]
