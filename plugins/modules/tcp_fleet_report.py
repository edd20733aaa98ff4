# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

# Documentation only: the action plugin of the same name does the work on the controller.

DOCUMENTATION = r"""
module: tcp_fleet_report
short_description: Aggregate tcp_state facts of a fleet into JSON, Markdown, HTML, CSV and Prometheus reports
version_added: 0.1.0
description:
  - Runs on the controller only. Reads, for each host of O(hosts), the result that
    M(netstate.tcp.tcp_state_facts) registered under O(result_var) (or C(ansible_facts.tcp_state)
    from hostvars) and builds one fleet report in Python, in time linear in the number of hosts, without Jinja loops.
  - The report holds fleet totals per TCP state and per finding code, one entry per host ordered by
    worst severity, the findings grouped by code with their hosts, the worst offenders across hosts
    (local ports, processes, peers), and the unreachable, failed and malformed hosts with their error.
  - Every field of a host's facts that the report reads is checked against the schema of
    M(netstate.tcp.tcp_state_facts) (types, finite non-negative numbers, finding codes, bounded strings).
    A host whose facts fail the check (not schema 1, missing keys, a wrong type anywhere the report
    reads) is listed with status C(malformed) and the first problem found; the rest of the fleet is
    still aggregated.
  - Whatever a host reports is data, never markup. Each format escapes it (HTML; Markdown HTML, pipes,
    backticks and newlines; CSV cells a spreadsheet would run as a formula get a leading quote; Prometheus
    label values), and only finite numbers become Prometheus samples or JSON numbers.
  - Hosts are listed worst first, names in natural order (h2 before h10).
  - Writes the reports into a temporary directory beside the final one and renames it into place
    when every file is complete, then points the C(latest) symbolic link there; a full disk leaves no
    half-written report. Directories get mode C(0750) and files C(0640) whatever the umask.
  - Compares the report with the previous one (O(compare_with), else the C(latest) report in
    O(output_dir)) and saves what changed in C(report.json) as C(changes).
  - C(playbooks/audit.yml) of this collection runs the whole audit.
requirements:
  - Runs on the controller with ansible-core's Python; jmespath there for O(query). The audited hosts
    need what M(netstate.tcp.tcp_state_facts) needs.
author:
  - netstate.tcp developers (@netstate)
extends_documentation_fragment:
  - netstate.tcp.attributes
attributes:
  check_mode:
    support: full
    details: In check mode the report is built and summarized but no file is written.
  diff_mode:
    support: none
  platform:
    support: full
    platforms: posix
    details: Runs on the controller; the audited hosts need only M(netstate.tcp.tcp_state_facts).
  action:
    description: Indicates this has a corresponding action plugin so some parts of the options can be executed on
      the controller.
    support: full
  async:
    description: Supports being used with the C(async) keyword.
    support: none
options:
  hosts:
    description:
      - The audited hosts, usually C(ansible_play_hosts_all) of the play that ran M(netstate.tcp.tcp_state_facts).
      - A name the inventory does not know is listed as C(unreachable), with the reason.
      - One of O(hosts) and O(merge) is required.
    type: list
    elements: str
  merge:
    description:
      - Partial reports to merge into one fleet report instead of reading hosts (AWX job slices, one
        controller per region), as C(report.json) files or directories holding one (directly or under C(latest/)).
      - Each file is checked like any input; totals, findings and offenders are recomputed across all hosts.
        A host in several reports is taken from the report where it answered, else from the newest.
      - Mutually exclusive with O(hosts). C(playbooks/merge.yml) of this collection runs it.
    type: list
    elements: path
  play_hosts:
    description:
      - The hosts still in that play when it ended (C(ansible_play_hosts)).
      - A host of O(hosts) missing here without a registered result is reported as C(failed).
      - Defaults to O(hosts).
    type: list
    elements: str
  result_var:
    description:
      - Name of the variable each host registered the M(netstate.tcp.tcp_state_facts) result in.
      - Tells unreachable from failed hosts and carries their error message.
    type: str
    default: audit_tcp_facts
  output_dir:
    description:
      - Directory on the controller that receives one timestamped directory per run and the C(latest) link.
      - A relative path is relative to the working directory of C(ansible-playbook), so by default the
        reports are never written inside the collection (which may be installed read-only).
    type: path
    default: netstate-reports
  compare_with:
    description:
      - A C(report.json) (or a directory holding one) to compare this report with.
      - Defaults to C(latest/report.json) in O(output_dir), when there is one.
      - A previous report that cannot be read or fails the check is named in C(changes.previous_error);
        the report is still written.
    type: path
  formats:
    description:
      - Report formats. V(json), V(md), V(html) and V(csv) are files on the controller.
      - V(prom) adds RV(prom), the node_exporter textfile-collector text per host, for the playbook to copy
        onto each host.
      - At least one of V(json), V(md), V(html) and V(csv) is required.
    type: list
    elements: str
    choices: [json, md, html, csv, prom]
    default: [json, md, html, csv]
  query:
    description:
      - A JMESPath expression evaluated on the aggregated report (the structure of C(report.json)).
      - Its result is returned in RV(query_result) and saved in C(report.json) as C(query_result).
      - An invalid expression fails the task with a message naming the expression.
      - A valid expression that fails on the data (for example a function given the wrong type) does not
        lose the report; the error is returned in RV(query_error) and saved as C(query_error) beside it.
    type: str
  thresholds:
    description:
      - The O(netstate.tcp.tcp_state_facts#module:thresholds) the hosts are audited with. They are only checked,
        the way M(netstate.tcp.tcp_state_facts) checks them; an unknown key or a bad value fails the task.
      - C(playbooks/audit.yml) passes C(audit_thresholds) here in check mode with O(hosts=[]), so bad
        thresholds fail before any host is touched instead of failing on every host.
    type: dict
notes:
  - The controller needs the Python package C(jmespath) only when O(query) is used.
  - Registered results are read through the public C(hostvars) interface.
seealso:
  - module: netstate.tcp.tcp_state_facts
"""

EXAMPLES = r"""
- name: Merge the reports of two job slices
  netstate.tcp.tcp_fleet_report:
    merge:
      - /srv/audit/slice1/netstate-reports
      - /srv/audit/slice2/netstate-reports/latest/report.json
    output_dir: /srv/audit/fleet
  delegate_to: localhost
  run_once: true

- name: Gather TCP state facts
  netstate.tcp.tcp_state_facts:
  register: audit_tcp_facts
  ignore_unreachable: true
  ignore_errors: true

- name: Write the fleet reports
  netstate.tcp.tcp_fleet_report:
    hosts: "{{ ansible_play_hosts_all }}"
    play_hosts: "{{ ansible_play_hosts }}"
    output_dir: /var/tmp/tcp-audit
    formats: [json, html]
    query: "hosts[?status=='ok' && severity=='critical'].name"
  run_once: true
  delegate_to: localhost
  register: audit_report

- name: Show the summary
  ansible.builtin.debug:
    msg: "{{ audit_report.summary }}"
"""

RETURN = r"""
report_dir:
  description: The timestamped directory the reports were written to (null in check mode).
  returned: always
  type: str
  sample: /srv/audit/reports/20261121T100000Z
latest:
  description: The C(latest) link in O(output_dir), pointing at RV(report_dir).
  returned: when files were written
  type: str
  sample: /srv/audit/reports/latest
files:
  description: Path of each report file written, by format.
  returned: always
  type: dict
  sample: {json: /srv/audit/reports/20261121T100000Z/report.json}
summary:
  description: The terminal summary, one line per host (worst first) and one fleet line.
  returned: always
  type: str
fleet:
  description: Number of hosts, and of hosts per status.
  returned: always
  type: dict
  contains:
    hosts:
      description: Number of audited hosts.
      type: int
    ok:
      description: Hosts with usable facts.
      type: int
    malformed:
      description: Hosts whose facts were not schema 1 or lacked keys.
      type: int
    failed:
      description: Hosts on which tcp_state_facts failed.
      type: int
    unreachable:
      description: Hosts that could not be reached.
      type: int
  sample: {hosts: 4, ok: 3, malformed: 0, failed: 0, unreachable: 1}
findings_by_code:
  description: Finding code to the sorted list of hosts with that finding.
  returned: always
  type: dict
  sample: {CLOSE_WAIT_LEAK: [web1, web7]}
query_result:
  description: The result of O(query) on the report (null when the query failed on the data).
  returned: when O(query) was given
  type: raw
query_error:
  description: Why O(query) failed on the report; the report was written all the same.
  returned: when O(query) failed on the data
  type: str
changes:
  description:
    - What changed since the previous report (see O(compare_with)); also saved in C(report.json).
    - Findings and states are compared on hosts that answered in both reports.
  returned: always
  type: dict
  contains:
    previous:
      description: C(generated_at) of the previous report, or null when there is none.
      type: str
    previous_error:
      description: Why the previous report could not be used.
      type: str
      returned: when a previous report was named or found but failed to load or check
    new_findings:
      description: Findings new since the previous report, each C({host, code, severity}).
      type: list
      elements: dict
    resolved_findings:
      description: Findings gone since the previous report, each C({host, code, severity}).
      type: list
      elements: dict
    severity_changes:
      description: Findings whose severity changed, each C({host, code, severity, previous}).
      type: list
      elements: dict
    hosts_added:
      description: Hosts in this report only.
      type: list
      elements: str
    hosts_removed:
      description: Hosts in the previous report only.
      type: list
      elements: str
    state_deltas:
      description: Per host, the change of each TCP state count that changed.
      type: dict
  sample: {previous: "2026-11-21T09:00:00Z", new_findings: [{host: web1, code: CLOSE_WAIT_LEAK, severity: warning}],
           resolved_findings: [], severity_changes: [], hosts_added: [], hosts_removed: [],
           state_deltas: {web1: {CLOSE_WAIT: 150}}}
prom:
  description:
    - Host name to node_exporter textfile-collector text (metric names prefixed C(netstate_tcp_)).
    - Hosts with status C(ok) only.
  returned: when V(prom) is in O(formats)
  type: dict
"""
