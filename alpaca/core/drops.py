"""Why a packet was dropped. Every drop in the core is one of these, and is counted."""

from __future__ import annotations

from enum import IntEnum


class DropReason(IntEnum):
    """Closed set of drop reasons; the value is an index into EngineStats.drops."""

    MALFORMED = 0        #: too short, or a length field that does not fit
    BAD_VERSION = 1      #: header version is not ours
    BAD_TYPE = 2         #: unknown packet type
    RESERVED_ID = 3      #: src or dst is 0.0, 0.1 or 255.255
    UNKNOWN_PEER = 4     #: no key for this pair of peers
    FROM_SELF = 5        #: src is our own id
    BAD_TAG = 6          #: authentication failed (wrong key, group, tampering, forgery)
    OLD_EPOCH = 7        #: authentic, but from a session older than the current one
    DUPLICATE = 8        #: counter already seen (an expected extra copy)
    TOO_OLD = 9          #: counter left the replay window (late copy or replay)
    TTL_EXPIRED = 10     #: a relay received it with TTL 0
    NO_ROUTE = 11        #: TUN packet whose destination maps to no peer
    NO_PATH = 12         #: peer known, but no path to send on
    LOOP = 13            #: the packet would re-enter the tunnel (next hop = inner address),
    #: or a datagram came from a tunnel address (it came through a tunnel)
    SPOOFED_SOURCE = 14  #: inner source is another peer's (tunnel address or routed back via it)
    FOREIGN_SOURCE = 15  #: TUN packet with a tunnel source address that is not ours
    NOT_IPV4 = 16        #: only IPv4 is carried
    TOO_BIG = 17         #: inner packet larger than the MTU
    DUP_QUEUE_FULL = 18  #: delayed-copy queue at its bound
    SEND_ERROR = 19      #: the kernel refused the datagram (sendto failed)
    TUN_WRITE_ERROR = 20 #: the kernel refused the TUN write
    NOT_FOR_ME = 21      #: a probe reply addressed to another peer
    UNKNOWN_PROBE = 22   #: a probe reply that matches no probe we sent
    LEGACY = 23          #: legacy-protocol datagram rejected by its own checks
    UNVERIFIED = 24      #: authentic, from a sender not yet proved live since we started
    BAD_OFFLOAD = 25     #: a TUN read whose offload (virtio-net) header could not be taken apart

    @property
    def label(self) -> str:
        """The metric label value: the member name in lower case."""
        return self.name.lower()
