"""ReadAhead lanes and the shared read loop (alpaca.io.readahead)."""

from __future__ import annotations

import time

import gevent
from gevent.event import Event

from alpaca.io import DriverClosed
from alpaca.io.readahead import BULK_BATCHES, READ_ROUNDS, ReadAhead, read_loop


def item(size: int, tag: int) -> tuple[bytes, int]:
    return bytes(size), tag


def test_small_lane_first_order_kept_bytes_counted() -> None:
    ahead = ReadAhead(small=100, bulk_bytes=10_000, small_limit=10)
    ahead.add([item(1000, 1), item(50, 2), item(1000, 3), item(100, 4), item(101, 5)])
    assert len(ahead) == 5 and ahead.queued_bytes == 2101
    assert [tag for _, tag in ahead.take(small=1, bulk=2)] == [2, 1, 3]
    assert ahead.queued_bytes == 101
    assert [tag for _, tag in ahead.take(small=5, bulk=5)] == [4, 5]
    assert len(ahead) == 0 and ahead.queued_bytes == 0 and ahead.take(4, 4) == []


def test_full_at_either_bound_and_nothing_is_dropped() -> None:
    ahead = ReadAhead(small=100, bulk_bytes=3000, small_limit=2)
    ahead.add([item(1000, i) for i in range(2)])
    assert not ahead.full
    ahead.add([item(1000, i) for i in range(5)])  # over the bound: kept, and full
    assert ahead.full and len(ahead) == 7 and ahead.queued_bytes == 7000
    ahead.take(small=0, bulk=5)
    assert not ahead.full
    ahead.add([item(10, i) for i in range(3)])
    assert ahead.full and len(ahead) == 5


class Source:
    """A scripted fd: ``pending`` items, a readiness event, reads counted."""

    def __init__(self, items: list[tuple[bytes, int]]) -> None:
        self.pending = list(items)
        self.expected = len(items)
        self.ready = Event()
        self.closed = False
        self.reads = 0
        if items:
            self.ready.set()

    def wait(self) -> None:
        if self.closed:
            raise DriverClosed
        self.ready.wait()
        if self.closed:
            raise DriverClosed

    def read(self, limit: int) -> list[tuple[bytes, int]]:
        self.reads += 1
        out, self.pending = self.pending[:limit], self.pending[limit:]
        if not self.pending:
            self.ready.clear()
        return out

    def close(self) -> None:
        self.closed = True
        self.ready.set()


def run(source: Source, ahead: ReadAhead | None, batch: int) -> list[list[int]]:
    """Run read_loop until the source is drained; the tags of each handed-out chunk."""
    chunks: list[list[int]] = []
    loop = gevent.spawn(read_loop, source.wait, source.read, lambda c: chunks.append([t for _, t in c]),
                        batch=batch, ahead=ahead)
    with gevent.Timeout(3):
        while sum(map(len, chunks)) < source.expected:
            gevent.sleep(0.001)
    source.close()
    loop.join(timeout=1)
    assert loop.dead and loop.exception is None
    return chunks


def scripted(bulk: int, small_at_end: bool = True) -> Source:
    return Source([item(1200, i) for i in range(bulk)] + ([item(60, -1)] if small_at_end else []))


def test_without_read_ahead_a_small_packet_waits_behind_the_bulk_read_before_it() -> None:
    chunks = run(scripted(40), None, batch=8)
    assert [len(c) for c in chunks] == [8, 8, 8, 8, 8, 1]
    assert chunks[-1] == [-1]


def test_with_read_ahead_a_small_packet_queued_behind_bulk_is_handed_out_first() -> None:
    ahead = ReadAhead(small=100, bulk_bytes=1 << 20, small_limit=64)
    chunks = run(scripted(40), ahead, batch=8)
    # round one read READ_ROUNDS batches and handed out BULK_BATCHES of bulk; the small
    # packet, read in the last of those reads, leads round two
    assert chunks[0] == list(range(8 * BULK_BATCHES))
    assert chunks[1][0] == -1 and READ_ROUNDS * 8 < 41
    assert [t for c in chunks for t in c if t >= 0] == list(range(40))  # bulk order kept


def test_read_ahead_stops_reading_while_full() -> None:
    source = scripted(40, small_at_end=False)
    ahead = ReadAhead(small=100, bulk_bytes=3 * 1200, small_limit=64)
    seen: list[int] = []

    def handler(chunk: list[tuple[bytes, int]]) -> None:
        seen.append(len(source.pending))

    loop = gevent.spawn(read_loop, source.wait, source.read, handler, batch=4, ahead=ahead)
    with gevent.Timeout(3):
        while source.pending or len(ahead):
            gevent.sleep(0.001)
    source.close()
    loop.join(timeout=1)
    # the first read (4 packets) filled the 3-packet bound: no second read before handing out
    assert seen[0] == 36
    assert source.reads < 40 // 4 + 5


def test_a_busy_read_ahead_loop_lets_timers_and_other_fds_run() -> None:
    """gevent.sleep(0) would run the busy loop again up to 50 times before the event loop
    polls; the read-ahead loop yields until the loop is idle, so a 1 ms timer fires within a
    few rounds of about 0.3 ms each."""
    source = Source([item(1200, i) for i in range(10)])
    source.read = lambda limit: [item(1200, 0)] * limit  # type: ignore[method-assign]  # never drains
    rounds = 0

    def busy(chunk: list[tuple[bytes, int]]) -> None:
        nonlocal rounds
        rounds += 1
        end = time.perf_counter() + 0.0003
        while time.perf_counter() < end:
            pass

    loop = gevent.spawn(read_loop, source.wait, source.read, busy, batch=4,
                        ahead=ReadAhead(small=100, bulk_bytes=1 << 30, small_limit=64))
    gevent.sleep(0)
    start = rounds
    gevent.sleep(0.001)
    woke_after = rounds - start
    loop.kill()
    assert 1 <= woke_after <= 20, woke_after
