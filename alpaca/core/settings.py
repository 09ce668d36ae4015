"""What the engine needs to know, as plain frozen values (built from Config by the daemon).

The engine never sees the config file; `alpaca.daemon` maps Config + Secrets to these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from alpaca.core import constants as C

#: A UDP endpoint: (IPv4 address text, port).
Addr = tuple[str, int]


class DupPolicy(Enum):
    """Which packets get delayed extra copies."""

    NONE = "none"
    #: TCP SYN (SYN and SYN-ACK), and TCP or UDP with port 53 (the original's intent).
    SYN_DNS = "syn_dns"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One peer from the secrets file.

    Attributes:
        peer_id: 16-bit id.
        key: 16 or 32 secret bytes (hex-decoded). Never logged; repr masks it.
        addr: static UDP endpoint, or None if the peer's address is only learned.
    """

    peer_id: int
    key: bytes = field(repr=False)
    addr: Addr | None = None


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Everything the forwarding engine is configured with. Times in seconds.

    Attributes:
        self_id: our peer id.
        net: the tunnel /16 as an int (e.g. 10.17.0.0 -> 0x0A110000).
        group: group name; salts the key schedule, must match on every node.
        peers: every peer we may talk to, relay for, or hear from (self included).
        forwarders: upstream relays in order (at most 3).
        gateway: the peer our default route points to (client mode), if any.
        ports: names of the local UDP sockets; the index is the port number in Output.send.
        mtu: largest inner packet we accept from the TUN device, bytes.
        ttl: TTL of packets we originate (relays decrement; 0 is dropped).
        probe_interval: seconds between probes on each path.
        path_timeout: a path with no reply or packet for this long is down.
        path_lifetime: a learned path silent for this long is forgotten.
        dup_policy / dup_copies / dup_delay: duplicate-send; copy i leaves i*dup_delay late.
        dup_queue_max: bound on delayed copies waiting in the heap.
        pad_small: pad datagrams of at most 500 bytes to hide their size (as the original did).
        replay_window: anti-replay window in packets (power of two).
        inner_source_check: drop a received packet whose outside source address the host
            does not route back through its sender (see Engine._spoofed).
        route_cache_size / route_cache_ttl: bound and lifetime of the route cache.
    """

    self_id: int
    net: int
    group: str
    peers: dict[int, PeerSpec]
    forwarders: tuple[int, ...] = ()
    gateway: int | None = None
    ports: tuple[str, ...] = ("default",)
    mtu: int = 1400
    ttl: int = C.DEFAULT_TTL
    probe_interval: float = C.DEFAULT_PROBE_INTERVAL
    path_timeout: float = C.DEFAULT_PATH_TIMEOUT
    path_lifetime: float = C.DEFAULT_PATH_LIFETIME
    dup_policy: DupPolicy = DupPolicy.SYN_DNS
    dup_copies: int = 1
    dup_delay: float = C.DEFAULT_DUP_DELAY
    dup_queue_max: int = C.DEFAULT_DUP_QUEUE_MAX
    pad_small: bool = False
    replay_window: int = C.DEFAULT_REPLAY_WINDOW
    inner_source_check: bool = True
    route_cache_size: int = C.DEFAULT_ROUTE_CACHE_SIZE
    route_cache_ttl: float = C.DEFAULT_ROUTE_CACHE_TTL
