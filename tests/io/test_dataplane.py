"""Two engines driven by real greenlets: over in-memory drivers and over loopback UDP."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

import gevent
import pytest
from gevent.pool import Group

from alpaca.core.engine import Engine
from alpaca.core.settings import DupPolicy, EngineSettings, PeerSpec
from alpaca.errors import TunnelError
from alpaca.io.dataplane import Dataplane
from alpaca.io.fakes import MemoryNetwork, MemoryTun
from alpaca.io.udp import UdpPort
from tests.enginenet import NET, ipv4, pid, tunnel_ip

KEYS = {pid("1.1"): bytes(range(32)), pid("16.1"): bytes(range(1, 33))}


def settings(self_id: int, server_addr: tuple[str, int], **kw: object) -> EngineSettings:
    peers = {
        pid("1.1"): PeerSpec(pid("1.1"), KEYS[pid("1.1")], server_addr),
        pid("16.1"): PeerSpec(pid("16.1"), KEYS[pid("16.1")], None),
    }
    return EngineSettings(self_id=self_id, net=NET, group="g", peers=peers,  # type: ignore[arg-type]
                          dup_policy=DupPolicy.NONE, **kw)


def node(self_id: int, tun: MemoryTun, port: object, server_addr: tuple[str, int], epoch: int,
         read_ahead: int = 0, **kw: object) -> tuple[Dataplane, Engine]:
    plane = Dataplane(tun, [port], read_ahead=read_ahead)  # type: ignore[list-item]
    engine = Engine(settings(self_id, server_addr, **kw), plane, epoch=epoch, random_bytes=bytes,
                    resolver=lambda dst, src: "10.17.1.1")
    plane.attach(engine)
    return plane, engine


def wait_for(predicate: object, timeout: float = 3.0) -> None:
    with gevent.Timeout(timeout):
        while not predicate():  # type: ignore[operator]
            gevent.sleep(0.01)


@contextmanager
def memory_pair(read_ahead: int = 0) -> Iterator[tuple[Group, MemoryTun, Engine, MemoryTun, Dataplane]]:
    """Server 1.1 and client 16.1 over a MemoryNetwork, started and verified live both ways.
    ``read_ahead``: the client dataplane's TUN read-ahead, bytes.

    Yields (group, server TUN, server engine, client TUN, client dataplane); closes everything.
    """
    net = MemoryNetwork()
    s_addr, c_addr = ("10.0.0.1", 5000), ("10.9.0.1", 6000)
    s_tun, c_tun = MemoryTun("s"), MemoryTun("c")
    s_plane, s_engine = node(pid("1.1"), s_tun, net.port("p", s_addr), s_addr, 10)
    c_plane, c_engine = node(pid("16.1"), c_tun, net.port("p", c_addr), s_addr, 20,
                             read_ahead=read_ahead, gateway=pid("1.1"))
    group = Group()
    s_plane.start(group)
    c_plane.start(group)
    try:
        # The start-up probes make each side prove itself live to the other (alpaca.core.peers.Flow).
        for engine, other in ((s_engine, pid("16.1")), (c_engine, pid("1.1"))):
            wait_for(lambda e=engine, o=other: (o, e.self_id) in e.flows and e.flows[(o, e.self_id)].verified)
        yield group, s_tun, s_engine, c_tun, c_plane
    finally:
        s_plane.close()
        c_plane.close()
        group.kill(timeout=1)


def test_dataplane_carries_packets_both_ways_over_memory() -> None:
    with memory_pair() as (group, s_tun, _, c_tun, _):
        c_tun.inject(ipv4(tunnel_ip(pid("16.1")), "8.8.8.8"))
        wait_for(lambda: len(s_tun.written) == 1)
        s_tun.inject(ipv4("8.8.8.8", tunnel_ip(pid("16.1"))))
        wait_for(lambda: len(c_tun.written) == 1)
    assert len(group) == 0


def test_dataplane_small_packets_first_bulk_in_order_refusals_counted() -> None:
    src = tunnel_ip(pid("16.1"))
    bulk1, bulk2 = (ipv4(src, "8.8.8.8", payload=bytes([i]) * 1200) for i in (1, 2))
    small = ipv4(src, "8.8.8.8", payload=b"ping")
    with memory_pair() as (_, s_tun, s_engine, c_tun, c_plane):
        events: list[str] = []
        port, engine = c_plane.ports[0], c_plane.engine
        assert engine is not None
        seal, send = engine.on_tun_packet, port.send

        def sealing(packet: bytes, now: float, partial: bool = False) -> None:
            events.append(f"seal {len(packet)}")
            seal(packet, now, partial)

        def sending(addr: tuple[str, int], data: bytes) -> bool:
            events.append("send")
            return send(addr, data)

        engine.on_tun_packet = sealing  # type: ignore[method-assign,assignment]
        port.send = sending  # type: ignore[method-assign]
        for packet in (bulk1, small, bulk2):  # one TUN batch: nothing runs between the injects
            c_tun.inject(packet)
        wait_for(lambda: len(s_tun.written) == 3)
        assert list(s_tun.written) == [small, bulk1, bulk2]
        assert events[:3] == [f"seal {len(small)}", "send", f"seal {len(bulk1)}"]  # sent before the bulk
        s_tun.refuse = True
        c_tun.inject(small)
        wait_for(lambda: s_engine.stats.drop_counts()["tun_write_error"] == 1)


def test_dataplane_counts_refused_tun_frames_without_a_packet_after_them() -> None:
    """A wake-up whose TUN reads were all frames the device could not take apart (its
    bad_frames) hands no batch: the next timer tick counts them, not some later packet."""
    with memory_pair() as (_, _s_tun, _, c_tun, c_plane):
        engine = c_plane.engine
        assert engine is not None
        c_tun.bad_frames = 3  # what TunDevice's read does for each refused frame
        wait_for(lambda: engine.stats.drop_counts()["bad_offload"] == 3)
        assert c_tun.bad_frames == 0


@pytest.mark.parametrize("read_ahead", [0, 1 << 20])
def test_dataplane_read_ahead_hands_a_small_packet_queued_behind_bulk_first(read_ahead: int) -> None:
    src = tunnel_ip(pid("16.1"))
    bulk = [ipv4(src, "8.8.8.8", payload=bytes([i]) * 1200) for i in range(40)]
    small = ipv4(src, "8.8.8.8", payload=b"ping")
    with memory_pair(read_ahead) as (_, s_tun, _, c_tun, c_plane):
        for packet in [*bulk, small]:  # queued in the device before the reader wakes up
            c_tun.inject(packet)
        wait_for(lambda: len(s_tun.written) == 41)
        written = list(s_tun.written)
    assert [p for p in written if p != small] == bulk
    # without read-ahead one batch of bulk (32) is read and handled before the small packet
    # is even read; with it the reader reads on, finds it, and hands it out first
    assert written.index(small) == (0 if read_ahead else c_plane.batch)


def test_dataplane_probes_run_on_the_timer_over_loopback_udp() -> None:
    s_port = UdpPort.open("default", "127.0.0.1", 0)
    c_port = UdpPort.open("default", "127.0.0.1", 0)
    s_addr = s_port.local_addr
    s_tun, c_tun = MemoryTun("s"), MemoryTun("c")
    s_plane, _ = node(pid("1.1"), s_tun, s_port, s_addr, 10, probe_interval=0.1, path_timeout=0.5)
    c_plane, c_engine = node(pid("16.1"), c_tun, c_port, s_addr, 20, gateway=pid("1.1"),
                             probe_interval=0.1, path_timeout=0.5)
    group = Group()
    s_plane.start(group)
    c_plane.start(group)
    try:
        path = c_engine.peers[pid("1.1")].paths.static[0]
        wait_for(lambda: path.up and path.probes_answered >= 3)
        assert path.srtt is not None and path.srtt < 0.05
        for i in range(200):
            c_tun.inject(ipv4(tunnel_ip(pid("16.1")), "8.8.8.8", payload=bytes([i % 256]) * 40))
        wait_for(lambda: len(s_tun.written) == 200)
    finally:
        s_plane.close()
        c_plane.close()
        group.kill(timeout=1)


def test_dataplane_a_vanished_tun_device_ends_its_greenlet_with_an_error() -> None:
    net = MemoryNetwork()
    tun = MemoryTun("s")
    plane, _ = node(pid("1.1"), tun, net.port("p", ("10.0.0.1", 5000)), ("10.0.0.1", 5000), 10)
    group = Group()
    greenlets = plane.start(group)
    failures: list[BaseException] = []
    greenlets[0].link_exception(lambda g: failures.append(g.exception))
    tun.vanish()
    wait_for(lambda: failures)
    assert isinstance(failures[0], TunnelError)
    plane.close()
    group.kill(timeout=1)
    gc.collect()


@pytest.fixture(autouse=True)
def _no_leftover_greenlets() -> object:
    yield
    gevent.sleep(0)
