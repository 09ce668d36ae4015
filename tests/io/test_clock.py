"""The daemon's clock counts through a suspend of the host."""

from __future__ import annotations

import time

import pytest

from alpaca.io import clock


def test_clock_is_boottime_not_monotonic(monkeypatch: pytest.MonkeyPatch) -> None:
    """CLOCK_MONOTONIC stops while the host sleeps and a peer's clock does not: after our
    host slept an hour, a 6.1.2 peer's timestamps were an hour ahead of the time we had seen
    pass (taken for replays: all it sent dropped for 30 s). CLOCK_BOOTTIME counts the sleep.
    A machine that never slept reads the same on both, so the clock asked for is what is
    checked: a host that slept 3600 s reads 3600 s more on it."""
    read = time.clock_gettime
    asked: list[int] = []

    def slept_an_hour(clock_id: int) -> float:
        asked.append(clock_id)
        return read(clock_id) + (3600.0 if clock_id == time.CLOCK_BOOTTIME else 0.0)

    monkeypatch.setattr(time, "clock_gettime", slept_an_hour)
    assert clock.monotonic() - time.monotonic() >= 3599.0
    assert time.CLOCK_BOOTTIME in asked
