"""Per-peer state owned by the Engine: paths, send counter, traffic counters."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from alpaca.core.crypto import DirectionCipher
from alpaca.core.paths import NEVER, Generation, Path, PathKind, PeerPaths
from alpaca.core.replay import ReplayWindow
from alpaca.core.settings import Addr


class Peer:
    """One configured peer as seen from this node.

    Attributes:
        next_counter: the next counter we seal towards this peer (per epoch, never reused).
        tx_*: DATA packets we originated to this peer; rx_*: DATA from it delivered to us.
        dup_copies: delayed extra copies we sent towards it.
        last_active_at: last time we sent to or heard from it (monotonic seconds).
    """

    __slots__ = (
        "addr", "dup_copies", "last_active_at", "next_counter", "paths", "peer_id", "plan",
        "rx_bytes", "rx_packets", "tx_bytes", "tx_cipher", "tx_packets",
    )

    def __init__(
        self, peer_id: int, ports: tuple[str, ...], addr: Addr | None, generation: Generation
    ) -> None:
        self.peer_id = peer_id
        self.addr = addr
        self.paths = PeerPaths(peer_id, ports, addr, generation)
        #: (generation, targets, spare, IPs of their links): our own packets' send targets,
        #: cached by the engine.
        self.plan: tuple[int, list[Any], list[Any], set[int]] | None = None
        #: DirectionCipher of (self -> this peer) in this run's epoch, cached by the engine
        #: (cleared on reload).
        self.tx_cipher: DirectionCipher | None = None
        self.next_counter = 0
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0
        self.dup_copies = 0
        self.last_active_at = NEVER

    def take_over(self, old: Peer, *, paths: bool = True) -> None:
        """Carry what does not depend on the static address from ``old`` (this peer, rebuilt
        because its address changed, or to forget its paths): the send counter (a nonce is
        never reused), the traffic counters, the last activity, and the paths
        (:meth:`PeerPaths.take_over`) or, without ``paths``, only the static paths' counters
        (exported counters never go backwards)."""
        self.next_counter = old.next_counter
        self.tx_packets, self.tx_bytes = old.tx_packets, old.tx_bytes
        self.rx_packets, self.rx_bytes = old.rx_packets, old.rx_bytes
        self.dup_copies = old.dup_copies
        self.last_active_at = old.last_active_at
        if paths:
            self.paths.take_over(old.paths)
        else:
            self.paths.carry_static(old.paths)

    def set_via_paths(self, forwarders: tuple[int, ...], names: list[str]) -> None:
        """(Re)build the VIA paths to this peer through ``forwarders`` (index order).

        A forwarder that is this peer itself gets no VIA path (it is reached directly).
        Existing VIA paths for the same forwarder keep their counters, also one a reload left
        out and a later one put back (it starts down: a probe through it brings it up).
        """
        if not forwarders and not self.paths.via:  # the usual peer: nothing to (re)build
            return
        old = dict(self.paths.via_retired or {})
        old.update((p.via, p) for p in self.paths.via.values() if p.via is not None)
        self.paths.via = {}
        for i, fwd in enumerate(forwarders):
            if fwd == self.peer_id:
                continue
            pi = (i + 1) << 2
            path = old.pop(fwd, None) or Path(self.peer_id, PathKind.VIA, pi, 0, None, names[i], via=fwd)
            path.pi = pi
            self.paths.via[i + 1] = path
        for path in old.values():
            path.up = False
        self.paths.via_retired = old or None
        self.paths.generation.bump()


#: The challenges of a flow that has none (shared: a flow's mapping is replaced, not edited).
NO_CHALLENGES: Mapping[tuple[int, Addr], float] = MappingProxyType({})


class Flow:
    """Receive state of one (src, dst) direction: the sender's epoch, its window, and whether
    the sender has proved it is live now.

    A flow towards us starts *unverified*: we keep no state across restarts, so an authentic
    datagram could be one captured before we (re)started. Nothing on such a flow is delivered
    or teaches a path until a PROBE_REPLY that echoes our current epoch arrives (see
    :mod:`alpaca.core.probing`); its counter becomes ``floor``, and every counter at or below
    it is refused. Flows we only relay start verified: their endpoint does this check.

    Attributes:
        floor: counters <= floor are refused (-1: none).
        challenged: (local port, address) -> when we last challenged the sender there
            (monotonic seconds); only recent entries are kept, at most 2 * MAX_CHALLENGES.
        answered: (local port, address) -> when we last answered a probe of the unverified
            sender there (Engine._answers: once per challenge); links in ``challenged`` only.
    """

    __slots__ = ("answered", "challenged", "epoch", "floor", "verified", "window")

    def __init__(self, epoch: int, window_size: int, *, verified: bool) -> None:
        self.epoch = epoch
        self.window = ReplayWindow(window_size)
        self.verified = verified
        self.floor = -1
        #: replaced, never changed in place (so all may share the empty one)
        self.challenged: Mapping[tuple[int, Addr], float] = NO_CHALLENGES
        self.answered: Mapping[tuple[int, Addr], float] = NO_CHALLENGES
