"""What a managed host sends is hostile: the fleet report validates it and escapes it per format.

Issue 10 items 5, 6, 10 and 11. Every payload starts from tcp_state facts recorded on real
namespaces (fixtures/facts_*.json) with one field replaced, as a broken or hostile host would send
them. The checks parse each format the way its consumer does: json.loads refusing NaN, csv, a
strict Prometheus text-format parser (the rules node_exporter's textfile collector applies), an
HTML parser, and the Markdown table grammar (unescaped pipes split cells).
"""

from __future__ import annotations

import copy
import csv
import html.parser
import io
import json
import math
import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ansible_collections.netstate.tcp.plugins.plugin_utils import _fleet_report as fr

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAMES = ("close_wait_leak", "time_wait_churn", "fin_wait1_zero_window", "clean", "initial_ns")
RECORDED = {name: json.loads((FIXTURES / f"facts_{name}.json").read_text()) for name in NAMES}
MARKUP = '<script>alert(1)</script>|`x`\n| a | b |\r\n=cmd|" /C calc"!A0'


def registered(facts):
    return {"changed": False, "ansible_facts": {"tcp_state": facts}}


def fleet_with(name, facts):
    pairs = [(fr.host_entry(n, result=registered(f)), f) for n, f in RECORDED.items()]
    entry = fr.host_entry(name, result=registered(facts))
    pairs.append((entry, facts if entry["status"] == "ok" else None))
    return pairs


def strict_json(text):
    def refuse(constant):
        raise ValueError(f"non-finite number {constant} in JSON")

    return json.loads(text, parse_constant=refuse)


PROM_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
PROM_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
PROM_SAMPLE = re.compile(rf"^({PROM_NAME})(\{{(?:{PROM_LABEL})(?:,{PROM_LABEL})*\}})? (\S+)$")


def parse_prom(text):
    """Strict text exposition format: what node_exporter's textfile collector accepts.

    Returns {(name, labels): value}; raises AssertionError on anything it would reject
    (scrape error), on a non-finite value and on a sample without its # TYPE.
    """
    assert text.endswith("\n")
    typed, samples = set(), {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            assert re.match(rf"^# HELP {PROM_NAME} [^\n]*$", line), line
            continue
        if line.startswith("# TYPE "):
            match = re.match(rf"^# TYPE ({PROM_NAME}) (gauge|counter)$", line)
            assert match, line
            assert match.group(1) not in typed, f"second TYPE for {match.group(1)}"
            typed.add(match.group(1))
            continue
        match = PROM_SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        name, labels, value = match.groups()
        assert name in typed, f"sample {name} before its TYPE"
        number = float(value)
        assert math.isfinite(number), line
        key = (name, labels or "")
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = number
    return samples


class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs


def check_every_renderer(report):
    """Every format of the report parses as its consumer parses it; returns the texts."""
    texts = {fmt: render(report) for fmt, render in fr.RENDERERS.items()}
    strict_json(texts["json"])
    rows = list(csv.reader(io.StringIO(texts["csv"])))
    assert len(rows) == len(report["hosts"]) + 1
    for row in rows[1:]:
        for cell in row:
            assert not cell.startswith(fr.CSV_FORMULA_PREFIXES), cell
    page = _Collect()
    page.feed(texts["html"])
    assert page.tags.count("script") == 1  # the page's own script only
    for name, value in page.attrs:
        assert not name.startswith("on"), name
        if name in ("x", "y", "width", "height", "x1", "x2", "y1", "y2"):
            assert math.isfinite(float(value)), (name, value)
    header = next(line for line in texts["md"].splitlines() if line.startswith("| host | status |"))
    cells = len(re.split(r"(?<!\\)\|", header))
    # host text is escaped everywhere but inside the query's fenced JSON block, where Markdown shows text as is
    assert "<script" not in re.sub(r"(?ms)^(`{3,})json$.*?^\1$", "", texts["md"])
    hosts_table = texts["md"].split("## Hosts (worst first)", 1)[1].split("\n\n", 2)[1]
    for line in hosts_table.splitlines():
        assert len(re.split(r"(?<!\\)\|", line)) == cells, line
    # the terminal summary: a header, one line per host (capped), the fleet line and what follows it
    summary = fr.summary_table(report).splitlines()
    shown = min(len(report["hosts"]), fr.SUMMARY_MAX_HOSTS)
    assert [line.split(" ", 1)[0] for line in summary[1 : 1 + shown]] == [
        fr.one_line(e["name"])[:24].split(" ", 1)[0] for e in report["hosts"][:shown]
    ]
    assert sum(line.startswith("fleet: ") for line in summary) == 1
    for entry in report["hosts"]:
        if entry["status"] == "ok":
            parse_prom(fr.render_prom(entry, report["generated_at"]))
    return texts


# ---------------------------------------------------------------------------
# item 5: one malformed host does not break the fleet report


def _set(path, value):
    def mutate(facts):
        node = facts
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _first_finding(key, value):
    def mutate(facts):
        facts["findings"][0][key] = value

    return mutate


def _remediation(key, value):
    def mutate(facts):
        facts["findings"][0]["remediation"][key] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (_remediation("sysctls", ["net.ipv4.tcp_fin_timeout", 30]), "findings[0].remediation.sysctls"),
        (_remediation("text", {"x": 1}), "findings[0].remediation.text"),
        (_remediation("sysctls", {"net.ipv4.ip_local_port_range": [[1], 2]}), "ip_local_port_range[0]"),
        (_remediation("sysctls", {"net.core.somaxconn": float("nan")}), "net.core.somaxconn"),
        (_first_finding("remediation", ["a"]), "findings[0].remediation"),
        (_first_finding("summary", 12), "findings[0].summary"),
        (_first_finding("evidence", {"ratio": float("nan")}), "findings[0].evidence.ratio"),
        (_first_finding("evidence", {"x": {"y": float("inf")}}), "findings[0].evidence.x.y"),
        (_first_finding("code", "<b>X</b>"), "findings[0].code"),
        (_set(("pressure", "orphans", "ratio"), float("nan")), "pressure.orphans.ratio"),
        (_set(("pressure", "memory", "ratio_to_high"), float("-inf")), "pressure.memory.ratio_to_high"),
        (_set(("pressure", "memory", "pages"), "348"), "pressure.memory.pages"),
        (_set(("pressure", "time_wait"), []), "pressure.time_wait"),
        (_set(("top", "by_local_port", "CLOSE_WAIT"), ["x"]), "top.by_local_port.CLOSE_WAIT[0]"),
        (_set(("top", "by_local_port", "NOT_A_STATE"), []), "top.by_local_port.NOT_A_STATE"),
        (_set(("top", "by_peer", "CLOSE_WAIT"), [{"address": ["1"], "count": 5}]), "top.by_peer.CLOSE_WAIT[0].address"),
        (_set(("owners", "CLOSE_WAIT"), [{"pid": [1], "comm": "x", "sockets": 3}]), "owners.CLOSE_WAIT[0].pid"),
        (_set(("owners", "CLOSE_WAIT"), [{"pid": 1, "comm": {}, "sockets": 3}]), "owners.CLOSE_WAIT[0].comm"),
        (_set(("total",), float("nan")), "total"),
        (_set(("total",), True), "total"),
        (_set(("kernel",), ["6.1"]), "kernel"),
        (_set(("collected_at",), 7), "collected_at"),
    ],
)
def test_a_malformed_field_makes_one_host_malformed(mutate, reason):
    facts = copy.deepcopy(RECORDED["close_wait_leak"])
    mutate(facts)
    report = fr.build_report(fleet_with("odd", facts))
    entry = next(e for e in report["hosts"] if e["name"] == "odd")
    assert entry["status"] == "malformed"
    assert reason in entry["error"]
    assert report["fleet"]["ok"] == len(RECORDED)
    check_every_renderer(report)


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=8), st.integers(), max_size=3),
    st.just(MARKUP),
)


def _paths(node, prefix=()):
    """Every path into the facts, so a mutation can land on any of them."""
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node[:3]):
            yield from _paths(value, (*prefix, index))


PATHS = {name: [p for p in _paths(facts) if p] for name, facts in RECORDED.items()}


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(NAMES),
    data=st.data(),
    junk=JUNK,
    host=st.one_of(st.just("odd"), st.just(MARKUP), st.text(min_size=1, max_size=20)),
)
@example(name="close_wait_leak", data=None, junk=["a", "b"], host="odd")
# counter-examples hypothesis found: a bare CR in a host name split a CSV row; markup in a name
@example(name="close_wait_leak", data=None, junk=None, host="\r")
@example(name="time_wait_churn", data=None, junk=float("nan"), host=MARKUP)
def test_every_renderer_survives_any_mutated_host(name, data, junk, host):
    facts = copy.deepcopy(RECORDED[name])
    if data is None:  # the report's own example: remediation.sysctls a list
        path = ("findings", 0, "remediation", "sysctls")
    else:
        path = data.draw(st.sampled_from(PATHS[name]))
    node = facts
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = junk
    report = fr.build_report(fleet_with(host, facts), query="hosts[].name")
    entry = next(e for e in report["hosts"] if e["name"] == host)
    assert entry["status"] in ("ok", "malformed")
    if entry["status"] == "malformed":
        assert entry["error"]
    assert report["fleet"]["ok"] >= len(RECORDED)
    check_every_renderer(report)


def test_the_fast_check_takes_every_recorded_host():
    # the recorded hosts must not fall back to the explaining walk, which is what costs time
    for facts in RECORDED.values():
        assert fr.FACTS_CHECK.ok(facts)
        assert fr.FACTS_CHECK(facts, "") is None


@settings(max_examples=400, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), data=st.data(), junk=JUNK)
@example(name="close_wait_leak", data=None, junk=True)
@example(name="time_wait_churn", data=None, junk=float("inf"))
def test_the_fast_check_is_never_laxer_than_the_explanation(name, data, junk):
    """FACTS_CHECK.ok (generated from the schema) accepts nothing the explaining check refuses."""
    facts = copy.deepcopy(RECORDED[name])
    path = ("findings", 0, "evidence") if data is None else data.draw(st.sampled_from(PATHS[name]))
    node = facts
    for key in path[:-1]:
        node = node[key]
    if isinstance(node, list) and not node:
        return
    node[path[-1]] = junk
    problem = fr.FACTS_CHECK(facts, "")
    if fr.FACTS_CHECK.ok(facts):
        assert problem is None, problem
    assert (fr.check_facts(facts) == []) == (problem is None)


# ---------------------------------------------------------------------------
# item 6: host data is data, never markup


def hostile_facts():
    facts = copy.deepcopy(RECORDED["close_wait_leak"])
    finding = facts["findings"][0]
    finding["summary"] = MARKUP
    finding["remediation"]["text"] = MARKUP
    finding["remediation"]["kind"] = "<i>app</i>|`k`"
    finding["remediation"]["sysctls"] = {"net.ipv4.tcp_fin_timeout`<b>": "30|`x`"}
    facts["owners"]["CLOSE_WAIT"][0]["comm"] = MARKUP
    facts["top"]["by_peer"]["CLOSE_WAIT"][0]["address"] = '=HYPERLINK("http://x")'
    return facts


def test_markdown_escapes_host_strings():
    report = fr.build_report(fleet_with("web|<b>1</b>`x`", hostile_facts()))
    text = check_every_renderer(report)["md"]
    assert "<script>" not in text and "<b>" not in text and "<i>" not in text
    assert "&lt;script&gt;" in text
    # no unescaped backtick from host data opens a code span
    assert "`x`" not in text.replace("\\`", "")


def test_csv_neutralises_formula_cells():
    facts = hostile_facts()
    down = fr.host_entry("@evil", result={"unreachable": True, "msg": "=1+2"})
    pairs = [*fleet_with("+web", facts), (fr.host_entry("-cmd", result={"failed": True, "msg": "\tx"}), None)]
    pairs.append((down, None))
    report = fr.build_report(pairs)
    rows = list(csv.DictReader(io.StringIO(check_every_renderer(report)["csv"])))
    by_host = {row["host"]: row for row in rows}
    assert set(by_host) >= {"'+web", "'-cmd", "'@evil"}
    assert by_host["'@evil"]["error"] == "'=1+2"
    assert by_host["'-cmd"]["error"] == "'\tx"


def test_prometheus_labels_escaped_and_values_only_finite_numbers():
    entry = fr.host_entry("web", result=registered(RECORDED["close_wait_leak"]))
    # a crafted finding code or value never adds a sample line
    entry["findings"].append({"code": 'X"} 1\nnetstate_tcp_evil 1\n#', "severity": "critical"})
    entry["pressure"]["orphans_ratio"] = float("nan")
    entry["pressure"]["memory_pages"] = "1\nnetstate_tcp_evil 2"
    entry["pressure"]["time_wait_ratio"] = float("inf")
    samples = parse_prom(fr.render_prom(entry, "2026-11-21T10:00:00Z"))
    assert not any(name == "netstate_tcp_evil" for name, _labels in samples)
    assert ("netstate_tcp_orphans_ratio", "") not in samples
    assert ("netstate_tcp_memory_pages", "") not in samples
    assert (
        samples[("netstate_tcp_sockets", '{state="CLOSE_WAIT"}')] == RECORDED["close_wait_leak"]["states"]["CLOSE_WAIT"]
    )


def test_terminal_summary_one_line_per_host_whatever_the_error():
    pairs = fleet_with("web\nfake-host ok", RECORDED["clean"])
    pairs.append((fr.host_entry("db\r1", result={"failed": True, "msg": "line1\nline2\rfake ok line\x1b[2J"}), None))
    report = fr.build_report(pairs)
    lines = fr.summary_table(report).splitlines()
    assert len(lines) == 1 + len(report["hosts"]) + 1
    assert not any("\x1b" in line for line in lines)


def test_json_and_svg_never_hold_nan_or_inf():
    facts = copy.deepcopy(RECORDED["close_wait_leak"])
    facts["pressure"]["orphans"]["ratio"] = float("nan")
    report = fr.build_report(fleet_with("nan-host", facts))
    texts = check_every_renderer(report)
    assert 'width="nan"' not in texts["html"]
    # past the host checks, report.json refuses a non-finite number and the charts skip it
    ok = next(e for e in report["hosts"] if e["status"] == "ok")
    ok["pressure"] = {"orphans_ratio": float("nan"), "memory_ratio_to_high": float("inf")}
    with pytest.raises(ValueError, match="not JSON compliant"):
        fr.render_json(report)
    text = fr.render_html(report)
    assert ">nan%<" not in text and ">inf%<" not in text
    page = _Collect()
    page.feed(text)
    for name, value in page.attrs:
        if name in ("x", "y", "width", "height"):
            assert math.isfinite(float(value)), (name, value)


# ---------------------------------------------------------------------------
# item 10: a query that fails on the data does not lose the report


def test_query_failing_on_the_data_keeps_the_report():
    report = fr.build_report(fleet_with("web", RECORDED["clean"]), query="abs(hosts)")
    assert report["query_result"] is None
    assert "audit_query 'abs(hosts)' failed on the report" in report["query_error"]
    assert report["fleet"]["ok"] == len(RECORDED) + 1
    texts = check_every_renderer(report)
    assert "failed on the report" in texts["md"]
    assert "query error: audit_query 'abs(hosts)' failed" in fr.summary_table(report)


# ---------------------------------------------------------------------------
# item 11: files


def test_no_stray_files_and_explicit_modes_under_umask_000(tmp_path):
    report = fr.build_report(fleet_with("web", RECORDED["clean"]))
    out = tmp_path / "a" / "b" / "reports"
    old = os.umask(0)
    try:
        written = fr.write_reports(report, str(out), ["json", "md"])
    finally:
        os.umask(old)
    for directory in (tmp_path / "a", tmp_path / "a" / "b", out, Path(written["report_dir"])):
        assert stat.S_IMODE(directory.stat().st_mode) == fr.DIR_MODE, directory
    for path in written["files"].values():
        assert stat.S_IMODE(os.stat(path).st_mode) == fr.FILE_MODE
    assert sorted(os.listdir(out)) == sorted(["latest", os.path.basename(written["report_dir"])])


def test_write_reports_refuses_no_file_format(tmp_path):
    report = fr.build_report([])
    with pytest.raises(fr.ReportError, match="formats"):
        fr.write_reports(report, str(tmp_path / "r"), [])
    with pytest.raises(fr.ReportError, match="formats"):
        fr.write_reports(report, str(tmp_path / "r"), ["prom"])
    assert not (tmp_path / "r" / "latest").exists()


# ---------------------------------------------------------------------------
# issue 12: hosts sort naturally; history and merge read reports back as hostile input


def test_findings_of_the_current_diagnose_are_well_formed():
    """Every finding _diagnose makes from the recorded facts passes the check (list-valued sysctls, profile)."""
    from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import diagnose  # noqa: PLC0415

    for name, recorded in RECORDED.items():
        facts = copy.deepcopy(recorded)
        facts["findings"] = diagnose(facts)
        entry = fr.host_entry(name, result=registered(facts))
        assert entry["status"] == "ok", entry["error"]
    facts = copy.deepcopy(RECORDED["clean"])
    finding = {"code": "EPHEMERAL_PORT_PRESSURE", "severity": "warning", "summary": "s", "evidence": {}}
    finding["remediation"] = {
        "kind": "sysctl",
        "text": "t",
        "sysctls": {"net.ipv4.ip_local_port_range": [10240, 65000]},
    }
    finding["remediation"]["profile"] = "busy-client"
    facts["findings"] = [finding]
    assert fr.host_entry("h", result=registered(facts))["status"] == "ok"


def test_every_table_sorts_hosts_naturally():
    facts = RECORDED["clean"]
    names = ["h10", "h2", "h1", "web10.example", "web9.example"]
    report = fr.build_report([(fr.host_entry(n, result=registered(facts)), facts) for n in names])
    natural = ["h1", "h2", "h10", "web9.example", "web10.example"]
    assert [e["name"] for e in report["hosts"]] == natural
    for hosts in report["findings_by_code"].values():
        assert hosts == natural
    rows = list(csv.DictReader(io.StringIO(fr.render_csv(report))))
    assert [r["host"] for r in rows] == natural
    assert [line.split()[0] for line in fr.summary_table(report).splitlines()[1:6]] == natural


def written_report(tmp_path, name, pairs):
    report = fr.build_report(pairs)
    return fr.write_reports(report, str(tmp_path / name), ["json"]), report


def test_changes_against_the_previous_report(tmp_path):
    leak, clean = RECORDED["close_wait_leak"], RECORDED["clean"]
    before = [(fr.host_entry(n, result=registered(f)), f) for n, f in (("h1", clean), ("h2", leak), ("h9", clean))]
    _written, previous = written_report(tmp_path, "r", before)
    worse = copy.deepcopy(leak)
    worse["findings"][0]["severity"] = "critical"
    worse["states"]["CLOSE_WAIT"] += 7
    now = [(fr.host_entry(n, result=registered(f)), f) for n, f in (("h1", leak), ("h2", worse), ("h3", clean))]
    report = fr.build_report(now)
    changes = fr.compare_reports(fr.load_report(str(tmp_path / "r")), report)
    assert changes["previous"] == previous["generated_at"]
    leak_codes = sorted({f["code"] for f in leak["findings"]})
    assert [(r["host"], r["code"]) for r in changes["new_findings"]] == [("h1", c) for c in leak_codes]
    assert changes["resolved_findings"] == []
    code = leak["findings"][0]["code"]
    assert {"host": "h2", "code": code, "severity": "critical", "previous": leak["findings"][0]["severity"]} in changes[
        "severity_changes"
    ]
    assert changes["hosts_added"] == ["h3"] and changes["hosts_removed"] == ["h9"]
    assert changes["state_deltas"]["h2"] == {"CLOSE_WAIT": 7}
    assert changes["state_deltas"]["h1"] == {
        s: leak["states"][s] - clean["states"][s] for s in fr.STATES if leak["states"][s] != clean["states"][s]
    }
    report["changes"] = changes
    texts = check_every_renderer(report)
    assert texts["md"].index("## Since the last audit") < texts["md"].index("## Hosts")
    assert texts["html"].index('id="changes"') < texts["html"].index('id="hosts"')
    assert fr.summary_table(report).splitlines()[-1].startswith(f"since the last audit ({previous['generated_at']}): ")
    back = fr.compare_reports(fr.load_report(str(tmp_path / "r")), report)
    assert back == changes


def _report_bytes(hosts, **extra):
    return json.dumps({"schema": 1, "generated_at": "x", "hosts": hosts, **extra}).encode()


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff\xfe", "not a JSON report"),
        (_report_bytes([{"name": "a", "status": "ok", "findings": []}]).replace(b"[]}", b'[], "total": NaN}'), "NaN"),
        (_report_bytes([{"name": "a", "status": "ok", "findings": []}]).replace(b"[]}", b'[], "x": 1e999}'), "1e999"),
        # the same overflows without the tell-tale exponent, and in an encoding the byte scan cannot read
        (
            _report_bytes([{"name": "a", "status": "ok", "findings": []}]).replace(
                b"[]}", b'[], "x": 1' + b"0" * 400 + b".0}"
            ),
            "not a JSON report",
        ),
        (
            _report_bytes(
                [{"name": "a", "status": "ok", "findings": [{"code": "X", "severity": "info", "evidence": {"r": 1}}]}]
            )
            .decode()
            .replace('"r": 1', '"r": 9e999')
            .encode("utf-16-le"),
            "9e999",
        ),
        (b"[" * 100000, "not a JSON report"),
        (_report_bytes([]).replace(b'"schema": 1', b'"schema": 2'), "report schema 2 is not 1"),
        (_report_bytes([{"name": "a", "status": "ok", "findings": {}}]), "hosts[0].findings"),
        (_report_bytes([{"name": "<b>", "status": "pwned", "findings": []}]), "hosts[0].status"),
        (
            _report_bytes([], offenders={"ports": [{"host": "a", "state": "X", "port": 1, "count": 2}]}),
            "offenders.ports[0].state",
        ),
    ],
)
def test_a_hostile_previous_report_is_named_and_the_audit_goes_on(tmp_path, content, reason):
    path = tmp_path / "report.json"
    path.write_bytes(content)
    with pytest.raises(fr.ReportError, match=re.escape(str(path))) as raised:
        fr.load_report(str(path))
    assert reason in str(raised.value)
    report = fr.build_report(fleet_with("web", RECORDED["clean"]))
    report["changes"] = fr.compare_reports(None, report, previous_error=str(raised.value))
    assert report["changes"]["previous"] is None
    check_every_renderer(report)
    assert "no previous report to compare with" in fr.summary_table(report).splitlines()[-1]


def test_merge_equals_one_report_of_all_hosts(tmp_path):
    pairs = [(fr.host_entry(n, result=registered(f)), f) for n, f in RECORDED.items()]
    pairs.append((fr.host_entry("down", result={"unreachable": True, "msg": "gone"}), None))
    whole = fr.build_report(pairs, top=3)
    fr.write_reports(fr.build_report(pairs[:3], top=3), str(tmp_path / "a"), ["json"])
    fr.write_reports(fr.build_report(pairs[3:], top=3), str(tmp_path / "b"), ["json"])
    merged = fr.build_merged_report([str(tmp_path / "a"), str(tmp_path / "b" / "latest")], top=3)
    for key in ("fleet", "totals", "findings_by_code", "offenders"):
        assert merged[key] == whole[key], key
    strip = ("collected_at", "kernel", "source")
    assert [{k: v for k, v in e.items() if k not in strip} for e in merged["hosts"]] == [
        {k: v for k, v in e.items() if k not in strip} for e in whole["hosts"]
    ]
    assert len(merged["merged_from"]) == 2
    check_every_renderer(merged)


def test_merge_keeps_a_host_once_where_it_answered(tmp_path):
    clean = RECORDED["clean"]
    fr.write_reports(
        fr.build_report([(fr.host_entry("h1", result=registered(clean)), clean)]), str(tmp_path / "a"), ["json"]
    )
    down = [(fr.host_entry("h1", result={"unreachable": True, "msg": "x"}), None)]
    fr.write_reports(fr.build_report(down), str(tmp_path / "b"), ["json"])
    merged = fr.build_merged_report([str(tmp_path / "a"), str(tmp_path / "b")])
    assert [(e["name"], e["status"]) for e in merged["hosts"]] == [("h1", "ok")]


def test_merge_totals_only_the_tcp_states_of_a_host_without_total(tmp_path):
    # the report check reads the TCP states only; any other key in states is ignored, never summed
    states = {**dict.fromkeys(fr.STATES, 2), "x": "not a count"}
    (tmp_path / "report.json").write_bytes(
        _report_bytes([{"name": "h1", "status": "ok", "findings": [], "states": states}])
    )
    merged = fr.build_merged_report([str(tmp_path)])
    entry = merged["hosts"][0]
    assert entry["total"] == 2 * len(fr.STATES)
    assert entry["states"] == dict.fromkeys(fr.STATES, 2)
    check_every_renderer(merged)
