"""The greenlet that looks the peers' hostnames up again while the daemon runs.

The policy (when, what an answer means) is :mod:`alpaca.hostnames`; this is its shell. Every
TICK seconds it reads the secrets in use and asks the policy which names are due; it looks
those up together on the hub (alpaca.io.dns: c-ares, no OS thread, at most LOOKUP_TIMEOUT
seconds). This greenlet is the only one doing so, so each name has at most one lookup in flight.
When a peer's name now resolves to addresses without the one in use (a name that did not
resolve at start, or that moved), it asks the daemon for a reload: the reload looks the names
up once more and applies the new address as a SIGHUP does (engine, legacy engine, a client's
host routes), one reload at a time.

Logs: a move once per new address (INFO), a name that resolves again (INFO), a failing name
once per back-off step (WARNING).

Greenlet contract: :meth:`HostnameFollower.run` is one greenlet of the daemon's group; the
callables it is given are read on the hub between lookups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, NoReturn, Protocol

import gevent

from alpaca.core.ids import format_peer_id
from alpaca.hostnames import Lookup, NameBook, after_lookup, is_failure_news, moved_to, one_host
from alpaca.io import dns
from alpaca.io.clock import monotonic
from alpaca.secrets import Secrets, shown_host
from alpaca.snapshot import is_peer_up

if TYPE_CHECKING:
    from alpaca.config import Config
    from alpaca.core.engine import Engine
    from alpaca.core.mux import ProtocolMux

log = logging.getLogger(__name__)

#: Seconds between two reads of the schedule (a peer whose paths went down, names a reload
#: brought): the latency of reacting, not a lookup rate (lookups follow alpaca.hostnames).
TICK = 1.0
#: Seconds one round of lookups takes at most, however many names are due.
LOOKUP_TIMEOUT = dns.DEADLINE

#: peer id -> (hostname, address in use or None)
Named = Mapping[int, tuple[str, str | None]]
Lookuper = Callable[[Iterable[str], float], Mapping[str, tuple[str, ...]]]


class RunningNode(Protocol):
    """What the follower reads of the daemon (alpaca.daemon.Daemon)."""

    config: Config
    secrets: Secrets
    engine: Engine | None
    mux: ProtocolMux | None

    def reload(self) -> None: ...


def named_peers(secrets: Secrets, self_id: int) -> dict[int, tuple[str, str | None]]:
    """The peers named by a hostname (not ourselves): peer id -> (hostname, address in use)."""
    return {pid: (peer.hostname, peer.address) for pid, peer in secrets.peers.items()
            if peer.hostname is not None and pid != self_id}


def peer_is_up(engine: Engine | None, mux: ProtocolMux | None, peer_id: int, now: float) -> bool:
    """Whether the peer has a path up: a path of the default engine (VIA ones too), or for a
    legacy peer, a datagram from it within the legacy engine's peer_lifetime seconds."""
    if mux is not None and mux.legacy.serves(peer_id):
        legacy = mux.legacy.peers.get(peer_id)
        seen = None if legacy is None else legacy.last_seen_at
        return seen is not None and now - seen <= mux.legacy.settings.peer_lifetime
    peer = None if engine is None else engine.peers.get(peer_id)
    return peer is not None and is_peer_up(peer)


class HostnameFollower:
    """Looks named peers up on the schedule of alpaca.hostnames; asks for a reload on a move.

    Args:
        named: the named peers in use now (:func:`named_peers` of the running secrets).
        is_up: whether a peer has a path up now.
        reload: asks the daemon for a reload (returns at once; the reloader runs it).
        lookup: (names, deadline seconds) -> name -> addresses (dns.lookup_ipv4).
        clock: monotonic seconds.
    """

    def __init__(self, named: Callable[[], Named], is_up: Callable[[int], bool],
                 reload: Callable[[], None], lookup: Lookuper = dns.lookup_ipv4,
                 clock: Callable[[], float] = monotonic) -> None:
        self.named, self.is_up, self.reload = named, is_up, reload
        self.lookup, self.clock = lookup, clock
        self.book = NameBook()
        #: peer id -> the address its move was last logged to (a move is logged once)
        self._announced: dict[int, str] = {}

    @classmethod
    def of(cls, node: RunningNode) -> HostnameFollower:
        """The follower of a running daemon (its secrets, engines and reload as they are now)."""
        return cls(lambda: named_peers(node.secrets, node.config.id),
                   lambda p: peer_is_up(node.engine, node.mux, p, monotonic()), node.reload)

    def run(self, tick: float = TICK) -> NoReturn:
        """Forever: :meth:`step`, then sleep ``tick`` seconds."""
        while True:
            self.step()
            gevent.sleep(tick)

    def step(self) -> None:
        """Look up the names that are due (one round, at most LOOKUP_TIMEOUT seconds), log
        what is news, and ask for a reload if a peer moved."""
        self.book.follow(self.named(), self.clock())
        due = self.book.due(self.clock(), self.is_up)
        if not due:
            return
        names = {self.book.lookups[p].hostname for p in due}
        try:
            found = self.lookup(names, LOOKUP_TIMEOUT)
        except (OSError, ValueError) as exc:  # the resolver could not start: as if no answer
            log.warning("could not look hostnames up error=%s", exc)
            found = {}
        now, named = self.clock(), self.named()  # a reload may have run meanwhile
        moved = False
        for peer_id in due:
            last = self.book.lookups.get(peer_id)
            current = named.get(peer_id)
            if last is None or current is None or current[0] != last.hostname:
                continue  # renamed or removed while we waited: follow() starts it over
            new = after_lookup(last, now, one_host(tuple(found.get(last.hostname, ()))), self.is_up(peer_id))
            self.book.lookups[peer_id] = new
            moved |= self._report(peer_id, last, new, current[1])
        if moved:
            self.reload()

    def _report(self, peer_id: int, last: Lookup, new: Lookup, in_use: str | None) -> bool:
        """Log what the lookup ``new`` tells (see the module docstring); True if it moved."""
        peer, name = format_peer_id(peer_id), shown_host(new.hostname)
        target = moved_to(in_use, new.addresses)
        if target is not None:
            if self._announced.get(peer_id) != target:
                self._announced[peer_id] = target
                log.info("a peer's hostname resolves to another address; reloading to follow it "
                         "peer=%s hostname=%s from=%s to=%s", peer, name, in_use or "none",
                         target)
            return True
        if new.addresses and not last.addresses:
            log.info("a peer's hostname resolves again peer=%s hostname=%s address=%s",
                     peer, name, in_use)
        elif is_failure_news(last, new):
            log.warning("a peer's hostname does not resolve; looking it up again in %gs peer=%s "
                        "hostname=%s address=%s", new.retry, peer, name, in_use or "none")
        return False
