"""The 20-byte tunnel header (protocol version 2), big-endian.

::

     0               1               2               3
     0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7 0 1 2 3 4 5 6 7
    +-------+-------+---------------+---------------+---------------+
    |version| type  |     flags     |   ttl  (hop)  |  pi   (hop)   |  0
    +-------+-------+---------------+---------------+---------------+
    |            src_id             |            dst_id             |  4
    +-------------------------------+-------------------------------+
    |                          epoch (u32)                          |  8
    +---------------------------------------------------------------+
    |                                                               | 12
    +                         counter (u64)                         +
    |                                                               | 16
    +---------------------------------------------------------------+
    |  AES-256-GCM ciphertext of the payload ...  | 16-byte tag     | 20
    +---------------------------------------------------------------+

* Bytes 2-3 (``ttl``, ``pi``) are the only hop fields: relays rewrite them, so they are left
  out of the AEAD's associated data. Everything else (bytes 0-1 and 4-19) is authenticated.
* Bytes 8-19 (``epoch || counter``) are the 12-byte AES-GCM nonce. They are unique per
  (src, dst) direction key: see docs/protocol.md.

This module only packs and unpacks; it holds no state.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from alpaca.core.constants import HEADER_LEN, PROTOCOL_VERSION

HEADER = struct.Struct("!BBBBHHIQ")
assert HEADER.size == HEADER_LEN


class MalformedPacket(Exception):
    """Internal: the bytes are not a header. Never escapes the core's public entry points."""


@dataclass(frozen=True, slots=True)
class Header:
    """A decoded header. Field widths are those of the diagram above."""

    ptype: int
    flags: int
    ttl: int
    pi: int
    src: int
    dst: int
    epoch: int
    counter: int
    version: int = PROTOCOL_VERSION


def encode(h: Header) -> bytes:
    """Pack a header into its 20 wire bytes."""
    return HEADER.pack(
        (h.version << 4) | h.ptype, h.flags, h.ttl, h.pi, h.src, h.dst, h.epoch, h.counter
    )


def decode(buf: bytes | bytearray | memoryview) -> Header:
    """Unpack the first 20 bytes of ``buf``.

    Raises:
        MalformedPacket: if ``buf`` is shorter than a header.
    """
    if len(buf) < HEADER_LEN:
        raise MalformedPacket(f"{len(buf)} bytes is shorter than a header")
    vt, flags, ttl, pi, src, dst, epoch, counter = HEADER.unpack_from(buf)
    return Header(vt & 0x0F, flags, ttl, pi, src, dst, epoch, counter, vt >> 4)


def aad(datagram: bytes | bytearray | memoryview) -> bytes:
    """The associated data: the header without its hop fields (bytes 2-3)."""
    return bytes(datagram[0:2]) + bytes(datagram[4:HEADER_LEN])


def nonce(datagram: bytes | bytearray | memoryview) -> bytes:
    """The 12-byte AEAD nonce: ``epoch || counter`` (bytes 8-19)."""
    return bytes(datagram[8:HEADER_LEN])


def with_hop_fields(datagram: bytes, ttl: int, pi: int) -> bytes:
    """Return ``datagram`` with bytes 2-3 set to ``ttl`` and ``pi`` (relays and copies)."""
    return datagram[:2] + bytes((ttl, pi)) + datagram[4:]
