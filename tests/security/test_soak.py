"""Soak: bounded load through real daemons, sampling RSS, open fds and queue depths.

Every 10 s: VmRSS and /proc/PID/fd of both daemons, and the delayed-copy queue depth from the
state dump. Asserted flat: RSS growth after warm-up under 8 MiB, fd count constant, queue depth
bounded. The 45-second version runs in the normal suite; the 10-minute one is ``slow``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.security.conftest import Lab, ns_run, open_fds, rss_kib


def soak(tmp_path: Path, seconds: float) -> None:
    extra = {"dup": {"policy": "all", "copies": 1, "delay_ms": 20}}
    with Lab(tmp_path, client_extra=extra) as lab:
        lab.start_all()
        lab.wait_tunnel()
        ns_run(lab.ns["s"], "iperf3", "-s", "-D", "-B", "10.17.1.1")
        stop = threading.Event()

        def load() -> None:  # bounded: 5 Mbit/s UDP in 10 s chunks, plus a ping
            while not stop.is_set():
                ns_run(lab.ns["c"], "iperf3", "-c", "10.17.1.1", "-u", "-b", "5M", "-t", "5",
                       check=False, timeout=30)

        worker = threading.Thread(target=load)
        worker.start()
        samples: list[tuple[int, int, int, int, int]] = []
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                time.sleep(10)
                c, s = lab.daemons["c"], lab.daemons["s"]
                queue = c.state()["dup_queue_depth"]
                samples.append((rss_kib(c.pid), rss_kib(s.pid), open_fds(c.pid), open_fds(s.pid), queue))
        finally:
            stop.set()
            worker.join()
        print("\nsoak samples (client RSS KiB, server RSS KiB, client fds, server fds, dup queue):")
        for row in samples:
            print("  ", row)
        assert lab.ping(5, 0.1) == (5, 5)
        warm = samples[1] if len(samples) > 2 else samples[0]
        for row in samples[1:]:
            assert row[0] - warm[0] < 8192 and row[1] - warm[1] < 8192, samples
            assert row[2] == warm[2] and row[3] == warm[3], samples
            assert row[4] <= 4096, samples


@pytest.mark.netns
def test_soak_45_seconds_memory_fds_and_queues_stay_flat(tmp_path: Path) -> None:
    soak(tmp_path, 45)


@pytest.mark.netns
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_soak_10_minutes_memory_fds_and_queues_stay_flat(tmp_path: Path) -> None:
    soak(tmp_path, 600)
