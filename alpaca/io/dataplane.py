"""Dataplane: one Engine driven by greenlets over a TUN device and UDP ports.

Inside: one greenlet reads the TUN device (batches of at most ``batch`` packets per wake-up)
and hands each packet to ``engine.on_tun_packet``, and another reads its priority lane's
queue when it has one. Outside: one greenlet per UDP port (and one per priority lane) does the
same with ``engine.on_datagram``. Time: one DeadlineTimer re-armed to
``engine.next_deadline()`` after every batch and every timer run; delayed copies and probes
never get a greenlet of their own.

The Dataplane is the engine's Output: ``send`` goes to the port's socket, ``write_tun`` to the
device. It runs unchanged over the real drivers or the in-memory fakes (alpaca.io.fakes).

Small first: each batch is handled in two passes, packets up to SMALL_PACKET bytes first
(see its comment), and what they produced is sent or written before the second pass, so a
ping or an ACK does not queue behind the bulk that arrived with it. With ``read_ahead``
the TUN reader also reads ahead (alpaca.io.readahead, up to that many bytes of bulk): a small
packet queued behind a local TCP sender's data is read at once and handled next round.

Lone packets: a wake-up that finds one small packet (a ping or a DNS query on an otherwise
idle tunnel) hands it over at once, before the read that finds the fd empty
(alpaca.io.readahead.read_loop); the handler sends or writes any batch of one directly,
without the batch queue below.

Send batching: while a batch read from one fd is being handled, datagrams are queued per
(port, destination) and flushed when the batch ends, through ``send_many`` (UDP GSO: one
``sendmsg`` for a run of equal-sized datagrams, measured 0.9 µs per datagram against 4.6 µs
for one ``sendto`` each). Order per destination is kept within each size class; a batch is
bounded (``batch`` reads or packets, see the drivers), so the queue is too and adds no
latency beyond the batch itself. A datagram the
kernel refuses during a flush is counted as the engine's ``send_error`` drop. TUN writes are
queued the same way and handed to the device's ``write_many`` at the end of the batch, which
merges a flow's consecutive TCP segments into one write when offload is on; a packet the
kernel refuses there counts as ``tun_write_error``.

Greenlet contract: everything here runs on one gevent hub; the engine is touched only from
these greenlets (and the daemon's control greenlet on the same hub), so it needs no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import gevent
from gevent.pool import Group

from alpaca.core.constants import DEFAULT_TUN_READ_AHEAD_KIB, SMALL_DATAGRAM, SMALL_PACKET
from alpaca.core.drops import DropReason
from alpaca.core.settings import Addr
from alpaca.core.stats import EngineStats
from alpaca.io import DatagramPort, PacketDevice, TunPacket
from alpaca.io.clock import monotonic
from alpaca.io.readahead import ReadAhead
from alpaca.io.timer import DeadlineTimer

#: The timer fires this much after the engine's deadline, so that one wake-up sends every
#: delayed copy due within it as one batch (GSO) instead of a wake-up and a sendto per copy.
TIMER_SLACK = 0.001
# Small first: within one batch, packets of at most SMALL_PACKET bytes (datagrams of at most
# SMALL_DATAGRAM) are handled before the bulk. Order within each class is kept.
#: Read-ahead: most small packets held (the bulk bound is the ``read_ahead`` argument).
READ_AHEAD_SMALL = 256


class PacketEngine(Protocol):
    """What the dataplane drives: the Engine, or a ProtocolMux in front of several."""

    @property
    def stats(self) -> EngineStats: ...

    def count_drops(self, reason: DropReason, n: int) -> None: ...

    def on_tun_packet(self, packet: bytes, now: float, csum_partial: bool = False) -> None: ...

    def on_datagram(self, data: bytes, addr: Addr, port: int, now: float) -> None: ...

    def on_timer(self, now: float) -> None: ...

    def next_deadline(self) -> float | None: ...


class Dataplane:
    """Owns the data greenlets of one node. Create, ``attach(engine)``, then ``start(group)``.

    Args:
        tun: the inside device.
        ports: the outside sockets; index i is port i of Output.send.
        clock: monotonic seconds (injected for tests).
        batch: most packets handled per wake-up of one fd (MACHINE.md: ~32 keeps both
            directions moving under load).
        read_ahead: bytes of bulk TUN packets read ahead of handling (config's
            tun_read_ahead_kib); 0: off, each wake-up reads one batch.
    """

    def __init__(
        self, tun: PacketDevice, ports: Sequence[DatagramPort], *,
        clock: Callable[[], float] = monotonic, batch: int = 32,
        read_ahead: int = DEFAULT_TUN_READ_AHEAD_KIB << 10,
    ) -> None:
        self.tun = tun
        self.ports = list(ports)
        self.clock = clock
        self.batch = batch
        self.read_ahead = read_ahead
        self.engine: PacketEngine | None = None
        self.timer = DeadlineTimer(self._on_timer, clock=clock)
        #: (port, addr) -> datagrams queued during the current batch; None outside a batch.
        self._pending: dict[tuple[int, Addr], list[bytes]] | None = None
        #: TUN writes queued during the current batch (coalesced by the device on flush).
        self._tun_pending: list[TunPacket] = []

    # Output -------------------------------------------------------------------------------
    def send(self, port: int, addr: Addr, data: bytes) -> bool:
        pending = self._pending
        if pending is None:
            return self.ports[port].send(addr, data)
        queue = pending.get((port, addr))
        if queue is None:
            pending[(port, addr)] = [data]
        else:
            queue.append(data)
        return True

    def _begin(self) -> None:
        self._pending = {}

    def _flush_and_begin(self) -> None:
        if self._pending or self._tun_pending:
            self._flush()
            self._begin()

    def _flush(self) -> None:
        pending, self._pending = self._pending, None
        writes = self._tun_pending
        if writes:
            self._tun_pending = []
            self._count(DropReason.TUN_WRITE_ERROR, len(writes) - self.tun.write_many(writes))
        if not pending:
            return
        refused = 0
        for (port, addr), datas in pending.items():
            if len(datas) == 1:
                refused += not self.ports[port].send(addr, datas[0])
            else:
                refused += len(datas) - self.ports[port].send_many(addr, datas)
        self._count(DropReason.SEND_ERROR, refused)

    def _count(self, reason: DropReason, n: int) -> None:
        if n and self.engine is not None:
            self.engine.count_drops(reason, n)

    def write_tun(self, packet: bytes, csum_partial: bool = False) -> bool:
        if self._pending is None:
            if csum_partial:
                return self.tun.write_many([(packet, csum_partial)]) == 1
            return self.tun.write(packet)
        self._tun_pending.append((packet, csum_partial))
        return True

    # wiring ---------------------------------------------------------------------------------
    def attach(self, engine: PacketEngine) -> None:
        """Give the dataplane its engine (the engine is built with this object as Output)."""
        self.engine = engine

    def start(self, group: Group) -> list[Any]:
        """Spawn the TUN reader, one reader per port and the timer into ``group``."""
        assert self.engine is not None, "attach() an engine first"
        ahead = None
        if self.read_ahead:
            ahead = ReadAhead(small=SMALL_PACKET, bulk_bytes=self.read_ahead,
                              small_limit=READ_AHEAD_SMALL)
        greenlets = [group.spawn(self.tun.read_loop, self._on_tun_batch, batch=self.batch,
                                 ahead=ahead, lone=SMALL_PACKET)]
        greenlets[0].name = f"the reader of TUN device {self.tun.name}"
        if self.tun.priority_lane:
            greenlets.append(group.spawn(self.tun.priority_loop, self._on_tun_batch, batch=self.batch))
            greenlets[-1].name = f"the priority reader of TUN device {self.tun.name}"
        for index, port in enumerate(self.ports):
            greenlets.append(group.spawn(port.read_loop, self._port_handler(index), batch=self.batch,
                                         lone=SMALL_DATAGRAM))
            greenlets[-1].name = f"the reader of port {port.name}"
            if port.priority_lane:
                greenlets.append(group.spawn(port.priority_loop, self._port_handler(index),
                                             batch=self.batch))
                greenlets[-1].name = f"the priority reader of port {port.name}"
        timer = self.timer.start()
        timer.name = "the engine's timer"
        group.add(timer)
        greenlets.append(timer)
        self.rearm()
        return greenlets

    def rearm(self) -> None:
        """Point the timer at the engine's next deadline (after any state change)."""
        assert self.engine is not None
        self._arm(self.engine.next_deadline())

    def _arm(self, deadline: float | None) -> None:
        self.timer.arm(None if deadline is None else deadline + TIMER_SLACK)

    def _on_tun_batch(self, packets: list[TunPacket]) -> None:
        engine = self.engine
        assert engine is not None
        now = self.clock()
        if len(packets) == 1:  # lone: sent at once, no queue
            packet, partial = packets[0]
            engine.on_tun_packet(packet, now, partial)
        else:
            self._begin()
            try:
                for packet, partial in packets:
                    if len(packet) <= SMALL_PACKET:
                        engine.on_tun_packet(packet, now, partial)
                self._flush_and_begin()  # the small ones leave before the bulk is sealed
                for packet, partial in packets:
                    if len(packet) > SMALL_PACKET:
                        engine.on_tun_packet(packet, now, partial)
            finally:
                self._flush()
        self._count_bad_frames()
        self._arm(engine.next_deadline())

    def _count_bad_frames(self) -> None:
        """Hand the TUN reads that could not be taken apart to the engine's drop counts (after
        each batch, and on each timer: a wake-up that read only such frames brings no batch)."""
        if self.tun.bad_frames:
            self._count(DropReason.BAD_OFFLOAD, self.tun.bad_frames)
            self.tun.bad_frames = 0

    def _port_handler(self, index: int) -> Callable[[list[tuple[bytes, Addr]]], None]:
        def on_batch(batch: list[tuple[bytes, Addr]]) -> None:
            engine = self.engine
            assert engine is not None
            now = self.clock()
            if len(batch) == 1:  # lone: written or sent at once, no queue
                data, addr = batch[0]
                engine.on_datagram(data, addr, index, now)
            else:
                self._begin()
                try:
                    for data, addr in batch:
                        if len(data) <= SMALL_DATAGRAM:
                            engine.on_datagram(data, addr, index, now)
                    self._flush_and_begin()  # the small ones are written before the bulk is opened
                    for data, addr in batch:
                        if len(data) > SMALL_DATAGRAM:
                            engine.on_datagram(data, addr, index, now)
                finally:
                    self._flush()
            self._arm(engine.next_deadline())

        return on_batch

    def _on_timer(self, now: float) -> None:
        engine = self.engine
        assert engine is not None
        self._begin()
        try:
            engine.on_timer(now)
        finally:
            self._flush()
        self._count_bad_frames()
        self._arm(engine.next_deadline())

    def close(self) -> None:
        """Stop the timer and close every fd (the group's greenlets then end)."""
        self.timer.stop()
        self.tun.close()
        for port in self.ports:
            port.close()
        gevent.sleep(0)
