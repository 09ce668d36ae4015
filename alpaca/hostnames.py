"""When to look a peer's hostname up again, and what an answer means: the policy, no I/O.

A peer of the secrets file may be named by a hostname (alpaca.secrets), resolved when the
file is loaded (start, reload). The running daemon looks each such name up again
(alpaca.io.rename) so that a name that did not resolve at start (a host that boots before its
name server) or that moved to another address is followed without a SIGHUP.

Theory of operation
-------------------
Each named peer has a :class:`Lookup`: when its name was last looked up, what it gave, and the
back-off step. While the peer is *healthy* (its name resolves and it has a path up) the name is
looked up every REFRESH seconds; otherwise soon, backing off from RETRY_MIN to RETRY_MAX
seconds (doubling), so a dead name costs one lookup a minute at most. Whether the peer is up is
asked each time the schedule is read (:func:`due_at`): a peer whose paths go down is looked up
RETRY_MIN seconds after its last lookup, not REFRESH.

A peer *moved* when its name resolves and the address in use is not among its addresses (a
name with several addresses keeps the one in use: no flapping between them). A name that does
not resolve never moves a peer: it keeps the address it has (as a reload does).

Times are monotonic seconds, passed in. Pure: call from anywhere; no state is shared.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: Seconds from a lookup to the next while the name fails or the peer has no path up: the first
#: step; each further unhealthy lookup doubles it.
RETRY_MIN = 5.0
#: Seconds: the longest step of that back-off.
RETRY_MAX = 60.0
#: Seconds from a lookup to the next while the name resolves and the peer has a path up.
REFRESH = 300.0


@dataclass(frozen=True, slots=True)
class Lookup:
    """The last lookup of one peer's name (or, before the first, what loading the secrets
    found)."""

    hostname: str
    """The name looked up (a reload that renames the peer starts its schedule over)."""
    at: float
    """When it ended, monotonic seconds."""
    addresses: tuple[str, ...]
    """Its IPv4 addresses in the resolver's order; empty: it did not resolve."""
    retry: float = 0.0
    """Seconds to the next lookup while the peer is unhealthy (RETRY_MIN..RETRY_MAX); 0.0: it
    was healthy at this lookup (the next unhealthy one starts the back-off at RETRY_MIN)."""


def due_at(last: Lookup, is_up: bool) -> float:
    """When the name is to be looked up next (monotonic seconds), given its last lookup and
    whether the peer has a path up now."""
    if is_up and last.addresses and last.retry == 0.0:
        return last.at + REFRESH
    return last.at + (last.retry or RETRY_MIN)


def after_lookup(last: Lookup, now: float, addresses: tuple[str, ...], is_up: bool) -> Lookup:
    """The record of a lookup that ended at ``now`` with ``addresses`` (empty: it failed),
    ``is_up``: whether the peer has a path up. A healthy one resets the back-off, an unhealthy
    one takes its next step."""
    if addresses and is_up:
        retry = 0.0
    elif last.retry == 0.0:
        retry = RETRY_MIN
    else:
        retry = min(last.retry * 2, RETRY_MAX)
    return Lookup(last.hostname, now, addresses, retry)


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


def one_host(addresses: tuple[str, ...]) -> tuple[str, ...]:
    """The answers that can be a peer's address: not 0.0.0.0, multicast or the broadcast
    address (the rule of a ``peer_ip`` written as an address)."""
    usable = []
    for text in addresses:
        address = ipaddress.IPv4Address(text)
        if not (address.is_unspecified or address.is_multicast or address == _BROADCAST):
            usable.append(text)
    return tuple(usable)


def moved_to(in_use: str | None, addresses: tuple[str, ...]) -> str | None:
    """The address a peer moves to: the first of ``addresses`` when the one ``in_use`` (None:
    it has none) is not among them; None when it stays (no answer, or the address still
    listed)."""
    if not addresses or in_use in addresses:
        return None
    return addresses[0]


def is_failure_news(last: Lookup, new: Lookup) -> bool:
    """Whether a failed lookup is worth a log line: once per back-off step (the steps stop at
    RETRY_MAX, and so do the lines, until the name resolves again)."""
    return not new.addresses and (last.addresses != () or new.retry != last.retry)


@dataclass
class NameBook:
    """The Lookup of each peer named by a hostname (peer id -> Lookup). Owned by one caller
    (the daemon's hostname greenlet); not thread-safe."""

    lookups: dict[int, Lookup] = field(default_factory=dict)

    def follow(self, named: Mapping[int, tuple[str, str | None]], now: float) -> None:
        """Take the named peers in use now (peer id -> (hostname, address in use)): a new one
        (or a renamed one) is recorded as looked up at ``now`` with its address in use (what
        the load found); one no longer named is forgotten."""
        for peer_id in [p for p in self.lookups if p not in named]:
            del self.lookups[peer_id]
        for peer_id, (hostname, address) in named.items():
            last = self.lookups.get(peer_id)
            if last is None or last.hostname != hostname:
                found = (address,) if address is not None else ()
                self.lookups[peer_id] = Lookup(hostname, now, found, 0.0 if found else RETRY_MIN)

    def due(self, now: float, is_up: Callable[[int], bool]) -> list[int]:
        """The peers whose name is due for a lookup at ``now``, in id order."""
        return sorted(p for p, last in self.lookups.items() if due_at(last, is_up(p)) <= now)

    def next_due_at(self, is_up: Callable[[int], bool]) -> float | None:
        """When the next lookup is due (monotonic seconds); None with no named peer."""
        return min((due_at(last, is_up(p)) for p, last in self.lookups.items()), default=None)
