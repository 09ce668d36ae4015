"""The forwarding engine: TUN packets and datagrams in, datagrams and TUN writes out.

Theory of operation
-------------------
Inside (TUN -> UDP), :meth:`Engine.on_tun_packet`:
  1. check the inner IPv4 packet (size <= MTU, source is ours if it is a tunnel address);
  2. choose ``dst``: a tunnel address names its peer (low 16 bits); any other destination
     asks the host's routes (``via <net>.<id>``) through the route cache;
  3. seal it for (self -> dst) under our epoch with the next counter (AES-256-GCM);
  4. dispatch (below), and schedule delayed copies if the duplicate-send policy selects it.

Outside (UDP -> TUN or relay), :meth:`Engine.on_datagram`, in this order:
  1. parse and sanity-check the header (no state touched);
  2. authenticate with the (src -> dst, epoch) key: a forgery is dropped here;
  3. not for us: find where it can go (dispatch, TTL - 1) *before* the window, so that a copy
     whose unauthenticated ttl or UDP source leaves it nowhere to go is dropped without
     using up the counter of the genuine copy on another path;
  4. the (src, dst) replay window: duplicates and too-old counters are dropped here;
  5. only now learn the sender's address under its path index;
  6. b1: for us -> TUN (or probe handling); otherwise relay it to the targets of step 3.

Dispatch: where a datagram goes is decided by :mod:`alpaca.core.routing` (the wiki's rules,
split horizon); the engine sends it there and schedules delayed copies. Loop check (our own
packets): never to an address that is the inner packet's own source or destination. TTL and
the relays' replay windows bound any loop a configuration could build.

Not thread-safe: call only from the hub greenlets of one gevent hub.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from alpaca.core import ippkt, routing
from alpaca.core.constants import (
    COPY_TTL,
    MAX_DATAGRAM,
    MAX_DUP_COPIES,
    MAX_DUP_DELAY,
    MAX_TTL,
    OVERHEAD,
    PROTOCOL_VERSION,
    Flag,
    PacketType,
)
from alpaca.core.crypto import KeyRing
from alpaca.core.drops import DropReason
from alpaca.core.dupsend import DelayedCopy, DupSendScheduler
from alpaca.core.header import HEADER, with_hop_fields
from alpaca.core.ids import RESERVED_IDS, format_peer_id
from alpaca.core.output import Output, RouteResolver
from alpaca.core.padding import pad, unpad
from alpaca.core.paths import Generation, Path, PathKind, rx_slot
from alpaca.core.peers import NO_CHALLENGES, Flow, Peer
from alpaca.core.probing import CHALLENGE_INTERVAL, Prober
from alpaca.core.relayflows import RelayFlows
from alpaca.core.replay import Verdict
from alpaca.core.routecache import LookupFailed, RouteCache
from alpaca.core.routing import Target
from alpaca.core.settings import Addr, DupPolicy, EngineSettings
from alpaca.core.stats import EngineStats

log = logging.getLogger(__name__)

NET_MASK = 0xFFFF0000
_PADDED = int(Flag.PADDED)
_CSUM_PARTIAL = int(Flag.CSUM_PARTIAL)
_COPIED = int(Flag.COPIED)
MAX_CHALLENGES = 4
#: What :meth:`Engine._route` answers when the host could not be asked (not a peer id).
LOOKUP_FAILED = -1


class Engine:
    """Sans-IO forwarding engine of one node. See the module docstring.

    Args:
        settings: what the node is configured with.
        out: where datagrams and TUN writes go.
        epoch: this run's session epoch (strictly greater than any earlier run's).
        random_bytes: source of padding bytes and of the probe ids' mask (os.urandom).
        resolver: asks the host for the gateway of an outside destination; None = no routes.
    """

    def __init__(
        self, settings: EngineSettings, out: Output, *, epoch: int,
        random_bytes: Callable[[int], bytes], resolver: RouteResolver | None = None,
    ) -> None:
        self.settings = settings
        self.out = out
        self.epoch = epoch
        self.random_bytes = random_bytes
        self.resolver = resolver
        self.stats = EngineStats()
        self.self_id = settings.self_id
        self.self_ip = settings.net | settings.self_id
        #: dotted prefix of the tunnel network ("10.17."), for :meth:`from_tunnel_address`
        self.net_prefix = f"{settings.net >> 24}.{(settings.net >> 16) & 0xFF}."
        self.keys = KeyRing(settings.group, {p.peer_id: p.key for p in settings.peers.values()})
        self.generation = Generation()
        self.peers: dict[int, Peer] = {}
        self.flows: dict[tuple[int, int], Flow] = {}
        #: bounds the relayed ones among ``flows`` (expiry, cap)
        self.relayed = RelayFlows()
        self.routes = RouteCache(settings.route_cache_size, settings.route_cache_ttl)
        self.dup = DupSendScheduler(settings.dup_queue_max)
        self.prober = Prober(self)
        self._copy_turn = 0
        #: next_counter of peers a reload removed, by id (at most one entry per possible id):
        #: re-added in this run (same epoch, maybe the same key), a peer goes on from there,
        #: never reusing a nonce
        self._retired_counters: dict[int, int] = {}
        #: the peers' static addresses and whose they are: a datagram relayed from one came
        #: through a relay of ours
        self._static_addrs: dict[Addr, int] = {}
        #: address -> the peers whose paths there a probe reply confirmed (a relay and those
        #: behind it share its address; checked when used; refilled by every reply, cleared
        #: when it outgrows the peers' paths)
        self.peer_at: dict[Addr, set[int]] = {}
        self._apply_peers(settings)

    # ----------------------------------------------------------------- configuration
    def reload(self, settings: EngineSettings) -> None:
        """Apply new settings (secrets or forwarders changed) without losing learned state.

        Unchanged peers keep their paths, counters and replay windows; removed peers and
        their flows are forgotten, except our send counter towards them (a nonce is never
        reused within a run) and each flow's top as the floor of the next one (added back
        with the same key, a peer must not take a replay of what it sent before). A flow
        whose pair key changed (the bigger id's key: crypto.KeyRing) starts over. Delayed
        copies still queued for a peer that moved or left, or sealed by us under a replaced
        pair key, are cancelled.
        """
        old = self.settings.peers
        rekeyed = {p for p, spec in old.items() if p in settings.peers and settings.peers[p].key != spec.key}
        removed = set(old) - set(settings.peers)
        for key in [k for k in self.flows if max(k) in rekeyed or k[0] in removed or k[1] in removed]:
            self.relayed.drop(key, self.flows.pop(key), to_us=key[1] == self.self_id,
                              keep_floor=max(key) not in rekeyed)
        self.relayed.forget_pairs(rekeyed)
        for peer_id in removed:  # a removed peer's series end; added back, it starts over
            self.relayed.retired.pop(peer_id, None)
            gone = self.peers.pop(peer_id, None)
            if gone is not None:
                self._retired_counters[peer_id] = gone.next_counter
        self.prober.timeout_shortened |= settings.path_timeout < self.settings.path_timeout
        self.settings = settings
        self.dup.limit = settings.dup_queue_max
        self.keys.replace_keys({p.peer_id: p.key for p in settings.peers.values()})
        self._apply_peers(settings)
        self._cancel_stale_copies(rekeyed, removed)
        self.routes.flush()
        self.generation.bump()
        self.prober.next_probe_at = self.prober.next_tick_at = 0.0  # learn new peers' links now
        self.prober.sweep()
        self.stats.reloads += 1

    def forget_paths(self, peer_ids: set[int]) -> None:
        """Forget the paths learned to ``peer_ids`` and the delayed copies queued for them
        (another engine serves them now: a reload turned them legacy), so that nothing is
        sent or probed there. Their send counters stay (a nonce is never reused), and so do
        their traffic counters and static paths' (exported: they never go backwards)."""
        for peer_id in peer_ids & set(self.peers):
            old = self.peers[peer_id]
            fresh = Peer(peer_id, self.settings.ports, old.addr, self.generation)
            fresh.take_over(old, paths=False)
            self.peers[peer_id] = fresh
        self.prober.sweep()
        self._cancel_stale_copies(set(), set())
        self.routes.flush()
        self.generation.bump()

    def _apply_peers(self, settings: EngineSettings) -> None:
        self._copy_policy = DupPolicy.NONE if settings.dup_copies == 0 else settings.dup_policy
        self._static_addrs = {p.addr: p.peer_id for p in settings.peers.values() if p.addr is not None}
        for known in self.peers.values():
            known.tx_cipher = None  # the key may have changed: seal() asks the ring again
        for spec in settings.peers.values():
            if spec.peer_id == self.self_id:
                continue
            peer = self.peers.get(spec.peer_id)
            if peer is None or peer.addr != spec.addr:
                fresh = Peer(spec.peer_id, settings.ports, spec.addr, self.generation)
                if peer is not None:
                    fresh.take_over(peer)
                else:
                    fresh.next_counter = self._retired_counters.pop(spec.peer_id, 0)
                self.peers[spec.peer_id] = fresh
        names = [f"via-{format_peer_id(f)}" for f in settings.forwarders]
        for peer in self.peers.values():
            wants_via = peer.peer_id == settings.gateway and settings.forwarders
            peer.set_via_paths(settings.forwarders if wants_via else (), names)

    def _cancel_stale_copies(self, rekeyed: set[int], removed: set[int]) -> None:
        links = {id(link) for peer in self.peers.values() for link in peer.paths.links()}
        me = self.self_id

        def stale(copy: DelayedCopy) -> bool:
            src, dst = HEADER.unpack_from(copy.data)[4:6]
            return (id(copy.path) not in links or src in removed or dst in removed
                    or (src == me and max(src, dst) in rekeyed))

        self.dup.cancel(stale)

    def flush_routes(self) -> None:
        """The host's routes, rules or addresses changed: forget cached route answers."""
        self.routes.flush()

    def count_drops(self, reason: DropReason, n: int) -> None:
        """Count ``n`` drops its driver saw (a refused batched send, a bad offload frame)."""
        self.stats.drops[reason] += n

    # ----------------------------------------------------------------- inside: TUN -> UDP
    def on_tun_packet(self, packet: bytes, now: float, csum_partial: bool = False) -> None:
        """Handle one IP packet read from the TUN device (``csum_partial``: see Flag)."""
        peer = self.route_packet(packet, now)
        if peer is not None:
            self.send_packet(peer, packet, now, csum_partial)

    def route_packet(self, packet: bytes, now: float) -> Peer | None:
        """Check a TUN packet and choose its peer; None (and a counted drop) if it has none."""
        s = self.settings
        if len(packet) > s.mtu:
            self.stats.drop(DropReason.TOO_BIG)
            return None
        ips = ippkt.addresses(packet)
        if ips is None:
            self.stats.drop(DropReason.NOT_IPV4)
            return None
        src_ip, dst_ip = ips
        if src_ip & NET_MASK == s.net and src_ip != self.self_ip:
            self.stats.drop(DropReason.FOREIGN_SOURCE)
            return None
        dst = dst_ip & 0xFFFF if dst_ip & NET_MASK == s.net else self._route(dst_ip, src_ip, now)
        peer = self.peers.get(dst) if dst is not None else None
        if dst is None or peer is None:
            self.stats.drop(DropReason.NO_ROUTE)
        return peer

    def send_packet(self, peer: Peer, packet: bytes, now: float, csum_partial: bool = False) -> None:
        """Seal a checked TUN packet for ``peer`` and send it (with delayed copies). A packet
        with nowhere to go is dropped before it is sealed: it uses no counter, so the peer
        does not count it as lost on the way."""
        s = self.settings
        plan = peer.plan
        if plan is None or plan[0] != self.generation.value:
            first, spare = routing.targets(self.settings, self.peers, self.self_id, peer.peer_id, None, None)
            first = self._measurable(first, peer.peer_id)
            ips = {t[0].ip for t in first} | {t[0].ip for t in spare}
            plan = peer.plan = (self.generation.value, first, spare, ips)
        targets, spare, link_ips = plan[1], plan[2], plan[3]
        inner = ippkt.ADDRS.unpack_from(packet, 12)  # route_packet checked it is IPv4
        # The loop check only when a link goes to the inner packet's own source or destination.
        if inner[0] in link_ips or inner[1] in link_ips:
            targets = [t for t in targets if t[0].ip not in inner]
            spare = [t for t in spare if t[0].ip not in inner]
            if not targets:
                self.stats.drop(DropReason.LOOP)
                return
        if not targets:
            self.stats.drop(DropReason.NO_PATH)
            return
        flags = _CSUM_PARTIAL if csum_partial else 0
        copies = self._copies_for(packet)
        if copies:
            flags |= _COPIED
        peer.tx_packets += 1
        peer.tx_bytes += len(packet)
        peer.last_active_at = now
        if s.pad_small and len(packet) + OVERHEAD <= 500:
            packet, padded = pad(packet, self.random_bytes)
            flags |= padded
        datagram = self.seal(peer, PacketType.DATA, flags, packet, s.ttl, targets[0][1])
        self._send_all(datagram, targets, spare, now, s.ttl, copies, True)

    def _measurable(self, targets: list[Target], dst: int) -> list[Target]:
        """``targets`` with no accounting path on links that share a relay: two of dst's paths
        at one relay's address (a client's two uplinks to the gateway that relays to another
        client, a server's two ports to one forwarder) each reach it, and it passes on the first
        copy only, so dst's count under each path index is the outcome of a race (lossless
        links showed 12-87 % loss)."""
        at: dict[Addr | None, int] = {}
        for link, _stamp, acct in targets:
            if acct is not None and acct.via is None and not self._reaches_itself(link, dst):
                at[link.addr] = at.get(link.addr, 0) + 1
        if all(n < 2 for n in at.values()):
            return targets
        return [(link, stamp, None if at.get(link.addr, 0) > 1 and acct is not None and acct.via is None
                 else acct) for link, stamp, acct in targets]

    def _route(self, dst_ip: int, src_ip: int, now: float) -> int | None:
        """The peer the host routes ``dst_ip`` (from ``src_ip``) through; None if none,
        LOOKUP_FAILED (no peer id) if the host could not be asked."""
        if self.resolver is None:
            return None
        try:
            return self.routes.lookup(dst_ip, src_ip, now, self._resolve)
        except LookupFailed:
            return LOOKUP_FAILED

    def _resolve(self, dst_ip: int, src_ip: int) -> int | None:
        assert self.resolver is not None
        gateway = self.resolver(ippkt.int_to_ip(dst_ip), ippkt.int_to_ip(src_ip))
        if gateway is None:
            return None
        gw = ippkt.ip_to_int(gateway)
        peer = gw & 0xFFFF
        if gw & NET_MASK != self.settings.net or peer in RESERVED_IDS or peer == self.self_id:
            return None
        return peer

    def _copies_for(self, packet: bytes) -> int:
        s = self.settings
        if self._copy_policy is DupPolicy.NONE:
            return 0
        if self._copy_policy is DupPolicy.ALL or ippkt.is_syn_or_dns(packet):
            return s.dup_copies
        return 0

    def seal(
        self, peer: Peer, ptype: PacketType, flags: int, payload: bytes, ttl: int = 0, pi: int = 0
    ) -> bytes:
        """Seal ``payload`` for (self -> peer) with the next counter of this epoch.

        ``ttl`` and ``pi`` only pre-fill the hop bytes (they are outside the tag).
        """
        cipher = peer.tx_cipher
        if cipher is None:
            cipher = peer.tx_cipher = self.keys.cipher(self.self_id, peer.peer_id, self.epoch)
            assert cipher is not None, "peers always have a key"
        counter = peer.next_counter
        peer.next_counter = counter + 1
        header = HEADER.pack((PROTOCOL_VERSION << 4) | ptype, flags, ttl, pi,
                             self.self_id, peer.peer_id, self.epoch, counter)
        return cipher.seal(header, payload)

    # ----------------------------------------------------------------- dispatch
    def _send_all(
        self, datagram: bytes, targets: list[Target], spare: list[Target], now: float, ttl: int,
        copies: int, is_data: bool,
    ) -> int:
        """Send one datagram to every target (at least one), then schedule ``copies`` delayed
        copies; return how many went out. A DATA datagram sent counts on its target's
        accounting path (data_sent, which the peer's probe replies measure loss against)."""
        sent = 0
        for link, stamp, acct in targets:
            same = datagram[2] == ttl and datagram[3] == stamp
            ok = self._send(link, datagram if same else with_hop_fields(datagram, ttl, stamp))
            sent += ok
            if is_data and ok and acct is not None:
                acct.data_sent += 1
        if copies:
            self._schedule_copies(datagram, ttl, targets, spare, copies, now, is_data)
        return sent

    def _send(self, link: Path, data: bytes) -> int:
        assert link.addr is not None
        if not self.out.send(link.port, link.addr, data):
            self.stats.drop(DropReason.SEND_ERROR)
            return 0
        link.tx_packets += 1
        link.tx_bytes += len(data)
        self.stats.sent_datagrams += 1
        self.stats.sent_bytes += len(data)
        return 1

    def _schedule_copies(
        self, datagram: bytes, ttl: int, used: list[Target], spare: list[Target], copies: int, now: float,
        is_data: bool,
    ) -> None:
        """Copy i (1-based) leaves i * dup_delay later, on a spare link when there is one.

        Without spare links the copies take turns over the links the first copies used, so
        that with two paths each carries half of the copies (not the second one all of them).
        A copy through a relay (a forwarder: the VIA path, or dst's path at a forwarder's
        address downstream) is not counted in ``data_sent``: the relay had the original, and
        its window drops the copy unless the original was lost before reaching it, so
        counting it would show every copy as lost. A relay's own copies of what it passes on
        (``is_data`` False: Flag.COPIED) are not its data, and count nowhere. A full queue
        refuses the packet's remaining copies, each counted.
        """
        pool = spare or used
        turn = self._copy_turn
        self._copy_turn = turn + copies
        dst = HEADER.unpack_from(datagram)[5]
        for i in range(1, copies + 1):
            link, stamp, acct = pool[(turn + i) % len(pool)]
            assert link.addr is not None
            if acct is not None and (not is_data or acct.via is not None
                                     or not self._reaches_itself(link, dst)):
                acct = None
            data = with_hop_fields(datagram, ttl, stamp)
            due = now + i * self.settings.dup_delay
            if not self.dup.schedule(due, link.port, link.addr, data, link, acct):
                self.stats.drops[DropReason.DUP_QUEUE_FULL] += copies - i + 1
                return

    # ----------------------------------------------------------------- outside: UDP -> TUN
    def on_datagram(self, data: bytes, addr: Addr, port: int, now: float) -> None:
        """Handle one datagram received on local port ``port`` from ``addr``."""
        n = len(data)
        if n < OVERHEAD or n > MAX_DATAGRAM:
            self.stats.drop(DropReason.MALFORMED)
            return
        if addr[0].startswith(self.net_prefix) and self.from_tunnel_address(addr[0]):
            self.stats.drop(DropReason.LOOP)
            return
        vt, flags, ttl, pi, src, dst, epoch, counter = HEADER.unpack_from(data)
        reason = self._precheck(vt, pi, src, dst, epoch)
        if reason is None and (ttl == 0 or ttl > MAX_TTL) and dst != self.self_id:
            reason = DropReason.TTL_EXPIRED  # ttl is not authenticated: must not use up the counter
        if reason is not None:
            self.stats.drop(reason)
            return
        cipher = self.keys.cipher(src, dst, epoch)
        plaintext = cipher.open(data) if cipher is not None else None
        if plaintext is None:
            self.stats.drop(DropReason.BAD_TAG if cipher is not None else DropReason.UNKNOWN_PEER)
            return
        relay = self._relay_targets(src, dst, ttl, pi, addr) if dst != self.self_id else None
        if relay is None and dst != self.self_id:
            return
        flow = self.flows.get((src, dst))
        if flow is None:
            flow = Flow(epoch, self.settings.replay_window, verified=dst != self.self_id)
            self.flows[(src, dst)] = flow
            if dst != self.self_id:
                self.relayed.admit((src, dst), flow, self.flows, now)
            else:
                self.relayed.inherit((src, dst), flow)
        elif epoch > flow.epoch:
            flow.epoch = epoch
            flow.floor = -1
            if dst == self.self_id:  # the old epoch's missing counters can never come now
                flow.window.close()
            flow.window.reset()
            flow.challenged = flow.answered = NO_CHALLENGES  # the sender's new session: its own allowance
            self.stats.epoch_resets += 1
        if counter > flow.floor:
            verdict = flow.window.accept(counter)
        else:  # counted with the window's own (the peer's replay counts)
            flow.window.too_old += 1
            verdict = Verdict.TOO_OLD
        peer = self.peers[src]
        ptype = vt & 0x0F
        if verdict is not Verdict.NEW:
            if verdict is Verdict.DUPLICATE:
                counted = ptype == PacketType.DATA and dst == self.self_id and ttl != COPY_TTL
                self._on_copy(peer, port, addr, n, pi, counted)
            self.stats.drop(DropReason.DUPLICATE if verdict is Verdict.DUPLICATE else DropReason.TOO_OLD)
            return
        if not flow.verified:
            self._on_unverified(flow, peer, ptype, pi, epoch, counter, plaintext, port, addr, now)
            return
        if dst != self.self_id:
            self.relayed.touch((src, dst), now)
        if dst != self.self_id and (src < dst or not self._learns_through(src, port, addr)):
            # Relayed: carried on, but it says nothing about where src is. Sealed with the pair
            # key, which is dst's own secret when src < dst (the bigger id's): dst could have
            # made it; and from a sender not proved to this node in this run, it may be a
            # capture (new to a relay that restarted, or that never carried the pair).
            path = peer.paths.match(port, addr)
            if path is not None:
                path.rx_packets += 1
                path.rx_bytes += n
            if src > dst:  # a client through us, not proved to us: its answer proves it
                self._challenge(flow, peer, self.link_to(peer, pi, port, addr), counter, now)
        else:
            if flow.challenged:  # a relayed flow whose sender has proved itself since
                flow.challenged = flow.answered = NO_CHALLENGES
            path = peer.paths.learn(pi, port, addr, now)
            if not path.up:
                self.prober.wake(src)
                self._fresh_on_down_path(peer, path, now)
            path.rx_packets += 1
            path.rx_bytes += n
            path.rx_first += 1
            peer.last_active_at = now
        if relay is None:
            self._deliver(peer, ptype, flags, pi, epoch, counter, plaintext, port, addr, now)
        elif self._send_all(data, relay[0], relay[1], now, ttl - 1, 0, False):
            self.stats.forwarded_packets += 1
            self.stats.forwarded_bytes += n
            for target in relay[0]:  # relayed to: watched (probed) like a peer we talk to
                self.peers[target[0].peer].last_active_at = now
            if flags & _COPIED:
                self._repeat_copies(data, dst, relay, now)

    def _repeat_copies(
        self, datagram: bytes, dst: int, relay: tuple[list[Target], list[Target]], now: float,
    ) -> None:
        """Send our own delayed copies of a packet we passed on whose sender copies it
        (Flag.COPIED): our window drops the sender's copies once the original reached us, so
        without these a lossy last hop (a client's uplink behind its forwarder) lost as much
        with duplicate-send as without. Only on links that reach ``dst`` itself, with the hop
        byte ttl set to COPY_TTL: no relay passes them on, and ``dst`` does not count one that
        comes after the original in a path's DATA count (the sender did not count it sent)."""
        used = [t for t in relay[0] if self._reaches_itself(t[0], dst)]
        spare = [t for t in relay[1] if self._reaches_itself(t[0], dst)]
        if used or spare:
            self._schedule_copies(datagram, COPY_TTL, used or spare, spare, self.settings.dup_copies,
                                  now, False)

    def _relay_targets(
        self, src: int, dst: int, ttl: int, pi: int, came_from: Addr,
    ) -> tuple[list[Target], list[Target]] | None:
        """Where a datagram for another node can go, found *before* its counter is marked
        seen (None: dropped and counted). Neither the hop bytes nor the UDP source are
        authenticated, so a copy that can go nowhere (split horizon) or that the next relay
        would drop (ttl 1 towards a forwarder) must not use up the counter of the genuine
        copy coming on another path."""
        chosen, spare = routing.targets(self.settings, self.peers, src, dst, came_from, pi)
        if ttl == 1:  # sent on with ttl 0: only dst itself takes that
            chosen = [t for t in chosen if self._reaches_itself(t[0], dst)]
            spare = [t for t in spare if self._reaches_itself(t[0], dst)]
            if not chosen:
                self.stats.drop(DropReason.TTL_EXPIRED)
                return None
        if not chosen:
            self.stats.drop(DropReason.NO_PATH)
            return None
        return chosen, spare

    def _reaches_itself(self, link: Path, dst: int) -> bool:
        """Whether a datagram sent on ``link`` reaches ``dst`` itself, not a relay: the link is
        not another peer's (a forwarder's), nor a path of dst learned where another peer is
        (its static address, or a path of it a probe reply confirmed: dst behind a relay)."""
        addr = link.addr
        if link.peer != dst or addr is None:
            return False
        spec = self.settings.peers.get(dst)
        if spec is not None and addr == spec.addr:
            return True  # dst's own address, also where it relays for others (a forwarder)
        if addr in self._static_addrs:
            return False
        return not self._another_peer_at(link.port, addr, dst)

    def _on_unverified(
        self, flow: Flow, peer: Peer, ptype: int, pi: int, epoch: int, counter: int, plaintext: bytes,
        port: int, addr: Addr, now: float,
    ) -> None:
        """An authentic, new packet from a sender not yet proved live (see Flow): take a reply
        to our challenge as the proof, drop anything else but probes, and challenge the sender
        on the link it came in on, answering its probe there too (so two ends that restarted
        prove themselves to each other). Its source address is not authenticated: a capture
        replayed from anywhere is new to a window that restarted, so both go out only as
        :meth:`_admits` and :meth:`_answers` allow (each link at most every CHALLENGE_INTERVAL
        seconds, a few links at a time): a replaying attacker cannot make us send more, nor
        reflect our answers at an address of its choice more than that. No path is learned
        from it."""
        link = self.link_to(peer, pi, port, addr)
        if ptype == PacketType.PROBE_REPLY:
            self.prober.on_reply(peer, plaintext, counter, now)
            if flow.verified:
                return
        admitted = self._admits(flow, link, counter, now)
        if ptype == PacketType.PROBE and self._answers(flow, link, now):
            self.prober.answer(peer, pi, epoch, plaintext, link)
        elif ptype != PacketType.PROBE_REPLY:
            self.stats.drop(DropReason.UNVERIFIED)
        if admitted:
            self.prober.challenge(peer, link, now)

    def _challenge(self, flow: Flow, peer: Peer, link: Path, counter: int, now: float) -> None:
        """Probe ``peer`` on ``link`` if :meth:`_admits` lets it."""
        if self._admits(flow, link, counter, now):
            self.prober.challenge(peer, link, now)

    def _admits(self, flow: Flow, link: Path, counter: int, now: float) -> bool:
        """Whether an unverified flow's sender may be sent to on ``link`` now: not if that
        link of this flow was in the last CHALLENGE_INTERVAL seconds or MAX_CHALLENGES others
        were, first come. The sender's own datagrams carry the newest counters, which replays
        captured earlier never do: one that raised the window's top gets twice as many links,
        so replays from a few addresses cannot keep the genuine sender unchallenged."""
        recent = {k: t for k, t in flow.challenged.items() if now - t < CHALLENGE_INTERVAL}
        limit = 2 * MAX_CHALLENGES if counter == flow.window.top else MAX_CHALLENGES
        assert link.addr is not None  # link_to: where the datagram came from
        key = (link.port, link.addr)
        admitted = key not in recent and len(recent) < limit
        if admitted:
            recent[key] = now
        flow.challenged = recent
        return admitted

    def _answers(self, flow: Flow, link: Path, now: float) -> bool:
        """Whether an unverified flow's PROBE is answered on ``link`` (after :meth:`_admits`):
        once per challenge of ours there, so also a probe that crossed our challenge (two ends
        that both send to each other challenge each other at once: refusing each other's
        probes, neither would ever prove itself). A link still gets at most one challenge and
        one answer per CHALLENGE_INTERVAL."""
        assert link.addr is not None  # link_to: where the datagram came from
        key = (link.port, link.addr)
        at = flow.challenged.get(key)
        if at is None or now - at >= CHALLENGE_INTERVAL or flow.answered.get(key, -1.0) >= at:
            return False
        answered = {k: t for k, t in flow.answered.items() if k in flow.challenged}
        answered[key] = now
        flow.answered = answered
        return True

    def static_owner(self, addr: Addr | None) -> int | None:
        """The peer whose static address ``addr`` is, if any."""
        return self._static_addrs.get(addr) if addr is not None else None

    def _learns_through(self, src: int, port: int, addr: Addr) -> bool:
        """Whether a datagram of ``src`` relayed through us from ``addr`` may tell where src
        is: src proved itself live to this node in this run (its own flow to us is verified:
        it answered our challenge), or ``addr`` is where another peer is (its static address,
        or a path of it a probe reply confirmed): a relay before us, as in a chain of
        forwarders whose client does not know this one. A capture replayed from there sends
        src's traffic to that relay, which has src's own paths."""
        if addr in self._static_addrs:
            return True
        own = self.flows.get((src, self.self_id))
        if own is not None and own.verified:
            return True
        return self._another_peer_at(port, addr, src)

    def _another_peer_at(self, port: int, addr: Addr, peer_id: int) -> bool:
        """Whether a peer other than ``peer_id`` has a path at ``addr`` on local ``port`` that a
        probe reply confirmed (checked now: an entry of :attr:`peer_at` may be stale)."""
        for other in self.peer_at.get(addr, ()):
            peer = self.peers.get(other) if other != peer_id else None
            path = peer.paths.match(port, addr) if peer is not None else None
            if path is not None and path.confirmed:
                return True
        return False

    def path_confirmed(self, peer_id: int, addr: Addr) -> None:
        """A probe reply confirmed a path of ``peer_id`` at ``addr`` (called by the prober)."""
        if len(self.peer_at) > 4 * len(self.peers) + 64:
            self.peer_at.clear()  # stale entries of paths gone: the next replies refill it
        self.peer_at.setdefault(addr, set()).add(peer_id)

    def from_tunnel_address(self, ip: str) -> bool:
        """Whether ``ip`` (dotted quad, in the tunnel network: the caller tests
        :attr:`net_prefix` first) is the tunnel address of this node or of a peer: a datagram
        from there was sent through a tunnel, where the host routes a peer's address into
        ours (its host route gone, a new uplink not yet routed); taking it as a path would
        loop. Other addresses of the /16 may be a LAN the host routes by a longer prefix."""
        parts = ip.split(".")
        if len(parts) != 4 or not (parts[2].isdigit() and parts[3].isdigit()):
            return False
        host = int(parts[2]) << 8 | int(parts[3])
        return host == self.self_id or host in self.peers

    def verify(self, peer_id: int, counter: int) -> None:
        """``peer_id`` answered a probe of this run at ``counter``: trust its flow towards us
        from the next counter on (called by the prober)."""
        flow = self.flows.get((peer_id, self.self_id))
        if flow is not None and not flow.verified:
            flow.verified = True
            flow.floor = max(flow.floor, counter)
            flow.window.count_loss_from(flow.floor + 1)
            flow.challenged = flow.answered = NO_CHALLENGES  # not needed any more: 10,000 peers, 2 MB

    def link_to(self, peer: Peer, pi: int, port: int, addr: Addr) -> Path:
        """The known path with this port and address, or a one-off path object for replying
        to a sender whose address is not learned (it is not stored anywhere)."""
        known = peer.paths.match(port, addr)
        return known or Path(peer.peer_id, PathKind.LEARNED, pi, port, addr, "unverified")

    def _fresh_on_down_path(self, peer: Peer, path: Path, now: float) -> None:
        """A fresh datagram came on a path that is down: up now if it is confirmed, else probe
        its address (the prober also repeats that while the path keeps hearing from it)."""
        if path.confirmed:
            self.path_answered(path, now)
        else:
            self.prober.probe_unconfirmed(peer, path, now)

    def path_answered(self, path: Path, now: float) -> None:
        """``path`` just delivered something authentic: if it was down, it is up from now on
        (not from the next tick), so the very next packet already goes on it too."""
        if path.evaluate(now, self.settings.path_timeout):
            self.path_changed(path)

    def path_changed(self, path: Path) -> None:
        """``path`` went up or down: new send targets, counted and logged."""
        self.generation.bump()
        self.stats.path_changes += 1
        log.info("path %s peer=%s path=%s addr=%s reason=%s", "up" if path.up else "down",
                 format_peer_id(path.peer), path.name, path.addr, path.reason)

    def _precheck(self, vt: int, pi: int, src: int, dst: int, epoch: int) -> DropReason | None:
        """Checks on the clear header that need no key and change no state."""
        if vt >> 4 != PROTOCOL_VERSION:
            return DropReason.BAD_VERSION
        if vt & 0x0F > PacketType.PROBE_REPLY:
            return DropReason.BAD_TYPE
        if src in RESERVED_IDS or dst in RESERVED_IDS:
            return DropReason.RESERVED_ID
        if src == self.self_id:
            return DropReason.FROM_SELF
        if pi > 15 or src == dst:  # src == dst: nobody sends to itself through us
            return DropReason.MALFORMED
        if src not in self.peers or (dst != self.self_id and dst not in self.peers):
            return DropReason.UNKNOWN_PEER
        flow = self.flows.get((src, dst))
        if flow is not None and epoch < flow.epoch:
            return DropReason.OLD_EPOCH
        if flow is None and self.relayed.newer_epoch((src, dst), epoch):
            return DropReason.OLD_EPOCH
        return None

    def _on_copy(self, peer: Peer, port: int, addr: Addr, n: int, pi: int, is_data: bool) -> None:
        """An authentic packet already seen: count it on its path, learn nothing new.

        It does not refresh the path's liveness: a copy may be a replay, and a replayed copy
        must not keep a dead path up (only fresh datagrams and probe replies do).
        """
        path = peer.paths.match(port, addr)
        if path is not None:
            path.rx_packets += 1
            path.rx_bytes += n
            path.rx_duplicates += 1
        if is_data:
            peer.paths.rx_data[rx_slot(pi, port)] += 1

    def _deliver(
        self, peer: Peer, ptype: int, flags: int, pi: int, epoch: int, counter: int, plaintext: bytes,
        port: int, addr: Addr, now: float,
    ) -> None:
        """b1: the packet is for us."""
        if ptype == PacketType.DATA:
            peer.paths.rx_data[rx_slot(pi, port)] += 1
            self._write_tun(peer, plaintext, flags, now)
        elif ptype == PacketType.PROBE:
            self.prober.answer(peer, pi, epoch, plaintext, self.link_to(peer, pi, port, addr))
        else:
            self.prober.on_reply(peer, plaintext, counter, now)

    def _write_tun(self, peer: Peer, plaintext: bytes, flags: int, now: float) -> None:
        packet = unpad(plaintext, flags) if flags & _PADDED else plaintext
        ips = ippkt.addresses(packet) if packet is not None else None
        if packet is None or ips is None:
            self.stats.drop(DropReason.MALFORMED if packet is None else DropReason.NOT_IPV4)
            return
        if len(packet) > self.settings.mtu or ippkt.total_length(packet) > len(packet):
            self.stats.drop(DropReason.TOO_BIG if len(packet) > self.settings.mtu else DropReason.MALFORMED)
            return
        if self._spoofed(peer.peer_id, packet, ips[0], ips[1], now):
            self.stats.drop(DropReason.SPOOFED_SOURCE)
            return
        if not self.out.write_tun(packet, bool(flags & _CSUM_PARTIAL)):
            self.stats.drop(DropReason.TUN_WRITE_ERROR)
            return
        self.stats.delivered(peer, len(packet))

    def _spoofed(self, sender: int, packet: bytes, src_ip: int, dst_ip: int, now: float) -> bool:
        """Whether a packet from ``src_ip`` cannot have come from ``sender``: a tunnel address
        other than the sender's, or (with inner_source_check) an outside address the host
        does not route back through the sender (strict reverse path, as WireGuard's
        AllowedIPs: the internet behind a client's gateway is routed through it; an address
        the host routes outside the tunnel is nobody's, so no peer can put packets from it on
        this host's networks), unless it reports on our own traffic through the sender
        (:meth:`_reports_on_ours`). The lookup is the one the reply takes, (dst, src)
        swapped, so it shares the reply's route cache entry. Without a resolver (no host
        routes to ask) outside sources are not checked."""
        s = self.settings
        if src_ip & NET_MASK == s.net:
            return src_ip & 0xFFFF != sender
        if not s.inner_source_check or self.resolver is None:
            return False
        if self._route(src_ip, dst_ip, now) in (sender, LOOKUP_FAILED):  # a failed lookup
            return False                                                # proves no forgery
        return not self._reports_on_ours(sender, packet, dst_ip, now)

    def _reports_on_ours(self, sender: int, packet: bytes, dst_ip: int, now: float) -> bool:
        """Whether ``packet`` is an ICMP error to this node (``dst_ip`` its tunnel address)
        about a packet it sent that the host routes through ``sender``: a router past the
        peer reporting on our traffic through it (traceroute, path MTU), whose own address
        the host may route outside the tunnel (local_routes, chnroute). Not for a packet to
        pass on: a peer could send an error from any source through us."""
        if dst_ip != self.self_ip:
            return False
        quoted = ippkt.icmp_error_about(packet)
        return quoted is not None and quoted[0] == dst_ip and self._route(quoted[1], dst_ip, now) == sender

    # ----------------------------------------------------------------- time
    def next_deadline(self) -> float | None:
        """When :meth:`on_timer` next has work (monotonic seconds)."""
        due = self.dup.next_deadline()
        tick = self.prober.next_tick_at
        return tick if due is None else min(due, tick)

    def on_timer(self, now: float) -> None:
        """Send due delayed copies; probe and evaluate paths when their tick is due."""
        for copy in self.dup.pop_due(now):
            if self._went_down(copy.path):
                continue  # the packet's other copies take the live links
            if self._send(copy.path, copy.data):
                if copy.acct is not None:  # the peer counts it under the path index it carries
                    copy.acct.data_sent += 1
                self.stats.dup_copies_sent += 1
                peer = self.peers.get(HEADER.unpack_from(copy.data)[5])  # its destination
                if peer is not None:
                    peer.dup_copies += 1
        self.prober.on_timer(now)

    def _went_down(self, link: Path) -> bool:
        """Whether a delayed copy's link has gone down since it was chosen while its peer has
        a live one (what the packet's other copies take): routing would no longer pick it. A
        link never up yet (start-up: every link is tried) and a peer with no live link keep
        their copies."""
        return not link.up and link.changes > 0 and any(
            p.up for p in self.peers[link.peer].paths.links())

    def settle_losses(self, now: float) -> None:
        """Count as lost what no path delivered to us within the path timeout plus the latest
        a peer may send a delayed copy (called once a probe round: end-to-end loss shows within
        seconds, not once a whole window has passed, and a copy on its way is not counted)."""
        horizon = self.settings.path_timeout + MAX_DUP_COPIES * MAX_DUP_DELAY
        me = self.self_id
        for (_, dst), flow in self.flows.items():
            if dst == me:
                flow.window.settle(now, horizon)

    def expire_relayed_flows(self, now: float) -> int:
        """Forget relayed flows silent for path_lifetime (called by the prober's rounds)."""
        return self.relayed.expire(self.flows, now, self.settings.path_lifetime)

    def lost_packets(self, peer_id: int) -> int:
        """DATA and probes from ``peer_id`` to us that no path delivered (never seen), over
        this run (flows a reload dropped included). A flow counts once it is verified: what
        it counted before is forgotten then (Engine.verify), so it is never shown."""
        flow = self.flows.get((peer_id, self.self_id))
        retired = self.relayed.retired.get(peer_id)
        lost = flow.window.lost if flow is not None and flow.verified else 0
        return lost + (retired[4] if retired else 0)

    def accepted_packets(self, peer_id: int) -> int:
        """Datagrams (DATA and probes) from ``peer_id`` to us the replay window let in, over
        this run (flows a reload dropped included)."""
        flow = self.flows.get((peer_id, self.self_id))
        retired = self.relayed.retired.get(peer_id)
        return (flow.window.accepted if flow is not None else 0) + (retired[3] if retired else 0)


