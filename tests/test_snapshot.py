"""The snapshot behind ``alpaca-tunnel show``: JSON-safe, and the same numbers as /metrics."""

from __future__ import annotations

import json
import os

from alpaca.core.engine import Engine
from alpaca.core.ids import format_peer_id
from alpaca.core.settings import EngineSettings, PeerSpec
from alpaca.io.fakes import MemoryOutput
from alpaca.snapshot import PEERS_PER_TURN, percent, snapshot
from tests.enginenet import NET, EngineNet
from tests.test_metrics import F1_EP, IDLE_PEERS, S_EP, Scenario, scenario, scrape, series, value


def _paths(snap: dict[str, object], peer: str) -> dict[str, dict[str, object]]:
    peers = {p["peer"]: p for p in snap["peers"]}  # type: ignore[attr-defined]
    return {p["name"]: p for p in peers[peer]["paths"]}


def test_snapshot_is_json_safe_and_round_trips() -> None:
    sc = scenario()
    for node in (sc.s, sc.f1, sc.c):
        snap = snapshot(sc.engine(node), sc.net.now, started_at=0.0, version="7")
        assert json.loads(json.dumps(snap, allow_nan=False)) == snap


def test_snapshot_node_fields() -> None:
    sc = scenario()
    eng = sc.engine(sc.c)
    snap = snapshot(eng, sc.net.now, started_at=sc.net.now - 90.0, version="7.0.0")
    assert snap["node"] == "16.1" and snap["version"] == "7.0.0" and snap["epoch"] == eng.epoch
    assert snap["uptime_s"] == 90.0
    assert snap["forwarders"] == ["1.2", "1.3"] and snap["gateway"] == "1.1"
    assert snap["peers_configured"] == 3 + len(IDLE_PEERS) and snap["peers_up"] == 3
    assert snap["drops"] == {k: v for k, v in eng.stats.drop_counts().items() if v}
    assert snapshot(eng, sc.net.now)["uptime_s"] is None


def test_snapshot_skips_idle_peers_like_the_metrics() -> None:
    sc = scenario()
    snap = snapshot(sc.engine(sc.s), sc.net.now)
    samples = scrape(sc.registry(sc.s))
    assert [p["peer"] for p in snap["peers"]] == ["1.2", "1.3", "16.1"]  # no idle client
    assert {s["peer"] for s in series(samples, "alpaca_peer_tx_packets_total")} == {"1.2", "1.3", "16.1"}


def _check_same_numbers(sc: Scenario, node_name: str) -> None:
    node = sc.net.nodes[node_name]
    snap = snapshot(sc.engine(node), sc.net.now)
    samples = scrape(sc.registry(node))
    for peer in snap["peers"]:
        label = peer["peer"]
        for field, metric in [("tx_packets", "alpaca_peer_tx_packets_total"),
                              ("rx_bytes", "alpaca_peer_rx_bytes_total"),
                              ("lost_packets", "alpaca_peer_lost_packets_total"),
                              ("accepted_packets", "alpaca_peer_accepted_packets_total"),
                              ("dup_copies_sent", "alpaca_dup_copies_sent_total")]:
            assert peer[field] == value(samples, metric, peer=label), (label, field)
        assert peer["replay_duplicate"] == value(samples, "alpaca_replay_rejected_total", peer=label,
                                                 reason="duplicate")
        for path in peer["paths"]:
            labels = {"peer": label, "path": path["name"]}
            for field, metric in [("tx_packets", "alpaca_packets_sent_total"),
                                  ("rx_bytes", "alpaca_bytes_received_total"),
                                  ("duplicates", "alpaca_path_duplicates_received_total"),
                                  ("first_arrivals", "alpaca_path_first_arrival_total"),
                                  ("probes_sent", "alpaca_path_probes_sent_total"),
                                  ("data_lost", "alpaca_path_data_lost_total")]:
                assert path[field] == value(samples, metric, **labels), (labels, field)
            assert (path["state"] == "up") == bool(value(samples, "alpaca_path_up", **labels))
            if path["srtt_ms"] is not None:
                srtt = value(samples, "alpaca_path_rtt_seconds", **labels)
                assert abs(path["srtt_ms"] - 1000 * srtt) < 1e-3


def test_snapshot_has_the_same_numbers_as_the_metrics() -> None:
    sc = scenario()
    for name in ("S", "F1", "C"):
        _check_same_numbers(sc, name)


def test_snapshot_path_views() -> None:
    sc = scenario()
    eng = sc.engine(sc.c)
    paths = _paths(snapshot(eng, sc.net.now), "1.1")
    via = paths["via-1.2"]
    engine_via = eng.peers[sc.s.peer_id].paths.via[1]
    assert via["kind"] == "via" and via["addr"] == "via 1.2" and via["port"] is None
    assert via["data_sent"] == engine_via.data_sent > 0
    assert via["data_loss_pct"] == percent(engine_via.data_lost, engine_via.data_sent)
    assert via["probe_loss_pct"] == percent(engine_via.probes_sent - engine_via.probes_answered,
                                            engine_via.probes_sent)
    assert via["srtt_ms"] is not None and via["state"] == "up" and via["reason"] == "answering"
    direct = paths["direct/p0"]
    assert direct["kind"] == "static" and direct["addr"] == f"{S_EP[0]}:{S_EP[1]}" and direct["port"] == "p0"
    fwd = _paths(snapshot(eng, sc.net.now), "1.2")["direct/p0"]
    assert fwd["addr"] == f"{F1_EP[0]}:{F1_EP[1]}"  # the operator's own view shows addresses


def test_snapshot_first_arrival_share_adds_up() -> None:
    sc = scenario()
    eng = sc.engine(sc.s)
    client = {p["peer"]: p for p in snapshot(eng, sc.net.now)["peers"]}["16.1"]
    shares = [p["first_arrival_pct"] for p in client["paths"] if p["first_arrival_pct"] is not None]
    assert len(shares) >= 2 and abs(sum(shares) - 100.0) < 0.1
    firsts = {p.name: p.rx_first for p in eng.peers[sc.c.peer_id].paths.all()}
    for path in client["paths"]:
        assert path["first_arrival_pct"] == percent(firsts[path["name"]], sum(firsts.values()))


def test_snapshot_end_to_end_loss_and_ages() -> None:
    sc = scenario()
    eng = sc.engine(sc.c)
    peer = {p["peer"]: p for p in snapshot(eng, sc.net.now)["peers"]}["1.1"]
    lost, got = eng.lost_packets(sc.s.peer_id), eng.flows[(sc.s.peer_id, eng.self_id)].window.accepted
    assert peer["lost_packets"] == lost and peer["lost_pct"] == percent(lost, lost + got)
    last = eng.peers[sc.s.peer_id].last_active_at
    assert peer["last_seen_s"] == round(sc.net.now - last, 3)
    assert 0.0 < peer["window_occupancy"] <= 1.0


def test_snapshot_of_a_fresh_node() -> None:
    net = EngineNet()
    s = net.add("S", "1.1", [S_EP])
    net.add("C", "16.1", [F1_EP], static=False)
    eng = net.start(s)
    snap = snapshot(eng, 0.0)
    assert snap["peers"] == [] and snap["peers_configured"] == 1 and snap["node"] == format_peer_id(s.peer_id)
    assert percent(1, 0) is None


def test_snapshot_gives_the_hub_a_turn_every_so_many_peers() -> None:
    """10,000 peers took 0.45 s in one go: ``pause`` is called every PEERS_PER_TURN peers, and
    the answer is the same."""
    ids = range(0x0201, 0x0201 + 1000)
    peers = {p: PeerSpec(p, os.urandom(32), (f"192.0.2.{p & 255}", 4000)) for p in ids}
    engine = Engine(EngineSettings(self_id=0x0101, net=NET, group="g", peers=peers), MemoryOutput(), epoch=5,
                    random_bytes=os.urandom)
    for peer in engine.peers.values():
        peer.tx_packets, peer.last_active_at = 5, 1.0
    calls: list[int] = []
    paused = snapshot(engine, 2.0, pause=lambda: calls.append(1))
    assert len(calls) == 1000 // PEERS_PER_TURN
    assert paused == snapshot(engine, 2.0) and len(paused["peers"]) == 1000
