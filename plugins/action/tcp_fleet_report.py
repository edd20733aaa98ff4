# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Action plugin for netstate.tcp.tcp_fleet_report: runs on the controller only.

Reads every audited host's registered tcp_state_facts result from hostvars
(or partial reports to merge), hands them to plugin_utils._fleet_report
(aggregation, history and renderers) and writes the reports.  Nothing runs on
the managed nodes.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import validate_thresholds
from ansible_collections.netstate.tcp.plugins.plugin_utils._fleet_report import (
    DEFAULT_FORMATS,
    FORMATS,
    RENDERERS,
    ReportError,
    build_merged_report,
    build_report,
    compare_reports,
    host_entry,
    load_report,
    render_prom,
    summary_table,
    write_reports,
)

display = Display()

# relative to the working directory of ansible-playbook, never inside the collection
DEFAULT_OUTPUT_DIR = "netstate-reports"

ARGUMENT_SPEC = {
    "hosts": {"type": "list", "elements": "str"},
    "play_hosts": {"type": "list", "elements": "str"},
    "merge": {"type": "list", "elements": "path"},
    "result_var": {"type": "str", "default": "audit_tcp_facts"},
    "output_dir": {"type": "path", "default": DEFAULT_OUTPUT_DIR},
    "compare_with": {"type": "path"},
    "formats": {"type": "list", "elements": "str", "choices": list(FORMATS), "default": list(DEFAULT_FORMATS)},
    "query": {"type": "str"},
    "thresholds": {"type": "dict"},
}
MUTUALLY_EXCLUSIVE = [["hosts", "merge"]]
REQUIRED_ONE_OF = [["hosts", "merge"]]


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(
            argument_spec=ARGUMENT_SPEC, mutually_exclusive=MUTUALLY_EXCLUSIVE, required_one_of=REQUIRED_ONE_OF
        )
        if args["thresholds"] is not None:
            # the thresholds the hosts are (to be) audited with: checked here, on the controller, as
            # tcp_state_facts checks them, so a bad key fails before any host is touched
            try:
                validate_thresholds(args["thresholds"])
            except ValueError as exc:
                raise AnsibleActionFail(f"audit_thresholds: {exc}") from exc
        if not any(fmt in RENDERERS for fmt in args["formats"]):
            # a report run that writes no report file would point `latest` at nothing new
            raise AnsibleActionFail(
                f"formats {args['formats']!r} name no report file: give at least one of {', '.join(RENDERERS)}"
            )
        try:
            report = self._build(args, task_vars.get("hostvars", {}))
        except ReportError as exc:
            raise AnsibleActionFail(str(exc)) from exc

        result["fleet"] = report["fleet"]
        result["findings_by_code"] = report["findings_by_code"]
        result["changes"] = report["changes"]
        if "query" in report:
            result["query_result"] = report["query_result"]
        if report.get("query_error"):
            result["query_error"] = report["query_error"]
            display.warning(report["query_error"] + " (the report was written without its result)")
        if "prom" in args["formats"]:
            result["prom"] = {
                e["name"]: render_prom(e, report["generated_at"]) for e in report["hosts"] if e["status"] == "ok"
            }
        if self._task.check_mode:
            result["summary"] = summary_table(report)
            result.update(changed=False, report_dir=None, files={})
            return result
        try:
            written = write_reports(report, args["output_dir"], args["formats"])
        except (OSError, ReportError) as exc:
            raise AnsibleActionFail(f"cannot write the reports into output_dir {args['output_dir']!r}: {exc}") from exc
        result.update(written)
        result["summary"] = summary_table(report, report_dir=written["report_dir"])
        result["changed"] = True
        return result

    def _build(self, args, hostvars) -> dict:
        if args["merge"]:
            report = build_merged_report(args["merge"], query=args["query"])
        else:
            in_play = set(args["play_hosts"] if args["play_hosts"] is not None else args["hosts"])

            def fleet():
                for name, res, fallback in host_inputs(hostvars, args["hosts"], args["result_var"]):
                    if res is _UNKNOWN:
                        yield host_entry(name, result={"unreachable": True, "msg": _UNKNOWN_MSG}), None
                        continue
                    entry = host_entry(name, result=res, facts=fallback, in_play=name in in_play)
                    facts = fallback
                    if isinstance(res, dict) and isinstance(res.get("ansible_facts"), dict):
                        facts = res["ansible_facts"].get("tcp_state", fallback)
                    yield entry, facts if entry["status"] == "ok" else None

            report = build_report(fleet(), query=args["query"])
        report["changes"] = _changes(args, report)
        return report


def _changes(args, report) -> dict:
    """Compare with audit_compare_with, else with the last report in output_dir (none on a first audit)."""
    path = args["compare_with"]
    if path is None:
        path = os.path.join(args["output_dir"], "latest", "report.json")
        if not os.path.exists(path):
            return compare_reports(None, report)
    try:
        return compare_reports(load_report(path), report)
    except ReportError as exc:
        # a broken or hostile previous report never costs this audit its report
        return compare_reports(None, report, previous_error=str(exc))


_UNKNOWN = object()
_UNKNOWN_MSG = "not in the inventory: no such host"


def host_inputs(hostvars, names, result_var):
    """(name, registered result, tcp_state facts from hostvars) for each host.

    Reads hostvars through its public mapping interface: ``name in hostvars`` and
    ``hostvars.raw_get(name)`` (a host's variables, not templated: registered results
    are data).  A name the inventory does not know yields the _UNKNOWN marker.
    """
    for name in names:
        if name not in hostvars:
            yield name, _UNKNOWN, None
            continue
        raw_get = getattr(hostvars, "raw_get", None)
        host_vars = raw_get(name) if raw_get is not None else hostvars.get(name)
        if not hasattr(host_vars, "get"):
            host_vars = {}
        result = host_vars.get(result_var)
        if result is not None:
            yield name, result, None
            continue
        yield name, None, (host_vars.get("ansible_facts") or {}).get("tcp_state")
