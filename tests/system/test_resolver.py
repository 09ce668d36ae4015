"""KernelResolver: the host's gateway for a destination, and never an exception."""

from __future__ import annotations

import errno

import pytest

from alpaca.core.routecache import LookupFailed
from alpaca.system import resolver
from alpaca.system.resolver import KernelResolver
from tests.helpers import netns, nsexec
from tests.system import client_ns, run_python

ASK = """
from alpaca.system.resolver import KernelResolver
ask = KernelResolver()
for dst, src in [("8.8.8.8", "10.17.16.1"), ("192.0.2.77", "10.17.16.1"), ("10.17.1.1", "10.17.16.1"),
                 ("203.0.113.9", "10.17.16.1")]:
    print(dst, ask(dst, src))
print("errors", ask.errors)
"""


@pytest.mark.netns
def test_resolver_answers_the_gateway_of_the_route() -> None:
    with netns() as ns:
        client_ns(ns)
        nsexec(ns, "ip", "link", "set", "alpaca0", "up")
        nsexec(ns, "ip", "addr", "add", "10.17.16.1/16", "dev", "alpaca0")
        nsexec(ns, "ip", "route", "add", "8.8.8.0/24", "via", "10.17.1.1", "dev", "alpaca0")
        nsexec(ns, "ip", "route", "add", "unreachable", "203.0.113.0/24")
        lines = run_python(ns, ASK).splitlines()
    assert lines == ["8.8.8.8 10.17.1.1", "192.0.2.77 None", "10.17.1.1 None", "203.0.113.9 None",
                     "errors 1"]  # on a link: no gateway; unreachable: an error, counted


class _BrokenSocket:
    """A netlink socket whose requests fail as a full socket buffer does."""

    opened = 0

    def __init__(self) -> None:
        type(self).opened += 1
        self.closed = False

    def route(self, *_args: object, **_kwargs: object) -> list[object]:
        raise OSError(errno.ENOBUFS, "No buffer space available")

    def close(self) -> None:
        self.closed = True


def test_resolver_a_failing_socket_is_a_failed_lookup_and_is_reopened(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """An OSError from the netlink socket went up into the packet path and ended the TUN
    reader's greenlet (the daemon stopped): now it is LookupFailed, which the engine takes
    for no route (tests/core/test_engine.py), and the next lookup opens a new socket."""
    monkeypatch.setattr(resolver, "IPRoute", _BrokenSocket)
    ask = KernelResolver()
    for _ in range(2):
        with pytest.raises(LookupFailed):
            ask("8.8.8.8", "10.17.16.1")
    assert ask.errors == 2 and _BrokenSocket.opened == 2


class _NoSocket:
    """Opening a netlink socket fails, as it does when the process is out of descriptors."""

    def __init__(self) -> None:
        raise OSError(errno.EMFILE, "Too many open files")


def test_resolver_a_socket_that_cannot_be_opened_is_a_failed_lookup(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Opening the socket again after a failure raised into the reader's greenlet (the
    daemon stopped); now the packet has no route, and the warning is logged once while
    the failures last."""
    monkeypatch.setattr(resolver, "IPRoute", _NoSocket)
    ask = KernelResolver()
    with caplog.at_level("WARNING", logger=resolver.__name__):
        for i in range(5):
            with pytest.raises(LookupFailed):
                ask(f"198.51.100.{i}", "10.17.16.1")
    assert ask.errors == 5
    assert len(caplog.records) == 1 and "Too many open files" in caplog.records[0].getMessage()
