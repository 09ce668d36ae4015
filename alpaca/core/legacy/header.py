"""The 16-byte header of alpaca-tunnel 6.1.2 (big-endian, most significant bit first).

::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-------+---------------------+-+-------+---+---+-+-+-----------+
    | type  |      len (11)       |m|  ttl  |pia|pib|s|d| reserved  |  0
    +-------+---------------------+-+-------+---+---+-+-+-----------+
    |            src_id             |            dst_id             |  4
    +---------------------------------------+-----------------------+
    |         time (t20 = unix s mod 2^20)  |   magic = 1990 (12)   |  8
    +---------------------------------------+-----------------------+
    |          seq (20, per second)         |      rand (12)        | 12
    +---------------------------------------+-----------------------+

* ``m`` = more (always 0), ``s``/``d`` = si/di (inner source/destination was a tunnel address),
  path index ``pi = pia << 2 | pib``.
* Bytes 2-3 (ttl, pi, si, di) are the only bytes a relay changes; the body's CBC IV is the
  header with those two bytes zeroed, so every hop can still decrypt the body.
* Before 6.1.2 the C bit-fields were laid out in the opposite order: that layout is not
  supported (no deployed node should still run it: 6.1.1 and 6.1.2 cannot talk to each other).

This module only packs and unpacks; it holds no state.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER_LEN = 16
ICV_LEN = 16
#: Header plus ICV: the smallest datagram.
PREFIX_LEN = HEADER_LEN + ICV_LEN
MAGIC = 1990
#: Largest inner packet of 6.1.2 (``TUN_MTU_MAX``): 32 + 1440 = 1472 = 1500 - 28.
MTU_MAX = 1440
MAX_TTL = 15
TYPE_DATA = 0

_WORDS = struct.Struct("!HHHHII")


@dataclass(frozen=True, slots=True)
class LegacyHeader:
    """A decoded header; field widths are those of the diagram above."""

    src: int
    dst: int
    length: int
    t20: int
    seq: int
    rand: int = 0
    ttl: int = MAX_TTL
    pi: int = 0
    si: bool = False
    di: bool = False
    ptype: int = TYPE_DATA
    more: int = 0
    reserved: int = 0
    magic: int = MAGIC


def pack(h: LegacyHeader) -> bytes:
    """The 16 plaintext header bytes."""
    w0 = (h.ptype << 12) | (h.length << 1) | h.more
    w1 = (h.ttl << 12) | (h.pi << 8) | (h.si << 7) | (h.di << 6) | h.reserved
    return _WORDS.pack(w0, w1, h.src, h.dst, (h.t20 << 12) | h.magic, (h.seq << 12) | h.rand)


def unpack(buf: bytes) -> LegacyHeader:
    """Decode 16 plaintext header bytes (the caller checked the length)."""
    w0, w1, src, dst, tm, sr = _WORDS.unpack_from(buf)
    return LegacyHeader(
        src=src, dst=dst, length=(w0 >> 1) & 0x7FF, t20=tm >> 12, seq=sr >> 12, rand=sr & 0xFFF,
        ttl=w1 >> 12, pi=(w1 >> 8) & 0xF, si=bool(w1 & 0x80), di=bool(w1 & 0x40),
        ptype=w0 >> 12, more=w0 & 1, reserved=w1 & 0x3F, magic=tm & 0xFFF,
    )


def with_hop_word(plain: bytes, ttl: int, pi: int) -> bytes:
    """``plain`` (16 header bytes) with ttl and pi replaced; si, di and reserved kept."""
    return plain[:2] + bytes(((ttl << 4) | pi, plain[3])) + plain[4:]


def iv_of(plain: bytes) -> bytes:
    """The body's CBC IV: the plaintext header with bytes 2-3 zeroed."""
    return plain[:2] + b"\0\0" + plain[4:HEADER_LEN]
