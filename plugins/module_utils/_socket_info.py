# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tcp_socket_info: `ss state X '( sport = :Y )'` as a bounded, filtered listing.

The kernel does the heavy filtering: the state bitmask and the inet_diag
bytecode (ports, addresses) are applied before a socket is copied to user
space.  Owner filters (pids, comms) need /proc/<pid>/fd and are applied here,
on the inodes of the chosen processes only.  At most ``limit`` sockets are kept
(a heap when sorting) while every match is counted.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import socket
import struct

from ansible_collections.netstate.tcp.plugins.module_utils import _diag_filter as df
from ansible_collections.netstate.tcp.plugins.module_utils import _netlink as cs
from ansible_collections.netstate.tcp.plugins.module_utils import _owners, _procfs

PROC = "/proc"
DEFAULT_LIMIT = 100
SORT_KEYS = ("none", "state", "local", "peer", "local_port", "peer_port", "recv_queue", "send_queue", "expires")
# biggest first: the point of sorting by a queue is to see the worst sockets
DESCENDING = ("recv_queue", "send_queue")
TIMERS = {0: None, 1: "retransmit", 2: "keepalive", 3: "time_wait", 4: "zero_window_probe"}

# inet_diag attribute types and idiag_ext request bits (linux/inet_diag.h)
INET_DIAG_MEMINFO = 1
INET_DIAG_INFO = 2
INET_DIAG_SKMEMINFO = 7
DETAIL_EXTENSIONS = (1 << (INET_DIAG_MEMINFO - 1)) | (1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_SKMEMINFO - 1))
SKMEMINFO_FIELDS = (
    "rmem_alloc",
    "rcvbuf",
    "wmem_alloc",
    "sndbuf",
    "fwd_alloc",
    "wmem_queued",
    "optmem",
    "backlog",
    "drops",
)
# struct tcp_info (linux/tcp.h): field -> (offset, struct format); later fields exist on newer kernels only
TCP_INFO_FIELDS = {
    "ca_state": (1, "B"),
    "retransmits": (2, "B"),
    "probes": (3, "B"),
    "backoff": (4, "B"),
    "rto_us": (8, "I"),
    "snd_mss": (16, "I"),
    "rcv_mss": (20, "I"),
    "unacked": (24, "I"),
    "lost": (32, "I"),
    "retrans": (36, "I"),
    "last_data_recv_ms": (52, "I"),
    "pmtu": (60, "I"),
    "rtt_us": (68, "I"),
    "rttvar_us": (72, "I"),
    "snd_ssthresh": (76, "I"),
    "cwnd": (80, "I"),
    "total_retrans": (100, "I"),
    "bytes_acked": (120, "Q"),
    "bytes_received": (128, "Q"),
    "notsent_bytes": (144, "I"),
    "min_rtt_us": (148, "I"),
    "snd_wnd": (228, "I"),
    "rcv_wnd": (232, "I"),
}


class SocketInfoError(ValueError):
    """Invalid options (the message names the option and the valid values)."""


# ---- options ---------------------------------------------------------------
FILTER_OPTIONS = {
    "local_ports": df.parse_port_spec,
    "peer_ports": df.parse_port_spec,
    "local_addresses": df.parse_network,
    "peer_addresses": df.parse_network,
}


def _valid_states(value, errors):
    states = value or ["all"]
    names = []
    for state in [states] if isinstance(states, str) else states:
        if str(state).strip().upper() == "ALL":
            return list(cs.STATES)
        key = cs.normalize_state(str(state))
        if key is None:
            errors.append(f"states: unknown state {state!r}; valid states: all, {', '.join(cs.STATES)}")
        elif key not in names:
            names.append(key)
    return names


def _valid_filter(name, value, errors):
    """One filter option's values, each checked by its parser (the compiler parses them again)."""
    values = list(value or ())
    for item in values:
        try:
            FILTER_OPTIONS[name](item)
        except df.FilterError as exc:
            errors.append(f"{name}: {exc}")
    return values


def _bytecode(values, errors):
    """The inet_diag program of the four filter options (b"" when none), or an error naming them and the limit."""
    try:
        return df.compile_filter(df.build_filter(**values))
    except df.FilterError as exc:
        errors.append(f"{', '.join(name for name in FILTER_OPTIONS if values[name])}: {exc}")
        return b""


def _valid_pids(value, errors):
    pids = []
    for pid in value or ():
        if isinstance(pid, bool) or not str(pid).strip().isdigit() or int(pid) < 1:
            errors.append(f"pids: must be positive integers, got {pid!r}")
        else:
            pids.append(int(pid))
    return pids


def _valid_comms(value, errors):
    """Names as given; a name matches the processes whose comm is its first 15 UTF-8 bytes (_owners.comm_matches)."""
    comms = []
    for comm in value or ():
        if not isinstance(comm, str) or not comm.strip():
            errors.append(f"comms: must be non-empty process names, got {comm!r}")
        else:
            comms.append(comm.strip())
    return comms


def _valid_limit(value, errors):
    limit = DEFAULT_LIMIT if value is None else value
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        errors.append(f"limit: must be an integer >= 0, got {limit!r}")
    return limit


def _valid_sort(value, errors):
    sort = value or "none"
    if sort not in SORT_KEYS:
        errors.append(f"sort: must be one of {', '.join(SORT_KEYS)}, got {sort!r}")
    return sort


def normalize_options(params):
    """Check every option before anything is read; raise SocketInfoError listing the problems."""
    errors = []
    options = {"states": _valid_states(params.get("states"), errors)}
    filters = {name: _valid_filter(name, params.get(name), errors) for name in FILTER_OPTIONS}
    options["bytecode"] = b"" if errors else _bytecode(filters, errors)
    options["pids"] = _valid_pids(params.get("pids"), errors)
    options["comms"] = _valid_comms(params.get("comms"), errors)
    options["limit"] = _valid_limit(params.get("limit"), errors)
    options["sort"] = _valid_sort(params.get("sort"), errors)
    options["details"] = bool(params.get("details"))
    if errors:
        raise SocketInfoError("; ".join(errors))
    return options


# ---- owners -------------------------------------------------------------------
def owner_inodes(pids, comms, proc=PROC):
    """{socket inode: (pid, comm)} of the chosen processes (only their fd dirs are read)."""
    chosen = {pid: None for pid in pids}
    chosen.update(_owners.pids_by_comm(comms, proc))
    held = _owners.scan_socket_fds(_owners.ALL_SOCKETS, proc, pids=sorted(chosen))
    inodes = {}
    for pid in sorted(held):
        raw = chosen[pid] if chosen[pid] is not None else _owners.read_comm_bytes(pid, proc)
        comm = _owners.display_comm(raw)
        for inode in held[pid]:
            inodes.setdefault(inode, (pid, comm))
    return inodes


# ---- decoding -------------------------------------------------------------------
def _address(family, packed):
    return socket.inet_ntop(family, bytes(packed))


def _endpoint(family, address, port):
    return f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"


def decode_tcp_info(raw):
    """The tcp_info fields this module reports (those the running kernel provides)."""
    out = {}
    for name, (offset, fmt) in TCP_INFO_FIELDS.items():
        size = struct.calcsize(fmt)
        if len(raw) >= offset + size:
            out[name] = struct.unpack_from("=" + fmt, raw, offset)[0]
    if "rtt_us" in out:
        out["rtt_ms"] = round(out["rtt_us"] / 1000.0, 3)
    return out


def decode_meminfo(raw):
    """INET_DIAG_SKMEMINFO (u32 array, as `ss -m` prints it) -> dict."""
    count = min(len(raw) // 4, len(SKMEMINFO_FIELDS))
    return dict(zip(SKMEMINFO_FIELDS, struct.unpack_from(f"={count}I", raw)))


def socket_entry(record, family, details=False):
    """One record of iter_diag -> the dict tcp_socket_info returns."""
    state = cs.STATES[record[cs.R_STATE] - 1]
    local = _address(family, record[cs.R_SRC])
    peer = _address(family, record[cs.R_DST])
    entry = {
        "state": state,
        "family": "ipv4" if family == socket.AF_INET else "ipv6",
        "local": _endpoint(family, local, record[cs.R_SPORT]),
        "peer": _endpoint(family, peer, record[cs.R_DPORT]),
        "local_address": local,
        "local_port": record[cs.R_SPORT],
        "peer_address": peer,
        "peer_port": record[cs.R_DPORT],
        # on LISTEN sockets these are the accept queue length and the backlog, not bytes
        "recv_queue": record[cs.R_RQUEUE],
        "send_queue": record[cs.R_WQUEUE],
        "uid": record[cs.R_UID],
        "inode": record[cs.R_INODE],
    }
    if details:
        entry["timer"] = {
            "kind": TIMERS.get(record[cs.R_TIMER], str(record[cs.R_TIMER])),
            "expires_ms": record[cs.R_EXPIRES],
            "retransmits": record[cs.R_RETRANS],
        }
        attrs = cs.parse_attrs(record[cs.R_ATTRS])
        entry["meminfo"] = decode_meminfo(attrs[INET_DIAG_SKMEMINFO]) if INET_DIAG_SKMEMINFO in attrs else None
        entry["tcp_info"] = decode_tcp_info(attrs[INET_DIAG_INFO]) if INET_DIAG_INFO in attrs else None
    return entry


def _sort_key(sort, record, family):
    if sort == "state":
        return record[cs.R_STATE]
    if sort == "local":
        return (family, bytes(record[cs.R_SRC]), record[cs.R_SPORT])
    if sort == "peer":
        return (family, bytes(record[cs.R_DST]), record[cs.R_DPORT])
    if sort == "local_port":
        return record[cs.R_SPORT]
    if sort == "peer_port":
        return record[cs.R_DPORT]
    if sort == "recv_queue":
        return -record[cs.R_RQUEUE]
    if sort == "send_queue":
        return -record[cs.R_WQUEUE]
    return record[cs.R_EXPIRES]


# ---- /proc/net/tcp fallback -------------------------------------------------------
def iter_procfs(family, states_mask, extensions=0, bytecode=b"", *, proc=PROC, warnings=None):
    """Records in iter_diag's layout from /proc/net/tcp{,6} (``_procfs``), for hosts without netlink sock_diag.

    The kernel cannot filter here: the state mask is applied per line and the
    bytecode is run by _diag_filter.run_bytecode, the kernel's algorithm.
    No extensions (tcp_info, memory) are available; ``extensions`` is ignored.
    Malformed lines are counted in one warning appended to ``warnings``.
    """
    del extensions
    for record in _procfs.iter_procfs(family, states_mask, warnings, proc=proc):
        if bytecode and not df.run_bytecode(bytecode, (family, record[1], record[2], record[3], record[4])):
            continue
        yield record


# ---- the query ----------------------------------------------------------------------
def iter_matches(options, owners=None, dump=cs.iter_diag, warnings=None):
    """(family, record) of every socket the filters select (streamed).

    owners: owner_inodes() of the pids/comms options, None when there are none.
    """
    warnings = warnings if warnings is not None else []
    if owners is not None and not owners:
        return
    mask = cs.state_mask(options["states"])
    extensions = DETAIL_EXTENSIONS if options["details"] else 0
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            records = dump(family, mask, extensions, options["bytecode"])
            first = next(records, None)  # netlink refusals surface on the first record
        except cs.DiagUnavailable as exc:
            if family == socket.AF_INET6 and "Address family" in str(exc):
                continue  # IPv6 disabled: no sockets to list
            # netlink refused: the same filters, applied in user space on /proc/net/tcp{,6}
            warnings.append(f"netlink sock_diag unavailable ({exc}); listed from /proc/net/tcp, filtered in user space")
            dump = functools.partial(iter_procfs, warnings=warnings)
            records = dump(family, mask, extensions, options["bytecode"])
            first = next(records, None)
        if first is None:
            continue
        for record in itertools.chain((first,), records):
            if owners is None or record[cs.R_INODE] in owners:
                yield family, record


def query(options, dump=cs.iter_diag):
    # dump: cs.iter_diag (netlink, kernel-filtered) or iter_procfs (fallback)
    """Run tcp_socket_info on normalized options: {matched, sockets, truncated, warnings}."""
    warnings = []
    owners = owner_inodes(options["pids"], options["comms"]) if options["pids"] or options["comms"] else None
    limit, sort = options["limit"], options["sort"]
    matched = 0
    if sort == "none":
        selected = []
        for family, record in iter_matches(options, owners, dump, warnings):
            matched += 1
            if len(selected) < limit:
                selected.append((family, record))
    else:
        # nsmallest keeps a heap of `limit` entries; the sequence number keeps ties in kernel order
        order = itertools.count()
        candidates = []
        for family, record in iter_matches(options, owners, dump, warnings):
            matched += 1
            item = (_sort_key(sort, record, family), next(order), family, record)
            if len(candidates) < limit:
                heapq.heappush(candidates, _Reverse(item))
            elif limit and item[:2] < candidates[0].item[:2]:
                heapq.heapreplace(candidates, _Reverse(item))
        selected = [(r.item[2], r.item[3]) for r in sorted(candidates, key=lambda r: r.item[:2])]
    sockets = []
    for family, record in selected:
        entry = socket_entry(record, family, options["details"])
        if owners is not None and record[cs.R_INODE] in owners:
            pid, comm = owners[record[cs.R_INODE]]
            entry["owner"] = {"pid": pid, "comm": comm}
        sockets.append(entry)
    return {"matched": matched, "sockets": sockets, "truncated": matched > len(sockets), "warnings": warnings}


class _Reverse:
    """Max-heap entry: heapq's root is then the largest kept key, the first to drop."""

    __slots__ = ("item",)

    def __init__(self, item):
        self.item = item

    def __lt__(self, other):
        return other.item[:2] < self.item[:2]
