"""Anti-replay and dedup window for one (src, dst) direction: an RFC 6479 ring of 64-bit blocks.

Theory of operation
-------------------
Counter ``c`` owns bit ``c % 64`` of block ``(c // 64) % blocks``; bits never move. When a
higher counter arrives, only the whole blocks between the old and the new top block are
cleared (at most ``blocks`` of them), never shifted. One block is always partly stale, so
the usable window is ``(blocks - 1) * 64`` counters (``effective_size``): a counter is
accepted while ``top - counter < effective_size`` and its bit is clear.

Call :meth:`ReplayWindow.accept` only for datagrams that passed authentication, so forged
packets never move the window. It checks and updates in one call, like wireguard-go's
``ValidateCounter``, and the window is usable as soon as it is constructed.

Sizing: a copy must still be inside the window when the slowest path delivers it, so the
window must hold rate x (path skew + duplicate delay). The default 2**15 counters covers
100 kpps x 0.33 s, at 4 KiB of ring per direction.

Counters (plain ints, cumulative across :meth:`reset`):
* ``accepted``: NEW verdicts; ``late``: NEW verdicts below the current top (reordered).
* ``duplicate``: already seen (an expected extra copy, or a replay inside the window).
* ``too_old``: below the window (a very late copy, or a replay).
* ``lost``: counters never seen, only those >= the first counter ever seen. :meth:`settle`
  (the engine calls it once per probe round) takes the top as a mark and, once that mark is
  ``horizon`` seconds old, counts the counters below it that never came: later than any copy
  can be (the engine's horizon: the path timeout plus the last delayed copy's delay), so a
  loss shows within one to two horizons. The unset bits of a block being recycled and the
  blocks a big jump skips count as well, for counters no settle has covered yet. A counter
  that arrives after it was counted (later than the horizon) is still accepted, and stays
  counted in ``lost`` as well as in ``late``. :meth:`close` counts the rest at once when the
  epoch ends; :meth:`count_loss_from` forgets what was counted before the flow was verified.

Not thread-safe: call only from the engine's greenlet.
"""

from __future__ import annotations

import math
from array import array
from enum import IntEnum

from alpaca.core.constants import DEFAULT_REPLAY_WINDOW

_BLOCK_BITS = 64
_FULL = (1 << _BLOCK_BITS) - 1


class Verdict(IntEnum):
    """Result of :meth:`ReplayWindow.accept`."""

    NEW = 0        #: first time seen: deliver it (marked as seen)
    DUPLICATE = 1  #: already seen, inside the window: drop
    TOO_OLD = 2    #: below the window: drop


_NEW, _DUPLICATE, _TOO_OLD = Verdict.NEW, Verdict.DUPLICATE, Verdict.TOO_OLD


class ReplayWindow:
    """Sliding window over the 64-bit counters of one direction and one epoch."""

    __slots__ = (
        "_blocks", "_first", "_mark", "_mark_at", "_mask", "_ring", "_settled", "_top", "_window",
        "accepted", "duplicate", "late", "lost", "too_old",
    )

    def __init__(self, size: int = DEFAULT_REPLAY_WINDOW) -> None:
        """``size``: ring size in counters, a power of two >= 128.

        Raises:
            ValueError: if ``size`` is not such a power of two (as nebula's NewBits).
        """
        if size < 2 * _BLOCK_BITS or size & (size - 1):
            raise ValueError(f"replay window size {size} is not a power of two >= 128")
        self._blocks = size // _BLOCK_BITS
        self._mask = self._blocks - 1
        self._window = (self._blocks - 1) * _BLOCK_BITS
        self._ring = array("Q", [0]) * self._blocks
        self._top = -1
        self._first = -1
        self._settled = 0  # counters below it are counted (seen or lost)
        self._mark = 0  # top + 1 when settle() last took a mark...
        self._mark_at = -math.inf  # ...and when (seconds, the caller's clock)
        self.accepted = 0
        self.duplicate = 0
        self.too_old = 0
        self.lost = 0
        self.late = 0

    def __repr__(self) -> str:
        return (f"ReplayWindow(size={self._blocks * _BLOCK_BITS}, top={self._top}, "
                f"accepted={self.accepted}, duplicate={self.duplicate}, "
                f"too_old={self.too_old}, lost={self.lost}, late={self.late})")

    @property
    def effective_size(self) -> int:
        """Counters the window can tell apart: ``(blocks - 1) * 64`` (RFC 6479)."""
        return self._window

    @property
    def top(self) -> int:
        """Highest counter seen in this epoch; -1 before any."""
        return self._top

    def accept(self, counter: int) -> Verdict:
        """Check ``counter`` (0 <= counter < 2**64) and mark it seen if it is new."""
        top = self._top
        if counter > top:
            if top < 0:
                self._first = counter
            else:
                diff = (counter >> 6) - (top >> 6)
                if diff:
                    self._advance(top >> 6, diff)
            self._ring[(counter >> 6) & self._mask] |= 1 << (counter & 63)
            self._top = counter
            self.accepted += 1
            return _NEW
        if top - counter >= self._window:
            self.too_old += 1
            return _TOO_OLD
        ring = self._ring
        index = (counter >> 6) & self._mask
        bit = 1 << (counter & 63)
        block = ring[index]
        if block & bit:
            self.duplicate += 1
            return _DUPLICATE
        ring[index] = block | bit
        self.accepted += 1
        self.late += 1
        return _NEW

    def _advance(self, current: int, diff: int) -> None:
        """Recycle the ring slots of blocks ``current+1 .. current+diff``, counting losses."""
        ring, mask, blocks = self._ring, self._mask, self._blocks
        lost = 0
        for block_no in range(current + 1, current + min(diff, blocks) + 1):
            index = block_no & mask
            old = ring[index]
            if old != _FULL:
                lost += self._unseen(block_no - blocks, old)
            ring[index] = 0
        if diff > blocks:
            lost += (diff - blocks) * _BLOCK_BITS
        self.lost += lost

    def _unseen(self, block_no: int, bits: int) -> int:
        """Unset bits of block ``block_no`` that stand for counters not counted yet (>= the
        first one seen and >= the settled mark)."""
        base = block_no * _BLOCK_BITS
        first = max(self._first, self._settled)
        if base + _BLOCK_BITS <= first:
            return 0
        if base < first:
            bits |= (1 << (first - base)) - 1
        return _BLOCK_BITS - bits.bit_count()

    def settle(self, now: float, horizon: float) -> int:
        """If the mark taken by an earlier call is ``horizon`` seconds old at ``now``: count as
        lost the counters below it that never arrived, and take a new mark (the top now).
        Call it at a steady pace (once per probe round); returns how many it counted."""
        if now - self._mark_at < horizon:
            return 0
        upto, self._mark, self._mark_at = self._mark, self._top + 1, now
        low = max(self._settled, self._first)
        if self._top < 0 or upto <= low:
            return 0
        oldest = ((self._top >> 6) - self._blocks + 1) * _BLOCK_BITS  # below: counted at recycling
        start = max(low, oldest)
        seen = 0
        for block_no in range(start >> 6, ((upto - 1) >> 6) + 1):
            bits = self._ring[block_no & self._mask]
            base = block_no * _BLOCK_BITS
            if base < start:
                bits &= ~((1 << (start - base)) - 1)
            if base + _BLOCK_BITS > upto:
                bits &= (1 << (upto - base)) - 1
            seen += bits.bit_count()
        lost = max(0, upto - start) - seen
        self._settled = upto
        self.lost += lost
        return lost

    @property
    def occupancy(self) -> float:
        """Fraction of the in-window counters below ``top`` (and >= the first) that were seen.

        1.0 when there is no such counter (nothing seen yet, or only one counter).
        """
        low = max(self._top - self._window + 1, self._first)
        high = self._top - 1
        if high < low:
            return 1.0
        seen = 0
        for block_no in range(low >> 6, (high >> 6) + 1):
            bits = self._ring[block_no & self._mask]
            base = block_no * _BLOCK_BITS
            if base < low:
                bits &= ~((1 << (low - base)) - 1)
            if base + _BLOCK_BITS - 1 > high:
                bits &= (1 << (high - base + 1)) - 1
            seen += bits.bit_count()
        return seen / (high - low + 1)

    def close(self) -> int:
        """Count as lost every counter up to the top that never came, at once (the epoch is
        over: the sender restarted, or the flow is dropped); returns how many."""
        self._mark, self._mark_at = self._top + 1, -math.inf
        return self.settle(0.0, 0.0)

    def count_loss_from(self, counter: int) -> None:
        """Count nothing as lost below ``counter`` and forget what was counted so far: the
        flow was just proved live from there on (Engine.verify), and what came before (a
        capture of an earlier run replayed first) was not this run's to lose."""
        self.lost = 0
        self._settled = max(self._settled, counter)

    def reset(self) -> None:
        """Forget every counter (a new epoch); the cumulative counters are kept."""
        self._ring = array("Q", [0]) * self._blocks
        self._top = -1
        self._first = -1
        self._settled = 0
        self._mark = 0
        self._mark_at = -math.inf
