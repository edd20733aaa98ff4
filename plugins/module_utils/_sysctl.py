# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Safe management of integer sysctls through one exclusive drop-in file.

Everything the tcp_sysctl module does lives here: option checks, resolving the
request (catalog profiles, findings, orphan cap, explicit keys, keys kept from the
file), validation, reading and writing /proc/sys, rendering and parsing the
drop-in, the lock, atomic writes, the saved previous values and the rollback.
Python stdlib only (runs on managed nodes).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import time

from ansible_collections.netstate.tcp.plugins.module_utils._atomic_file import AtomicFileWriter
from ansible_collections.netstate.tcp.plugins.module_utils._remediation import (
    FINDING_PROFILES,
    NOT_SYSCTL,
    ORPHAN_KIB,
    PROFILES,
)

PROC_SYS = "/proc/sys"
STATE_SCHEMA = 1
GLOBAL_CHOICES = ("skip", "fail")

# One dotted identifier, at least two segments: no "..", no "/", no globs. A "-" is allowed
# inside later segments for interface names (net.ipv4.conf.br-lan.rp_filter); interface
# names holding a "." (VLANs like eth0.100) cannot be expressed and are refused.
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z0-9_][a-z0-9_-]*)+$")
INT_RE = re.compile(r"^-?[0-9]+$")
BOOLEAN_WORDS = frozenset(("true", "false", "yes", "no", "on", "off", "y", "n"))
FINDING_CODE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
# C0 controls, DEL and C1 controls: none belongs in a path, and a newline in `file` would
# otherwise end up in the drop-in's header comment.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

# Kernel sysctl integers are int, long or unsigned long (proc_dointvec, proc_doulongvec_minmax):
# nothing outside 64 bits is meaningful, and the limit keeps int() far from its 4300-digit cap.
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
MAX_INT_CHARS = len(str(INT_MIN))
# tcp_max_orphans is an int in the kernel.
MAX_ORPHANS = 2**31 - 1
# A drop-in or saved state is a few hundred bytes: anything past this is not ours.
MAX_FILE_BYTES = 1 << 20
MAX_PATH_CHARS = 4096  # PATH_MAX
MAX_LOCK_TIMEOUT = 3600
# tcp_orphan_retries is a u8 (proc_dou8vec_minmax): the kernel refuses 256 and up with EINVAL
MAX_ORPHAN_RETRIES = 255
LOCK_POLL_SECONDS = 0.05

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
    """Bad input or a refused change; the message names the option or file and what is allowed."""


class ApplyError(Exception):
    """A write failed part-way; raised after the rollback, with its outcome in the message."""


def shown(value, limit=200):
    """repr() for messages, cut short: hostile input can be megabytes long."""
    try:
        text = repr(value)
    except ValueError:  # an int past the 4300-digit conversion limit
        return "<an integer of more than 4300 digits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- names and values ----------------------------------------------------


def validate_name(name, source="sysctls"):
    """Return the name if it is a plain dotted sysctl identifier, else raise SysctlError.

    ``source`` names where the name came from (the option, the drop-in or the saved state):
    every name is checked here, whoever wrote it.
    """
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise SysctlError(
            f"{source}: invalid name {shown(name)}: a sysctl name is dotted lower-case segments of "
            "[a-z0-9_] (and '-' in interface names) such as net.ipv4.tcp_fin_timeout "
            "(no '..', '/', spaces or glob characters)"
        )
    if name in REFUSED:
        raise SysctlError(f"{source}: {REFUSED[name]}")
    return name


def _boolean_hint(name, value, source):
    return SysctlError(
        f"{source}: {name}: {shown(value)} is a boolean; sysctls take numbers, write 1 or 0 "
        "(quote nothing, e.g. `net.ipv4.tcp_tw_reuse: 1`)"
    )


def _in_range(name, number, value, source):
    if not INT_MIN <= number <= INT_MAX:
        raise SysctlError(
            f"{source}: {name}: {shown(value)} is out of range: sysctl integers are 64-bit ({INT_MIN} to {INT_MAX})"
        )
    return number


def _int_element(name, item, value, source):
    if isinstance(item, bool):
        raise _boolean_hint(name, value, source)
    if isinstance(item, int):
        return _in_range(name, item, value, source)
    text = item.strip() if isinstance(item, str) else None
    if text is not None and INT_RE.fullmatch(text):
        if len(text) > MAX_INT_CHARS:
            return _in_range(name, INT_MAX + 1, value, source)  # refused without int() on it
        return _in_range(name, int(text), value, source)
    if text is not None and text.lower() in BOOLEAN_WORDS:
        raise _boolean_hint(name, value, source)
    raise SysctlError(
        f"{source}: {name}: invalid value {shown(value)}: allowed are an integer, a string of digits, "
        "or for vectors (tcp_mem, tcp_rmem, ip_local_port_range, ...) a list of integers or "
        "a space-separated string of integers"
    )


def normalize_value(name, value, source="sysctls"):
    """Return the value as a tuple of ints; raise SysctlError naming the key otherwise."""
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str):
        items = value.split()
    else:
        items = [value]
    if not items:
        raise SysctlError(f"{source}: {name}: empty value: give an integer or a list of integers")
    return tuple(_int_element(name, item, value, source) for item in items)


def format_value(values):
    """The text written to /proc/sys and to the drop-in: integers separated by one space."""
    return " ".join(str(v) for v in values)


def sysctl_path(name, proc_root=PROC_SYS):
    """Path of a name that passed validate_name (no '/', no empty segment: stays under proc_root)."""
    return os.path.join(proc_root, *name.split("."))


def read_live(name, proc_root=PROC_SYS):
    """Read one sysctl as a tuple of ints (kernel vectors are tab-separated)."""
    with open(sysctl_path(name, proc_root), "rb") as handle:
        text = handle.read(4096).decode("ascii", errors="replace")
    fields = text.split()
    if not fields or not all(INT_RE.fullmatch(f) and len(f) <= MAX_INT_CHARS for f in fields):
        raise SysctlError(
            f"sysctls: {name}: current value {shown(text.strip())} is not numeric; only integer sysctls are managed"
        )
    return tuple(int(f) for f in fields)


def write_live(name, values, proc_root=PROC_SYS):
    """Write one sysctl in a single write(2): the kernel parses a vector in one call."""
    data = format_value(values).encode("ascii")
    fd = os.open(sysctl_path(name, proc_root), os.O_WRONLY | os.O_CLOEXEC)
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


class Kernel:
    """The live side: /proc/sys under ``proc_root``, the namespace, and the policy for host-wide keys.

    ``check`` is the one validator: the option, the drop-in's keys and the saved state all pass it.
    """

    def __init__(self, proc_root=PROC_SYS, namespace=None, on_global_in_namespace="skip", writer=write_live):
        self.proc_root = proc_root
        self.namespace = namespace if namespace is not None else namespace_info(proc_root)
        self.on_global = on_global_in_namespace
        self.writer = writer  # the unit tests pass a writer that fails like the kernel does

    def read(self, name):
        return read_live(name, self.proc_root)

    def write(self, name, values):
        self.writer(name, values, self.proc_root)

    def check(self, entries, missing="fail"):
        """Validate ``entries`` [(name, value, source)] before touching anything.

        Returns (wanted {name: tuple}, current {name: tuple}, skipped [{name, reason}], warnings).
        With ``missing="skip"`` a key absent on this kernel is left out (saved keys of a
        vanished interface); otherwise it is an error. Raises SysctlError listing every problem.
        """
        errors, wanted, current, skipped, warnings = [], {}, {}, [], []
        for name, value, source in entries:
            try:
                checked = self._check_entry(name, value, source, missing)
            except SysctlError as exc:
                errors.append(str(exc))
                continue
            if checked[0] == "skip":
                skipped.append({"name": name, "reason": checked[1]})
                warnings.append(f"skipped {checked[1]}")
            elif checked[0] == "ok":
                wanted[name], current[name] = checked[1], checked[2]
        if errors:
            raise SysctlError("; ".join(errors))
        return wanted, current, skipped, warnings

    def _check_entry(self, name, value, source, missing):
        validate_name(name, source)
        values = normalize_value(name, value, source)
        if is_global_in_namespace(name, self.namespace):
            return self._global_key(name, source)
        path = sysctl_path(name, self.proc_root)
        if not os.path.isfile(path):
            if missing == "skip":
                return ("gone",)
            raise SysctlError(f"{source}: {name} does not exist under {self.proc_root} on this kernel")
        try:
            now = self.read(name)
        except OSError as exc:
            raise SysctlError(f"{source}: {name}: cannot read {path}: {exc.strerror}") from exc
        if len(values) != len(now):
            raise SysctlError(
                f"{source}: {name} takes {len(now)} integer(s) (now {format_value(now)!r}), got {len(values)}: "
                f"{shown(format_value(values))}"
            )
        return ("ok", values, now)

    def _global_key(self, name, source):
        reason = (
            f"{name} is global: inside a non-initial network namespace (inode {self.namespace['inode']}) "
            "it is the host's value and cannot be set per namespace"
        )
        if self.on_global == "fail":
            raise SysctlError(f"{source}: {reason} (on_global_in_namespace=fail; use skip to leave it out)")
        return ("skip", reason)


# ---- option checks: one small function per option --------------------------


def asks_for_nothing(params):
    """No key, profile, finding, orphan cap or kept file: a present request with nothing in it."""
    return not (
        params.get("sysctls")
        or params.get("profiles")
        or params.get("from_findings")
        or params.get("orphan_cap")
        or params.get("keep_existing")
        or params.get("finding_codes") is not None
    )


def check_sysctls(params):
    if params["state"] == "present" and asks_for_nothing(params):
        raise SysctlError(
            "sysctls: empty (or null) with state=present and no profiles, from_findings, finding_codes, orphan_cap "
            "or keep_existing: there is nothing to manage, and an empty request never empties the file. "
            "Give at least one key; to restore the saved values and remove the file use state=absent"
        )


def check_file(params):
    path = params["file"]
    if not isinstance(path, str) or CONTROL_RE.search(path):
        raise SysctlError(f"file: {shown(path)} holds a control character (newline, tab, escape, ...); not allowed")
    if len(path) > MAX_PATH_CHARS or not os.path.isabs(path) or not path.endswith(".conf"):
        raise SysctlError(
            f"file: {shown(path)} must be an absolute path ending in .conf (sysctl.d reads only *.conf), "
            f"at most {MAX_PATH_CHARS} characters"
        )
    if os.path.normpath(path) != path or path.startswith("//"):
        raise SysctlError(
            f"file: {shown(path)} must be a normalised path (no '.' or '..' segments, no '//'), "
            f"such as {os.path.normpath(path)}"
        )


def check_orphan_cap(params):
    cap = params.get("orphan_cap")
    if not cap:
        return
    if cap["memory_mb"] < 1 or cap["memory_mb"] * 1024 // ORPHAN_KIB > MAX_ORPHANS:
        most = MAX_ORPHANS * ORPHAN_KIB // 1024
        raise SysctlError(f"orphan_cap: memory_mb must be 1 to {most} (got {cap['memory_mb']})")
    if not 1 <= cap["retries"] <= MAX_ORPHAN_RETRIES:
        raise SysctlError(
            f"orphan_cap: retries must be 1 to {MAX_ORPHAN_RETRIES} (tcp_orphan_retries 0 means 8 in the kernel, "
            f"and it holds one byte) (got {cap['retries']})"
        )


def check_finding_codes(params):
    bad = [code for code in params.get("finding_codes") or [] if not FINDING_CODE_RE.fullmatch(code)]
    if bad:
        raise SysctlError(
            f"finding_codes: {shown(bad)} are not finding codes (upper-case letters, digits and '_', "
            "such as FIN_WAIT1_STUCK)"
        )


def check_lock_timeout(params):
    if not 0 <= params["lock_timeout"] <= MAX_LOCK_TIMEOUT:
        raise SysctlError(f"lock_timeout: {params['lock_timeout']} is not 0 to {MAX_LOCK_TIMEOUT} seconds")


OPTION_CHECKS = (check_sysctls, check_file, check_orphan_cap, check_finding_codes, check_lock_timeout)


def check_options(params):
    """Every option's meaning (argument_spec did the typing); all problems in one message."""
    errors = []
    for check in OPTION_CHECKS:
        try:
            check(params)
        except SysctlError as exc:
            errors.append(str(exc))
    if errors:
        raise SysctlError("; ".join(errors))


# ---- the request: layers of keys, lowest precedence first ------------------


def select_profiles(params):
    """Catalog profiles to apply: named, or picked by the findings and limited to the named ones."""
    named = list(params.get("profiles") or [])
    if not params.get("from_findings"):
        return sorted(set(named))
    fired = {FINDING_PROFILES[code] for code in params.get("finding_codes") or [] if code in FINDING_PROFILES}
    return sorted(fired & set(named) if named else fired)


def not_fixed_by_sysctls(params):
    """The findings among ``finding_codes`` that no sysctl may fix, with what to do instead."""
    return {code: NOT_SYSCTL[code] for code in params.get("finding_codes") or [] if code in NOT_SYSCTL}


def profile_layer(profile):
    return {
        name: (value, f"{profile} profile: {reason}", f"profiles: {profile}")
        for name, (value, reason) in PROFILES[profile]["sysctls"].items()
    }


def orphan_cap_layer(cap):
    orphans = cap["memory_mb"] * 1024 // ORPHAN_KIB
    retries = cap["retries"]
    return {
        "net.ipv4.tcp_max_orphans": (
            orphans,
            f"orphan cap: {cap['memory_mb']} MiB / {ORPHAN_KIB} KiB per orphan = {orphans} orphans at most; "
            "past it the kernel resets them",
            "orphan_cap",
        ),
        "net.ipv4.tcp_orphan_retries": (
            retries,
            f"orphan cap: orphans give up after {retries} retries (0 would mean 8)",
            "orphan_cap",
        ),
    }


def resolve_request(params, kept):
    """{name: (value, reason, source)} from the kept keys, profiles, orphan cap and sysctls, in that precedence."""
    layers = [kept] if params.get("keep_existing") else []
    layers.extend(profile_layer(profile) for profile in select_profiles(params))
    if params.get("orphan_cap"):
        layers.append(orphan_cap_layer(params["orphan_cap"]))
    explicit = params.get("sysctls") or {}
    layers.append({name: (value, "requested in sysctls", "sysctls") for name, value in explicit.items()})
    merged = {}
    for layer in layers:
        merged.update(layer)
    return merged


# ---- the drop-in file and the saved state -------------------------------


def state_path(path):
    """Where the values replaced are saved: a dot file next to the drop-in.

    systemd-sysctl and `sysctl --system` only read *.conf, so it is never loaded.
    """
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.previous.json")


def lock_path(path):
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}.lock")


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


def _open_regular(path):
    """A read fd on ``path`` if it is a regular file, None when absent. Symlinks are refused: the
    module manages the file itself, and following one would show (and replace) another file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SysctlError(
                f"file: {path} is a symbolic link; tcp_sysctl manages a regular file of its own and never "
                "follows links (point file at the real path, or remove the link)"
            ) from exc
        raise SysctlError(f"file: cannot read {path}: {exc.strerror}") from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SysctlError(f"file: {path} is not a regular file")
    return fd


def read_text(path):
    """UTF-8 content of a regular file, or None when it does not exist; SysctlError naming it otherwise."""
    fd = _open_regular(path)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise SysctlError(f"file: {path} is larger than {MAX_FILE_BYTES} bytes; it is not a file tcp_sysctl wrote")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SysctlError(
            f"file: {path} is not UTF-8 text (invalid byte at offset {exc.start}); fix or remove it"
        ) from exc


def parse_state(text, spath):
    """Saved previous values [(name, value, source)] from the state file's text, shape-checked only."""
    try:
        data = json.loads(text)
        previous = data["previous"]
        if not isinstance(previous, dict):
            raise TypeError("previous is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise SysctlError(f"file: the saved state {spath} is unreadable ({exc}); fix or remove it") from exc
    return [(name, value, f"file: saved state {spath}") for name, value in previous.items()]


def render_state(path, previous):
    data = {"schema": STATE_SCHEMA, "file": path, "previous": dict(sorted(previous.items()))}
    return json.dumps(data, indent=2, sort_keys=False) + "\n"


class FileWriter(AtomicFileWriter):
    """Writes the drop-in and its saved state through the collection's one atomic writer.

    The module passes AnsibleModule.atomic_move as ``mover`` (as ansible.posix sysctl does: it
    keeps the SELinux context and the attributes, mode included, of the file replaced; a new file
    gets 0644). Applying and rolling back both go through ``stage`` and ``commit``; ``None``
    content means the file is removed.
    """

    def __init__(self, mover=os.replace):
        super().__init__(mover, mode=0o644, keep_existing_mode=True)

    @staticmethod
    def removable(path):
        """Raise OSError now if ``path`` could not be removed (read-only or foreign directory)."""
        directory = os.path.dirname(path)
        if not os.access(directory, os.W_OK):
            code = errno.EROFS if _read_only(directory) else errno.EACCES
            raise OSError(code, os.strerror(code), directory)

    @staticmethod
    def remove(path):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def write(self, path, text):
        """Put ``text`` in ``path`` (None: remove it), all or nothing."""
        if text is None:
            self.remove(path)
        else:
            super().write(path, text)


def _read_only(directory):
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


# ---- the lock --------------------------------------------------------------


def _open_lock(path):
    """An fd to flock: the lock file beside the drop-in, created if needed.

    In a read-only directory nobody can change the files, but live values can still race:
    the existing lock file is opened read-only (flock needs no write access), else the
    directory itself is locked.
    """
    flags = os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SysctlError(f"file: the lock file {path} is a symbolic link; remove it") from exc
        if exc.errno == errno.ENOENT:
            raise SysctlError(f"file: the directory of {path} does not exist") from exc
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            raise SysctlError(f"file: cannot create the lock file {path}: {exc.strerror}") from exc
    try:
        return os.open(path, os.O_RDONLY | flags)
    except FileNotFoundError:
        return os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _flock_before(fd, deadline):
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(LOCK_POLL_SECONDS)


def _still_linked(fd, path):
    """The locked inode is still the lock file (a finishing state=absent run may have removed it)."""
    held = os.fstat(fd)
    if stat.S_ISDIR(held.st_mode):
        return True
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


class DropInLock:
    """Exclusive flock on ``.<drop-in>.lock``: one tcp_sysctl run at a time per drop-in, bounded wait."""

    def __init__(self, path, timeout):
        self.path = lock_path(path)
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        deadline = time.monotonic() + self.timeout
        while True:
            fd = _open_lock(self.path)
            if not _flock_before(fd, deadline):
                os.close(fd)
                raise SysctlError(
                    f"lock_timeout: another tcp_sysctl run still holds {self.path} after {self.timeout} s; "
                    "nothing was changed (wait for it, or raise lock_timeout)"
                )
            if _still_linked(fd, self.path):
                self.fd = fd
                return self
            os.close(fd)

    def __exit__(self, *exc):
        os.close(self.fd)
        self.fd = None

    def remove(self):
        """Remove the lock file while holding it (state=absent leaves no file behind); best effort."""
        if not stat.S_ISDIR(os.fstat(self.fd).st_mode):
            try:
                os.unlink(self.path)
            except OSError:
                pass  # a read-only directory: the lock file stays, harmless


class NoLock:
    """Check mode writes nothing, so it takes no lock (and creates no lock file)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def remove(self):
        return None


# ---- the plan and its application ---------------------------------------


def _live_text(values):
    return "".join(f"{name} = {text}\n" for name, text in values.items())


class SysctlDropIn:
    """One drop-in file managed exclusively, its saved state and the live values behind it."""

    def __init__(self, path, kernel, files=None):
        check_file({"file": path})
        self.path = path
        self.state_path = state_path(path)
        self.kernel = kernel
        self.files = files or FileWriter()

    def kept(self):
        """The keys the drop-in holds now, as a request layer (for keep_existing)."""
        text = read_text(self.path) or ""
        source = f"file: {self.path}"
        reason = f"kept from {self.path} (keep_existing)"
        return {name: (value, reason, source) for name, value in parse_conf(text).items()}

    def load_state(self):
        """Saved previous values, validated like user input: ({name: text}, {name: current tuple}, warnings)."""
        text = read_text(self.state_path)
        if text is None:
            return {}, {}, []
        saved, current, _skipped, warnings = self.kernel.check(parse_state(text, self.state_path), missing="skip")
        return {name: format_value(values) for name, values in saved.items()}, current, warnings

    # -- planning --
    def plan_present(self, wanted, current, apply=True):
        """Everything to do, computed from the live system; changes nothing."""
        saved, saved_current, warnings = self.load_state()
        live_before = {name: format_value(values) for name, values in {**saved_current, **current}.items()}
        previous = {name: saved.get(name, live_before[name]) for name in wanted}
        # Keys this file managed before but no longer: put their replaced value back.
        released = {name: text for name, text in saved.items() if name not in wanted}
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
        after = (render_conf(wanted, self.path), render_state(self.path, previous))
        return self._plan(live_before, writes, after, previous=previous, warnings=warnings)

    def plan_absent(self, apply=True):
        saved, saved_current, warnings = self.load_state()
        live_before = {name: format_value(values) for name, values in saved_current.items()}
        writes = []
        if apply:
            writes = [(name, normalize_value(name, text)) for name, text in saved.items() if live_before[name] != text]
        return self._plan(live_before, writes, (None, None), previous=saved, warnings=warnings)

    def _plan(self, live_before, writes, after, *, previous, warnings):
        file_after, state_after = after
        return {
            "live_before": live_before,
            "writes": writes,
            "files": [
                (self.path, read_text(self.path), file_after),
                (self.state_path, read_text(self.state_path), state_after),
            ],
            "previous": previous,
            "warnings": warnings,
        }

    @staticmethod
    def file_changes(plan):
        return [(path, before, after) for path, before, after in plan["files"] if before != after]

    @classmethod
    def changed(cls, plan):
        return bool(plan["writes"]) or bool(cls.file_changes(plan))

    def diff(self, plan):
        live_after = dict(plan["live_before"])
        for name, values in plan["writes"]:
            live_after[name] = format_value(values)
        _path, file_before, file_after = plan["files"][0]
        return [
            {
                "before_header": self.path,
                "after_header": self.path,
                "before": file_before or "",
                "after": file_after or "",
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
        """Stage the files, write live values (read back each), then move the files into place.

        Staging comes first, so a read-only or full directory fails before anything changes.
        On a later failure exactly what was changed is undone, in reverse order, and ApplyError
        says what was restored (or what could not be).
        """
        staged = self._stage(plan)
        undo = []
        try:
            for name, values in plan["writes"]:
                self._write_live(name, values, plan["live_before"][name], undo)
            for path, tmp, before in staged:
                self._commit(path, tmp, before, undo)
        except (ApplyError, OSError, SysctlError) as exc:
            for _path, tmp, _before in staged:
                if tmp is not None:
                    self.files.discard(tmp)
            message = str(exc) if isinstance(exc, ApplyError) else _os_message(exc)
            raise ApplyError(self._rolled_back(message, undo)) from exc
        return {name: format_value(self.kernel.read(name)) for name in plan["live_before"]}

    def _stage(self, plan):
        """[(path, temp file or None to remove, content before)] for the files that change.

        On failure nothing has changed yet: the temporary files are removed and ApplyError says so.
        """
        staged = []
        try:
            for path, before, after in self.file_changes(plan):
                if after is None:
                    self.files.removable(path)
                    staged.append((path, None, before))
                else:
                    staged.append((path, self.files.stage(path, after), before))
        except OSError as exc:
            for _path, tmp, _before in staged:
                if tmp is not None:
                    self.files.discard(tmp)
            raise ApplyError(f"file: cannot change {path}: {exc.strerror or exc}; nothing was changed") from exc
        return staged

    def _write_live(self, name, values, before, undo):
        try:
            self.kernel.write(name, values)
        except OSError as exc:
            hint = " (the kernel rejected the value: out of its allowed range?)" if exc.errno == errno.EINVAL else ""
            raise ApplyError(f"sysctls: {name}: writing {format_value(values)!r} failed: {exc.strerror}{hint}") from exc
        undo.append(("live", name, before))
        got = self.kernel.read(name)
        if got != tuple(values):
            raise ApplyError(
                f"sysctls: {name}: the kernel changed {format_value(values)!r} to {format_value(got)!r} "
                "(clamped or rounded); ask for a value it keeps as given"
            )

    def _commit(self, path, tmp, before, undo):
        if tmp is None:
            self.files.remove(path)
        else:
            self.files.commit(tmp, path)
        undo.append(("file", path, before))

    def _rolled_back(self, message, undo):
        if not undo:
            return f"{message}; nothing was changed"
        restored, problems = [], []
        for kind, target, before in reversed(undo):
            try:
                if kind == "live":
                    self.kernel.write(target, normalize_value(target, before))
                else:
                    self.files.write(target, before)
                restored.append(target)
            except (OSError, SysctlError) as exc:
                problems.append(f"{target}: {_os_message(exc)}")
        if problems:
            done = ", ".join(restored) or "nothing"
            return f"{message}; ROLLBACK INCOMPLETE: {'; '.join(problems)} (restored: {done})"
        return f"{message}; rolled back: {', '.join(restored)} restored as before"


def _os_message(exc):
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


# ---- one run of the module ---------------------------------------------------


def _present(dropin, params, warnings):
    request = resolve_request(params, dropin.kept() if params.get("keep_existing") else {})
    if not request:
        # Selectors chose nothing (no finding fired, no file to keep): a no-op, never a revert.
        return None, [], {}
    entries = [(name, value, source) for name, (value, _reason, source) in request.items()]
    wanted, current, skipped, check_warnings = dropin.kernel.check(entries)
    warnings.extend(check_warnings)
    reasons = {name: request[name][1] for name in wanted}
    return dropin.plan_present(wanted, current, apply=params["apply"]), skipped, reasons


def _absent(dropin, params, warnings):
    selectors = ("sysctls", "profiles", "from_findings", "orphan_cap", "keep_existing")
    ignored = [name for name in selectors if params.get(name)]
    if ignored:
        warnings.append(f"{', '.join(ignored)} ignored with state=absent: every key the file manages is restored")
    return dropin.plan_absent(apply=params["apply"]), [], {}


def manage(params, check_mode=False, diff=False, mover=os.replace, kernel=None):
    """Run tcp_sysctl: returns (result, warnings). Raises SysctlError or ApplyError with a clear message."""
    check_options(params)
    kernel = kernel or Kernel(on_global_in_namespace=params["on_global_in_namespace"])
    dropin = SysctlDropIn(params["file"], kernel, FileWriter(mover))
    warnings = []
    with NoLock() if check_mode else DropInLock(params["file"], params["lock_timeout"]) as lock:
        try:
            result = _run(dropin, params, check_mode, diff, warnings)
        finally:
            if not (os.path.lexists(dropin.path) or os.path.lexists(dropin.state_path)):
                lock.remove()  # nothing left to guard: no lock file left behind either
    return result, warnings


def _run(dropin, params, check_mode, diff, warnings):
    planner = _present if params["state"] == "present" else _absent
    plan, skipped, reasons = planner(dropin, params, warnings)
    if plan is None:
        return _noop_result(dropin, params)
    warnings.extend(plan["warnings"])
    changed = dropin.changed(plan)
    live = _live_after(plan)
    if changed and not check_mode:
        live = dropin.execute(plan)
    result = _result(dropin, params, plan, changed=changed, live=live, request={"skipped": skipped, "reasons": reasons})
    if diff:
        result["diff"] = dropin.diff(plan)
    return result


def _live_after(plan):
    live = dict(plan["live_before"])
    for name, values in plan["writes"]:
        live[name] = format_value(values)
    return live


def _base_result(dropin, params, changed):
    return {
        "changed": changed,
        "file": dropin.path,
        "state_file": dropin.state_path,
        "namespace": dropin.kernel.namespace,
        "profiles": select_profiles(params) if params["state"] == "present" else [],
        "not_fixed_by_sysctls": not_fixed_by_sysctls(params),
    }


def _noop_result(dropin, params):
    result = _base_result(dropin, params, False)
    result.update({"applied": {}, "reasons": {}, "skipped_sysctls": [], "previous": {}, "before": {}})
    result["changed_sysctls"] = []
    return result


def _result(dropin, params, plan, *, changed, live, request):
    result = _base_result(dropin, params, changed)
    file_values = parse_conf(plan["files"][0][2] or "")
    if params["apply"]:
        applied = {name: live[name] for name in file_values if name in live}
    else:
        applied = file_values
    result.update(
        {
            "applied": applied,
            "reasons": request["reasons"],
            "skipped_sysctls": request["skipped"],
            "previous": plan["previous"],
            "before": plan["live_before"],
            "changed_sysctls": [name for name, _values in plan["writes"]],
        }
    )
    return result
