"""Fuzz invariants of the decoders (h11 style): peer bytes never raise out of the core.

The default profile is fast; ``HYPOTHESIS_PROFILE=long`` (``make fuzz``) runs many more
examples. The profile applies to the tests of this module only.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alpaca.core import crypto, header
from alpaca.core.constants import HEADER_LEN, MAX_DATAGRAM, Flag
from alpaca.core.crypto import DirectionCipher, KeyRing, derive_key
from alpaca.core.header import Header, MalformedPacket
from alpaca.core.padding import unpad
from alpaca.core.replay import ReplayWindow, Verdict

settings.register_profile("fuzz-fast", max_examples=200, deadline=None)
settings.register_profile(
    "long", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
_NAME = os.environ.get("HYPOTHESIS_PROFILE", "fuzz-fast")
FUZZ = settings(settings.get_profile("fuzz-fast" if _NAME == "default" else _NAME))

GROUP = "caonima"
CLIENT, GATEWAY = 0x1001, 0x0101
KEYS = {CLIENT: bytes(range(16)), 0x0102: bytes(range(32))}
EPOCH = 1_700_000_000

datagrams = st.binary(max_size=MAX_DATAGRAM)
_ids = st.sampled_from([CLIENT, GATEWAY, 0x0102, 0x2001])
#: Junk behind a plausible header (known peers, random epoch): reaches the key derivation.
plausible = st.builds(
    lambda h, body: header.encode(h) + body,
    st.builds(Header, ptype=st.integers(0, 15), flags=st.integers(0, 255),
              ttl=st.integers(0, 255), pi=st.integers(0, 255), src=_ids, dst=_ids,
              epoch=st.integers(0, 2**32 - 1), counter=st.integers(0, 2**64 - 1)),
    st.binary(max_size=100),
)


def valid_datagram(counter: int = 1, body: bytes = b"inner packet") -> bytes:
    c = DirectionCipher(derive_key(KEYS[CLIENT], GROUP, CLIENT, GATEWAY, EPOCH))
    h = Header(ptype=0, flags=0, ttl=15, pi=0, src=CLIENT, dst=GATEWAY, epoch=EPOCH,
               counter=counter)
    return c.seal(header.encode(h), body)


VALID = valid_datagram()
RECEIVER = DirectionCipher(derive_key(KEYS[CLIENT], GROUP, CLIENT, GATEWAY, EPOCH))


@FUZZ
@given(datagrams)
def test_fuzz_decode_returns_header_or_raises_malformed(data: bytes) -> None:
    try:
        h = header.decode(data)
    except MalformedPacket:
        assert len(data) < HEADER_LEN
    else:
        assert header.encode(h) == data[:HEADER_LEN]


@FUZZ
@given(datagrams)
def test_fuzz_open_random_bytes_returns_none(data: bytes) -> None:
    assert RECEIVER.open(data) is None


@FUZZ
@given(st.data())
def test_fuzz_open_mutated_valid_datagram(data: st.DataObject) -> None:
    """Any change outside the hop bytes 2-3 (flip, truncation, extension) is rejected."""
    mutated = bytearray(VALID)
    for index in data.draw(st.sets(st.integers(0, len(VALID) - 1), min_size=1, max_size=4)):
        mutated[index] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(VALID)))
    tail = data.draw(st.binary(max_size=8))
    candidate = bytes(mutated[:cut]) + tail
    outside_hop = [i for i in range(len(VALID)) if i not in (2, 3)]
    unchanged = len(candidate) == len(VALID) and all(candidate[i] == VALID[i] for i in outside_hop)
    opened = RECEIVER.open(candidate)
    assert (opened == b"inner packet") if unchanged else (opened is None)


@FUZZ
@given(st.lists(datagrams | plausible, max_size=50))
def test_fuzz_receive_path_changes_no_keyring_state(flood: list[bytes]) -> None:
    """Junk through decode -> KeyRing.cipher -> open: only the bounded pending FIFO moves."""
    ring = KeyRing(GROUP, KEYS)
    real = ring.cipher(CLIENT, GATEWAY, EPOCH)
    assert real is not None and real.open(VALID) is not None
    assert ring.cipher(CLIENT, GATEWAY, EPOCH) is real  # now trusted
    for data in flood:
        try:
            h = header.decode(data)
        except MalformedPacket:
            continue
        c = ring.cipher(h.src, h.dst, h.epoch)
        if c is not None:
            assert c.open(data) is None
    assert ring.cipher(CLIENT, GATEWAY, EPOCH) is real
    assert ring.cached_ciphers <= 1 + crypto.PENDING_MAX
    assert ring.has_pair(CLIENT, GATEWAY) and not ring.has_pair(0x2001, GATEWAY)


@FUZZ
@given(datagrams, st.integers(0, 255))
def test_fuzz_unpad_never_raises(data: bytes, flags: int) -> None:
    out = unpad(data, flags)
    if not flags & Flag.PADDED:
        assert out == data
    elif out is not None:
        assert data.startswith(out) and len(out) <= len(data) - 2


@FUZZ
@given(st.lists(st.integers(0, 2**64 - 1), max_size=100))
def test_fuzz_replay_any_counters(counters: list[int]) -> None:
    window = ReplayWindow(128)
    for counter in counters:
        assert window.accept(counter) in Verdict
    assert window.accepted + window.duplicate + window.too_old == len(counters)
    assert 0.0 <= window.occupancy <= 1.0
