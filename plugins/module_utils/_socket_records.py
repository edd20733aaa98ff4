# Copyright (c) 2026, netstate.tcp contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The record source: TCP socket records of one family from netlink sock_diag or /proc/net/tcp{,6}.

Consumers (the facts aggregator, socket_info, the gate) read sockets only
through here.  A record is the tuple described in ``_netlink`` (index it with
``_netlink.R_*``); both sources yield the same layout.  The one exception is the facts aggregator's
full netlink dump, which reads the decoder's raw rows (``_netlink.iter_diag_rows``)
to build no tuple per socket; its /proc path comes through here.
"""

from __future__ import annotations

import itertools

from ansible_collections.netstate.tcp.plugins.module_utils import _netlink, _procfs

SOURCES = ("netlink", "procfs")


def iter_record_batches(
    family, states_mask, extensions=0, bytecode=b"", *, source="netlink", warnings=None, on_interrupt="warn"
):
    """Lists of records of one dump of ``family`` ("ipv4"/"ipv6" or AF_INET/AF_INET6).

    ``states_mask``: from ``_netlink.state_mask()``.  ``source``: "netlink" (the
    kernel applies ``extensions`` and the ``bytecode`` filter; raises
    DiagUnavailable when netlink is refused, DiagError when a dump fails) or
    "procfs" (no extensions; a ``bytecode`` filter is refused with ValueError,
    run ``_diag_filter.run_bytecode`` on the records instead; OSError when the
    file cannot be read).  ``warnings``: a list that gets what the caller must
    report (skipped malformed lines or messages, an interrupted dump).
    ``on_interrupt``: see ``_netlink.iter_diag_batches`` and ``retry_interrupted``.
    """
    if source == "netlink":
        return _netlink.iter_diag_batches(
            family, states_mask, extensions, bytecode, warnings=warnings, on_interrupt=on_interrupt
        )
    if source == "procfs":
        if bytecode:
            raise ValueError("procfs records cannot be filtered by inet_diag bytecode; filter them in user space")
        return _procfs.iter_procfs_batches(family, states_mask, warnings)
    raise ValueError(f"unknown record source {source!r}; valid sources: {', '.join(SOURCES)}")


def iter_records(
    family, states_mask, extensions=0, bytecode=b"", *, source="netlink", warnings=None, on_interrupt="warn"
):
    """Records (one tuple per socket) of :func:`iter_record_batches`, streamed."""
    return itertools.chain.from_iterable(
        iter_record_batches(
            family, states_mask, extensions, bytecode, source=source, warnings=warnings, on_interrupt=on_interrupt
        )
    )


retry_interrupted = _netlink.retry_interrupted
