"""A userspace UDP delay line, for kernels without ``tc netem``.

Runs inside one namespace (``python -m alpaca.lab.delayrelay --port P --delay-ms D``). An
nftables ``tproxy`` rule (set up by :mod:`alpaca.lab.impair`) hands it every UDP datagram that
arrives on the impaired interface for a local address. The relay keeps each datagram in a heap
until it is due, then delivers it to its original destination **from its original source
address and port** (an ``IP_TRANSPARENT`` socket bound to that source), so the receiver sees
exactly what the wire would have delivered, only later. Jitter draws each delay uniformly from
``delay ± jitter``; a datagram never leaves before an earlier one is due (no reordering).

Only plain ``select``: one process, no threads. Queue bounded by ``--max-queue`` datagrams
(extra ones are dropped, like a full interface queue).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import random
import select
import signal
import socket
import struct
import sys
import time

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IP_RECVORIGDSTADDR = getattr(socket, "IP_RECVORIGDSTADDR", 20)
SOL_IP = getattr(socket, "SOL_IP", 0)
_SENDERS_MAX = 256

Addr = tuple[str, int]


def _transparent_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(SOL_IP, IP_TRANSPARENT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _orig_dst(ancdata: list[tuple[int, int, bytes]]) -> Addr | None:
    for level, kind, data in ancdata:
        if level == SOL_IP and kind == IP_RECVORIGDSTADDR and len(data) >= 8:
            port = struct.unpack_from("!H", data, 2)[0]
            return socket.inet_ntoa(data[4:8]), port
    return None


class DelayLine:
    """The heap of datagrams waiting; ``now`` is always passed in (monotonic seconds)."""

    def __init__(self, delay: float, jitter: float, max_queue: int, rng: random.Random) -> None:
        self.delay, self.jitter, self.max_queue, self.rng = delay, jitter, max_queue, rng
        self.heap: list[tuple[float, int, bytes, Addr, Addr]] = []
        self.seq = 0
        self.last_due_at = 0.0
        self.dropped = 0

    def push(self, data: bytes, src: Addr, dst: Addr, now: float) -> None:
        if len(self.heap) >= self.max_queue:
            self.dropped += 1
            return
        delay = self.delay + self.rng.uniform(-self.jitter, self.jitter) if self.jitter else self.delay
        due_at = max(now + max(delay, 0.0), self.last_due_at)
        self.last_due_at = due_at
        self.seq += 1
        heapq.heappush(self.heap, (due_at, self.seq, data, src, dst))

    def pop_due(self, now: float) -> list[tuple[bytes, Addr, Addr]]:
        out = []
        while self.heap and self.heap[0][0] <= now:
            _, _, data, src, dst = heapq.heappop(self.heap)
            out.append((data, src, dst))
        return out

    def timeout(self, now: float) -> float | None:
        return max(self.heap[0][0] - now, 0.0) if self.heap else None


def serve(port: int, delay: float, jitter: float, max_queue: int) -> None:
    """Receive on ``port`` (tproxy target) and deliver each datagram once it is due."""
    listener = _transparent_socket()
    listener.setsockopt(SOL_IP, IP_RECVORIGDSTADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    listener.bind(("0.0.0.0", port))
    line = DelayLine(delay, jitter, max_queue, random.Random())
    senders: dict[Addr, socket.socket] = {}
    while True:
        readable, _, _ = select.select([listener], [], [], line.timeout(time.monotonic()))
        now = time.monotonic()
        if readable:
            for _ in range(64):
                try:
                    data, anc, _flags, src = listener.recvmsg(65535, 64, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                dst = _orig_dst(anc)
                if dst is not None:
                    line.push(data, src, dst, now)
        for data, src, dst in line.pop_due(time.monotonic()):
            _sender(senders, src).sendto(data, dst)


def _sender(senders: dict[Addr, socket.socket], src: Addr) -> socket.socket:
    sock = senders.get(src)
    if sock is None:
        if len(senders) >= _SENDERS_MAX:
            for old in senders.values():
                old.close()
            senders.clear()
        sock = _transparent_socket()
        sock.bind(src)
        senders[src] = sock
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True, help="local tproxy port")
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--max-queue", type=int, default=10000, help="datagrams (default 10000)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.port, args.delay_ms / 1000, args.jitter_ms / 1000, args.max_queue)
    return 0


if __name__ == "__main__":
    sys.exit(main())
