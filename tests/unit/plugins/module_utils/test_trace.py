# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_trace on trace_pipe text recorded from a real kernel while the lab's churn scenarios ran.

fixtures/trace/churn.json (record_trace.py): the lines of one session that concern the
scenarios' ports, each lab process's identity, and the scenarios' own reports, which give the
expected counts.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.netstate.tcp.plugins.module_utils import _facts, _trace

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "trace", "churn.json")
# per_cpu/cpu0/stats of an instance in overwrite mode, recorded on 6.18
CPU_STATS = (
    "entries: 850\noverrun: 3498\ncommit overrun: 0\nbytes: 65432\noldest event ts:   334.272388\n"
    "now ts:   334.539073\ndropped events: 0\nread events: 0\n"
)


@pytest.fixture(scope="module")
def recorded():
    with open(FIXTURE, encoding="utf-8") as f:
        return json.load(f)


def identify_from(recorded):
    def identify(tgid):
        known = recorded["identities"].get(str(tgid))
        if known is None:
            return None
        return {"netns": known["netns"], "info": {"pid": tgid, "comm": known["comm"], "cmdline": "", "user": "root"}}

    return identify


def session(recorded, **kwargs):
    agg = _trace.ChurnAggregate(identify_from(recorded), **kwargs)
    agg.feed(("\n".join(recorded["lines"]) + "\n").encode())
    return agg


def test_every_recorded_line_parses(recorded):
    assert recorded["lines"]
    assert all(_trace.parse_event_line(line.encode()) is not None for line in recorded["lines"])


def test_churners_counted_from_their_own_reports(recorded):
    agg = session(recorded)
    client = recorded["reports"]["churn_client"]
    server = recorded["reports"]["churn_server_close"]
    by_pid = {tgid: entry["counts"] for tgid, entry in agg.processes.items()}
    made = client["done"]["connections"]
    assert by_pid[client["churn"]["closer_pid"]]["connects"] == made
    assert by_pid[client["churn"]["closer_pid"]]["active_closes"] == made
    assert by_pid[client["churn"]["peer_pid"]]["passive_closes"] == made
    made = server["done"]["connections"]
    assert by_pid[server["churn"]["closer_pid"]]["active_closes"] == made
    assert by_pid[server["churn"]["peer_pid"]]["connects"] == made
    assert by_pid[server["churn"]["peer_pid"]]["passive_closes"] == made


def test_softirq_events_count_but_are_credited_to_nobody(recorded):
    agg = session(recorded)
    # every connection's other side saw ESTABLISHED -> CLOSE_WAIT where the FIN arrived: softirq, in
    # whatever task sent it (the closer, on loopback); none may be credited to a process
    connections = sum(r["done"]["connections"] for r in recorded["reports"].values())
    assert agg.totals["peer_closes"] >= connections
    assert agg.interrupt_events >= connections
    assert all(entry["counts"]["peer_closes"] == 0 for entry in agg.processes.values())
    softirq = [line for line in recorded["lines"] if "..s" in line]
    assert softirq
    assert all(_trace.parse_event_line(line.encode())["interrupt"] for line in softirq)


def test_comm_with_spaces_dashes_and_brackets(recorded):
    odd = [line for line in recorded["lines"] if recorded["odd_comm"] in line]
    assert odd
    event = _trace.parse_event_line(odd[0].encode())
    assert event["comm"] == recorded["odd_comm"].encode()
    assert event["tgid"] == event["pid"]
    assert event["peer"] == ("127.0.0.1", recorded["odd_port"])


def test_line_without_tgid_column_or_family(recorded):
    line = recorded["lines"][0]
    full = _trace.parse_event_line(line.encode())
    head, _sep, rest = line.partition("(")
    no_tgid = head + rest.partition(") ")[2]
    event = _trace.parse_event_line(no_tgid.encode())
    assert event["tgid"] is None
    assert (event["pid"], event["comm"], event["peer"], event["kind"]) == (
        full["pid"],
        full["comm"],
        full["peer"],
        full["kind"],
    )
    # Linux 4.16-4.19 print no family= field: the v4-mapped v6 address gives the same peer
    old_kernel = _trace.parse_event_line(line.replace("family=AF_INET ", "").encode())
    assert old_kernel["peer"] == full["peer"]


def test_unresolved_process_is_counted_not_listed(recorded):
    agg = _trace.ChurnAggregate(lambda tgid: None)
    agg.feed(("\n".join(recorded["lines"]) + "\n").encode())
    assert not agg.processes
    assert agg.unresolved_events == agg.events - agg.interrupt_events > 0


def test_memory_bounds(recorded):
    agg = session(recorded, max_processes=1, max_peers=1)
    assert len(agg.processes) == 1
    assert agg.untracked_events > 0
    assert all(len(entry["peers"]) <= 1 for entry in agg.processes.values())


def test_for_namespace_splits_and_ranks(recorded):
    agg = session(recorded)
    trace = _trace.ChurnTrace(agg, 2.0, 0)
    churn = trace.for_namespace(recorded["netns"], "nsl-x-h1", top=2)
    assert churn["source"] == "tracefs"
    assert len(churn["processes"]) == 2
    client = recorded["reports"]["churn_client"]
    top = churn["processes"][0]
    # the client-closes churner does connect + active close + (its server) passive close: most active
    assert top["pid"] in (client["churn"]["closer_pid"], recorded["reports"]["churn_server_close"]["churn"]["peer_pid"])
    assert top["netns"] == {"inode": recorded["netns"], "name": "nsl-x-h1"}
    assert top["connects_per_second"] == round(top["connects"] / 2.0, 2)
    port = client["ports"]["server"][0]
    peer = next(p for p in churn["peers"] if p["port"] == port)
    assert peer["connects"] == client["done"]["connections"]
    assert peer["active_closes"] == client["done"]["connections"]
    other = trace.for_namespace(recorded["netns"] + 1, None, top=10)
    assert other["processes"] == [] and other["peers"] == [] and other["events"] == churn["events"]


def test_cpu_stats():
    assert _trace.parse_cpu_stats(CPU_STATS) == 850 + 3498
    assert _trace.parse_cpu_stats("overrun: x\ngarbage\n") == 0
    assert _trace.parse_cpu_stats(None) == 0


def test_sweep_removes_only_dead_owners(tmp_path):
    instances = tmp_path / "instances"
    for name in ("netstate-111-ab12", "netstate-222-cd34", "other-tool", "netstate-x-1"):
        (instances / name).mkdir(parents=True)
    removed = _trace.sweep_leftovers(str(tmp_path), alive=lambda pid: pid == 222)
    assert removed == ["netstate-111-ab12"]
    assert sorted(os.listdir(instances)) == ["netstate-222-cd34", "netstate-x-1", "other-tool"]


def test_buffer_is_bounded_in_total():
    assert _trace.buffer_kb_per_cpu(1) == _trace.BUFFER_KB_MAX
    assert _trace.buffer_kb_per_cpu(4096) == _trace.BUFFER_KB_MIN
    assert _trace.buffer_kb_per_cpu(64) * 64 <= _trace.BUFFER_TOTAL_KB


def test_seconds_are_bounded():
    for bad in (0, -1, 61):
        with pytest.raises(ValueError, match="trace"):
            _trace.collect_churn(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(data):
    _trace.parse_event_line(data)
    _trace.ChurnAggregate(lambda tgid: None).feed(data)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=250), st.binary(max_size=8))
def test_mutated_recorded_lines_never_raise(position, junk):
    with open(FIXTURE, encoding="utf-8") as f:
        line = json.load(f)["lines"][0].encode()
    mutated = line[:position] + junk + line[position + len(junk) :]
    event = _trace.parse_event_line(mutated)
    if event is not None:
        assert 0 <= event["peer"][1] <= 65535
        assert isinstance(event["interrupt"], bool)


@pytest.mark.parametrize("bad", [-1, 61, True, "10", [5]])
def test_trace_option_is_validated(bad):
    with pytest.raises(ValueError, match=r"^trace: must be a number of seconds from 0 to 60"):
        _facts.normalize_options({"trace": bad})


def test_trace_off_adds_no_churn():
    warnings = []
    assert _facts._churn_window({"trace": 0, "interval": 0}, warnings) is None
    assert warnings == []


def test_trace_limit_is_the_option_limit():
    # one number: the option check (_facts) and collect_churn's own check (_trace)
    assert _trace.MAX_SECONDS is _facts.MAX_TRACE_SECONDS
    with pytest.raises(ValueError, match=r"^trace: must be a number of seconds from 0 to 60"):
        _trace.collect_churn(_facts.MAX_TRACE_SECONDS + 1)
