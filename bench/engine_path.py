"""Per-packet cost of the engine alone (no sockets, no TUN): send path and receive path.

Prints µs per packet for a one-path and a two-path peer, beside a baseline that does only the
unavoidable work (one AES-GCM seal or open of the same size) measured in the same run.
Run: .venv/bin/python bench/engine_path.py
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from alpaca.core.engine import Engine
from alpaca.core.settings import DupPolicy, EngineSettings, PeerSpec
from tests.enginenet import NET, ipv4, pid, tunnel_ip

N = 100_000


class Sink:
    def __init__(self) -> None:
        self.last = b""
        self.sent = self.written = 0

    def send(self, port: int, addr: tuple[str, int], data: bytes) -> bool:
        self.last = data
        self.sent += 1
        return True

    def write_tun(self, packet: bytes, csum_partial: bool = False) -> bool:
        self.written += 1
        return True


def engines(paths: int, more_peers: int = 0) -> tuple[Engine, Engine, Sink, Sink]:
    """A client and a server, the server configured with ``more_peers`` other clients too."""
    keys = {pid("1.1"): os.urandom(32), pid("16.1"): os.urandom(32)}
    keys.update({0x2000 + i: os.urandom(32) for i in range(more_peers)})
    peers = {p: PeerSpec(p, k, ("10.0.0.1", 5000) if p == pid("1.1") else None) for p, k in keys.items()}
    ports = tuple(f"p{i}" for i in range(paths))
    common = dict(net=NET, group="g", peers=peers, ports=ports, dup_policy=DupPolicy.NONE)
    cs, ss = Sink(), Sink()
    client = Engine(EngineSettings(self_id=pid("16.1"), gateway=pid("1.1"), **common),  # type: ignore[arg-type]
                    cs, epoch=1, random_bytes=os.urandom, resolver=lambda d, s: "10.17.1.1")
    server = Engine(EngineSettings(self_id=pid("1.1"), **common), ss, epoch=2,  # type: ignore[arg-type]
                    random_bytes=os.urandom)
    for p in client.peers[pid("1.1")].paths.static:
        p.up = True
        p.last_ok_at = 1e12
    return client, server, cs, ss


def per_packet(fn: object, n: int = N) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    packet = ipv4(tunnel_ip(pid("16.1")), "8.8.8.8", payload=b"x" * 1372)
    aead = AESGCM(os.urandom(32))
    nonce, aad = os.urandom(12), os.urandom(18)
    sealed = aead.encrypt(nonce, packet, aad)
    base_seal = per_packet(lambda: aead.encrypt(nonce, packet, aad))
    base_open = per_packet(lambda: aead.decrypt(nonce, sealed, aad))
    print(f"{'row':52} {'µs/pkt':>8} {'x baseline':>10}")
    print(f"{'baseline: AES-GCM seal 1400 B':52} {base_seal:8.2f}")
    print(f"{'baseline: AES-GCM open 1400 B':52} {base_open:8.2f}")
    for paths, more in ((1, 0), (2, 0), (1, 10_000)):
        client, server, cs, ss = engines(paths, more)
        label = f"{paths} path(s)" + (f", {more:,} more peers" if more else "")
        t = per_packet(lambda c=client: c.on_tun_packet(packet, 1.0))
        print(f"{f'engine send, {label}':52} {t:8.2f} {t / base_seal:10.1f}")
        datagrams = []
        for _ in range(N + 1):
            client.on_tun_packet(packet, 1.0)
            datagrams.append(cs.last)
        server.on_datagram(datagrams[0], ("10.9.0.1", 6000), 0, 1.0)  # the flow, not yet verified:
        server.verify(pid("16.1"), 0)  # as if the client had answered the server's challenge
        for path in server.peers[pid("16.1")].paths.learned.values():  # and its probe: the
            path.confirmed = path.up = True  # learned path carries traffic (no probing per packet)
        it = iter(datagrams[1:])
        t = per_packet(lambda s=server, i=it: s.on_datagram(next(i), ("10.9.0.1", 6000), 0, 1.0))
        if ss.written != N:
            raise SystemExit(f"delivered {ss.written} of {N}: {server.stats.drop_counts()}")
        print(f"{f'engine receive (deliver), {label}':52} {t:8.2f} {t / base_open:10.1f}")


if __name__ == "__main__":
    main()
