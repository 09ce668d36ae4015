"""alpaca.core.offload: ones' complement sums, partial checksums, TSO split and GRO coalesce.

Every expectation is computed here, independently of the module: an RFC 1071 sum taken word
by word, IPv4/TCP/UDP builders, and a kernel-style TSO frame (virtio_net_hdr + one IPv4/TCP
super-packet whose TCP checksum field holds the folded, non-inverted pseudo-header sum, as
Linux leaves it for CHECKSUM_PARTIAL). ``HYPOTHESIS_PROFILE=long`` runs more examples.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alpaca.core import offload

_LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
PROPS = settings(max_examples=2000 if _LONG else 100, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

VNET = struct.Struct("=BBHHHH")
FIN, SYN, RST, PSH, ACK, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x80
SRC, DST = bytes([10, 17, 0, 1]), bytes([192, 168, 7, 9])
TS = b"\x01\x01\x08\x0a" + struct.pack("!II", 123456, 654321)  # NOP NOP timestamp: 12 bytes


# ----------------------------------------------------------------- reference helpers
def rsum(data: bytes) -> int:
    """RFC 1071: 16-bit big-endian words added with end-around carry."""
    data = bytes(data) + b"\0" * (len(data) & 1)
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def pseudo(packet: bytes, length: int) -> bytes:
    return packet[12:20] + struct.pack("!BBH", 0, packet[9], length)


def ihl_of(packet: bytes) -> int:
    return (packet[0] & 0x0F) * 4


def ip_ok(packet: bytes) -> bool:
    return rsum(packet[:ihl_of(packet)]) == 0xFFFF


def l4_ok(packet: bytes) -> bool:
    ihl = ihl_of(packet)
    return rsum(pseudo(packet, len(packet) - ihl) + packet[ihl:]) == 0xFFFF


def pseudo_field(packet: bytes, length: int) -> int:
    """What Linux leaves in the L4 checksum field of a CHECKSUM_PARTIAL packet."""
    return rsum(pseudo(packet, length))


def field(packet: bytes, at: int) -> int:
    return int.from_bytes(packet[at:at + 2], "big")


def ipv4(proto: int, l4: bytes, *, ip_id: int = 1, ttl: int = 64, tos: int = 0, frag: int = 0x4000,
         ip_options: bytes = b"") -> bytes:
    ihl = 20 + len(ip_options)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl // 4, tos, ihl + len(l4), ip_id, frag, ttl, proto, 0,
                      SRC, DST) + ip_options
    return hdr[:10] + struct.pack("!H", ~rsum(hdr) & 0xFFFF) + hdr[12:] + l4


def with_l4_csum(packet: bytes, offset: int, partial: bool) -> bytes:
    ihl = ihl_of(packet)
    at = ihl + offset
    packet = packet[:at] + b"\0\0" + packet[at + 2:]
    length = len(packet) - ihl
    value = pseudo_field(packet, length) if partial else ~rsum(pseudo(packet, length) + packet[ihl:]) & 0xFFFF
    return packet[:at] + struct.pack("!H", value) + packet[at + 2:]


def tcp(payload: bytes = b"", *, seq: int = 1000, ack: int = 5000, flags: int = ACK, options: bytes = b"",
        window: int = 512, sport: int = 40000, partial: bool = True, **ip: int | bytes) -> bytes:
    head = struct.pack("!HHIIBBHHH", sport, 443, seq, ack, (20 + len(options)) // 4 << 4, flags, window, 0, 0)
    return with_l4_csum(ipv4(6, head + options + payload, **ip), 16, partial)  # type: ignore[arg-type]


def udp(payload: bytes, *, partial: bool = True) -> bytes:
    return with_l4_csum(ipv4(17, struct.pack("!HHHH", 5353, 53, 8 + len(payload), 0) + payload), 6, partial)


def tso_frame(payload: bytes, mss: int, *, seq: int = 1000, ip_id: int = 1, flags: int = ACK,
              options: bytes = b"", ecn: bool = False) -> bytes:
    packet = tcp(payload, seq=seq, flags=flags, options=options, ip_id=ip_id)
    gso = offload.GSO_TCPV4 | (offload.GSO_ECN if ecn else 0)
    return VNET.pack(offload.NEEDS_CSUM, gso, 40 + len(options), mss, 20, 16) + packet


def payload_bytes(n: int, salt: int = 0) -> bytes:
    """Deterministic, non-periodic bytes (a moved or repeated chunk cannot go unnoticed)."""
    return random.Random(salt * 1_000_003 + n).randbytes(n)


def flatten(iov: Sequence[bytes | bytearray | memoryview]) -> bytes:
    """The IP packet a write carries (everything after the virtio-net header)."""
    return b"".join(bytes(part) for part in iov[1:])


def tcp_payload(packet: bytes) -> bytes:
    ihl = ihl_of(packet)
    return packet[ihl + (packet[ihl + 12] >> 4) * 4:]


# ----------------------------------------------------------------- ones_sum, partial_layout
@PROPS
@given(st.binary(max_size=3001))
def test_ones_sum_matches_rfc1071(data: bytes) -> None:
    assert offload.ones_sum(data) == rsum(data)
    assert offload.ones_sum(memoryview(data)) == rsum(data)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 1499, 1500])
@pytest.mark.parametrize("byte", [0x00, 0xFF])
def test_ones_sum_constant_data(n: int, byte: int) -> None:
    data = bytes([byte]) * n
    assert offload.ones_sum(data) == rsum(data)


def test_ones_sum_nonzero_data_never_sums_to_zero() -> None:
    assert offload.ones_sum(b"\x12\x34\xed\xcb") == rsum(b"\x12\x34\xed\xcb") == 0xFFFF
    assert offload.ones_sum(b"\xff\xff\xff\xff\x00") == 0xFFFF


def test_partial_layout() -> None:
    assert offload.partial_layout(tcp(b"x")) == (20, 16)
    assert offload.partial_layout(udp(b"x")) == (20, 6)
    assert offload.partial_layout(tcp(b"x", ip_options=b"\x01\x01\x01\x00")) == (24, 16)
    assert offload.partial_layout(ipv4(1, b"\x08\0\0\0\0\0\0\0")) is None  # ICMP
    assert offload.partial_layout(b"\x60" + bytes(59)) is None  # IPv6
    assert offload.partial_layout(tcp(b"x")[:37]) is None  # checksum field cut off
    assert offload.partial_layout(bytes(19)) is None


# ----------------------------------------------------------------- completing checksums
@pytest.mark.parametrize("make", [lambda p: tcp(p), lambda p: tcp(p, options=TS), lambda p: udp(p),
                                  lambda p: tcp(p, ip_options=b"\x01\x01\x01\x00")])
@pytest.mark.parametrize("n", [0, 1, 2, 1399])
def test_complete_partial_gives_valid_checksum(make: Callable[[bytes], bytes], n: int) -> None:
    packet = make(payload_bytes(n))
    done = offload.complete_partial(packet)
    assert done is not None and len(done) == len(packet)
    assert l4_ok(done) and not l4_ok(packet)
    layout = offload.partial_layout(packet)
    assert layout is not None
    start, offset = layout
    assert done[:start + offset] == packet[:start + offset]
    assert done[start + offset + 2:] == packet[start + offset + 2:]


def test_complete_partial_udp_zero_becomes_ffff() -> None:
    # Pick the last payload word so that the completed checksum would be 0.
    base = udp(payload_bytes(40) + b"\0\0")
    word = ~rsum(base[20:]) & 0xFFFF
    packet = base[:-2] + struct.pack("!H", word)
    assert rsum(packet[20:]) == 0xFFFF  # field (pseudo sum) + data: ~ of it is 0
    done = offload.complete_partial(packet)
    assert done is not None and field(done, 26) == 0xFFFF and l4_ok(done)
    # TCP has no such rule: a 0 (or 0xFFFF) checksum is valid either way.
    base = tcp(payload_bytes(40) + b"\0\0")
    packet = base[:-2] + struct.pack("!H", ~rsum(base[20:]) & 0xFFFF)
    done = offload.complete_partial(packet)
    assert done is not None and l4_ok(done)


def test_complete_partial_refuses_non_tcp_udp() -> None:
    assert offload.complete_partial(ipv4(1, b"\x08\0\0\0\0\0\0\0" + bytes(32))) is None
    assert offload.complete_partial(b"\x60" + bytes(79)) is None


# ----------------------------------------------------------------- split: TSO
def check_segments(segments: list[bytes], payload: bytes, mss: int, *, seq: int, ip_id: int, flags: int,
                   options: bytes) -> None:
    hl = 40 + len(options)
    assert len(segments) == -(-len(payload) // mss)
    for index, seg in enumerate(segments):
        first, last = index == 0, index == len(segments) - 1
        size = min(mss, len(payload) - index * mss)
        assert len(seg) == hl + size
        assert field(seg, 2) == len(seg)
        assert field(seg, 4) == (ip_id + index) & 0xFFFF
        assert ip_ok(seg)
        assert struct.unpack_from("!I", seg, 24)[0] == (seq + index * mss) & 0xFFFFFFFF
        got = seg[33]
        assert got & ACK
        assert bool(got & CWR) == (first and bool(flags & CWR))
        assert bool(got & FIN) == (last and bool(flags & FIN))
        assert bool(got & PSH) == (last and bool(flags & PSH))
        assert seg[40:hl] == options
        assert field(seg, 36) == pseudo_field(seg, len(seg) - 20)
        assert l4_ok(offload.complete_checksum(seg, 20, 16))
    assert b"".join(seg[hl:] for seg in segments) == payload


@pytest.mark.parametrize(("n", "mss", "flags", "options", "ecn"), [
    (10000, 1448, ACK | PSH, b"", False),
    (10000, 1436, ACK | PSH | FIN, TS, False),  # with the timestamp option
    (1360 * 8, 1360, ACK | PSH | FIN, b"", False),  # exact multiple
    (700, 1360, ACK | PSH | FIN | CWR, TS, True),  # smaller than mss: one segment
    (65535 - 52, 1388, ACK | CWR, TS, True),  # largest IPv4 super-packet
])
def test_split_tso(n: int, mss: int, flags: int, options: bytes, ecn: bool) -> None:
    payload = payload_bytes(n, salt=3)
    got = offload.split(tso_frame(payload, mss, seq=77, ip_id=9, flags=flags, options=options, ecn=ecn))
    assert got is not None
    segments, partial = got
    assert partial is True
    check_segments(segments, payload, mss, seq=77, ip_id=9, flags=flags, options=options)


def test_segment_tcp4_wraps_id_and_seq() -> None:
    payload = payload_bytes(5000)
    seq = 2**32 - 3000
    segments = offload.segment_tcp4(tcp(payload, seq=seq, ip_id=0xFFFE, flags=ACK | PSH), 1400)
    assert segments is not None
    assert [field(s, 4) for s in segments] == [0xFFFE, 0xFFFF, 0, 1]
    assert [struct.unpack_from("!I", s, 24)[0] for s in segments] == [seq, seq + 1400, 2**32 - 200, 1200]
    check_segments(segments, payload, 1400, seq=seq, ip_id=0xFFFE, flags=ACK | PSH, options=b"")


def test_segment_tcp4_refuses() -> None:
    assert offload.segment_tcp4(tcp(b"x" * 100), 0) is None
    # a raw socket's frame with a tiny segment size: 64 KiB would become 65,000 packets
    assert offload.split(tso_frame(payload_bytes(65000), 1)) is None
    assert offload.segment_tcp4(tcp(b"x" * 1000), offload.MIN_GSO_SIZE - 1) is None
    assert len(offload.segment_tcp4(tcp(b"x" * 1000), offload.MIN_GSO_SIZE) or ()) == 21
    # options count: a peer advertising MSS 48 gets 36 bytes a segment beside 12 of timestamps
    assert len(offload.segment_tcp4(tcp(b"x" * 1000, options=TS), 36) or ()) == 28
    assert offload.segment_tcp4(tcp(b"x" * 1000, options=TS), 35) is None
    assert offload.segment_tcp4(tcp(b""), 1000) is None  # no payload
    assert offload.segment_tcp4(udp(b"x" * 100), 50) is None
    assert offload.segment_tcp4(b"\x60" + bytes(99), 50) is None


# ----------------------------------------------------------------- split: everything else
def test_split_plain_and_partial_frames() -> None:
    packet = tcp(b"hello", partial=False)
    assert offload.split(offload.PLAIN_HDR + packet) == ([packet], False)
    partial = tcp(b"hello")
    assert offload.split(VNET.pack(1, 0, 0, 0, 20, 16) + partial) == ([partial], True)
    datagram = udp(b"hello")
    assert offload.split(VNET.pack(1, 0, 0, 0, 20, 6) + datagram) == ([datagram], True)


def test_split_completes_a_checksum_it_cannot_leave_partial() -> None:
    # A layout that does not match the IPv4 header: the sum from csum_start (the field's old
    # value included, as the kernel seeds it) is stored inverted at csum_start + csum_offset.
    packet = tcp(payload_bytes(300))
    got = offload.split(VNET.pack(1, 0, 0, 0, 24, 16) + packet)
    assert got is not None
    (done,), partial = got
    assert partial is False and len(done) == len(packet)
    assert rsum(packet[24:] + done[40:42]) == 0xFFFF
    assert done[:40] == packet[:40] and done[42:] == packet[42:]
    # An IPv6/TCP packet (next header 6) with its partial checksum at 40 + 16.
    tcp6 = struct.pack("!HHIIBBHHH", 1, 2, 3, 4, 0x50, ACK, 9, 0, 0) + payload_bytes(101)
    src6, dst6 = bytes(range(16)), bytes(range(16, 32))
    ph6 = src6 + dst6 + struct.pack("!IxxxB", len(tcp6), 6)
    tcp6 = tcp6[:16] + struct.pack("!H", rsum(ph6)) + tcp6[18:]
    ip6 = struct.pack("!IHBB", 0x60000000, len(tcp6), 6, 64) + src6 + dst6 + tcp6
    got = offload.split(VNET.pack(1, 0, 0, 0, 40, 16) + ip6)
    assert got is not None and got[1] is False
    assert rsum(ph6 + got[0][0][40:]) == 0xFFFF


def test_split_refuses() -> None:
    big = tso_frame(payload_bytes(5000), 1400)
    assert offload.split(b"") is None
    assert offload.split(offload.PLAIN_HDR) is None
    assert offload.split(VNET.pack(1, 0, 0, 0, 20, 16) + b"\x45" + bytes(20)) is None  # field past the end
    for gso in (3, 4, 5, 0x80, 0x84):  # UDP (UFO), TCPV6, UDP_L4, ECN alone, ECN|TCPV6
        assert offload.split(VNET.pack(1, gso, 40, 1400, 20, 16) + big[10:]) is None
    assert offload.split(VNET.pack(0, 1, 40, 1400, 20, 16) + big[10:]) is None  # GSO without NEEDS_CSUM
    assert offload.split(VNET.pack(1, 1, 40, 0, 20, 16) + big[10:]) is None  # gso_size 0
    assert offload.split(VNET.pack(1, 1, 28, 1400, 20, 6) + udp(payload_bytes(5000))) is None


def test_split_short_needs_csum_frame_returns_none() -> None:
    # A NEEDS_CSUM frame whose packet is shorter than an IPv4 header and whose completed
    # checksum is 0: the UDP zero rule must not index into the missing IP header.
    frame = VNET.pack(offload.NEEDS_CSUM, offload.GSO_NONE, 0, 0, 0, 2) + b"\xff\xff\x00\x00"
    got = offload.split(frame)
    assert got is None or got[1] is False


# ----------------------------------------------------------------- coalesce
def flow(count: int, mss: int = 1000, *, seq: int = 1000, last: int | None = None, psh_at: int = -1,
         **kw: int | bytes) -> list[bytes]:
    """``count`` contiguous partial segments; the last one ``last`` bytes long if given."""
    sizes = [mss] * count
    if last is not None:
        sizes[-1] = last
    out, at = [], seq
    for index, size in enumerate(sizes):
        flags = ACK | (PSH if index == psh_at else 0)
        out.append(tcp(payload_bytes(size, salt=at & 0xFF), seq=at & 0xFFFFFFFF, flags=flags,
                       ip_id=index, **kw))  # type: ignore[arg-type]
        at += size
    return out


def test_coalesce_one_flow_into_one_write() -> None:
    for options, psh in ((b"", False), (TS, True)):
        segments = offload.segment_tcp4(tcp(payload_bytes(7000), ip_id=5, options=options,
                                            flags=ACK | (PSH if psh else 0)), 1200)
        assert segments is not None and len(segments) == 6
        writes = offload.coalesce([(s, True) for s in segments])
        assert len(writes) == 1 and writes[0][1] == 6
        iov = writes[0][0]
        hl = 40 + len(options)
        assert VNET.unpack(bytes(iov[0])) == (1, offload.GSO_TCPV4, hl, 1200, 20, 16)
        merged = flatten(iov)
        assert field(merged, 2) == len(merged) == hl + 7000
        assert ip_ok(merged)
        assert field(merged, 36) == pseudo_field(merged, len(merged) - 20)
        assert merged[hl:] == payload_bytes(7000)
        assert bool(merged[33] & PSH) is psh
        assert l4_ok(offload.complete_checksum(merged, 20, 16))
        # What the kernel will do with it (GSO) gives back the segments we were handed.
        assert offload.segment_tcp4(merged, 1200) == segments


def test_coalesce_single_partial_segment() -> None:
    packet = tcp(b"x" * 500)
    assert offload.coalesce([(packet, True)]) == [([VNET.pack(1, 0, 0, 0, 20, 16), packet], 1)]


def test_coalesce_writes_complete_packets_alone_in_order() -> None:
    packets = [tcp(b"x" * 1000, seq=1000 + 1000 * i, partial=False) for i in range(4)]
    writes = offload.coalesce([(p, False) for p in packets])
    assert writes == [([bytes(10), p], 1) for p in packets]


def test_coalesce_interleaved_flows() -> None:
    a, b = flow(4, sport=1111), flow(4, seq=99, sport=2222)
    items = [(p, True) for pair in zip(a, b, strict=True) for p in pair]
    writes = offload.coalesce(items)
    assert [count for _, count in writes] == [4, 4]
    for (iov, _), packets in zip(writes, (a, b), strict=True):
        assert flatten(iov)[40:] == b"".join(p[40:] for p in packets)


@pytest.mark.parametrize(("packets", "counts"), [
    (flow(2) + flow(2, seq=3001), [2, 2]),  # a gap of one byte
    (flow(5, psh_at=1), [2, 3]),  # PSH ends the run
    (flow(2, last=400) + flow(2, seq=2400), [2, 2]),  # a shorter segment ends the run
    (flow(1) + flow(1, 1200, seq=2000), [1, 1]),  # a longer one does not join
    (flow(1) + flow(1, seq=2000, ttl=63), [1, 1]),
    (flow(1) + flow(1, seq=2000, tos=0x02), [1, 1]),
    (flow(1) + flow(1, seq=2000, ack=5001), [1, 1]),
    (flow(1) + flow(1, seq=2000, options=TS), [1, 1]),
    (flow(1, options=TS) + flow(1, seq=2000, options=TS[:8] + b"\0\0\0\0"), [1, 1]),
    (flow(1, ip_options=b"\x01\x01\x01\x00") + flow(1, seq=2000, ip_options=b"\x01\x01\x01\x00"), [1, 1]),
    (flow(2, frag=0x2000), [1, 1]),  # more-fragments bit
    (flow(2, frag=0x0001), [1, 1]),  # fragment offset
    (flow(3, frag=0), [1, 1, 1]),  # DF clear: merging would renumber the ids if re-cut
    (flow(3, window=7), [3]),  # window is not part of the flow
])
def test_coalesce_run_boundaries(packets: list[bytes], counts: list[int]) -> None:
    writes = offload.coalesce([(p, True) for p in packets])
    assert [count for _, count in writes] == counts
    assert b"".join(tcp_payload(flatten(iov)) for iov, _ in writes) == b"".join(map(tcp_payload, packets))
    for iov, count in writes:
        if count == 1:
            start = ihl_of(flatten(iov))
            assert VNET.unpack(bytes(iov[0])) == (1, 0, 0, 0, start, 16)


@pytest.mark.parametrize("odd", [
    tcp(b"", seq=3000),  # pure ACK
    tcp(b"x" * 1000, seq=3000, flags=SYN),
    tcp(b"x" * 1000, seq=3000, flags=ACK | FIN),
    tcp(b"", seq=3000, flags=ACK | RST),
    tcp(b"x" * 1000, seq=3000, flags=ACK | CWR),
])
def test_coalesce_never_merges_control_or_empty_segments(odd: bytes) -> None:
    items = [(p, True) for p in [*flow(2), odd]]
    writes = offload.coalesce(items)
    assert [count for _, count in writes] == [2, 1]
    assert writes[1][0] == [VNET.pack(1, 0, 0, 0, 20, 16), odd]


def test_coalesce_drops_partial_packets_it_cannot_describe() -> None:
    icmp = ipv4(1, b"\x08\0\0\0\0\0\0\0" + bytes(56))
    items = [(tcp(b"x" * 100), True), (icmp, True), (icmp, False), (udp(b"y" * 100), True)]
    writes = offload.coalesce(items)
    assert sum(count for _, count in writes) == 3 < len(items)
    assert [iov[1] for iov, _ in writes] == [items[0][0], icmp, items[3][0]]
    assert VNET.unpack(bytes(writes[2][0][0])) == (1, 0, 0, 0, 20, 6)


def test_coalesce_never_exceeds_the_ipv4_maximum() -> None:
    packets = flow(60, 1360)
    writes = offload.coalesce([(p, True) for p in packets])
    assert [count for _, count in writes] == [48, 12]  # 40 + 48 * 1360 = 65320; one more is too many
    for iov, _ in writes:
        assert len(flatten(iov)) <= 0xFFFF and ip_ok(flatten(iov))
    assert b"".join(flatten(iov)[40:] for iov, _ in writes) == b"".join(p[40:] for p in packets)


def test_coalesce_keeps_order_within_a_flow() -> None:
    # A packet of the flow that cannot be merged (here a pure ACK, e.g. a window update)
    # closes the flow's open run, so the next contiguous segment is not written before it
    # (as the kernel's tcp_gro_receive flushes the held packet).
    first, second = flow(2)
    window_update = tcp(b"", seq=2000, window=4096)
    writes = offload.coalesce([(first, True), (window_update, True), (second, True)])
    ack_at = next(i for i, (iov, _) in enumerate(writes) if flatten(iov) == window_update)
    second_at = next(i for i, (iov, _) in enumerate(writes) if second[40:] in flatten(iov))
    assert ack_at < second_at


# ----------------------------------------------------------------- round trip
@PROPS
@given(n=st.integers(1, 60000), mss=st.integers(500, 1460), seq=st.integers(0, 2**32 - 1),
       ip_id=st.integers(0, 0xFFFF), ts=st.booleans())
def test_split_then_coalesce_round_trip(n: int, mss: int, seq: int, ip_id: int, ts: bool) -> None:
    payload = payload_bytes(n, salt=seq)
    options = TS if ts else b""
    got = offload.split(tso_frame(payload, mss, seq=seq, ip_id=ip_id, flags=ACK | PSH, options=options))
    assert got is not None and got[1] is True
    segments = got[0]
    writes = offload.coalesce([(s, True) for s in segments])
    assert sum(count for _, count in writes) == len(segments)
    hl = 40 + len(options)
    joined = b""
    for iov, _ in writes:
        packet = flatten(iov)
        assert len(packet) <= 0xFFFF and field(packet, 2) == len(packet) and ip_ok(packet)
        assert field(packet, 36) == pseudo_field(packet, len(packet) - 20)
        joined += packet[hl:]
    assert joined == payload


def test_coalesce_a_plain_packet_of_the_flow_also_closes_its_run() -> None:
    first, second = flow(2)
    retransmit = tcp(b"r" * 1000, seq=1000, partial=False)  # a complete checksum: written alone
    writes = offload.coalesce([(first, True), (retransmit, False), (second, True)])
    assert [count for _, count in writes] == [1, 1, 1]
    assert flatten(writes[1][0]) == retransmit
