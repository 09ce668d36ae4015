"""ReadAhead lanes and the shared read loop (alpaca.io.readahead)."""

from __future__ import annotations

import os
import time

import gevent
import pytest

from alpaca.io import DriverClosed
from alpaca.io.fakes import MemoryTun
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


SMALL_TAG = 0xFFFFFFFF


def packet(size: int, tag: int) -> bytes:
    return tag.to_bytes(4, "big") + bytes(size - 4)


def tag_of(item: tuple[bytes, bool]) -> int:
    value = int.from_bytes(item[0][:4], "big")
    return -1 if value == SMALL_TAG else value


class CountingTun(MemoryTun):
    """A MemoryTun that counts its read_batch calls."""

    def __init__(self) -> None:
        super().__init__("ra")
        self.reads = 0

    def read_batch(self, limit: int = 32) -> list[tuple[bytes, bool]]:
        self.reads += 1
        return super().read_batch(limit)


def fill(tun: MemoryTun, bulk: int, small_at_end: bool = True) -> int:
    """Queue ``bulk`` 1200-byte packets tagged 0.. and maybe one small one; return the count."""
    for i in range(bulk):
        tun.inject(packet(1200, i))
    if small_at_end:
        tun.inject(packet(60, SMALL_TAG))
    return bulk + small_at_end


def run(tun: MemoryTun, expected: int, ahead: ReadAhead | None, batch: int) -> list[list[int]]:
    """Run the device's read loop until ``expected`` packets came out; the tags per chunk."""
    chunks: list[list[int]] = []
    loop = gevent.spawn(tun.read_loop, lambda c: chunks.append([tag_of(i) for i in c]), batch=batch,
                        ahead=ahead)
    with gevent.Timeout(3):
        while sum(map(len, chunks)) < expected:
            gevent.sleep(0.001)
    tun.close()
    loop.join(timeout=1)
    assert loop.dead and loop.exception is None
    return chunks


def test_without_read_ahead_a_small_packet_waits_behind_the_bulk_read_before_it() -> None:
    tun = MemoryTun("ra")
    chunks = run(tun, fill(tun, 40), None, batch=8)
    assert [len(c) for c in chunks] == [8, 8, 8, 8, 8, 1]
    assert chunks[-1] == [-1]


def test_with_read_ahead_a_small_packet_queued_behind_bulk_is_handed_out_first() -> None:
    tun = MemoryTun("ra")
    ahead = ReadAhead(small=100, bulk_bytes=1 << 20, small_limit=64)
    chunks = run(tun, fill(tun, 40), ahead, batch=8)
    # round one read READ_ROUNDS batches and handed out BULK_BATCHES of bulk; the small
    # packet, read in the last of those reads, leads round two
    assert chunks[0] == list(range(8 * BULK_BATCHES))
    assert chunks[1][0] == -1 and READ_ROUNDS * 8 < 41
    assert [t for c in chunks for t in c if t >= 0] == list(range(40))  # bulk order kept


def test_read_ahead_stops_reading_while_full() -> None:
    tun = CountingTun()
    fill(tun, 40, small_at_end=False)
    ahead = ReadAhead(small=100, bulk_bytes=3 * 1200, small_limit=64)
    reads_at_first_chunk: list[int] = []
    handled = 0

    def handler(chunk: list[tuple[bytes, bool]]) -> None:
        nonlocal handled
        reads_at_first_chunk.append(tun.reads)
        handled += len(chunk)

    loop = gevent.spawn(tun.read_loop, handler, batch=4, ahead=ahead)
    with gevent.Timeout(3):
        while handled < 40:
            gevent.sleep(0.001)
    tun.close()
    loop.join(timeout=1)
    # the wake-up's first read (one packet) and the next (4) filled the 3-packet bound: no
    # third read before handing out
    assert reads_at_first_chunk[0] == 2
    # and so on: per wake-up one read of one packet and one of four, never a read while full
    assert tun.reads <= 2 * (40 // 5) + 2


@pytest.mark.parametrize("read_ahead", [True, False])
def test_a_busy_read_loop_lets_timers_and_other_fds_run(read_ahead: bool) -> None:
    """gevent.sleep(0) would run the busy loop again for 50 rounds or 5 ms (the switch
    interval), whichever is longer, before the event loop polls; the loops yield on a zero
    timer, so a 1 ms timer fires within a few rounds of about 0.3 ms each. (Without read-ahead
    this is every UDP port's loop: a bulk receive must not hold back the TUN reader.)"""
    tun = MemoryTun("ra")
    fill(tun, 5_000, small_at_end=False)  # more than 50 rounds take
    rounds = 0

    def busy(chunk: list[tuple[bytes, bool]]) -> None:
        nonlocal rounds
        rounds += 1
        end = time.perf_counter() + 0.0003
        while time.perf_counter() < end:
            pass

    ahead = ReadAhead(small=100, bulk_bytes=1 << 30, small_limit=64) if read_ahead else None
    loop = gevent.spawn(tun.read_loop, busy, batch=4, ahead=ahead)
    gevent.sleep(0)
    start = rounds
    gevent.sleep(0.001)
    woke_after = rounds - start
    loop.kill()
    assert 1 <= woke_after <= 20, woke_after


@pytest.mark.parametrize("read_ahead", [True, False])
def test_a_busy_read_loop_lets_a_ready_fd_go_before_its_next_batch(read_ahead: bool) -> None:
    """The yield's zero timer runs after the fds that the same poll found ready (at the same
    priority libev would run the timer first: two bulk batches before the other reader)."""
    tun = MemoryTun("ra")
    fill(tun, 400, small_at_end=False)
    order: list[str] = []
    r, w = os.pipe()
    os.write(w, b"x")
    hub = gevent.get_hub()

    def other_direction() -> None:
        hub.wait(hub.loop.io(r, 1))
        order.append("io")

    ahead = ReadAhead(small=100, bulk_bytes=1 << 30, small_limit=64) if read_ahead else None
    loop = gevent.spawn(tun.read_loop, lambda chunk: order.append("bulk"), batch=4, ahead=ahead)
    other = gevent.spawn(other_direction)
    try:
        gevent.sleep(0.01)
        assert order[:3] == ["bulk", "io", "bulk"], order[:5]
    finally:
        loop.kill()
        other.kill()
        os.close(r)
        os.close(w)


def test_after_a_full_batch_the_loop_reads_on_without_waiting_for_the_fd_again() -> None:
    """Waiting on the fd after the turn would cost another round of the event loop per full
    batch; the loop waits only when a read came back short."""
    source = [item(1200, i) for i in range(40)]
    waits, batches = 0, []

    def wait() -> None:
        nonlocal waits
        waits += 1
        if not source:
            raise DriverClosed

    def read(limit: int) -> list[tuple[bytes, int]]:
        taken = source[:limit]
        del source[:limit]
        return taken

    read_loop(wait, read, batches.append, batch=4)
    assert [len(b) for b in batches] == [4] * 10
    assert waits == 2  # the first, and the one that found the source empty


def test_a_read_ahead_loop_goes_on_while_another_fd_is_readable_on_every_round() -> None:
    """A steady inbound stream keeps a UDP socket readable on every round of the event loop:
    the read-ahead loop still gets its turn each round (an idle watcher never fired)."""
    tun = MemoryTun("ra")
    fill(tun, 400, small_at_end=False)
    handed = 0

    def count(chunk: list[tuple[bytes, bool]]) -> None:
        nonlocal handed
        handed += len(chunk)

    r, w = os.pipe()
    os.write(w, b"x")  # readable for good
    hub = gevent.get_hub()

    def other_direction() -> None:
        watcher = hub.loop.io(r, 1)
        while True:
            hub.wait(watcher)

    other = gevent.spawn(other_direction)
    loop = gevent.spawn(tun.read_loop, count, batch=4,
                        ahead=ReadAhead(small=100, bulk_bytes=1 << 30, small_limit=64))
    try:
        with gevent.Timeout(5, AssertionError(f"read-ahead starved: {handed} of 400 handed out")):
            while handed < 400:
                gevent.sleep(0.01)
    finally:
        loop.kill()
        other.kill()
        os.close(r)
        os.close(w)


def first_chunk(tun: CountingTun, ahead: ReadAhead | None, lone: int) -> list[tuple[int, list[int]]]:
    """Run the read loop over what ``tun`` holds; (reads made, tags) of each chunk handed out."""
    seen: list[tuple[int, list[int]]] = []
    loop = gevent.spawn(tun.read_loop, lambda c: seen.append((tun.reads, [tag_of(i) for i in c])),
                        batch=8, ahead=ahead, lone=lone)
    with gevent.Timeout(3):
        while not seen:
            gevent.sleep(0.001)
    gevent.sleep(0.01)  # let the loop go back to waiting
    tun.close()
    loop.join(timeout=1)
    assert loop.dead and loop.exception is None
    return seen


@pytest.mark.parametrize("read_ahead", [False, True])
def test_a_lone_small_packet_is_handled_before_the_read_that_finds_the_device_empty(
    read_ahead: bool,
) -> None:
    tun = CountingTun()
    tun.inject(packet(60, SMALL_TAG))
    ahead = ReadAhead(small=100, bulk_bytes=1 << 20, small_limit=64) if read_ahead else None
    assert first_chunk(tun, ahead, lone=100) == [(1, [-1])]
    assert tun.reads >= 2  # the read that found the device empty came after it


@pytest.mark.parametrize("read_ahead", [False, True])
@pytest.mark.parametrize(("size", "lone"), [(1200, 100), (60, 0)])
def test_a_lone_packet_above_the_lone_size_waits_for_the_batch_read(
    read_ahead: bool, size: int, lone: int,
) -> None:
    tun = CountingTun()
    tun.inject(packet(size, 7))
    ahead = ReadAhead(small=100, bulk_bytes=1 << 20, small_limit=64) if read_ahead else None
    assert first_chunk(tun, ahead, lone) == [(2, [7])]
