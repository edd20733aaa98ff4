# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safe management of integer sysctls through one exclusive drop-in file.

Everything the tcp_sysctl module does lives here: validation, reading and
writing /proc/sys, rendering and parsing the drop-in, atomic writes, the saved
previous values and the rollback. Python 3.9+ stdlib only (runs on managed nodes).
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile

DEFAULT_FILE = "/etc/sysctl.d/60-netstate-tcp.conf"
PROC_SYS = "/proc/sys"
STATE_SCHEMA = 1
GLOBAL_CHOICES = ("skip", "fail")

# One dotted identifier, at least two segments: no "..", no "/", no globs. A "-" is allowed
# inside later segments for interface names (net.ipv4.conf.br-lan.rp_filter); interface
# names holding a "." (VLANs like eth0.100) cannot be expressed and are refused.
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z0-9_][a-z0-9_-]*)+$")
INT_RE = re.compile(r"^-?[0-9]+$")
BOOLEAN_WORDS = frozenset(("true", "false", "yes", "no", "on", "off", "y", "n"))

REFUSED = {
    "net.ipv4.tcp_tw_recycle": (
        "net.ipv4.tcp_tw_recycle is refused whatever the kernel: it dropped connections from clients "
        "behind NAT (per-host timestamps are not monotonic across hosts) and was removed in Linux 4.12; "
        "for outgoing connections use net.ipv4.tcp_tw_reuse instead"
    ),
}

# Keys that exist only in the initial network namespace: inside any other
# namespace they are absent from /proc/sys, and the host-wide value applies.
# Recorded on Linux 6.18 by diffing /proc/sys/net of init_net and a new netns.
NETNS_GLOBAL_KEYS = frozenset(
    (
        "net.core.bpf_jit_enable",
        "net.core.bpf_jit_harden",
        "net.core.bpf_jit_kallsyms",
        "net.core.bpf_jit_limit",
        "net.core.busy_poll",
        "net.core.busy_read",
        "net.core.default_qdisc",
        "net.core.dev_weight",
        "net.core.flow_limit_table_len",
        "net.core.gro_normal_batch",
        "net.core.high_order_alloc_disable",
        "net.core.max_skb_frags",
        "net.core.message_burst",
        "net.core.message_cost",
        "net.core.netdev_budget",
        "net.core.netdev_budget_usecs",
        "net.core.netdev_max_backlog",
        "net.core.netdev_tstamp_prequeue",
        "net.core.rps_sock_flow_entries",
        "net.core.warnings",
        "net.ipv4.fib_sync_mem",
        "net.ipv4.inet_peer_maxttl",
        "net.ipv4.inet_peer_minttl",
        "net.ipv4.inet_peer_threshold",
        "net.ipv4.route.gc_thresh",
        "net.ipv4.route.max_size",
        "net.ipv4.tcp_low_latency",
        "net.ipv4.tcp_max_orphans",
        "net.ipv4.tcp_mem",
        "net.ipv4.udp_mem",
        "net.netfilter.nf_log_all_netns",
        "net.nf_conntrack_max",
    )
)


class SysctlError(Exception):
    """Bad input or a refused change; the message names the key and what is allowed."""


class ApplyError(Exception):
    """A write failed part-way; raised after the rollback, with its outcome in the message."""


# ---- names and values ----------------------------------------------------


def validate_name(name):
    """Return the name if it is a plain dotted sysctl identifier, else raise SysctlError."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SysctlError(
            f"sysctls: invalid name {name!r}: a sysctl name is dotted lower-case segments of "
            "[a-z0-9_] (and '-' in interface names) such as net.ipv4.tcp_fin_timeout "
            "(no '..', '/', spaces or glob characters)"
        )
    if name in REFUSED:
        raise SysctlError(f"sysctls: {REFUSED[name]}")
    return name


def _boolean_hint(name, value):
    return SysctlError(
        f"sysctls: {name}: {value!r} is a boolean; sysctls take numbers, write 1 or 0 "
        "(quote nothing, e.g. `net.ipv4.tcp_tw_reuse: 1`)"
    )


def _int_element(name, item, value):
    if isinstance(item, bool):
        raise _boolean_hint(name, value)
    if isinstance(item, int):
        return item
    if isinstance(item, str) and INT_RE.fullmatch(item.strip()):
        return int(item.strip())
    if isinstance(item, str) and item.strip().lower() in BOOLEAN_WORDS:
        raise _boolean_hint(name, value)
    raise SysctlError(
        f"sysctls: {name}: invalid value {value!r}: allowed are an integer, a string of digits, "
        "or for vectors (tcp_mem, tcp_rmem, ip_local_port_range, ...) a list of integers or "
        "a space-separated string of integers"
    )


def normalize_value(name, value):
    """Return the value as a tuple of ints; raise SysctlError naming the key otherwise."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        items = value.split()
    else:
        items = [value]
    if not items:
        raise SysctlError(f"sysctls: {name}: empty value: give an integer or a list of integers")
    return tuple(_int_element(name, item, value) for item in items)


def format_value(values):
    """The text written to /proc/sys and to the drop-in: integers separated by one space."""
    return " ".join(str(v) for v in values)


def sysctl_path(name, proc_root=PROC_SYS):
    return os.path.join(proc_root, *name.split("."))


def read_live(name, proc_root=PROC_SYS):
    """Read one sysctl as a tuple of ints (kernel vectors are tab-separated)."""
    with open(sysctl_path(name, proc_root), encoding="ascii") as handle:
        text = handle.read()
    fields = text.split()
    if not fields or not all(INT_RE.fullmatch(f) for f in fields):
        raise SysctlError(
            f"sysctls: {name}: current value {text.strip()!r} is not numeric; only integer sysctls are managed"
        )
    return tuple(int(f) for f in fields)


def write_live(name, values, proc_root=PROC_SYS):
    """Write one sysctl in a single write(2): the kernel parses a vector in one call."""
    data = format_value(values).encode("ascii")
    fd = os.open(sysctl_path(name, proc_root), os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


# ---- namespaces ----------------------------------------------------------


def namespace_info(proc_root=PROC_SYS, proc="/proc"):
    """Tell whether this process runs in the initial network namespace.

    net.ipv4.tcp_mem is registered for init_net only, so its absence marks a
    non-initial namespace even where /proc/1/ns/net cannot be read or pid 1 is
    itself in a container. Where readable, pid 1's namespace inode is compared too.
    """
    inode = None
    try:
        inode = os.stat(os.path.join(proc, "self/ns/net")).st_ino
    except OSError:
        pass
    initial = True
    if os.path.isdir(os.path.join(proc_root, "net", "ipv4")):
        initial = os.path.exists(sysctl_path("net.ipv4.tcp_mem", proc_root))
    if initial and inode is not None:
        try:
            initial = os.stat(os.path.join(proc, "1/ns/net")).st_ino == inode
        except OSError:
            pass  # pid 1 not inspectable (no ptrace access): the marker decides
    return {"inode": inode, "initial": initial}


def is_global_in_namespace(name, namespace):
    """A key whose value inside a non-initial network namespace is the host's.

    Known host-only net keys, and every key outside net.* (vm., kernel., fs. are
    not network-namespaced: writing them from a namespace changes the host).
    """
    if namespace["initial"]:
        return False
    return name in NETNS_GLOBAL_KEYS or not name.startswith("net.")


# ---- the drop-in file and the saved state -------------------------------


def state_path(path):
    """Where the values replaced are saved: a dot file next to the drop-in.

    systemd-sysctl and `sysctl --system` only read *.conf, so it is never loaded.
    """
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.previous.json")


def render_conf(values, path):
    """The drop-in text for {name: tuple}, keys sorted so the file is stable."""
    lines = [
        "# Managed by netstate.tcp.tcp_sysctl: this file is rewritten as a whole, do not edit.",
        f"# The values it replaced are saved in {os.path.basename(state_path(path))} (restored by state=absent).",
    ]
    lines.extend(f"{name} = {format_value(values[name])}" for name in sorted(values))
    return "\n".join(lines) + "\n"


def parse_conf(text):
    """Parse sysctl.d text into {name: value string}; comments and blank lines skipped."""
    result = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("-"):  # "-key = value": sysctl ignores errors for this key
            line = line[1:]
        name, sep, value = line.partition("=")
        if not sep:
            continue
        result[name.strip().replace("/", ".")] = " ".join(value.split())
    return result


def read_text(path):
    """File content, or None when it does not exist."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def atomic_write(path, text, mode=0o644):
    """Write a temp file in the same directory, fsync, then rename over the target."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def restore_text(path, text):
    """Put a file back as it was: previous content, or absent when it did not exist."""
    if text is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        atomic_write(path, text)


def load_state(path):
    """Saved previous values {name: value string} from the state file ({} when none)."""
    text = read_text(state_path(path))
    if text is None:
        return {}
    try:
        data = json.loads(text)
        previous = data["previous"]
        if not isinstance(previous, dict):
            raise TypeError("previous is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise SysctlError(f"file: the saved state {state_path(path)} is unreadable ({exc}); fix or remove it") from exc
    return {str(k): str(v) for k, v in previous.items()}


def render_state(path, previous):
    data = {"schema": STATE_SCHEMA, "file": path, "previous": dict(sorted(previous.items()))}
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


# ---- the plan and its application ---------------------------------------


def validate_request(sysctls, on_global_in_namespace, namespace, proc_root=PROC_SYS):
    """Check every key before touching anything.

    Returns (wanted {name: tuple} in the given order, skipped [{name, reason}], warnings).
    Raises SysctlError listing every problem found.
    """
    if on_global_in_namespace not in GLOBAL_CHOICES:
        allowed = ", ".join(GLOBAL_CHOICES)
        raise SysctlError(f"on_global_in_namespace: {on_global_in_namespace!r} is not one of {allowed}")
    errors, wanted, skipped, warnings = [], {}, [], []
    for name, value in (sysctls or {}).items():
        try:
            validate_name(name)
            values = normalize_value(name, value)
        except SysctlError as exc:
            errors.append(str(exc))
            continue
        exists = os.path.isfile(sysctl_path(name, proc_root))
        if is_global_in_namespace(name, namespace):
            reason = (
                f"{name} is global: inside a non-initial network namespace (inode {namespace['inode']}) "
                "it is the host's value and cannot be set per namespace"
            )
            if on_global_in_namespace == "fail":
                errors.append(f"sysctls: {reason} (on_global_in_namespace=fail; use skip to leave it out)")
            else:
                skipped.append({"name": name, "reason": reason})
                warnings.append(f"skipped {reason}")
            continue
        if not exists:
            errors.append(f"sysctls: {name} does not exist under {proc_root} on this kernel")
            continue
        try:
            current = read_live(name, proc_root)
        except SysctlError as exc:
            errors.append(str(exc))
            continue
        except OSError as exc:
            errors.append(f"sysctls: {name}: cannot read {sysctl_path(name, proc_root)}: {exc.strerror}")
            continue
        if len(values) != len(current):
            errors.append(
                f"sysctls: {name} takes {len(current)} integer(s) (now {format_value(current)!r}), got {len(values)}: "
                f"{format_value(values)!r}"
            )
            continue
        wanted[name] = values
    if errors:
        raise SysctlError("; ".join(errors))
    return wanted, skipped, warnings


def _live_text(values):
    return "".join(f"{name} = {text}\n" for name, text in values.items())


class SysctlDropIn:
    """One drop-in file managed exclusively, its saved state and the live values behind it."""

    def __init__(self, path=DEFAULT_FILE, proc_root=PROC_SYS, writer=write_live):
        if not isinstance(path, str) or not os.path.isabs(path) or not path.endswith(".conf"):
            raise SysctlError(f"file: {path!r} must be an absolute path ending in .conf (sysctl.d reads only *.conf)")
        self.path = path
        self.proc_root = proc_root
        self.writer = writer  # the unit tests pass a writer that fails like the kernel does

    # -- planning --
    def plan_present(self, wanted, apply=True):
        """Everything to do, computed from the live system; changes nothing."""
        saved = load_state(self.path)
        live_before = {}
        for name in list(wanted) + [n for n in saved if n not in wanted]:
            if os.path.isfile(sysctl_path(name, self.proc_root)):
                live_before[name] = format_value(read_live(name, self.proc_root))
        previous = {name: saved.get(name, live_before[name]) for name in wanted}
        # Keys this file managed before but no longer: put their replaced value back.
        released = {name: saved[name] for name in saved if name not in wanted and name in live_before}
        writes = []
        if apply:
            writes = [(name, wanted[name]) for name in wanted if live_before[name] != format_value(wanted[name])]
            writes += [
                (name, normalize_value(name, text)) for name, text in released.items() if live_before[name] != text
            ]
        else:
            # Live values are left alone: a released key that still differs from its saved value keeps
            # that value in the state, so a later run with apply (or state=absent) can still restore it.
            previous.update({name: text for name, text in released.items() if live_before[name] != text})
        return {
            "live_before": live_before,
            "writes": writes,
            "file_before": read_text(self.path),
            "file_after": render_conf(wanted, self.path),
            "state_before": read_text(state_path(self.path)),
            "state_after": render_state(self.path, previous),
            "previous": previous,
        }

    def plan_absent(self, apply=True):
        saved = load_state(self.path)
        live_before, writes = {}, []
        for name, text in saved.items():
            if not os.path.isfile(sysctl_path(name, self.proc_root)):
                continue
            live_before[name] = format_value(read_live(name, self.proc_root))
            if apply and live_before[name] != text:
                writes.append((name, normalize_value(name, text)))
        return {
            "live_before": live_before,
            "writes": writes,
            "file_before": read_text(self.path),
            "file_after": None,
            "state_before": read_text(state_path(self.path)),
            "state_after": None,
            "previous": saved,
        }

    @staticmethod
    def changed(plan):
        return (
            bool(plan["writes"])
            or plan["file_before"] != plan["file_after"]
            or plan["state_before"] != plan["state_after"]
        )

    def diff(self, plan):
        live_after = dict(plan["live_before"])
        for name, values in plan["writes"]:
            live_after[name] = format_value(values)
        return [
            {
                "before_header": self.path,
                "after_header": self.path,
                "before": plan["file_before"] or "",
                "after": plan["file_after"] or "",
            },
            {
                "before_header": "live values (/proc/sys)",
                "after_header": "live values (/proc/sys)",
                "before": _live_text(plan["live_before"]),
                "after": _live_text(live_after),
            },
        ]

    # -- applying --
    def execute(self, plan):
        """Write live values (read back each), then the file and the saved state.

        On any failure everything done so far is undone in reverse order and
        ApplyError is raised; the message says whether the rollback succeeded.
        """
        undo = []
        try:
            for name, values in plan["writes"]:
                undo.append(("live", name, plan["live_before"][name]))
                try:
                    self.writer(name, values, self.proc_root)
                except OSError as exc:
                    hint = ""
                    if exc.errno == errno.EINVAL:
                        hint = " (the kernel rejected the value: out of its allowed range?)"
                    raise ApplyError(
                        f"sysctls: {name}: writing {format_value(values)!r} failed: {exc.strerror}{hint}"
                    ) from exc
                got = read_live(name, self.proc_root)
                if got != tuple(values):
                    raise ApplyError(
                        f"sysctls: {name}: the kernel changed {format_value(values)!r} to {format_value(got)!r} "
                        "(clamped or rounded); ask for a value it keeps as given"
                    )
            undo.append(("file", self.path, plan["file_before"]))
            if plan["file_after"] is None:
                restore_text(self.path, None)
            else:
                atomic_write(self.path, plan["file_after"])
            spath = state_path(self.path)
            undo.append(("file", spath, plan["state_before"]))
            restore_text(spath, plan["state_after"])
        except (ApplyError, OSError, SysctlError) as exc:
            message = str(exc) if isinstance(exc, ApplyError) else f"{type(exc).__name__}: {exc}"
            problems = self.rollback(undo)
            if problems:
                raise ApplyError(f"{message}; ROLLBACK INCOMPLETE: {'; '.join(problems)}") from exc
            raise ApplyError(f"{message}; rolled back: live values and {self.path} are as before") from exc
        live_after = {}
        for name in plan["live_before"]:
            live_after[name] = format_value(read_live(name, self.proc_root))
        return live_after

    def rollback(self, undo):
        problems = []
        for kind, target, before in reversed(undo):
            try:
                if kind == "live":
                    write_live(target, normalize_value(target, before), self.proc_root)
                else:
                    restore_text(target, before)
            except (OSError, SysctlError) as exc:
                problems.append(f"{target}: {exc}")
        return problems
