"""Anti-replay and dedup of the 6.1.2 protocol: time/seq bitmaps of two seconds.

Theory of operation
-------------------
A 6.1.2 sender stamps each packet with ``t20`` (its Unix seconds mod 2^20) and ``seq`` (a
counter that restarts every second, at most 16000). The receiver keeps, per flow, the newest
second seen (``time_now``) and one bitmap of seqs for that second and one for the second
before. With ``d = t20 - time_now`` (taken modulo 2^20, so the 12-day wrap is a step of 1):

====================  ==========================================  ===========================
d                     6.1.2 (``policy.c:flow_filter``)            here
====================  ==========================================  ===========================
>= 2                  clear both, window moves to t; accept       same, unless further ahead
                                                                  than the time passed here
                                                                  + 10 s: then as <= -10
1                     shift (previous <- current); accept         same
0 / -1                bitmap of current / previous second         same (duplicate = drop)
-9 .. -2              late: drop                                  same
<= -10                "replay": accept up to 9 per 30 s, and      drop, unless nothing was
                      each one *resets the window* to t           accepted for ``resync_after``
                                                                  seconds (a sender whose
                                                                  clock stepped back), or
                                                                  it is at or after the
                                                                  sender's newest known
                                                                  timestamp: restart
seq > 16000           never recorded: always accepted             seq >= 16384 dropped
====================  ==========================================  ===========================

The C jump/replay counters that block a source for 30 s are not kept (they were a DoS lever
and are not needed to accept a C node's normal traffic). Timestamps are compared with each
other only, never with the local clock, as in 6.1.2; ``now`` (monotonic) is used only for
the resync rule.
"""

from __future__ import annotations

from enum import Enum

T20_MOD = 1 << 20
#: Seqs tracked per second; a 6.1.2 sender never exceeds 16000 (``SEQ_LEVEL_1``).
SEQ_BITS = 1 << 14
#: ``MAX_DELAY_TIME``: older than this many seconds behind the window is a replay.
MAX_DELAY = 10
#: Seconds without an accepted packet after which a far-too-old timestamp restarts the window.
DEFAULT_RESYNC_AFTER = 30.0


class Verdict(Enum):
    """Outcome of :meth:`LegacyWindow.check`. NEW and RESYNC accept; the rest drop."""

    NEW = "new"
    RESYNC = "resync"
    DUPLICATE = "duplicate"
    LATE = "late"
    REPLAY = "replay"
    BAD_SEQ = "bad_seq"

    @property
    def accepted(self) -> bool:
        return self is Verdict.NEW or self is Verdict.RESYNC


def within_reach(ahead: int, elapsed: float) -> bool:
    """Whether a sender's clock can be ``ahead`` seconds past a timestamp of it we took
    ``elapsed`` seconds ago (plus MAX_DELAY of slack)."""
    return ahead <= elapsed + MAX_DELAY


def t20_delta(t20: int, base: int) -> int:
    """``t20 - base`` as a signed number in [-2^19, 2^19)."""
    return (t20 - base + (T20_MOD >> 1)) % T20_MOD - (T20_MOD >> 1)


class LegacyWindow:
    """Receive state of one flow. Owned by the LegacyEngine; not thread-safe."""

    __slots__ = ("accepted_at", "cur", "prev", "resync_after", "time_now")

    def __init__(self, resync_after: float = DEFAULT_RESYNC_AFTER) -> None:
        self.resync_after = resync_after
        self.time_now: int | None = None
        self.cur = bytearray(SEQ_BITS // 8)
        self.prev = bytearray(SEQ_BITS // 8)
        self.accepted_at: float | None = None

    def check(self, t20: int, seq: int, now: float, *, on_its_clock: bool = False) -> Verdict:
        """Check (t20, seq) and, if it is accepted, record it. ``now``: monotonic seconds.

        ``on_its_clock``: t20 is at or after the sender's newest known timestamp (the
        engine's test). Such a datagram that this window calls a replay or too far ahead
        restarts it there: the window was moved by a capture replayed on a silent flow, and
        the sender's own traffic must not be locked out by it. The restart forgets both
        bitmaps, so it must never be granted to a timestamp behind the newest: captures of
        what was delivered 10 s before that would be new again.
        """
        if seq >= SEQ_BITS:
            return Verdict.BAD_SEQ
        verdict = self._classify(t20, seq, now, on_its_clock)
        if verdict.accepted:
            self.accepted_at = now
        return verdict

    def start_at(self, t20: int, accepted_at: float | None) -> None:
        """Start a new flow's window at its sender's newest known second ``t20`` (from its
        other flows), last heard from at ``accepted_at``: a capture of it replayed on this
        flow is then as old as it is, not new."""
        self._restart(t20)
        self.accepted_at = accepted_at

    def _classify(self, t20: int, seq: int, now: float, on_its_clock: bool) -> Verdict:
        if self.time_now is None:
            self._restart(t20)
            return _mark(self.cur, seq)
        d = t20_delta(t20, self.time_now)
        if d >= 2 and not self._too_far_ahead(d, now):
            self._restart(t20)
            return _mark(self.cur, seq)
        if d == 1:
            self.prev, self.cur = self.cur, bytearray(SEQ_BITS // 8)
            self.time_now = t20
            return _mark(self.cur, seq)
        if d == 0:
            return _mark(self.cur, seq)
        if d == -1:
            return _mark(self.prev, seq)
        if -MAX_DELAY < d < 2:
            return Verdict.LATE
        if on_its_clock:
            self._restart(t20)
            return _mark(self.cur, seq)
        if self.accepted_at is not None and now - self.accepted_at < self.resync_after:
            return Verdict.REPLAY
        self._restart(t20)
        _mark(self.cur, seq)
        return Verdict.RESYNC

    def _too_far_ahead(self, d: int, now: float) -> bool:
        """``d`` seconds ahead is more than the sender's clock can have moved since we last
        accepted from it: a capture 6 to 12 days old (the 20-bit time wraps), or a clock
        stepped forward, which is then handled as one stepped back."""
        return self.accepted_at is not None and not within_reach(d, now - self.accepted_at)

    def _restart(self, t20: int) -> None:
        self.time_now = t20
        self.cur = bytearray(SEQ_BITS // 8)
        self.prev = bytearray(SEQ_BITS // 8)


def _mark(bits: bytearray, seq: int) -> Verdict:
    index, mask = seq >> 3, 1 << (seq & 7)
    if bits[index] & mask:
        return Verdict.DUPLICATE
    bits[index] |= mask
    return Verdict.NEW
