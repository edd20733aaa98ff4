# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Action plugin for netstate.tcp.tcp_fleet_report: runs on the controller only.

Reads every audited host's registered tcp_state_facts result from hostvars,
hands them to plugin_utils._fleet_report (aggregation and renderers) and
writes the reports.  Nothing runs on the managed nodes.
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.netstate.tcp.plugins.module_utils._diagnose import validate_thresholds
from ansible_collections.netstate.tcp.plugins.plugin_utils._fleet_report import (
    DEFAULT_FORMATS,
    FORMATS,
    ReportError,
    build_report,
    host_entry,
    render_prom,
    summary_table,
    write_reports,
)

ARGUMENT_SPEC = {
    "hosts": {"type": "list", "elements": "str", "required": True},
    "play_hosts": {"type": "list", "elements": "str"},
    "result_var": {"type": "str", "default": "audit_tcp_facts"},
    "output_dir": {"type": "path", "default": "reports"},
    "formats": {"type": "list", "elements": "str", "choices": list(FORMATS), "default": list(DEFAULT_FORMATS)},
    "query": {"type": "str"},
    "thresholds": {"type": "dict"},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _supports_check_mode = True
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        hostvars = task_vars.get("hostvars", {})
        if args["thresholds"] is not None:
            # the thresholds the hosts are (to be) audited with: checked here, on the controller, as
            # tcp_state_facts checks them, so a bad key fails before any host is touched
            try:
                validate_thresholds(args["thresholds"])
            except ValueError as exc:
                raise AnsibleActionFail(f"audit_thresholds: {exc}") from exc
        in_play = set(args["play_hosts"] if args["play_hosts"] is not None else args["hosts"])

        def fleet():
            for name, res, fallback in _host_inputs(hostvars, args["hosts"], args["result_var"]):
                entry = host_entry(name, result=res, facts=fallback, in_play=name in in_play)
                facts = fallback
                if isinstance(res, dict) and isinstance(res.get("ansible_facts"), dict):
                    facts = res["ansible_facts"].get("tcp_state", fallback)
                yield entry, facts if entry["status"] == "ok" else None

        try:
            report = build_report(fleet(), query=args["query"])
        except ReportError as exc:
            raise AnsibleActionFail(str(exc)) from exc

        result["fleet"] = report["fleet"]
        result["findings_by_code"] = report["findings_by_code"]
        if "query" in report:
            result["query_result"] = report["query_result"]
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
        except OSError as exc:
            raise AnsibleActionFail(f"cannot write the reports into output_dir {args['output_dir']!r}: {exc}") from exc
        result.update(written)
        result["summary"] = summary_table(report, report_dir=written["report_dir"])
        result["changed"] = True
        return result


def _host_inputs(hostvars, names, result_var):
    """(name, registered result, tcp_state facts from hostvars) for each host.

    HostVars.raw_get() merges every variable source of a host (about 1 ms a
    host: 10 s for 10,000 hosts).  Registered results sit in the variable
    manager's non-persistent cache: read them there when this Ansible has it,
    and fall back to raw_get() for hosts without one.
    """
    manager = getattr(hostvars, "_variable_manager", None)
    registered = getattr(manager, "_nonpersistent_fact_cache", None)
    if not isinstance(registered, Mapping):
        registered = {}
    for name in names:
        result = (registered.get(name) or {}).get(result_var)
        if result is not None:
            yield name, result, None
            continue
        host_vars = _vars_of(hostvars, name)
        yield name, host_vars.get(result_var), (host_vars.get("ansible_facts") or {}).get("tcp_state")


def _vars_of(hostvars, name: str) -> dict:
    """A host's variables without templating them (registered results are data)."""
    raw_get = getattr(hostvars, "raw_get", None)
    host_vars = raw_get(name) if raw_get is not None else hostvars.get(name)
    return host_vars if hasattr(host_vars, "get") else {}
