"""DupSendScheduler: one bounded heap of delayed copies, popped earliest first (sans-IO)."""

from __future__ import annotations

from alpaca.core.dupsend import DupSendScheduler

ADDR = ("192.0.2.1", 4000)


def test_dupsend_pops_what_is_due_earliest_first_ties_in_order() -> None:
    dup = DupSendScheduler(10)
    assert dup.next_deadline() is None and dup.pop_due(1e9) == []
    for due, data in ((3.0, b"c"), (1.0, b"a"), (2.0, b"b1"), (2.0, b"b2"), (4.0, b"d")):
        assert dup.schedule(due, 0, ADDR, data)
    assert dup.next_deadline() == 1.0
    assert dup.pop_due(0.999) == []
    assert [c.data for c in dup.pop_due(2.0)] == [b"a", b"b1", b"b2"]  # due at now: due
    assert dup.next_deadline() == 3.0 and len(dup) == 2


def test_dupsend_refuses_a_copy_beyond_its_bound() -> None:
    dup = DupSendScheduler(2)
    assert dup.schedule(1.0, 0, ADDR, b"1") and dup.schedule(2.0, 0, ADDR, b"2")
    assert not dup.schedule(0.5, 0, ADDR, b"3")
    assert [c.data for c in dup.pop_due(10.0)] == [b"1", b"2"]
    dup.limit = 1  # a reload lowered it
    assert dup.schedule(1.0, 0, ADDR, b"4") and not dup.schedule(1.0, 0, ADDR, b"5")


def test_dupsend_cancel_counts_and_keeps_the_rest_in_due_order() -> None:
    dup = DupSendScheduler(100)
    for due in (1, 10, 2, 11, 12, 3, 4, 13, 14, 15, 16, 5, 6, 7, 8):
        dup.schedule(float(due), due % 2, ADDR, bytes([due]))
    assert dup.cancel(lambda c: c.due_at in (1.0, 2.0, 3.0)) == 3
    assert dup.cancel(lambda c: False) == 0
    assert dup.next_deadline() == 4.0
    dues = [c.due_at for c in dup.pop_due(100.0)]
    assert dues == [4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16]
