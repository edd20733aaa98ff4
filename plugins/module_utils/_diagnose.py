# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Findings: pure functions of the tcp_state facts dict (schema 1 of docs/architecture.md).

Nothing here touches the kernel: every number comes from the facts, so the
diagnoses are unit-testable from recorded fixtures. Any key of the facts may
be missing or None (sysctls null inside a non-initial namespace, owners absent
when the scan was off, rates only with an interval): a finding that lacks its
inputs is skipped, never a crash.
"""

from __future__ import annotations

import math

from ansible_collections.netstate.tcp.plugins.module_utils import _remediation
from ansible_collections.netstate.tcp.plugins.module_utils._collect_system import ORPHAN_RETRIES_ZERO_MEANS

# The one severity order of the collection (the gate and the fleet report rank with severity_rank).
SEVERITIES = ("info", "warning", "critical")

CODES = (
    "CLOSE_WAIT_LEAK",
    "TIME_WAIT_CHURN",
    "FIN_WAIT1_STUCK",
    "ORPHAN_PRESSURE",
    "TCP_MEMORY_PRESSURE",
    "LISTEN_OVERFLOW",
    "SYN_BACKLOG_PRESSURE",
    "EPHEMERAL_PORT_PRESSURE",
    "TW_BUCKET_OVERFLOW",
    "ORPHAN_RETRIES_DEFAULT",
    "TW_RECYCLE_PRESENT",
    "CONNTRACK_TABLE_PRESSURE",
)

REMEDIATION_KINDS = ("application", "sysctl", "capacity", "info")

# key -> (kind, default, why). kind: count (int >= 0), bytes (int >= 0),
# ratio (number 0..1), rate (number >= 0, per second).
THRESHOLD_SPEC = {
    "close_wait_warning": (
        "count",
        100,
        "a healthy application closes within milliseconds of the peer's FIN; a hundred lingering CLOSE_WAIT "
        "sockets means some code path never calls close()",
    ),
    "close_wait_critical": (
        "count",
        1000,
        "a thousand leaked fds is where proxies hit their fd limit and stop serving",
    ),
    "close_wait_min_per_owner": (
        "count",
        10,
        "a process holding at least this many CLOSE_WAIT sockets is named as a leaker; fewer is normal shutdown lag",
    ),
    "time_wait_warning": (
        "count",
        5000,
        "the low end of the TIME_WAIT floods seen in production write-ups; below it TIME_WAIT is harmless bookkeeping",
    ),
    "time_wait_critical": (
        "count",
        30000,
        "the high end of those floods: about half of the default ephemeral port range for one peer",
    ),
    "fin_wait1_warning": (
        "count",
        100,
        "FIN_WAIT1 normally lasts one round trip; a hundred at once means peers stopped acknowledging",
    ),
    "fin_wait1_critical": (
        "count",
        1000,
        "a thousand stuck FIN_WAIT1 sockets is the start of the FIN_WAIT1 hoard incident",
    ),
    "fin_wait1_bytes_warning": (
        "bytes",
        64 * 1024 * 1024,
        "64 MiB of unsent data held by closed sockets is memory no application can free",
    ),
    "fin_wait1_bytes_critical": (
        "bytes",
        1024 * 1024 * 1024,
        "1 GiB held by FIN_WAIT1 sockets competes with the workload for memory (the hoard reached 16 GB)",
    ),
    "orphan_ratio_warning": (
        "ratio",
        0.5,
        "compared with the 4x-penalized orphan ratio: the kernel already resets idle, ICMP-hit orphans at 1.0",
    ),
    "orphan_ratio_critical": (
        "ratio",
        1.0,
        "compared with the 4x-penalized orphan ratio: at 1.0 the kernel resets penalized orphans and logs "
        "'too many orphaned sockets'",
    ),
    "memory_ratio_warning": (
        "ratio",
        0.7,
        "TCP memory pages over tcp_mem[2] (high); near tcp_mem[1] the kernel enters memory pressure and shrinks "
        "buffers",
    ),
    "memory_ratio_critical": (
        "ratio",
        0.9,
        "TCP memory pages over tcp_mem[2]; at 1.0 allocations fail and the kernel logs 'out of memory -- consider "
        "tuning tcp_mem'",
    ),
    "listen_fill_warning": (
        "ratio",
        0.8,
        "accept queue over backlog: a queue this full means the owner accepts slower than clients connect",
    ),
    "listen_fill_critical": (
        "ratio",
        1.0,
        "a full accept queue: the kernel drops the next handshake (ListenOverflows)",
    ),
    "syn_backlog_ratio_warning": (
        "ratio",
        0.5,
        "half-open connections over tcp_max_syn_backlog (or over the listener's backlog for one port)",
    ),
    "syn_backlog_ratio_critical": (
        "ratio",
        0.9,
        "nearly full SYN queue: the kernel sends syncookies or drops SYNs",
    ),
    "ephemeral_port_ratio_warning": (
        "ratio",
        0.5,
        "ports in use for the busiest local-address/peer tuple over ip_local_port_range: half used leaves little "
        "headroom for a burst",
    ),
    "ephemeral_port_ratio_critical": (
        "ratio",
        0.8,
        "connect() starts failing with EADDRNOTAVAIL as the range fills, and port search gets slow well before",
    ),
    "tw_bucket_ratio_warning": (
        "ratio",
        0.8,
        "TIME_WAIT sockets over tcp_max_tw_buckets: close to the point where the kernel skips TIME_WAIT",
    ),
    "tw_bucket_ratio_critical": (
        "ratio",
        0.95,
        "the table is practically full: closing sockets skip TIME_WAIT ('time wait bucket table overflow')",
    ),
    "listen_drop_rate_critical": (
        "rate",
        1.0,
        "ListenOverflows + ListenDrops per second (needs interval): more than one refused handshake a second is "
        "visible to users; any growth is a warning",
    ),
    "syn_drop_rate_critical": (
        "rate",
        1.0,
        "TCPReqQFullDrop per second (needs interval): SYNs dropped because the SYN queue is full; any growth is a "
        "warning",
    ),
    "tw_overflow_rate_critical": (
        "rate",
        10.0,
        "TCPTimeWaitOverflow per second (needs interval): sockets closing without TIME_WAIT protection; any growth "
        "is a warning",
    ),
    "conntrack_ratio_warning": (
        "ratio",
        0.75,
        "entries in the namespace's nf_conntrack table over nf_conntrack_max: a quarter of headroom is what a "
        "burst of new connections eats first",
    ),
    "conntrack_ratio_critical": (
        "ratio",
        0.9,
        "nearly full conntrack table: when it is full the kernel drops new connections and logs 'nf_conntrack: "
        "table full, dropping packet'",
    ),
    "counter_events_warning": (
        "count",
        1000,
        "without interval a counter only shows events since boot (or namespace creation): at or above this count "
        "it gives a warning, below it info; counters alone are never critical",
    ),
}

DEFAULT_THRESHOLDS = {key: spec[1] for key, spec in THRESHOLD_SPEC.items()}

# Pairs whose warning level must not exceed the critical level.
_ORDERED_PAIRS = (
    ("close_wait_warning", "close_wait_critical"),
    ("time_wait_warning", "time_wait_critical"),
    ("fin_wait1_warning", "fin_wait1_critical"),
    ("fin_wait1_bytes_warning", "fin_wait1_bytes_critical"),
    ("orphan_ratio_warning", "orphan_ratio_critical"),
    ("memory_ratio_warning", "memory_ratio_critical"),
    ("listen_fill_warning", "listen_fill_critical"),
    ("syn_backlog_ratio_warning", "syn_backlog_ratio_critical"),
    ("ephemeral_port_ratio_warning", "ephemeral_port_ratio_critical"),
    ("tw_bucket_ratio_warning", "tw_bucket_ratio_critical"),
    ("conntrack_ratio_warning", "conntrack_ratio_critical"),
)

_KIND_HELP = {
    "count": "an integer >= 0",
    "bytes": "an integer >= 0 (bytes)",
    "ratio": "a number between 0 and 1",
    "rate": "a number >= 0 (per second)",
}


def severity_rank(name):
    """0 for info, 1 for warning, 2 for critical; ValueError for anything else."""
    if isinstance(name, str) and name in SEVERITIES:
        return SEVERITIES.index(name)
    raise ValueError(f"unknown severity {name!r}; valid severities: {', '.join(SEVERITIES)}")


def worst_severity(levels):
    """The worst of several severities; None (no finding) is below info and never wins."""
    worst = None
    for level in levels:
        if level is not None and (worst is None or severity_rank(level) > severity_rank(worst)):
            worst = level
    return worst


def validate_thresholds(user=None):
    """Return DEFAULT_THRESHOLDS merged with the user's overrides.

    Raises ValueError naming the first bad key and what is allowed; nothing is
    returned half-validated.
    """
    if user is None:
        return dict(DEFAULT_THRESHOLDS)
    if not isinstance(user, dict):
        raise ValueError(f"thresholds: must be a dict, got {type(user).__name__}")
    merged = dict(DEFAULT_THRESHOLDS)
    for key in sorted(user, key=str):
        if key not in THRESHOLD_SPEC:
            raise ValueError(f"thresholds: unknown key {key!r}; valid keys: {', '.join(sorted(THRESHOLD_SPEC))}")
        kind = THRESHOLD_SPEC[key][0]
        merged[key] = _validate_value(key, kind, user[key])
    for low, high in _ORDERED_PAIRS:
        if merged[low] > merged[high]:
            raise ValueError(
                f"thresholds: {low} ({merged[low]}) must not be above {high} ({merged[high]}); "
                f"a warning level must be at or below its critical level"
            )
    return merged


def _validate_value(key, kind, value):
    allowed = _KIND_HELP[kind]
    # bool is an int subclass: True must not pass as 1.
    if isinstance(value, bool) or value is None:
        raise ValueError(f"thresholds: {key} must be {allowed}, got {value!r}")
    if isinstance(value, str):
        # Ansible templating often turns numbers into strings: accept "0.5" and "100".
        try:
            value = int(value.strip()) if kind in ("count", "bytes") else float(value.strip())
        except ValueError:
            raise ValueError(f"thresholds: {key} must be {allowed}, got {value!r}") from None
    if kind in ("count", "bytes"):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int):
            raise ValueError(f"thresholds: {key} must be {allowed}, got {value!r}")
        if value < 0:
            raise ValueError(f"thresholds: {key} must be {allowed}, got {value!r}")
        return value
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"thresholds: {key} must be {allowed}, got {value!r}")
    value = float(value)
    if kind == "ratio" and not 0.0 <= value <= 1.0:
        raise ValueError(f"thresholds: {key} must be {allowed}, got {value!r}")
    if kind == "rate" and value < 0:
        raise ValueError(f"thresholds: {key} must be {allowed}, got {value!r}")
    return value


# ---- readers of the facts dict ---------------------------------------------
# Facts may come from an old collector or a hostile host: every value a finding reads goes through one
# of these, which return the expected type or None (never raise), so a finding degrades instead of crashing.


def _get(obj, *path):
    """obj[path[0]][path[1]]..., or None when any step is missing or not a dict."""
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _num(value):
    """A finite int/float (numeric strings accepted), else None; bool is not a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip()) if "." in value else int(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)):
        return value if math.isfinite(value) else None
    return None


def _int(value):
    """_num when it is a whole number (pids, ports), as an int; else None."""
    value = _num(value)
    return int(value) if value is not None and float(value).is_integer() else None


def _n(value):
    """_num with 0 for unknown: for counts where a missing key means none."""
    value = _num(value)
    return 0 if value is None else value


def _text(value):
    """A string, else None."""
    return value if isinstance(value, str) else None


def _list(value):
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _dict(value):
    return value if isinstance(value, dict) else {}


def _sysctl(facts, name):
    return _get(facts, "sysctls", name)


def _port_range(facts):
    """net.ipv4.ip_local_port_range as the collector parsed it ([low, high]), or None."""
    value = _sysctl(facts, "net.ipv4.ip_local_port_range")
    if isinstance(value, list) and len(value) == 2:
        low, high = _int(value[0]), _int(value[1])
        if low is not None and high is not None:
            return [low, high]
    return None


def _effective_orphan_retries(facts):
    """The retries the kernel really uses (the collector's `effective`; 0 in the sysctl means 8)."""
    return _int(_get(facts, "effective", "tcp_orphan_retries"))


def _typed(entry, readers):
    """{field: reader(entry[field])} for a facts entry: each field read with its type-checking reader."""
    entry = _dict(entry)
    return {field: read(entry.get(field)) for field, read in readers.items()}


OWNER_FIELDS = {"pid": _int, "comm": _text, "cmdline": _text, "user": _text, "container": _text, "sockets": _int}


def _owner(owner):
    """An owner entry (owners.<STATE>[], listeners[].owner, churn.processes[]) with its fields type-checked."""
    return _typed(owner, OWNER_FIELDS)


def _owner_label(owner):
    owner = _owner(owner)
    if owner["pid"] is None and owner["comm"] is None:
        return "an unknown process"
    container = f", container {owner['container']}" if owner["container"] else ""
    return f"pid {owner['pid']} ({owner['comm']}{container})"


def _listener(entry):
    """A listeners[] entry with its fields type-checked, plus its local port."""
    entry = _dict(entry)
    local = _text(entry.get("local"))
    return {
        "local": local,
        "port": _port_of(local),
        "accept_queue": _num(entry.get("accept_queue")),
        "backlog": _num(entry.get("backlog")),
        "fill": _num(entry.get("fill")),
        "owner": _owner(entry.get("owner")) if isinstance(entry.get("owner"), dict) else None,
    }


def _listeners(facts):
    return [_listener(entry) for entry in _list(facts.get("listeners"))]


def _port_of(local):
    if not isinstance(local, str) or ":" not in local:
        return None
    return _int(local.rsplit(":", 1)[1])


def _top(facts, group, state, limit=3):
    """top.<group>.<state>[:limit] with each entry's known fields type-checked."""
    entries = []
    for item in _list(_get(facts, "top", group, state))[:limit]:
        entry = {"count": _n(item.get("count"))}
        if "port" in item:
            entry["port"] = _int(item.get("port"))
        if "address" in item:
            entry["address"] = _text(item.get("address"))
        if "scope" in item:
            entry["scope"] = _text(item.get("scope"))
        entries.append(entry)
    return entries


def _endpoint_label(entry):
    address, port = entry.get("address"), entry.get("port")
    if address is None:
        return "unknown"
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port is not None else address


def _have_rates(facts):
    return bool(_dict(facts.get("rates"))) and (_num(facts.get("interval")) or 1) > 0


def _level(value, warning, critical):
    if value is None:
        return None
    if value >= critical:
        return "critical"
    if value >= warning:
        return "warning"
    return None


def _largest(source, names, label):
    """(the largest of source[name] for names, or 0; {label.format(name): value} of those known)."""
    evidence = {}
    largest = 0
    for name in names:
        value = _num(source.get(name))
        if value is not None:
            evidence[label.format(name)] = value
            largest = max(largest, value)
    return largest, evidence


def _rate_level(facts, names, th, rate_critical_key, growth_level):
    """_counter_level's branch for growth rates measured over the interval."""
    total_rate, evidence = _largest(_dict(facts.get("rates")), names, "{}_per_second")
    if total_rate <= 0:
        return None, evidence, "not growing during the sampling interval"
    level = growth_level
    if rate_critical_key is not None and total_rate >= th[rate_critical_key] > 0:
        level = "critical"
    return level, evidence, f"growing at {total_rate:.3g}/s during the sampling interval"


def _counter_level(facts, names, th, rate_critical_key=None, growth_level="warning"):
    """Severity from kernel counters, preferring growth rates over since-boot totals.

    With rates (interval > 0): any growth is `growth_level`, growth at or above the
    rate_critical threshold is critical, no growth is no finding. Without rates a
    since-boot total gives at most a warning (counter_events_warning), below it info.
    Several names are combined with max(), not a sum: the kernel bumps ListenDrops with every
    ListenOverflows, and SyncookiesSent with every TCPReqQFullDoCookies.
    Returns (severity or None, evidence dict, note).
    """
    rates = _dict(facts.get("rates"))
    if _have_rates(facts) and any(_num(rates.get(name)) is not None for name in names):
        return _rate_level(facts, names, th, rate_critical_key, growth_level)
    total, evidence = _largest(_dict(facts.get("counters")), names, "{}")
    if total <= 0:
        return None, evidence, ""
    level = "warning" if total >= th["counter_events_warning"] else "info"
    if severity_rank(growth_level) < severity_rank(level):
        level = growth_level
    return (
        level,
        evidence,
        f"{int(total)} events since the counters started (boot or namespace creation); "
        "run with interval to see whether they are still growing",
    )


def _catalog_fixes(code, current):
    """{sysctl: catalog value} from the profile of finding ``code``, for each sysctl of ``current``
    ({name: the host's value}) whose catalog value improves on it."""
    profile = _remediation.FINDING_PROFILES[code]
    fixes = {}
    for name, value in current.items():
        target = _remediation.profile_value(profile, name)
        if _remediation.improves(name, value, target):
            fixes[name] = target
    return fixes


def _finding(code, severity, summary, evidence, *, kind, text, sysctls=None):
    sysctls = dict(sysctls or {})
    return {
        "code": code,
        "severity": severity,
        "summary": summary,
        "evidence": evidence,
        "remediation": {
            "kind": kind,
            "text": text,
            "sysctls": sysctls,
            # The remediate role's profile that applies these sysctls (None: no sysctl fix, or set by hand).
            "profile": _remediation.FINDING_PROFILES.get(code) if sysctls else None,
        },
    }


def _fmt(value):
    return "unknown" if value is None else str(int(value))


def _fmt_ratio(value):
    return "unknown" if value is None else f"{value:.2f}"


def _human_bytes(value):
    value = float(_n(value))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


# ---- CLOSE_WAIT_LEAK ---------------------------------------------------------


def _close_wait_holders(facts, th, owners_known, owners, named):
    if named:
        holders = ", ".join(f"pid {o['pid']} ({o['comm']}): {o['sockets']}" for o in named[:5])
        return f"held by {holders}"
    if owners_known and owners:
        return f"spread over {len(owners)} processes, none holding {th['close_wait_min_per_owner']} or more"
    return "owner unknown (owners scan off or not permitted: run as root with owners including CLOSE_WAIT)"


def _close_wait_owners(facts, th):
    """(owners scanned?, owners of CLOSE_WAIT sockets busiest first, those holding enough to be named)."""
    owners_known = isinstance(_get(facts, "owners", "CLOSE_WAIT"), list)
    owners = sorted((_owner(o) for o in _list(_get(facts, "owners", "CLOSE_WAIT"))), key=lambda o: -(o["sockets"] or 0))
    named = [o for o in owners if (o["sockets"] or 0) >= th["close_wait_min_per_owner"]]
    return owners_known, owners, named


def _listeners_of(facts, owners):
    """The local addresses the given owners listen on."""
    pids = {o["pid"] for o in owners if o["pid"] is not None}
    return [lst["local"] for lst in _listeners(facts) if lst["owner"] and lst["owner"]["pid"] in pids and lst["local"]]


def _close_wait_leak(facts, th):
    total = _n(_get(facts, "states", "CLOSE_WAIT"))
    persistent = _num(_get(facts, "persistent", "CLOSE_WAIT", "count"))
    # With an interval, only sockets still in CLOSE_WAIT in both samples are leaked.
    leaked = persistent if persistent is not None else total
    severity = _level(leaked, th["close_wait_warning"], th["close_wait_critical"])
    if severity is None:
        return None
    owners_known, owners, named = _close_wait_owners(facts, th)
    ports = [p["port"] for p in _top(facts, "by_local_port", "CLOSE_WAIT", 5) if p.get("port") is not None]
    evidence = {
        "close_wait": total,
        "owners": [{key: o[key] for key in ("pid", "comm", "cmdline", "user", "container", "sockets")} for o in named],
        "local_ports": ports,
        "owner_listeners": _listeners_of(facts, named),
        "threshold": th["close_wait_critical"] if severity == "critical" else th["close_wait_warning"],
    }
    if persistent is not None:
        evidence["persistent"] = persistent
    who = _close_wait_holders(facts, th, owners_known, owners, named)
    port_text = f" on local ports {', '.join(str(p) for p in ports)}" if ports else ""
    still = f" ({int(persistent)} still there after the interval)" if persistent is not None else ""
    summary = f"{int(total)} CLOSE_WAIT sockets{still}{port_text}, {who}"
    text = (
        "CLOSE_WAIT means the peer closed and the local application never called close() on its socket: "
        "a file-descriptor leak in the application. Fix the code path that drops connections without closing them "
        "(error paths, missing finally/defer, pools that never release); restarting the process frees the sockets "
        "until the leak fills them again. No sysctl fixes this: the kernel never times out CLOSE_WAIT."
    )
    return _finding("CLOSE_WAIT_LEAK", severity, summary, evidence, kind="application", text=text)


# ---- TIME_WAIT_CHURN ---------------------------------------------------------
# TIME_WAIT sockets have no owner (the process let go at close()), so who closes first is proven by a trace
# (churn.source tracefs), else inferred from the socket table: a listening port holding TIME_WAIT means its
# owner closes incoming connections first; ESTABLISHED sockets towards the busiest TIME_WAIT peer endpoint
# point at the processes that open (and close) connections to it.

TRACE_HINT = "run tcp_state_facts with trace (seconds) to name the process that closes first"


def _churner(process):
    process = _dict(process)
    entry = {key: value for key, value in _owner(process).items() if key in ("pid", "comm", "container")}
    entry["active_closes"] = _n(process.get("active_closes"))
    entry["active_closes_per_second"] = _n(process.get("active_closes_per_second"))
    entry["top_peers"] = [
        {"address": _text(peer.get("address")), "port": _int(peer.get("port")), "count": _n(peer.get("count"))}
        for peer in _list(process.get("top_peers"))[:3]
    ]
    return entry


def _traced_churners(facts):
    """Processes of churn (tracefs) that closed connections first, busiest first; [] when not traced."""
    churn = _dict(facts.get("churn"))
    if churn.get("source") != "tracefs":
        return []
    churners = [_churner(p) for p in _list(churn.get("processes"))]
    churners = [c for c in churners if c["active_closes"] > 0]
    churners.sort(key=lambda c: -c["active_closes"])
    return churners[:5]


def _listener_closers(facts, tw_ports):
    """Listeners whose local port holds TIME_WAIT sockets: their owners close incoming connections first."""
    on_port = {entry["port"]: entry["count"] for entry in tw_ports if entry.get("port") is not None}
    closers = []
    for lst in _listeners(facts):
        if lst["port"] in on_port and lst["port"] is not None:
            closers.append({"local": lst["local"], "time_wait": on_port[lst["port"]], "owner": lst["owner"]})
    closers.sort(key=lambda entry: -entry["time_wait"])
    return closers[:5]


def _same_endpoint(entry, other):
    return entry.get("address") == other.get("address") and entry.get("port") == other.get("port")


def _established_candidates(facts, endpoint):
    """(ESTABLISHED sockets towards endpoint, owners of ESTABLISHED sockets or None when not scanned)."""
    established = sum(
        entry["count"]
        for entry in _top(facts, "by_peer_endpoint", "ESTABLISHED", 10)
        if _same_endpoint(entry, endpoint)
    )
    owners = _get(facts, "owners", "ESTABLISHED")
    if not isinstance(owners, list):
        return established, None
    candidates = sorted((_owner(o) for o in _list(owners)), key=lambda o: -(o["sockets"] or 0))
    return established, [{k: o[k] for k in ("pid", "comm", "container", "sockets")} for o in candidates[:5]]


def _churn_basis(facts, tw_ports, endpoint):
    """(basis, evidence additions, summary text) naming who closes first, as well as the facts can prove."""
    churners = _traced_churners(facts)
    if churners:
        seconds = _num(_get(facts, "churn", "seconds"))
        named = "; ".join(
            f"{_owner_label(c)} {c['active_closes_per_second']:.3g}/s"
            + (f" to {_endpoint_label(c['top_peers'][0])}" if c["top_peers"] else "")
            for c in churners[:3]
        )
        return "traced", {"churners": churners}, f"closed first by {named} (traced for {_fmt(seconds)} s)"
    closers = _listener_closers(facts, tw_ports)
    if closers:
        named = ", ".join(f"{c['local']} of {_owner_label(c['owner'])}" for c in closers[:3])
        text = f"they sit on listening port {named}, whose owner closes incoming connections first; {TRACE_HINT}"
        return "listener", {"churners": [], "listeners": closers}, text
    if endpoint is not None:
        established, candidates = _established_candidates(facts, endpoint)
        if established > 0:
            extra = {"churners": [], "established_to_peer": established, "candidates": candidates or []}
            if candidates:
                who = "candidates: " + ", ".join(_owner_label(c) for c in candidates[:3])
            else:
                who = "run with owners including ESTABLISHED to name their processes"
            text = f"{int(established)} ESTABLISHED sockets go to {_endpoint_label(endpoint)} too ({who}); {TRACE_HINT}"
            return "established_peers", extra, text
    return (
        "unknown",
        {"churners": []},
        f"the closing process is unknown (TIME_WAIT sockets have no owner); {TRACE_HINT}",
    )


def _closes_incoming(facts, count, top_port, closers_basis):
    """True when this host actively closes incoming connections (TIME_WAIT on a service port)."""
    if closers_basis == "listener":
        return True
    port = top_port.get("port")
    if port is None or count <= 0 or top_port.get("count", 0) * 2 < count:
        return False
    port_range = _port_range(facts)
    # A port most TIME_WAIT sit on, outside the ephemeral range, is a service port.
    return not (port_range and port_range[0] <= port <= port_range[1])


def _time_wait_reuse_fix(facts, incoming, top_peer):
    if incoming:
        return {}
    reuse = _num(_sysctl(facts, "net.ipv4.tcp_tw_reuse"))
    # 2 (the kernel default) already reuses TIME_WAIT ports towards loopback peers.
    if reuse == 2 and top_peer.get("scope") == "loopback":
        return {}
    return _catalog_fixes("TIME_WAIT_CHURN", {"net.ipv4.tcp_tw_reuse": reuse})


def _time_wait_churn(facts, th):
    count = _n(_get(facts, "states", "TIME_WAIT"))
    severity = _level(count, th["time_wait_warning"], th["time_wait_critical"])
    if severity is None:
        return None
    tw_ports = _top(facts, "by_local_port", "TIME_WAIT", 10)
    top_port = tw_ports[0] if tw_ports else {}
    top_peer = (_top(facts, "by_peer", "TIME_WAIT", 1) or [{}])[0]
    endpoint = (_top(facts, "by_peer_endpoint", "TIME_WAIT", 1) or [None])[0]
    basis, basis_evidence, basis_text = _churn_basis(facts, tw_ports, endpoint)
    incoming = _closes_incoming(facts, count, top_port, basis)
    evidence = {
        "time_wait": count,
        "top_local_port": top_port or None,
        "top_peer": top_peer or None,
        "top_peer_endpoint": endpoint,
        "direction": "incoming" if incoming else "outgoing",
        "basis": basis,
        **basis_evidence,
        "tcp_tw_reuse": _num(_sysctl(facts, "net.ipv4.tcp_tw_reuse")),
        "threshold": th["time_wait_critical"] if severity == "critical" else th["time_wait_warning"],
    }
    tw_rate = _num(_get(facts, "rates", "TW"))
    if tw_rate is not None:
        evidence["TW_per_second"] = tw_rate
    port = top_port.get("port")
    port_text = f"local port {port} ({int(top_port['count'])})" if port is not None else "local port unknown"
    peer_text = (
        f"peer {top_peer['address']} ({int(top_peer['count'])}, {top_peer.get('scope')})"
        if top_peer.get("address") is not None
        else "peer unknown"
    )
    if endpoint is not None and endpoint.get("address") is not None:
        peer_text += f", busiest peer endpoint {_endpoint_label(endpoint)} ({int(endpoint['count'])})"
    summary = f"{int(count)} TIME_WAIT sockets; busiest {port_text}, busiest {peer_text}; {basis_text}"
    text = (
        "TIME_WAIT is held by the side that closes first and lasts a fixed 60 s (TCP_TIMEWAIT_LEN); "
        "tcp_fin_timeout does not shorten it (it is for FIN_WAIT2 only). Find the churner above and reuse "
        "connections: HTTP keep-alive, connection pools, fewer short-lived connections. "
    )
    if incoming:
        text += (
            f"Local port {port} is a service port: this host actively closes incoming connections; let clients "
            "close first or keep connections alive. tcp_tw_reuse only affects outgoing connections. "
        )
    else:
        text += "For outgoing connections net.ipv4.tcp_tw_reuse=1 lets connect() reuse a TIME_WAIT port safely. "
    text += "Never enable tcp_tw_recycle: it breaks clients behind NAT and was removed in Linux 4.12."
    sysctls = _time_wait_reuse_fix(facts, incoming, top_peer)
    return _finding("TIME_WAIT_CHURN", severity, summary, evidence, kind="application", text=text, sysctls=sysctls)


# ---- FIN_WAIT1_STUCK ---------------------------------------------------------


def _fin_wait1_figures(facts):
    timers = _dict(_get(facts, "timers", "FIN_WAIT1"))
    return {
        "count": _n(_get(facts, "states", "FIN_WAIT1")),
        "send_bytes": _n(_get(facts, "queues", "FIN_WAIT1", "send_bytes")),
        # The kernel arms the persist timer only while the peer advertises a zero window.
        "persist": _n(timers.get("persist")),
        "zero_window": _n(timers.get("zero_window")),
        "persistent_count": _num(_get(facts, "persistent", "FIN_WAIT1", "count")),
        "persistent_bytes": _num(_get(facts, "persistent", "FIN_WAIT1", "send_bytes")),
    }


def _fin_wait1_severity(fig, th):
    """Thresholds on count and bytes (sockets that survived the interval, when there was one); below them
    the zero-window signature: info, warning when FIN_WAIT1 sockets persisted across the interval."""
    persistent = fig["persistent_count"]
    stuck = persistent if persistent is not None else fig["count"]
    held = fig["persistent_bytes"] if fig["persistent_bytes"] is not None else fig["send_bytes"]
    severity = worst_severity(
        (
            _level(stuck, th["fin_wait1_warning"], th["fin_wait1_critical"]),
            _level(held, th["fin_wait1_bytes_warning"], th["fin_wait1_bytes_critical"]),
        )
    )
    if severity is not None or fig["count"] <= 0:
        return severity
    # Unsent data towards a peer with a zero window is the FIN_WAIT1 hoard's signature, whatever the count.
    if max(fig["persist"], fig["zero_window"]) <= 0 or fig["send_bytes"] <= 0:
        return None
    if persistent is None:
        return "info"
    return "warning" if persistent > 0 else None


def _fin_wait1_fixes(facts, fig):
    """The orphans profile's values that improve on this host (tcp_max_orphans only where it exists)."""
    current = {
        "net.ipv4.tcp_orphan_retries": _effective_orphan_retries(facts),
        "net.ipv4.tcp_max_orphans": _num(_sysctl(facts, "net.ipv4.tcp_max_orphans")),
    }
    return _catalog_fixes("FIN_WAIT1_STUCK", current)


def _fin_wait1_stuck(facts, th):
    fig = _fin_wait1_figures(facts)
    severity = _fin_wait1_severity(fig, th)
    if severity is None or fig["count"] <= 0:
        return None
    timers = _dict(_get(facts, "timers", "FIN_WAIT1"))
    peers = _top(facts, "by_peer_endpoint", "FIN_WAIT1") or _top(facts, "by_peer", "FIN_WAIT1")
    max_orphans = _num(_sysctl(facts, "net.ipv4.tcp_max_orphans"))
    evidence = {
        "fin_wait1": fig["count"],
        "send_bytes": fig["send_bytes"],
        "recv_bytes": _n(_get(facts, "queues", "FIN_WAIT1", "recv_bytes")),
        "zero_window": fig["zero_window"],
        "persist": fig["persist"],
        "retransmit": _n(timers.get("retransmit")),
        "max_retransmits": _n(timers.get("max_retransmits")),
        "top_peers": peers,
        "tcp_orphan_retries": _num(_sysctl(facts, "net.ipv4.tcp_orphan_retries")),
        "effective_tcp_orphan_retries": _effective_orphan_retries(facts),
        "tcp_max_orphans": max_orphans,
        "below_thresholds": _level(fig["count"], th["fin_wait1_warning"], th["fin_wait1_critical"]) is None
        and _level(fig["send_bytes"], th["fin_wait1_bytes_warning"], th["fin_wait1_bytes_critical"]) is None,
    }
    if fig["persistent_count"] is not None:
        evidence["persistent"] = {"count": fig["persistent_count"], "bytes": fig["persistent_bytes"]}
    peer_text = ", ".join(f"{_endpoint_label(p)} ({int(p['count'])})" for p in peers)
    summary = (
        f"{int(fig['count'])} FIN_WAIT1 sockets hold {_human_bytes(fig['send_bytes'])} unsent; "
        f"{int(fig['zero_window'])} see a zero window, {int(fig['persist'])} on the persist (zero-window probe) timer"
        + (f"; top peers {peer_text}" if peer_text else "")
    )
    if fig["persistent_count"] is not None:
        summary += f"; {int(fig['persistent_count'])} still there after the interval"
    sysctls = _fin_wait1_fixes(facts, fig)
    cap_text = " tcp_max_orphans is host-wide: set it in the initial network namespace." if max_orphans is None else ""
    text = (
        "These sockets were closed by the application with data still unsent; peers that advertise a zero "
        "window keep them alive on the persist timer, which backs off to 120 s and probes for as long as the "
        "peer answers. Even a few of them are the start of the FIN_WAIT1 hoard. Cap orphans with "
        "net.ipv4.tcp_max_orphans and lower net.ipv4.tcp_orphan_retries "
        f"(0, the default, means {ORPHAN_RETRIES_ZERO_MEANS}; {_remediation.ORPHAN_RETRIES} gives up after a few "
        f"probes).{cap_text} tcp_fin_timeout does NOT help: it only limits FIN_WAIT2. Also find why the top peers "
        "stopped reading."
    )
    return _finding("FIN_WAIT1_STUCK", severity, summary, evidence, kind="sysctl", text=text, sysctls=sysctls)


# ---- pressure on the kernel's limits ----------------------------------------


def _orphan_pressure(facts, th):
    orphans = _dict(_get(facts, "pressure", "orphans"))
    count, limit = _num(orphans.get("count")), _num(orphans.get("limit"))
    ratio, penalized = _num(orphans.get("ratio")), _num(orphans.get("ratio_penalized_4x"))
    severity = _level(penalized, th["orphan_ratio_warning"], th["orphan_ratio_critical"])
    if ratio is not None and ratio >= 1.0:
        # Past tcp_max_orphans even without the penalty: the kernel resets orphans now.
        severity = "critical"
    if severity is None:
        return None
    counter_level, counter_evidence, counter_note = _counter_level(
        facts, ("TCPAbortOnMemory",), th, growth_level="warning"
    )
    evidence = {
        "orphans": count,
        "tcp_max_orphans": limit,
        "ratio": ratio,
        "ratio_penalized_4x": penalized,
        "counters": counter_evidence,
        "scope": "host",
    }
    summary = (
        f"{_fmt(count)} orphaned sockets against tcp_max_orphans {_fmt(limit)}: ratio {_fmt_ratio(ratio)}, "
        f"{_fmt_ratio(penalized)} with the kernel's 4x penalty"
    )
    if counter_level is not None:
        summary += f"; TCPAbortOnMemory {counter_note}"
    text = (
        "The kernel kills an orphan (a socket closed by its application but not finished) when orphans << shift "
        "exceed tcp_max_orphans: shift is 0 at close, +1 for a socket idle over 240 s, +1 more after an ICMP error, "
        "so idle ICMP-hit orphans count 4x. Past the limit it resets them and logs 'TCP: too many orphaned "
        "sockets'. Find what creates orphans (FIN_WAIT1 with unsent data, FIN_WAIT2, LAST_ACK, CLOSING) and lower "
        "tcp_orphan_retries; raise tcp_max_orphans only if memory allows (each orphan can hold up to its "
        "send buffer)."
    )
    sysctls = _catalog_fixes("ORPHAN_PRESSURE", {"net.ipv4.tcp_orphan_retries": _effective_orphan_retries(facts)})
    return _finding("ORPHAN_PRESSURE", severity, summary, evidence, kind="capacity", text=text, sysctls=sysctls)


def _tcp_memory_pressure(facts, th):
    memory = _dict(_get(facts, "pressure", "memory"))
    pages, pressure, high = _num(memory.get("pages")), _num(memory.get("pressure")), _num(memory.get("high"))
    ratio = _num(memory.get("ratio_to_high"))
    ratio_level = _level(ratio, th["memory_ratio_warning"], th["memory_ratio_critical"])
    if pages is not None and pressure and pages >= pressure:
        # Over tcp_mem[1] the kernel is in memory pressure mode right now.
        ratio_level = worst_severity((ratio_level, "warning"))
    pressure_level, pressure_evidence, pressure_note = _counter_level(facts, ("TCPMemoryPressures",), th)
    abort_level, abort_evidence, abort_note = _counter_level(
        facts, ("TCPAbortOnMemory",), th, growth_level="critical" if _have_rates(facts) else "warning"
    )
    severity = worst_severity((ratio_level, pressure_level, abort_level))
    if severity is None:
        return None
    evidence = {
        "pages": pages,
        "bytes": _num(_get(facts, "sockstat", "tcp_mem_bytes")),
        "tcp_mem": {"low": _num(memory.get("low")), "pressure": pressure, "high": high},
        "ratio_to_high": ratio,
        "counters": dict(pressure_evidence, **abort_evidence),
        "scope": "host",
    }
    parts = []
    if pages is not None:
        parts.append(f"TCP memory {int(pages)} pages of tcp_mem high {_fmt(high)} (ratio {_fmt_ratio(ratio)})")
    if pressure_level is not None:
        parts.append(f"TCPMemoryPressures {pressure_note}")
    if abort_level is not None:
        parts.append(f"TCPAbortOnMemory {abort_note}")
    text = (
        "TCP buffers use more memory than net.ipv4.tcp_mem allows: over tcp_mem[1] the kernel shrinks buffers, "
        "over tcp_mem[2] it refuses allocations and aborts connections (TCPAbortOnMemory, 'TCP: out of memory -- "
        "consider tuning tcp_mem'). Find the sockets holding memory (large Recv-Q/Send-Q: slow readers, FIN_WAIT1 "
        "orphans) first; raise tcp_mem only when the host has the memory to spare."
    )
    return _finding("TCP_MEMORY_PRESSURE", severity, "; ".join(parts), evidence, kind="capacity", text=text)


# ---- LISTEN_OVERFLOW ---------------------------------------------------------


def _listen_fixes(facts, full):
    """somaxconn (with the SYN backlog the longer queue needs) only when it caps a full listener's backlog."""
    somaxconn = _num(_sysctl(facts, "net.core.somaxconn"))
    if not somaxconn or not any(lst["backlog"] == somaxconn for lst in full):
        return {}
    fixes = _catalog_fixes("LISTEN_OVERFLOW", {"net.core.somaxconn": somaxconn})
    if fixes:
        syn_backlog = _num(_sysctl(facts, "net.ipv4.tcp_max_syn_backlog"))
        fixes.update(_catalog_fixes("LISTEN_OVERFLOW", {"net.ipv4.tcp_max_syn_backlog": syn_backlog}))
    return fixes


def _listen_overflow(facts, th):
    listeners = [lst for lst in _listeners(facts) if lst["fill"] is not None and (lst["backlog"] or 0) > 0]
    listeners.sort(key=lambda lst: -lst["fill"])
    full = [lst for lst in listeners if lst["fill"] >= th["listen_fill_warning"]]
    fill_level = _level(full[0]["fill"] if full else None, th["listen_fill_warning"], th["listen_fill_critical"])
    counter_level, counter_evidence, counter_note = _counter_level(
        facts, ("ListenOverflows", "ListenDrops"), th, "listen_drop_rate_critical"
    )
    severity = worst_severity((fill_level, counter_level))
    if severity is None:
        return None
    shown = full or listeners[:1]
    evidence = {
        "listeners": [
            {key: lst[key] for key in ("local", "accept_queue", "backlog", "fill", "owner")} for lst in shown[:5]
        ],
        "counters": counter_evidence,
        "somaxconn": _num(_sysctl(facts, "net.core.somaxconn")),
    }
    parts = [
        f"{lst['local']} accept queue {_fmt(lst['accept_queue'])}/{_fmt(lst['backlog'])} "
        f"(fill {_fmt_ratio(lst['fill'])}), owner {_owner_label(lst['owner'])}"
        for lst in full[:3]
    ]
    if counter_level is not None:
        parts.append(f"ListenOverflows/ListenDrops {counter_note}")
    owners = ", ".join(sorted({_owner_label(lst["owner"]) for lst in full[:3]})) or "the listening process"
    text = (
        f"The accept queue fills because {owners} accepts connections more slowly than they arrive; when it is "
        "full the kernel drops handshakes (ListenOverflows, ListenDrops) and clients see timeouts. Fix the slow "
        "accept loop first (blocked event loop, too few workers). Raise the listen() backlog and net.core.somaxconn "
        "only together with that fix: a longer queue alone just adds latency."
    )
    return _finding(
        "LISTEN_OVERFLOW",
        severity,
        "; ".join(parts),
        evidence,
        kind="application",
        text=text,
        sysctls=_listen_fixes(facts, full),
    )


# ---- SYN_BACKLOG_PRESSURE ----------------------------------------------------


def _busiest_syn_listener(facts):
    """The listener with the most request sockets for its backlog: where the kernel starts syncookies."""
    per_port = {}
    for state in ("NEW_SYN_RECV", "SYN_RECV"):
        for item in _top(facts, "by_local_port", state, 10):
            port = item.get("port")
            if port is not None:
                per_port[port] = per_port.get(port, 0) + item["count"]
    busiest = None
    for lst in _listeners(facts):
        port, backlog = lst["port"], lst["backlog"]
        if port is None or not backlog or port not in per_port:
            continue
        ratio = per_port[port] / backlog
        if busiest is None or ratio > busiest["ratio"]:
            busiest = {"local": lst["local"], "half_open": per_port[port], "backlog": backlog, "ratio": ratio}
            busiest["owner"] = lst["owner"]
    return busiest


def _syn_backlog_pressure(facts, th):
    half_open = _n(_get(facts, "states", "SYN_RECV")) + _n(_get(facts, "states", "NEW_SYN_RECV"))
    limit = _num(_sysctl(facts, "net.ipv4.tcp_max_syn_backlog"))
    # No collector figure for the SYN queue: half-open sockets over tcp_max_syn_backlog, and per listener.
    ratio = half_open / limit if limit else None
    busiest = _busiest_syn_listener(facts)
    worst_ratio = max(r for r in (ratio, busiest and busiest["ratio"], 0.0) if r is not None)
    ratio_level = (
        _level(worst_ratio, th["syn_backlog_ratio_warning"], th["syn_backlog_ratio_critical"]) if half_open else None
    )
    cookie_level, cookie_evidence, cookie_note = _counter_level(
        facts, ("SyncookiesSent", "TCPReqQFullDoCookies"), th, growth_level="warning"
    )
    drop_level, drop_evidence, drop_note = _counter_level(facts, ("TCPReqQFullDrop",), th, "syn_drop_rate_critical")
    severity = worst_severity((ratio_level, cookie_level, drop_level))
    if severity is None:
        return None
    syncookies = _num(_sysctl(facts, "net.ipv4.tcp_syncookies"))
    evidence = {
        "half_open": half_open,
        "tcp_max_syn_backlog": limit,
        "ratio": ratio,
        "busiest_listener": busiest,
        "tcp_syncookies": syncookies,
        "counters": dict(cookie_evidence, **drop_evidence),
    }
    parts = [f"{int(half_open)} half-open connections (SYN_RECV + NEW_SYN_RECV) of tcp_max_syn_backlog {_fmt(limit)}"]
    if busiest:
        parts.append(
            f"{busiest['local']} has {int(busiest['half_open'])} against backlog {int(busiest['backlog'])} "
            f"(owner {_owner_label(busiest['owner'])})"
        )
    if cookie_level is not None:
        parts.append(f"syncookies {cookie_note}")
    if drop_level is not None:
        parts.append(f"TCPReqQFullDrop {drop_note}")
    sysctls = _catalog_fixes(
        "SYN_BACKLOG_PRESSURE", {"net.ipv4.tcp_syncookies": syncookies, "net.ipv4.tcp_max_syn_backlog": limit}
    )
    text = (
        "Handshakes are not completing as fast as SYNs arrive: either clients (or a SYN flood) do not finish "
        "the handshake, or the listener's backlog is too small for the connection rate. When a listener's SYN "
        "queue is full the kernel answers with syncookies (tcp_syncookies=1) or drops SYNs (TCPReqQFullDrop). "
        "Check the peers for a flood; keep tcp_syncookies=1; raise tcp_max_syn_backlog and the listen() backlog "
        "(capped by somaxconn) for legitimate bursts."
    )
    return _finding(
        "SYN_BACKLOG_PRESSURE", severity, "; ".join(parts), evidence, kind="capacity", text=text, sysctls=sysctls
    )


# ---- EPHEMERAL_PORT_PRESSURE / TW_BUCKET_OVERFLOW ----------------------------


BUSIEST_TUPLE_FIELDS = {"local_address": _text, "peer_address": _text, "peer_port": _int, "count": _n}


def _ephemeral_port_pressure(facts, th):
    ports = _dict(_get(facts, "pressure", "ephemeral_ports"))
    in_use, size, ratio = _num(ports.get("in_use")), _num(ports.get("range")), _num(ports.get("ratio"))
    severity = _level(ratio, th["ephemeral_port_ratio_warning"], th["ephemeral_port_ratio_critical"])
    if severity is None:
        return None
    busiest = ports.get("busiest_tuple")
    busiest = _typed(busiest, BUSIEST_TUPLE_FIELDS) if isinstance(busiest, dict) else None
    evidence = {
        "in_use": in_use,
        "range": size,
        "ratio": ratio,
        "busiest_tuple": busiest,
        "ip_local_port_range": _port_range(facts),
        "time_wait": _n(_get(facts, "states", "TIME_WAIT")),
    }
    summary = f"{_fmt(in_use)} of {_fmt(size)} ephemeral ports in use for the busiest tuple (ratio {ratio:.2f})"
    if busiest:
        summary += f": {', '.join(f'{k} {v}' for k, v in sorted(busiest.items()) if v is not None)}"
    text = (
        "Outgoing connections to one destination share one range of local ports; when it runs out connect() "
        "fails with EADDRNOTAVAIL. Reuse connections (pools, keep-alive) first; TIME_WAIT usually fills the range, "
        "so net.ipv4.tcp_tw_reuse=1 helps outgoing connections; widening net.ipv4.ip_local_port_range or adding "
        "source/destination addresses adds capacity. Never tcp_tw_recycle."
    )
    current = {"net.ipv4.ip_local_port_range": evidence["ip_local_port_range"]}
    if evidence["time_wait"]:
        current["net.ipv4.tcp_tw_reuse"] = _num(_sysctl(facts, "net.ipv4.tcp_tw_reuse"))
    sysctls = _catalog_fixes("EPHEMERAL_PORT_PRESSURE", current)
    return _finding("EPHEMERAL_PORT_PRESSURE", severity, summary, evidence, kind="capacity", text=text, sysctls=sysctls)


def _tw_bucket_overflow(facts, th):
    tw = _dict(_get(facts, "pressure", "time_wait"))
    count, limit, ratio = _num(tw.get("count")), _num(tw.get("limit")), _num(tw.get("ratio"))
    ratio_level = _level(ratio, th["tw_bucket_ratio_warning"], th["tw_bucket_ratio_critical"])
    counter_level, counter_evidence, counter_note = _counter_level(
        facts, ("TCPTimeWaitOverflow",), th, "tw_overflow_rate_critical"
    )
    severity = worst_severity((ratio_level, counter_level))
    if severity is None:
        return None
    in_time_wait = _num(_get(facts, "states", "TIME_WAIT"))
    from_sockstat = _num(_get(facts, "sockstat", "tcp_tw")) is not None
    evidence = {
        "time_wait": count,
        "time_wait_state": in_time_wait,
        "counted_by": "sockstat tw" if from_sockstat else "TIME_WAIT sockets",
        "tcp_max_tw_buckets": limit,
        "ratio": ratio,
        "counters": counter_evidence,
        "scope": "namespace",
    }
    if from_sockstat:
        # sockstat tw counts every timewait minisocket, orphaned FIN_WAIT2 ones included (tcp_time_wait()
        # with TCP_FIN_WAIT2): the socket dump lists those as FIN_WAIT2, so the two counts differ.
        what = f"{_fmt(count)} timewait sockets (TIME_WAIT and orphaned FIN_WAIT2; {_fmt(in_time_wait)} in TIME_WAIT)"
    else:
        what = f"{_fmt(count)} TIME_WAIT sockets"
    parts = [f"{what} of tcp_max_tw_buckets {_fmt(limit)} (ratio {_fmt_ratio(ratio)})"]
    if counter_level is not None:
        parts.append(f"TCPTimeWaitOverflow {counter_note}")
    text = (
        "When timewait sockets (TIME_WAIT, and orphaned FIN_WAIT2 kept the same way) reach "
        "net.ipv4.tcp_max_tw_buckets the kernel closes new ones without TIME_WAIT ('time wait bucket table "
        "overflow'), so late segments of old connections can corrupt new ones. Reduce the churn (see "
        "TIME_WAIT_CHURN: connection reuse, keep-alive); raise tcp_max_tw_buckets if memory allows (each timewait "
        "socket is a few hundred bytes)."
    )
    sysctls = _catalog_fixes("TW_BUCKET_OVERFLOW", {"net.ipv4.tcp_max_tw_buckets": limit})
    return _finding(
        "TW_BUCKET_OVERFLOW", severity, "; ".join(parts), evidence, kind="capacity", text=text, sysctls=sysctls
    )


# ---- settings that are traps -------------------------------------------------


def _orphan_retries_default(facts, th, fin_wait1_finding):
    if _num(_sysctl(facts, "net.ipv4.tcp_orphan_retries")) != 0:
        return None
    fin_wait1 = _n(_get(facts, "states", "FIN_WAIT1"))
    # tcp_orphan_retries is per namespace: count this namespace's sockets in the states it governs,
    # not sockstat's orphan figure, which is host-wide.
    closing = fin_wait1 + _n(_get(facts, "states", "CLOSING")) + _n(_get(facts, "states", "LAST_ACK"))
    if closing <= 0:
        return None
    fin_wait1_severity = fin_wait1_finding["severity"] if fin_wait1_finding else None
    severity = "warning" if worst_severity((fin_wait1_severity, "info")) != "info" else "info"
    effective = _effective_orphan_retries(facts)
    evidence = {
        "tcp_orphan_retries": 0,
        "effective": effective if effective is not None else ORPHAN_RETRIES_ZERO_MEANS,
        "fin_wait1": fin_wait1,
        "fin_wait1_closing_last_ack": closing,
        "orphans_host": _num(_get(facts, "pressure", "orphans", "count")),
        "fin_wait1_stuck": fin_wait1_finding is not None,
    }
    summary = (
        f"net.ipv4.tcp_orphan_retries is 0, which the kernel treats as {ORPHAN_RETRIES_ZERO_MEANS}, with "
        f"{int(closing)} sockets in FIN_WAIT1/CLOSING/LAST_ACK ({int(fin_wait1)} FIN_WAIT1)"
    )
    sysctls = _catalog_fixes("ORPHAN_RETRIES_DEFAULT", {"net.ipv4.tcp_orphan_retries": evidence["effective"]})
    text = (
        f"tcp_orphan_retries=0 does not mean 'no retries': while the peer looks alive the kernel uses "
        f"{ORPHAN_RETRIES_ZERO_MEANS}, so an orphaned socket keeps retransmitting (about 100 s at the minimum RTO, "
        "far longer with real RTOs) and holds its unsent data meanwhile. Set an explicit small value "
        f"(net.ipv4.tcp_orphan_retries={_remediation.ORPHAN_RETRIES}) on hosts that close many connections to slow "
        "or vanished clients."
    )
    return _finding("ORPHAN_RETRIES_DEFAULT", severity, summary, evidence, kind="sysctl", text=text, sysctls=sysctls)


def _tw_recycle_present(facts, th):
    value = _num(_sysctl(facts, "net.ipv4.tcp_tw_recycle"))
    if value is None or value == 0:
        return None
    evidence = {"net.ipv4.tcp_tw_recycle": value, "kernel": _text(facts.get("kernel"))}
    summary = f"net.ipv4.tcp_tw_recycle is {_fmt(value)}: clients behind NAT get their SYNs dropped"
    text = (
        "tcp_tw_recycle drops SYNs whose TCP timestamps are older than the last seen from the same address; "
        "clients behind one NAT have unrelated timestamps, so their connections fail at random. It was removed in "
        "Linux 4.12. Set it to 0 and remove it from sysctl files; use tcp_tw_reuse (outgoing) and connection "
        "reuse for TIME_WAIT instead."
    )
    sysctls = _remediation.MANUAL_SYSCTLS["TW_RECYCLE_PRESENT"]
    return _finding("TW_RECYCLE_PRESENT", "critical", summary, evidence, kind="sysctl", text=text, sysctls=sysctls)


# ---- CONNTRACK_TABLE_PRESSURE ------------------------------------------------

# The conntrack TCP timeouts that decide how long entries of the states filling the table stay.
CONNTRACK_TIMEOUTS = ("time_wait", "close_wait", "established")


def _conntrack_table_pressure(facts, th):
    conntrack = _dict(facts.get("conntrack"))
    if conntrack.get("available") is not True:
        return None
    count, limit, ratio = _num(conntrack.get("count")), _num(conntrack.get("max")), _num(conntrack.get("ratio"))
    severity = _level(ratio, th["conntrack_ratio_warning"], th["conntrack_ratio_critical"])
    if severity is None:
        return None
    states = [
        {"state": name, "count": _num(value)}
        for name, value in _dict(conntrack.get("states")).items()
        if isinstance(name, str) and (_num(value) or 0) > 0
    ]
    states.sort(key=lambda entry: (-entry["count"], entry["state"]))
    timeouts = _dict(conntrack.get("timeouts"))
    evidence = {
        "count": count,
        "nf_conntrack_max": limit,
        "ratio": ratio,
        "states": states[:5],
        "timeouts": {f"nf_conntrack_tcp_timeout_{name}": _num(timeouts.get(name)) for name in CONNTRACK_TIMEOUTS},
        "scope": "namespace",
    }
    filling = ", ".join(f"{entry['state']} {int(entry['count'])}" for entry in states[:3]) or "states unknown"
    summary = (
        f"nf_conntrack table {_fmt(count)} of nf_conntrack_max {_fmt(limit)} entries (ratio {_fmt_ratio(ratio)}), "
        f"mostly {filling}; when full the kernel logs 'nf_conntrack: table full, dropping packet' and drops new "
        "connections"
    )
    text = (
        "Connection tracking keeps an entry per flow until its state's timeout ends, also after the sockets are "
        "gone: TIME_WAIT entries stay nf_conntrack_tcp_timeout_time_wait, CLOSE_WAIT ones "
        "nf_conntrack_tcp_timeout_close_wait, ESTABLISHED ones nf_conntrack_tcp_timeout_established (5 days by "
        "default, so idle flows that never close fill the table). Reduce the churn or the idle connections of the "
        "state that fills the table, shorten that state's timeout, exempt traffic that needs no tracking (notrack), "
        "or raise net.netfilter.nf_conntrack_max where memory allows."
    )
    return _finding("CONNTRACK_TABLE_PRESSURE", severity, summary, evidence, kind="capacity", text=text)


_CHECKS = (
    _close_wait_leak,
    _time_wait_churn,
    _fin_wait1_stuck,
    _orphan_pressure,
    _tcp_memory_pressure,
    _listen_overflow,
    _syn_backlog_pressure,
    _ephemeral_port_pressure,
    _tw_bucket_overflow,
    _tw_recycle_present,
    _conntrack_table_pressure,
)


def diagnose(facts, thresholds=None):
    """Findings for one tcp_state facts dict, worst first.

    thresholds: a dict already returned by validate_thresholds, or user overrides
    (validated here), or None for the defaults.
    """
    th = validate_thresholds(thresholds)
    if not isinstance(facts, dict):
        return []
    findings = []
    by_code = {}
    for check in _CHECKS:
        finding = check(facts, th)
        if finding is not None:
            findings.append(finding)
            by_code[finding["code"]] = finding
    retries = _orphan_retries_default(facts, th, by_code.get("FIN_WAIT1_STUCK"))
    if retries is not None:
        findings.append(retries)
    findings.sort(key=lambda f: (-severity_rank(f["severity"]), CODES.index(f["code"])))
    return findings
