"""Bounds on the flows a relay keeps: the (src, dst) windows of traffic it only carries.

A gateway or forwarder keeps a replay window (:class:`~alpaca.core.peers.Flow`, ~5 KiB) per
(src, dst) pair it relays. Without a bound, the holder of one client key could make it keep
one per server in each direction (two per configured peer). So a relayed flow is forgotten
when silent for ``idle`` seconds, or, beyond :data:`MAX_RELAY_FLOWS`, the least recently used
one is (a datagram of an epoch older than a forgotten flow's is still ``old_epoch``). What
a forgotten flow leaves behind is small: its top counter as the next flow's floor (a replay
of anything it carried is still refused, only a copy reordered across the forgetting is
lost) and its replay counts, so the exported counters never go backwards. Flows towards us
are never forgotten while their peer is configured: their endpoint is this node. A reload
that removes a peer leaves the same floor of each of its flows (towards us too), as long as
the pair key is unchanged.

Not thread-safe: owned by the engine, called from its greenlet.
"""

from __future__ import annotations

from collections import OrderedDict

from alpaca.core.peers import Flow

#: Relayed flows kept at most (~5 KiB each): 4096 is ~20 MiB.
MAX_RELAY_FLOWS = 4096
#: Floors of forgotten flows kept at most (~200 B each); beyond, the oldest go (a replay of
#: such a flow's traffic is then carried once more, and refused by its endpoint).
MAX_FLOORS = 65536

FlowKey = tuple[int, int]


class RelayFlows:
    """The relayed flows' bookkeeping beside the engine's ``flows`` dict (which it edits)."""

    def __init__(self, max_flows: int = MAX_RELAY_FLOWS, max_floors: int = MAX_FLOORS) -> None:
        self.max_flows = max_flows
        self.max_floors = max_floors
        #: relayed flow keys -> when each last carried a new datagram (monotonic seconds), least
        #: recently used first: the first to expire and to be evicted
        self.keys: OrderedDict[FlowKey, float] = OrderedDict()
        #: (src, dst) -> (epoch, top counter) of a forgotten flow
        self.floors: dict[FlowKey, tuple[int, int]] = {}
        #: src -> [duplicate, too_old, late, accepted, lost] of its forgotten flows (the last
        #: two of its flow to us only: only those are exported)
        self.retired: dict[int, list[int]] = {}
        self.forgotten = 0

    def newer_epoch(self, key: FlowKey, epoch: int) -> bool:
        """True if a forgotten flow of ``key`` was in an epoch after ``epoch``: a datagram of
        ``epoch`` is then as old as if the flow were still kept (``old_epoch``)."""
        floor = self.floors.get(key)
        return floor is not None and floor[0] > epoch

    def inherit(self, key: FlowKey, flow: Flow) -> None:
        """A flow was just made: give it its predecessor's floor (same epoch; one of an
        earlier epoch is dropped, the sender started anew)."""
        floor = self.floors.get(key)
        if floor is not None and floor[0] <= flow.epoch:
            del self.floors[key]
            if floor[0] == flow.epoch:
                flow.floor = floor[1]

    def admit(self, key: FlowKey, flow: Flow, flows: dict[FlowKey, Flow], now: float) -> None:
        """A relayed flow was just made: give it its predecessor's floor, make room."""
        self.inherit(key, flow)
        self.keys[key] = now
        while len(self.keys) > self.max_flows:
            self._forget(next(iter(self.keys)), flows)

    def drop(self, key: FlowKey, flow: Flow, *, to_us: bool, keep_floor: bool) -> None:
        """The engine dropped ``key``'s flow (a reload removed or re-keyed a peer): keep its
        counts and, while its pair key still opens its datagrams, its top as the next flow's
        floor (a peer removed and added back must not take a replay of what it sent)."""
        self.retire(key[0], flow, to_us=to_us)
        self.keys.pop(key, None)
        self.floors.pop(key, None)
        if keep_floor:
            self._keep_floor(key, flow)

    def _keep_floor(self, key: FlowKey, flow: Flow) -> None:
        self.floors[key] = (flow.epoch, max(flow.floor, flow.window.top))
        while len(self.floors) > self.max_floors:
            del self.floors[next(iter(self.floors))]

    def touch(self, key: FlowKey, now: float) -> None:
        """``key``'s flow just carried a new datagram: it expires and is evicted last (O(1))."""
        self.keys[key] = now
        self.keys.move_to_end(key)

    def retire(self, src: int, flow: Flow, *, to_us: bool = False) -> None:
        """Keep the replay counts of a flow the engine drops (a reload, or a relayed flow
        forgotten), so that the counters exported per sender never go backwards."""
        window = flow.window
        counts = self.retired.setdefault(src, [0, 0, 0, 0, 0])
        counts[0] += window.duplicate
        counts[1] += window.too_old
        counts[2] += window.late
        if to_us:
            counts[3] += window.accepted
            if flow.verified:  # (an unverified flow's count is not this run's to show)
                window.close()  # what never came will not come to this flow
                counts[4] += window.lost

    def expire(self, flows: dict[FlowKey, Flow], now: float, idle: float) -> int:
        """Forget relayed flows silent for ``idle`` seconds (the oldest first, so only those
        are looked at); return how many."""
        count = 0
        while self.keys:
            key, last = next(iter(self.keys.items()))
            if now - last < idle:
                break
            self._forget(key, flows)
            count += 1
        return count

    def forget_pairs(self, rekeyed: set[int]) -> None:
        """Pairs whose key (the bigger id's) a reload changed: their floors go (the old
        key's datagrams no longer open)."""
        for key in [k for k in self.floors if max(k) in rekeyed]:
            del self.floors[key]

    def _forget(self, key: FlowKey, flows: dict[FlowKey, Flow]) -> None:
        del self.keys[key]
        flow = flows.pop(key, None)
        if flow is None:
            return
        self.forgotten += 1
        self.retire(key[0], flow)
        self.floors.pop(key, None)
        self._keep_floor(key, flow)
