"""Unauthenticated floods: the cost of rejecting one datagram, and a real daemon under a flood.

Figures are printed (run with ``-s``), not asserted: timings depend on the machine. What is
asserted: the daemon stays up, its memory stays flat, legitimate pings keep getting through,
and every flood datagram is counted as a drop.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from alpaca.core.header import HEADER
from tests.enginenet import EngineNet
from tests.security.conftest import SERVER_PORT, Lab, ns_run, rss_kib, udp_socket
from tests.security.test_forgery import network

FLOOD_SECONDS = 8.0


def _per_datagram_us(net: EngineNet, target: object, datagrams: list[bytes], rounds: int) -> float:
    engine = target.engine  # type: ignore[attr-defined]
    start = time.perf_counter()
    for _ in range(rounds):
        for data in datagrams:
            engine.on_datagram(data, ("10.66.0.1", 4444), 0, net.now)
    return (time.perf_counter() - start) / (rounds * len(datagrams)) * 1e6


def test_flood_rejection_cost_per_datagram_in_process() -> None:
    net, s, c1, _ = network()
    flow = s.engine.flows[(c1.peer_id, s.peer_id)]  # type: ignore[union-attr]
    junk = [os.urandom(200) for _ in range(256)]
    header = [HEADER.pack(0x20, 0, 15, 0, c1.peer_id, s.peer_id, flow.epoch, flow.window.top + 1 + i)
              + os.urandom(180) for i in range(256)]
    epochs = [HEADER.pack(0x20, 0, 15, 0, c1.peer_id, s.peer_id, flow.epoch + 1 + i, 0) + os.urandom(180)
              for i in range(4096)]
    figures = {
        "random bytes": _per_datagram_us(net, s, junk, 40),
        "valid-looking header, bad tag": _per_datagram_us(net, s, header, 40),
        "forged new epoch (HKDF + key setup)": _per_datagram_us(net, s, epochs, 1),
    }
    print()
    for name, us in figures.items():
        print(f"rejection cost: {name}: {us:.2f} us per datagram")
    drops = s.engine.stats.drop_counts()  # type: ignore[union-attr]
    assert drops["bad_tag"] == 256 * 40 + 4096
    assert s.engine.keys.cached_ciphers <= 64 + 16  # type: ignore[union-attr]


def _flood(ns: str, stop: threading.Event, counter: list[int], header: bytes) -> None:
    """Send as fast as one Python thread can: random datagrams, then valid-looking headers."""
    sock = udp_socket(ns)
    sock.setblocking(False)
    junk = [os.urandom(n) for n in (40, 200, 1400)]
    forged = [header[:12] + struct.pack("!Q", i) + os.urandom(300) for i in range(64)]
    n = 0
    while not stop.is_set():
        for data in (*junk, *forged):
            try:
                sock.sendto(data, ("10.99.2.2", SERVER_PORT))
                n += 1
            except BlockingIOError:
                time.sleep(0)
    counter.append(n)
    sock.close()


def _ping_ratio(lab: Lab, seconds: float) -> tuple[int, int]:
    return lab.ping(int(seconds / 0.05), 0.05)


@pytest.mark.netns
def test_flood_of_unauthenticated_datagrams_leaves_the_server_up_and_flat(tmp_path: Path) -> None:
    with Lab(tmp_path) as lab:
        lab.start_all()
        lab.wait_tunnel()
        server = lab.daemons["s"]
        base = _ping_ratio(lab, 3.0)
        iperf = ns_run(lab.ns["s"], "iperf3", "-s", "-D", "-1", "-B", "10.17.1.1", check=False)
        assert iperf.returncode == 0, iperf.stderr
        time.sleep(0.3)
        clean_bw = _iperf(lab)
        ns_run(lab.ns["s"], "iperf3", "-s", "-D", "-1", "-B", "10.17.1.1")
        time.sleep(0.3)
        rss_before = rss_kib(server.pid)
        stop, sent = threading.Event(), []
        header = HEADER.pack(0x20, 0, 15, 0, 0x1001, 0x0101, server.state()["epoch"] ^ 1, 0)
        senders = [threading.Thread(target=_flood, args=(lab.ns["r"], stop, sent, header)) for _ in range(2)]
        for t in senders:
            t.start()
        samples = []
        try:
            flooded_bw = _iperf(lab, seconds=3)
            start = time.monotonic()
            flooded = (0, 0)
            while time.monotonic() - start < FLOOD_SECONDS - 3:
                got = lab.ping(20, 0.05)
                flooded = (flooded[0] + got[0], flooded[1] + got[1])
                samples.append(rss_kib(server.pid))
        finally:
            stop.set()
            for t in senders:
                t.join()
        assert server.proc is not None and server.proc.poll() is None
        state = server.state()
        rejected = sum(n for reason, n in state["drops"].items()
                       if reason in ("bad_tag", "malformed", "old_epoch"))
        rss_after = rss_kib(server.pid)
        print(f"\nflood: {sum(sent)} datagrams in ~{FLOOD_SECONDS:.0f} s "
              f"({sum(sent) / FLOOD_SECONDS / 1000:.0f} kpps offered), server rejected {rejected}")
        print(f"ping without flood {base[1]}/{base[0]}, with flood {flooded[1]}/{flooded[0]}")
        print(f"iperf3 without flood {clean_bw:.0f} Mbit/s, with flood {flooded_bw:.0f} Mbit/s "
              f"(ratio {flooded_bw / clean_bw if clean_bw else 0:.2f})")
        print(f"server RSS {rss_before} KiB before, {rss_after} KiB after, samples {samples}")
        assert rejected > 0
        assert flooded[1] > 0, "no legitimate ping got through the flood"
        assert rss_after - rss_before < 8 * 1024, (rss_before, rss_after, samples)
        time.sleep(1.0)  # the socket backlog of the flood drains
        assert lab.ping(10, 0.1) == (10, 10)


def _iperf(lab: Lab, seconds: float = 2) -> float:
    """Mbit/s of one iperf3 run; 0 if it did not finish (under the flood it may not)."""
    try:
        out = ns_run(lab.ns["c"], "iperf3", "-c", "10.17.1.1", "-t", str(seconds), "-J", check=False,
                     timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        return 0.0
    try:
        return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e6
    except (KeyError, ValueError):
        return 0.0

