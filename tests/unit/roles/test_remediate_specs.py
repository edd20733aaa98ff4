"""The remediate role: defaults and argument specs list the same keys, and the profiles are sound."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import CODES

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


def test_private_vars_are_double_underscore():
    for name in load("vars/main.yml"):
        assert name.startswith("__remediate_"), name


def test_profile_choices_match_the_catalog():
    catalog = load("vars/main.yml")["__remediate_profile_catalog"]
    choices = load("meta/argument_specs.yml")["argument_specs"]["main"]["options"]["remediate_profiles"]["choices"]
    assert sorted(catalog) == sorted(choices)
    assert set(catalog) == {"time_wait", "orphans", "fin_wait", "syn_flood", "listen_backlog"}


def test_every_profile_value_has_a_reason_and_integer_shape():
    catalog = load("vars/main.yml")["__remediate_profile_catalog"]
    for profile, body in catalog.items():
        assert body["description"].strip(), profile
        for name, entry in body["sysctls"].items():
            assert entry["reason"].strip(), (profile, name)
            values = entry["value"] if isinstance(entry["value"], list) else [entry["value"]]
            assert all(isinstance(v, int) and not isinstance(v, bool) for v in values), (profile, name)


def test_finding_map_uses_known_codes_and_profiles():
    variables = load("vars/main.yml")
    mapping = variables["__remediate_finding_profiles"]
    assert set(mapping) <= set(CODES)
    assert set(mapping.values()) <= set(variables["__remediate_profile_catalog"])
    # An application bug is never "fixed" by a sysctl.
    assert "CLOSE_WAIT_LEAK" not in mapping and "CLOSE_WAIT_LEAK" in variables["__remediate_not_sysctl"]


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
        ({"memory_mb": 1024, "retries": 0}, "retries >= 1 (tcp_orphan_retries 0 means 8 in the kernel)"),
        ({"memory_mb": -5}, "needs memory_mb > 0"),
    ],
)
def test_bad_orphan_cap_fails_before_anything_is_read(tmp_path, orphan_cap, fragment):
    # the role's first task, on localhost in check mode: it must fail before gathering facts or touching sysctls
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Remediate with a bad orphan cap",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "roles": [{"role": "netstate.tcp.remediate", "vars": {"remediate_orphan_cap": orphan_cap}}],
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
    # argument validation, then the check that fails: nothing gathered, no sysctl read or set
    assert len(tasks) == 2 and "Check the requested profiles and orphan cap" in tasks[1], tasks
    assert "fatal: [localhost]: FAILED!" in out
    assert fragment in " ".join(out.split())
