"""Peer ids: 16-bit numbers written ``"A.B"`` (= A*256 + B), as in the original.

Smaller ids are servers, bigger ids are clients. The order, not the ``mode``, decides the
direction of a packet: ``dst < src`` is upstream (forwarders are used), ``dst > src`` is
downstream (sent directly on every live path).
"""

from __future__ import annotations

import json
from typing import NewType

PeerId = NewType("PeerId", int)

#: 0.0 means "no id", 0.1 and 255.255 are reserved (original secrets.txt header).
RESERVED_IDS = frozenset({0, 1, 0xFFFF})


def quoted(text: str, limit: int = 60) -> str:
    """``text`` in double quotes for a message, at most ``limit`` characters: characters that
    do not print (controls, line and paragraph separators) escaped, so no escape sequence of a
    file reaches a terminal or the log."""
    shown = "".join(c if c.isprintable() else f"\\u{ord(c):04x}"
                    for c in json.dumps(text[:limit], ensure_ascii=False))
    return shown if len(text) <= limit and len(shown) <= limit else shown[:limit - 4] + '..."'


def printable(text: str, limit: int = 60) -> str:
    """:func:`quoted` without the quotes: for a key or a line of a file in a message."""
    return quoted(text, limit)[1:-1]


def is_digits(text: str) -> bool:
    """ASCII decimal digits only: ``str.isdigit()`` also takes ``"²"``, which ``int()`` refuses."""
    return text.isascii() and text.isdigit()


def digits_value(text: str, max_digits: int = 20) -> int | None:
    """``text`` as an int if it is 1 to ``max_digits`` ASCII digits, else None. (``int()``
    raises on more than 4300 digits, and no field of ours needs more than 20.)"""
    return int(text) if len(text) <= max_digits and is_digits(text) else None


def parse_peer_id(text: str) -> PeerId:
    """Parse ``"A.B"`` (each part 0-255, digits only) into a PeerId.

    Raises:
        ValueError: with a sentence saying what was expected. Reserved ids are accepted
            here; callers that need a usable id call :func:`check_usable`.
    """
    parts = text.split(".") if isinstance(text, str) else []
    if len(parts) != 2 or not all(is_digits(p) and len(p) <= 3 for p in parts):
        raise ValueError(f'{quoted(text)} is not a peer id (expected "A.B", each 0-255)')
    high, low = int(parts[0]), int(parts[1])
    if high > 255 or low > 255:
        raise ValueError(f'{quoted(text)} is not a peer id (expected "A.B", each 0-255)')
    return PeerId(high * 256 + low)


def check_usable(peer: int) -> None:
    """Raise ValueError if ``peer`` is one of the reserved ids 0.0, 0.1, 255.255."""
    if peer in RESERVED_IDS:
        raise ValueError(f"{format_peer_id(peer)} is reserved (use 0.2 to 255.254)")


def format_peer_id(peer: int) -> str:
    """Format a 16-bit id as ``"A.B"``."""
    return f"{peer >> 8}.{peer & 0xFF}"
