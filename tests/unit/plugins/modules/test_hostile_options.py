"""Hostile option values for every module, one table per module, run as Ansible runs the module.

Each case gives the module a wrong type, a non-finite/huge/negative number, a control character,
a mis-encoded or very long name, a duplicate, an unknown key or an empty list, and names the text
the module must answer with: a fail_json naming the option and what is allowed, or (``None``) a
clean success. Never a traceback (module_harness checks stderr), never an ``exception`` key.

tcp_sysctl runs with ``apply: false`` and its drop-in under tmp_path, so nothing reaches the
kernel; a rejected run must leave tmp_path empty (nothing half-applied).
"""

from __future__ import annotations

import pytest
from module_harness import run_module

from ansible_collections.netstate.tcp.plugins.modules import tcp_gate, tcp_socket_info, tcp_state_facts, tcp_sysctl

LONG = "a" * 100_000
# more CIDRs than the kernel's inet_diag bytecode can hold (a 260 kB payload: the harness must pass it on stdin)
MANY_CIDRS = [f"10.{i // 256 % 256}.{i % 256}.0/24" for i in range(20_000)]
NOT_A_STATE = "unknown TCP state"
NAMESPACE_MISSING = "namespaces: no network namespace named"


def assert_outcome(result, fragment):
    assert "exception" not in result, result.get("exception")
    assert "MODULE FAILURE" not in str(result.get("msg", ""))
    if fragment is None:
        assert not result.get("failed"), result.get("msg")
    else:
        assert result.get("failed"), result
        assert fragment in result["msg"], result["msg"]


STATE_FACTS_CASES = [
    ({"top": "nan"}, "argument 'top' is of type str"),
    ({"top": 10**30}, "top: must be an integer from 0 to"),
    ({"top": -1}, "top: must be an integer from 0 to"),
    ({"top": [1]}, "argument 'top' is of type list"),
    ({"interval": "nan"}, "interval: must be a number of seconds from 0 to"),
    ({"interval": "inf"}, "interval: must be a number of seconds from 0 to"),
    ({"interval": -1}, "interval: must be a number of seconds from 0 to"),
    ({"interval": 1e308}, "interval: must be a number of seconds from 0 to"),
    ({"interval": {"a": 1}}, "argument 'interval' is of type dict"),
    ({"trace": "nan"}, "trace: must be a number of seconds from 0 to"),
    ({"trace": "-inf"}, "trace: must be a number of seconds from 0 to"),
    ({"trace": 1e308}, "trace: must be a number of seconds from 0 to"),
    ({"owners": [[1]]}, NOT_A_STATE),
    ({"owners": [{"a": 1}]}, NOT_A_STATE),
    ({"owners": "x\x00y"}, NOT_A_STATE),
    ({"owners": [LONG]}, NOT_A_STATE),
    ({"owners": []}, None),
    ({"owners": ["listen", "LISTEN", "Listen"]}, None),
    ({"families": []}, "families: must be a non-empty list"),
    ({"families": [None]}, "value of families must be one or more of: ipv4, ipv6"),
    ({"families": ["inet", "inet"]}, "value of families must be one or more of: ipv4, ipv6"),
    ({"families": ["ipv4", "ipv4"]}, None),
    ({"namespaces": 5}, "namespaces: must be 'current', 'all' or a list"),
    ({"namespaces": True}, "namespaces: must be 'current', 'all' or a list"),
    ({"namespaces": {"a": 1}}, "namespaces: must be 'current', 'all' or a list"),
    ({"namespaces": []}, "namespaces: must be 'current', 'all' or a non-empty list"),
    ({"namespaces": [None]}, "namespaces: must be 'current', 'all' or a non-empty list"),
    ({"namespaces": ["../../etc"]}, NAMESPACE_MISSING),
    ({"namespaces": ["/proc/1/ns/net"]}, NAMESPACE_MISSING),
    ({"namespaces": ["a\nb"]}, NAMESPACE_MISSING),
    ({"namespaces": ["\x00"]}, NAMESPACE_MISSING),
    ({"namespaces": ["\udcff"]}, NAMESPACE_MISSING),
    ({"namespaces": [LONG]}, NAMESPACE_MISSING),
    ({"namespaces": ["inode:abc"]}, NAMESPACE_MISSING),
    ({"namespaces": ["inode:-1"]}, NAMESPACE_MISSING),
    ({"namespaces": ["inode:99999999999999999999999"]}, NAMESPACE_MISSING),
    ({"thresholds": {"nope": 1}}, "thresholds: unknown key 'nope'; valid keys:"),
    ({"thresholds": []}, "argument 'thresholds' is of type list"),
    ({"prometheus_textfile": ""}, "prometheus_textfile: must be an absolute path"),
    ({"prometheus_textfile": "a\nb.prom"}, "holds a control character"),
    ({"prometheus_textfile": "/tmp/x\x00.prom"}, "holds a control character"),
    ({"prometheus_textfile": "relative.prom"}, "is relative"),
    ({"prometheus_textfile": "/tmp/x.txt"}, "does not end in .prom"),
    ({"prometheus_textfile": [1]}, "prometheus_textfile: must be an absolute path"),
    ({"prometheus_textfile": "/" + "a" * 300 + ".prom"}, "prometheus_textfile: cannot write"),
    ({"unknown_option": 1}, "Unsupported parameters"),
]


@pytest.mark.parametrize(("args", "fragment"), STATE_FACTS_CASES)
def test_tcp_state_facts_hostile_options(args, fragment):
    assert_outcome(run_module(tcp_state_facts, args), fragment)


PORTS_ALLOWED = "port must be an integer 1..65535 or a range LOW-HIGH"
NOT_AN_ADDRESS = "not an IPv4/IPv6 address or CIDR"

SOCKET_INFO_CASES = [
    ({"states": [None]}, "states: unknown state ''"),
    ({"states": ["bogus"]}, "states: unknown state 'bogus'"),
    ({"states": [[1]]}, "states: unknown state '[1]'"),
    ({"states": ["listen", "LISTEN"]}, None),
    ({"local_ports": [None]}, PORTS_ALLOWED),
    ({"local_ports": ["nan"]}, PORTS_ALLOWED),
    ({"local_ports": [1.5]}, PORTS_ALLOWED),
    ({"local_ports": [True]}, PORTS_ALLOWED),
    ({"local_ports": [{"a": 1}]}, PORTS_ALLOWED),
    ({"local_ports": [[1, 2]]}, PORTS_ALLOWED),
    ({"local_ports": ["1e3"]}, PORTS_ALLOWED),
    ({"local_ports": ["1-"]}, PORTS_ALLOWED),
    ({"peer_ports": ["\x00"]}, PORTS_ALLOWED),
    ({"local_ports": [-1]}, "port must be within 1..65535"),
    ({"local_ports": [70000]}, "port must be within 1..65535"),
    ({"local_ports": ["5-1"]}, "LOW <= HIGH"),
    ({"local_ports": [80, 80, "80-80"]}, None),
    ({"local_ports": list(range(1, 5000))}, "local_ports: filter too large"),
    ({"local_addresses": ["x"]}, f"local_addresses: {NOT_AN_ADDRESS}"),
    ({"local_addresses": ["10.0.0.0/33"]}, f"local_addresses: {NOT_AN_ADDRESS}"),
    ({"local_addresses": [None]}, f"local_addresses: {NOT_AN_ADDRESS}"),
    ({"peer_addresses": [LONG]}, f"peer_addresses: {NOT_AN_ADDRESS}"),
    ({"peer_addresses": MANY_CIDRS}, "peer_addresses: filter too large"),
    ({"peer_addresses": ["::/0", "0.0.0.0/0", "0.0.0.0/0"]}, None),
    ({"pids": [-1]}, "pids: must be positive integers"),
    ({"pids": ["x"]}, "Elements value for option 'pids'"),
    ({"pids": [None]}, "Elements value for option 'pids'"),
    ({"comms": [None]}, "comms: must be non-empty process names"),
    # names no process has: a clean empty answer (a comm is the first 15 bytes, compared as bytes)
    ({"comms": [LONG]}, None),
    ({"comms": ["é" * 20]}, None),
    ({"comms": ["\udcff"]}, None),
    ({"limit": -1}, "limit: must be an integer >= 0"),
    ({"limit": "nan"}, "argument 'limit' is of type str"),
    ({"sort": None}, "value of sort must be one of"),
    ({"details": "maybe"}, "argument 'details' is of type str"),
]


@pytest.mark.parametrize(("args", "fragment"), SOCKET_INFO_CASES)
def test_tcp_socket_info_hostile_options(args, fragment):
    assert_outcome(run_module(tcp_socket_info, args), fragment)


COUNT_ALLOWED = "count must be a non-negative integer"
MAPPING_ALLOWED = "must be a mapping of TCP state -> maximum count"
# a check that never fails on a real host, so every case below validates only the option under test
HARMLESS = {"max": {"close_wait": 10**9}}

GATE_CASES = [
    ({"max": {"close_wait": "nan"}}, f"max.CLOSE_WAIT: {COUNT_ALLOWED}"),
    ({"max": {"close_wait": None}}, f"max.CLOSE_WAIT: {COUNT_ALLOWED}"),
    ({"max": {"close_wait": [1]}}, f"max.CLOSE_WAIT: {COUNT_ALLOWED}"),
    ({"max": {"close_wait": True}}, f"max.CLOSE_WAIT: {COUNT_ALLOWED}"),
    ({"max": {"close_wait": 1.5}}, f"max.CLOSE_WAIT: {COUNT_ALLOWED}"),
    ({"max": {"": 1}}, "max: unknown state ''"),
    ({"max": {"\x00": 1}}, "max: unknown state '\\x00'"),
    ({"max": []}, "argument 'max' is of type list"),
    ({"max": None}, "argument 'max' is of type NoneType"),
    ({"ports": {"x": 1}}, "ports: port 'x' must be an integer within 1..65535"),
    ({"ports": {"-1": {"listen": 1}}}, "ports: port '-1' must be an integer within 1..65535"),
    ({"ports": {"70000": {"listen": 1}}}, "ports: port '70000' must be an integer within 1..65535"),
    ({"ports": {"1.5": {"listen": 1}}}, "ports: port '1.5' must be an integer within 1..65535"),
    ({"ports": {"80": "nan"}}, f"ports.80: {MAPPING_ALLOWED}"),
    ({"ports": {"80": []}}, f"ports.80: {MAPPING_ALLOWED}"),
    ({"ports": {"80": {"bogus": 1}}}, "ports.80: unknown state 'bogus'"),
    ({"ports": {"80": {"close_wait": -1}}}, f"ports.80.CLOSE_WAIT: {COUNT_ALLOWED}"),
    ({"processes": {"": {"listen": 1}}}, "processes: process name must be a non-empty string"),
    ({"processes": {"x": "nan"}}, f"processes.x: {MAPPING_ALLOWED}"),
    ({"processes": {"x": {"bogus": 1}}}, "processes.x: unknown state 'bogus'"),
    # names longer than a comm are cut like the kernel cuts them; a mis-encoded byte is compared as that byte
    ({"processes": {LONG: {"close_wait": 10**9}}}, None),
    ({"processes": {"é" * 20: {"close_wait": 10**9}}}, None),
    ({"processes": {"a\nb": {"close_wait": 10**9}}}, None),
    ({"ratios": {"bogus": 1}}, "ratios: unknown ratio 'bogus'; valid ratios:"),
    ({"ratios": []}, "argument 'ratios' is of type list"),
    ({"fail_on_codes": ["BOGUS"]}, "fail_on_codes: unknown finding code 'BOGUS'; valid codes:"),
    ({"fail_on_codes": [None]}, "fail_on_codes: unknown finding code ''"),
    ({"fail_on_codes": [[1]]}, "fail_on_codes: unknown finding code '[1]'"),
    ({"fail_on_severity": "fatal"}, "value of fail_on_severity must be one of: warning, critical"),
    ({"timeout": "nan"}, "timeout: must be a finite number of seconds from 0 to"),
    ({"timeout": "inf"}, "timeout: must be a finite number of seconds from 0 to"),
    ({"timeout": -1}, "timeout: must be a finite number of seconds from 0 to"),
    ({"timeout": 1e308}, "timeout: must be a finite number of seconds from 0 to"),
    ({"timeout": [1]}, "argument 'timeout' is of type list"),
    ({"poll_interval": "nan"}, "poll_interval: must be a finite number of seconds from 0.1 to"),
    ({"poll_interval": 1e-9}, "poll_interval: must be a finite number of seconds from 0.1 to"),
    ({"poll_interval": 0}, "poll_interval: must be a finite number of seconds from 0.1 to"),
    ({"poll_interval": -1}, "poll_interval: must be a finite number of seconds from 0.1 to"),
    ({"poll_interval": 1e308}, "poll_interval: must be a finite number of seconds from 0.1 to"),
    ({"thresholds": {"bogus": 1}}, "thresholds: unknown key 'bogus'"),
    ({"exclude_peers": ["x"]}, f"exclude_peers: {NOT_AN_ADDRESS}"),
    ({"exclude_peers": [None]}, f"exclude_peers: {NOT_AN_ADDRESS}"),
    ({"exclude_peers": ["1.2.3.4/99"]}, f"exclude_peers: {NOT_AN_ADDRESS}"),
    ({"peer_addresses": ["bogus"]}, f"peer_addresses: {NOT_AN_ADDRESS}"),
    ({"peer_addresses": MANY_CIDRS}, "filter too large"),
    ({"namespace": "../x"}, "namespace: no network namespace named '../x'"),
    ({"namespace": "a\x00"}, "namespace: no network namespace named 'a\\x00'"),
    ({"namespace": LONG}, "namespace: no network namespace named"),
    ({"namespace": "inode:abc"}, "namespace: no network namespace named 'inode:abc'"),
]


@pytest.mark.parametrize(("args", "fragment"), GATE_CASES)
def test_tcp_gate_hostile_options(args, fragment):
    assert_outcome(run_module(tcp_gate, {**HARMLESS, **args}), fragment)


FIN = "net.ipv4.tcp_fin_timeout"
VALUE_ALLOWED = f"sysctls: {FIN}: invalid value"
NAME_ALLOWED = "a sysctl name is dotted lower-case segments"
FILE_ALLOWED = "must be an absolute path ending in .conf"

SYSCTL_REJECTED = [
    ({"sysctls": None}, "sysctls: empty (or null) with state=present"),
    ({"sysctls": {}}, "sysctls: empty (or null) with state=present"),
    ({"profiles": []}, "sysctls: empty (or null) with state=present"),
    ({"orphan_cap": None}, "sysctls: empty (or null) with state=present"),
    ({"sysctls": []}, "argument 'sysctls' is of type list"),
    ({"sysctls": {FIN: "nan"}}, VALUE_ALLOWED),
    ({"sysctls": {FIN: None}}, VALUE_ALLOWED),
    ({"sysctls": {FIN: {"a": 1}}}, VALUE_ALLOWED),
    ({"sysctls": {FIN: 1e308}}, VALUE_ALLOWED),
    ({"sysctls": {FIN: 1.5}}, VALUE_ALLOWED),
    ({"sysctls": {FIN: "é"}}, VALUE_ALLOWED),
    ({"sysctls": {FIN: "30\nkernel.panic=1"}}, VALUE_ALLOWED),
    ({"sysctls": {FIN: "30\x00"}}, VALUE_ALLOWED),
    ({"sysctls": {FIN: True}}, "is a boolean; sysctls take numbers"),
    ({"sysctls": {FIN: "1" * 5000}}, f"sysctls: {FIN}:"),
    ({"sysctls": {"net.ipv4.tcp_rmem": "4096 87380"}}, "net.ipv4.tcp_rmem takes 3 integer(s)"),
    ({"sysctls": {"../../etc/passwd": 1}}, NAME_ALLOWED),
    ({"sysctls": {"net/ipv4/tcp_fin_timeout": 30}}, NAME_ALLOWED),
    ({"sysctls": {FIN + "\n": 30}}, NAME_ALLOWED),
    ({"sysctls": {"net.ipv4.x\x00": 1}}, NAME_ALLOWED),
    ({"sysctls": {"": 1}}, NAME_ALLOWED),
    ({"sysctls": {LONG: 1}}, NAME_ALLOWED),
    ({"sysctls": {"net.ipv4..x": 1}}, NAME_ALLOWED),
    ({"profiles": ["bogus"]}, "value of profiles must be one or more of"),
    ({"profiles": [None]}, "value of profiles must be one or more of"),
    ({"finding_codes": [None]}, "finding_codes: [''] are not finding codes"),
    ({"finding_codes": ["close-wait"]}, "are not finding codes"),
    ({"orphan_cap": {"memory_mb": -1}}, "orphan_cap: memory_mb must be 1 to"),
    ({"orphan_cap": {"memory_mb": 0}}, "orphan_cap: memory_mb must be 1 to"),
    ({"orphan_cap": {"memory_mb": 10**30}}, "orphan_cap: memory_mb must be 1 to"),
    ({"orphan_cap": {"memory_mb": "nan"}}, "argument 'memory_mb' is of type str found in 'orphan_cap'"),
    ({"orphan_cap": {}}, "missing required arguments: memory_mb found in orphan_cap"),
    ({"orphan_cap": {"memory_mb": 64, "bogus": 1}}, "orphan_cap.bogus"),
    ({"orphan_cap": {"memory_mb": 64, "retries": 0}}, "orphan_cap: retries must be 1 to 255"),
    # tcp_orphan_retries is a u8 in the kernel (proc_dou8vec_minmax): 256 and up is EINVAL at apply time
    ({"orphan_cap": {"memory_mb": 64, "retries": 256}}, "orphan_cap: retries must be 1 to 255"),
    ({"orphan_cap": {"memory_mb": 64, "retries": 10**9}}, "orphan_cap: retries must be 1 to 255"),
    ({"orphan_cap": []}, "argument 'orphan_cap' is of type list"),
    ({"keep_existing": "maybe"}, "argument 'keep_existing' is of type str"),
    ({"state": "gone"}, "value of state must be one of: present, absent"),
    ({"on_global_in_namespace": None}, "value of on_global_in_namespace must be one of"),
    ({"lock_timeout": -1}, "lock_timeout: -1 is not 0 to"),
    ({"lock_timeout": 10**30}, "is not 0 to"),
    ({"lock_timeout": "nan"}, "argument 'lock_timeout' is of type str"),
]

SYSCTL_FILES_REJECTED = [
    ("", FILE_ALLOWED),
    ("/", FILE_ALLOWED),
    ("rel.conf", FILE_ALLOWED),
    ("{d}/x.txt", FILE_ALLOWED),
    ("{d}", FILE_ALLOWED),
    ("/proc/sys/net/ipv4/tcp_fin_timeout", FILE_ALLOWED),
    ("/" + LONG + ".conf", FILE_ALLOWED),
    ("{d}/a\nb.conf", "holds a control character"),
    ("{d}/x\x00.conf", "holds a control character"),
    ("{d}/x\x1b[2J.conf", "holds a control character"),
    ("{d}/../../etc/x.conf", "must be a normalised path"),
    ("{d}//x.conf", "must be a normalised path"),
    ("{d}/" + "a" * 300 + ".conf", "File name too long"),
]


@pytest.mark.parametrize(("args", "fragment"), SYSCTL_REJECTED)
@pytest.mark.parametrize("check", [False, True], ids=["run", "check"])
def test_tcp_sysctl_hostile_options_change_nothing(tmp_path, args, fragment, check):
    base = {"sysctls": {FIN: 30}} if not {"sysctls", "profiles", "orphan_cap"} & set(args) else {}
    result = run_module(
        tcp_sysctl, {**base, **args, "apply": False, "file": str(tmp_path / "t.conf")}, check=check, diff=True
    )
    assert_outcome(result, fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("path", "fragment"), SYSCTL_FILES_REJECTED)
def test_tcp_sysctl_hostile_file_changes_nothing(tmp_path, path, fragment):
    args = {"sysctls": {FIN: 30}, "apply": False, "file": path.replace("{d}", str(tmp_path))}
    assert_outcome(run_module(tcp_sysctl, args, diff=True), fragment)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("file_", ["t.conf", ".t.conf.previous.json"])
def test_tcp_sysctl_mis_encoded_files_fail_naming_the_file(tmp_path, file_):
    bad = tmp_path / file_
    bad.write_bytes(b"net.ipv4.tcp_fin_timeout = 30 \xff\xfe\n")
    result = run_module(tcp_sysctl, {"state": "absent", "apply": False, "file": str(tmp_path / "t.conf")})
    assert_outcome(result, str(bad))
    assert bad.read_bytes() == b"net.ipv4.tcp_fin_timeout = 30 \xff\xfe\n"


def test_tcp_sysctl_diff_never_shows_a_symlink_target(tmp_path):
    secret = tmp_path / "secret.conf"
    secret.write_text("net.ipv4.tcp_fin_timeout = 1  # secret-marker\n")
    (tmp_path / "t.conf").symlink_to(secret)
    result = run_module(tcp_sysctl, {"sysctls": {FIN: 30}, "apply": False, "file": str(tmp_path / "t.conf")}, diff=True)
    assert result.get("failed"), result
    assert "secret-marker" not in str(result)
    assert (tmp_path / "t.conf").is_symlink()
    assert secret.read_text() == "net.ipv4.tcp_fin_timeout = 1  # secret-marker\n"
    # the lock file beside the drop-in stays by design (removing a lock file others may hold races)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.conf.lock", "secret.conf", "t.conf"]
