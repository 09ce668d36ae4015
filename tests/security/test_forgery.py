"""Forged, altered and malformed datagrams against engines on a virtual network.

Every case injects datagrams straight into ``Engine.on_datagram`` (the attacker's position:
anywhere on the path) and checks two things: the drop is counted under the right reason, and
nothing else in the engine moved (:func:`fingerprint`: paths, liveness, flows, windows,
delivery and relay counters).

Hop bytes (2 = ttl, 3 = pi) are not authenticated (docs/protocol.md section 4). What an
attacker can do with them, as asserted below: at an endpoint, any ttl/pi is delivered at most
once and never adds an address; at a relay, a raised ttl is relayed once (the relay's window
stops any loop) and a ttl of 0, or of 1 before another relay, is dropped *before* the replay
window (as is a copy whose rewritten source leaves no target), so an altered copy cannot use
up the counter of the genuine one.
"""

from __future__ import annotations

import os
import struct

import pytest

from alpaca.core.constants import HEADER_LEN, MAX_DATAGRAM, OVERHEAD, Flag, PacketType
from alpaca.core.crypto import KeyRing
from alpaca.core.header import HEADER, with_hop_fields
from alpaca.core.padding import PAD_TRAILER_LEN
from alpaca.core.probing import CHALLENGE_INTERVAL, PROBE, REPLY, ROAM_RETRY
from alpaca.core.routecache import LookupFailed
from alpaca.core.settings import DupPolicy
from tests.enginenet import (
    CLIENT1_EP,
    SERVER_EP,
    EngineNet,
    Node,
    ipv4,
    pid,
    server_and_two_clients,
    tunnel_ip,
)
from tests.security.conftest import drop_delta, drops, eng, fingerprint

S_EP, F_EP = ("10.0.0.1", 5000), ("10.0.0.2", 5000)
UP1, UP2 = ("10.1.0.1", 6000), ("10.2.0.1", 6000)
GW = "10.17.1.1"


def capture_into(node: Node) -> list[tuple[tuple[str, int], int, bytes]]:
    """Record every datagram ``node`` receives (source, local port, bytes), then handle it."""
    seen: list[tuple[tuple[str, int], int, bytes]] = []
    engine = eng(node)
    handle = engine.on_datagram

    def on_datagram(data: bytes, addr: tuple[str, int], port: int, now: float) -> None:
        seen.append((addr, port, data))
        handle(data, addr, port, now)

    engine.on_datagram = on_datagram  # type: ignore[method-assign]
    return seen


def network() -> tuple[EngineNet, Node, Node, Node]:
    """Server 1.1, clients 16.1 and 16.2 straight to it, both sending already."""
    net, s, c1, c2 = server_and_two_clients(seed=7)
    for c in (c1, c2):
        net.inject_tun(c, ipv4(tunnel_ip(c.peer_id), GW))
    net.run(0.1)
    return net, s, c1, c2


def data_from(seen: list[tuple[tuple[str, int], int, bytes]], src: int) -> bytes:
    return next(d for _, _, d in reversed(seen)
                if d[0] & 0x0F == PacketType.DATA and HEADER.unpack_from(d)[4] == src)


class Attack:
    """Inject datagrams into one engine and report what changed."""

    def __init__(self, net: EngineNet, target: Node) -> None:
        self.net, self.target = net, target

    def __call__(self, data: bytes, addr: tuple[str, int] = ("10.66.0.1", 4444)) -> dict[str, int]:
        engine = eng(self.target)
        before, state, tun = drops(engine), fingerprint(engine), len(self.target.tun)
        sent = self.target.sent
        engine.on_datagram(data, addr, 0, self.net.now)
        assert fingerprint(engine) == state, "unauthenticated input changed engine state"
        assert len(self.target.tun) == tun and self.target.sent == sent
        return drop_delta(before, drops(engine))


HEADER_REASONS = {
    "bad_version", "bad_type", "reserved_id", "from_self", "unknown_peer", "old_epoch", "bad_tag",
}


def test_forgery_every_flipped_bit_outside_the_hop_bytes_is_dropped_by_reason() -> None:
    net, s, c1, _ = network()
    seen = capture_into(s)
    net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW, payload=os.urandom(60)))
    net.run(0.1)
    genuine = data_from(seen, c1.peer_id)
    attack = Attack(net, s)
    for i in range(len(genuine)):
        if i in (2, 3):
            continue
        for bit in range(8):
            forged = bytearray(genuine)
            forged[i] ^= 1 << bit
            delta = attack(bytes(forged), UP1)
            assert sum(delta.values()) == 1, (i, bit, delta)
            (reason,) = delta
            if i == 1 or i >= 12:
                assert reason == "bad_tag", (i, bit, delta)  # flags, counter, ciphertext, tag
            else:
                assert reason in HEADER_REASONS, (i, bit, delta)
    assert drops(eng(s))["bad_tag"] >= 8 * (len(genuine) - 12)


def test_forgery_truncated_and_extended_datagrams_are_malformed_or_bad_tag() -> None:
    net, s, c1, _ = network()
    seen = capture_into(s)
    net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
    net.run(0.1)
    genuine = data_from(seen, c1.peer_id)
    attack = Attack(net, s)
    for n in range(len(genuine)):
        assert attack(genuine[:n], UP1) == {"malformed" if n < OVERHEAD else "bad_tag": 1}, n
    for extra in (b"\x00", os.urandom(16), os.urandom(MAX_DATAGRAM - len(genuine))):
        assert attack(genuine + extra, UP1) == {"bad_tag": 1}
    assert attack(genuine + os.urandom(MAX_DATAGRAM + 1 - len(genuine)), UP1) == {"malformed": 1}
    assert attack(os.urandom(65507), UP1) == {"malformed": 1}


def forge(group: str, keys: dict[int, bytes], src: int, dst: int, epoch: int, counter: int,
          payload: bytes, ptype: PacketType = PacketType.DATA, flags: int = 0) -> bytes:
    cipher = KeyRing(group, keys).cipher(src, dst, epoch)
    assert cipher is not None
    return cipher.seal(HEADER.pack((2 << 4) | ptype, flags, 15, 0, src, dst, epoch, counter), payload)


def current(net: EngineNet, s: Node, c: Node) -> tuple[int, int]:
    """(epoch, next unused counter) of the direction c -> s, as s sees it."""
    flow = eng(s).flows[(c.peer_id, s.peer_id)]
    return flow.epoch, flow.window.top + 1


def test_forgery_wrong_group_wrong_key_and_garbage_body_are_bad_tag() -> None:
    net, s, c1, _ = network()
    epoch, counter = current(net, s, c1)
    packet = ipv4(tunnel_ip(c1.peer_id), GW)
    right = net.keys[c1.peer_id]
    attack = Attack(net, s)
    assert attack(forge("other-group", {c1.peer_id: right}, c1.peer_id, s.peer_id, epoch, counter, packet),
                  UP1) == {"bad_tag": 1}
    assert attack(forge("test-group", {c1.peer_id: os.urandom(32)}, c1.peer_id, s.peer_id, epoch, counter,
                        packet), UP1) == {"bad_tag": 1}
    header = HEADER.pack(0x20, 0, 15, 0, c1.peer_id, s.peer_id, epoch, counter)
    for body in (os.urandom(16), os.urandom(100), bytes(1000)):
        assert attack(header + body, UP1) == {"bad_tag": 1}
    # A forged new epoch (the attacker hopes to reset the window): bad_tag, window untouched.
    forged = forge("test-group", {c1.peer_id: os.urandom(16)}, c1.peer_id, s.peer_id, epoch + 99, 0, packet)
    assert attack(forged, UP1) == {"bad_tag": 1}


def test_forgery_client_cannot_speak_for_another_client_or_a_server() -> None:
    """16.2 holds its own key only: it cannot make 1.1 accept traffic 'from' 16.1 or 'from' 1.2."""
    net, s, c1, c2 = network()
    mine = {c2.peer_id: net.keys[c2.peer_id]}
    epoch, counter = current(net, s, c1)
    attack = Attack(net, s)
    as_c1 = forge("test-group", {c1.peer_id: mine[c2.peer_id]}, c1.peer_id, s.peer_id, epoch, counter + 5,
                  ipv4(tunnel_ip(c1.peer_id), GW))
    assert attack(as_c1, UP2) == {"bad_tag": 1}
    assert attack(as_c1, UP1) == {"bad_tag": 1}
    as_new_epoch = forge("test-group", {c1.peer_id: mine[c2.peer_id]}, c1.peer_id, s.peer_id, epoch + 1, 0,
                         ipv4(tunnel_ip(c1.peer_id), GW))
    assert attack(as_new_epoch, UP2) == {"bad_tag": 1}
    # A "server" source: 16.2 forging 1.1 -> 16.1 towards 16.1 (pair key = 16.1's secret).
    to_c1 = forge("test-group", {c1.peer_id: mine[c2.peer_id]}, s.peer_id, c1.peer_id, 5000, 0,
                  ipv4(GW, tunnel_ip(c1.peer_id)))
    assert Attack(net, c1)(to_c1, S_EP) == {"bad_tag": 1}


@pytest.mark.parametrize("check", [True, False], ids=["inner_source_check on", "off"])
def test_forgery_a_client_cannot_send_from_a_subnet_routed_to_another_client(check: bool) -> None:
    """1.1 routes 192.168.1.0/24 via 16.1. 16.2, with its own key, sends packets from
    192.168.1.5: dropped as spoofed_source (strict reverse path), while 16.1 may. An
    address 1.1 routes outside the tunnel (203.0.113.9: the internet) is nobody's: it was
    taken from anyone, and the gateway forwarded such packets onto its uplink unmasqueraded
    (spoofed traffic to the internet from any client)."""
    net, s, c1, c2 = server_and_two_clients(seed=7)

    def routes(dst: str, src: str) -> str | None:
        return tunnel_ip(c1.peer_id) if dst.startswith("192.168.1.") else None

    net.start(s, resolver=routes, inner_source_check=check)
    net.run(2.0)
    for client, src, delivered in (
        (c2, "192.168.1.5", not check), (c1, "192.168.1.5", True), (c2, "203.0.113.9", not check),
        (c1, "203.0.113.9", not check),
    ):
        before, tun = drops(eng(s)), len(s.tun)
        net.inject_tun(client, ipv4(src, GW))
        net.run(0.1)
        assert len(s.tun) == tun + delivered, (client.name, src)
        assert drop_delta(before, drops(eng(s))) == ({} if delivered else {"spoofed_source": 1})


def test_forgery_icmp_errors_on_our_traffic_pass_from_a_router_routed_outside() -> None:
    """16.1 routes 198.18.0.1, a router past the server, outside the tunnel (local_routes).
    Its "time exceeded" (traceroute) and "fragmentation needed" (path MTU) about 16.1's own
    packets to the internet came through the server and were dropped as spoofed_source by
    the strict check. An ICMP error quoting a packet of 16.1 that went through the server
    passes; one about a packet that did not, one to another address (to be passed on: a peer
    could send one from any source through us), or anything else from that router, does not."""
    net, s, c1, _ = server_and_two_clients(seed=7)
    me = tunnel_ip(c1.peer_id)

    def routes(dst: str, src: str) -> str | None:
        return None if dst.startswith("198.18.0.") else GW

    def lan_behind_c1(dst: str, src: str) -> str | None:
        return me if dst.startswith("192.168.7.") else None

    net.start(c1, resolver=routes, gateway=pid("1.1"))
    net.start(s, resolver=lan_behind_c1)
    net.run(2.0)

    def icmp_error(kind: int, quoted_dst: str, to: str = me) -> bytes:
        quoted = ipv4(to, quoted_dst, proto=17, payload=b"")[:28]
        return ipv4("198.18.0.1", to, payload=bytes([kind, 0, 0, 0, 0, 0, 5, 0]) + quoted)

    for packet, delivered in (
        (icmp_error(11, "8.8.8.8"), True), (icmp_error(3, "8.8.8.8"), True),
        (icmp_error(11, "198.18.0.9"), False),  # a packet of ours that left outside the tunnel
        (icmp_error(11, "8.8.8.8", to="192.168.7.7"), False),  # not to us: to pass on
        (ipv4("198.18.0.1", me, payload=bytes([0, 0, 0, 0]) + b"x" * 32), False),  # an echo reply
        (ipv4("198.18.0.1", me, proto=17), False),
    ):
        before, tun = drops(eng(c1)), len(c1.tun)
        eng(s).on_tun_packet(packet, net.now)
        net.run(0.1)
        assert len(c1.tun) == tun + delivered, packet[20]
        assert drop_delta(before, drops(eng(c1))) == ({} if delivered else {"spoofed_source": 1})


def test_forgery_a_route_lookup_that_failed_drops_nothing_and_is_asked_again() -> None:
    """The host's netlink socket failed once (ENOBUFS): the strict source check took the
    failed lookup for "not routed back through the sender" and dropped the internet's reply,
    and the answer was cached for an hour. A failed lookup proves no forgery, and is not kept:
    the next packet asks again; a packet to send whose lookup failed has no route."""
    net, s, c1, _ = server_and_two_clients(seed=7)
    failing = [False]

    def routes(dst: str, src: str) -> str | None:
        if failing[0]:
            raise LookupFailed("No buffer space available")
        return GW

    net.start(c1, resolver=routes, gateway=pid("1.1"))
    net.run(2.0)
    me = tunnel_ip(c1.peer_id)
    for fail, src in ((True, "8.8.8.8"), (False, "8.8.8.8"), (False, "8.8.4.4")):
        failing[0] = fail
        before, tun = drops(eng(c1)), len(c1.tun)
        eng(s).on_tun_packet(ipv4(src, me), net.now)
        net.run(0.1)
        assert len(c1.tun) == tun + 1 and drop_delta(before, drops(eng(c1))) == {}
    assert eng(c1).routes.misses >= 3  # the failed lookup was not cached
    failing[0] = True
    before, sent = drops(eng(s)), len(s.tun)
    net.inject_tun(c1, ipv4(me, "1.1.1.1"))
    net.run(0.1)
    assert drop_delta(before, drops(eng(s))) == {} and drops(eng(c1))["no_route"] >= 1
    failing[0] = False
    net.inject_tun(c1, ipv4(me, "1.1.1.1"))
    net.run(0.1)
    assert len(s.tun) == sent + 1


def test_forgery_client_cannot_move_another_peers_paths_or_window() -> None:
    """16.2 sends, from its own address, datagrams claiming 16.1 with future epochs and counters."""
    net, s, c1, c2 = network()
    epoch, counter = current(net, s, c1)
    before = fingerprint(eng(s))
    for e, c in ((epoch, counter + 10**6), (epoch + 1, 0), (0xFFFFFFFF, 2**64 - 1), (epoch, counter)):
        forged = forge("test-group", {c1.peer_id: net.keys[c2.peer_id]}, c1.peer_id, s.peer_id, e, c,
                       ipv4(tunnel_ip(c1.peer_id), GW))
        eng(s).on_datagram(forged, UP2, 0, net.now)
    assert fingerprint(eng(s)) == before
    # 16.1 is unaffected: its next datagrams are delivered and its path is the real one.
    delivered = len(s.tun)
    net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
    net.run(0.1)
    assert len(s.tun) == delivered + 1
    assert {p.addr for p in eng(s).peers[c1.peer_id].paths.links()} == {UP1}


def test_forgery_a_client_cannot_move_another_peers_path_at_a_relay() -> None:
    """16.2 seals "16.1 -> 16.2" with its own key (the pair key is the bigger id's secret) and
    sends it to the server from an address of its choosing, under 16.1's slot and a new one.
    The server may relay it to 16.2, but 16.1's paths stay where 16.1 is."""
    net, s, c1, c2 = network()
    before = [(p.name, p.addr) for p in eng(s).peers[c1.peer_id].paths.links()]
    assert before, "16.1 has a learned path at the server"
    for pi, attacker in ((0, ("10.66.0.1", 4444)), (15, ("10.66.0.99", 4444))):
        forged = forge("test-group", {c2.peer_id: net.keys[c2.peer_id]}, c1.peer_id, c2.peer_id,
                       4000000000, pi, ipv4(tunnel_ip(c1.peer_id), tunnel_ip(c2.peer_id)))
        forged = forged[:3] + bytes([pi]) + forged[4:]  # the path index is a hop byte, not sealed
        eng(s).on_datagram(forged, attacker, 0, net.now)
    assert [(p.name, p.addr) for p in eng(s).peers[c1.peer_id].paths.links()] == before
    delivered = len(c1.tun)
    net.inject_tun(s, ipv4(GW, tunnel_ip(c1.peer_id)))
    net.run(0.1)
    assert len(c1.tun) == delivered + 1, "the server still reaches 16.1 where it is"


def test_forgery_a_datagram_from_a_peer_to_itself_is_not_relayed() -> None:
    """16.1 sends "16.1 -> 16.1" to the server: authentic, but nobody sends to itself through
    a relay; relayed, it would go out on every path of 16.1 (a reflection)."""
    net, s, c1, _ = network()
    engine = eng(s)
    sent = engine.stats.forwarded_packets
    forged = forge("test-group", {c1.peer_id: net.keys[c1.peer_id]}, c1.peer_id, c1.peer_id,
                   4000000000, 0, ipv4(tunnel_ip(c1.peer_id), tunnel_ip(c1.peer_id)))
    before = drops(engine)
    engine.on_datagram(forged, UP1, 0, net.now)
    assert drop_delta(before, drops(engine)) == {"malformed": 1}
    assert engine.stats.forwarded_packets == sent


def test_forgery_a_key_holder_cannot_lie_about_lengths() -> None:
    """A client's own authentic datagrams with a lying pad trailer or inner IPv4 length."""
    net, s, c1, _ = network()
    epoch, counter = current(net, s, c1)
    attack_keys = {c1.peer_id: net.keys[c1.peer_id]}
    packet = ipv4(tunnel_ip(c1.peer_id), GW)
    engine = eng(s)
    for i, trailer in enumerate((0, 1, len(packet) + PAD_TRAILER_LEN + 1, 0xFFFF)):
        padded = packet + struct.pack("!H", trailer)
        forged = forge("test-group", attack_keys, c1.peer_id, s.peer_id, epoch, counter + i, padded,
                       flags=Flag.PADDED)
        before = drops(engine)
        tun = len(s.tun)
        engine.on_datagram(forged, UP1, 0, net.now)
        assert drop_delta(before, drops(engine)) == {"malformed": 1} and len(s.tun) == tun
    # The inner IPv4 total length says 2047 bytes (the original's heap overflow, section 12.11):
    # dropped as malformed, nothing reaches the TUN device.
    liar = bytearray(packet)
    liar[2:4] = struct.pack("!H", 2047)
    before, tun = drops(engine), len(s.tun)
    engine.on_datagram(forge("test-group", attack_keys, c1.peer_id, s.peer_id, epoch, counter + 10,
                             bytes(liar)), UP1, 0, net.now)
    assert drop_delta(before, drops(engine)) == {"malformed": 1} and len(s.tun) == tun
    # Unknown flags bits and types from a key holder: types are checked, flags are ignored.
    before = drops(engine)
    engine.on_datagram(forge("test-group", attack_keys, c1.peer_id, s.peer_id, epoch, counter + 11,
                             b"\x00" * 3, ptype=PacketType.PROBE), UP1, 0, net.now)
    assert drop_delta(before, drops(engine)) == {"malformed": 1}


# --------------------------------------------------------------------------- hop bytes
def test_forgery_rewritten_ttl_or_pi_at_an_endpoint_delivers_once_and_learns_no_address() -> None:
    net, s, c1, _ = network()
    seen = capture_into(s)
    engine = eng(s)
    for ttl, pi in ((0, 0), (255, 15), (1, 7)):
        net.inject_tun(c1, ipv4(tunnel_ip(c1.peer_id), GW))
        net.run(0.1)
        genuine = data_from(seen, c1.peer_id)
        delivered = len(s.tun)
        addresses = {p.addr for p in engine.peers[c1.peer_id].paths.links()}
        for _ in range(3):
            engine.on_datagram(with_hop_fields(genuine, ttl, pi), UP1, 0, net.now)
        assert len(s.tun) == delivered  # the genuine copy came first: the rest are duplicates
        assert {p.addr for p in engine.peers[c1.peer_id].paths.links()} == addresses
    # An out-of-range pi is malformed before any state is touched.
    assert Attack(net, s)(with_hop_fields(genuine, 15, 16), UP1) == {"malformed": 1}


def relay_network() -> tuple[EngineNet, Node, Node, Node]:
    """Client 16.1 -> forwarder 1.2 -> server 1.1 (the client's only forwarder)."""
    net = EngineNet(seed=3)
    s = net.add("S", "1.1", [S_EP])
    f = net.add("F", "1.2", [F_EP])
    c = net.add("C", "16.1", [UP1, UP2], static=False)
    net.link(UP1, F_EP)
    net.link(UP2, F_EP)
    net.link(F_EP, S_EP)
    net.start(s)
    net.start(f)
    net.start(c, resolver=lambda dst, src: GW, forwarders=(pid("1.2"),), gateway=pid("1.1"))
    net.run(3.0)
    return net, s, f, c


def test_forgery_raised_ttl_is_relayed_once_and_cannot_loop() -> None:
    net, s, f, c = relay_network()
    seen = capture_into(f)
    net.inject_tun(c, ipv4(tunnel_ip(c.peer_id), "8.8.8.8"))
    net.run(0.1)
    genuine = data_from(seen, c.peer_id)
    forwarded, delivered = eng(f).stats.forwarded_packets, len(s.tun)
    for _ in range(5):
        eng(f).on_datagram(with_hop_fields(genuine, 255, 0), UP1, 0, net.now)
        net.run(0.05)
    assert eng(f).stats.forwarded_packets == forwarded and len(s.tun) == delivered


def test_forgery_zeroed_ttl_on_one_path_does_not_kill_the_copy_on_the_other() -> None:
    """An attacker on one uplink zeroes the ttl of what it relays; the copy on the other uplink,
    same counter, must still be relayed (ttl 0 is dropped before the relay's replay window)."""
    net, s, f, c = relay_network()
    seen = capture_into(f)
    net.inject_tun(c, ipv4(tunnel_ip(c.peer_id), "8.8.8.8"))
    net.run(0.1)
    first = data_from(seen, c.peer_id)
    epoch, counter = HEADER.unpack_from(first)[6:8]
    # The next datagram the client will send, sealed by the client itself.
    datagram = forge("test-group", {c.peer_id: net.keys[c.peer_id]}, c.peer_id, s.peer_id, epoch,
                     counter + 1000, ipv4(tunnel_ip(c.peer_id), "8.8.4.4"))
    before_state, before = fingerprint(eng(f)), drops(eng(f))
    eng(f).on_datagram(with_hop_fields(datagram, 0, 0), UP1, 0, net.now)  # the attacker's copy first
    assert drop_delta(before, drops(eng(f))) == {"ttl_expired": 1}
    assert fingerprint(eng(f)) == before_state
    delivered = len(s.tun)
    eng(f).on_datagram(datagram, UP2, 0, net.now)  # the genuine copy, from the other uplink
    net.run(0.1)
    assert len(s.tun) == delivered + 1


def two_uplinks_through(n_relays: int) -> tuple[EngineNet, Node, list[Node], Node]:
    """Client 16.1 with two uplinks (UP1 faster) to relay 1.2, then relays 1.3... in a row up
    to server 1.1; every packet goes on both uplinks (duplicate-send, one copy)."""
    net = EngineNet(seed=5)
    s = net.add("S", "1.1", [S_EP])
    eps = [(f"10.0.0.{i + 2}", 5000) for i in range(n_relays)]
    relays = [net.add(f"F{i}", f"1.{i + 2}", [ep]) for i, ep in enumerate(eps)]
    c = net.add("C", "16.1", [UP1, UP2], static=False)
    net.link(UP1, eps[0], delay=0.005)
    net.link(UP2, eps[0], delay=0.02)
    for a, b in zip(eps, [*eps[1:], S_EP], strict=True):
        net.link(a, b)
    net.start(s)
    for i, relay in enumerate(relays):
        net.start(relay, forwarders=(relays[i + 1].peer_id,) if i + 1 < n_relays else ())
    net.start(c, resolver=lambda dst, src: GW, forwarders=(pid("1.2"),), gateway=pid("1.1"),
              dup_policy=DupPolicy.ALL, dup_copies=1)
    net.run(3.0)
    return net, s, relays, c


@pytest.mark.parametrize("attack", ["ttl 1", "source rewritten to the next hop"])
def test_forgery_a_copy_the_relay_cannot_send_on_does_not_use_up_the_counter(attack: str) -> None:
    """An attacker on the client's faster uplink alters every DATA datagram there, so that the
    relay cannot send it on: ttl 1 with two relays in a row (the second would drop it), or
    the UDP source rewritten to the relay's next hop (split horizon). The relay must drop
    that copy *before* its replay window: the genuine copy on the other uplink still goes
    through, every time."""
    net, s, relays, c = two_uplinks_through(2 if attack == "ttl 1" else 1)
    first = relays[0]
    real = net.transmit

    def tap(a: tuple[str, int], b: tuple[str, int], data: bytes) -> bool:
        if (a, b) == (UP1, first.endpoints[0]) and data[0] & 0x0F == PacketType.DATA:
            if attack == "ttl 1":
                return real(a, b, with_hop_fields(data, 1, data[3]))
            nxt = (relays[1].endpoints[0] if len(relays) > 1 else S_EP)
            if (nxt, b) not in net.links:
                net.link(nxt, b)
            return real(nxt, b, data)
        return real(a, b, data)

    net.transmit = tap  # type: ignore[method-assign]
    before = len(s.tun)
    for _ in range(20):
        net.inject_tun(c, ipv4(tunnel_ip(c.peer_id), "8.8.8.8"))
        net.run(0.05)
    net.run(1.0)
    assert len(s.tun) - before == 20
    dropped = drops(eng(first))
    assert dropped["ttl_expired" if attack == "ttl 1" else "no_path"] >= 20
    assert dropped["duplicate"] == 0  # the genuine copies were new to the relay


@pytest.mark.parametrize("f0_to_f1", ["from its static address", "from another port"])
def test_forgery_ttl_1_downstream_to_a_client_behind_two_relays_does_not_use_up_the_counter(
        f0_to_f1: str) -> None:
    """S(1.1) -> F1(1.3) -> F0(1.2) -> C(16.1): F1 knows C at F0's address only. An attacker
    who sees S -> F1 injects a copy of each DATA datagram with ttl 1 ahead of it: F1 took C's
    path at F0 for C itself, sent the copy on with ttl 0 (F0 drops it) and marked the counter,
    so the genuine copy was a duplicate: nothing reached C. F0's address is a relay's by its
    static address, or by F0's confirmed path there (C's replies confirm C's path there too)."""
    net = EngineNet(seed=5)
    f0_ep, f1_ep, f0_other = ("10.0.0.2", 5000), ("10.0.0.3", 5000), ("10.0.9.2", 5001)
    f0_eps = [f0_ep] if f0_to_f1 == "from its static address" else [f0_ep, f0_other]
    s, f0, f1 = net.add("S", "1.1", [S_EP]), net.add("F0", "1.2", f0_eps), net.add("F1", "1.3", [f1_ep])
    c = net.add("C", "16.1", [UP1], static=False)
    net.link(UP1, f0_ep)
    net.link(f0_eps[-1], f1_ep)
    net.link(f1_ep, S_EP)
    net.start(s)
    net.start(f1)
    net.start(f0, forwarders=(f1.peer_id,))
    net.start(c, forwarders=(f0.peer_id,), gateway=s.peer_id)
    net.run(3.0)
    real = net.transmit

    def tap(a: tuple[str, int], b: tuple[str, int], data: bytes) -> bool:
        if (a, b) == (S_EP, f1_ep) and data[0] & 0x0F == PacketType.DATA:
            real(a, b, with_hop_fields(data, 1, data[3]))  # the attacker's copy, first
        return real(a, b, data)

    net.transmit = tap  # type: ignore[method-assign]
    before = len(c.tun)
    for _ in range(20):
        net.inject_tun(s, ipv4("8.8.8.8", tunnel_ip(c.peer_id)))
        net.run(0.3)
    assert len(c.tun) - before == 20
    assert drops(eng(f1))["ttl_expired"] >= 20 and drops(eng(f1))["duplicate"] == 0


@pytest.mark.parametrize("size", [OVERHEAD - 1, OVERHEAD, HEADER_LEN + 17, 200, MAX_DATAGRAM])
def test_forgery_random_bytes_of_any_size_change_nothing(size: int) -> None:
    net, s, _, _ = network()
    attack = Attack(net, s)
    for _ in range(200):
        delta = attack(os.urandom(size), UP1)
        assert sum(delta.values()) == 1


def test_forgery_a_spoofed_source_address_gets_probes_never_traffic() -> None:
    """An on-path attacker rewrites the source address of one fresh datagram of 16.1 to a
    victim's (it reaches the server first). The server files the victim under a new path, but
    only a probe answered from there would confirm it: the victim gets a few probes, none of
    the traffic the server sends to every live path of 16.1."""
    net, s, c1, _ = network()
    victim = ("10.66.0.7", 5555)
    to_victim: list[bytes] = []
    out = eng(s).out
    send = out.send

    def spy(port: int, addr: tuple[str, int], data: bytes) -> bool:
        if addr == victim:
            to_victim.append(data)
            return True
        return send(port, addr, data)

    out.send = spy  # type: ignore[method-assign]
    epoch, counter = current(net, s, c1)
    fresh = forge("test-group", {c1.peer_id: net.keys[c1.peer_id]}, c1.peer_id, s.peer_id, epoch,
                  counter + 100, ipv4(tunnel_ip(c1.peer_id), GW))
    eng(s).on_datagram(fresh[:3] + bytes([7]) + fresh[4:], victim, 0, net.now)
    spoofed = eng(s).peers[c1.peer_id].paths.match(0, victim)
    assert spoofed is not None and not spoofed.up
    delivered = len(c1.tun)
    for _ in range(50):
        net.inject_tun(s, ipv4(GW, tunnel_ip(c1.peer_id)))
        net.run(0.1)
    assert len(c1.tun) == delivered + 50
    kinds = [d[0] & 0x0F for d in to_victim]
    assert kinds and set(kinds) == {PacketType.PROBE}
    settings = eng(s).settings  # re-probed while it heard from it lately, then in probe rounds
    assert len(kinds) <= 1 + settings.path_timeout / CHALLENGE_INTERVAL + 5.0 / settings.probe_interval
    assert not spoofed.up and not spoofed.confirmed


def spy_on(node: Node, addr: tuple[str, int]) -> list[int]:
    """Packet types ``node`` sends to ``addr`` (which then receives nothing)."""
    seen: list[int] = []
    out = eng(node).out
    send = out.send

    def spy(port: int, dst: tuple[str, int], data: bytes) -> bool:
        if dst == addr:
            seen.append(data[0] & 0x0F)
            return True
        return send(port, dst, data)

    out.send = spy  # type: ignore[method-assign]
    return seen


def test_forgery_a_spoofed_source_in_a_confirmed_slot_moves_nothing() -> None:
    """The attacker rewrites only the source address (pi left alone): 16.1's confirmed path in
    that slot stays where 16.1 answers; the victim is a candidate, gets a probe, no traffic."""
    net, s, c1, _ = network()
    victim = ("10.66.0.7", 5555)
    to_victim = spy_on(s, victim)
    paths = eng(s).peers[c1.peer_id].paths
    [path] = paths.learned.values()
    assert path.confirmed and path.up
    epoch, counter = current(net, s, c1)
    fresh = forge("test-group", {c1.peer_id: net.keys[c1.peer_id]}, c1.peer_id, s.peer_id, epoch,
                  counter + 100, ipv4(tunnel_ip(c1.peer_id), GW))
    eng(s).on_datagram(fresh, victim, 0, net.now)
    assert [p.addr for p in paths.learned.values()] == [path.addr] and path.up
    delivered = len(c1.tun)
    for _ in range(20):
        net.inject_tun(s, ipv4(GW, tunnel_ip(c1.peer_id)))
    net.run(1.0)
    assert len(c1.tun) == delivered + 20
    # probes only: at round-trip pace at most, while 16.1's own address is quiet
    assert to_victim.count(PacketType.DATA) == 0
    assert 1 <= to_victim.count(PacketType.PROBE) <= 1 + 1.0 / ROAM_RETRY
    assert paths.learned[(path.pi, path.port)] is path and path.addr != victim


def test_forgery_a_raced_probe_reply_confirms_only_where_the_probe_went() -> None:
    """The attacker re-sends one of 16.1's probe replies from its own address before the real
    one lands: the answer proves the address the probe went to, not the one it came from."""
    net, s, c1, _ = network()
    attacker = ("10.66.0.7", 5555)
    to_attacker = spy_on(s, attacker)
    raced: list[bool] = []
    transmit = net.transmit

    def tap(src: tuple[str, int], dst: tuple[str, int], data: bytes) -> bool:
        if (src, dst) == (CLIENT1_EP, SERVER_EP) and data[0] & 0x0F == PacketType.PROBE_REPLY and not raced:
            eng(s).on_datagram(data, attacker, 0, net.now)  # the attacker's copy lands first
            paths = eng(s).peers[c1.peer_id].paths
            raced.append(all(p.addr == CLIENT1_EP for p in paths.learned.values()))
            for _ in range(20):  # the server's traffic for 16.1 right then
                eng(s).on_tun_packet(ipv4(GW, tunnel_ip(c1.peer_id)), net.now)
            return True  # and the genuine reply is lost
        return transmit(src, dst, data)

    net.transmit = tap  # type: ignore[method-assign]
    net.run(3.0)
    assert raced == [True]
    assert to_attacker.count(PacketType.DATA) == 0


def test_forgery_a_key_holder_cannot_confirm_an_address_it_does_not_receive_at() -> None:
    """A compromised client reads the ids of the probes sent to it (sealed with its own key).
    Sequential ids would let it answer, unseen, the probe sent to a victim's address it
    claims, and move its traffic there; the ids are masked with random bytes."""
    net, s, c1, _ = server_and_two_clients()
    server, client = eng(s), eng(c1)
    server.random_bytes = os.urandom
    seen: list[int] = []
    transmit = net.transmit

    def tap(src: tuple[str, int], dst: tuple[str, int], data: bytes) -> bool:
        if (src, dst) == (SERVER_EP, CLIENT1_EP) and data[0] & 0x0F == PacketType.PROBE:
            fields = HEADER.unpack_from(data)
            cipher = client.keys.cipher(fields[4], fields[5], fields[6])
            assert cipher is not None
            plain = cipher.open(data)
            assert plain is not None
            seen.append(PROBE.unpack(plain)[0])
        return transmit(src, dst, data)

    net.transmit = tap  # type: ignore[method-assign]
    net.run(3.0)
    assert len(seen) >= 2
    victim = ("192.0.2.77", 53)
    slot = next(iter(server.peers[c1.peer_id].paths.learned.values()))
    to_server = client.peers[s.peer_id]
    server.on_datagram(client.seal(to_server, PacketType.DATA, 0,
                                   ipv4(tunnel_ip(c1.peer_id), "10.17.1.1"), 15, 0), victim, 0, net.now)
    for guess in range(max(seen) - 64, max(seen) + 64):
        reply = REPLY.pack(guess & 0xFFFFFFFF, server.epoch, 0)
        server.on_datagram(client.seal(to_server, PacketType.PROBE_REPLY, 0, reply, 15, 0),
                           CLIENT1_EP, 0, net.now)
    assert slot.addr == CLIENT1_EP and slot.up
