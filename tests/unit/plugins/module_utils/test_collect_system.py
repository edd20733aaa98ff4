# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_collect_system against /proc trees recorded from real kernels (fixtures/proc, record_facts.py proc).

Expected values come from the recorded files themselves, read here with plain
string handling independent of the parsers under test.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.netstate.tcp.plugins.module_utils import _collect_system as cs

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "proc")
HOST = os.path.join(FIXTURES, "host")
NETNS = os.path.join(FIXTURES, "netns_close_wait_leak")
LO_BEFORE = os.path.join(FIXTURES, "netns_listen_overflow_before")
LO_AFTER = os.path.join(FIXTURES, "netns_listen_overflow_after")


def raw(tree, *parts):
    with open(os.path.join(tree, *parts)) as handle:
        return handle.read()


def raw_sockstat_tcp(tree):
    """{'inuse': n, ...} from the `TCP:` line, by splitting the recorded text."""
    line = next(line for line in raw(tree, "net", "sockstat").splitlines() if line.startswith("TCP:"))
    words = line.split()[1:]
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


def raw_counter(tree, filename, section, name):
    lines = [line.split() for line in raw(tree, "net", filename).splitlines() if line.startswith(section + ":")]
    return int(lines[1][lines[0].index(name)])


def raw_sysctl(tree, dotted):
    return raw(tree, "sys", *dotted.split(".")).split()


@pytest.mark.parametrize("tree", [HOST, NETNS, LO_AFTER])
def test_sockstat_fields_equal_the_recorded_file(tree):
    warnings = []
    result = cs.collect_system(proc=tree, warnings=warnings)
    expected = raw_sockstat_tcp(tree)
    sockstat = result["sockstat"]
    for key in ("inuse", "tw", "orphan", "alloc"):
        assert sockstat["tcp_" + key] == expected[key]
    assert sockstat["tcp_mem_pages"] == expected["mem"]
    assert sockstat["tcp_mem_bytes"] == expected["mem"] * os.sysconf("SC_PAGE_SIZE")
    tcp6 = next(line for line in raw(tree, "net", "sockstat6").splitlines() if line.startswith("TCP6:"))
    assert sockstat["tcp6_inuse"] == int(tcp6.split()[2])
    assert warnings == []


def test_every_sockstat_field_has_a_scope_and_host_fields_are_the_kernel_global_ones():
    sockstat = cs.collect_system(proc=NETNS)["sockstat"]
    assert set(sockstat["scope"]) == set(sockstat) - {"scope"}
    host = {key for key, scope in sockstat["scope"].items() if scope == "host"}
    assert host == {"tcp_orphan", "tcp_alloc", "tcp_mem_pages", "tcp_mem_bytes"}


@pytest.mark.parametrize(("tree", "filename", "section"), [(HOST, "netstat", "TcpExt"), (LO_AFTER, "snmp", "Tcp")])
def test_counters_equal_the_recorded_file(tree, filename, section):
    counters = cs.collect_system(proc=tree)["counters"]
    names = [name for sec, name in cs.COUNTERS if sec == section]
    for name in names:
        assert counters[name] == raw_counter(tree, filename, section, name), name


def test_issue_counter_list_is_covered():
    required = (
        "ListenOverflows ListenDrops TCPAbortOnMemory TCPAbortOnTimeout TCPAbortOnClose TCPAbortOnData "
        "TCPAbortOnLinger TCPTimeWaitOverflow TCPMemoryPressures TCPReqQFullDrop TCPReqQFullDoCookies "
        "SyncookiesSent SyncookiesRecv SyncookiesFailed TW TWRecycled TWKilled ActiveOpens PassiveOpens "
        "AttemptFails EstabResets CurrEstab RetransSegs OutRsts"
    ).split()
    counters = cs.collect_system(proc=HOST)["counters"]
    assert all(counters.get(name) is not None for name in required)


def test_sysctls_equal_the_recorded_files_and_absent_ones_are_null():
    for tree in (HOST, NETNS):
        sysctls = cs.collect_system(proc=tree)["sysctls"]
        for name, value in sysctls.items():
            path = os.path.join(tree, "sys", *name.split("."))
            if not os.path.exists(path):
                assert value is None, name
                continue
            words = raw_sysctl(tree, name)
            if len(words) == 1:
                assert value == int(words[0]), name
            elif len(words) > 1:
                assert value == [int(word) for word in words], name
    # Linux >= 4.12 has no tcp_tw_recycle; the recording kernel is newer.
    assert cs.collect_system(proc=HOST)["sysctls"]["net.ipv4.tcp_tw_recycle"] is None


def test_global_sysctls_are_null_only_inside_a_namespace():
    host = cs.collect_system(proc=HOST)
    netns = cs.collect_system(proc=NETNS)
    assert host["initial"] is True
    assert netns["initial"] is False
    for name in cs.GLOBAL_SYSCTLS:
        assert host["sysctls"][name] is not None
        assert netns["sysctls"][name] is None
    # ... and their absence inside a namespace is not a warning.
    warnings = []
    cs.collect_system(proc=NETNS, warnings=warnings)
    assert warnings == []


def test_orphan_retries_zero_means_eight():
    sysctls = cs.collect_system(proc=HOST)["sysctls"]
    recorded = int(raw_sysctl(HOST, "net.ipv4.tcp_orphan_retries")[0])
    effective = cs.effective_settings(sysctls)["tcp_orphan_retries"]
    assert effective == (8 if recorded == 0 else recorded)
    assert cs.effective_settings({"net.ipv4.tcp_orphan_retries": 0})["tcp_orphan_retries"] == 8
    assert cs.effective_settings({"net.ipv4.tcp_orphan_retries": 3})["tcp_orphan_retries"] == 3


def test_pressure_from_the_host_recording():
    system = cs.collect_system(proc=HOST)
    low, high = (int(word) for word in raw_sysctl(HOST, "net.ipv4.ip_local_port_range"))
    busiest = {"local_address": "10.0.0.1", "peer_address": "192.0.2.1", "peer_port": 443, "count": 1000}
    pressure = cs.compute_pressure(system["sockstat"], system["sysctls"], {"TIME_WAIT": 0}, busiest)
    tcp = raw_sockstat_tcp(HOST)
    max_orphans = int(raw_sysctl(HOST, "net.ipv4.tcp_max_orphans")[0])
    mem = [int(word) for word in raw_sysctl(HOST, "net.ipv4.tcp_mem")]
    tw_limit = int(raw_sysctl(HOST, "net.ipv4.tcp_max_tw_buckets")[0])
    assert pressure["orphans"]["count"] == tcp["orphan"]
    assert pressure["orphans"]["limit"] == max_orphans
    assert pressure["orphans"]["ratio"] == pytest.approx(tcp["orphan"] / max_orphans, abs=1e-4)
    assert pressure["orphans"]["ratio_penalized_4x"] == pytest.approx(4 * tcp["orphan"] / max_orphans, abs=1e-4)
    assert [pressure["memory"][key] for key in ("low", "pressure", "high")] == mem
    assert pressure["memory"]["ratio_to_high"] == pytest.approx(tcp["mem"] / mem[2], abs=1e-4)
    assert pressure["time_wait"] == {
        "count": tcp["tw"],
        "limit": tw_limit,
        "ratio": pytest.approx(tcp["tw"] / tw_limit, abs=1e-4),
    }
    assert pressure["ephemeral_ports"]["range"] == high - low + 1
    assert pressure["ephemeral_ports"]["in_use"] == 1000
    assert pressure["ephemeral_ports"]["ratio"] == pytest.approx(1000 / (high - low + 1), abs=1e-4)
    assert pressure["ephemeral_ports"]["busiest_tuple"] == busiest


def test_pressure_inside_a_namespace_has_no_orphan_or_memory_limits():
    system = cs.collect_system(proc=NETNS)
    pressure = cs.compute_pressure(system["sockstat"], system["sysctls"], {"TIME_WAIT": 0}, None)
    assert pressure["orphans"]["limit"] is None
    assert pressure["orphans"]["ratio"] is None
    assert pressure["orphans"]["ratio_penalized_4x"] is None
    assert pressure["memory"]["high"] is None
    assert pressure["memory"]["ratio_to_high"] is None
    # TIME_WAIT and its limit are per namespace.
    assert pressure["time_wait"]["count"] == raw_sockstat_tcp(NETNS)["tw"]
    assert pressure["time_wait"]["limit"] == int(raw_sysctl(NETNS, "net.ipv4.tcp_max_tw_buckets")[0])


def test_listen_overflows_grow_between_the_recordings_and_rates_follow():
    before = cs.collect_system(proc=LO_BEFORE)["counters"]
    after = cs.collect_system(proc=LO_AFTER)["counters"]
    grew = raw_counter(LO_AFTER, "netstat", "TcpExt", "ListenOverflows") - raw_counter(
        LO_BEFORE, "netstat", "TcpExt", "ListenOverflows"
    )
    assert grew > 0
    rates = cs.counter_rates(before, after, 4.0)
    assert rates["ListenOverflows"] == pytest.approx(grew / 4.0)
    assert "CurrEstab" not in rates  # a gauge
    assert cs.counter_rates(before, after, 0) == {}


def test_mismatched_snmp_lines_are_skipped_with_a_warning():
    text = raw(HOST, "net", "netstat")
    lines = text.splitlines()
    lines[1] = lines[1].rsplit(" ", 1)[0]  # TcpExt values one short
    warnings = []
    sections = cs.parse_snmp_sections("\n".join(lines), warnings)
    assert "TcpExt" not in sections
    assert "IpExt" in sections
    assert any("TcpExt" in warning for warning in warnings)


def test_missing_files_give_nulls_and_warnings(tmp_path):
    warnings = []
    result = cs.collect_system(proc=str(tmp_path), warnings=warnings)
    assert all(value is None for key, value in result["sockstat"].items() if key != "scope")
    assert all(value is None for value in result["counters"].values())
    assert any("sockstat" in warning for warning in warnings)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("TCP: inuse orphan tw alloc mem 0123456789-x\n\t"), max_size=300))
def test_parse_sockstat_never_raises(text):
    warnings = []
    result = cs.parse_sockstat(text, text, page_size=4096, warnings=warnings)
    assert set(result) == set(cs.SOCKSTAT_SCOPE) | {"scope"}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([*raw(HOST, "net", "netstat").splitlines(), "TcpExt: 1 2", "Tcp:", ":", "x"])))
def test_parse_snmp_sections_never_raises(lines):
    sections = cs.parse_snmp_sections("\n".join(lines), [])
    for values in sections.values():
        assert all(isinstance(value, int) for value in values.values())


@given(st.text(max_size=50))
def test_parse_sysctl_value_never_raises(text):
    value = cs.parse_sysctl_value(text)
    assert value is None or isinstance(value, (int, list, str))
