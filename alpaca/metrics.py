"""Prometheus metrics: a custom collector that reads the engine at scrape time.

The engine keeps plain ints and floats (``EngineStats``, ``Peer``, ``Path``, replay windows);
:class:`EngineCollector` turns them into metric families when Prometheus asks, so the packet
path never touches a metric object and a scrape costs O(peers x paths), whatever the traffic.
Every metric is listed in docs/metrics.md.

Labels are bounded: ``peer`` (a configured peer id "A.B"), ``path`` (``Path.name``: ``direct/<port>``,
``slot<i>/<port>``, ``via-<forwarder>``), ``port`` (a port's name from config), ``reason`` and
``state`` (closed sets), ``version`` and ``node``. Never an address. Configured peers we never
exchanged anything with emit nothing.

The one piece of state kept here is the RTT histogram: the engine appends RTT samples to
``Path.rtt_samples`` (bounded), and each scrape drains them into cumulative bucket counts kept
per (peer, path) label pair.

The registry is our own (never the global one) and is served by gevent's WSGI server on the
hub: no OS thread, so never ``start_http_server``. Call everything here from the hub. A scrape
is written in slices of :data:`alpaca.exposition.CHUNK_LINES` lines with a turn for the hub
between them: 10,000 peers with three paths each (about a million lines) never hold the
packet path for more than a slice.
"""

from __future__ import annotations

import bisect
import logging
import socket
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, MutableSequence
from operator import attrgetter
from typing import Any

import gevent
import gevent.lock
from gevent.pywsgi import Input, WSGIHandler, WSGIServer
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from alpaca.core.drops import DropReason
from alpaca.core.engine import Engine
from alpaca.core.ids import format_peer_id
from alpaca.core.paths import Path
from alpaca.core.peers import Peer
from alpaca.core.stats import EngineStats
from alpaca.errors import TunnelError
from alpaca.exposition import Family, Row, render_text, single, to_metric
from alpaca.io import hub_turns
from alpaca.slowclients import SlowClientLog
from alpaca.snapshot import (
    NO_REPLAYS,
    ReplayCounts,
    active_peers,
    is_peer_up,
    occupancy,
    replay_by_sender,
    state_of,
)

log = logging.getLogger(__name__)

#: The text format the endpoint writes (what ``generate_latest`` writes; every Prometheus reads it).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Upper bounds (seconds) of the RTT histogram buckets; +Inf is added.
RTT_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.0,
)
#: Every value ``Path.reason`` can take (a closed set; documented for the state_info metric).
PATH_REASONS = ("new", "answering", "unanswered", "timeout")
PEER_PATH = ("peer", "path")
#: Concurrent HTTP connections the metrics server serves (more wait in the accept queue).
#: Slow clients hold a place for :data:`REQUEST_DEADLINE` seconds at most, so a pool full of
#: them keeps a scrape out that long; a larger pool would only ask them to open more.
MAX_CONNECTIONS = 16
#: Seconds a connection has to send a whole request (the request line and the headers),
#: counted from accept, or on a keep-alive connection from the end of the previous answer (an
#: idle one is closed then). Writing the answer is not counted. Prometheus sends its request
#: at once; a client that trickles it (a slowloris) must not hold the pool while Prometheus waits.
REQUEST_DEADLINE = 3.0
#: The answer to a request that cannot be parsed (then the connection closes).
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
#: What is read, at most, of a request body after the answer (bytes, seconds): enough for
#: the client to see the answer whole before the close.
DRAIN_BYTES = 1 << 20
DRAIN_SECONDS = 2.0
#: environ key set by the handler on a connection's last answer (it outlived the lifetime)
LAST_ANSWER = "alpaca.last_answer"
#: What a report of slow clients says was closed, and why.
SLOW_CLOSED = "metrics connections closed: no complete request in time"
#: Seconds one read or write may wait for the client (a client that stops reading the answer).
READ_TIMEOUT = 5.0
#: Seconds one request and its answer may take at most, however the client trickles its
#: bytes; also how long a connection is kept alive: the first answer after it says
#: ``Connection: close`` (an answer is never cut: Prometheus scraping every 2 s keeps its
#: connection, and a cut answer is a failed scrape).
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
    ("alpaca_dup_copies_sent", "Delayed extra copies (duplicate-send) sent towards the peer, on any link.",
     "dup_copies"),
)


class RttHistogram:
    """Cumulative RTT bucket counts for one (peer, path), fed from drained samples."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(RTT_BUCKETS) + 1)  # per bucket, the last one is +Inf
        self.total = 0.0

    def drain(self, samples: MutableSequence[float]) -> None:
        """Fold ``samples`` in and empty them (the engine refills them)."""
        for sample in samples:
            self.counts[bisect.bisect_left(RTT_BUCKETS, sample)] += 1
            self.total += sample
        del samples[:]

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative (le, count) pairs, +Inf last."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*map(repr, RTT_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class EngineCollector:
    """A prometheus_client collector over one engine; :meth:`families` is the same read-out as
    plain rows for :func:`alpaca.exposition.render_text`.

    Args:
        engine_ref: returns the current engine, or None (not started yet, or stopped): then
            only node-level metrics that need no engine are emitted.
        clock: monotonic seconds, the engine's clock (for ages such as "last active").
        stats_ref: the node-wide counters (drops, relayed, reloads) to export, when more than
            the engine counts them (a ProtocolMux adds the legacy engine's); default: the
            engine's own.
    """

    def __init__(self, engine_ref: Callable[[], Engine | None], clock: Callable[[], float],
                 stats_ref: Callable[[], EngineStats] | None = None) -> None:
        self.engine_ref = engine_ref
        self.clock = clock
        self.stats_ref = stats_ref
        self.histograms: dict[tuple[str, str], RttHistogram] = {}
        #: seconds of work the previous scrape took (set by whoever ran it)
        self.last_duration = 0.0

    def describe(self) -> Iterable[Metric]:
        """Nothing: the registry must not call collect() (and drain samples) at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        metrics = [to_metric(family) for family in self.families() if family is not None]
        self.last_duration = time.perf_counter() - started
        yield from metrics

    def families(self) -> Iterator[Family | None]:
        """Every family, its rows read from the engine as they are consumed; the engine may
        change in between (each row is read whole), so a scrape served in slices is never
        more than slightly skewed in time. None marks a turn for the hub after a pass over
        every peer (:func:`alpaca.exposition.render_text`)."""
        engine = self.engine_ref()
        if engine is None:
            return
        yield from self._node_families(engine)
        yield None
        yield from self._peer_families(engine)
        yield single("alpaca_metrics_collect_duration_seconds", "gauge",
                     "Seconds of work the previous scrape took (reading the engine, writing the "
                     "text; the turns given to the packet path in between excluded).", self.last_duration)

    # ------------------------------------------------------------------ node
    def _node_families(self, engine: Engine) -> Iterator[Family]:
        stats = engine.stats if self.stats_ref is None else self.stats_ref()
        yield Family("alpaca_packets_dropped", "counter",
                     "Packets dropped, by reason (every reason, zeros included).", ("reason",),
                     [((reason,), count) for reason, count in stats.drop_counts().items()])
        for name, doc, count in (
            ("alpaca_config_reloads", "Configuration reloads applied.", stats.reloads),
            ("alpaca_config_reload_failures", "Reloads that kept the running configuration (a file "
             "that does not load, another node's mode or id, host routes not updated).",
             stats.reload_failures),
            ("alpaca_forwarded_packets", "Datagrams relayed for other peers.", stats.forwarded_packets),
            ("alpaca_forwarded_bytes", "Bytes of datagrams relayed for other peers.", stats.forwarded_bytes),
            ("alpaca_route_cache_hits", "Route cache lookups answered from the cache.", engine.routes.hits),
            ("alpaca_route_cache_misses", "Route cache lookups that asked the host.", engine.routes.misses),
            ("alpaca_route_cache_flushes", "Route cache flushes (route, rule or address changes).",
             engine.routes.flushes),
            ("alpaca_dup_queue_dropped", "Delayed copies refused because the queue was full.",
             stats.drops[DropReason.DUP_QUEUE_FULL]),  # both engines' queues under a mux
            ("alpaca_epoch_resets", "Replay windows reset because a peer restarted (new epoch).",
             stats.epoch_resets),
        ):
            yield single(name, "counter", doc, count)
        peers_up = sum(1 for p in engine.peers.values() if is_peer_up(p))
        for name, doc, value in (
            ("alpaca_route_cache_entries", "Entries in the route cache.", len(engine.routes)),
            ("alpaca_dup_queue_depth", "Delayed copies waiting to be sent.", len(engine.dup)),
            ("alpaca_epoch", "This run's session epoch.", engine.epoch),
            ("alpaca_peers_configured", "Peers in the secrets file, this node excluded.", len(engine.peers)),
            ("alpaca_peers_up", "Peers with at least one path up.", peers_up),
            ("alpaca_config_last_reload_successful", "0 while the last reload kept the running "
             "configuration (alpaca_config_reload_failures_total), else 1.", 1 - stats.reload_failed),
            ("alpaca_config_restart_pending", "1 while the config file read at the last reload "
             "holds a change only a restart applies (the log names the keys), else 0.",
             stats.restart_pending),
        ):
            yield single(name, "gauge", doc, value)
        forwarders = [(fwd, engine.peers.get(fwd)) for fwd in engine.settings.forwarders]
        yield Family("alpaca_forwarder_up", "gauge", "1 if a configured forwarder has a path up, else 0.",
                     ("peer",), [((format_peer_id(fwd),), int(peer is not None and is_peer_up(peer)))
                                 for fwd, peer in forwarders])

    # ------------------------------------------------------------------ peers and paths
    def _peer_families(self, engine: Engine) -> Iterator[Family | None]:
        """Per peer, then per path. What lives through the scrape is kept to a few
        containers (a list of peers, a dict of labels, one of tuples of ints), so the scrape
        adds nothing for the garbage collector to go through again and again."""
        now = self.clock()
        peers = active_peers(engine)
        labels = {peer.peer_id: format_peer_id(peer.peer_id) for peer in peers}
        yield None
        replay = replay_by_sender(engine)
        yield None
        yield from self._per_peer(engine, peers, labels, replay, now)
        yield None
        yield from self._per_path(peers, labels, now)

    def _per_peer(self, engine: Engine, peers: list[Peer], labels: dict[int, str],
                  replay: dict[int, ReplayCounts], now: float) -> Iterator[Family | None]:
        for name, doc, attr in PEER_COUNTERS:
            get = attrgetter(attr)
            yield Family(name, "counter", doc, ("peer",),
                         (((labels[peer.peer_id],), get(peer)) for peer in peers))
        yield Family("alpaca_peer_lost_packets", "counter",
                     "Packets from the peer that no path delivered (still missing after the loss horizon).",
                     ("peer",), (((labels[p.peer_id],), engine.lost_packets(p.peer_id)) for p in peers))
        yield Family("alpaca_peer_accepted_packets", "counter",
                     "Datagrams from the peer to this node (DATA and probes) the replay window accepted.",
                     ("peer",), (((labels[p.peer_id],), engine.accepted_packets(p.peer_id)) for p in peers))
        counts = [(labels[p.peer_id], replay.get(p.peer_id, NO_REPLAYS)) for p in peers]
        yield Family("alpaca_replay_rejected", "counter",
                     "Authentic datagrams from the peer the replay window rejected.", ("peer", "reason"),
                     (row for label, c in counts
                      for row in (((label, "duplicate"), c.duplicate), ((label, "too_old"), c.too_old))))
        yield Family("alpaca_replay_late_accepted", "counter",
                     "Datagrams from the peer accepted below the window top (reordered).", ("peer",),
                     (((label,), c.late) for label, c in counts))
        yield Family("alpaca_replay_window_occupancy_ratio", "gauge",
                     "Fraction of the counters in the peer's replay window that arrived.", ("peer",),
                     (((labels[p.peer_id],), ratio) for p in peers
                      if (ratio := occupancy(engine, p.peer_id)) is not None))
        yield Family("alpaca_peer_last_active_age_seconds", "gauge",
                     "Seconds since we last sent to or heard from the peer.", ("peer",),
                     (((labels[p.peer_id],), max(0.0, now - p.last_active_at)) for p in peers
                      if p.last_active_at != float("-inf")))

    def _per_path(self, peers: list[Peer], labels: dict[int, str], now: float) -> Iterator[Family]:
        def rows() -> Iterator[tuple[str, Path]]:  # made anew for each family: nothing kept
            for peer in peers:
                label = labels[peer.peer_id]
                for path in peer.paths.all():
                    yield label, path

        for name, doc, attr in PATH_COUNTERS:
            get = attrgetter(attr)
            yield Family(name, "counter", doc, PEER_PATH,
                         (((label, path.name), get(path)) for label, path in rows()))
        yield Family("alpaca_path_up", "gauge", "1 if the path is up, else 0.", PEER_PATH,
                     (((label, path.name), int(path.up)) for label, path in rows()))
        yield Family("alpaca_path_state_info", "gauge",
                     "1 for the path's current state and the reason it is in it.",
                     ("peer", "path", "state", "reason"),
                     (((label, path.name, state_of(path), path.reason), 1) for label, path in rows()))
        yield Family("alpaca_path_rtt_seconds", "gauge", "Smoothed round-trip time of the path's probes.",
                     PEER_PATH, (((label, path.name), path.srtt) for label, path in rows()
                                 if path.srtt is not None))
        yield Family("alpaca_path_rtt_last_seconds", "gauge",
                     "Round-trip time of the path's last answered probe.", PEER_PATH,
                     (((label, path.name), path.rtt_last) for label, path in rows()
                      if path.rtt_last is not None))
        yield Family("alpaca_path_last_ok_age_seconds", "gauge",
                     "Seconds since the path last delivered something authentic.", PEER_PATH,
                     (((label, path.name), max(0.0, now - path.last_ok_at)) for label, path in rows()
                      if path.last_ok_at != float("-inf")))
        paused = {(labels[peer.peer_id], path.name) for peer in peers
                  for path in (peer.paths.via_retired or {}).values()}
        yield Family("alpaca_path_rtt_sample_seconds", "histogram",
                     "Round-trip times of the path's answered probes.", PEER_PATH,
                     self._rtt_rows(rows(), paused))

    def _rtt_rows(self, rows: Iterator[tuple[str, Path]], paused: set[tuple[str, str]]) -> Iterator[Row]:
        """The histograms of the paths there are; those of paths gone since the last scrape
        (a removed peer, a forgotten learned path) are dropped with them. Those of ``paused``
        paths (VIA paths of a forwarder a reload left out) are kept but not shown: the path
        comes back with its counters if the forwarder does."""
        seen = set(paused)
        for label, path in rows:
            key = (label, path.name)
            hist = self.histograms.get(key)
            if hist is None:
                if not path.rtt_samples:
                    continue  # never measured: no series, as for the srtt gauge
                hist = self.histograms[key] = RttHistogram()
            seen.add(key)
            hist.drain(path.rtt_samples)
            yield key, (hist.buckets(), hist.total)
        for gone in [key for key in self.histograms if key not in seen]:
            del self.histograms[gone]


class NodeInfoCollector:
    """Node metrics that need no engine: build info, start time, and the kernel's drops at
    the UDP ports (``port_drops``: (port name, datagrams) pairs, read at each scrape)."""

    def __init__(self, version: str, start_time: float, node: str,
                 port_drops: Callable[[], list[tuple[str, int]]] = list) -> None:
        self.version, self.start_time, self.node = version, start_time, node
        self.port_drops = port_drops

    def describe(self) -> Iterable[Metric]:
        return list(self.collect())

    def collect(self) -> Iterator[Metric]:
        return (to_metric(family) for family in self.families())

    def families(self) -> Iterator[Family]:
        yield Family("alpaca_build_info", "gauge", "Always 1; the labels say what runs.",
                     ("version", "node"), [((self.version, self.node), 1)])
        yield single("alpaca_start_time_seconds", "gauge", "When the daemon started, Unix seconds.",
                     self.start_time)
        yield Family("alpaca_udp_receive_drops", "counter",
                     "Datagrams the kernel dropped at a UDP port (its priority lane included) before "
                     "the daemon read them: a full receive buffer (a flood, a daemon short of CPU) "
                     "or a bad UDP checksum.", ("port",),
                     [((name,), count) for name, count in self.port_drops()])


class Exporter(CollectorRegistry):
    """Our registry (never the global one): the node and engine collectors, readable through
    prometheus_client (``generate_latest``) or as :class:`Family` rows (the HTTP endpoint)."""

    def __init__(self, node: NodeInfoCollector, engine: EngineCollector) -> None:
        super().__init__(auto_describe=False)
        self.node_collector, self.engine_collector = node, engine
        self.register(node)
        self.register(engine)

    def families(self) -> Iterator[Family | None]:
        yield from self.node_collector.families()
        yield from self.engine_collector.families()


def build_registry(
    engine_ref: Callable[[], Engine | None], clock: Callable[[], float], *,
    version: str, start_time: float, node: str, stats_ref: Callable[[], EngineStats] | None = None,
    port_drops: Callable[[], list[tuple[str, int]]] = list,
) -> Exporter:
    """A fresh registry (never the global one) with the engine and node collectors.

    Args:
        engine_ref / clock / stats_ref: see :class:`EngineCollector`.
        version: the daemon's version (``alpaca_build_info{version}``).
        start_time: Unix seconds the daemon started (``alpaca_start_time_seconds``).
        node: this node's name (``alpaca_build_info{node}``), e.g. its peer id "1.1".
        port_drops: see :class:`NodeInfoCollector`.
    """
    return Exporter(NodeInfoCollector(version, start_time, node, port_drops),
                    EngineCollector(engine_ref, clock, stats_ref))


class _Scrape:
    """The WSGI app: the exposition of an :class:`Exporter`, written in chunks with a turn for
    the hub between them (an idle watcher: every pending fd, the packet path's included, runs
    first). Scrapes read the engine one at a time: 16 clients at once cost the daemon one
    scrape's CPU at a time, not 16 (and the RTT histograms a scrape drains are not drained by
    two). Each answer is kept gzipped until written, so a client that reads slowly holds back
    no one (at most MAX_CONNECTIONS answers in memory, a tenth of their text each)."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter
        self._one = gevent.lock.Semaphore(1)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
        last = [("Connection", "close")] if environ.get(LAST_ANSWER) else []
        if environ.get("PATH_INFO") == "/favicon.ico" or environ.get("REQUEST_METHOD") == "HEAD":
            start_response("200 OK", last)
            return iter([b""])
        gzip = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
        headers = [("Content-Type", CONTENT_TYPE)] + ([("Content-Encoding", "gzip")] if gzip else [])
        start_response("200 OK", headers + last)
        return self._body(gzip)

    def _body(self, gzip: bool) -> Iterator[bytes]:
        """The answer, written after the scrape is over: from the gzip pieces as they are, or
        inflated piece by piece for a client that did not ask for gzip."""
        pieces = self._render()
        if gzip:
            yield from pieces
            return
        inflater = zlib.decompressobj(31)
        for piece in pieces:
            data = inflater.decompress(piece)
            if data:
                yield data

    def _render(self) -> list[bytes]:
        """One scrape, gzipped in memory (about a tenth of the text), with a turn for the hub
        between chunks. The lock is not held while a client is written to: clients that never
        read kept Prometheus out for READ_TIMEOUT each."""
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)
        pieces: list[bytes] = []
        with self._one, hub_turns() as turn:
            work, started = 0.0, time.perf_counter()
            for text in render_text(self.exporter.families()):
                piece = packer.compress(text.encode())
                work += time.perf_counter() - started
                if piece:
                    pieces.append(piece)
                turn()
                started = time.perf_counter()
            pieces.append(packer.flush())
            self.exporter.engine_collector.last_duration = work + time.perf_counter() - started
        return pieces


class _BoundedHandler(WSGIHandler):  # type: ignore[misc]  # gevent ships no types
    """gevent's handler, bounded: each request (line and headers) must arrive within
    :data:`REQUEST_DEADLINE` seconds, each read or write waits at most :data:`READ_TIMEOUT`,
    a request and its answer take at most :data:`CONNECTION_LIFETIME`, and the first answer
    after that much time since accept closes the connection. A connection that runs out is
    closed without a word logged; one whose first request came too late is counted in
    ``slow`` (reported now and then). A request body is never read (none is expected)."""

    read_timeout = READ_TIMEOUT
    request_deadline = REQUEST_DEADLINE
    lifetime = CONNECTION_LIFETIME
    slow = SlowClientLog(SLOW_CLOSED, REQUEST_DEADLINE)  # each server has its own (serve_metrics)

    def handle(self) -> None:
        self.socket.settimeout(self.read_timeout)
        self._answered = 0
        self._accepted_at = time.monotonic()
        self._request_timer: gevent.Timeout | None = None
        self._answer_timer: gevent.Timeout | None = None
        try:
            super().handle()
        except (TimeoutError, ConnectionError):
            pass  # idle or gone: gevent's handle() has closed the socket
        except gevent.Timeout as exc:
            if exc is self._request_timer:
                self._request_late()
            elif exc is not self._answer_timer:
                raise

    def handle_one_request(self) -> Any:
        """One request, its line and headers read within ``request_deadline`` seconds of the
        start (accept, or the end of the previous answer)."""
        self._request_timer = timer = gevent.Timeout(self.request_deadline)
        self._answer_timer = whole = gevent.Timeout(self.lifetime)
        timer.start()
        whole.start()
        self._unread_body = False
        try:
            result = super().handle_one_request()
        finally:
            timer.close()
            whole.close()
        self._answered += 1
        if self._unread_body:
            self._drain()
        return result

    def _drain(self) -> None:
        """After the answer to a request with a body (never read): say we are done, then read
        what the client still sends until it closes (at most DRAIN_BYTES, DRAIN_SECONDS), so
        the close sends no reset that could destroy the answer before it is read."""
        sock = self.socket
        if sock is None:
            return
        left = DRAIN_BYTES
        with gevent.Timeout(DRAIN_SECONDS, False):
            try:
                sock.shutdown(socket.SHUT_WR)
                while left > 0 and (chunk := sock.recv(min(left, 65536))):
                    left -= len(chunk)
            except OSError:
                pass

    def read_request(self, raw_requestline: str) -> Any:
        """The headers; the request is in, so its deadline stops (the answer has none)."""
        try:
            return super().read_request(raw_requestline)
        finally:
            if self._request_timer is not None:
                self._request_timer.close()

    def get_environ(self) -> dict[str, Any]:
        """gevent's environ, without the request body: a body would be read after the answer
        (to reach the next request) with no deadline, so the connection closes instead."""
        environ: dict[str, Any] = super().get_environ()
        if self.content_length or environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
            self.close_connection = self._unread_body = True
            self.wsgi_input = environ["wsgi.input"] = Input(self.rfile, 0)
        if self.request_version != "HTTP/1.1":
            self.close_connection = True  # an HTTP/1.0 answer ends only where the connection does
        if time.monotonic() - self._accepted_at >= self.lifetime:
            environ[LAST_ANSWER] = True  # the app says Connection: close; gevent closes after it
        return environ

    def _handle_client_error(self, ex: Exception) -> Any:
        """A request that cannot be parsed (a port scan, a TLS hello, too many headers) gets a
        400, and one whose client is gone a quiet close: never a log line or a traceback each
        (gevent logs every one, a log any client could flood)."""
        self.close_connection = True
        return None if isinstance(ex, OSError) else ("400", _BAD_REQUEST)

    def handle_error(self, t: Any, v: Any, tb: Any) -> None:
        """An answer cut by its timer or by the client (a write that timed out, a reset)
        closes the connection without a word (gevent's own would print a traceback for each:
        a log any client could flood); anything else is gevent's (logged, a 500 if possible)."""
        if isinstance(v, (gevent.Timeout, TimeoutError, ConnectionError)):
            self.close_connection = True
            return
        super().handle_error(t, v, tb)

    def process_result(self) -> None:
        """A HEAD's answer is its headers alone: gevent wrote the chunked encoding's end after
        them, which a client keeping the connection read as the start of its next answer."""
        if self.command != "HEAD":
            super().process_result()
        elif not self.headers_sent:
            self.write(b"")  # the headers; the app's iterator holds no body

    def _request_late(self) -> None:
        if self._answered:
            return  # a keep-alive connection gone idle: the normal end of one
        self.slow.closed()


class _MetricsServer(WSGIServer):  # type: ignore[misc]  # gevent ships no types
    """gevent's server, whose stop also drops a pending report of slow clients."""

    slow_clients: SlowClientLog

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        self.slow_clients.close()


def listen_error(host: str, port: int, exc: OSError) -> TunnelError:
    """The error of a metrics listener that cannot bind ``host:port`` (at start, or found
    before it by alpaca.io.preflight), naming the key and the fix."""
    return TunnelError(f"metrics.listen: cannot serve metrics on {host}:{port}: {exc.strerror or exc}"
                       " (choose a free port and an address of this host, or set \"metrics\": false)")


def serve_metrics(registry: Exporter, host: str = "127.0.0.1", port: int = 9586, *,
                  read_timeout: float = READ_TIMEOUT,
                  request_deadline: float = REQUEST_DEADLINE,
                  lifetime: float = CONNECTION_LIFETIME) -> WSGIServer:
    """Serve ``registry`` over HTTP from the gevent hub (no thread); returns the started server.

    The access log is off; server errors go to this module's logger. At most
    :data:`MAX_CONNECTIONS` connections are served at once; each is closed once it has not
    sent a whole request within ``request_deadline`` seconds (of accept, or of the previous
    answer), once one read or write waits ``read_timeout`` seconds, or once it has lived
    ``lifetime`` seconds, so idle or slow clients cannot keep a scrape out. Connections closed
    for a late first request are counted in ``server.slow_clients`` (a :class:`SlowClientLog`).
    ``port`` 0 picks a free port (``server.server_port``). Stop it with ``server.stop()``.
    """
    slow = SlowClientLog(SLOW_CLOSED, request_deadline)
    handler = type("MetricsHandler", (_BoundedHandler,),
                   {"read_timeout": read_timeout, "request_deadline": request_deadline,
                    "lifetime": lifetime, "slow": slow})
    # SERVER_NAME given: otherwise gevent asks reverse DNS for it (socket.getfqdn), which on a
    # host without a reachable resolver blocks start-up for the resolver's 10 s timeout.
    server = _MetricsServer((host, port), _Scrape(registry), log=None, error_log=log,
                        spawn=MAX_CONNECTIONS, handler_class=handler,
                        environ={"SERVER_NAME": host})
    server.slow_clients = slow
    try:
        server.start()
    except OSError as exc:
        raise listen_error(host, port, exc) from exc
    log.info("metrics served url=http://%s:%d/metrics", host, server.server_port)
    return server
