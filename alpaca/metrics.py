"""Prometheus metrics: a custom collector that reads the engine at scrape time.

The engine keeps plain ints and floats (``EngineStats``, ``Peer``, ``Path``, replay windows);
:class:`EngineCollector` turns them into metric families when Prometheus asks, so the packet
path never touches a metric object and a scrape costs O(peers x paths), whatever the traffic.
Every metric is listed in docs/metrics.md.

Labels are bounded: ``peer`` (a configured peer id "A.B"), ``path`` (``Path.name``: ``direct/<port>``,
``slot<i>/<port>``, ``via-<forwarder>``), ``reason`` and ``state`` (closed sets), ``version``
and ``node``. Never an address. Configured peers we never exchanged anything with emit nothing.

The one piece of state kept here is the RTT histogram: the engine appends RTT samples to
``Path.rtt_samples`` (bounded), and each scrape drains them into cumulative bucket counts kept
per (peer, path) label pair.

The registry is our own (never the global one) and is served by gevent's WSGI server on the
hub: no OS thread, so never ``start_http_server``. Call everything here from the hub.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable, Iterator
from operator import attrgetter

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from alpaca.core.engine import Engine
from alpaca.core.ids import format_peer_id
from alpaca.core.paths import Path
from alpaca.core.peers import Peer
from alpaca.errors import TunnelError
from alpaca.snapshot import (
    ReplayCounts,
    accepted,
    active_peers,
    is_peer_up,
    occupancy,
    replay_by_sender,
    state_of,
)

log = logging.getLogger(__name__)

#: Upper bounds (seconds) of the RTT histogram buckets; +Inf is added.
RTT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0,
)
#: Every value ``Path.reason`` can take (a closed set; documented for the state_info metric).
PATH_REASONS = ("new", "answering", "timeout")
PEER_PATH = ("peer", "path")
#: Concurrent HTTP connections the metrics server serves (more wait in the accept queue).
MAX_CONNECTIONS = 16
#: Seconds a connection may wait for the client's next bytes (an idle keep-alive connection
#: is closed after this): idle connections must not hold the pool while Prometheus waits.
READ_TIMEOUT = 5.0
#: Seconds one connection may live at most, however it trickles its bytes.
CONNECTION_LIFETIME = 30.0

#: (metric name without _total, help, Path attribute): per-path counters.
PATH_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("alpaca_packets_sent", "Datagrams sent on the path (data, probes, relayed, copies).", "tx_packets"),
    ("alpaca_bytes_sent", "Bytes of datagrams sent on the path.", "tx_bytes"),
    ("alpaca_packets_received", "Authentic datagrams received on the path, copies included.", "rx_packets"),
    ("alpaca_bytes_received", "Bytes of authentic datagrams received on the path.", "rx_bytes"),
    ("alpaca_path_duplicates_received", "Datagrams received on the path that another copy beat.",
     "rx_duplicates"),
    ("alpaca_path_first_arrival", "Datagrams whose first copy arrived on this path.", "rx_first"),
    ("alpaca_path_probes_sent", "Probes sent on the path.", "probes_sent"),
    ("alpaca_path_probes_answered", "Probe replies received for the path.", "probes_answered"),
    ("alpaca_path_data_sent", "DATA packets sent on the path (originated here).", "data_sent"),
    ("alpaca_path_data_lost", "DATA packets sent on the path that the peer reports it never got.",
     "data_lost"),
    ("alpaca_path_state_changes", "Times the path went up or down.", "changes"),
)
#: (metric name without _total, help, Peer attribute): per-peer counters.
PEER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("alpaca_peer_tx_packets", "Inner packets originated here towards the peer.", "tx_packets"),
    ("alpaca_peer_tx_bytes", "Bytes of inner packets originated here towards the peer.", "tx_bytes"),
    ("alpaca_peer_rx_packets", "Inner packets from the peer written to the TUN device.", "rx_packets"),
    ("alpaca_peer_rx_bytes", "Bytes of inner packets from the peer written to the TUN device.", "rx_bytes"),
    ("alpaca_dup_copies_sent", "Delayed extra copies sent towards the peer (duplicate-send).", "dup_copies"),
)


class RttHistogram:
    """Cumulative RTT bucket counts for one (peer, path), fed from drained samples."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(RTT_BUCKETS) + 1)  # per bucket, the last one is +Inf
        self.total = 0.0

    def drain(self, samples: list[float]) -> None:
        """Fold ``samples`` in and empty the list (the engine refills it)."""
        for sample in samples:
            self.counts[bisect.bisect_left(RTT_BUCKETS, sample)] += 1
            self.total += sample
        samples.clear()

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, +Inf last."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(repr, RTT_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class EngineCollector:
    """A prometheus_client collector over one engine.

    Args:
        engine_ref: returns the current engine, or None (not started yet, or stopped): then
            only node-level metrics that need no engine are emitted.
        clock: monotonic seconds, the engine's clock (for ages such as "last active").
    """

    def __init__(self, engine_ref: Callable[[], Engine | None], clock: Callable[[], float]) -> None:
        self.engine_ref = engine_ref
        self.clock = clock
        self.histograms: dict[tuple[str, str], RttHistogram] = {}

    def describe(self) -> Iterable[Metric]:
        """Nothing: the registry must not call collect() (and drain samples) at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        engine = self.engine_ref()
        if engine is None:
            return
        started = self.clock()
        families = [*self._node_families(engine), *self._peer_families(engine)]
        duration = GaugeMetricFamily(
            "alpaca_metrics_collect_duration_seconds", "Time the last scrape spent reading the engine.",
            value=max(0.0, self.clock() - started),
        )
        yield from families
        yield duration

    # ------------------------------------------------------------------ node
    def _node_families(self, engine: Engine) -> Iterator[Metric]:
        stats = engine.stats
        dropped = CounterMetricFamily(
            "alpaca_packets_dropped", "Packets dropped, by reason (every reason, zeros included).",
            labels=["reason"],
        )
        for reason, count in stats.drop_counts().items():
            dropped.add_metric([reason], count)
        yield dropped
        yield from _counters([
            ("alpaca_config_reloads", "Configuration reloads applied.", stats.reloads),
            ("alpaca_forwarded_packets", "Datagrams relayed for other peers.", stats.forwarded_packets),
            ("alpaca_forwarded_bytes", "Bytes of datagrams relayed for other peers.", stats.forwarded_bytes),
            ("alpaca_route_cache_hits", "Route cache lookups answered from the cache.", engine.routes.hits),
            ("alpaca_route_cache_misses", "Route cache lookups that asked the host.", engine.routes.misses),
            ("alpaca_route_cache_flushes", "Route cache flushes (route, rule or address changes).",
             engine.routes.flushes),
            ("alpaca_dup_queue_dropped", "Delayed copies refused because the queue was full.",
             engine.dup.dropped),
            ("alpaca_epoch_resets", "Replay windows reset because a peer restarted (new epoch).",
             stats.epoch_resets),
        ])
        peers_up = sum(1 for p in engine.peers.values() if is_peer_up(p))
        yield from _gauges([
            ("alpaca_route_cache_entries", "Entries in the route cache.", len(engine.routes)),
            ("alpaca_dup_queue_depth", "Delayed copies waiting to be sent.", len(engine.dup)),
            ("alpaca_epoch", "This run's session epoch.", engine.epoch),
            ("alpaca_peers_configured", "Peers in the secrets file, this node excluded.", len(engine.peers)),
            ("alpaca_peers_up", "Peers with at least one path up.", peers_up),
        ])
        forwarder_up = GaugeMetricFamily(
            "alpaca_forwarder_up", "1 if a configured forwarder has a path up, else 0.", labels=["peer"]
        )
        for fwd in engine.settings.forwarders:
            peer = engine.peers.get(fwd)
            forwarder_up.add_metric([format_peer_id(fwd)], int(peer is not None and is_peer_up(peer)))
        yield forwarder_up

    # ------------------------------------------------------------------ peers and paths
    def _peer_families(self, engine: Engine) -> Iterator[Metric]:
        now = self.clock()
        peers = active_peers(engine)
        replay = replay_by_sender(engine)
        yield from self._per_peer(engine, peers, replay, now)
        rows = [(format_peer_id(peer.peer_id), path) for peer in peers for path in peer.paths.all()]
        yield from self._per_path(rows, now)

    def _per_peer(
        self, engine: Engine, peers: list[Peer], replay: dict[int, ReplayCounts], now: float
    ) -> Iterator[Metric]:
        ids = [(format_peer_id(p.peer_id), p) for p in peers]
        for name, doc, attr in PEER_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["peer"])
            get = attrgetter(attr)
            for label, peer in ids:
                family.add_metric([label], get(peer))
            yield family
        lost = CounterMetricFamily(
            "alpaca_peer_lost_packets",
            "Packets from the peer that no path delivered (left the replay window unseen).",
            labels=["peer"],
        )
        got = CounterMetricFamily(
            "alpaca_peer_accepted_packets",
            "Datagrams from the peer to this node (DATA and probes) the replay window accepted.",
            labels=["peer"],
        )
        rejected = CounterMetricFamily(
            "alpaca_replay_rejected", "Authentic datagrams from the peer the replay window rejected.",
            labels=["peer", "reason"],
        )
        late = CounterMetricFamily(
            "alpaca_replay_late_accepted", "Datagrams from the peer accepted below the window top "
            "(reordered).", labels=["peer"],
        )
        window = GaugeMetricFamily(
            "alpaca_replay_window_occupancy_ratio",
            "Fraction of the counters in the peer's replay window that arrived.", labels=["peer"],
        )
        last = GaugeMetricFamily(
            "alpaca_peer_last_active_age_seconds", "Seconds since we last sent to or heard from the peer.",
            labels=["peer"],
        )
        for label, peer in ids:
            counts = replay.get(peer.peer_id, ReplayCounts())
            lost.add_metric([label], engine.lost_packets(peer.peer_id))
            got.add_metric([label], accepted(engine, peer.peer_id))
            rejected.add_metric([label, "duplicate"], counts.duplicate)
            rejected.add_metric([label, "too_old"], counts.too_old)
            late.add_metric([label], counts.late)
            ratio = occupancy(engine, peer.peer_id)
            if ratio is not None:
                window.add_metric([label], ratio)
            if peer.last_active_at != float("-inf"):
                last.add_metric([label], max(0.0, now - peer.last_active_at))
        yield from (lost, got, rejected, late, window, last)

    def _per_path(self, rows: list[tuple[str, Path]], now: float) -> Iterator[Metric]:
        for name, doc, attr in PATH_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=PEER_PATH)
            get = attrgetter(attr)
            for label, path in rows:
                family.add_metric([label, path.name], get(path))
            yield family
        up = GaugeMetricFamily("alpaca_path_up", "1 if the path is up, else 0.", labels=PEER_PATH)
        info = GaugeMetricFamily(
            "alpaca_path_state_info", "1 for the path's current state and the reason it is in it.",
            labels=["peer", "path", "state", "reason"],
        )
        srtt = GaugeMetricFamily(
            "alpaca_path_rtt_seconds", "Smoothed round-trip time of the path's probes.", labels=PEER_PATH
        )
        rtt_last = GaugeMetricFamily(
            "alpaca_path_rtt_last_seconds", "Round-trip time of the path's last answered probe.",
            labels=PEER_PATH,
        )
        ok_age = GaugeMetricFamily(
            "alpaca_path_last_ok_age_seconds", "Seconds since the path last delivered something authentic.",
            labels=PEER_PATH,
        )
        for label, path in rows:
            labels = [label, path.name]
            up.add_metric(labels, int(path.up))
            info.add_metric([*labels, state_of(path), path.reason], 1)
            if path.srtt is not None:
                srtt.add_metric(labels, path.srtt)
            if path.rtt_last is not None:
                rtt_last.add_metric(labels, path.rtt_last)
            if path.last_ok_at != float("-inf"):
                ok_age.add_metric(labels, max(0.0, now - path.last_ok_at))
        yield from (up, info, srtt, rtt_last, ok_age)
        yield self._rtt_histogram(rows)

    def _rtt_histogram(self, rows: list[tuple[str, Path]]) -> Metric:
        family = HistogramMetricFamily(
            "alpaca_path_rtt_sample_seconds", "Round-trip times of the path's answered probes.",
            labels=PEER_PATH,
        )
        for label, path in rows:
            key = (label, path.name)
            hist = self.histograms.get(key)
            if hist is None:
                if not path.rtt_samples:
                    continue  # never measured: no series, as for the srtt gauge
                hist = self.histograms[key] = RttHistogram()
            hist.drain(path.rtt_samples)
            family.add_metric([label, path.name], hist.buckets(), hist.total)
        return family


class NodeInfoCollector:
    """Constant node metrics: build info and start time."""

    def __init__(self, version: str, start_time: float, node: str) -> None:
        self.version, self.start_time, self.node = version, start_time, node

    def describe(self) -> Iterable[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("alpaca_build_info", "Always 1; the labels say what runs.",
                                 labels=["version", "node"])
        info.add_metric([self.version, self.node], 1)
        yield info
        yield GaugeMetricFamily("alpaca_start_time_seconds", "When the daemon started, Unix seconds.",
                                value=self.start_time)


def _counters(rows: list[tuple[str, str, int]]) -> Iterator[Metric]:
    for name, doc, value in rows:
        yield CounterMetricFamily(name, doc, value=value)


def _gauges(rows: list[tuple[str, str, float]]) -> Iterator[Metric]:
    for name, doc, value in rows:
        yield GaugeMetricFamily(name, doc, value=value)


def build_registry(
    engine_ref: Callable[[], Engine | None], clock: Callable[[], float], *,
    version: str, start_time: float, node: str,
) -> CollectorRegistry:
    """A fresh registry (never the global one) with the engine and node collectors.

    Args:
        engine_ref / clock: see :class:`EngineCollector`.
        version: the daemon's version (``alpaca_build_info{version}``).
        start_time: Unix seconds the daemon started (``alpaca_start_time_seconds``).
        node: this node's name (``alpaca_build_info{node}``), e.g. its peer id "1.1".
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeInfoCollector(version, start_time, node))
    registry.register(EngineCollector(engine_ref, clock))
    return registry


class _BoundedHandler(WSGIHandler):  # type: ignore[misc]  # gevent ships no types
    """gevent's handler, with every read bounded by :data:`READ_TIMEOUT` and the connection by
    :data:`CONNECTION_LIFETIME`; a connection that runs out is closed without a word logged."""

    read_timeout = READ_TIMEOUT
    lifetime = CONNECTION_LIFETIME

    def handle(self) -> None:
        self.socket.settimeout(self.read_timeout)
        deadline = gevent.Timeout(self.lifetime)
        deadline.start()
        try:
            super().handle()
        except (TimeoutError, ConnectionError):
            pass  # idle or gone: gevent's handle() has closed the socket
        except gevent.Timeout as exc:
            if exc is not deadline:
                raise
        finally:
            deadline.close()


def serve_metrics(registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 9586, *,
                  read_timeout: float = READ_TIMEOUT,
                  lifetime: float = CONNECTION_LIFETIME) -> WSGIServer:
    """Serve ``registry`` over HTTP from the gevent hub (no thread); returns the started server.

    The access log is off; server errors go to this module's logger. At most
    :data:`MAX_CONNECTIONS` connections are served at once; each is closed once it waits
    ``read_timeout`` seconds for the client or has lived ``lifetime`` seconds, so idle or
    slow clients cannot keep a scrape out. ``port`` 0 picks a free port
    (``server.server_port``). Stop it with ``server.stop()``.
    """
    handler = type("MetricsHandler", (_BoundedHandler,),
                   {"read_timeout": read_timeout, "lifetime": lifetime})
    # SERVER_NAME given: otherwise gevent asks reverse DNS for it (socket.getfqdn), which on a
    # host without a reachable resolver blocks start-up for the resolver's 10 s timeout.
    server = WSGIServer((host, port), make_wsgi_app(registry), log=None, error_log=log,
                        spawn=MAX_CONNECTIONS, handler_class=handler,
                        environ={"SERVER_NAME": host})
    try:
        server.start()
    except OSError as exc:
        raise TunnelError(
            f"metrics.listen: cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
            " (choose a free port and an address of this host, or set \"metrics\": false)"
        ) from exc
    log.info("metrics served url=http://%s:%d/metrics", host, server.server_port)
    return server
