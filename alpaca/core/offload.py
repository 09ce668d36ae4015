"""TUN offload: virtio-net headers, TCP segmentation and TCP coalescing, as pure functions.

With ``IFF_VNET_HDR`` every TUN read and write starts with a 10-byte ``virtio_net_hdr``.
Reads may then return one TCP/IPv4 "super-packet" of up to 64 KiB (TSO) whose segments we
cut here (:func:`split`), and a batch of TCP segments of one flow can be written back as one
super-packet (:func:`coalesce`): one syscall and one trip through the kernel's stack instead
of dozens.

Checksums are where the time would go, so they are left out on both sides. A packet the
kernel hands over with ``NEEDS_CSUM`` carries in its TCP/UDP checksum field only the sum of
the pseudo-header; it leaves here *partial* (the header flag ``CSUM_PARTIAL`` on the wire,
under the AEAD tag) and the receiving node gives it to its own kernel as ``NEEDS_CSUM`` again
(``CHECKSUM_PARTIAL``: verified if delivered locally, computed if forwarded). A node without
offload completes it in Python (:func:`complete_checksum`, ≈3.5 µs per 1400 bytes). The
sealed datagram protects these bytes end to end, far better than the 16-bit sum would.

Only partial TCP/IPv4 segments are coalesced: a packet that arrives with a full checksum is
written alone, so a segment corrupted before it entered the tunnel is still caught by the
receiving kernel. Coalescing follows the kernel's GRO rules (tools/testing/selftests/net/
gro.c): same addresses, ports, ack, TOS, DF, TTL and TCP options; contiguous sequence
numbers; equal segment sizes with at most one shorter last; nothing after PSH.

Sizes in bytes. Ownership: every function returns new objects or memoryviews of its inputs;
nothing is kept between calls.
"""

from __future__ import annotations

import struct
from typing import TypeAlias

#: struct virtio_net_hdr, in the host's byte order (no TUNSETVNETLE/BE).
VNET_HDR = struct.Struct("=BBHHHH")
VNET_HDR_LEN = VNET_HDR.size
#: flags
NEEDS_CSUM = 0x01
#: gso_type
GSO_NONE = 0x00
GSO_TCPV4 = 0x01
GSO_ECN = 0x80
#: A plain packet with a complete checksum: what every write without offload carries.
PLAIN_HDR = VNET_HDR.pack(0, GSO_NONE, 0, 0, 0, 0)
#: Largest IPv4 packet, hence largest coalesced write.
MAX_IP_LEN = 0xFFFF

_TCP, _UDP = 6, 17
#: Checksum field offset inside the L4 header.
_CSUM_OFFSET = {_TCP: 16, _UDP: 6}
_TCP_FIN, _TCP_PSH, _TCP_ACK, _TCP_CWR = 0x01, 0x08, 0x10, 0x80
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_IP_LEN_ID = struct.Struct("!HH")
_PARTIAL_TCP_HDR = VNET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, 20, 16)

#: One part of a write (writev takes a list of them).
Buffer: TypeAlias = bytes | bytearray | memoryview


def ones_sum(data: Buffer) -> int:
    """Ones' complement sum of ``data`` as big-endian 16-bit words, folded to 16 bits."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    total = int.from_bytes(data, "big")
    folded = total % 0xFFFF
    return 0xFFFF if folded == 0 and total else folded


def _fold(total: int) -> int:
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


def _pseudo_sum(packet: bytes | bytearray, proto: int, l4_len: int) -> int:
    """Folded sum of the IPv4 pseudo-header: addresses, protocol, L4 length."""
    return _fold(ones_sum(packet[12:20]) + proto + l4_len)


def partial_layout(packet: bytes) -> tuple[int, int] | None:
    """(csum_start, csum_offset) of a TCP or UDP IPv4 packet; None for anything else."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    offset = _CSUM_OFFSET.get(packet[9])
    start = (packet[0] & 0x0F) * 4
    if offset is None or start < 20 or len(packet) < start + offset + 2:
        return None
    return start, offset


def complete_checksum(packet: bytes, start: int, offset: int) -> bytes:
    """Finish a partial checksum: sum from ``start`` (the field holds the pseudo sum)."""
    total = ~ones_sum(memoryview(packet)[start:]) & 0xFFFF
    if total == 0 and offset == _CSUM_OFFSET[_UDP]:
        total = 0xFFFF  # 0 means "no checksum" in UDP
    at = start + offset
    return packet[:at] + _U16.pack(total) + packet[at + 2:]


def complete_partial(packet: bytes) -> bytes | None:
    """Finish the checksum of a packet received as partial; None if it is not TCP/UDP."""
    layout = partial_layout(packet)
    return None if layout is None else complete_checksum(packet, *layout)


def whole(packet: bytes, csum_partial: bool) -> bytes | None:
    """``packet`` with a complete checksum, for a writer without offload: as it is, or
    completed if partial; None for a partial packet that is not TCP/UDP (refuse it)."""
    return complete_partial(packet) if csum_partial else packet


# ----------------------------------------------------------------- read side: split
def split(frame: bytes) -> tuple[list[bytes], bool] | None:
    """One TUN read (virtio-net header + packet) -> (IP packets, their checksums are partial).

    None for a frame this module cannot take apart (a GSO type we never enable, a header
    that does not match the packet): the caller counts it as a drop.
    """
    if len(frame) <= VNET_HDR_LEN:
        return None
    flags, gso_type, _, gso_size, csum_start, csum_offset = VNET_HDR.unpack_from(frame)
    packet = frame[VNET_HDR_LEN:]
    if gso_type == GSO_NONE:
        if not flags & NEEDS_CSUM:
            return [packet], False
        if partial_layout(packet) == (csum_start, csum_offset):
            return [packet], True
        if csum_start + csum_offset + 2 > len(packet):
            return None
        return [complete_checksum(packet, csum_start, csum_offset)], False
    if gso_type & ~GSO_ECN != GSO_TCPV4 or not flags & NEEDS_CSUM:
        return None
    segments = segment_tcp4(packet, gso_size)
    return None if segments is None else (segments, True)


#: Smallest segment size, TCP options included, taken apart: the kernel's TCP never sends
#: less (tcp_min_snd_mss, 48, applies before the options are taken off: a peer advertising
#: MSS 48 gets segments of 36 payload bytes beside 12 of timestamps). Smaller ones come only
#: from a raw socket writing to the device, and would turn one 64 KiB frame into tens of
#: thousands of packets: refused (a BAD_OFFLOAD drop).
MIN_GSO_SIZE = 48


def segment_tcp4(packet: bytes, mss: int) -> list[bytes] | None:
    """Cut a TCP/IPv4 super-packet into segments of ``mss`` payload bytes (partial sums).

    Per segment, as the kernel's tcp_gso_segment: IPv4 total length, id (+1 each) and header
    checksum; TCP sequence number; CWR on the first only, FIN and PSH on the last only; the
    TCP checksum field holds the segment's pseudo-header sum.
    """
    n = len(packet)
    if n < 40 or packet[0] >> 4 != 4 or packet[9] != _TCP or mss < 1:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or n < ihl + 20:
        return None
    hl = ihl + (packet[ihl + 12] >> 4) * 4
    if hl < ihl + 20 or n <= hl or mss + hl - ihl - 20 < MIN_GSO_SIZE:
        return None
    template = bytearray(packet[:hl])
    template[2:6] = b"\0\0\0\0"  # total length, id
    template[10:12] = b"\0\0"  # header checksum
    ip_base = ones_sum(memoryview(template)[:ihl])
    pseudo_base = ones_sum(packet[12:20]) + _TCP - ihl
    ip_id = _U16.unpack_from(packet, 4)[0]
    seq = _U32.unpack_from(packet, ihl + 4)[0] - hl
    tcp_flags = packet[ihl + 13]
    view, join, pack16, pack32 = memoryview(packet), b"".join, _U16.pack_into, _U32.pack_into
    seq_at, flags_at, check_at = ihl + 4, ihl + 13, ihl + 16
    segments = []
    middle = -1  # total length the header template is set up for (a full middle segment)
    last = n - mss
    for index, at in enumerate(range(hl, n, mss)):
        if index and at < last:
            total_len = hl + mss
            if middle != total_len:  # first middle segment: length, flags, pseudo sum
                middle = total_len
                pack16(template, 2, total_len)
                template[flags_at] = tcp_flags & ~(_TCP_CWR | _TCP_FIN | _TCP_PSH)
                pack16(template, check_at, _fold(pseudo_base + total_len))
        else:  # first or last: its own length and flags
            middle = -1
            total_len = hl + min(mss, n - at)
            pack16(template, 2, total_len)
            flags = tcp_flags & ~_TCP_CWR if index else tcp_flags
            template[flags_at] = flags if at >= last else flags & ~(_TCP_FIN | _TCP_PSH)
            pack16(template, check_at, _fold(pseudo_base + total_len))
        seg_id = (ip_id + index) & 0xFFFF
        pack16(template, 4, seg_id)
        pack16(template, 10, ~_fold(ip_base + total_len + seg_id) & 0xFFFF)
        pack32(template, seq_at, (seq + at) & 0xFFFFFFFF)
        segments.append(join((template, view[at:at + total_len - hl])))
    return segments


# ----------------------------------------------------------------- write side: coalesce
class _Run:
    """TCP segments of one flow, contiguous in sequence, to be written as one packet."""

    __slots__ = ("closed", "head", "hl", "key", "length", "mss", "next_seq", "payloads", "psh")

    def __init__(self, packet: bytes, key: bytes, hl: int, seq: int, psh: bool) -> None:
        self.head = packet
        self.key = key
        self.hl = hl
        self.mss = len(packet) - hl
        self.payloads: list[Buffer] = []
        self.next_seq = (seq + self.mss) & 0xFFFFFFFF
        self.length = len(packet)
        self.closed = psh
        self.psh = psh

    def take(self, packet: bytes, seq: int, psh: bool) -> bool:
        """Append ``packet`` (same flow, already checked) if it continues this run."""
        size = len(packet) - self.hl
        if self.closed or seq != self.next_seq or size > self.mss or self.length + size > MAX_IP_LEN:
            return False
        self.payloads.append(memoryview(packet)[self.hl:])
        self.next_seq = (seq + size) & 0xFFFFFFFF
        self.length += size
        self.closed = psh or size < self.mss
        self.psh = psh
        return True

    def frame(self) -> list[Buffer]:
        """The write: virtio-net header, merged headers, payloads (an iovec for writev)."""
        head, hl = self.head, self.hl
        if not self.payloads:
            return [_PARTIAL_TCP_HDR, head]
        headers = bytearray(head[:hl])
        _U16.pack_into(headers, 2, self.length)
        headers[10:12] = b"\0\0"
        _U16.pack_into(headers, 10, ~ones_sum(memoryview(headers)[:20]) & 0xFFFF)
        if self.psh:
            headers[33] |= _TCP_PSH
        _U16.pack_into(headers, 36, _pseudo_sum(headers, _TCP, self.length - 20))
        vnet = VNET_HDR.pack(NEEDS_CSUM, GSO_TCPV4, hl, self.mss, 20, 16)
        return [vnet, headers, memoryview(head)[hl:], *self.payloads]

    @property
    def count(self) -> int:
        return 1 + len(self.payloads)


def _flow(packet: bytes) -> bytes | None:
    """Addresses and ports of a TCP/IPv4 packet (the run it may belong to), else None."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != _TCP:
        return None
    ihl = (packet[0] & 0x0F) * 4
    return packet[12:20] + packet[ihl:ihl + 4]


def _coalescable(packet: bytes) -> tuple[bytes, int, int, bool] | None:
    """(merge key, header length, seq, PSH) of a TCP/IPv4 segment GRO may merge, else None.

    Besides the flow (addresses, ports: ``coalesce`` keys its runs by them), the key holds
    what must be equal for two segments to merge: TOS, flags byte, TTL, ack, TCP header
    length and options.
    """
    n = len(packet)
    if n < 41 or packet[0] != 0x45 or packet[9] != _TCP or packet[6] & 0x7F != 0x40 or packet[7]:
        return None  # IPv4 without options, TCP, DF set (ids need not be sequential), no fragment
    tcp_flags = packet[33]
    if tcp_flags != _TCP_ACK and tcp_flags != _TCP_ACK | _TCP_PSH:
        return None
    hl = 20 + (packet[32] >> 4) * 4
    if hl < 40 or n <= hl or _U16.unpack_from(packet, 2)[0] != n:
        return None
    key = packet[1:2] + packet[6:7] + packet[8:9] + packet[28:33] + packet[40:hl]
    return key, hl, _U32.unpack_from(packet, 24)[0], tcp_flags == _TCP_ACK | _TCP_PSH


def coalesce(items: list[tuple[bytes, bool]]) -> list[tuple[list[Buffer], int]]:
    """Turn one batch of (packet, checksum partial) into TUN writes, order kept per flow.

    Returns (iovec, packets in it) per write. A partial packet that is not TCP/UDP cannot be
    handed to the kernel and is left out (the caller counts len(items) minus the sum).
    """
    writes: list[_Run | list[Buffer]] = []
    runs: dict[bytes, _Run] = {}  # flow (addresses, ports) -> its open run
    for packet, partial in items:
        merge = _coalescable(packet) if partial else None
        if merge is None:
            flow = _flow(packet)
            if flow is not None:
                runs.pop(flow, None)  # a later segment must not overtake this packet
            if not partial:
                writes.append([PLAIN_HDR, packet])
            elif (layout := partial_layout(packet)) is not None:
                writes.append([VNET_HDR.pack(NEEDS_CSUM, GSO_NONE, 0, 0, *layout), packet])
            continue
        key, hl, seq, psh = merge
        flow = packet[12:24]
        run = runs.get(flow)
        if run is None or run.key != key or not run.take(packet, seq, psh):
            run = runs[flow] = _Run(packet, key, hl, seq, psh)
            writes.append(run)
    return [(w.frame(), w.count) if isinstance(w, _Run) else (w, 1) for w in writes]
