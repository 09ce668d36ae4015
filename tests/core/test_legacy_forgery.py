"""Legacy (6.1.2) datagrams built with chosen timestamps and keys, as a C node or an attacker
holding a capture or one peer's key would send them, against one LegacyEngine."""

from __future__ import annotations

import struct
from dataclasses import replace

import pytest

from alpaca.core.legacy import codec
from alpaca.core.legacy import header as lh
from alpaca.core.legacy.engine import LegacyEngine
from alpaca.core.legacy.peers import LegacyPeerSpec, LegacySettings

GROUP = "caonima"
NET = 0x0A110000  # 10.17
KEYS = {0x0101: "ac48f5f6be3cd479c6a3dbd8cfb1dc7f", 0x1001: "1f5c6281e4e3e0db7c57b74d2103e706",
        0x1002: "d7e27e3d7d3c2ed262076bc6a84e6681"}
WALL = 1_584_100_000.0
S, C1, C2 = 0x0101, 0x1001, 0x1002
C1_EP, C2_EP, ATTACKER = ("10.1.0.1", 6000), ("10.2.0.1", 7000), ("198.51.100.7", 9999)
DAY = 86400


class Out:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.datagrams: list[bytes] = []
        self.tun: list[bytes] = []

    def send(self, port: int, addr: tuple[str, int], data: bytes) -> bool:
        self.sent.append(addr)
        self.datagrams.append(data)
        return True

    def write_tun(self, packet: bytes, csum_partial: bool = False) -> bool:
        self.tun.append(packet)
        return True


def server() -> tuple[LegacyEngine, Out]:
    """Server 1.1 with clients 16.1 and 16.2 (no static addresses)."""
    specs = {p: LegacyPeerSpec(p, codec.key_from_text(k), None) for p, k in KEYS.items()}
    out = Out()
    settings = LegacySettings(self_id=S, net=NET, group=GROUP, peers=specs, wall_offset=WALL,
                              pad=False, dup_syn_dns=False)
    return LegacyEngine(settings, out, random_bytes=lambda n: bytes(n)), out


def ip_udp(src: int, dst: int) -> bytes:
    payload = b"hello-world-1234"
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 1, 0, 64, 17, 0,
                       bytes([10, 17, src >> 8, src & 255]), bytes([10, 17, dst >> 8, dst & 255]))
    return head + struct.pack("!HHHH", 4000, 80, 8 + len(payload), 0) + payload


def datagram(src: int, dst: int, at: float, seq: int = 0, key_of: int | None = None) -> bytes:
    """What ``src`` sends to ``dst`` at ``at`` (seconds from WALL), sealed with the pair key
    (the bigger id's) unless ``key_of`` names another."""
    inner = ip_udp(src, dst)
    h = lh.pack(lh.LegacyHeader(src=src, dst=dst, length=len(inner), t20=int(at + WALL) & 0xFFFFF,
                                seq=seq, rand=0x123, ttl=15, pi=0, si=True, di=True))
    pair = codec.Ecb(codec.key_from_text(KEYS[key_of if key_of is not None else max(src, dst)]))
    return codec.protect(codec.Ecb(codec.group_key(GROUP)), pair, h) + codec.seal_body(pair, h, inner)


def reached(srv: LegacyEngine, out: Out, peer: int, now: float) -> list[tuple[str, int]]:
    """Where a packet of ours to ``peer`` goes."""
    out.sent.clear()
    srv.send_packet(peer, ip_udp(S, peer), now)
    return list(out.sent)


def test_legacy_a_capture_a_week_old_is_not_taken_for_a_future_one() -> None:
    """The 20-bit time wraps every 12 days, so a week-old capture looks 5 days ahead: it was
    delivered on a live flow, took the client's path, and its clock kept the genuine client
    from learning its path back (downstream went to the attacker for good)."""
    srv, out = server()
    capture = datagram(C1, S, -7 * DAY, 5)
    for i in range(5):
        srv.on_datagram(datagram(C1, S, float(i)), C1_EP, 0, float(i))
    srv.on_datagram(capture, ATTACKER, 0, 5.0)
    assert len(out.tun) == 5 and srv.stats.replays == 1
    for i in range(6, 60):
        srv.on_datagram(datagram(C1, S, float(i)), C1_EP, 0, float(i))
    assert len(out.tun) == 59
    assert reached(srv, out, C1, 60.0) == [C1_EP]


def test_legacy_a_peer_back_from_a_long_silence_is_taken() -> None:
    """The bound on a jump ahead is the time passed here: two hours of silence, two hours on."""
    srv, out = server()
    srv.on_datagram(datagram(C1, S, 0.0), C1_EP, 0, 0.0)
    srv.on_datagram(datagram(C1, S, 7200.0), C2_EP, 0, 7200.0)  # it moved meanwhile
    assert len(out.tun) == 2
    assert reached(srv, out, C1, 7201.0) == [C2_EP]


def test_legacy_a_client_cannot_steer_the_paths_of_a_smaller_peer() -> None:
    """16.2 forges "16.1 -> 16.2" with its own key (the pair key is the bigger id's): it is
    authentic to a relay, and it used to move 16.1's path and clock (stamped 5 days ahead,
    16.1's own datagrams then looked like replays)."""
    srv, out = server()
    srv.on_datagram(datagram(C1, S, 0.0), C1_EP, 0, 0.0)
    srv.on_datagram(datagram(C2, S, 0.0), C2_EP, 0, 0.0)
    srv.on_datagram(datagram(C1, C2, 1.0 + 5 * DAY, key_of=C2), ATTACKER, 0, 1.0)
    assert reached(srv, out, C2, 1.5) == [C2_EP]  # relayed to 16.2, as a C node does
    for i in range(2, 60):
        srv.on_datagram(datagram(C1, S, float(i)), C1_EP, 0, float(i))
    assert reached(srv, out, C1, 60.0) == [C1_EP]


def test_legacy_an_hour_old_capture_on_a_new_flow_of_a_talking_peer_is_not_relayed() -> None:
    """Windows are per (src, dst): a flow seen for the first time started empty and took a
    capture of any age, although the sender's clock was known from its other flows."""
    srv, out = server()
    capture = datagram(C2, C1, -3600.0, 3)  # 16.2 -> 16.1 through us, an hour ago
    srv.on_datagram(datagram(C1, S, 0.0), C1_EP, 0, 0.0)
    for i in range(1, 40):  # 16.2 talks to us
        srv.on_datagram(datagram(C2, S, float(i)), C2_EP, 0, float(i))
    out.sent.clear()
    srv.on_datagram(capture, ATTACKER, 0, 40.0)
    assert out.sent == [] and srv.stats.replays == 1
    srv.on_datagram(datagram(C2, C1, 40.5), C2_EP, 0, 40.5)  # the genuine flow starts
    assert out.sent == [C1_EP]


def test_legacy_an_hour_old_capture_to_us_is_dropped_while_the_peer_talks_to_another() -> None:
    srv, out = server()
    capture = datagram(C2, S, -3600.0, 3)
    srv.on_datagram(datagram(C1, S, 0.0), C1_EP, 0, 0.0)
    for i in range(1, 40):  # 16.2 talks to 16.1 through us, with its own key
        srv.on_datagram(datagram(C2, C1, float(i)), C2_EP, 0, float(i))
    out.tun.clear()
    srv.on_datagram(capture, ATTACKER, 0, 40.0)
    assert out.tun == []


def test_legacy_a_reload_after_the_wall_clock_stepped_back_repeats_no_time_seq_pair() -> None:
    """The daemon gives a reload the wall clock's offset of that moment: 0.3 s less made the
    sender stamp seconds it had used, from seq 0 again (a receiver drops those as copies)."""
    srv, out = server()
    srv.on_datagram(datagram(C1, S, 10.0), C1_EP, 0, 10.0)
    for now in (10.5, 10.6, 11.1, 11.15):
        srv.send_packet(C1, ip_udp(S, C1), now)
    srv.reload(replace(srv.settings, wall_offset=srv.settings.wall_offset - 0.3))
    for now in (11.2, 11.4):
        srv.send_packet(C1, ip_udp(S, C1), now)
    group = codec.Ecb(codec.group_key(GROUP))
    pairs = [(h.t20, h.seq) for h in (lh.unpack(group.decrypt(d[:16])) for d in out.datagrams)]
    assert len(pairs) == 6 and len(set(pairs)) == 6, pairs


def test_legacy_a_capture_replayed_on_a_silent_flow_does_not_lock_the_sender_out() -> None:
    """The capture restarted the window an hour back; the sender's own next datagrams were
    then "too far ahead" and dropped as replays for as long as the attacker kept replaying
    (and for 30 s after), and after 60 s the server took the client for dead. Now a datagram
    on the sender's known clock restarts the window there."""
    srv, out = server()
    for i in range(5):
        srv.on_datagram(datagram(C1, S, float(i)), C1_EP, 0, float(i))
    for k in range(120):  # the flow silent 31 s, then a recording an hour old, at its pace
        now = 35.0 + k
        srv.on_datagram(datagram(C1, S, -3600.0 + k), ATTACKER, 0, now)
        before = len(out.tun)
        srv.on_datagram(datagram(C1, S, now, 1), C1_EP, 0, now + 0.5)
        assert len(out.tun) == before + 1, f"the sender's own datagram dropped at {now}"
    assert srv.stats.resyncs == 1 and srv.stats.replays == 119  # the capture: once, then refused
    assert reached(srv, out, C1, 155.0) == [C1_EP] and srv.stats.dead_peer == 0


@pytest.mark.parametrize("step", [60.0, -3600.0])
def test_legacy_a_sender_whose_clock_stepped_is_followed_there(step: float) -> None:
    """A C router that syncs its clock after the tunnel started (the C node takes any
    timestamp): its timestamps were out of reach of its known clock for good, so its path
    was never refreshed and, after 60 s, nothing was sent to it again (until our restart).
    Now its clock moves once the new timeline kept in step for resync_after (30 s) while
    nothing came on the old one for as long."""
    srv, out = server()
    for i in range(10):
        srv.on_datagram(datagram(C1, S, float(i)), C1_EP, 0, float(i))
    delivered = 0
    for i in range(10, 120):
        before = len(out.tun)
        srv.on_datagram(datagram(C1, S, i + step), C1_EP, 0, float(i))
        delivered += len(out.tun) > before
        if i == 75:
            assert reached(srv, out, C1, i + 0.5) == [C1_EP]
    assert delivered >= 120 - 41  # refused for resync_after, then delivered
    assert reached(srv, out, C1, 120.0) == [C1_EP] and srv.stats.dead_peer == 0
    assert srv.peers[C1].last_t20 == int(119 + step + WALL) & 0xFFFFF


def test_legacy_a_capture_replayed_while_the_sender_talks_never_moves_its_clock() -> None:
    srv, out = server()
    for i in range(5):
        srv.on_datagram(datagram(C1, S, float(i)), C1_EP, 0, float(i))
    for k in range(200):
        now = 35.0 + k
        srv.on_datagram(datagram(C1, S, -3600.0 + k), ATTACKER, 0, now)
        if k % 10 == 0:  # the sender itself, now and then
            srv.on_datagram(datagram(C1, S, now, 1), C1_EP, 0, now + 0.5)
    assert srv.peers[C1].last_t20 == int(225 + WALL) & 0xFFFFF
    assert reached(srv, out, C1, 235.0) == [C1_EP]


def test_legacy_a_holder_of_our_key_cannot_add_a_path_to_another_server() -> None:
    """Server 1.2 holds client 16.1's key (every smaller peer and relay of 16.1 does), so it
    can seal "1.1 -> 16.1". With path index 5 that filed 1.2's chosen address as a path of
    1.1, and 16.1 sent its traffic for 1.1 there too (sealed with the key 1.2 holds); so did
    30 s of them on one timeline, taken for the clock of 1.1 having stepped."""
    s1, s2, me = 0x0101, 0x0102, 0x1001
    s1_ep = ("192.0.2.1", 5000)
    keys = {s1: KEYS[s1], s2: "0123456789abcdef0123456789abcdef", me: KEYS[me]}
    addrs = {s1: s1_ep, s2: ("192.0.2.2", 5000), me: None}
    specs = {p: LegacyPeerSpec(p, codec.key_from_text(k), addrs[p]) for p, k in keys.items()}
    out = Out()
    node = LegacyEngine(LegacySettings(self_id=me, net=NET, group=GROUP, peers=specs, wall_offset=WALL,
                                       pad=False, dup_syn_dns=False), out, random_bytes=lambda n: bytes(n))
    forgeries = [5] * 33 + [0]  # on one timeline for longer than resync_after: no clock step
    for at, pi in enumerate(forgeries, start=1):
        inner = ip_udp(s1, me)
        h = lh.pack(lh.LegacyHeader(src=s1, dst=me, length=len(inner), t20=int(at + WALL) & 0xFFFFF,
                                    seq=0, rand=7, ttl=15, pi=pi, si=True, di=True))
        ours = codec.Ecb(codec.key_from_text(keys[me]))
        forged = codec.protect(codec.Ecb(codec.group_key(GROUP)), ours, h) + codec.seal_body(ours, h, inner)
        node.on_datagram(forged, ATTACKER, 0, float(at))
    out.sent.clear()
    node.send_packet(s1, ip_udp(me, s1), 40.0)
    assert out.sent == [s1_ep]
    assert len(out.tun) == len(forgeries)  # all delivered: only what they taught is refused


def test_legacy_a_late_datagram_does_not_let_captures_restart_a_live_flow() -> None:
    """The sender's clock was the timestamp of its *last* datagram that taught a path, not of
    its newest: one held back a second, then let through (new to the window), set it back a
    second, and captures of 10 s before were then "on its clock": each restarted the window,
    was delivered a second time, and took the sender's path."""
    srv, out = server()
    for i in range(14):  # 16.1 talks: seqs 0 and 1 every second
        for seq in (0, 1):
            srv.on_datagram(datagram(C1, S, float(i), seq), C1_EP, 0, i + 0.1 * seq)
    srv.on_datagram(datagram(C1, S, 12.0, 2), C1_EP, 0, 13.5)  # held back, then let through
    assert len(out.tun) == 29 and srv.peers[C1].last_t20 == int(13 + WALL) & 0xFFFFF
    for i in range(3, 13):  # captures of what was delivered 10 s ago and after, in order
        for seq in (0, 1):
            srv.on_datagram(datagram(C1, S, float(i), seq), ATTACKER, 0, 13.6)
    assert len(out.tun) == 29
    assert reached(srv, out, C1, 13.7) == [C1_EP]
