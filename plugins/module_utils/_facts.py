# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Assemble the `tcp_state` fact dict (schema 1 of docs/architecture.md) from the collectors.

normalize_options(params) checks and normalizes module options (ValueError names
the option and its valid values); collect_facts(options) returns the tcp_state
dict of the current network namespace; gather_facts(options) returns the
ansible_facts dict (tcp_state, plus tcp_state_namespaces when the `namespaces`
option asks for other namespaces).
"""

from __future__ import annotations

import copy
import os
import time
from datetime import datetime, timezone

# _trace (trace > 0) and _peer_namespaces (namespaces other than current) are imported where they are used:
# AnsiballZ ships module_utils as source, so every file imported is compiled again on every module run.
from ansible_collections.netstate.tcp.plugins.module_utils import (
    _collect_system,
    _conntrack,
    _diagnose,
    _netns,
    _owners,
)
from ansible_collections.netstate.tcp.plugins.module_utils._netlink import STATES
from ansible_collections.netstate.tcp.plugins.module_utils._netlink import normalize_state as _state_name
from ansible_collections.netstate.tcp.plugins.module_utils._socket_aggregate import (
    collect_sockets,
    read_local_addresses,
)

SCHEMA = 1
FAMILIES = ("ipv4", "ipv6")
# States in which a socket that survives the interval is a problem worth counting.
PERSISTENT_STATES = ("FIN_WAIT1", "CLOSE_WAIT", "LAST_ACK")
MAX_INTERVAL = 300
# The longest `trace` window (seconds); _trace checks its own callers against it too.
MAX_TRACE_SECONDS = 60
MAX_TOP = 10000
NAMESPACE_KEYWORDS = ("current", "all")

# tcp_state_facts' argument_spec, the one place of the options' types, choices and defaults
# (the module passes it to AnsibleModule; normalize_options fills what a direct caller leaves out).
ARGUMENT_SPEC = {
    "top": {"type": "int", "default": 10},
    "owners": {"type": "list", "elements": "str", "default": ["CLOSE_WAIT", "LISTEN"]},
    "interval": {"type": "float", "default": 0},
    "namespaces": {"type": "raw", "default": "current"},
    "thresholds": {"type": "dict"},
    "families": {"type": "list", "elements": "str", "choices": list(FAMILIES), "default": list(FAMILIES)},
    "trace": {"type": "float", "default": 0},
    # false skips the conntrack table: its ctnetlink dump costs about 1.2 s per 262,144 entries on every run
    "conntrack": {"type": "bool", "default": True},
}


class FactsError(Exception):
    """Facts could not be collected at all (the module fails with this message)."""


def normalize_state(name):
    """'close-wait' / 'Close_Wait' -> 'CLOSE_WAIT'; ValueError for an unknown state."""
    key = _state_name(str(name))
    if key is None:
        raise ValueError(f"owners: unknown TCP state {name!r}; valid states (any case): {', '.join(STATES)}")
    return key


def _split_text(value):
    """A comma-separated string (what `-a opt=a,b` gives a direct caller) -> its non-blank items."""
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


def _check_top(top):
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP:
        raise ValueError(f"top: must be an integer from 0 to {MAX_TOP}, got {top!r}")
    return top


def _check_interval(interval):
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval <= MAX_INTERVAL:
        raise ValueError(f"interval: must be a number of seconds from 0 to {MAX_INTERVAL}, got {interval!r}")
    return interval


def _check_owners(owners):
    owners = _split_text(owners)
    if not isinstance(owners, (list, tuple)):
        raise ValueError(f"owners: must be a list of TCP states (valid: {', '.join(STATES)}), got {owners!r}")
    # `-a owners=` arrives as [""]: blank entries mean nothing.
    names = [item for item in owners if not (isinstance(item, str) and not item.strip())]
    return list(dict.fromkeys(normalize_state(name) for name in names))


def _check_families(families):
    families = _split_text(families)
    if not isinstance(families, (list, tuple)) or not families:
        raise ValueError(f"families: must be a non-empty list of {', '.join(FAMILIES)}, got {families!r}")
    chosen = [str(family).strip().lower() for family in families]
    for family, key in zip(families, chosen):
        if key not in FAMILIES:
            raise ValueError(f"families: unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    return list(dict.fromkeys(chosen))


def _namespace_list(names):
    """A list of namespace names -> "all", "current" or the names ("current"/"all" inside mean what they mean alone)."""
    if not names or not all(isinstance(item, str) and item for item in names):
        raise ValueError(
            "namespaces: must be 'current', 'all' or a non-empty list of namespace names "
            f"(names in /run/netns or inode:<n>), got {names!r}"
        )
    # The current namespace is always described, so 'current' adds nothing to a list of names.
    keywords = {item.strip().lower() for item in names} & set(NAMESPACE_KEYWORDS)
    rest = [item for item in dict.fromkeys(names) if item.strip().lower() not in NAMESPACE_KEYWORDS]
    return "all" if "all" in keywords else (rest or "current")


def _check_namespaces(namespaces):
    if isinstance(namespaces, str):
        keyword = namespaces.strip().lower()
        return keyword if keyword in NAMESPACE_KEYWORDS else _namespace_list(_split_text(namespaces))
    if isinstance(namespaces, (list, tuple)):
        return _namespace_list(list(namespaces))
    raise ValueError(f"namespaces: must be 'current', 'all' or a list of namespace names, got {namespaces!r}")


def _check_thresholds(thresholds):
    if thresholds is None:
        thresholds = {}
    if not isinstance(thresholds, dict):
        raise ValueError(f"thresholds: must be a dictionary, got {thresholds!r}")
    return _diagnose.validate_thresholds(thresholds)


def _check_trace(trace):
    if isinstance(trace, bool) or not isinstance(trace, (int, float)) or not 0 <= trace <= MAX_TRACE_SECONDS:
        raise ValueError(f"trace: must be a number of seconds from 0 to {MAX_TRACE_SECONDS}, got {trace!r}")
    return trace


def _check_conntrack(conntrack):
    if not isinstance(conntrack, bool):
        raise ValueError(f"conntrack: must be true or false, got {conntrack!r}")
    return conntrack


# One semantic check per option (AnsibleModule has done the typing for the module already).
_OPTION_CHECKS = {
    "top": _check_top,
    "owners": _check_owners,
    "interval": _check_interval,
    "namespaces": _check_namespaces,
    "thresholds": _check_thresholds,
    "families": _check_families,
    "trace": _check_trace,
    "conntrack": _check_conntrack,
}


def normalize_options(params=None):
    """Check and normalize module options; raise ValueError naming the option and valid values.

    Options left out or None take ARGUMENT_SPEC's defaults; keys that are no option are ignored.
    """
    params = params or {}
    options = {}
    for name, check in _OPTION_CHECKS.items():
        value = params.get(name)
        options[name] = check(copy.deepcopy(ARGUMENT_SPEC[name].get("default")) if value is None else value)
    return options


def _utc_now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def take_sample(options, track, persistent_before=None, owners=True, record_tap=None):
    """One sample of the calling thread's namespace: sockets + procfs figures.

    ``track``: keep the cookies of PERSISTENT_STATES sockets (8 bytes each) and, with
    ``persistent_before`` (those of an earlier sample), count the sockets in both.
    ``owners``: collect the inodes of the ``owners`` states (only the last sample needs them).
    ``record_tap``: a second consumer of the same dump (see _socket_aggregate.collect_sockets).
    """
    warnings = []
    try:
        sockets = collect_sockets(
            families=tuple(options["families"]),
            top=options["top"],
            owner_states=tuple(options["owners"]) if owners else (),
            track_states=PERSISTENT_STATES if track else (),
            persistent_before=persistent_before,
            record_tap=record_tap,
        )
    except Exception as err:
        # DiagError, OSError: without the socket dump there are no facts to give.
        raise FactsError(f"cannot collect sockets: {err}") from err
    warnings.extend(sockets.pop("warnings", None) or [])
    system = _collect_system.collect_system(warnings=warnings)
    conntrack, conntrack_warnings = _conntrack.collect_conntrack(wanted=options["conntrack"])
    warnings.extend(conntrack_warnings)
    try:
        inode = _netns.current_inode()
    except OSError as err:
        inode = None
        warnings.append(f"namespace inode: {err.strerror or err}")
    return {
        "time": time.monotonic(),
        "collected_at": _utc_now(),
        "sockets": sockets,
        "system": system,
        "conntrack": conntrack,
        # The namespace's own addresses name peers in other namespaces (only when several are described).
        "addresses": read_local_addresses() if options["namespaces"] != "current" else (),
        "inode": inode,
        "warnings": warnings,
    }


def build_block(first, last, options, *, owners_result=None, name=None, host_figures=True, churn=None):
    """The tcp_state dict from the last sample (and the first one for rates/persistent)."""
    sockets = last["sockets"]
    system = last["system"]
    warnings = list(last["warnings"])
    owners, listener_owner = owners_result or ({state: [] for state in options["owners"]}, {})
    listeners = []
    for listener in sockets.get("listeners", []):
        entry = {key: value for key, value in listener.items() if not key.startswith("_")}
        entry["owner"] = listener_owner.get(listener.get("inode"))
        listeners.append(entry)
    sockstat = dict(system["sockstat"])
    if not host_figures:
        # Host-wide figures are reported once, in the initial namespace's block.
        for key, scope in sockstat["scope"].items():
            if scope == "host":
                sockstat[key] = None
    states = sockets.get("states", {})
    pressure = _collect_system.compute_pressure(sockstat, system["sysctls"], states, sockets.get("_busiest_tuple"))
    rates = {}
    persistent = {}
    elapsed = 0
    if first is not None:
        elapsed = round(last["time"] - first["time"], 3)
        rates = _collect_system.counter_rates(first["system"]["counters"], system["counters"], elapsed)
        # Counted while the last sample was aggregated, against the first sample's cookies.
        persistent = sockets.get("_persistent") or {state: {"count": 0, "send_bytes": 0} for state in PERSISTENT_STATES}
    block = {
        "schema": SCHEMA,
        "collected_at": last["collected_at"],
        "source": sockets.get("source"),
        "kernel": os.uname().release,
        "namespace": {"inode": last["inode"], "name": name, "initial": system["initial"]},
        "total": sockets.get("total", 0),
        "states": states,
        "families": sockets.get("families", {}),
        "queues": sockets.get("queues", {}),
        "listeners": listeners,
        "timers": sockets.get("timers", {}),
        "top": sockets.get("top", {}),
        "owners": owners,
        "sockstat": sockstat,
        "counters": system["counters"],
        "rates": rates,
        "persistent": persistent,
        "interval": elapsed,
        "sysctls": system["sysctls"],
        "effective": _collect_system.effective_settings(system["sysctls"]),
        "pressure": pressure,
        "conntrack": last.get("conntrack"),
        "findings": [],
        "warnings": warnings,
    }
    if churn is not None:
        block["churn"] = churn
    block["findings"] = _diagnose.diagnose(block, options["thresholds"])
    return block


def _resolve_owners(samples, options, warnings, scan):
    """One /proc/*/fd pass (`scan`, from _owners.start_scan) for the sockets of every sampled namespace."""
    results = {}
    if not options["owners"]:
        return results
    wanted = set()
    for sample in samples.values():
        for inodes in sample["sockets"].get("_owner_inodes", {}).values():
            wanted.update(inode for inode in inodes if inode)
        wanted.update(item.get("inode") or 0 for item in sample["sockets"].get("listeners", []))
    wanted.discard(0)
    held = scan.result(wanted, warnings) if wanted else {}
    for label, sample in samples.items():
        owner_inodes = {state: [] for state in options["owners"]}
        owner_inodes.update(sample["sockets"].get("_owner_inodes", {}))
        listener_inodes = [item.get("inode") for item in sample["sockets"].get("listeners", [])]
        results[label] = _owners.find_owners(owner_inodes, listener_inodes, top=options["top"], held=held)
    return results


def _targets(options, warnings):
    """[(label, namespace dict or None for current)] to sample, current first."""
    current = _netns.current_inode()
    targets = [("", None)]
    if options["namespaces"] == "current":
        return targets, current
    available = _netns.list_namespaces(warnings=warnings)
    if options["namespaces"] == "all":
        chosen = available
    else:
        by_label = {}
        for ns in available:
            by_label[_netns.namespace_label(ns["inode"], ns["name"])] = ns
            by_label[_netns.namespace_label(ns["inode"])] = ns
        chosen = []
        for name in options["namespaces"]:
            if name not in by_label:
                names = sorted(ns["name"] for ns in available if ns["name"])
                raise ValueError(
                    f"namespaces: no network namespace named {name!r}; available names: "
                    f"{', '.join(names) or '(none in /run/netns)'} (or inode:<n>, 'current', 'all')"
                )
            chosen.append(by_label[name])
    for ns in chosen:
        targets.append((_netns.namespace_label(ns["inode"], ns["name"]), ns))
    return targets, current


def _name_peer_namespaces(blocks, samples, targets, current, name=None):
    """Peers owned by another of the sampled namespaces get its {inode, name} and container."""
    from ansible_collections.netstate.tcp.plugins.module_utils import _peer_namespaces  # noqa: PLC0415

    listed = []
    pids = {current: os.getpid()}
    for label, sample in samples.items():
        ns = targets.get(label)
        if ns is None:
            listed.append((sample["inode"], name, sample.get("addresses") or ()))
            continue
        listed.append((ns["inode"], ns["name"], sample.get("addresses") or ()))
        if ns.get("pid"):
            pids.setdefault(ns["inode"], ns["pid"])
    owners = _peer_namespaces.address_owners(listed)
    container_of = _peer_namespaces.ContainerLookup(pids)
    for block in blocks.values():
        _peer_namespaces.name_peers(block, owners, container_of)


def _churn_window(options, warnings):
    """Wait once for max(trace, interval) before the last sample; see _trace.churn_window (None without trace)."""
    if not options["trace"]:
        if options["interval"]:
            time.sleep(options["interval"])
        return None
    from ansible_collections.netstate.tcp.plugins.module_utils._trace import churn_window  # noqa: PLC0415

    return churn_window(options["trace"], options["interval"], warnings)


def gather_facts(options, record_tap=None):
    """ansible_facts for the module: {'tcp_state': ..., ['tcp_state_namespaces': ...]}.

    record_tap: sees the records of the current namespace's last dump (see take_sample).
    """
    warnings = []
    targets, current = _targets(options, warnings)
    track = options["interval"] > 0

    def sample_all(first=None):
        samples = {}
        for label, ns in targets:
            before = first.get(label) if first else None
            # The first of two samples keeps only the tracked cookies: owners come from the last one.
            kwargs = {
                "persistent_before": before["sockets"]["_tracked"] if before else None,
                "owners": first is not None or not track,
            }
            if ns is None:
                tap = record_tap if first is not None or not track else None
                samples[label] = take_sample(options, track, record_tap=tap, **kwargs)
                continue
            if ns["inode"] == current and "" in samples and samples[""] is not None:
                samples[label] = None  # same as the current namespace: reuse its block
                continue
            try:
                with _netns.entered(ns["path"]):
                    samples[label] = take_sample(options, track, **kwargs)
            except _netns.NetnsError as err:
                if "return to the original" in str(err):
                    raise
                warnings.append(f"namespace {label}: {err}")
                samples[label] = False
            except FactsError as err:
                warnings.append(f"namespace {label}: {err}")
                samples[label] = False
        return samples

    first = None
    if track:
        first = sample_all()
    churn = _churn_window(options, warnings)
    # the owner pass runs beside the last sample's dumps (in a child process on a host with many fds)
    scan = _owners.start_scan() if options["owners"] else None
    try:
        last = sample_all(first)
        usable = {label: sample for label, sample in last.items() if sample}
        owners = _resolve_owners(usable, options, warnings, scan)
    finally:
        if scan is not None:
            scan.close()
    blocks = {}
    current_name = _netns.namespace_name(current) if last[""]["inode"] == current else None
    for label, sample in usable.items():
        before = first.get(label) if first else None
        ns = dict(targets)[label]
        name = current_name if ns is None else ns["name"]
        host_figures = ns is None or sample["system"]["initial"]
        blocks[label] = build_block(
            before or None,
            sample,
            options,
            owners_result=owners.get(label),
            name=name,
            host_figures=host_figures,
            churn=churn(sample["inode"], name, options["top"]) if churn else None,
        )
    if options["namespaces"] != "current":
        _name_peer_namespaces(blocks, usable, dict(targets), current, name=current_name)
    tcp_state = blocks[""]
    # With `interval` both samples meet the same unreadable namespace: say each thing once.
    tcp_state["warnings"] = list(dict.fromkeys(warnings + tcp_state["warnings"]))
    facts = {"tcp_state": tcp_state}
    if options["namespaces"] != "current":
        namespaces = {}
        for label, ns in targets[1:]:
            if label in blocks:
                namespaces[label] = blocks[label]
            elif last.get(label) is None and ns["inode"] == current:
                namespaces[label] = tcp_state
        facts["tcp_state_namespaces"] = namespaces
    return facts


def collect_facts(options=None, record_tap=None):
    """The tcp_state dict of the current network namespace (record_tap: see take_sample)."""
    options = normalize_options(options)
    options["namespaces"] = "current"
    return gather_facts(options, record_tap)["tcp_state"]
