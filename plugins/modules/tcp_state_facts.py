#!/usr/bin/python
# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: tcp_state_facts
short_description: TCP connection-state facts from netlink sock_diag, with owners, pressure and findings
version_added: 0.1.0
description:
  - Counts every TCP socket of the network namespace by state and family with one netlink sock_diag dump per
    family (falling back to C(/proc/net/tcp) and C(/proc/net/tcp6) when netlink is unavailable), and adds
    queue bytes, timers, zero-window probes, the busiest local ports, addresses and peers, listener accept
    queues, and the processes that hold the sockets.
  - Reads C(/proc/net/sockstat) (each field with its scope, namespace or host-wide), TCP counters from
    C(/proc/net/netstat) and C(/proc/net/snmp), and the TCP sysctls, and compares usage with the kernel's limits
    (orphans against C(tcp_max_orphans) plain and with the kernel's 4x penalty, memory against C(tcp_mem),
    TIME_WAIT against C(tcp_max_tw_buckets), the busiest ephemeral-port tuple against C(ip_local_port_range)).
  - Diagnoses the classic incidents (CLOSE_WAIT leak, TIME_WAIT churn, FIN_WAIT1 stuck on zero-window peers,
    orphan and memory pressure, listen overflow, ...) as RV(ansible_facts.tcp_state.findings), each with evidence
    and a remediation.
  - Facts are returned under RV(ansible_facts.tcp_state) and, when O(namespaces) is not V(current),
    RV(ansible_facts.tcp_state_namespaces).
  - Runs without root too; it then reports what it can see (socket counts, sockstat, counters, sysctls, the
    user's own processes) and lists what it could not read in RV(ansible_facts.tcp_state.warnings).
  - Needs only Python 3.7+ and its standard library on the managed node.
  - A netlink dump the kernel flags as interrupted by concurrent changes (C(NLM_F_DUMP_INTR)) is taken again
    once; when the second is interrupted too, RV(ansible_facts.tcp_state.warnings) says so.
requirements:
  - Python >= 3.7 on the managed node, standard library only (on an older Python the module fails
    with a message naming the minimum).
author:
  - netstate.tcp developers (@netstate)
extends_documentation_fragment:
  - netstate.tcp.attributes
  - netstate.tcp.attributes.FACTS
  - netstate.tcp.attributes.PLATFORM_LINUX
  - netstate.tcp.thresholds
attributes:
  check_mode:
    support: full
    details: Reads only; the O(prometheus_textfile) file is not written in check mode.
  diff_mode:
    support: none
options:
  top:
    description:
      - How many entries each top list holds (busiest local ports, local addresses and peers per state, listeners
        by fill ratio, owning processes per state).
      - V(0) empties the top lists and listeners; owners then still name the busiest process.
    type: int
    default: 10
  owners:
    description:
      - TCP states whose sockets get their owning processes named in RV(ansible_facts.tcp_state.owners), found
        with one pass over C(/proc/<pid>/fd) that reads every fd of every process, so each holder of a shared
        socket is named. A process counts a socket once, however many of its fds refer to it.
      - On a host with 20,000 open fds or more (Linux 6.2 or later, two or more CPUs) two forked processes make
        the pass while the sockets are dumped; otherwise it follows the dump, and only when sockets in these
        states exist.
      - State names are case-insensitive and may use C(-) for C(_) (V(close-wait) is V(CLOSE_WAIT)). Valid states
        are V(ESTABLISHED), V(SYN_SENT), V(SYN_RECV), V(FIN_WAIT1), V(FIN_WAIT2), V(TIME_WAIT), V(CLOSE),
        V(CLOSE_WAIT), V(LAST_ACK), V(LISTEN), V(CLOSING), V(NEW_SYN_RECV).
      - Sockets in TIME_WAIT and orphaned sockets belong to no process.
      - An empty list turns the scan off; listeners then have no owner either.
    type: list
    elements: str
    default: [CLOSE_WAIT, LISTEN]
  interval:
    description:
      - Seconds between two samples. With a value above V(0), RV(ansible_facts.tcp_state.rates) gives the counters'
        per-second rates over the interval and RV(ansible_facts.tcp_state.persistent) counts the sockets found in
        FIN_WAIT1, CLOSE_WAIT or LAST_ACK in both samples (matched by socket cookie).
      - Memory over the interval is the first sample's socket cookies of those three states, 8 bytes per socket
        (about 1 MB for 100,000 CLOSE_WAIT sockets); nothing else of the first sample is kept.
      - V(0) takes one sample. At most V(300).
    type: float
    default: 0
  namespaces:
    description:
      - Which network namespaces to describe.
      - V(current) describes only the namespace the module runs in.
      - V(all) adds every distinct network namespace found among C(/run/netns) and C(/proc/*/ns/net), so the
        namespaces of containers are covered too.
      - A list of names (as in C(ip netns list)) or C(inode:<n>) adds those namespaces; an unknown name fails
        the task with the list of available names.
      - V(current) and V(all) are read in any case, also inside a list (V([all]) is V(all)); the current
        namespace is always described, so V(current) adds nothing to a list of names.
      - Entering another namespace needs root (C(CAP_SYS_ADMIN)); a namespace that cannot be entered is
        listed in RV(ansible_facts.tcp_state.warnings).
      - With more than the current namespace, peers owned by another described namespace (a local container)
        are named with its C(namespace) and C(container) in RV(ansible_facts.tcp_state.top).
      - Host-wide figures (sockstat C(tcp_orphan), C(tcp_alloc), C(tcp_mem_pages)) appear once, in
        RV(ansible_facts.tcp_state) and in the initial namespace's block; other namespaces' blocks have them
        null.
    type: raw
    default: current
  families:
    description:
      - Address families to dump.
    type: list
    elements: str
    choices: [ipv4, ipv6]
    default: [ipv4, ipv6]
  trace:
    description:
      - Seconds to watch TCP state changes and name the processes that make the churn, in
        RV(ansible_facts.tcp_state.churn). V(0) (the default) turns tracing off. At most V(60).
      - With O(interval) the module waits once, for whichever is longer, and traces during that wait.
      - Tracing uses the kernel tracepoint C(sock:inet_sock_set_state) (Linux 4.16 or later) through a private
        tracefs instance C(instances/netstate-<pid>-<random>) with an in-kernel filter (connect, active close,
        passive close, peer close) and a bounded buffer; it never touches the global trace buffer or another
        tool's instance. The instance is removed on every exit path; one left by a killed run is removed by the
        next run. When tracefs is not mounted it is mounted in a private mount namespace of the module's own
        process, so the host's mount table does not change.
      - Only events raised in process context are credited to a process; events raised in softirq or hardirq
        context (where the current task is arbitrary) count in the session totals only.
      - Needs root in the host's PID namespace. Where tracing is not possible (unprivileged, kernel lockdown,
        inside a container, no tracepoint) C(source) of RV(ansible_facts.tcp_state.churn) is null and a warning
        says why.
      - With O(namespaces), one trace session serves every namespace; each block lists the processes of its own
        namespace (from C(/proc/<pid>/ns/net)).
    type: float
    default: 0
  conntrack:
    description:
      - Describe the namespace's nf_conntrack table in RV(ansible_facts.tcp_state.conntrack) - its size, limit and
        TCP timeouts from C(/proc/sys/net/netfilter), and its TCP entries per conntrack state from one ctnetlink
        dump of the whole table.
      - The dump is paid on every run, about 1.2 seconds per 262,144 entries (measured on a lab namespace), so a
        host with a huge table (a NAT gateway, a load balancer) pays that on each audit.
      - V(false) skips the table entirely (nothing is read, no netlink socket is opened).
        RV(ansible_facts.tcp_state.conntrack) then reports C(available=false) with every figure null, exactly as
        for a namespace without nf_conntrack, and the C(CONNTRACK_TABLE_PRESSURE) finding cannot fire.
    type: bool
    default: true
  prometheus_textfile:
    description:
      - Also write the figures of RV(ansible_facts.tcp_state) (the namespace the module runs in) as Prometheus
        text exposition to this file, for node_exporter's textfile collector, in the same call.
      - An absolute path of a file whose name ends in C(.prom) (the only files the collector reads), without
        control characters. Missing parent directories are created with mode C(0755), so node_exporter can
        enter them; an existing symlink or directory at the path is refused.
      - The file is written atomically (a temporary file in the same directory, renamed over the target) with
        mode C(0644); the task then reports C(changed). Not written in check mode.
      - 'Metrics: C(netstate_tcp_sockets{state}), C(netstate_tcp_findings{code,severity}),
        C(netstate_tcp_worst_severity), the pressure figures (C(netstate_tcp_orphans), C(netstate_tcp_orphans_ratio),
        C(netstate_tcp_memory_ratio_to_high), ...), C(netstate_tcp_churn_*) when TCP churn was traced,
        C(netstate_tcp_conntrack_*) when the namespace has a conntrack table, and
        C(netstate_tcp_audit_timestamp_seconds) (the collection time).'
    type: str
notes:
  - Read-only, except the O(prometheus_textfile) file when that option is given. With O(trace) a tracefs
    instance exists for the duration of the task only.
  - C(tcp_orphan_retries=0) means 8 retries to the kernel; RV(ansible_facts.tcp_state.effective) shows the
    effective value.
  - In a non-initial network namespace C(net.ipv4.tcp_max_orphans) and C(net.ipv4.tcp_mem) do not exist; they are
    null there, and so are the orphan and memory pressure ratios.
seealso:
  - name: ss(8)
    description: The socket statistics tool this module replaces in scripts.
    link: https://man7.org/linux/man-pages/man8/ss.8.html
  - name: tcp(7)
    description: The TCP sysctls reported under RV(ansible_facts.tcp_state.sysctls).
    link: https://man7.org/linux/man-pages/man7/tcp.7.html
"""

EXAMPLES = r"""
- name: Gather TCP state facts
  netstate.tcp.tcp_state_facts:

- name: Show the findings
  ansible.builtin.debug:
    var: ansible_facts.tcp_state.findings

# FIN_WAIT1 hoard: thousands of FIN_WAIT1 sockets with unsent data, peers advertising window 0.
- name: How much memory FIN_WAIT1 sockets hold, and how many sit on zero-window probes
  netstate.tcp.tcp_state_facts:
    owners: []
- name: Report FIN_WAIT1 bytes, zero-window sockets and the orphan limits
  ansible.builtin.debug:
    msg:
      - "FIN_WAIT1: {{ ansible_facts.tcp_state.states.FIN_WAIT1 }} sockets,
         {{ ansible_facts.tcp_state.queues.FIN_WAIT1.send_bytes | default(0) }} bytes unsent"
      - "zero window: {{ ansible_facts.tcp_state.timers.FIN_WAIT1.zero_window | default(0) }}"
      - "tcp_orphan_retries effective: {{ ansible_facts.tcp_state.effective.tcp_orphan_retries }}"

# TIME_WAIT flood: which local port and which peer churn connections.
- name: Find the TIME_WAIT churner
  netstate.tcp.tcp_state_facts:
    top: 5
    owners: []
- name: Show the busiest TIME_WAIT ports and peers
  ansible.builtin.debug:
    msg:
      - "{{ ansible_facts.tcp_state.top.by_local_port.TIME_WAIT | default([]) }}"
      - "{{ ansible_facts.tcp_state.top.by_peer.TIME_WAIT | default([]) }}"
      - "{{ ansible_facts.tcp_state.pressure.time_wait }}"

# CLOSE_WAIT leak: name the process that never closes its sockets.
- name: Who holds the CLOSE_WAIT sockets
  netstate.tcp.tcp_state_facts:
    owners: [close_wait]
- name: Show the CLOSE_WAIT owners
  ansible.builtin.debug:
    var: ansible_facts.tcp_state.owners.CLOSE_WAIT

# Orphan overflow: "TCP: too many orphaned sockets" in dmesg.
- name: Orphans and TCP memory against the kernel's limits
  netstate.tcp.tcp_state_facts:
    owners: []
- name: Show orphan and memory pressure
  ansible.builtin.debug:
    msg:
      - "{{ ansible_facts.tcp_state.pressure.orphans }}"
      - "{{ ansible_facts.tcp_state.pressure.memory }}"

# Listen overflow: ListenOverflows growing. Sample twice, 5 s apart, for per-second rates.
- name: Accept queues and their owners, with overflow rates
  netstate.tcp.tcp_state_facts:
    owners: [LISTEN]
    interval: 5
- name: Show listeners by fill ratio and the overflow rate
  ansible.builtin.debug:
    msg:
      - "{{ ansible_facts.tcp_state.listeners }}"
      - "ListenOverflows/s: {{ ansible_facts.tcp_state.rates.ListenOverflows | default(0) }}"

# Sockets that stay stuck: seen in both samples.
- name: Sockets stuck in FIN_WAIT1, CLOSE_WAIT or LAST_ACK for 10 s
  netstate.tcp.tcp_state_facts:
    interval: 10
- name: Show the persistent sockets
  ansible.builtin.debug:
    var: ansible_facts.tcp_state.persistent

# Containers and other network namespaces.
- name: Every network namespace on the host
  netstate.tcp.tcp_state_facts:
    namespaces: all
- name: CLOSE_WAIT count per namespace
  ansible.builtin.debug:
    msg: "{{ item.key }}: {{ item.value.states.CLOSE_WAIT }}"
  loop: "{{ ansible_facts.tcp_state_namespaces | dict2items }}"
  loop_control:
    label: "{{ item.key }}"

# A NAT gateway or load balancer with a huge conntrack table: skip its per-run dump.
- name: Socket facts without the conntrack table
  netstate.tcp.tcp_state_facts:
    conntrack: false

# Who makes the churn: trace TCP state changes for 10 s.
- name: Name the processes that open and close connections
  netstate.tcp.tcp_state_facts:
    trace: 10
- name: Show the busiest churners
  ansible.builtin.debug:
    var: ansible_facts.tcp_state.churn.processes

- name: Two named namespaces, IPv4 only
  netstate.tcp.tcp_state_facts:
    namespaces: [blue, red]
    families: [ipv4]
"""

RETURN = r"""
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: dict
  contains:
    tcp_state:
      description:
        - TCP-state facts of the network namespace the module ran in (schema 1 of the collection's design;
          key names are stable).
      returned: always
      type: dict
      contains:
        schema:
          description: Version of this layout.
          returned: always
          type: int
          sample: 1
        collected_at:
          description: UTC time of the (last) sample, ISO 8601.
          returned: always
          type: str
          sample: "2026-11-21T10:00:00Z"
        source:
          description: Where the socket figures came from, V(netlink) (sock_diag) or V(procfs) (fallback).
          returned: always
          type: str
          sample: netlink
        kernel:
          description: Kernel release.
          returned: always
          type: str
          sample: 6.18.44
        namespace:
          description: The network namespace described.
          returned: always
          type: dict
          contains:
            inode:
              description: Inode of the namespace (as in C(readlink /proc/self/ns/net)).
              type: int
              returned: always
            name:
              description: Its C(ip netns) name, or null.
              type: str
              returned: always
            initial:
              description: Whether this is the initial (host) network namespace.
              type: bool
              returned: always
          sample: {inode: 4026531840, name: null, initial: true}
        total:
          description: Number of TCP sockets counted.
          returned: always
          type: int
          sample: 296806
        states:
          description: Sockets per TCP state; all twelve states are present, 0 when none.
          returned: always
          type: dict
          sample: {ESTABLISHED: 12, SYN_SENT: 0, SYN_RECV: 0, FIN_WAIT1: 3, FIN_WAIT2: 0, TIME_WAIT: 5120,
                   CLOSE: 0, CLOSE_WAIT: 1570, LAST_ACK: 0, LISTEN: 4, CLOSING: 0, NEW_SYN_RECV: 0}
        families:
          description: The same counts per address family (V(ipv4), V(ipv6)).
          returned: always
          type: dict
        queues:
          description:
            - Per state (LISTEN excluded), the bytes in send queues (unsent, or sent and not acknowledged) and
              receive queues. FIN_WAIT1 C(send_bytes) is the memory the classic FIN_WAIT1 hoard holds.
          returned: always
          type: dict
          sample: {FIN_WAIT1: {send_bytes: 1048576, recv_bytes: 0}}
        listeners:
          description:
            - LISTEN sockets sorted by accept-queue fill ratio, at most O(top). On LISTEN sockets the kernel
              reports the accept-queue length and the backlog instead of bytes.
          returned: always
          type: list
          elements: dict
          contains:
            local:
              description: Local address and port.
              type: str
              returned: always
            accept_queue:
              description: Connections waiting for accept().
              type: int
              returned: always
            backlog:
              description: The accept-queue limit (listen() backlog capped by C(net.core.somaxconn)).
              type: int
              returned: always
            fill:
              description: C(accept_queue / backlog).
              type: float
              returned: always
            owner:
              description: C({pid, comm}) of the process holding the socket, null when unknown or O(owners=[]).
              type: dict
              returned: always
            inode:
              description: Inode of the listening socket (as in C(ss -tle)), to match it with C(/proc/<pid>/fd).
              type: int
              returned: always
          sample: [{local: "0.0.0.0:80", accept_queue: 0, backlog: 511, fill: 0.0, owner: {pid: 812, comm: nginx}}]
        timers:
          description:
            - Per state, sockets by active timer (C(retransmit), C(persist) = zero-window probe, C(keepalive),
              C(time_wait)), C(zero_window) (sockets whose peer advertises window 0) and C(max_retransmits).
          returned: always
          type: dict
          sample: {FIN_WAIT1: {retransmit: 0, persist: 3, keepalive: 0, time_wait: 0, zero_window: 3,
                               max_retransmits: 7}}
        top:
          description:
            - For each state that has sockets, the O(top) busiest C(by_local_port), C(by_local_address),
              C(by_peer) and C(by_peer_endpoint) (peer C(scope) is V(loopback), V(local) or V(remote)). LISTEN
              sockets are in RV(ansible_facts.tcp_state.listeners) instead.
            - C(by_peer_endpoint) counts peer address and port of the sockets on a local port nothing listens on
              (outgoing connections), so TIME_WAIT churn names the service it hammers; accepted connections are
              left out (their peer port is the client's ephemeral port).
            - With O(namespaces) other than V(current), every C(by_peer) and C(by_peer_endpoint) entry (and each
              C(churn.peers) entry) also has C(namespace) and C(container). When another described namespace owns
              the peer address (one of its own addresses, and of no other namespace), C(namespace) is its
              C(inode) and C(name) and C(container) the container id a process inside it shows in its cgroup
              (null without one); otherwise both are null. V(all) describes every namespace of the host, so
              local containers are named; with a list of names only those namespaces can be.
          returned: always
          type: dict
          sample: {by_local_port: {TIME_WAIT: [{port: 6601, count: 5000}]},
                   by_local_address: {TIME_WAIT: [{address: "10.0.0.1", count: 5000}]},
                   by_peer: {TIME_WAIT: [{address: "192.0.2.1", count: 4990, scope: remote}]},
                   by_peer_endpoint: {TIME_WAIT: [{address: "192.0.2.1", port: 443, count: 4990, scope: remote}]}}
        owners:
          description:
            - For each state of O(owners), the processes holding its sockets, most sockets first, at most O(top).
          returned: always
          type: dict
          contains:
            pid:
              description: Process id.
              type: int
              returned: always
            comm:
              description: Process name (C(/proc/<pid>/comm)).
              type: str
              returned: always
            cmdline:
              description: Command line, cut to 200 characters.
              type: str
              returned: always
            user:
              description: Name of the effective user (the uid as text when it has no name).
              type: str
              returned: always
            cgroup:
              description: The cgroup path (cgroup v2 entry, else the systemd or first v1 entry).
              type: str
              returned: always
            container:
              description: Container id when the cgroup path shows one (docker, containerd, CRI-O, podman), else null.
              type: str
              returned: always
            sockets:
              description: Sockets of that state the process holds.
              type: int
              returned: always
          sample: {CLOSE_WAIT: [{pid: 1234, comm: proxy, cmdline: "/usr/bin/proxy -c /etc/proxy.conf", user: www,
                                 cgroup: "/system.slice/proxy.service", container: null, sockets: 1570}], LISTEN: []}
        sockstat:
          description:
            - C(/proc/net/sockstat) TCP figures. C(tcp_inuse), C(tcp_tw) and C(tcp6_inuse) are the namespace's;
              C(tcp_orphan), C(tcp_alloc), C(tcp_mem_pages) and C(tcp_mem_bytes) are host-wide even inside a
              namespace. C(scope) says which is which.
          returned: always
          type: dict
          sample: {tcp_inuse: 20, tcp_tw: 5120, tcp_orphan: 3, tcp_alloc: 30, tcp_mem_pages: 212,
                   tcp_mem_bytes: 868352, tcp6_inuse: 2,
                   scope: {tcp_inuse: namespace, tcp_tw: namespace, tcp_orphan: host, tcp_alloc: host,
                           tcp_mem_pages: host, tcp_mem_bytes: host, tcp6_inuse: namespace}}
        counters:
          description:
            - TCP counters of the namespace from C(/proc/net/netstat) (TcpExt) and C(/proc/net/snmp) (Tcp), by
              their kernel names; null when the kernel lacks one.
          returned: always
          type: dict
          sample: {ListenOverflows: 0, ListenDrops: 0, TCPAbortOnMemory: 0, TCPTimeWaitOverflow: 0, ActiveOpens: 34}
        rates:
          description: Per-second rates of RV(ansible_facts.tcp_state.counters) over O(interval); empty without it.
          returned: always
          type: dict
          sample: {ListenOverflows: 12.5, ActiveOpens: 300.0}
        persistent:
          description:
            - With O(interval), sockets in FIN_WAIT1, CLOSE_WAIT or LAST_ACK in both samples (same socket
              cookie), with their C(count) and C(send_bytes) per state; empty without it.
          returned: always
          type: dict
          sample: {FIN_WAIT1: {count: 3, send_bytes: 1048576}, CLOSE_WAIT: {count: 0, send_bytes: 0},
                   LAST_ACK: {count: 0, send_bytes: 0}}
        interval:
          description: Seconds actually elapsed between the two samples; 0 with one sample.
          returned: always
          type: float
          sample: 5.002
        sysctls:
          description:
            - TCP sysctls by dotted name. Vectors are lists. Null when absent, for example C(net.ipv4.tcp_tw_recycle)
              since Linux 4.12, and C(net.ipv4.tcp_max_orphans) and C(net.ipv4.tcp_mem) in a non-initial namespace.
          returned: always
          type: dict
          sample: {net.ipv4.tcp_fin_timeout: 60, net.ipv4.tcp_orphan_retries: 0, net.ipv4.tcp_max_orphans: 131072,
                   net.ipv4.tcp_mem: [94407, 125876, 188814], net.ipv4.ip_local_port_range: [32768, 60999],
                   net.ipv4.tcp_tw_recycle: null, net.core.somaxconn: 4096}
        effective:
          description:
            - What the kernel does with some settings - C(tcp_orphan_retries) (0 means 8), C(ephemeral_ports) (size
              of C(ip_local_port_range)) and C(tcp_tw_recycle_present).
          returned: always
          type: dict
          sample: {tcp_orphan_retries: 8, ephemeral_ports: 28232, tcp_tw_recycle_present: false}
        pressure:
          description:
            - Usage against the kernel's limits, ratios null when a limit is unknown.
            - C(orphans) - C(count), C(limit) (C(tcp_max_orphans)), C(ratio) and C(ratio_penalized_4x) (the kernel
              counts orphans up to four times for sockets with errors or idle past their timeout).
            - C(memory) - C(pages) against C(tcp_mem) C(low), C(pressure), C(high) and C(ratio_to_high).
            - C(time_wait) - C(count), C(limit) (C(tcp_max_tw_buckets)), C(ratio).
            - C(ephemeral_ports) - C(range) size, C(busiest_tuple) (the local-address/peer-address/peer-port with
              most connections), C(in_use) (its connection count) and C(ratio).
          returned: always
          type: dict
        conntrack:
          description:
            - The namespace's nf_conntrack table. Figures come from C(/proc/sys/net/netfilter), the TCP states from
              one ctnetlink dump (C(NETLINK_NETFILTER)) decoded as a stream.
            - The module never makes the kernel load a module. When nf_conntrack is not loaded, or with
              O(conntrack=false), C(available) is false and every figure is null. When C(nf_conntrack_netlink)
              is not loaded (and the kernel could load it, as a ctnetlink request would make it), C(states) is
              null and a warning says so; the other figures are still given.
          returned: always
          type: dict
          contains:
            available:
              description: Whether nf_conntrack is loaded (its sysctls exist in this namespace); false with
                O(conntrack=false).
              type: bool
              returned: always
            source:
              description: V(ctnetlink) when C(states) was read; null when it could not be (see the warnings).
              type: str
              returned: always
            count:
              description: Entries in this namespace's table (C(nf_conntrack_count)), all protocols.
              type: int
              returned: always
            max:
              description: The table limit (C(nf_conntrack_max)); 0 means no limit.
              type: int
              returned: always
            ratio:
              description: C(count) / C(max), null when either is unknown or C(max) is 0.
              type: float
              returned: always
            states:
              description:
                - TCP entries per conntrack state, every state present (V(NONE), V(SYN_SENT), V(SYN_RECV),
                  V(ESTABLISHED), V(FIN_WAIT), V(CLOSE_WAIT), V(LAST_ACK), V(TIME_WAIT), V(CLOSE), V(SYN_SENT2)).
                - Conntrack states are the firewall's view of a connection, one entry per connection, not
                  per socket.
              type: dict
              returned: always
            timeouts:
              description:
                - Seconds an entry stays in each TCP state without traffic (C(nf_conntrack_tcp_timeout_<name>)) -
                  C(syn_sent), C(syn_recv), C(established), C(fin_wait), C(close_wait), C(last_ack), C(time_wait),
                  C(close), C(max_retrans), C(unacknowledged).
              type: dict
              returned: always
          sample: {available: true, source: ctnetlink, count: 60, max: 262144, ratio: 0.0002,
                   states: {NONE: 0, SYN_SENT: 0, SYN_RECV: 0, ESTABLISHED: 20, FIN_WAIT: 0, CLOSE_WAIT: 20,
                            LAST_ACK: 0, TIME_WAIT: 20, CLOSE: 0, SYN_SENT2: 0},
                   timeouts: {syn_sent: 120, syn_recv: 60, established: 432000, fin_wait: 120, close_wait: 60,
                              last_ack: 30, time_wait: 120, close: 10, max_retrans: 300, unacknowledged: 300}}
        findings:
          description:
            - Diagnoses, each with a stable C(code) (CLOSE_WAIT_LEAK, TIME_WAIT_CHURN, FIN_WAIT1_STUCK,
              ORPHAN_PRESSURE, TCP_MEMORY_PRESSURE, LISTEN_OVERFLOW, SYN_BACKLOG_PRESSURE, EPHEMERAL_PORT_PRESSURE,
              TW_BUCKET_OVERFLOW, ORPHAN_RETRIES_DEFAULT, TW_RECYCLE_PRESENT, CONNTRACK_TABLE_PRESSURE), a
              C(severity) (V(info), V(warning), V(critical)), a C(summary), the C(evidence) and a C(remediation)
              (C(kind), C(text), C(sysctls), and C(profile), the remediate role's profile that applies those
              sysctls, null when none does).
          returned: always
          type: list
          elements: dict
          sample: [{code: CLOSE_WAIT_LEAK, severity: critical,
                    summary: "1570 CLOSE_WAIT sockets held by pid 1234 (proxy)", evidence: {},
                    remediation: {kind: application, text: "Fix the application: it never closes these sockets.",
                                  sysctls: {}}}]
        churn:
          description:
            - Who makes the churn, from tracing TCP state changes for O(trace) seconds (C(sock:inet_sock_set_state)
              through a private tracefs instance).
            - C(source) - V(tracefs), or null when tracing was not possible (C(reason) and a warning say why).
            - C(seconds) - how long the trace ran.
            - C(events) - state changes copied out by the session (the tracepoint is host-wide, so every namespace
              and context counts); C(lost_events) - dropped, overwritten or unread events (rates are lower bounds
              when not 0); C(interrupt_events) - events raised in softirq or hardirq context, credited to no
              process; C(unresolved_events) - events of processes that exited before they were seen, or over the
              process cap; C(namespace_events) - events credited to processes of this namespace.
            - C(totals) - session-wide C(connects), C(active_closes), C(passive_closes), C(peer_closes) (the peer
              closed first, ESTABLISHED to CLOSE_WAIT), every context included.
            - C(processes) - the most active processes of this namespace (at most O(top)), each with C(pid),
              C(comm), C(cmdline), C(user), C(container), C(netns) (C(inode), C(name)), C(connects) (connect),
              C(active_closes) (close first, the side that ends in TIME_WAIT), C(passive_closes) (close after the
              peer), C(peer_closes), C(connects_per_second), C(active_closes_per_second) and C(top_peers)
              (C(address), C(port), C(count) of connects and active closes).
            - C(peers) - the remote endpoints of this namespace's processes, each with C(address), C(port),
              C(connects) and C(active_closes), busiest first.
          returned: when O(trace) is above 0
          type: dict
          sample: {source: tracefs, seconds: 10.0, events: 6120, lost_events: 0, interrupt_events: 1530,
                   unresolved_events: 0, namespace_events: 4590,
                   totals: {connects: 1530, active_closes: 1530, passive_closes: 1530, peer_closes: 1530},
                   processes: [{pid: 1234, comm: api, cmdline: "api --port 8080", user: www, container: null,
                                netns: {inode: 4026531840, name: null}, connects: 1530, active_closes: 1530,
                                passive_closes: 0, peer_closes: 0, connects_per_second: 153.0,
                                active_closes_per_second: 153.0,
                                top_peers: [{address: 10.0.0.5, port: 6601, count: 3060}]}],
                   peers: [{address: 10.0.0.5, port: 6601, connects: 1530, active_closes: 1530}]}
        warnings:
          description: What could not be read (for example other users' processes without root).
          returned: always
          type: list
          elements: str
          sample: ["owners: could not read /proc/<pid>/fd of 87 processes (permission denied); ..."]
    tcp_state_namespaces:
      description:
        - With O(namespaces) other than V(current), one RV(ansible_facts.tcp_state) block per namespace, keyed by its
          C(ip netns) name or C(inode:<n>) when it has none.
        - Host-wide sockstat figures are null in the blocks of non-initial namespaces (they are reported once).
      returned: when O(namespaces) is not V(current)
      type: dict
      sample: {blue: {schema: 1, states: {CLOSE_WAIT: 50}}, "inode:4026532301": {schema: 1}}
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netstate.tcp.plugins.module_utils._python_version import start_module

# before the module_utils below: they need Python 3.7 syntax, and AnsiballZ imports them from a zip
start_module("tcp_state_facts")

from ansible_collections.netstate.tcp.plugins.module_utils._facts import (
    ARGUMENT_SPEC,
    FactsError,
    gather_facts,
    normalize_options,
)
from ansible_collections.netstate.tcp.plugins.module_utils._netns import NetnsError


def main():
    module = AnsibleModule(
        # the textfile is output, not a facts option: _facts.ARGUMENT_SPEC holds what the facts depend on
        argument_spec={**ARGUMENT_SPEC, "prometheus_textfile": {"type": "str"}},
        supports_check_mode=True,
    )
    textfile = module.params["prometheus_textfile"]
    if textfile is not None:
        # AnsiballZ imports from a zip, so every imported module_utils file is compiled on each run: only when asked
        from ansible_collections.netstate.tcp.plugins.module_utils import _prometheus  # noqa: PLC0415
    try:
        textfile = None if textfile is None else _prometheus.check_textfile_path(textfile)
        options = normalize_options(module.params)
        facts = gather_facts(options)
    except ValueError as err:
        module.fail_json(msg=str(err))
    except (FactsError, NetnsError, OSError) as err:
        module.fail_json(msg=f"tcp_state_facts: {err}")
    except Exception as err:  # never a bare traceback: one clear failure with the details attached
        module.fail_json(msg=f"tcp_state_facts: unexpected error: {err}", exception=traceback.format_exc())
    if textfile is None or module.check_mode:
        module.exit_json(changed=False, ansible_facts=facts)
    try:
        _prometheus.write_textfile(textfile, _prometheus.render_tcp_state(facts["tcp_state"]), module.atomic_move)
    except OSError as err:
        module.fail_json(msg=f"prometheus_textfile: cannot write {textfile}: {err}")
    module.exit_json(changed=True, ansible_facts=facts)


if __name__ == "__main__":
    main()
