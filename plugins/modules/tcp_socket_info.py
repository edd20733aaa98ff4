#!/usr/bin/python
# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: tcp_socket_info
short_description: List TCP sockets filtered by state, port, address and owner, like C(ss state X '( sport = :Y )')
version_added: 0.1.0
description:
  - Lists the TCP sockets of the network namespace the module runs in, selected by state, local and peer port,
    local and peer address (CIDR) and owning process, and returns how many matched plus a bounded list.
  - The state filter is the kernel's state bitmask and the port and address filters are compiled into an
    inet_diag bytecode program that the kernel runs on each socket before copying it out (as C(ss) does), so a
    filtered query on a busy host costs a fraction of a full dump.
  - Where netlink sock_diag is refused, the sockets are read from C(/proc/net/tcp) and C(/proc/net/tcp6) and the
    same filter program is run in user space (slower; no O(details) memory or tcp_info); RV(warnings_list) says so.
  - Owner filters (O(pids), O(comms)) read C(/proc/<pid>/fd) of the chosen processes only and are applied to
    what the kernel returned.
  - Memory stays bounded however many sockets match, at most O(limit) sockets are kept, with a heap when
    O(sort) is set; every match is still counted in RV(matched).
  - Needs only Python 3.7+ and its standard library on the managed node, and netlink sock_diag (root not
    required to list sockets; other users' processes' fds need root for the owner filters).
requirements:
  - Python >= 3.7 on the managed node, standard library only (on an older Python the module fails
    with a message naming the minimum).
author:
  - netstate.tcp developers (@netstate)
extends_documentation_fragment:
  - netstate.tcp.attributes
  - netstate.tcp.attributes.INFO_MODULE
  - netstate.tcp.attributes.PLATFORM_LINUX
options:
  states:
    description:
      - TCP states to list. V(all) lists every state.
      - Case-insensitive, C(-) may stand for C(_) (V(close-wait) is V(CLOSE_WAIT)). Valid states are
        V(ESTABLISHED), V(SYN_SENT), V(SYN_RECV), V(FIN_WAIT1), V(FIN_WAIT2), V(TIME_WAIT), V(CLOSE),
        V(CLOSE_WAIT), V(LAST_ACK), V(LISTEN), V(CLOSING), V(NEW_SYN_RECV).
      - V(SYN_RECV) includes the half-open request sockets, reported as V(SYN_RECV) like C(ss) does.
    type: list
    elements: str
    default: [all]
  local_ports:
    description:
      - Local ports to match (any of them), each a port V(8080) or an inclusive range V(8000-8100), 1..65535.
      - Filtered in the kernel.
    type: list
    elements: raw
    default: []
  peer_ports:
    description:
      - Peer ports to match (any of them), each a port or a range C(LOW-HIGH), 1..65535. Filtered in the kernel.
    type: list
    elements: raw
    default: []
  local_addresses:
    description:
      - Local addresses or networks in CIDR notation (V(10.0.0.0/8), V(::1)), any of them. Host bits must be
        zero. An IPv4 network also matches IPv4-mapped IPv6 sockets (C(::ffff:10.0.0.1)). Filtered in the kernel.
    type: list
    elements: str
    default: []
  peer_addresses:
    description:
      - Peer addresses or networks in CIDR notation, any of them. Filtered in the kernel.
    type: list
    elements: str
    default: []
  pids:
    description:
      - Only sockets held by these process ids. Sockets in TIME_WAIT and orphaned sockets belong to no process
        and never match an owner filter.
      - Matched sockets get an C(owner) (pid, comm).
    type: list
    elements: int
    default: []
  comms:
    description:
      - Only sockets held by processes with these names. Combined with O(pids) as either.
      - The kernel keeps a process name (C(/proc/<pid>/comm)) in 15 bytes, cut possibly inside a multi-byte
        character. A name matches the processes whose comm is the first 15 bytes of its UTF-8 encoding, so the full
        name and the name as RV(sockets[].owner.comm) shows it both match.
    type: list
    elements: str
    default: []
  limit:
    description:
      - At most this many sockets in RV(sockets); V(0) only counts. RV(matched) counts every match.
    type: int
    default: 100
  sort:
    description:
      - Which sockets to keep when more than O(limit) match, and their order.
      - V(none) keeps the first ones in kernel order. V(recv_queue) and V(send_queue) sort the biggest first,
        the other keys ascending. V(expires) sorts by the time left on the socket's timer.
    type: str
    choices: [none, state, local, peer, local_port, peer_port, recv_queue, send_queue, expires]
    default: none
  details:
    description:
      - Add each socket's timer, memory (C(ss -m) figures) and C(tcp_info) (rtt, cwnd, retransmits, snd_wnd, ...).
      - TIME_WAIT and request sockets have no memory or tcp_info; those keys are then null.
    type: bool
    default: false
notes:
  - Sockets are listed for the network namespace the module runs in.
  - Compare with C(ss -tan state close-wait '( sport = :8080 )'); the same bytecode filter is used.
seealso:
  - module: netstate.tcp.tcp_state_facts
  - module: netstate.tcp.tcp_gate
"""

EXAMPLES = r"""
- name: CLOSE_WAIT sockets of the proxy port, as ss state close-wait '( sport = :8080 )' shows them
  netstate.tcp.tcp_socket_info:
    states: [close_wait]
    local_ports: [8080]
  register: stuck

- name: Fail when more than 100 are stuck
  ansible.builtin.assert:
    that: stuck.matched <= 100
    fail_msg: "{{ stuck.matched }} CLOSE_WAIT sockets on :8080"

- name: The 20 FIN_WAIT1 sockets with the most unsent data towards one network, with tcp_info
  netstate.tcp.tcp_socket_info:
    states: [fin_wait1]
    peer_addresses: [192.0.2.0/24]
    sort: send_queue
    limit: 20
    details: true

- name: Established connections of the java processes to the database ports
  netstate.tcp.tcp_socket_info:
    states: [established]
    comms: [java]
    peer_ports: [5432, "6379-6380"]

- name: Only count TIME_WAIT sockets on the ephemeral range
  netstate.tcp.tcp_socket_info:
    states: [time-wait]
    local_ports: ["32768-60999"]
    limit: 0
"""

RETURN = r"""
matched:
  description: How many sockets matched every filter (all of them, not only the listed ones).
  returned: always
  type: int
  sample: 1570
truncated:
  description: True when more sockets matched than RV(sockets) holds (see O(limit)).
  returned: always
  type: bool
  sample: true
sockets:
  description: The matching sockets, at most O(limit), chosen and ordered by O(sort).
  returned: always
  type: list
  elements: dict
  contains:
    state:
      description: TCP state name.
      type: str
      sample: CLOSE_WAIT
    family:
      description: V(ipv4) or V(ipv6).
      type: str
      sample: ipv4
    local:
      description: Local address and port as C(ss) prints them (IPv6 in brackets).
      type: str
      sample: "10.0.0.5:8080"
    peer:
      description: Peer address and port.
      type: str
      sample: "192.0.2.17:51234"
    local_address:
      description: Local address.
      type: str
      sample: 10.0.0.5
    local_port:
      description: Local port.
      type: int
      sample: 8080
    peer_address:
      description: Peer address.
      type: str
      sample: 192.0.2.17
    peer_port:
      description: Peer port.
      type: int
      sample: 51234
    recv_queue:
      description: Bytes received and not read by the application; on LISTEN sockets the accept-queue length.
      type: int
      sample: 0
    send_queue:
      description: Bytes not yet acknowledged by the peer; on LISTEN sockets the backlog.
      type: int
      sample: 0
    uid:
      description: Owner uid of the socket.
      type: int
      sample: 33
    inode:
      description: Socket inode (0 for TIME_WAIT and request sockets).
      type: int
      sample: 123456
    owner:
      description: The process holding the socket.
      returned: when O(pids) or O(comms) is set
      type: dict
      contains:
        pid:
          description: Process id.
          type: int
        comm:
          description: Process name as the kernel keeps it (15 bytes), a character it cut shown as U+FFFD.
          type: str
    timer:
      description: The socket's active timer.
      returned: when O(details=true)
      type: dict
      contains:
        kind:
          description: V(retransmit), V(keepalive), V(time_wait), V(zero_window_probe) or null for none.
          type: str
        expires_ms:
          description: Milliseconds until it fires.
          type: int
        retransmits:
          description: Retransmissions (or unanswered zero-window probes) so far.
          type: int
    meminfo:
      description: Socket memory as C(ss -m) prints it (C(rmem_alloc), C(rcvbuf), C(wmem_alloc), C(sndbuf),
        C(fwd_alloc), C(wmem_queued), C(optmem), C(backlog), C(drops)), null for TIME_WAIT and request sockets.
      returned: when O(details=true)
      type: dict
    tcp_info:
      description:
        - Fields of the kernel's C(struct tcp_info) (those the running kernel provides), null for TIME_WAIT and
          request sockets.
        - Includes C(rtt_us), C(rtt_ms), C(rttvar_us), C(cwnd), C(retransmits), C(total_retrans), C(snd_wnd),
          C(rcv_wnd), C(rto_us), C(unacked), C(lost), C(bytes_acked), C(bytes_received), C(notsent_bytes).
      returned: when O(details=true)
      type: dict
warnings_list:
  description: What limited the listing (for example netlink unavailable and C(/proc/net/tcp) used instead).
  returned: always
  type: list
  elements: str
  sample: []
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netstate.tcp.plugins.module_utils._python_version import start_module

# before the module_utils below: they need Python 3.7 syntax, and AnsiballZ imports them from a zip
start_module("tcp_socket_info")

from ansible_collections.netstate.tcp.plugins.module_utils._netlink import DiagError, DiagUnavailable
from ansible_collections.netstate.tcp.plugins.module_utils._socket_info import (
    SORT_KEYS,
    SocketInfoError,
    normalize_options,
    query,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "states": {"type": "list", "elements": "str", "default": ["all"]},
            "local_ports": {"type": "list", "elements": "raw", "default": []},
            "peer_ports": {"type": "list", "elements": "raw", "default": []},
            "local_addresses": {"type": "list", "elements": "str", "default": []},
            "peer_addresses": {"type": "list", "elements": "str", "default": []},
            "pids": {"type": "list", "elements": "int", "default": []},
            "comms": {"type": "list", "elements": "str", "default": []},
            "limit": {"type": "int", "default": 100},
            "sort": {"type": "str", "choices": list(SORT_KEYS), "default": "none"},
            "details": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    try:
        options = normalize_options(module.params)
    except SocketInfoError as err:
        module.fail_json(msg=str(err))
    try:
        result = query(options)
    except (DiagUnavailable, DiagError, OSError) as err:
        module.fail_json(msg=f"tcp_socket_info: cannot list sockets: {err}")
    except Exception as err:  # never a bare traceback: one clear failure with the details attached
        module.fail_json(msg=f"tcp_socket_info: unexpected error: {err}", exception=traceback.format_exc())
    module.exit_json(
        changed=False,
        matched=result["matched"],
        truncated=result["truncated"],
        sockets=result["sockets"],
        warnings_list=result["warnings"],
    )


if __name__ == "__main__":
    main()
