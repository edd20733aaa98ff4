# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""tcp_state_facts through the real AnsibleModule: option checks and the result shape.

Successful runs read the kernel of the test process's own namespace; the
socket counts are checked against ss(8) in tests/integration.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import yaml
from ansible.module_utils.testing import patch_module_args
from module_harness import argument_spec

from ansible_collections.netstate.tcp.plugins.module_utils import _conntrack
from ansible_collections.netstate.tcp.plugins.modules import tcp_state_facts


def run(args, capsys):
    with patch_module_args(args), pytest.raises(SystemExit):
        tcp_state_facts.main()
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        ({"top": "many"}, ["top"]),
        ({"top": -3}, ["top", "0 to 10000"]),
        ({"interval": 1000}, ["interval", "0 to 300"]),
        ({"interval": "soon"}, ["interval"]),
        ({"owners": ["CLOSE_WAIT", "STUCK"]}, ["owners", "STUCK", "CLOSE_WAIT", "NEW_SYN_RECV"]),
        ({"families": ["ipv4", "unix"]}, ["families", "ipv4, ipv6"]),
        ({"namespaces": {"a": 1}}, ["namespaces", "'current', 'all'"]),
        ({"namespaces": ["no-such-netns-for-sure"]}, ["namespaces", "no-such-netns-for-sure", "available names"]),
        ({"thresholds": {"bogus": 1}}, ["thresholds", "bogus", "close_wait_warning"]),
        ({"thresholds": {"close_wait_warning": True}}, ["thresholds", "close_wait_warning"]),
        ({"frobnicate": 1}, ["frobnicate"]),
        ({"conntrack": "sometimes"}, ["conntrack", "bool"]),
    ],
)
def test_bad_options_fail_naming_option_and_valid_values(args, needles, capsys):
    result = run(args, capsys)
    assert result["failed"] is True
    assert "exception" not in result
    for needle in needles:
        assert needle in result["msg"]


def test_facts_in_check_mode_change_nothing(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(3)
        port = sock.getsockname()[1]
        result = run({"_ansible_check_mode": True, "owners": ["listen"], "top": 10000}, capsys)
    assert result.get("failed") is not True, result.get("msg")
    assert result["changed"] is False
    facts = result["ansible_facts"]
    assert set(facts) == {"tcp_state"}
    state = facts["tcp_state"]
    assert state["schema"] == 1
    mine = [item for item in state["listeners"] if item["local"] == f"127.0.0.1:{port}"]
    assert len(mine) == 1
    assert mine[0]["backlog"] == 3
    assert mine[0]["owner"]["comm"]
    assert list(state["owners"]) == ["LISTEN"]


def test_owners_off_leaves_listeners_unowned(capsys):
    result = run({"owners": [], "families": ["ipv4"]}, capsys)
    state = result["ansible_facts"]["tcp_state"]
    assert state["owners"] == {}
    assert all(item["owner"] is None for item in state["listeners"])
    assert all(count == 0 for count in state["families"]["ipv6"].values())


def test_conntrack_option_documented_as_specified():
    documented = yaml.safe_load(tcp_state_facts.DOCUMENTATION)["options"]["conntrack"]
    spec = argument_spec(tcp_state_facts)["argument_spec"]["conntrack"]
    assert documented["type"] == spec["type"] == "bool"
    assert documented["default"] is spec["default"] is True
    assert "262,144 entries" in " ".join(documented["description"])  # the cost that makes the option worth it


@pytest.fixture
def conntrack_access(monkeypatch):
    """What _conntrack does to the kernel, recorded: the /proc/sys/net/netfilter reads and the NETLINK_NETFILTER
    sockets opened (through _conntrack's own seam, open_diag_socket; the opening still happens)."""
    seen = []
    read_table_figures, open_diag_socket = _conntrack.read_table_figures, _conntrack.open_diag_socket

    def reading(*args, **kwargs):
        seen.append("read_table_figures")
        return read_table_figures(*args, **kwargs)

    def opening(*args, **kwargs):
        seen.append("open_diag_socket")
        return open_diag_socket(*args, **kwargs)

    monkeypatch.setattr(_conntrack, "read_table_figures", reading)
    monkeypatch.setattr(_conntrack, "open_diag_socket", opening)
    return seen


def test_conntrack_false_reads_no_table_and_opens_no_ctnetlink_socket(conntrack_access, capsys):
    result = run({"conntrack": False, "owners": []}, capsys)
    assert result.get("failed") is not True, result.get("msg")
    assert conntrack_access == []
    state = result["ansible_facts"]["tcp_state"]
    assert state["conntrack"] == _conntrack.UNAVAILABLE_BLOCK
    assert not any(warning.startswith("conntrack:") for warning in state["warnings"])
    assert "CONNTRACK_TABLE_PRESSURE" not in {finding["code"] for finding in state["findings"]}


def test_conntrack_is_read_by_default(conntrack_access, capsys):
    result = run({"owners": []}, capsys)
    assert result.get("failed") is not True, result.get("msg")
    # the socket is opened only where nf_conntrack_netlink is loaded (never loaded on the module's behalf)
    assert conntrack_access[0] == "read_table_figures"
    assert set(result["ansible_facts"]["tcp_state"]["conntrack"]) == set(_conntrack.UNAVAILABLE_BLOCK)


# Runs the module with the options audit.yml passes in a fresh interpreter and prints the module_utils it imported.
IMPORTED_BY_A_RUN = """
import json, sys
import pytest
from ansible.module_utils.testing import patch_module_args
from ansible_collections.netstate.tcp.plugins.modules import tcp_state_facts
with patch_module_args(json.loads(sys.argv[1])), pytest.raises(SystemExit):
    tcp_state_facts.main()
prefix = "ansible_collections.netstate.tcp.plugins.module_utils."
print(json.dumps(sorted(name[len(prefix):] for name in sys.modules if name.startswith(prefix))), file=sys.stderr)
"""


def module_utils_imported_by_a_run(args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTED_BY_A_RUN, json.dumps(args)], capture_output=True, text=True, env=env, check=True
    )
    result = json.loads(proc.stdout)
    assert result.get("failed") is not True, result.get("msg")
    return set(json.loads(proc.stderr.strip().splitlines()[-1]))


def test_a_run_without_trace_namespaces_or_textfile_imports_none_of_their_module_utils():
    # AnsiballZ ships module_utils as source: each file imported is compiled again on every run of every host
    imported = module_utils_imported_by_a_run({"thresholds": {}})
    assert {"_facts", "_diagnose", "_netlink", "_owners", "_conntrack"} <= imported
    # _procfs and _socket_records serve the /proc path, taken only where netlink sock_diag is refused
    assert imported.isdisjoint({"_trace", "_peer_namespaces", "_prometheus", "_procfs", "_socket_records"})
