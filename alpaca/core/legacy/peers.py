"""Settings and per-peer state of the LegacyEngine (plain values and small records).

Owned by :class:`alpaca.core.legacy.engine.LegacyEngine`; not thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alpaca.core.legacy.header import MAX_TTL, MTU_MAX
from alpaca.core.legacy.replay import DEFAULT_RESYNC_AFTER, t20_delta
from alpaca.core.settings import Addr
from alpaca.core.stats import EngineStats

PATH_SLOTS = 16
#: ``PATH_LIFE_TIME``: a path whose peer timestamp lags the peer's newest by more is stale.
PATH_LIFETIME_T20 = 10


@dataclass(frozen=True, slots=True)
class LegacyPeerSpec:
    """A peer spoken to in the legacy protocol.

    Attributes:
        peer_id: 16-bit id.
        key: the 16-byte legacy key (16 ASCII characters of the key text). Never logged.
        addr: static UDP endpoint (path 0, local port 0), or None.
    """

    peer_id: int
    key: bytes = field(repr=False)
    addr: Addr | None = None


@dataclass(frozen=True, slots=True)
class LegacySettings:
    """What the LegacyEngine is configured with. Times in seconds.

    Attributes:
        self_id: our peer id; ``peers`` must hold our own key too.
        net: the tunnel /16 as an int.
        group: group name (its first 16 bytes key the header encryption).
        peers: the legacy peers and ourselves; no other peer's key is ever used here.
        forwarders: upstream relays in order, legacy peers only (at most 3).
        gateway: where ``route_packet`` sends outside destinations (standalone use).
        mtu: largest inner packet, at most 1440.
        ttl: TTL of packets we originate.
        wall_offset: wall clock minus monotonic clock; ``t20 = int(now + wall_offset)``.
        pad: apply the 6.1.2 random padding.
        dup_syn_dns / dup_delay: one delayed copy of TCP SYN and DNS packets.
        peer_lifetime: a downstream peer without a static address is dead after this silence.
        resync_after: see :mod:`alpaca.core.legacy.replay`.
        dup_queue_max: bound on delayed copies waiting.
    """

    self_id: int
    net: int
    group: str
    peers: dict[int, LegacyPeerSpec]
    forwarders: tuple[int, ...] = ()
    gateway: int | None = None
    mtu: int = MTU_MAX
    ttl: int = MAX_TTL
    wall_offset: float = 0.0
    pad: bool = True
    dup_syn_dns: bool = True
    dup_delay: float = 0.1
    peer_lifetime: float = 60.0
    resync_after: float = DEFAULT_RESYNC_AFTER
    dup_queue_max: int = 4096


class LegacyPath:
    """One of a peer's 16 path slots: where packets stamped with that path index came from."""

    __slots__ = ("addr", "last_t20", "port", "static")

    def __init__(self, port: int, addr: Addr, last_t20: int | None, static: bool) -> None:
        self.port, self.addr, self.last_t20, self.static = port, addr, last_t20, static


class LegacyPeer:
    """Per-peer state: 16 path slots, the newest peer timestamp, traffic counters.

    ``new_clock``: (t20, when) of the first datagram on a timeline away from ``last_t20`` (a
    clock stepped, or a capture replayed on a silent flow), followed while it keeps in step.
    """

    __slots__ = ("last_seen_at", "last_t20", "new_clock", "paths", "peer_id", "rx_bytes",
                 "rx_packets", "tx_bytes", "tx_packets")

    def __init__(self, peer_id: int, addr: Addr | None) -> None:
        self.peer_id = peer_id
        self.paths: list[LegacyPath | None] = [None] * PATH_SLOTS
        if addr is not None:
            self.paths[0] = LegacyPath(0, addr, None, True)
        self.last_t20: int | None = None
        self.last_seen_at: float | None = None
        self.new_clock: tuple[int, float] | None = None
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0

    def is_stale(self, path: LegacyPath) -> bool:
        if self.last_t20 is None or path.last_t20 is None:
            return False
        return abs(t20_delta(self.last_t20, path.last_t20)) > PATH_LIFETIME_T20

    def forget_stale(self) -> None:
        """Clear the stale learned paths (a static one stays: it is only skipped)."""
        for index, path in enumerate(self.paths):
            if path is not None and not path.static and self.is_stale(path):
                self.paths[index] = None

    def learn(self, pi: int, port: int, addr: Addr, t20: int, *, first_copy: bool) -> None:
        path = self.paths[pi]
        if path is not None and path.static:
            if path.addr == addr:
                path.last_t20 = t20
        elif first_copy or path is None or self.is_stale(path):
            self.paths[pi] = LegacyPath(port, addr, t20, False)
        elif path.addr == addr:
            path.last_t20 = t20


class LegacyStats(EngineStats):
    """EngineStats plus the legacy window's verdicts and 6.1.2-specific drops."""

    __slots__ = ("dead_peer", "late", "replays", "resyncs", "seq_limit", "static_mismatch")

    def __init__(self) -> None:
        super().__init__()
        self.late = self.replays = self.resyncs = 0
        self.seq_limit = self.static_mismatch = self.dead_peer = 0
