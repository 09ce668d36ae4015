"""A JSON-safe picture of one engine: what ``alpaca-tunnel show`` prints.

The same counters feed ``/metrics`` (:mod:`alpaca.metrics`): both read the engine's plain
fields at the moment they are asked, through the helpers below (which peers are idle, which are
up, replay counts per sending peer), so the table and the dashboards never disagree. Ratios
that Prometheus computes with ``rate()`` are computed here over the whole lifetime.

Unlike the metrics, the snapshot shows path addresses: it is the operator's own view, served
only on the root-only control socket.

Read-only; call from the engine's hub (the control server's greenlet is one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from alpaca.core.drops import DropReason
from alpaca.core.engine import Engine
from alpaca.core.ids import format_peer_id
from alpaca.core.paths import Path, port_label
from alpaca.core.peers import Peer
from alpaca.core.stats import EngineStats


class ReplayCounts(NamedTuple):
    """Replay-window verdicts summed over every flow a peer sends (to us or through us).
    A tuple of ints: the garbage collector stops tracking it (10,000 of them per scrape)."""

    duplicate: int = 0
    too_old: int = 0
    late: int = 0


NO_REPLAYS = ReplayCounts()


def replay_by_sender(engine: Engine) -> dict[int, ReplayCounts]:
    """Replay counts per sending peer id, over all its (src, dst) flows, forgotten relayed
    ones included (so the counters never go backwards)."""
    counts = {src: ReplayCounts(duplicate, too_old, late)
              for src, (duplicate, too_old, late, _, _) in engine.relayed.retired.items()}
    for (src, _dst), flow in engine.flows.items():
        window, before = flow.window, counts.get(src, NO_REPLAYS)
        counts[src] = ReplayCounts(before.duplicate + window.duplicate, before.too_old + window.too_old,
                                   before.late + window.late)
    return counts


def occupancy(engine: Engine, peer_id: int) -> float | None:
    """Seen fraction of the window of (peer -> us); None before the peer sent us anything."""
    flow = engine.flows.get((peer_id, engine.self_id))
    return flow.window.occupancy if flow is not None else None


def is_peer_up(peer: Peer) -> bool:
    """A peer is up while at least one of its paths (VIA paths included) is up."""
    return any(path.up for path in peer.paths.all())


def _path_used(path: Path) -> bool:
    return bool(path.up or path.tx_packets or path.rx_packets or path.probes_sent or path.data_sent)


def is_idle(peer: Peer, has_flows: bool) -> bool:
    """True for a configured peer we never exchanged anything with (skipped everywhere).

    A server configured with thousands of clients must not report thousands of empty rows.
    """
    return not (
        has_flows or peer.tx_packets or peer.rx_packets or peer.dup_copies
        or math.isfinite(peer.last_active_at) or any(_path_used(p) for p in peer.paths.all())
    )


def active_peers(engine: Engine) -> list[Peer]:
    """The engine's peers minus the idle ones, in peer id order."""
    senders = {src for src, _ in engine.flows} | set(engine.relayed.retired)
    return [p for _, p in sorted(engine.peers.items()) if not is_idle(p, p.peer_id in senders)]


def state_of(path: Path) -> str:
    """``up`` or ``down``: the ``state`` label and the table's STATE column."""
    return "up" if path.up else "down"


def age(now: float, at: float) -> float | None:
    """Seconds since the monotonic instant ``at``; None if it never happened."""
    return max(0.0, now - at) if math.isfinite(at) else None


def percent(part: int, whole: int) -> float | None:
    """``part / whole`` in percent, or None when ``whole`` is 0."""
    return round(100.0 * part / whole, 2) if whole else None


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000.0, 3) if seconds is not None else None


def _addr(peer: Peer, path: Path) -> str:
    if path.via is not None:
        return f"via {format_peer_id(path.via)}"
    if path.addr is None:
        return "-"
    return f"{path.addr[0]}:{path.addr[1]}"


def path_view(peer: Peer, path: Path, first_total: int, now: float) -> dict[str, Any]:
    """One path of one peer, JSON-safe."""
    return {
        "name": path.name,
        "kind": path.kind.value,
        "addr": _addr(peer, path),
        "port": port_label(peer.paths.ports, path.port) if path.via is None else None,
        "state": state_of(path),
        "reason": path.reason,
        "state_changes": path.changes,
        "last_ok_s": _round(age(now, path.last_ok_at)),
        "srtt_ms": _ms(path.srtt),
        "rtt_last_ms": _ms(path.rtt_last),
        "probes_sent": path.probes_sent,
        "probes_answered": path.probes_answered,
        "probe_loss_pct": percent(path.probes_sent - path.probes_answered, path.probes_sent),
        "data_sent": path.data_sent,
        "data_lost": path.data_lost,
        "data_loss_pct": percent(path.data_lost, path.data_sent),
        "tx_packets": path.tx_packets,
        "tx_bytes": path.tx_bytes,
        "rx_packets": path.rx_packets,
        "rx_bytes": path.rx_bytes,
        "duplicates": path.rx_duplicates,
        "first_arrivals": path.rx_first,
        "first_arrival_pct": percent(path.rx_first, first_total),
    }


def peer_view(engine: Engine, peer: Peer, replay: ReplayCounts, now: float) -> dict[str, Any]:
    """One peer and its paths, JSON-safe."""
    paths = peer.paths.all()
    first_total = sum(p.rx_first for p in paths)
    lost = engine.lost_packets(peer.peer_id)
    got = engine.accepted_packets(peer.peer_id)
    ratio = occupancy(engine, peer.peer_id)
    return {
        "peer": format_peer_id(peer.peer_id),
        "up": is_peer_up(peer),
        "forwarder": peer.peer_id in engine.settings.forwarders,
        "gateway": peer.peer_id == engine.settings.gateway,
        "last_seen_s": _round(age(now, peer.last_active_at)),
        "tx_packets": peer.tx_packets,
        "tx_bytes": peer.tx_bytes,
        "rx_packets": peer.rx_packets,
        "rx_bytes": peer.rx_bytes,
        "lost_packets": lost,
        "accepted_packets": got,
        "lost_pct": percent(lost, lost + got),
        "dup_copies_sent": peer.dup_copies,
        "replay_duplicate": replay.duplicate,
        "replay_too_old": replay.too_old,
        "replay_late": replay.late,
        "window_occupancy": round(ratio, 4) if ratio is not None else None,
        "paths": [path_view(peer, p, first_total, now) for p in paths],
    }


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


#: Peers described between two calls of ``snapshot``'s ``pause`` (10,000 peers took 0.45 s).
PEERS_PER_TURN = 250


def snapshot(
    engine: Engine, now: float, *, started_at: float | None = None, version: str | None = None,
    pause: Callable[[], None] | None = None, stats: EngineStats | None = None,
) -> dict[str, Any]:
    """The whole node as a JSON-safe dict.

    Args:
        now: monotonic seconds (the engine's clock).
        started_at: monotonic instant the daemon started, for ``uptime_s`` (None: not shown).
        version: the daemon's version, shown as is.
        pause: called after every PEERS_PER_TURN peers (the daemon gives the hub a turn, so
            the packet path does not wait for a large node's whole snapshot).
        stats: the node-wide counters to show, when more than the engine counts them (a
            ProtocolMux adds the legacy engine's); default: the engine's own.
    """
    replay = replay_by_sender(engine)
    peers = active_peers(engine)
    views = []
    for i, peer in enumerate(peers, start=1):
        views.append(peer_view(engine, peer, replay.get(peer.peer_id, ReplayCounts()), now))
        if pause is not None and i % PEERS_PER_TURN == 0:
            pause()
    stats = engine.stats if stats is None else stats
    return {
        "node": format_peer_id(engine.self_id),
        "version": version,
        "epoch": engine.epoch,
        "uptime_s": _round(age(now, started_at)) if started_at is not None else None,
        "peers_configured": len(engine.peers),
        "peers_up": sum(1 for p in engine.peers.values() if is_peer_up(p)),
        "forwarders": [format_peer_id(f) for f in engine.settings.forwarders],
        "gateway": format_peer_id(engine.settings.gateway) if engine.settings.gateway is not None else None,
        "sent_datagrams": stats.sent_datagrams,
        "sent_bytes": stats.sent_bytes,
        "forwarded_packets": stats.forwarded_packets,
        "forwarded_bytes": stats.forwarded_bytes,
        "dup_queue_depth": len(engine.dup),
        "dup_queue_dropped": stats.drops[DropReason.DUP_QUEUE_FULL],  # both engines' under a mux
        "drops": {label: n for label, n in stats.drop_counts().items() if n},
        "peers": views,
    }
