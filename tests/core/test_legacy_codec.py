"""The 6.1.2 wire format, byte for byte: header layout, keys, ICV, CBC body, padding rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alpaca.core.legacy import codec
from alpaca.core.legacy import header as lh
from alpaca.core.legacy.header import LegacyHeader

# Known-answer vector of original-c-behaviour.md §1.6, made with the C sources of 6.1.2
# (HEAD 448ff8e) and checked there with Python `cryptography`.
GROUP = "caonima"
KEY_TEXT = "1f5c6281e4e3e0db7c57b74d2103e706"
VECTOR_HEADER = LegacyHeader(src=0x1001, dst=0x0101, length=40, t20=1584100000 & 0xFFFFF, seq=7,
                             rand=0x123, ttl=15, pi=0, si=True, di=False)
VECTOR_PAYLOAD = bytes([0x45]) + bytes(range(1, 40))
PLAIN_H = bytes.fromhex("0050f08010010101b72a07c600007123")
IV = bytes.fromhex("0050000010010101b72a07c600007123")
WIRE = bytes.fromhex(
    "c56666f65b0345294f714cc7781389ad"  # E_group(H)
    "379c1430b174cad7230ad2add5363b99"  # ICV = E_pair(H)
    "bceccad8f8f617f050fe89f74376b02e41bedc159f560d58d0a26a0354b5d5cc"
    "bcc56e74651570ff09c1d1f63c72ec5f"  # CBC body, 3 blocks
)


def ecbs() -> tuple[codec.Ecb, codec.Ecb]:
    return codec.Ecb(codec.group_key(GROUP)), codec.Ecb(codec.key_from_text(KEY_TEXT))


def test_legacy_keys_are_the_first_16_characters() -> None:
    assert codec.group_key(GROUP) == b"caonima" + b"\0" * 9
    assert codec.key_from_text(KEY_TEXT) == b"1f5c6281e4e3e0db"
    assert codec.key_from_bytes(bytes.fromhex(KEY_TEXT)) == b"1f5c6281e4e3e0db"
    assert codec.key_from_bytes(bytes.fromhex(KEY_TEXT * 2)) == b"1f5c6281e4e3e0db"
    assert codec.group_key("a-very-long-group-name") == b"a-very-long-grou"


def test_legacy_header_packs_to_the_vector() -> None:
    assert lh.pack(VECTOR_HEADER) == PLAIN_H
    assert lh.iv_of(PLAIN_H) == IV
    assert lh.unpack(PLAIN_H) == VECTOR_HEADER


def test_legacy_encode_matches_the_vector() -> None:
    group, pair = ecbs()
    wire = codec.protect(group, pair, PLAIN_H) + codec.seal_body(pair, PLAIN_H, VECTOR_PAYLOAD)
    assert wire == WIRE


def test_legacy_decode_of_the_vector() -> None:
    group, pair = ecbs()
    plain = codec.open_header(group, WIRE + b"trailing padding is ignored")
    assert plain == PLAIN_H
    assert codec.icv_ok(pair, plain, WIRE)
    h = lh.unpack(plain)
    assert codec.open_body(pair, plain, WIRE, h.length) == VECTOR_PAYLOAD


def test_legacy_decode_rejects_wrong_group_and_short_data() -> None:
    _, pair = ecbs()
    assert codec.open_header(codec.Ecb(codec.group_key("other")), WIRE) is None
    assert codec.open_header(ecbs()[0], WIRE[:31]) is None
    assert not codec.icv_ok(codec.Ecb(b"0" * 16), PLAIN_H, WIRE)
    # 6.1.2 compared with strncmp: an all-zero ICV passed when the true one started with 00.
    assert not codec.icv_ok(pair, PLAIN_H, WIRE[:16] + bytes(16) + WIRE[32:])


def test_legacy_hop_word_changes_only_bytes_2_and_3() -> None:
    hop = lh.with_hop_word(PLAIN_H, 14, 9)
    assert hop[:2] == PLAIN_H[:2] and hop[4:] == PLAIN_H[4:]
    h = lh.unpack(hop)
    assert (h.ttl, h.pi, h.si, h.di) == (14, 9, True, False)
    assert lh.iv_of(hop) == IV  # every hop can still decrypt the body


def test_legacy_header_bit_positions() -> None:
    h = LegacyHeader(src=0x0102, dst=0x0304, length=0x7FF, t20=0xFFFFF, seq=0xABCDE, rand=0xFFF,
                     ttl=0xA, pi=0b1101, si=False, di=True, ptype=3, more=1, reserved=0x2A)
    assert lh.pack(h).hex() == "3fff" "ad6a" "0102" "0304" "fffff7c6" "abcdefff"


@given(st.builds(
    LegacyHeader, src=st.integers(0, 0xFFFF), dst=st.integers(0, 0xFFFF), length=st.integers(0, 2047),
    t20=st.integers(0, 2**20 - 1), seq=st.integers(0, 2**20 - 1), rand=st.integers(0, 4095),
    ttl=st.integers(0, 15), pi=st.integers(0, 15), si=st.booleans(), di=st.booleans(),
    ptype=st.integers(0, 15), more=st.integers(0, 1), reserved=st.integers(0, 63),
    magic=st.integers(0, 4095)))
def test_legacy_header_round_trip(h: LegacyHeader) -> None:
    assert lh.unpack(lh.pack(h)) == h


def test_legacy_padding_rule() -> None:
    assert codec.pad_len(500, 0) == 250
    assert codec.pad_len(500, 0xFFFF) == 750
    assert codec.pad_len(80, 3) == 250  # & 500 is a mask: 3 & 500 == 0
    assert codec.pad_len(80, 4) == 254
    assert codec.pad_len(501, 0xFFFF) == 0
    masks = {m for m in range(0, 501, 4) if m & ~500 == 0}
    assert {codec.pad_len(1, r) for r in range(1 << 12)} == {250 + m for m in masks}


def test_legacy_add_padding_uses_the_random_source() -> None:
    source = iter([b"\x00\x04", b"\xaa" * 254])
    padded = codec.add_padding(WIRE, lambda n: next(source))
    assert padded == WIRE + b"\xaa" * 254
    big = b"x" * 501
    assert codec.add_padding(big, lambda n: bytes(n)) == big


def test_legacy_body_len_rounds_to_blocks() -> None:
    assert [codec.body_len(n) for n in (1, 16, 17, 40, 1440)] == [16, 16, 32, 48, 1440]


def test_legacy_open_header_takes_a_datagram_of_header_and_icv_only() -> None:
    group, pair = ecbs()
    prefix = codec.protect(group, pair, PLAIN_H)
    assert len(prefix) == lh.PREFIX_LEN
    assert codec.open_header(group, prefix) == PLAIN_H and codec.icv_ok(pair, PLAIN_H, prefix)


def test_legacy_header_defaults_to_the_largest_ttl_that_fits_its_4_bits() -> None:
    plain = lh.pack(LegacyHeader(src=1, dst=2, length=0, t20=0, seq=0))
    assert plain[2] >> 4 == 15 and lh.unpack(plain).ttl == lh.MAX_TTL == 15


def test_legacy_largest_inner_packet_fills_a_1500_byte_ethernet_frame() -> None:
    assert lh.PREFIX_LEN + lh.MTU_MAX == 1500 - 28  # minus the IPv4 and UDP headers


@pytest.mark.parametrize("length", [15, 24, 32])
def test_legacy_keys_are_aes_128_only(length: int) -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        codec.Ecb(bytes(length))
