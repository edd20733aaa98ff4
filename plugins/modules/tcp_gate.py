#!/usr/bin/python
# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: tcp_gate
short_description: Deploy gate on TCP connection state, per state, port, process, pressure ratio and finding
version_added: 0.1.0
description:
  - Samples the host's TCP state (as M(netstate.tcp.tcp_state_facts) does) and compares it with thresholds, so a
    rollout stops at the first hosts when a release leaks sockets, and a host still draining does not take
    traffic.
  - Thresholds are maximum socket counts per TCP state (O(max)), per state on one local port (O(ports)), per state
    held by processes of one name (O(processes)), maximum pressure ratios (O(ratios)), and findings of the
    diagnosis (O(fail_on_severity), O(fail_on_codes)). A value equal to its threshold passes.
  - Each sample is one kernel dump and at most one pass over C(/proc/<pid>/fd). Checks on counts (O(max),
    O(ports), O(processes)) dump only the states they name (the ports filtered by the kernel when no owner is
    needed); with O(ratios) or findings the facts' dump is counted on its way. The C(/proc/<pid>/fd) pass is made
    for O(processes), and to name the owners behind a breach.
  - With O(timeout), samples every O(poll_interval) seconds until every check passes or the time is up, like
    M(ansible.builtin.wait_for); without it, one sample decides.
  - On a breach the task fails with one paragraph naming each failed metric, its value, the threshold and the
    top offenders, for example C(CLOSE_WAIT 1570 > 100; 1523 held by pid 4242 (proxy\) on :8080).
  - Every option is checked before anything is sampled; a bad value fails the task with the option, the bad
    value and the valid keys.
  - Needs only Python 3.7+ and its standard library on the managed node. Naming processes needs root for other
    users' processes.
requirements:
  - Python >= 3.7 on the managed node, standard library only (on an older Python the module fails
    with a message naming the minimum).
author:
  - netstate.tcp developers (@netstate)
extends_documentation_fragment:
  - netstate.tcp.attributes
  - netstate.tcp.attributes.INFO_MODULE
  - netstate.tcp.attributes.PLATFORM_LINUX
  - netstate.tcp.thresholds
options:
  max:
    description:
      - "Maximum number of sockets per TCP state, for example C({close_wait: 100, fin_wait1: 50})."
      - State names are case-insensitive and C(-) may stand for C(_) (V(TIME_WAIT), V(time_wait) and
        V(time-wait) are the same). Valid states are V(ESTABLISHED), V(SYN_SENT), V(SYN_RECV), V(FIN_WAIT1),
        V(FIN_WAIT2), V(TIME_WAIT), V(CLOSE), V(CLOSE_WAIT), V(LAST_ACK), V(LISTEN), V(CLOSING),
        V(NEW_SYN_RECV).
      - Counts are integers V(0) or more (booleans and fractions are refused).
    type: dict
    default: {}
  ports:
    description:
      - "Maximum sockets per TCP state on one local port, for example C({8080: {close_wait: 20}})."
      - Ports are 1..65535; states and counts as in O(max).
    type: dict
    default: {}
  processes:
    description:
      - Maximum sockets per TCP state held by the processes of one name, summed over all its pids.
      - The kernel keeps a process name (C(/proc/<pid>/comm)) in 15 bytes, cut possibly inside a multi-byte
        character. A name matches the processes whose comm is the first 15 bytes of its UTF-8 encoding, so the full
        name and the kernel's cut name both match.
      - "For example C({java: {close_wait: 50}})."
      - States and counts as in O(max). Sockets in TIME_WAIT and orphans belong to no process.
    type: dict
    default: {}
  ratios:
    description:
      - Maximum pressure ratios, each a number from V(0) to V(1), read from C(ansible_facts.tcp_state.pressure)
        of M(netstate.tcp.tcp_state_facts).
      - V(orphans) is orphans / C(tcp_max_orphans); V(memory) is TCP memory / C(tcp_mem[2]); V(time_wait) is
        TIME_WAIT sockets / C(tcp_max_tw_buckets); V(ephemeral_ports) is the busiest tuple's share of
        C(ip_local_port_range).
      - A ratio that cannot be measured (no limit visible inside a non-initial namespace) passes with a warning.
    type: dict
    default: {}
  fail_on_severity:
    description:
      - Fail when the diagnosis has a finding of this severity or worse.
      - Unset ignores findings (except those in O(fail_on_codes)).
    type: str
    choices: [warning, critical]
  fail_on_codes:
    description:
      - Fail when the diagnosis has any of these findings, whatever their severity.
      - Valid codes are V(CLOSE_WAIT_LEAK), V(TIME_WAIT_CHURN), V(FIN_WAIT1_STUCK), V(ORPHAN_PRESSURE),
        V(TCP_MEMORY_PRESSURE), V(LISTEN_OVERFLOW), V(SYN_BACKLOG_PRESSURE), V(EPHEMERAL_PORT_PRESSURE),
        V(TW_BUCKET_OVERFLOW), V(ORPHAN_RETRIES_DEFAULT), V(TW_RECYCLE_PRESENT), V(CONNTRACK_TABLE_PRESSURE).
    type: list
    elements: str
    default: []
  timeout:
    description:
      - Seconds to wait for every check to pass (a host draining its connections). V(0) takes one sample.
      - A finite number from V(0) to V(86400) (one day).
      - The module stops waiting as soon as its controller is gone (the connection that started it closed).
    type: float
    default: 0
  poll_interval:
    description:
      - Seconds between two samples while waiting (O(timeout)), a finite number from V(0.1) to V(3600). The last
        wait is cut to the deadline.
    type: float
    default: 5
  exclude_peers:
    description:
      - Sockets whose peer address is in one of these addresses or CIDRs are not counted, for example health
        checkers and load-balancer probes that keep a draining host looking busy.
      - Applies to O(max), O(ports) and O(processes); O(ratios) and the findings describe the whole host.
      - An IPv4 CIDR also matches IPv4-mapped IPv6 peers (C(::ffff:10.0.0.5)), as in the kernel's filter.
    type: list
    elements: str
    default: []
  peer_addresses:
    description:
      - Only sockets whose peer address is in one of these addresses or CIDRs are counted (O(exclude_peers) still
        removes some of them). Applies like O(exclude_peers).
    type: list
    elements: str
    default: []
  namespace:
    description:
      - Gate the sockets of another network namespace, for example a container's, given by its C(ip netns) name
        (in C(/run/netns)) or by the pid of a process inside it. A name wins over a pid of the same digits.
      - Unset gates the namespace the module runs in. Entering another namespace needs root.
    type: str
notes:
  - The gate looks at the network namespace the module runs in, or the one O(namespace) names.
  - Use O(timeout) before putting a host back in service, and no timeout right after a deploy to stop the rollout
    at the first host that leaks.
seealso:
  - module: netstate.tcp.tcp_state_facts
  - module: netstate.tcp.tcp_socket_info
  - module: ansible.builtin.wait_for
"""

EXAMPLES = r"""
- name: Stop the rollout when the new release leaks CLOSE_WAIT sockets
  netstate.tcp.tcp_gate:
    max:
      close_wait: 100
      fin_wait1: 500
    ports:
      8080:
        close_wait: 20
    processes:
      java:
        close_wait: 50
    fail_on_severity: critical

- name: Wait up to 5 minutes for the host to drain before it takes traffic again
  netstate.tcp.tcp_gate:
    max:
      CLOSE_WAIT: 0
      established: 10
    timeout: 300
    poll_interval: 10

- name: Drain a container's connections, ignoring the load balancer's health checks
  netstate.tcp.tcp_gate:
    namespace: web-1
    max:
      established: 0
    exclude_peers: [10.0.5.0/24]
    timeout: 600
    poll_interval: 5

- name: Gate on kernel pressure and on specific findings, keep the result for a report
  netstate.tcp.tcp_gate:
    ratios:
      orphans: 0.5
      memory: 0.8
      ephemeral_ports: 0.7
    fail_on_codes: [ORPHAN_PRESSURE, LISTEN_OVERFLOW]
  register: gate
  ignore_errors: true

- name: Show what failed
  ansible.builtin.debug:
    msg: "{{ gate.checks | rejectattr('passed') | list }}"
"""

RETURN = r"""
passed:
  description: True when every check passed (in the last sample).
  returned: always
  type: bool
  sample: false
checks:
  description: Every measured value next to its threshold, in the order of the options.
  returned: when the options are valid
  type: list
  elements: dict
  contains:
    metric:
      description:
        - What was measured. C(CLOSE_WAIT) for O(max), C(:8080 CLOSE_WAIT) for O(ports), C(java CLOSE_WAIT) for
          O(processes), C(orphans ratio) for O(ratios), C(findings >= critical) for O(fail_on_severity) and
          C(finding CLOSE_WAIT_LEAK) for O(fail_on_codes) (the value then counts findings, the threshold is 0).
      type: str
      sample: CLOSE_WAIT
    value:
      description: The measured value (null when a ratio cannot be measured).
      type: raw
      sample: 1570
    threshold:
      description: The highest value that passes.
      type: raw
      sample: 100
    passed:
      description: Whether RV(checks[].value) is at most RV(checks[].threshold).
      type: bool
      sample: false
  sample:
    - {metric: CLOSE_WAIT, value: 1570, threshold: 100, passed: false}
    - {metric: ":8080 CLOSE_WAIT", value: 1523, threshold: 20, passed: false}
offenders:
  description: For each failed check, who is behind it (top 3 of each kind).
  returned: when the options are valid
  type: list
  elements: dict
  contains:
    metric:
      description: The failed check's RV(checks[].metric).
      type: str
    ports:
      description: Busiest local ports of the state, C({port, count}).
      type: list
      elements: dict
    processes:
      description: Processes holding the sockets, C({pid, comm, sockets, ports}) with their busiest local ports.
      type: list
      elements: dict
    peers:
      description: Busiest peer addresses, C({address, count}).
      type: list
      elements: dict
    findings:
      description: The findings behind a failed findings check, C({code, severity, summary}).
      type: list
      elements: dict
      returned: for O(fail_on_severity) and O(fail_on_codes) checks
  sample:
    - metric: CLOSE_WAIT
      ports: [{port: 8080, count: 1550}]
      processes: [{pid: 4242, comm: proxy, sockets: 1523, ports: [{port: 8080, count: 1523}]}]
      peers: [{address: 10.0.3.7, count: 1570}]
samples:
  description: How many samples were taken (more than one only with O(timeout)).
  returned: when the options are valid
  type: int
  sample: 1
elapsed:
  description: Seconds spent sampling and waiting.
  returned: when the options are valid
  type: float
  sample: 0.12
warnings_list:
  description:
    - Checks that could not be measured, and what the facts collection could not read.
    - The checks that could not be measured (they pass) are also shown as task warnings.
  returned: when the options are valid
  type: list
  elements: str
  sample: []
msg:
  description: On failure, one paragraph with each failed metric, value, threshold and top offenders.
  returned: failure
  type: str
  sample: "TCP gate failed 1 of 2 checks: CLOSE_WAIT 1570 > 100; 1523 held by pid 4242 (proxy) on :8080."
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netstate.tcp.plugins.module_utils._python_version import start_module

# before the module_utils below: they need Python 3.7 syntax, and AnsiballZ imports them from a zip
start_module("tcp_gate")

from ansible_collections.netstate.tcp.plugins.module_utils import _diagnose, _facts, _gate
from ansible_collections.netstate.tcp.plugins.module_utils._netlink import STATES


def main():
    module = AnsibleModule(
        argument_spec={
            "max": {"type": "dict", "default": {}},
            "ports": {"type": "dict", "default": {}},
            "processes": {"type": "dict", "default": {}},
            "ratios": {"type": "dict", "default": {}},
            "fail_on_severity": {"type": "str", "choices": ["warning", "critical"]},
            "fail_on_codes": {"type": "list", "elements": "str", "default": []},
            "timeout": {"type": "float", "default": 0},
            "poll_interval": {"type": "float", "default": 5},
            "thresholds": {"type": "dict"},
            "exclude_peers": {"type": "list", "elements": "str", "default": []},
            "peer_addresses": {"type": "list", "elements": "str", "default": []},
            "namespace": {"type": "str"},
        },
        supports_check_mode=True,
    )
    try:
        spec = _gate.validate_spec(module.params, STATES, _diagnose.CODES)
        facts_options = {"thresholds": _diagnose.validate_thresholds(module.params["thresholds"] or {})}
    except ValueError as err:
        module.fail_json(msg=f"tcp_gate: {err}", passed=False)

    warnings = []

    def collect(options, record_tap):
        facts = _facts.collect_facts(dict(options, **facts_options), record_tap)
        warnings[:] = list(facts.get("warnings") or [])
        return facts

    def rediagnose(facts):
        return _diagnose.diagnose(facts, facts_options["thresholds"])

    def sample(detailed):
        return _gate.sample_host(spec, collect, detailed, rediagnose=rediagnose)

    watch = _gate.ControllerWatch()
    try:
        result = _gate.run_gate(spec, _gate.in_namespace(spec, sample), sleep=watch.sleep)
    except Exception as err:  # never a bare traceback: one clear failure with the details attached
        module.fail_json(msg=f"tcp_gate: cannot sample the host: {err}", passed=False, exception=traceback.format_exc())
    if result["controller_gone"]:
        # nobody reads this any more; exiting is what matters
        module.fail_json(msg="tcp_gate: the controller went away while the gate was waiting; stopped polling")
    for warning in result["warnings"]:
        # an unmeasurable ratio check passes: say so where the operator looks, not only in warnings_list
        module.warn(warning)
    output = {
        "changed": False,
        "passed": result["passed"],
        "checks": result["checks"],
        "offenders": result["offenders"],
        "samples": result["samples"],
        "elapsed": result["elapsed"],
        "warnings_list": result["warnings"] + warnings,
    }
    if not result["passed"]:
        waited = result["elapsed"] if spec["timeout"] else None
        module.fail_json(msg=_gate.breach_paragraph(result, waited, result["samples"]), **output)
    module.exit_json(**output)


if __name__ == "__main__":
    main()
