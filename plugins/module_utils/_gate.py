# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The deploy gate: thresholds on TCP state, checked against samples of the host.

validate_spec() turns the tcp_gate options into a normalized spec (or one
GateError naming every bad key and the valid ones) before anything is read.
evaluate() is a pure function of one sample (the tcp_state facts plus a
socket-level breakdown) and returns checks and offenders; breach_paragraph()
writes the one readable failure message; run_gate() polls like wait_for.
"""

from __future__ import annotations

import socket
import time

from ansible_collections.netstate.tcp.plugins.module_utils import _collect_owners, _diagnose, _socket_info
from ansible_collections.netstate.tcp.plugins.module_utils import _collect_sockets as cs
from ansible_collections.netstate.tcp.plugins.module_utils import _diag_filter as df

RATIO_PATHS = {
    # option name -> (pressure key, ratio key) in the tcp_state facts
    "orphans": ("orphans", "ratio"),
    "memory": ("memory", "ratio_to_high"),
    "time_wait": ("time_wait", "ratio"),
    "ephemeral_ports": ("ephemeral_ports", "ratio"),
}
FAIL_SEVERITIES = ("warning", "critical")
COMM_LEN = 15  # TASK_COMM_LEN - 1: the kernel truncates /proc/<pid>/comm to 15 bytes
TOP_OFFENDERS = 3


class GateError(ValueError):
    """Invalid gate input; the message names the option and the valid values."""


# ---- validation ------------------------------------------------------------
def normalize_state(name, states):
    """'time-wait', 'time_wait', 'TIME_WAIT' -> 'TIME_WAIT'; None when unknown."""
    if not isinstance(name, str):
        return None
    canonical = name.strip().upper().replace("-", "_")
    return canonical if canonical in states else None


def _count(value):
    """A non-negative integer count or None (booleans and floats are refused)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _ratio(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and 0 <= value <= 1:
        return float(value)
    return None


def _port(value):
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, int) and 1 <= value <= 65535:
        return value
    return None


def _state_counts(where, mapping, states, errors):
    """{state: count} with normalized names; problems appended to errors."""
    valid = ", ".join(states)
    if not isinstance(mapping, dict):
        errors.append(f"{where}: must be a mapping of TCP state -> maximum count, got {mapping!r}")
        return {}
    result = {}
    for key, value in mapping.items():
        state = normalize_state(key, states)
        if state is None:
            errors.append(f"{where}: unknown state {key!r}; valid states (case-insensitive): {valid}")
            continue
        count = _count(value)
        if count is None:
            errors.append(f"{where}.{state}: count must be a non-negative integer, got {value!r}")
            continue
        result[state] = count
    return result


def validate_spec(params, states, codes):
    """Normalize and check the tcp_gate options; raise GateError listing every problem."""
    errors = []
    spec = {"max": {}, "ports": {}, "processes": {}, "ratios": {}}
    spec["max"] = _state_counts("max", params.get("max") or {}, states, errors)

    ports = params.get("ports") or {}
    if not isinstance(ports, dict):
        errors.append(f"ports: must be a mapping of local port -> {{state: count}}, got {ports!r}")
        ports = {}
    for key, mapping in ports.items():
        port = _port(key)
        if port is None:
            errors.append(f"ports: port {key!r} must be an integer within 1..65535")
            continue
        counts = _state_counts(f"ports.{port}", mapping, states, errors)
        if counts:
            spec["ports"][port] = counts

    processes = params.get("processes") or {}
    if not isinstance(processes, dict):
        errors.append(f"processes: must be a mapping of process name (comm) -> {{state: count}}, got {processes!r}")
        processes = {}
    for key, mapping in processes.items():
        if not isinstance(key, str) or not key.strip():
            errors.append(f"processes: process name must be a non-empty string (comm), got {key!r}")
            continue
        # /proc/<pid>/comm holds at most 15 characters
        comm = key.strip()[:COMM_LEN]
        counts = _state_counts(f"processes.{key}", mapping, states, errors)
        if counts:
            spec["processes"].setdefault(comm, {}).update(counts)

    ratios = params.get("ratios") or {}
    if not isinstance(ratios, dict):
        errors.append(f"ratios: must be a mapping of ratio name -> 0..1, got {ratios!r}")
        ratios = {}
    for key, value in ratios.items():
        name = key.strip().lower().replace("-", "_") if isinstance(key, str) else key
        if name not in RATIO_PATHS:
            errors.append(f"ratios: unknown ratio {key!r}; valid ratios: {', '.join(RATIO_PATHS)}")
            continue
        ratio = _ratio(value)
        if ratio is None:
            errors.append(f"ratios.{name}: must be a number between 0 and 1, got {value!r}")
            continue
        spec["ratios"][name] = ratio

    severity = params.get("fail_on_severity")
    if severity is not None and severity not in FAIL_SEVERITIES:
        errors.append(f"fail_on_severity: must be one of {', '.join(FAIL_SEVERITIES)}, got {severity!r}")
    spec["fail_on_severity"] = severity

    fail_codes = params.get("fail_on_codes") or []
    if not isinstance(fail_codes, (list, tuple)):
        fail_codes = [fail_codes]
    spec["fail_on_codes"] = []
    for code in fail_codes:
        canonical = code.strip().upper() if isinstance(code, str) else code
        if canonical not in codes:
            errors.append(f"fail_on_codes: unknown finding code {code!r}; valid codes: {', '.join(codes)}")
        elif canonical not in spec["fail_on_codes"]:
            spec["fail_on_codes"].append(canonical)

    timeout = params.get("timeout") or 0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
        errors.append(f"timeout: must be a number of seconds >= 0, got {timeout!r}")
        timeout = 0
    poll = params.get("poll_interval")
    poll = 5 if poll is None else poll
    if isinstance(poll, bool) or not isinstance(poll, (int, float)) or poll <= 0:
        errors.append(f"poll_interval: must be a number of seconds > 0, got {poll!r}")
        poll = 5
    spec["timeout"], spec["poll_interval"] = timeout, poll

    if errors:
        raise GateError("; ".join(errors))
    if not any(spec[key] for key in ("max", "ports", "processes", "ratios", "fail_on_codes")) and not severity:
        raise GateError(
            "nothing to check: set at least one of max, ports, processes, ratios, fail_on_severity, fail_on_codes"
        )
    return spec


def breakdown_states(spec):
    """States whose sockets the per-port and per-process checks need one by one."""
    wanted = set()
    for counts in spec["ports"].values():
        wanted.update(counts)
    for counts in spec["processes"].values():
        wanted.update(counts)
    return wanted


def owner_states(spec):
    """States to ask collect_facts for owners of (the ones the gate names)."""
    return sorted(set(spec["max"]) | breakdown_states(spec))


# ---- evaluation ----------------------------------------------------------------
def _top(counter, limit=TOP_OFFENDERS):
    return sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))[:limit]


def _check(metric, value, threshold):
    passed = value is None or value <= threshold
    return {"metric": metric, "value": value, "threshold": threshold, "passed": passed}


def _offenders(state, facts, breakdown, pids=None, port=None):
    """Ports, processes and peers behind a breach of `state` (optionally one port / some pids)."""
    detail = (breakdown or {}).get("states", {}).get(state)
    comms = (breakdown or {}).get("comm", {})
    if detail is not None:
        per_pid = detail["pids"]
        selected = [pid for pid in per_pid if pids is None or pid in pids]
        procs = []
        for pid in selected:
            ports = per_pid[pid]
            if port is not None:
                ports = {port: ports.get(port, 0)}
            total = sum(ports.values())
            if total:
                procs.append((pid, total, ports))
        procs.sort(key=lambda item: (-item[1], item[0]))
        processes = [
            {
                "pid": pid,
                "comm": comms.get(pid),
                "sockets": total,
                "ports": [{"port": p, "count": c} for p, c in _top(ports)],
            }
            for pid, total, ports in procs[:TOP_OFFENDERS]
        ]
        port_counts = detail["ports"] if port is None else {port: detail["ports"].get(port, 0)}
        return {
            "ports": [{"port": p, "count": c} for p, c in _top(port_counts) if c],
            "processes": processes,
            "peers": [{"address": a, "count": c} for a, c in _top(detail["peers"])],
        }
    top = facts.get("top") or {}
    owners = (facts.get("owners") or {}).get(state) or []
    return {
        "ports": [dict(item) for item in (top.get("by_local_port") or {}).get(state, [])[:TOP_OFFENDERS]],
        "processes": [
            {"pid": o.get("pid"), "comm": o.get("comm"), "sockets": o.get("sockets"), "ports": []}
            for o in owners[:TOP_OFFENDERS]
        ],
        "peers": [
            {"address": p.get("address"), "count": p.get("count")}
            for p in (top.get("by_peer") or {}).get(state, [])[:TOP_OFFENDERS]
        ],
    }


def evaluate(spec, facts, breakdown=None, severity_rank=None):
    """One sample against the spec -> {passed, checks, offenders, warnings}.

    facts: the tcp_state dict; breakdown: socket_breakdown() of the states the
    per-port / per-process checks name (None when there are none).
    """
    checks, offenders = [], []
    states = facts.get("states") or {}
    breakdown = breakdown or {"states": {}, "comm": {}}
    warnings = list(breakdown.get("warnings") or [])

    for state, limit in spec["max"].items():
        check = _check(state, states.get(state, 0), limit)
        checks.append(check)
        if not check["passed"]:
            offenders.append(dict(metric=check["metric"], **_offenders(state, facts, breakdown)))

    for port, counts in sorted(spec["ports"].items()):
        for state, limit in counts.items():
            detail = breakdown["states"].get(state, {"ports": {}})
            check = _check(f":{port} {state}", detail["ports"].get(port, 0), limit)
            checks.append(check)
            if not check["passed"]:
                offenders.append(dict(metric=check["metric"], **_offenders(state, facts, breakdown, port=port)))

    for comm, counts in sorted(spec["processes"].items()):
        pids = {pid for pid, name in breakdown["comm"].items() if name == comm}
        for state, limit in counts.items():
            per_pid = breakdown["states"].get(state, {"pids": {}})["pids"]
            value = sum(sum(per_pid.get(pid, {}).values()) for pid in pids)
            check = _check(f"{comm} {state}", value, limit)
            checks.append(check)
            if not check["passed"]:
                offenders.append(dict(metric=check["metric"], **_offenders(state, facts, breakdown, pids=pids)))

    pressure = facts.get("pressure") or {}
    for name, limit in spec["ratios"].items():
        group, key = RATIO_PATHS[name]
        value = (pressure.get(group) or {}).get(key)
        if value is None:
            warnings.append(f"ratio {name} cannot be measured here (no limit visible, e.g. inside a namespace)")
        check = _check(f"{name} ratio", None if value is None else round(float(value), 4), limit)
        checks.append(check)
        if not check["passed"]:
            offenders.append({"metric": check["metric"], "ports": [], "processes": [], "peers": []})

    findings = facts.get("findings") or []
    if spec["fail_on_severity"]:
        rank = severity_rank or _diagnose.severity_rank
        floor = rank(spec["fail_on_severity"])
        hits = [f for f in findings if rank(f.get("severity")) >= floor]
        check = _check(f"findings >= {spec['fail_on_severity']}", len(hits), 0)
        checks.append(check)
        if hits:
            offenders.append(_finding_offender(check["metric"], hits))
    for code in spec["fail_on_codes"]:
        hits = [f for f in findings if f.get("code") == code]
        check = _check(f"finding {code}", len(hits), 0)
        checks.append(check)
        if hits:
            offenders.append(_finding_offender(check["metric"], hits))

    return {
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "offenders": offenders,
        "warnings": warnings,
    }


def _finding_offender(metric, findings):
    return {
        "metric": metric,
        "ports": [],
        "processes": [],
        "peers": [],
        "findings": [
            {"code": f.get("code"), "severity": f.get("severity"), "summary": f.get("summary")} for f in findings
        ],
    }


# ---- the failure message ----------------------------------------------------------
def _describe(offender):
    parts = []
    for proc in offender.get("processes") or []:
        text = f"{proc['sockets']} held by pid {proc['pid']} ({proc.get('comm') or '?'})"
        if proc.get("ports"):
            text += " on " + ", ".join(f":{p['port']}" for p in proc["ports"])
        parts.append(text)
    if not parts and offender.get("ports"):
        parts.append("top local ports " + ", ".join(f":{p['port']} ({p['count']})" for p in offender["ports"]))
    if offender.get("peers"):
        parts.append("top peers " + ", ".join(f"{p['address']} ({p['count']})" for p in offender["peers"]))
    for finding in offender.get("findings") or []:
        parts.append(f"{finding['code']} ({finding['severity']}): {finding['summary']}")
    return parts


def _fmt(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def breach_paragraph(result, waited=None, samples=1):
    """One readable paragraph: every failed metric, value > threshold, and who is behind it."""
    failed = [c for c in result["checks"] if not c["passed"]]
    by_metric = {o["metric"]: o for o in result["offenders"]}
    sentences = []
    for check in failed:
        text = f"{check['metric']} {_fmt(check['value'])} > {_fmt(check['threshold'])}"
        parts = _describe(by_metric.get(check["metric"], {}))
        if parts:
            text += "; " + "; ".join(parts)
        sentences.append(text)
    head = f"TCP gate failed {len(failed)} of {len(result['checks'])} checks"
    if waited:
        head += f" after waiting {waited:g}s ({samples} samples)"
    return head + ": " + ". ".join(sentences) + "."


# ---- sampling and polling -----------------------------------------------------------
def run_gate(spec, sample, clock=time.monotonic, sleep=time.sleep):
    """Sample until the gate passes or `timeout` runs out (one sample without timeout).

    sample(detailed) -> (facts, breakdown). Samples taken while waiting are light
    (no /proc/<pid>/fd pass unless a per-process check needs one); a failing gate
    ends with one detailed sample that names the offenders. Returns evaluate()'s
    result plus samples and elapsed.
    """
    start = clock()
    deadline = start + spec["timeout"]
    samples = 0
    detailed = not spec["timeout"]
    while True:
        facts, breakdown = sample(detailed)
        samples += 1
        result = evaluate(spec, facts, breakdown)
        now = clock()
        if result["passed"] or detailed:
            break
        if now >= deadline:
            detailed = True  # one more sample, with the owners, to name who is behind the breach
            continue
        sleep(min(spec["poll_interval"], deadline - now))
    result["samples"] = samples
    result["elapsed"] = round(clock() - start, 3)
    return result


def socket_breakdown(states, ports=(), with_owners=True, *, dump=None, scan=None):
    """Per-state counts by local port, peer address and owning pid (x local port).

    One kernel dump of the given states; when only per-port figures are needed
    (``with_owners`` false and ``ports`` given) the kernel filters the ports too.
    Returns {"states": {STATE: {"ports": {port: n}, "peers": {addr: n},
    "pids": {pid: {port: n}}}}, "comm": {pid: comm}}.
    """
    dump = dump or cs.iter_diag
    scan = scan or _collect_owners.scan_socket_fds
    warnings = []
    out = {
        "states": {state: {"ports": {}, "peers": {}, "pids": {}} for state in states},
        "comm": {},
        "warnings": warnings,
    }
    if not states:
        return out
    bytecode = b""
    if ports and not with_owners:
        bytecode = df.compile_filter(df.any_of(df.port_range("local", p, p) for p in sorted(ports)))
    listen = cs.STATE_NUMBERS["LISTEN"]
    inode_of = {}
    query = {"states": list(states), "bytecode": bytecode, "details": False}
    # iter_matches falls back to /proc/net/tcp (same filter, in user space) where netlink is refused
    for family, record in _socket_info.iter_matches(query, None, dump, warnings):
        number = record[cs.R_STATE]
        detail = out["states"].get(cs.STATES[number - 1])
        if detail is None:  # NEW_SYN_RECV comes with SYN_RECV
            continue
        sport = record[cs.R_SPORT]
        detail["ports"][sport] = detail["ports"].get(sport, 0) + 1
        if number != listen:
            peer = socket.inet_ntop(family, bytes(record[cs.R_DST]))
            detail["peers"][peer] = detail["peers"].get(peer, 0) + 1
        if with_owners and record[cs.R_INODE]:
            inode_of[record[cs.R_INODE]] = (detail, sport)
    if inode_of:
        for pid, inodes in scan(set(inode_of)).items():
            for inode in inodes:
                detail, sport = inode_of[inode]
                per_port = detail["pids"].setdefault(pid, {})
                per_port[sport] = per_port.get(sport, 0) + 1
            out["comm"][pid] = _read_comm(pid)
    return out


def _read_comm(pid):
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as fh:
            return fh.read().rstrip("\n")
    except OSError:
        return None


def sample_host(spec, collect_facts, detailed=True, breakdown=socket_breakdown):
    """One sample: (facts, breakdown) with socket-level detail only where a check needs it.

    The /proc/<pid>/fd pass (costly on hosts with many open files) is made only
    for per-process checks, or when ``detailed`` to name a breach's owners.
    """
    findings_checked = bool(spec["fail_on_severity"] or spec["fail_on_codes"])
    owners = owner_states(spec) if detailed and findings_checked else []
    facts = collect_facts({"owners": owners, "top": TOP_OFFENDERS * 3})
    states = facts.get("states") or {}
    detail_states = set(breakdown_states(spec))
    breached = {state for state, limit in spec["max"].items() if states.get(state, 0) > limit}
    if detailed:
        # a breached per-state maximum gets its offenders named socket by socket
        detail_states.update(breached)
    with_owners = bool(spec["processes"]) or (detailed and bool(detail_states))
    # with owners every port is counted (offenders name them); otherwise the kernel filters the ports
    ports = () if with_owners else sorted(spec["ports"])
    return facts, breakdown(sorted(detail_states), ports=ports, with_owners=with_owners)
