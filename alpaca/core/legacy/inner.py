"""Inner address rewriting of 6.1.2 (the si/di flags, ``vip = 0.0.A.B``).

A sender replaces a tunnel source address by ``0.0.<its id>`` (si) and a tunnel destination
by ``0.0.<dst id>`` (di); the receiver puts its own ``net`` back in front. So the ``net``
prefix is local and peers with different nets interoperate. The IPv4 header checksum and
the TCP/UDP checksums (first fragment only; a UDP checksum of 0 stays 0) are updated
incrementally (RFC 1624), as ``ip.c:do_csum`` does.

Pure functions on bytes; the caller checked that the packet is IPv4 of at least 20 bytes.
"""

from __future__ import annotations

import struct

NET_MASK = 0xFFFF0000
_TCP, _UDP = 6, 17
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def _fix(csum: int, old: int, new: int) -> int:
    """RFC 1624 eq. 3 for one 32-bit field changing from ``old`` to ``new``."""
    s = (~csum & 0xFFFF) + (~old >> 16 & 0xFFFF) + (~old & 0xFFFF) + (new >> 16) + (new & 0xFFFF)
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _set_address(buf: bytearray, offset: int, new: int) -> None:
    old = _U32.unpack_from(buf, offset)[0]
    if old == new:
        return
    _U32.pack_into(buf, offset, new)
    _U16.pack_into(buf, 10, _fix(_U16.unpack_from(buf, 10)[0], old, new))
    ihl = (buf[0] & 0x0F) * 4
    if _U16.unpack_from(buf, 6)[0] & 0x1FFF:  # not the first fragment: no L4 header here
        return
    where = {_TCP: ihl + 16, _UDP: ihl + 6}.get(buf[9])
    if where is None or len(buf) < where + 2:
        return
    csum = _U16.unpack_from(buf, where)[0]
    if buf[9] == _UDP and csum == 0:
        return
    fixed = _fix(csum, old, new)
    _U16.pack_into(buf, where, 0xFFFF if fixed == 0 and buf[9] == _UDP else fixed)


def rewrite(packet: bytes, src: int | None, dst: int | None) -> bytes:
    """``packet`` with its source and/or destination address replaced (None = keep)."""
    buf = bytearray(packet)
    if src is not None:
        _set_address(buf, 12, src)
    if dst is not None:
        _set_address(buf, 16, dst)
    return bytes(buf)


def outbound(packet: bytes, src_ip: int, dst_ip: int, net: int, dst_id: int, self_id: int
             ) -> tuple[bytes, bool, bool]:
    """Sender side: rewrite tunnel addresses to ``0.0.A.B``; returns (packet, si, di)."""
    si = src_ip & NET_MASK == net
    di = dst_ip & NET_MASK == net
    if not si and not di:
        return packet, False, False
    return rewrite(packet, self_id if si else None, dst_id if di else None), si, di


def inbound(packet: bytes, si: bool, di: bool, net: int, src_id: int, dst_id: int) -> bytes:
    """Receiver side: put our ``net`` in front of the rewritten addresses."""
    if not si and not di:
        return packet
    return rewrite(packet, net | src_id if si else None, net | dst_id if di else None)
