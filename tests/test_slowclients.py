"""Slow clients are counted, and reported at most once per interval."""

from __future__ import annotations

import re

import gevent
import pytest

from alpaca.slowclients import REPORT_INTERVAL, SlowClientLog, SlowClients


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


def _reports(caplog: pytest.LogCaptureFixture) -> list[tuple[int, int]]:
    found = [re.search(r"count=(\d+) total=(\d+)", r.getMessage()) for r in caplog.records
             if r.getMessage().startswith("test closed: ")]
    return [(int(m[1]), int(m[2])) for m in found if m]


def test_slow_client_log_reports_a_burst_in_full_when_no_client_comes_after_it(
        caplog: pytest.LogCaptureFixture) -> None:
    """The closes after the first report waited for the next close past the interval: a burst
    of 50 that then stopped was logged as count=1 (49 never)."""
    log = SlowClientLog("test closed: too late", 2.0, interval=0.2)
    for _ in range(50):
        log.closed()
    assert _reports(caplog) == [(1, 1)]
    gevent.sleep(0.3)
    assert _reports(caplog) == [(1, 1), (49, 50)]
    gevent.sleep(0.25)
    log.closed()  # an interval after the last report: at once
    assert _reports(caplog) == [(1, 1), (49, 50), (1, 51)]
    assert "deadline_s=2 " in caplog.records[-1].getMessage()


def test_slow_client_log_close_drops_the_pending_report(caplog: pytest.LogCaptureFixture) -> None:
    log = SlowClientLog("test closed: too late", 2.0, interval=0.1)
    log.closed()
    log.closed()
    log.close()
    gevent.sleep(0.2)
    assert _reports(caplog) == [(1, 1)]
