# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The namespace's nf_conntrack table: size, limit, TCP timeouts and TCP conntrack states.

Python stdlib only (runs on managed nodes, Python 3.7+).

Figures come from /proc/sys/net/netfilter (per network namespace); the TCP
conntrack states from one ctnetlink dump (NETLINK_NETFILTER, IPCTNL_MSG_CT_GET)
decoded as a stream: one list of per-state counters, no object per entry.

This module never makes the kernel load a module.  nfnetlink answers a
request for a subsystem nobody registered with request_module("nfnetlink-subsys-1"),
which loads nf_conntrack_netlink and with it nf_conntrack, and opening a
NETLINK_NETFILTER socket can load nfnetlink itself.  So availability is read
from files first, and the socket is opened only when nf_conntrack_netlink is
already there (see :func:`ctnetlink_dump_allowed`).
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from ansible_collections.netstate.tcp.plugins.module_utils._netlink import (
    NLM_F_DUMP,
    NLM_F_DUMP_INTR,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_NOOP,
    NLMSGERR,
    NLMSGHDR,
    DiagError,
    DiagUnavailable,
    open_diag_socket,
    recv_chunks,
)

# Kernel ABI numbers (include/uapi/linux/netlink.h, netfilter/nfnetlink.h, nfnetlink_conntrack.h).
NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW, IPCTNL_MSG_CT_GET = 0, 1
IPCTNL_MSG_CT_GET_STATS = 5  # the namespace's entry count and limit, without walking the table (Linux 3.7+)
CTA_STATS_GLOBAL_ENTRIES = 1
# Dumped entries arrive as IPCTNL_MSG_CT_NEW messages of the ctnetlink subsystem.
CT_ENTRY_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
CT_GET_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
CT_GET_STATS_TYPE = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS
CTA_PROTOINFO = 4
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
NLMSG_HEAD = struct.Struct("=IHH")  # the nlmsghdr fields the decoder needs: len, type, flags
NFGENMSG = struct.Struct("=BBH")  # nfgen_family, version (NFNETLINK_V0), res_id (big-endian, 0)
NLATTR = struct.Struct("=HH")  # len, type
BE32 = struct.Struct(">I")  # ctnetlink's u32 attributes are big-endian
ATTR_WORD = struct.Struct("=I")  # the same 4 bytes as one word
NFGEN_LEN = NLMSGHDR.size + NFGENMSG.size  # attributes start here

# enum tcp_conntrack (include/uapi/linux/netfilter/nf_conntrack_tcp.h), named as /proc/net/nf_conntrack
# and `conntrack -L` print them; 9 was TCP_CONNTRACK_LISTEN, now SYN_SENT2 (simultaneous open).
TCP_CT_STATES = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
)
# /proc/sys/net/netfilter/nf_conntrack_tcp_timeout_<name>, seconds.
TCP_TIMEOUTS = (
    "syn_sent",
    "syn_recv",
    "established",
    "fin_wait",
    "close_wait",
    "last_ack",
    "time_wait",
    "close",
    "max_retrans",
    "unacknowledged",
)
NETFILTER_SYSCTL_DIR = ("sys", "net", "netfilter")
LAYOUT_CACHE_SIZE = 64  # distinct message layouts remembered by the fast path (hostile input cannot grow it)
MAX_SYSCTL_VALUE = (1 << 63) - 1  # these sysctls are int or unsigned long in the kernel
DUMP_ATTEMPTS = 3  # dumps tried while the kernel flags them NLM_F_DUMP_INTR


# The block of a namespace without a conntrack table (also what `conntrack: false` reports): every figure null.
UNAVAILABLE_BLOCK = {"available": False, **dict.fromkeys(("source", "count", "max", "ratio", "states", "timeouts"))}


class ConntrackUnavailable(DiagUnavailable):
    """ctnetlink cannot be used here (permission, kernel without it)."""


def ctnetlink_dump_allowed(sys_root="/sys", proc_root="/proc", modules_root="/lib/modules", release=None):
    """(True, why) when a ctnetlink request cannot make the kernel load a module; else (False, why).

    Safe when nf_conntrack_netlink is loaded (/sys/module/nf_conntrack_netlink), built
    into the kernel (modules.builtin), or when this kernel cannot load modules at all
    (no /proc/modules and no /proc/sys/kernel/modprobe: built without CONFIG_MODULES;
    or kernel.modules_disabled = 1).
    """
    if os.path.isdir(os.path.join(sys_root, "module", "nf_conntrack_netlink")):
        return True, "nf_conntrack_netlink is loaded"
    if not os.path.exists(os.path.join(proc_root, "modules")) and not os.path.exists(
        os.path.join(proc_root, "sys", "kernel", "modprobe")
    ):
        return True, "the kernel has no module support"
    try:
        with open(os.path.join(proc_root, "sys", "kernel", "modules_disabled"), encoding="ascii") as fh:
            if fh.read().strip() == "1":
                return True, "kernel.modules_disabled is 1"
    except OSError:
        pass
    release = release or os.uname().release
    try:
        with open(os.path.join(modules_root, release, "modules.builtin"), encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.rstrip().endswith("/nf_conntrack_netlink.ko"):
                    return True, "nf_conntrack_netlink is built into the kernel"
    except OSError:
        pass
    return False, (
        "nf_conntrack_netlink is not loaded and a ctnetlink request would load it "
        "(nfnetlink autoloads its subsystems): conntrack states not read"
    )


def build_dump_request(seq=1, family=socket.AF_UNSPEC):
    """Bytes of one IPCTNL_MSG_CT_GET dump request (AF_UNSPEC: IPv4 and IPv6 entries)."""
    header = NLMSGHDR.pack(NFGEN_LEN, CT_GET_TYPE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + NFGENMSG.pack(family, 0, 0)


class ConntrackCounter:
    """Per-state counts of TCP conntrack entries fed from ctnetlink dump datagrams.

    Memory is a 256-slot list and a bounded layout cache, whatever the table size.
    Framing errors (a message running past its datagram, a stream without NLMSG_DONE)
    raise DiagError: nothing after them can be trusted.  A well-framed entry whose
    attributes do not parse is counted in ``malformed`` and skipped.
    """

    def __init__(self, layout_cache_size=LAYOUT_CACHE_SIZE):
        self.layout_cache_size = layout_cache_size  # 0: walk every entry (the reference path)
        self.states = [0] * 256  # indexed by the u8 CTA_PROTOINFO_TCP_STATE
        self.other = 0  # entries of other protocols (no CTA_PROTOINFO_TCP)
        self.malformed = 0
        self.unexpected = 0  # messages of another type inside the dump
        self.interrupted = False  # NLM_F_DUMP_INTR: the table changed while it was dumped
        self.done = False
        self._layouts = {}  # message length -> (struct, expected headers, is_tcp)

    @property
    def tcp_entries(self):
        return sum(self.states)

    def feed(self, chunks):
        """Count the entries of an iterable of datagrams up to NLMSG_DONE; returns self."""
        layouts = self._layouts
        states = self.states
        entry_type = CT_ENTRY_TYPE
        unpack_head = NLMSG_HEAD.unpack_from
        # The TCP layout of the previous entry, tried first: a table is mostly one layout. Its expected
        # fields start with the message length, so a match also proves the message fits (checked first).
        last_unpack, last_expected, last_length = None, None, 0
        for chunk in chunks:
            n = len(chunk)
            off = 0
            while off < n:
                if last_unpack is not None and off + last_length <= n:
                    fields = last_unpack(chunk, off)
                    if fields[:-1] == last_expected:
                        states[fields[-1]] += 1
                        off += (last_length + 3) & ~3
                        continue
                if n - off < 16:
                    raise DiagError(f"ctnetlink dump: {n - off} trailing bytes, not a message header")
                length, typ, flags = unpack_head(chunk, off)
                if length < 16 or off + length > n:
                    raise DiagError(f"ctnetlink dump: message length {length} at offset {off} does not fit")
                if typ == entry_type:
                    layout = layouts.get(length)
                    if layout is not None:
                        fields = layout[0].unpack_from(chunk, off)
                        if layout[2]:
                            # Same headers on the same path as a walked message: same state offset.
                            if fields[:-1] == layout[1]:
                                states[fields[-1]] += 1
                                off += (length + 3) & ~3
                                last_unpack, last_expected, last_length = layout[0].unpack_from, layout[1], length
                                continue
                        elif fields == layout[1]:
                            self.other += 1
                            off += (length + 3) & ~3
                            continue
                    self._walk_entry(chunk, off, length, flags)
                elif typ in (NLMSG_DONE, NLMSG_ERROR):
                    _check_ct_end(chunk, off, length, typ)
                    self.done = True
                    return self
                elif typ != NLMSG_NOOP:
                    self.unexpected += 1
                off += (length + 3) & ~3
        raise DiagError("ctnetlink dump: stream ended without NLMSG_DONE")

    def _walk_entry(self, chunk, off, length, flags):
        """Slow path: walk to CTA_PROTOINFO > CTA_PROTOINFO_TCP > CTA_PROTOINFO_TCP_STATE, remember the layout."""
        if flags & NLM_F_DUMP_INTR:
            self.interrupted = True
        if length < NFGEN_LEN:
            self.malformed += 1
            return
        # The fast path compares each attribute header as one u32 (len | type << 16 read natively).
        headers = [(0, "IHH", (length, CT_ENTRY_TYPE, flags))]
        path = _find_attr(chunk, (off + NFGEN_LEN, off + length), CTA_PROTOINFO, headers, off)
        if path is None:
            self.malformed += 1
            return
        if path is False:
            self._remember(length, headers, False)
            self.other += 1
            return
        tcp = _find_attr(chunk, path, CTA_PROTOINFO_TCP, headers, off)
        if tcp is None:
            self.malformed += 1
            return
        if tcp is False:
            self._remember(length, headers, False)
            self.other += 1
            return
        state = _find_attr(chunk, tcp, CTA_PROTOINFO_TCP_STATE, headers, off)
        if not state or state[1] - state[0] < 1:
            self.malformed += 1
            return
        headers.append((state[0] - off, "B", None))
        self.states[chunk[state[0]]] += 1
        self._remember(length, headers, True)

    def _remember(self, length, headers, is_tcp):
        if len(self._layouts) >= self.layout_cache_size:
            return
        fmt = ["="]
        pos = 0
        expected = []
        for rel, code, values in headers:
            if rel > pos:
                fmt.append(f"{rel - pos}x")
            fmt.append(code)
            pos = rel + struct.calcsize("=" + code)
            if values is not None:
                expected.extend(values)
        self._layouts[length] = (struct.Struct("".join(fmt)), tuple(expected), is_tcp)

    def result(self):
        """{state name: count} for every TCP conntrack state."""
        return {name: self.states[number] for number, name in enumerate(TCP_CT_STATES)}

    def unknown_states(self):
        return sum(self.states[len(TCP_CT_STATES) :])

    def warnings(self):
        out = []
        if self.malformed:
            out.append(
                f"conntrack: skipped {self.malformed} malformed ctnetlink entr{'y' if self.malformed == 1 else 'ies'}"
            )
        if self.unexpected:
            out.append(f"conntrack: skipped {self.unexpected} unexpected message(s) in the ctnetlink dump")
        unknown = self.unknown_states()
        if unknown:
            out.append(f"conntrack: {unknown} TCP entr{'y' if unknown == 1 else 'ies'} with an unknown state number")
        if self.interrupted:
            out.append("conntrack: the table changed during every dump (NLM_F_DUMP_INTR): states may be inconsistent")
        return out


def _find_attr(chunk, span, wanted, headers, msg_off):
    """Walk the attributes in ``span`` (start, end) to the first of type ``wanted``.

    Appends every header read to ``headers`` (offsets relative to ``msg_off``).
    Returns (payload start, payload end); False when absent; None when an attribute
    does not fit (malformed).
    """
    off, end = span
    while off + 4 <= end:
        alen, atype = NLATTR.unpack_from(chunk, off)
        if alen < 4 or off + alen > end:
            return None
        headers.append((off - msg_off, "I", (ATTR_WORD.unpack_from(chunk, off)[0],)))
        if atype & NLA_TYPE_MASK == wanted:
            return off + 4, off + alen
        off += (alen + 3) & ~3
    return False


def _check_ct_end(chunk, off, length, typ):
    """NLMSG_DONE (with its error code, when present) or NLMSG_ERROR at ``off``: raise on an error."""
    if length < 20:
        if typ == NLMSG_ERROR:
            raise DiagError("ctnetlink dump: short NLMSG_ERROR message")
        return
    (err,) = NLMSGERR.unpack_from(chunk, off + 16)
    if err >= 0:
        return
    code = -err
    text = "ctnetlink dump: {}".format(os.strerror(code) if code < 4096 else f"error {code}")
    if code in (errno.EPERM, errno.EACCES, errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENOENT):
        raise ConntrackUnavailable(text)
    raise DiagError(text)


def open_ctnetlink_socket():
    """A NETLINK_NETFILTER socket; only after :func:`ctnetlink_dump_allowed` said yes (it can load nfnetlink)."""
    return open_diag_socket(NETLINK_NETFILTER, "ctnetlink")


def build_stats_request(seq=1):
    """Bytes of one IPCTNL_MSG_CT_GET_STATS request (no dump: one reply message)."""
    header = NLMSGHDR.pack(NFGEN_LEN, CT_GET_STATS_TYPE, NLM_F_REQUEST, seq, 0)
    return header + NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)


def parse_stats_reply(chunk, seq=1):
    """CTA_STATS_GLOBAL_ENTRIES of a reply to :func:`build_stats_request`; None for anything else.

    Anything else (an error such as EPERM, a kernel without the message, a reply that does
    not parse) means: no answer here, the dump decides and reports what goes wrong there.
    """
    if len(chunk) < NFGEN_LEN:
        return None
    length, typ, _flags, reply_seq, _pid = NLMSGHDR.unpack_from(chunk, 0)
    if typ != CT_GET_STATS_TYPE or reply_seq != seq or not NFGEN_LEN <= length <= len(chunk):
        return None
    off = NFGEN_LEN
    while off + NLATTR.size <= length:
        alen, atype = NLATTR.unpack_from(chunk, off)
        if alen < NLATTR.size or off + alen > length:
            return None
        if atype & NLA_TYPE_MASK == CTA_STATS_GLOBAL_ENTRIES:
            return BE32.unpack_from(chunk, off + NLATTR.size)[0] if alen == NLATTR.size + BE32.size else None
        off += (alen + 3) & ~3
    return None


def table_entries(open_socket=open_ctnetlink_socket):
    """The namespace's conntrack entry count as ctnetlink reports it (IPCTNL_MSG_CT_GET_STATS), or None.

    The same permission check as a dump, and no walk of the table: a dump walks every bucket
    of the host-wide hash (262,144 by default) even for a namespace without a single entry.
    """
    try:
        sock = open_socket()
    except (DiagUnavailable, DiagError):
        return None
    try:
        sock.sendall(build_stats_request())
        return parse_stats_reply(next(recv_chunks(sock)))
    except (OSError, DiagError):
        return None
    finally:
        sock.close()


def read_states(open_socket=open_ctnetlink_socket):
    """A counter of the namespace's TCP conntrack states: :func:`dump_ctnetlink`, skipped for an empty table.

    Call only after :func:`ctnetlink_dump_allowed` said yes.  Raises like dump_ctnetlink.
    """
    if table_entries(open_socket) == 0:
        empty = ConntrackCounter()  # what the dump of an empty table gives
        empty.done = True
        return empty
    return dump_ctnetlink(open_socket=open_socket)


def dump_ctnetlink(attempts=DUMP_ATTEMPTS, open_socket=open_ctnetlink_socket):
    """Dump this namespace's conntrack table; a counter (retried while the kernel flags NLM_F_DUMP_INTR).

    Call only after :func:`ctnetlink_dump_allowed` said yes.  Raises ConntrackUnavailable or DiagError.
    ``open_socket`` replaces the NETLINK_NETFILTER socket (tests replay recorded dumps through it).
    """
    counter = None
    for attempt in range(1, attempts + 1):
        sock = open_socket()
        try:
            try:
                sock.sendall(build_dump_request(seq=attempt))
            except OSError as exc:
                raise ConntrackUnavailable(f"ctnetlink request refused: {exc}") from exc
            counter = ConntrackCounter().feed(recv_chunks(sock))
        finally:
            sock.close()
        if not counter.interrupted:
            break
    return counter


def _read_int(path, warnings):
    """Integer in a /proc file; None (and a warning unless the file is absent) otherwise."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            text = fh.read(64).strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        warnings.append(f"conntrack: cannot read {path}: {exc.strerror or exc}")
        return None
    try:
        value = int(text)
    except ValueError:
        warnings.append(f"conntrack: {path} is not an integer: {text[:40]!r}")
        return None
    if not 0 <= value <= MAX_SYSCTL_VALUE:
        warnings.append(f"conntrack: {path} is out of range (0 to {MAX_SYSCTL_VALUE}): {text[:40]}")
        return None
    return value


def read_table_figures(proc_root="/proc", warnings=None):
    """(available, count, max, timeouts) from /proc/sys/net/netfilter of the calling thread's namespace.

    nf_conntrack registers these sysctls in every namespace when it is loaded; without
    them the table does not exist and everything else is None.
    """
    warnings = warnings if warnings is not None else []
    base = os.path.join(proc_root, *NETFILTER_SYSCTL_DIR)
    count_path = os.path.join(base, "nf_conntrack_count")
    if not os.path.exists(count_path):
        return False, None, None, None
    count = _read_int(count_path, warnings)
    limit = _read_int(os.path.join(base, "nf_conntrack_max"), warnings)
    timeouts = {
        name: _read_int(os.path.join(base, f"nf_conntrack_tcp_timeout_{name}"), warnings) for name in TCP_TIMEOUTS
    }
    return True, count, limit, timeouts


def collect_conntrack(proc_root="/proc", sys_root="/sys", modules_root="/lib/modules", dump=None, wanted=True):
    """The ``tcp_state.conntrack`` block of the calling thread's namespace, and warnings.

    Returns ``({available, source, count, max, ratio, states, timeouts}, [warnings])``.
    ``available`` false (all figures None) when nf_conntrack is not loaded, and when not
    ``wanted`` (tcp_state_facts' ``conntrack: false``): then nothing is read and no socket
    is opened, and the block is the same as a namespace without a table.
    ``source`` is "ctnetlink" when the states come from a dump, None when they could
    not be read (states None, a warning says why).  ``ratio`` is count / max (None when
    max is 0: no limit).  ``dump`` replaces :func:`read_states` (tests).
    """
    if not wanted:
        return dict(UNAVAILABLE_BLOCK), []
    warnings = []
    available, count, limit, timeouts = read_table_figures(proc_root, warnings)
    block = {**UNAVAILABLE_BLOCK, "available": available, "count": count, "max": limit, "timeouts": timeouts}
    if not available:
        return block, warnings
    if count is not None and limit:
        block["ratio"] = round(count / limit, 4)
    allowed, why = ctnetlink_dump_allowed(sys_root, proc_root, modules_root)
    if not allowed:
        warnings.append(f"conntrack: {why}")
        return block, warnings
    try:
        counter = (dump or read_states)()
    except (DiagUnavailable, DiagError) as exc:
        warnings.append(f"conntrack: states not read: {exc}")
        return block, warnings
    block["states"] = counter.result()
    block["source"] = "ctnetlink"
    warnings.extend(counter.warnings())
    return block, warnings
