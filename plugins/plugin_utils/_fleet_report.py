# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Fleet aggregation of ``tcp_state`` facts and the report renderers.

Controller-side only (used by the ``netstate.tcp.tcp_fleet_report`` action
plugin).  Every function is O(hosts): one pass over the hosts, bounded work
per host (the facts carry top-N lists only), heaps for the fleet-wide top-N.
"""

from __future__ import annotations

import csv
import datetime
import heapq
import html
import io
import json
import os

# one source of truth for state names, severities and the facts schema: the managed-node code
from ansible_collections.netstate.tcp.plugins.module_utils._collect_sockets import STATES
from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import SEVERITIES, severity_rank
from ansible_collections.netstate.tcp.plugins.module_utils._facts import SCHEMA as FACTS_SCHEMA

REPORT_SCHEMA = 1
# 0 for a host without findings, then _diagnose's one severity order shifted by one.
SEVERITY_RANK = {None: 0, **{name: severity_rank(name) + 1 for name in SEVERITIES}}
STATUSES = ("ok", "malformed", "failed", "unreachable")
FORMATS = ("json", "md", "html", "csv", "prom")
DEFAULT_FORMATS = ("json", "md", "html", "csv")
FILE_MODE = 0o640
DIR_MODE = 0o750
OFFENDERS_TOP = 10
# a port, process or peer with a single socket offends nobody
OFFENDER_MIN_SOCKETS = 2
SUMMARY_MAX_HOSTS = 50
CHART_MAX_HOSTS = 40
JSON_INDENT_MAX_HOSTS = 1000


class ReportError(Exception):
    """Bad input to the report (options, query); the message names the culprit."""


# ---------------------------------------------------------------------------
# per-host: result of tcp_state_facts -> host entry


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_facts(facts) -> list[str]:
    """What is wrong with one host's tcp_state facts (empty list: usable)."""
    if not isinstance(facts, dict):
        return [f"tcp_state is {type(facts).__name__}, not a mapping"]
    problems = []
    schema = facts.get("schema")
    if schema is None:
        problems.append("missing key 'schema'")
    elif schema != FACTS_SCHEMA:
        problems.append(f"schema {schema!r} is not the supported schema {FACTS_SCHEMA}")
    states = facts.get("states")
    if not isinstance(states, dict):
        problems.append("missing key 'states'" if states is None else "'states' is not a mapping")
    else:
        missing = [name for name in STATES if name not in states]
        if missing:
            problems.append("states lack " + ", ".join(missing))
        bad = [name for name in STATES if name in states and not _is_count(states[name])]
        if bad:
            problems.append("states not non-negative integers: " + ", ".join(bad))
    findings = facts.get("findings")
    if not isinstance(findings, list):
        problems.append("missing key 'findings'" if findings is None else "'findings' is not a list")
    else:
        for index, finding in enumerate(findings):
            if (
                not isinstance(finding, dict)
                or not isinstance(finding.get("code"), str)
                or finding.get("severity") not in SEVERITIES
            ):
                problems.append(f"findings[{index}] lacks a code or a severity in {', '.join(SEVERITIES)}")
                break
    pressure = facts.get("pressure")
    if not isinstance(pressure, dict):
        problems.append("missing key 'pressure'" if pressure is None else "'pressure' is not a mapping")
    for key in ("top", "owners"):
        if key in facts and not isinstance(facts[key], dict):
            problems.append(f"'{key}' is not a mapping")
    return problems


def _ratio(section, key):
    if isinstance(section, dict):
        value = section.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _pressure_summary(pressure: dict) -> dict:
    """The pressure numbers the fleet tables and charts use (None when absent)."""
    orphans = pressure.get("orphans") or {}
    memory = pressure.get("memory") or {}
    return {
        "orphans": orphans.get("count") if isinstance(orphans, dict) else None,
        "orphans_limit": orphans.get("limit") if isinstance(orphans, dict) else None,
        "orphans_ratio": _ratio(orphans, "ratio"),
        "orphans_ratio_penalized_4x": _ratio(orphans, "ratio_penalized_4x"),
        "memory_pages": memory.get("pages") if isinstance(memory, dict) else None,
        "memory_ratio_to_high": _ratio(memory, "ratio_to_high"),
        "time_wait_ratio": _ratio(pressure.get("time_wait"), "ratio"),
        "ephemeral_ports_ratio": _ratio(pressure.get("ephemeral_ports"), "ratio"),
    }


def _empty_entry(name: str, status: str, error) -> dict:
    return {
        "name": name,
        "status": status,
        "severity": None,
        "total": None,
        "states": None,
        "findings": [],
        "pressure": None,
        "error": error,
    }


def host_entry(name: str, result=None, facts=None, in_play: bool = True) -> dict:
    """One host's report entry.

    ``result`` is what ``register`` kept of the tcp_state_facts task (None when
    the task never ran on the host), ``facts`` a fallback tcp_state dict
    (``ansible_facts.tcp_state`` from hostvars), ``in_play`` whether the host
    was still in the play when the facts play ended.
    """
    if isinstance(result, dict):
        if result.get("unreachable"):
            return _empty_entry(name, "unreachable", str(result.get("msg") or "host unreachable"))
        if result.get("failed"):
            return _empty_entry(name, "failed", _failure_message(result))
        if result.get("skipped"):
            return _empty_entry(name, "failed", "tcp_state_facts was skipped on this host")
        ansible_facts = result.get("ansible_facts")
        if isinstance(ansible_facts, dict) and "tcp_state" in ansible_facts:
            facts = ansible_facts["tcp_state"]
    if facts is None:
        if not in_play:
            return _empty_entry(name, "failed", "host left the play before tcp_state facts were gathered")
        return _empty_entry(name, "failed", "no tcp_state facts for this host")
    problems = check_facts(facts)
    if problems:
        entry = _empty_entry(name, "malformed", "; ".join(problems))
        if isinstance(facts, dict):
            entry["schema"] = facts.get("schema")
        return entry
    states = facts["states"]
    findings = [
        {
            "code": f["code"],
            "severity": f["severity"],
            "summary": f.get("summary", ""),
            "evidence": f.get("evidence", {}),
            "remediation": f.get("remediation", {}),
        }
        for f in facts["findings"]
    ]
    worst = max((SEVERITY_RANK[f["severity"]] for f in findings), default=0)
    total = facts.get("total")
    entry = {
        "name": name,
        "status": "ok",
        "severity": SEVERITIES[worst - 1] if worst else None,
        "total": total if _is_count(total) else sum(states[s] for s in STATES),
        "states": {s: states[s] for s in STATES},
        "findings": findings,
        "pressure": _pressure_summary(facts["pressure"]),
        "error": None,
        "collected_at": facts.get("collected_at"),
        "kernel": facts.get("kernel"),
        "source": facts.get("source"),
    }
    return entry


def _failure_message(result: dict) -> str:
    msg = str(result.get("msg") or "tcp_state_facts failed")
    stderr = result.get("module_stderr")
    if isinstance(stderr, str) and stderr.strip():
        msg += ": " + stderr.strip().splitlines()[-1][:300]
    return msg


# ---------------------------------------------------------------------------
# the fleet


def _host_sort_key(entry):
    # worst first: critical hosts, then by number of findings, then the
    # hosts we know nothing about (unreachable/failed/malformed), then ok.
    status_rank = {"ok": 0, "malformed": 1, "failed": 1, "unreachable": 1}[entry["status"]]
    return (-SEVERITY_RANK[entry["severity"]], -len(entry["findings"]), -status_rank, entry["name"])


def _iter_offenders(name, facts):
    """(count, kind, item) for a host's top ports, processes and peers."""
    top = facts.get("top")
    if isinstance(top, dict):
        for kind, table, key in (("ports", "by_local_port", "port"), ("peers", "by_peer", "address")):
            by_state = top.get(table)
            if not isinstance(by_state, dict):
                continue
            for state, rows in by_state.items():
                if not isinstance(rows, list):
                    continue
                for row in rows:
                    count = row.get("count") if isinstance(row, dict) else None
                    if _is_count(count) and count >= OFFENDER_MIN_SOCKETS and key in row:
                        item = {"host": name, "state": state, key: row[key], "count": row["count"]}
                        if kind == "peers" and "scope" in row:
                            item["scope"] = row["scope"]
                        yield row["count"], kind, item
    owners = facts.get("owners")
    if isinstance(owners, dict):
        for state, rows in owners.items():
            if not isinstance(rows, list):
                continue
            for row in rows:
                sockets = row.get("sockets") if isinstance(row, dict) else None
                if _is_count(sockets) and sockets >= OFFENDER_MIN_SOCKETS:
                    item = {
                        "host": name,
                        "state": state,
                        "pid": row.get("pid"),
                        "comm": row.get("comm"),
                        "sockets": row["sockets"],
                    }
                    yield row["sockets"], "processes", item


def build_report(hosts, query=None, generated_at=None, top=OFFENDERS_TOP) -> dict:
    """Aggregate the fleet.

    ``hosts`` is an iterable of ``(entry, facts)`` pairs: the host entry from
    :func:`host_entry` and the raw tcp_state dict it came from (or None), which
    is read once more here for the offenders and then dropped.
    """
    compiled = compile_query(query) if query else None
    totals_states = dict.fromkeys(STATES, 0)
    totals_findings: dict[str, int] = {}
    by_severity = dict.fromkeys(SEVERITIES, 0)
    by_status = dict.fromkeys(STATUSES, 0)
    findings_by_code: dict[str, list[str]] = {}
    heaps = {"ports": [], "processes": [], "peers": []}
    entries = []
    sequence = 0
    for entry, facts in hosts:
        entries.append(entry)
        by_status[entry["status"]] += 1
        if entry["status"] != "ok":
            continue
        for state, count in entry["states"].items():
            totals_states[state] += count
        seen_codes = set()
        for finding in entry["findings"]:
            code = finding["code"]
            totals_findings[code] = totals_findings.get(code, 0) + 1
            by_severity[finding["severity"]] += 1
            if code not in seen_codes:
                seen_codes.add(code)
                findings_by_code.setdefault(code, []).append(entry["name"])
        for count, kind, item in _iter_offenders(entry["name"], facts):
            heap = heaps[kind]
            sequence += 1
            if len(heap) < top:
                heapq.heappush(heap, (count, -sequence, item))
            elif count > heap[0][0]:
                heapq.heapreplace(heap, (count, -sequence, item))
    entries.sort(key=_host_sort_key)
    report = {
        "schema": REPORT_SCHEMA,
        "generated_at": generated_at or utc_now(),
        "fleet": {"hosts": len(entries), **by_status},
        "totals": {
            "states": totals_states,
            "sockets": sum(totals_states.values()),
            "findings": dict(sorted(totals_findings.items())),
            "severities": by_severity,
        },
        "hosts": entries,
        "findings_by_code": {code: sorted(names) for code, names in sorted(findings_by_code.items())},
        "offenders": {kind: [item for _c, _s, item in sorted(heap, reverse=True)] for kind, heap in heaps.items()},
    }
    if compiled is not None:
        report["query"] = query
        report["query_result"] = run_query(compiled, query, report)
    return report


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def compile_query(query: str):
    try:
        import jmespath  # noqa: PLC0415 - controller-only dependency, needed only with a query
        from jmespath.exceptions import JMESPathError  # noqa: PLC0415
    except ImportError as exc:
        raise ReportError("audit_query needs the Python package jmespath on the controller") from exc
    if not isinstance(query, str) or not query.strip():
        raise ReportError(f"audit_query {query!r} is not a JMESPath expression (a non-empty string)")
    try:
        return jmespath.compile(query)
    except JMESPathError as exc:
        raise ReportError(f"audit_query {query!r} is not a valid JMESPath expression: {exc}") from exc


def run_query(compiled, query: str, report: dict):
    from jmespath.exceptions import JMESPathError  # noqa: PLC0415

    try:
        return compiled.search(report)
    except JMESPathError as exc:
        raise ReportError(f"audit_query {query!r} failed on the report: {exc}") from exc


# ---------------------------------------------------------------------------
# renderers


def top_states(states, limit=3):
    if not states:
        return []
    return sorted(((s, n) for s, n in states.items() if n), key=lambda item: (-item[1], item[0]))[:limit]


def _hosts(count: int) -> str:
    return "1 host" if count == 1 else f"{count} hosts"


def _finding_codes(entry):
    return sorted({f["code"] for f in entry["findings"]})


def render_json(report: dict) -> str:
    # indented for people on small fleets; json's C encoder runs only without indent (5x faster on 10k hosts)
    indent = 1 if len(report["hosts"]) <= JSON_INDENT_MAX_HOSTS else None
    return json.dumps(report, indent=indent, default=str) + "\n"


def summary_table(report: dict, report_dir=None, limit=SUMMARY_MAX_HOSTS) -> str:
    """The terminal summary: one line per host, worst first."""
    fleet = report["fleet"]
    lines = [
        f"{'HOST':<24} {'STATUS':<11} {'WORST':<8} {'SOCKETS':>8}  {'TOP STATES':<44} FINDINGS / ERROR",
    ]
    for entry in report["hosts"][:limit]:
        if entry["status"] == "ok":
            tops = ", ".join(f"{s} {n}" for s, n in top_states(entry["states"]))
            tail = ", ".join(_finding_codes(entry)) or "-"
            total = str(entry["total"])
        else:
            tops, total = "-", "-"
            tail = (entry["error"] or "")[:100]
        lines.append(
            f"{entry['name'][:24]:<24} {entry['status']:<11} {entry['severity'] or '-':<8} "
            f"{total:>8}  {tops[:44]:<44} {tail}"
        )
    if len(report["hosts"]) > limit:
        lines.append(f"... {len(report['hosts']) - limit} more hosts in the report")
    lines.append(
        f"fleet: {fleet['hosts']} hosts, {fleet['ok']} ok, {fleet['malformed']} malformed, "
        f"{fleet['failed']} failed, {fleet['unreachable']} unreachable; "
        + (
            "findings: " + ", ".join(f"{c} x{n}" for c, n in report["totals"]["findings"].items())
            if report["totals"]["findings"]
            else "no findings"
        )
    )
    if report_dir:
        lines.append(f"reports: {report_dir}")
    return "\n".join(lines)


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def render_md(report: dict) -> str:
    fleet = report["fleet"]
    out = [
        "# TCP state fleet audit",
        "",
        f"Generated {report['generated_at']} by netstate.tcp (report schema {report['schema']}).",
        "",
        f"{fleet['hosts']} hosts: {fleet['ok']} ok, {fleet['malformed']} malformed, "
        f"{fleet['failed']} failed, {fleet['unreachable']} unreachable. "
        f"{report['totals']['sockets']} TCP sockets on the hosts that answered.",
        "",
        "## Hosts (worst first)",
        "",
        "| host | status | worst | sockets | top states | findings |",
        "| --- | --- | --- | ---: | --- | --- |",
    ]
    for entry in report["hosts"]:
        if entry["status"] == "ok":
            tops = ", ".join(f"{s} {n}" for s, n in top_states(entry["states"])) or "-"
            out.append(
                f"| {_md_cell(entry['name'])} | ok | {entry['severity'] or '-'} | {entry['total']} | {tops} | "
                f"{', '.join(_finding_codes(entry)) or '-'} |"
            )
        else:
            out.append(f"| {_md_cell(entry['name'])} | {entry['status']} | - | - | - | {_md_cell(entry['error'])} |")
    out += ["", "## Fleet totals by state", "", "| state | sockets |", "| --- | ---: |"]
    out += [f"| {s} | {n} |" for s, n in report["totals"]["states"].items()]
    out += ["", "## Findings by code", ""]
    if not report["findings_by_code"]:
        out.append("No findings.")
    remedies = _first_remediations(report)
    for code, names in report["findings_by_code"].items():
        out += [f"### {code} ({_hosts(len(names))})", "", "Hosts: " + ", ".join(_md_cell(n) for n in names), ""]
        summary, remediation = remedies.get(code, ("", {}))
        if summary:
            out += [f"Example: {_md_cell(summary)}", ""]
        if remediation.get("text"):
            out += [f"What to do ({remediation.get('kind', 'see text')}): {remediation['text']}", ""]
        sysctls = remediation.get("sysctls") or {}
        if sysctls:
            out += ["Suggested sysctls: " + ", ".join(f"`{k} = {v}`" for k, v in sysctls.items()), ""]
    out += ["## Worst offenders across the fleet", ""]
    for kind, key, label in (
        ("ports", "port", "local port"),
        ("processes", "comm", "process"),
        ("peers", "address", "peer"),
    ):
        rows = report["offenders"][kind]
        out += [f"### {kind.capitalize()}", ""]
        if not rows:
            out += ["None.", ""]
            continue
        count_key = "sockets" if kind == "processes" else "count"
        out += [f"| host | state | {label} | sockets |", "| --- | --- | --- | ---: |"]
        for row in rows:
            what = f"{row.get('comm')} (pid {row.get('pid')})" if kind == "processes" else row.get(key)
            out.append(f"| {_md_cell(row['host'])} | {row['state']} | {_md_cell(what)} | {row[count_key]} |")
        out.append("")
    problems = [e for e in report["hosts"] if e["status"] != "ok"]
    if problems:
        out += ["## Hosts without usable facts", "", "| host | status | error |", "| --- | --- | --- |"]
        out += [f"| {_md_cell(e['name'])} | {e['status']} | {_md_cell(e['error'])} |" for e in problems]
        out.append("")
    if "query" in report:
        out += [
            "## Query",
            "",
            f"`{report['query']}`",
            "",
            "```json",
            json.dumps(report["query_result"], indent=1, default=str),
            "```",
            "",
        ]
    return "\n".join(out).rstrip() + "\n"


def _first_remediations(report: dict) -> dict:
    found = {}
    for entry in report["hosts"]:
        for finding in entry["findings"]:
            if finding["code"] not in found:
                remediation = finding.get("remediation")
                found[finding["code"]] = (
                    finding.get("summary", ""),
                    remediation if isinstance(remediation, dict) else {},
                )
    return found


CSV_PRESSURE = ("orphans", "orphans_limit", "orphans_ratio", "memory_pages", "memory_ratio_to_high", "time_wait_ratio")


def render_csv(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["host", "status", "worst_severity", "sockets", *STATES, "findings", *CSV_PRESSURE, "error"],
    )
    for entry in report["hosts"]:
        states = entry["states"] or {}
        pressure = entry["pressure"] or {}
        writer.writerow(
            [
                entry["name"],
                entry["status"],
                entry["severity"] or "",
                "" if entry["total"] is None else entry["total"],
                *(states.get(s, "") for s in STATES),
                " ".join(_finding_codes(entry)),
                *("" if pressure.get(k) is None else pressure[k] for k in CSV_PRESSURE),
                entry["error"] or "",
            ]
        )
    return buffer.getvalue()


def _prom_label(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_prom(entry: dict, generated_at: str) -> str:
    """node_exporter textfile-collector text for one host (status ok only)."""
    lines = [
        "# HELP netstate_tcp_sockets TCP sockets by state (netstate.tcp tcp_state_facts).",
        "# TYPE netstate_tcp_sockets gauge",
    ]
    lines += [f'netstate_tcp_sockets{{state="{s}"}} {n}' for s, n in entry["states"].items()]
    counts: dict[tuple[str, str], int] = {}
    for finding in entry["findings"]:
        key = (finding["code"], finding["severity"])
        counts[key] = counts.get(key, 0) + 1
    lines += [
        "# HELP netstate_tcp_findings Findings of the last netstate.tcp audit by code and severity.",
        "# TYPE netstate_tcp_findings gauge",
    ]
    lines += [
        f'netstate_tcp_findings{{code="{_prom_label(c)}",severity="{s}"}} {n}' for (c, s), n in sorted(counts.items())
    ]
    lines += [
        "# HELP netstate_tcp_worst_severity Worst finding severity (0 none, 1 info, 2 warning, 3 critical).",
        "# TYPE netstate_tcp_worst_severity gauge",
        f"netstate_tcp_worst_severity {SEVERITY_RANK[entry['severity']]}",
    ]
    pressure = entry["pressure"] or {}
    for key, help_text in (
        ("orphans", "Orphaned TCP sockets (host-wide, /proc/net/sockstat)."),
        ("orphans_limit", "net.ipv4.tcp_max_orphans."),
        ("orphans_ratio", "Orphans over tcp_max_orphans."),
        ("memory_pages", "TCP memory in pages (host-wide)."),
        ("memory_ratio_to_high", "TCP memory over tcp_mem[2]."),
        ("time_wait_ratio", "TIME_WAIT sockets over tcp_max_tw_buckets."),
        ("ephemeral_ports_ratio", "Busiest ephemeral port tuple over the port range."),
    ):
        value = pressure.get(key)
        if value is None:
            continue
        lines += [
            f"# HELP netstate_tcp_{key} {help_text}",
            f"# TYPE netstate_tcp_{key} gauge",
            f"netstate_tcp_{key} {value}",
        ]
    stamp = datetime.datetime.strptime(generated_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    lines += [
        "# HELP netstate_tcp_audit_timestamp_seconds When the netstate.tcp audit report was generated.",
        "# TYPE netstate_tcp_audit_timestamp_seconds gauge",
        f"netstate_tcp_audit_timestamp_seconds {int(stamp.timestamp())}",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# HTML: self-contained page, charts as inline SVG, a few lines of inline JS

STATE_COLORS = {
    "ESTABLISHED": "#4e79a7",
    "SYN_SENT": "#a0cbe8",
    "SYN_RECV": "#f28e2b",
    "FIN_WAIT1": "#e15759",
    "FIN_WAIT2": "#ff9d9a",
    "TIME_WAIT": "#edc948",
    "CLOSE": "#bab0ac",
    "CLOSE_WAIT": "#b07aa1",
    "LAST_ACK": "#9c755f",
    "LISTEN": "#59a14f",
    "CLOSING": "#8cd17d",
    "NEW_SYN_RECV": "#86bcb6",
}
SEVERITY_COLORS = {"critical": "#c0392b", "warning": "#e67e22", "info": "#2980b9", None: "#7f8c8d"}
STATUS_COLORS = {"ok": "#27ae60", "malformed": "#8e44ad", "failed": "#c0392b", "unreachable": "#7f8c8d"}

HTML_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:24px}
table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0;cursor:pointer;user-select:none}td.n{text-align:right}
.badge{display:inline-block;padding:1px 6px;border-radius:3px;color:#fff;font-size:12px}
.chart{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;margin:8px 0;overflow-x:auto}
.legend span{display:inline-block;margin-right:10px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
svg text{font-size:11px;fill:#333}
"""

HTML_JS = """
(function () {
  "use strict";
  var table = document.getElementById("hosts");
  if (!table) { return; }
  var heads = table.querySelectorAll("th");
  heads.forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute("data-dir") !== "asc";
      heads.forEach(function (h) { h.removeAttribute("data-dir"); });
      th.setAttribute("data-dir", asc ? "asc" : "desc");
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-v") || a.cells[col].textContent;
        var y = b.cells[col].getAttribute("data-v") || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  var filter = document.getElementById("filter");
  filter.addEventListener("input", function () {
    var q = filter.value.toLowerCase();
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      r.style.display = r.textContent.toLowerCase().indexOf(q) >= 0 ? "" : "none";
    });
  });
  document.getElementById("shown").textContent = "script ok";
})();
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _badge(text, color) -> str:
    return f'<span class="badge" style="background:{color}">{_e(text)}</span>'


def _svg_states_per_host(hosts: list) -> str:
    """Stacked horizontal bars: one bar per host, one segment per state."""
    label_w, bar_w, row_h = 190, 620, 18
    scale_max = max((h["total"] or 0 for h in hosts), default=0) or 1
    height = row_h * len(hosts) + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chart-states" role="img" width="{label_w + bar_w + 80}" '
        f'height="{height}" aria-label="TCP states per host">'
    ]
    for row, entry in enumerate(hosts):
        y = row * row_h + 4
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{_e(entry["name"][:30])}</text>')
        x = float(label_w)
        for state in STATES:
            count = entry["states"][state]
            if not count:
                continue
            width = bar_w * count / scale_max
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{max(width, 0.5):.1f}" height="{row_h - 4}" '
                f'fill="{STATE_COLORS[state]}"><title>{_e(entry["name"])}: {state} {count}</title></rect>'
            )
            x += width
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 12}">{entry["total"]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_findings_by_code(report: dict) -> str:
    codes = list(report["findings_by_code"].items())
    label_w, bar_w, row_h = 230, 400, 22
    hosts_ok = max(report["fleet"]["ok"], 1)
    worst = {}
    for entry in report["hosts"]:
        for finding in entry["findings"]:
            if SEVERITY_RANK[finding["severity"]] > SEVERITY_RANK[worst.get(finding["code"])]:
                worst[finding["code"]] = finding["severity"]
    height = row_h * len(codes) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chart-findings" role="img" width="{label_w + bar_w + 120}" '
        f'height="{height}" aria-label="Findings by code">'
    ]
    for row, (code, names) in enumerate(codes):
        y = row * row_h + 4
        width = max(bar_w * len(names) / hosts_ok, 2)
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{_e(code)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="{row_h - 6}" '
            f'fill="{SEVERITY_COLORS[worst.get(code)]}"><title>{_e(code)}: {len(names)} hosts</title></rect>'
        )
        label = f"{_hosts(len(names))} ({worst.get(code)})"
        parts.append(f'<text x="{label_w + width + 4:.1f}" y="{y + 13}">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_pressure(hosts: list) -> str:
    """Two bars per host: orphans / tcp_max_orphans and TCP memory / tcp_mem[2], 0..100 %."""
    label_w, bar_w, row_h = 190, 400, 26
    height = row_h * len(hosts) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chart-pressure" role="img" width="{label_w + bar_w + 120}" '
        f'height="{height}" aria-label="Orphan and memory pressure per host">'
    ]
    for pct in (0, 50, 100):
        x = label_w + bar_w * pct / 100
        parts.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{height - 16}" stroke="#ccc" stroke-dasharray="3,3"/>')
        parts.append(f'<text x="{x}" y="{height - 4}" text-anchor="middle">{pct}%</text>')
    for row, entry in enumerate(hosts):
        y = row * row_h + 2
        pressure = entry["pressure"] or {}
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{_e(entry["name"][:30])}</text>')
        for offset, key, color, label in (
            (0, "orphans_ratio", "#e15759", "orphans / tcp_max_orphans"),
            (11, "memory_ratio_to_high", "#4e79a7", "TCP memory / tcp_mem[2]"),
        ):
            value = pressure.get(key)
            shown = "n/a" if value is None else f"{value * 100:.1f}%"
            width = 0 if value is None else min(value, 1.0) * bar_w
            parts.append(
                f'<rect x="{label_w}" y="{y + offset}" width="{max(width, 1):.1f}" height="10" fill="{color}">'
                f"<title>{_e(entry['name'])}: {label} {shown}</title></rect>"
            )
            parts.append(f'<text x="{label_w + width + 4:.1f}" y="{y + offset + 9}">{shown}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _chart_hosts(report: dict, key) -> tuple[list, str]:
    ok_hosts = [e for e in report["hosts"] if e["status"] == "ok"]
    if len(ok_hosts) <= CHART_MAX_HOSTS:
        return sorted(ok_hosts, key=lambda e: (-key(e), e["name"])), ""
    chosen = heapq.nlargest(CHART_MAX_HOSTS, ok_hosts, key=lambda e: (key(e), e["name"]))
    return chosen, f'<p class="muted">Showing the {CHART_MAX_HOSTS} highest of {len(ok_hosts)} hosts.</p>'


def _max_pressure(entry):
    pressure = entry["pressure"] or {}
    return max(pressure.get("orphans_ratio") or 0.0, pressure.get("memory_ratio_to_high") or 0.0)


def render_html(report: dict) -> str:
    fleet = report["fleet"]
    cards = [
        ("hosts", fleet["hosts"], "#34495e"),
        ("ok", fleet["ok"], STATUS_COLORS["ok"]),
        ("malformed", fleet["malformed"], STATUS_COLORS["malformed"]),
        ("failed", fleet["failed"], STATUS_COLORS["failed"]),
        ("unreachable", fleet["unreachable"], STATUS_COLORS["unreachable"]),
        ("critical findings", report["totals"]["severities"]["critical"], SEVERITY_COLORS["critical"]),
        ("warnings", report["totals"]["severities"]["warning"], SEVERITY_COLORS["warning"]),
        ("sockets", report["totals"]["sockets"], "#34495e"),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>TCP state fleet audit {_e(report['generated_at'])}</title>",
        f"<style>{HTML_CSS}</style></head><body>",
        "<h1>TCP state fleet audit</h1>",
        f'<div class="muted">Generated {_e(report["generated_at"])} by netstate.tcp, report schema '
        f'{report["schema"]}. <span id="shown"></span></div>',
        '<div class="cards">',
    ]
    out += [f'<div class="card" style="border-top:4px solid {c}"><b>{v}</b>{_e(k)}</div>' for k, v, c in cards]
    out.append("</div>")

    legend = "".join(f'<span><i style="background:{STATE_COLORS[s]}"></i>{s}</span>' for s in STATES)
    state_hosts, note = _chart_hosts(report, key=lambda e: e["total"] or 0)
    out += ["<h2>TCP states per host</h2>", note, f'<div class="legend">{legend}</div>']
    out.append(
        f'<div class="chart">{_svg_states_per_host(state_hosts)}</div>' if state_hosts else "<p>No host answered.</p>"
    )

    out.append("<h2>Findings by code</h2>")
    if report["findings_by_code"]:
        out.append(f'<div class="chart">{_svg_findings_by_code(report)}</div>')
    else:
        out.append("<p>No findings.</p>")

    pressure_hosts, note = _chart_hosts(report, key=_max_pressure)
    out += [
        "<h2>Orphan and memory pressure per host</h2>",
        note,
        '<div class="legend"><span><i style="background:#e15759"></i>orphans / tcp_max_orphans</span>'
        '<span><i style="background:#4e79a7"></i>TCP memory / tcp_mem[2] (pages)</span>'
        '<span class="muted">n/a: the limit is not visible (e.g. inside a non-initial network namespace)</span></div>',
    ]
    if pressure_hosts:
        out.append(f'<div class="chart">{_svg_pressure(pressure_hosts)}</div>')

    out += [
        "<h2>Hosts (worst first)</h2>",
        '<p><input id="filter" type="search" placeholder="filter hosts" aria-label="filter hosts"> '
        '<span class="muted">Click a column heading to sort.</span></p>',
        '<table id="hosts"><thead><tr><th>host</th><th>status</th><th>worst</th><th>sockets</th>'
        "<th>top states</th><th>findings / error</th></tr></thead><tbody>",
    ]
    for entry in report["hosts"]:
        status = _badge(entry["status"], STATUS_COLORS[entry["status"]])
        severity = _badge(entry["severity"], SEVERITY_COLORS[entry["severity"]]) if entry["severity"] else "-"
        if entry["status"] == "ok":
            tops = ", ".join(f"{s} {n}" for s, n in top_states(entry["states"])) or "-"
            detail = "<br>".join(f"<b>{_e(f['code'])}</b>: {_e(f['summary'])}" for f in entry["findings"]) or "-"
            total = entry["total"]
        else:
            tops, total, detail = "-", "", _e(entry["error"])
        out.append(
            f"<tr><td>{_e(entry['name'])}</td><td>{status}</td>"
            f'<td data-v="{SEVERITY_RANK[entry["severity"]]}">{severity}</td>'
            f'<td class="n">{total}</td><td>{_e(tops)}</td><td>{detail}</td></tr>'
        )
    out.append("</tbody></table>")

    out.append("<h2>Findings and what to do</h2>")
    remedies = _first_remediations(report)
    if not report["findings_by_code"]:
        out.append("<p>No findings.</p>")
    for code, names in report["findings_by_code"].items():
        summary, remediation = remedies.get(code, ("", {}))
        out.append(f"<h3>{_e(code)} <span class='muted'>({_hosts(len(names))})</span></h3>")
        out.append(f"<p><b>Hosts:</b> {_e(', '.join(names))}</p>")
        if summary:
            out.append(f"<p><b>Example:</b> {_e(summary)}</p>")
        if remediation.get("text"):
            out.append(f"<p><b>What to do ({_e(remediation.get('kind', ''))}):</b> {_e(remediation['text'])}</p>")
        sysctls = remediation.get("sysctls") or {}
        if sysctls:
            out.append(
                "<p><b>Suggested sysctls:</b> " + _e(", ".join(f"{k} = {v}" for k, v in sysctls.items())) + "</p>"
            )

    out.append("<h2>Worst offenders across the fleet</h2>")
    for kind, label in (("ports", "local port"), ("processes", "process"), ("peers", "peer")):
        rows = report["offenders"][kind]
        out.append(f"<h3>{kind.capitalize()}</h3>")
        if not rows:
            out.append("<p>None.</p>")
            continue
        out.append(f"<table><tr><th>host</th><th>state</th><th>{label}</th><th>sockets</th></tr>")
        for row in rows:
            if kind == "processes":
                what, count = f"{row.get('comm')} (pid {row.get('pid')})", row["sockets"]
            else:
                what, count = row.get("port" if kind == "ports" else "address"), row["count"]
            out.append(
                f"<tr><td>{_e(row['host'])}</td><td>{_e(row['state'])}</td><td>{_e(what)}</td>"
                f'<td class="n">{count}</td></tr>'
            )
        out.append("</table>")

    out += ["<h2>Fleet totals by state</h2>", "<table><tr><th>state</th><th>sockets</th></tr>"]
    out += [f'<tr><td>{s}</td><td class="n">{n}</td></tr>' for s, n in report["totals"]["states"].items()]
    out.append("</table>")
    if "query" in report:
        out += [
            "<h2>Query</h2>",
            f"<p><code>{_e(report['query'])}</code></p>",
            f"<pre>{_e(json.dumps(report['query_result'], indent=1, default=str))}</pre>",
        ]
    out += [f"<script>{HTML_JS}</script>", "</body></html>"]
    return "\n".join(out) + "\n"


RENDERERS = {"json": render_json, "md": render_md, "html": render_html, "csv": render_csv}
FILE_NAMES = {"json": "report.json", "md": "report.md", "html": "report.html", "csv": "report.csv"}


# ---------------------------------------------------------------------------
# files


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask must not loosen or tighten 0640
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fd = None
            fh.write(text)
    finally:
        if fd is not None:
            os.close(fd)


def write_reports(report: dict, output_dir: str, formats) -> dict:
    """Write the reports into a new timestamped directory and point ``latest`` at it.

    Returns {"report_dir", "latest", "files": {format: path}}.
    """
    os.makedirs(output_dir, exist_ok=True)
    stamp = report["generated_at"].replace("-", "").replace(":", "")
    report_dir = os.path.join(output_dir, stamp)
    suffix = 0
    while True:
        try:
            os.mkdir(report_dir, DIR_MODE)
            break
        except FileExistsError:
            suffix += 1
            report_dir = os.path.join(output_dir, f"{stamp}-{suffix}")
    files = {}
    for fmt in formats:
        if fmt not in RENDERERS:
            continue
        path = os.path.join(report_dir, FILE_NAMES[fmt])
        _write_private(path, RENDERERS[fmt](report))
        files[fmt] = path
    latest = os.path.join(output_dir, "latest")
    # a relative link, swapped in atomically: readers never see it missing
    tmp_link = os.path.join(output_dir, f".latest.{os.getpid()}")
    if os.path.lexists(tmp_link):
        os.unlink(tmp_link)
    os.symlink(os.path.basename(report_dir), tmp_link)
    os.replace(tmp_link, latest)
    return {"report_dir": os.path.abspath(report_dir), "latest": os.path.abspath(latest), "files": files}
