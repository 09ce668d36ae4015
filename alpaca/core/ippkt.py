"""Reading the few fields of an inner IPv4 packet that forwarding needs.

Only IPv4 is carried (as in the original). Offsets honour the IHL field (the original assumed
a 20-byte IP header) and the transport header is read only in the first fragment.
"""

from __future__ import annotations

import struct

#: (source, destination) of an IPv4 header, unpacked at offset 12.
ADDRS = struct.Struct("!II")
_PORTS = struct.Struct("!HH")
ICMP, TCP, UDP = 1, 6, 17
SYN = 0x02
DNS_PORT = 53
#: ICMP types that report on a packet, quoting its header: destination unreachable (path
#: MTU's "fragmentation needed" too), time exceeded (traceroute), parameter problem.
ICMP_ERRORS = frozenset({3, 11, 12})


def addresses(packet: bytes) -> tuple[int, int] | None:
    """Return (src, dst) as ints, or None if this is not an IPv4 packet of sane length."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    src, dst = ADDRS.unpack_from(packet, 12)
    return src, dst


def total_length(packet: bytes) -> int:
    """The IPv4 total-length field (bytes 2-3) of a packet ``addresses`` accepted."""
    return (packet[2] << 8) | packet[3]


def is_syn_or_dns(packet: bytes) -> bool:
    """True for TCP SYN (so SYN and SYN-ACK) and for TCP or UDP with port 53 at either end.

    This is the original's intended duplicate-send policy, evaluated on plaintext.
    """
    ihl = (packet[0] & 0x0F) * 4
    proto = packet[9]
    if proto not in (TCP, UDP) or ihl < 20 or len(packet) < ihl + 4:
        return False
    if struct.unpack_from("!H", packet, 6)[0] & 0x1FFF:  # not the first fragment
        return False
    sport, dport = _PORTS.unpack_from(packet, ihl)
    if DNS_PORT in (sport, dport):
        return True
    return proto == TCP and len(packet) > ihl + 13 and bool(packet[ihl + 13] & SYN)


def icmp_error_about(packet: bytes) -> tuple[int, int] | None:
    """(src, dst) of the packet an ICMP error quotes, or None if ``packet`` (one
    :func:`addresses` accepted) is no ICMP error with a whole quoted IPv4 header."""
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] != ICMP or ihl < 20 or len(packet) < ihl + 8 + 20 or packet[ihl] not in ICMP_ERRORS:
        return None
    if struct.unpack_from("!H", packet, 6)[0] & 0x1FFF:  # not the first fragment
        return None
    quoted = ihl + 8
    if packet[quoted] >> 4 != 4:
        return None
    src, dst = ADDRS.unpack_from(packet, quoted + 12)
    return src, dst


def ip_to_int(text: str) -> int:
    """Dotted quad to int (no validation beyond what int() does)."""
    a, b, c, d = (int(x) for x in text.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def int_to_ip(value: int) -> str:
    """Int to dotted quad."""
    return f"{value >> 24}.{(value >> 16) & 0xFF}.{(value >> 8) & 0xFF}.{value & 0xFF}"
