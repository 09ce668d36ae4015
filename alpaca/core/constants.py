"""Wire constants (part of the protocol) and implementation defaults (ours to change).

Wire constants are fixed by docs/protocol.md; changing one changes the protocol version.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# --- Wire (docs/protocol.md) -------------------------------------------------------------
PROTOCOL_VERSION = 2
HEADER_LEN = 20
TAG_LEN = 16
OVERHEAD = HEADER_LEN + TAG_LEN
#: Small first (alpaca.io.dataplane, alpaca.io.readahead): packets of at most this many bytes
#: (pings, TCP ACKs, DNS, voice) are handled before the bulk, so they do not wait behind a
#: batch of full segments (a TUN read or UDP GRO receive can hold 45 of them).
SMALL_PACKET = 256
#: The same bound for a tunnel datagram (UDP payload): also what takes the priority lane
#: (alpaca.io.udp).
SMALL_DATAGRAM = SMALL_PACKET + OVERHEAD
#: Largest UDP payload we send: 1500 (Ethernet) - 20 (IPv4) - 8 (UDP).
MAX_DATAGRAM = 1472
#: Largest inner packet: the datagram minus our overhead.
MTU_MAX = MAX_DATAGRAM - OVERHEAD
MTU_MIN = 576
MAX_TTL = 15
#: The hop byte ttl of a relay's own delayed copy (Flag.COPIED): above MAX_TTL, so no relay
#: passes it on, and its destination can tell it from the sender's datagrams (it does not
#: count one that comes after the original in a path's DATA count).
COPY_TTL = 0x80
PATH_SLOTS = 16
MAX_FORWARDERS = 3
MAX_LOCAL_PORTS = 4
PAD_TRAILER_LEN = 2


class PacketType(IntEnum):
    """The 4-bit ``type`` field of the header."""

    DATA = 0
    PROBE = 1
    PROBE_REPLY = 2


class Flag(IntFlag):
    """The authenticated ``flags`` byte of the header."""

    NONE = 0
    #: The plaintext ends with padding and a 2-byte big-endian pad length.
    PADDED = 0x01
    # 0x02 is reserved: sent as 0, ignored on receive. (A delayed copy is byte-identical to
    # its original outside the hop bytes, so no authenticated bit can mark it.)
    #: The inner TCP/UDP checksum field holds only the pseudo-header sum (TUN offload):
    #: the receiver completes it, or hands the packet to its kernel as CHECKSUM_PARTIAL.
    CSUM_PARTIAL = 0x04
    #: The sender sends delayed copies of this packet (duplicate-send): a relay that passes it
    #: on sends copies of its own on the next hop (its dup_copies, dup_delay_ms), since its
    #: window drops the sender's copies once the original reached it. Ignored elsewhere.
    COPIED = 0x08


# --- Implementation defaults ---------------------------------------------------------------
DEFAULT_TTL = 15
#: TUN transmit queue, packets. With TUN read-ahead on, 64, 256 and the kernel's 500 measured
#: alike (docs/performance.md, "Latency under load"); 64 bounds the queue without it.
DEFAULT_TUN_TXQUEUELEN = 64
#: Receive buffer of each UDP socket, KiB as the kernel accounts it (it doubles the value
#: asked for). Where the receiver's part of a saturating flow's standing queue forms
#: (docs/performance.md).
DEFAULT_UDP_RCVBUF_KIB = 208
#: Read-ahead of the TUN device, KiB of bulk packets; 0: off. 128 (two super-packets) measured
#: about 25 % less loaded ping RTT (p50) for about 3 % less single-stream throughput, 1024
#: about the same latency for 6-10 % (docs/performance.md).
DEFAULT_TUN_READ_AHEAD_KIB = 128
DEFAULT_REPLAY_WINDOW = 1 << 15
DEFAULT_PROBE_INTERVAL = 1.0
DEFAULT_PATH_TIMEOUT = 3.0
DEFAULT_PATH_LIFETIME = 60.0
DEFAULT_DUP_DELAY = 0.1
#: Bounds of the config's dup.copies and dup.delay_ms: a peer's last delayed copy leaves at
#: most MAX_DUP_COPIES * MAX_DUP_DELAY seconds after the packet (what a receiver, which does
#: not know its peers' settings, must wait for before it calls a packet lost).
MAX_DUP_COPIES = 3
MAX_DUP_DELAY = 2.0
DEFAULT_DUP_QUEUE_MAX = 4096
DEFAULT_ROUTE_CACHE_SIZE = 10240
DEFAULT_ROUTE_CACHE_TTL = 3600.0
