"""The 6.1.2 time/seq window, as a numbered table (wireguard-go style), plus a model check."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alpaca.core.legacy.replay import SEQ_BITS, LegacyWindow, Verdict, t20_delta

N, R, D, L, P, B = (Verdict.NEW, Verdict.RESYNC, Verdict.DUPLICATE, Verdict.LATE, Verdict.REPLAY,
                    Verdict.BAD_SEQ)
T = 1000

# (local time, t20, seq, expected): one scenario run top to bottom on one window.
TABLE = [
    (0.0, T, 0, N),          # 1 first packet starts the window
    (0.0, T, 0, D),          # 2 same (t, seq): duplicate (multi-path / dup-send copy)
    (0.0, T, 1, N),          # 3
    (0.1, T, 16000, N),      # 4 the largest seq a 6.1.2 sender emits
    (0.1, T, SEQ_BITS, B),   # 5 beyond the bitmap: dropped (6.1.2 accepted it, unrecorded)
    (1.0, T + 1, 0, N),      # 6 next second: shift
    (1.0, T, 1, D),          # 7 previous second still deduplicated
    (1.0, T, 2, N),          # 8 previous second, unseen seq
    (1.0, T + 1, 0, D),      # 9
    (2.0, T + 2, 5, N),      # 10 shift again: T is now 2 s old
    (2.0, T, 3, L),          # 11 -2: late
    (2.0, T - 7, 3, L),      # 12 -9: late
    (2.0, T - 8, 3, P),      # 13 -10: replay, dropped (6.1.2 accepted and reset the window)
    (2.0, T + 2, 5, D),      # 14 ... so the window was not reset
    (9.0, T + 100, 0, P),    # 15 98 s ahead 7 s later: a capture 6-12 days old (the 20-bit
    #                               time wraps) or a clock step, not new (6.1.2 took it)
    (9.0, T + 19, 0, N),     # 16 17 s ahead: within the 7 s passed + 10: window restarts
    (9.0, T + 9, 6, P),      # 17 -10 from the new second
    (38.9, T - 500, 0, P),   # 18 29.9 s since the last accepted packet: still a replay
    (39.0, T - 500, 0, R),   # 19 30 s of silence: a sender whose clock stepped back resyncs
    (39.0, T - 500, 0, D),   # 20
    (39.1, T - 499, 1, N),   # 21
]


@pytest.mark.parametrize("upto", range(1, len(TABLE) + 1))
def test_legacy_window_table(upto: int) -> None:
    window = LegacyWindow()
    for i, (now, t20, seq, expected) in enumerate(TABLE[:upto], start=1):
        assert window.check(t20, seq, now) is expected, f"row {i}"


def test_legacy_window_wraps_at_2_pow_20() -> None:
    window = LegacyWindow()
    assert window.check(2**20 - 1, 3, 0.0) is N
    assert window.check(0, 3, 1.0) is N  # a step of +1, not a replay of -2^20
    assert window.check(2**20 - 1, 3, 1.0) is D
    assert window.check(2**20 - 2, 3, 1.0) is L
    assert t20_delta(0, 2**20 - 1) == 1 and t20_delta(2**20 - 1, 0) == -1


@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 50)), max_size=300))
def test_legacy_window_never_accepts_a_pair_twice(packets: list[tuple[int, int]]) -> None:
    """Against a model: within 10 s of progress, no (t20, seq) is accepted twice."""
    window = LegacyWindow()
    accepted: set[tuple[int, int]] = set()
    for t, seq in packets:
        verdict = window.check(T + t, seq, 0.0)
        if verdict.accepted:
            assert (t, seq) not in accepted
            accepted.add((t, seq))
        else:
            assert verdict is not B


def test_legacy_window_tracks_seqs_up_to_16383_and_drops_16384() -> None:
    """The bitmap holds 2^14 seqs a second: 16383 is recorded (and deduplicated), 16384 is not."""
    window = LegacyWindow()
    assert window.check(T, 16383, 0.0) is N
    assert window.check(T, 16383, 0.0) is D
    assert window.check(T, 16384, 0.0) is B
    assert window.check(T, 2**20 - 1, 0.0) is B


def test_legacy_t20_delta_is_signed_over_half_the_20_bit_range() -> None:
    assert t20_delta(2**19 - 1, 0) == 2**19 - 1
    assert t20_delta(2**19, 0) == -(2**19)
    assert t20_delta(0, 2**19) == -(2**19)
    assert t20_delta(2**18, 0) == 2**18 and t20_delta(0, 2**18) == -(2**18)
    assert t20_delta(5, 2**20 - 3) == 8


def test_legacy_window_every_seq_of_a_second_is_new_once() -> None:
    """Each of the 2^14 seqs of a second has a bit of its own."""
    window = LegacyWindow()
    assert all(window.check(T, seq, 0.0) is N for seq in range(SEQ_BITS))
    assert all(window.check(T, seq, 0.0) is D for seq in range(SEQ_BITS))


def test_legacy_window_a_jump_forgets_the_previous_second_too() -> None:
    """After a jump of 2 s or more, the second before the new one starts empty: what was
    seen in an older second does not make its seqs duplicates."""
    window = LegacyWindow()
    assert window.check(T, 5, 0.0) is N
    assert window.check(T + 1, 7, 1.0) is N  # shift: T becomes the previous second
    assert window.check(T + 3, 0, 3.0) is N  # +2: restart at T + 3
    assert window.check(T + 2, 5, 3.0) is N  # -1: previous second, seq 5 not seen in it
    assert window.check(T + 2, 7, 3.0) is N
    assert window.check(T + 2, 5, 3.0) is D
