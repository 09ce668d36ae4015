"""Where a datagram goes: the wiki's forwarding rules as pure functions of the path tables.

Rules (dst and src are the packet's header ids, not the hop's):

* ``dst < src`` (upstream) and forwarders configured -> each forwarder, on its best live link
  (answering probes, then the lowest smoothed RTT: :func:`alpaca.core.paths.send_order`;
  a2 for our own packets, b3 for relayed ones);
* otherwise -> every live link of ``dst`` (a1, b2, and all downstream traffic), or every
  known link when none is live yet;
* ``dst`` with no link at all (a client never heard from), or only learned ones that all
  went down (the address it was learned at may be gone: a relay that moved to another
  port) -> the upstream way: forwarders, else the gateway, which relays it on; with neither,
  its known links;
* split horizon: never back to the address (IP and port) the packet came from. The original
  compared the IP only, which cut off clients behind one NAT address from each other.

A target is (link to send on, path index to stamp, path that accounts DATA sent, or None
where no probe reports that path index's receive count). The engine
caches the result for its own packets per path generation; nothing here keeps state.
"""

from __future__ import annotations

from alpaca.core.paths import Path, send_order
from alpaca.core.peers import Peer
from alpaca.core.settings import Addr, EngineSettings

Target = tuple[Path, int, Path | None]


def targets(
    settings: EngineSettings, peers: dict[int, Peer], src: int, dst: int,
    came_from: Addr | None, pi: int | None,
) -> tuple[list[Target], list[Target]]:
    """(first-copy targets, spare links for delayed copies), split horizon applied.

    Args:
        came_from: UDP source address (ip, port) of a relayed packet; None for our own.
        pi: the path index to keep (relays); None to stamp each path's own (origin).
    """
    peer = peers.get(dst)
    if peer is None:
        return [], []
    live = peer.paths.live_links()
    links = live or peer.paths.links()
    stale = not live and not peer.paths.static  # never heard from, or its learned links died
    gateway = settings.gateway
    if (dst < src or stale) and settings.forwarders:
        chosen, spare = forwarder_targets(settings, peers, dst, pi)
    elif stale and gateway is not None and gateway != dst and gateway in peers:
        gateway_paths = peers[gateway].paths  # (counted on no path: the gateway's reports
        chosen = [(p, p.pi if pi is None else pi, None)  # count only DATA addressed to it)
                  for p in gateway_paths.live_links() or gateway_paths.links()]
        spare = []
    else:
        chosen = [(p, p.pi if pi is None else pi, p) for p in links]
        spare = []
    if came_from is not None:
        chosen = [t for t in chosen if t[0].addr is not None and t[0].addr != came_from]
        spare = [t for t in spare if t[0].addr is not None and t[0].addr != came_from]
    return chosen, spare


def forwarder_targets(
    settings: EngineSettings, peers: dict[int, Peer], dst: int, pi: int | None,
) -> tuple[list[Target], list[Target]]:
    """a2/b3: one target per usable forwarder (its best link), plus its other live links.

    A forwarder none of whose links is live yet (just configured, or restarting) gets the
    packet on every link, as any peer does: which local port reaches it is not known yet.
    When some forwarder is live, the ones that are not are left out.
    """
    dst_peer = peers.get(dst)
    live: list[Target] = []
    unknown: list[Target] = []
    spare: list[Target] = []
    for i, fwd in enumerate(settings.forwarders):
        peer = peers.get(fwd)
        if peer is None or fwd == settings.self_id:
            continue
        via = dst_peer.paths.via.get(i + 1) if dst_peer is not None else None
        links = peer.paths.live_links()
        if not links:
            unknown.extend(_through(i, fwd, dst, via, link, pi) for link in peer.paths.links())
            continue
        best = min(links, key=send_order)
        live.append(_through(i, fwd, dst, via, best, pi))
        spare.extend(_through(i, fwd, dst, via, p, pi) for p in links if p is not best)
    return (live or unknown), spare


def _through(i: int, fwd: int, dst: int, via: Path | None, link: Path, pi: int | None) -> Target:
    """The target "to dst through forwarder i on ``link``". Our own packets are stamped with
    forwarder i's path index, (i+1) << 2 | local port (the VIA path's, where dst has one),
    so that dst files each forwarder's copies under a path of its own; a relay keeps the
    index it received. DATA counts on the VIA path, whose probes measure its loss, or on the
    link when the forwarder is dst itself; otherwise on none (nothing reports it)."""
    if fwd == dst:
        return (link, link.pi if pi is None else pi, link)
    if via is not None:
        return (link, via.pi if pi is None else pi, via)
    return (link, (i + 1) << 2 | link.port if pi is None else pi, None)

