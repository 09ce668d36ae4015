"""Dataplane: one Engine driven by greenlets over a TUN device and UDP ports.

Inside: one greenlet reads the TUN device (batches of at most ``batch`` packets per wake-up)
and hands each packet to ``engine.on_tun_packet``. Outside: one greenlet per UDP port does
the same with ``engine.on_datagram``. Time: one DeadlineTimer re-armed to
``engine.next_deadline()`` after every batch and every timer run; delayed copies and probes
never get a greenlet of their own.

The Dataplane is the engine's Output: ``send`` goes to the port's socket, ``write_tun`` to the
device. It runs unchanged over the real drivers or the in-memory fakes (alpaca.io.fakes).

Greenlet contract: everything here runs on one gevent hub; the engine is touched only from
these greenlets (and the daemon's control greenlet on the same hub), so it needs no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import gevent
from gevent.pool import Group

from alpaca.core.engine import Engine
from alpaca.core.settings import Addr
from alpaca.io import DatagramPort, PacketDevice
from alpaca.io.clock import monotonic
from alpaca.io.timer import DeadlineTimer


class Dataplane:
    """Owns the data greenlets of one node. Create, ``attach(engine)``, then ``start(group)``.

    Args:
        tun: the inside device.
        ports: the outside sockets; index i is port i of Output.send.
        clock: monotonic seconds (injected for tests).
        batch: most packets handled per wake-up of one fd (MACHINE.md: ~32 keeps both
            directions moving under load).
    """

    def __init__(
        self, tun: PacketDevice, ports: Sequence[DatagramPort], *,
        clock: Callable[[], float] = monotonic, batch: int = 32,
    ) -> None:
        self.tun = tun
        self.ports = list(ports)
        self.clock = clock
        self.batch = batch
        self.engine: Engine | None = None
        self.timer = DeadlineTimer(self._on_timer, clock=clock)

    # Output -------------------------------------------------------------------------------
    def send(self, port: int, addr: Addr, data: bytes) -> bool:
        return self.ports[port].send(addr, data)

    def write_tun(self, packet: bytes) -> bool:
        return self.tun.write(packet)

    # wiring ---------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Give the dataplane its engine (the engine is built with this object as Output)."""
        self.engine = engine

    def start(self, group: Group) -> list[Any]:
        """Spawn the TUN reader, one reader per port and the timer into ``group``."""
        assert self.engine is not None, "attach() an engine first"
        greenlets = [group.spawn(self.tun.read_loop, self._on_tun_batch, batch=self.batch)]
        for index, port in enumerate(self.ports):
            greenlets.append(group.spawn(port.read_loop, self._port_handler(index), batch=self.batch))
        timer = self.timer.start()
        group.add(timer)
        greenlets.append(timer)
        self.rearm()
        return greenlets

    def rearm(self) -> None:
        """Point the timer at the engine's next deadline (after any state change)."""
        assert self.engine is not None
        self.timer.arm(self.engine.next_deadline())

    def _on_tun_batch(self, packets: list[bytes]) -> None:
        engine = self.engine
        assert engine is not None
        now = self.clock()
        for packet in packets:
            engine.on_tun_packet(packet, now)
        self.timer.arm(engine.next_deadline())

    def _port_handler(self, index: int) -> Callable[[list[tuple[bytes, Addr]]], None]:
        def on_batch(batch: list[tuple[bytes, Addr]]) -> None:
            engine = self.engine
            assert engine is not None
            now = self.clock()
            for data, addr in batch:
                engine.on_datagram(data, addr, index, now)
            self.timer.arm(engine.next_deadline())

        return on_batch

    def _on_timer(self, now: float) -> None:
        engine = self.engine
        assert engine is not None
        engine.on_timer(now)
        self.timer.arm(engine.next_deadline())

    def close(self) -> None:
        """Stop the timer and close every fd (the group's greenlets then end)."""
        self.timer.stop()
        self.tun.close()
        for port in self.ports:
            port.close()
        gevent.sleep(0)
