"""The 6.1.2 engine and the ProtocolMux on a virtual network (tests/enginenet.py).

Topology of the gateway scenario::

    L 16.1 (legacy, forwarders 1.1 and 1.2) --- G 1.1 (mux) --- V 16.2 (default protocol)
           \\                                  /
            +------- R 1.2 (legacy relay) ---+
"""

from __future__ import annotations

import struct
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from alpaca.core.constants import MAX_TTL, OVERHEAD, PROTOCOL_VERSION, PacketType
from alpaca.core.drops import DropReason
from alpaca.core.engine import Engine
from alpaca.core.header import HEADER
from alpaca.core.legacy import codec
from alpaca.core.legacy import header as lh
from alpaca.core.legacy.engine import MAX_DATAGRAM, LegacyEngine
from alpaca.core.legacy.peers import LegacyPeerSpec, LegacySettings
from alpaca.core.mux import ProtocolMux
from alpaca.core.settings import PeerSpec
from tests.enginenet import NET, EngineNet, NetOutput, Node, pid

WALL = 1_584_100_000.0
G_EP, R_EP, L_EP, V_EP = ("10.0.0.1", 5000), ("10.0.0.2", 5000), ("10.1.0.1", 6000), ("10.2.0.1", 7000)
GROUP = "test-group"


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_packet(src: str, dst: str, payload: bytes = b"ping" * 8, sport: int = 4000, dport: int = 53) -> bytes:
    """IPv4/UDP with correct IP and UDP checksums (to check the si/di rewriting)."""
    s, d = (bytes(int(x) for x in a.split(".")) for a in (src, dst))
    ulen = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, 17, ulen)
    udp = struct.pack("!HHHH", sport, dport, ulen, 0) + payload
    udp = udp[:6] + struct.pack("!H", csum(pseudo + udp) or 0xFFFF) + udp[8:]
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 1, 0, 64, 17, 0, s, d)
    head = head[:10] + struct.pack("!H", csum(head)) + head[12:]
    return head + udp


def checksums_ok(packet: bytes) -> bool:
    udp = packet[20:]
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 17, len(udp))
    return csum(packet[:20]) == 0 and csum(pseudo + udp) == 0


def partial(packet: bytes) -> bytes:
    """``packet`` as a TUN device with offload hands it over: UDP checksum = pseudo-header sum."""
    ulen = len(packet) - 20
    words = struct.unpack("!4H", packet[12:20])
    total = sum(words) + 17 + ulen
    total = (total & 0xFFFF) + (total >> 16)
    return packet[:26] + struct.pack("!H", (total & 0xFFFF) + (total >> 16)) + packet[28:]


def legacy_settings(enet: EngineNet, node: Node, peers: set[int], **kw: object) -> LegacySettings:
    served = peers | {node.peer_id}
    specs = {p: LegacyPeerSpec(p, codec.key_from_bytes(enet.keys[p]), enet.static.get(p)) for p in served}
    base: dict[str, object] = dict(self_id=node.peer_id, net=NET, group=GROUP, peers=specs, wall_offset=WALL)
    base.update(kw)
    return LegacySettings(**base)  # type: ignore[arg-type]


def start_legacy(enet: EngineNet, node: Node, peers: set[int], **kw: object) -> LegacyEngine:
    engine = LegacyEngine(legacy_settings(enet, node, peers, **kw), NetOutput(enet, node),
                          random_bytes=lambda n: bytes(n))
    node.engine = engine  # type: ignore[assignment]
    return engine


def start_mux(net: EngineNet, node: Node, legacy: set[int]) -> ProtocolMux:
    v2_settings = net.settings(node, group=GROUP)
    peers = {p: s if p not in legacy else PeerSpec(p, s.key, None) for p, s in v2_settings.peers.items()}
    out = NetOutput(net, node)
    zeros = bytes
    v2 = Engine(replace(v2_settings, peers=peers), out, epoch=next(net.epochs), random_bytes=zeros)
    mux = ProtocolMux(v2, LegacyEngine(legacy_settings(net, node, legacy), out, random_bytes=zeros))
    node.engine = mux  # type: ignore[assignment]
    return mux


def gateway_net() -> tuple[EngineNet, Node, Node, Node, Node]:
    net = EngineNet()
    g = net.add("G", "1.1", [G_EP])
    r = net.add("R", "1.2", [R_EP])
    lc = net.add("L", "16.1", [L_EP], static=False)
    v = net.add("V", "16.2", [V_EP], static=False)
    for a, b in ((L_EP, G_EP), (L_EP, R_EP), (R_EP, G_EP), (V_EP, G_EP)):
        net.link(a, b)
    return net, g, r, lc, v


def build_gateway() -> tuple[EngineNet, Node, Node, Node, Node, ProtocolMux, LegacyEngine, LegacyEngine]:
    net, g, r, lc, v = gateway_net()
    mux = start_mux(net, g, {pid("1.2"), pid("16.1")})
    relay = start_legacy(net, r, {pid("1.1"), pid("16.1")})
    client = start_legacy(net, lc, {pid("1.1"), pid("1.2")}, forwarders=(pid("1.1"), pid("1.2")),
                          gateway=pid("1.1"))
    net.start(v, group=GROUP, gateway=pid("1.1"))  # probes its gateway from the start
    return net, g, r, lc, v, mux, relay, client


# ------------------------------------------------------------------------- legacy to legacy
def test_legacy_pair_delivers_and_rewrites_with_local_nets() -> None:
    net = EngineNet()
    s = net.add("S", "1.1", [G_EP])
    c = net.add("C", "16.1", [L_EP], static=False)
    net.link(L_EP, G_EP)
    server = start_legacy(net, s, {pid("16.1")})
    client = start_legacy(net, c, {pid("1.1")}, net=0x0A630000)  # the client's net is 10.99
    net.inject_tun(c, udp_packet("10.99.16.1", "10.99.1.1"))
    net.run(0.05)
    assert len(s.tun) == 1
    assert s.tun[0][12:20] == bytes([10, 17, 16, 1, 10, 17, 1, 1])  # rewritten into S's net
    assert checksums_ok(s.tun[0])
    net.inject_tun(s, udp_packet("10.17.1.1", "10.17.16.1"))  # the reply: S learned C's path
    net.run(0.05)
    assert c.tun == [udp_packet("10.99.1.1", "10.99.16.1")]
    assert server.stats.delivered_packets == client.stats.delivered_packets == 1


def test_legacy_datagrams_are_padded_by_the_6_1_2_rule() -> None:
    net = EngineNet()
    s = net.add("S", "1.1", [G_EP])
    c = net.add("C", "16.1", [L_EP], static=False)
    net.link(L_EP, G_EP)
    start_legacy(net, s, {pid("16.1")})
    client = start_legacy(net, c, {pid("1.1")}, dup_syn_dns=False)
    sent: list[bytes] = []
    real = net.transmit
    net.transmit = lambda a, b, d: sent.append(d) or real(a, b, d)  # type: ignore[method-assign]
    net.inject_tun(c, udp_packet("10.17.16.1", "10.17.1.1"))
    big = udp_packet("10.17.16.1", "10.17.1.1", payload=b"x" * 600)
    net.inject_tun(c, big)
    assert [len(d) for d in sent] == [32 + 64 + 250, 32 + 640]  # random bytes are zeros here
    assert client.stats.sent_datagrams == 2


def test_legacy_duplicate_and_replay_are_dropped() -> None:
    net = EngineNet()
    s = net.add("S", "1.1", [G_EP])
    c = net.add("C", "16.1", [L_EP], static=False)
    net.link(L_EP, G_EP)
    server = start_legacy(net, s, {pid("16.1")})
    start_legacy(net, c, {pid("1.1")}, dup_syn_dns=False)
    captured: list[bytes] = []
    real = net.transmit
    net.transmit = lambda a, b, d: captured.append(d) or real(a, b, d)  # type: ignore[method-assign]
    net.inject_tun(c, udp_packet("10.17.16.1", "10.17.1.1"))
    net.run(0.05)
    server.on_datagram(captured[0], L_EP, 0, net.now)  # an immediate copy: duplicate
    net.run(12.0)
    net.inject_tun(c, udp_packet("10.17.16.1", "10.17.1.1"))  # the window moves on
    net.run(0.05)
    server.on_datagram(captured[0], L_EP, 0, net.now)  # 12 s old: replay
    assert len(s.tun) == 2
    counts = server.stats.drop_counts()
    assert counts["duplicate"] == 1 and counts["too_old"] == 1 and server.stats.replays == 1


def test_legacy_reload_applies_the_dup_queue_bound_and_drops_copies_to_a_removed_peer() -> None:
    """The legacy engine's reload left its copy queue as it was: a new dup.queue_max had no
    effect until a restart, and copies queued for a removed peer still went to it."""
    net = EngineNet()
    s = net.add("S", "1.1", [G_EP])
    c = net.add("C", "16.1", [L_EP], static=False)
    net.link(L_EP, G_EP)
    start_legacy(net, s, {pid("16.1")})
    client = start_legacy(net, c, {pid("1.1")})
    net.inject_tun(c, udp_packet("10.17.16.1", "10.17.1.1"))  # DNS: a copy waits 100 ms
    assert len(client.dup) == 1
    client.reload(legacy_settings(net, c, set(), dup_queue_max=7))  # 1.1 removed
    assert client.dup.limit == 7 and len(client.dup) == 0


def test_legacy_relay_decrements_ttl_and_drops_at_zero() -> None:
    net, _g, _r, lc, _v, _mux, relay, _client = build_gateway()
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    net.run(0.05)
    assert relay.stats.forwarded_packets == 1
    group, pair = codec.Ecb(codec.group_key(GROUP)), codec.Ecb(codec.key_from_bytes(net.keys[pid("16.1")]))
    inner = udp_packet("0.0.16.1", "8.8.8.8", payload=b"p")
    h = lh.LegacyHeader(src=pid("16.1"), dst=pid("1.1"), length=len(inner),
                        t20=int(WALL + net.now) & 0xFFFFF, seq=99, ttl=0, pi=8)
    body = codec.seal_body(pair, lh.pack(h), inner)
    relay.on_datagram(codec.protect(group, pair, lh.pack(h)) + body, L_EP, 0, net.now)
    assert relay.stats.drop_counts()["ttl_expired"] == 1


def test_legacy_static_source_check() -> None:
    net = EngineNet()
    s = net.add("S", "1.1", [G_EP])
    c = net.add("C", "16.1", [L_EP])  # static address in the secrets
    net.link(L_EP, G_EP)
    net.link(("10.9.9.9", 1), G_EP)
    server = start_legacy(net, s, {pid("16.1")})
    start_legacy(net, c, {pid("1.1")})
    captured: list[bytes] = []
    real = net.transmit
    net.transmit = lambda a, b, d: captured.append(d) or real(a, b, d)  # type: ignore[method-assign]
    net.inject_tun(c, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    server.on_datagram(captured[0], ("10.9.9.9", 1), 0, net.now)  # pi 0, upstream, wrong source
    assert server.stats.static_mismatch == 1 and s.tun == []



def test_legacy_a_copy_the_relay_cannot_send_on_does_not_use_up_the_counter() -> None:
    """The UDP source is not authenticated. An attacker on the client's link to the gateway
    sent the gateway's copy to the relay from the gateway's address (and dropped the
    original): split horizon left the relay no target, but it had marked (t20, seq) seen, and
    the client's own copy to the relay was then a duplicate: 0 of 10 arrived."""
    net, g, _r, lc, _v, _mux, relay, _client = build_gateway()
    real = net.transmit

    def attack(a: tuple[str, int], b: tuple[str, int], d: bytes) -> bool:
        if (a, b) == (L_EP, G_EP):  # sent before the copy for the relay (forwarder order)
            relay.on_datagram(d, G_EP, 0, net.now)
            return True
        return real(a, b, d)

    net.transmit = attack  # type: ignore[method-assign]
    for i in range(10):
        net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80, payload=bytes([i]) * 8))
        net.run(0.1)
    assert len(g.tun) == 10
    counts = relay.stats.drop_counts()
    assert counts["no_path"] == 10 and counts["duplicate"] == 0 and relay.stats.forwarded_packets == 10


# ------------------------------------------------------------------------- the gateway (mux)
def test_mux_gateway_dedups_legacy_copies_from_both_forwarders() -> None:
    net, g, _r, lc, _v, mux, relay, client = build_gateway()
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    net.run(0.05)
    # L sent to forwarder 1.1 (= dst, pi 0) and to forwarder 1.2 (pi 8); 1.2 relayed to G.
    assert client.stats.sent_datagrams == 2 and relay.stats.forwarded_packets == 1
    assert len(g.tun) == 1 and checksums_ok(g.tun[0])
    assert mux.legacy.stats.drop_counts()["duplicate"] == 1
    paths = mux.legacy.peers[pid("16.1")].paths
    assert paths[0] is not None and paths[0].addr == L_EP
    assert paths[8] is not None and paths[8].addr == R_EP


def test_mux_gateway_sprays_downstream_and_the_client_dedups() -> None:
    net, g, _r, lc, _v, mux, relay, client = build_gateway()
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    net.run(0.05)
    net.inject_tun(g, udp_packet("10.17.1.1", "10.17.16.1", sport=80, dport=4000))
    net.run(0.05)
    assert lc.tun == [udp_packet("10.17.1.1", "10.17.16.1", sport=80, dport=4000)]
    assert mux.legacy.stats.sent_datagrams == 2  # path 0 (direct) and path 8 (via 1.2)
    assert relay.stats.forwarded_packets == 2
    assert client.stats.drop_counts()["duplicate"] == 1


def test_mux_gateway_speaks_v2_to_the_other_peer() -> None:
    net, g, _r, _lc, v, mux, relay, client = build_gateway()
    net.run(0.5)  # start-up probes: each v2 side proves itself live to the other (Flow)
    net.inject_tun(v, udp_packet("10.17.16.2", "10.17.1.1", dport=80))
    net.run(0.05)
    net.inject_tun(g, udp_packet("10.17.1.1", "10.17.16.2", sport=80, dport=4000))
    net.run(0.05)
    assert g.tun == [udp_packet("10.17.16.2", "10.17.1.1", dport=80)]
    assert v.tun == [udp_packet("10.17.1.1", "10.17.16.2", sport=80, dport=4000)]
    assert mux.v2.stats.delivered_packets == 1 and mux.legacy.stats.delivered_packets == 0
    net.run(3.0)  # the default engine probes V, never the legacy peers
    assert mux.v2.stats.drop_counts()["bad_version"] == 0
    assert relay.stats.drop_counts()["legacy"] == 0 and client.stats.drop_counts()["legacy"] == 0


def test_mux_gateway_carries_an_internet_packet_of_the_legacy_client() -> None:
    net, g, _r, lc, _v, mux, _relay, _client = build_gateway()
    net.inject_tun(lc, udp_packet("10.17.16.1", "8.8.8.8"))  # the client routes it to its gateway
    net.run(0.05)
    assert len(g.tun) == 1 and g.tun[0][12:20] == bytes([10, 17, 16, 1, 8, 8, 8, 8])
    assert mux.stats.delivered_packets == 1


def test_mux_completes_a_partial_checksum_for_a_legacy_peer() -> None:
    net, g, _r, lc, _v, _mux, _relay, _client = build_gateway()
    reply = udp_packet("10.17.1.1", "10.17.16.1", sport=80, dport=4000)
    assert partial(reply) != reply
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    net.run(0.05)
    net.inject_tun(g, partial(reply), csum_partial=True)
    net.run(0.05)
    assert lc.tun == [reply] and lc.partial_writes == 0  # the 6.1.2 protocol carries whole sums


def test_mux_keeps_a_checksum_partial_for_a_v2_peer() -> None:
    net, g, _r, _lc, v, _mux, _relay, _client = build_gateway()
    net.run(0.5)
    net.inject_tun(v, udp_packet("10.17.16.2", "10.17.1.1", dport=80))
    net.run(0.05)
    reply = udp_packet("10.17.1.1", "10.17.16.2", sport=80, dport=4000)
    net.inject_tun(g, partial(reply), csum_partial=True)
    net.run(0.05)
    assert v.partial_writes == 1 and v.tun == [reply]  # completed by the receiving side only


def test_mux_stats_add_both_engines() -> None:
    net, _g, _r, lc, v, mux, _relay, _client = build_gateway()
    net.run(0.5)  # start-up probes verify the v2 flows
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    net.inject_tun(v, udp_packet("10.17.16.2", "10.17.1.1", dport=80))
    net.run(0.05)
    assert mux.stats.delivered_packets == 2
    assert mux.stats.drop_counts()["duplicate"] == 1
    assert mux.legacy_peers == {pid("1.2"), pid("16.1")}


def test_mux_stats_count_one_reload_once() -> None:
    """A reload reloads both engines (Daemon._reload: engine.reload, then compat's
    reload_legacy): the node-wide count rises by one, not two."""
    net, g, _r, lc, _v = gateway_net()
    mux = start_mux(net, g, {lc.peer_id})
    mux.v2.reload(mux.v2.settings)
    mux.legacy.reload(legacy_settings(net, g, {lc.peer_id}))
    assert mux.stats.reloads == 1


def test_mux_unclaimed_legacy_datagram_goes_to_the_default_engine() -> None:
    net, g, _r, lc, _v, mux, _relay, _client = build_gateway()
    captured: list[bytes] = []
    real = net.transmit
    net.transmit = lambda a, b, d: captured.append(d) or real(a, b, d)  # type: ignore[method-assign]
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    forged = bytearray(captured[0])
    forged[20] ^= 1  # the ICV
    before = sum(mux.v2.stats.drops)
    mux.on_datagram(bytes(forged), L_EP, 0, net.now)
    assert sum(mux.v2.stats.drops) == before + 1
    assert sum(mux.legacy.stats.drops) == 0 and g.tun == []


def test_mux_a_legacy_datagram_from_a_tunnel_address_is_a_loop_and_teaches_nothing() -> None:
    """A legacy peer's datagram that came through a tunnel (from its tunnel address) goes to
    the default engine, which drops it as a loop: the legacy engine learns no path from it
    and uses none of its sequence, so the same datagram from the real address is delivered."""
    net, g, _r, lc, _v, mux, _relay, _client = build_gateway()
    captured: list[bytes] = []
    real = net.transmit
    net.transmit = lambda a, b, d: (b == G_EP and captured.append(d)) or real(a, b, d)  # type: ignore[method-assign]
    net.links[(L_EP, G_EP)].up = net.links[(L_EP, R_EP)].up = False
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    net.run(0.05)
    assert captured and g.tun == []
    mux.on_datagram(captured[0], ("10.17.16.1", 4000), 0, net.now)
    assert mux.v2.stats.drop_counts()["loop"] == 1 and g.tun == []
    mux.on_datagram(captured[0], L_EP, 0, net.now)
    assert len(g.tun) == 1


def test_mux_next_deadline_is_the_earlier_one() -> None:
    net, g, _r, lc, _v, mux, _relay, client = build_gateway()
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1"))  # DNS: one copy 100 ms later
    net.run(0.01)
    assert client.next_deadline() is not None
    deadline = mux.next_deadline()
    assert deadline is not None and deadline <= mux.v2.next_deadline()  # type: ignore[operator]
    net.run(0.2)
    assert client.stats.dup_copies_sent == 1
    assert len(g.tun) == 1  # the copy is a duplicate at G


_mux = build_gateway()[5]


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=1600),
    st.builds(lambda h, rest: codec.Ecb(codec.group_key(GROUP)).encrypt(lh.pack(h)) + rest,
              st.builds(lh.LegacyHeader, src=st.sampled_from([0, 1, 0x0101, 0x0102, 0x1001, 0x1002]),
                        dst=st.sampled_from([0, 0x0101, 0x0102, 0x1001, 0x1002]),
                        length=st.integers(0, 2047), t20=st.integers(0, 2**20 - 1),
                        seq=st.integers(0, 2**20 - 1), ttl=st.integers(0, 15), pi=st.integers(0, 15),
                        ptype=st.integers(0, 15)),
              st.binary(max_size=200)),
))
def test_mux_never_raises_on_random_datagrams(data: bytes) -> None:
    _mux.on_datagram(data, ("10.9.9.9", 9), 0, 1.0)
    _mux.legacy.on_datagram(data, ("10.9.9.9", 9), 0, 1.0)


def test_legacy_sender_never_emits_seq_16000() -> None:
    """A 6.1.2 receiver records seq 16000 one byte past its 2000-byte bitmap: we stop at 15999."""
    _net, _g, _r, _lc, _v, _mux, _relay, client = build_gateway()
    seqs = [client._next_seq(5.2) for _ in range(16002)]
    assert seqs[15999] is not None and seqs[15999][1] == 15999
    assert seqs[16000] is None and seqs[16001] is None


def test_legacy_datagram_from_a_peer_to_itself_is_not_relayed() -> None:
    net, _g, _r, lc, _v, mux, _relay, _client = build_gateway()
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    net.run(0.05)
    x = pid("16.1")
    grp = codec.Ecb(codec.group_key(GROUP))
    pair = codec.Ecb(codec.key_from_bytes(net.keys[x]))
    inner = udp_packet("0.0.16.1", "8.8.8.8")
    h = lh.pack(lh.LegacyHeader(src=x, dst=x, length=len(inner), t20=int(WALL + net.now) & 0xFFFFF,
                                seq=500, pi=5))
    sent: list[object] = []
    net.transmit = lambda a, b, d: sent.append(b) or True  # type: ignore[method-assign]
    mux.on_datagram(codec.protect(grp, pair, h) + codec.seal_body(pair, h, inner), ("192.0.2.50", 1), 0,
                    net.now)
    assert sent == [] and mux.legacy.stats.forwarded_packets == 0


def test_legacy_resync_delivers_an_old_datagram_but_moves_no_path() -> None:
    """After 30 s of silence an old datagram is accepted (6.1.2's resync); replayed from
    anywhere, it must not steer the peer's traffic to the replaying address."""
    net, _g, _r, lc, _v, mux, _relay, _client = build_gateway()
    captured: list[bytes] = []
    real = net.transmit

    def capture(a: tuple[str, int], b: tuple[str, int], d: bytes) -> bool:
        if b == G_EP:
            captured.append(d)
        return real(a, b, d)

    net.transmit = capture  # type: ignore[method-assign]
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    net.run(15)
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    net.run(31)
    attacker = ("198.51.100.7", 9999)
    mux.on_datagram(captured[0], attacker, 0, net.now)
    assert mux.legacy.stats.resyncs == 1
    sent: list[tuple[str, int]] = []
    net.transmit = lambda a, b, d: sent.append(b) or True  # type: ignore[method-assign]
    mux.legacy.send_packet(pid("16.1"), udp_packet("10.17.1.1", "10.17.16.1", sport=80, dport=4000),
                           net.now)
    assert sent and attacker not in sent, sent


def test_legacy_the_rest_of_a_replayed_capture_after_a_resync_steers_nothing() -> None:
    """The datagrams of a capture that follow the one that restarted the window are new to the
    restarted window: delivered, but behind the peer's clock, so they learn no path and do
    not set the clock back. The peer's own paths stay fresh and carry its traffic."""
    net, _g, _r, lc, _v, mux, _relay, _client = build_gateway()
    captured: list[bytes] = []
    real = net.transmit

    def capture(a: tuple[str, int], b: tuple[str, int], d: bytes) -> bool:
        if (a, b) == (L_EP, G_EP):
            captured.append(d)
        return real(a, b, d)

    net.transmit = capture  # type: ignore[method-assign]
    for _ in range(3):  # three datagrams a few seconds apart: 3 s, 6 s and 9 s old later on
        net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
        net.run(3.0)
    net.run(40)  # the client falls silent for longer than resync_after
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))  # then speaks once
    net.run(0.1)
    net.run(31)
    clock = mux.legacy.peers[pid("16.1")].last_t20
    attacker = ("198.51.100.7", 9999)
    delivered = mux.legacy.stats.delivered_packets
    for data in captured[:3]:
        mux.on_datagram(data, attacker, 0, net.now)
    assert mux.legacy.stats.resyncs == 1 and mux.legacy.stats.delivered_packets == delivered + 3
    peer = mux.legacy.peers[pid("16.1")]
    assert peer.last_t20 == clock
    assert all(p is None or p.addr != attacker for p in peer.paths)
    sent: list[tuple[str, int]] = []
    net.transmit = lambda a, b, d: sent.append(b) or True  # type: ignore[method-assign]
    mux.legacy.send_packet(pid("16.1"), udp_packet("10.17.1.1", "10.17.16.1", sport=80, dport=4000),
                           net.now)
    assert L_EP in sent and attacker not in sent, sent


def test_legacy_a_peer_whose_clock_stepped_back_is_delivered_and_keeps_its_paths() -> None:
    """A C node whose clock steps back by 60 s after 31 s of silence: its datagrams are
    delivered from the first on; they learn nothing until its clock passes the newest
    timestamp seen before, and its known path carries its traffic meanwhile."""
    net, g, _r, lc, _v, mux, _relay, _client = build_gateway()
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    net.run(31)
    peer = mux.legacy.peers[pid("16.1")]
    clock = peer.last_t20
    start_legacy(net, lc, {pid("1.1"), pid("1.2")}, forwarders=(pid("1.1"), pid("1.2")),
                 gateway=pid("1.1"), wall_offset=WALL - 60)
    delivered = len(g.tun)
    for _ in range(5):
        net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
        net.run(1.0)
    assert len(g.tun) == delivered + 5 and peer.last_t20 == clock
    sent: list[tuple[str, int]] = []
    real = net.transmit
    net.transmit = lambda a, b, d: sent.append(b) or real(a, b, d)  # type: ignore[method-assign]
    mux.legacy.send_packet(pid("16.1"), udp_packet("10.17.1.1", "10.17.16.1", sport=80, dport=4000),
                           net.now)
    assert L_EP in sent
    for _ in range(30):  # its clock passes the old newest timestamp: it learns again
        net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
        net.run(1.0)
    assert len(g.tun) == delivered + 35 and peer.last_t20 != clock


def test_mux_refuses_v2_datagrams_of_a_legacy_peer() -> None:
    """The default engine knows legacy peers' keys (for routing); a v2 node sealing with such a
    key (it is on every 6.1.2 node relaying for that peer) is dropped, not delivered."""
    net, g, _r, _lc, _v, mux, _relay, _client = build_gateway()
    attacker = ("203.0.113.9", 4444)
    a = net.add("A", "16.1", [attacker], static=False)  # the legacy peer's id and key
    net.link(attacker, G_EP)
    net.start(a, group=GROUP, gateway=pid("1.1"))
    net.run(1.0)
    packet = udp_packet("10.17.16.1", "10.17.1.1", payload=b"injected-via-v2", dport=80)
    net.inject_tun(a, packet)
    net.run(0.1)
    assert packet not in g.tun
    assert mux.v2.stats.delivered_packets == 0
    assert [p.addr for p in mux.v2.peers[pid("16.1")].paths.learned.values()] == []
    assert mux.v2.stats.drops[DropReason.UNKNOWN_PEER] > 0


def test_mux_takes_a_v2_header_between_its_v2_peers_as_v2_only() -> None:
    _net, g, _r, lc, v, mux, _relay, _client = build_gateway()

    def datagram(version: int = PROTOCOL_VERSION, ptype: int = PacketType.DATA, ttl: int = 3, pi: int = 0,
                 src: int = v.peer_id, dst: int = g.peer_id) -> bytes:
        header = HEADER.pack(version << 4 | ptype, 0, ttl, pi, src, dst, 1, 0)
        return header + bytes(OVERHEAD - len(header))

    assert mux.is_v2_shaped(datagram()) and mux.is_v2_shaped(datagram(ptype=PacketType.PROBE_REPLY))
    assert mux.is_v2_shaped(datagram(pi=15)) and mux.is_v2_shaped(datagram(ttl=MAX_TTL))
    assert not mux.is_v2_shaped(datagram(version=PROTOCOL_VERSION + 1))
    assert not mux.is_v2_shaped(datagram(ptype=PacketType.PROBE_REPLY + 1))
    assert not mux.is_v2_shaped(datagram(pi=16)) and not mux.is_v2_shaped(datagram(ttl=MAX_TTL + 1))
    assert not mux.is_v2_shaped(datagram(src=lc.peer_id))  # a legacy peer
    assert not mux.is_v2_shaped(datagram(dst=pid("99.9")))  # nobody we know
    assert not mux.is_v2_shaped(datagram()[:-1])  # shorter than a header and tag


def test_mux_timer_sends_the_legacy_engines_delayed_copies() -> None:
    net, g, _r, lc, _v, mux, _relay, _client = build_gateway()
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))  # G learns L's paths
    net.run(0.05)
    dns = udp_packet("10.17.1.1", "10.17.16.1", sport=4000, dport=53)
    net.inject_tun(g, dns)  # DNS: a copy 100 ms later
    net.run(0.05)
    assert mux.legacy.stats.dup_copies_sent == 0
    mux.on_timer(net.now + 0.2)
    assert mux.legacy.stats.dup_copies_sent > 0
    net.run(0.2)
    assert lc.tun == [dns]


def test_mux_a_datagram_shorter_than_a_v2_header_and_tag_is_malformed() -> None:
    net, _g, _r, _lc, _v, mux, _relay, _client = build_gateway()
    mux.on_datagram(bytes(OVERHEAD - 1), ("192.0.2.50", 1), 0, net.now)
    drops = mux.v2.stats.drop_counts()
    assert (drops["malformed"], drops["unknown_peer"], sum(mux.legacy.stats.drops)) == (1, 0, 0)


def test_mux_a_datagram_longer_than_any_is_malformed() -> None:
    net, _g, _r, _lc, _v, mux, _relay, _client = build_gateway()
    mux.on_datagram(bytes(MAX_DATAGRAM + 1), ("192.0.2.50", 1), 0, net.now)
    assert mux.v2.stats.drop_counts()["malformed"] == 1 and sum(mux.legacy.stats.drops) == 0


def test_legacy_relay_passes_a_datagram_on_with_its_ttl_one_less() -> None:
    net, _g, _r, lc, _v, _mux, relay, client = build_gateway()
    group = codec.Ecb(codec.group_key(GROUP))
    ttls: dict[str, list[tuple[tuple[str, int], int]]] = {"client": [], "relay": []}
    for name, engine in (("client", client), ("relay", relay)):
        out = engine.out
        original = out.send

        def send(port: int, addr: tuple[str, int], data: bytes, name: str = name, original=original) -> bool:
            plain = codec.open_header(group, data)
            assert plain is not None
            ttls[name].append((addr, lh.unpack(plain).ttl))
            return original(port, addr, data)

        out.send = send  # type: ignore[method-assign]
    net.inject_tun(lc, udp_packet("10.17.16.1", "10.17.1.1", dport=80))
    net.run(0.05)
    ttl = client.settings.ttl
    assert sorted(ttls["client"]) == [(G_EP, ttl), (R_EP, ttl)]
    assert ttls["relay"] == [(G_EP, ttl - 1)] and relay.stats.forwarded_packets == 1


def test_legacy_standalone_counts_each_tun_drop_once_and_sends_nothing() -> None:
    _net, _g, _r, _lc, _v, _mux, _relay, client = build_gateway()
    client.on_tun_packet(udp_packet("10.17.16.1", "10.17.99.9"), 1.0)  # no such peer
    client.on_tun_packet(udp_packet("10.17.16.9", "10.17.1.1"), 1.0)  # not our tunnel address
    client.on_tun_packet(b"\x60" + bytes(39), 1.0)  # IPv6
    drops = client.stats.drop_counts()
    assert (drops["no_route"], drops["foreign_source"], drops["not_ipv4"]) == (1, 1, 1)
    assert sum(client.stats.drops) == 3
    assert client.stats.sent_datagrams == 0 and client.peers[pid("1.1")].tx_packets == 0


def test_legacy_counts_what_it_sends_to_each_peer() -> None:
    net, _g, _r, lc, _v, _mux, _relay, client = build_gateway()
    packet = udp_packet("10.17.16.1", "10.17.1.1", dport=80)
    for _ in range(3):
        net.inject_tun(lc, packet)
    net.run(0.05)
    peer = client.peers[pid("1.1")]
    assert (peer.tx_packets, peer.tx_bytes) == (3, 3 * len(packet))


def test_legacy_relay_copies_a_dns_packet_it_passes_on() -> None:
    net, g, _r, lc, _v, _mux, relay, _client = build_gateway()
    dns = udp_packet("10.17.16.1", "10.17.1.1")  # DNS: the client and the relay each copy it
    net.inject_tun(lc, dns)
    net.run(0.3)
    assert relay.stats.forwarded_packets == 1 and relay.stats.dup_copies_sent == 1
    assert g.tun == [dns]


def test_legacy_sender_counts_the_packets_over_its_per_second_limit() -> None:
    _net, _g, _r, _lc, _v, _mux, _relay, client = build_gateway()
    packet = udp_packet("10.17.16.1", "10.17.1.1", dport=80)
    second = int(WALL + 5.0) - WALL  # the start of a second of the client's clock
    for _ in range(16002):
        client.on_tun_packet(packet, second)
    assert client.stats.seq_limit == 2 and client.stats.drop_counts()["legacy"] == 2
    assert client.peers[pid("1.1")].tx_packets == 16000


def test_legacy_a_silent_peer_with_a_static_address_is_still_sent_to() -> None:
    net, g, r, _lc, _v, mux, _relay, _client = build_gateway()
    net.run(mux.legacy.settings.peer_lifetime + 1.0)  # 1.2 sent nothing all along
    net.inject_tun(g, udp_packet("10.17.1.1", "10.17.1.2", dport=80))
    net.run(0.05)
    assert len(r.tun) == 1 and mux.legacy.stats.dead_peer == 0
