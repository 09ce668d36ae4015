"""Header codec: golden bytes, round trip, short input, AAD/nonce slices, hop rewrite."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alpaca.core import header
from alpaca.core.constants import HEADER_LEN, PROTOCOL_VERSION
from alpaca.core.header import Header, MalformedPacket

# Made once with header.encode() and checked by hand against the diagram in header.py:
# 0x22 = version 2 | type 2, flags 0x03, ttl 13, pi 7, src 16.1 = 0x1001, dst 1.1 = 0x0101,
# epoch 0x65536f80, counter 0x0102030405060708. Every field is non-trivial and multi-byte
# fields have distinct bytes, so a byte-order or field-order slip changes the output.
GOLDEN_HEADER = Header(
    ptype=2, flags=0x03, ttl=13, pi=7, src=0x1001, dst=0x0101,
    epoch=0x65536F80, counter=0x0102030405060708,
)
GOLDEN_BYTES = bytes.fromhex("22030d07" "10010101" "65536f80" "0102030405060708")

headers = st.builds(
    Header,
    ptype=st.integers(0, 15),
    flags=st.integers(0, 255),
    ttl=st.integers(0, 255),
    pi=st.integers(0, 255),
    src=st.integers(0, 0xFFFF),
    dst=st.integers(0, 0xFFFF),
    epoch=st.integers(0, 0xFFFFFFFF),
    counter=st.integers(0, 2**64 - 1),
    version=st.integers(0, 15),
)


def test_header_encode_matches_golden_bytes() -> None:
    assert header.encode(GOLDEN_HEADER) == GOLDEN_BYTES


def test_header_decode_golden_bytes() -> None:
    decoded = header.decode(GOLDEN_BYTES)
    assert decoded == GOLDEN_HEADER
    assert decoded.version == PROTOCOL_VERSION


@given(headers)
def test_header_decode_inverts_encode(h: Header) -> None:
    assert header.decode(header.encode(h)) == h


@given(st.binary(min_size=0, max_size=HEADER_LEN - 1))
def test_header_decode_short_input_raises_malformed(buf: bytes) -> None:
    with pytest.raises(MalformedPacket):
        header.decode(buf)


def test_header_decode_ignores_bytes_after_header() -> None:
    assert header.decode(GOLDEN_BYTES + b"body") == GOLDEN_HEADER


def test_header_aad_skips_hop_bytes() -> None:
    assert header.aad(GOLDEN_BYTES) == GOLDEN_BYTES[0:2] + GOLDEN_BYTES[4:20]


def test_header_nonce_is_epoch_and_counter() -> None:
    assert header.nonce(GOLDEN_BYTES) == bytes.fromhex("65536f80" "0102030405060708")


def test_header_with_hop_fields_changes_only_bytes_2_and_3() -> None:
    out = header.with_hop_fields(GOLDEN_BYTES + b"xyz", 1, 2)
    assert out == GOLDEN_BYTES[:2] + b"\x01\x02" + GOLDEN_BYTES[4:] + b"xyz"
