"""Framing: a 4-byte big-endian length, then that many bytes; chunking never matters.

`FrameDecoder` is fed whatever the socket happened to return and hands back complete bodies
in order. A frame over the limit is refused from its length prefix alone, before a single
byte of its body is buffered.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.framing import (
    DEFAULT_MAX_FRAME,
    HEADER,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    encode_frame,
)


def test_a_frame_is_a_big_endian_length_then_the_body():
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert FrameDecoder().feed(b"\x00\x00\x00\x03abc") == [b"abc"]


def test_feeding_nothing_yields_nothing_and_buffers_nothing():
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    assert decoder.pending == 0


def test_a_frame_fed_one_byte_at_a_time_completes_on_its_last_byte():
    decoder = FrameDecoder()
    frame = encode_frame(b"hello")
    for i, byte in enumerate(frame[:-1]):
        assert decoder.feed(bytes([byte])) == []
        assert decoder.pending == i + 1
    assert decoder.feed(frame[-1:]) == [b"hello"]
    assert decoder.pending == 0


def test_several_frames_in_one_chunk_come_out_in_order():
    chunk = encode_frame(b"one") + encode_frame(b"") + encode_frame(b"three")
    assert FrameDecoder().feed(chunk) == [b"one", b"", b"three"]


def test_a_chunk_may_end_inside_the_next_frame():
    decoder = FrameDecoder()
    second = encode_frame(b"second")
    assert decoder.feed(encode_frame(b"first") + second[:6]) == [b"first"]
    assert decoder.pending == 6
    assert decoder.feed(second[6:]) == [b"second"]


def test_a_header_split_across_chunks_is_reassembled():
    decoder = FrameDecoder()
    frame = encode_frame(b"x" * 300)  # a length whose two low bytes both matter
    assert decoder.feed(frame[:2]) == []
    assert decoder.feed(frame[2:3]) == []
    assert decoder.pending == 3
    assert decoder.feed(frame[3:]) == [b"x" * 300]


def test_a_zero_length_body_is_a_frame():
    decoder = FrameDecoder()
    assert decoder.feed(b"\x00\x00\x00\x00") == [b""]
    assert decoder.pending == 0


def test_a_body_of_exactly_the_limit_is_accepted():
    body = b"\xab" * 4096
    frame = encode_frame(body, max_frame=4096)
    assert FrameDecoder(max_frame=4096).feed(frame) == [body]


def test_one_byte_over_the_limit_is_refused_from_the_prefix_alone():
    decoder = FrameDecoder(max_frame=4096)
    with pytest.raises(FrameTooLarge) as refused:
        decoder.feed(HEADER.pack(4097))
    assert (refused.value.size, refused.value.limit) == (4097, 4096)
    assert refused.value.code == "too_large"


def test_a_4_gib_prefix_is_refused_before_any_body_arrives():
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge) as refused:
        decoder.feed(b"\xff\xff\xff\xff")
    assert refused.value.size == 2**32 - 1
    assert refused.value.limit == DEFAULT_MAX_FRAME


def test_an_oversize_prefix_after_good_frames_is_still_refused():
    decoder = FrameDecoder(max_frame=4096)
    with pytest.raises(FrameTooLarge):
        decoder.feed(encode_frame(b"fine") + HEADER.pack(10_000))


def test_too_large_is_a_frame_error():
    # the daemon closes the connection on any FrameError, so this subclassing is the contract
    assert issubclass(FrameTooLarge, FrameError)
    assert FrameError.code == "bad_frame"


def test_encode_frame_refuses_a_body_over_the_limit():
    assert encode_frame(b"y" * 4096, max_frame=4096)[:4] == HEADER.pack(4096)
    with pytest.raises(FrameTooLarge) as refused:
        encode_frame(b"y" * 4097, max_frame=4096)
    assert (refused.value.size, refused.value.limit) == (4097, 4096)


def test_encode_frame_refuses_over_the_default_limit():
    with pytest.raises(FrameTooLarge):
        encode_frame(bytes(DEFAULT_MAX_FRAME + 1))


@st.composite
def rechunked(draw: st.DrawFn, stream: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


@given(data=st.data(), bodies=st.lists(st.binary(max_size=300), max_size=12))
def test_any_bodies_rechunked_any_way_decode_to_the_same_bodies(data, bodies):
    stream = b"".join(encode_frame(body, max_frame=300) for body in bodies)
    chunks = data.draw(rechunked(stream))
    assert b"".join(chunks) == stream

    decoder = FrameDecoder(max_frame=300)
    decoded = [body for chunk in chunks for body in decoder.feed(chunk)]
    assert decoded == bodies
    assert decoder.pending == 0
