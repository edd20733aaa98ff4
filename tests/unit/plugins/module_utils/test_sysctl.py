"""Unit tests of _sysctl: validation, render/parse, saved state, plan, apply and rollback.

The /proc/sys trees are built from values recorded on Linux 6.18 (fixtures/sysctl, see
record.py there): one from the initial network namespace, one from a lab namespace, where
tcp_max_orphans and tcp_mem do not exist. The failures of the kernel (EINVAL, rounding) are
reproduced against the real kernel in tests/integration/test_tcp_sysctl.py; here a writer
that fails the same way checks the rollback bookkeeping.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _sysctl
from ansible_collections.netstate.tcp.plugins.module_utils._sysctl import (
    ApplyError,
    SysctlDropIn,
    SysctlError,
    namespace_info,
    normalize_value,
    parse_conf,
    render_conf,
    state_path,
    validate_name,
    validate_request,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sysctl"
INITIAL = {"inode": 1, "initial": True}
NON_INITIAL = {"inode": 2, "initial": False}


def load_fixture(name):
    return json.loads((FIXTURES / name).read_text())["values"]


def build_proc(root, values):
    for name, text in values.items():
        path = root.joinpath(*name.split("."))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(root)


def fake_kernel_writer(name, values, proc_root):
    """Write like the kernel shows it: tab-separated."""
    Path(_sysctl.sysctl_path(name, proc_root)).write_text("\t".join(str(v) for v in values) + "\n")


@pytest.fixture
def lab_proc(tmp_path):
    return build_proc(tmp_path / "proc_sys", load_fixture("lab_netns.json"))


@pytest.fixture
def initial_proc(tmp_path):
    return build_proc(tmp_path / "proc_sys_initial", load_fixture("initial_netns.json"))


@pytest.fixture
def conf(tmp_path):
    directory = tmp_path / "sysctl.d"
    directory.mkdir()
    return str(directory / "60-netstate-tcp.conf")


def snapshot(proc_root, conf_path):
    """Every file under the fake /proc/sys and the drop-in directory, with content."""
    result = {}
    for base in (proc_root, os.path.dirname(conf_path)):
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = os.path.join(dirpath, name)
                result[path] = Path(path).read_text()
    return result


# ---- names and values ----------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "net.ipv4.tcp_fin_timeout",
        "net.core.somaxconn",
        "net.ipv4.neigh.lo.retrans_time_ms",
        "vm.swappiness",
        "net.ipv4.conf.br-lan.rp_filter",
    ],
)
def test_valid_names(name):
    assert validate_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "net..ipv4.tcp_fin_timeout",
        "net/ipv4/tcp_fin_timeout",
        "../../etc/passwd",
        "net.ipv4.tcp_*",
        "net.ipv4.tcp_fin_timeout?",
        "net.ipv4.[a]",
        "NET.ipv4.tcp_fin_timeout",
        "swappiness",
        ".net.ipv4",
        "net.ipv4.",
        "net.ipv4.tcp_fin timeout",
        "-net.ipv4.tcp_fin_timeout",
        "net.ipv4.conf.eth0.100.rp_filter\n",
        "net.ipv4.-",
        "",
        5,
    ],
)
def test_invalid_names_name_the_option_and_the_rule(name):
    with pytest.raises(SysctlError) as err:
        validate_name(name)
    assert str(err.value).startswith("sysctls: invalid name")
    assert "[a-z0-9_]" in str(err.value)


def test_tw_recycle_refused_with_the_reason():
    with pytest.raises(SysctlError) as err:
        validate_name("net.ipv4.tcp_tw_recycle")
    message = str(err.value)
    assert "NAT" in message and "4.12" in message and "tcp_tw_reuse" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, (30,)),
        ("30", (30,)),
        (" 30 ", (30,)),
        (-1, (-1,)),
        ([10240, 65000], (10240, 65000)),
        (["10240", "65000"], (10240, 65000)),
        ("4096 131072 6291456", (4096, 131072, 6291456)),
        ("4096\t131072\t6291456", (4096, 131072, 6291456)),
    ],
)
def test_value_shapes(value, expected):
    assert normalize_value("net.ipv4.x", value) == expected


@pytest.mark.parametrize("value", [True, False, "yes", "no", "True", "off", [1, True]])
def test_booleans_rejected_with_hint(value):
    with pytest.raises(SysctlError) as err:
        normalize_value("net.ipv4.tcp_tw_reuse", value)
    assert "net.ipv4.tcp_tw_reuse" in str(err.value)
    assert "write 1 or 0" in str(err.value)


@pytest.mark.parametrize("value", ["abc", 1.5, "1.5", None, {"a": 1}, "10 x", [], ""])
def test_non_numeric_values_rejected(value):
    with pytest.raises(SysctlError) as err:
        normalize_value("net.ipv4.tcp_fin_timeout", value)
    assert "net.ipv4.tcp_fin_timeout" in str(err.value)


# ---- file and state ------------------------------------------------------


def test_render_parse_round_trip(conf):
    values = {"net.ipv4.tcp_rmem": (4096, 131072, 6291456), "net.core.somaxconn": (8192,)}
    text = render_conf(values, conf)
    assert text.splitlines()[2:] == ["net.core.somaxconn = 8192", "net.ipv4.tcp_rmem = 4096 131072 6291456"]
    assert parse_conf(text) == {"net.core.somaxconn": "8192", "net.ipv4.tcp_rmem": "4096 131072 6291456"}
    assert render_conf(dict(reversed(list(values.items()))), conf) == text


def test_parse_conf_sysctl_d_syntax():
    text = "# c\n; c\n\nnet/ipv4/tcp_fin_timeout=30\n-net.core.somaxconn =  4096 \nbroken line\n"
    assert parse_conf(text) == {"net.ipv4.tcp_fin_timeout": "30", "net.core.somaxconn": "4096"}


def test_state_file_sits_next_to_the_dropin_and_is_not_a_conf():
    path = state_path("/etc/sysctl.d/60-netstate-tcp.conf")
    assert path == "/etc/sysctl.d/.60-netstate-tcp.conf.previous.json"
    assert not path.endswith(".conf")


def test_unreadable_state_file_names_it(conf):
    Path(state_path(conf)).write_text("{not json")
    with pytest.raises(SysctlError) as err:
        _sysctl.load_state(conf)
    assert state_path(conf) in str(err.value)


def test_atomic_write_leaves_no_temp_file(conf):
    _sysctl.atomic_write(conf, "a = 1\n")
    _sysctl.atomic_write(conf, "a = 2\n")
    assert os.listdir(os.path.dirname(conf)) == [os.path.basename(conf)]
    assert Path(conf).read_text() == "a = 2\n"
    assert os.stat(conf).st_mode & 0o777 == 0o644


@pytest.mark.parametrize("path", ["relative.conf", "/etc/sysctl.d/x.txt", "/etc/sysctl.d/"])
def test_file_must_be_absolute_conf(path):
    with pytest.raises(SysctlError, match=r"^file: "):
        SysctlDropIn(path)


# ---- namespaces ----------------------------------------------------------


def test_namespace_marker(lab_proc, initial_proc, tmp_path):
    # tcp_mem exists in init_net only; /proc/1 is not readable in the fake /proc.
    fake_proc = tmp_path / "proc"
    fake_proc.mkdir()
    assert namespace_info(lab_proc, str(fake_proc))["initial"] is False
    assert namespace_info(initial_proc, str(fake_proc))["initial"] is True


def test_global_keys_in_namespace_skipped_or_failed(lab_proc):
    wanted, skipped, warnings = validate_request(
        {
            "net.ipv4.tcp_max_orphans": 100,
            "net.ipv4.tcp_mem": "1 2 3",
            "vm.swappiness": 10,
            "net.ipv4.tcp_fin_timeout": 30,
        },
        "skip",
        NON_INITIAL,
        lab_proc,
    )
    assert list(wanted) == ["net.ipv4.tcp_fin_timeout"]
    assert [s["name"] for s in skipped] == ["net.ipv4.tcp_max_orphans", "net.ipv4.tcp_mem", "vm.swappiness"]
    assert all("global" in w for w in warnings) and len(warnings) == 3
    with pytest.raises(SysctlError) as err:
        validate_request({"net.ipv4.tcp_max_orphans": 100}, "fail", NON_INITIAL, lab_proc)
    assert "net.ipv4.tcp_max_orphans" in str(err.value) and "on_global_in_namespace=fail" in str(err.value)


def test_global_key_is_managed_in_the_initial_namespace(initial_proc):
    wanted, skipped, _warnings = validate_request({"net.ipv4.tcp_max_orphans": 100}, "skip", INITIAL, initial_proc)
    assert wanted == {"net.ipv4.tcp_max_orphans": (100,)} and skipped == []


def test_request_errors_all_reported_together(lab_proc):
    with pytest.raises(SysctlError) as err:
        validate_request(
            {
                "net.ipv4.nope": 1,
                "net.ipv4.tcp_rmem": [1, 2],
                "net.ipv4.tcp_congestion_control": 1,
                "net.ipv4.tcp_tw_reuse": True,
            },
            "skip",
            NON_INITIAL,
            lab_proc,
        )
    message = str(err.value)
    assert "net.ipv4.nope does not exist" in message
    assert "net.ipv4.tcp_rmem takes 3 integer(s)" in message
    assert "only integer sysctls" in message
    assert "write 1 or 0" in message


def test_bad_on_global_choice(lab_proc):
    with pytest.raises(SysctlError, match="on_global_in_namespace: 'maybe' is not one of skip, fail"):
        validate_request({}, "maybe", NON_INITIAL, lab_proc)


# ---- plan, apply, idempotence, absent -------------------------------------


def run_present(proc, conf, sysctls, writer=fake_kernel_writer, apply=True):
    wanted, _skipped, _warnings = validate_request(sysctls, "skip", NON_INITIAL, proc)
    dropin = SysctlDropIn(conf, proc, writer)
    plan = dropin.plan_present(wanted, apply=apply)
    changed = dropin.changed(plan)
    if changed:
        dropin.execute(plan)
    return changed, plan


def test_present_idempotent_and_absent_restores_exactly(lab_proc, conf):
    before = snapshot(lab_proc, conf)
    sysctls = {"net.ipv4.tcp_fin_timeout": 30, "net.ipv4.ip_local_port_range": [10240, 65000]}
    changed, plan = run_present(lab_proc, conf, sysctls)
    assert changed
    assert plan["previous"] == {"net.ipv4.tcp_fin_timeout": "60", "net.ipv4.ip_local_port_range": "32768 60999"}
    assert _sysctl.read_live("net.ipv4.ip_local_port_range", lab_proc) == (10240, 65000)
    assert parse_conf(Path(conf).read_text()) == {
        "net.ipv4.tcp_fin_timeout": "30",
        "net.ipv4.ip_local_port_range": "10240 65000",
    }
    changed, plan = run_present(lab_proc, conf, sysctls)
    assert not changed and plan["writes"] == []

    dropin = SysctlDropIn(conf, lab_proc, fake_kernel_writer)
    plan = dropin.plan_absent()
    assert dropin.changed(plan)
    dropin.execute(plan)
    assert snapshot(lab_proc, conf) == before
    assert not dropin.changed(dropin.plan_absent())


def test_previous_kept_across_runs_and_released_keys_restored(lab_proc, conf):
    run_present(lab_proc, conf, {"net.ipv4.tcp_fin_timeout": 30})
    run_present(lab_proc, conf, {"net.ipv4.tcp_fin_timeout": 20, "net.core.somaxconn": 8192})
    assert _sysctl.load_state(conf) == {"net.ipv4.tcp_fin_timeout": "60", "net.core.somaxconn": "4096"}
    # somaxconn no longer asked for: it gets its saved value back and leaves the state.
    changed, _plan = run_present(lab_proc, conf, {"net.ipv4.tcp_fin_timeout": 20})
    assert changed
    assert _sysctl.read_live("net.core.somaxconn", lab_proc) == (4096,)
    assert _sysctl.load_state(conf) == {"net.ipv4.tcp_fin_timeout": "60"}


def test_apply_false_writes_only_the_file(lab_proc, conf):
    changed, plan = run_present(lab_proc, conf, {"net.ipv4.tcp_fin_timeout": 30}, apply=False)
    assert changed and plan["writes"] == []
    assert _sysctl.read_live("net.ipv4.tcp_fin_timeout", lab_proc) == (60,)
    assert parse_conf(Path(conf).read_text()) == {"net.ipv4.tcp_fin_timeout": "30"}


def test_apply_false_keeps_the_saved_value_of_a_released_key(lab_proc, conf):
    before = snapshot(lab_proc, conf)
    run_present(lab_proc, conf, {"net.ipv4.ip_local_port_range": [10240, 65000]})
    # the file now names another key, live values untouched: the port range is still changed live,
    # so its replaced value must stay saved for state=absent
    run_present(lab_proc, conf, {"net.core.somaxconn": 8192}, apply=False)
    assert _sysctl.read_live("net.ipv4.ip_local_port_range", lab_proc) == (10240, 65000)
    assert parse_conf(Path(conf).read_text()) == {"net.core.somaxconn": "8192"}
    assert _sysctl.load_state(conf) == {"net.ipv4.ip_local_port_range": "32768 60999", "net.core.somaxconn": "4096"}
    dropin = SysctlDropIn(conf, lab_proc, fake_kernel_writer)
    dropin.execute(dropin.plan_absent())
    assert snapshot(lab_proc, conf) == before


def test_check_mode_diff_without_writing(lab_proc, conf):
    before = snapshot(lab_proc, conf)
    wanted, _s, _w = validate_request({"net.ipv4.tcp_fin_timeout": 30}, "skip", NON_INITIAL, lab_proc)
    dropin = SysctlDropIn(conf, lab_proc, fake_kernel_writer)
    plan = dropin.plan_present(wanted)
    file_diff, live_diff = dropin.diff(plan)
    assert file_diff["before"] == "" and "net.ipv4.tcp_fin_timeout = 30" in file_diff["after"]
    assert live_diff["before"] == "net.ipv4.tcp_fin_timeout = 60\n"
    assert live_diff["after"] == "net.ipv4.tcp_fin_timeout = 30\n"
    assert snapshot(lab_proc, conf) == before


# ---- rollback ------------------------------------------------------------


def einval_on(failing):
    def writer(name, values, proc_root):
        if name == failing:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        fake_kernel_writer(name, values, proc_root)

    return writer


def rounding_on(failing):
    def writer(name, values, proc_root):
        fake_kernel_writer(name, [v + 3 if name == failing else v for v in values], proc_root)

    return writer


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        (einval_on("net.core.somaxconn"), "net.core.somaxconn: writing '8192' failed: Invalid argument"),
        (rounding_on("net.core.somaxconn"), "the kernel changed '8192' to '8195'"),
    ],
)
def test_failure_on_second_key_rolls_everything_back(lab_proc, conf, writer, expected):
    run_present(lab_proc, conf, {"net.ipv4.tcp_fin_timeout": 30})
    before = snapshot(lab_proc, conf)
    with pytest.raises(ApplyError) as err:
        run_present(lab_proc, conf, {"net.ipv4.tcp_fin_timeout": 20, "net.core.somaxconn": 8192}, writer=writer)
    assert expected in str(err.value)
    assert "rolled back" in str(err.value)
    assert snapshot(lab_proc, conf) == before


def test_failure_writing_the_file_rolls_live_values_back(lab_proc, conf, monkeypatch):
    before = snapshot(lab_proc, conf)

    def full_disk(path, text, mode=0o644):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(_sysctl, "atomic_write", full_disk)
    with pytest.raises(ApplyError) as err:
        run_present(lab_proc, conf, {"net.ipv4.tcp_fin_timeout": 30, "net.core.somaxconn": 8192})
    assert "No space left on device" in str(err.value) and "rolled back" in str(err.value)
    assert snapshot(lab_proc, conf) == before
