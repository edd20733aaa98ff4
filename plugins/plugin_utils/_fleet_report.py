# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Fleet aggregation of ``tcp_state`` facts and the report renderers.

Controller-side only (used by the ``netstate.tcp.tcp_fleet_report`` action
plugin).  Every function is O(hosts): one pass over the hosts, bounded work
per host (the facts carry top-N lists only), heaps for the fleet-wide top-N.
"""

from __future__ import annotations

import csv
import datetime
import functools
import gc
import heapq
import html
import io
import itertools
import json
import marshal
import math
import operator
import os
import re
import shutil
import tempfile
from typing import NamedTuple

from ansible_collections.netstate.tcp.plugins.module_utils import _forked

# one source of truth for state names, severities and the facts schema: the managed-node code
from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import (
    CODES,
    SEVERITIES,
    severity_rank,
    worst_severity,
)
from ansible_collections.netstate.tcp.plugins.module_utils._facts import SCHEMA as FACTS_SCHEMA
from ansible_collections.netstate.tcp.plugins.module_utils._netlink import STATES
from ansible_collections.netstate.tcp.plugins.module_utils._prometheus import pressure_figures, render_metrics
from ansible_collections.netstate.tcp.plugins.module_utils._text import one_line

REPORT_SCHEMA = 1
STATUSES = ("ok", "malformed", "failed", "unreachable")
FORMATS = ("json", "md", "html", "csv", "prom")
DEFAULT_FORMATS = ("json", "md", "html", "csv")
FILE_MODE = 0o640
DIR_MODE = 0o750
OFFENDERS_TOP = 10
# a port, process or peer with a single socket offends nobody
OFFENDER_MIN_SOCKETS = 2
SUMMARY_MAX_HOSTS = 50
CHART_MAX_HOSTS = 40
JSON_INDENT_MAX_HOSTS = 1000
# the longest string of a host's facts the report carries (a summary, a remediation text, a cmdline)
TEXT_MAX = 4096
# nesting of a finding's evidence (the deepest evidence _diagnose writes is 3 levels)
EVIDENCE_MAX_DEPTH = 8
# what a report file read back (history, merge) may weigh: a 10,000-host report.json is ~40 MiB
REPORT_MAX_BYTES = 512 * 2**20
# finding codes are upper-case identifiers (TIME_WAIT_CHURN ...): never markup, never a label breaker
FINDING_CODE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


class ReportError(Exception):
    """Bad input to the report (options, query); the message names the culprit."""


def severity_order(severity) -> int:
    """0 for no finding, then the order of _diagnose.SEVERITIES (the one severity order), from 1."""
    return 0 if severity is None else severity_rank(severity) + 1


# severity_order as a table, for the per-host loops over checked severities (100,000 hosts in a merge)
SEVERITY_ORDER = {None: 0, **{name: severity_order(name) for name in SEVERITIES}}


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str):
    """Sort key that puts h2 before h10: digit runs compare as numbers."""
    parts = _DIGITS.split(name)
    # split() puts the digit runs at the odd indexes
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts), name


# every ASCII digit as 0: the shape of a name (h001 and h999 share one, h1 and h10 do not)
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")


def natural_keys(names: list) -> list:
    """Sort keys for ``names`` that order them as natural_key does, cheaper when they allow it.

    Names of one shape (ASCII, digit runs of the same lengths at the same places: host0001 ...
    host9999, r0-web01 ... r9-web99) are in natural order when in plain string order: the first
    character where two of them differ is in a text part of both or in a digit run of the same
    length in both.  Their keys are the names themselves (100,000 natural_key calls were 0.3 s of a
    merge).  Any other list gets natural_key of each name.  Keys of one call compare only among themselves.
    """
    if names:
        text = "\n".join(names)
        # one line per name: then the shapes below are the names' own
        if text.isascii() and text.count("\n") == len(names) - 1:
            shapes = text.encode("ascii").translate(_DIGITS_AS_ZERO)
            first = shapes[: len(names[0])]
            if shapes == b"\n".join([first] * len(names)):
                return names
    return list(map(natural_key, names))


# ---------------------------------------------------------------------------
# what a host sends: a schema of every field a renderer reads, checked before any renderer sees it.
# Each check comes in two speeds, both built from the one schema below:
# - ``check(value, path)`` explains: the problem, naming the field, or None;
# - ``check.ok(value)`` only answers True or False.  For a mapping, list or record it is one Python
#   function generated from the schema when the module loads (the checks of the nested fields in
#   line, no path strings): 10,000 hosts x ~150 fields were 0.5 s of closure calls.
# ok() is never laxer than the explanation (a test holds it to that): a host it refuses is explained,
# and one the explanation then accepts is accepted.

_INF = math.inf
_ABSENT = object()

# The type tests of the generated ok(): the exact type first (what json gives, one pointer compare), then
# a subclass, which the explanation's isinstance() accepts too: ansible-core 2.16 registers every string
# of a result as AnsibleUnsafeText, 2.19 may tag dicts, lists and numbers.  Without the second test each
# such host took the slow explaining path.  ``{v}`` is the value's variable.
_NOT_STR = "(type({v}) is not str and not isinstance({v}, str))"
_NOT_DICT = "(type({v}) is not dict and not isinstance({v}, dict))"
_NOT_LIST = "(type({v}) is not list and not isinstance({v}, list))"
# bool is a subclass of int and no count
_NOT_INT = "(type({v}) is not int and (not isinstance({v}, int) or isinstance({v}, bool)))"
_NOT_NUMBER = (
    "(type({v}) is not float and type({v}) is not int and (not isinstance({v}, (int, float)) or isinstance({v}, bool)))"
)


def _is_count(value) -> bool:
    # bool is a subclass of int and no count
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_finite(value) -> bool:
    if isinstance(value, int):
        return not isinstance(value, bool)
    return isinstance(value, float) and math.isfinite(value)


def _leaf(fails):
    """A leaf check: ``fails`` is the Python condition, on ``{v}``, under which ok() refuses the value."""

    def attach(check):
        check.fails = fails
        return check

    return attach


def _fast(ok):
    """A leaf whose ok() is a function (called from the generated code)."""

    def attach(check):
        check.ok = ok
        return check

    return attach


class _Source:
    """The generated source of one ok() function: names bound for it and fresh variable names."""

    def __init__(self):
        self.lines, self.names, self.count = [], {"ABSENT": _ABSENT, "INF": _INF, "TEXT_MAX": TEXT_MAX}, 0

    def fresh(self) -> str:
        self.count += 1
        return f"v{self.count}"

    def bind(self, obj) -> str:
        name = f"c{len(self.names)}"
        self.names[name] = obj
        return name

    def add(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def check(self, check, var: str, indent: int) -> None:
        """The statements that return False when ``var`` fails ``check``."""
        if hasattr(check, "emit"):
            check.emit(self, var, indent)
        elif hasattr(check, "fails"):
            fails = check.fails if isinstance(check.fails, str) else check.fails(self)
            self.add(indent, f"if {fails.format(v=var)}: return False")
        else:
            self.add(indent, f"if not {self.bind(check.ok)}({var}): return False")


def _structure(emit):
    """A mapping, list or record check: ``emit`` writes its ok() statements; ok() is compiled from them."""

    def attach(check):
        check.emit = emit
        source = _Source()
        source.add(0, "def ok(v0):")
        emit(source, "v0", 1)
        source.add(1, "return True")
        # the text is built from the schema's own constants above, never from input
        exec(compile("\n".join(source.lines), "<fleet report schema>", "exec"), source.names)
        check.ok = source.names["ok"]
        return check

    return attach


@_leaf(_NOT_INT + " or {v} < 0")
def _count(value, path):
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return None
    return f"{path} is {_shown(value)}, not a non-negative integer"


def _counts(names):
    """A mapping holding each of ``names`` as a count (the states table: no per-key call)."""

    def emit(source, var, indent):
        source.add(indent, f"if {_NOT_DICT.format(v=var)}: return False")
        # unrolled: a dozen states, no loop to run
        for name in names:
            count = source.fresh()
            source.add(indent, f"{count} = {var}.get({name!r})")
            source.add(indent, f"if {_NOT_INT.format(v=count)} or {count} < 0: return False")

    @_structure(emit)
    def check(value, path):
        if not isinstance(value, dict):
            return f"{path} is {_shown(value)}, not a mapping"
        for name in names:
            count = value.get(name)
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                return f"{path} lacks {name!r}" if name not in value else _count(count, f"{path}.{name}")
        return None

    return check


# NaN fails both comparisons, infinity the second
@_leaf(_NOT_NUMBER + " or not 0 <= {v} < INF")
def _ratio(value, path):
    if _is_finite(value) and value >= 0:
        return None
    return f"{path} is {_shown(value)}, not a finite non-negative number"


@_leaf(_NOT_INT + " or not 0 <= {v} <= 65535")
def _port(value, path):
    return None if _is_count(value) and value <= 65535 else f"{path} is {_shown(value)}, not a port number"


@_leaf(_NOT_STR + " or len({v}) > TEXT_MAX")
def _text(value, path):
    if not isinstance(value, str):
        return f"{path} is {_shown(value)}, not a string"
    return None if len(value) <= TEXT_MAX else f"{path} is longer than {TEXT_MAX} characters"


def _text_ok(value):
    return isinstance(value, str) and len(value) <= TEXT_MAX


# the codes _diagnose writes are known without running the pattern (79,400 findings in a 100,000-host merge)
@_leaf(
    lambda source: (
        f"{_NOT_STR} or ({{v}} not in {source.bind(frozenset(CODES))}"
        f" and {source.bind(FINDING_CODE.fullmatch)}({{v}}) is None)"
    )
)
def _code(value, path):
    if isinstance(value, str) and FINDING_CODE.fullmatch(value):
        return None
    return f"{path} is {_shown(value)}, not a finding code (upper-case letters, digits, _)"


def _one_of(choices):
    allowed = frozenset(choices)

    @_leaf(lambda source: f"{_NOT_STR} or {{v}} not in {source.bind(allowed)}")
    def check(value, path):
        return None if value in choices else f"{path} is {_shown(value)}, not one of {', '.join(choices)}"

    return check


def _equal(expected, what):
    kind = type(expected)

    @_fast(lambda value: isinstance(value, kind) and not isinstance(value, bool) and value == expected)
    def check(value, path):
        return (
            None if value == expected and not isinstance(value, bool) else f"{what} {_shown(value)} is not {expected}"
        )

    return check


def _optional(check):
    def emit(source, var, indent):
        source.add(indent, f"if {var} is not None:")
        source.check(check, var, indent + 1)

    def optional(value, path):
        return None if value is None else check(value, path)

    optional.emit, optional.when_set = emit, check
    return optional


def _list_of(item):
    def emit(source, var, indent):
        element = source.fresh()
        source.add(indent, f"if {_NOT_LIST.format(v=var)}: return False")
        source.add(indent, f"for {element} in {var}:")
        source.check(item, element, indent + 1)

    @_structure(emit)
    def check(value, path):
        if not isinstance(value, list):
            return f"{path} is {_shown(value)}, not a list"
        for index, element in enumerate(value):
            problem = item(element, f"{path}[{index}]")
            if problem:
                return problem
        return None

    return check


def _mapping(key, item):
    def emit(source, var, indent):
        name, element = source.fresh(), source.fresh()
        source.add(indent, f"if {_NOT_DICT.format(v=var)}: return False")
        source.add(indent, f"for {name}, {element} in {var}.items():")
        source.check(key, name, indent + 1)
        source.check(item, element, indent + 1)

    @_structure(emit)
    def check(value, path):
        if not isinstance(value, dict):
            return f"{path} is {_shown(value)}, not a mapping"
        for name, element in value.items():
            problem = key(name, f"{path}.{name}") or item(element, f"{path}.{name}")
            if problem:
                return problem
        return None

    return check


def _record(fields: dict, required=()):
    """A mapping with these keys (others are ignored: the report never reads them)."""

    def emit(source, var, indent):
        source.add(indent, f"if {_NOT_DICT.format(v=var)}: return False")
        for name in required:
            if name not in fields:
                source.add(indent, f"if {name!r} not in {var}: return False")
        for name, item in fields.items():
            element = source.fresh()
            inner = getattr(item, "when_set", None)
            if name in required:
                # every check refuses the ABSENT marker (no type of its own): no test of its own
                source.add(indent, f"{element} = {var}.get({name!r}, ABSENT)")
                source.check(item, element, indent)
            elif inner is not None:
                # absent or None alike (get()'s default): the check of the value is skipped in one test
                source.add(indent, f"{element} = {var}.get({name!r})")
                source.add(indent, f"if {element} is not None:")
                source.check(inner, element, indent + 1)
            else:
                source.add(indent, f"{element} = {var}.get({name!r}, ABSENT)")
                source.add(indent, f"if {element} is not ABSENT:")
                source.check(item, element, indent + 1)

    @_structure(emit)
    def check(value, path):
        if not isinstance(value, dict):
            return f"{path} is {_shown(value)}, not a mapping"
        for name in required:
            if name not in value:
                return f"missing key {name!r}" if not path else f"{path} lacks {name!r}"
        for name, item in fields.items():
            element = value.get(name, _ABSENT)
            if element is not _ABSENT:
                problem = item(element, f"{path}.{name}" if path else name)
                if problem:
                    return problem
        return None

    check.fields = fields
    return check


def _json_values_ok(values, depth) -> bool:
    """ok() of _json_data for the values of one list or mapping: scalars in line, containers recursed."""
    for value in values:
        kind = type(value)
        if kind is str:
            if len(value) > TEXT_MAX:
                return False
        elif kind is float:
            if not -_INF < value < _INF:
                return False
        elif not (kind is int or kind is bool or value is None or _json_ok(value, depth)):
            return False
    return True


def _json_ok(value, depth=0):
    """ok() of _json_data: plain JSON data within the bounds (recursive, so not generated)."""
    kind = type(value)
    if kind is str:
        return len(value) <= TEXT_MAX
    if kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return -_INF < value < _INF
    if kind is dict:
        if depth >= EVIDENCE_MAX_DEPTH:
            return False
        for name in value:
            if not isinstance(name, str) or len(name) > TEXT_MAX:
                return False
        return _json_values_ok(value.values(), depth + 1)
    if kind is list:
        return depth < EVIDENCE_MAX_DEPTH and _json_values_ok(value, depth + 1)
    # a subclass (ansible-core 2.16's AnsibleUnsafeText, 2.19's tagged values) or no JSON at all:
    # the explanation decides, building no path for a value it accepts
    return _json_data(value, "", depth) is None


@_fast(_json_ok)
def _json_data(value, path, depth=0):
    """Plain JSON data: string keys, finite numbers, bounded depth and strings (a finding's evidence)."""
    if value is None or isinstance(value, bool) or _is_count(value):
        return None
    if isinstance(value, (int, float)):
        return None if _is_finite(value) else f"{path} is {_shown(value)}, not a finite number"
    if isinstance(value, str):
        return _text(value, path)
    if depth >= EVIDENCE_MAX_DEPTH:
        return f"{path} is nested deeper than {EVIDENCE_MAX_DEPTH} levels"
    if isinstance(value, list):
        for index, element in enumerate(value):
            problem = _json_data(element, f"{path}[{index}]", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for name, element in value.items():
            problem = _text(name, f"{path} key") or _json_data(element, f"{path}.{name}", depth + 1)
            if problem:
                return problem
        return None
    return f"{path} is {_shown(value)}, not JSON data"


@_fast(lambda value: isinstance(value, dict) and _json_ok(value))
def _json_mapping(value, path):
    return _json_data(value, path) if isinstance(value, dict) else f"{path} is {_shown(value)}, not a mapping"


def _shown(value) -> str:
    """A hostile value in an error message: its type, or a short repr of a scalar."""
    if isinstance(value, (dict, list, tuple, set)):
        return f"a {type(value).__name__}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_STATE = _one_of(STATES)
# a sysctl holds one value or a few (ip_local_port_range [10240, 65000], tcp_mem's three page counts)
SYSCTL_VALUES_MAX = 8


def _sysctl_value_ok(value):
    kind = type(value)
    if value is None or kind is int or (kind is float and -_INF < value < _INF):
        return True
    if kind is str:
        return len(value) <= TEXT_MAX
    if kind is list and len(value) <= SYSCTL_VALUES_MAX:
        for element in value:
            kind = type(element)
            if not (kind is int or (kind is float and -_INF < element < _INF) or _text_ok(element)):
                return _sysctl_value(value, "") is None
        return True
    # a subclass (AnsibleUnsafeText, a tagged number) or no sysctl value: the explanation decides
    return _sysctl_value(value, "") is None


# an int (most recommended values) is taken without a call
@_leaf(lambda source: f"type({{v}}) is not int and not {source.bind(_sysctl_value_ok)}({{v}})")
def _sysctl_value(value, path):
    """A recommended sysctl value: a number, a string, or a short list of them (None: not set)."""
    if value is None or _is_finite(value):
        return None
    if not isinstance(value, list):
        return _text(value, path)
    if len(value) > SYSCTL_VALUES_MAX:
        return f"{path} has more than {SYSCTL_VALUES_MAX} values"
    for index, element in enumerate(value):
        problem = None if _is_finite(element) else _text(element, f"{path}[{index}]")
        if problem:
            return problem
    return None


def _finding_fields(evidence) -> dict:
    """The checks of a finding's fields, in the order host_entry writes them."""
    return {
        "code": _code,
        "severity": _one_of(SEVERITIES),
        "summary": _text,
        "evidence": evidence,
        "remediation": _record(
            {
                "kind": _optional(_text),
                "text": _optional(_text),
                "sysctls": _optional(_mapping(_text, _sysctl_value)),
                "profile": _optional(_text),
            }
        ),
    }


def _finding_check(evidence):
    return _record(_finding_fields(evidence), required=("code", "severity"))


@_leaf(_NOT_DICT)
def _mapping_only(value, path):
    return None if isinstance(value, dict) else f"{path} is {_shown(value)}, not a mapping"


@_leaf(_NOT_LIST)
def _list_only(value, path):
    return None if isinstance(value, list) else f"{path} is {_shown(value)}, not a list"


FINDING_CHECK = _finding_check(_json_mapping)
# the keys of a finding in a host entry (host_entry's order), and the remediation keys the report reads
FINDING_KEYS = tuple(FINDING_CHECK.fields)
REMEDIATION_KEYS = frozenset(FINDING_CHECK.fields["remediation"].fields)
# a report read back went through _parse_report's JSON parser, which refuses NaN and infinity and gives
# only string keys: its evidence needs no walk (the bench merges 100,000 hosts' evidence)
REPORT_FINDING_CHECK = _finding_check(_mapping_only)
FACTS_CHECK = _record(
    {
        "schema": _equal(FACTS_SCHEMA, "schema"),
        "states": _counts(STATES),
        "total": _count,
        "findings": _list_of(FINDING_CHECK),
        "pressure": _record(
            {
                "orphans": _optional(
                    _record(
                        {
                            "count": _optional(_count),
                            "limit": _optional(_count),
                            "ratio": _optional(_ratio),
                            "ratio_penalized_4x": _optional(_ratio),
                        }
                    )
                ),
                "memory": _optional(_record({"pages": _optional(_count), "ratio_to_high": _optional(_ratio)})),
                "time_wait": _optional(_record({"ratio": _optional(_ratio)})),
                "ephemeral_ports": _optional(_record({"ratio": _optional(_ratio)})),
            }
        ),
        "top": _record(
            {
                "by_local_port": _mapping(
                    _STATE, _list_of(_record({"port": _port, "count": _count}, ("port", "count")))
                ),
                "by_peer": _mapping(
                    _STATE,
                    _list_of(
                        _record({"address": _text, "count": _count, "scope": _optional(_text)}, ("address", "count"))
                    ),
                ),
            }
        ),
        "owners": _mapping(
            _STATE,
            _list_of(_record({"pid": _optional(_count), "comm": _optional(_text), "sockets": _count}, ("sockets",))),
        ),
        "collected_at": _optional(_text),
        "kernel": _optional(_text),
        "source": _optional(_text),
    },
    required=("schema", "states", "findings", "pressure"),
)


def check_facts(facts) -> list[str]:
    """What is wrong with one host's tcp_state facts (empty list: usable).

    Checks every field a renderer or the offenders tables read, against FACTS_CHECK.
    """
    if not isinstance(facts, dict):
        return [f"tcp_state is {type(facts).__name__}, not a mapping"]
    if FACTS_CHECK.ok(facts):
        return []
    problem = FACTS_CHECK(facts, "")
    return [problem] if problem else []


# ---------------------------------------------------------------------------
# per-host: result of tcp_state_facts -> host entry


def _pressure_summary(pressure: dict) -> dict:
    """The pressure numbers the fleet tables and charts use (None when absent); already validated."""
    return pressure_figures(pressure)


def _empty_entry(name: str, status: str, error) -> dict:
    return {
        "name": name,
        "status": status,
        "severity": None,
        "total": None,
        "states": None,
        "findings": [],
        "pressure": None,
        "error": error,
    }


def host_entry(name: str, result=None, facts=None, in_play: bool = True) -> dict:
    """One host's report entry.

    ``result`` is what ``register`` kept of the tcp_state_facts task (None when
    the task never ran on the host), ``facts`` a fallback tcp_state dict
    (``ansible_facts.tcp_state`` from hostvars), ``in_play`` whether the host
    was still in the play when the facts play ended.
    """
    if isinstance(result, dict):
        if result.get("unreachable"):
            return _empty_entry(name, "unreachable", _text_of(result.get("msg")) or "host unreachable")
        if result.get("failed"):
            return _empty_entry(name, "failed", _failure_message(result))
        if result.get("skipped"):
            return _empty_entry(name, "failed", "tcp_state_facts was skipped on this host")
        ansible_facts = result.get("ansible_facts")
        if isinstance(ansible_facts, dict) and "tcp_state" in ansible_facts:
            facts = ansible_facts["tcp_state"]
    if facts is None:
        if not in_play:
            return _empty_entry(name, "failed", "host left the play before tcp_state facts were gathered")
        return _empty_entry(name, "failed", "no tcp_state facts for this host")
    problems = check_facts(facts)
    if problems:
        entry = _empty_entry(name, "malformed", "; ".join(problems))
        schema = facts.get("schema") if isinstance(facts, dict) else None
        entry["schema"] = schema if _is_count(schema) else None
        return entry
    states = facts["states"]
    findings = [
        {
            "code": f["code"],
            "severity": f["severity"],
            "summary": f.get("summary", ""),
            "evidence": f.get("evidence", {}),
            "remediation": f.get("remediation", {}),
        }
        for f in facts["findings"]
    ]
    total = facts.get("total")
    entry = {
        "name": name,
        "status": "ok",
        "severity": worst_severity(f["severity"] for f in findings) if findings else None,
        "total": total if total is not None else sum(states[s] for s in STATES),
        "states": {s: states[s] for s in STATES},
        "findings": findings,
        "pressure": _pressure_summary(facts["pressure"]),
        "error": None,
        "collected_at": facts.get("collected_at"),
        "kernel": facts.get("kernel"),
        "source": facts.get("source"),
    }
    return entry


def _text_of(value) -> str:
    """A message from a host result (any type) as bounded text."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else repr(value)
    return text[:TEXT_MAX]


def _failure_message(result: dict) -> str:
    msg = _text_of(result.get("msg")) or "tcp_state_facts failed"
    stderr = result.get("module_stderr")
    if isinstance(stderr, str) and stderr.strip():
        msg += ": " + stderr.strip().splitlines()[-1][:300]
    return msg


# ---------------------------------------------------------------------------
# the fleet


# build_report orders hosts worst first: by severity, then number of findings, then the hosts we know
# nothing about (unreachable/failed/malformed) before ok ones, each rank by natural_key of the name
_NAME = operator.itemgetter("name")
_RANK_AND_NAME = operator.itemgetter(0, 1)
_ENTRY = operator.itemgetter(2)
_STATE_COUNTS = operator.itemgetter(*STATES)


def _offender_rows(facts):
    """(kind, count key, {state: rows}) of a host's top ports, peers and processes (facts already checked)."""
    top = facts.get("top") or {}
    return (
        ("ports", "count", top.get("by_local_port") or {}),
        ("peers", "count", top.get("by_peer") or {}),
        ("processes", "sockets", facts.get("owners") or {}),
    )


def _offender_item(name, kind, state, row) -> dict:
    if kind == "processes":
        return {"host": name, "state": state, "pid": row.get("pid"), "comm": row.get("comm"), "sockets": row["sockets"]}
    if kind == "ports":
        return {"host": name, "state": state, "port": row["port"], "count": row["count"]}
    item = {"host": name, "state": state, "address": row["address"], "count": row["count"]}
    if row.get("scope") is not None:
        item["scope"] = row["scope"]
    return item


class _TopN:
    """The fleet-wide top-N per offender kind: one heap each, ties kept in arrival order."""

    def __init__(self, size):
        self.size, self.sequence = size, 0
        self.heaps = {"ports": [], "processes": [], "peers": []}

    def offer(self, count, kind, item) -> None:
        heap = self.heaps[kind]
        self.sequence += 1
        if len(heap) < self.size:
            heapq.heappush(heap, (count, -self.sequence, item))
        elif count > heap[0][0]:
            heapq.heapreplace(heap, (count, -self.sequence, item))

    def add_host(self, name, facts) -> None:
        # the floor test in line: 100,000 rows a 10,000-host fleet, a handful of which enter a heap
        for kind, count_key, by_state in _offender_rows(facts):
            heap = self.heaps[kind]
            for state, rows in by_state.items():
                for row in rows:
                    count = row[count_key]
                    if count >= OFFENDER_MIN_SOCKETS and (len(heap) < self.size or count > heap[0][0]):
                        self.offer(count, kind, _offender_item(name, kind, state, row))

    def result(self) -> dict:
        return {kind: [item for _c, _s, item in sorted(heap, reverse=True)] for kind, heap in self.heaps.items()}


def _without_cyclic_gc(function):
    """Run ``function`` with the cyclic garbage collector paused, as it was before afterwards.

    The report code builds hundreds of thousands of acyclic dicts and lists (parsed JSON, host
    entries); each allocation burst triggers collections that rescan everything already alive
    (the 10,000 hosts' facts, 100,000 merged hosts): 40% of a merge's CPU.  Reference counting
    still frees everything; nothing here makes cycles.
    """

    @functools.wraps(function)
    def paused(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return function(*args, **kwargs)
        finally:
            if enabled:
                # everything made meanwhile is still in the youngest generation, whose first collection
                # would scan all of it (0.4-0.6 s after a 100,000-host merge): move it to the oldest
                # generation as survivors of collections would be, without scanning (freeze, then unfreeze)
                gc.freeze()
                gc.unfreeze()
                gc.enable()

    return paused


class _Tally(NamedTuple):
    """What build_report sums over hosts, made in one pass over them (_tally).

    Plain data: a merge's reader makes the tally of its report's hosts while their objects are still
    in the CPU cache, a forked reader sends it marshalled as a tuple, and the tallies of reports with
    no host in common add up (_add_tallies) to the tally of all their hosts.
    """

    entries: list
    names: list
    # per entry: (-severity order, -findings, -1 for a host that gave no states, else 0)
    ranks: list
    by_status: dict
    by_severity: dict
    totals_findings: dict
    # each code's hosts, in the order of entries (sorted by build_report)
    findings_by_code: dict
    # per state of STATES, in that order
    state_sums: list


def _tally(hosts, worst=None) -> _Tally:
    """The tally of ``(entry, facts)`` pairs; ``worst`` (a _TopN), when given, takes the offenders of the facts."""
    state_rows = []
    totals_findings: dict[str, int] = {}
    by_severity = dict.fromkeys(SEVERITIES, 0)
    by_status = dict.fromkeys(STATUSES, 0)
    findings_by_code: dict[str, list[str]] = {}
    entries, ranks = [], []
    for entry, facts in hosts:
        entries.append(entry)
        status, findings = entry["status"], entry["findings"]
        by_status[status] += 1
        if status != "ok":
            ranks.append((-SEVERITY_ORDER[entry["severity"]], -len(findings), -1))
            continue
        ranks.append((-SEVERITY_ORDER[entry["severity"]], -len(findings), 0))
        state_rows.append(_STATE_COUNTS(entry["states"]))
        if findings:
            seen_codes = set()
            for finding in findings:
                code = finding["code"]
                totals_findings[code] = totals_findings.get(code, 0) + 1
                by_severity[finding["severity"]] += 1
                if code not in seen_codes:
                    seen_codes.add(code)
                    findings_by_code.setdefault(code, []).append(entry["name"])
        if facts is not None and worst is not None:
            worst.add_host(entry["name"], facts)
    # summed in C, a column per state: no Python loop over the states of each host
    state_sums = list(map(sum, zip(*state_rows))) if state_rows else [0] * len(STATES)
    names = list(map(_NAME, entries))
    return _Tally(entries, names, ranks, by_status, by_severity, totals_findings, findings_by_code, state_sums)


def _add_tallies(tallies) -> _Tally:
    """One tally of the hosts of several (whose hosts are distinct: a host in two would count twice)."""
    if len(tallies) == 1:
        return tallies[0]
    total = _Tally([], [], [], dict.fromkeys(STATUSES, 0), dict.fromkeys(SEVERITIES, 0), {}, {}, [0] * len(STATES))
    for part in tallies:
        total.entries.extend(part.entries)
        total.names.extend(part.names)
        total.ranks.extend(part.ranks)
        for counts, more in (
            (total.by_status, part.by_status),
            (total.by_severity, part.by_severity),
            (total.totals_findings, part.totals_findings),
        ):
            for key, count in more.items():
                counts[key] = counts.get(key, 0) + count
        for code, named in part.findings_by_code.items():
            total.findings_by_code.setdefault(code, []).extend(named)
        total.state_sums[:] = map(operator.add, total.state_sums, part.state_sums)
    return total


@_without_cyclic_gc
def build_report(hosts, query=None, generated_at=None, top=OFFENDERS_TOP, *, offenders=(), tallies=()) -> dict:
    """Aggregate the fleet.

    ``hosts`` is an iterable of ``(entry, facts)`` pairs: the host entry from
    :func:`host_entry` and the raw tcp_state dict it came from (or None), which
    is read once more here for the offenders and then dropped. ``offenders``
    adds ready (count, kind, item) offenders and ``tallies`` ready tallies of
    other hosts (from partial reports, see merge_reports).
    """
    compiled = compile_query(query) if query else None
    worst = _TopN(top)
    tally = _add_tallies([_tally(hosts, worst), *tallies])
    entries, ranks, state_sums = tally.entries, tally.ranks, tally.state_sums
    for offender in offenders:
        worst.offer(*offender)
    # each name's natural key once: for the host order and for every findings_by_code list
    keys = natural_keys(tally.names)
    natural = dict(zip(tally.names, keys))
    hosts_in_order = sorted(zip(ranks, keys, entries), key=_RANK_AND_NAME)
    totals_states = dict(zip(STATES, state_sums))
    report = {
        "schema": REPORT_SCHEMA,
        "generated_at": generated_at or utc_now(),
        "fleet": {"hosts": len(entries), **tally.by_status},
        "totals": {
            "states": totals_states,
            "sockets": sum(state_sums),
            "findings": dict(sorted(tally.totals_findings.items())),
            "severities": tally.by_severity,
        },
        "hosts": list(map(_ENTRY, hosts_in_order)),
        "findings_by_code": {
            code: sorted(named, key=natural.__getitem__) for code, named in sorted(tally.findings_by_code.items())
        },
        "offenders": worst.result(),
    }
    if compiled is not None:
        report["query"] = query
        # a valid query that fails on this data must not lose the report: the error goes beside it
        try:
            report["query_result"] = run_query(compiled, query, report)
        except ReportError as exc:
            report["query_result"] = None
            report["query_error"] = str(exc)
    return report


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def compile_query(query: str):
    try:
        import jmespath  # noqa: PLC0415 - controller-only dependency, needed only with a query
        from jmespath.exceptions import JMESPathError  # noqa: PLC0415
    except ImportError as exc:
        raise ReportError("audit_query needs the Python package jmespath on the controller") from exc
    if not isinstance(query, str) or not query.strip():
        raise ReportError(f"audit_query {query!r} is not a JMESPath expression (a non-empty string)")
    try:
        return jmespath.compile(query)
    except JMESPathError as exc:
        raise ReportError(f"audit_query {query!r} is not a valid JMESPath expression: {exc}") from exc


def run_query(compiled, query: str, report: dict):
    from jmespath.exceptions import JMESPathError  # noqa: PLC0415

    try:
        return compiled.search(report)
    except JMESPathError as exc:
        raise ReportError(f"audit_query {query!r} failed on the report: {exc}") from exc


# ---------------------------------------------------------------------------
# reports read back: the previous audit (history) and partial audits (merge). A report file is
# hostile input as much as a host's facts: it is checked against what this module writes.

_PRESSURE_SUMMARY_CHECK = _record(
    {
        **dict.fromkeys(("orphans", "orphans_limit", "memory_pages"), _optional(_count)),
        **dict.fromkeys(
            (
                "orphans_ratio",
                "orphans_ratio_penalized_4x",
                "memory_ratio_to_high",
                "time_wait_ratio",
                "ephemeral_ports_ratio",
            ),
            _optional(_ratio),
        ),
    }
)
ENTRY_CHECK = _record(
    {
        "name": _text,
        "status": _one_of(STATUSES),
        "total": _optional(_count),
        "states": _optional(_counts(STATES)),
        "findings": _list_of(REPORT_FINDING_CHECK),
        "pressure": _optional(_PRESSURE_SUMMARY_CHECK),
        "error": _optional(_text),
        "collected_at": _optional(_text),
        "kernel": _optional(_text),
        "source": _optional(_text),
    },
    required=("name", "status", "findings"),
)
_OFFENDER_BASE = {"host": _text, "state": _STATE}
_REPORT_FIELDS = {
    "schema": _equal(REPORT_SCHEMA, "report schema"),
    "generated_at": _text,
    "hosts": _list_of(ENTRY_CHECK),
    "offenders": _record(
        {
            "ports": _list_of(_record({**_OFFENDER_BASE, "port": _port, "count": _count}, ("host", "state", "count"))),
            "processes": _list_of(
                _record(
                    {**_OFFENDER_BASE, "pid": _optional(_count), "comm": _optional(_text), "sockets": _count},
                    ("host", "state", "sockets"),
                )
            ),
            "peers": _list_of(
                _record(
                    {**_OFFENDER_BASE, "address": _text, "count": _count, "scope": _optional(_text)},
                    ("host", "state", "count"),
                )
            ),
        }
    ),
}
_REPORT_REQUIRED = ("schema", "generated_at", "hosts")
REPORT_CHECK = _record(_REPORT_FIELDS, required=_REPORT_REQUIRED)
# what merge_reports checks of a report before it checks its hosts one at a time with ENTRY_CHECK
# (each host checked and taken while its objects are still in the CPU cache)
_REPORT_HEAD_CHECK = _record({**_REPORT_FIELDS, "hosts": _list_only}, required=_REPORT_REQUIRED)


def report_path(path: str) -> str:
    """A report.json path, or a directory holding one (an output_dir: its latest/report.json)."""
    if os.path.isdir(path):
        for candidate in (os.path.join(path, "report.json"), os.path.join(path, "latest", "report.json")):
            if os.path.isfile(candidate):
                return candidate
        raise ReportError(f"{path}: no report.json in this directory nor in its latest/")
    return path


def _refuse_constant(constant):
    raise ValueError(f"{constant} is not JSON")


def _finite_float(text):
    # json reads 1e999 as inf without asking parse_constant.  This hook keeps a non-finite number out of
    # every place of a report, free-form evidence and the keys no check reads included.  It costs about
    # 0.3 s of a 100,000-host merge (417,400 floats); walking the evidence instead costs as much (measured)
    # and would still let infinity into the keys no check reads
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _parse_report(path: str) -> tuple[str, dict]:
    """(the report.json path, its parsed JSON object), not checked yet."""
    path = report_path(path)
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > REPORT_MAX_BYTES:
                raise ReportError(f"{path}: {size} bytes, more than a report may hold ({REPORT_MAX_BYTES})")
            report = json.loads(fh.read(), parse_constant=_refuse_constant, parse_float=_finite_float)
    except OSError as exc:
        raise ReportError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ReportError(f"{path}: not a JSON report: {str(exc)[:200]}") from exc
    if not isinstance(report, dict):
        raise ReportError(f"{path}: not a report (a JSON {type(report).__name__})")
    return path, report


def _refuse_report(path: str, report: dict) -> None:
    """Raise the ReportError naming what is wrong with a report one of the fast checks refused (if anything is)."""
    problem = REPORT_CHECK(report, "")
    if problem:
        raise ReportError(f"{path}: not a netstate.tcp report (schema {REPORT_SCHEMA}): {problem}")


@_without_cyclic_gc
def load_report(path: str) -> dict:
    """Read and check a report.json written by write_reports (of this or another controller)."""
    path, report = _parse_report(path)
    if not REPORT_CHECK.ok(report):
        _refuse_report(path, report)
    return report


PRESSURE_KEYS = (
    "orphans",
    "orphans_limit",
    "orphans_ratio",
    "orphans_ratio_penalized_4x",
    "memory_pages",
    "memory_ratio_to_high",
    "time_wait_ratio",
    "ephemeral_ports_ratio",
)
# an ok host entry as host_entry and entry_from_report write it, keys in this order
_OK_ENTRY_KEYS = (
    "name",
    "status",
    "severity",
    "total",
    "states",
    "findings",
    "pressure",
    "error",
    "collected_at",
    "kernel",
    "source",
)
_SEVERITY = operator.itemgetter("severity")


def _worst_of(findings) -> str | None:
    """worst_severity of checked findings (a merge asks it of 100,000 hosts)."""
    if not findings:
        return None
    if len(findings) == 1:
        return findings[0]["severity"]
    return max(map(_SEVERITY, findings), key=SEVERITY_ORDER.__getitem__)


def _finding_from_report(finding: dict) -> dict:
    """A checked finding read back, with the keys host_entry gives a finding and no other."""
    remediation = finding.get("remediation", {})
    return {
        "code": finding["code"],
        "severity": finding["severity"],
        "summary": finding.get("summary", ""),
        "evidence": finding.get("evidence", {}),
        "remediation": {key: value for key, value in remediation.items() if key in REMEDIATION_KEYS},
    }


def entry_from_report(raw: dict) -> dict:
    """A host entry read back from a checked report (ENTRY_CHECK): severity and total recomputed from the
    entry itself, and no key the check did not read, at any level, kept.

    An ok host as host_entry writes it (the keys of an entry, its states, pressure and findings in their
    order; no other) is taken as it is, only severity, total and error set: a merge reads 100,000 of them
    and copying each cost 0.6 s.  Any other host is rebuilt from the keys the check read.
    """
    status, states, findings = raw["status"], raw.get("states"), raw["findings"]
    if status != "ok" or states is None:
        status = "malformed" if status == "ok" else status
        return _empty_entry(raw["name"], status, raw.get("error") or ("no states" if status == "malformed" else None))
    pressure = raw.get("pressure")
    if tuple(raw) == _OK_ENTRY_KEYS and tuple(states) == STATES and pressure and tuple(pressure) == PRESSURE_KEYS:
        for finding in findings:
            if tuple(finding) != FINDING_KEYS or not finding["remediation"].keys() <= REMEDIATION_KEYS:
                break
        else:
            raw["severity"] = _worst_of(findings)
            if raw["total"] is None:
                raw["total"] = sum(states.values())
            raw["error"] = None
            return raw
    states = {s: states[s] for s in STATES}
    pressure = pressure or {}
    total = raw.get("total")
    entry = {
        "name": raw["name"],
        "status": "ok",
        "severity": _worst_of(findings),
        # the states of STATES only: the check ignored any other key, whatever it holds
        "total": total if total is not None else sum(states.values()),
        "states": states,
        "findings": list(map(_finding_from_report, findings)),
        "pressure": {key: pressure.get(key) for key in PRESSURE_KEYS},
        "error": None,
    }
    for key in ("collected_at", "kernel", "source"):
        entry[key] = raw.get(key)
    return entry


def _read_partial(given: str) -> tuple:
    """One partial report read and checked as load_report checks it (the same refusal, naming the field), a
    host at a time, each host tallied while its objects are still in the CPU cache: (path, generated_at,
    answered, tally as a plain tuple, offenders table); answered holds 1 per host that answered (status ok)."""
    path, report = _parse_report(given)
    if not _REPORT_HEAD_CHECK.ok(report):
        _refuse_report(path, report)
    entry_ok = ENTRY_CHECK.ok
    answered = bytearray()

    def checked():
        for raw in report["hosts"]:
            if not entry_ok(raw):
                _refuse_report(path, report)
            answered.append(raw["status"] == "ok")
            yield entry_from_report(raw), None

    tally = tuple(_tally(checked()))
    return path, report["generated_at"], bytes(answered), tally, report.get("offenders") or {}


def _partials_marshalled(paths):
    """In a forked child: for each path, ("ok", _read_partial) marshalled as soon as it is read (entries are
    JSON data: marshal carries them, and loads them faster than JSON), or ("error", message) for the first
    bad report, and then no more."""
    for given in paths:
        try:
            yield marshal.dumps(("ok", _read_partial(given)))
        except ReportError as exc:
            yield marshal.dumps(("error", str(exc)))
            return


# a merge of at least this many bytes of reports reads part of them in a forked child: the JSON parse of
# the reports is most of a merge's time, and a second CPU takes part of it
MERGE_FORK_MIN_BYTES = 16 * 2**20
# the child's share of the bytes: the caller also unmarshals what the child sends (about half the cost
# of reading it, measured), between its own reports, so the child takes more than half
_CHILD_SHARE = 0.53


def _read_partials(paths, fork_min_bytes=MERGE_FORK_MIN_BYTES) -> list:
    """_read_partial of every path, in order; the later ones in a forked child when the reports are large.

    The caller reads the first paths and takes the child's reports between its own, so when several
    reports are bad the first one is named, as one process reading them in order would name it.  When
    the child fails, the caller reads the reports it did not send.
    """
    if len(paths) < 2 or not _forked.can_fork():
        return [_read_partial(given) for given in paths]
    sizes = []
    for given in paths:
        try:
            sizes.append(os.path.getsize(report_path(given)))
        except (OSError, ReportError):
            sizes.append(0)  # _read_partial names the problem
    total = sum(sizes)
    if total < fork_min_bytes:
        return [_read_partial(given) for given in paths]
    split, caller_bytes = 1, sizes[0]
    # a report goes to the caller when at least half of it fits in the caller's share
    while split < len(paths) - 1 and caller_bytes + sizes[split] / 2 <= total * (1 - _CHILD_SHARE):
        caller_bytes += sizes[split]
        split += 1
    try:
        child = _forked.ForkedCall(_partials_marshalled, paths[split:])
    except OSError:
        return [_read_partial(given) for given in paths]  # no process could be started (EAGAIN, ENOMEM)
    answers = []
    try:
        partials = []
        for given in paths[:split]:
            partials.append(_read_partial(given))
            answers.extend(map(marshal.loads, child.poll()))
        rest, ended_well = child.finish()
        answers.extend(map(marshal.loads, rest))
    finally:
        child.close()
    for kind, answer in answers:
        if kind == "error":
            raise ReportError(answer)
        partials.append(answer)
    if not ended_well:
        partials.extend(_read_partial(given) for given in paths[split + len(answers) :])
    return partials


@_without_cyclic_gc
def merge_reports(paths, fork_min_bytes=MERGE_FORK_MIN_BYTES) -> tuple[list, list, list, list]:
    """Partial reports (job slices, regions) -> (host pairs, offenders, sources, tallies) for build_report.

    A host in several reports is taken from the report where it answered (status ok), else from
    the newest; the offenders of each report are kept for the hosts taken from it. Each report's
    offenders are its top-N, so the top-N of their union is the top-N of the whole fleet.
    Each report is checked as load_report checks it, and its hosts tallied (_read_partial); large
    merges read part of the reports in a forked child (_read_partials).  When no host is in two
    reports (nor twice in one), the reports' tallies are the answer and the pairs are empty;
    otherwise the pairs are the hosts taken and the tallies are empty.
    """
    partials = _read_partials(paths, fork_min_bytes)
    tallies = [_Tally._make(tally) for _path, _generated_at, _answered, tally, _table in partials]
    sources = [{"path": os.path.abspath(path), "generated_at": generated_at} for path, generated_at, *_rest in partials]
    # the report each host is taken from
    taken_from: dict[str, int] = {}
    for index, tally in enumerate(tallies):
        taken_from.update(zip(tally.names, itertools.repeat(index)))
    pairs = []
    if len(taken_from) != sum(len(tally.names) for tally in tallies):
        chosen: dict[str, tuple] = {}
        for index, (_path, generated_at, answered, _tally_parts, _table) in enumerate(partials):
            for name, ok, entry in zip(tallies[index].names, answered, tallies[index].entries):
                taken = chosen.get(name)
                rank = (ok, generated_at, index)
                if taken is None or rank > taken[0]:
                    chosen[name] = rank, index, entry
        taken_from = {name: index for name, (_rank, index, _entry) in chosen.items()}
        pairs = [(entry, None) for _rank, _index, entry in chosen.values()]
        tallies = []
    offenders = []
    for index, (_path, _generated_at, _answered, _tally_parts, table) in enumerate(partials):
        for kind, rows in table.items():
            count_key = "sockets" if kind == "processes" else "count"
            for row in rows:
                if taken_from.get(row["host"]) == index and row[count_key] >= OFFENDER_MIN_SOCKETS:
                    # rebuilt as build_report writes an offender: a key the check did not read is dropped
                    offenders.append((row[count_key], kind, _offender_item(row["host"], kind, row["state"], row)))
    return pairs, offenders, sources, tallies


def build_merged_report(paths, query=None, top=OFFENDERS_TOP, fork_min_bytes=MERGE_FORK_MIN_BYTES) -> dict:
    """One fleet report of partial reports (merge_reports), with ``merged_from``: each one's path and generated_at."""
    pairs, offenders, sources, tallies = merge_reports(paths, fork_min_bytes)
    report = build_report(pairs, query=query, top=top, offenders=offenders, tallies=tallies)
    report["merged_from"] = sources
    return report


def compare_reports(previous, report: dict, previous_error=None) -> dict:
    """What changed since the previous report: report.json's ``changes``.

    Findings and states are compared on hosts that answered (status ok) in both audits; a host
    only in one of them is in hosts_added or hosts_removed.
    """
    changes = {
        "previous": None,
        "new_findings": [],
        "resolved_findings": [],
        "severity_changes": [],
        "hosts_added": [],
        "hosts_removed": [],
        "state_deltas": {},
    }
    if previous is None:
        if previous_error:
            changes["previous_error"] = previous_error
        return changes
    changes["previous"] = previous["generated_at"]
    before = {e["name"]: e for e in previous["hosts"]}
    now = {e["name"]: e for e in report["hosts"]}
    changes["hosts_added"] = sorted(set(now) - set(before), key=natural_key)
    changes["hosts_removed"] = sorted(set(before) - set(now), key=natural_key)
    for name in sorted(set(now) & set(before), key=natural_key):
        old, new = before[name], now[name]
        if old["status"] != "ok" or new["status"] != "ok" or old.get("states") is None:
            continue
        old_codes, new_codes = _worst_by_code(old), _worst_by_code(new)
        for code in sorted(set(new_codes) - set(old_codes)):
            changes["new_findings"].append({"host": name, "code": code, "severity": new_codes[code]})
        for code in sorted(set(old_codes) - set(new_codes)):
            changes["resolved_findings"].append({"host": name, "code": code, "severity": old_codes[code]})
        for code in sorted(set(old_codes) & set(new_codes)):
            if old_codes[code] != new_codes[code]:
                changes["severity_changes"].append(
                    {"host": name, "code": code, "severity": new_codes[code], "previous": old_codes[code]}
                )
        deltas = {s: new["states"][s] - old["states"][s] for s in STATES if new["states"][s] != old["states"][s]}
        if deltas:
            changes["state_deltas"][name] = deltas
    return changes


def _worst_by_code(entry) -> dict:
    worst: dict[str, str] = {}
    for finding in entry["findings"]:
        code = finding["code"]
        if severity_order(finding["severity"]) > severity_order(worst.get(code)):
            worst[code] = finding["severity"]
    return worst


# ---------------------------------------------------------------------------
# renderers


def top_states(states, limit=3):
    if not states:
        return []
    return sorted(((s, n) for s, n in states.items() if n), key=lambda item: (-item[1], item[0]))[:limit]


def _hosts(count: int) -> str:
    return "1 host" if count == 1 else f"{count} hosts"


def _finding_codes(entry):
    return sorted({f["code"] for f in entry["findings"]})


def render_json(report: dict) -> str:
    # indented for people on small fleets; json's C encoder runs only without indent (5x faster on 10k hosts).
    # allow_nan=False: NaN and Infinity are not JSON; the host checks keep them out, this refuses any that slipped in
    # a big report is compact (no spaces after separators either): it is read back by merges and histories,
    # which then parse 10% less
    if len(report["hosts"]) <= JSON_INDENT_MAX_HOSTS:
        return json.dumps(report, indent=1, default=str, allow_nan=False) + "\n"
    return json.dumps(report, separators=(",", ":"), default=str, allow_nan=False) + "\n"


def changes_line(report: dict) -> str:
    """One line: what changed since the last audit (the last line of the terminal summary)."""
    changes = report.get("changes")
    if changes is None:
        return ""
    if changes["previous"] is None:
        why = f" ({one_line(changes['previous_error'])[:200]})" if changes.get("previous_error") else ""
        return f"since the last audit: no previous report to compare with{why}"
    return (
        f"since the last audit ({changes['previous']}): {len(changes['new_findings'])} new findings, "
        f"{len(changes['resolved_findings'])} resolved, {len(changes['severity_changes'])} severity changes, "
        f"{len(changes['hosts_added'])} hosts added, {len(changes['hosts_removed'])} removed"
    )


def summary_table(report: dict, report_dir=None, limit=SUMMARY_MAX_HOSTS) -> str:
    """The terminal summary: one line per host, worst first; host text on one line each."""
    fleet = report["fleet"]
    lines = [
        f"{'HOST':<24} {'STATUS':<11} {'WORST':<8} {'SOCKETS':>8}  {'TOP STATES':<44} FINDINGS / ERROR",
    ]
    for entry in report["hosts"][:limit]:
        if entry["status"] == "ok":
            tops = ", ".join(f"{s} {n}" for s, n in top_states(entry["states"]))
            tail = ", ".join(_finding_codes(entry)) or "-"
            total = str(entry["total"])
        else:
            tops, total = "-", "-"
            tail = one_line(entry["error"])[:100]
        lines.append(
            f"{one_line(entry['name'])[:24]:<24} {entry['status']:<11} {entry['severity'] or '-':<8} "
            f"{total:>8}  {tops[:44]:<44} {tail}"
        )
    if len(report["hosts"]) > limit:
        lines.append(f"... {len(report['hosts']) - limit} more hosts in the report")
    lines.append(
        f"fleet: {fleet['hosts']} hosts, {fleet['ok']} ok, {fleet['malformed']} malformed, "
        f"{fleet['failed']} failed, {fleet['unreachable']} unreachable; "
        + (
            "findings: " + ", ".join(f"{c} x{n}" for c, n in report["totals"]["findings"].items())
            if report["totals"]["findings"]
            else "no findings"
        )
    )
    if report.get("query_error"):
        lines.append("query error: " + one_line(report["query_error"]))
    if report_dir:
        lines.append(f"reports: {one_line(report_dir)}")
    if "changes" in report:
        lines.append(changes_line(report))
    return "\n".join(lines)


# Markdown: HTML is allowed inline, | splits table cells, ` opens code, [ ] make links, * emphasis
_MD_SPECIAL = re.compile(r"([\\`*\[\]|])")


def _md(value) -> str:
    """Host text as Markdown text: one line, HTML-escaped, Markdown punctuation backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(one_line(value), quote=False))


def _md_changes(report: dict) -> list:
    changes = report.get("changes")
    if changes is None:
        return []
    out = ["## Since the last audit", ""]
    if changes["previous"] is None:
        out += [_md(changes_line(report)), ""]
        return out
    out += [f"Compared with the report of {_md(changes['previous'])}.", ""]
    for key, label in (
        ("new_findings", "New findings"),
        ("resolved_findings", "Resolved findings"),
        ("severity_changes", "Severity changes"),
    ):
        rows = changes[key]
        out.append(f"- {label}: " + (", ".join(_change_text(row) for row in rows) if rows else "none"))
    for key, label in (("hosts_added", "Hosts added"), ("hosts_removed", "Hosts removed")):
        out.append(f"- {label}: " + (", ".join(_md(name) for name in changes[key]) or "none"))
    deltas = changes["state_deltas"]
    out.append(
        "- State changes: "
        + (
            "; ".join(
                f"{_md(host)}: " + ", ".join(f"{_md(state)} {delta:+d}" for state, delta in states.items())
                for host, states in deltas.items()
            )
            or "none"
        )
    )
    out.append("")
    return out


def _change_text(row) -> str:
    text = f"{_md(row['host'])} {_md(row['code'])} ({_md(row['severity'])}"
    if "previous" in row:
        text += f", was {_md(row['previous'])}"
    return text + ")"


def _md_hosts(report: dict) -> list:
    out = [
        "## Hosts (worst first)",
        "",
        "| host | status | worst | sockets | top states | findings |",
        "| --- | --- | --- | ---: | --- | --- |",
    ]
    for entry in report["hosts"]:
        if entry["status"] == "ok":
            tops = ", ".join(f"{s} {n}" for s, n in top_states(entry["states"])) or "-"
            out.append(
                f"| {_md(entry['name'])} | ok | {entry['severity'] or '-'} | {entry['total']} | {_md(tops)} | "
                f"{_md(', '.join(_finding_codes(entry))) or '-'} |"
            )
        else:
            out.append(f"| {_md(entry['name'])} | {entry['status']} | - | - | - | {_md(entry['error'])} |")
    out += ["", "## Fleet totals by state", "", "| state | sockets |", "| --- | ---: |"]
    out += [f"| {_md(s)} | {n} |" for s, n in report["totals"]["states"].items()]
    return out


def _md_findings(report: dict) -> list:
    out = ["", "## Findings by code", ""]
    if not report["findings_by_code"]:
        out.append("No findings.")
    remedies = _first_remediations(report)
    for code, names in report["findings_by_code"].items():
        out += [f"### {_md(code)} ({_hosts(len(names))})", "", "Hosts: " + ", ".join(_md(n) for n in names), ""]
        summary, remediation = remedies.get(code, ("", {}))
        if summary:
            out += [f"Example: {_md(summary)}", ""]
        if remediation.get("text"):
            out += [f"What to do ({_md(remediation.get('kind') or 'see text')}): {_md(remediation['text'])}", ""]
        sysctls = remediation.get("sysctls") or {}
        if sysctls:
            out += ["Suggested sysctls: " + ", ".join(f"{_md(k)} = {_md(v)}" for k, v in sysctls.items()), ""]
    return out


def _md_offenders(report: dict) -> list:
    out = ["## Worst offenders across the fleet", ""]
    for kind, key, label in (
        ("ports", "port", "local port"),
        ("processes", "comm", "process"),
        ("peers", "address", "peer"),
    ):
        rows = report["offenders"][kind]
        out += [f"### {kind.capitalize()}", ""]
        if not rows:
            out += ["None.", ""]
            continue
        count_key = "sockets" if kind == "processes" else "count"
        out += [f"| host | state | {label} | sockets |", "| --- | --- | --- | ---: |"]
        for row in rows:
            what = f"{row.get('comm')} (pid {row.get('pid')})" if kind == "processes" else row.get(key)
            out.append(f"| {_md(row['host'])} | {_md(row['state'])} | {_md(what)} | {row[count_key]} |")
        out.append("")
    return out


def _md_problems_and_query(report: dict) -> list:
    out = []
    problems = [e for e in report["hosts"] if e["status"] != "ok"]
    if problems:
        out += ["## Hosts without usable facts", "", "| host | status | error |", "| --- | --- | --- |"]
        out += [f"| {_md(e['name'])} | {e['status']} | {_md(e['error'])} |" for e in problems]
        out.append("")
    if "query" in report:
        out += ["## Query", "", _md(report["query"]), ""]
        if report.get("query_error"):
            out += [f"Query error: {_md(report['query_error'])}", ""]
        else:
            # a fenced block shows text as is; a fence longer than any backtick run inside cannot be closed early
            text = json.dumps(report["query_result"], indent=1, default=str)
            fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
            out += [fence + "json", text, fence, ""]
    return out


def render_md(report: dict) -> str:
    fleet = report["fleet"]
    out = [
        "# TCP state fleet audit",
        "",
        f"Generated {_md(report['generated_at'])} by netstate.tcp (report schema {report['schema']}).",
        "",
        *_md_changes(report),
        f"{fleet['hosts']} hosts: {fleet['ok']} ok, {fleet['malformed']} malformed, "
        f"{fleet['failed']} failed, {fleet['unreachable']} unreachable. "
        f"{report['totals']['sockets']} TCP sockets on the hosts that answered.",
        "",
        *_md_hosts(report),
        *_md_findings(report),
        *_md_offenders(report),
        *_md_problems_and_query(report),
    ]
    return "\n".join(out).rstrip() + "\n"


def _first_remediations(report: dict) -> dict:
    found = {}
    for entry in report["hosts"]:
        for finding in entry["findings"]:
            if finding["code"] not in found:
                remediation = finding.get("remediation")
                found[finding["code"]] = (
                    finding.get("summary", ""),
                    remediation if isinstance(remediation, dict) else {},
                )
    return found


CSV_PRESSURE = ("orphans", "orphans_limit", "orphans_ratio", "memory_pages", "memory_ratio_to_high", "time_wait_ratio")
# a spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection")
CSV_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value):
    """A cell as data: text that a spreadsheet would run as a formula gets a leading quote (OWASP)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return "'" + value if value.startswith(CSV_FORMULA_PREFIXES) else value
    return value if _is_finite(value) else ""


def render_csv(report: dict) -> str:
    buffer = io.StringIO()
    # RFC 4180 line ends: the writer then quotes a field holding a bare CR as well as one holding LF
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(
        ["host", "status", "worst_severity", "sockets", *STATES, "findings", *CSV_PRESSURE, "error"],
    )
    for entry in report["hosts"]:
        states = entry["states"] or {}
        pressure = entry["pressure"] or {}
        row = [
            entry["name"],
            entry["status"],
            entry["severity"],
            entry["total"],
            *(states.get(s) for s in STATES),
            " ".join(_finding_codes(entry)),
            *(pressure.get(k) for k in CSV_PRESSURE),
            entry["error"],
        ]
        writer.writerow([_csv_cell(value) for value in row])
    return buffer.getvalue()


def render_prom(entry: dict, generated_at: str) -> str:
    """node_exporter textfile-collector text for one host (status ok only): the hosts' own renderer."""
    return render_metrics(entry["states"], entry["findings"], entry["pressure"], generated_at)


# ---------------------------------------------------------------------------
# HTML: self-contained page, charts as inline SVG, a few lines of inline JS

STATE_COLORS = {
    "ESTABLISHED": "#4e79a7",
    "SYN_SENT": "#a0cbe8",
    "SYN_RECV": "#f28e2b",
    "FIN_WAIT1": "#e15759",
    "FIN_WAIT2": "#ff9d9a",
    "TIME_WAIT": "#edc948",
    "CLOSE": "#bab0ac",
    "CLOSE_WAIT": "#b07aa1",
    "LAST_ACK": "#9c755f",
    "LISTEN": "#59a14f",
    "CLOSING": "#8cd17d",
    "NEW_SYN_RECV": "#86bcb6",
}
SEVERITY_COLORS = {"critical": "#c0392b", "warning": "#e67e22", "info": "#2980b9", None: "#7f8c8d"}
STATUS_COLORS = {"ok": "#27ae60", "malformed": "#8e44ad", "failed": "#c0392b", "unreachable": "#7f8c8d"}

HTML_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
.muted{color:#666}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:110px}
.card b{display:block;font-size:24px}
table{border-collapse:collapse;background:#fff;font-size:13px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f0;cursor:pointer;user-select:none}td.n{text-align:right}
.badge{display:inline-block;padding:1px 6px;border-radius:3px;color:#fff;font-size:12px}
.chart{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;margin:8px 0;overflow-x:auto}
.legend span{display:inline-block;margin-right:10px;font-size:12px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px}
svg text{font-size:11px;fill:#333}
"""

HTML_JS = """
(function () {
  "use strict";
  var table = document.getElementById("hosts");
  if (!table) { return; }
  var heads = table.querySelectorAll("th");
  heads.forEach(function (th, col) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      var asc = th.getAttribute("data-dir") !== "asc";
      heads.forEach(function (h) { h.removeAttribute("data-dir"); });
      th.setAttribute("data-dir", asc ? "asc" : "desc");
      rows.sort(function (a, b) {
        var x = a.cells[col].getAttribute("data-v") || a.cells[col].textContent;
        var y = b.cells[col].getAttribute("data-v") || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var r = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? r : -r;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  var filter = document.getElementById("filter");
  filter.addEventListener("input", function () {
    var q = filter.value.toLowerCase();
    Array.prototype.forEach.call(table.tBodies[0].rows, function (r) {
      r.style.display = r.textContent.toLowerCase().indexOf(q) >= 0 ? "" : "none";
    });
  });
  document.getElementById("shown").textContent = "script ok";
})();
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _badge(text, color) -> str:
    return f'<span class="badge" style="background:{color}">{_e(text)}</span>'


def _svg_states_per_host(hosts: list) -> str:
    """Stacked horizontal bars: one bar per host, one segment per state."""
    label_w, bar_w, row_h = 190, 620, 18
    scale_max = max((h["total"] for h in hosts if _is_count(h["total"])), default=0) or 1
    height = row_h * len(hosts) + 24
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chart-states" role="img" width="{label_w + bar_w + 80}" '
        f'height="{height}" aria-label="TCP states per host">'
    ]
    for row, entry in enumerate(hosts):
        y = row * row_h + 4
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{_e(entry["name"][:30])}</text>')
        x = float(label_w)
        for state in STATES:
            count = entry["states"][state]
            if not _is_count(count) or not count:
                continue
            width = bar_w * count / scale_max
            parts.append(
                f'<rect x="{x:.1f}" y="{y}" width="{max(width, 0.5):.1f}" height="{row_h - 4}" '
                f'fill="{STATE_COLORS[state]}"><title>{_e(entry["name"])}: {state} {count}</title></rect>'
            )
            x += width
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 12}">{entry["total"]}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_findings_by_code(report: dict) -> str:
    codes = list(report["findings_by_code"].items())
    label_w, bar_w, row_h = 230, 400, 22
    hosts_ok = max(report["fleet"]["ok"], 1)
    worst = {}
    for entry in report["hosts"]:
        for finding in entry["findings"]:
            if severity_order(finding["severity"]) > severity_order(worst.get(finding["code"])):
                worst[finding["code"]] = finding["severity"]
    height = row_h * len(codes) + 8
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chart-findings" role="img" width="{label_w + bar_w + 120}" '
        f'height="{height}" aria-label="Findings by code">'
    ]
    for row, (code, names) in enumerate(codes):
        y = row * row_h + 4
        width = max(bar_w * len(names) / hosts_ok, 2)
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{_e(code)}</text>')
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{width:.1f}" height="{row_h - 6}" '
            f'fill="{SEVERITY_COLORS[worst.get(code)]}"><title>{_e(code)}: {len(names)} hosts</title></rect>'
        )
        label = _e(f"{_hosts(len(names))} ({worst.get(code)})")
        parts.append(f'<text x="{label_w + width + 4:.1f}" y="{y + 13}">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _svg_pressure(hosts: list) -> str:
    """Two bars per host: orphans / tcp_max_orphans and TCP memory / tcp_mem[2], 0..100 %."""
    label_w, bar_w, row_h = 190, 400, 26
    height = row_h * len(hosts) + 30
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" id="chart-pressure" role="img" width="{label_w + bar_w + 120}" '
        f'height="{height}" aria-label="Orphan and memory pressure per host">'
    ]
    for pct in (0, 50, 100):
        x = label_w + bar_w * pct / 100
        parts.append(f'<line x1="{x}" y1="0" x2="{x}" y2="{height - 16}" stroke="#ccc" stroke-dasharray="3,3"/>')
        parts.append(f'<text x="{x}" y="{height - 4}" text-anchor="middle">{pct}%</text>')
    for row, entry in enumerate(hosts):
        y = row * row_h + 2
        pressure = entry["pressure"] or {}
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{_e(entry["name"][:30])}</text>')
        for offset, key, color, label in (
            (0, "orphans_ratio", "#e15759", "orphans / tcp_max_orphans"),
            (11, "memory_ratio_to_high", "#4e79a7", "TCP memory / tcp_mem[2]"),
        ):
            value = pressure.get(key)
            value = value if _is_finite(value) and value >= 0 else None  # never width="nan"
            shown = "n/a" if value is None else f"{value * 100:.1f}%"
            width = 0 if value is None else min(value, 1.0) * bar_w
            parts.append(
                f'<rect x="{label_w}" y="{y + offset}" width="{max(width, 1):.1f}" height="10" fill="{color}">'
                f"<title>{_e(entry['name'])}: {label} {shown}</title></rect>"
            )
            parts.append(f'<text x="{label_w + width + 4:.1f}" y="{y + offset + 9}">{shown}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _chart_hosts(report: dict, key) -> tuple[list, str]:
    ok_hosts = [e for e in report["hosts"] if e["status"] == "ok"]
    if len(ok_hosts) <= CHART_MAX_HOSTS:
        return sorted(ok_hosts, key=lambda e: (-key(e), natural_key(e["name"]))), ""
    chosen = heapq.nlargest(CHART_MAX_HOSTS, ok_hosts, key=lambda e: (key(e), e["name"]))
    return chosen, f'<p class="muted">Showing the {CHART_MAX_HOSTS} highest of {len(ok_hosts)} hosts.</p>'


def _max_pressure(entry):
    pressure = entry["pressure"] or {}
    ratios = (pressure.get("orphans_ratio"), pressure.get("memory_ratio_to_high"))
    return max((value for value in ratios if _is_finite(value)), default=0.0)


def _html_changes(report: dict) -> list:
    changes = report.get("changes")
    if changes is None:
        return []
    out = ['<h2 id="changes">Since the last audit</h2>']
    if changes["previous"] is None:
        return [*out, f"<p>{_e(changes_line(report))}</p>"]
    out.append(f"<p>Compared with the report of {_e(changes['previous'])}.</p><ul>")
    for key, label in (
        ("new_findings", "New findings"),
        ("resolved_findings", "Resolved findings"),
        ("severity_changes", "Severity changes"),
    ):
        rows = changes[key]
        text = ", ".join(
            f"{row['host']} {row['code']} ({row['severity']}"
            + (f", was {row['previous']})" if "previous" in row else ")")
            for row in rows
        )
        out.append(f"<li><b>{label}:</b> {_e(text or 'none')}</li>")
    for key, label in (("hosts_added", "Hosts added"), ("hosts_removed", "Hosts removed")):
        out.append(f"<li><b>{label}:</b> {_e(', '.join(changes[key]) or 'none')}</li>")
    deltas = "; ".join(
        f"{host}: " + ", ".join(f"{state} {delta:+d}" for state, delta in states.items())
        for host, states in changes["state_deltas"].items()
    )
    out.append(f"<li><b>State changes:</b> {_e(deltas or 'none')}</li></ul>")
    return out


def _html_head(report: dict) -> list:
    fleet = report["fleet"]
    cards = [
        ("hosts", fleet["hosts"], "#34495e"),
        ("ok", fleet["ok"], STATUS_COLORS["ok"]),
        ("malformed", fleet["malformed"], STATUS_COLORS["malformed"]),
        ("failed", fleet["failed"], STATUS_COLORS["failed"]),
        ("unreachable", fleet["unreachable"], STATUS_COLORS["unreachable"]),
        ("critical findings", report["totals"]["severities"]["critical"], SEVERITY_COLORS["critical"]),
        ("warnings", report["totals"]["severities"]["warning"], SEVERITY_COLORS["warning"]),
        ("sockets", report["totals"]["sockets"], "#34495e"),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>TCP state fleet audit {_e(report['generated_at'])}</title>",
        f"<style>{HTML_CSS}</style></head><body>",
        "<h1>TCP state fleet audit</h1>",
        f'<div class="muted">Generated {_e(report["generated_at"])} by netstate.tcp, report schema '
        f'{report["schema"]}. <span id="shown"></span></div>',
        '<div class="cards">',
    ]
    out += [f'<div class="card" style="border-top:4px solid {c}"><b>{v}</b>{_e(k)}</div>' for k, v, c in cards]
    out.append("</div>")
    return out


def _html_charts(report: dict) -> list:
    legend = "".join(f'<span><i style="background:{STATE_COLORS[s]}"></i>{s}</span>' for s in STATES)
    state_hosts, note = _chart_hosts(report, key=lambda e: e["total"] or 0)
    out = ["<h2>TCP states per host</h2>", note, f'<div class="legend">{legend}</div>']
    out.append(
        f'<div class="chart">{_svg_states_per_host(state_hosts)}</div>' if state_hosts else "<p>No host answered.</p>"
    )

    out.append("<h2>Findings by code</h2>")
    if report["findings_by_code"]:
        out.append(f'<div class="chart">{_svg_findings_by_code(report)}</div>')
    else:
        out.append("<p>No findings.</p>")

    pressure_hosts, note = _chart_hosts(report, key=_max_pressure)
    out += [
        "<h2>Orphan and memory pressure per host</h2>",
        note,
        '<div class="legend"><span><i style="background:#e15759"></i>orphans / tcp_max_orphans</span>'
        '<span><i style="background:#4e79a7"></i>TCP memory / tcp_mem[2] (pages)</span>'
        '<span class="muted">n/a: the limit is not visible (e.g. inside a non-initial network namespace)</span></div>',
    ]
    if pressure_hosts:
        out.append(f'<div class="chart">{_svg_pressure(pressure_hosts)}</div>')
    return out


def _html_hosts(report: dict) -> list:
    out = [
        "<h2>Hosts (worst first)</h2>",
        '<p><input id="filter" type="search" placeholder="filter hosts" aria-label="filter hosts"> '
        '<span class="muted">Click a column heading to sort.</span></p>',
        '<table id="hosts"><thead><tr><th>host</th><th>status</th><th>worst</th><th>sockets</th>'
        "<th>top states</th><th>findings / error</th></tr></thead><tbody>",
    ]
    for entry in report["hosts"]:
        status = _badge(entry["status"], STATUS_COLORS[entry["status"]])
        severity = _badge(entry["severity"], SEVERITY_COLORS[entry["severity"]]) if entry["severity"] else "-"
        if entry["status"] == "ok":
            tops = ", ".join(f"{s} {n}" for s, n in top_states(entry["states"])) or "-"
            detail = "<br>".join(f"<b>{_e(f['code'])}</b>: {_e(f['summary'])}" for f in entry["findings"]) or "-"
            total = entry["total"]
        else:
            tops, total, detail = "-", "", _e(entry["error"])
        out.append(
            f"<tr><td>{_e(entry['name'])}</td><td>{status}</td>"
            f'<td data-v="{severity_order(entry["severity"])}">{severity}</td>'
            f'<td class="n">{total}</td><td>{_e(tops)}</td><td>{detail}</td></tr>'
        )
    out.append("</tbody></table>")
    return out


def _html_findings(report: dict) -> list:
    out = ["<h2>Findings and what to do</h2>"]
    remedies = _first_remediations(report)
    if not report["findings_by_code"]:
        out.append("<p>No findings.</p>")
    for code, names in report["findings_by_code"].items():
        summary, remediation = remedies.get(code, ("", {}))
        out.append(f"<h3>{_e(code)} <span class='muted'>({_hosts(len(names))})</span></h3>")
        out.append(f"<p><b>Hosts:</b> {_e(', '.join(names))}</p>")
        if summary:
            out.append(f"<p><b>Example:</b> {_e(summary)}</p>")
        if remediation.get("text"):
            out.append(f"<p><b>What to do ({_e(remediation.get('kind', ''))}):</b> {_e(remediation['text'])}</p>")
        sysctls = remediation.get("sysctls") or {}
        if sysctls:
            out.append(
                "<p><b>Suggested sysctls:</b> " + _e(", ".join(f"{k} = {v}" for k, v in sysctls.items())) + "</p>"
            )
    return out


def _html_offenders(report: dict) -> list:
    out = ["<h2>Worst offenders across the fleet</h2>"]
    for kind, label in (("ports", "local port"), ("processes", "process"), ("peers", "peer")):
        rows = report["offenders"][kind]
        out.append(f"<h3>{kind.capitalize()}</h3>")
        if not rows:
            out.append("<p>None.</p>")
            continue
        out.append(f"<table><tr><th>host</th><th>state</th><th>{label}</th><th>sockets</th></tr>")
        for row in rows:
            if kind == "processes":
                what, count = f"{row.get('comm')} (pid {row.get('pid')})", row["sockets"]
            else:
                what, count = row.get("port" if kind == "ports" else "address"), row["count"]
            out.append(
                f"<tr><td>{_e(row['host'])}</td><td>{_e(row['state'])}</td><td>{_e(what)}</td>"
                f'<td class="n">{count}</td></tr>'
            )
        out.append("</table>")
    return out


def _html_totals_and_query(report: dict) -> list:
    out = ["<h2>Fleet totals by state</h2>", "<table><tr><th>state</th><th>sockets</th></tr>"]
    out += [f'<tr><td>{s}</td><td class="n">{n}</td></tr>' for s, n in report["totals"]["states"].items()]
    out.append("</table>")
    if "query" in report:
        out += ["<h2>Query</h2>", f"<p><code>{_e(report['query'])}</code></p>"]
        if report.get("query_error"):
            out.append(f"<p><b>Query error:</b> {_e(report['query_error'])}</p>")
        else:
            out.append(f"<pre>{_e(json.dumps(report['query_result'], indent=1, default=str))}</pre>")
    return out


def render_html(report: dict) -> str:
    out = [
        *_html_head(report),
        *_html_changes(report),
        *_html_charts(report),
        *_html_hosts(report),
        *_html_findings(report),
        *_html_offenders(report),
        *_html_totals_and_query(report),
        f"<script>{HTML_JS}</script>",
        "</body></html>",
    ]
    return "\n".join(out) + "\n"


RENDERERS = {"json": render_json, "md": render_md, "html": render_html, "csv": render_csv}
FILE_NAMES = {"json": "report.json", "md": "report.md", "html": "report.html", "csv": "report.csv"}


# ---------------------------------------------------------------------------
# files


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask must not loosen or tighten 0640
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fd = None
            fh.write(text)
    finally:
        if fd is not None:
            os.close(fd)


def _make_dirs(path: str) -> None:
    """mkdir -p with DIR_MODE set explicitly on every directory it creates (the umask may be 000)."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            if not os.path.isdir(directory):
                raise
            continue
        os.chmod(directory, DIR_MODE)


def write_reports(report: dict, output_dir: str, formats) -> dict:
    """Write the reports into a new timestamped directory and point ``latest`` at it.

    All files are written into a temporary directory beside the final one, which is renamed
    into place only once every file is complete: a full disk or any error leaves no
    half-written report directory and ``latest`` keeps pointing at the previous one.
    Returns {"report_dir", "latest", "files": {format: path}}.
    """
    file_formats = [fmt for fmt in formats if fmt in RENDERERS]
    if not file_formats:
        raise ReportError(f"formats {list(formats)!r} name no report file: give at least one of {', '.join(RENDERERS)}")
    _make_dirs(output_dir)
    stamp = report["generated_at"].replace("-", "").replace(":", "")
    staging = tempfile.mkdtemp(prefix=f".{stamp}.", suffix=".partial", dir=output_dir)
    tmp_link = None
    try:
        os.chmod(staging, DIR_MODE)
        names = {}
        for fmt in file_formats:
            names[fmt] = FILE_NAMES[fmt]
            _write_private(os.path.join(staging, FILE_NAMES[fmt]), RENDERERS[fmt](report))
        report_dir = _rename_into_place(staging, output_dir, stamp)
        staging = None
        # a relative link, swapped in atomically: readers never see it missing
        tmp_link = os.path.join(output_dir, f".latest.{os.getpid()}.{os.path.basename(report_dir)}")
        os.symlink(os.path.basename(report_dir), tmp_link)
        os.replace(tmp_link, os.path.join(output_dir, "latest"))
        tmp_link = None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if tmp_link is not None and os.path.lexists(tmp_link):
            os.unlink(tmp_link)
    files = {fmt: os.path.join(os.path.abspath(report_dir), name) for fmt, name in names.items()}
    return {
        "report_dir": os.path.abspath(report_dir),
        "latest": os.path.abspath(os.path.join(output_dir, "latest")),
        "files": files,
    }


def _rename_into_place(staging: str, output_dir: str, stamp: str) -> str:
    """Rename the finished staging directory to <stamp>, or <stamp>-N when that exists (same second)."""
    suffix = 0
    while True:
        report_dir = os.path.join(output_dir, stamp if suffix == 0 else f"{stamp}-{suffix}")
        suffix += 1
        if os.path.lexists(report_dir):
            continue
        try:
            # rename(2) onto an existing non-empty directory fails: a concurrent run took the name
            os.rename(staging, report_dir)
        except OSError as exc:
            if os.path.lexists(report_dir) and suffix < 1000:
                continue
            raise exc
        return report_dir
