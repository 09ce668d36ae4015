"""The only places the daemon reads a clock.

The core never reads time: the shell calls :func:`monotonic` and passes ``now`` down. Tests
of the shell inject their own clock where a driver accepts one (``DeadlineTimer(clock=...)``).
"""

from __future__ import annotations

import time


def monotonic() -> float:
    """Monotonic seconds that go on through a suspend of the host (CLOCK_BOOTTIME): every
    deadline and ``now`` in the daemon. CLOCK_MONOTONIC stops while the host sleeps, and a
    peer's clock does not: after an hour's suspend a 6.1.2 peer's timestamps looked an hour
    ahead of the time passed (taken for replays, everything it sent dropped for 30 s), and
    paths silent for an hour looked fresh."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def wall() -> float:
    """Wall-clock seconds since the Unix epoch: only for the session epoch and for logs."""
    return time.time()
