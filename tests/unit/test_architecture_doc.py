"""docs/architecture.md stays in step with the code: every layer file and every finding code is in it."""

from __future__ import annotations

import re
from pathlib import Path

from ansible_collections.netstate.tcp.plugins.module_utils import _diagnose

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def test_every_module_util_and_plugin_file_is_described():
    files = [p.name for p in (ROOT / "plugins" / "module_utils").glob("_*.py")]
    files += [p.name for p in (ROOT / "plugins" / "plugin_utils").glob("_*.py")]
    assert files
    assert sorted(name for name in files if f"`{name}`" not in DOC) == []


def test_no_layer_file_named_in_the_doc_is_missing():
    named = set(re.findall(r"`(_[a-z_]+\.py)`", DOC))
    existing = {p.name for p in ROOT.glob("plugins/*/_*.py")}
    assert sorted(named - existing) == []


def test_the_finding_code_table_lists_exactly_the_codes():
    table = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", DOC, re.M))
    assert table == set(_diagnose.CODES)
