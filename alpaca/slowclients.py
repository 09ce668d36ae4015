"""Clients too slow to send their request: counted, and reported at most once in a while.

The metrics endpoint and the control socket give each connection a deadline to send its whole
request; one that misses it is closed. A flood of such clients (a slowloris) must not write a
log line per connection, so :class:`SlowClients` counts them and says when a report is due:
at most once per :data:`REPORT_INTERVAL` seconds, with the count since the previous report.
Sans-IO: the caller passes the time and writes the log line.
"""

from __future__ import annotations

#: Seconds between two reports of slow clients, at least.
REPORT_INTERVAL = 300.0


class SlowClients:
    """Connections closed because their request did not arrive within the deadline.

    Attributes:
        total: connections closed so far.
        unreported: those not yet in a report (they go in the next one that is due).
    """

    __slots__ = ("_next_report", "interval", "total", "unreported")

    def __init__(self, interval: float = REPORT_INTERVAL) -> None:
        self.interval = interval
        self.total = 0
        self.unreported = 0
        self._next_report = float("-inf")

    def closed(self, now: float) -> int:
        """Count one connection closed at ``now`` (monotonic seconds).

        Returns:
            How many closes to report now (this one and those since the last report) when a
            report is due, else 0.
        """
        self.total += 1
        self.unreported += 1
        if now < self._next_report:
            return 0
        self._next_report = now + self.interval
        count, self.unreported = self.unreported, 0
        return count
