"""Report files on real filesystems (root: mounts).

- A full disk (a tiny tmpfs) leaves no half-written report directory and no stray `.latest.*` link;
  `latest` keeps pointing at the last complete report (issue 10 item 11).
- The audit runs from a read-only collection (a read-only bind mount of a copy of the checkout, as in
  an execution environment): the reports go under the working directory (issue 10 item 14).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ansible_collections.netstate.tcp.plugins.plugin_utils import _fleet_report as fr

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "unit" / "plugins" / "plugin_utils" / "fixtures"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")


def mount(*args):
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def umount(path):
    subprocess.run(["umount", str(path)], check=False, capture_output=True)


@pytest.fixture
def tiny_fs(tmp_path):
    where = tmp_path / "tiny"
    where.mkdir()
    mount("-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(where))
    try:
        yield where
    finally:
        umount(where)


def fleet(hosts):
    facts = json.loads((FIXTURES / "facts_close_wait_leak.json").read_text())
    pairs = []
    for index in range(hosts):
        varied = copy.deepcopy(facts)
        entry = fr.host_entry(f"host{index}", result={"ansible_facts": {"tcp_state": varied}})
        pairs.append((entry, varied))
    return fr.build_report(pairs)


def test_full_disk_leaves_no_half_written_report(tiny_fs):
    out = tiny_fs / "reports"
    first = fr.write_reports(fleet(2), str(out), ["json"])
    before = sorted(os.listdir(out))
    big = fleet(400)  # several MiB of report.json: more than the tmpfs holds
    with pytest.raises(OSError) as raised:
        fr.write_reports(big, str(out), ["json", "md", "html", "csv"])
    assert "No space left on device" in str(raised.value)
    assert sorted(os.listdir(out)) == before
    assert os.readlink(out / "latest") == os.path.basename(first["report_dir"])
    assert json.loads((out / "latest" / "report.json").read_text())["fleet"]["hosts"] == 2


@pytest.fixture
def read_only_collection(tmp_path):
    """A copy of the collection's tracked files, bind-mounted read-only as ansible_collections/netstate/tcp."""
    source = tmp_path / "src"
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard"], check=True, capture_output=True, text=True
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    target = tmp_path / "collections" / "ansible_collections" / "netstate" / "tcp"
    target.mkdir(parents=True)
    mount("--bind", str(source), str(target))
    try:
        mount("-o", "remount,bind,ro", str(target))
        yield target
    finally:
        umount(target)


def test_audit_from_a_read_only_collection_writes_under_the_working_directory(
    tmp_path, read_only_collection, ansible_env
):
    work = tmp_path / "work"
    work.mkdir()
    env = dict(ansible_env, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(read_only_collection / "playbooks" / "audit.yml"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    report = json.loads((work / "netstate-reports" / "latest" / "report.json").read_text())
    assert [h["status"] for h in report["hosts"]] == ["ok"]
    assert f"reports: {work / 'netstate-reports'}/" in done.stdout
    assert not (read_only_collection / "netstate-reports").exists()
