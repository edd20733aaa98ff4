# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The remediation catalog: the one table of sysctl values netstate.tcp recommends.

Findings (_diagnose) recommend exactly these values and the remediate role
applies exactly these values (through tcp_sysctl's ``profiles`` option), so a
report's advice and the role's change cannot disagree.
"""

from __future__ import annotations

# An orphan can pin up to about 64 KiB of socket buffers: the orphan cap turns a
# memory budget into tcp_max_orphans with it.
ORPHAN_KIB = 64

# Retries an orphan gets before it is reset. tcp_orphan_retries 0 does not mean
# "none": the kernel uses 8 (tcp_orphan_retries() in net/ipv4/tcp_timer.c).
ORPHAN_RETRIES = 2

PROFILES = {
    "time_wait": {
        "description": (
            "Many TIME_WAIT sockets from an active closer that churns short connections. The lasting fix is "
            "connection reuse (keep-alive, pools) in the churning client; these values buy headroom meanwhile. "
            "Never tcp_tw_recycle (it broke clients behind NAT and was removed in Linux 4.12)."
        ),
        "sysctls": {
            "net.ipv4.tcp_tw_reuse": (
                1,
                "lets new outgoing connections reuse a TIME_WAIT socket to the same peer when TCP timestamps prove "
                "it safe (the default 2 allows it on loopback only); does nothing for incoming connections",
            ),
            "net.ipv4.ip_local_port_range": (
                [10240, 65000],
                "54761 ephemeral ports per (destination address, port) instead of 28232, so TIME_WAIT does not "
                "exhaust them",
            ),
            "net.ipv4.tcp_max_tw_buckets": (
                262144,
                "room for 262144 TIME_WAIT sockets before the kernel destroys them early and logs "
                '"time wait bucket table overflow"',
            ),
        },
    },
    "orphans": {
        "description": (
            "Orphaned sockets (closed by the application, still in FIN_WAIT1/CLOSING/LAST_ACK) holding memory, "
            "typically FIN_WAIT1 with unsent data towards peers that advertise a zero window."
        ),
        "sysctls": {
            "net.ipv4.tcp_max_orphans": (
                32768,
                "caps orphaned sockets at 32768 (about 2 GiB if each pins 64 KiB); past it the kernel resets them "
                'and logs "too many orphaned sockets". Host-wide: skipped inside a network namespace',
            ),
            "net.ipv4.tcp_orphan_retries": (
                ORPHAN_RETRIES,
                "an orphan gives up after 2 retransmissions or window probes; the default 0 means 8, which with the "
                "persist timer backing off to 120 s keeps FIN_WAIT1 sockets towards zero-window peers for many "
                "minutes",
            ),
        },
    },
    "fin_wait": {
        "description": (
            "Orphaned FIN_WAIT2 sockets whose peer never sends its FIN. tcp_fin_timeout affects FIN_WAIT2 only: it "
            "does not help FIN_WAIT1 (use the orphans profile) nor TIME_WAIT (a fixed 60 s)."
        ),
        "sysctls": {
            "net.ipv4.tcp_fin_timeout": (
                30,
                "orphaned FIN_WAIT2 sockets are closed after 30 s instead of 60 s (FIN_WAIT2 only)",
            ),
        },
    },
    "syn_flood": {
        "description": "SYN backlog full (SYN floods or bursts of connection attempts); half-open connections dropped.",
        "sysctls": {
            "net.ipv4.tcp_syncookies": (
                1,
                "when a listener's SYN queue overflows, answer with SYN cookies instead of dropping the SYN",
            ),
            "net.ipv4.tcp_max_syn_backlog": (
                8192,
                "room for 8192 half-open (SYN_RECV) connections per listener before drops or cookies start",
            ),
        },
    },
    "listen_backlog": {
        "description": (
            "Accept queues overflow (ListenOverflows). The owning process accepts too slowly: a bigger queue only "
            "absorbs bursts, and only when the application also asks listen() for a bigger backlog."
        ),
        "sysctls": {
            "net.core.somaxconn": (
                8192,
                "upper bound of the listen() backlog raised to 8192 (the application's own backlog still applies)",
            ),
            "net.ipv4.tcp_max_syn_backlog": (
                8192,
                "room for 8192 half-open connections per listener, so the larger accept queue can fill",
            ),
        },
    },
}

# Which profile answers which finding code. Codes not listed have no sysctl fix.
FINDING_PROFILES = {
    "TIME_WAIT_CHURN": "time_wait",
    "EPHEMERAL_PORT_PRESSURE": "time_wait",
    "TW_BUCKET_OVERFLOW": "time_wait",
    "FIN_WAIT1_STUCK": "orphans",
    "ORPHAN_PRESSURE": "orphans",
    "ORPHAN_RETRIES_DEFAULT": "orphans",
    "SYN_BACKLOG_PRESSURE": "syn_flood",
    "LISTEN_OVERFLOW": "listen_backlog",
}

# Findings that a sysctl must never "fix", with what to do instead.
NOT_SYSCTL = {
    "CLOSE_WAIT_LEAK": (
        "application problem: the peer closed and the process never closed its socket; find the owner in the "
        "finding's evidence and fix its code (close on EOF, timeouts); no sysctl helps"
    ),
    "TW_RECYCLE_PRESENT": (
        "tcp_tw_recycle is set on a kernel that still has it; set it to 0 by hand (this role never writes it)"
    ),
    "TCP_MEMORY_PRESSURE": (
        "TCP memory is near tcp_mem; find what holds buffers (orphans, large queues) before raising tcp_mem"
    ),
    "CONNTRACK_TABLE_PRESSURE": (
        "the conntrack table is near nf_conntrack_max; find which conntrack states fill it (the finding's evidence) "
        "and shorten those timeouts or raise nf_conntrack_max with the memory it costs, by hand: the table is "
        "shared with the firewall, so this role never sizes it"
    ),
}


# Sysctls a finding tells the operator to set by hand: the remediate role never writes them.
MANUAL_SYSCTLS = {
    # tcp_tw_recycle breaks clients behind NAT; 0 turns it off on kernels older than 4.12 that still have it.
    "TW_RECYCLE_PRESENT": {"net.ipv4.tcp_tw_recycle": 0},
}

# Which way a catalog value improves on a host's current one. A finding recommends a catalog value only
# when it does: it never lowers a somaxconn of 65535 to 8192, nor raises tcp_orphan_retries.
#   higher / lower   the catalog number is above / below the current one
#   equal            any other current value is worse (a switch)
#   wider            the catalog [low, high] range holds the current range and more
IMPROVES_WHEN = {
    "net.ipv4.tcp_tw_reuse": "equal",
    "net.ipv4.ip_local_port_range": "wider",
    "net.ipv4.tcp_max_tw_buckets": "higher",
    "net.ipv4.tcp_max_orphans": "lower",
    "net.ipv4.tcp_orphan_retries": "lower",
    "net.ipv4.tcp_fin_timeout": "lower",
    "net.ipv4.tcp_syncookies": "equal",
    "net.ipv4.tcp_max_syn_backlog": "higher",
    "net.core.somaxconn": "higher",
}


def improves(name, current, value):
    """True when the catalog ``value`` of sysctl ``name`` is better than the host's ``current`` one.

    ``current`` None (unknown, or absent in this namespace) is never improved on: nothing to set there.
    For tcp_orphan_retries pass the effective value (0 means 8).
    """
    if current is None:
        return False
    direction = IMPROVES_WHEN[name]
    if direction == "equal":
        return current != value
    if direction == "higher":
        return current < value
    if direction == "lower":
        return current > value
    low, high = current
    return value[0] <= low and value[1] >= high and list(value) != [low, high]


def profile_value(profile, name):
    """The value the catalog gives sysctl ``name`` in ``profile``."""
    return PROFILES[profile]["sysctls"][name][0]


def finding_sysctl(code, name):
    """The value a finding ``code`` recommends for sysctl ``name``: its profile's value."""
    return profile_value(FINDING_PROFILES[code], name)
