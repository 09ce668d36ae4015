"""Clients too slow to send their request: counted, and reported at most once in a while.

The metrics endpoint and the control socket give each connection a deadline to send its whole
request; one that misses it is closed. A flood of such clients (a slowloris) must not write a
log line per connection, so :class:`SlowClients` counts them and says when a report is due:
at most once per :data:`REPORT_INTERVAL` seconds, with the count since the previous report.
It is sans-IO (the caller passes the time); :class:`SlowClientLog` is the gevent side both
servers use: it logs the report, also for closes that no later close brings to a report.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import gevent

log = logging.getLogger(__name__)

#: Seconds between two reports of slow clients, at least.
REPORT_INTERVAL = 300.0


class SlowClients:
    """Connections closed because their request did not arrive within the deadline.

    Attributes:
        total: connections closed so far.
        unreported: those not yet in a report (they go in the next one that is due).
        next_report: monotonic seconds from which the next report is due.
    """

    __slots__ = ("interval", "next_report", "total", "unreported")

    def __init__(self, interval: float = REPORT_INTERVAL) -> None:
        self.interval = interval
        self.total = 0
        self.unreported = 0
        self.next_report = float("-inf")

    def closed(self, now: float) -> int:
        """Count one connection closed at ``now`` (monotonic seconds).

        Returns:
            How many closes to report now (this one and those since the last report) when a
            report is due, else 0.
        """
        self.total += 1
        self.unreported += 1
        return self.due(now)

    def due(self, now: float) -> int:
        """The closes not yet reported, if a report is due at ``now`` (they count as reported
        then), else 0."""
        if not self.unreported or now < self.next_report:
            return 0
        self.next_report = now + self.interval
        count, self.unreported = self.unreported, 0
        return count


class SlowClientLog:
    """Counts slow clients (:class:`SlowClients`) and logs them, one warning ``closed`` (what
    was closed and why), the count, the total and ``deadline`` (seconds): at once when a report
    is due, else when it falls due (a timer greenlet, at most one at a time), so a burst that
    ends is reported in full however long no client comes."""

    def __init__(self, closed: str, deadline: float, interval: float = REPORT_INTERVAL) -> None:
        self.counter = SlowClients(interval)
        self.what, self.deadline = closed, deadline
        self._pending: Any = None

    @property
    def total(self) -> int:
        return self.counter.total

    @property
    def pending(self) -> bool:
        """Whether a report waits for its time."""
        return self._pending is not None

    def closed(self) -> None:
        """Count one connection closed now; report, or make sure the report comes when due."""
        now = time.monotonic()
        count = self.counter.closed(now)
        if count:
            self._report(count)
        elif self._pending is None:
            self._pending = gevent.spawn_later(self.counter.next_report - now, self._report_due)

    def _report_due(self) -> None:
        self._pending = None
        count = self.counter.due(time.monotonic())
        if count:
            self._report(count)

    def _report(self, count: int) -> None:
        log.warning("%s count=%d total=%d deadline_s=%g (reported at most every %g s)", self.what,
                    count, self.counter.total, self.deadline, self.counter.interval)

    def close(self) -> None:
        """Drop the pending report (the server stops)."""
        if self._pending is not None:
            self._pending.kill(block=False)
            self._pending = None
