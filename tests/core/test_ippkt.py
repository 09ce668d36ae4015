"""The inner packet fields forwarding reads (alpaca.core.ippkt)."""

from __future__ import annotations

import pytest

from alpaca.core import ippkt
from tests.enginenet import ipv4

ME, THERE = "10.17.16.1", "8.8.8.8"
QUOTED = ipv4(ME, THERE, proto=17, payload=b"")[:28]


def icmp(kind: int, quoted: bytes = QUOTED) -> bytes:
    return ipv4("198.18.0.1", ME, payload=bytes([kind, 0, 0, 0, 0, 0, 5, 0]) + quoted)


@pytest.mark.parametrize("kind", [3, 11, 12])
def test_ippkt_an_icmp_error_names_the_packet_it_quotes(kind: int) -> None:
    assert ippkt.icmp_error_about(icmp(kind)) == (ippkt.ip_to_int(ME), ippkt.ip_to_int(THERE))
    # a quote of exactly the IPv4 header is enough
    assert ippkt.icmp_error_about(icmp(kind, QUOTED[:20])) == (ippkt.ip_to_int(ME),
                                                                ippkt.ip_to_int(THERE))


@pytest.mark.parametrize("packet", [
    icmp(0), icmp(8), icmp(5),  # echo reply, echo request, redirect: no error report
    icmp(11, QUOTED[:19]),  # the quoted header cut short
    icmp(11, bytes([0x60]) + QUOTED[1:]),  # an IPv6 header quoted
    ipv4("198.18.0.1", ME, proto=17, payload=bytes([11]) + b"x" * 40),  # UDP
    # UDP shaped like a time exceeded: its first byte 11, a whole IPv4 header 8 bytes on
    ipv4("198.18.0.1", ME, proto=17, sport=11 << 8, payload=QUOTED),
], ids=["echo reply", "echo request", "redirect", "short", "ipv6 quoted", "udp",
        "udp shaped like an error"])
def test_ippkt_anything_else_quotes_nothing(packet: bytes) -> None:
    assert ippkt.icmp_error_about(packet) is None


def test_ippkt_a_later_fragment_quotes_nothing() -> None:
    packet = bytearray(icmp(11))
    packet[6:8] = (1).to_bytes(2, "big")  # fragment offset 8 bytes
    assert ippkt.icmp_error_about(bytes(packet)) is None


# --- addresses, is_syn_or_dns (the duplicate-send policy), the dotted-quad helpers ---------

def with_options(packet: bytes, words: int = 1) -> bytes:
    """``packet`` with ``words`` 4-byte IP options (NOPs) after its 20-byte header."""
    head = bytearray(packet[:20])
    head[0] = 0x40 | (5 + words)
    head[2:4] = (len(packet) + 4 * words).to_bytes(2, "big")
    return bytes(head) + b"\x01" * 4 * words + packet[20:]


def later_fragment(packet: bytes) -> bytes:
    out = bytearray(packet)
    out[6:8] = (185).to_bytes(2, "big")  # fragment offset 1480 bytes
    return bytes(out)


def test_ippkt_addresses_of_an_ipv4_packet() -> None:
    packet = ipv4(ME, THERE)
    assert ippkt.addresses(packet) == (ippkt.ip_to_int(ME), ippkt.ip_to_int(THERE))
    assert ippkt.addresses(packet[:20]) == (ippkt.ip_to_int(ME), ippkt.ip_to_int(THERE))
    assert ippkt.total_length(packet) == len(packet) == 56
    big = ipv4(ME, THERE, payload=bytes(1000))
    assert ippkt.total_length(big) == len(big) == 1020


@pytest.mark.parametrize("packet", [
    b"", ipv4(ME, THERE)[:19],  # shorter than an IPv4 header
    bytes([0x60]) + ipv4(ME, THERE)[1:],  # IPv6
    bytes([0x55]) + ipv4(ME, THERE)[1:],  # version 5
], ids=["empty", "19 bytes", "ipv6", "version 5"])
def test_ippkt_addresses_refuses_what_is_not_ipv4(packet: bytes) -> None:
    assert ippkt.addresses(packet) is None


@pytest.mark.parametrize("packet", [
    ipv4(ME, THERE, proto=6, syn=True),  # SYN
    bytes(ipv4(ME, THERE, proto=6)[:33]) + b"\x12" + ipv4(ME, THERE, proto=6)[34:],  # SYN-ACK
    ipv4(ME, THERE, proto=17, dport=53),  # a DNS query
    ipv4(THERE, ME, proto=17, sport=53, dport=40000),  # its answer
    ipv4(ME, THERE, proto=6, dport=53),  # DNS over TCP, no SYN
    ipv4(THERE, ME, proto=6, sport=53, dport=40000),
    with_options(ipv4(ME, THERE, proto=6, syn=True)),  # the TCP header after the options
    with_options(ipv4(ME, THERE, proto=17, dport=53), words=10),  # the longest IP header
    ipv4(ME, THERE, proto=17, dport=53)[:24],  # the ports and nothing after them
    ipv4(ME, THERE, proto=6, syn=True)[:34],  # up to the TCP flags
], ids=["syn", "syn-ack", "dns query", "dns answer", "dns tcp", "dns tcp answer",
        "syn after options", "dns after 40 bytes of options", "just the ports", "just the flags"])
def test_ippkt_syn_and_dns_are_copied(packet: bytes) -> None:
    assert ippkt.is_syn_or_dns(packet)


@pytest.mark.parametrize("packet", [
    ipv4(ME, THERE, proto=6),  # ACK
    ipv4(ME, THERE, proto=6)[:33] + b"\x11" + ipv4(ME, THERE, proto=6)[34:],  # FIN-ACK
    ipv4(ME, THERE, proto=17, dport=54),
    ipv4(ME, THERE, proto=17, sport=52, dport=52),
    ipv4(ME, THERE, proto=17, syn=True, dport=80)[:33] + b"\x02" + b"x" * 8,  # a UDP "SYN" byte
    ipv4(ME, THERE, proto=1, payload=b"\x00\x35\x00\x35" + b"\x02" * 20),  # ICMP: no ports
    later_fragment(ipv4(ME, THERE, proto=6, syn=True)),  # its bytes are not a TCP header
    later_fragment(ipv4(ME, THERE, proto=17, dport=53)),
    ipv4(ME, THERE, proto=6, syn=True)[:33],  # cut before the TCP flags
    ipv4(ME, THERE, proto=17, dport=53)[:23],  # cut inside the ports
    with_options(ipv4(ME, THERE, proto=6, sport=53, dport=53), words=10)[:62],  # cut likewise
    bytes([0x44]) + ipv4(ME, "0.53.0.53", proto=17)[1:],  # an IHL below 5 ("ports" 53 at 16)
], ids=["ack", "fin-ack", "udp 54", "udp 52", "udp flags byte", "icmp", "tcp fragment", "udp fragment",
        "syn cut", "ports cut", "ports cut after options", "ihl 4"])
def test_ippkt_anything_else_is_not_copied(packet: bytes) -> None:
    assert not ippkt.is_syn_or_dns(packet)


@pytest.mark.parametrize("text", ["0.0.0.0", "10.17.16.1", "255.255.255.255", "1.2.3.4"])
def test_ippkt_dotted_quads_round_trip(text: str) -> None:
    assert ippkt.int_to_ip(ippkt.ip_to_int(text)) == text


def test_ippkt_dotted_quad_byte_order() -> None:
    assert ippkt.ip_to_int("1.2.3.4") == 0x01020304
    assert ippkt.int_to_ip(0x0A110001) == "10.17.0.1"
