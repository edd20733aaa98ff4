"""Fleet aggregation and renderers, on tcp_state facts recorded from real kernels.

The fixtures (fixtures/facts_*.json, see fixtures/record_facts.py) were
gathered by the collection's own collectors inside namespaces holding real
sockets (lab hosts): a CLOSE_WAIT leak, TIME_WAIT churn, FIN_WAIT1 towards a
zero-window peer, a clean host and the machine's initial namespace.
Expected numbers are read from those dicts, never typed in.
"""

from __future__ import annotations

import copy
import csv
import html.parser
import io
import json
import os
import stat
from pathlib import Path

import pytest

from ansible_collections.netstate.tcp.plugins.plugin_utils import _fleet_report as fr

FIXTURES = Path(__file__).resolve().parent / "fixtures"
NAMES = ("close_wait_leak", "time_wait_churn", "fin_wait1_zero_window", "clean", "initial_ns")


@pytest.fixture(scope="module")
def recorded():
    return {name: json.loads((FIXTURES / f"facts_{name}.json").read_text()) for name in NAMES}


def registered(facts):
    """What `register:` keeps of a successful tcp_state_facts task."""
    return {"changed": False, "ansible_facts": {"tcp_state": facts}}


def fleet(recorded, extra=()):
    pairs = []
    for name, facts in recorded.items():
        pairs.append((fr.host_entry(name, result=registered(facts)), facts))
    pairs.extend(extra)
    return pairs


def old_schema(facts):
    bad = copy.deepcopy(facts)
    bad["schema"] = 0
    del bad["pressure"]
    return bad


# ---------------------------------------------------------------------------
# host entries


def test_ok_entry_carries_the_hosts_numbers(recorded):
    facts = recorded["close_wait_leak"]
    entry = fr.host_entry("web1", result=registered(facts))
    assert entry["status"] == "ok"
    assert entry["error"] is None
    assert entry["states"] == facts["states"]
    assert entry["total"] == facts["total"]
    assert [f["code"] for f in entry["findings"]] == [f["code"] for f in facts["findings"]]
    assert entry["severity"] == max((f["severity"] for f in facts["findings"]), key=fr.severity_order)
    assert entry["pressure"]["memory_pages"] == facts["pressure"]["memory"]["pages"]


def test_facts_from_hostvars_when_no_registered_result(recorded):
    facts = recorded["clean"]
    entry = fr.host_entry("web2", result=None, facts=facts)
    assert entry["status"] == "ok"
    assert entry["states"] == facts["states"]
    assert entry["severity"] is None


def test_unreachable_and_failed_keep_their_message():
    down = fr.host_entry("db1", result={"unreachable": True, "msg": "Failed to connect to the host via ssh"})
    assert (down["status"], down["error"]) == ("unreachable", "Failed to connect to the host via ssh")
    failed = fr.host_entry(
        "db2",
        result={"failed": True, "msg": "MODULE FAILURE", "module_stderr": "Traceback\nOSError: boom\n"},
    )
    assert failed["status"] == "failed"
    assert "MODULE FAILURE" in failed["error"]
    assert "OSError: boom" in failed["error"]
    gone = fr.host_entry("db3", result=None, facts=None, in_play=False)
    assert gone["status"] == "failed"
    assert "left the play" in gone["error"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda f: f.update(schema=0), "schema 0"),
        (lambda f: f.pop("schema"), "missing key 'schema'"),
        (lambda f: f.pop("states"), "missing key 'states'"),
        (lambda f: f["states"].pop("CLOSE_WAIT"), "states lacks 'CLOSE_WAIT'"),
        (lambda f: f["states"].update(LISTEN=-1), "LISTEN"),
        (lambda f: f["states"].update(LISTEN="1"), "LISTEN"),
        (lambda f: f.pop("findings"), "missing key 'findings'"),
        (lambda f: f.update(findings=[{"code": "X", "severity": "bad"}]), "findings[0]"),
        (lambda f: f.pop("pressure"), "missing key 'pressure'"),
        (lambda f: f.update(top=[]), "top is a list, not a mapping"),
    ],
)
def test_malformed_facts_say_what_is_wrong(recorded, mutate, expected):
    facts = copy.deepcopy(recorded["close_wait_leak"])
    mutate(facts)
    entry = fr.host_entry("odd", result=registered(facts))
    assert entry["status"] == "malformed"
    assert expected in entry["error"]
    assert entry["states"] is None


def test_not_a_mapping_is_malformed():
    entry = fr.host_entry("odd", result={"ansible_facts": {"tcp_state": "garbage"}})
    assert entry["status"] == "malformed"
    assert "not a mapping" in entry["error"]


# ---------------------------------------------------------------------------
# the fleet


def test_totals_and_findings_by_code_match_the_hosts(recorded):
    report = fr.build_report(fleet(recorded))
    for state in fr.STATES:
        assert report["totals"]["states"][state] == sum(f["states"][state] for f in recorded.values())
    assert report["totals"]["sockets"] == sum(report["totals"]["states"].values())
    expected = {}
    for name, facts in recorded.items():
        for finding in facts["findings"]:
            expected.setdefault(finding["code"], set()).add(name)
    assert {code: set(hosts) for code, hosts in report["findings_by_code"].items()} == expected
    assert report["totals"]["findings"] == {
        code: sum(1 for f in recorded.values() for g in f["findings"] if g["code"] == code) for code in expected
    }
    n = len(recorded)
    assert report["fleet"] == {"hosts": n, "ok": n, "malformed": 0, "failed": 0, "unreachable": 0}
    assert report["schema"] == fr.REPORT_SCHEMA


def test_bad_hosts_are_listed_and_the_rest_still_aggregated(recorded):
    extra = [
        (fr.host_entry("down", result={"unreachable": True, "msg": "ssh: connect refused"}), None),
        (fr.host_entry("broken", result={"failed": True, "msg": "boom"}), None),
        (fr.host_entry("old", result=registered(old_schema(recorded["clean"]))), None),
    ]
    report = fr.build_report(fleet(recorded, extra))
    by_name = {e["name"]: e for e in report["hosts"]}
    assert by_name["down"]["status"] == "unreachable"
    assert by_name["broken"]["status"] == "failed"
    assert by_name["old"]["status"] == "malformed"
    n = len(recorded)
    assert report["fleet"] == {"hosts": n + 3, "ok": n, "malformed": 1, "failed": 1, "unreachable": 1}
    # the malformed host's sockets are not counted: totals are those of the good hosts
    for state in fr.STATES:
        assert report["totals"]["states"][state] == sum(f["states"][state] for f in recorded.values())


def test_hosts_ordered_worst_first(recorded):
    extra = [(fr.host_entry("down", result={"unreachable": True, "msg": "x"}), None)]
    report = fr.build_report(fleet(recorded, extra))
    ranks = [fr.severity_order(e["severity"]) for e in report["hosts"]]
    assert ranks == sorted(ranks, reverse=True)
    names = [e["name"] for e in report["hosts"]]
    # hosts without facts come before hosts known to be clean
    assert names.index("down") < names.index("clean")
    assert names.index("down") > max(names.index(n) for n in ("close_wait_leak", "time_wait_churn"))


def test_offenders_are_the_biggest_across_hosts(recorded):
    report = fr.build_report(fleet(recorded), top=3)
    candidates = [
        (row["count"], name, state, row["port"])
        for name, facts in recorded.items()
        for state, rows in facts["top"]["by_local_port"].items()
        for row in rows
        if row["count"] >= fr.OFFENDER_MIN_SOCKETS
    ]
    best = sorted(candidates, reverse=True)[:3]
    assert [r["count"] for r in report["offenders"]["ports"]] == [c[0] for c in best]
    leak = recorded["close_wait_leak"]["owners"]["CLOSE_WAIT"][0]
    top_process = report["offenders"]["processes"][0]
    assert (top_process["host"], top_process["pid"], top_process["sockets"]) == (
        "close_wait_leak",
        leak["pid"],
        leak["sockets"],
    )
    assert all(len(rows) <= 3 for rows in report["offenders"].values())


def test_query_result_and_bad_query(recorded):
    report = fr.build_report(fleet(recorded), query="hosts[?states.CLOSE_WAIT > `0`].name")
    assert report["query_result"] == [n for n, f in recorded.items() if f["states"]["CLOSE_WAIT"] > 0]
    with pytest.raises(fr.ReportError, match=r"audit_query 'hosts\[\?' is not a valid JMESPath expression"):
        fr.build_report(fleet(recorded), query="hosts[?")
    # valid syntax failing on the data: the report is kept, the error beside it
    failed = fr.build_report(fleet(recorded), query="abs(hosts)")
    assert failed["query_result"] is None
    assert "audit_query 'abs(hosts)' failed on the report" in failed["query_error"]


# ---------------------------------------------------------------------------
# renderers


@pytest.fixture(scope="module")
def report(recorded):
    extra = [
        (fr.host_entry("down", result={"unreachable": True, "msg": 'ssh: connect <refused> & "gone"'}), None),
        (fr.host_entry("old|pipe", result=registered(old_schema(recorded["clean"]))), None),
    ]
    return fr.build_report(fleet(recorded, extra), query="fleet")


def test_json_round_trips(report):
    loaded = json.loads(fr.render_json(report))
    assert loaded == json.loads(json.dumps(report))
    for key in ("schema", "generated_at", "totals", "hosts", "findings_by_code", "offenders", "query_result"):
        assert key in loaded
    for host in loaded["hosts"]:
        assert {"name", "status", "states", "findings", "pressure", "error"} <= set(host)


def test_csv_one_row_per_host(report, recorded):
    rows = list(csv.DictReader(io.StringIO(fr.render_csv(report))))
    assert [r["host"] for r in rows] == [e["name"] for e in report["hosts"]]
    for row in rows:
        if row["host"] in recorded:
            facts = recorded[row["host"]]
            assert {s: int(row[s]) for s in fr.STATES} == facts["states"]
            assert row["findings"].split() == sorted({f["code"] for f in facts["findings"]})
        else:
            assert row["status"] in ("unreachable", "malformed")
            assert row["error"]


def test_markdown_lists_every_host_and_code(report):
    text = fr.render_md(report)
    for entry in report["hosts"]:
        assert entry["name"].replace("|", "\\|") in text
    for code in report["findings_by_code"]:
        assert f"### {code}" in text
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and line.count("|") == 7]
    assert len(table_rows) >= len(report["hosts"]) + 1


def test_prom_text_matches_the_host(recorded, report):
    entry = next(e for e in report["hosts"] if e["name"] == "close_wait_leak")
    text = fr.render_prom(entry, report["generated_at"])
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.split()[2].startswith("netstate_tcp_")
            continue
        name, value = line.rsplit(" ", 1)
        assert name.startswith("netstate_tcp_")
        samples[name] = float(value)
    for state, count in recorded["close_wait_leak"]["states"].items():
        assert samples[f'netstate_tcp_sockets{{state="{state}"}}'] == count
    for finding in recorded["close_wait_leak"]["findings"]:
        assert samples[f'netstate_tcp_findings{{code="{finding["code"]}",severity="{finding["severity"]}"}}'] >= 1
    # one HELP and one TYPE per metric family, as the textfile collector wants
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert len(helps) == len(set(helps))


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.external = []
        self.ids = set()
        self.rect_titles = []
        self._in_title = False
        self.scripts = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if attrs.get(key):
                self.external.append((tag, attrs[key]))
        if tag == "link":
            self.external.append((tag, attrs))
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "script":
            self.scripts += 1
        self._in_title = tag == "title"

    def handle_data(self, data):
        if self._in_title:
            self.rect_titles.append(data)
            self._in_title = False


def test_html_is_self_contained_with_the_three_charts(report, recorded):
    text = fr.render_html(report)
    page = _Page()
    page.feed(text)
    assert page.external == []
    assert {"chart-states", "chart-findings", "chart-pressure", "hosts"} <= page.ids
    # every non-zero state of every good host is one segment of its stacked bar
    for name, facts in recorded.items():
        for state, count in facts["states"].items():
            if count:
                assert f"{name}: {state} {count}" in page.rect_titles
    # untrusted strings are escaped
    assert "<refused>" not in text
    assert "&lt;refused&gt;" in text


def test_html_caps_chart_rows_for_big_fleets(recorded):
    base = recorded["time_wait_churn"]
    pairs = []
    for index in range(fr.CHART_MAX_HOSTS + 25):
        facts = copy.deepcopy(base)
        facts["states"]["TIME_WAIT"] = 1000 + index
        facts["total"] = sum(facts["states"].values())
        pairs.append((fr.host_entry(f"h{index}", result=registered(facts)), facts))
    text = fr.render_html(fr.build_report(pairs))
    assert f"Showing the {fr.CHART_MAX_HOSTS} highest of {fr.CHART_MAX_HOSTS + 25} hosts" in text
    page = _Page()
    page.feed(text)
    shown = {t.split(":")[0] for t in page.rect_titles if ": TIME_WAIT " in t}
    # the states chart keeps the hosts with most sockets: h25 .. h64
    assert shown == {f"h{index}" for index in range(25, fr.CHART_MAX_HOSTS + 25)}


def test_summary_table_one_line_per_host(report):
    text = fr.summary_table(report, report_dir="/srv/reports/x")
    lines = text.splitlines()
    assert len(lines) == 1 + len(report["hosts"]) + 2
    for entry, line in zip(report["hosts"], lines[1:]):
        assert line.startswith(entry["name"][:24])
        assert entry["status"] in line
    assert lines[-1] == "reports: /srv/reports/x"


def test_summary_table_caps_big_fleets(recorded):
    facts = recorded["clean"]
    pairs = [(fr.host_entry(f"h{i:03d}", result=registered(facts)), facts) for i in range(fr.SUMMARY_MAX_HOSTS + 7)]
    lines = fr.summary_table(fr.build_report(pairs)).splitlines()
    assert len(lines) == 1 + fr.SUMMARY_MAX_HOSTS + 2
    assert lines[-2] == "... 7 more hosts in the report"


def test_empty_fleet_renders_everything():
    report = fr.build_report([])
    assert report["fleet"]["hosts"] == 0
    for render in fr.RENDERERS.values():
        assert render(report)


# ---------------------------------------------------------------------------
# files


def test_write_reports_modes_and_latest(tmp_path, report):
    old_umask = os.umask(0o022)
    try:
        first = fr.write_reports(report, str(tmp_path), fr.FORMATS)
        second = fr.write_reports(report, str(tmp_path), ["json"])
    finally:
        os.umask(old_umask)
    assert set(first["files"]) == {"json", "md", "html", "csv"}  # prom goes to the hosts, not here
    for path in first["files"].values():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    # same second, same stamp: a second directory, never overwritten
    assert first["report_dir"] != second["report_dir"]
    assert os.readlink(tmp_path / "latest") == os.path.basename(second["report_dir"])
    assert json.loads((tmp_path / "latest" / "report.json").read_text())["generated_at"] == report["generated_at"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".latest")]
