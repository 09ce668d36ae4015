"""ReplayWindow: numbered edge table (wireguard-go style), exact counters, differential model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alpaca.core.constants import DEFAULT_REPLAY_WINDOW
from alpaca.core.replay import ReplayWindow, Verdict

NEW, DUP, OLD = Verdict.NEW, Verdict.DUPLICATE, Verdict.TOO_OLD

# size 256 = 4 blocks of 64; effective window W = (4 - 1) * 64 = 192 counters:
# a counter is too old when top - counter >= W.
W = 192
BIG = 10_256
EDGE_TABLE: list[tuple[int, int, Verdict]] = [
    (1, 0, NEW),             # usable at once: counter 0 is new
    (2, 1, NEW),
    (3, 1, DUP),
    (4, 9, NEW),
    (5, 8, NEW),             # late (reordered), still new
    (6, 7, NEW),
    (7, 7, DUP),
    (8, 63, NEW),            # last bit of block 0
    (9, 64, NEW),            # first bit of block 1
    (10, 63, DUP),
    (11, 2, NEW),
    (12, 191, NEW),          # last bit of block 2
    (13, 0, DUP),            # top - 0 = 191 = W - 1: inside
    (14, 192, NEW),          # block 3
    (15, 0, OLD),            # top - 0 = 192 = W: too old
    (16, 1, DUP),            # W - 1: inside, seen
    (17, 3, NEW),            # W - 3: inside, unseen
    (18, 255, NEW),          # last bit of block 3
    (19, 3, OLD),            # W + 60
    (20, 64, DUP),           # 255 - 64 = W - 1: inside, seen
    (21, 63, OLD),           # W: too old
    (22, 62, OLD),           # W + 1
    (23, 256, NEW),          # block 4 recycles the slot of block 0
    (24, 65, NEW),           # 256 - 65 = W - 1
    (25, 64, OLD),           # W
    (26, 0, OLD),
    (27, BIG, NEW),          # big jump: every slot recycled
    (28, BIG - (W - 1), NEW),
    (29, BIG - W, OLD),
    (30, BIG - (W + 1), OLD),
    (31, BIG - (W - 1), DUP),
    (32, BIG - 1, NEW),
    (33, BIG, DUP),
    (34, 256, OLD),
    (35, 2**64 - 1, NEW),    # the largest counter
    (36, 2**64 - 1, DUP),
    (37, 2**64 - 1 - (W - 1), NEW),
    (38, 2**64 - 1 - W, OLD),
]


def test_replay_edge_table() -> None:
    window = ReplayWindow(256)
    for number, counter, expected in EDGE_TABLE:
        assert window.accept(counter) is expected, f"step {number}: counter {counter}"


def test_replay_reset_forgets_counters() -> None:
    window = ReplayWindow(256)
    for counter in (0, 5, 1000):
        window.accept(counter)
    window.reset()
    assert window.top == -1
    assert window.accept(5) is NEW
    assert window.accept(0) is NEW
    assert window.accept(5) is DUP
    assert window.accepted == 5


@pytest.mark.parametrize("size", [0, 1, 64, 100, 129, 192, 3 << 10, -128])
def test_replay_rejects_size_not_power_of_two_at_least_128(size: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        ReplayWindow(size)


@pytest.mark.parametrize("size", [128, 256, 1 << 15, 1 << 20])
def test_replay_effective_size_is_all_blocks_but_one(size: int) -> None:
    assert ReplayWindow(size).effective_size == size - 64


def test_replay_default_size() -> None:
    assert ReplayWindow().effective_size == DEFAULT_REPLAY_WINDOW - 64 == (1 << 15) - 64


def test_replay_counters_scripted_scenario() -> None:
    window = ReplayWindow(128)  # 2 blocks, W = 64
    script = [
        (10, NEW), (12, NEW), (11, NEW), (11, DUP), (20, NEW),
        (70, NEW),    # block 1: recycles a slot that held no counter >= first
        (130, NEW),   # block 2: recycles block 0; 10..63 seen 10, 11, 12, 20 -> 50 lost
        (66, OLD),    # 130 - 66 = 64 = W
        (67, NEW),    # late
        (70, DUP),
        (1000, NEW),  # block 15: recycles block 1 (62 lost) and 2 (63), skips 3..13 (704)
    ]
    for counter, expected in script:
        assert window.accept(counter) is expected, counter
    assert (window.accepted, window.late, window.duplicate, window.too_old) == (8, 2, 2, 1)
    # Every counter 10..895 left the window; 7 of them were seen.
    assert window.lost == 50 + 62 + 63 + 704 == (896 - 10) - 7
    window.reset()
    assert window.accept(5) is NEW
    assert (window.accepted, window.lost, window.top) == (9, 879, 5)


def test_replay_lost_ignores_counters_below_first() -> None:
    window = ReplayWindow(128)
    window.accept(1000)
    window.accept(5000)
    # 1001..1023 of block 15 (960..999 are below the first counter), then blocks 16..76;
    # blocks 77 and 78 are the ring's 2 blocks.
    assert window.lost == 23 + 61 * 64


def test_replay_loss_shows_a_horizon_after_its_mark_not_a_window_later() -> None:
    """Every tenth counter missing, 32,000 counters in a 32,768 window: nothing has been
    recycled yet, and the losses below a mark are counted once the mark is a horizon old."""
    window = ReplayWindow(DEFAULT_REPLAY_WINDOW)
    for counter in range(32_000):
        if counter % 10:
            window.accept(counter)
        if counter == 16_000:
            assert window.settle(10.0, 3.0) == 0  # the first call only takes its mark
    assert window.settle(12.9, 3.0) == 0  # the mark is not 3 s old yet: a copy may be coming
    assert window.settle(13.0, 3.0) == 1_599  # 1 (the first seen)..15,999: the multiples of 10
    assert window.lost == 1_599
    window.accept(32_000)
    assert window.settle(16.0, 3.0) == 1_600  # 16,000..31,999
    assert window.settle(19.0, 3.0) == 0  # nothing new below the last mark
    window.accept(31_990)  # later than the horizon: accepted, and counted lost already
    assert (window.lost, window.late) == (3_199, 1)


def test_replay_lost_zero_for_in_order_stream() -> None:
    window = ReplayWindow(128)
    for counter in range(100_000):
        assert window.accept(counter) is NEW
    assert window.lost == 0 and window.late == 0
    assert window.occupancy == 1.0


def test_replay_occupancy() -> None:
    window = ReplayWindow(128)
    assert window.occupancy == 1.0
    window.accept(0)
    assert window.occupancy == 1.0
    window.accept(2)
    window.accept(4)
    assert window.occupancy == 0.5  # 0..3 in the window below top; 0 and 2 seen
    window.accept(1000)
    assert window.occupancy == 0.0  # 937..999 in the window, none seen
    window.accept(999)
    assert window.occupancy == pytest.approx(1 / 63)


def test_replay_top_property() -> None:
    window = ReplayWindow(128)
    assert window.top == -1
    window.accept(7)
    window.accept(3)
    assert window.top == 7


# --- differential test against a naive model ------------------------------------------------

class NaiveWindow:
    """A set of seen counters and a top; ``size`` counters wide, as ReplayWindow."""

    def __init__(self, effective: int, blocks: int) -> None:
        self.effective, self.blocks = effective, blocks
        self.seen: set[int] = set()
        self.top = -1
        self.first = -1
        self.late = 0
        self.lost_before = 0
        self.settled = self.mark = 0
        self.counted: set[int] = set()  # unseen at a settle

    def accept(self, counter: int) -> Verdict:
        if counter > self.top:
            if self.top < 0:
                self.first = counter
            self.top = counter
        elif counter <= self.top - self.effective:
            return OLD
        elif counter in self.seen:
            return DUP
        else:
            self.late += 1
        self.seen.add(counter)
        return NEW

    def settle(self) -> None:
        """Count the counters unseen below the previous settle's top."""
        upto, self.mark = self.mark, self.top + 1
        low = max(self.settled, self.first)
        if self.top < 0 or upto <= low:
            return
        self.counted.update(c for c in range(low, upto) if c not in self.seen)
        self.settled = upto

    def lost(self) -> int:
        """Counted at a settle, plus the unseen counters >= first (and not settled) whose block
        was recycled (64 * blocks below top's block)."""
        if self.top < 0:
            return self.lost_before + len(self.counted)
        end = ((self.top >> 6) - self.blocks + 1) * 64  # first counter still in the ring
        unseen = sum(1 for c in range(max(self.first, self.settled), end) if c not in self.seen)
        return self.lost_before + len(self.counted) + unseen

    def occupancy(self) -> float:
        low, high = max(self.top - self.effective + 1, self.first), self.top - 1
        if high < low:
            return 1.0
        return sum(1 for c in range(low, high + 1) if c in self.seen) / (high - low + 1)

    def reset(self) -> None:
        self.lost_before = self.lost()
        self.seen.clear()
        self.counted.clear()
        self.top = self.first = -1
        self.settled = self.mark = 0


steps = st.lists(
    st.one_of(
        st.tuples(st.just("near"), st.integers(-300, 80)),
        st.tuples(st.just("jump"), st.integers(81, 2_000)),
        st.tuples(st.just("reset"), st.just(0)),
        st.tuples(st.just("settle"), st.just(0)),
    ),
    max_size=200,
)


@given(size=st.sampled_from([128, 256, 512]), script=steps, start=st.integers(0, 1000))
def test_replay_matches_naive_model(size: int, script: list[tuple[str, int]], start: int) -> None:
    window = ReplayWindow(size)
    model = NaiveWindow(window.effective_size, size // 64)
    for kind, value in script:
        if kind == "reset":
            window.reset()
            model.reset()
            continue
        if kind == "settle":
            before = window.lost
            counted = window.settle(0.0, 0.0)  # a horizon of 0: every call settles
            model.settle()
            assert window.lost - before == counted
            assert window.lost == model.lost()
            continue
        base = model.top if model.top >= 0 else start
        counter = max(0, base + value)
        assert window.accept(counter) is model.accept(counter), counter
        assert window.top == model.top
    assert window.late == model.late
    assert window.lost == model.lost()
    assert window.occupancy == pytest.approx(model.occupancy())
    total = window.accepted + window.duplicate + window.too_old
    assert total == sum(1 for kind, _ in script if kind not in ("reset", "settle"))



def test_replay_close_counts_every_unseen_counter_below_the_top_at_once() -> None:
    w = ReplayWindow(1024)
    for counter in (0, 1, 3, 7):
        w.accept(counter)
    assert w.close() == 4 and w.lost == 4  # 2, 4, 5 and 6
    assert w.close() == 0  # counted once


def test_replay_count_loss_from_forgets_what_came_before() -> None:
    w = ReplayWindow(1024)
    w.accept(0)  # a capture of long ago, replayed first
    w.accept(5000)
    assert w.lost > 0
    w.count_loss_from(5000)
    assert w.lost == 0
    w.accept(5002)
    assert w.close() == 1  # 5001 only


def test_replay_settle_counts_only_below_its_mark_in_a_partly_filled_block() -> None:
    """The counters that came after the mark, in the mark's own block, are not counted as
    seen below it: only the one missing below the mark is lost."""
    w = ReplayWindow(1024)
    for counter in range(10):
        if counter != 5:
            w.accept(counter)
    assert w.settle(0.0, 1.0) == 0  # takes its mark at 10
    for counter in range(10, 21):
        w.accept(counter)
    assert w.settle(1.0, 1.0) == 1  # 5, below the mark
    assert w.lost == 1


def test_replay_settle_after_count_loss_from_counts_nothing_below_it() -> None:
    """A mark taken before the flow was verified lies below the counter it was verified from:
    settling it counts nothing, and what came before that counter stays uncounted."""
    w = ReplayWindow(1024)
    w.accept(0)  # a capture of long ago, replayed first
    w.accept(5000)
    w.count_loss_from(5000)
    assert w.settle(0.0, 0.0) == 0  # the mark of an earlier round: 0, below 5000
    assert w.lost == 0
    assert w.close() == 0
    assert w.lost == 0


def test_replay_too_old_and_duplicate_are_distinct_verdicts() -> None:
    w = ReplayWindow(128)
    w.accept(1000)
    assert w.accept(1000) is DUP and w.accept(0) is OLD and OLD is not DUP
    assert len(set(Verdict)) == 3


def test_replay_settle_of_a_mark_that_left_the_ring_counts_nothing_more() -> None:
    """A jump past the whole ring counts what it skipped at once; a settle of the mark taken
    before it then finds nothing left to count."""
    w = ReplayWindow(128)
    for counter in range(10):
        w.accept(counter)
    assert w.settle(0.0, 0.0) == 0  # takes its mark at 10
    w.accept(10_000)
    lost = w.lost
    assert lost == 10_000 - 10 - 64 - 16  # 10..9,919, below the ring's 2 blocks (9,920..)
    assert w.settle(0.0, 0.0) == 0 and w.lost == lost


def test_replay_settle_of_a_mark_at_the_end_of_a_block() -> None:
    w = ReplayWindow(1024)
    for counter in range(63):
        if counter != 5:
            w.accept(counter)
    assert w.settle(0.0, 0.0) == 0  # takes its mark at 63, the last counter of block 0
    w.accept(64)
    assert w.settle(0.0, 0.0) == 1  # 5
    assert w.close() == 1  # 63
