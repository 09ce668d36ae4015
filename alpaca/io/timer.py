"""DeadlineTimer: one greenlet that calls ``callback(now)`` when the engine's deadline comes.

The daemon re-arms it after every batch with ``engine.next_deadline()`` (aioquic's
``transmit()``: run the actions, then re-arm one timer). So :meth:`DeadlineTimer.arm` must be
O(1) and cheap: it stores the deadline and wakes the greenlet only when the new deadline is
earlier than the one it sleeps until. A later deadline costs nothing now; the greenlet wakes
at the old time, sees the new one and sleeps again.

Theory of operation: the greenlet loops on ``Event.wait(deadline - now)``. ``arm`` with an
earlier deadline sets the event; the greenlet wakes, recomputes, and either fires or sleeps.
Firing clears the deadline first (the timer is one-shot), so a callback that re-arms keeps
its new deadline.

Greenlet contract: arm() from any greenlet of the same hub. Exceptions from the callback end
the timer's greenlet with that exception (so the daemon's link_exception sees them).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event

from alpaca.io.clock import monotonic


class DeadlineTimer:
    """A re-armable one-shot deadline served by one greenlet.

    Args:
        callback: called as ``callback(now)`` with ``now >= deadline`` (monotonic seconds).
        clock: the time source, monotonic seconds.
    """

    def __init__(
        self, callback: Callable[[float], None], *, clock: Callable[[], float] = monotonic
    ) -> None:
        self._callback = callback
        self._clock = clock
        self._deadline: float | None = None
        #: The deadline the greenlet sleeps until (inf: idle; -inf: awake, will re-read).
        self._until = -math.inf
        self._wake = Event()
        self._greenlet: Any = None

    @property
    def deadline(self) -> float | None:
        """The armed deadline in monotonic seconds, or None when idle."""
        return self._deadline

    def arm(self, deadline: float | None) -> None:
        """Set the deadline (earlier or later than before); None disarms. O(1)."""
        self._deadline = deadline
        if deadline is not None and deadline < self._until:
            self._until = deadline  # one wake-up is enough, however often arm() is called
            self._wake.set()

    def run(self) -> None:
        """The timer loop, forever. Use start(), or spawn it in the daemon's group."""
        wake, clock = self._wake, self._clock
        while True:
            wake.clear()
            deadline = self._deadline
            if deadline is None:
                self._until = math.inf
                wake.wait()
                continue
            now = clock()
            if now < deadline:
                self._until = deadline
                wake.wait(deadline - now)
                continue
            self._until = -math.inf
            self._deadline = None
            self._callback(now)

    def start(self) -> gevent.Greenlet:
        """Spawn the timer greenlet and return it (for link_exception). Idempotent."""
        if self._greenlet is None or self._greenlet.dead:
            self._until = -math.inf
            self._greenlet = gevent.spawn(self.run)
        return self._greenlet

    def stop(self, timeout: float = 1.0) -> None:
        """Kill the timer greenlet and wait up to ``timeout`` seconds for it to end."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=timeout)
        self._until = -math.inf
