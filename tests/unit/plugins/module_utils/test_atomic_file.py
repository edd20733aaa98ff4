# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_atomic_file: the one writer behind tcp_sysctl's drop-in and tcp_state_facts' prometheus_textfile.

Files are real files in a temporary directory; the mover is the real AnsibleModule.atomic_move
where the test is about what atomic_move does (modes), and a stand-in that fails the way
atomic_move fails (a bare Exception on ansible-core >= 2.19, SystemExit through fail_json before)
where the test is about failures.
"""

from __future__ import annotations

import os
import stat

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.testing import patch_module_args

from ansible_collections.netstate.tcp.plugins.module_utils._atomic_file import (
    AtomicFileWriter,
    module_mover,
    refuse_non_regular,
)


@pytest.fixture
def atomic_move():
    with patch_module_args({}):
        return AnsibleModule(argument_spec={}).atomic_move


@pytest.fixture
def strict_umask():
    old = os.umask(0o077)
    yield
    os.umask(old)


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_new_file_gets_the_mode_whatever_the_umask(tmp_path, atomic_move, strict_umask):
    target = tmp_path / "x.prom"
    AtomicFileWriter(atomic_move, mode=0o644).write(str(target), "a 1\n")
    assert target.read_text() == "a 1\n"
    assert mode_of(target) == 0o644
    assert os.listdir(tmp_path) == ["x.prom"]


@pytest.mark.parametrize(("keep", "expected"), [(False, 0o644), (True, 0o600)])
def test_replaced_file_mode_reset_or_kept(tmp_path, atomic_move, keep, expected):
    target = tmp_path / "x.conf"
    target.write_text("old\n")
    target.chmod(0o600)
    AtomicFileWriter(atomic_move, mode=0o644, keep_existing_mode=keep).write(str(target), "new\n")
    assert target.read_text() == "new\n"
    assert mode_of(target) == expected
    assert os.listdir(tmp_path) == ["x.conf"]


def test_temporary_name_is_beside_the_target_and_never_ends_like_it(tmp_path):
    staged = []

    def mover(src, dest):
        staged.append(src)
        os.replace(src, dest)

    target = str(tmp_path / "tcp_state.prom")
    AtomicFileWriter(mover, prefix=".netstate_tcp.").write(target, "a 1\n")
    AtomicFileWriter(mover).write(target, "a 2\n")
    named, default = (os.path.basename(src) for src in staged)
    assert all(os.path.dirname(src) == str(tmp_path) for src in staged)
    assert named.startswith(".netstate_tcp.") and named.endswith(".tmp")
    assert default.startswith(".tcp_state.prom.") and default.endswith(".tmp")
    with pytest.raises(ValueError, match="suffix"):
        AtomicFileWriter(mover, suffix="")


@pytest.mark.parametrize(
    "failure",
    [Exception("Could not replace file"), SystemExit(1)],
    ids=["bare-exception-2.19", "fail_json-before-2.19"],
)
def test_failed_move_leaves_the_old_target_and_no_temporary_file(tmp_path, failure):
    target = tmp_path / "x.prom"
    target.write_text("old\n")

    def mover(_src, _dest):
        raise failure

    with pytest.raises(type(failure) if isinstance(failure, SystemExit) else OSError) as raised:
        AtomicFileWriter(mover).write(str(target), "new\n")
    if not isinstance(failure, SystemExit):
        assert str(raised.value) == f"[Errno 5] cannot replace {target}: Could not replace file"
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["x.prom"]


def test_failure_while_writing_the_temporary_file_leaves_nothing(tmp_path, atomic_move):
    target = tmp_path / "x.prom"
    target.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        AtomicFileWriter(atomic_move).write(str(target), "a \udcff\n")  # a lone surrogate cannot be UTF-8
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["x.prom"]


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_symlink_or_directory_target_is_refused_before_staging(tmp_path, atomic_move, kind):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep\n")
    target = tmp_path / "x.prom"
    if kind == "symlink":
        target.symlink_to(elsewhere)
    else:
        target.mkdir()
    with pytest.raises(OSError, match=f"^{target} exists and is not a regular file$"):
        AtomicFileWriter(atomic_move).write(str(target), "new\n")
    assert elsewhere.read_text() == "keep\n"
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "x.prom"]
    assert (kind == "symlink") is os.path.islink(target)


def test_a_symlink_planted_after_staging_is_refused_at_commit(tmp_path, atomic_move):
    """tcp_sysctl stages every file first and commits later: the target is checked again when it is replaced."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep\n")
    target = tmp_path / "x.conf"
    writer = AtomicFileWriter(atomic_move)
    tmp = writer.stage(str(target), "new\n")
    assert (tmp_path / os.path.basename(tmp)).read_text() == "new\n"
    assert mode_of(tmp) == 0o644
    target.symlink_to(elsewhere)
    with pytest.raises(OSError, match="is not a regular file"):
        writer.commit(tmp, str(target))
    assert elsewhere.read_text() == "keep\n"
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "x.conf"]


def test_discard_removes_a_staged_file_and_tolerates_a_missing_one(tmp_path):
    writer = AtomicFileWriter()
    tmp = writer.stage(str(tmp_path / "x.conf"), "a\n")
    writer.discard(tmp)
    writer.discard(tmp)
    assert os.listdir(tmp_path) == []


def test_refuse_non_regular_tells_absent_from_regular(tmp_path):
    assert refuse_non_regular(str(tmp_path / "absent")) is False
    (tmp_path / "file").write_text("")
    assert refuse_non_regular(str(tmp_path / "file")) is True


def test_module_mover_raises_where_the_move_fails_and_leaves_the_module_as_it_was(tmp_path):
    # a directory in the way: atomic_move cannot rename a file over it (2.19 raises, 2.16-2.18 call fail_json;
    # the compatibility smoke runs the same failure through tcp_sysctl on both)
    with patch_module_args({}):
        module = AnsibleModule(argument_spec={})
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep").write_text("x")
    source = tmp_path / "source"
    source.write_text("new\n")
    with pytest.raises(OSError):
        module_mover(module)(str(source), str(tmp_path / "target"))
    assert "fail_json" not in vars(module)  # the class's fail_json again
    module_mover(module)(str(source), str(tmp_path / "moved"))
    assert (tmp_path / "moved").read_text() == "new\n"
