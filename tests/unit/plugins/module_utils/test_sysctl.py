"""Unit tests of _sysctl: validation, render/parse, saved state, plan, apply, rollback, lock, request layers.

The /proc/sys trees are built from values recorded on Linux 6.18 (fixtures/sysctl, see
record.py there): one from the initial network namespace, one from a lab namespace, where
tcp_max_orphans and tcp_mem do not exist. The failures of the kernel (EINVAL, rounding) are
reproduced against the real kernel in tests/integration/test_tcp_sysctl.py; here a writer
that fails the same way checks the rollback bookkeeping. Runs go through ``manage`` with the
options the module's argument_spec builds (its defaults, defined there once).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _sysctl
from ansible_collections.netstate.tcp.plugins.module_utils._remediation import (
    FINDING_PROFILES,
    NOT_SYSCTL,
    ORPHAN_KIB,
    PROFILES,
)
from ansible_collections.netstate.tcp.plugins.module_utils._sysctl import (
    ApplyError,
    DropInLock,
    FileWriter,
    Kernel,
    SysctlDropIn,
    SysctlError,
    check_file,
    manage,
    namespace_info,
    normalize_value,
    parse_conf,
    render_conf,
    state_path,
    validate_name,
)
from ansible_collections.netstate.tcp.plugins.modules.tcp_sysctl import ARGUMENT_SPEC

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
    """Every file under the fake /proc/sys and the drop-in directory, with content.

    The lock file is left out: it stays beside a drop-in or saved state (tests of the lock look for it).
    """
    result = {}
    for base in (proc_root, os.path.dirname(conf_path)):
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                path = os.path.join(dirpath, name)
                if path != _sysctl.lock_path(conf_path):
                    result[path] = Path(path).read_text()
    return result


def options(**given):
    """Module options as AnsibleModule hands them over: the argument_spec's defaults, then ``given``."""
    params = {name: spec.get("default") for name, spec in ARGUMENT_SPEC.items()}
    params.update(given)
    if params["orphan_cap"] is not None:
        suboptions = ARGUMENT_SPEC["orphan_cap"]["options"]
        params["orphan_cap"] = {name: spec.get("default") for name, spec in suboptions.items()} | params["orphan_cap"]
    return params


def run(proc, conf, *, check=False, diff=False, writer=fake_kernel_writer, namespace=None, mover=os.replace, **given):
    params = options(file=conf, **given)
    kernel = Kernel(proc, NON_INITIAL if namespace is None else namespace, params["on_global_in_namespace"], writer)
    return manage(params, check, diff, mover=mover, kernel=kernel)


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


@pytest.mark.parametrize(
    "value",
    [
        "9" * 5000,
        "-" + "9" * 4400,
        ["1", "9" * 4301],
        2**64,
        -(2**63) - 1,
        pytest.param(10**5000, id="int-of-5001-digits"),
        "18446744073709551616",
    ],
)
def test_values_beyond_64_bits_rejected_naming_the_key(value):
    with pytest.raises(SysctlError) as err:
        normalize_value("net.ipv4.tcp_fin_timeout", value)
    message = str(err.value)
    assert message.startswith("sysctls: net.ipv4.tcp_fin_timeout: ") and "64-bit" in message
    assert len(message) < 400  # the value is shown cut short


def test_64_bit_bounds_accepted():
    assert normalize_value("net.x", f"{2**64 - 1} {-(2**63)}") == (2**64 - 1, -(2**63))


# ---- the file option ------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "relative.conf",
        "/etc/sysctl.d/x.txt",
        "/etc/sysctl.d/",
        "/etc/sysctl.d/../x.conf",
        "/etc/sysctl.d/./x.conf",
        "/etc//sysctl.d/x.conf",
        "//etc/sysctl.d/x.conf",
        "/etc/sysctl.d/a\nb.conf",
        "/etc/sysctl.d/\x85.conf",
        "/" + "a" * 5000 + ".conf",
    ],
)
def test_file_must_be_a_plain_absolute_conf(path):
    with pytest.raises(SysctlError, match=r"^file: "):
        check_file({"file": path})


def test_state_file_sits_next_to_the_dropin_and_is_not_a_conf():
    path = state_path("/etc/sysctl.d/60-netstate-tcp.conf")
    assert path == "/etc/sysctl.d/.60-netstate-tcp.conf.previous.json"
    assert not path.endswith(".conf")


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


def test_unreadable_state_file_names_it(lab_proc, conf):
    Path(state_path(conf)).write_text("{not json")
    with pytest.raises(SysctlError) as err:
        SysctlDropIn(conf, Kernel(lab_proc, NON_INITIAL)).load_state()
    assert state_path(conf) in str(err.value)


def test_file_writer_leaves_no_temp_file_and_goes_through_the_mover(conf):
    moves = []

    def mover(src, dest):
        moves.append(dest)
        os.replace(src, dest)

    writer = FileWriter(mover)
    writer.write(conf, "a = 1\n")
    writer.write(conf, "a = 2\n")
    assert os.listdir(os.path.dirname(conf)) == [os.path.basename(conf)]
    assert Path(conf).read_text() == "a = 2\n"
    assert os.stat(conf).st_mode & 0o777 == 0o644
    assert moves == [conf, conf]


# ---- hostile files on the host -----------------------------------------------


@pytest.mark.parametrize("which", ["dropin", "state"])
def test_non_utf8_file_names_the_file(lab_proc, conf, which):
    bad = conf if which == "dropin" else state_path(conf)
    Path(bad).write_bytes(b"net.ipv4.tcp_fin_timeout = \xff\n")
    for given in ({"sysctls": {"net.ipv4.tcp_fin_timeout": 30}}, {"state": "absent"}):
        with pytest.raises(SysctlError) as err:
            run(lab_proc, conf, diff=True, **given)
        assert bad in str(err.value) and "UTF-8" in str(err.value)


@pytest.mark.parametrize("which", ["dropin", "state", "lock"])
def test_symlinks_are_refused_never_followed(lab_proc, conf, tmp_path, which):
    target = tmp_path / "elsewhere"
    target.write_text("secret = 1\n")
    link = {"dropin": conf, "state": state_path(conf), "lock": _sysctl.lock_path(conf)}[which]
    os.symlink(target, link)
    before = snapshot(lab_proc, conf)
    with pytest.raises(SysctlError) as err:
        run(lab_proc, conf, diff=True, sysctls={"net.ipv4.tcp_fin_timeout": 30})
    assert "symbolic link" in str(err.value) and link in str(err.value)
    assert "secret" not in str(err.value)
    assert snapshot(lab_proc, conf) == before and target.read_text() == "secret = 1\n"


def test_huge_or_special_files_are_refused(lab_proc, conf):
    Path(conf).write_text("# x\n" * (_sysctl.MAX_FILE_BYTES // 4 + 1))
    with pytest.raises(SysctlError, match="larger than"):
        run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 30})
    os.unlink(conf)
    os.mkfifo(state_path(conf))  # reading a FIFO would block forever
    with pytest.raises(SysctlError, match="not a regular file"):
        run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 30})


def saved_state(conf, previous):
    Path(state_path(conf)).write_text(json.dumps({"schema": 1, "previous": previous}))


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("x.{target}", "7", "invalid name"),
        ("net.ipv4.tcp_fin_timeout/../../../../x", "7", "invalid name"),
        ("net..ipv4", "7", "invalid name"),
        ("net.ipv4.tcp_tw_recycle", "0", "removed in Linux 4.12"),
        ("net.ipv4.tcp_fin_timeout", "9" * 5000, "64-bit"),
        ("net.ipv4.tcp_fin_timeout", "1; reboot", "invalid value"),
        ("net.ipv4.tcp_fin_timeout", True, "boolean"),
        ("net.ipv4.ip_local_port_range", "1", "takes 2 integer(s)"),
    ],
)
def test_saved_state_is_validated_like_user_input(lab_proc, conf, tmp_path, name, value, message):  # noqa: PLR0917
    target = tmp_path / "target"
    target.write_text("5\n")
    name = name.format(target=target)
    saved_state(conf, {name: value})
    before = snapshot(lab_proc, conf)
    for given in ({"state": "absent"}, {"sysctls": {"net.core.somaxconn": 8192}}):
        with pytest.raises(SysctlError) as err:
            run(lab_proc, conf, **given)
        assert str(err.value).startswith(f"file: saved state {state_path(conf)}: "), str(err.value)
        assert message in str(err.value)
        assert snapshot(lab_proc, conf) == before and target.read_text() == "5\n"


def test_saved_global_key_is_skipped_in_a_namespace_like_user_input(lab_proc, conf):
    # vm.swappiness is the host's value, even seen from inside a network namespace
    saved_state(conf, {"vm.swappiness": "10", "net.ipv4.tcp_fin_timeout": "50"})
    result, warnings = run(lab_proc, conf, state="absent")
    assert result["changed_sysctls"] == ["net.ipv4.tcp_fin_timeout"]
    assert _sysctl.read_live("vm.swappiness", lab_proc) == (60,)
    assert any("vm.swappiness is global" in w for w in warnings)
    saved_state(conf, {"vm.swappiness": "10"})
    with pytest.raises(SysctlError, match="on_global_in_namespace=fail"):
        run(lab_proc, conf, state="absent", on_global_in_namespace="fail")


# ---- namespaces ----------------------------------------------------------


def test_namespace_marker(lab_proc, initial_proc, tmp_path):
    # tcp_mem exists in init_net only; /proc/1 is not readable in the fake /proc.
    fake_proc = tmp_path / "proc"
    fake_proc.mkdir()
    assert namespace_info(lab_proc, str(fake_proc))["initial"] is False
    assert namespace_info(initial_proc, str(fake_proc))["initial"] is True


def entries(sysctls):
    return [(name, value, "sysctls") for name, value in sysctls.items()]


def test_global_keys_in_namespace_skipped_or_failed(lab_proc):
    wanted, _current, skipped, warnings = Kernel(lab_proc, NON_INITIAL).check(
        entries(
            {
                "net.ipv4.tcp_max_orphans": 100,
                "net.ipv4.tcp_mem": "1 2 3",
                "vm.swappiness": 10,
                "net.ipv4.tcp_fin_timeout": 30,
            }
        )
    )
    assert list(wanted) == ["net.ipv4.tcp_fin_timeout"]
    assert [s["name"] for s in skipped] == ["net.ipv4.tcp_max_orphans", "net.ipv4.tcp_mem", "vm.swappiness"]
    assert all("global" in w for w in warnings) and len(warnings) == 3
    with pytest.raises(SysctlError) as err:
        Kernel(lab_proc, NON_INITIAL, "fail").check(entries({"net.ipv4.tcp_max_orphans": 100}))
    assert "net.ipv4.tcp_max_orphans" in str(err.value) and "on_global_in_namespace=fail" in str(err.value)


def test_global_key_is_managed_in_the_initial_namespace(initial_proc):
    wanted, current, skipped, _warnings = Kernel(initial_proc, INITIAL).check(
        entries({"net.ipv4.tcp_max_orphans": 100})
    )
    assert wanted == {"net.ipv4.tcp_max_orphans": (100,)} and current == {"net.ipv4.tcp_max_orphans": (131072,)}
    assert skipped == []


def test_request_errors_all_reported_together(lab_proc):
    with pytest.raises(SysctlError) as err:
        Kernel(lab_proc, NON_INITIAL).check(
            entries(
                {
                    "net.ipv4.nope": 1,
                    "net.ipv4.tcp_rmem": [1, 2],
                    "net.ipv4.tcp_congestion_control": 1,
                    "net.ipv4.tcp_tw_reuse": True,
                }
            )
        )
    message = str(err.value)
    assert "net.ipv4.nope does not exist" in message
    assert "net.ipv4.tcp_rmem takes 3 integer(s)" in message
    assert "only integer sysctls" in message
    assert "write 1 or 0" in message


# ---- plan, apply, idempotence, absent -------------------------------------


def test_present_idempotent_and_absent_restores_exactly(lab_proc, conf):
    before = snapshot(lab_proc, conf)
    sysctls = {"net.ipv4.tcp_fin_timeout": 30, "net.ipv4.ip_local_port_range": [10240, 65000]}
    result, _warnings = run(lab_proc, conf, sysctls=sysctls)
    assert result["changed"]
    assert result["previous"] == {"net.ipv4.tcp_fin_timeout": "60", "net.ipv4.ip_local_port_range": "32768 60999"}
    assert _sysctl.read_live("net.ipv4.ip_local_port_range", lab_proc) == (10240, 65000)
    assert parse_conf(Path(conf).read_text()) == {
        "net.ipv4.tcp_fin_timeout": "30",
        "net.ipv4.ip_local_port_range": "10240 65000",
    }
    assert result["reasons"] == dict.fromkeys(sysctls, "requested in sysctls")
    result, _warnings = run(lab_proc, conf, sysctls=sysctls)
    assert not result["changed"] and result["changed_sysctls"] == []

    result, _warnings = run(lab_proc, conf, state="absent")
    assert result["changed"]
    assert snapshot(lab_proc, conf) == before
    assert os.listdir(os.path.dirname(conf)) == []  # drop-in, saved state and lock file all gone
    assert not run(lab_proc, conf, state="absent")[0]["changed"]
    assert os.listdir(os.path.dirname(conf)) == []


def test_previous_kept_across_runs_and_released_keys_restored(lab_proc, conf):
    dropin = SysctlDropIn(conf, Kernel(lab_proc, NON_INITIAL))
    run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 30})
    run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 20, "net.core.somaxconn": 8192})
    assert dropin.load_state()[0] == {"net.ipv4.tcp_fin_timeout": "60", "net.core.somaxconn": "4096"}
    # somaxconn no longer asked for: it gets its saved value back and leaves the state.
    result, _warnings = run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 20})
    assert result["changed"]
    assert _sysctl.read_live("net.core.somaxconn", lab_proc) == (4096,)
    assert dropin.load_state()[0] == {"net.ipv4.tcp_fin_timeout": "60"}


def test_apply_false_writes_only_the_file(lab_proc, conf):
    result, _warnings = run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 30}, apply=False)
    assert result["changed"] and result["changed_sysctls"] == []
    assert _sysctl.read_live("net.ipv4.tcp_fin_timeout", lab_proc) == (60,)
    assert parse_conf(Path(conf).read_text()) == {"net.ipv4.tcp_fin_timeout": "30"}


def test_apply_false_keeps_the_saved_value_of_a_released_key(lab_proc, conf):
    before = snapshot(lab_proc, conf)
    run(lab_proc, conf, sysctls={"net.ipv4.ip_local_port_range": [10240, 65000]})
    # the file now names another key, live values untouched: the port range is still changed live,
    # so its replaced value must stay saved for state=absent
    run(lab_proc, conf, sysctls={"net.core.somaxconn": 8192}, apply=False)
    assert _sysctl.read_live("net.ipv4.ip_local_port_range", lab_proc) == (10240, 65000)
    assert parse_conf(Path(conf).read_text()) == {"net.core.somaxconn": "8192"}
    saved = SysctlDropIn(conf, Kernel(lab_proc, NON_INITIAL)).load_state()[0]
    assert saved == {"net.ipv4.ip_local_port_range": "32768 60999", "net.core.somaxconn": "4096"}
    run(lab_proc, conf, state="absent")
    assert snapshot(lab_proc, conf) == before


def test_check_mode_diff_without_writing(lab_proc, conf):
    before = snapshot(lab_proc, conf)
    result, _warnings = run(lab_proc, conf, check=True, diff=True, sysctls={"net.ipv4.tcp_fin_timeout": 30})
    file_diff, live_diff = result["diff"]
    assert file_diff["before"] == "" and "net.ipv4.tcp_fin_timeout = 30" in file_diff["after"]
    assert live_diff["before"] == "net.ipv4.tcp_fin_timeout = 60\n"
    assert live_diff["after"] == "net.ipv4.tcp_fin_timeout = 30\n"
    assert result["applied"] == {"net.ipv4.tcp_fin_timeout": "30"}
    assert snapshot(lab_proc, conf) == before
    assert os.listdir(os.path.dirname(conf)) == []  # no lock file either


@pytest.mark.parametrize("sysctls", [None, {}])
def test_empty_request_fails_and_never_reverts(lab_proc, conf, sysctls):
    run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 30})
    before = snapshot(lab_proc, conf)
    with pytest.raises(SysctlError, match=r"^sysctls: empty \(or null\) with state=present.*state=absent"):
        run(lab_proc, conf, sysctls=sysctls)
    assert snapshot(lab_proc, conf) == before


def test_selectors_that_choose_nothing_are_a_noop(lab_proc, conf):
    run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 30})
    before = snapshot(lab_proc, conf)
    result, _warnings = run(lab_proc, conf, from_findings=True, finding_codes=["CLOSE_WAIT_LEAK"])
    assert result["changed"] is False and result["profiles"] == []
    assert result["not_fixed_by_sysctls"] == {"CLOSE_WAIT_LEAK": NOT_SYSCTL["CLOSE_WAIT_LEAK"]}
    assert snapshot(lab_proc, conf) == before


# ---- the catalog, findings, orphan cap and kept keys ---------------------------


def catalog_values(profile):
    return {
        name: " ".join(str(v) for v in normalize_value(name, value))
        for name, (value, _r) in PROFILES[profile]["sysctls"].items()
    }


def test_profiles_apply_the_catalog_values_with_their_reasons(initial_proc, conf):
    result, _warnings = run(initial_proc, conf, namespace=INITIAL, profiles=["time_wait", "orphans"])
    expected = {**catalog_values("time_wait"), **catalog_values("orphans")}
    assert result["applied"] == expected
    assert parse_conf(Path(conf).read_text()) == expected
    assert result["profiles"] == ["orphans", "time_wait"]
    for name in expected:
        profile = "time_wait" if name in PROFILES["time_wait"]["sysctls"] else "orphans"
        assert result["reasons"][name] == f"{profile} profile: {PROFILES[profile]['sysctls'][name][1]}"


def test_findings_pick_the_profiles_limited_to_the_named_ones(lab_proc, conf):
    codes = ["FIN_WAIT1_STUCK", "CLOSE_WAIT_LEAK", "LISTEN_OVERFLOW", "SOMETHING_NEW"]
    result, warnings = run(lab_proc, conf, check=True, from_findings=True, finding_codes=codes)
    assert result["profiles"] == sorted({FINDING_PROFILES["FIN_WAIT1_STUCK"], FINDING_PROFILES["LISTEN_OVERFLOW"]})
    assert result["not_fixed_by_sysctls"] == {"CLOSE_WAIT_LEAK": NOT_SYSCTL["CLOSE_WAIT_LEAK"]}
    # tcp_max_orphans is host-wide: skipped inside the namespace, with a warning
    assert [s["name"] for s in result["skipped_sysctls"]] == ["net.ipv4.tcp_max_orphans"]
    assert any("tcp_max_orphans is global" in w for w in warnings)
    limited, _warnings = run(lab_proc, conf, check=True, from_findings=True, finding_codes=codes, profiles=["orphans"])
    assert limited["profiles"] == ["orphans"]
    assert set(limited["applied"]) == {"net.ipv4.tcp_orphan_retries"}


def test_orphan_cap_and_explicit_keys_win_over_profiles(initial_proc, conf):
    result, _warnings = run(
        initial_proc,
        conf,
        namespace=INITIAL,
        profiles=["orphans"],
        orphan_cap={"memory_mb": 256},
        sysctls={"net.ipv4.tcp_orphan_retries": 3},
    )
    assert result["applied"]["net.ipv4.tcp_max_orphans"] == str(256 * 1024 // ORPHAN_KIB)
    assert result["reasons"]["net.ipv4.tcp_max_orphans"].startswith("orphan cap: 256 MiB")
    assert result["applied"]["net.ipv4.tcp_orphan_retries"] == "3"
    assert result["reasons"]["net.ipv4.tcp_orphan_retries"] == "requested in sysctls"


@pytest.mark.parametrize(
    ("cap", "message"),
    [
        ({"memory_mb": 0}, "memory_mb must be 1 to"),
        ({"memory_mb": 2**40}, "memory_mb must be 1 to"),
        ({"memory_mb": 64, "retries": 0}, "retries must be 1 to 255 (tcp_orphan_retries 0 means 8"),
        ({"memory_mb": 64, "retries": 256}, "retries must be 1 to 255"),
    ],
)
def test_bad_orphan_cap_names_the_option(lab_proc, conf, cap, message):
    with pytest.raises(SysctlError) as err:
        run(lab_proc, conf, orphan_cap=cap)
    assert str(err.value).startswith("orphan_cap: ") and message in str(err.value)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"finding_codes": ["fin_wait1", "X\nY"]}, "finding_codes: "),
        ({"lock_timeout": -1}, "lock_timeout: "),
        ({"lock_timeout": 10**6}, "lock_timeout: "),
    ],
)
def test_other_option_checks(lab_proc, conf, given, message):
    with pytest.raises(SysctlError, match=f"^{message}"):
        run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 30}, **given)


def test_keep_existing_merges_with_the_file_validated_like_input(lab_proc, conf):
    run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 30, "net.core.somaxconn": 8192})
    result, _warnings = run(lab_proc, conf, keep_existing=True, sysctls={"net.ipv4.tcp_fin_timeout": 20})
    assert parse_conf(Path(conf).read_text()) == {"net.ipv4.tcp_fin_timeout": "20", "net.core.somaxconn": "8192"}
    assert result["reasons"]["net.core.somaxconn"] == f"kept from {conf} (keep_existing)"
    assert result["changed_sysctls"] == ["net.ipv4.tcp_fin_timeout"]
    # a hand-edited drop-in is host data: checked like the option, the message names the file
    Path(conf).write_text("net.ipv4.tcp_fin_timeout = 20\nx.y/../../../etc/passwd = 1\n")
    before = snapshot(lab_proc, conf)
    with pytest.raises(SysctlError) as err:
        run(lab_proc, conf, keep_existing=True, sysctls={"net.ipv4.tcp_fin_timeout": 20})
    assert str(err.value).startswith(f"file: {conf}: invalid name")
    assert snapshot(lab_proc, conf) == before


# ---- rollback ------------------------------------------------------------


def einval_on(failing):
    def writer(name, values, proc_root):
        if name == failing:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        fake_kernel_writer(name, values, proc_root)

    return writer


def rounding_on(failing, value):
    """The kernel keeps ``value`` of ``failing`` as value + 3 (jiffies rounding); its own values round-trip."""

    def writer(name, values, proc_root):
        fake_kernel_writer(name, [v + 3 if (name, v) == (failing, value) else v for v in values], proc_root)

    return writer


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        (einval_on("net.core.somaxconn"), "net.core.somaxconn: writing '8192' failed: Invalid argument"),
        (rounding_on("net.core.somaxconn", 8192), "the kernel changed '8192' to '8195'"),
    ],
)
def test_failure_on_second_key_rolls_everything_back(lab_proc, conf, writer, expected):
    run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 30})
    before = snapshot(lab_proc, conf)
    with pytest.raises(ApplyError) as err:
        run(lab_proc, conf, writer=writer, sysctls={"net.ipv4.tcp_fin_timeout": 20, "net.core.somaxconn": 8192})
    assert expected in str(err.value)
    assert "rolled back: " in str(err.value) and "net.ipv4.tcp_fin_timeout" in str(err.value)
    assert conf not in str(err.value)  # the files were never touched, so never "restored"
    assert snapshot(lab_proc, conf) == before


def test_failure_on_the_first_key_says_nothing_changed(lab_proc, conf):
    before = snapshot(lab_proc, conf)
    with pytest.raises(ApplyError, match=r"Invalid argument.*; nothing was changed$"):
        run(lab_proc, conf, writer=einval_on("net.ipv4.tcp_fin_timeout"), sysctls={"net.ipv4.tcp_fin_timeout": 20})
    assert snapshot(lab_proc, conf) == before


def test_unwritable_directory_fails_before_any_live_change(lab_proc, conf, monkeypatch):
    run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 30})
    before = snapshot(lab_proc, conf)

    def full_disk(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(FileWriter, "stage", staticmethod(full_disk))
    with pytest.raises(ApplyError) as err:
        run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 20, "net.core.somaxconn": 8192})
    assert "No space left on device" in str(err.value) and str(err.value).endswith("; nothing was changed")
    assert "ROLLBACK" not in str(err.value)
    assert snapshot(lab_proc, conf) == before


def test_failed_move_rolls_back_only_what_changed_through_the_same_mover(lab_proc, conf):
    run(lab_proc, conf, sysctls={"net.ipv4.tcp_fin_timeout": 30})
    before = snapshot(lab_proc, conf)
    moves = []

    def mover(src, dest):  # like atomic_move on ansible-core 2.19: a bare Exception
        moves.append(dest)
        if dest == state_path(conf) and len(moves) == 2:
            raise Exception(f"Could not replace {dest!r}")
        os.replace(src, dest)

    with pytest.raises(ApplyError) as err:
        run(lab_proc, conf, mover=mover, sysctls={"net.ipv4.tcp_fin_timeout": 20, "net.core.somaxconn": 8192})
    message = str(err.value)
    assert "Could not replace" in message and "ROLLBACK" not in message
    assert f"rolled back: {conf}, net.core.somaxconn, net.ipv4.tcp_fin_timeout restored" in message
    # the drop-in went out and back through the mover; the state file (never replaced) is not rewritten
    assert moves == [conf, state_path(conf), conf]
    assert snapshot(lab_proc, conf) == before


# ---- the lock --------------------------------------------------------------


def test_lock_held_elsewhere_times_out_with_nothing_changed(lab_proc, conf):
    before = snapshot(lab_proc, conf)
    with DropInLock(conf, 0):
        with pytest.raises(SysctlError) as err:
            run(lab_proc, conf, lock_timeout=0, sysctls={"net.ipv4.tcp_fin_timeout": 20})
        assert str(err.value).startswith("lock_timeout: another tcp_sysctl run still holds")
        assert "nothing was changed" in str(err.value)
        # check mode takes no lock
        assert run(lab_proc, conf, check=True, sysctls={"net.ipv4.tcp_fin_timeout": 20})[0]["changed"]
    assert _sysctl.read_live("net.ipv4.tcp_fin_timeout", lab_proc) == (60,)
    assert snapshot(lab_proc, conf) == before


def test_a_removed_lock_file_is_never_shared(conf):
    # state=absent removes the lock file while holding it; a later run locks a new file at once
    first = DropInLock(conf, 0).__enter__()
    first.remove()
    with DropInLock(conf, 0) as second:
        assert os.fstat(second.fd).st_ino != os.fstat(first.fd).st_ino
        with pytest.raises(BlockingIOError):
            fcntl.flock(os.open(_sysctl.lock_path(conf), os.O_RDONLY), fcntl.LOCK_EX | fcntl.LOCK_NB)
    first.__exit__(None, None, None)
