"""Padding of small datagrams (inside the encryption), as the original pads datagrams <= 500 B.

Layout of a padded plaintext (header flag ``Flag.PADDED`` set)::

    inner packet || pad (zero bytes) || pad length u16 (big-endian, counts pad + these 2 bytes)

A sender pads when the final datagram (header + plaintext + tag) would be <= ``threshold``
bytes, with 250 + r zero bytes, r uniform in 0..500 (the datagram grows by 252..752 bytes).
A receiver accepts any consistent trailer, so the sending policy can change freely.
The pad bytes are zeros: they are encrypted and authenticated like the rest.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from alpaca.core.constants import OVERHEAD, PAD_TRAILER_LEN, Flag

PAD_THRESHOLD = 500
PAD_MIN = 250
PAD_SPREAD = 500

_TRAILER = struct.Struct("!H")


def _uniform_spread(random_bytes: Callable[[int], bytes]) -> int:
    """Uniform integer in 0..PAD_SPREAD from 9 random bits, by rejection (no modulo bias)."""
    while True:
        value = int.from_bytes(random_bytes(2), "big") & 0x1FF
        if value <= PAD_SPREAD:
            return value


def pad(
    plaintext: bytes, random_bytes: Callable[[int], bytes], threshold: int = PAD_THRESHOLD
) -> tuple[bytes, Flag]:
    """Return ``(plaintext to seal, flag to set in the header)``.

    ``random_bytes(n)`` returns n random bytes (injected; the core draws none itself).
    """
    if OVERHEAD + len(plaintext) > threshold:
        return plaintext, Flag.NONE
    pad_len = PAD_MIN + _uniform_spread(random_bytes)
    trailer = _TRAILER.pack(pad_len + PAD_TRAILER_LEN)
    return plaintext + bytes(pad_len) + trailer, Flag.PADDED


def unpad(plaintext: bytes, flags: int) -> bytes | None:
    """Strip the padding if ``flags`` has ``Flag.PADDED``; None if the trailer is inconsistent."""
    if not flags & Flag.PADDED:
        return plaintext
    if len(plaintext) < PAD_TRAILER_LEN:
        return None
    total = int.from_bytes(plaintext[-PAD_TRAILER_LEN:], "big")
    if total < PAD_TRAILER_LEN or total > len(plaintext):
        return None
    return plaintext[: len(plaintext) - total]
