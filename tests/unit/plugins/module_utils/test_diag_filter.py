"""inet_diag bytecode compiler: audited like the kernel, evaluated like the kernel.

The reference for "what should match" is an independent predicate written with
``ipaddress`` (not the bytecode); the kernel itself is compared in
tests/integration/test_tcp_socket_info.py against ss.
"""

from __future__ import annotations

import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.netstate.tcp.plugins.module_utils import _diag_filter as df

PORTS = st.integers(min_value=1, max_value=65535)


def _entry(family, src, sport, dst, dport):
    return family, ipaddress.ip_address(src).packed, sport, ipaddress.ip_address(dst).packed, dport


def _in(addr_bytes, family, network):
    addr = ipaddress.ip_address(addr_bytes)
    if network.version == 4 and family == socket.AF_INET6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.version == network.version and addr in network


def test_port_equal_compiles_like_ss():
    # ss -tan '( sport = :8080 )' emits S_COND, yes=12, no=16, hostcond{AF_UNSPEC, 0, 8080}
    code = df.compile_filter(df.port_range("local", 8080, 8080))
    assert code == bytes([df.BC_S_COND, 12]) + (16).to_bytes(2, "little") + bytes([0, 0, 0, 0]) + (8080).to_bytes(
        4, "little", signed=True
    )
    df.audit_bytecode(code)


def test_empty_filter_is_empty_program():
    assert df.compile_filter(df.build_filter()) == b""


@pytest.mark.parametrize(
    ("value", "expected"),
    [(80, (80, 80)), ("443", (443, 443)), ("8000-8100", (8000, 8100)), (" 1-65535 ", (1, 65535))],
)
def test_parse_port_spec(value, expected):
    assert df.parse_port_spec(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "within 1..65535"),
        (65536, "within 1..65535"),
        ("9000-80", "LOW <= HIGH"),
        ("http", "integer 1..65535"),
        (True, "integer 1..65535"),
        (1.5, "integer 1..65535"),
    ],
)
def test_parse_port_spec_rejects(value, message):
    with pytest.raises(df.FilterError, match=message):
        df.parse_port_spec(value)


@pytest.mark.parametrize("value", ["10.0.0.1/8", "300.1.1.1", "fe80::/129", "example.org"])
def test_parse_network_rejects(value):
    with pytest.raises(df.FilterError, match="address or CIDR"):
        df.parse_network(value)


@pytest.mark.parametrize(
    "code",
    [
        bytes([df.BC_S_GE, 8, 12, 0]),  # truncated port comparison
        bytes([df.BC_JMP, 4, 6, 0]),  # jump not a multiple of 4
        bytes([df.BC_JMP, 4, 12, 0]),  # jump past end + 4
        bytes([df.BC_MARK_COND + 10, 4, 8, 0]),  # unknown op
        # jump into the middle of the port comparison's payload
        bytes([df.BC_JMP, 4, 8, 0, df.BC_S_GE, 8, 12, 0, 0, 0, 80, 0]),
    ],
)
def test_audit_rejects_what_the_kernel_rejects(code):
    with pytest.raises(df.FilterError):
        df.audit_bytecode(code)


ADDRS4 = st.sampled_from(["127.0.0.1", "10.1.2.3", "10.1.200.3", "192.0.2.7", "0.0.0.0"])
ADDRS6 = st.sampled_from(["::1", "2001:db8::5", "2001:db8:1::5", "::ffff:10.1.2.3", "::ffff:192.0.2.7", "::"])
NETS = st.sampled_from(
    ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.3/32", "192.0.2.0/25", "0.0.0.0/0", "2001:db8::/32", "2001:db8::/48", "::1"]
)


@st.composite
def sockets(draw):
    if draw(st.booleans()):
        return _entry(socket.AF_INET, draw(ADDRS4), draw(PORTS), draw(ADDRS4), draw(PORTS))
    return _entry(socket.AF_INET6, draw(ADDRS6), draw(PORTS), draw(ADDRS6), draw(PORTS))


PORT_SPECS = st.one_of(
    PORTS,
    st.tuples(PORTS, PORTS).map(lambda t: f"{min(t)}-{max(t)}"),
)


@settings(max_examples=400, deadline=None)
@given(
    local_ports=st.lists(PORT_SPECS, max_size=3),
    peer_ports=st.lists(PORT_SPECS, max_size=3),
    local_addresses=st.lists(NETS, max_size=2),
    peer_addresses=st.lists(NETS, max_size=2),
    sock=sockets(),
)
def test_compiled_filter_matches_reference_predicate(local_ports, peer_ports, local_addresses, peer_addresses, sock):
    code = df.compile_filter(df.build_filter(local_ports, peer_ports, local_addresses, peer_addresses))
    df.audit_bytecode(code)
    family, src, sport, dst, dport = sock

    def port_ok(specs, port):
        return not specs or any(lo <= port <= hi for lo, hi in map(df.parse_port_spec, specs))

    def addr_ok(nets, addr):
        return not nets or any(_in(addr, family, ipaddress.ip_network(n)) for n in nets)

    expected = (
        port_ok(local_ports, sport)
        and port_ok(peer_ports, dport)
        and addr_ok(local_addresses, src)
        and addr_ok(peer_addresses, dst)
    )
    assert df.run_bytecode(code, sock) is expected


LEAVES = st.one_of(
    st.tuples(st.sampled_from(["local", "peer"]), PORTS, PORTS).map(
        lambda t: df.port_range(t[0], min(t[1], t[2]), max(t[1], t[2]))
    ),
    st.tuples(st.sampled_from(["local", "peer"]), NETS).map(lambda t: df.address(t[0], ipaddress.ip_network(t[1]))),
    st.just(("auto",)),
)
TREES = st.recursive(
    LEAVES,
    lambda kids: st.one_of(
        st.tuples(st.just("and"), kids, kids), st.tuples(st.just("or"), kids, kids), st.tuples(st.just("not"), kids)
    ),
    max_leaves=8,
)


def _evaluate(node, sock, auto):
    family, src, sport, dst, dport = sock
    kind = node[0]
    if kind == "and":
        return _evaluate(node[1], sock, auto) and _evaluate(node[2], sock, auto)
    if kind == "or":
        return _evaluate(node[1], sock, auto) or _evaluate(node[2], sock, auto)
    if kind == "not":
        return not _evaluate(node[1], sock, auto)
    if kind == "auto":
        return auto
    local = node[1] == "local"
    port = sport if local else dport
    if kind == "port":
        return port >= node[3] if node[2] == "ge" else port <= node[3]
    network, want_port = node[2:]
    if want_port not in (-1, port):
        return False
    return network is None or _in(src if local else dst, family, network)


@settings(max_examples=400, deadline=None)
@given(tree=TREES, sock=sockets(), auto=st.booleans())
def test_boolean_structure_and_or_not(tree, sock, auto):
    code = df.compile_filter(tree)
    df.audit_bytecode(code)
    assert df.run_bytecode(code, sock, autobound=auto) is _evaluate(tree, sock, auto)


# ---- big filters: thousands of values, bounded by the kernel's attribute size ---------------
def _v6(i):
    return str(ipaddress.ip_network(f"2001:db8:{i:x}::/48"))


def test_thousands_of_values_compile_without_recursion_and_audit():
    """any_of() nests one level per value: 2000 ports used to raise RecursionError in the compiler."""
    ports = list(range(1000, 5000, 2))
    code = df.compile_filter(df.build_filter(local_ports=ports))
    assert len(code) == 16 * len(ports) - 4  # hostcond 12 + JMP 4 each, no JMP after the last
    df.audit_bytecode(code)
    for port, expected in ((1000, True), (1001, False), (4998, True), (5000, False)):
        sock = _entry(socket.AF_INET, "10.0.0.1", port, "10.0.0.2", 80)
        assert df.run_bytecode(code, sock) is expected, port
    nets = [str(ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24")) for i in range(3000)]
    code = df.compile_filter(df.build_filter(peer_addresses=nets))
    df.audit_bytecode(code)
    assert df.run_bytecode(code, _entry(socket.AF_INET, "1.1.1.1", 1, "10.11.183.9", 2)) is True
    assert df.run_bytecode(code, _entry(socket.AF_INET, "1.1.1.1", 1, "10.12.0.9", 2)) is False


@pytest.mark.parametrize(
    "params",
    [
        {"local_ports": list(range(1, 4200))},  # 16 bytes each: past 65531 bytes
        {"peer_addresses": [_v6(i) for i in range(2100)]},  # 32 bytes each
        {"local_ports": [f"{p}-{p + 1}" for p in range(1, 9000, 2)]},
    ],
)
def test_a_program_past_the_kernel_limit_is_refused_clearly(params):
    with pytest.raises(df.FilterError) as info:
        df.compile_filter(df.build_filter(**params))
    assert f"at most {df.MAX_BYTECODE} bytes of inet_diag bytecode" in str(info.value)


def test_the_largest_program_that_fits_is_accepted():
    count = (df.MAX_BYTECODE + 4) // 16  # 16 bytes per single port, the last without its JMP
    code = df.compile_filter(df.build_filter(local_ports=list(range(1, count + 1))))
    assert len(code) <= df.MAX_BYTECODE
    df.audit_bytecode(code)
