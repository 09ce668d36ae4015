"""ReadAhead: packets read from the TUN device before they are handled, in two lanes.

Why: under a saturating TCP flow the local sender keeps the TUN device's ring filled (with
a couple of 64 KiB super-packets: TCP small queues let about a millisecond of data below the
socket), and a ping or an ACK written to the device waits until the daemon has handled all
of it, one super-packet per round: 2 ms at the median, measured. Reading is much cheaper than
handling, so the reader reads ahead into this queue, keeping the ring nearly empty, and hands
out the small lane first: a small packet waits for at most one round of bulk. Measured on
the bench's single stream (docs/performance.md): 20-30 % less loaded ping RTT for 3 %
(128 KiB, config's default ``tun_read_ahead_kib``) to 6-10 % (1024 KiB) less throughput.

The same on the UDP side measured no gain (the receiver's socket buffer holds a few
milliseconds at most, and reading it ahead only moved the drops), so ports do not use it.

:class:`ReadAhead` is pure (no fds, no clock); its items are tuples whose first element is
the packet (``bytes``): ``(packet, csum_partial)``. :func:`read_loop` is every driver's read
loop (TUN, UDP, the fakes), with or without read-ahead; it runs on the gevent hub.

Bounds: the bulk lane holds about ``bulk_bytes`` of packets, the small lane about
``small_limit`` packets; nothing is dropped: while a lane is :attr:`full` the reader stops
reading and packets wait in the device's ring as they would without read-ahead (a lane may
go over its bound by one read), so the local TCP sender sees the same backpressure. Order
is kept within each lane.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from gevent.hub import get_hub

from alpaca.io import DriverClosed

T = TypeVar("T", bound=tuple[Any, ...])

#: Reads (each of up to ``batch`` packets) per round of the read-ahead loop: the loop reads
#: up to this many times more than it hands out, so the kernel's FIFO stays nearly empty
#: until packets arrive this many times faster than they are handled.
READ_ROUNDS = 4
#: Bulk packets handed out per round, in batches: two, as many as one read of a whole
#: super-packet used to bring (one makes more, smaller GSO sends: measured slower).
BULK_BATCHES = 2


class ReadAhead:
    """Two FIFO lanes, bounded by the reader: it stops reading while :attr:`full`.
    Owned by one reader greenlet.

    Args:
        small: packets of at most this many bytes go to the small lane.
        bulk_bytes: bound of the bulk lane, bytes of packets.
        small_limit: bound of the small lane, packets.
    """

    def __init__(self, *, small: int, bulk_bytes: int, small_limit: int) -> None:
        self.small = small
        self.bulk_bytes = bulk_bytes
        self.small_limit = small_limit
        self._small: deque[Any] = deque()
        self._bulk: deque[Any] = deque()
        #: bytes of packets in the bulk lane
        self.queued_bytes = 0

    def __len__(self) -> int:
        return len(self._small) + len(self._bulk)

    @property
    def full(self) -> bool:
        """True when either lane is at its bound (the reader should stop reading)."""
        return self.queued_bytes >= self.bulk_bytes or len(self._small) >= self.small_limit

    def add(self, items: Iterable[Any]) -> None:
        """Queue ``items``, each in its lane, in arrival order. Never drops."""
        small, small_lane, bulk_lane = self.small, self._small, self._bulk
        queued = self.queued_bytes
        for item in items:
            size = len(item[0])
            if size <= small:
                small_lane.append(item)
            else:
                bulk_lane.append(item)
                queued += size
        self.queued_bytes = queued

    def take(self, small: int, bulk: int) -> list[Any]:
        """Up to ``small`` small packets, then up to ``bulk`` bulk ones, oldest first."""
        lane = self._small
        out = [lane.popleft() for _ in range(min(small, len(lane)))]
        lane = self._bulk
        taken = [lane.popleft() for _ in range(min(bulk, len(lane)))]
        if taken:
            self.queued_bytes -= sum(len(item[0]) for item in taken)
            out += taken
        return out


def read_loop(
    wait: Callable[[], None],
    read: Callable[[int], list[T]],
    handler: Callable[[list[T]], None],
    *,
    batch: int,
    ahead: ReadAhead | None = None,
    lone: int = 0,
) -> None:
    """Forever: wait for the fd, read, call ``handler`` with at most a batch; the drivers'
    ``read_loop``. Returns when ``wait`` raises DriverClosed; errors of ``read`` and
    ``handler`` propagate.

    Lone packets first: after a wake-up the loop reads once (``read(1)``); if that brought one
    packet of at most ``lone`` bytes (0: never), it is handled at once, before the read that
    finds the fd empty. On an idle tunnel that is every ping and every DNS query: the EAGAIN
    read and the batch bookkeeping happen after the packet has left.

    Without ``ahead``: up to ``batch`` packets per wake-up, handed out whole; after a full
    batch the loop yields and reads on. With it: up to READ_ROUNDS reads per round go into
    ``ahead`` (none while it is full), then up to ``batch`` small and BULK_BATCHES * ``batch``
    bulk packets are handed out; the loop waits for the fd only when ``ahead`` is empty.
    Either loop yields on a zero timer of a lower watcher priority, which fires after the
    event loop has polled and run the readers of the fds it found ready: ``gevent.sleep(0)``
    would let this greenlet run again before the loop polls (for 50 rounds or the 5 ms switch
    interval, whichever is longer), so a busy reader would starve the other direction
    (measured: 5-20 ms for a ping reply behind a bulk transfer); an idle watcher would starve
    this one while another fd is readable on every round (a steady inbound stream).
    """
    turn = get_hub().loop.timer(0.0)  # one per loop: fires after the round's polling,
    turn.priority = -1  # and after the fds found ready in it (libev runs a priority LIFO)
    try:
        if ahead is None:
            _plain_loop(wait, read, handler, batch, lone, turn)
        else:
            _ahead_loop(wait, read, handler, batch, ahead, lone, turn)
    except DriverClosed:
        return
    finally:
        turn.close()


def _plain_loop(
    wait: Callable[[], None], read: Callable[[int], list[T]], handler: Callable[[list[T]], None],
    batch: int, lone: int, turn: Any,
) -> None:
    hub = get_hub()
    full = False
    while True:
        if not full:  # (after a full batch's turn the loop reads on without waiting)
            wait()
        items = read(1)
        if len(items) == 1 and len(items[0][0]) <= lone:
            handler(items)
            items = read(batch)
        elif len(items) < batch:
            items += read(batch - len(items))
        if items:
            handler(items)
        full = len(items) >= batch
        if full:
            hub.wait(turn)


def _ahead_loop(
    wait: Callable[[], None], read: Callable[[int], list[T]], handler: Callable[[list[T]], None],
    batch: int, ahead: ReadAhead, lone: int, turn: Any,
) -> None:
    hub = get_hub()
    while True:
        if not ahead:
            wait()
            items = read(1)
            if len(items) == 1 and len(items[0][0]) <= lone:
                handler(items)
            else:
                ahead.add(items)
        for _ in range(READ_ROUNDS):
            if ahead.full:
                break
            items = read(batch)
            ahead.add(items)
            if len(items) < batch:
                break
        chunk = ahead.take(batch, batch * BULK_BATCHES)
        if chunk:
            handler(chunk)
        if ahead:
            hub.wait(turn)
