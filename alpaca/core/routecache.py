"""Route cache: (inner dst, inner src) -> gateway peer id, for destinations outside the tunnel.

The host's routing table decides which peer is the gateway of an outside destination (a route
``via <net>.<id>``). Asking the kernel costs a netlink round trip, so answers (including "no
peer") are cached, bounded in size, expired after ``ttl`` seconds and flushed whenever routes,
rules or addresses change. Owned by the Engine; not thread-safe.
"""

from __future__ import annotations

from collections.abc import Callable


class LookupFailed(Exception):
    """The host could not be asked (its netlink socket failed). Not cached: the next packet
    asks again."""


class RouteCache:
    """A bounded map with expiry. Eviction drops the oldest insertion (dict order)."""

    def __init__(self, size: int, ttl: float) -> None:
        if size < 1:
            raise ValueError("route cache size must be at least 1")
        self._size = size
        self._ttl = ttl
        self._entries: dict[tuple[int, int], tuple[int | None, float]] = {}
        self.hits = 0
        self.misses = 0
        self.flushes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(
        self, dst: int, src: int, now: float, resolve: Callable[[int, int], int | None]
    ) -> int | None:
        """Return the cached peer for (dst, src), asking ``resolve`` on a miss or expiry.

        Raises:
            LookupFailed: from ``resolve``, nothing cached.
        """
        key = (dst, src)
        entry = self._entries.get(key)
        if entry is not None and entry[1] > now:
            self.hits += 1
            return entry[0]
        self.misses += 1
        peer = resolve(dst, src)
        if entry is None and len(self._entries) >= self._size:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (peer, now + self._ttl)
        return peer

    def flush(self) -> None:
        """Forget everything (called on route, rule or address changes)."""
        self._entries.clear()
        self.flushes += 1
