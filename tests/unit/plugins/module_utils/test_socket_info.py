"""_socket_info on real loopback sockets made by the test (known ports, known unread bytes)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from ansible_collections.netstate.tcp.plugins.module_utils import _netlink as nl
from ansible_collections.netstate.tcp.plugins.module_utils import _socket_info as si

SENT = (300, 100, 200)


@pytest.fixture
def loopback_pairs():
    """A listener and three accepted connections; client i sent SENT[i] bytes the server never reads."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    clients, servers = [], []
    for size in SENT:
        client = socket.create_connection(("127.0.0.1", port))
        server, _addr = listener.accept()
        client.sendall(b"x" * size)
        clients.append(client)
        servers.append(server)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # loopback delivers at once; wait only for a slow machine
        if all(s.recv(65536, socket.MSG_PEEK | socket.MSG_DONTWAIT) for s in servers):
            break
        time.sleep(0.01)
    yield port, clients, servers
    for sock in clients + servers + [listener]:
        sock.close()


def _query(**params):
    # the port is ours on 127.0.0.1 only: another address may use the same port number
    return si.query(si.normalize_options(dict(params, local_addresses=["127.0.0.1"])))


def test_port_filter_lists_exactly_our_sockets(loopback_pairs):
    port, clients, servers = loopback_pairs
    result = _query(local_ports=[port])
    got = sorted((s["state"], s["local_port"], s["peer_port"]) for s in result["sockets"])
    expected = sorted(
        [("LISTEN", port, 0)] + [("ESTABLISHED", port, c.getsockname()[1]) for c in clients],
    )
    assert got == expected
    assert result["matched"] == 4
    inodes = {s["peer_port"]: s["inode"] for s in result["sockets"] if s["state"] == "ESTABLISHED"}
    assert all(inodes.values())  # established sockets held by this process have inodes
    assert len(servers) == 3


def test_sort_by_recv_queue_keeps_the_biggest(loopback_pairs):
    port, clients, _servers = loopback_pairs
    result = _query(local_ports=[port], states=["established"], sort="recv_queue", limit=2)
    assert result["matched"] == 3 and result["truncated"] is True
    assert [s["recv_queue"] for s in result["sockets"]] == sorted(SENT, reverse=True)[:2]
    by_client = {c.getsockname()[1]: size for c, size in zip(clients, SENT)}
    assert all(by_client[s["peer_port"]] == s["recv_queue"] for s in result["sockets"])


def test_details_and_owner_filter(loopback_pairs):
    port = loopback_pairs[0]
    result = _query(local_ports=[port], states=["established"], details=True, pids=[os.getpid()])
    assert result["matched"] == 3
    for sock in result["sockets"]:
        assert sock["owner"]["pid"] == os.getpid()
        assert sock["tcp_info"]["cwnd"] > 0
        assert sock["tcp_info"]["bytes_received"] == sock["recv_queue"]  # nothing was read
        assert sock["meminfo"]["rmem_alloc"] > 0
    result = _query(peer_ports=[port], states=["established"], details=True)
    sent = sorted(s["tcp_info"]["bytes_acked"] - 1 for s in result["sockets"])  # bytes_acked counts the SYN
    assert sent == sorted(SENT)


def test_procfs_fallback_when_netlink_is_refused(loopback_pairs):
    port, _clients, _servers = loopback_pairs
    options = si.normalize_options({"local_ports": [port], "local_addresses": ["127.0.0.1"], "limit": 100})

    def refused(*_args):
        yield from ()  # a generator, like iter_diag: the refusal comes on the first record
        raise nl.DiagUnavailable("netlink sock_diag request refused: [Errno 13] Permission denied")

    fallback = si.query(options, dump=refused)
    netlink = si.query(options)
    assert "listed from /proc/net/tcp" in fallback["warnings"][0]

    def tuples(result):
        return sorted((s["state"], s["local"], s["peer"], s["recv_queue"], s["inode"]) for s in result["sockets"])

    assert tuples(fallback) == tuples(netlink)
    assert fallback["matched"] == 4
