"""The remediate role: defaults and argument specs list the same keys, and the profiles are sound."""

from __future__ import annotations

import re
from pathlib import Path

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
