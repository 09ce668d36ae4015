"""ProtocolMux: one node speaking the default protocol to some peers and 6.1.2 to others.

The mux has the engine surface the dataplane drives (``on_tun_packet``, ``on_datagram``,
``on_timer``, ``next_deadline``, ``stats``) and holds two engines that never see each other:
the default :class:`~alpaca.core.engine.Engine` and a
:class:`~alpaca.core.legacy.engine.LegacyEngine` whose peers are the legacy ones.

Inside: the default engine's ``route_packet`` checks the packet and picks the peer (route
cache, host routes); the packet then goes to ``send_packet`` of the engine serving that peer.

Outside, the demux rule, first match wins:
  1. **v2-shaped**: at least a v2 header and tag long, version nibble 2, a known type, ttl
     and path index <= 15, src a configured peer that is not legacy, dst us or a configured
     peer -> default engine only. (A legacy datagram's first byte is AES output; it looks
     like this with probability far below 2^-30 for a handful of peers.)
  2. **legacy-authentic**: the header decrypts under the group key to magic 1990, src (and
     dst unless it is us) are legacy peers, and the ICV matches under the pair key ->
     legacy engine (which may still drop it: replay, TTL, ...).
  3. anything else -> default engine, which counts it as a drop (bad version, bad tag, ...).
So an unauthenticated datagram never touches legacy state, and the default engine sees
every datagram the legacy engine does not claim. Peer input never raises.

Not thread-safe: call only from the hub greenlets of one gevent hub.
"""

from __future__ import annotations

from alpaca.core.constants import MAX_TTL, OVERHEAD, PROTOCOL_VERSION, PacketType
from alpaca.core.drops import DropReason
from alpaca.core.engine import Engine
from alpaca.core.header import HEADER
from alpaca.core.legacy.engine import LegacyEngine
from alpaca.core.settings import Addr
from alpaca.core.stats import EngineStats


class ProtocolMux:
    """Drives a default engine and a legacy engine as one. See the module docstring.

    Args:
        v2: the default protocol's engine; it routes every TUN packet.
        legacy: the 6.1.2 engine; its configured peers are the legacy peers.
    """

    def __init__(self, v2: Engine, legacy: LegacyEngine) -> None:
        self.v2 = v2
        self.legacy = legacy

    @property
    def legacy_peers(self) -> frozenset[int]:
        """Ids of the peers spoken to in the 6.1.2 protocol."""
        return frozenset(self.legacy.peers)

    def on_tun_packet(self, packet: bytes, now: float, csum_partial: bool = False) -> None:
        """Route with the default engine, send with the engine serving the chosen peer."""
        peer = self.v2.route_packet(packet, now)
        if peer is None:
            return
        if self.legacy.serves(peer.peer_id):
            self.legacy.send_packet(peer.peer_id, packet, now, csum_partial)
        else:
            self.v2.send_packet(peer, packet, now, csum_partial)

    def on_datagram(self, data: bytes, addr: Addr, port: int, now: float) -> None:
        """Demultiplex one datagram by the rule in the module docstring (one from a tunnel
        address goes to the default engine, which drops it as a loop: no engine learns it)."""
        v2 = self.v2
        if addr[0].startswith(v2.net_prefix) and v2.from_tunnel_address(addr[0]):
            v2.on_datagram(data, addr, port, now)
            return
        if not self.is_v2_shaped(data) and self.legacy.try_datagram(data, addr, port, now):
            return
        if self.names_legacy_peer(data):
            # The default engine holds legacy peers' keys too (for routing); their full key
            # text is on every 6.1.2 node that relays for them: no v2 datagram of theirs.
            self.v2.stats.drop(DropReason.UNKNOWN_PEER)
            return
        self.v2.on_datagram(data, addr, port, now)

    def names_legacy_peer(self, data: bytes) -> bool:
        """A v2 header whose source or destination is a legacy peer."""
        if len(data) < OVERHEAD:
            return False
        _, _, _, _, src, dst, _, _ = HEADER.unpack_from(data)
        return self.legacy.serves(src) or self.legacy.serves(dst)

    def is_v2_shaped(self, data: bytes) -> bool:
        """Rule 1: a clear v2 header between peers the default engine serves."""
        if len(data) < OVERHEAD:
            return False
        vt, _, ttl, pi, src, dst, _, _ = HEADER.unpack_from(data)
        if vt >> 4 != PROTOCOL_VERSION or vt & 0x0F > PacketType.PROBE_REPLY or ttl > MAX_TTL or pi > 15:
            return False
        peers = self.v2.peers
        return src in peers and not self.legacy.serves(src) and (dst == self.v2.self_id or dst in peers)

    def on_timer(self, now: float) -> None:
        """Run both engines' due work."""
        self.v2.on_timer(now)
        self.legacy.on_timer(now)

    def next_deadline(self) -> float | None:
        """The earlier of the two engines' deadlines."""
        times = [t for t in (self.v2.next_deadline(), self.legacy.next_deadline()) if t is not None]
        return min(times) if times else None

    def flush_routes(self) -> None:
        """The host's routes changed (routing is the default engine's)."""
        self.v2.flush_routes()

    def count_drops(self, reason: DropReason, n: int) -> None:
        """Drops seen outside the engines (the dataplane's): counted on the default engine."""
        self.v2.count_drops(reason, n)

    @property
    def stats(self) -> EngineStats:
        """Both engines' node-wide counters added up (a fresh object, read at scrape time);
        the reload counters are the default engine's alone (one reload reloads both)."""
        total = EngineStats()
        for part in (self.v2.stats, self.legacy.stats):
            total.drops = [a + b for a, b in zip(total.drops, part.drops, strict=True)]
            for name in EngineStats.__slots__:
                if name != "drops":
                    setattr(total, name, getattr(total, name) + getattr(part, name))
        for name in ("reloads", "reload_failures", "reload_failed"):
            setattr(total, name, getattr(self.v2.stats, name))
        return total
