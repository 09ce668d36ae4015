"""The only places the daemon reads a clock.

The core never reads time: the shell calls :func:`monotonic` and passes ``now`` down. Tests
of the shell inject their own clock where a driver accepts one (``DeadlineTimer(clock=...)``).
"""

from __future__ import annotations

import time


def monotonic() -> float:
    """Monotonic seconds (CLOCK_MONOTONIC): every deadline and ``now`` in the daemon."""
    return time.monotonic()


def wall() -> float:
    """Wall-clock seconds since the Unix epoch: only for the session epoch and for logs."""
    return time.time()
