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


@pytest.mark.parametrize("packet", [
    icmp(0), icmp(8), icmp(5),  # echo reply, echo request, redirect: no error report
    icmp(11, QUOTED[:19]),  # the quoted header cut short
    icmp(11, bytes([0x60]) + QUOTED[1:]),  # an IPv6 header quoted
    ipv4("198.18.0.1", ME, proto=17, payload=bytes([11]) + b"x" * 40),  # UDP
], ids=["echo reply", "echo request", "redirect", "short", "ipv6 quoted", "udp"])
def test_ippkt_anything_else_quotes_nothing(packet: bytes) -> None:
    assert ippkt.icmp_error_about(packet) is None


def test_ippkt_a_later_fragment_quotes_nothing() -> None:
    packet = bytearray(icmp(11))
    packet[6:8] = (1).to_bytes(2, "big")  # fragment offset 8 bytes
    assert ippkt.icmp_error_about(bytes(packet)) is None
