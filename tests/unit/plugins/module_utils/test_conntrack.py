# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""_conntrack: the ctnetlink decoder on dumps recorded from lab namespaces, the /proc figures, the module guard.

Expectations come from /proc/net/nf_conntrack recorded at the same moment as the
dump (the kernel's own text formatter, an independent decoder of the same table).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections import Counter

import pytest
from netlink_chunks import read_chunk_file

from ansible_collections.netstate.tcp.plugins.module_utils import _conntrack as ct

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "conntrack")


def read_chunks(name):
    """The recorded datagrams of one dump, exactly as recv() returned them."""
    return read_chunk_file(os.path.join(FIXTURES, name, "ctnetlink.chunks"))


def proc_table(name):
    """(TCP states Counter, non-TCP entries) from the recorded /proc/net/nf_conntrack."""
    states, other = Counter(), 0
    with open(os.path.join(FIXTURES, name, "nf_conntrack.txt"), encoding="ascii") as fh:
        for line in fh:
            fields = line.split()
            if fields[2] == "tcp":
                states[fields[5]] += 1
            else:
                other += 1
    return states, other


def meta(name):
    with open(os.path.join(FIXTURES, name, "meta.json"), encoding="utf-8") as fh:
        return json.load(fh)


def entries(chunks):
    """[(chunk index, offset, length)] of every conntrack entry message in a stream."""
    out = []
    for index, chunk in enumerate(chunks):
        off = 0
        while off + 16 <= len(chunk):
            length, typ = struct.unpack_from("=IH", chunk, off)
            if typ == ct.CT_ENTRY_TYPE:
                out.append((index, off, length))
            off += (length + 3) & ~3
    return out


def fake_root(tmp_path, *, netfilter="tracked", modules=True, sys_modules=(), builtin=None, disabled=None):
    """A /proc + /sys + /lib/modules tree: netfilter files from a fixture (None: nf_conntrack not loaded)."""
    proc, sysfs, libmod = tmp_path / "proc", tmp_path / "sys", tmp_path / "lib-modules"
    (proc / "sys" / "net").mkdir(parents=True)
    (proc / "sys" / "kernel").mkdir(parents=True)
    (sysfs / "module").mkdir(parents=True)
    if netfilter:
        shutil.copytree(os.path.join(FIXTURES, netfilter, "netfilter"), proc / "sys" / "net" / "netfilter")
    if modules:
        (proc / "modules").write_text("")
        (proc / "sys" / "kernel" / "modprobe").write_text("/sbin/modprobe\n")
    if disabled is not None:
        (proc / "sys" / "kernel" / "modules_disabled").write_text(f"{disabled}\n")
    for name in sys_modules:
        (sysfs / "module" / name).mkdir()
    if builtin is not None:
        (libmod / "6.1.0-test").mkdir(parents=True)
        (libmod / "6.1.0-test" / "modules.builtin").write_text(builtin)
    return {"proc_root": str(proc), "sys_root": str(sysfs), "modules_root": str(libmod)}


def never_dump():
    raise AssertionError("a ctnetlink dump was attempted although it could load nf_conntrack_netlink")


# ---- the decoder on recorded dumps ---------------------------------------------------------


def test_recorded_dump_counts_equal_the_kernels_own_table():
    chunks = read_chunks("tracked")
    counter = ct.ConntrackCounter().feed(chunks)
    states, other = proc_table("tracked")
    assert counter.done
    assert {name: count for name, count in counter.result().items() if count} == dict(states)
    assert counter.other == other == 1  # the UDP entry: no CTA_PROTOINFO_TCP
    assert counter.malformed == counter.unexpected == 0
    assert not counter.interrupted
    assert counter.warnings() == []


def test_recorded_dump_holds_the_scenarios_states():
    expected = meta("tracked")["scenario"]["expected_conntrack"]
    counts = ct.ConntrackCounter().feed(read_chunks("tracked")).result()
    # The recorder adds one IPv6 ESTABLISHED pair to the scenario's connections.
    assert counts["ESTABLISHED"] == expected["ESTABLISHED"] + 1
    assert counts["TIME_WAIT"] == expected["TIME_WAIT"]
    assert counts["CLOSE_WAIT"] == expected["CLOSE_WAIT"]
    assert set(counts) == set(ct.TCP_CT_STATES)


def test_fast_path_equals_walking_every_entry():
    chunks = read_chunks("tracked")
    fast = ct.ConntrackCounter().feed(chunks)
    walked = ct.ConntrackCounter(layout_cache_size=0).feed(chunks)
    assert fast.states == walked.states and fast.other == walked.other
    assert walked._layouts == {}
    assert 1 <= len(fast._layouts) <= 3  # IPv4 TCP, IPv6 TCP, UDP


def test_empty_table_dump():
    counter = ct.ConntrackCounter().feed(read_chunks("untracked"))
    assert counter.done and counter.tcp_entries == 0 and counter.other == 0
    assert proc_table("untracked") == (Counter(), 0)


def test_memoryview_chunks_decode_like_bytes():
    chunks = read_chunks("tracked")
    as_views = ct.ConntrackCounter().feed(memoryview(c) for c in chunks)
    assert as_views.states == ct.ConntrackCounter().feed(chunks).states


def test_stream_without_done_is_an_error():
    chunks = read_chunks("tracked")
    with pytest.raises(ct.DiagError, match="without NLMSG_DONE"):
        ct.ConntrackCounter().feed(chunks[:-1])


def test_message_running_past_its_datagram_is_an_error():
    chunks = read_chunks("tracked")
    with pytest.raises(ct.DiagError, match="does not fit"):
        ct.ConntrackCounter().feed([chunks[0][:-10], *chunks[1:]])


def test_attribute_overflow_is_counted_malformed_and_the_rest_decoded():
    chunks = [bytearray(c) for c in read_chunks("tracked")]
    index, off, _length = entries(chunks)[5]
    # First attribute (CTA_TUPLE_ORIG) claims more bytes than its message has.
    struct.pack_into("=H", chunks[index], off + ct.NFGEN_LEN, 0xFFF0)
    counter = ct.ConntrackCounter().feed([bytes(c) for c in chunks])
    states, other = proc_table("tracked")
    assert counter.malformed == 1
    assert counter.tcp_entries + counter.other == sum(states.values()) + other - 1
    assert counter.warnings() == ["conntrack: skipped 1 malformed ctnetlink entry"]


def test_unknown_state_number_is_warned():
    chunks = [bytearray(c) for c in read_chunks("tracked")]
    probe = ct.ConntrackCounter(layout_cache_size=1)
    index, off, length = entries(chunks)[0]
    probe._walk_entry(bytes(chunks[index]), off, length, struct.unpack_from("=H", chunks[index], off + 6)[0])
    state_offset = probe._layouts[length][0].size - 1  # the state byte ends the remembered layout
    chunks[index][off + state_offset] = 200
    counter = ct.ConntrackCounter().feed([bytes(c) for c in chunks])
    assert counter.states[200] == 1
    assert counter.unknown_states() == 1
    assert "unknown state number" in " ".join(counter.warnings())


def test_dump_intr_flag_is_reported():
    chunks = [bytearray(c) for c in read_chunks("tracked")]
    index, off, _length = entries(chunks)[3]
    flags = struct.unpack_from("=H", chunks[index], off + 6)[0]
    struct.pack_into("=H", chunks[index], off + 6, flags | ct.NLM_F_DUMP_INTR)
    counter = ct.ConntrackCounter().feed([bytes(c) for c in chunks])
    assert counter.interrupted
    assert counter.states == ct.ConntrackCounter().feed(read_chunks("tracked")).states  # still counted
    assert any("NLM_F_DUMP_INTR" in w for w in counter.warnings())


@pytest.mark.parametrize(
    ("code", "error"), [(1, ct.ConntrackUnavailable), (95, ct.ConntrackUnavailable), (12, ct.DiagError)]
)
def test_error_message_raises(code, error):
    message = ct.NLMSGHDR.pack(36, ct.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -code) + ct.build_dump_request()[:16]
    with pytest.raises(error, match="ctnetlink dump"):
        ct.ConntrackCounter().feed([message])


def test_request_is_a_ctnetlink_get_dump_for_every_family():
    request = ct.build_dump_request(seq=7)
    length, typ, flags, seq, _pid = ct.NLMSGHDR.unpack_from(request)
    assert (length, len(request), seq) == (20, 20, 7)
    assert typ >> 8 == ct.NFNL_SUBSYS_CTNETLINK and typ & 0xFF == ct.IPCTNL_MSG_CT_GET
    assert flags & ct.NLM_F_DUMP == ct.NLM_F_DUMP and flags & ct.NLM_F_REQUEST
    assert request[16] == 0  # AF_UNSPEC: IPv4 and IPv6 entries


# ---- /proc figures and the module guard ----------------------------------------------------


def test_figures_from_recorded_proc_files(tmp_path):
    root = fake_root(tmp_path, sys_modules=("nf_conntrack_netlink",))
    block, warnings = ct.collect_conntrack(**root, dump=lambda: ct.ConntrackCounter().feed(read_chunks("tracked")))
    nf = os.path.join(FIXTURES, "tracked", "netfilter")
    with open(os.path.join(nf, "nf_conntrack_count"), encoding="ascii") as fh:
        count = int(fh.read())
    with open(os.path.join(nf, "nf_conntrack_max"), encoding="ascii") as fh:
        limit = int(fh.read())
    assert warnings == []
    assert block["available"] is True and block["source"] == "ctnetlink"
    assert (block["count"], block["max"]) == (count, limit)
    assert block["ratio"] == round(count / limit, 4)
    assert block["count"] == sum(proc_table("tracked")[0].values()) + proc_table("tracked")[1]
    for name in ct.TCP_TIMEOUTS:
        with open(os.path.join(nf, f"nf_conntrack_tcp_timeout_{name}"), encoding="ascii") as fh:
            assert block["timeouts"][name] == int(fh.read())
    assert block["states"]["TIME_WAIT"] == 40


def test_not_loaded_means_unavailable_and_no_dump(tmp_path):
    block, warnings = ct.collect_conntrack(**fake_root(tmp_path, netfilter=None), dump=never_dump)
    assert block == {
        "available": False,
        "source": None,
        "count": None,
        "max": None,
        "ratio": None,
        "states": None,
        "timeouts": None,
    }
    assert warnings == []


def test_ctnetlink_not_loaded_gives_proc_figures_only(tmp_path):
    root = fake_root(tmp_path)  # nf_conntrack loaded, modules loadable, nf_conntrack_netlink absent
    block, warnings = ct.collect_conntrack(**root, dump=never_dump)
    assert block["available"] is True and block["count"] is not None and block["timeouts"]["time_wait"] == 120
    assert block["states"] is None and block["source"] is None
    assert len(warnings) == 1 and "nf_conntrack_netlink is not loaded" in warnings[0]


@pytest.mark.parametrize(
    ("kwargs", "allowed", "why"),
    [
        ({"sys_modules": ("nf_conntrack_netlink",)}, True, "loaded"),
        ({"modules": False}, True, "no module support"),
        ({"disabled": 1}, True, "modules_disabled"),
        ({"disabled": 0}, False, "not loaded"),
        (
            {"builtin": "kernel/net/netfilter/nf_conntrack.ko\nkernel/net/netfilter/nf_conntrack_netlink.ko\n"},
            True,
            "built",
        ),
        ({"builtin": "kernel/net/netfilter/nf_conntrack.ko\n"}, False, "not loaded"),
        ({"sys_modules": ("nf_conntrack", "nfnetlink")}, False, "not loaded"),
    ],
)
def test_dump_allowed_only_when_nothing_can_be_loaded(tmp_path, kwargs, allowed, why):
    root = fake_root(tmp_path, **kwargs)
    result = ct.ctnetlink_dump_allowed(root["sys_root"], root["proc_root"], root["modules_root"], release="6.1.0-test")
    assert result[0] is allowed
    assert why in result[1]


@pytest.mark.parametrize(
    ("text", "expected"), [("abc\n", None), ("-5\n", None), ("", None), ("7\n", 7), ("9" * 80, None)]
)
def test_hostile_proc_values(tmp_path, text, expected):
    root = fake_root(tmp_path)
    with open(os.path.join(root["proc_root"], "sys/net/netfilter/nf_conntrack_count"), "w", encoding="ascii") as fh:
        fh.write(text)
    block, warnings = ct.collect_conntrack(**root, dump=never_dump)
    assert block["count"] == expected
    assert (block["ratio"] is None) is (expected is None)
    if expected is None:
        assert any("nf_conntrack_count" in w for w in warnings)


def test_max_zero_means_no_limit_and_no_ratio(tmp_path):
    root = fake_root(tmp_path)
    with open(os.path.join(root["proc_root"], "sys/net/netfilter/nf_conntrack_max"), "w", encoding="ascii") as fh:
        fh.write("0\n")
    block, _warnings = ct.collect_conntrack(**root, dump=never_dump)
    assert block["max"] == 0 and block["ratio"] is None


@pytest.mark.parametrize("exc", [ct.ConntrackUnavailable("ctnetlink dump: Operation not permitted"), ct.DiagError("x")])
def test_failed_dump_keeps_the_figures_and_warns(tmp_path, exc):
    def failing():
        raise exc

    block, warnings = ct.collect_conntrack(**fake_root(tmp_path, modules=False), dump=failing)
    assert block["available"] is True and block["count"] is not None
    assert block["states"] is None and block["source"] is None
    assert warnings == [f"conntrack: states not read: {exc}"]


class ReplaySocket:
    """Plays recorded datagrams back to recv_chunks (recv_into with MSG_TRUNC, as the kernel answers)."""

    def __init__(self, chunks, sent):
        self.chunks = list(chunks)
        self.sent = sent

    def sendall(self, data):
        self.sent.append(bytes(data))

    def recv_into(self, buf, _nbytes=0, _flags=0):
        chunk = self.chunks.pop(0)
        buf[: len(chunk)] = chunk
        return len(chunk)

    def close(self):
        pass


def interrupted(chunks):
    """The recorded stream with NLM_F_DUMP_INTR on its first entry (the kernel sets it when the table changed)."""
    damaged = [bytearray(c) for c in chunks]
    index, off, _length = entries(damaged)[0]
    flags = struct.unpack_from("=H", damaged[index], off + 6)[0]
    struct.pack_into("=H", damaged[index], off + 6, flags | ct.NLM_F_DUMP_INTR)
    return [bytes(c) for c in damaged]


@pytest.mark.parametrize(("interrupted_dumps", "dumps", "warned"), [(0, 1, False), (2, 3, False), (3, 3, True)])
def test_dump_is_retried_while_the_kernel_says_it_was_interrupted(interrupted_dumps, dumps, warned):
    clean = read_chunks("tracked")
    streams = [interrupted(clean)] * interrupted_dumps + [clean] * 3
    sent = []
    counter = ct.dump_ctnetlink(open_socket=lambda: ReplaySocket(streams.pop(0), sent))
    assert [ct.NLMSGHDR.unpack_from(request)[3] for request in sent] == list(range(1, dumps + 1))  # seq per dump
    assert counter.interrupted is warned
    assert counter.result() == ct.ConntrackCounter().feed(clean).result()
    assert any("NLM_F_DUMP_INTR" in w for w in counter.warnings()) is warned


# ---- IPCTNL_MSG_CT_GET_STATS: an empty table is not walked ------------------------------------------


def read_stats(name, unprivileged=False):
    """The recorded reply to build_stats_request() (seq 1), sent right before the fixture's dump."""
    suffix = "_unprivileged" if unprivileged else ""
    return read_chunk_file(os.path.join(FIXTURES, name, f"ctnetlink_stats{suffix}.chunks"))


@pytest.mark.parametrize("name", ["tracked", "untracked"])
def test_stats_reply_gives_the_entry_count_of_the_kernels_own_table(name):
    states, other = proc_table(name)
    assert ct.parse_stats_reply(read_stats(name)[0]) == sum(states.values()) + other


def test_stats_refused_without_privilege_is_no_answer():
    reply = read_stats("tracked", unprivileged=True)[0]
    assert ct.NLMSGHDR.unpack_from(reply)[1] == ct.NLMSG_ERROR  # the kernel's EPERM
    assert ct.parse_stats_reply(reply) is None


def hostile_stats_replies():
    good = read_stats("tracked")[0]
    attr = ct.NFGEN_LEN  # the first attribute: CTA_STATS_GLOBAL_ENTRIES
    yield "truncated header", good[:10]
    yield "another sequence number", good[:8] + struct.pack("=I", 2) + good[12:]
    yield "another message type", good[:4] + struct.pack("=H", ct.CT_ENTRY_TYPE) + good[6:]
    yield "length past the datagram", struct.pack("=I", len(good) + 4) + good[4:]
    yield "attribute past the message", good[:attr] + struct.pack("=H", 200) + good[attr + 2 :]
    yield "attribute of length 0", good[:attr] + struct.pack("=H", 0) + good[attr + 2 :]
    yield "entries of 2 bytes", good[:attr] + struct.pack("=H", 6) + good[attr + 2 :]
    yield "no entries attribute", good[:attr] + struct.pack("=HH", 8, 9) + good[attr + 4 :]
    yield "no attributes", struct.pack("=I", ct.NFGEN_LEN) + good[4 : ct.NFGEN_LEN]


@pytest.mark.parametrize(("why", "reply"), list(hostile_stats_replies()))
def test_hostile_stats_reply_is_no_answer(why, reply):
    assert ct.parse_stats_reply(reply) is None, why


@pytest.mark.parametrize(
    ("name", "unprivileged", "requests"),
    [
        ("untracked", False, [ct.CT_GET_STATS_TYPE]),
        ("tracked", False, [ct.CT_GET_STATS_TYPE, ct.CT_GET_TYPE]),
        ("untracked", True, [ct.CT_GET_STATS_TYPE, ct.CT_GET_TYPE]),
    ],
)
def test_read_states_dumps_unless_the_kernel_says_the_table_is_empty(name, unprivileged, requests):
    dump = read_chunks(name)
    streams = [read_stats(name, unprivileged), dump]
    sent = []
    counter = ct.read_states(open_socket=lambda: ReplaySocket(streams.pop(0), sent))
    assert [ct.NLMSGHDR.unpack_from(request)[1] for request in sent] == requests
    dumped = ct.ConntrackCounter().feed(dump)
    assert (counter.result(), counter.other, counter.done, counter.warnings()) == (
        dumped.result(),
        dumped.other,
        dumped.done,
        dumped.warnings(),
    )


# ---- tcp_state_facts' `conntrack: false` --------------------------------------------------------


def test_not_wanted_reads_nothing_and_looks_like_not_loaded(tmp_path):
    """With a loaded table whose dump is allowed, not wanted still reads nothing: the block of no table."""
    root = fake_root(tmp_path, sys_modules=("nf_conntrack_netlink",))
    dumps = []

    def recorded_dump():
        dumps.append(1)
        return ct.ConntrackCounter().feed(read_chunks("tracked"))

    wanted, _warnings = ct.collect_conntrack(**root, dump=recorded_dump)
    assert wanted["available"] is True and wanted["source"] == "ctnetlink" and dumps == [1]

    skipped, warnings = ct.collect_conntrack(**root, dump=recorded_dump, wanted=False)
    absent, _absent_warnings = ct.collect_conntrack(**fake_root(tmp_path / "bare", netfilter=None), dump=never_dump)
    assert dumps == [1]
    assert warnings == []
    assert skipped == absent == ct.UNAVAILABLE_BLOCK
    assert list(skipped) == list(wanted)  # the same keys in the same order: a contract (DESIGN.md)
