#!/usr/bin/python
# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: tcp_sysctl
short_description: Set TCP sysctls live and in one exclusive drop-in file, with check, diff and rollback
version_added: 0.1.0
description:
  - Manages one sysctl.d drop-in file exclusively (default V(/etc/sysctl.d/60-netstate-tcp.conf)) holding every
    key it is given, applies the values live under C(/proc/sys) and persists the file atomically (temporary
    file in the same directory, then C(atomic_move), which keeps the SELinux context as C(ansible.posix.sysctl)
    does). Symbolic links are refused, never followed.
  - The keys come from O(sysctls), from the profiles of the netstate.tcp remediation catalog (O(profiles), or
    picked by findings with O(from_findings)), from O(orphan_cap), and with O(keep_existing) from the drop-in
    itself. The findings' advice (C(tcp_state_facts)) and these profiles come from the same catalog.
  - One run at a time per drop-in - an exclusive lock on C(.<name>.lock) beside it, waited for at most
    O(lock_timeout) seconds - so concurrent runs (one host under two inventory names, two pipelines) never
    mix their saved values.
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
    the request on a later run get their saved value back too. The saved state is host data - its names and
    values are validated exactly like O(sysctls) before anything is written.
  - Files are staged before any live value is written, so a read-only or full directory fails the task with
    nothing changed; a later failure undoes exactly what was changed and the message says what was restored.
  - Only integer sysctls are supported.
requirements:
  - Python >= 3.7 on the managed node, standard library only (on an older Python the module fails
    with a message naming the minimum).
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
        integers as the kernel holds for that key. Integers are 64-bit at most.
      - Applied on top of O(profiles), O(orphan_cap) and the keys kept with O(keep_existing).
      - The drop-in file holds exactly the keys requested afterwards (minus skipped ones).
      - With O(state=present), a request with nothing in it (O(sysctls) null or empty and none of O(profiles),
        O(from_findings), O(finding_codes), O(orphan_cap), O(keep_existing)) fails; it never empties the file.
        When the selectors are given but choose no key (no finding fired, nothing to keep) the run is a no-op.
      - Ignored with a warning when O(state=absent).
    type: dict
  profiles:
    description:
      - Profiles of the remediation catalog to apply, each key with its reason (returned in RV(reasons)).
        V(time_wait) (C(tcp_tw_reuse), C(ip_local_port_range), C(tcp_max_tw_buckets)), V(orphans)
        (C(tcp_max_orphans), C(tcp_orphan_retries)), V(fin_wait) (C(tcp_fin_timeout)), V(syn_flood)
        (C(tcp_syncookies), C(tcp_max_syn_backlog)), V(listen_backlog) (C(somaxconn), C(tcp_max_syn_backlog)).
      - With O(from_findings), limits the profiles the findings pick (empty means any).
    type: list
    elements: str
    choices: [fin_wait, listen_backlog, orphans, syn_flood, time_wait]
    default: []
  from_findings:
    description:
      - Apply the profiles that answer O(finding_codes) (limited to O(profiles) when that is not empty),
        instead of O(profiles) as given.
    type: bool
    default: false
  finding_codes:
    description:
      - Codes of the findings that fired, for example from C(ansible_facts.tcp_state.findings).
      - With O(from_findings) they pick the profiles. In any case the codes that no sysctl may fix are returned
        in RV(not_fixed_by_sysctls) with what to do instead. Codes without a sysctl fix are otherwise ignored.
    type: list
    elements: str
  orphan_cap:
    description:
      - Memory budget for orphaned sockets. Sets C(net.ipv4.tcp_max_orphans) to O(orphan_cap.memory_mb) * 1024 / 64
        (an orphan can pin about 64 KiB of buffers) and C(net.ipv4.tcp_orphan_retries) to O(orphan_cap.retries).
      - Applied on top of O(profiles).
    type: dict
    suboptions:
      memory_mb:
        description: Memory in MiB orphaned sockets may hold at most.
        type: int
        required: true
      retries:
        description:
          - C(tcp_orphan_retries) to set, from 1 to 255 (0 means 8 in the kernel, so it is refused; the kernel
            holds it in one byte).
        type: int
        default: 2
  keep_existing:
    description:
      - Keep the keys the drop-in already holds (validated like O(sysctls)), under everything else requested.
        A fix then does not undo itself when its finding stops firing.
    type: bool
    default: false
  file:
    description:
      - The drop-in file managed exclusively by this module. Absolute, normalised path ending in C(.conf),
        without control characters. A symbolic link is refused.
      - The values it replaced are saved next to it in C(.<basename>.previous.json), and C(.<basename>.lock)
        serialises runs; both are removed with the file.
    type: path
    default: /etc/sysctl.d/60-netstate-tcp.conf
  state:
    description:
      - V(present) sets the requested keys live and writes the file.
      - V(absent) restores the saved previous values live, then removes the file and its saved state.
    type: str
    choices: [present, absent]
    default: present
  apply:
    description:
      - Whether to change live values. With V(false) only the file (and saved state) are written or removed;
        the values take effect at the next boot or C(sysctl --system).
      - A key dropped from the request keeps its saved value in the state file while its live value still
        differs from it, so a later run with O(apply=true) or O(state=absent) restores it.
    type: bool
    default: true
  on_global_in_namespace:
    description:
      - What to do with a host-wide key asked for (or saved) inside a non-initial network namespace.
      - V(skip) leaves it out of the file and the live change, with a warning, and lists it in RV(skipped_sysctls).
      - V(fail) fails the task before anything is changed.
    type: str
    choices: [skip, fail]
    default: skip
  lock_timeout:
    description:
      - Seconds to wait for another run on the same drop-in to finish (0 to 3600). Past it the task fails with
        nothing changed. Check mode reads only and takes no lock.
    type: int
    default: 60
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

- name: Apply the catalog's profiles for the findings that fired, keeping what earlier runs applied
  netstate.tcp.tcp_sysctl:
    from_findings: true
    finding_codes: "{{ ansible_facts.tcp_state.findings | map(attribute='code') | list }}"
    keep_existing: true
    orphan_cap:
      memory_mb: 1024
      retries: 2

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
profiles:
  description: The catalog profiles applied (with O(from_findings), those the findings picked).
  returned: always
  type: list
  elements: str
  sample: ["orphans"]
reasons:
  description: Why each key of the file is there (its profile and reason, the orphan cap, O(sysctls), or kept).
  returned: always
  type: dict
  sample: {"net.ipv4.tcp_orphan_retries": "orphans profile: an orphan gives up after 2 retransmissions ..."}
not_fixed_by_sysctls:
  description: The codes among O(finding_codes) that no sysctl may fix, with what to do instead.
  returned: always
  type: dict
  sample: {"CLOSE_WAIT_LEAK": "application problem: the peer closed and the process never closed its socket; ..."}
diff:
  description: In diff mode, the drop-in file before/after and the live values before/after.
  returned: when diff mode is on
  type: list
  elements: dict
  sample: [{"before_header": "/etc/sysctl.d/60-netstate-tcp.conf", "before": "", "after": "..."}]
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netstate.tcp.plugins.module_utils._python_version import start_module

# before the module_utils below: they need Python 3.7 syntax, and AnsiballZ imports them from a zip
start_module("tcp_sysctl")

from ansible_collections.netstate.tcp.plugins.module_utils._atomic_file import module_mover
from ansible_collections.netstate.tcp.plugins.module_utils._remediation import ORPHAN_RETRIES, PROFILES
from ansible_collections.netstate.tcp.plugins.module_utils._sysctl import (
    GLOBAL_CHOICES,
    ApplyError,
    SysctlError,
    manage,
)

# Every default lives here, once.
ARGUMENT_SPEC = {
    "sysctls": {"type": "dict"},
    "profiles": {"type": "list", "elements": "str", "choices": sorted(PROFILES), "default": []},
    "from_findings": {"type": "bool", "default": False},
    "finding_codes": {"type": "list", "elements": "str"},
    "orphan_cap": {
        "type": "dict",
        "options": {
            "memory_mb": {"type": "int", "required": True},
            "retries": {"type": "int", "default": ORPHAN_RETRIES},
        },
    },
    "keep_existing": {"type": "bool", "default": False},
    "file": {"type": "path", "default": "/etc/sysctl.d/60-netstate-tcp.conf"},
    "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
    "apply": {"type": "bool", "default": True},
    "on_global_in_namespace": {"type": "str", "choices": list(GLOBAL_CHOICES), "default": "skip"},
    "lock_timeout": {"type": "int", "default": 60},
}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        # a failed move raises (also where atomic_move would end the module): the rollback runs first
        result, warnings = manage(module.params, module.check_mode, module._diff, module_mover(module))
    except (SysctlError, ApplyError) as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"tcp_sysctl: {exc}; nothing was changed")
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
