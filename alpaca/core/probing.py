"""Path probes: liveness, RTT and per-path loss, driven by the engine's timer.

Every ``probe_interval`` seconds the node sends a PROBE on each path it watches: the static and
learned links of peers it uses, and the VIA paths to its gateway through each forwarder (those
probes are relayed like data, so they measure the whole path). The peer answers each PROBE on
the link it arrived on with a PROBE_REPLY carrying the probe id and how many of our DATA
packets it has received with that path index. That gives, per path: RTT (smoothed and last),
probe loss (sent - answered), and data loss (our sent count against the peer's received count).

Every tick (at most 0.25 s apart) each path is re-evaluated: it is down once nothing authentic
has arrived on it for ``path_timeout`` seconds, it is not answering (sent on last) once a
probe on it has waited that long with no answer since, and learned paths silent for
``path_lifetime`` are forgotten. Only the peers whose paths can still change with time alone
are evaluated (:meth:`Prober.wake`, :meth:`PeerPaths.settled`): a server's thousands of idle
clients cost nothing per tick (10,000 of them took 52 ms a tick, the packet path waiting).
Owned by the Engine; not thread-safe.

Payloads: PROBE = u32 probe id; PROBE_REPLY = u32 probe id + u32 the prober's epoch (echoed
from the PROBE's header) + u64 DATA count (big-endian).

Challenges: a sender we have no state for (first contact, or after our restart) is probed on
the link its datagram came in on; the reply, which must echo our current epoch, proves it is
live in this run of ours and verifies its flow (see alpaca.core.peers.Flow).
"""

from __future__ import annotations

import logging
import math
import struct
from typing import TYPE_CHECKING, NamedTuple

from alpaca.core.constants import PacketType
from alpaca.core.drops import DropReason
from alpaca.core.header import with_hop_fields
from alpaca.core.ids import format_peer_id
from alpaca.core.paths import Path, rx_slot
from alpaca.core.settings import Addr

if TYPE_CHECKING:
    from alpaca.core.engine import Engine
    from alpaca.core.peers import Peer

log = logging.getLogger(__name__)

PROBE = struct.Struct("!I")
REPLY = struct.Struct("!IIQ")
MAX_TICK = 0.25
#: Seconds between two probes to the same unconfirmed path, candidate or unverified sender.
CHALLENGE_INTERVAL = 0.5
#: Least seconds between two probes to a candidate address the peer seems to have moved to.
ROAM_RETRY = 0.05
MAX_OUTSTANDING = 1 << 16
#: A path that never answered its first DORMANT_AFTER probes (e.g. a local port that has no
#: route to that peer's address) is probed only every DORMANT_EVERY rounds from then on, and
#: every DORMANT_EVERY_REACHED rounds while another path of the peer is up: each such probe
#: uses up a counter of the peer's direction, and each one lost counts as end-to-end loss at
#: the peer (0.2 a second with two ports every 10th round: 20 % of a quiet peer's packets).
DORMANT_AFTER = 5
DORMANT_EVERY = 10
DORMANT_EVERY_REACHED = 60


class Outstanding(NamedTuple):
    """A probe waiting for its reply."""

    path: Path
    sent_at: float
    #: the address it went to (a path that moved since learns nothing from the reply)
    sent_to: Addr | None
    #: the path whose DATA count the reply reports (PeerPaths.counting), and its data_sent
    #: when the probe left
    counted: Path
    data_sent: int


def _went_down(best: Path) -> bool:
    """Whether a peer's ``best`` link (PeerPaths.best_link) has been up and none is now."""
    return best.changes > 0 and not best.up


class Prober:
    """Sends probes, answers them, and keeps path states current."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.next_tick_at = 0.0
        self.next_probe_at = 0.0
        self.outstanding: dict[int, Outstanding] = {}
        self._next_id = 1
        self._round = 0
        #: A reload shortened path_timeout: the next tick starts the silence of the paths up
        #: and answering then (:meth:`Path.evaluate`), instead of taking them down at once.
        self.timeout_shortened = False
        self._silence_since = -math.inf
        #: ids of the peers evaluated at every tick: something happened on their paths
        #: (a probe, a reply, a datagram) and they have not settled since
        self._awake: set[int] = set()
        #: evaluate every peer at the next tick (a reload may have changed any of them)
        self._sweep = True

    def on_timer(self, now: float) -> None:
        """Run a tick if one is due: probe round (every probe_interval) and path evaluation."""
        if now < self.next_tick_at:
            return
        s = self.engine.settings
        self.next_tick_at = now + min(MAX_TICK, s.probe_interval)
        if self.timeout_shortened:
            self.timeout_shortened, self._silence_since = False, now
        if now >= self.next_probe_at:
            self.next_probe_at = now + s.probe_interval
            self._round += 1
            self._forget_unanswered(now - 2 * s.path_timeout)
            self.engine.expire_relayed_flows(now)
            self.engine.settle_losses(now)
            for peer in self._watched(now):
                self._probe_peer(peer, now)
        self._evaluate(now)

    def wake(self, peer_id: int) -> None:
        """Something happened on a path of ``peer_id`` (a datagram learned it): evaluate the
        peer at every tick until it has settled."""
        self._awake.add(peer_id)

    def sweep(self) -> None:
        """Evaluate every peer at the next tick (the peers or the settings were replaced)."""
        self._sweep = True

    def _watched(self, now: float) -> list[Peer]:
        """The peers probed in a round: the forwarders, the gateway, and those with learned
        paths or sent to or heard from within path_lifetime (one pass over every peer: 2 ms
        for 10,000)."""
        s = self.engine.settings
        always = {*s.forwarders, s.gateway}
        since = now - s.path_lifetime
        return [peer for peer in self.engine.peers.values()
                if peer.last_active_at > since or peer.paths.learned or peer.peer_id in always]

    def _is_dormant(self, path: Path, peer: Peer) -> bool:
        """Never up nor answering at its address after DORMANT_AFTER probes there, and this is
        not one of its rounds (fewer while another path to ``peer`` is up)."""
        if path.silent_probes < DORMANT_AFTER:
            return False
        reached = any(other.up for other in peer.paths.all())
        return self._round % (DORMANT_EVERY_REACHED if reached else DORMANT_EVERY) != 0

    def _probe_peer(self, peer: Peer, now: float) -> None:
        """Probe each link of ``peer`` and each VIA path to it, but none into a forwarder that
        went down: not the VIA path through it, nor a path of ``peer`` learned at its address
        (the forwarder's own links are probed, and the others follow once one answers). A
        probe is sealed for ``peer`` with the counter its data uses, so every one a dead
        forwarder swallowed counted as end-to-end loss at ``peer`` (20-30 % with a forwarder
        down and a ping a second)."""
        for link in peer.paths.links():
            if not self._is_dormant(link, peer) and not self._relay_down_at(link, peer.peer_id):
                self._send_probe(peer, link, link, now)
        for via in peer.paths.via.values():
            fwd = self.engine.peers.get(via.via) if via.via is not None else None
            best = fwd.paths.best_link() if fwd is not None else None
            if best is not None and not self._is_dormant(via, peer) and not _went_down(best):
                self._send_probe(peer, via, best, now)

    def _relay_down_at(self, link: Path, peer_id: int) -> bool:
        """Whether ``link`` (a path of ``peer_id``) is at the static address of another peer
        whose links all went down (a dead forwarder that relayed ``peer_id``'s traffic)."""
        other = self.engine.static_owner(link.addr)
        if other is None or other == peer_id:
            return False
        best = self.engine.peers[other].paths.best_link()
        return best is not None and _went_down(best)


    def _new_probe_id(self) -> int:
        """A probe id nobody can guess (a peer that sees the ids of the probes sent to it must
        not answer, unseen, one sent to an address it claims: that answer confirms the address),
        and not one still outstanding."""
        mask = int.from_bytes(self.engine.random_bytes(4), "big")
        probe_id = (self._next_id ^ mask) or 1
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
        while probe_id in self.outstanding:
            probe_id = (probe_id + 1) & 0xFFFFFFFF or 1
        return probe_id

    def _send_probe(self, peer: Peer, path: Path, link: Path, now: float) -> None:
        probe_id = self._new_probe_id()
        datagram = self.engine.seal(peer, PacketType.PROBE, 0, PROBE.pack(probe_id))
        path.probes_sent += 1
        path.on_probe_sent(now)
        self._awake.add(peer.peer_id)
        self.engine.stats.probes_sent += 1
        if len(self.outstanding) >= MAX_OUTSTANDING:
            del self.outstanding[next(iter(self.outstanding))]
        counted = peer.paths.counting(path)
        self.outstanding[probe_id] = Outstanding(path, now, link.addr, counted, counted.data_sent)
        self.engine._send(link, with_hop_fields(datagram, self.engine.settings.ttl, path.pi))

    def _forget_unanswered(self, before: float) -> None:
        stale = [pid for pid, entry in self.outstanding.items() if entry.sent_at < before]
        for pid in stale:
            del self.outstanding[pid]

    def answer(self, peer: Peer, pi: int, epoch: int, payload: bytes, link: Path) -> None:
        """Reply to a PROBE on the link it came in on (``link.port`` is where it arrived),
        echoing the prober's epoch, with our DATA count for its path index (:func:`rx_slot`)."""
        if len(payload) != PROBE.size:
            self.engine.stats.drop(DropReason.MALFORMED)
            return
        (probe_id,) = PROBE.unpack(payload)
        reply = REPLY.pack(probe_id, epoch, peer.paths.rx_data[rx_slot(pi, link.port)])
        datagram = self.engine.seal(peer, PacketType.PROBE_REPLY, 0, reply)
        if self.engine._send(link, with_hop_fields(datagram, self.engine.settings.ttl, pi)):
            self.engine.stats.probes_answered += 1

    def probe_unconfirmed(self, peer: Peer, path: Path, now: float) -> None:
        """Probe an unconfirmed learned path or candidate at its address, at most every
        CHALLENGE_INTERVAL, or every 1.5 round trips (at least ROAM_RETRY) for a candidate
        while its slot's address has been silent for two round trips (the peer moved: a lost
        probe must not cost half a second of traffic). Only an answer to such a probe
        confirms it."""
        interval = CHALLENGE_INTERVAL
        slot = peer.paths.roaming(path, now)
        if slot is not None and slot.srtt is not None:
            interval = min(CHALLENGE_INTERVAL, max(ROAM_RETRY, 1.5 * slot.srtt))
        if now - path.challenged_at >= interval:
            path.challenged_at = now
            self.challenge(peer, path, now)

    def challenge(self, peer: Peer, link: Path, now: float) -> None:
        """Probe a sender we have no state for, on the link its datagram came in on: its
        reply proves it is live in this run of ours (Flow, Engine.verify)."""
        self._send_probe(peer, link, link, now)

    def on_reply(self, peer: Peer, payload: bytes, counter: int, now: float) -> None:
        """Match a PROBE_REPLY to its probe: RTT sample, liveness, data-loss report.

        The reply must echo our current epoch: a reply to a probe of an earlier run of ours
        (probe ids restart at 1) is unknown, so a captured reply can never pass for fresh. A
        matching reply also verifies the sender's flow towards us from ``counter`` on.
        """
        if len(payload) != REPLY.size:
            self.engine.stats.drop(DropReason.MALFORMED)
            return
        probe_id, echoed_epoch, data_rx = REPLY.unpack(payload)
        entry = self.outstanding.get(probe_id)
        if entry is None or entry.path.peer != peer.peer_id or echoed_epoch != self.engine.epoch:
            self.engine.stats.drop(DropReason.UNKNOWN_PROBE)
            return
        del self.outstanding[probe_id]
        self._awake.add(peer.peer_id)
        self.engine.verify(peer.peer_id, counter)
        path, sent_at, sent_to, counted, data_sent = entry
        if path.via is None and path.addr != sent_to:  # it moved since: the answer proves nothing
            return                                      # about where it is now
        filed = peer.paths.confirm(path)
        if filed is None:  # replaced or expired meanwhile, or a one-off challenge path
            return
        path = filed
        if path.addr is not None:
            self.engine.path_confirmed(peer.peer_id, path.addr)
        paths = peer.paths
        best = paths.best_link() if len(paths.static) + len(paths.learned) > 1 else None
        path.on_rtt(now - sent_at)
        path.probes_answered += 1
        path.on_probe_answered()
        path.last_ok_at = now
        if not path.up:
            self.engine.path_answered(path, now)
        elif best is not None and paths.best_link() is not best:  # the RTT order changed:
            self.engine.generation.bump()                           # new send targets
        if path is counted:  # (else the slot was replaced meanwhile: the next reply tells)
            path.on_data_report(data_rx, data_sent, path.data_sent - data_sent)
        self.engine.stats.probe_replies_received += 1

    def _evaluate(self, now: float) -> None:
        """Evaluate the peers awake (all of them after a sweep); a peer settled since leaves."""
        peers = self.engine.peers
        if self._sweep:
            self._sweep = False
            self._awake.update(peers)
        for peer_id in list(self._awake):
            peer = peers.get(peer_id)
            if peer is not None:
                self._evaluate_peer(peer, now)
            if peer is None or peer.paths.settled():
                self._awake.discard(peer_id)

    def _evaluate_peer(self, peer: Peer, now: float) -> None:
        s = self.engine.settings
        for path in peer.paths.all():
            if path.evaluate(now, s.path_timeout, self._silence_since):
                self.engine.path_changed(path)
            if path.check_answers(now, s.path_timeout, self._silence_since):
                self.engine.generation.bump()
                log.info("path %s peer=%s path=%s addr=%s", "answering again" if path.answering
                         else "not answering probes (sent last)", format_peer_id(peer.peer_id),
                         path.name, path.addr)
        for waiting in peer.paths.unconfirmed():  # a lost probe is sent again
            if now - waiting.last_ok_at < s.path_timeout:
                self.probe_unconfirmed(peer, waiting, now)
        for gone in peer.paths.expire(now, s.path_lifetime):
            log.info("path forgotten peer=%s path=%s addr=%s",
                     format_peer_id(peer.peer_id), gone.name, gone.addr)
