"""Keys, header protection and body encryption of alpaca-tunnel 6.1.2.

Datagram layout::

    0   16  E_group(H)       AES-128-ECB of the plaintext header under the group key
    16  16  ICV = E_pair(H)  AES-128-ECB of the same header under the pair key
    32  ..  body             AES-128-CBC(pair key, IV = H with bytes 2-3 zeroed) of the inner
                             packet, zero-filled to a multiple of 16 (no PKCS#7)
    ..  0..750              random padding when the datagram so far is <= 500 bytes

* Group key: the group name's first 16 bytes, NUL-filled. Pair key: the key of the bigger of
  the two ids, as the C node reads it: the first 16 *characters* of the key text (64 bits).
* The ICV covers the header only; the body is not authenticated (docs/legacy.md).
* The ICV is compared in constant time (the C node used ``strncmp``, which stopped at the
  first NUL byte and accepted forged ICVs 1 time in 256).

Crypto is the ``cryptography`` package. ECB contexts are created once per key and reused
(``update`` on whole blocks keeps no state between calls); CBC needs one context per packet.
Pure: no clock, no randomness (the caller passes padding bytes in).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from alpaca.core.legacy.header import HEADER_LEN, MAGIC, PREFIX_LEN, iv_of

KEY_LEN = 16
BLOCK = 16
#: Datagrams of at most this many bytes get random padding (``ETH_MTU / 3``).
PAD_THRESHOLD = 500


def group_key(group: str) -> bytes:
    """The header key: the group name's first 16 bytes, NUL-filled (``strncpy``)."""
    return group.encode()[:KEY_LEN].ljust(KEY_LEN, b"\0")


def key_from_text(text: str) -> bytes:
    """A pair key as the C node reads the secrets file: the first 16 characters, as ASCII."""
    return text.encode()[:KEY_LEN].ljust(KEY_LEN, b"\0")


def key_from_bytes(key: bytes) -> bytes:
    """The legacy key of a hex-decoded key: its first 16 hex digits (lower case), as ASCII.

    For a secrets line written in lower-case hex this is exactly what the C node uses.
    """
    return key_from_text(key.hex())


def body_len(length: int) -> int:
    """Bytes of CBC body carrying an inner packet of ``length`` bytes."""
    return -(-length // BLOCK) * BLOCK


def pad_len(datagram_len: int, rand: int) -> int:
    """The 6.1.2 padding rule: ``250 + (rand & 500)`` bytes when ``datagram_len <= 500``.

    ``& 500`` is a bit mask, as in the C code, so the pad is 250..750 in steps of 4.
    """
    return 250 + (rand & 500) if datagram_len <= PAD_THRESHOLD else 0


class Ecb:
    """One AES-128 key with reusable ECB encrypt and decrypt contexts."""

    __slots__ = ("_aes", "_dec", "_enc")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError(f"a legacy key is {KEY_LEN} bytes, not {len(key)}")
        self._aes = algorithms.AES(key)
        cipher = Cipher(self._aes, modes.ECB())
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()

    def encrypt(self, block: bytes) -> bytes:
        return self._enc.update(block)

    def decrypt(self, block: bytes) -> bytes:
        return self._dec.update(block)

    def cbc_encrypt(self, iv: bytes, data: bytes) -> bytes:
        enc = Cipher(self._aes, modes.CBC(iv)).encryptor()
        return enc.update(data) + enc.finalize()

    def cbc_decrypt(self, iv: bytes, data: bytes) -> bytes:
        dec = Cipher(self._aes, modes.CBC(iv)).decryptor()
        return dec.update(data) + dec.finalize()


def seal_body(pair: Ecb, plain_header: bytes, payload: bytes) -> bytes:
    """The CBC body of ``payload``, zero-filled to whole blocks, IV taken from the header."""
    fill = body_len(len(payload)) - len(payload)
    return pair.cbc_encrypt(iv_of(plain_header), payload + b"\0" * fill)


def protect(group: Ecb, pair: Ecb, plain_header: bytes) -> bytes:
    """The first 32 bytes of a datagram: encrypted header, then ICV."""
    return group.encrypt(plain_header) + pair.encrypt(plain_header)


def open_header(group: Ecb, datagram: bytes) -> bytes | None:
    """The plaintext header if ``datagram`` is long enough and its magic is 1990, else None."""
    if len(datagram) < PREFIX_LEN:
        return None
    plain: bytes = group.decrypt(datagram[:HEADER_LEN])
    if (plain[10] << 8 | plain[11]) & 0xFFF != MAGIC:
        return None
    return plain


def icv_ok(pair: Ecb, plain_header: bytes, datagram: bytes) -> bool:
    """Constant-time check of the ICV (bytes 16-31) against the plaintext header."""
    return hmac.compare_digest(pair.encrypt(plain_header), datagram[HEADER_LEN:PREFIX_LEN])


def open_body(pair: Ecb, plain_header: bytes, datagram: bytes, length: int) -> bytes:
    """Decrypt the inner packet of ``length`` bytes (the caller checked the datagram holds it)."""
    end = PREFIX_LEN + body_len(length)
    return pair.cbc_decrypt(iv_of(plain_header), datagram[PREFIX_LEN:end])[:length]


def add_padding(datagram: bytes, random_bytes: Callable[[int], bytes]) -> bytes:
    """Append the 6.1.2 random padding (random length rule, random bytes)."""
    rand = int.from_bytes(random_bytes(2), "big")
    n = pad_len(len(datagram), rand)
    return datagram + random_bytes(n) if n else datagram
