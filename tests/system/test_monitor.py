"""RouteMonitor (gevent) and reconcile(), in namespaces."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import gevent
import pytest

from alpaca.system import monitor
from alpaca.system.routes import ExpectedRoute
from tests.helpers import netns, nsexec
from tests.system import client_ns

pytestmark = pytest.mark.netns


def test_monitor_ipv6_rule_group_bit() -> None:
    assert monitor.RTMGRP_IPV6_RULE == 0x40000
    assert monitor.GROUPS & monitor.RTMGRP_IPV4_RULE


def wait_for(pred: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        gevent.sleep(0.02)
    return False


CHANGES = {
    "ipv4 route": ("ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.254"),
    "ipv4 rule": ("ip", "rule", "add", "from", "10.9.0.0/16", "table", "100"),
    "ipv6 rule": ("ip", "-6", "rule", "add", "from", "2001:db8::/32", "table", "100"),
    "address": ("ip", "addr", "add", "192.0.2.50/24", "dev", "up0"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_monitor_change_triggers_on_change(change: str) -> None:
    with netns() as ns:
        client_ns(ns, tun=False)
        calls: list[float] = []
        with monitor.RouteMonitor(ns) as mon:
            mon.drain()
            worker = gevent.spawn(mon.run, lambda: calls.append(time.monotonic()), 0.05)
            try:
                gevent.sleep(0.05)
                assert not calls
                nsexec(ns, *CHANGES[change])
                assert wait_for(lambda: bool(calls)), change
            finally:
                worker.kill()


def test_monitor_debounces_bursts() -> None:
    with netns() as ns:
        client_ns(ns, tun=False)
        calls: list[float] = []
        with monitor.RouteMonitor(ns) as mon:
            worker = gevent.spawn(mon.run, lambda: calls.append(time.monotonic()), 0.5)
            try:
                gevent.sleep(0.05)
                for i in range(20):
                    nsexec(ns, "ip", "route", "add", f"198.51.{i}.0/24", "via", "192.0.2.254")
                assert wait_for(lambda: len(calls) >= 1)
                gevent.sleep(1.2)
                assert 1 <= len(calls) <= 3
                gaps = [b - a for a, b in itertools.pairwise(calls)]
                assert all(gap >= 0.45 for gap in gaps)
            finally:
                worker.kill()


def test_monitor_a_default_route_added_to_main_is_not_debounced() -> None:
    """A DHCP renew: an address change, then a default route in main. The default takes
    traffic out of the tunnel until it is moved, so it is handled within the urgent
    debounce, not the 1 s one (it stayed up to 1 s)."""
    with netns() as ns:
        client_ns(ns, tun=False)
        nsexec(ns, "ip", "route", "flush", "table", "main", "default")
        calls: list[float] = []
        with monitor.RouteMonitor(ns) as mon:
            worker = gevent.spawn(mon.run, lambda: calls.append(time.monotonic()), 1.0)
            try:
                gevent.sleep(0.05)
                nsexec(ns, "ip", "addr", "change", "192.0.2.1/24", "dev", "up0", "valid_lft", "3600",
                       "preferred_lft", "3600")
                assert wait_for(lambda: len(calls) == 1)
                nsexec(ns, "ip", "route", "add", "198.51.100.0/24", "via", "192.0.2.254")
                gevent.sleep(0.1)  # that change waits out the 1 s debounce...
                added = time.monotonic()  # ...and the default route must not wait with it
                nsexec(ns, "ip", "route", "add", "default", "via", "192.0.2.254", "dev", "up0")
                assert wait_for(lambda: len(calls) == 2, timeout=2.0)
                assert calls[1] - added < 0.4, calls[1] - added
            finally:
                worker.kill()


def test_monitor_fileno_is_nonblocking_drain() -> None:
    with netns() as ns, monitor.RouteMonitor(ns) as mon:
        start = time.monotonic()
        assert mon.drain() == 0
        assert time.monotonic() - start < 0.5
        assert mon.fileno > 0


def test_monitor_reconcile_puts_back_a_vanished_route(caplog: pytest.LogCaptureFixture) -> None:
    with netns() as ns:
        client_ns(ns, tun=False)
        want = [ExpectedRoute("203.0.113.7/32", "192.0.2.254", "up0", 253)]
        assert [r.dst for r in monitor.reconcile(want, ns)] == ["203.0.113.7/32"]
        assert monitor.reconcile(want, ns) == []
        nsexec(ns, "ip", "route", "del", "203.0.113.7", "table", "253")
        caplog.set_level("INFO", logger="alpaca.system.monitor")
        assert len(monitor.reconcile(want, ns)) == 1
        assert "route restored dst=203.0.113.7/32 via=192.0.2.254 dev=up0 table=253" in caplog.text
        shown = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "203.0.113.7 via 192.0.2.254 dev up0 proto 97" in shown


def test_monitor_reconcile_is_quiet_about_another_programs_route_to_the_prefix(
        caplog: pytest.LogCaptureFixture) -> None:
    """The admin's own route to a peer's address holds the prefix: ours cannot be added
    (EEXIST), and every route event logged "route restored" for it."""
    with netns() as ns:
        client_ns(ns, tun=False)
        nsexec(ns, "ip", "route", "add", "203.0.113.7", "via", "192.0.2.253", "table", "253")
        want = [ExpectedRoute("203.0.113.7/32", "192.0.2.254", "up0", 253)]
        caplog.set_level("INFO", logger="alpaca.system.monitor")
        assert monitor.reconcile(want, ns) == [] and monitor.reconcile(want, ns) == []
        assert "route restored" not in caplog.text
