"""Data-packet keys and AEAD: HKDF-SHA256 key schedule, AES-256-GCM seal/open, a key ring.

Key schedule (docs/protocol.md, "Keys")::

    pair key   = secret of max(src, dst)    (16 or 32 bytes; the original's trust model)
    salt       = SHA-256(group name, UTF-8)
    info       = b"alpaca-tunnel v2 data" || src u16 || dst u16 || epoch u32   (big-endian)
    key        = HKDF-SHA256(ikm=pair key, salt, info, length=32)   -> AES-256-GCM

``epoch`` is the *sender's* session epoch, carried in the header: A->B and B->A use different
keys, and every restart of a sender gives new keys. The nonce is header bytes 8-19
(``epoch || counter``) and the associated data is the header without its hop bytes 2-3.

Invariants:
* :meth:`DirectionCipher.open` never raises on peer input; it returns ``None``.
* :class:`KeyRing` memory is bounded whatever datagrams arrive: a forged (unauthenticated)
  epoch only ever occupies one slot of a small FIFO, and costs one HKDF plus one AESGCM
  construction (measured by bench/micro.py).
* Key bytes never appear in a ``repr``.

Not thread-safe: call only from the engine's greenlet.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from alpaca.core.constants import HEADER_LEN, OVERHEAD

#: HKDF ``info`` prefix; the suffix is src u16, dst u16, epoch u32 (big-endian).
KDF_LABEL = b"alpaca-tunnel v2 data"
KEY_LEN = 32
PAIR_KEY_LENS = (16, 32)
#: Unauthenticated ciphers kept (FIFO) until one of their datagrams authenticates.
PENDING_MAX = 64
#: Authenticated epochs kept per (src, dst) direction.
EPOCHS_PER_PAIR = 2

_INFO_SUFFIX = struct.Struct("!HHI")


def group_salt(group: str) -> bytes:
    """The HKDF salt of a group: SHA-256 of its UTF-8 name."""
    return hashlib.sha256(group.encode("utf-8")).digest()


def _check_pair_key(peer: int, key: bytes) -> None:
    if not 0 <= peer <= 0xFFFF:
        raise ValueError(f"peer id {peer} is out of range (expected 0-65535)")
    if len(key) not in PAIR_KEY_LENS:
        raise ValueError(f"the key of peer {peer >> 8}.{peer & 0xFF} has {len(key)} bytes"
                         " (expected 16 or 32)")


def _derive(pair_key: bytes, salt: bytes, src: int, dst: int, epoch: int) -> bytes:
    if not (0 <= src <= 0xFFFF and 0 <= dst <= 0xFFFF and 0 <= epoch <= 0xFFFFFFFF):
        raise ValueError(f"src {src}, dst {dst} or epoch {epoch} is out of range")
    info = KDF_LABEL + _INFO_SUFFIX.pack(src, dst, epoch)
    return HKDF(algorithm=SHA256(), length=KEY_LEN, salt=salt, info=info).derive(pair_key)


def derive_key(pair_key: bytes, group: str, src: int, dst: int, epoch: int) -> bytes:
    """The 32-byte AES-256-GCM key of direction ``src -> dst`` in the sender's ``epoch``.

    Raises:
        ValueError: if ``pair_key`` is not 16 or 32 bytes, or an id/epoch is out of range.
    """
    _check_pair_key(max(src, dst), pair_key)
    return _derive(pair_key, group_salt(group), src, dst, epoch)


class DirectionCipher:
    """AES-256-GCM for one (src, dst, epoch) direction. Owns one AESGCM object, reused.

    Attributes:
        is_trusted: True once this cipher has sealed a datagram (our own session) or opened
            an authentic one (a real peer session). KeyRing reads it to tell real sessions
            from forged epochs.
    """

    __slots__ = ("_aead", "is_trusted")

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_LEN:
            raise ValueError(f"a direction key has {KEY_LEN} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self.is_trusted = False

    def __repr__(self) -> str:
        return f"DirectionCipher(is_trusted={self.is_trusted})"

    def seal(self, header20: bytes, plaintext: bytes) -> bytes:
        """Encrypt ``plaintext`` under ``header20``; return ``header || ciphertext || tag``.

        The caller owns nonce uniqueness: ``header20`` carries a counter never used before
        with this key (docs/protocol.md, "Nonces").

        Raises:
            ValueError: if ``header20`` is not exactly 20 bytes.
        """
        if len(header20) != HEADER_LEN:
            raise ValueError(f"a header has {HEADER_LEN} bytes, not {len(header20)}")
        aad = header20[0:2] + header20[4:HEADER_LEN]
        self.is_trusted = True
        return header20 + self._aead.encrypt(header20[8:HEADER_LEN], plaintext, aad)

    def open(self, datagram: bytes) -> bytes | None:
        """Authenticate and decrypt a whole datagram; ``None`` if it is too short or forged.

        Never raises on any byte string. The tag check is constant-time (inside AESGCM).
        """
        if len(datagram) < OVERHEAD:
            return None
        try:
            plaintext = self._aead.decrypt(
                datagram[8:HEADER_LEN],
                datagram[HEADER_LEN:],
                datagram[0:2] + datagram[4:HEADER_LEN],
            )
        except InvalidTag:
            return None
        self.is_trusted = True
        return plaintext


class KeyRing:
    """Pair keys of a group, and a bounded cache of direction ciphers.

    Cache policy (bounded memory, see the module docstring):
    * a cipher made for an epoch not seen before goes into ``pending``, a FIFO of at most
      :data:`PENDING_MAX` entries;
    * once it is trusted (it sealed a datagram, or opened an authentic one) it moves to
      ``trusted`` on its next look-up or when the FIFO pushes it out; ``trusted`` keeps the
      :data:`EPOCHS_PER_PAIR` most recent trusted epochs of each (src, dst) direction, so it
      only grows with directions that carried real traffic.
    An attacker without keys can therefore only churn the FIFO: the trusted ciphers of real
    sessions stay cached, and each forged epoch costs one HKDF and one AESGCM construction.

    Not thread-safe: call only from the engine's greenlet.
    """

    __slots__ = ("_epochs", "_group", "_keys", "_pending", "_salt", "_trusted")

    def __init__(self, group: str, keys: Mapping[int, bytes]) -> None:
        """``keys`` maps a peer id to its secret (16 or 32 bytes).

        Raises:
            ValueError: on a key of another length or an id outside 0-65535.
        """
        self._group = group
        self._salt = group_salt(group)
        self._keys: dict[int, bytes] = self._checked(keys)
        self._trusted: dict[int, DirectionCipher] = {}
        self._pending: dict[int, DirectionCipher] = {}
        self._epochs: dict[int, list[int]] = {}

    @staticmethod
    def _checked(keys: Mapping[int, bytes]) -> dict[int, bytes]:
        for peer, key in keys.items():
            _check_pair_key(peer, key)
        return {peer: bytes(key) for peer, key in keys.items()}

    def __repr__(self) -> str:
        peers = ", ".join(f"{p >> 8}.{p & 0xFF}" for p in sorted(self._keys))
        return f"KeyRing(group={self._group!r}, peers=[{peers}], cached={self.cached_ciphers})"

    @property
    def cached_ciphers(self) -> int:
        """Number of direction ciphers held (trusted + pending)."""
        return len(self._trusted) + len(self._pending)

    def has_pair(self, a: int, b: int) -> bool:
        """True if the key of ``max(a, b)`` (the pair key) is known."""
        return max(a, b) in self._keys

    def cipher(self, src: int, dst: int, epoch: int) -> DirectionCipher | None:
        """The cipher of direction ``src -> dst`` in the sender's ``epoch``; None if no key.

        Arguments come from a decoded header (u16, u16, u32).
        """
        slot = (src << 48) | (dst << 32) | epoch  # one int hashes faster than a tuple
        found = self._trusted.get(slot)
        if found is not None:
            return found
        found = self._pending.get(slot)
        if found is not None:
            if found.is_trusted:
                del self._pending[slot]
                self._trust(slot, found)
            return found
        pair_key = self._keys.get(max(src, dst))
        if pair_key is None:
            return None
        made = DirectionCipher(_derive(pair_key, self._salt, src, dst, epoch))
        if len(self._pending) >= PENDING_MAX:
            oldest = next(iter(self._pending))
            pushed = self._pending.pop(oldest)
            if pushed.is_trusted:
                self._trust(oldest, pushed)
        self._pending[slot] = made
        return made

    def _trust(self, slot: int, cipher: DirectionCipher) -> None:
        """Keep ``cipher`` among the most recent trusted epochs of its direction."""
        pair, epoch = slot >> 32, slot & 0xFFFFFFFF
        epochs = self._epochs.setdefault(pair, [])
        epochs.append(epoch)
        self._trusted[slot] = cipher
        if len(epochs) > EPOCHS_PER_PAIR:
            oldest = min(epochs)
            epochs.remove(oldest)
            del self._trusted[(pair << 32) | oldest]

    def replace_keys(self, keys: Mapping[int, bytes]) -> None:
        """Install reloaded secrets; keep cached ciphers only of pairs whose key is unchanged
        and whose two ids are both still known (a removed smaller id leaves nothing behind).

        Raises:
            ValueError: as :meth:`__init__`; the ring is then left unchanged.
        """
        new = self._checked(keys)
        changed = {p for p in self._keys.keys() | new.keys() if self._keys.get(p) != new.get(p)}
        gone = self._keys.keys() - new.keys()
        self._keys = new
        if not changed:
            return

        def stale(slot: int) -> bool:
            src, dst = slot >> 48, (slot >> 32) & 0xFFFF
            return max(src, dst) in changed or src in gone or dst in gone

        self._trusted = {s: c for s, c in self._trusted.items() if not stale(s)}
        self._pending = {s: c for s, c in self._pending.items() if not stale(s)}
        self._epochs = {p: e for p, e in self._epochs.items() if not stale(p << 32)}
