# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # The thresholds option of the modules that diagnose (plugins/module_utils/_diagnose.py,
    # THRESHOLD_SPEC is the source of these keys and defaults; a unit test keeps them equal).
    DOCUMENTATION = r"""
options:
  thresholds:
    description:
      - Overrides for the limits at which findings are raised; keys left out keep their defaults.
      - A finding is raised at warning severity when its figure is at or above the C(*_warning) key and at
        critical severity at or above the C(*_critical) key.
      - C(count) and C(bytes) keys take integers >= 0, C(ratio) keys numbers between 0 and 1, C(rate) keys numbers
        >= 0 (per second). Booleans are not numbers. A C(*_warning) key must not be above its C(*_critical) key.
      - An unknown key or a bad value fails the task with a message naming the key and what it allows;
        nothing is collected or changed then.
      - Kernel counters (ListenOverflows, TCPTimeWaitOverflow, syncookies, TCPAbortOnMemory...) count since boot
        (or since the network namespace was created). With the C(interval) option their growth per second is
        used; without it a counter alone gives at most a warning (C(counter_events_warning)), never a critical
        finding.
      - Below C(fin_wait1_warning) and C(fin_wait1_bytes_warning), FIN_WAIT1 sockets with unsent data on the persist
        (zero-window probe) timer still give FIN_WAIT1_STUCK at info severity, the signature of the FIN_WAIT1
        hoard; at warning when they persist across the C(interval).
      - "C(close_wait_warning) (count, default C(100)): a healthy application closes within milliseconds of the
        peer's FIN; a hundred lingering CLOSE_WAIT sockets means some code path never calls close()."
      - "C(close_wait_critical) (count, default C(1000)): a thousand leaked fds is where proxies hit their fd limit
        and stop serving."
      - "C(close_wait_min_per_owner) (count, default C(10)): a process holding at least this many CLOSE_WAIT sockets
        is named as a leaker; fewer is normal shutdown lag."
      - "C(time_wait_warning) (count, default C(5000)): the low end of the TIME_WAIT floods seen in production
        write-ups; below it TIME_WAIT is harmless bookkeeping."
      - "C(time_wait_critical) (count, default C(30000)): the high end of those floods: about half of the default
        ephemeral port range for one peer."
      - "C(fin_wait1_warning) (count, default C(100)): FIN_WAIT1 normally lasts one round trip; a hundred at once
        means peers stopped acknowledging."
      - "C(fin_wait1_critical) (count, default C(1000)): a thousand stuck FIN_WAIT1 sockets is the start of the
        FIN_WAIT1 hoard incident."
      - "C(fin_wait1_bytes_warning) (bytes, default C(67108864)): 64 MiB of unsent data held by closed sockets is
        memory no application can free."
      - "C(fin_wait1_bytes_critical) (bytes, default C(1073741824)): 1 GiB held by FIN_WAIT1 sockets competes with
        the workload for memory (the hoard reached 16 GB)."
      - "C(orphan_ratio_warning) (ratio, default C(0.5)): compared with the 4x-penalized orphan ratio: the kernel
        already resets idle, ICMP-hit orphans at 1.0."
      - "C(orphan_ratio_critical) (ratio, default C(1.0)): compared with the 4x-penalized orphan ratio: at 1.0 the
        kernel resets penalized orphans and logs 'too many orphaned sockets'."
      - "C(memory_ratio_warning) (ratio, default C(0.7)): TCP memory pages over tcp_mem[2] (high); near tcp_mem[1]
        the kernel enters memory pressure and shrinks buffers."
      - "C(memory_ratio_critical) (ratio, default C(0.9)): TCP memory pages over tcp_mem[2]; at 1.0 allocations fail
        and the kernel logs 'out of memory -- consider tuning tcp_mem'."
      - "C(listen_fill_warning) (ratio, default C(0.8)): accept queue over backlog: a queue this full means the
        owner accepts slower than clients connect."
      - "C(listen_fill_critical) (ratio, default C(1.0)): a full accept queue: the kernel drops the next handshake
        (ListenOverflows)."
      - "C(syn_backlog_ratio_warning) (ratio, default C(0.5)): half-open connections over tcp_max_syn_backlog (or
        over the listener's backlog for one port)."
      - "C(syn_backlog_ratio_critical) (ratio, default C(0.9)): nearly full SYN queue: the kernel sends syncookies
        or drops SYNs."
      - "C(ephemeral_port_ratio_warning) (ratio, default C(0.5)): ports in use for the busiest local-address/peer
        tuple over ip_local_port_range: half used leaves little headroom for a burst."
      - "C(ephemeral_port_ratio_critical) (ratio, default C(0.8)): connect() starts failing with EADDRNOTAVAIL as
        the range fills, and port search gets slow well before."
      - "C(tw_bucket_ratio_warning) (ratio, default C(0.8)): TIME_WAIT sockets over tcp_max_tw_buckets: close to the
        point where the kernel skips TIME_WAIT."
      - "C(tw_bucket_ratio_critical) (ratio, default C(0.95)): the table is practically full: closing sockets skip
        TIME_WAIT ('time wait bucket table overflow')."
      - "C(listen_drop_rate_critical) (rate, default C(1.0)): ListenOverflows + ListenDrops per second (needs
        interval): more than one refused handshake a second is visible to users; any growth is a warning."
      - "C(syn_drop_rate_critical) (rate, default C(1.0)): TCPReqQFullDrop per second (needs interval): SYNs dropped
        because the SYN queue is full; any growth is a warning."
      - "C(tw_overflow_rate_critical) (rate, default C(10.0)): TCPTimeWaitOverflow per second (needs interval):
        sockets closing without TIME_WAIT protection; any growth is a warning."
      - "C(conntrack_ratio_warning) (ratio, default C(0.75)): entries in the namespace's nf_conntrack table over
        nf_conntrack_max: a quarter of headroom is what a burst of new connections eats first."
      - "C(conntrack_ratio_critical) (ratio, default C(0.9)): nearly full conntrack table: when it is full the kernel
        drops new connections and logs 'nf_conntrack: table full, dropping packet'."
      - "C(counter_events_warning) (count, default C(1000)): without interval a counter only shows events since boot
        (or namespace creation): at or above this count it gives a warning, below it info; counters alone are never
        critical."
    type: dict
"""
