"""Delayed extra copies (duplicate-send) behind one timer.

Theory of operation: when the engine sends a packet that the policy selects, it also schedules
``copies`` extra copies, copy i due ``i * delay`` seconds later, each over a path chosen to
differ from the first copy's when one exists. The copies wait in one heap ordered by due time;
the shell arms a single timer to :meth:`DupSendScheduler.next_deadline` and calls
:meth:`pop_due` when it fires. There is never a greenlet or timer per packet. The heap is
bounded: when it is full a new copy is refused (the engine counts it). A copy whose path has
gone down by its due time while its peer has a live path stays home (Engine.on_timer).

A copy is byte-identical to the original except for the hop bytes (TTL, path index), so the
receiver's replay window recognises it and keeps whichever copy arrives first.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(order=True, slots=True)
class DelayedCopy:
    """One scheduled copy. ``path`` is the engine's path object it goes out on, ``acct`` the
    one whose path index it carries (for per-path counters)."""

    due_at: float
    seq: int
    port: int = field(compare=False)
    addr: tuple[str, int] = field(compare=False)
    data: bytes = field(compare=False)
    path: Any = field(compare=False, default=None)
    acct: Any = field(compare=False, default=None)


class DupSendScheduler:
    """A bounded heap of DelayedCopy. Owned by the Engine; not thread-safe."""

    def __init__(self, limit: int) -> None:
        self._heap: list[DelayedCopy] = []
        #: copies the heap holds at most (a reload may change it; copies already queued stay)
        self.limit = limit
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(
        self, due_at: float, port: int, addr: tuple[str, int], data: bytes, path: Any = None,
        acct: Any = None,
    ) -> bool:
        """Queue a copy; False if the heap is at its bound."""
        if len(self._heap) >= self.limit:
            return False
        heapq.heappush(self._heap, DelayedCopy(due_at, next(self._seq), port, addr, data, path, acct))
        return True

    def next_deadline(self) -> float | None:
        """Due time of the earliest copy, or None when empty."""
        return self._heap[0].due_at if self._heap else None

    def pop_due(self, now: float) -> list[DelayedCopy]:
        """Remove and return every copy due at or before ``now``, earliest first."""
        due: list[DelayedCopy] = []
        while self._heap and self._heap[0].due_at <= now:
            due.append(heapq.heappop(self._heap))
        return due

    def cancel(self, stale: Callable[[DelayedCopy], bool]) -> int:
        """Drop the pending copies ``stale`` selects (a reload moved, removed or re-keyed their
        peer); returns how many."""
        kept = [copy for copy in self._heap if not stale(copy)]
        cancelled = len(self._heap) - len(kept)
        if cancelled:
            heapq.heapify(kept)
            self._heap = kept
        return cancelled
