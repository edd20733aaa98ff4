"""Merging partial reports (issue 12 item 5): what the fast paths of the merge may and may not take.

Every report here is written by the report code itself from tcp_state facts recorded on real
namespaces (fixtures/facts_*.json), then edited as a hostile or foreign controller could: a
non-finite number, keys the report check does not read, strings of a str subclass.
"""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import pytest
from ansible.utils.unsafe_proxy import AnsibleUnsafeText
from hypothesis import example, given
from hypothesis import strategies as st

from ansible_collections.netstate.tcp.plugins.plugin_utils import _fleet_report as fr

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAMES = ("close_wait_leak", "time_wait_churn", "fin_wait1_zero_window", "clean", "initial_ns")
RECORDED = {name: json.loads((FIXTURES / f"facts_{name}.json").read_text()) for name in NAMES}
# a float no report holds, replaced in the JSON text by an overflowing literal
MARK = 12345.678125


def registered(facts):
    return {"changed": False, "ansible_facts": {"tcp_state": facts}}


def written(tmp_path, name="slice", prefix="") -> dict:
    """The JSON object of a report.json written by write_reports from the recorded hosts."""
    pairs = [(fr.host_entry(prefix + n, result=registered(f)), f) for n, f in RECORDED.items()]
    pairs.append((fr.host_entry(prefix + "down", result={"unreachable": True, "msg": "gone"}), None))
    files = fr.write_reports(fr.build_report(pairs), str(tmp_path / name), ["json"])["files"]
    return json.loads(Path(files["json"]).read_text())


def save(tmp_path, report, name="edited.json", literal=None) -> str:
    text = json.dumps(report)
    if literal is not None:
        assert text.count(repr(MARK)) == 1
        text = text.replace(repr(MARK), literal)
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def ok_host(report, with_findings=True):
    return next(h for h in report["hosts"] if h["status"] == "ok" and bool(h["findings"]) == with_findings)


def _pressure(key):
    return lambda report: ok_host(report)["pressure"].__setitem__(key, MARK)


def _sysctl(report):
    finding = next(f for h in report["hosts"] for f in h["findings"] if f["remediation"].get("sysctls"))
    finding["remediation"]["sysctls"]["net.ipv4.tcp_orphan_retries"] = MARK


def _sysctl_list(report):
    ok_host(report)["findings"][0]["remediation"]["sysctls"] = {"net.ipv4.ip_local_port_range": [1024, MARK]}


def _evidence(report):
    ok_host(report)["findings"][0]["evidence"]["top_peers"] = [{"address": "10.0.0.1", "ratio": MARK}]


# every place a float sits in a report, and places no check reads
FLOAT_PLACES = {
    **{f"pressure.{key}": _pressure(key) for key in fr.PRESSURE_KEYS if "ratio" in key},
    "remediation.sysctls value": _sysctl,
    "remediation.sysctls list element": _sysctl_list,
    "evidence, nested": _evidence,
    "a key of an entry no check reads": lambda report: ok_host(report).__setitem__("load", MARK),
    "a key of a finding no check reads": lambda report: ok_host(report)["findings"][0].__setitem__("weight", MARK),
    "a key of the report no check reads": lambda report: report.__setitem__("x", MARK),
    "totals": lambda report: report["totals"].__setitem__("sockets", MARK),
}


@pytest.mark.parametrize("literal", ["1e999", "-1e999", "1" + "0" * 400 + ".5"])
@pytest.mark.parametrize("place", list(FLOAT_PLACES))
def test_a_non_finite_number_anywhere_in_a_partial_report_is_refused(tmp_path, place, literal):
    report = written(tmp_path)
    FLOAT_PLACES[place](report)
    path = save(tmp_path, report, literal=literal)
    with pytest.raises(fr.ReportError, match="not a JSON report") as merging:
        fr.merge_reports([path])
    assert path in str(merging.value) and literal[:20] in str(merging.value)
    with pytest.raises(fr.ReportError, match="not a JSON report"):
        fr.load_report(path)
    # the same report with a finite number there is taken (what is refused is the number)
    FLOAT_PLACES[place](report)
    fr.merge_reports([save(tmp_path, report, name="finite.json", literal="0.5")])


def _keys(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield key
            yield from _keys(value)
    elif isinstance(node, list):
        for value in node:
            yield from _keys(value)


def test_the_merged_report_holds_no_key_the_check_did_not_read(tmp_path):
    report = written(tmp_path)
    host = ok_host(report)
    host["injected_entry"] = "<b>x</b>"
    host["states"]["injected_state"] = 7
    host["pressure"]["injected_pressure"] = 1
    host["findings"][0]["injected_finding"] = {"a": 1}
    host["findings"][0]["remediation"]["injected_remediation"] = "rm -rf /"
    quiet = ok_host(report, with_findings=False)
    quiet["findings"] = [{"code": "CLOSE_WAIT_LEAK", "severity": "warning"}]  # no summary, evidence, remediation
    for rows in report["offenders"].values():
        for row in rows:
            row["injected_offender"] = "x"
    assert any(report["offenders"].values())
    merged = fr.build_merged_report([save(tmp_path, report)])
    assert not [key for key in _keys(merged) if key.startswith("injected")]
    assert [row["host"] for rows in merged["offenders"].values() for row in rows] == [
        row["host"] for rows in report["offenders"].values() for row in rows
    ]
    entry = next(e for e in merged["hosts"] if e["name"] == host["name"])
    assert entry["total"] == host["total"] and entry["states"] == {s: host["states"][s] for s in fr.STATES}
    padded = next(e for e in merged["hosts"] if e["name"] == quiet["name"])
    assert padded["findings"] == [
        {"code": "CLOSE_WAIT_LEAK", "severity": "warning", "summary": "", "evidence": {}, "remediation": {}}
    ]
    assert padded["severity"] == "warning"
    for render in fr.RENDERERS.values():
        render(merged)


def test_an_entry_taken_as_written_equals_the_rebuilt_one(tmp_path):
    """entry_from_report's two paths: an ok host as written is fixed in place, any other is rebuilt."""
    for raw in written(tmp_path)["hosts"]:
        for lie in ({}, {"severity": "info", "error": "stale", "total": None}):
            as_written = {**copy.deepcopy(raw), **lie}
            foreign = {**copy.deepcopy(as_written), "extra": 1}  # one key more: rebuilt
            assert fr.ENTRY_CHECK.ok(as_written) and fr.ENTRY_CHECK.ok(foreign)
            fast, rebuilt = fr.entry_from_report(as_written), fr.entry_from_report(foreign)
            assert fast == rebuilt and list(fast) == list(rebuilt)
            if raw["status"] == "ok":
                assert list(fast["states"]) == list(fr.STATES) and list(fast["pressure"]) == list(fr.PRESSURE_KEYS)
                assert fast is as_written
                assert fast["severity"] == raw["severity"] and fast["total"] == raw["total"]
                assert fast["error"] is None


def unsafe(node):
    """Every string of a result as ansible-core 2.16 registers it: AnsibleUnsafeText, keys included.

    ansible-core 2.19 (this venv) keeps the class only as a name whose constructor returns a plain
    str; str.__new__ makes the str subclass instance 2.16's constructor made.
    """
    if isinstance(node, str):
        return str.__new__(AnsibleUnsafeText, node)
    if isinstance(node, dict):
        return {unsafe(key): unsafe(value) for key, value in node.items()}
    if isinstance(node, list):
        return [unsafe(value) for value in node]
    return node


@pytest.mark.parametrize("name", NAMES)
def test_a_host_registered_by_ansible_core_2_16_takes_the_fast_check(name):
    facts = unsafe(RECORDED[name])
    assert facts["source"].__class__ is AnsibleUnsafeText and next(iter(facts["states"])).__class__ is AnsibleUnsafeText
    assert fr.FACTS_CHECK.ok(facts)
    assert fr.host_entry("h1", result=registered(facts)) == fr.host_entry("h1", result=registered(RECORDED[name]))
    entry = unsafe(fr.host_entry("h1", result=registered(RECORDED[name])))
    assert fr.ENTRY_CHECK.ok(entry)


@pytest.mark.parametrize("value", [True, False, 1.0, "3", None])
def test_a_count_is_an_int_and_never_a_bool(value):
    facts = copy.deepcopy(RECORDED["clean"])
    facts["states"]["TIME_WAIT"] = value
    assert not fr.FACTS_CHECK.ok(facts)
    assert "states.TIME_WAIT" in fr.FACTS_CHECK(facts, "")
    assert fr.host_entry("h1", result=registered(facts))["status"] == "malformed"


NAME_TEXT = st.text(alphabet="ab-. 0129\u0663Z\n\x00", max_size=8)


@given(st.lists(NAME_TEXT, max_size=12))
@example(["h10", "h9", "h09", "h1"])
@example(["a\n1", "a\n22"])
@example(["r0-host00002", "r1-host00001", "r0-host00010"])
def test_natural_keys_order_as_natural_key(names):
    keys = dict(zip(names, fr.natural_keys(names)))
    assert sorted(names, key=keys.__getitem__) == sorted(names, key=fr.natural_key)


def test_names_of_one_shape_are_their_own_natural_keys():
    names = [f"r{r}-host{h:05d}.example.net" for r in (3, 0) for h in (10, 2, 9)]
    assert fr.natural_keys(names) is names
    assert sorted(names) == sorted(names, key=fr.natural_key)
    mixed = ["web10", "web9"]
    assert fr.natural_keys(mixed) == [fr.natural_key(n) for n in mixed]


def _slices(tmp_path, count=4, shared=True):
    """`count` report.json paths: distinct hosts per slice and, when shared, one host in every slice (down
    in all but the last slice, where it answered), so the choice of a host across slices is exercised."""
    paths = []
    for index in range(count):
        report = written(tmp_path, name=f"w{index}", prefix=f"s{index}-")
        if not shared:
            paths.append(save(tmp_path, report, name=f"slice{index}.json"))
            continue
        shared = copy.deepcopy(ok_host(report)) if index == count - 1 else None
        if shared is None:
            shared = next(h for h in report["hosts"] if h["status"] != "ok")
            shared = dict(shared)
        shared["name"] = "everywhere"
        report["hosts"].append(shared)
        paths.append(save(tmp_path, report, name=f"slice{index}.json"))
    return paths


@pytest.fixture
def children(monkeypatch):
    """The report paths each forked reader was given (a merge that forks none leaves this empty)."""
    given = []

    class Counted(fr._forked.ForkedCall):
        def __init__(self, function, paths):
            given.append(list(paths))
            super().__init__(function, paths)

    monkeypatch.setattr(fr._forked, "ForkedCall", Counted)
    return given


def test_a_forked_merge_equals_the_merge_in_one_process(tmp_path, children):
    paths = _slices(tmp_path)
    alone = fr.merge_reports(paths, fork_min_bytes=1 << 40)
    assert children == []
    forked = fr.merge_reports(paths, fork_min_bytes=0)
    assert forked == alone
    assert len(children) == 1 and children[0] == paths[-len(children[0]) :] and len(children[0]) < len(paths)
    pairs, offenders, sources, tallies = forked
    assert tallies == []  # "everywhere" is in every slice: the hosts are taken one by one
    names = [entry["name"] for entry, _facts in pairs]
    assert len(names) == len(set(names)) == 4 * (len(NAMES) + 1) + 1
    everywhere = next(entry for entry, _facts in pairs if entry["name"] == "everywhere")
    assert everywhere["status"] == "ok"  # the slice where it answered, read by the child
    assert [source["path"] for source in sources] == paths
    assert offenders  # the recorded leaks are offenders, some of them from the child's slices
    report = fr.build_report(pairs, offenders=offenders)
    assert fr.render_json(report) == fr.render_json(fr.build_report(alone[0], offenders=alone[1]))


def _unstamped(report):
    """The report without what differs between two runs on the same reports (generated_at, merged_from)."""
    return {key: value for key, value in report.items() if key not in ("generated_at", "merged_from")}


@pytest.mark.parametrize("fork_min_bytes", [0, 1 << 40], ids=["forked", "one process"])
def test_reports_without_a_common_host_add_up_their_tallies(tmp_path, children, fork_min_bytes):
    # job slices: no host in two reports, so each report's tally (made by its reader) is part of the answer
    paths = _slices(tmp_path, count=3, shared=False)
    pairs, offenders, sources, tallies = fr.merge_reports(paths, fork_min_bytes=fork_min_bytes)
    assert pairs == [] and len(tallies) == len(sources) == 3
    assert bool(children) == (fork_min_bytes == 0)
    merged = fr.build_merged_report(paths, fork_min_bytes=fork_min_bytes)
    # the same hosts taken one by one, as a merge with a host in two reports takes them
    one_by_one = fr.build_report([(entry, None) for tally in tallies for entry in tally.entries], offenders=offenders)
    assert _unstamped(merged) == _unstamped(one_by_one)
    assert merged["fleet"]["hosts"] == 3 * (len(NAMES) + 1)
    assert merged["findings_by_code"]["CLOSE_WAIT_LEAK"] == [
        "s0-close_wait_leak",
        "s1-close_wait_leak",
        "s2-close_wait_leak",
    ]
    assert merged["merged_from"] == [
        {"path": path, "generated_at": source["generated_at"]} for path, source in zip(paths, sources)
    ]


def test_a_host_twice_in_one_report_is_taken_once(tmp_path):
    report = written(tmp_path)
    twice = copy.deepcopy(ok_host(report))
    report["hosts"].append(twice)
    pairs, _offenders, _sources, tallies = fr.merge_reports([save(tmp_path, report)])
    assert tallies == [] and [entry["name"] for entry, _facts in pairs].count(twice["name"]) == 1
    merged = fr.build_merged_report([save(tmp_path, report)])
    assert merged["fleet"]["hosts"] == len(report["hosts"]) - 1
    assert sum(entry["total"] for entry in merged["hosts"] if entry["status"] == "ok") == merged["totals"]["sockets"]


def test_a_bad_report_read_by_the_child_is_named_as_in_one_process(tmp_path, children):
    paths = _slices(tmp_path, count=3)
    bad = json.loads(Path(paths[2]).read_text())
    bad["hosts"][0]["states"]["CLOSE_WAIT"] = -1
    paths[2] = save(tmp_path, bad, name="bad.json")
    with pytest.raises(fr.ReportError) as alone:
        fr.merge_reports(paths, fork_min_bytes=1 << 40)
    with pytest.raises(fr.ReportError) as forked:
        fr.merge_reports(paths, fork_min_bytes=0)
    assert str(forked.value) == str(alone.value)
    assert "bad.json" in str(forked.value) and paths[2] in children[0]
    # two bad reports: the first one is named, whichever process read it
    paths[0] = save(tmp_path, bad, name="first-bad.json")
    with pytest.raises(fr.ReportError, match=r"first-bad\.json"):
        fr.merge_reports(paths, fork_min_bytes=0)


def test_a_child_that_dies_hands_its_reports_back(tmp_path, monkeypatch, children):
    paths = _slices(tmp_path, count=4)
    parent = os.getpid()
    read_partial = fr._read_partial

    def dies_in_the_child(given):
        # the child sends its first report, then dies: the caller reads the others itself
        if os.getpid() != parent and given != child_paths[0]:
            os.kill(os.getpid(), signal.SIGKILL)
        return read_partial(given)

    alone = fr.merge_reports(paths, fork_min_bytes=1 << 40)
    fr.merge_reports(paths, fork_min_bytes=0)
    child_paths = children.pop()
    assert len(child_paths) >= 2  # one sent, the others read by the caller
    monkeypatch.setattr(fr, "_read_partial", dies_in_the_child)
    assert fr.merge_reports(paths, fork_min_bytes=0) == alone
    assert children == [child_paths]
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # the child was reaped
