# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The record source: netlink and /proc/net/tcp give the same records for the same sockets.

The fixtures (fixtures/collect_sockets) hold one netlink dump and the /proc text
recorded at the same moment, plus ``ss -tanoe`` (iproute2) as the independent decoder.
"""

from __future__ import annotations

import struct

import pytest
from collect_sockets_fixtures import NAMES, read_chunks, read_text, ss_rows

from ansible_collections.netstate.tcp.plugins.module_utils import _netlink as nl
from ansible_collections.netstate.tcp.plugins.module_utils import _procfs
from ansible_collections.netstate.tcp.plugins.module_utils import _socket_aggregate as agg
from ansible_collections.netstate.tcp.plugins.module_utils import _socket_info as si

PROC_FILE = {"ipv4": "tcp.txt", "ipv6": "tcp6.txt"}
FOUR_TUPLE = (nl.R_STATE, nl.R_SRC, nl.R_SPORT, nl.R_DST, nl.R_DPORT)
# What /proc/net/tcp does not carry (see _procfs): compared apart below.
NOT_IN_PROCFS = {nl.R_COOKIE, nl.R_ATTRS, nl.R_EXPIRES}


def netlink_records(name, family):
    return list(nl.decode_diag_stream(read_chunks(name, family), family))


def procfs_records(name, family, warnings=None):
    lines = read_text(name, PROC_FILE[family]).splitlines(True)
    return [record for batch in _procfs.parse_record_batches(lines, family, warnings=warnings) for record in batch]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("name", NAMES)
def test_netlink_and_procfs_give_identical_records(name, family):
    warnings = []
    from_netlink = {tuple(r[i] for i in FOUR_TUPLE): r for r in netlink_records(name, family)}
    from_procfs = {tuple(r[i] for i in FOUR_TUPLE): r for r in procfs_records(name, family, warnings)}
    assert warnings == []
    assert set(from_netlink) == set(from_procfs)
    for key, mine in from_procfs.items():
        theirs = from_netlink[key]
        for index, field in enumerate(nl.RECORD_FIELDS):
            if index in NOT_IN_PROCFS or (index == nl.R_WQUEUE and mine[nl.R_STATE] == nl.ST_LISTEN):
                continue
            assert mine[index] == theirs[index], (field, key)
        # The file shows no cookie and no listen backlog; the record says so instead of guessing.
        assert mine[nl.R_COOKIE] is None and mine[nl.R_ATTRS] is None
        if mine[nl.R_STATE] == nl.ST_LISTEN:
            assert mine[nl.R_WQUEUE] == 0
        # netlink was read first: the timer has run on by less than two USER_HZ ticks (one of
        # resolution, one for the moment between the two reads).
        tick_ms = 1000 // _procfs.USER_HZ
        assert 0 <= theirs[nl.R_EXPIRES] - mine[nl.R_EXPIRES] < 2 * tick_ms, key


def test_fixtures_cover_every_timer_kind_the_mapping_handles():
    timers = {r[nl.R_TIMER] for name in NAMES for fam in ("ipv4", "ipv6") for r in netlink_records(name, fam)}
    assert {0, 1, 3, 4} <= timers


def test_zero_window_probe_count_is_the_probe_column():
    """fin_wait1_zero_window: ss shows timer:(persist,812ms,1); /proc has it in column 9, not 7."""
    expected = {
        (row["local"][1], row["peer"][1]): row["timer_count"]
        for row in ss_rows_with_timer_count("fin_wait1_zero_window")
        if row["state"] == "FIN_WAIT1"
    }
    assert 1 in expected.values()  # the recorded moment has a socket with one unanswered probe
    for source in (procfs_records("fin_wait1_zero_window", "ipv4"), netlink_records("fin_wait1_zero_window", "ipv4")):
        got = {
            (r[nl.R_SPORT], r[nl.R_DPORT]): r[nl.R_RETRANS]
            for r in source
            if r[nl.R_STATE] == nl.STATES.index("FIN_WAIT1") + 1
        }
        assert got == expected


def ss_rows_with_timer_count(name):
    """ss rows with the third field of timer:(kind,expires,count)."""
    rows = ss_rows(name)
    counts = []
    for line in read_text(name, "ss.txt").splitlines()[1:]:
        if not line.split():
            continue
        count = 0
        for extra in line.split()[5:]:
            if extra.startswith("timer:("):
                count = int(extra.rstrip(")").split(",")[-1])
        counts.append(count)
    for row, count in zip(rows, counts):
        row["timer_count"] = count
    return rows


def test_facts_and_socket_info_agree_on_the_probe_count(tmp_path):
    """Both consumers read /proc through _procfs: the max_retransmits of facts is socket_info's retransmits."""
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "tcp").write_text(read_text("fin_wait1_zero_window", "tcp.txt"))
    mask = nl.state_mask(["FIN_WAIT1"])
    listed = list(si.iter_procfs(2, mask, proc=str(proc)))
    aggregator = agg.SocketAggregator()
    aggregator.feed_procfs("ipv4", read_text("fin_wait1_zero_window", "tcp.txt").splitlines(True))
    assert max(r[nl.R_RETRANS] for r in listed) == aggregator.result()["timers"]["FIN_WAIT1"]["max_retransmits"] == 1


def test_socket_info_procfs_fallback_warns_about_malformed_lines(tmp_path):
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    text = read_text("established", "tcp.txt") + "  99: 0100007F:ZZZZ 00000000:0000 0A\n"
    (proc / "net" / "tcp").write_text(text)
    warnings = []
    listed = list(si.iter_procfs(2, nl.ALL_STATES_MASK, proc=str(proc), warnings=warnings))
    assert len(listed) == len(netlink_records("established", "ipv4"))
    assert len(warnings) == 1 and "skipped 1 malformed line(s)" in warnings[0] and "tcp" in warnings[0]


# ---- NLM_F_DUMP_INTR --------------------------------------------------------------


def flag_interrupted(chunks):
    """The recorded datagrams with NLM_F_DUMP_INTR set on every message, as the kernel does once
    the table changed during the dump (nl_dump_check_consistent)."""
    out = []
    for chunk in chunks:
        data = bytearray(chunk)
        off = 0
        while off + 16 <= len(data):
            length, _type, flags = struct.unpack_from("=IHH", data, off)
            struct.pack_into("=H", data, off + 6, flags | nl.NLM_F_DUMP_INTR)
            off += (length + 3) & ~3
        out.append(bytes(data))
    return out


def test_diag_messages_without_nlm_f_multi_take_the_slow_path_and_still_decode():
    """The decoder's fast path compares type and flags at once; other flags must not lose a socket."""
    chunks = read_chunks("established", "ipv4")
    out = []
    for chunk in chunks:
        data = bytearray(chunk)
        off = 0
        while off + 16 <= len(data):
            length, typ = struct.unpack_from("=IH", data, off)
            if typ == nl.SOCK_DIAG_BY_FAMILY:
                struct.pack_into("=H", data, off + 6, 0)
            off += (length + 3) & ~3
        out.append(bytes(data))
    assert out != chunks
    assert list(nl.decode_diag_stream(out, "ipv4")) == list(nl.decode_diag_stream(chunks, "ipv4"))


def test_dump_intr_flag_is_seen_and_records_still_decode():
    chunks = read_chunks("close_wait_leak", "ipv4")
    status = nl.DumpStatus()
    flagged = list(nl.decode_diag_stream(flag_interrupted(chunks), "ipv4", status=status))
    assert status.interrupted
    assert flagged == list(nl.decode_diag_stream(chunks, "ipv4"))
    clean = nl.DumpStatus()
    list(nl.decode_diag_stream(chunks, "ipv4", status=clean))
    assert not clean.interrupted


def _attempts(streams):
    """An attempt function for retry_interrupted over recorded streams, one per call."""
    calls = []

    def attempt(on_interrupt):
        chunks = streams[len(calls)]
        calls.append(on_interrupt)
        status = nl.DumpStatus()
        warnings = []
        aggregator = agg.SocketAggregator()
        aggregator.feed_netlink("ipv4", chunks, status=status)
        if status.interrupted:
            if on_interrupt == "raise":
                raise nl.DumpInterrupted(nl.interrupted_warning("ipv4"))
            warnings.append(nl.interrupted_warning("ipv4"))
        return aggregator.result(), warnings

    return attempt, calls


def test_interrupted_dump_is_retried_once_then_clean():
    chunks = read_chunks("close_wait_leak", "ipv4")
    attempt, calls = _attempts([flag_interrupted(chunks), chunks])
    result, warnings = nl.retry_interrupted(attempt)
    assert calls == ["raise", "warn"] and warnings == []
    assert result["total"] == len([r for r in ss_rows("close_wait_leak") if ":" not in r["local"][0]])


def test_interrupted_twice_is_reported_as_a_warning():
    chunks = flag_interrupted(read_chunks("close_wait_leak", "ipv4"))
    attempt, calls = _attempts([chunks, chunks])
    result, warnings = nl.retry_interrupted(attempt)
    assert calls == ["raise", "warn"]
    assert len(warnings) == 1 and "NLM_F_DUMP_INTR" in warnings[0] and "ipv4" in warnings[0]
    assert result["total"] > 0


# ---- state names ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("close-wait", "CLOSE_WAIT"), (" Close_Wait ", "CLOSE_WAIT"), ("listen", "LISTEN"), ("nope", None), (3, None)],
)
def test_one_state_normaliser(text, expected):
    assert nl.normalize_state(text) == expected


def test_struct_layouts_are_generated_from_the_field_tables():
    assert nl.NLMSGHDR.size == 16
    assert nl.DIAG_MSG_LEN == 88  # nlmsghdr + inet_diag_msg (include/uapi/linux/inet_diag.h)
    assert nl.INET_DIAG_REQ_V2.size == 56
    assert nl.compile_layout(nl.INET_DIAG_MSG_FIELDS, {"idiag_state"}).unpack_from(bytes([2, 8]) + bytes(70)) == (8,)
    with pytest.raises(ValueError, match="size"):
        nl.compile_layout(nl.NLMSGHDR_FIELDS, None, {"nlmsg_len": "H"})


# ---- uniform datagrams (decode_batches' iter_unpack path) ------------------------------


def _per_message_rows(chunks, family, layouts):
    """Rows of the per-message loop alone: with_attrs never takes the uniform-datagram path."""
    return [row for batch in nl.decode_batches(chunks, family, layouts, with_attrs=True) for row, _attrs in batch]


@pytest.mark.parametrize("name", NAMES)
def test_uniform_datagrams_decode_like_the_per_message_loop(name):
    """Every recorded dump: the batched rows equal the rows of the per-message loop, for both layouts."""
    for family in ("ipv4", "ipv6"):
        chunks = read_chunks(name, family)
        for layouts in (nl.RECORD_LAYOUTS, agg.FACTS_LAYOUTS, agg.FACTS_LAYOUTS_NO_COOKIE):
            rows = [row for batch in nl.decode_batches(chunks, family, layouts) for row in batch]
            assert rows == _per_message_rows(chunks, family, layouts)


def _uniform_chunk(name="time_wait_churn"):
    """A recorded datagram whose messages all have one length (the kernel's common case)."""
    for chunk in read_chunks(name, "ipv4"):
        lengths = set()
        off = 0
        while off < len(chunk):
            (length,) = struct.unpack_from("=I", chunk, off)
            lengths.add(length)
            off += (length + 3) & ~3
        if len(lengths) == 1 and len(chunk) // lengths.pop() > 2:
            return bytearray(chunk)
    raise AssertionError("the fixture has no uniform datagram")


def _end_chunk():
    return read_chunks("time_wait_churn", "ipv4")[-1]


def test_uniform_datagram_with_one_flagged_message_reports_the_interruption():
    """NLM_F_DUMP_INTR on one message inside a uniform datagram is seen, and its rows are kept."""
    data = _uniform_chunk()
    (length,) = struct.unpack_from("=I", data, 0)
    middle = (len(data) // length // 2) * length
    (flags,) = struct.unpack_from("=H", data, middle + 6)
    struct.pack_into("=H", data, middle + 6, flags | nl.NLM_F_DUMP_INTR)
    status = nl.DumpStatus()
    rows = [row for batch in nl.decode_batches([bytes(data), _end_chunk()], "ipv4", status=status) for row in batch]
    assert status.interrupted
    assert len(rows) == len(data) // length + sum(1 for _message in nl.decode_diag_stream([_end_chunk()], "ipv4"))


def test_uniform_datagram_with_a_message_of_another_type_is_not_taken_as_rows():
    """A message of another type inside a uniform datagram (here NLMSG_DONE with the same length) ends the dump."""
    data = _uniform_chunk()
    (length,) = struct.unpack_from("=I", data, 0)
    third = 2 * length
    struct.pack_into("=H", data, third + 4, nl.NLMSG_DONE)
    struct.pack_into("=i", data, third + 16, 0)
    rows = [row for batch in nl.decode_batches([bytes(data)], "ipv4") for row in batch]
    assert len(rows) == 2


def test_uniform_datagram_with_a_length_that_runs_past_the_end_is_an_error():
    """One header claiming more than the datagram holds is caught, not read as a uniform run."""
    data = _uniform_chunk()
    (length,) = struct.unpack_from("=I", data, 0)
    struct.pack_into("=I", data, length, len(data))
    with pytest.raises(nl.DiagError, match="does not fit the datagram"):
        for _batch in nl.decode_batches([bytes(data)], "ipv4"):
            pass


def test_swap16_maps_every_wire_port_to_host_order_and_back():
    # the table is built from bytes, not per port: check it against struct's own byte order for every port
    wire = struct.Struct(">H")
    native = struct.Struct("=H")
    for port in range(65536):
        as_read = native.unpack(wire.pack(port))[0]  # a __be16 port read as a native int
        assert nl.SWAP16[as_read] == port
        assert nl.SWAP16[port] == as_read
    assert len(nl.SWAP16) == 65536
