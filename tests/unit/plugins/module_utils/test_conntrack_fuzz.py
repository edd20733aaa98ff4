# Copyright: netstate.tcp contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Property/fuzz tests: damaged ctnetlink dumps never crash the conntrack decoder, and its fast path never lies.

Inputs are the recorded dumps (fixtures/conntrack) cut, re-split, bit-flipped or mixed
with garbage.  The decoder may raise DiagError (ConntrackUnavailable for an error
message it reads) or count an entry as malformed; any other exception is a bug.  Where
it finishes, the layout-cache fast path must give exactly what walking every entry
gives.  Derandomized: the same examples on every run.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_conntrack import read_chunks

from ansible_collections.netstate.tcp.plugins.module_utils import _conntrack as ct

STREAM = read_chunks("tracked")
SETTINGS = settings(max_examples=150, deadline=2000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def entry_messages(chunks):
    """How many messages of the stream's frames are conntrack entries (an upper bound for any count)."""
    total = 0
    for chunk in chunks:
        off = 0
        while off + 16 <= len(chunk):
            length, typ = struct.unpack_from("=IH", chunk, off)
            if length < 16:
                break
            total += typ == ct.CT_ENTRY_TYPE
            off += (length + 3) & ~3
    return total


def decode_both(chunks):
    """(fast counter, walked counter) or None when the stream is rejected (by both, with the same error class)."""
    outcomes = []
    for cache in (ct.LAYOUT_CACHE_SIZE, 0):
        try:
            outcomes.append(ct.ConntrackCounter(layout_cache_size=cache).feed(chunks))
        except (ct.DiagError, ct.DiagUnavailable) as exc:
            outcomes.append(type(exc))
    fast, walked = outcomes
    if not isinstance(fast, ct.ConntrackCounter):
        assert fast is walked
        return None
    assert isinstance(walked, ct.ConntrackCounter)
    for name in ("states", "other", "malformed", "unexpected", "interrupted"):
        assert getattr(fast, name) == getattr(walked, name), name
    assert fast.tcp_entries + fast.other + fast.malformed <= entry_messages(chunks)
    assert set(fast.result()) == set(ct.TCP_CT_STATES)
    fast.warnings()
    return fast


@SETTINGS
@given(data=st.data())
def test_truncated_stream_is_always_an_error(data):
    index = data.draw(st.integers(0, len(STREAM) - 1))
    cut = data.draw(st.integers(0, len(STREAM[index]) - 1))
    assert decode_both([*STREAM[:index], STREAM[index][:cut]]) is None  # no NLMSG_DONE


@SETTINGS
@given(data=st.data())
def test_corrupted_bytes(data):
    chunks = [bytearray(c) for c in STREAM]
    for _flip in range(data.draw(st.integers(1, 8))):
        i = data.draw(st.integers(0, len(chunks) - 1))
        pos = data.draw(st.integers(0, len(chunks[i]) - 1))
        chunks[i][pos] = data.draw(st.integers(0, 255))
    decode_both([bytes(c) for c in chunks])


@SETTINGS
@given(data=st.data())
def test_corrupted_attribute_headers(data):
    """Flips aimed at attribute length/type fields: the fast path's whole premise."""
    chunks = [bytearray(c) for c in STREAM]
    for _flip in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(chunks) - 1))
        pos = data.draw(st.integers(0, max(0, len(chunks[i]) // 4 - 1))) * 4 + data.draw(st.integers(0, 3))
        if pos < len(chunks[i]):
            chunks[i][pos] = data.draw(st.sampled_from([0, 1, 3, 4, 5, 0x80, 0xFF]))
    decode_both([bytes(c) for c in chunks])


@SETTINGS
@given(data=st.data())
def test_resplit_and_garbage(data):
    blob = b"".join(STREAM)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(blob)), max_size=6)))
    pieces = [blob[a:b] for a, b in zip([0, *cuts], [*cuts, len(blob)]) if b > a]
    if data.draw(st.booleans()):
        pos = data.draw(st.integers(0, len(pieces)))
        pieces.insert(pos, data.draw(st.binary(min_size=1, max_size=200)))
    decode_both(pieces)


@SETTINGS
@given(garbage=st.lists(st.binary(max_size=300), max_size=5))
def test_pure_garbage(garbage):
    decode_both(garbage)
