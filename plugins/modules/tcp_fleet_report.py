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
  - A host whose facts are not schema 1 or lack keys (C(states), C(findings), C(pressure)) is listed
    with status C(malformed) and what is wrong; the rest of the fleet is still aggregated.
  - Writes the reports with mode C(0640) into a new timestamped directory under O(output_dir)
    and points the C(latest) symbolic link there.
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
    type: list
    elements: str
    required: true
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
      - A relative path is relative to the working directory of C(ansible-playbook).
    type: path
    default: reports
  formats:
    description:
      - Report formats. V(json), V(md), V(html) and V(csv) are files on the controller.
      - V(prom) adds RV(prom), the node_exporter textfile-collector text per host, for the playbook to copy
        onto each host.
    type: list
    elements: str
    choices: [json, md, html, csv, prom]
    default: [json, md, html, csv]
  query:
    description:
      - A JMESPath expression evaluated on the aggregated report (the structure of C(report.json)).
      - Its result is returned in RV(query_result) and saved in C(report.json) as C(query_result).
      - An invalid expression fails the task with a message naming the expression.
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
seealso:
  - module: netstate.tcp.tcp_state_facts
"""

EXAMPLES = r"""
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
  description: The result of O(query) on the report.
  returned: when O(query) was given
  type: raw
prom:
  description:
    - Host name to node_exporter textfile-collector text (metric names prefixed C(netstate_tcp_)).
    - Hosts with status C(ok) only.
  returned: when V(prom) is in O(formats)
  type: dict
"""
