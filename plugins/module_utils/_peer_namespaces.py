# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Name peers that are other network namespaces (containers) of the same host.

When facts cover several namespaces, a peer address that one of them owns (an
address in its own /proc/net/fib_trie or if_inet6, as read while sampling it) is
that namespace: entries of ``top.by_peer``, ``top.by_peer_endpoint`` and
``churn.peers`` get ``namespace: {inode, name}`` and ``container`` (the container
id a process inside it shows in its cgroup, else None).  An address owned by more
than one namespace (isolated networks reuse private ranges) is ambiguous and not
named; neither is a namespace's own address, nor loopback.
"""

from __future__ import annotations

from ansible_collections.netstate.tcp.plugins.module_utils import _owners

PEER_LISTS = (("top", "by_peer"), ("top", "by_peer_endpoint"))


def _plain_address(text):
    """IPv4-mapped IPv6 text as the IPv4 address it maps; anything else unchanged."""
    if text.startswith("::ffff:") and "." in text:
        return text[7:]
    return text


def _ownable(text):
    return not (text.startswith("127.") or text in ("::1", "0.0.0.0", "::"))


def address_owners(namespaces):
    """{address text: (inode, name)} for addresses exactly one namespace owns.

    ``namespaces``: iterable of (inode, name, addresses); the same inode may appear
    twice (the current namespace listed by name too) and counts once.
    """
    owners = {}
    for inode, name, addresses in namespaces:
        for raw in addresses:
            text = _plain_address(str(raw))
            if not _ownable(text):
                continue
            known = owners.get(text)
            if known is None:
                owners[text] = (inode, name)
            elif known[0] != inode:
                owners[text] = False  # ambiguous
            elif known[1] is None and name:
                owners[text] = (inode, name)
    return {text: owner for text, owner in owners.items() if owner}


class ContainerLookup:
    """Container id of a namespace from one process inside it (memoized; None without a process)."""

    def __init__(self, pids, proc="/proc"):
        self.pids = pids  # {inode: pid}
        self.proc = proc
        self.cache = {}

    def __call__(self, inode):
        if inode not in self.cache:
            pid = self.pids.get(inode)
            container = None
            if pid:
                info = _owners.process_info(pid, proc=self.proc)
                container = info.get("container") if info else None
            self.cache[inode] = container
        return self.cache[inode]


def _peer_entries(block):
    """Every peer entry (dict with an ``address``) of a tcp_state block that can be named."""
    for first, second in PEER_LISTS:
        per_state = (block.get(first) or {}).get(second) or {}
        for entries in per_state.values():
            yield from entries or ()
    churn = block.get("churn") or {}
    yield from churn.get("peers") or ()


def name_peers(block, owners, container_of):
    """Add ``namespace`` and ``container`` to every peer entry of ``block``; returns how many were named.

    Entries whose address no other namespace owns get ``namespace: None, container: None``.
    """
    own_inode = (block.get("namespace") or {}).get("inode")
    named = 0
    for entry in _peer_entries(block):
        if not isinstance(entry, dict):
            continue
        owner = owners.get(_plain_address(str(entry.get("address", ""))))
        if owner is None or owner[0] == own_inode:
            entry["namespace"] = None
            entry["container"] = None
            continue
        entry["namespace"] = {"inode": owner[0], "name": owner[1]}
        entry["container"] = container_of(owner[0])
        named += 1
    return named
