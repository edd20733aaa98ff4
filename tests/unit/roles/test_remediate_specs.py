"""The remediate role: defaults and argument specs list the same keys, and the profiles are sound."""

from __future__ import annotations

from pathlib import Path

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
