"""Slow clients are counted, and reported at most once per interval."""

from __future__ import annotations

from alpaca.slowclients import REPORT_INTERVAL, SlowClients


def test_slow_clients_the_first_close_is_reported_at_once() -> None:
    slow = SlowClients()
    assert slow.closed(100.0) == 1
    assert (slow.total, slow.unreported) == (1, 0)


def test_slow_clients_a_flood_is_one_report_per_interval() -> None:
    slow = SlowClients(interval=60.0)
    reports = [slow.closed(1000.0 + i * 0.5) for i in range(240)]  # two per second for 2 minutes
    assert [(i, n) for i, n in enumerate(reports) if n] == [(0, 1), (120, 120)]
    assert (slow.total, slow.unreported) == (240, 119)


def test_slow_clients_the_next_report_has_every_close_since_the_last() -> None:
    slow = SlowClients()
    slow.closed(0.0)
    for _ in range(7):
        assert slow.closed(10.0) == 0
    assert slow.closed(REPORT_INTERVAL) == 8
