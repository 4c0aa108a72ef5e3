"""MLLP framing: split frames, several per read, junk, restarts, size cap."""

from __future__ import annotations

import pytest

from triage.errors import HL7ParseError
from triage.hl7.mllp import MLLPDecoder, MLLPError, MLLPFrameTooLarge, frame

MSG1 = b"MSH|^~\\&|RIS|H|TRIAGE|H|20240312||ORM^O01|1|P|2.5.1\rPID|1||X1"
MSG2 = b"MSH|^~\\&|RIS|H|TRIAGE|H|20240312||ORM^O01|2|P|2.5.1\rPID|1||X2"


def test_frame_wraps_in_block_characters() -> None:
    assert frame(b"abc") == b"\x0babc\x1c\x0d"


def test_frame_refuses_block_characters_inside() -> None:
    with pytest.raises(MLLPError):
        frame(b"a\x1cb")
    with pytest.raises(MLLPError):
        frame(b"a\x0bb")


def test_one_frame_one_read() -> None:
    assert MLLPDecoder().feed(frame(MSG1)) == [MSG1]


def test_frame_split_byte_by_byte() -> None:
    dec = MLLPDecoder()
    out: list[bytes] = []
    for b in frame(MSG1) + frame(MSG2):
        out += dec.feed(bytes([b]))
    assert out == [MSG1, MSG2]
    assert not dec.in_frame
    assert dec.discarded_bytes == 0


def test_trailer_split_between_reads() -> None:
    dec = MLLPDecoder()
    data = frame(MSG1)
    assert dec.feed(data[:-1]) == []  # ends with 0x1C, 0x0D still to come
    assert dec.in_frame
    assert dec.feed(data[-1:]) == [MSG1]


def test_two_frames_in_one_read_and_a_third_started() -> None:
    dec = MLLPDecoder()
    third = frame(MSG1)
    assert dec.feed(frame(MSG1) + frame(MSG2) + third[:10]) == [MSG1, MSG2]
    assert dec.pending == 9
    assert dec.feed(third[10:]) == [MSG1]


def test_junk_before_start_block_and_between_frames_is_skipped() -> None:
    dec = MLLPDecoder()
    out = dec.feed(b"\r\n garbage" + frame(MSG1) + b"\n\n" + frame(MSG2))
    assert out == [MSG1, MSG2]
    assert dec.discarded_bytes == len(b"\r\n garbage") + 2


def test_start_block_inside_unfinished_frame_restarts() -> None:
    dec = MLLPDecoder()
    assert dec.feed(b"\x0bMSH|trunc") == []
    assert dec.feed(frame(MSG2)) == [MSG2]
    assert dec.discarded_bytes == len(b"MSH|trunc")


def test_end_block_without_cr_is_kept_as_data() -> None:
    dec = MLLPDecoder()
    assert dec.feed(b"\x0bab\x1cc\x1c\x0d") == [b"ab\x1cc"]


def test_oversize_frame_raises_with_head_and_earlier_frames() -> None:
    dec = MLLPDecoder(max_size=100)
    big = b"MSH|^~\\&|A|B|C|D|||ORM^O01|BIG1|P|2.5.1\r" + b"X" * 200
    with pytest.raises(MLLPFrameTooLarge) as info:
        dec.feed(frame(MSG1) + b"\x0b" + big)
    exc = info.value
    assert isinstance(exc, HL7ParseError) and exc.ack_code == "AR"
    assert exc.complete_frames == [MSG1]
    assert exc.head.startswith(b"MSH|") and b"BIG1" in exc.head
    assert exc.limit == 100 and exc.size > 100
    assert not dec.in_frame  # reset


def test_oversize_detected_before_trailer_arrives() -> None:
    dec = MLLPDecoder(max_size=1024)
    dec.feed(b"\x0b" + b"A" * 1000)
    with pytest.raises(MLLPFrameTooLarge):
        dec.feed(b"A" * 100)


def test_complete_frame_over_limit_raises() -> None:
    dec = MLLPDecoder(max_size=10)
    with pytest.raises(MLLPFrameTooLarge):
        dec.feed(frame(b"Y" * 11))
    assert MLLPDecoder(max_size=11).feed(frame(b"Y" * 11)) == [b"Y" * 11]


def test_large_frame_in_small_chunks_is_linear_enough() -> None:
    dec = MLLPDecoder()
    payload = b"OBX|1|TX|||" + b"z" * 2_000_000
    data = frame(payload)
    out: list[bytes] = []
    for i in range(0, len(data), 1000):
        out += dec.feed(data[i : i + 1000])
    assert out == [payload]
