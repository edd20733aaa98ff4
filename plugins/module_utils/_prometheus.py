# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""One host's tcp_state figures as Prometheus text exposition (node_exporter textfile collector).

The one renderer of the collection's metrics: tcp_state_facts writes it on the
host (option ``prometheus_textfile``), the fleet report renders it on the
controller. Standard library only.

Everything a host reports is data: label values are escaped (``\\``, ``"``,
newline, the three escapes of the text format) and a sample is written only
for a finite int or float, so no value can add or break a line.
"""

from __future__ import annotations

import datetime
import math
import os

from ansible_collections.netstate.tcp.plugins.module_utils._atomic_file import AtomicFileWriter
from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import SEVERITIES, severity_rank
from ansible_collections.netstate.tcp.plugins.module_utils._netlink import STATES

PREFIX = "netstate_tcp_"
TEXTFILE_MODE = 0o644
# node_exporter runs as its own user: it must be able to enter a directory this module creates
TEXTFILE_DIR_MODE = 0o755
TEXTFILE_OPTION = "prometheus_textfile"

# (metric name after the prefix, pressure section, field, help); the fleet report's pressure columns use these names
PRESSURE_FIGURES = (
    ("orphans", "orphans", "count", "Orphaned TCP sockets (host-wide, /proc/net/sockstat)."),
    ("orphans_limit", "orphans", "limit", "net.ipv4.tcp_max_orphans."),
    ("orphans_ratio", "orphans", "ratio", "Orphans over tcp_max_orphans."),
    (
        "orphans_ratio_penalized_4x",
        "orphans",
        "ratio_penalized_4x",
        "Orphans counted four times (the kernel's penalty for idle or failed orphans) over tcp_max_orphans.",
    ),
    ("memory_pages", "memory", "pages", "TCP memory in pages (host-wide)."),
    ("memory_ratio_to_high", "memory", "ratio_to_high", "TCP memory over tcp_mem[2]."),
    ("time_wait_ratio", "time_wait", "ratio", "TIME_WAIT sockets over tcp_max_tw_buckets."),
    ("ephemeral_ports_ratio", "ephemeral_ports", "ratio", "Busiest ephemeral port tuple over the port range."),
)


def escape_label(value) -> str:
    """A label value: the text format escapes exactly backslash, double quote and line feed."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    # HELP text escapes backslash and line feed (not the quote)
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def sample_value(value):
    """A sample value as text, or None: only a finite int or float (never a bool, a string, NaN or inf)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    return str(value)


def pressure_figures(pressure) -> dict:
    """The flat pressure figures (PRESSURE_FIGURES names) of a tcp_state `pressure` block; None when absent."""
    pressure = pressure if isinstance(pressure, dict) else {}
    figures = {}
    for name, section_name, field, _help in PRESSURE_FIGURES:
        section = pressure.get(section_name)
        value = section.get(field) if isinstance(section, dict) else None
        if field.startswith("ratio") and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        figures[name] = value
    return figures


def epoch_seconds(stamp):
    """'2026-11-21T10:00:00Z' -> seconds since the epoch; None for anything else."""
    try:
        moment = datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError):
        return None
    return int(moment.replace(tzinfo=datetime.timezone.utc).timestamp())


class _Exposition:
    """Metric families in order, one HELP and one TYPE each; samples with a non-numeric value are dropped."""

    def __init__(self):
        self.lines = []

    def family(self, name, help_text, samples, keep_empty=False):
        rendered = []
        for labels, value in samples:
            text = sample_value(value)
            if text is None:
                continue
            label_text = ",".join(f'{key}="{escape_label(label)}"' for key, label in labels)
            rendered.append(f"{PREFIX}{name}{{{label_text}}} {text}" if label_text else f"{PREFIX}{name} {text}")
        if not rendered and not keep_empty:
            return
        self.lines += [f"# HELP {PREFIX}{name} {_escape_help(help_text)}", f"# TYPE {PREFIX}{name} gauge", *rendered]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _worst_severity_level(findings) -> int:
    """0 without findings, else 1 + the rank of the worst severity (info 1, warning 2, critical 3)."""
    ranks = [severity_rank(f.get("severity")) + 1 for f in findings if f.get("severity") in SEVERITIES]
    return max(ranks, default=0)


def _churn_families(out: _Exposition, churn) -> None:
    # churn is only there with `trace`; source null means tracing was not possible (nothing measured)
    if not isinstance(churn, dict) or churn.get("source") is None:
        return
    out.family(
        "churn_seconds",
        "Seconds TCP state changes were traced (tracefs inet_sock_set_state).",
        [((), churn.get("seconds"))],
    )
    out.family("churn_events", "TCP state changes traced, whole host.", [((), churn.get("events"))])
    out.family(
        "churn_lost_events", "Trace events the kernel dropped (figures are then low).", [((), churn.get("lost_events"))]
    )
    processes = [p for p in churn.get("processes") or () if isinstance(p, dict)]
    for key, help_text in (
        ("connects_per_second", "connect() calls per second of the busiest churning processes."),
        ("active_closes_per_second", "Active closes (close() before the peer) per second of the busiest processes."),
    ):
        out.family(
            f"churn_process_{key}",
            help_text,
            [((("pid", p.get("pid")), ("comm", p.get("comm"))), p.get(key)) for p in processes],
        )
    peers = [p for p in churn.get("peers") or () if isinstance(p, dict)]
    for key, help_text in (
        ("connects", "Connections opened towards the busiest peers during the trace."),
        ("active_closes", "Connections to the busiest peers closed first by this host during the trace."),
    ):
        out.family(
            f"churn_peer_{key}",
            help_text,
            [((("address", p.get("address")), ("port", p.get("port"))), p.get(key)) for p in peers],
        )


def _conntrack_families(out: _Exposition, conntrack) -> None:
    if not isinstance(conntrack, dict) or conntrack.get("available") is not True:
        return
    out.family(
        "conntrack_entries",
        "Entries in the namespace's nf_conntrack table (all protocols).",
        [((), conntrack.get("count"))],
    )
    out.family("conntrack_max", "net.netfilter.nf_conntrack_max.", [((), conntrack.get("max"))])
    out.family(
        "conntrack_ratio", "nf_conntrack table fill (entries over nf_conntrack_max).", [((), conntrack.get("ratio"))]
    )
    states = conntrack.get("states")
    states = states if isinstance(states, dict) else {}
    out.family(
        "conntrack_tcp_entries",
        "TCP conntrack entries by conntrack TCP state.",
        [((("state", name),), count) for name, count in sorted(states.items(), key=lambda item: str(item[0]))],
    )


def render_metrics(states, findings, pressure, taken_at, *, churn=None, conntrack=None) -> str:
    """The text exposition of one host.

    states: {STATE: count}; findings: [{code, severity, ...}]; pressure: flat figures (pressure_figures());
    taken_at: ISO time of the figures; churn and conntrack: the tcp_state blocks, when present.
    """
    states = states if isinstance(states, dict) else {}
    findings = [f for f in findings or () if isinstance(f, dict)]
    pressure = pressure if isinstance(pressure, dict) else {}
    out = _Exposition()
    out.family(
        "sockets",
        "TCP sockets by state (netstate.tcp tcp_state_facts).",
        [((("state", state),), states.get(state)) for state in STATES],
        keep_empty=True,
    )
    counts: dict = {}
    for finding in findings:
        key = (str(finding.get("code")), str(finding.get("severity")))
        counts[key] = counts.get(key, 0) + 1
    out.family(
        "findings",
        "Findings of the last netstate.tcp audit by code and severity.",
        [((("code", code), ("severity", severity)), n) for (code, severity), n in sorted(counts.items())],
        keep_empty=True,
    )
    out.family(
        "worst_severity",
        "Worst finding severity (0 none, 1 info, 2 warning, 3 critical).",
        [((), _worst_severity_level(findings))],
    )
    for name, _section, _field, help_text in PRESSURE_FIGURES:
        out.family(name, help_text, [((), pressure.get(name))])
    _churn_families(out, churn)
    _conntrack_families(out, conntrack)
    out.family(
        "audit_timestamp_seconds",
        "When these figures were taken (tcp_state_facts: collection time; fleet report: report time).",
        [((), epoch_seconds(taken_at))],
    )
    return out.text()


def render_tcp_state(tcp_state: dict) -> str:
    """The text exposition of a tcp_state fact block (what tcp_state_facts writes on the host)."""
    return render_metrics(
        tcp_state.get("states"),
        tcp_state.get("findings"),
        pressure_figures(tcp_state.get("pressure")),
        tcp_state.get("collected_at"),
        churn=tcp_state.get("churn"),
        conntrack=tcp_state.get("conntrack"),
    )


# ---------------------------------------------------------------------------
# the textfile on the host


def check_textfile_path(path) -> str:
    """The normalized textfile path; ValueError naming the option and what is allowed."""
    allowed = "an absolute path of a file ending in .prom, without control characters"
    if not isinstance(path, str) or not path:
        raise ValueError(f"{TEXTFILE_OPTION}: must be {allowed}, got {path!r}")
    if any(ord(char) < 32 or ord(char) == 127 for char in path):
        raise ValueError(f"{TEXTFILE_OPTION}: must be {allowed}; {path!r} holds a control character")
    if not os.path.isabs(path):
        raise ValueError(f"{TEXTFILE_OPTION}: must be {allowed}; {path!r} is relative")
    normalized = os.path.normpath(path)
    name = os.path.basename(normalized)
    # node_exporter's textfile collector reads only *.prom files: any other name would never be scraped
    if not name.endswith(".prom") or name == ".prom":
        raise ValueError(f"{TEXTFILE_OPTION}: must be {allowed}; {path!r} does not end in .prom")
    return normalized


def _make_directories(directory: str) -> None:
    """Create the missing directories of `directory`, each 0755 whatever the umask."""
    missing = []
    while not os.path.isdir(directory):
        if os.path.lexists(directory):
            raise OSError(f"{directory} exists and is not a directory")
        missing.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(missing):
        try:
            os.mkdir(path, TEXTFILE_DIR_MODE)
        except FileExistsError:
            continue  # a concurrent run made it
        os.chmod(path, TEXTFILE_DIR_MODE)


def write_textfile(path: str, text: str, atomic_move) -> None:
    """Write `text` to `path` (already checked) atomically, mode 0644; parents created 0755.

    atomic_move is AnsibleModule.atomic_move: the temporary file sits in the same directory and is renamed
    over the target, so node_exporter never reads half a file and concurrent runs never mix their content.
    A symlink or a directory at `path` is never replaced (OSError): the path names a file this module owns.
    """
    _make_directories(os.path.dirname(path))
    # the temporary name must not end in .prom: node_exporter would scrape the half-written file
    AtomicFileWriter(atomic_move, mode=TEXTFILE_MODE, prefix=".netstate_tcp.", suffix=".tmp").write(path, text)
