"""Micro-benchmarks of the data-packet hot path (a script, not a test): prints a table.

Usage: .venv/bin/python bench/micro.py [--quick]

Rows are microseconds per operation (best of several repeats of timeit; rows that need a
closure include its call overhead). The whole receive
path is what the engine does per datagram before routing: header decode, cipher look-up in
the KeyRing, AEAD open, replay-window accept. Target: under 5 us for 1400-byte packets.
The timer-tick rows compare a server with 10 and with 10,000 idle peers: the tick's cost
should not grow with peers nobody talks to.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alpaca.core import header
from alpaca.core.crypto import KeyRing
from alpaca.core.header import Header
from alpaca.core.replay import ReplayWindow

GROUP = "caonima"
CLIENT, GATEWAY = 0x1001, 0x0101
EPOCH = 1_700_000_000


def per_op_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best-of-``repeat`` microseconds per call of ``fn``."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def sealed_stream(ring: KeyRing, size: int, count: int) -> list[bytes]:
    cipher = ring.cipher(CLIENT, GATEWAY, EPOCH)
    assert cipher is not None
    body = bytes(size)
    return [
        cipher.seal(header.encode(Header(0, 0, 15, 0, CLIENT, GATEWAY, EPOCH, n)), body)
        for n in range(count)
    ]


class Receiver:
    """Receives the datagrams of ``stream`` in turn (cycling, with a fresh window per lap)."""

    def __init__(self, ring: KeyRing, stream: list[bytes]) -> None:
        self.ring, self.stream, self.i, self.window = ring, stream, 0, ReplayWindow()

    def __call__(self) -> object:
        if self.i == len(self.stream):
            self.i, self.window = 0, ReplayWindow()
        datagram = self.stream[self.i]
        self.i += 1
        h = header.decode(datagram)
        c = self.ring.cipher(h.src, h.dst, h.epoch)
        assert c is not None
        plaintext = c.open(datagram)
        assert plaintext is not None
        return self.window.accept(h.counter)


def rows(number: int, repeat: int) -> list[tuple[str, float]]:
    ring = KeyRing(GROUP, {CLIENT: os.urandom(16)})
    cipher = ring.cipher(CLIENT, GATEWAY, EPOCH)
    assert cipher is not None
    hdr = header.encode(Header(0, 0, 15, 0, CLIENT, GATEWAY, EPOCH, 1))
    out: list[tuple[str, float]] = [
        ("header decode", per_op_us(partial(header.decode, hdr), number, repeat)),
    ]
    for size in (64, 1400):
        body = bytes(size)
        datagram = cipher.seal(hdr, body)
        out.append((f"seal {size} B", per_op_us(partial(cipher.seal, hdr, body), number, repeat)))
        out.append((f"open {size} B", per_op_us(partial(cipher.open, datagram), number, repeat)))
    window = ReplayWindow()
    counter = iter(range(10**9))
    out.append(("window accept (in order)",
                per_op_us(lambda: window.accept(next(counter)), number, repeat)))
    dup = ReplayWindow()
    dup.accept(1000)
    out.append(("window accept (duplicate)", per_op_us(lambda: dup.accept(1000), number, repeat)))
    for size in (64, 1400):
        stream = sealed_stream(ring, size, 4096)
        ring.cipher(CLIENT, GATEWAY, EPOCH)  # trusted after the first authenticated open
        out.append((f"receive path {size} B",
                    per_op_us(Receiver(ring, stream), number, repeat)))
    out.append(forged_epoch_row(ring, max(number // 20, 100), repeat))
    out.append(timer_arm_row(number, repeat))
    out.extend(timer_tick_row(peers, max(number // 100, 200), repeat) for peers in (10, 10_000))
    if importlib.util.find_spec("Crypto") is not None:
        out.append(pycryptodome_row(number, repeat))
    return out


def timer_arm_row(number: int, repeat: int) -> tuple[str, float]:
    """DeadlineTimer.arm() with the deadline moving earlier and later (after every batch)."""
    from alpaca.io.clock import monotonic
    from alpaca.io.timer import DeadlineTimer

    timer = DeadlineTimer(lambda now: None)  # not started: arm() alone
    base, step = monotonic() + 60.0, iter(range(10**9))
    return ("timer arm (deadline moving)",
            per_op_us(lambda: timer.arm(base + (next(step) % 7) * 0.001), number, repeat))


def timer_tick_row(peers: int, number: int, repeat: int) -> tuple[str, float]:
    """Engine.on_timer every 0.25 s of engine time (a probe round every 4th) on a server with
    ``peers`` clients configured, none of them heard from: what the packet path waits for
    at each tick. Per-tick cost should not grow with the number of idle peers."""
    from alpaca.core.engine import Engine
    from alpaca.core.settings import EngineSettings, PeerSpec

    class Discard:
        def send(self, port: int, addr: tuple[str, int], data: bytes) -> bool:
            return True

        def write_tun(self, packet: bytes, csum_partial: bool = False) -> bool:
            return True

    ids = [GATEWAY] + [(16 + k // 254) << 8 | (1 + k % 254) for k in range(peers)]
    specs = {i: PeerSpec(i, os.urandom(32)) for i in ids}
    engine = Engine(EngineSettings(self_id=GATEWAY, net=0x0A110000, group=GROUP, peers=specs),
                    Discard(), epoch=EPOCH, random_bytes=os.urandom)
    ticks = iter(range(1, 10**9))
    engine.on_timer(0.0)
    return (f"timer tick, {peers:,} idle peers",
            per_op_us(lambda: engine.on_timer(0.25 * next(ticks)), number, repeat))


def forged_epoch_row(ring: KeyRing, number: int, repeat: int) -> tuple[str, float]:
    """A datagram with a never-seen epoch: HKDF + AESGCM construction + failed open."""
    epochs = iter(range(1, 10**9))
    junk = bytes(64)

    def forged() -> object:
        c = ring.cipher(CLIENT, GATEWAY, next(epochs))
        assert c is not None
        return c.open(junk)

    return ("forged epoch (HKDF + failed open)", per_op_us(forged, number, repeat))


def pycryptodome_row(number: int, repeat: int) -> tuple[str, float]:
    """For comparison only: pycryptodome AES-GCM decrypt_and_verify of 1400 bytes."""
    from Crypto.Cipher import AES  # type: ignore[import-not-found]  # optional, no stubs

    key, nonce, body = bytes(32), bytes(12), bytes(1400)
    ct, tag = AES.new(key, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(body)

    def run() -> object:
        return AES.new(key, AES.MODE_GCM, nonce=nonce).decrypt_and_verify(ct, tag)

    return ("pycryptodome open 1400 B", per_op_us(run, number, repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    number, repeat = (5_000, 3) if args.quick else (50_000, 5)
    print(f"python {sys.version.split()[0]}, {number} calls x best of {repeat}")
    print(f"{'operation':<36}{'us/op':>8}")
    print("-" * 44)
    for name, micros in rows(number, repeat):
        print(f"{name:<36}{micros:>8.2f}")


if __name__ == "__main__":
    main()
