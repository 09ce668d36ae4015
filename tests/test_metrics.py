"""The Prometheus collector over real engine state (EngineNet scenarios), and its HTTP server."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import http.client
import ipaddress
import logging
import re
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import pytest
from gevent import socket
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from alpaca import metrics as metrics_module
from alpaca.core.drops import DropReason
from alpaca.core.engine import Engine
from alpaca.core.ids import format_peer_id
from alpaca.core.paths import RTT_SAMPLES_MAX
from alpaca.core.peers import Flow
from alpaca.core.settings import DupPolicy, EngineSettings, PeerSpec
from alpaca.errors import TunnelError
from alpaca.exposition import CHUNK_LINES, render_text
from alpaca.metrics import (
    MAX_CONNECTIONS,
    PATH_REASONS,
    RTT_BUCKETS,
    EngineCollector,
    Exporter,
    build_registry,
    serve_metrics,
)
from tests.enginenet import (
    EngineNet,
    Node,
    forwarder_on_two_ports,
    ipv4,
    pid,
    server_and_two_clients,
    tunnel_ip,
)

S_EP, F1_EP, F2_EP = ("10.0.0.1", 5000), ("10.0.0.2", 5000), ("10.0.0.3", 5000)
UP1, UP2 = ("10.1.0.1", 6000), ("10.2.0.1", 6000)
IDLE_PEERS = [f"16.{i}" for i in range(10, 60)]  # configured clients that never show up

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Scenario:
    """Server 1.1, forwarders 1.2/1.3, client 16.1 (two uplinks, duplicate-send on), idle clients."""

    net: EngineNet
    s: Node
    f1: Node
    f2: Node
    c: Node

    def engine(self, node: Node) -> Engine:
        assert node.engine is not None
        return node.engine

    def traffic(self, n: int = 200, gap: float = 0.005) -> None:
        """Upstream pings from the client and downstream packets from the server."""
        for i in range(n):
            self.net.inject_tun(self.c, ipv4(tunnel_ip(self.c.peer_id), "8.8.8.8"))
            if i % 2 == 0:
                self.net.inject_tun(self.s, ipv4("8.8.8.8", tunnel_ip(self.c.peer_id)))
            self.net.run(gap)

    def registry(self, node: Node) -> CollectorRegistry:
        # the in-memory network has no sockets for the kernel to count drops at
        # (receive_drops: tests/io/test_udp.py)
        return build_registry(lambda: node.engine, lambda: self.net.now, version="7.0.0-test",
                              start_time=1_700_000_000.0, node=format_peer_id(node.peer_id),
                              port_drops=lambda: [("p0", 3)])


def scenario(loss: float = 0.1, seed: int = 6, **client: object) -> Scenario:
    """A star with a lossy first uplink; 2 s of probing, then traffic both ways."""
    net = EngineNet(seed=seed)
    s = net.add("S", "1.1", [S_EP])
    f1 = net.add("F1", "1.2", [F1_EP])
    f2 = net.add("F2", "1.3", [F2_EP])
    c = net.add("C", "16.1", [UP1, UP2], static=False)
    for peer in IDLE_PEERS:
        net.add(f"idle-{peer}", peer, [("10.9.9.9", 7000)], static=False)
    net.link(UP1, F1_EP, loss=loss, delay=0.01)
    net.link(UP2, F2_EP, delay=0.02)
    net.link(F1_EP, S_EP)
    net.link(F2_EP, S_EP)
    net.start(s)
    net.start(f1)
    net.start(f2)
    net.start(c, resolver=lambda dst, src: "10.17.1.1", forwarders=(pid("1.2"), pid("1.3")),
              gateway=pid("1.1"), **{"dup_policy": DupPolicy.ALL, "dup_copies": 1, "dup_delay": 0.005,
                                     **client})
    net.run(2.0)
    sc = Scenario(net, s, f1, f2, c)
    sc.traffic()
    net.run(2.0)
    return sc


def scrape(registry: CollectorRegistry) -> Samples:
    """Every sample of the text exposition, keyed by (sample name, label set)."""
    text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in out, f"duplicate series {key}"
            out[key] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def series(samples: Samples, name: str) -> list[dict[str, str]]:
    return [dict(labels) for (n, labels) in samples if n == name]


# --------------------------------------------------------------------------- values
def test_metrics_path_counters_match_the_engine() -> None:
    sc = scenario()
    samples = scrape(sc.registry(sc.s))
    peer = sc.engine(sc.s).peers[sc.c.peer_id]
    assert peer.paths.learned, "the server learned the client's paths"
    for path in peer.paths.all():
        labels = {"peer": "16.1", "path": path.name}
        assert value(samples, "alpaca_packets_sent_total", **labels) == path.tx_packets
        assert value(samples, "alpaca_bytes_sent_total", **labels) == path.tx_bytes
        assert value(samples, "alpaca_packets_received_total", **labels) == path.rx_packets
        assert value(samples, "alpaca_bytes_received_total", **labels) == path.rx_bytes
        assert value(samples, "alpaca_path_duplicates_received_total", **labels) == path.rx_duplicates
        assert value(samples, "alpaca_path_first_arrival_total", **labels) == path.rx_first
        assert value(samples, "alpaca_path_up", **labels) == int(path.up)
        assert value(samples, "alpaca_path_state_changes_total", **labels) == path.changes
    assert sum(p.rx_duplicates for p in peer.paths.all()) > 0  # duplicate-send reached the server


def test_metrics_peer_counters_match_the_engine() -> None:
    sc = scenario()
    samples = scrape(sc.registry(sc.c))
    eng = sc.engine(sc.c)
    server = eng.peers[sc.s.peer_id]
    assert server.tx_packets == 200
    assert value(samples, "alpaca_peer_tx_packets_total", peer="1.1") == server.tx_packets
    assert value(samples, "alpaca_peer_tx_bytes_total", peer="1.1") == server.tx_bytes
    assert value(samples, "alpaca_peer_rx_packets_total", peer="1.1") == server.rx_packets == 100
    assert value(samples, "alpaca_peer_rx_bytes_total", peer="1.1") == server.rx_bytes
    exported = series(samples, "alpaca_dup_copies_sent_total")
    assert {s["peer"] for s in exported} == {"1.1", "1.2", "1.3"}
    # Every packet went to 1.1, copied once: its copies count on 1.1, not on the forwarders
    # whose links they took (the per-peer dashboard showed 1.1 with none).
    assert value(samples, "alpaca_dup_copies_sent_total", peer="1.1") == eng.stats.dup_copies_sent
    for labels in exported:
        assert value(samples, "alpaca_dup_copies_sent_total", **labels) == (
            eng.peers[pid(labels["peer"])].dup_copies)
    total = sum(value(samples, "alpaca_dup_copies_sent_total", **labels) for labels in exported)
    assert total == eng.stats.dup_copies_sent > 0
    assert value(samples, "alpaca_peer_lost_packets_total", peer="1.1") == eng.lost_packets(sc.s.peer_id)
    flow = eng.flows[(sc.s.peer_id, eng.self_id)]
    assert value(samples, "alpaca_peer_accepted_packets_total", peer="1.1") == flow.window.accepted
    assert value(samples, "alpaca_replay_window_occupancy_ratio", peer="1.1") == flow.window.occupancy
    assert value(samples, "alpaca_replay_rejected_total", peer="1.1", reason="duplicate") == (
        flow.window.duplicate)
    assert value(samples, "alpaca_replay_rejected_total", peer="1.1", reason="too_old") == flow.window.too_old


def test_metrics_loss_and_rtt_of_the_client_paths() -> None:
    sc = scenario()
    samples = scrape(sc.registry(sc.c))
    paths = {p.name: p for p in sc.engine(sc.c).peers[sc.s.peer_id].paths.all()}
    assert {"via-1.2", "via-1.3"} <= set(paths)  # the server is reached through the forwarders
    lossy = paths["via-1.2"]
    assert lossy.data_lost > 0 and lossy.srtt is not None
    for name in ("via-1.2", "via-1.3"):
        path = paths[name]
        labels = {"peer": "1.1", "path": name}
        assert value(samples, "alpaca_path_probes_sent_total", **labels) == path.probes_sent
        assert value(samples, "alpaca_path_probes_answered_total", **labels) == path.probes_answered
        assert value(samples, "alpaca_path_data_sent_total", **labels) == path.data_sent
        assert value(samples, "alpaca_path_data_lost_total", **labels) == path.data_lost
        assert value(samples, "alpaca_path_rtt_seconds", **labels) == path.srtt
        assert value(samples, "alpaca_path_rtt_last_seconds", **labels) == path.rtt_last
    assert abs(value(samples, "alpaca_path_rtt_seconds", peer="1.1", path="via-1.3") - 0.05) < 0.005


@pytest.mark.parametrize("dup_copies", [0, 1, 2])
def test_metrics_a_lossless_path_through_a_forwarder_reports_no_data_loss(dup_copies: int) -> None:
    """Nothing is lost anywhere: no path may report data loss. Data in flight when a probe
    reply came back was counted lost for good (2-3 % at 30-50 ms), and a delayed copy through
    the forwarder its original had passed, which that forwarder drops, as lost (33-50 %)."""
    sc = scenario(loss=0.0, dup_copies=dup_copies)
    for _ in range(5):
        sc.traffic(n=100, gap=0.002)  # bursts: always something in flight at a reply
        sc.net.run(1.5)
    paths = {p.name: p for p in sc.engine(sc.c).peers[sc.s.peer_id].paths.all()}
    for name in ("via-1.2", "via-1.3"):
        assert paths[name].data_sent >= 700, paths[name].data_sent
        assert paths[name].data_lost == 0, (name, paths[name].data_sent, paths[name].peer_data_rx)


def test_metrics_a_lossy_first_leg_still_shows_through_the_copies() -> None:
    """10 % lost between the client and forwarder 1.2, one delayed copy of everything, half
    of the copies through 1.2 again: the VIA path shows what it lost after its own copies,
    10 % x (0.5 x 10 % + 0.5) = 5.5 % (copies through 1.3 count on 1.3's path)."""
    sc = scenario(loss=0.1, dup_copies=1)
    for _ in range(5):
        sc.traffic(n=100, gap=0.002)
        sc.net.run(1.5)
    lossy = {p.name: p for p in sc.engine(sc.c).peers[sc.s.peer_id].paths.all()}["via-1.2"]
    sent, lost = lossy.data_sent, lossy.data_lost
    assert 0.02 * sent < lost < 0.09 * sent, (lost, sent)


def test_metrics_copies_on_the_other_link_of_the_same_forwarder_are_not_lost() -> None:
    """Two lossless uplinks to the one forwarder: a copy on the second link reaches the
    forwarder that passed the original, which drops it; the VIA path showed 50 % loss."""
    net = EngineNet(seed=1)
    s = net.add("S", "1.1", [S_EP])
    f = net.add("F", "1.2", [F1_EP])
    c = net.add("C", "16.1", [UP1, UP2], static=False)
    net.link(UP1, F1_EP, delay=0.005)
    net.link(UP2, F1_EP, delay=0.020)
    net.link(F1_EP, S_EP, delay=0.005)
    net.start(s)
    net.start(f)
    net.start(c, resolver=lambda dst, src: "10.17.1.1", forwarders=(pid("1.2"),), gateway=pid("1.1"),
              dup_policy=DupPolicy.ALL, dup_copies=1, dup_delay=0.01)
    net.run(3.0)
    [via] = c.engine.peers[s.peer_id].paths.via.values()  # type: ignore[union-attr]
    for _ in range(300):
        net.inject_tun(c, ipv4(tunnel_ip(c.peer_id), "8.8.8.8"))
        net.run(0.01)
    net.run(3.0)
    assert len(s.tun) == 300 and via.data_sent >= 300
    assert via.data_lost == 0, (via.data_sent, via.data_lost)


def test_metrics_packets_to_a_client_through_the_gateway_are_not_lost_on_its_path() -> None:
    """16.1 sends to 16.2, which it has no link to, through gateway 1.1 (lossless): the
    gateway's reports count only DATA addressed to it, so those counted lost on its path."""
    net, s, c1, c2 = server_and_two_clients()
    path = c1.engine.peers[s.peer_id].paths.static[0]  # type: ignore[union-attr]
    sent = path.data_sent
    for _ in range(50):
        net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), tunnel_ip(c2.peer_id)))
    net.run(3.0)
    assert s.engine is not None and s.engine.stats.forwarded_packets >= 50  # relayed to 16.2
    assert path.data_sent == sent and path.data_lost == 0


def test_metrics_a_slot_moving_between_a_forwarders_two_ports_shows_no_data_loss() -> None:
    """The forwarder relays from either of its ports, so the server's slot for the client
    moves to a candidate address now and then: the data in flight at each move was counted
    lost (87 of 3,000 on a lossless network); now only the link's reordering shows."""
    net, s, _f, c = forwarder_on_two_ports(lambda dst, src: "10.17.1.1")
    for _ in range(3000):
        net.inject_tun(s, ipv4("10.17.1.1", tunnel_ip(c.peer_id)))
        net.run(0.002)
    net.run(8.0)
    assert s.engine is not None
    [path] = s.engine.peers[c.peer_id].paths.learned.values()
    assert len(c.tun) == 3000 and path.data_sent == 3000
    assert path.data_lost <= 10, path.data_lost


def test_metrics_state_info_has_only_the_current_state() -> None:
    sc = scenario()
    sc.net.links[(UP1, F1_EP)].up = sc.net.links[(F1_EP, UP1)].up = False
    sc.net.run(4.0)
    samples = scrape(sc.registry(sc.c))
    info = [s for s in series(samples, "alpaca_path_state_info") if s["peer"] == "1.2"]
    assert sorted(info, key=lambda s: s["path"]) == [  # one series per path: the current state
        {"peer": "1.2", "path": "direct/p0", "state": "down", "reason": "timeout"},
        {"peer": "1.2", "path": "direct/p1", "state": "down", "reason": "new"},  # no link from p1
    ]
    assert value(samples, "alpaca_path_up", peer="1.2", path="direct/p0") == 0
    assert value(samples, "alpaca_forwarder_up", peer="1.2") == 0
    assert value(samples, "alpaca_forwarder_up", peer="1.3") == 1
    assert value(samples, "alpaca_path_state_info", peer="1.3", path="direct/p1", state="up",
                 reason="answering") == 1
    assert value(samples, "alpaca_peers_up") == 2  # 1.3 and, through it, 1.1


def test_metrics_node_metrics() -> None:
    sc = scenario()
    eng = sc.engine(sc.f1)
    samples = scrape(sc.registry(sc.f1))
    assert value(samples, "alpaca_build_info", version="7.0.0-test", node="1.2") == 1
    assert value(samples, "alpaca_start_time_seconds") == 1_700_000_000.0
    assert value(samples, "alpaca_forwarded_packets_total") == eng.stats.forwarded_packets > 0
    assert value(samples, "alpaca_forwarded_bytes_total") == eng.stats.forwarded_bytes
    assert value(samples, "alpaca_epoch") == eng.epoch
    assert value(samples, "alpaca_config_reloads_total") == 0
    for name in ("alpaca_route_cache_entries", "alpaca_route_cache_hits_total",
                 "alpaca_route_cache_misses_total", "alpaca_dup_queue_depth",
                 "alpaca_dup_queue_dropped_total"):
        assert value(samples, name) == 0
    client = scrape(sc.registry(sc.c))
    assert value(client, "alpaca_route_cache_misses_total") == sc.engine(sc.c).routes.misses > 0
    assert value(client, "alpaca_route_cache_entries") == len(sc.engine(sc.c).routes) == 1


def test_metrics_every_drop_reason_is_exported_with_zeros() -> None:
    sc = scenario()
    samples = scrape(sc.registry(sc.s))
    reasons = {s["reason"] for s in series(samples, "alpaca_packets_dropped_total")}
    assert reasons == {r.label for r in DropReason}
    drops = sc.engine(sc.s).stats.drops
    duplicate = drops[DropReason.DUPLICATE]
    assert value(samples, "alpaca_packets_dropped_total", reason="duplicate") == duplicate > 0
    assert value(samples, "alpaca_packets_dropped_total", reason="bad_tag") == 0


def test_metrics_dup_queue_depth_and_refusals() -> None:
    sc = scenario(dup_queue_max=3)
    eng = sc.engine(sc.c)
    eng.reload(dataclasses.replace(eng.settings, dup_delay=5.0))
    for _ in range(5):
        sc.net.inject_tun(sc.c, ipv4(tunnel_ip(sc.c.peer_id), "8.8.8.8"))
    samples = scrape(sc.registry(sc.c))
    assert value(samples, "alpaca_dup_queue_depth") == len(eng.dup) == 3
    refused = 5 * eng.settings.dup_copies - 3  # every copy the queue had no room for
    assert value(samples, "alpaca_dup_queue_dropped_total") == refused > 0
    assert value(samples, "alpaca_config_reloads_total") == 1


# --------------------------------------------------------------------------- histogram
def test_metrics_rtt_histogram_grows_by_the_drained_samples() -> None:
    sc = scenario()
    registry = sc.registry(sc.c)
    path = sc.engine(sc.c).peers[sc.f2.peer_id].paths.static[1]  # uplink 2 -> forwarder 1.3
    pending = list(path.rtt_samples)
    assert pending, "probes were answered"
    first = scrape(registry)
    labels = {"peer": "1.3", "path": path.name}
    assert value(first, "alpaca_path_rtt_sample_seconds_count", **labels) == len(pending)
    assert abs(value(first, "alpaca_path_rtt_sample_seconds_sum", **labels) - sum(pending)) < 1e-9
    assert len(path.rtt_samples) == 0  # drained
    sc.net.run(5.0)
    more = list(path.rtt_samples)
    assert len(more) >= 4
    second = scrape(registry)
    assert value(second, "alpaca_path_rtt_sample_seconds_count", **labels) == len(pending) + len(more)
    for bound in RTT_BUCKETS:
        expected = sum(1 for s in pending + more if s <= bound)
        assert value(second, "alpaca_path_rtt_sample_seconds_bucket", le=repr(bound), **labels) == expected
    assert value(second, "alpaca_path_rtt_sample_seconds_bucket", le="+Inf", **labels) == len(pending + more)
    third = scrape(registry)  # nothing new: the cumulative counts stay
    assert value(third, "alpaca_path_rtt_sample_seconds_count", **labels) == len(pending) + len(more)


def test_metrics_rtt_absent_until_measured() -> None:
    net = EngineNet()
    s = net.add("S", "1.1", [S_EP])
    net.add("C", "16.1", [UP1], static=False)
    net.start(s)
    net.run(1.0)
    samples = scrape(build_registry(lambda: s.engine, lambda: net.now, version="x", start_time=0, node="1.1"))
    assert not series(samples, "alpaca_path_rtt_seconds")
    assert not series(samples, "alpaca_path_rtt_sample_seconds_count")


# --------------------------------------------------------------------------- labels
_IPV4 = re.compile(r"\d+\.\d+\.\d+\.\d+")


def test_metrics_no_address_in_any_label_value() -> None:
    sc = scenario()
    addresses = {ep[0] for ep in sc.net.owner}
    allowed = {"peer", "path", "port", "reason", "state", "version", "node", "le"}
    for node in (sc.s, sc.f1, sc.f2, sc.c):
        for name, labels in scrape(sc.registry(node)):
            for key, val in labels:
                assert key in allowed, (name, key)
                assert not _IPV4.search(val) and not any(a in val for a in addresses), (name, key, val)
                if key == "peer":
                    assert val.count(".") == 1 and int(val.split(".")[0]) < 256
                if name == "alpaca_path_state_info" and key == "reason":
                    assert val in PATH_REASONS


def test_metrics_idle_configured_peers_emit_nothing() -> None:
    sc = scenario()
    eng = sc.engine(sc.s)
    samples = scrape(sc.registry(sc.s))
    peers = {dict(labels)["peer"] for (_, labels) in samples if "peer" in dict(labels)}
    assert peers == {"1.2", "1.3", "16.1"}  # the forwarders: their probes (they relay to it)
    assert value(samples, "alpaca_peers_configured") == len(eng.peers) == 3 + len(IDLE_PEERS)
    assert len(samples) < 400  # does not grow with configured peers


def test_metrics_scrape_cost_does_not_depend_on_traffic() -> None:
    quiet, busy = scenario(), scenario()
    busy.traffic(n=1000, gap=0.001)
    assert len(scrape(quiet.registry(quiet.s))) == len(scrape(busy.registry(busy.s)))


def test_metrics_without_engine_only_node_info() -> None:
    registry = build_registry(lambda: None, lambda: 0.0, version="1", start_time=5.0, node="n")
    names = {name for name, _ in scrape(registry)}
    assert names == {"alpaca_build_info", "alpaca_start_time_seconds"}


def test_metrics_registry_is_private() -> None:
    sc = scenario()
    sc.registry(sc.s)
    assert not any(m.name.startswith("alpaca_") for m in REGISTRY.collect())
    collector = EngineCollector(lambda: sc.s.engine, lambda: sc.net.now)
    assert list(collector.describe()) == []  # registration never drains RTT samples


# --------------------------------------------------------------------------- HTTP
def _http_get(port: int, path: str = "/metrics", timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_serve_metrics_serves_the_registry_on_the_hub_without_threads() -> None:
    sc = scenario()
    threads = threading.active_count()
    server = serve_metrics(sc.registry(sc.c), "127.0.0.1", 0)
    try:
        assert server.address[0] == "127.0.0.1"
        reply = gevent.spawn(_http_get, server.server_port).get(timeout=10)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200")
        assert b'alpaca_peer_tx_packets_total{peer="1.1"} 200.0' in body
        assert threading.active_count() == threads
    finally:
        server.stop()


def test_serve_metrics_writes_one_scrape_at_a_time() -> None:
    """16 clients at once each walked the whole engine at the same time: 16 times one
    scrape's CPU (1.8 s at 10,000 peers) between two turns of the packet path, and each
    drained the RTT histograms the others were writing. Now they take turns; all answered."""
    sc = scenario()
    registry = sc.registry(sc.c)
    families, writing, most = registry.families, [0], [0]

    def counted() -> Iterator[Any]:
        writing[0] += 1
        most[0] = max(most[0], writing[0])
        try:
            yield from families()
        finally:
            writing[0] -= 1

    registry.families = counted  # type: ignore[method-assign]
    server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        replies = [gevent.spawn(_http_get, server.server_port, timeout=20) for _ in range(8)]
        gevent.joinall(replies, timeout=30, raise_error=True)
    finally:
        server.stop()
    assert all(b"alpaca_epoch " in reply.value for reply in replies)
    assert most[0] == 1


def test_serve_metrics_defaults_to_loopback() -> None:
    assert serve_metrics.__defaults__ is not None and serve_metrics.__defaults__[0] == "127.0.0.1"
    assert ipaddress.ip_address(serve_metrics.__defaults__[0]).is_loopback


def _closed_by_peer(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:  # our unread bytes made the close a reset
        return True


def _open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` connections that send nothing (a keep-alive client between scrapes)."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def test_serve_metrics_idle_connections_do_not_keep_a_scrape_out(capfd: object) -> None:
    sc = scenario()
    server = serve_metrics(sc.registry(sc.c), "127.0.0.1", 0, read_timeout=0.5)
    idle = _open_idle(server.server_port, MAX_CONNECTIONS)
    try:
        gevent.sleep(0.1)  # every idle connection holds a handler of the pool
        started = time.monotonic()
        reply = gevent.spawn(_http_get, server.server_port).get(timeout=4)
        assert reply.startswith(b"HTTP/1.1 200")
        assert 0.3 < time.monotonic() - started < 2.0  # served once the idle ones timed out
        assert all(_closed_by_peer(conn) for conn in idle)
    finally:
        for conn in idle:
            conn.close()
        server.stop()
    assert "Traceback" not in capfd.readouterr().err  # type: ignore[attr-defined]


def test_serve_metrics_a_trickling_client_is_cut_at_the_lifetime() -> None:
    sc = scenario()
    server = serve_metrics(sc.registry(sc.c), "127.0.0.1", 0, read_timeout=0.5, lifetime=1.0)
    try:
        conn = socket.create_connection(("127.0.0.1", server.server_port), timeout=5)
        started = time.monotonic()
        with conn:
            for char in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 100:
                try:
                    conn.sendall(bytes([char]))
                except OSError:
                    break
                gevent.sleep(0.1)
                if time.monotonic() - started > 3:
                    break
            assert _closed_by_peer(conn)
        assert time.monotonic() - started < 2.0
    finally:
        server.stop()


def test_serve_metrics_a_kept_alive_connection_is_closed_between_answers_never_in_one() -> None:
    """Prometheus scraping more often than the idle limit keeps its connection: at the
    lifetime the connection used to be cut wherever it was (mid-answer: a failed scrape,
    a traceback); now every answer is whole and the first after the lifetime says
    Connection: close (a client then opens a new one). The client is http.client in an OS
    thread (the stdlib's keep-alive), the server on this thread's hub."""
    sc = scenario()
    server = serve_metrics(sc.registry(sc.c), "127.0.0.1", 0, lifetime=1.0)

    def scrape_for(seconds: float) -> tuple[int, int]:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
        answers = closes = 0
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            conn.request("GET", "/metrics")
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200 and b"alpaca_epoch " in body and body.endswith(b"\n")
            answers += 1
            if response.getheader("Connection") == "close":
                closes += 1
                conn.close()
            time.sleep(0.1)
        conn.close()
        return answers, closes

    try:
        answers, closes = gevent.get_hub().threadpool.spawn(scrape_for, 3.5).get(timeout=20)
    finally:
        server.stop()
    assert answers >= 10 and 2 <= closes <= 4, (answers, closes)


def test_serve_metrics_an_answer_cut_at_the_lifetime_closes_without_a_traceback(
        capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An answer that outlives the lifetime (a slow scrape, a client reading just within
    each write's timeout) is cut and its connection closed, with nothing printed: gevent
    printed a traceback for each one, a log any client could flood."""

    def slow_body(self: object, gzip: bool) -> Iterator[bytes]:
        yield b"# first\n"
        gevent.sleep(1.0)
        yield b"# second\n"

    monkeypatch.setattr(metrics_module._Scrape, "_body", slow_body)
    registry = build_registry(lambda: None, lambda: 0.0, version="x", start_time=0.0, node="1.1")
    server = serve_metrics(registry, "127.0.0.1", 0, lifetime=0.5)
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            got = b""
            while chunk := conn.recv(65536):
                got += chunk
        assert b"# first" in got and b"# second" not in got
        gevent.sleep(0.1)
    finally:
        server.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Timeout" not in err, err


def _trickle_headers(port: int, gap: float = 0.5, give_up: float = 12.0) -> float | None:
    """A slowloris: the request line, then a header line every ``gap`` seconds (each read
    is quick) and never the end of the headers. Returns the seconds until the server closed
    the connection, or None if it had not after ``give_up`` seconds."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            while time.monotonic() - started < give_up:
                gevent.sleep(gap)
                conn.sendall(b"X-Slow: a\r\n")
        except OSError:  # the server closed it: our next bytes met a reset
            return time.monotonic() - started
    return None


def test_serve_metrics_trickling_clients_do_not_keep_a_scrape_out(caplog: pytest.LogCaptureFixture) -> None:
    """MAX_CONNECTIONS clients send a header line every 0.5 s, each well within READ_TIMEOUT:
    they held the whole pool for CONNECTION_LIFETIME (30 s) and Prometheus' scrape timed out.
    Now each has REQUEST_DEADLINE for its whole request; their closes are logged once."""
    sc = scenario()
    server = serve_metrics(sc.registry(sc.c), "127.0.0.1", 0)  # the defaults, as the daemon runs it
    slow = [gevent.spawn(_trickle_headers, server.server_port) for _ in range(MAX_CONNECTIONS)]
    try:
        gevent.sleep(0.3)  # every place of the pool is taken
        reply = gevent.spawn(_http_get, server.server_port, timeout=10).get(timeout=15)
        assert reply.startswith(b"HTTP/1.1 200") and b"alpaca_peer_tx_packets_total" in reply
        assert None not in [greenlet.get(timeout=15) for greenlet in slow]  # all cut
        assert server.slow_clients.total == MAX_CONNECTIONS
        reports = [r for r in caplog.records if "no complete request in time" in r.getMessage()]
        assert len(reports) == 1, [r.getMessage() for r in reports]
        assert server.slow_clients.pending  # the others' report, when it falls due
    finally:
        gevent.killall(slow)
        server.stop()
    assert not server.slow_clients.pending  # not after the server stopped


def _read_to_end(conn: socket.socket) -> bytes:
    chunks = []
    with contextlib.suppress(ConnectionResetError):  # unread bytes of ours make the close a reset
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_serve_metrics_the_deadline_is_for_the_request_not_the_answer() -> None:
    """An answer that takes longer than the request deadline (a large scrape with turns for
    the hub) is written whole; the keep-alive connection then waits the deadline for the
    next request, and closes uncounted (an idle keep-alive connection is no slow client)."""
    engine = many_peers(20)

    def slow_engine() -> Engine:
        gevent.sleep(0.6)  # read while the answer is being written
        return engine

    registry = build_registry(slow_engine, lambda: 2.0, version="v", start_time=0.0, node="1")
    server = serve_metrics(registry, "127.0.0.1", 0, request_deadline=0.2)
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = gevent.spawn(_read_to_end, conn).get(timeout=10)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head
        assert body.endswith(b"\r\n0\r\n\r\n") and b"alpaca_path_up" in body
        assert server.slow_clients.total == 0
    finally:
        server.stop()


def test_serve_metrics_a_request_body_is_not_waited_for() -> None:
    """A request announcing a large body that it trickles: the body was read after the answer
    (to reach a next request) with no deadline, so the connection stayed for 30 s. The
    endpoint needs no body: it answers and closes."""
    sc = scenario()
    server = serve_metrics(sc.registry(sc.c), "127.0.0.1", 0)
    conn = socket.create_connection(("127.0.0.1", server.server_port), timeout=8)

    def trickle_body() -> None:
        with contextlib.suppress(OSError):
            for _ in range(60):
                gevent.sleep(0.5)
                conn.sendall(b"a")

    body = gevent.spawn(trickle_body)
    try:
        conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
        gevent.spawn(_read_to_end, conn).get(timeout=15)  # ended (EOF or reset), not timed out
    finally:
        body.kill()
        conn.close()
        server.stop()


def test_serve_metrics_a_whole_body_sent_at_once_leaves_the_answer_whole() -> None:
    """A request with a 100 KB body, all sent: the body is never read, and closing with it
    unread sent a reset that cut the answer (88,898 of 392 KB arrived); the rest of the body
    is drained after the answer instead."""
    sc = scenario()
    server = serve_metrics(sc.registry(sc.c), "127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=8) as conn:
            conn.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
                         + b"a" * 100000)
            answer = gevent.spawn(_read_to_end, conn).get(timeout=15)
    finally:
        server.stop()
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"\r\n0\r\n\r\n"), answer[-80:]


@pytest.mark.parametrize("request_text", [
    b"GARBAGE\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(150)) + b"\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32) + b"\r\n\r\n",  # a TLS hello
], ids=["garbage", "bad length", "150 headers", "tls hello"])
def test_serve_metrics_a_request_that_cannot_be_parsed_is_a_400_and_no_log(
        request_text: bytes, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    """Each used to write an ERROR line, and some a traceback: a log any client could flood."""
    registry = build_registry(lambda: None, lambda: 0.0, version="x", start_time=0.0, node="1.1")
    server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
                conn.sendall(request_text)
                answer = gevent.spawn(_read_to_end, conn).get(timeout=10)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:80]
        gevent.sleep(0.1)
    finally:
        server.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Invalid" not in err, err


def test_serve_metrics_http_1_0_and_head() -> None:
    """An HTTP/1.0 client asking for keep-alive: the answer has no length, so its end is the
    close, at once (it waited for the 3 s idle limit). HEAD: the headers alone."""
    registry = build_registry(lambda: None, lambda: 0.0, version="x", start_time=0.0, node="1.1")
    server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
            started = time.monotonic()
            conn.sendall(b"GET /metrics HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            answer = gevent.spawn(_read_to_end, conn).get(timeout=10)
            assert answer.split(b"\r\n")[0].endswith(b" 200 OK") and b"alpaca_build_info" in answer
            assert time.monotonic() - started < 1.0
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=5) as conn:
            conn.sendall(b"HEAD /metrics HTTP/1.0\r\n\r\n")
            head = gevent.spawn(_read_to_end, conn).get(timeout=10)
            assert head.split(b"\r\n")[0].endswith(b" 200 OK") and head.endswith(b"\r\n\r\n")
    finally:
        server.stop()


def test_serve_metrics_a_head_on_a_kept_connection_leaves_it_usable() -> None:
    """HTTP/1.1 HEAD got the chunked encoding's end (``0``, a blank line) after its headers:
    a client keeping the connection (curl -I twice) read them as its next answer."""
    registry = build_registry(lambda: None, lambda: 0.0, version="x", start_time=0.0, node="1.1")
    server = serve_metrics(registry, "127.0.0.1", 0)
    answers: list[tuple[str, int, bytes]] = []

    def client() -> None:  # a thread: http.client blocks, the server runs on this thread's hub
        conn = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=5)
        try:
            for method in ("HEAD", "HEAD", "GET"):
                conn.request(method, "/metrics")
                answer = conn.getresponse()
                answers.append((method, answer.status, answer.read()))
        finally:
            conn.close()

    thread = threading.Thread(target=client)
    try:
        thread.start()
        while thread.is_alive():
            gevent.sleep(0.02)
    finally:
        server.stop()
    assert [(m, status, b"alpaca_build_info" in body) for m, status, body in answers] == [
        ("HEAD", 200, False), ("HEAD", 200, False), ("GET", 200, True)]


def test_serve_metrics_on_a_busy_port_is_a_clear_error() -> None:
    sc = scenario()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(TunnelError) as info:
            serve_metrics(sc.registry(sc.c), "127.0.0.1", busy.getsockname()[1])
        assert "metrics.listen: cannot serve metrics on 127.0.0.1:" in str(info.value)
        assert "Address already in use" in str(info.value) and '"metrics": false' in str(info.value)
    finally:
        busy.close()


def test_metrics_rtt_samples_kept_between_scrapes_are_bounded() -> None:
    """Nobody scrapes: a path keeps at most RTT_SAMPLES_MAX samples (memory of 10,000 peers)."""
    sc = scenario()
    path = sc.engine(sc.c).peers[sc.f2.peer_id].paths.static[1]
    sc.net.run(120.0)
    assert len(path.rtt_samples) == RTT_SAMPLES_MAX
    assert path.srtt is not None  # the smoothed RTT still follows every sample


# --------------------------------------------------------------------------- large scrapes
def many_peers(count: int) -> Engine:
    """A server engine with ``count`` peers that each talked on three paths (no network)."""

    class Out:
        def send(self, port: int, addr: tuple[str, int], data: bytes) -> bool:
            return True

        def write_tun(self, packet: bytes, csum_partial: bool = False) -> bool:
            return True

    specs = {1: PeerSpec(1, b"k" * 32)}
    for i in range(count):
        specs[0x1000 + i] = PeerSpec(0x1000 + i, b"k" * 32, (f"10.{i >> 8 & 255}.{i & 255}.1", 5000))
    engine = Engine(EngineSettings(self_id=1, net=0x0A110000, group="g", peers=specs, ports=("a", "b")),
                    Out(), epoch=1, random_bytes=lambda n: b"\1" * n)
    for peer_id, peer in engine.peers.items():
        peer.tx_packets, peer.last_active_at = 5, 1.0
        peer.paths.learn(5, 0, ("192.0.2.1", 4000 + (peer_id & 0xFFF)), 1.0)
        for path in peer.paths.all():
            path.tx_packets, path.srtt, path.rtt_last = 3, 0.01, 0.01
            path.rtt_samples.extend([0.01, 0.2])
        engine.flows[(peer_id, 1)] = Flow(1, 1 << 10, verified=True)
    return engine


def test_metrics_text_is_what_prometheus_client_writes() -> None:
    """The endpoint's own writer gives the text generate_latest gives for the same families,
    byte for byte (only the scrape-duration gauge differs: it reports the previous scrape)."""
    sc, engine = scenario(), many_peers(50)
    for registry in (sc.registry(sc.s), build_registry(lambda: engine, lambda: 2.0, version="v",
                                                       start_time=0.0, node='a"b\\c\nd')):
        ours = "".join(render_text(registry.families(), lines=7))
        theirs = generate_latest(registry).decode()

        def without_duration(text: str) -> list[str]:
            return [line for line in text.splitlines() if "collect_duration" not in line]

        assert without_duration(ours) == without_duration(theirs)
        assert len(ours.splitlines()) > 100


def test_serve_metrics_a_large_scrape_gives_the_hub_turns() -> None:
    """2,000 peers on three paths (about 220,000 lines): the scrape is written in slices, other
    greenlets run between them, it parses whole, gzip too, and the collector is back on."""
    registry = build_registry(lambda: engine, lambda: 2.0, version="v", start_time=0.0, node="1")
    engine = many_peers(2000)
    server = serve_metrics(registry, "127.0.0.1", 0)
    turns = 0

    def other_work() -> None:
        nonlocal turns
        while True:
            gevent.sleep(0.0005)
            turns += 1

    worker = gevent.spawn(other_work)
    try:
        for encoding in ("identity", "gzip"):
            turns = 0
            body = gevent.spawn(_http_get_body, server.server_port, encoding).get(timeout=60)
            text = (zlib.decompress(body, 31) if encoding == "gzip" else body).decode()
            lines = text.count("\n")
            assert lines > 200_000 and text.endswith("\n")
            families = {f.name: f for f in text_string_to_metric_families(text)}
            assert len(families["alpaca_path_up"].samples) == 6000
            assert turns >= lines // CHUNK_LINES // 2, (turns, lines)
            assert gc.isenabled()
    finally:
        worker.kill()
        server.stop()


def _http_get_body(port: int, encoding: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"GET /metrics HTTP/1.0\r\nHost: x\r\nAccept-Encoding: {encoding}\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(1 << 20):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head[:100]
    assert (b"Content-Encoding: gzip" in head) == (encoding == "gzip")
    return body


@pytest.mark.parametrize("change", ["address", "key"])
def test_metrics_counters_never_go_backwards_across_a_reload(change: str) -> None:
    """The client reloads: the server's static address changed (the peer is rebuilt), or its
    key (its flows are dropped). No counter of any series that is there before and after
    goes down."""
    sc = scenario()
    engine = sc.engine(sc.c)
    before = scrape(sc.registry(sc.c))
    server = engine.settings.peers[sc.s.peer_id]
    if change == "address":
        spec = dataclasses.replace(server, addr=("10.0.0.99", 5000))
    else:
        spec = dataclasses.replace(server, key=bytes(range(1, 33)))
    engine.reload(dataclasses.replace(engine.settings, peers={**engine.settings.peers, sc.s.peer_id: spec}))
    after = scrape(sc.registry(sc.c))
    counters = [key for key in before if key[0].endswith("_total") and key in after]
    assert len(counters) > 50
    assert {key: (before[key], after[key]) for key in counters if after[key] < before[key]} == {}
    server_series = [key for key in counters if ("peer", "1.1") in key[1] and before[key] > 0]
    assert any(name == "alpaca_peer_accepted_packets_total" for name, _ in server_series)
    assert any(name == "alpaca_packets_sent_total" for name, _ in server_series)


def test_serve_metrics_a_client_that_reads_slowly_keeps_no_one_else_out() -> None:
    """One client asks for a large scrape and reads a few bytes only: another scrape (and the
    collector's garbage collection) goes on meanwhile, not after the stalled write's timeout."""
    engine = many_peers(2000)
    registry = build_registry(lambda: engine, lambda: 2.0, version="v", start_time=0.0, node="1")
    server = serve_metrics(registry, "127.0.0.1", 0, read_timeout=120, lifetime=300)
    stalled = socket.create_connection(("127.0.0.1", server.server_port), timeout=5)
    try:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        assert stalled.recv(1024).startswith(b"HTTP/1.")  # it started, and now reads no more
        gevent.sleep(0.5)
        assert gc.isenabled()
        body = gevent.spawn(_http_get_body, server.server_port, "identity").get(timeout=30)
        assert body.count(b"\n") > 200_000
    finally:
        stalled.close()
        server.stop()


def test_metrics_a_peer_removed_and_added_back_starts_over_in_every_counter() -> None:
    sc = scenario()
    engine = sc.engine(sc.s)
    full = engine.settings
    assert engine.accepted_packets(sc.c.peer_id) > 0
    engine.reload(dataclasses.replace(full, peers={k: v for k, v in full.peers.items() if k != sc.c.peer_id}))
    engine.reload(full)
    assert engine.peers[sc.c.peer_id].rx_packets == 0
    assert (engine.accepted_packets(sc.c.peer_id), engine.lost_packets(sc.c.peer_id)) == (0, 0)
    assert sc.c.peer_id not in engine.relayed.retired  # nothing kept for peers that are gone


def test_metrics_the_rtt_histograms_of_a_removed_peer_go_at_the_next_scrape() -> None:
    """They were kept for the life of the process (one per path ever measured)."""
    sc = scenario()
    registry = sc.registry(sc.c)
    assert isinstance(registry, Exporter)
    collector = registry.engine_collector
    scrape(registry)
    assert {peer for peer, _ in collector.histograms} == {"1.1", "1.2", "1.3"}
    engine = sc.engine(sc.c)
    full = engine.settings
    kept = {k: v for k, v in full.peers.items() if k != sc.f2.peer_id}
    engine.reload(dataclasses.replace(full, peers=kept))
    samples = scrape(registry)
    assert {peer for peer, _ in collector.histograms} == {"1.1", "1.2"}
    assert all(labels["peer"] != "1.3" for labels in series(samples, "alpaca_path_rtt_sample_seconds_count"))


def test_metrics_a_via_paths_rtt_histogram_pauses_with_its_forwarder() -> None:
    """A reload takes forwarder 1.3 out, a later one puts it back: the VIA path through it keeps
    its counters, and its RTT histogram now too (it started over, below the probes answered)."""
    sc = scenario()
    engine, registry = sc.engine(sc.c), sc.registry(sc.c)
    labels = {"peer": "1.1", "path": "via-1.3"}
    before = value(scrape(registry), "alpaca_path_rtt_sample_seconds_count", **labels)
    assert before > 0
    both = engine.settings
    engine.reload(dataclasses.replace(both, forwarders=(pid("1.2"),)))
    assert not [s for s in series(scrape(registry), "alpaca_path_rtt_sample_seconds_count") if s == labels]
    engine.reload(both)
    sc.net.run(3.0)
    after = scrape(registry)
    assert value(after, "alpaca_path_rtt_sample_seconds_count", **labels) > before
    assert value(after, "alpaca_path_rtt_sample_seconds_count", **labels) == value(
        after, "alpaca_path_probes_answered_total", **labels)
