# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_socket_aggregate (the facts aggregator) on netlink byte streams and /proc/net/tcp text recorded from lab namespaces.

Every expectation comes from the ``ss -tanoe`` output recorded at the same moment
(fixtures/collect_sockets/*/ss.txt, see the README there), never from hard-coded numbers.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections import Counter

import pytest
from collect_sockets_fixtures import NAMES, meta, read_chunks, read_text, ss_rows

from ansible_collections.netstate.tcp.plugins.module_utils import _netlink as nl
from ansible_collections.netstate.tcp.plugins.module_utils import _socket_aggregate as cs

FAMILY_OF = {4: "ipv4", 16: "ipv6"}


def decoded(name):
    """All records of both recorded dumps with their address text, via decode_diag_stream."""
    rows = []
    for family in ("ipv4", "ipv6"):
        af = nl.FAMILIES[family]
        for rec in nl.decode_diag_stream(read_chunks(name, family), family):
            rows.append(
                {
                    "state": nl.STATES[rec[nl.R_STATE] - 1],
                    "recvq": rec[nl.R_RQUEUE],
                    "sendq": rec[nl.R_WQUEUE],
                    "local": (socket.inet_ntop(af, rec[nl.R_SRC]), rec[nl.R_SPORT]),
                    "peer": (socket.inet_ntop(af, rec[nl.R_DST]), rec[nl.R_DPORT]),
                    "timer": rec[nl.R_TIMER],
                    "inode": rec[nl.R_INODE],
                    "cookie": rec[nl.R_COOKIE],
                }
            )
    return rows


def recorded_aggregator(name, **kwargs):
    """A SocketAggregator with the recording namespace's local addresses and ephemeral range."""
    m = meta(name)
    return cs.SocketAggregator(
        top=kwargs.pop("top", 10),
        local_addresses=set(m["local_addresses"]),
        ephemeral_range=tuple(m["ephemeral_range"]),
        **kwargs,
    )


def aggregate(name, **kwargs):
    agg = recorded_aggregator(name, **kwargs)
    for family in ("ipv4", "ipv6"):
        agg.feed_netlink(family, read_chunks(name, family))
    return agg.result()


def aggregate_procfs(name, **kwargs):
    agg = recorded_aggregator(name, **kwargs)
    agg.feed_procfs("ipv4", read_text(name, "tcp.txt").splitlines(True))
    agg.feed_procfs("ipv6", read_text(name, "tcp6.txt").splitlines(True))
    return agg.result()


def as_multiset(rows, keys):
    return Counter(tuple(row[k] for k in keys) for row in rows)


@pytest.mark.parametrize("name", NAMES)
def test_records_equal_ss(name):
    ours = decoded(name)
    theirs = ss_rows(name)
    assert theirs, "fixture without sockets"
    keys = ("state", "local", "peer", "recvq", "sendq", "timer", "inode", "cookie")
    assert as_multiset(ours, keys) == as_multiset(theirs, keys)


@pytest.mark.parametrize("name", NAMES)
def test_state_counts_equal_ss(name):
    result = aggregate(name)
    expected = Counter(row["state"] for row in ss_rows(name))
    assert set(result["states"]) == set(nl.STATES)
    assert result["states"] == {state: expected.get(state, 0) for state in nl.STATES}
    assert result["total"] == len(ss_rows(name))
    by_family = Counter((FAMILY_OF[len(socket.inet_pton(*_af(r["local"][0])))], r["state"]) for r in ss_rows(name))
    for family in ("ipv4", "ipv6"):
        assert result["families"][family] == {s: by_family.get((family, s), 0) for s in nl.STATES}


def _af(text):
    return (socket.AF_INET6, text) if ":" in text else (socket.AF_INET, text)


@pytest.mark.parametrize("name", NAMES)
def test_queues_and_timers_equal_ss(name):
    result = aggregate(name)
    rows = ss_rows(name)
    assert "LISTEN" not in result["queues"]
    for state in nl.STATES:
        mine = [r for r in rows if r["state"] == state]
        if state != "LISTEN":
            assert result["queues"][state] == {
                "send_bytes": sum(r["sendq"] for r in mine),
                "recv_bytes": sum(r["recvq"] for r in mine),
            }
        timers = Counter(r["timer"] for r in mine)
        got = result["timers"][state]
        assert (got["retransmit"], got["keepalive"], got["time_wait"], got["persist"]) == (
            timers[1],
            timers[2],
            timers[3],
            timers[4],
        )
        assert got["zero_window"] == timers[4]


def test_fin_wait1_zero_window_scenario_report():
    """The scenario's own report (ioctl TIOCOUTQ + /proc) agrees with the decoded dump."""
    result = aggregate("fin_wait1_zero_window")
    report = meta("fin_wait1_zero_window")["scenario"]
    assert result["states"]["FIN_WAIT1"] == report["expected"]["FIN_WAIT1"]
    assert result["queues"]["FIN_WAIT1"]["send_bytes"] == report["send_bytes"]["FIN_WAIT1"]
    assert result["timers"]["FIN_WAIT1"]["persist"] == report["timers"]["FIN_WAIT1"]["persist"] > 0


@pytest.mark.parametrize("name", NAMES)
def test_listeners_equal_ss(name):
    result = aggregate(name, top=100)
    expected = sorted(
        (
            f"[{r['local'][0]}]:{r['local'][1]}" if ":" in r["local"][0] else f"{r['local'][0]}:{r['local'][1]}",
            r["recvq"],
            r["sendq"],
            r["inode"],
        )
        for r in ss_rows(name)
        if r["state"] == "LISTEN"
    )
    got = sorted((x["local"], x["accept_queue"], x["backlog"], x["inode"]) for x in result["listeners"])
    assert got == expected
    fills = [x["fill"] for x in result["listeners"]]
    assert fills == sorted(fills, reverse=True)
    for x in result["listeners"]:
        assert x["fill"] == pytest.approx(x["accept_queue"] / x["backlog"], abs=1e-4)


def test_listen_overflow_fill_is_over_one():
    """Recv-Q above the backlog is the overflow the kernel reports on LISTEN sockets."""
    (listener,) = aggregate("listen_overflow")["listeners"]
    row = next(r for r in ss_rows("listen_overflow") if r["state"] == "LISTEN")
    assert listener["accept_queue"] == row["recvq"] > row["sendq"] == listener["backlog"]
    assert listener["fill"] > 1


@pytest.mark.parametrize("name", NAMES)
def test_top_equal_ss(name):
    top = 3
    result = aggregate(name, top=top)
    rows = [r for r in ss_rows(name) if r["state"] != "LISTEN"]
    local = set(meta(name)["local_addresses"])
    for state in {r["state"] for r in rows}:
        mine = [r for r in rows if r["state"] == state]
        for key, field, pick in (
            ("by_local_port", "port", lambda r: r["local"][1]),
            ("by_local_address", "address", lambda r: r["local"][0]),
            ("by_peer", "address", lambda r: r["peer"][0]),
        ):
            expected = Counter(pick(r) for r in mine)
            got = result["top"][key][state]
            assert len(got) == min(top, len(expected))
            for entry in got:
                assert entry["count"] == expected[entry[field]]
            counts = [e["count"] for e in got]
            assert counts == sorted(counts, reverse=True)
            left_out = [c for k, c in expected.items() if k not in {e[field] for e in got}]
            assert all(c <= counts[-1] for c in left_out)
        for entry in result["top"]["by_peer"][state]:
            v4 = entry["address"].removeprefix("::ffff:")
            if v4.startswith("127.") or v4 == "::1":
                assert entry["scope"] == "loopback"
            elif v4 in local:
                assert entry["scope"] == "local"
            else:
                assert entry["scope"] == "remote"
    assert set(result["top"]["by_local_port"]) == {r["state"] for r in rows}


@pytest.mark.parametrize("name", NAMES)
def test_top_by_peer_endpoint_equal_ss(name):
    """Busiest peer address:port per state among outgoing sockets (on a local port nothing listens on)."""
    top = 3
    result = aggregate(name, top=top)
    rows = ss_rows(name)
    listening = {r["local"][1] for r in rows if r["state"] == "LISTEN"}
    outgoing = [r for r in rows if r["state"] != "LISTEN" and r["local"][1] not in listening]
    local = set(meta(name)["local_addresses"])
    assert set(result["top"]["by_peer_endpoint"]) == {r["state"] for r in rows if r["state"] != "LISTEN"}
    for state, got in result["top"]["by_peer_endpoint"].items():
        expected = Counter(r["peer"] for r in outgoing if r["state"] == state)
        assert len(got) == min(top, len(expected))
        counts = [e["count"] for e in got]
        assert counts == sorted(counts, reverse=True)
        for entry in got:
            assert entry["count"] == expected[(entry["address"], entry["port"])]
            assert entry["scope"] == cs.address_scope(entry["address"], local)
        left_out = [c for k, c in expected.items() if k not in {(e["address"], e["port"]) for e in got}]
        assert all(c <= counts[-1] for c in left_out)


def test_time_wait_churn_names_the_service_it_hammers():
    result = aggregate("time_wait_churn")
    server = next(r for r in ss_rows("time_wait_churn") if r["state"] == "LISTEN")
    busiest = result["top"]["by_peer_endpoint"]["TIME_WAIT"][0]
    assert (busiest["port"], busiest["count"]) == (server["local"][1], meta("time_wait_churn")["scenario"]["count"])


@pytest.mark.parametrize("name", NAMES)
def test_busiest_tuple_equal_ss(name):
    result = aggregate(name)
    rows = ss_rows(name)
    low, high = meta(name)["ephemeral_range"]
    listening = {r["local"][1] for r in rows if r["state"] == "LISTEN"}
    tuples = Counter(
        (r["local"][0], r["peer"][0], r["peer"][1])
        for r in rows
        if r["state"] != "LISTEN" and low <= r["local"][1] <= high and r["local"][1] not in listening
    )
    busiest = result["_busiest_tuple"]
    if not tuples:
        assert busiest["count"] == 0
        return
    assert busiest["count"] == max(tuples.values())
    assert tuples[(busiest["local_address"], busiest["peer_address"], busiest["peer_port"])] == busiest["count"]


@pytest.mark.parametrize("name", NAMES)
def test_owner_inodes_and_tracked_equal_ss(name):
    result = aggregate(name, owner_states=("CLOSE_WAIT", "LISTEN"), track_states=("FIN_WAIT1", "CLOSE_WAIT"))
    rows = ss_rows(name)
    for state in ("CLOSE_WAIT", "LISTEN"):
        expected = Counter(r["inode"] for r in rows if r["state"] == state and r["inode"])
        assert result["_owner_inodes"][state] == dict(expected)
    tracked = [r for r in rows if r["state"] in ("FIN_WAIT1", "CLOSE_WAIT")]
    assert list(result["_tracked"]) == sorted(r["cookie"] for r in tracked)
    assert result["_persistent"] is None  # no earlier sample to compare with


@pytest.mark.parametrize("name", NAMES)
def test_persistent_sockets_are_those_with_a_cookie_of_the_earlier_sample(name):
    """The same dump twice: every tracked socket persists; against another scenario's cookies, none."""
    tracked = ("FIN_WAIT1", "CLOSE_WAIT", "LAST_ACK")
    first = aggregate(name, track_states=tracked)
    again = aggregate(name, track_states=tracked, persistent_before=first["_tracked"])
    rows = ss_rows(name)
    for state in tracked:
        mine = [r for r in rows if r["state"] == state]
        assert again["_persistent"][state] == {"count": len(mine), "send_bytes": sum(r["sendq"] for r in mine)}
    other = aggregate("established" if name != "established" else "time_wait_churn", track_states=tracked)
    elsewhere = aggregate(name, track_states=tracked, persistent_before=other["_tracked"])
    assert elsewhere["_persistent"] == {state: {"count": 0, "send_bytes": 0} for state in tracked}


def test_persistent_sockets_from_procfs_are_matched_by_four_tuple():
    tracked = ("FIN_WAIT1", "CLOSE_WAIT", "LAST_ACK")
    first = aggregate_procfs("fin_wait1_zero_window", track_states=tracked)
    again = aggregate_procfs("fin_wait1_zero_window", track_states=tracked, persistent_before=first["_tracked"])
    rows = [r for r in ss_rows("fin_wait1_zero_window") if r["state"] == "FIN_WAIT1"]
    assert again["_persistent"]["FIN_WAIT1"] == {"count": len(rows), "send_bytes": sum(r["sendq"] for r in rows)}
    assert len(rows) > 0


def test_close_wait_leak_has_owner_inodes():
    result = aggregate("close_wait_leak", owner_states=("CLOSE_WAIT",))
    expected = meta("close_wait_leak")["scenario"]["expected"]["CLOSE_WAIT"]
    assert sum(result["_owner_inodes"]["CLOSE_WAIT"].values()) == expected > 0


def test_syn_recv_request_sockets_reported_as_syn_recv():
    """With the all-states mask the kernel dumps request sockets (TCP_NEW_SYN_RECV) as SYN_RECV."""
    result = aggregate("syn_recv")
    report = meta("syn_recv")["scenario"]
    assert result["states"]["SYN_RECV"] == report["expected"]["SYN_RECV"] > 0
    assert result["states"]["NEW_SYN_RECV"] == 0
    assert result["timers"]["SYN_RECV"]["retransmit"] == result["states"]["SYN_RECV"]


@pytest.mark.parametrize("name", NAMES)
def test_procfs_equals_netlink(name):
    nl = aggregate(name, owner_states=("CLOSE_WAIT",))
    pf = aggregate_procfs(name, owner_states=("CLOSE_WAIT",))
    for key in ("states", "families", "total", "queues", "top", "_busiest_tuple", "_owner_inodes"):
        assert pf[key] == nl[key], key
    assert pf["timers"] == nl["timers"]
    assert sorted((x["local"], x["accept_queue"], x["inode"]) for x in pf["listeners"]) == sorted(
        (x["local"], x["accept_queue"], x["inode"]) for x in nl["listeners"]
    )
    assert all(x["backlog"] is None and x["fill"] is None for x in pf["listeners"])
    if pf["listeners"]:
        assert any("backlog" in w for w in pf["warnings"])


def test_ipv6_mapped_addresses():
    result = aggregate("ipv6_mapped")
    rows = ss_rows("ipv6_mapped")
    mapped = [r for r in rows if r["local"][0].startswith("::ffff:")]
    assert mapped, "the fixture has IPv4-mapped sockets"
    peers = {e["address"]: e for state in result["top"]["by_peer"] for e in result["top"]["by_peer"][state]}
    assert peers["::ffff:127.0.0.1"]["scope"] == "loopback"
    assert result["families"]["ipv6"]["ESTABLISHED"] == sum(
        1 for r in rows if ":" in r["local"][0] and r["state"] == "ESTABLISHED"
    )
    assert result["queues"]["ESTABLISHED"]["recv_bytes"] == sum(r["recvq"] for r in rows if r["state"] == "ESTABLISHED")


def test_parse_attrs_inet_diag_info():
    """With INET_DIAG_INFO requested each full socket carries a tcp_info whose first byte is its state."""
    records = list(nl.decode_diag_stream(read_chunks("established", "ipv4_info"), "ipv4", with_attrs=True))
    assert len(records) == sum(1 for r in ss_rows("established") if ":" not in r["local"][0])
    for rec in records:
        attrs = nl.parse_attrs(rec[nl.R_ATTRS])
        info = attrs[nl.INET_DIAG_INFO]
        assert len(info) >= 104  # struct tcp_info up to tcpi_total_retrans
        assert info[0] == rec[nl.R_STATE]
    plain = list(nl.decode_diag_stream(read_chunks("established", "ipv4"), "ipv4"))
    assert all(rec[nl.R_ATTRS] is None for rec in plain)
    assert nl.parse_attrs(None) == {}


# ---------------------------------------------------------------------------
# end of dump, errors, truncation (messages built with the kernel's layouts)


def nlmsg(typ, payload=b"", flags=nl.NLM_F_MULTI, seq=1):
    return struct.pack("=IHHII", 16 + len(payload), typ, flags, seq, 0) + payload


def test_error_message_enoent_is_unavailable():
    chunk = nlmsg(nl.NLMSG_ERROR, struct.pack("=i", -errno.ENOENT) + b"\0" * 16)
    with pytest.raises(nl.DiagUnavailable):
        list(nl.decode_diag_stream([chunk], "ipv4"))
    with pytest.raises(nl.DiagUnavailable):
        cs.SocketAggregator().feed_netlink("ipv4", [chunk])


def test_error_message_einval_is_error():
    chunk = nlmsg(nl.NLMSG_ERROR, struct.pack("=i", -errno.EINVAL) + b"\0" * 16)
    with pytest.raises(nl.DiagError, match="Invalid argument"):
        list(nl.decode_diag_stream([chunk], "ipv6"))


def test_done_with_error_code():
    with pytest.raises(nl.DiagError):
        list(nl.decode_diag_stream([nlmsg(nl.NLMSG_DONE, struct.pack("=i", -errno.ENOBUFS))], "ipv4"))
    assert list(nl.decode_diag_stream([nlmsg(nl.NLMSG_DONE, struct.pack("=i", 0))], "ipv4")) == []


def test_stream_without_done_is_error():
    chunks = read_chunks("close_wait_leak", "ipv4")
    assert len(chunks) >= 1
    with pytest.raises(nl.DiagError, match="without NLMSG_DONE"):
        list(nl.decode_diag_stream([*chunks[:-1], chunks[-1][:-20]], "ipv4"))


def test_truncated_last_message_is_error():
    chunks = read_chunks("time_wait_churn", "ipv4")
    assert len(chunks) > 1, "a multi-part dump"
    cut = chunks[0][: len(chunks[0]) - 40]
    with pytest.raises(nl.DiagError, match="does not fit"):
        list(nl.decode_diag_stream([cut, *chunks[1:]], "ipv4"))
    with pytest.raises(nl.DiagError, match="does not fit"):
        cs.SocketAggregator().feed_netlink("ipv4", [cut, *chunks[1:]])


def test_short_diag_message_is_skipped_with_warning():
    chunks = read_chunks("established", "ipv4")
    short = nlmsg(nl.SOCK_DIAG_BY_FAMILY, b"\0" * 20)
    warnings = []
    records = list(nl.decode_diag_stream([short, *chunks], "ipv4", warnings=warnings))
    assert len(records) == len(list(nl.decode_diag_stream(chunks, "ipv4")))
    assert warnings and "skipped" in warnings[0]
    agg = cs.SocketAggregator()
    agg.feed_netlink("ipv4", [short, *chunks])
    assert any("skipped" in w for w in agg.result()["warnings"])


def test_multipart_dump_spans_datagrams():
    chunks = read_chunks("time_wait_churn", "ipv4")
    assert len(chunks) > 1
    total = sum(1 for _record in nl.decode_diag_stream(chunks, "ipv4"))
    assert total == sum(1 for r in ss_rows("time_wait_churn") if ":" not in r["local"][0])


# ---------------------------------------------------------------------------
# options and helpers


def test_state_mask():
    assert nl.state_mask(None) == nl.ALL_STATES_MASK == sum(1 << n for n in range(1, 13))
    assert nl.state_mask(["LISTEN"]) == 1 << 10
    assert nl.state_mask("fin-wait1") == 1 << 4
    assert nl.state_mask(["SYN_RECV"]) == (1 << 3) | (1 << 12)
    with pytest.raises(ValueError, match="valid states: ESTABLISHED"):
        nl.state_mask(["NOPE"])


def test_build_request_layout():
    req = nl.build_request("ipv6", nl.state_mask(["LISTEN"]), 2, b"\1\2\3\4\5")
    length, typ, flags, _seq, _pid = struct.unpack_from("=IHHII", req)
    assert (length, typ, flags) == (len(req), nl.SOCK_DIAG_BY_FAMILY, nl.NLM_F_REQUEST | nl.NLM_F_DUMP)
    family, proto, ext, _pad, states = struct.unpack_from("=BBBBI", req, 16)
    assert (family, proto, ext, states) == (socket.AF_INET6, socket.IPPROTO_TCP, 2, 1 << 10)
    assert req[24:72] == b"\0" * 48  # zeroed inet_diag_sockid
    attr_len, attr_type = struct.unpack_from("=HH", req, 72)
    assert (attr_len, attr_type) == (9, nl.INET_DIAG_REQ_BYTECODE)
    assert req[76:81] == b"\1\2\3\4\5" and len(req) % 4 == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"families": ["ipv5"]}, "families: unknown family 'ipv5'; valid families: ipv4, ipv6"),
        ({"top": -1}, "top: must be a non-negative integer"),
        ({"top": True}, "top: must be a non-negative integer"),
        ({"owner_states": ["CLOSEWAIT"]}, "owner_states: unknown TCP state 'CLOSEWAIT'; valid states"),
        ({"track_states": ["x"]}, "track_states: unknown TCP state"),
    ],
)
def test_collect_sockets_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        cs.collect_sockets(**kwargs)


@pytest.mark.parametrize(
    ("text", "scope"),
    [
        ("127.0.0.1", "loopback"),
        ("127.9.8.7", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("192.0.2.7", "local"),
        ("::ffff:192.0.2.7", "local"),
        ("2001:db8::1", "local"),
        ("198.51.100.1", "remote"),
        ("::ffff:198.51.100.1", "remote"),
    ],
)
def test_address_scope(text, scope):
    assert cs.address_scope(text, {"192.0.2.7", "2001:db8::1"}) == scope


def ip_addresses(name):
    """Addresses of ``ip -o addr show`` recorded with the fixture (iproute2, independent of /proc parsing)."""
    out = set()
    for line in read_text(name, "ip-addr.txt").splitlines():
        fields = line.split()
        if len(fields) > 3 and fields[2] in ("inet", "inet6"):
            out.add(fields[3].split("/")[0])
    return out


@pytest.mark.parametrize("name", NAMES)
def test_read_local_addresses_equal_ip_addr(name, tmp_path):
    (tmp_path / "net").mkdir()
    for filename in ("fib_trie", "if_inet6"):
        (tmp_path / "net" / filename).write_text(read_text(name, f"{filename}.txt"))
    assert cs.read_local_addresses(proc=str(tmp_path)) == ip_addresses(name)


def test_read_local_addresses_missing_files(tmp_path):
    assert cs.read_local_addresses(proc=str(tmp_path)) == set()
    assert cs.read_ephemeral_range(proc=str(tmp_path)) == (32768, 60999)


def test_peer_scope_local_for_own_addresses():
    """Peers on the namespace's own non-loopback addresses are "local", 127/8 and ::1 "loopback"."""
    own = ip_addresses("ipv6_mapped")
    result = aggregate("ipv6_mapped", top=50)
    scopes = {e["address"]: e["scope"] for rows in result["top"]["by_peer"].values() for e in rows}
    expected = {
        r["peer"][0]
        for r in ss_rows("ipv6_mapped")
        if r["state"] != "LISTEN" and r["peer"][0].removeprefix("::ffff:") in own - {"127.0.0.1", "::1"}
    }
    assert expected, "the fixture connects to 192.0.2.10 and 2001:db8::10"
    for address in expected:
        assert scopes[address] == "local"
    assert {scopes[a] for a in scopes if a not in expected} == {"loopback"}


# ---------------------------------------------------------------------------
# recv_chunks on a real datagram socket (AF_UNIX SOCK_DGRAM keeps datagram boundaries and MSG_TRUNC)


@pytest.fixture
def dgram_pair():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    right.settimeout(0.5)
    yield left, right
    left.close()
    right.close()


def test_recv_chunks_replays_recorded_dump(dgram_pair):
    sender, receiver = dgram_pair
    chunks = read_chunks("time_wait_churn", "ipv4")
    for chunk in chunks:
        sender.send(chunk)
    agg = cs.SocketAggregator()
    agg.feed_netlink("ipv4", nl.recv_chunks(receiver))
    expected = cs.SocketAggregator()
    expected.feed_netlink("ipv4", chunks)
    assert agg.result() == expected.result()
    assert agg.result()["total"] == sum(1 for r in ss_rows("time_wait_churn") if ":" not in r["local"][0])


def test_recv_chunks_truncated_datagram_is_error(dgram_pair):
    sender, receiver = dgram_pair
    sender.send(b"\0" * (nl.RECV_BUFSIZE + 100))
    with pytest.raises(nl.DiagError, match="truncated"):
        next(nl.recv_chunks(receiver))


def test_recv_chunks_silence_is_error_not_hang(dgram_pair):
    sender, receiver = dgram_pair
    chunks = read_chunks("close_wait_leak", "ipv4")
    assert struct.unpack_from("=IH", chunks[-1], len(chunks[-1]) - 20) == (20, nl.NLMSG_DONE)
    for chunk in [*chunks[:-1], chunks[-1][:-20]]:  # the dump without its NLMSG_DONE, then nothing
        if chunk:
            sender.send(chunk)
    with pytest.raises(nl.DiagError, match="no reply"):
        list(nl.decode_diag_stream(nl.recv_chunks(receiver), "ipv4"))


def test_recv_chunks_copy_keeps_data(dgram_pair):
    sender, receiver = dgram_pair
    chunks = read_chunks("time_wait_churn", "ipv4")
    for chunk in chunks:
        sender.send(chunk)
    got = []
    for chunk in nl.recv_chunks(receiver, copy=True):
        got.append(chunk)
        if len(got) == len(chunks):
            break
    assert got == chunks


def _with_distinct_cookies(chunks, copies):
    """The recorded dump ``copies`` times over (end message once), each copy's cookies made distinct."""
    body, end = chunks[:-1], chunks[-1]
    out = []
    for copy in range(copies):
        for chunk in body:
            data = bytearray(chunk)
            off = 0
            while off + nl.DIAG_MSG_LEN <= len(data):
                length, typ = struct.unpack_from("=IH", data, off)
                if typ == nl.SOCK_DIAG_BY_FAMILY:
                    (cookie,) = struct.unpack_from("=Q", data, off + 60)  # idiag_cookie in nlmsghdr + inet_diag_msg
                    struct.pack_into("=Q", data, off + 60, cookie + (copy << 40))
                off += (length + 3) & ~3
            out.append(bytes(data))
    return [*out, end]


def test_interval_memory_is_8_bytes_per_tracked_socket():
    """Issue 10 item 11: what a first sample keeps for persistent-socket detection stays compact."""
    import tracemalloc  # noqa: PLC0415

    chunks = _with_distinct_cookies(read_chunks("close_wait_leak", "ipv4"), 100)
    tracked_states = ("FIN_WAIT1", "CLOSE_WAIT", "LAST_ACK")
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        aggregator = cs.SocketAggregator(track_states=tracked_states)
        aggregator.feed_netlink("ipv4", chunks)
        kept = aggregator.result()["_tracked"]
        del aggregator
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    count = sum(1 for row in ss_rows("close_wait_leak") if row["state"] in tracked_states) * 100
    assert len(kept) == count > 1000
    assert retained / count < 16  # a dict entry with a tuple per socket was ~150 bytes


@pytest.mark.parametrize("port_range", [(32768, 60999), (1, 65535), (0, 0), (1024, 1024), (255, 256), (-5, 10), (5, 3)])
def test_wire_port_kinds_match_the_swapped_port_of_each_host_port(port_range):
    """The transposed table marks exactly the wire-order form of every host port in the range."""
    low, high = port_range
    table = cs._wire_port_kinds(low, high)
    for port in range(65536):
        expected = cs._EPHEMERAL_PORT if max(low, 0) <= port <= min(high, 65535) else cs._FIXED_PORT
        assert table[nl.SWAP16[port]] == expected, port
