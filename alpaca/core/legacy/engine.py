"""LegacyEngine: the forwarding rules of alpaca-tunnel 6.1.2 behind the core's interfaces.

Theory of operation
-------------------
Inside (TUN -> UDP), :meth:`LegacyEngine.send_packet` (``vpn.c:server_read``/``server_send``):
  1. check the inner IPv4 packet (size <= MTU; a tunnel source must be ours);
  2. stamp ``t20`` (wall seconds mod 2^20) and ``seq`` (restarts every second, at most 16000
     per second). One counter serves every destination, so a (t20, seq) pair is unique per
     source, which is what a 6.1.2 receiver (one window per *source*) needs;
  3. rewrite tunnel addresses to ``0.0.A.B`` (si/di), encrypt the body once;
  4. dispatch (below); a TCP SYN or DNS packet also gets one copy 100 ms later on the first
     path of the destination (the policy 6.1.2 intended, evaluated on plaintext).

Outside (UDP -> TUN or relay), :meth:`LegacyEngine.try_datagram`, in this order:
  1. group-key header decryption and magic 1990; both ids served here; ICV under the pair key
     (constant time). A datagram failing these is *not claimed* (the mux offers it to the
     default protocol) and nothing is touched;
  2. 6.1.2's static source check (pi 0 from a peer with a static address, upstream: the UDP
     source must be that address), type DATA, ``len`` fits the datagram and the MTU;
  3. for another node: TTL 0, or no target left (a dead destination; split horizon, on a UDP
     source that is not authenticated), is dropped *before* the window, so that such a copy
     does not use up the (t20, seq) of the genuine one coming on another path (6.1.2 marked
     it first); the targets found here are the ones the relay sends to;
  4. the (src, dst) time/seq window (:mod:`alpaca.core.legacy.replay`);
  5. only now learn the UDP source under (src, pi) (6.1.2 learned *before* the replay check);
     an authentic duplicate may fill an empty or stale slot, never overwrite a fresh one; a
     datagram stamped 10 s or more behind the sender's newest timestamp (a resync, or an old
     capture new to a restarted window) learns nothing and leaves the peer's clock; the
     clock (the newest timestamp) only moves forward, except to follow a clock that stepped;
  6. dst == self: decrypt, undo si/di, deliver; otherwise TTL - 1 and send as a relay.

Dispatch (``server_send``): upstream (``dst < src``) with forwarders: once to each forwarder's
static address, pi = (i + 1) << 2 (0 when the forwarder is dst) at the origin, pi_b += i at a
relay. Otherwise to every path of dst whose peer timestamp is within 10 s of the newest one.
Split horizon (not back to the sender's IP) and the loop check (not to an address that is
the inner packet's own source or destination) as in 6.1.2. A downstream peer whose paths are
all learned and who was silent for 60 s is dead: nothing is sent.

Not thread-safe: call only from the hub greenlets of one gevent hub.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from alpaca.core import ippkt, offload
from alpaca.core.drops import DropReason
from alpaca.core.dupsend import DupSendScheduler
from alpaca.core.ids import RESERVED_IDS
from alpaca.core.legacy import codec, inner
from alpaca.core.legacy.header import (
    MTU_MAX,
    PREFIX_LEN,
    TYPE_DATA,
    LegacyHeader,
    pack,
    unpack,
    with_hop_word,
)
from alpaca.core.legacy.peers import LegacyPeer, LegacySettings, LegacyStats
from alpaca.core.legacy.replay import MAX_DELAY, LegacyWindow, Verdict, t20_delta, within_reach
from alpaca.core.output import Output
from alpaca.core.settings import Addr

NET_MASK = 0xFFFF0000
#: ``SEQ_LEVEL_1``: packets per second a 6.1.2 receiver's bitmap can hold.
SEQ_LIMIT = 16000
#: Inner bytes a relay decrypts to evaluate the duplicate-send policy (``IP_LEN``).
DUP_PEEK = 64
MAX_DATAGRAM = 1500

#: Where a datagram is sent: (path index, local port, address).
Target = tuple[int, int, Addr]


class LegacyEngine:
    """Sans-IO engine of the 6.1.2 protocol. See the module docstring.

    Args:
        settings: what the legacy side is configured with.
        out: where datagrams and TUN writes go (port 0 is used for static paths).
        random_bytes: source of ``rand``, padding lengths and padding bytes.
    """

    def __init__(self, settings: LegacySettings, out: Output, *,
                 random_bytes: Callable[[int], bytes]) -> None:
        self.out = out
        self.random_bytes = random_bytes
        self.stats = LegacyStats()
        self.peers: dict[int, LegacyPeer] = {}
        self.windows: dict[tuple[int, int], LegacyWindow] = {}
        self.dup = DupSendScheduler(settings.dup_queue_max)
        self._second: int | None = None
        self._seq = 0
        self._apply(settings)

    def _apply(self, settings: LegacySettings) -> None:
        if settings.self_id not in settings.peers:
            raise ValueError("LegacySettings.peers must hold the own key")
        self.settings = settings
        self.self_id = settings.self_id
        self.self_ip = settings.net | settings.self_id
        self.group = codec.Ecb(codec.group_key(settings.group))
        self.keys = {p: codec.Ecb(spec.key) for p, spec in settings.peers.items()}
        old = self.peers
        self.peers = {}
        for p, spec in settings.peers.items():
            if p == self.self_id:
                continue
            peer = old.get(p)
            if peer is None or _static(peer) != spec.addr:
                fresh = LegacyPeer(p, spec.addr)
                if peer is not None:
                    fresh.paths[1:] = peer.paths[1:]
                    fresh.last_t20, fresh.last_seen_at = peer.last_t20, peer.last_seen_at
                peer = fresh
            self.peers[p] = peer

    def reload(self, settings: LegacySettings) -> None:
        """New keys, peers or forwarders; learned paths stay, a changed key resets its windows.
        The clock offset of the start is kept: a wall clock stepped back since must not make
        us stamp a second we already used (a receiver drops the repeated (t20, seq) pairs);
        receivers compare our timestamps only with each other."""
        settings = replace(settings, wall_offset=self.settings.wall_offset)
        old = self.settings.peers
        changed = {p for p, s in old.items() if p not in settings.peers or settings.peers[p].key != s.key}
        for flow in [f for f in self.windows if f[0] in changed or f[1] in changed]:
            del self.windows[flow]
        self._apply(settings)
        self.dup.limit = settings.dup_queue_max
        ways = {(p.port, p.addr) for peer in self.peers.values() for p in peer.paths if p is not None}
        self.dup.cancel(lambda copy: (copy.port, copy.addr) not in ways)  # its peer removed or moved
        self.stats.reloads += 1

    def serves(self, peer_id: int) -> bool:
        """True if ``peer_id`` is spoken to in the legacy protocol."""
        return peer_id in self.peers

    # ----------------------------------------------------------------- inside: TUN -> UDP
    def on_tun_packet(self, packet: bytes, now: float, csum_partial: bool = False) -> None:
        """Handle one IP packet read from the TUN device (standalone use, without the mux)."""
        peer = self.route_packet(packet, now)
        if peer is not None:
            self.send_packet(peer, packet, now, csum_partial)

    def route_packet(self, packet: bytes, now: float) -> int | None:
        """The peer of a TUN packet: a tunnel destination's id, else the gateway; None = drop.

        The mux routes with the default engine (route cache, host routes) instead.
        """
        ips = ippkt.addresses(packet)
        if ips is None:
            self.stats.drop(DropReason.NOT_IPV4)
            return None
        dst_ip = ips[1]
        dst = dst_ip & 0xFFFF if dst_ip & NET_MASK == self.settings.net else self.settings.gateway
        if dst is None or dst not in self.peers:
            self.stats.drop(DropReason.NO_ROUTE)
            return None
        return dst

    def send_packet(self, peer_id: int, packet: bytes, now: float, csum_partial: bool = False) -> None:
        """Encrypt a TUN packet for ``peer_id`` (a legacy peer) and dispatch it.

        The 6.1.2 protocol has no partial checksums: a partial one is completed here.
        """
        s = self.settings
        complete = offload.whole(packet, csum_partial)
        if complete is None:
            self.stats.drop(DropReason.MALFORMED)
            return
        packet = complete
        ips = ippkt.addresses(packet)
        reason = self._check_outbound(peer_id, packet, ips)
        if reason is not None:
            self.stats.drop(reason)
            return
        assert ips is not None
        seq = self._next_seq(now)
        if seq is None:
            self.stats.seq_limit += 1
            self.stats.drop(DropReason.LEGACY)
            return
        t20, seq_no = seq
        rewritten, si, di = inner.outbound(packet, ips[0], ips[1], s.net, peer_id, self.self_id)
        rand = int.from_bytes(self.random_bytes(2), "big") & 0xFFF
        h = LegacyHeader(src=self.self_id, dst=peer_id, length=len(packet), t20=t20,
                         seq=seq_no, rand=rand, ttl=s.ttl, si=si, di=di)
        plain = pack(h)
        body = codec.seal_body(self._pair(self.self_id, peer_id), plain, rewritten)
        peer = self.peers[peer_id]
        peer.tx_packets += 1
        peer.tx_bytes += len(packet)
        targets = self._targets(h, None, ips, now, relay=False)
        if targets is not None:
            dup = s.dup_syn_dns and ippkt.is_syn_or_dns(packet)
            self._dispatch(h, s.ttl, plain, body, targets, now, dup=dup)

    def _check_outbound(self, peer_id: int, packet: bytes, ips: tuple[int, int] | None
                        ) -> DropReason | None:
        if peer_id not in self.peers:
            return DropReason.NO_ROUTE
        if len(packet) > self.settings.mtu:
            return DropReason.TOO_BIG
        if ips is None:
            return DropReason.NOT_IPV4
        if ips[0] & NET_MASK == self.settings.net and ips[0] != self.self_ip:
            return DropReason.FOREIGN_SOURCE
        return None

    def _next_seq(self, now: float) -> tuple[int, int] | None:
        t20 = int(now + self.settings.wall_offset) & 0xFFFFF
        if t20 != self._second:
            self._second, self._seq = t20, 0
        else:
            self._seq += 1
        # < not <=: a 6.1.2 receiver records seq 16000 one byte past its bitmap
        return (t20, self._seq) if self._seq < SEQ_LIMIT else None

    def _pair(self, a: int, b: int) -> codec.Ecb:
        return self.keys[max(a, b)]

    # ----------------------------------------------------------------- dispatch
    def _targets(self, h: LegacyHeader, came_from: str | None, ips: tuple[int, int] | None,
                 now: float, *, relay: bool) -> list[Target] | None:
        """Where ``h`` goes by the 6.1.2 rules (``server_send``); None: nowhere, the drop
        counted. Changes nothing else, so a relay asks before its replay window (see
        :meth:`_relay_targets`). ``came_from``: the IP a relayed datagram came from (split
        horizon); ``ips``: the inner addresses of one we originate (loop check)."""
        dst_peer = self.peers[h.dst]
        s = self.settings
        if h.dst > h.src and not _has_static(dst_peer) and _silent(dst_peer, now, s.peer_lifetime):
            self.stats.dead_peer += 1
            self.stats.drop(DropReason.NO_PATH)
            return None
        if self._upstream(h):
            targets = self._forwarder_targets(h, came_from, relay)
        else:
            targets = _direct_targets(dst_peer, h.pi, came_from)
        if ips is not None and any(_ip(a) in ips for _, _, a in targets):
            self.stats.drop(DropReason.LOOP)
            return None
        if not targets:
            self.stats.drop(DropReason.NO_PATH)
            return None
        return targets

    def _upstream(self, h: LegacyHeader) -> bool:
        """Whether ``h`` goes to the forwarders rather than to the paths of dst."""
        return bool(self.settings.forwarders) and h.dst < h.src

    def _dispatch(self, h: LegacyHeader, ttl: int, plain: bytes, tail: bytes, targets: list[Target],
                  now: float, *, dup: bool) -> int:
        """Send to ``targets`` (from :meth:`_targets`) with ``ttl``; ``tail`` is everything
        after the ICV. Returns copies sent."""
        dst_peer = self.peers[h.dst]
        if not self._upstream(h):
            dst_peer.forget_stale()  # as 6.1.2 does while it sends
        pair = self._pair(h.src, h.dst)
        sent = 0
        last = b""
        for pi, port, addr in targets:
            hop = with_hop_word(plain, ttl, pi)
            last = codec.protect(self.group, pair, hop) + tail
            sent += self._send(port, addr, last)
        if dup:
            self._schedule_dup(dst_peer, last, now)
        return sent

    def _forwarder_targets(self, h: LegacyHeader, came_from: str | None, relay: bool) -> list[Target]:
        targets = []
        for i, fwd in enumerate(self.settings.forwarders):
            peer = self.peers.get(fwd)
            path = peer.paths[0] if peer is not None and fwd not in RESERVED_IDS else None
            if path is None or path.addr[0] == came_from:
                continue
            targets.append((_forwarder_pi(h, i, fwd, relay), path.port, path.addr))
        return targets

    def _send(self, port: int, addr: Addr, data: bytes) -> int:
        if self.settings.pad:
            data = codec.add_padding(data, self.random_bytes)
        if not self.out.send(port, addr, data):
            self.stats.drop(DropReason.SEND_ERROR)
            return 0
        self.stats.sent_datagrams += 1
        self.stats.sent_bytes += len(data)
        return 1

    def _schedule_dup(self, peer: LegacyPeer, datagram: bytes, now: float) -> None:
        """6.1.2: one copy to the first path of dst in index order, whatever its freshness."""
        path = next((p for p in peer.paths if p is not None), None)
        if path is None:
            return
        if not self.dup.schedule(now + self.settings.dup_delay, path.port, path.addr, datagram):
            self.stats.drop(DropReason.DUP_QUEUE_FULL)

    # ----------------------------------------------------------------- outside: UDP -> TUN
    def on_datagram(self, data: bytes, addr: Addr, port: int, now: float) -> None:
        """Handle one datagram (standalone use); one that is not ours is a counted drop."""
        if not self.try_datagram(data, addr, port, now):
            self.stats.drop(DropReason.LEGACY)

    def try_datagram(self, data: bytes, addr: Addr, port: int, now: float) -> bool:
        """Handle ``data`` if it is an authentic legacy datagram between served peers.

        Returns False, having changed nothing, when the header does not decrypt to magic 1990
        under the group key, an id is not served here, or the ICV does not match.
        """
        if len(data) > MAX_DATAGRAM:
            return False
        plain = codec.open_header(self.group, data)
        if plain is None:
            return False
        h = unpack(plain)
        if h.src not in self.peers or (h.dst != self.self_id and h.dst not in self.peers):
            return False
        if h.src == h.dst:  # 6.1.2 drops these too (flow_filter); never relayed
            return False
        if not codec.icv_ok(self._pair(h.src, h.dst), plain, data):
            return False
        reason = self._check_inbound(h, data, addr)
        if reason is not None:
            self.stats.drop(reason)
            return True
        targets = None
        if h.dst != self.self_id:
            targets = self._relay_targets(h, addr[0], now)
            if targets is None:
                return True
        peer = self.peers[h.src]
        window = self._window(peer, h)
        telling = self._tells_where(peer, h, now)
        newest = telling and _is_newest(peer, h)
        verdict = window.check(h.t20, h.seq, now, on_its_clock=newest)
        if verdict.accepted and not telling and self._clock_stepped(peer, h, now):
            telling = newest = True  # its clock moves to the new timeline, back or forth
        if not verdict.accepted:
            self._count_rejected(verdict)
            if verdict is Verdict.DUPLICATE and telling:
                peer.learn(h.pi, port, addr, h.t20, first_copy=False)
            return True
        if verdict is Verdict.RESYNC:
            self.stats.resyncs += 1
        elif telling:
            peer.learn(h.pi, port, addr, h.t20, first_copy=True)
            if newest:  # a late one never sets the clock back
                peer.last_t20 = h.t20
            peer.last_seen_at = now
            peer.new_clock = None
        if targets is None:  # addressed to us
            self._deliver(peer, h, plain, data)
        else:
            self._relay(h, plain, data, targets, now)
        return True

    def _relay_targets(self, h: LegacyHeader, came_from: str, now: float) -> list[Target] | None:
        """Where a datagram for another node goes, found *before* its (t20, seq) is marked
        seen (None: dropped and counted). The UDP source is not authenticated: a copy sent to
        us from the address of our only next hop (split horizon leaves no target) must not
        use up the counter of the genuine copy coming on another path."""
        if h.ttl == 0:
            self.stats.drop(DropReason.TTL_EXPIRED)
            return None
        return self._targets(h, came_from, None, now, relay=True)

    def _window(self, peer: LegacyPeer, h: LegacyHeader) -> LegacyWindow:
        window = self.windows.get((h.src, h.dst))
        if window is None:
            window = self.windows[(h.src, h.dst)] = LegacyWindow(self.settings.resync_after)
            if peer.last_t20 is not None:  # its clock is known: a capture is as old as it is
                window.start_at(peer.last_t20, peer.last_seen_at)
        return window

    def _clock_stepped(self, peer: LegacyPeer, h: LegacyHeader, now: float) -> bool:
        """Whether an accepted datagram away from its sender's known clock shows that clock
        stepped (a C node's NTP sync; the C node takes any timestamp): its timeline has kept
        in step with ours for ``resync_after`` seconds while nothing came on the known one for
        as long. Then the sender's clock moves there. (A capture replayed at its pace on a
        flow silent that long, from a sender silent that long, passes too.)"""
        if not self._may_teach(h):
            return False
        start = peer.new_clock
        if start is None or abs(t20_delta(h.t20, start[0]) - (now - start[1])) > MAX_DELAY:
            peer.new_clock = (h.t20, now)  # a timeline begins, or another one
            return False
        after = self.settings.resync_after
        quiet = peer.last_seen_at is None or now - peer.last_seen_at >= after
        return quiet and now - start[1] >= after

    def _may_teach(self, h: LegacyHeader) -> bool:
        """The key test of :meth:`_tells_where` and :meth:`_clock_stepped`: sealed with the
        sender's own key (src > dst), or a smaller peer's datagram to us on path 0."""
        return h.src > h.dst or (h.dst == self.self_id and h.pi == 0)

    def _tells_where(self, peer: LegacyPeer, h: LegacyHeader, now: float) -> bool:
        """Whether an accepted datagram may teach its sender's paths and clock: it must be
        sealed with the sender's own key (src > dst) or be addressed to us (relayed with
        the bigger dst's key, dst could have forged it), and be stamped where the sender's
        clock can be: less than MAX_DELAY behind its newest timestamp (a capture after a
        resync) and no further ahead than the time passed since (a capture 6-12 days old:
        the 20-bit time wraps). Such a datagram is still delivered or relayed. A smaller
        peer's datagram to us is sealed with our own key, which every smaller peer and relay
        of ours holds: it teaches path 0 only (6.1.2 sends those with path index 0), so none of
        them can add an address of its choice to another server's paths."""
        if not self._may_teach(h):
            return False
        if peer.last_t20 is None or peer.last_seen_at is None:
            return True
        d = t20_delta(h.t20, peer.last_t20)
        return d > -MAX_DELAY and within_reach(d, now - peer.last_seen_at)

    def _check_inbound(self, h: LegacyHeader, data: bytes, addr: Addr) -> DropReason | None:
        if h.ptype != TYPE_DATA:
            return DropReason.BAD_TYPE
        if h.length < 20 or h.length > MTU_MAX or PREFIX_LEN + codec.body_len(h.length) > len(data):
            return DropReason.MALFORMED
        if h.pi == 0 and h.dst < h.src:
            path = self.peers[h.src].paths[0]
            if path is not None and path.static and path.addr != addr:
                self.stats.static_mismatch += 1
                return DropReason.LEGACY
        return None

    def _count_rejected(self, verdict: Verdict) -> None:
        if verdict is Verdict.DUPLICATE:
            self.stats.drop(DropReason.DUPLICATE)
            return
        if verdict is Verdict.LATE:
            self.stats.late += 1
        elif verdict is Verdict.REPLAY:
            self.stats.replays += 1
        self.stats.drop(DropReason.TOO_OLD if verdict is not Verdict.BAD_SEQ else DropReason.MALFORMED)

    def _deliver(self, peer: LegacyPeer, h: LegacyHeader, plain: bytes, data: bytes) -> None:
        """b1: decrypt, undo the si/di rewriting, write to the TUN device."""
        packet = codec.open_body(self._pair(h.src, h.dst), plain, data, h.length)
        ips = ippkt.addresses(packet)
        if ips is None:
            self.stats.drop(DropReason.NOT_IPV4)
            return
        if not h.si and ips[0] & NET_MASK == self.settings.net:
            self.stats.drop(DropReason.SPOOFED_SOURCE)
            return
        packet = inner.inbound(packet, h.si, h.di, self.settings.net, h.src, h.dst)
        if not self.out.write_tun(packet):
            self.stats.drop(DropReason.TUN_WRITE_ERROR)
            return
        self.stats.delivered(peer, len(packet))

    def _relay(self, h: LegacyHeader, plain: bytes, data: bytes, targets: list[Target],
               now: float) -> None:
        """Forward as 6.1.2 does: TTL - 1, the received bytes after the ICV carried along."""
        dup = False
        if self.settings.dup_syn_dns:
            peek = min(h.length, DUP_PEEK)
            head = codec.open_body(self._pair(h.src, h.dst), plain, data, peek)
            dup = len(head) >= 20 and head[0] >> 4 == 4 and ippkt.is_syn_or_dns(head)
        if self._dispatch(h, h.ttl - 1, plain, data[PREFIX_LEN:], targets, now, dup=dup):
            self.stats.forwarded_packets += 1
            self.stats.forwarded_bytes += len(data)

    # ----------------------------------------------------------------- time
    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` next has work (monotonic seconds)."""
        return self.dup.next_deadline()

    def on_timer(self, now: float) -> None:
        """Send the delayed copies that are due (with fresh padding)."""
        for copy in self.dup.pop_due(now):
            if self._send(copy.port, copy.addr, copy.data):
                self.stats.dup_copies_sent += 1


def _forwarder_pi(h: LegacyHeader, i: int, fwd: int, relay: bool) -> int:
    """6.1.2's path index towards forwarder #i: origin pi_a = i + 1 (0 if it is dst); relay pi_b += i."""
    if relay:
        return (h.pi & 0b1100) | min((h.pi & 3) + i, 3)
    return 0 if fwd == h.dst else (i + 1) << 2


def _is_newest(peer: LegacyPeer, h: LegacyHeader) -> bool:
    """Whether ``h`` is stamped at or after its sender's newest known timestamp: only such a
    datagram may restart a window (``on_its_clock``) or move the clock. One up to 9 s behind
    it (late, or a capture) still teaches a path when its window takes it as new; were it
    taken for the clock, captures of 10 s before it would be on that clock, restart a live
    window, and be delivered again."""
    return peer.last_t20 is None or t20_delta(h.t20, peer.last_t20) >= 0


def _direct_targets(peer: LegacyPeer, pi: int, came_from: str | None) -> list[Target]:
    """Every path of ``peer`` fresh within 10 s of its newest timestamp, but the one back to
    ``came_from`` (split horizon)."""
    return [(pi, path.port, path.addr) for path in peer.paths
            if path is not None and not peer.is_stale(path) and path.addr[0] != came_from]


def _static(peer: LegacyPeer) -> Addr | None:
    path = peer.paths[0]
    return path.addr if path is not None and path.static else None


def _has_static(peer: LegacyPeer) -> bool:
    return _static(peer) is not None


def _silent(peer: LegacyPeer, now: float, lifetime: float) -> bool:
    return peer.last_seen_at is None or now - peer.last_seen_at > lifetime


def _ip(addr: Addr) -> int:
    return ippkt.ip_to_int(addr[0])
