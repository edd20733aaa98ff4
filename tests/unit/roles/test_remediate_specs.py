"""The remediate role: defaults and argument specs list the same keys, and the profiles are sound."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import CODES
from ansible_collections.netstate.tcp.plugins.module_utils._remediation import FINDING_PROFILES, NOT_SYSCTL, PROFILES
from ansible_collections.netstate.tcp.plugins.modules.tcp_sysctl import ARGUMENT_SPEC

ROLE = Path(__file__).resolve().parents[3] / "roles" / "remediate"


def load(relative):
    return yaml.safe_load((ROLE / relative).read_text())


def test_defaults_and_argument_specs_list_the_same_keys():
    defaults = load("defaults/main.yml")
    options = load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    for name, spec in options.items():
        assert spec.get("default") == defaults[name], name
        assert name.startswith("remediate_"), name


def test_the_role_holds_no_copy_of_the_catalog():
    # One table: plugins/module_utils/_remediation.py. The role passes names and findings to tcp_sysctl.
    assert not (ROLE / "vars").exists()
    for path in ROLE.rglob("*.yml"):
        text = path.read_text()
        assert "slurp" not in text and "b64decode" not in text, path  # no parsing of the drop-in in Jinja
        for name, (value, _reason) in PROFILES["time_wait"]["sysctls"].items():
            assert name not in text, (path, name, value)


def test_profile_choices_match_the_catalog_and_the_module():
    choices = load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]["remediate_profiles"]["choices"]
    assert sorted(choices) == sorted(PROFILES) == ARGUMENT_SPEC["profiles"]["choices"]
    assert set(PROFILES) == {"time_wait", "orphans", "fin_wait", "syn_flood", "listen_backlog"}


def test_every_profile_value_has_a_reason_and_integer_shape():
    for profile, body in PROFILES.items():
        assert body["description"].strip(), profile
        for name, (value, reason) in body["sysctls"].items():
            assert reason.strip(), (profile, name)
            values = value if isinstance(value, list) else [value]
            assert all(isinstance(v, int) and not isinstance(v, bool) for v in values), (profile, name)


def test_finding_map_uses_known_codes_and_profiles():
    assert set(FINDING_PROFILES) <= set(CODES)
    assert set(FINDING_PROFILES.values()) <= set(PROFILES)
    # An application bug is never "fixed" by a sysctl.
    assert "CLOSE_WAIT_LEAK" not in FINDING_PROFILES and "CLOSE_WAIT_LEAK" in NOT_SYSCTL


def test_readme_profile_table_matches_the_catalog():
    rows = [line for line in (ROLE / "README.md").read_text().splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        profile = row.split("`")[1]
        if profile in PROFILES:
            documented[profile] = dict(re.findall(r"`([a-z_]+)=([0-9 ]+)`", row))
    assert set(documented) == set(PROFILES)
    for profile, body in PROFILES.items():
        for name, (value, _reason) in body["sysctls"].items():
            text = " ".join(str(v) for v in (value if isinstance(value, list) else [value]))
            assert documented[profile].get(name.rsplit(".", 1)[1]) == text, (profile, name)


def mapping_keys(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from mapping_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from mapping_keys(item)


def test_tw_recycle_is_never_a_key_anywhere():
    paths = [*ROLE.rglob("*.yml"), ROLE.parents[1] / "playbooks" / "remediate.yml"]
    for path in paths:
        keys = list(mapping_keys(yaml.safe_load(path.read_text())))
        assert keys, path
        assert not [k for k in keys if "tcp_tw_recycle" in k], path


@pytest.mark.parametrize(
    ("orphan_cap", "fragment"),
    [
        ({"memory_mb": 1024, "retries": 0}, "orphan_cap: retries must be 1 to 255 (tcp_orphan_retries 0 means 8"),
        ({"memory_mb": -5}, "orphan_cap: memory_mb must be 1 to"),
        ({"memory_mb": 1024, "retries": 256}, "orphan_cap: retries must be 1 to 255"),
    ],
)
def test_bad_orphan_cap_fails_before_anything_is_changed(tmp_path, orphan_cap, fragment):
    # On localhost in check mode, with a drop-in under tmp_path: tcp_sysctl refuses the cap before reading
    # or writing any sysctl, and the message names the option and the rule.
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Remediate with a bad orphan cap",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "roles": [
                        {
                            "role": "netstate.tcp.remediate",
                            "vars": {
                                "remediate_orphan_cap": orphan_cap,
                                "remediate_summary_facts": False,
                                "remediate_file": str(tmp_path / "60-netstate-tcp.conf"),
                            },
                        }
                    ],
                }
            ]
        )
    )
    root = ROLE.parents[1]
    env = dict(os.environ, ANSIBLE_CONFIG=str(root / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "--check",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            str(playbook),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    tasks = [line for line in out.splitlines() if line.startswith("TASK [")]
    # facts are not gathered (remediate_summary_facts false): tcp_sysctl is the first task that runs, and fails
    assert "Apply the TCP sysctls live and persist them" in tasks[-1], tasks
    assert "fatal: [localhost]: FAILED!" in out
    assert fragment in " ".join(out.split())
    assert list(tmp_path.iterdir()) == [playbook]
