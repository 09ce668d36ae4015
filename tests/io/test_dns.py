"""alpaca.io.dns against a name server of the test's own on loopback: answers, silence, and
that the hub keeps running while names are looked up."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent import socket

from alpaca.io.dns import CONCURRENCY, lookup_ipv4

ANSWERS = {"peer-a.example": "192.0.2.10", "peer-b.example": "192.0.2.11"}


def _qname(query: bytes) -> tuple[str, int]:
    """The question's name and where the question ends."""
    labels, i = [], 12
    while query[i]:
        labels.append(query[i + 1:i + 1 + query[i]].decode())
        i += 1 + query[i]
    return ".".join(labels), i + 5  # the root label, QTYPE, QCLASS


def _answer(query: bytes) -> bytes:
    """An A record for a name of ANSWERS, NXDOMAIN for any other."""
    name, end = _qname(query)
    address = ANSWERS.get(name)
    flags = 0x8180 if address else 0x8183
    head = query[:2] + struct.pack("!HHHHH", flags, 1, 1 if address else 0, 0, 0)
    body = query[12:end]
    if address:
        body += struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    return head + body


def _serve(sock: socket.socket, delay: float) -> None:
    while True:
        query, client = sock.recvfrom(512)
        gevent.spawn_later(delay, sock.sendto, _answer(query), client)


@pytest.fixture
def name_server() -> Iterator[int]:
    """A name server on 127.0.0.1 answering each query after 0.3 s; yields its port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    server = gevent.spawn(_serve, sock, 0.3)
    try:
        yield sock.getsockname()[1]
    finally:
        server.kill()
        sock.close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A UDP port on 127.0.0.1 that takes queries and never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def _ticks_during(call: object) -> tuple[object, int, float]:
    """Run ``call`` while another greenlet ticks every 10 ms: (result, ticks, seconds)."""
    ticks = [0]

    def tick() -> None:
        while True:
            gevent.sleep(0.01)
            ticks[0] += 1

    ticker = gevent.spawn(tick)
    started = time.monotonic()
    try:
        result = call()  # type: ignore[operator]
    finally:
        ticker.kill()
    return result, ticks[0], time.monotonic() - started


def test_dns_names_are_looked_up_at_once_and_the_hub_runs_meanwhile(name_server: int) -> None:
    names = ["peer-a.example", "peer-b.example", "gone.example", "peer-a.example"]
    found, ticks, seconds = _ticks_during(
        lambda: lookup_ipv4(names, servers=["127.0.0.1"], udp_port=name_server))
    assert found == {"peer-a.example": ("192.0.2.10",), "peer-b.example": ("192.0.2.11",),
                     "gone.example": ()}
    assert seconds < 0.9, "three names answered after 0.3 s each, looked up together"
    assert ticks >= 0.5 * seconds / 0.01, "the hub ran other greenlets while waiting"


def test_dns_a_silent_server_costs_the_deadline_not_the_hub(silent_server: int) -> None:
    found, ticks, seconds = _ticks_during(
        lambda: lookup_ipv4(["peer-a.example"], deadline=1.0, servers=["127.0.0.1"],
                             udp_port=silent_server))
    assert found == {"peer-a.example": ()}
    assert 0.9 < seconds < 2.0
    assert ticks >= 0.5 * seconds / 0.01


def test_dns_names_past_the_concurrency_start_no_lookup_after_the_deadline(
        silent_server: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more names than CONCURRENCY, the names still waiting were started once the deadline
    had killed the pool, on the closed resolver: a traceback each (36 of 100)."""
    failed: list[str] = []
    monkeypatch.setattr(gevent.get_hub(), "print_exception",
                        lambda context, kind, value, tb: failed.append(kind.__name__))
    names = [f"n{i}.example.invalid" for i in range(CONCURRENCY + 36)]
    found = lookup_ipv4(names, deadline=0.3, servers=["127.0.0.1"], udp_port=silent_server)
    gevent.sleep(0.2)
    assert set(found.values()) == {()}
    assert failed == []


@pytest.fixture
def closed_port() -> int:
    """A UDP port on 127.0.0.1 nothing listens on: a query there is refused (port unreachable)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def test_dns_a_name_server_that_refuses_answers_every_name_at_once(
        closed_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The name server is down (its port refuses): two names or more on one c-ares channel
    each waited out the whole deadline (10 s at every reload and start), with a traceback on
    the daemon's stderr for every few names (AssertionError from a callback run outside the
    hub). Each comes back empty at once now, without one."""
    failed: list[str] = []
    monkeypatch.setattr(gevent.get_hub(), "print_exception",
                        lambda context, kind, value, tb: failed.append(kind.__name__))
    names = [f"n{i}.example" for i in range(20)]
    started = time.monotonic()
    found = lookup_ipv4(names, deadline=5.0, servers=["127.0.0.1"], udp_port=closed_port,
                        tcp_port=closed_port)
    assert time.monotonic() - started < 2.0
    assert set(found.values()) == {()} and failed == []


# gevent's Resolver.__del__ reads an attribute its refused constructor never set
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_dns_channel_options_refused_raise_to_the_caller_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Options c-ares refuses raise once, to the caller (the follower logs that the resolver
    could not start), not once per name in the greenlets that look them up."""
    failed: list[str] = []
    monkeypatch.setattr(gevent.get_hub(), "print_exception",
                        lambda context, kind, value, tb: failed.append(kind.__name__))
    with pytest.raises(ValueError):
        lookup_ipv4(["peer-a.example", "peer-b.example"], servers=["not-an-address"])
    gevent.sleep(0.1)
    assert failed == []


def test_dns_hosts_file_and_literals_need_no_server(silent_server: int) -> None:
    found = lookup_ipv4(["localhost", "127.0.0.1"], servers=["127.0.0.1"], udp_port=silent_server)
    assert found == {"localhost": ("127.0.0.1",), "127.0.0.1": ("127.0.0.1",)}


def test_dns_nothing_to_look_up_is_an_empty_answer() -> None:
    assert lookup_ipv4([]) == {}
