#!/usr/bin/python
# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tcp_sysctl
short_description: Set TCP sysctls live and in one exclusive drop-in file, with check, diff and rollback
version_added: 0.1.0
description:
  - Manages one sysctl.d drop-in file exclusively (default V(/etc/sysctl.d/60-netstate-tcp.conf)) holding every
    key it is given, applies the values live under C(/proc/sys) and persists the file atomically (temporary
    file in the same directory, then rename).
  - Validates every name and value before touching anything. A name must be a dotted sysctl identifier that
    exists under C(/proc/sys) (no C(..), no C(/), no globs); a value must be an integer or an integer vector.
    Booleans from YAML are rejected with a hint to use V(1) or V(0).
  - Refuses C(net.ipv4.tcp_tw_recycle) whatever the kernel, because it broke clients behind NAT and was
    removed in Linux 4.12.
  - Knows global and per-namespace keys. Inside a non-initial network namespace a host-wide key (such as
    C(net.ipv4.tcp_max_orphans), C(net.ipv4.tcp_mem), or any key outside C(net.)) is skipped with a warning,
    or fails the task with O(on_global_in_namespace=fail).
  - Reads every value back after writing it. A value the kernel refuses, clamps or rounds fails the task, and
    on any failure the previous live values and the previous file (and saved state) are restored, so nothing
    is left half-applied.
  - Saves the values it replaced in a state file next to the drop-in (C(.<name>.previous.json), never loaded by
    C(sysctl --system)), so O(state=absent) restores them exactly and removes the file. Keys dropped from
    O(sysctls) on a later run get their saved value back too.
  - Only integer sysctls are supported.
author:
  - netstate.tcp developers (@netstate)
extends_documentation_fragment:
  - netstate.tcp.attributes
  - netstate.tcp.attributes.PLATFORM_LINUX
attributes:
  check_mode:
    support: full
    details: Validates and reads everything, reports what would change, writes nothing.
  diff_mode:
    support: full
    details: Two diffs, the drop-in file before/after and the live values before/after.
options:
  sysctls:
    description:
      - Sysctl names mapped to the values to set, for example C(net.ipv4.tcp_fin_timeout) to V(30).
      - A value is an integer, a string of digits, or for vectors (C(tcp_mem), C(tcp_rmem),
        C(ip_local_port_range)) a list of integers or a space-separated string with as many
        integers as the kernel holds for that key.
      - The drop-in file holds exactly these keys afterwards (minus skipped ones).
      - Required with O(state=present); ignored with a warning when O(state=absent).
    type: dict
  file:
    description:
      - The drop-in file managed exclusively by this module. Absolute path ending in C(.conf).
      - The values it replaced are saved next to it in C(.<basename>.previous.json).
    type: path
    default: /etc/sysctl.d/60-netstate-tcp.conf
  state:
    description:
      - V(present) sets O(sysctls) live and writes the file.
      - V(absent) restores the saved previous values live, then removes the file and its saved state.
    type: str
    choices: [present, absent]
    default: present
  apply:
    description:
      - Whether to change live values. With V(false) only the file (and saved state) are written or removed;
        the values take effect at the next boot or C(sysctl --system).
      - A key dropped from O(sysctls) keeps its saved value in the state file while its live value still
        differs from it, so a later run with O(apply=true) or O(state=absent) restores it.
    type: bool
    default: true
  on_global_in_namespace:
    description:
      - What to do with a host-wide key asked for inside a non-initial network namespace.
      - V(skip) leaves it out of the file and the live change, with a warning, and lists it in RV(skipped_sysctls).
      - V(fail) fails the task before anything is changed.
    type: str
    choices: [skip, fail]
    default: skip
notes:
  - Why not C(ansible.posix.sysctl) - it has no diff mode, rewrites a file one key per call, does not own a drop-in
    exclusively, and cannot restore what it replaced.
  - The namespace test uses the fact that C(net.ipv4.tcp_mem) exists in the initial network namespace only, and
    compares C(/proc/self/ns/net) with C(/proc/1/ns/net) where readable.
seealso:
  - module: netstate.tcp.tcp_state_facts
  - name: Kernel documentation of the TCP sysctls
    description: ip-sysctl.rst, what each net.ipv4.tcp_* key means.
    link: https://docs.kernel.org/networking/ip-sysctl.html
"""

EXAMPLES = r"""
- name: Cap orphans and stop endless FIN_WAIT1 probing
  netstate.tcp.tcp_sysctl:
    sysctls:
      net.ipv4.tcp_max_orphans: 16384
      net.ipv4.tcp_orphan_retries: 2

- name: Vectors as lists or strings
  netstate.tcp.tcp_sysctl:
    sysctls:
      net.ipv4.ip_local_port_range: [10240, 65000]
      net.ipv4.tcp_rmem: "4096 131072 6291456"

- name: Inside a container network namespace, fail instead of skipping host-wide keys
  netstate.tcp.tcp_sysctl:
    sysctls:
      net.ipv4.tcp_max_orphans: 16384
    on_global_in_namespace: fail

- name: Write the file only; values load at next boot
  netstate.tcp.tcp_sysctl:
    sysctls:
      net.core.somaxconn: 4096
    apply: false

- name: Undo, restoring exactly the values that were replaced
  netstate.tcp.tcp_sysctl:
    state: absent
"""

RETURN = r"""
applied:
  description:
    - The keys managed by the file and their values, as read back from C(/proc/sys) after the change
      (in check mode, or with O(apply=false), the values the file holds).
    - Vectors are integers separated by one space.
  returned: always
  type: dict
  sample: {"net.ipv4.tcp_orphan_retries": "2", "net.ipv4.ip_local_port_range": "10240 65000"}
skipped_sysctls:
  description:
    - Keys left out because they are host-wide and this is a non-initial network namespace.
    - Named C(skipped_sysctls), not C(skipped), because Ansible treats a task result with a true C(skipped)
      key as a skipped task (hiding its change and diff).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The sysctl name.
      type: str
      sample: net.ipv4.tcp_max_orphans
    reason:
      description: Why it was skipped.
      type: str
  sample: [{"name": "net.ipv4.tcp_max_orphans", "reason": "net.ipv4.tcp_max_orphans is global: ..."}]
previous:
  description:
    - The values the managed keys had before this module first set them, as saved in the state file.
    - With O(apply=false), also keys dropped from the file whose live value was left changed (restored later).
    - With O(state=absent), the values that were restored.
  returned: always
  type: dict
  sample: {"net.ipv4.tcp_orphan_retries": "0"}
before:
  description:
    - Live values of the managed keys (and of keys released from the file) before this run.
  returned: always
  type: dict
  sample: {"net.ipv4.tcp_orphan_retries": "0"}
changed_sysctls:
  description: Names whose live value was (or in check mode would be) written.
  returned: always
  type: list
  elements: str
  sample: ["net.ipv4.tcp_orphan_retries"]
file:
  description: The drop-in file managed.
  returned: always
  type: str
  sample: /etc/sysctl.d/60-netstate-tcp.conf
state_file:
  description: Where the replaced values are saved.
  returned: always
  type: str
  sample: /etc/sysctl.d/.60-netstate-tcp.conf.previous.json
namespace:
  description: The network namespace the module ran in.
  returned: always
  type: dict
  contains:
    inode:
      description: Inode of C(/proc/self/ns/net).
      type: int
      sample: 4026531840
    initial:
      description: Whether it is the initial (host) network namespace.
      type: bool
      sample: true
diff:
  description: In diff mode, the drop-in file before/after and the live values before/after.
  returned: when diff mode is on
  type: list
  elements: dict
  sample: [{"before_header": "/etc/sysctl.d/60-netstate-tcp.conf", "before": "", "after": "..."}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netstate.tcp.plugins.module_utils._sysctl import (
    DEFAULT_FILE,
    GLOBAL_CHOICES,
    ApplyError,
    SysctlDropIn,
    SysctlError,
    format_value,
    namespace_info,
    parse_conf,
    state_path,
    validate_request,
)


def run_module(module):
    params = module.params
    state, apply = params["state"], params["apply"]
    namespace = namespace_info()
    dropin = SysctlDropIn(params["file"])
    skipped = []
    if state == "present":
        wanted, skipped, warnings = validate_request(params["sysctls"], params["on_global_in_namespace"], namespace)
        for warning in warnings:
            module.warn(warning)
        plan = dropin.plan_present(wanted, apply=apply)
    else:
        if params["sysctls"]:
            module.warn("sysctls is ignored with state=absent: every key the file manages is restored")
        plan = dropin.plan_absent(apply=apply)

    changed = dropin.changed(plan)
    result = {
        "changed": changed,
        "skipped_sysctls": skipped,
        "previous": plan["previous"],
        "before": plan["live_before"],
        "changed_sysctls": [name for name, _values in plan["writes"]],
        "file": dropin.path,
        "state_file": state_path(dropin.path),
        "namespace": namespace,
    }
    if module._diff:
        result["diff"] = dropin.diff(plan)
    file_values = parse_conf(plan["file_after"] or "")
    if module.check_mode or not changed:
        live = dict(plan["live_before"])
        for name, values in plan["writes"]:
            live[name] = format_value(values)
    else:
        live = dropin.execute(plan)
    if apply:
        result["applied"] = {name: live[name] for name in file_values if name in live}
    else:
        result["applied"] = file_values
    return result


def main():
    module = AnsibleModule(
        argument_spec={
            "sysctls": {"type": "dict"},
            "file": {"type": "path", "default": DEFAULT_FILE},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "apply": {"type": "bool", "default": True},
            "on_global_in_namespace": {"type": "str", "choices": list(GLOBAL_CHOICES), "default": "skip"},
        },
        required_if=[("state", "present", ("sysctls",))],
        supports_check_mode=True,
    )
    try:
        result = run_module(module)
    except (SysctlError, ApplyError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"tcp_sysctl: {exc}; nothing was changed")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
