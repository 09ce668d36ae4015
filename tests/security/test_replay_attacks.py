"""Replays of captured authentic datagrams, in process (virtual clock) and between real daemons.

A replay is authentic but not fresh. It must never be delivered or relayed twice, never teach
an address, never refresh a path's liveness, and never move a window or an epoch: only the
replay counters (``duplicate`` / ``too_old``, or ``old_epoch`` after a restart) may move.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from alpaca.core.constants import PacketType
from alpaca.core.engine import MAX_CHALLENGES
from alpaca.core.header import HEADER, with_hop_fields
from alpaca.core.probing import CHALLENGE_INTERVAL
from tests.enginenet import EngineNet, Node, ipv4, pid, server_and_two_clients, tunnel_ip
from tests.security.conftest import (
    SERVER_PORT,
    Lab,
    drop_delta,
    drops,
    eng,
    peer_view,
    raw_udp_socket,
    routing_state,
    send_spoofed,
    sniffing,
    udp_socket,
)
from tests.security.test_forgery import (
    GW,
    S_EP,
    UP1,
    UP2,
    capture_into,
    data_from,
    network,
    relay_network,
    spy_on,
)

ATTACKER = ("10.66.0.1", 4444)
REPLAY_REASONS = {"duplicate", "too_old", "old_epoch"}


def one_datagram(net: EngineNet, s: Node, c1: Node) -> bytes:
    """The DATA datagram of one packet 16.1 sends to the server, as the server received it."""
    seen = capture_into(s)
    net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
    net.run(0.1)
    return data_from(seen, c1.peer_id)


def replay(net: EngineNet, target: Node, data: bytes, addr: tuple[str, int], port: int = 0) -> dict[str, int]:
    """Inject ``data`` into ``target``; assert routing state and delivery unchanged; the drop delta."""
    engine = eng(target)
    before, state, tun = drops(engine), routing_state(engine), len(target.tun)
    engine.on_datagram(data, addr, port, net.now)
    assert routing_state(engine) == state, "a replay changed routing state"
    assert len(target.tun) == tun
    delta = drop_delta(before, drops(engine))
    assert sum(delta.values()) == 1 and set(delta) <= REPLAY_REASONS, delta
    return delta


def test_replay_immediate_from_the_real_and_from_another_address_is_a_duplicate() -> None:
    net, s, c1, _ = network()
    data = one_datagram(net, s, c1)
    for addr in (UP1, ATTACKER, UP2):
        assert replay(net, s, data, addr) == {"duplicate": 1}


def test_replay_after_ten_seconds_and_after_the_window_moved_on() -> None:
    net, s, c1, _ = network()
    old = one_datagram(net, s, c1)
    net.run(10.0)
    assert replay(net, s, old, ATTACKER) == {"duplicate": 1}
    # Push the window past the captured counter: the replay is then too old.
    for _ in range(eng(s).flows[(c1.peer_id, s.peer_id)].window.effective_size + 64):
        net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
    net.run(1.0)
    assert replay(net, s, old, UP1) == {"too_old": 1}
    assert replay(net, s, old, ATTACKER) == {"too_old": 1}


def test_replay_after_the_sender_restarted_is_an_old_epoch() -> None:
    net, s, c1, _ = network()
    old = one_datagram(net, s, c1)
    net.start(c1, gateway=pid("1.1"))  # restart: a new, higher epoch
    net.run(2.0)
    net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
    net.run(0.1)
    assert eng(s).flows[(c1.peer_id, s.peer_id)].epoch == eng(c1).epoch
    assert replay(net, s, old, UP1) == {"old_epoch": 1}
    assert replay(net, s, old, ATTACKER) == {"old_epoch": 1}
    # The replay did not drag the direction back to the old epoch.
    delivered = len(s.tun)
    net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
    net.run(0.1)
    assert len(s.tun) == delivered + 1


def test_replay_to_another_peer_is_refused_there() -> None:
    """16.1 -> 1.1 sent to 16.2 (which holds no 16.1 key) and back to 16.1 itself.

    (A peer that holds the pair key is a relay for that pair: see the forwarder case below.)
    """
    net, s, c1, c2 = network()
    peers = {k: v for k, v in eng(c2).settings.peers.items() if k != c1.peer_id}
    net.start(c2, gateway=pid("1.1"), peers=peers)
    net.run(1.0)
    data = one_datagram(net, s, c1)
    for target in (c2, c1):
        engine = eng(target)
        before, state = drops(engine), routing_state(engine)
        engine.on_datagram(data, S_EP, 0, net.now)
        assert routing_state(engine) == state and target.tun[-1:] != [data]
        delta = drop_delta(before, drops(engine))
        assert sum(delta.values()) == 1 and set(delta) <= {"bad_tag", "from_self", "unknown_peer"}, delta


def test_replay_through_a_forwarder_is_relayed_at_most_once_and_never_delivered_twice() -> None:
    net, s, f, c = relay_network()
    seen_s = capture_into(s)
    net.inject_tun(c, ipv4(tunnel_ip(c.peer_id), "8.8.8.8"))
    net.run(0.2)
    data = data_from(seen_s, c.peer_id)
    delivered = len(s.tun)
    # Sent to the forwarder, from the client's real address and from the attacker's.
    for addr in (UP1, ATTACKER, UP2):
        before = drops(eng(f))
        eng(f).on_datagram(data, addr, 0, net.now)
        net.run(0.1)
        assert set(drop_delta(before, drops(eng(f)))) <= REPLAY_REASONS
    assert len(s.tun) == delivered
    # Sent straight to the server from the forwarder's address.
    assert replay(net, s, data, ("10.0.0.2", 5000)) == {"duplicate": 1}


@pytest.mark.parametrize("how", ["relay restarted", "another server holding the key"])
def test_replay_to_a_relay_that_never_carried_it_teaches_no_path_and_gets_no_traffic(how: str) -> None:
    """A capture of 16.1 -> 1.1 is new to a relay with no window for the pair: a forwarder
    that restarted since, or another server holding 16.1's key. It is relayed once (the
    server drops it), but the relay filed the attacker's address as 16.1's path before and,
    with no live path of 16.1 there, sent 16.1's traffic to it. Now a relay learns from what
    it relays only once the sender has answered its own challenge in this run."""
    net, s, f, c = relay_network()
    seen = capture_into(f)
    net.inject_tun(c, ipv4(tunnel_ip(c.peer_id), "8.8.8.8"))
    net.run(0.1)
    captured = data_from(seen, c.peer_id)
    relay = f
    if how == "relay restarted":
        net.start(f)
    else:
        relay = net.add("S3", "1.3", [("10.0.0.3", 5000)])
        net.link(("10.0.0.3", 5000), S_EP)
        net.start(relay)
    to_attacker = spy_on(relay, ATTACKER)
    eng(relay).on_datagram(with_hop_fields(captured, 15, 13), ATTACKER, 0, net.now)
    assert eng(relay).peers[c.peer_id].paths.match(0, ATTACKER) is None
    # Traffic for 16.1 through the relay (its own, and relayed from the server).
    net.inject_tun(relay, ipv4(tunnel_ip(relay.peer_id), tunnel_ip(c.peer_id)))
    server = eng(s)
    server.on_tun_packet(ipv4(GW, tunnel_ip(c.peer_id)), net.now)
    net.run(0.5)
    assert PacketType.DATA not in to_attacker and len(to_attacker) <= MAX_CHALLENGES


def test_a_restarted_forwarder_relays_both_ways_again_once_the_client_answered() -> None:
    net, s, f, c = relay_network()
    net.start(f)  # restart: no window, no path, the client not proved to it
    net.run(1.0)
    assert eng(f).peers[c.peer_id].paths.live_links()
    for _ in range(5):
        net.inject_tun(c, ipv4(tunnel_ip(c.peer_id), "8.8.8.8"))
        net.inject_tun(s, ipv4("8.8.8.8", tunnel_ip(c.peer_id)))
        net.run(0.1)
    assert len(s.tun) >= 5 and len(c.tun) >= 5


def test_replay_cannot_keep_a_dead_path_up_and_defeat_failover() -> None:
    """The attacker blackholes uplink 1 (the client's best path to its forwarder) and replays
    old datagrams of the forwarder on it, spoofing the forwarder's address. Replays must not
    refresh the path: the client fails over to uplink 2 and keeps delivering."""
    net = EngineNet(seed=5)
    s = net.add("S", "1.1", [S_EP])
    f = net.add("F", "1.2", [("10.0.0.2", 5000)])
    c = net.add("C", "16.1", [UP1, UP2], static=False)
    fast = net.link(UP1, ("10.0.0.2", 5000), delay=0.005)
    net.link(UP2, ("10.0.0.2", 5000), delay=0.02)
    net.link(("10.0.0.2", 5000), S_EP)
    net.start(s)
    net.start(f)
    net.start(c, resolver=lambda dst, src: GW, forwarders=(pid("1.2"),), gateway=pid("1.1"))
    seen = capture_into(c)
    net.run(5.0)
    captured = [d for addr, port, d in seen if port == 0][:5]
    assert captured
    for direction in fast:
        direction.up = False
    for _ in range(40):
        for data in captured:
            eng(c).on_datagram(data, ("10.0.0.2", 5000), 0, net.now)
        net.run(0.5)
    links = {p.port: p.up for p in eng(c).peers[pid("1.2")].paths.links()}
    assert links == {0: False, 1: True}
    delivered = len(s.tun)
    for _ in range(10):
        net.inject_tun(c, ipv4(tunnel_ip(c.peer_id), "8.8.8.8"))
        net.run(0.1)
    assert len(s.tun) == delivered + 10


def test_replays_racing_the_sender_from_many_addresses_cannot_keep_it_unchallenged() -> None:
    """The server restarts. An on-path attacker holding datagrams of 16.1 captured before races
    every genuine datagram with replays from MAX_CHALLENGES addresses of its own, so the
    first-come challenge slots are always taken when 16.1's datagram arrives. 16.1's datagrams
    carry newer counters than any replay: they are still challenged, 16.1 proves itself and
    its traffic is delivered; the replays never are."""
    net, s, c1, _ = network()
    seen = capture_into(s)
    for _ in range(200):
        net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
        net.run(0.01)
    captured = [d for _, _, d in seen
                if d[0] & 0x0F == PacketType.DATA and HEADER.unpack_from(d)[4] == c1.peer_id]
    net.start(s)  # restarted: no flows, every captured counter is new to it
    s.tun.clear()
    engine, replays = eng(s), iter(captured)
    handle, attackers = engine.on_datagram, [(f"10.66.0.{i}", 4444) for i in range(1, MAX_CHALLENGES + 1)]
    raced = 0

    def racing(data: bytes, addr: tuple[str, int], port: int, now: float) -> None:
        nonlocal raced
        flow = engine.flows.get((c1.peer_id, s.peer_id))
        if flow is None or not flow.verified:
            slots = flow.challenged.items() if flow else ()
            taken = {a for (_, a), t in slots if now - t < CHALLENGE_INTERVAL}
            for a in attackers:
                if a not in taken:
                    handle(next(replays), a, 0, now)
                    raced += 1
        handle(data, addr, port, now)

    engine.on_datagram = racing  # type: ignore[method-assign]
    for _ in range(30):
        net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
        net.run(0.1)
    assert engine.flows[(c1.peer_id, s.peer_id)].verified
    assert raced >= MAX_CHALLENGES and engine.stats.drop_counts()["unverified"] >= raced
    delivered = len(s.tun)
    for _ in range(10):
        net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
        net.run(0.05)
    assert len(s.tun) == delivered + 10
    assert all(p.addr[0] != "10.66.0.1" for p in engine.peers[c1.peer_id].paths.links())


# --------------------------------------------------------------------------- real daemons
def capture_client_data(lab: Lab) -> list[Any]:
    """Start the lab, ping through it 5 times, and return the client's DATA datagrams the
    router saw on their way to the server (src ip, src port, dst ip, dst port, payload)."""
    lab.start_all()
    lab.wait_tunnel()
    with sniffing(lab.ns["r"], "r1", dport=SERVER_PORT) as sniffer:
        assert lab.ping(5, 0.1) == (5, 5)
        time.sleep(0.3)
    captured = [c for c in sniffer.captured if c[4][0] & 0x0F == PacketType.DATA]
    assert len(captured) >= 5
    return captured


def _delivered(lab: Lab) -> tuple[int, int, dict[str, int]]:
    """(DATA delivered from 16.1, datagrams accepted from 16.1, drops) at the server.

    Probes keep arriving, so only the DATA count must stay still while no ping runs.
    """
    state = lab.daemons["s"].state()
    view = peer_view(state, "16.1")
    return view["rx_packets"], view["accepted_packets"], state["drops"]


@pytest.mark.netns
def test_replay_by_an_on_path_router_is_never_accepted(tmp_path: Path) -> None:
    """The router between client and server captures the client's datagrams and replays them:
    at once (from its own and from the spoofed client address), after 10 s, to the forwarder,
    and after the client restarted. The server's delivered DATA count does not move,
    every replay is counted by reason, and pings keep flowing.
    The server's DATA count must not move while no ping runs."""
    with Lab(tmp_path, forwarder=True) as lab:
        captured = capture_client_data(lab)
        client_ip, client_port = captured[0][0], captured[0][1]
        raw, plain = raw_udp_socket(lab.ns["r"]), udp_socket(lab.ns["r"])

        def blast() -> None:
            for _, _, _, _, payload in captured:
                send_spoofed(raw, client_ip, client_port, "10.99.2.2", SERVER_PORT, payload)
                plain.sendto(payload, ("10.99.2.2", SERVER_PORT))

        rx0, _, drops0 = _delivered(lab)
        blast()
        time.sleep(0.5)
        rx1, _, drops1 = _delivered(lab)
        assert rx1 == rx0
        replayed = drops1.get("duplicate", 0) - drops0.get("duplicate", 0)
        assert replayed == 2 * len(captured), (drops0, drops1)
        print(f"\nimmediate replay: {2 * len(captured)} datagrams, duplicate +{replayed}")

        time.sleep(10)
        rx0, _, drops0 = _delivered(lab)
        blast()
        time.sleep(0.5)
        rx1, _, drops1 = _delivered(lab)
        assert rx1 == rx0
        assert drops1.get("duplicate", 0) - drops0.get("duplicate", 0) == 2 * len(captured)

        # To the forwarder 1.2 (which holds the client's key and may relay it to 1.1).
        f0 = lab.daemons["f"].state()
        for _, _, _, _, payload in captured:
            plain.sendto(payload, ("10.99.3.2", 10002))
        time.sleep(0.5)
        rx1b, _, drops2 = _delivered(lab)
        assert rx1b == rx1
        f1 = lab.daemons["f"].state()
        print(f"to the forwarder: forwarded {f1['forwarded_packets'] - f0['forwarded_packets']}, "
              f"server duplicate +{drops2.get('duplicate', 0) - drops1.get('duplicate', 0)}")

        # After a restart of the client: the old session's datagrams are an old epoch.
        lab.daemons["c"].stop()
        lab.daemons["c"].start()
        lab.wait_tunnel()
        rx0, _, drops0 = _delivered(lab)
        blast()
        time.sleep(0.5)
        rx1, _, drops1 = _delivered(lab)
        assert rx1 == rx0
        assert drops1.get("old_epoch", 0) - drops0.get("old_epoch", 0) == 2 * len(captured)
        # Traffic was not disturbed, and the server never learned the router's address.
        assert lab.ping(10, 0.1) == (10, 10)
        addrs = {p["addr"] for p in peer_view(lab.daemons["s"].state(), "16.1")["paths"]}
        assert not any(a.startswith("10.99.2.1:") for a in addrs), addrs
        raw.close()
        plain.close()


@pytest.mark.netns
def test_replay_after_the_receiver_restarted_is_never_delivered(tmp_path: Path) -> None:
    """The server restarts (no replay windows survive); datagrams the router captured before
    are replayed at once, before the client has spoken to the new server, and again after:
    none is delivered (`unverified` first, `too_old` below the verified floor afterwards)."""
    with Lab(tmp_path, forwarder=False) as lab:
        captured = capture_client_data(lab)
        plain = udp_socket(lab.ns["r"])
        lab.daemons["s"].stop()
        lab.daemons["s"].start()
        for _, _, _, _, payload in captured:  # at once: the new server has no state for 16.1
            plain.sendto(payload, ("10.99.2.2", SERVER_PORT))
        time.sleep(0.3)
        rx0, _, _ = _delivered(lab)
        lab.wait_tunnel()  # the client proves itself to the new server; traffic flows
        rx1, _, _ = _delivered(lab)
        for _, _, _, _, payload in captured:  # again, now below the verified floor
            plain.sendto(payload, ("10.99.2.2", SERVER_PORT))
        time.sleep(0.5)
        rx2, _, drops2 = _delivered(lab)
        print(f"\nafter the server restart: rx {rx0} -> {rx1} -> {rx2}, drops {drops2}")
        assert rx0 == 0 and rx2 == rx1  # only wait_tunnel's own ping was delivered
        refused = sum(drops2.get(k, 0) for k in ("unverified", "too_old"))
        assert refused >= 2 * len(captured), drops2
        plain.close()


def test_a_relayed_flow_forgets_its_challenges_once_the_sender_proved_itself() -> None:
    # 10,000 clients through a forwarder: the challenge table of each relayed flow goes once
    # its sender answered (verified flows share one empty mapping).
    net, s, f, c = relay_network()
    net.start(f)
    net.inject_tun(c, ipv4(tunnel_ip(c.peer_id), "8.8.8.8"))
    net.run(0.01)
    relayed = eng(f).flows[(c.peer_id, s.peer_id)]
    assert relayed.challenged  # the client was challenged from what the forwarder relayed
    net.run(1.0)
    net.inject_tun(c, ipv4(tunnel_ip(c.peer_id), "8.8.8.8"))
    net.run(0.1)
    assert not relayed.challenged


def test_probes_replayed_after_a_restart_are_not_reflected_at_the_attackers_address() -> None:
    """The server restarts: its windows start over, so the client's captured PROBEs are new
    to it. Each was answered to whatever address it came from (52 bytes of reply and a 40-byte
    challenge for 40 bytes replayed: 1.3-2.3 times, at an address of the attacker's choice).
    Now an unverified sender's link gets one answer and one challenge per CHALLENGE_INTERVAL,
    as challenges alone did; the client itself still proves itself and its pings pass."""
    net, s, c1, _ = network()
    seen = capture_into(s)
    net.run(3.0)
    probes = [d for addr, _, d in seen if addr == UP1 and d[0] & 0x0F == PacketType.PROBE
              and HEADER.unpack_from(d)[4] == c1.peer_id]
    assert len(probes) >= 3
    net.start(s)  # restart
    victim = ("203.0.113.66", 7777)
    to_victim = spy_on(s, victim)
    for data in probes:
        eng(s).on_datagram(data, victim, 0, net.now)
    assert to_victim == [PacketType.PROBE_REPLY, PacketType.PROBE]
    net.run(CHALLENGE_INTERVAL)
    for data in probes:  # the same again, later: as much again, no more
        eng(s).on_datagram(data, victim, 0, net.now)
    assert len(to_victim) <= 4
    net.run(2.0)
    delivered = len(s.tun)
    net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
    net.run(0.1)
    assert len(s.tun) == delivered + 1


def test_a_server_and_a_client_restarted_together_find_each_other_in_a_probe_round() -> None:
    """The client's last datagrams of its old session reach the restarted server first and
    use up the link's allowance for an unverified sender (one answer and challenge per 0.5 s);
    the new session's probe then went unanswered and the server had no path to the client
    for 2 s instead of 1. A new session of the sender starts an allowance of its own."""
    net, s, c1, _ = server_and_two_clients()
    net.start(c1, gateway=pid("1.1"))
    net.start(s)
    net.run(1.2)
    assert eng(s).peers[c1.peer_id].paths.live_links()
    delivered = len(s.tun)
    net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
    net.run(0.1)
    assert len(s.tun) == delivered + 1
