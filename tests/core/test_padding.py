"""Padding of small datagrams: threshold, length range, trailer checks, round trip."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alpaca.core.constants import OVERHEAD, Flag
from alpaca.core.padding import PAD_MIN, PAD_SPREAD, PAD_THRESHOLD, pad, unpad


def fixed_random(*values: int) -> Callable[[int], bytes]:
    """random_bytes double returning the given u16 values in turn (big-endian)."""
    stream = itertools.chain(values, itertools.repeat(0))
    return lambda n: next(stream).to_bytes(n, "big")


def test_padding_pads_when_datagram_at_threshold() -> None:
    inner = bytes(PAD_THRESHOLD - OVERHEAD)
    padded, flag = pad(inner, fixed_random(0))
    assert flag is Flag.PADDED
    assert len(padded) == len(inner) + PAD_MIN + 2
    assert padded[-2:] == (PAD_MIN + 2).to_bytes(2, "big")
    assert padded[len(inner):-2] == bytes(PAD_MIN)


def test_padding_leaves_bigger_datagram_alone() -> None:
    inner = bytes(PAD_THRESHOLD - OVERHEAD + 1)
    assert pad(inner, fixed_random()) == (inner, Flag.NONE)


def test_padding_largest_pad() -> None:
    padded, _ = pad(b"x", fixed_random(PAD_SPREAD))
    assert len(padded) == 1 + PAD_MIN + PAD_SPREAD + 2


def test_padding_rejects_out_of_range_draw_without_bias() -> None:
    # 9 low bits: 501..511 are redrawn; high bits are ignored.
    padded, _ = pad(b"", fixed_random(511, 501, 0xFE00 | 7))
    assert len(padded) == PAD_MIN + 7 + 2


def test_padding_custom_threshold() -> None:
    assert pad(bytes(100), fixed_random(), threshold=0)[1] is Flag.NONE
    assert pad(bytes(100), fixed_random(), threshold=OVERHEAD + 100)[1] is Flag.PADDED


def test_unpad_without_flag_returns_input() -> None:
    assert unpad(b"\x00\x05abc", Flag.NONE) == b"\x00\x05abc"


@pytest.mark.parametrize(
    "plaintext",
    [b"", b"\x00", b"\x00\x00", b"\x00\x01", b"ab\x00\x05", b"\xff\xff"],
)
def test_unpad_inconsistent_trailer_is_none(plaintext: bytes) -> None:
    assert unpad(plaintext, Flag.PADDED) is None


def test_unpad_accepts_any_consistent_trailer() -> None:
    assert unpad(b"abc\x00\x02", Flag.PADDED) == b"abc"
    assert unpad(b"\x00\x02", Flag.PADDED) == b""  # the trailer alone: 2 <= 2
    assert unpad(b"\x00\x00\x00\x04", Flag.PADDED | 0x02) == b""  # a reserved bit set


@given(inner=st.binary(max_size=1436), draw=st.integers(0, 0xFFFF))
def test_padding_round_trip(inner: bytes, draw: int) -> None:
    padded, flag = pad(inner, fixed_random(draw))
    assert unpad(padded, flag) == inner
    if flag:
        assert PAD_MIN + 2 <= len(padded) - len(inner) <= PAD_MIN + PAD_SPREAD + 2
    else:
        assert OVERHEAD + len(inner) > PAD_THRESHOLD


def test_padding_follows_the_protocol_numbers() -> None:
    """protocol.md section 6, in its own numbers (not the module's constants): a datagram of
    at most 500 bytes is padded, and grows by 252..752 bytes."""
    assert OVERHEAD == 36
    at_500, flag = pad(bytes(500 - 36), fixed_random(0))
    assert flag is Flag.PADDED and len(at_500) - (500 - 36) == 252
    assert pad(bytes(501 - 36), fixed_random(0)) == (bytes(501 - 36), Flag.NONE)
    largest, _ = pad(b"", fixed_random(500))
    assert len(largest) == 752 and largest[-2:] == (752).to_bytes(2, "big")
    redrawn, _ = pad(b"", fixed_random(501, 3))
    assert len(redrawn) == 255
