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

import itertools
import math
import os
import select
import time

from ansible_collections.netstate.tcp.plugins.module_utils import _diag_filter as df
from ansible_collections.netstate.tcp.plugins.module_utils import _netlink as cs
from ansible_collections.netstate.tcp.plugins.module_utils import _netns, _owners, _socket_counter
from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import severity_rank
from ansible_collections.netstate.tcp.plugins.module_utils._text import one_line

RATIO_PATHS = {
    # option name -> (pressure key, ratio key) in the tcp_state facts
    "orphans": ("orphans", "ratio"),
    "memory": ("memory", "ratio_to_high"),
    "time_wait": ("time_wait", "ratio"),
    "ephemeral_ports": ("ephemeral_ports", "ratio"),
}
FAIL_SEVERITIES = ("warning", "critical")
TOP_OFFENDERS = 3
MAX_TIMEOUT = 86400  # a day: a drain that takes longer is no deploy gate, and an unbounded wait never returns
DEFAULT_POLL_INTERVAL = 5
MIN_POLL_INTERVAL = 0.1  # ten samples a second at most: each one is a kernel dump
MAX_POLL_INTERVAL = 3600


class GateError(ValueError):
    """Invalid gate input; the message names the option and the valid values."""


# ---- validation ------------------------------------------------------------
def normalize_state(name, states):
    """'time-wait', 'time_wait', 'TIME_WAIT' -> 'TIME_WAIT'; None when unknown."""
    canonical = cs.normalize_state(name)
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


def _seconds(value, low, high):
    """A finite number of seconds within low..high, else None (nan, inf, booleans and text are refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or not low <= value <= high:
        return None
    return value


def _mapping(where, value, shape, errors):
    """value as a dict ({} for None), or {} with an error naming what was expected."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{where}: must be a mapping of {shape}, got {value!r}")
        return {}
    return value


def _state_counts(where, mapping, states, errors):
    """{state: count} with normalized names; problems appended to errors."""
    valid = ", ".join(states)
    mapping = _mapping(where, mapping, "TCP state -> maximum count", errors)
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


def _valid_max(value, ctx, errors):
    return _state_counts("max", value, ctx["states"], errors)


def _valid_ports(value, ctx, errors):
    result = {}
    for key, mapping in _mapping("ports", value, "local port -> {state: count}", errors).items():
        port = _port(key)
        if port is None:
            errors.append(f"ports: port {key!r} must be an integer within 1..65535")
            continue
        counts = _state_counts(f"ports.{port}", mapping, ctx["states"], errors)
        if counts:
            result[port] = counts
    return result


def _valid_processes(value, ctx, errors):
    """{name: {state: count}}; a name matches the processes whose comm is its first 15 UTF-8 bytes."""
    result = {}
    shape = "process name (comm) -> {state: count}"
    for key, mapping in _mapping("processes", value, shape, errors).items():
        if not isinstance(key, str) or not key.strip():
            errors.append(f"processes: process name must be a non-empty string (comm), got {key!r}")
            continue
        counts = _state_counts(f"processes.{key}", mapping, ctx["states"], errors)
        if counts:
            result.setdefault(key.strip(), {}).update(counts)
    return result


def _valid_ratios(value, ctx, errors):
    del ctx
    result = {}
    for key, limit in _mapping("ratios", value, "ratio name -> 0..1", errors).items():
        name = key.strip().lower().replace("-", "_") if isinstance(key, str) else key
        if name not in RATIO_PATHS:
            errors.append(f"ratios: unknown ratio {key!r}; valid ratios: {', '.join(RATIO_PATHS)}")
            continue
        ratio = _ratio(limit)
        if ratio is None:
            errors.append(f"ratios.{name}: must be a number between 0 and 1, got {limit!r}")
            continue
        result[name] = ratio
    return result


def _valid_fail_on_severity(value, ctx, errors):
    del ctx
    if value is not None and value not in FAIL_SEVERITIES:
        errors.append(f"fail_on_severity: must be one of {', '.join(FAIL_SEVERITIES)}, got {value!r}")
        return None
    return value


def _valid_fail_on_codes(value, ctx, errors):
    codes = ctx["codes"]
    value = value or []
    result = []
    for code in value if isinstance(value, (list, tuple)) else [value]:
        canonical = code.strip().upper() if isinstance(code, str) else code
        if canonical not in codes:
            errors.append(f"fail_on_codes: unknown finding code {code!r}; valid codes: {', '.join(codes)}")
        elif canonical not in result:
            result.append(canonical)
    return result


def _valid_timeout(value, ctx, errors):
    del ctx
    value = 0 if value is None else value
    seconds = _seconds(value, 0, MAX_TIMEOUT)
    if seconds is None:
        errors.append(f"timeout: must be a finite number of seconds from 0 to {MAX_TIMEOUT}, got {value!r}")
        return 0
    return seconds


def _valid_poll_interval(value, ctx, errors):
    del ctx
    value = DEFAULT_POLL_INTERVAL if value is None else value
    seconds = _seconds(value, MIN_POLL_INTERVAL, MAX_POLL_INTERVAL)
    if seconds is None:
        errors.append(
            f"poll_interval: must be a finite number of seconds from {MIN_POLL_INTERVAL:g} to "
            f"{MAX_POLL_INTERVAL}, got {value!r}"
        )
        return DEFAULT_POLL_INTERVAL
    return seconds


def _networks(where, value, errors):
    """ipaddress networks of a list of addresses / CIDRs (host bits zero)."""
    if value is None:
        return []
    if not isinstance(value, (list, tuple)):
        errors.append(f"{where}: must be a list of IPv4/IPv6 addresses or CIDRs, got {value!r}")
        return []
    networks = []
    for item in value:
        try:
            networks.append(df.parse_network(item))
        except df.FilterError as exc:
            errors.append(f"{where}: {exc}")
    return networks


def _valid_exclude_peers(value, ctx, errors):
    del ctx
    return _networks("exclude_peers", value, errors)


def _valid_peer_addresses(value, ctx, errors):
    del ctx
    return _networks("peer_addresses", value, errors)


def _valid_namespace(value, ctx, errors):
    """None (the module's own namespace) or {name, path} of the namespace to gate."""
    del ctx
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        return {"name": str(value).strip(), "path": _netns.resolve_namespace(value)}
    except _netns.NetnsError as exc:
        errors.append(f"namespace: {exc}")
        return None


def peer_filter(spec):
    """The peers whose sockets count, as a _diag_filter node: in peer_addresses (if any) and not in exclude_peers."""
    allowed = df.any_of(df.address("peer", network) for network in spec["peer_addresses"])
    excluded = df.any_of(df.address("peer", network) for network in spec["exclude_peers"])
    return df.all_of([allowed, None if excluded is None else ("not", excluded)])


def _check_peer_filter(spec, errors):
    try:
        df.compile_filter(spec["peers"])
    except df.FilterError as exc:
        errors.append(f"exclude_peers, peer_addresses: {exc}")


# option -> its semantic check: (value, {"states", "codes"}, errors) -> normalized value
OPTION_CHECKS = {
    "max": _valid_max,
    "ports": _valid_ports,
    "processes": _valid_processes,
    "ratios": _valid_ratios,
    "fail_on_severity": _valid_fail_on_severity,
    "fail_on_codes": _valid_fail_on_codes,
    "timeout": _valid_timeout,
    "poll_interval": _valid_poll_interval,
    "exclude_peers": _valid_exclude_peers,
    "peer_addresses": _valid_peer_addresses,
    "namespace": _valid_namespace,
}
GATING_OPTIONS = ("max", "ports", "processes", "ratios", "fail_on_severity", "fail_on_codes")


def validate_spec(params, states, codes):
    """Normalize and check the tcp_gate options; raise GateError listing every problem."""
    errors = []
    ctx = {"states": states, "codes": codes}
    spec = {name: check(params.get(name), ctx, errors) for name, check in OPTION_CHECKS.items()}
    spec["peers"] = peer_filter(spec)
    _check_peer_filter(spec, errors)
    if errors:
        raise GateError("; ".join(errors))
    if not any(spec[name] for name in GATING_OPTIONS):
        raise GateError(
            "nothing to check: set at least one of max, ports, processes, ratios, fail_on_severity, fail_on_codes"
        )
    return spec


# ---- evaluation ----------------------------------------------------------------
def _top(counter, limit=TOP_OFFENDERS):
    return sorted(counter.items(), key=lambda item: (-item[1], str(item[0])))[:limit]


def _check(metric, value, threshold):
    passed = value is None or value <= threshold
    return {"metric": metric, "value": value, "threshold": threshold, "passed": passed}


def _pids_named(breakdown, name):
    """pids whose comm is what the kernel keeps of `name` (its first 15 UTF-8 bytes), compared as bytes."""
    return {pid for pid, comm in breakdown["comm"].items() if _owners.comm_matches(name, comm)}


def _process_offenders(detail, comms, pids=None, port=None):
    """The busiest processes of one state (optionally some pids / one port) with their busiest ports."""
    procs = []
    for pid, held_ports in detail["pids"].items():
        if pids is not None and pid not in pids:
            continue
        ports = held_ports if port is None else {port: held_ports.get(port, 0)}
        total = sum(ports.values())
        if total:
            procs.append((pid, total, ports))
    procs.sort(key=lambda item: (-item[1], item[0]))
    return [
        {
            "pid": pid,
            "comm": _owners.display_comm(comms.get(pid)),
            "sockets": total,
            "ports": [{"port": p, "count": c} for p, c in _top(ports)],
        }
        for pid, total, ports in procs[:TOP_OFFENDERS]
    ]


def _detail_offenders(detail, comms, pids=None, port=None):
    port_counts = detail["ports"] if port is None else {port: detail["ports"].get(port, 0)}
    return {
        "ports": [{"port": p, "count": c} for p, c in _top(port_counts) if c],
        "processes": _process_offenders(detail, comms, pids, port),
        "peers": [{"address": a, "count": c} for a, c in _top(detail["peers"])],
    }


def _facts_offenders(state, facts):
    """Offenders from the facts' top-N tables, where no socket-level count was made for the state."""
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


def _offenders(state, facts, breakdown, pids=None, port=None):
    """Ports, processes and peers behind a breach of `state` (optionally one port / some pids)."""
    detail = breakdown["states"].get(state)
    if detail is None:
        return _facts_offenders(state, facts)
    return _detail_offenders(detail, breakdown.get("comm", {}), pids, port)


def _max_checks(spec, facts, breakdown):
    states = facts.get("states") or {}
    for state, limit in spec["max"].items():
        check = _check(state, states.get(state, 0), limit)
        yield check, (None if check["passed"] else _offenders(state, facts, breakdown))


def _port_checks(spec, facts, breakdown):
    for port, counts in sorted(spec["ports"].items()):
        for state, limit in counts.items():
            detail = breakdown["states"].get(state, {"ports": {}})
            check = _check(f":{port} {state}", detail["ports"].get(port, 0), limit)
            yield check, (None if check["passed"] else _offenders(state, facts, breakdown, port=port))


def _process_checks(spec, facts, breakdown):
    for name, counts in sorted(spec["processes"].items()):
        pids = _pids_named(breakdown, name)
        for state, limit in counts.items():
            per_pid = breakdown["states"].get(state, {"pids": {}})["pids"]
            value = sum(sum(per_pid.get(pid, {}).values()) for pid in pids)
            check = _check(f"{name} {state}", value, limit)
            yield check, (None if check["passed"] else _offenders(state, facts, breakdown, pids=pids))


def _ratio_checks(spec, facts, warnings):
    pressure = facts.get("pressure") or {}
    for name, limit in spec["ratios"].items():
        group, key = RATIO_PATHS[name]
        value = (pressure.get(group) or {}).get(key)
        if value is None:
            warnings.append(f"ratio {name} cannot be measured here (no limit visible, e.g. inside a namespace)")
        check = _check(f"{name} ratio", None if value is None else round(float(value), 4), limit)
        yield check, (None if check["passed"] else {"ports": [], "processes": [], "peers": []})


def _severity_rank(name):
    """_diagnose's one severity order; an unknown severity ranks below every known one."""
    try:
        return severity_rank(name)
    except ValueError:
        return -1


def _finding_checks(spec, facts):
    findings = facts.get("findings") or []
    if spec["fail_on_severity"]:
        floor = _severity_rank(spec["fail_on_severity"])
        hits = [f for f in findings if _severity_rank(f.get("severity")) >= floor]
        yield _check(f"findings >= {spec['fail_on_severity']}", len(hits), 0), _finding_offender(hits)
    for code in spec["fail_on_codes"]:
        hits = [f for f in findings if f.get("code") == code]
        yield _check(f"finding {code}", len(hits), 0), _finding_offender(hits)


def evaluate(spec, facts, breakdown=None):
    """One sample against the spec -> {passed, checks, offenders, warnings}.

    facts: the tcp_state dict (or at least its `states`); breakdown: the exact
    counter's figures ({"states": {STATE: {ports, peers, pids}}, "comm": {pid: comm}})
    of the states the per-port / per-process checks name (None when there are none).
    """
    breakdown = breakdown or {"states": {}, "comm": {}}
    warnings = list(breakdown.get("warnings") or [])
    checks, offenders = [], []
    groups = (
        _max_checks(spec, facts, breakdown),
        _port_checks(spec, facts, breakdown),
        _process_checks(spec, facts, breakdown),
        _ratio_checks(spec, facts, warnings),
        _finding_checks(spec, facts),
    )
    for check, offender in itertools.chain.from_iterable(groups):
        checks.append(check)
        if offender is not None:
            offenders.append({"metric": check["metric"], **offender})
    return {
        "passed": all(c["passed"] for c in checks),
        "checks": checks,
        "offenders": offenders,
        "warnings": warnings,
    }


def _finding_offender(findings):
    if not findings:
        return None
    return {
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
    # process names and summaries come from the host (a process names itself): one line, no escape sequences
    return one_line(head + ": " + ". ".join(sentences) + ".")


# ---- sampling and polling -----------------------------------------------------------
class ControllerWatch:
    """Tells when the controller that started the module is gone, so a waiting gate stops polling.

    Ansible reads the module's stdout until the module exits: when that reader
    goes away (the SSH session or the local worker died), a pipe's write end
    reports POLLERR and a pty or socket POLLHUP, without writing anything.  A
    parent that exits (the module is reparented) is the second sign.  stdin is not
    watched: with pipelining Ansible closes it once the module is sent.
    """

    HANGUP = select.POLLERR | select.POLLHUP | select.POLLNVAL

    def __init__(self, fds=(1,)):
        self.parent = os.getppid()
        self.poller = select.poll()
        for fd in fds:
            try:
                os.fstat(fd)
            except OSError:
                continue  # not open: nothing to watch there
            self.poller.register(fd, 0)  # no events asked: only hangups and errors are reported

    def gone(self):
        if os.getppid() != self.parent:
            return True
        return any(events & self.HANGUP for _fd, events in self.poller.poll(0))

    def sleep(self, seconds):
        """Wait `seconds`, or less when the controller goes away; True when it did."""
        deadline = time.monotonic() + seconds
        while True:
            if self.gone():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # the parent check needs a wake-up now and then; a hangup wakes poll() at once
            self.poller.poll(min(left, 1.0) * 1000)


def in_namespace(spec, sample):
    """sample(detailed) run inside the namespace the spec names (each sample enters and leaves it)."""
    if spec["namespace"] is None:
        return sample

    def sample_there(detailed):
        with _netns.entered(spec["namespace"]["path"]):
            return sample(detailed)

    return sample_there


def run_gate(spec, sample, clock=time.monotonic, sleep=time.sleep):
    """Sample until the gate passes or `timeout` runs out (one sample without timeout).

    sample(detailed) -> (facts, breakdown). Samples taken while waiting are light
    (no /proc/<pid>/fd pass unless a per-process check needs one); a failing gate
    ends with one detailed sample that names the offenders. sleep(seconds) may
    return True to say the controller is gone: polling then stops at once.
    Returns evaluate()'s result plus samples, elapsed and controller_gone.
    """
    start = clock()
    deadline = start + spec["timeout"]
    samples = 0
    detailed = not spec["timeout"]
    gone = False
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
        if sleep(min(spec["poll_interval"], deadline - now)):
            gone = True
            break
    result["samples"] = samples
    result["elapsed"] = round(clock() - start, 3)
    result["controller_gone"] = gone
    return result


def breakdown_states(spec):
    """States whose sockets the per-port and per-process checks need one by one."""
    wanted = set()
    for counts in spec["ports"].values():
        wanted.update(counts)
    for counts in spec["processes"].values():
        wanted.update(counts)
    return wanted


def needs_facts(spec):
    """Whether the checks need the whole tcp_state facts (pressure ratios, findings), not only counts."""
    return bool(spec["ratios"] or spec["fail_on_severity"] or spec["fail_on_codes"])


def _count_plan(spec, with_facts, detailed):
    """(states to count socket by socket, with owners, local ports the kernel may filter)."""
    states = set(breakdown_states(spec))
    if detailed or not with_facts or spec["peers"] is not None:
        # without facts the counter's totals are the state counts; a detailed sample names the
        # offenders of every breached maximum, and gives the findings their owners, from one pass
        states.update(spec["max"])
    with_owners = bool(spec["processes"]) or (detailed and bool(states))
    # (the facts count every peer: with a peer filter the maxima are the counter's)
    # the kernel may filter the ports only when the counter makes its own dump for the port checks alone
    alone = not with_owners and not (states - breakdown_states(spec)) and not with_facts
    return sorted(states), with_owners, sorted(spec["ports"]) if alone else ()


def sample_host(spec, collect_facts, detailed=True, rediagnose=None, *, counting=_socket_counter):
    """One sample: (facts, breakdown) from ONE kernel dump and at most one /proc/<pid>/fd pass.

    Checks on counts only (max, ports, processes) dump just the gated states into
    the exact counter (the kernel filtering the peers the spec excludes); with
    ratios or findings the facts are collected (``collect_facts(options,
    record_tap)``) and the counter counts the same dump on its way.  The
    /proc/<pid>/fd pass (costly on hosts with many open files) is made only
    for per-process checks, or when ``detailed`` to name a breach's
    owners; the findings then get their owners from that same pass
    (``rediagnose(facts)`` recomputes them).
    """
    with_facts = needs_facts(spec)
    states, with_owners, ports = _count_plan(spec, with_facts, detailed)
    warnings = []
    counter = counting.SocketCounter(states, with_inodes=with_owners, peers=spec["peers"])
    if with_facts:
        facts = collect_facts({"owners": [], "top": TOP_OFFENDERS * 3}, counter if states else None)
    else:
        counting.dump_into(counter, ports, warnings=warnings)
        facts = {"states": {state: detail["total"] for state, detail in counter.states.items()}}
    held = counting.resolve_owners(counter, warnings=warnings) if with_owners else {}
    if held and with_facts and rediagnose is not None and (spec["fail_on_severity"] or spec["fail_on_codes"]):
        inodes = counter.owner_inodes()
        facts["owners"] = _owners.find_owners(inodes, top=TOP_OFFENDERS * 3, held=held)[0]
        facts["findings"] = rediagnose(facts)
    if with_facts and spec["peers"] is not None:
        # the findings describe the whole host; the maxima count only the peers the gate counts
        counted = {state: counter.states[state]["total"] for state in spec["max"]}
        facts["states"] = dict(facts["states"], **counted)
    return facts, {"states": counter.states, "comm": counter.comm, "warnings": warnings}
