"""Pure parts of the lab: the mix plan, client address allocation, unreachable entries, the CLI's error path."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netstate_lab.lab import LabError, _unreachable_entry
from netstate_lab.scenario import FIRST_CLIENT_PORT, PORTS_PER_SOURCE, Sources, mix_plan


@given(st.integers(min_value=0, max_value=2_000_000), st.integers(min_value=1, max_value=64))
def test_mix_plan_adds_up(total, workers):
    plans = mix_plan(total, workers)
    assert len(plans) == workers
    est = sum(p["established_pairs"] for p in plans)
    cw = sum(p["close_wait"] for p in plans)
    tw = sum(p["time_wait"] for p in plans)
    # every socket of the target is planned: 2 per pair, 2 per CLOSE_WAIT/FIN_WAIT2 pair, 1 per TIME_WAIT
    assert 2 * est + 2 * cw + tw == total
    assert est == total // 4 and cw == total // 25
    # shares differ by at most one between workers
    for key in ("established_pairs", "close_wait", "time_wait"):
        shares = [p[key] for p in plans]
        assert max(shares) - min(shares) <= 1


def test_sources_never_repeat_and_stay_in_loopback():
    src = Sources(42)
    seen = set()
    n = 2 * PORTS_PER_SOURCE + 10
    for _i in range(n):
        addr, port = src.next()
        assert ipaddress.ip_address(addr) in ipaddress.ip_network("127.0.0.0/8")
        assert addr.startswith("127.42.")
        assert FIRST_CLIENT_PORT <= port < FIRST_CLIENT_PORT + PORTS_PER_SOURCE
        seen.add((addr, port))
    assert len(seen) == n
    # the next address starts after PORTS_PER_SOURCE ports
    assert len({a for a, _p in seen}) == 3


def test_unreachable_entries():
    assert _unreachable_entry("dead1") == {"name": "dead1", "groups": ["lab"], "vars": {}}
    assert _unreachable_entry({"name": "d", "groups": ["x"], "vars": {"ansible_port": 2}}) == {
        "name": "d",
        "groups": ["x"],
        "vars": {"ansible_port": 2},
    }
    with pytest.raises(LabError, match="unknown keys in unreachable entry d: colour"):
        _unreachable_entry({"name": "d", "colour": "red"})
    with pytest.raises(LabError, match="names or"):
        _unreachable_entry({"groups": ["x"]})


def test_cli_unknown_state_dir_is_one_line_exit_2(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "netstate_lab.cli", "down", "--state-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    assert res.stderr.startswith("netstate-lab: no lab in ") and res.stderr.count("\n") == 1
    assert res.stdout == ""


def test_cli_cleanup_needs_stale():
    res = subprocess.run(
        [sys.executable, "-m", "netstate_lab.cli", "cleanup"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 2
    assert "needs --stale" in res.stderr and res.stderr.count("\n") == 1
