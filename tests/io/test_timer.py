"""DeadlineTimer: firing, re-arming in both directions, disarming, errors."""

from __future__ import annotations

from collections.abc import Iterator

import gevent
import pytest

from alpaca.io.clock import monotonic
from alpaca.io.timer import DeadlineTimer
from tests.io import live_greenlets


class Recorder:
    def __init__(self) -> None:
        self.fired: list[float] = []

    def __call__(self, now: float) -> None:
        self.fired.append(now)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def timer(rec: Recorder) -> Iterator[DeadlineTimer]:
    t = DeadlineTimer(rec)
    t.start()
    yield t
    t.stop()
    assert live_greenlets() == []


def test_timer_fires_once_at_deadline(timer: DeadlineTimer, rec: Recorder) -> None:
    deadline = monotonic() + 0.03
    timer.arm(deadline)
    gevent.sleep(0.15)
    assert len(rec.fired) == 1
    assert rec.fired[0] >= deadline
    assert timer.deadline is None


def test_timer_rearm_earlier_wakes_sooner(timer: DeadlineTimer, rec: Recorder) -> None:
    start = monotonic()
    timer.arm(start + 10.0)
    gevent.sleep(0)
    timer.arm(start + 0.02)
    with gevent.Timeout(1):
        while not rec.fired:
            gevent.sleep(0.005)
    assert start + 0.02 <= rec.fired[0] < start + 0.5


def test_timer_rearm_later_postpones(timer: DeadlineTimer, rec: Recorder) -> None:
    start = monotonic()
    timer.arm(start + 0.02)
    gevent.sleep(0)
    timer.arm(start + 0.15)
    gevent.sleep(0.08)
    assert rec.fired == []
    gevent.sleep(0.2)
    assert len(rec.fired) == 1
    assert rec.fired[0] >= start + 0.15


def test_timer_arm_none_disarms(timer: DeadlineTimer, rec: Recorder) -> None:
    timer.arm(monotonic() + 0.02)
    gevent.sleep(0)
    timer.arm(None)
    gevent.sleep(0.08)
    assert rec.fired == []
    assert timer.deadline is None


def test_timer_callback_rearms_and_fires_in_order() -> None:
    start = monotonic()
    plan = [start + d for d in (0.01, 0.02, 0.04, 0.05)]
    fired: list[float] = []
    timer: DeadlineTimer

    def callback(now: float) -> None:
        fired.append(now)
        if len(fired) < len(plan):
            timer.arm(plan[len(fired)])

    timer = DeadlineTimer(callback)
    timer.arm(plan[0])
    timer.start()
    gevent.sleep(0.2)
    timer.stop()
    assert len(fired) == len(plan)
    assert fired == sorted(fired)
    assert all(now >= due for now, due in zip(fired, plan, strict=True))


def test_timer_past_deadline_fires_with_injected_clock() -> None:
    fired: list[float] = []
    timer = DeadlineTimer(fired.append, clock=lambda: 100.0)
    timer.arm(42.0)
    timer.start()
    gevent.sleep(0)
    timer.stop()
    assert fired == [100.0]


def test_timer_callback_exception_ends_greenlet() -> None:
    def boom(now: float) -> None:
        raise ValueError("boom")

    timer = DeadlineTimer(boom)
    seen: list[BaseException] = []
    greenlet = timer.start()
    greenlet.link_exception(lambda g: seen.append(g.exception))
    timer.arm(monotonic())
    greenlet.join(timeout=1)
    gevent.sleep(0)
    assert isinstance(greenlet.exception, ValueError)
    assert len(seen) == 1
    timer.stop()


def test_timer_start_is_idempotent_and_stop_leaves_no_greenlet() -> None:
    timer = DeadlineTimer(lambda now: None)
    first = timer.start()
    assert timer.start() is first
    timer.arm(monotonic() + 60)
    timer.stop()
    timer.stop()
    assert first.dead
    assert live_greenlets() == []


def test_timer_armed_again_and_again_never_fires_early(timer: DeadlineTimer, rec: Recorder) -> None:
    """arm() runs after every packet batch, with the deadline moving earlier and later:
    100,000 of them, all 60 s ahead, with the greenlet running between, fire nothing."""
    base = monotonic() + 60.0
    for i in range(100_000):
        timer.arm(base + (i % 7) * 0.001)
        if i % 32 == 0:
            gevent.sleep(0)  # let the greenlet run, as between real batches
    gevent.sleep(0.01)
    assert rec.fired == []
