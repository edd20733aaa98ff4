# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Host and namespace TCP figures from procfs: sockstat, SNMP counters, sysctls, pressure.

Stdlib only (runs on managed nodes, Python 3.7+). Every reader takes the text it
parses (or a ``proc`` root directory) so unit tests feed it files recorded from
real kernels. Parsers never raise on malformed text: bad lines are skipped and
reported through the ``warnings`` list the caller passes in.
"""

from __future__ import annotations

import os

PROC = "/proc"

# /proc/net/sockstat inside a non-initial network namespace shows that
# namespace's `inuse` and `tw`, but the host's `orphan`, `alloc` and `mem`
# (checked on Linux 6.18): each field carries its scope.
SOCKSTAT_SCOPE = {
    "tcp_inuse": "namespace",
    "tcp_tw": "namespace",
    "tcp_orphan": "host",
    "tcp_alloc": "host",
    "tcp_mem_pages": "host",
    "tcp_mem_bytes": "host",
    "tcp6_inuse": "namespace",
}

# (section, name) pairs from /proc/net/netstat (TcpExt) and /proc/net/snmp (Tcp).
COUNTERS = (
    ("TcpExt", "ListenOverflows"),
    ("TcpExt", "ListenDrops"),
    ("TcpExt", "TCPAbortOnMemory"),
    ("TcpExt", "TCPAbortOnTimeout"),
    ("TcpExt", "TCPAbortOnClose"),
    ("TcpExt", "TCPAbortOnData"),
    ("TcpExt", "TCPAbortOnLinger"),
    ("TcpExt", "TCPAbortFailed"),
    ("TcpExt", "TCPTimeWaitOverflow"),
    ("TcpExt", "TCPMemoryPressures"),
    ("TcpExt", "TCPMemoryPressuresChrono"),
    ("TcpExt", "TCPReqQFullDrop"),
    ("TcpExt", "TCPReqQFullDoCookies"),
    ("TcpExt", "TCPBacklogDrop"),
    ("TcpExt", "TCPTimeouts"),
    ("TcpExt", "TCPSynRetrans"),
    ("TcpExt", "TCPOrigDataSent"),
    ("TcpExt", "SyncookiesSent"),
    ("TcpExt", "SyncookiesRecv"),
    ("TcpExt", "SyncookiesFailed"),
    ("TcpExt", "EmbryonicRsts"),
    ("TcpExt", "PruneCalled"),
    ("TcpExt", "TW"),
    ("TcpExt", "TWRecycled"),
    ("TcpExt", "TWKilled"),
    ("Tcp", "ActiveOpens"),
    ("Tcp", "PassiveOpens"),
    ("Tcp", "AttemptFails"),
    ("Tcp", "EstabResets"),
    ("Tcp", "CurrEstab"),
    ("Tcp", "InSegs"),
    ("Tcp", "OutSegs"),
    ("Tcp", "RetransSegs"),
    ("Tcp", "InErrs"),
    ("Tcp", "OutRsts"),
)

# Gauges, not counters: no per-second rate.
GAUGES = frozenset({"CurrEstab"})

# Sysctls reported under `sysctls`, by dotted name.
SYSCTLS = (
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_orphan_retries",
    "net.ipv4.tcp_max_orphans",
    "net.ipv4.tcp_mem",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_max_tw_buckets",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_tw_reuse",
    "net.ipv4.tcp_tw_recycle",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.tcp_max_syn_backlog",
    "net.ipv4.tcp_synack_retries",
    "net.ipv4.tcp_syn_retries",
    "net.ipv4.tcp_abort_on_overflow",
    "net.core.somaxconn",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_retries1",
    "net.ipv4.tcp_retries2",
)

# Only the initial network namespace registers these (ipv4_table in
# net/ipv4/sysctl_net_ipv4.c); elsewhere they are absent and reported null.
GLOBAL_SYSCTLS = frozenset({"net.ipv4.tcp_max_orphans", "net.ipv4.tcp_mem"})

# Removed in Linux 4.12; null when absent, whatever the namespace.
OPTIONAL_SYSCTLS = frozenset({"net.ipv4.tcp_tw_recycle"})

# tcp_orphan_retries 0 means 8 (tcp_orphan_retries() in net/ipv4/tcp_timer.c).
ORPHAN_RETRIES_ZERO_MEANS = 8


def read_text(path):
    """Return a file's text, or None when it does not exist."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _to_int(text):
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def parse_sockstat(text, text6=None, page_size=None, warnings=None):
    """Parse /proc/net/sockstat (+ sockstat6) into the `sockstat` fact group.

    Every field is present; a field the text does not show is None.
    """
    warnings = warnings if warnings is not None else []
    page_size = page_size or os.sysconf("SC_PAGE_SIZE")
    result = dict.fromkeys(SOCKSTAT_SCOPE)
    tcp_fields = {}
    for line in (text or "").splitlines():
        label, _sep, rest = line.partition(":")
        if label.strip() != "TCP":
            continue
        words = rest.split()
        for key, value in zip(words[0::2], words[1::2]):
            number = _to_int(value)
            if number is None:
                warnings.append(f"sockstat: ignored non-numeric TCP field {key!r}")
                continue
            tcp_fields[key] = number
    for key in ("inuse", "tw", "orphan", "alloc"):
        result["tcp_" + key] = tcp_fields.get(key)
    pages = tcp_fields.get("mem")
    result["tcp_mem_pages"] = pages
    result["tcp_mem_bytes"] = pages * page_size if pages is not None else None
    for line in (text6 or "").splitlines():
        label, _sep, rest = line.partition(":")
        words = rest.split()
        if label.strip() == "TCP6" and len(words) >= 2 and words[0] == "inuse":
            result["tcp6_inuse"] = _to_int(words[1])
    if text is not None and not tcp_fields:
        warnings.append("sockstat: no TCP line found")
    result["scope"] = dict(SOCKSTAT_SCOPE)
    return result


def parse_snmp_sections(text, warnings=None):
    """Parse the header/value line pairs of /proc/net/netstat or /proc/net/snmp.

    Returns {section: {name: int}}; a pair whose lengths differ or whose values
    are not numbers is skipped.
    """
    warnings = warnings if warnings is not None else []
    sections = {}
    lines = (text or "").splitlines()
    pending = {}
    for line in lines:
        label, sep, rest = line.partition(":")
        if not sep:
            continue
        label = label.strip()
        words = rest.split()
        if label not in pending:
            pending[label] = words
            continue
        names = pending.pop(label)
        if len(names) != len(words):
            warnings.append(f"{label}: {len(names)} names but {len(words)} values; section skipped")
            continue
        values = {}
        for name, value in zip(names, words):
            number = _to_int(value)
            if number is not None:
                values[name] = number
        sections[label] = values
    return sections


def select_counters(sections):
    """Pick COUNTERS out of parsed sections; a counter the kernel lacks is None."""
    return {name: sections.get(section, {}).get(name) for section, name in COUNTERS}


def parse_sysctl_value(text):
    """'60' -> 60; '4096\\t131072\\t6291456' -> [4096, 131072, 6291456]; other text kept."""
    if text is None:
        return None
    words = text.split()
    if not words:
        return ""
    numbers = [_to_int(word) for word in words]
    if any(number is None for number in numbers):
        return text.strip()
    return numbers[0] if len(numbers) == 1 else numbers


def read_sysctls(proc=PROC, names=SYSCTLS, warnings=None):
    """Read sysctls below <proc>/sys; a missing one is None, unreadable ones warn."""
    warnings = warnings if warnings is not None else []
    result = {}
    for name in names:
        path = os.path.join(proc, "sys", *name.split("."))
        try:
            result[name] = parse_sysctl_value(read_text(path))
        except OSError as err:
            result[name] = None
            warnings.append(f"sysctl {name}: {err.strerror or err}")
    return result


def effective_settings(sysctls):
    """What the kernel actually does with some settings that read otherwise."""
    retries = sysctls.get("net.ipv4.tcp_orphan_retries")
    if retries == 0:
        retries = ORPHAN_RETRIES_ZERO_MEANS
    port_range = sysctls.get("net.ipv4.ip_local_port_range")
    ports = None
    if isinstance(port_range, list) and len(port_range) == 2:
        ports = max(0, port_range[1] - port_range[0] + 1)
    return {
        "tcp_orphan_retries": retries,
        "ephemeral_ports": ports,
        "tcp_tw_recycle_present": sysctls.get("net.ipv4.tcp_tw_recycle") is not None,
    }


def _ratio(count, limit):
    if count is None or not limit:
        return None
    return round(count / limit, 4)


def compute_pressure(sockstat, sysctls, states, busiest_tuple=None):
    """Usage against the kernel's limits (ratios None where a limit is unknown)."""
    orphans = sockstat.get("tcp_orphan")
    max_orphans = sysctls.get("net.ipv4.tcp_max_orphans")
    # tcp_too_many_orphans() compares orphans << shift with tcp_max_orphans,
    # shift up to 2 for sockets with a soft error or idle past their RTO.
    penalized = _ratio(orphans * 4, max_orphans) if orphans is not None else None
    tcp_mem = sysctls.get("net.ipv4.tcp_mem")
    low = high = mem_pressure = None
    if isinstance(tcp_mem, list) and len(tcp_mem) == 3:
        low, mem_pressure, high = tcp_mem
    pages = sockstat.get("tcp_mem_pages")
    # sockstat `tw` is the kernel's own count checked against tcp_max_tw_buckets.
    tw_count = sockstat.get("tcp_tw")
    if tw_count is None:
        tw_count = states.get("TIME_WAIT")
    tw_limit = sysctls.get("net.ipv4.tcp_max_tw_buckets")
    port_range = effective_settings(sysctls)["ephemeral_ports"]
    in_use = busiest_tuple.get("count", 0) if busiest_tuple else 0
    return {
        "orphans": {
            "count": orphans,
            "limit": max_orphans,
            "ratio": _ratio(orphans, max_orphans),
            "ratio_penalized_4x": penalized,
        },
        "memory": {
            "pages": pages,
            "low": low,
            "pressure": mem_pressure,
            "high": high,
            "ratio_to_high": _ratio(pages, high),
        },
        "time_wait": {"count": tw_count, "limit": tw_limit, "ratio": _ratio(tw_count, tw_limit)},
        "ephemeral_ports": {
            "range": port_range,
            "busiest_tuple": busiest_tuple or None,
            "in_use": in_use,
            "ratio": _ratio(in_use, port_range),
        },
    }


def namespace_is_initial(proc=PROC):
    """True in the initial network namespace: only it has net.ipv4.tcp_mem."""
    return os.path.exists(os.path.join(proc, "sys", "net", "ipv4", "tcp_mem"))


def collect_system(proc=PROC, warnings=None):
    """Read sockstat, counters and sysctls of the calling thread's namespace."""
    warnings = warnings if warnings is not None else []

    def _read(name):
        try:
            return read_text(os.path.join(proc, "net", name))
        except OSError as err:
            warnings.append(f"/proc/net/{name}: {err.strerror or err}")
            return None

    sockstat_text = _read("sockstat")
    if sockstat_text is None:
        warnings.append("/proc/net/sockstat not readable; sockstat and pressure figures are null")
    sockstat = parse_sockstat(sockstat_text, _read("sockstat6"), warnings=warnings)
    sections = parse_snmp_sections(_read("netstat"), warnings)
    sections.update(parse_snmp_sections(_read("snmp"), warnings))
    counters = select_counters(sections)
    initial = namespace_is_initial(proc)
    sysctls = read_sysctls(proc, warnings=warnings)
    missing = [
        name
        for name, value in sysctls.items()
        if value is None and name not in OPTIONAL_SYSCTLS and (initial or name not in GLOBAL_SYSCTLS)
    ]
    if missing:
        warnings.append("sysctls not found: " + ", ".join(missing))
    return {"sockstat": sockstat, "counters": counters, "sysctls": sysctls, "initial": initial}


def counter_rates(before, after, seconds):
    """Per-second rates of counters between two samples (gauges and unknowns skipped)."""
    if seconds <= 0:
        return {}
    rates = {}
    for name, end in after.items():
        start = before.get(name)
        if name in GAUGES or start is None or end is None:
            continue
        rates[name] = round((end - start) / seconds, 3)
    return rates
