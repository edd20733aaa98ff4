# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""inet_diag bytecode: let the kernel drop the sockets a query does not want.

The kernel runs the INET_DIAG_REQ_BYTECODE program (linux/inet_diag.h) on
every socket of a sock_diag dump before it is copied to user space, so a
filtered dump of a busy host costs a fraction of a full one.

A program is a sequence of ops ``struct inet_diag_bc_op {u8 code; u8 yes; u16 no}``.
The kernel (net/ipv4/inet_diag.c, inet_diag_bc_run) evaluates the op at the
current offset; on success it advances ``yes`` bytes, otherwise ``no`` bytes.
The socket is accepted when the walk ends exactly at the end of the program;
jumping past the end (by convention to end + 4) rejects it.
inet_diag_bc_audit refuses a program unless every ``yes``/``no`` is a multiple
of 4, at least the op's own length, at most ``remaining + 4``, and every ``no``
lands on an op boundary.

Compiled blocks follow iproute2's ss (ssfilter_bytecompile): a block of length
L falls through to offset L when it matches and jumps to L + 4 when it does not.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

# enum in linux/inet_diag.h (kernel order)
BC_NOP = 0
BC_JMP = 1
BC_S_GE = 2
BC_S_LE = 3
BC_D_GE = 4
BC_D_LE = 5
BC_AUTO = 6
BC_S_COND = 7
BC_D_COND = 8
BC_DEV_COND = 9
BC_MARK_COND = 10
BC_S_EQ = 11
BC_D_EQ = 12

AF_UNSPEC = 0
AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6

_OP = struct.Struct("=BBH")  # struct inet_diag_bc_op, host byte order
_HOSTCOND = struct.Struct("=BBxxi")  # struct inet_diag_hostcond without addr[]
_ADDR_LEN = {AF_UNSPEC: 0, AF_INET: 4, AF_INET6: 16}
_PORT_OPS = {BC_S_GE, BC_S_LE, BC_D_GE, BC_D_LE, BC_S_EQ, BC_D_EQ}
_SIDES = ("local", "peer")


class FilterError(ValueError):
    """A filter value the kernel cannot express (bad port, address or CIDR)."""


# ---- expression tree ---------------------------------------------------
# Nodes are plain tuples so they compare and print well in tests:
#   ("port", side, code, port)        side: local|peer; code: ge|le
#   ("host", side, network|None, port) port -1 for any
#   ("auto",)                          local port was bound automatically
#   ("and", a, b) ("or", a, b) ("not", a)


def port_range(side, low, high):
    """Node matching ``low <= port <= high`` on the local or peer side."""
    _check_side(side)
    if low == high:
        # ss compiles `sport = :P` as a hostcond with AF_UNSPEC: S_EQ only exists since Linux 4.18
        return ("host", side, None, low)
    return ("and", ("port", side, "ge", low), ("port", side, "le", high))


def address(side, network, port=-1):
    """Node matching an address or CIDR (``ipaddress`` network) on one side."""
    _check_side(side)
    return ("host", side, network, port)


def any_of(nodes):
    """OR of nodes; None for an empty list (no condition)."""
    result = None
    for node in nodes:
        result = node if result is None else ("or", result, node)
    return result


def all_of(nodes):
    """AND of the nodes that are not None; None when nothing is left."""
    result = None
    for node in nodes:
        if node is None:
            continue
        result = node if result is None else ("and", result, node)
    return result


def _check_side(side):
    if side not in _SIDES:
        raise FilterError(f"side must be one of {', '.join(_SIDES)}, got {side!r}")


# ---- user values ----------------------------------------------------------
def parse_port_spec(value):
    """``80``, ``"80"`` or ``"8000-8100"`` -> (low, high), each in 1..65535."""
    if isinstance(value, bool):
        raise FilterError(f"port must be an integer 1..65535 or a range LOW-HIGH, got {value!r}")
    if isinstance(value, int):
        low = high = value
    elif isinstance(value, str):
        text = value.strip()
        low_text, sep, high_text = text.partition("-")
        try:
            low = int(low_text)
            high = int(high_text) if sep else low
        except ValueError:
            raise FilterError(f"port must be an integer 1..65535 or a range LOW-HIGH, got {value!r}") from None
    else:
        raise FilterError(f"port must be an integer 1..65535 or a range LOW-HIGH, got {value!r}")
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        raise FilterError(f"port must be within 1..65535, got {value!r}")
    if low > high:
        raise FilterError(f"port range must be LOW-HIGH with LOW <= HIGH, got {value!r}")
    return low, high


def parse_network(value):
    """An address or CIDR string -> ipaddress network (host bits must be zero)."""
    try:
        return ipaddress.ip_network(str(value).strip(), strict=True)
    except ValueError as exc:
        raise FilterError(f"not an IPv4/IPv6 address or CIDR: {value!r} ({exc})") from None


def build_filter(local_ports=(), peer_ports=(), local_addresses=(), peer_addresses=()):
    """The expression for the tcp_socket_info options (AND of ORs), or None."""
    return all_of(
        [
            any_of(port_range("local", *parse_port_spec(p)) for p in local_ports),
            any_of(port_range("peer", *parse_port_spec(p)) for p in peer_ports),
            any_of(address("local", parse_network(a)) for a in local_addresses),
            any_of(address("peer", parse_network(a)) for a in peer_addresses),
        ]
    )


# ---- compiler -------------------------------------------------------------
# The program travels in one netlink attribute, whose length is a u16 that counts its 4-byte header.
MAX_BYTECODE = 0xFFFF - 4
TOO_LARGE = (
    f"filter too large: the kernel takes at most {MAX_BYTECODE} bytes of inet_diag bytecode (a port costs 16, "
    "a port range 20, an IPv4 address 20, an IPv6 address 32); use fewer values, port ranges or wider CIDRs"
)


def compile_filter(node):
    """Compile an expression into INET_DIAG_REQ_BYTECODE bytes (b"" for None).

    FilterError (TOO_LARGE) when the program does not fit one netlink attribute
    (or a jump does not fit the ops' 16-bit offsets).
    """
    if node is None:
        return b""
    try:
        code = bytes(_compile(node))
    except struct.error:  # a jump past 65535 bytes: the program is too large anyway
        raise FilterError(TOO_LARGE) from None
    if len(code) > MAX_BYTECODE:
        raise FilterError(TOO_LARGE)
    return code


def _compile_port(side, cmp, port):
    code = {("local", "ge"): BC_S_GE, ("local", "le"): BC_S_LE, ("peer", "ge"): BC_D_GE, ("peer", "le"): BC_D_LE}[
        (side, cmp)
    ]
    return bytearray(_OP.pack(code, 8, 12) + _OP.pack(BC_NOP, 0, port))


def _compile_host(side, network, port):
    if network is None:
        family, prefix, addr = AF_UNSPEC, 0, b""
    else:
        family = AF_INET if network.version == 4 else AF_INET6
        prefix, addr = network.prefixlen, network.network_address.packed
    length = _OP.size + _HOSTCOND.size + len(addr)
    code = BC_S_COND if side == "local" else BC_D_COND
    return bytearray(_OP.pack(code, length, length + 4) + _HOSTCOND.pack(family, prefix, port) + addr)


def _compile_and(first, second):
    # first's "no match" exits land on its end + 4: move them past second as well
    _relocate_fail_exits(first, len(second))
    return first + second


def _compile_or(first, second):
    # first fails -> its end + 4 is the start of second; first matches -> jump over second
    return first + bytearray(_OP.pack(BC_JMP, 4, len(second) + 4)) + second


def _compile_not(inner):
    # inner matches -> falls onto the JMP -> lands at end + 4 (no match);
    # inner fails -> lands at end + 4 of inner = end of this block (match)
    return inner + bytearray(_OP.pack(BC_JMP, 4, 8))


_LEAVES = {
    "port": _compile_port,
    "host": _compile_host,
    "auto": lambda: bytearray(_OP.pack(BC_AUTO, 4, 8)),
}
_COMBINERS = {"and": _compile_and, "or": _compile_or, "not": _compile_not}


def _compile(root):
    """Post-order walk with an explicit stack: any_of() of thousands of values nests that deep."""
    compiled = []
    pending = [(root, False)]
    while pending:
        node, children_done = pending.pop()
        kind = node[0]
        if kind in _LEAVES:
            compiled.append(_LEAVES[kind](*node[1:]))
        elif kind not in _COMBINERS:
            raise FilterError(f"unknown filter node {kind!r}")
        elif children_done:
            count = len(node) - 1
            parts = compiled[-count:]
            del compiled[-count:]
            compiled.append(_COMBINERS[kind](*parts))
        else:
            pending.append((node, True))
            # reversed: the first child is compiled first
            pending.extend((child, False) for child in reversed(node[1:]))
    return compiled[0]


def _relocate_fail_exits(code, extra):
    offset = 0
    length = len(code)
    while offset < length:
        op_code, yes, no = _OP.unpack_from(code, offset)
        if op_code != BC_NOP and no == length - offset + 4:
            _OP.pack_into(code, offset, op_code, yes, no + extra)
        offset += yes


# ---- reference interpreter and audit (mirror net/ipv4/inet_diag.c) ----------
def _bits_match(a, b, bits):
    whole, rest = divmod(bits, 8)
    if a[:whole] != b[:whole]:
        return False
    if rest:
        mask = (0xFF << (8 - rest)) & 0xFF
        return (a[whole] & mask) == (b[whole] & mask)
    return True


def run_bytecode(code, sock, autobound=False):
    """Evaluate like inet_diag_bc_run: True when the socket passes the filter.

    ``sock`` is ``(family, src, sport, dst, dport)`` with packed addresses (4 or 16 bytes).  Used where the
    kernel cannot filter (the procfs fallback) and by the tests.
    """
    family, src, sport, dst, dport = sock
    offset, length = 0, len(code)
    while offset < length:
        op_code, yes, no = _OP.unpack_from(code, offset)
        ok = True
        if op_code == BC_JMP:
            ok = False
        elif op_code in _PORT_OPS:
            port = _OP.unpack_from(code, offset + 4)[2]
            value = sport if op_code in (BC_S_GE, BC_S_LE, BC_S_EQ) else dport
            ok = (
                value >= port
                if op_code in (BC_S_GE, BC_D_GE)
                else value <= port
                if op_code in (BC_S_LE, BC_D_LE)
                else value == port
            )
        elif op_code == BC_AUTO:
            ok = bool(autobound)
        elif op_code in (BC_S_COND, BC_D_COND):
            cfamily, prefix, cport = _HOSTCOND.unpack_from(code, offset + 4)
            caddr = code[offset + 12 : offset + 12 + _ADDR_LEN.get(cfamily, 0)]
            local = op_code == BC_S_COND
            addr = src if local else dst
            ok = _host_matches((cfamily, prefix, cport, caddr), family, addr, sport if local else dport)
        offset += yes if ok else no
    return offset == length


def _host_matches(cond, family, addr, port):
    cfamily, prefix, cport, caddr = cond
    if cport not in (-1, port):
        return False
    if cfamily not in (AF_UNSPEC, family):
        # an IPv4 condition matches IPv4-mapped IPv6 sockets (::ffff:a.b.c.d)
        return (
            family == AF_INET6
            and cfamily == AF_INET
            and addr[:12] == b"\0" * 10 + b"\xff\xff"
            and _bits_match(addr[12:], caddr, prefix)
        )
    return prefix == 0 or _bits_match(addr, caddr, prefix)


def _lands_on_op(code, target_remaining):
    """Whether some op starts where `target_remaining` bytes are left (inet_diag_bc_audit's valid_cc)."""
    total = len(code)
    offset = 0
    while offset <= total:
        remaining = total - offset
        if target_remaining >= remaining:
            return target_remaining == remaining
        yes = _OP.unpack_from(code, offset)[1]
        if yes < 4 or yes & 3:
            return False
        offset += yes
    return False


def _hostcond_len(code, offset, remaining):
    if remaining < _OP.size + _HOSTCOND.size:
        raise FilterError(f"truncated hostcond at {offset}")
    cfamily, prefix = _HOSTCOND.unpack_from(code, offset + 4)[:2]
    if cfamily not in _ADDR_LEN:
        raise FilterError(f"bad hostcond family {cfamily} at {offset}")
    min_len = _OP.size + _HOSTCOND.size + _ADDR_LEN[cfamily]
    if remaining < min_len or prefix > 8 * _ADDR_LEN[cfamily]:
        raise FilterError(f"bad hostcond at {offset}")
    return min_len


def _op_len(code, offset, op_code, remaining):
    """The op's own length, checked like the kernel checks it."""
    if op_code in (BC_S_COND, BC_D_COND):
        return _hostcond_len(code, offset, remaining)
    if op_code in _PORT_OPS:
        if remaining < 2 * _OP.size:
            raise FilterError(f"truncated port comparison at {offset}")
        return 2 * _OP.size
    if op_code not in (BC_NOP, BC_JMP, BC_AUTO):
        raise FilterError(f"unsupported op {op_code} at {offset}")
    return _OP.size


def audit_bytecode(code):
    """Raise FilterError where inet_diag_bc_audit would answer -EINVAL."""
    total = len(code)
    offset = 0
    while offset < total:
        remaining = total - offset
        if remaining < _OP.size:
            raise FilterError(f"truncated op at {offset}")
        op_code, yes, no = _OP.unpack_from(code, offset)
        min_len = _op_len(code, offset, op_code, remaining)
        if op_code != BC_NOP:
            if no < min_len or no > remaining + 4 or no & 3:
                raise FilterError(f"bad 'no' jump {no} at {offset}")
            if no < remaining and not _lands_on_op(code, remaining - no):
                raise FilterError(f"'no' jump {no} at {offset} lands inside an op")
        if yes < min_len or yes > remaining + 4 or yes & 3:
            raise FilterError(f"bad 'yes' jump {yes} at {offset}")
        offset += yes
    if offset != total:
        raise FilterError("program does not end on an op boundary")
