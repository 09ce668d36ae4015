"""The in-memory doubles behave like the drivers they stand for."""

from __future__ import annotations

import gevent
import pytest

from alpaca.errors import TunnelError
from alpaca.io.fakes import MemoryNetwork, MemoryOutput, MemoryPort, MemoryTun
from tests.io import live_greenlets

A = ("10.0.0.1", 5000)
B = ("10.0.0.2", 5000)


def test_memory_output_records_sends_and_tun_writes() -> None:
    out = MemoryOutput()
    assert out.send(0, A, b"d")
    assert out.write_tun(b"p")
    assert list(out.sent) == [(0, A, b"d")]
    assert list(out.tun_writes) == [b"p"]


def test_memory_output_refuses_when_configured() -> None:
    out = MemoryOutput()
    out.refuse_send = out.refuse_tun = True
    assert not out.send(0, A, b"d")
    assert not out.write_tun(b"p")
    assert not out.sent and not out.tun_writes


def test_memory_output_records_are_bounded() -> None:
    out = MemoryOutput(maxlen=3)
    for i in range(10):
        out.write_tun(bytes([i]))
    assert list(out.tun_writes) == [b"\x07", b"\x08", b"\x09"]


def test_memory_tun_read_batch_respects_cap() -> None:
    tun = MemoryTun()
    for i in range(40):
        tun.inject(bytes([i]))
    assert len(tun.read_batch(32)) == 32
    assert tun.read_batch(32) == [(bytes([i]), False) for i in range(32, 40)]
    assert tun.read_batch() == []


def test_memory_tun_write_records_and_refuses() -> None:
    tun = MemoryTun()
    assert tun.write(b"pkt")
    tun.refuse = True
    assert not tun.write(b"no")
    assert list(tun.written) == [b"pkt"]


def test_memory_tun_read_loop_batches_then_returns_on_close() -> None:
    tun = MemoryTun()
    batches: list[list[bytes]] = []
    loop = gevent.spawn(tun.read_loop, batches.append, batch=4)
    gevent.sleep(0)
    for i in range(10):
        tun.inject(bytes([i]))
    gevent.sleep(0.01)
    assert [len(b) for b in batches] == [4, 4, 2]
    tun.close()
    loop.join(timeout=1)
    assert loop.successful()
    assert not tun.write(b"closed")
    assert live_greenlets() == []


def test_memory_tun_vanish_raises_from_read_loop() -> None:
    tun = MemoryTun("mem7")
    loop = gevent.spawn(tun.read_loop, lambda batch: None)
    gevent.sleep(0)
    tun.vanish()
    loop.join(timeout=1)
    assert isinstance(loop.exception, TunnelError)
    assert "mem7 vanished" in str(loop.exception)


def test_memory_port_inject_and_send() -> None:
    port = MemoryPort("p", A)
    port.inject(b"in", B)
    assert port.recv_batch() == [(b"in", B)]
    assert port.send(B, b"out")
    assert port.send_many(B, [b"1", b"2"]) == 2
    assert list(port.sent) == [(B, b"out"), (B, b"1"), (B, b"2")]
    port.refuse = True
    assert not port.send(B, b"no")
    assert port.name == "p" and port.local_addr == A


def test_memory_network_delivers_by_address_with_source() -> None:
    net = MemoryNetwork()
    a, b = net.port("a", A), net.port("b", B)
    assert a.send(B, b"hi")
    assert a.send(("10.9.9.9", 1), b"lost")  # nobody there: lost, but sent
    assert b.recv_batch() == [(b"hi", A)]
    net.blocked.add((A, B))
    a.send(B, b"cut")
    assert b.recv_batch() == []
    assert b.send(A, b"back")
    assert a.recv_batch() == [(b"back", B)]


def test_memory_network_rejects_double_bind_and_frees_on_close() -> None:
    net = MemoryNetwork()
    a = net.port("a", A)
    with pytest.raises(ValueError):
        net.port("again", A)
    a.close()
    assert net.port("again", A).local_addr == A


def test_memory_port_read_loop_returns_on_close() -> None:
    port = MemoryPort()
    got: list[tuple[bytes, tuple[str, int]]] = []
    loop = gevent.spawn(port.read_loop, got.extend)
    gevent.sleep(0)
    port.inject(b"x", A)
    gevent.sleep(0)
    port.close()
    loop.join(timeout=1)
    assert loop.successful()
    assert got == [(b"x", A)]
    assert live_greenlets() == []
