# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Findings: pure functions of the tcp_state facts dict (schema 1 of DESIGN.md).

Nothing here touches the kernel: every number comes from the facts, so the
diagnoses are unit-testable from recorded fixtures. Any key of the facts may
be missing or None (sysctls null inside a non-initial namespace, owners absent
when the scan was off, rates only with an interval): a finding that lacks its
inputs is skipped, never a crash.
"""

from __future__ import annotations

import math

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
)

# tcp_orphan_retries suggested when orphans pile up: 3 retries is ~3 s of
# retransmission at the minimum RTO (the kernel's 0 means 8, ~100 s).
SUGGESTED_ORPHAN_RETRIES = 3

_KIND_HELP = {
    "count": "an integer >= 0",
    "bytes": "an integer >= 0 (bytes)",
    "ratio": "a number between 0 and 1",
    "rate": "a number >= 0 (per second)",
}


def severity_rank(name):
    """0 for info, 1 for warning, 2 for critical; ValueError for anything else."""
    try:
        return SEVERITIES.index(name)
    except ValueError:
        raise ValueError(f"unknown severity {name!r}; valid severities: {', '.join(SEVERITIES)}") from None


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


# ---- tolerant readers of the facts dict ------------------------------------


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


def _ratio_or_derived(ratio, part, whole):
    """A pressure block's ratio, or part / whole when the block left it out (older or partial facts)."""
    ratio = _num(ratio)
    if ratio is None and part is not None and whole:
        return part / whole
    return ratio


def _n(value):
    """_num with 0 for unknown: for counts where a missing key means none."""
    value = _num(value)
    return 0 if value is None else value


def _list(value):
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _dict(value):
    return value if isinstance(value, dict) else {}


def _sysctl(facts, name):
    return _get(facts, "sysctls", name)


def _port_range(facts):
    """(low, high) of net.ipv4.ip_local_port_range, or None."""
    value = _sysctl(facts, "net.ipv4.ip_local_port_range")
    if isinstance(value, str):
        value = value.split()
    if isinstance(value, (list, tuple)) and len(value) == 2:
        low, high = _num(value[0]), _num(value[1])
        if low is not None and high is not None:
            return int(low), int(high)
    return None


def _have_rates(facts):
    return bool(_dict(facts.get("rates"))) and (_num(facts.get("interval")) or 1) > 0


def _worse(*levels):
    """The worst of several severities (None = no finding)."""
    worst = None
    for level in levels:
        if level is not None and (worst is None or severity_rank(level) > severity_rank(worst)):
            worst = level
    return worst


def _level(value, warning, critical):
    if value is None:
        return None
    if value >= critical:
        return "critical"
    if value >= warning:
        return "warning"
    return None


def _counter_level(facts, names, th, rate_critical_key=None, growth_level="warning"):
    """Severity from kernel counters, preferring growth rates over since-boot totals.

    With rates (interval > 0): any growth is `growth_level`, growth at or above the
    rate_critical threshold is critical, no growth is no finding. Without rates a
    since-boot total gives at most a warning (counter_events_warning), below it info.
    Several names are combined with max(), not a sum: the kernel bumps ListenDrops with every
    ListenOverflows, and SyncookiesSent with every TCPReqQFullDoCookies.
    Returns (severity or None, evidence dict, note).
    """
    counters = _dict(facts.get("counters"))
    rates = _dict(facts.get("rates"))
    evidence = {}
    if _have_rates(facts) and any(_num(rates.get(name)) is not None for name in names):
        total_rate = 0.0
        for name in names:
            rate = _num(rates.get(name))
            if rate is not None:
                evidence[f"{name}_per_second"] = rate
                total_rate = max(total_rate, rate)
        if total_rate <= 0:
            return None, evidence, "not growing during the sampling interval"
        level = growth_level
        if rate_critical_key is not None and total_rate >= th[rate_critical_key] > 0:
            level = "critical"
        return level, evidence, f"growing at {total_rate:.3g}/s during the sampling interval"
    total = 0
    for name in names:
        value = _num(counters.get(name))
        if value is not None:
            evidence[name] = value
            total = max(total, value)
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


def _finding(code, severity, summary, evidence, *, kind, text, sysctls=None):
    return {
        "code": code,
        "severity": severity,
        "summary": summary,
        "evidence": evidence,
        "remediation": {"kind": kind, "text": text, "sysctls": dict(sysctls or {})},
    }


def _owner_label(owner):
    owner = _dict(owner)
    pid, comm = owner.get("pid"), owner.get("comm")
    if pid is None and comm is None:
        return "an unknown process"
    return f"pid {pid} ({comm})"


def _top(facts, group, state, limit=3):
    return _list(_get(facts, "top", group, state))[:limit]


# ---- the findings ----------------------------------------------------------


def _close_wait_leak(facts, th):
    total = _n(_get(facts, "states", "CLOSE_WAIT"))
    persistent = _num(_get(facts, "persistent", "CLOSE_WAIT", "count"))
    # With an interval, only sockets still in CLOSE_WAIT in both samples are leaked.
    leaked = persistent if persistent is not None else total
    severity = _level(leaked, th["close_wait_warning"], th["close_wait_critical"])
    if severity is None:
        return None
    owners_known = isinstance(_get(facts, "owners", "CLOSE_WAIT"), list)
    owners = sorted(
        _list(_get(facts, "owners", "CLOSE_WAIT")),
        key=lambda o: -_n(o.get("sockets")),
    )
    named = [o for o in owners if _n(o.get("sockets")) >= th["close_wait_min_per_owner"]]
    ports = [p.get("port") for p in _top(facts, "by_local_port", "CLOSE_WAIT", 5)]
    named_pids = {o.get("pid") for o in named}
    owner_listeners = [
        lst.get("local")
        for lst in _list(facts.get("listeners"))
        if _get(lst, "owner", "pid") in named_pids and lst.get("local") is not None
    ]
    evidence = {
        "close_wait": total,
        "owners": [
            {
                "pid": o.get("pid"),
                "comm": o.get("comm"),
                "cmdline": o.get("cmdline"),
                "user": o.get("user"),
                "container": o.get("container"),
                "sockets": o.get("sockets"),
            }
            for o in named
        ],
        "local_ports": ports,
        "owner_listeners": owner_listeners,
        "threshold": th["close_wait_critical"] if severity == "critical" else th["close_wait_warning"],
    }
    if persistent is not None:
        evidence["persistent"] = persistent
    if named:
        holders = ", ".join(f"pid {o.get('pid')} ({o.get('comm')}): {_n(o.get('sockets'))}" for o in named[:5])
        who = f"held by {holders}"
    elif owners_known and owners:
        who = f"spread over {len(owners)} processes, none holding {th['close_wait_min_per_owner']} or more"
    else:
        who = "owner unknown (owners scan off or not permitted: run as root with owners including CLOSE_WAIT)"
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


def _time_wait_churn(facts, th):
    count = _n(_get(facts, "states", "TIME_WAIT"))
    severity = _level(count, th["time_wait_warning"], th["time_wait_critical"])
    if severity is None:
        return None
    top_port = (_top(facts, "by_local_port", "TIME_WAIT", 1) or [{}])[0]
    top_peer = (_top(facts, "by_peer", "TIME_WAIT", 1) or [{}])[0]
    port, port_count = top_port.get("port"), _n(top_port.get("count"))
    port_range = _port_range(facts)
    # A service port holding most TIME_WAIT means this host closes incoming connections first
    # (tcp_tw_reuse cannot help); spread over ephemeral ports means outgoing connections.
    incoming = (
        port is not None
        and count > 0
        and port_count * 2 >= count
        and not (port_range and port_range[0] <= _n(port) <= port_range[1])
    )
    evidence = {
        "time_wait": count,
        "top_local_port": top_port or None,
        "top_peer": top_peer or None,
        "direction": "incoming" if incoming else "outgoing",
        "tcp_tw_reuse": _sysctl(facts, "net.ipv4.tcp_tw_reuse"),
        "threshold": th["time_wait_critical"] if severity == "critical" else th["time_wait_warning"],
    }
    tw_rate = _num(_get(facts, "rates", "TW"))
    if tw_rate is not None:
        evidence["TW_per_second"] = tw_rate
    port_text = f"local port {port} ({int(port_count)})" if port is not None else "local port unknown"
    peer_text = (
        f"peer {top_peer.get('address')} ({int(_n(top_peer.get('count')))}, {top_peer.get('scope')})"
        if top_peer.get("address") is not None
        else "peer unknown"
    )
    summary = f"{int(count)} TIME_WAIT sockets; busiest {port_text}, busiest {peer_text}"
    sysctls = {}
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
        reuse = _num(_sysctl(facts, "net.ipv4.tcp_tw_reuse"))
        # 2 (the kernel default) already reuses TIME_WAIT ports towards loopback peers.
        if reuse is not None and reuse != 1 and not (reuse == 2 and top_peer.get("scope") == "loopback"):
            sysctls["net.ipv4.tcp_tw_reuse"] = 1
    text += "Never enable tcp_tw_recycle: it breaks clients behind NAT and was removed in Linux 4.12."
    return _finding("TIME_WAIT_CHURN", severity, summary, evidence, kind="application", text=text, sysctls=sysctls)


def _fin_wait1_stuck(facts, th):
    count = _n(_get(facts, "states", "FIN_WAIT1"))
    send_bytes = _n(_get(facts, "queues", "FIN_WAIT1", "send_bytes"))
    persistent_count = _num(_get(facts, "persistent", "FIN_WAIT1", "count"))
    persistent_bytes = _num(_get(facts, "persistent", "FIN_WAIT1", "send_bytes"))
    # With an interval, only sockets in FIN_WAIT1 in both samples are stuck.
    stuck = persistent_count if persistent_count is not None else count
    held = persistent_bytes if persistent_bytes is not None else send_bytes
    severity = _worse(
        _level(stuck, th["fin_wait1_warning"], th["fin_wait1_critical"]),
        _level(held, th["fin_wait1_bytes_warning"], th["fin_wait1_bytes_critical"]),
    )
    if severity is None or count <= 0:
        return None
    timers = _dict(_get(facts, "timers", "FIN_WAIT1"))
    zero_window = _n(timers.get("zero_window"))
    persist = _n(timers.get("persist"))
    retries = _num(_sysctl(facts, "net.ipv4.tcp_orphan_retries"))
    max_orphans = _num(_sysctl(facts, "net.ipv4.tcp_max_orphans"))
    evidence = {
        "fin_wait1": count,
        "send_bytes": send_bytes,
        "recv_bytes": _n(_get(facts, "queues", "FIN_WAIT1", "recv_bytes")),
        "zero_window": zero_window,
        "persist": persist,
        "retransmit": _n(timers.get("retransmit")),
        "max_retransmits": _n(timers.get("max_retransmits")),
        "top_peers": _top(facts, "by_peer", "FIN_WAIT1"),
        "tcp_orphan_retries": retries,
        "effective_tcp_orphan_retries": _get(facts, "effective", "tcp_orphan_retries"),
        "tcp_max_orphans": max_orphans,
    }
    if persistent_count is not None:
        evidence["persistent"] = {"count": persistent_count, "bytes": persistent_bytes}
    peers = evidence["top_peers"]
    peer_text = f"; top peer {peers[0].get('address')} ({int(_n(peers[0].get('count')))})" if peers else ""
    summary = (
        f"{int(count)} FIN_WAIT1 sockets hold {_human_bytes(send_bytes)} unsent; {int(zero_window)} see a zero "
        f"window, {int(persist)} on the persist (zero-window probe) timer{peer_text}"
    )
    sysctls = {}
    if retries is None or retries == 0 or retries > SUGGESTED_ORPHAN_RETRIES:
        sysctls["net.ipv4.tcp_orphan_retries"] = SUGGESTED_ORPHAN_RETRIES
    cap_text = ""
    if max_orphans is not None and count > 0 and send_bytes > 0:
        # Cap orphans so that orphans x average bytes held fits the critical memory budget.
        per_socket = max(send_bytes / count, 1)
        cap = max(1024, int(th["fin_wait1_bytes_critical"] // per_socket))
        if cap < max_orphans:
            sysctls["net.ipv4.tcp_max_orphans"] = cap
            cap_text = (
                f" At {_human_bytes(per_socket)} per socket, tcp_max_orphans={cap} keeps them under "
                f"{_human_bytes(th['fin_wait1_bytes_critical'])}."
            )
    elif max_orphans is None:
        cap_text = " tcp_max_orphans is host-wide: set it in the initial network namespace."
    text = (
        "These sockets were closed by the application with data still unsent; peers that advertise a zero "
        "window keep them alive on the persist timer, which backs off to 120 s and probes for as long as the "
        "peer answers. Cap orphans with net.ipv4.tcp_max_orphans and lower net.ipv4.tcp_orphan_retries "
        f"(0, the default, means 8; {SUGGESTED_ORPHAN_RETRIES} gives up after seconds).{cap_text} "
        "tcp_fin_timeout does NOT help: it only limits FIN_WAIT2. Also find why the top peers stopped reading."
    )
    return _finding("FIN_WAIT1_STUCK", severity, summary, evidence, kind="sysctl", text=text, sysctls=sysctls)


def _human_bytes(value):
    value = float(_n(value))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"  # pragma: no cover


def _orphan_pressure(facts, th):
    orphans = _dict(_get(facts, "pressure", "orphans"))
    count, limit = _num(orphans.get("count")), _num(orphans.get("limit"))
    ratio = _ratio_or_derived(orphans.get("ratio"), count, limit)
    penalized = _num(orphans.get("ratio_penalized_4x"))
    if penalized is None and ratio is not None:
        penalized = ratio * 4
    if penalized is None:
        return None
    severity = _level(penalized, th["orphan_ratio_warning"], th["orphan_ratio_critical"])
    if ratio is not None and ratio >= 1.0:
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
    return _finding("ORPHAN_PRESSURE", severity, summary, evidence, kind="capacity", text=text)


def _fmt(value):
    return "unknown" if value is None else str(int(value))


def _fmt_ratio(value):
    return "unknown" if value is None else f"{value:.2f}"


def _tcp_memory_pressure(facts, th):
    memory = _dict(_get(facts, "pressure", "memory"))
    pages, pressure, high = _num(memory.get("pages")), _num(memory.get("pressure")), _num(memory.get("high"))
    ratio = _ratio_or_derived(memory.get("ratio_to_high"), pages, high)
    ratio_level = _level(ratio, th["memory_ratio_warning"], th["memory_ratio_critical"])
    if pages is not None and pressure and pages >= pressure:
        # Over tcp_mem[1] the kernel is in memory pressure mode right now.
        ratio_level = _worse(ratio_level, "warning")
    pressure_level, pressure_evidence, pressure_note = _counter_level(facts, ("TCPMemoryPressures",), th)
    abort_level, abort_evidence, abort_note = _counter_level(
        facts, ("TCPAbortOnMemory",), th, growth_level="critical" if _have_rates(facts) else "warning"
    )
    severity = _worse(ratio_level, pressure_level, abort_level)
    if severity is None:
        return None
    evidence = {
        "pages": pages,
        "bytes": _get(facts, "sockstat", "tcp_mem_bytes"),
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


def _listen_overflow(facts, th):
    listeners = [
        lst for lst in _list(facts.get("listeners")) if _num(lst.get("fill")) is not None and _n(lst.get("backlog")) > 0
    ]
    listeners.sort(key=lambda lst: -_num(lst.get("fill")))
    full = [lst for lst in listeners if _num(lst.get("fill")) >= th["listen_fill_warning"]]
    fill_level = _level(
        _num(full[0].get("fill")) if full else None, th["listen_fill_warning"], th["listen_fill_critical"]
    )
    counter_level, counter_evidence, counter_note = _counter_level(
        facts, ("ListenOverflows", "ListenDrops"), th, "listen_drop_rate_critical"
    )
    severity = _worse(fill_level, counter_level)
    if severity is None:
        return None
    shown = full or listeners[:1]
    evidence = {
        "listeners": [
            {
                "local": lst.get("local"),
                "accept_queue": lst.get("accept_queue"),
                "backlog": lst.get("backlog"),
                "fill": lst.get("fill"),
                "owner": lst.get("owner"),
            }
            for lst in shown[:5]
        ],
        "counters": counter_evidence,
        "somaxconn": _sysctl(facts, "net.core.somaxconn"),
    }
    parts = []
    for lst in full[:3]:
        parts.append(
            f"{lst.get('local')} accept queue {_fmt(_num(lst.get('accept_queue')))}/{_fmt(_num(lst.get('backlog')))} "
            f"(fill {_fmt_ratio(_num(lst.get('fill')))}), owner {_owner_label(lst.get('owner'))}"
        )
    if counter_level is not None:
        parts.append(f"ListenOverflows/ListenDrops {counter_note}")
    sysctls = {}
    somaxconn = _num(_sysctl(facts, "net.core.somaxconn"))
    if somaxconn and any(_num(lst.get("backlog")) == somaxconn for lst in full) and somaxconn < 65535:
        # The application's listen() backlog is capped by somaxconn.
        sysctls["net.core.somaxconn"] = int(min(somaxconn * 2, 65535))
    owners = ", ".join(sorted({_owner_label(lst.get("owner")) for lst in full[:3]})) or "the listening process"
    text = (
        f"The accept queue fills because {owners} accepts connections more slowly than they arrive; when it is "
        "full the kernel drops handshakes (ListenOverflows, ListenDrops) and clients see timeouts. Fix the slow "
        "accept loop first (blocked event loop, too few workers). Raise the listen() backlog and net.core.somaxconn "
        "only together with that fix: a longer queue alone just adds latency."
    )
    return _finding(
        "LISTEN_OVERFLOW", severity, "; ".join(parts), evidence, kind="application", text=text, sysctls=sysctls
    )


def _syn_backlog_pressure(facts, th):
    half_open = _n(_get(facts, "states", "SYN_RECV")) + _n(_get(facts, "states", "NEW_SYN_RECV"))
    limit = _num(_sysctl(facts, "net.ipv4.tcp_max_syn_backlog"))
    ratio = half_open / limit if limit else None
    # Per listener: request sockets on one local port against that listener's backlog,
    # the limit at which the kernel starts syncookies (or drops).
    per_port = {}
    for state in ("NEW_SYN_RECV", "SYN_RECV"):
        for item in _top(facts, "by_local_port", state, 10):
            port = item.get("port")
            if port is not None:
                per_port[port] = per_port.get(port, 0) + _n(item.get("count"))
    busiest = None
    for lst in _list(facts.get("listeners")):
        local, backlog = lst.get("local"), _num(lst.get("backlog"))
        port = _port_of(local)
        if port is None or not backlog or port not in per_port:
            continue
        port_ratio = per_port[port] / backlog
        if busiest is None or port_ratio > busiest["ratio"]:
            busiest = {
                "local": local,
                "half_open": per_port[port],
                "backlog": backlog,
                "ratio": port_ratio,
                "owner": lst.get("owner"),
            }
    worst_ratio = max(r for r in (ratio, busiest and busiest["ratio"], 0.0) if r is not None)
    ratio_level = (
        _level(worst_ratio, th["syn_backlog_ratio_warning"], th["syn_backlog_ratio_critical"]) if half_open else None
    )
    cookie_level, cookie_evidence, cookie_note = _counter_level(
        facts, ("SyncookiesSent", "TCPReqQFullDoCookies"), th, growth_level="warning"
    )
    drop_level, drop_evidence, drop_note = _counter_level(facts, ("TCPReqQFullDrop",), th, "syn_drop_rate_critical")
    severity = _worse(ratio_level, cookie_level, drop_level)
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
    sysctls = {}
    if syncookies == 0:
        sysctls["net.ipv4.tcp_syncookies"] = 1
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


def _port_of(local):
    if not isinstance(local, str) or ":" not in local:
        return None
    port = _num(local.rsplit(":", 1)[1])
    return int(port) if port is not None else None


def _ephemeral_port_pressure(facts, th):
    ports = _dict(_get(facts, "pressure", "ephemeral_ports"))
    in_use, size = _num(ports.get("in_use")), _num(ports.get("range"))
    ratio = _ratio_or_derived(ports.get("ratio"), in_use, size)
    severity = _level(ratio, th["ephemeral_port_ratio_warning"], th["ephemeral_port_ratio_critical"])
    if severity is None:
        return None
    busiest = ports.get("busiest_tuple")
    evidence = {
        "in_use": in_use,
        "range": size,
        "ratio": ratio,
        "busiest_tuple": busiest,
        "ip_local_port_range": _sysctl(facts, "net.ipv4.ip_local_port_range"),
        "time_wait": _n(_get(facts, "states", "TIME_WAIT")),
    }
    summary = f"{_fmt(in_use)} of {_fmt(size)} ephemeral ports in use for the busiest tuple (ratio {ratio:.2f})"
    if isinstance(busiest, dict) and busiest:
        summary += f": {', '.join(f'{k} {v}' for k, v in sorted(busiest.items()))}"
    text = (
        "Outgoing connections to one destination share one range of local ports; when it runs out connect() "
        "fails with EADDRNOTAVAIL. Reuse connections (pools, keep-alive) first; TIME_WAIT usually fills the range, "
        "so net.ipv4.tcp_tw_reuse=1 helps outgoing connections; widening net.ipv4.ip_local_port_range or adding "
        "source/destination addresses adds capacity. Never tcp_tw_recycle."
    )
    sysctls = {}
    if _num(_sysctl(facts, "net.ipv4.tcp_tw_reuse")) not in (1, None) and evidence["time_wait"]:
        sysctls["net.ipv4.tcp_tw_reuse"] = 1
    return _finding("EPHEMERAL_PORT_PRESSURE", severity, summary, evidence, kind="capacity", text=text, sysctls=sysctls)


def _tw_bucket_overflow(facts, th):
    tw = _dict(_get(facts, "pressure", "time_wait"))
    count, limit = _num(tw.get("count")), _num(tw.get("limit"))
    ratio = _ratio_or_derived(tw.get("ratio"), count, limit)
    ratio_level = _level(ratio, th["tw_bucket_ratio_warning"], th["tw_bucket_ratio_critical"])
    counter_level, counter_evidence, counter_note = _counter_level(
        facts, ("TCPTimeWaitOverflow",), th, "tw_overflow_rate_critical"
    )
    severity = _worse(ratio_level, counter_level)
    if severity is None:
        return None
    evidence = {
        "time_wait": count,
        "tcp_max_tw_buckets": limit,
        "ratio": ratio,
        "counters": counter_evidence,
        "scope": "namespace",
    }
    parts = [f"{_fmt(count)} TIME_WAIT sockets of tcp_max_tw_buckets {_fmt(limit)} (ratio {_fmt_ratio(ratio)})"]
    if counter_level is not None:
        parts.append(f"TCPTimeWaitOverflow {counter_note}")
    text = (
        "When TIME_WAIT sockets reach net.ipv4.tcp_max_tw_buckets the kernel closes new ones without TIME_WAIT "
        "('time wait bucket table overflow'), so late segments of old connections can corrupt new ones. Reduce the "
        "churn (see TIME_WAIT_CHURN: connection reuse, keep-alive); raise tcp_max_tw_buckets if memory allows "
        "(each TIME_WAIT socket is a few hundred bytes)."
    )
    sysctls = {}
    if limit and ratio is not None and ratio >= th["tw_bucket_ratio_warning"]:
        sysctls["net.ipv4.tcp_max_tw_buckets"] = int(limit * 2)
    return _finding(
        "TW_BUCKET_OVERFLOW", severity, "; ".join(parts), evidence, kind="capacity", text=text, sysctls=sysctls
    )


def _orphan_retries_default(facts, th, fin_wait1_finding):
    retries = _num(_sysctl(facts, "net.ipv4.tcp_orphan_retries"))
    if retries is None or retries != 0:
        return None
    fin_wait1 = _n(_get(facts, "states", "FIN_WAIT1"))
    # tcp_orphan_retries is per namespace: count this namespace's sockets in the states it governs,
    # not sockstat's orphan figure, which is host-wide.
    closing = fin_wait1 + _n(_get(facts, "states", "CLOSING")) + _n(_get(facts, "states", "LAST_ACK"))
    orphans = _num(_get(facts, "pressure", "orphans", "count"))
    if closing <= 0:
        return None
    severity = "warning" if fin_wait1_finding is not None else "info"
    effective = _get(facts, "effective", "tcp_orphan_retries")
    evidence = {
        "tcp_orphan_retries": 0,
        "effective": effective if effective is not None else 8,
        "fin_wait1": fin_wait1,
        "fin_wait1_closing_last_ack": closing,
        "orphans_host": orphans,
        "fin_wait1_stuck": fin_wait1_finding is not None,
    }
    summary = (
        f"net.ipv4.tcp_orphan_retries is 0, which the kernel treats as 8, with {int(closing)} sockets in "
        f"FIN_WAIT1/CLOSING/LAST_ACK ({int(fin_wait1)} FIN_WAIT1)"
    )
    text = (
        "tcp_orphan_retries=0 does not mean 'no retries': while the peer looks alive the kernel uses 8, so an "
        "orphaned socket keeps retransmitting (about 100 s at the minimum RTO, far longer with real RTOs) and "
        "holds its unsent data meanwhile. Set an explicit small value "
        f"(net.ipv4.tcp_orphan_retries={SUGGESTED_ORPHAN_RETRIES}) on hosts that close many connections to slow "
        "or vanished clients."
    )
    return _finding(
        "ORPHAN_RETRIES_DEFAULT",
        severity,
        summary,
        evidence,
        kind="sysctl",
        text=text,
        sysctls={"net.ipv4.tcp_orphan_retries": SUGGESTED_ORPHAN_RETRIES},
    )


def _tw_recycle_present(facts, th):
    value = _sysctl(facts, "net.ipv4.tcp_tw_recycle")
    if value is None or _num(value) == 0:
        return None
    evidence = {"net.ipv4.tcp_tw_recycle": value, "kernel": facts.get("kernel")}
    summary = f"net.ipv4.tcp_tw_recycle is {value}: clients behind NAT get their SYNs dropped"
    text = (
        "tcp_tw_recycle drops SYNs whose TCP timestamps are older than the last seen from the same address; "
        "clients behind one NAT have unrelated timestamps, so their connections fail at random. It was removed in "
        "Linux 4.12. Set it to 0 and remove it from sysctl files; use tcp_tw_reuse (outgoing) and connection "
        "reuse for TIME_WAIT instead."
    )
    return _finding(
        "TW_RECYCLE_PRESENT",
        "critical",
        summary,
        evidence,
        kind="sysctl",
        text=text,
        sysctls={"net.ipv4.tcp_tw_recycle": 0},
    )


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
