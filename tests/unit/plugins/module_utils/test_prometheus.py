"""The one Prometheus renderer: text exposition of recorded tcp_state facts, parsed strictly.

Facts come from lab namespaces (fixtures/facts/lab_*.json, recorded by record_facts.py). The parser
below applies the text exposition format 0.0.4 as node_exporter's textfile collector does: one HELP
and one TYPE per family, before its samples, families contiguous, label names and values in the
grammar (only \\\\, \\" and \\n escapes), finite values, no duplicate series, a final line feed.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import stat
import threading
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ansible_collections.netstate.tcp.plugins.module_utils import _prometheus as prom
from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import severity_rank
from ansible_collections.netstate.tcp.plugins.module_utils._netlink import STATES
from ansible_collections.netstate.tcp.plugins.plugin_utils import _fleet_report as fr

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "facts"
RECORDED = {
    path.stem: json.loads(path.read_text())
    for path in sorted(FIXTURES.glob("lab_*.json"))
    if not path.name.endswith(".report.json")
}

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"((?:[^"\\\n]|\\[\\"n])*)"'
LABEL = re.compile(rf"([a-zA-Z_][a-zA-Z0-9_]*)={LABEL_VALUE}(?:,(?=.)|\Z)", re.DOTALL)
SAMPLE = re.compile(rf"({NAME})(?:\{{(.*)\}})? (\S+)")
FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def _labels(text: str) -> tuple:
    labels, position = [], 0
    while position < len(text):
        match = LABEL.match(text, position)
        assert match, f"bad label set {{{text}}} at {position}"
        labels.append((match.group(1), _unescape(match.group(2))))
        position = match.end()
    names = [name for name, _value in labels]
    assert len(names) == len(set(names)), f"repeated label name in {{{text}}}"
    return tuple(labels)


def parse_exposition(text: str) -> dict:
    """{(metric name, ((label, value), ...)): float}; AssertionError on anything a strict scraper refuses."""
    assert text.endswith("\n") and not text.endswith("\n\n"), "the file ends with exactly one line feed"
    helped, typed, finished, samples = set(), {}, set(), {}
    current = None
    for line in text[:-1].split("\n"):
        if line.startswith("#"):
            match = re.fullmatch(rf"# (HELP|TYPE) ({NAME}) (.*)", line)
            assert match, f"bad comment line {line!r}"
            kind, name, rest = match.groups()
            assert name not in finished, f"family {name} is split"
            if current and current != name:
                finished.add(current)
            current = name
            if kind == "HELP":
                assert name not in helped and name not in typed, f"HELP for {name} twice or after TYPE"
                assert re.fullmatch(r"(?:[^\\\n]|\\[\\n])*", rest), f"bad HELP escape {line!r}"
                helped.add(name)
            else:
                assert rest in ("gauge", "counter", "untyped"), line
                assert name not in typed, f"second TYPE for {name}"
                typed[name] = rest
            continue
        match = SAMPLE.fullmatch(line)
        assert match, f"not a sample line: {line!r}"
        name, label_text, value = match.groups()
        assert name == current and name in typed, f"sample {name} outside its family"
        assert FLOAT.fullmatch(value), f"not a finite number: {line!r}"
        number = float(value)
        assert math.isfinite(number), line
        key = (name, _labels(label_text or ""))
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = number
    return samples


def _value(samples, name, **labels):
    return samples.get((prom.PREFIX + name, tuple(labels.items())))


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_facts_render_every_figure(name):
    facts = RECORDED[name]
    samples = parse_exposition(prom.render_tcp_state(facts))
    for state in STATES:
        assert _value(samples, "sockets", state=state) == facts["states"][state]
    counts = {}
    for finding in facts["findings"]:
        key = (finding["code"], finding["severity"])
        counts[key] = counts.get(key, 0) + 1
    rendered = {dict(labels).get("code"): value for (metric, labels), value in samples.items() if "findings" in metric}
    assert rendered == {code: n for (code, _severity), n in counts.items()}
    worst = max((severity_rank(f["severity"]) + 1 for f in facts["findings"]), default=0)
    assert _value(samples, "worst_severity") == worst
    pressure = facts["pressure"]
    assert _value(samples, "orphans") == pressure["orphans"]["count"]
    assert _value(samples, "time_wait_ratio") == pressure["time_wait"]["ratio"]
    expected_orphan_ratio = pressure["orphans"]["ratio"]
    assert _value(samples, "orphans_ratio") == expected_orphan_ratio  # None (absent) inside a namespace
    assert _value(samples, "audit_timestamp_seconds") == prom.epoch_seconds(facts["collected_at"])
    assert all(metric.startswith(prom.PREFIX) for metric, _labels in samples)


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_controller_renders_what_the_host_writes(name):
    """One renderer: the fleet report's prom text for a host is the host's own file."""
    facts = RECORDED[name]
    entry = fr.host_entry(name, result={"ansible_facts": {"tcp_state": facts}})
    assert entry["status"] == "ok"
    assert fr.render_prom(entry, facts["collected_at"]) == prom.render_tcp_state(facts)


def _with_churn_and_conntrack(facts):
    """The churn (trace) and conntrack blocks in the shape of docs/architecture.md's tcp_state schema."""
    facts = copy.deepcopy(facts)
    facts["churn"] = {
        "source": "tracefs",
        "seconds": 5.0,
        "events": 9120,
        "lost_events": 3,
        "processes": [
            {"pid": 4242, "comm": 'api "v2"\\x', "connects": 3000, "active_closes": 2990, "passive_closes": 0,
             "connects_per_second": 600.0, "active_closes_per_second": 598.0, "top_peers": []},
            {"pid": 77, "comm": "worker\nfake 1", "connects": 10, "active_closes": 0, "passive_closes": 10,
             "connects_per_second": 2.0, "active_closes_per_second": 0.0, "top_peers": []},
        ],
        "peers": [{"address": "10.0.0.5", "port": 6601, "connects": 3000, "active_closes": 2990}],
    }  # fmt: skip
    facts["conntrack"] = {
        "available": True,
        "count": 1200,
        "max": 262144,
        "ratio": 1200 / 262144,
        "states": {"ESTABLISHED": 900, "TIME_WAIT": 250, "CLOSE_WAIT": 50},
        "timeouts": {"time_wait": 120},
    }
    return facts


def test_churn_and_conntrack_metrics_when_present():
    facts = _with_churn_and_conntrack(RECORDED["lab_close_wait_leak"])
    samples = parse_exposition(prom.render_tcp_state(facts))
    churn, conntrack = facts["churn"], facts["conntrack"]
    assert _value(samples, "churn_seconds") == churn["seconds"]
    assert _value(samples, "churn_events") == churn["events"]
    assert _value(samples, "churn_lost_events") == churn["lost_events"]
    for process in churn["processes"]:
        labels = {"pid": str(process["pid"]), "comm": process["comm"]}  # the parser unescapes: the comm comes back
        assert _value(samples, "churn_process_connects_per_second", **labels) == process["connects_per_second"]
        assert (
            _value(samples, "churn_process_active_closes_per_second", **labels) == process["active_closes_per_second"]
        )
    peer = churn["peers"][0]
    assert _value(samples, "churn_peer_connects", address=peer["address"], port=str(peer["port"])) == peer["connects"]
    assert _value(samples, "conntrack_entries") == conntrack["count"]
    assert _value(samples, "conntrack_max") == conntrack["max"]
    assert _value(samples, "conntrack_ratio") == pytest.approx(conntrack["ratio"])
    for state, count in conntrack["states"].items():
        assert _value(samples, "conntrack_tcp_entries", state=state) == count


def test_no_churn_or_conntrack_metrics_when_not_measured():
    facts = _with_churn_and_conntrack(RECORDED["lab_clean"])
    facts["churn"] = dict(facts["churn"], source=None)  # tracing not possible: nothing was measured
    facts["conntrack"] = {"available": False}
    samples = parse_exposition(prom.render_tcp_state(facts))
    assert not [m for m, _labels in samples if m.startswith(("netstate_tcp_churn", "netstate_tcp_conntrack"))]


HOSTILE_VALUES = [float("nan"), float("inf"), -float("inf"), True, "1\nnetstate_tcp_evil 1", "7", None, [1], {}]


@pytest.mark.parametrize("value", HOSTILE_VALUES, ids=repr)
def test_only_finite_numbers_become_samples(value):
    facts = _with_churn_and_conntrack(RECORDED["lab_close_wait_leak"])
    facts["states"]["CLOSE_WAIT"] = value
    facts["pressure"]["orphans"]["count"] = value
    facts["churn"]["events"] = value
    facts["conntrack"]["count"] = value
    facts["churn"]["processes"][0]["connects_per_second"] = value
    samples = parse_exposition(prom.render_tcp_state(facts))
    assert _value(samples, "sockets", state="CLOSE_WAIT") is None
    assert _value(samples, "orphans") is None
    assert _value(samples, "churn_events") is None
    assert _value(samples, "conntrack_entries") is None
    assert not [m for m, _labels in samples if m == "netstate_tcp_evil"]
    assert _value(samples, "sockets", state="LISTEN") == facts["states"]["LISTEN"]


@given(st.text(max_size=40))
@example('\\"} 1\nnetstate_tcp_evil 1\n# TYPE x')
@example("\\n")
def test_any_label_value_round_trips(text):
    facts = copy.deepcopy(RECORDED["lab_close_wait_leak"])
    facts["findings"] = [{"code": text, "severity": "critical"}]
    samples = parse_exposition(prom.render_tcp_state(facts))
    assert _value(samples, "findings", code=text, severity="critical") == 1
    assert _value(samples, "worst_severity") == severity_rank("critical") + 1


# ---------------------------------------------------------------------------
# the textfile on the host


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("", "got ''"),
        (None, "got None"),
        (7, "got 7"),
        ("tcp_state.prom", "is relative"),
        ("../x/tcp_state.prom", "is relative"),
        ("/var/lib/x/tcp_state.txt", "does not end in .prom"),
        ("/var/lib/x/.prom", "does not end in .prom"),
        ("/var/lib/x/", "does not end in .prom"),
        ("/var/lib/x\n/tcp_state.prom", "control character"),
        ("/var/lib/x/tcp\x00state.prom", "control character"),
        ("/var/lib/x/tcp\x7fstate.prom", "control character"),
    ],
)
def test_textfile_path_checked(path, why):
    with pytest.raises(ValueError, match="prometheus_textfile: must be an absolute path") as raised:
        prom.check_textfile_path(path)
    assert why in str(raised.value)


def test_textfile_path_normalized():
    assert prom.check_textfile_path("/var/lib//node_exporter/./x/../tcp_state.prom") == (
        "/var/lib/node_exporter/tcp_state.prom"
    )


def test_textfile_written_0644_with_parents_0755_whatever_the_umask(tmp_path):
    path = tmp_path / "a" / "b" / "tcp_state.prom"
    text = prom.render_tcp_state(RECORDED["lab_close_wait_leak"])
    old = os.umask(0o077)
    try:
        prom.write_textfile(str(path), text, os.rename)
    finally:
        os.umask(old)
    assert path.read_text() == text
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o755
    assert sorted(p.name for p in path.parent.iterdir()) == ["tcp_state.prom"]  # no temporary file left


def test_textfile_replaces_an_existing_file_and_resets_its_mode(tmp_path):
    path = tmp_path / "tcp_state.prom"
    path.write_text("old\n")
    path.chmod(0o600)
    prom.write_textfile(str(path), "netstate_tcp_x 1\n", os.rename)
    assert path.read_text() == "netstate_tcp_x 1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_textfile_never_replaces_a_symlink_or_directory(tmp_path, kind):
    path = tmp_path / "tcp_state.prom"
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    if kind == "symlink":
        path.symlink_to(target)
    else:
        path.mkdir()
    with pytest.raises(OSError, match="not a regular file"):
        prom.write_textfile(str(path), "netstate_tcp_x 1\n", os.rename)
    assert target.read_text() == "keep\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "tcp_state.prom"]


def test_failed_move_leaves_no_temporary_file(tmp_path):
    def refuse(_source, _target):
        # what AnsibleModule.atomic_move raises on ansible-core >= 2.19: a bare Exception
        raise Exception("Could not replace: disk full")

    with pytest.raises(OSError, match=r"cannot replace .*disk full"):
        prom.write_textfile(str(tmp_path / "tcp_state.prom"), "netstate_tcp_x 1\n", refuse)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    path = str(tmp_path / "tcp_state.prom")
    texts = [prom.render_tcp_state(RECORDED[name]) for name in sorted(RECORDED)[:4]]
    threads = [
        threading.Thread(target=lambda t=text: [prom.write_textfile(path, t, os.rename) for _round in range(25)])
        for text in texts
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Path(path).read_text() in texts
    assert os.listdir(tmp_path) == ["tcp_state.prom"]
