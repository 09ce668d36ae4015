"""Key schedule, AEAD seal/open, tamper and cross-direction rejection, KeyRing cache rules."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest

from alpaca.core import crypto, header
from alpaca.core.constants import HEADER_LEN, OVERHEAD
from alpaca.core.crypto import DirectionCipher, KeyRing, derive_key
from alpaca.core.header import Header

PAIR_KEY = bytes.fromhex("1f5c6281e4e3e0db7c57b74d2103e706")  # secret of 16.1 (16 bytes)
GROUP = "caonima"
CLIENT, GATEWAY, OTHER = 0x1001, 0x0101, 0x0102  # 16.1, 1.1, 1.2
EPOCH = 1_700_000_000

# Made once with derive_key(PAIR_KEY, "caonima", 0x1001, 0x0101, 1700000000) and checked
# against the independent stdlib HKDF below (test_crypto_derive_key_matches_stdlib_hkdf).
GOLDEN_KEY = bytes.fromhex("3067f87d1bd820b9d97a1ca05b684b47e6ab54e99195990b21f10fce9598eaa1")

# Made once with DirectionCipher(GOLDEN_KEY).seal(GOLDEN_PACKET_HEADER, GOLDEN_INNER):
# header || AES-256-GCM ciphertext (40 B) || tag (16 B) = 76 bytes. Checked by opening it
# with the same key and by the tamper tests; it freezes the AAD/nonce byte selection.
GOLDEN_PACKET_HEADER = header.encode(
    Header(ptype=0, flags=0, ttl=15, pi=0, src=CLIENT, dst=GATEWAY, epoch=EPOCH, counter=7)
)
GOLDEN_INNER = bytes([0x45]) + bytes(range(1, 40))  # 40 bytes: 45 01 02 ... 27
GOLDEN_PACKET = bytes.fromhex(
    "20000f00100101016553f1000000000000000007"  # header
    "82ffca87f69bd193066f184de857867d8f546f47ab5bc5af1687ebaf7541b70365587451bf2e705f"
    "4e3829729c96e1d8177957df748a6c5a"  # tag
)


def stdlib_hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with hmac + hashlib only (an implementation independent of ours)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:length]


def make_header(src: int = CLIENT, dst: int = GATEWAY, epoch: int = EPOCH, counter: int = 1,
                ttl: int = 15, pi: int = 0) -> bytes:
    return header.encode(Header(ptype=0, flags=0, ttl=ttl, pi=pi, src=src, dst=dst,
                                epoch=epoch, counter=counter))


def cipher_for(src: int, dst: int, epoch: int = EPOCH, group: str = GROUP,
               key: bytes = PAIR_KEY) -> DirectionCipher:
    return DirectionCipher(derive_key(key, group, src, dst, epoch))


# --- key schedule ---------------------------------------------------------------------------

def test_crypto_derive_key_matches_golden() -> None:
    assert derive_key(PAIR_KEY, GROUP, CLIENT, GATEWAY, EPOCH) == GOLDEN_KEY


def test_crypto_derive_key_matches_stdlib_hkdf() -> None:
    salt = hashlib.sha256(GROUP.encode()).digest()
    info = b"alpaca-tunnel v2 data" + struct.pack("!HHI", CLIENT, GATEWAY, EPOCH)
    assert stdlib_hkdf_sha256(PAIR_KEY, salt, info, 32) == GOLDEN_KEY


def test_crypto_derive_key_differs_per_direction_epoch_group() -> None:
    keys = {
        derive_key(PAIR_KEY, GROUP, CLIENT, GATEWAY, EPOCH),
        derive_key(PAIR_KEY, GROUP, GATEWAY, CLIENT, EPOCH),
        derive_key(PAIR_KEY, GROUP, CLIENT, GATEWAY, EPOCH + 1),
        derive_key(PAIR_KEY, "other", CLIENT, GATEWAY, EPOCH),
        derive_key(PAIR_KEY * 2, GROUP, CLIENT, GATEWAY, EPOCH),
    }
    assert len(keys) == 5


@pytest.mark.parametrize("bad", [b"", bytes(15), bytes(17), bytes(31), bytes(33)])
def test_crypto_derive_key_rejects_pair_key_length(bad: bytes) -> None:
    with pytest.raises(ValueError, match="expected 16 or 32"):
        derive_key(bad, GROUP, CLIENT, GATEWAY, EPOCH)


@pytest.mark.parametrize(
    "src,dst,epoch", [(-1, 1, 0), (1, -1, 0), (1, 2, -1), (1, 0x10000, 0), (1, 2, 2**32)]
)
def test_crypto_derive_key_rejects_out_of_range(src: int, dst: int, epoch: int) -> None:
    with pytest.raises(ValueError):
        derive_key(PAIR_KEY, GROUP, src, dst, epoch)


@pytest.mark.parametrize(
    "src,dst,epoch", [(0, 0xFFFF, 0), (0xFFFF, 0, 2**32 - 1), (0xFFFF, 0xFFFF, 2**32 - 1)]
)
def test_crypto_derive_key_accepts_the_largest_ids_and_epoch(src: int, dst: int, epoch: int) -> None:
    """Every u16 id and every u32 epoch a header can carry has a key."""
    key = derive_key(PAIR_KEY, GROUP, src, dst, epoch)
    assert len(key) == crypto.KEY_LEN
    assert key != derive_key(PAIR_KEY, GROUP, src, dst, epoch ^ 1)


# --- seal / open ----------------------------------------------------------------------------

def test_crypto_seal_matches_golden_packet() -> None:
    sealed = DirectionCipher(GOLDEN_KEY).seal(GOLDEN_PACKET_HEADER, GOLDEN_INNER)
    assert sealed == GOLDEN_PACKET
    assert len(sealed) == OVERHEAD + len(GOLDEN_INNER)


def test_crypto_open_golden_packet() -> None:
    assert DirectionCipher(GOLDEN_KEY).open(GOLDEN_PACKET) == GOLDEN_INNER


def test_crypto_seal_open_empty_plaintext() -> None:
    c = cipher_for(CLIENT, GATEWAY)
    sealed = c.seal(make_header(), b"")
    assert len(sealed) == OVERHEAD
    assert c.open(sealed) == b""


def test_crypto_seal_rejects_wrong_header_length() -> None:
    with pytest.raises(ValueError):
        cipher_for(CLIENT, GATEWAY).seal(bytes(19), b"x")


def test_crypto_direction_cipher_rejects_short_key() -> None:
    with pytest.raises(ValueError):
        DirectionCipher(bytes(16))


@pytest.mark.parametrize("length", [0, 1, HEADER_LEN, OVERHEAD - 1])
def test_crypto_open_too_short_returns_none(length: int) -> None:
    assert cipher_for(CLIENT, GATEWAY).open(GOLDEN_PACKET[:length]) is None


def test_crypto_open_tampered_authenticated_byte_returns_none() -> None:
    c = DirectionCipher(GOLDEN_KEY)
    for index in range(len(GOLDEN_PACKET)):
        if index in (2, 3):
            continue
        for flip in (0x01, 0x80):
            bad = bytearray(GOLDEN_PACKET)
            bad[index] ^= flip
            assert c.open(bytes(bad)) is None, f"byte {index} ^ {flip:#x} accepted"


def test_crypto_open_accepts_rewritten_hop_bytes() -> None:
    c = DirectionCipher(GOLDEN_KEY)
    for ttl, pi in [(0, 0), (14, 3), (255, 255)]:
        assert c.open(header.with_hop_fields(GOLDEN_PACKET, ttl, pi)) == GOLDEN_INNER


def test_crypto_open_rejects_truncated_or_extended() -> None:
    c = DirectionCipher(GOLDEN_KEY)
    assert c.open(GOLDEN_PACKET[:-1]) is None
    assert c.open(GOLDEN_PACKET + b"\x00") is None


@pytest.mark.parametrize(
    "receiver",
    [
        pytest.param((GATEWAY, CLIENT, EPOCH, GROUP), id="reverse-direction"),
        pytest.param((CLIENT, OTHER, EPOCH, GROUP), id="other-destination"),
        pytest.param((CLIENT, GATEWAY, EPOCH + 1, GROUP), id="other-epoch"),
        pytest.param((CLIENT, GATEWAY, EPOCH, "other-group"), id="wrong-group"),
    ],
)
def test_crypto_open_rejects_other_key(receiver: tuple[int, int, int, str]) -> None:
    src, dst, epoch, group = receiver
    assert cipher_for(src, dst, epoch, group).open(GOLDEN_PACKET) is None


def test_crypto_is_trusted_after_seal() -> None:
    c = cipher_for(GATEWAY, CLIENT)
    assert not c.is_trusted
    c.seal(make_header(GATEWAY, CLIENT), b"x")
    assert c.is_trusted


def test_crypto_is_trusted_only_after_authentic_datagram() -> None:
    c = DirectionCipher(GOLDEN_KEY)
    assert c.open(GOLDEN_PACKET[:-1] + b"\x00") is None
    assert not c.is_trusted
    assert c.open(GOLDEN_PACKET) is not None
    assert c.is_trusted


# --- KeyRing --------------------------------------------------------------------------------

def ring() -> KeyRing:
    keys = {CLIENT: PAIR_KEY, OTHER: bytes(range(32))}
    return KeyRing(GROUP, keys)


def test_keyring_has_pair_uses_bigger_id() -> None:
    r = ring()
    assert r.has_pair(CLIENT, GATEWAY)
    assert r.has_pair(GATEWAY, CLIENT)
    assert r.has_pair(GATEWAY, OTHER)      # 1.2 > 1.1, key of 1.2 known
    assert not r.has_pair(GATEWAY, 0x0100)  # neither 1.1 nor 1.0 has a key
    assert not r.has_pair(CLIENT, 0x2001)  # 32.1 bigger, no key


def test_keyring_cipher_opens_golden_packet() -> None:
    c = ring().cipher(CLIENT, GATEWAY, EPOCH)
    assert c is not None
    assert c.open(GOLDEN_PACKET) == GOLDEN_INNER


def test_keyring_takes_keys_of_ids_0_and_65535() -> None:
    r = KeyRing(GROUP, {0: PAIR_KEY, 0xFFFF: bytes(range(32))})
    assert r.has_pair(0, 0) and r.has_pair(0, 0xFFFF)
    assert r.cipher(0, 0, EPOCH) is not None and r.cipher(0xFFFF, 1, EPOCH) is not None


def test_keyring_cipher_without_key_is_none() -> None:
    r = ring()
    assert r.cipher(CLIENT, 0x2001, EPOCH) is None
    assert r.cached_ciphers == 0


def test_keyring_cipher_is_cached_and_reused() -> None:
    r = ring()
    first = r.cipher(CLIENT, GATEWAY, EPOCH)
    assert r.cipher(CLIENT, GATEWAY, EPOCH) is first
    assert first is not None and first.open(GOLDEN_PACKET) is not None
    assert r.cipher(CLIENT, GATEWAY, EPOCH) is first  # promoted to trusted
    assert r.cipher(CLIENT, GATEWAY, EPOCH) is first
    assert r.cached_ciphers == 1


def test_keyring_rejects_bad_keys() -> None:
    with pytest.raises(ValueError, match=r"16\.1 has 20 bytes"):
        KeyRing(GROUP, {CLIENT: bytes(20)})
    with pytest.raises(ValueError):
        KeyRing(GROUP, {0x10000: PAIR_KEY})
    with pytest.raises(ValueError, match="out of range"):
        KeyRing(GROUP, {-1: PAIR_KEY})


def seal_with(r: KeyRing, epoch: int, counter: int = 1) -> bytes:
    c = r.cipher(CLIENT, GATEWAY, epoch)
    assert c is not None
    return c.seal(make_header(epoch=epoch, counter=counter), b"data")


def authenticate(r: KeyRing, epoch: int) -> DirectionCipher:
    """Open one authentic datagram of ``epoch`` and look the cipher up again (promotion)."""
    sender = KeyRing(GROUP, {CLIENT: PAIR_KEY})
    datagram = seal_with(sender, epoch)
    c = r.cipher(CLIENT, GATEWAY, epoch)
    assert c is not None and c.open(datagram) == b"data"
    assert r.cipher(CLIENT, GATEWAY, epoch) is c
    return c


def test_keyring_keeps_two_most_recent_authenticated_epochs() -> None:
    r = ring()
    c1, c2, c3 = authenticate(r, 10), authenticate(r, 11), authenticate(r, 12)
    assert r.cipher(CLIENT, GATEWAY, 12) is c3
    assert r.cipher(CLIENT, GATEWAY, 11) is c2
    assert r.cipher(CLIENT, GATEWAY, 10) is not c1  # evicted: a fresh cipher is made


def test_keyring_forged_epochs_do_not_evict_real_session() -> None:
    r = ring()
    real = authenticate(r, EPOCH)
    for forged in range(1, 10 * crypto.PENDING_MAX):
        assert r.cipher(CLIENT, GATEWAY, EPOCH + forged) is not None
    assert r.cipher(CLIENT, GATEWAY, EPOCH) is real
    assert r.cached_ciphers <= 1 + crypto.PENDING_MAX


def test_keyring_authenticated_cipher_survives_pending_overflow() -> None:
    r = ring()
    sender = KeyRing(GROUP, {CLIENT: PAIR_KEY})
    c = r.cipher(CLIENT, GATEWAY, EPOCH)
    assert c is not None and c.open(seal_with(sender, EPOCH)) is not None
    for forged in range(1, 2 * crypto.PENDING_MAX):
        r.cipher(CLIENT, GATEWAY, EPOCH + forged)
    assert r.cipher(CLIENT, GATEWAY, EPOCH) is c


def test_keyring_sending_ciphers_stay_cached_for_many_peers() -> None:
    peers = range(0x2000, 0x2000 + 2 * crypto.PENDING_MAX)
    r = KeyRing(GROUP, {p: PAIR_KEY for p in peers})
    sending = {}
    for p in peers:
        c = r.cipher(GATEWAY, p, EPOCH)
        assert c is not None
        c.seal(make_header(GATEWAY, p), b"x")
        sending[p] = c
    for forged in range(1, 2 * crypto.PENDING_MAX):
        r.cipher(CLIENT + 0x1000, GATEWAY, EPOCH + forged)
    assert all(r.cipher(GATEWAY, p, EPOCH) is c for p, c in sending.items())


def test_keyring_replace_keys_keeps_unchanged_pairs() -> None:
    r = ring()
    kept = authenticate(r, EPOCH)
    other = r.cipher(GATEWAY, OTHER, EPOCH)
    r.replace_keys({CLIENT: PAIR_KEY, OTHER: bytes(32)})  # 1.2 changed its key
    assert r.cipher(CLIENT, GATEWAY, EPOCH) is kept
    assert r.cipher(GATEWAY, OTHER, EPOCH) is not other


def test_keyring_replace_keys_with_same_keys_keeps_every_cipher() -> None:
    r = ring()
    trusted = authenticate(r, EPOCH)
    pending = r.cipher(GATEWAY, OTHER, EPOCH)
    r.replace_keys({CLIENT: bytes(PAIR_KEY), OTHER: bytes(range(32))})
    assert r.cipher(CLIENT, GATEWAY, EPOCH) is trusted
    assert r.cipher(GATEWAY, OTHER, EPOCH) is pending


def test_keyring_replace_keys_drops_changed_and_removed() -> None:
    r = ring()
    old = authenticate(r, EPOCH)
    r.replace_keys({CLIENT: bytes(16)})
    fresh = r.cipher(CLIENT, GATEWAY, EPOCH)
    assert fresh is not old and fresh is not None
    assert fresh.open(GOLDEN_PACKET) is None
    r.replace_keys({})
    assert r.cipher(CLIENT, GATEWAY, EPOCH) is None
    assert r.cached_ciphers == 0


def test_keyring_replace_keys_drops_the_ciphers_of_a_removed_smaller_id() -> None:
    """1.1 leaves the secrets: its pair with 1.2 is under 1.2's key (unchanged), yet nothing
    of 1.1 is kept (the ring held one cipher per reload-removed peer and epoch before)."""
    keys = {CLIENT: PAIR_KEY, OTHER: bytes(range(32)), GATEWAY: bytes(32)}
    r = KeyRing(GROUP, keys)
    to_gateway = r.cipher(OTHER, GATEWAY, EPOCH)
    kept = r.cipher(OTHER, CLIENT, EPOCH)
    r.replace_keys({CLIENT: PAIR_KEY, OTHER: bytes(range(32))})
    assert r.cached_ciphers == 1 and r.cipher(OTHER, CLIENT, EPOCH) is kept
    r.replace_keys(keys)  # added back: a cipher made afresh, from the same key
    again = r.cipher(OTHER, GATEWAY, EPOCH)
    assert again is not to_gateway and again is not None


def test_keyring_replace_keys_rejects_bad_key_and_keeps_old() -> None:
    r = ring()
    with pytest.raises(ValueError):
        r.replace_keys({CLIENT: bytes(3)})
    assert r.has_pair(CLIENT, GATEWAY) and r.has_pair(GATEWAY, OTHER)


def test_keyring_repr_hides_key_bytes() -> None:
    r = ring()
    authenticate(r, EPOCH)
    text = repr(r) + repr(r.cipher(CLIENT, GATEWAY, EPOCH))
    assert "16.1" in text
    for key in (PAIR_KEY, bytes(range(32)), GOLDEN_KEY):
        assert key.hex() not in text and repr(key) not in text
        assert key.hex()[:8] not in text
