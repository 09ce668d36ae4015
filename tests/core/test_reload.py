"""Reloading the engine's settings: what a corrected or removed peer leaves behind."""

from __future__ import annotations

from dataclasses import replace

from alpaca.core.header import HEADER
from alpaca.core.settings import DupPolicy, PeerSpec
from tests.core.test_engine import S_EP, UP1, UP2, drops, eng, gateway_resolver, ping
from tests.enginenet import EngineNet, Node, ipv4, pid, tunnel_ip

WRONG_EP = ("10.9.9.9", 5000)  # no link reaches it: a typo in the secrets file


def _client_with_server_at(addr: tuple[str, int]) -> tuple[EngineNet, Node, Node]:
    """Server 1.1 at S_EP; client 16.1 whose secrets give the server's address as ``addr``."""
    net = EngineNet()
    s = net.add("S", "1.1", [S_EP])
    c = net.add("C", "16.1", [UP1], static=False)
    net.link(UP1, S_EP)
    net.static[s.peer_id] = addr
    net.start(s)
    net.start(c, resolver=gateway_resolver(), gateway=pid("1.1"))
    return net, s, c


def _with_server_at(node: Node, server: int, addr: tuple[str, int]) -> None:
    engine = eng(node)
    peers = dict(engine.settings.peers)
    peers[server] = PeerSpec(server, peers[server].key, addr)
    engine.reload(replace(engine.settings, peers=peers))


def _sends_to(net: EngineNet, node: Node, addr: tuple[str, int], seconds: float) -> int:
    """How many datagrams ``node`` sends to ``addr`` in the next ``seconds``."""
    sent: list[tuple[str, int]] = []
    out = eng(node).out
    send = out.send

    def recording(port: int, to: tuple[str, int], data: bytes) -> bool:
        sent.append(to)
        return send(port, to, data)

    out.send = recording  # type: ignore[method-assign]
    net.run(seconds)
    out.send = send  # type: ignore[method-assign]
    return sent.count(addr)


def test_reload_a_path_that_never_answers_is_probed_rarely_after_five_rounds() -> None:
    net, _s, c = _client_with_server_at(WRONG_EP)
    net.run(6.0)
    assert _sends_to(net, c, WRONG_EP, 10.0) == 1  # one round in ten


def test_reload_a_corrected_static_address_is_probed_and_up_at_once() -> None:
    """A wrong address probed in vain for 20 s, then corrected by a reload: the new path is
    probed in the next round and carries traffic within a second (it used to inherit the old
    path's unanswered probes and wait up to ten rounds, dormant)."""
    net, s, c = _client_with_server_at(WRONG_EP)
    net.run(20.0)
    probed = eng(c).peers[s.peer_id].paths.static[0].probes_sent
    _with_server_at(c, s.peer_id, S_EP)
    net.run(1.0)
    paths = eng(c).peers[s.peer_id].paths
    assert [p.name for p in paths.live_links()] == ["direct/p0"]
    assert paths.static[0].probes_sent > probed  # the exported counters still only grow
    ping(net, c, "8.8.8.8")
    assert len(s.tun) == 1


def test_reload_copies_queued_for_a_moved_or_removed_peer_are_not_sent() -> None:
    """1.1 sends every packet with three copies 0.5 s apart to 16.1. A reload that moves 16.1
    to another address, or removes it, cancels the copies still queued for the old one."""
    net = EngineNet()
    s = net.add("S", "1.1", [S_EP])
    c = net.add("C", "16.1", [UP1, UP2])
    net.link(UP1, S_EP)
    net.link(UP2, S_EP)
    net.start(s, dup_policy=DupPolicy.ALL, dup_copies=3, dup_delay=0.5)
    net.start(c, resolver=gateway_resolver(), gateway=pid("1.1"))
    net.run(2.0)
    engine = eng(s)
    for _ in range(5):
        net.inject_tun(s, ipv4("10.17.1.1", tunnel_ip(c.peer_id)))
    assert len(engine.dup) == 15
    _with_server_at(s, c.peer_id, UP2)
    assert len(engine.dup) == 0
    for _ in range(5):
        net.inject_tun(s, ipv4("10.17.1.1", tunnel_ip(c.peer_id)))
    assert len(engine.dup) == 15
    full = engine.settings
    engine.reload(replace(full, peers={k: v for k, v in full.peers.items() if k != c.peer_id}))
    assert len(engine.dup) == 0
    net.run(2.0)
    assert engine.stats.dup_copies_sent == 0
    assert len(c.tun) == 10


def _copies_queued() -> tuple[EngineNet, Node, Node]:
    """1.1 has just sent 4 packets to 16.1, each with two copies 50 ms apart still queued."""
    net = EngineNet()
    s = net.add("S", "1.1", [S_EP])
    c = net.add("C", "16.1", [UP1])
    net.link(UP1, S_EP)
    net.start(s, dup_policy=DupPolicy.ALL, dup_copies=2, dup_delay=0.05)
    net.start(c, resolver=gateway_resolver(), gateway=pid("1.1"))
    net.run(2.0)
    for _ in range(4):
        net.inject_tun(s, ipv4("10.17.1.1", tunnel_ip(c.peer_id)))
    return net, s, c


def test_reload_keeps_copies_for_the_peers_it_leaves_alone() -> None:
    net, s, c = _copies_queued()
    eng(s).reload(eng(s).settings)
    assert len(eng(s).dup) == 8
    net.run(0.5)
    assert len(c.tun) == 4 and drops(c, "duplicate") == 8


def test_reload_copies_sealed_under_a_replaced_key_are_not_sent() -> None:
    _net, s, c = _copies_queued()
    engine = eng(s)
    peers = dict(engine.settings.peers)
    peers[c.peer_id] = replace(peers[c.peer_id], key=bytes(range(32)))  # the pair key: 16.1's
    engine.reload(replace(engine.settings, peers=peers))
    queued = [HEADER.unpack_from(copy.data)[5] for copy in engine.dup._heap]
    assert queued == []


def test_reload_paths_forgotten_for_a_peer_another_engine_serves_now() -> None:
    """A reload that turns 16.1 legacy gives the default engine 16.1 without an address, but
    its learned path stayed: the server went on probing 16.1 there in its own protocol for a
    minute. forget_paths (compat.reload_legacy calls it) drops it; the send counter stays."""
    from tests.enginenet import CLIENT1_EP, SERVER_EP, server_and_two_clients

    net, s, c1, _ = server_and_two_clients()
    c1_id = c1.peer_id
    server = eng(s)
    net.inject_tun(s, ipv4(tunnel_ip(s.peer_id), tunnel_ip(c1_id)))
    net.inject_tun(c1, ipv4(tunnel_ip(c1_id), tunnel_ip(s.peer_id)))
    net.run(0.5)
    c1.engine = None  # a 6.1.2 node now: it sends and answers nothing of ours
    net.run(0.5)  # what it sent before is in
    assert server.peers[c1_id].paths.links()
    before = server.peers[c1_id]
    counts = (before.next_counter, before.tx_packets, before.rx_packets, before.last_active_at)
    assert before.tx_packets and before.rx_packets
    server.reload(replace(server.settings, peers={
        p: PeerSpec(p, spec.key, None) if p == c1_id else spec for p, spec in server.settings.peers.items()}))
    server.forget_paths({c1_id})
    after = server.peers[c1_id]
    assert not after.paths.links()
    # the exported counters go on from where they were (they went back to 0)
    assert (after.next_counter, after.tx_packets, after.rx_packets, after.last_active_at) == counts
    sent: list[int] = []
    transmit = net.transmit

    def spy(src: tuple[str, int], dst: tuple[str, int], data: bytes) -> bool:
        if (src, dst) == (SERVER_EP, CLIENT1_EP):
            sent.append(HEADER.unpack_from(data)[0] & 0x0F)
        return transmit(src, dst, data)

    net.transmit = spy  # type: ignore[method-assign]
    net.run(60.0)
    assert sent == []
