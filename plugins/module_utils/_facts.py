# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Assemble the `tcp_state` fact dict (schema 1 of DESIGN.md) from the collectors.

normalize_options(params) checks and normalizes module options (ValueError names
the option and its valid values); collect_facts(options) returns the tcp_state
dict of the current network namespace; gather_facts(options) returns the
ansible_facts dict (tcp_state, plus tcp_state_namespaces when the `namespaces`
option asks for other namespaces).
"""

from __future__ import annotations

import os
import time
from datetime import datetime, timezone

from ansible_collections.netstate.tcp.plugins.module_utils import (
    _collect_owners,
    _collect_system,
    _conntrack,
    _diagnose,
    _netns,
    _peer_namespaces,
    _trace,
)
from ansible_collections.netstate.tcp.plugins.module_utils._collect_sockets import (
    STATES,
    collect_sockets,
    read_local_addresses,
)

SCHEMA = 1
FAMILIES = ("ipv4", "ipv6")
DEFAULT_OWNERS = ("CLOSE_WAIT", "LISTEN")
# States in which a socket that survives the interval is a problem worth counting.
PERSISTENT_STATES = ("FIN_WAIT1", "CLOSE_WAIT", "LAST_ACK")
MAX_INTERVAL = 300
MAX_TOP = 10000

DEFAULT_OPTIONS = {
    "top": 10,
    "owners": list(DEFAULT_OWNERS),
    "interval": 0,
    "namespaces": "current",
    "thresholds": {},
    "families": list(FAMILIES),
    "trace": 0,
}


class FactsError(Exception):
    """Facts could not be collected at all (the module fails with this message)."""


def normalize_state(name):
    """'close-wait' / 'Close_Wait' -> 'CLOSE_WAIT'; ValueError for an unknown state."""
    key = str(name).strip().upper().replace("-", "_")
    if key not in STATES:
        raise ValueError(f"owners: unknown TCP state {name!r}; valid states (any case): {', '.join(STATES)}")
    return key


def normalize_options(params=None):
    """Check and normalize module options; raise ValueError naming the option and valid values."""
    params = dict(params or {})
    options = dict(DEFAULT_OPTIONS)
    options.update({key: value for key, value in params.items() if value is not None})

    top = options["top"]
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP:
        raise ValueError(f"top: must be an integer from 0 to {MAX_TOP}, got {top!r}")

    interval = options["interval"]
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0 <= interval <= MAX_INTERVAL:
        raise ValueError(f"interval: must be a number of seconds from 0 to {MAX_INTERVAL}, got {interval!r}")

    owners = options["owners"]
    if isinstance(owners, str):
        owners = [item for item in owners.split(",") if item.strip()]
    if not isinstance(owners, (list, tuple)):
        raise ValueError(f"owners: must be a list of TCP states (valid: {', '.join(STATES)}), got {owners!r}")
    owner_states = []
    # `-a owners=` arrives as [""]: blank entries mean nothing.
    for name in (item for item in owners if not (isinstance(item, str) and not item.strip())):
        state = normalize_state(name)
        if state not in owner_states:
            owner_states.append(state)

    families = options["families"]
    if isinstance(families, str):
        families = [item.strip() for item in families.split(",") if item.strip()]
    if not isinstance(families, (list, tuple)) or not families:
        raise ValueError(f"families: must be a non-empty list of {', '.join(FAMILIES)}, got {families!r}")
    chosen = []
    for family in families:
        key = str(family).strip().lower()
        if key not in FAMILIES:
            raise ValueError(f"families: unknown family {family!r}; valid: {', '.join(FAMILIES)}")
        if key not in chosen:
            chosen.append(key)

    namespaces = options["namespaces"]
    if isinstance(namespaces, str):
        if namespaces.strip().lower() in ("current", "all"):
            namespaces = namespaces.strip().lower()
        else:
            namespaces = [item.strip() for item in namespaces.split(",") if item.strip()]
    if isinstance(namespaces, (list, tuple)):
        if not namespaces or not all(isinstance(item, str) and item for item in namespaces):
            raise ValueError(
                "namespaces: must be 'current', 'all' or a non-empty list of namespace names "
                f"(names in /run/netns or inode:<n>), got {namespaces!r}"
            )
        # The keywords inside a list ([all], [current, blue]) mean what they mean alone; the current
        # namespace is always described, so 'current' adds nothing to a list of names.
        keywords = {item.strip().lower() for item in namespaces} & {"current", "all"}
        names = [item for item in dict.fromkeys(namespaces) if item.strip().lower() not in ("current", "all")]
        namespaces = "all" if "all" in keywords else (names or "current")
    elif namespaces not in ("current", "all"):
        raise ValueError(f"namespaces: must be 'current', 'all' or a list of namespace names, got {namespaces!r}")

    trace = options["trace"]
    if isinstance(trace, bool) or not isinstance(trace, (int, float)) or not 0 <= trace <= _trace.MAX_SECONDS:
        raise ValueError(f"trace: must be a number of seconds from 0 to {_trace.MAX_SECONDS}, got {trace!r}")

    thresholds = options["thresholds"]
    if not isinstance(thresholds, dict):
        raise ValueError(f"thresholds: must be a dictionary, got {thresholds!r}")
    thresholds = _diagnose.validate_thresholds(thresholds)

    return {
        "top": top,
        "owners": owner_states,
        "interval": interval,
        "namespaces": namespaces,
        "thresholds": thresholds,
        "families": chosen,
        "trace": trace,
    }


def _utc_now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def take_sample(options, track):
    """One sample of the calling thread's namespace: sockets + procfs figures."""
    warnings = []
    try:
        sockets = collect_sockets(
            families=tuple(options["families"]),
            top=options["top"],
            owner_states=tuple(options["owners"]),
            track_states=PERSISTENT_STATES if track else (),
        )
    except Exception as err:
        # DiagError, OSError: without the socket dump there are no facts to give.
        raise FactsError(f"cannot collect sockets: {err}") from err
    warnings.extend(sockets.pop("warnings", None) or [])
    system = _collect_system.collect_system(warnings=warnings)
    conntrack, conntrack_warnings = _conntrack.collect_conntrack()
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


def persistent_sockets(before, after):
    """Sockets (matched by cookie) in a PERSISTENT_STATES state in both samples."""
    result = {state: {"count": 0, "send_bytes": 0} for state in PERSISTENT_STATES}
    for cookie, (state, send_bytes) in after.items():
        if cookie in before and state in result:
            result[state]["count"] += 1
            result[state]["send_bytes"] += send_bytes or 0
    return result


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
        persistent = persistent_sockets(first["sockets"].get("_tracked", {}), sockets.get("_tracked", {}))
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


def _resolve_owners(samples, options, warnings):
    """One /proc/*/fd pass for the sockets of every sampled namespace."""
    results = {}
    if not options["owners"]:
        return results
    wanted = set()
    for sample in samples.values():
        for inodes in sample["sockets"].get("_owner_inodes", {}).values():
            wanted.update(inode for inode in inodes if inode)
        wanted.update(item.get("inode") or 0 for item in sample["sockets"].get("listeners", []))
    wanted.discard(0)
    held = _collect_owners.scan_socket_fds(wanted, warnings=warnings) if wanted else {}
    for label, sample in samples.items():
        owner_inodes = {state: [] for state in options["owners"]}
        owner_inodes.update(sample["sockets"].get("_owner_inodes", {}))
        listener_inodes = [item.get("inode") for item in sample["sockets"].get("listeners", [])]
        results[label] = _collect_owners.find_owners(owner_inodes, listener_inodes, top=options["top"], held=held)
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


def gather_facts(options):
    """ansible_facts for the module: {'tcp_state': ..., ['tcp_state_namespaces': ...]}."""
    warnings = []
    targets, current = _targets(options, warnings)
    track = options["interval"] > 0

    def sample_all():
        samples = {}
        for label, ns in targets:
            if ns is None:
                samples[label] = take_sample(options, track)
                continue
            if ns["inode"] == current and "" in samples and samples[""] is not None:
                samples[label] = None  # same as the current namespace: reuse its block
                continue
            try:
                with _netns.entered(ns["path"]):
                    samples[label] = take_sample(options, track)
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
    churn = _trace.churn_window(options["trace"], options["interval"], warnings)
    last = sample_all()
    usable = {label: sample for label, sample in last.items() if sample}
    owners = _resolve_owners(usable, options, warnings)
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


def collect_facts(options=None):
    """The tcp_state dict of the current network namespace."""
    options = normalize_options(options)
    options["namespaces"] = "current"
    return gather_facts(options)["tcp_state"]
