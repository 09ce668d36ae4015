"""The config file (JSON, the original's shape plus new optional keys), parsed once at the edge.

``load_config(path)`` reads the file, checks every key and returns a frozen :class:`Config`
with typed values (peer ids as ints, networks as ``IPv4Network``, times as float seconds,
paths resolved against the config file's directory). Every problem is collected, located
(``config.json: forwarders[1]: ...``) and stated with its fix, then raised together as one
:class:`~alpaca.errors.ConfigError`. Unknown keys are errors that name the nearest valid key.
Every key is documented in ``config/README.md``.

``Config.engine_settings(secrets)`` maps Config + Secrets to the engine's values.
Called from the command line at start-up; no side effects except reading files.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path

from alpaca.configreader import (
    CONFIG_MAX_BYTES,
    NAMED_TABLES,
    DuplicateKey,
    JsonObject,
    first_listed,
    json_float,
    json_integer,
    json_problem,
    named_in_line,
    no_duplicate_keys,
    read_chnroute_text,
    read_text_file,
    show,
    shown_path,
    text_lines,
)
from alpaca.core import constants as C
from alpaca.core.ids import digits_value, format_peer_id
from alpaca.core.settings import DupPolicy, EngineSettings, PeerSpec
from alpaca.errors import ConfigError
from alpaca.log import LEVELS
from alpaca.paths import socket_path_fault
from alpaca.secrets import Secrets
from alpaca.system import sched

log = logging.getLogger(__name__)


class Mode(Enum):
    """What the node does to the host: a client moves its default route into the tunnel,
    a server masquerades the tunnel network. Forwarding direction comes from ids, not mode."""

    SERVER = "server"
    CLIENT = "client"


#: Wire protocols a peer may speak (``protocol`` and ``peer_protocols``).
PROTOCOLS = ("v2", "legacy-6.1.2")
#: Routing table names every Linux host knows (iproute2's built-ins).
#: Where iproute2 keeps further table names.
#: Keys of the original that are accepted with a warning and ignored.
OBSOLETE_KEYS = {
    "ack_termination": "the delayed-ACK feature it belonged to was removed from the original",
    "use_dns": "the original parsed it but never used it",
}
DEFAULT_METRICS_LISTEN = "127.0.0.1:9586"
RUN_DIR = "/run/alpaca-tunnel"
STATE_DIR = "/var/lib/alpaca-tunnel"
_MAX_UNIX_PATH = 107
_IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")
#: The TUN device's name also names our nftables table and sits in sysctl keys: no dot (a
#: sysctl key separator), no @ or + (not in an nft identifier), no leading -.
_TUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,14}")
#: Names the kernel refuses for a device (they are its settings for every device).
_RESERVED_DEVICE_NAMES = ("all", "default")
_PORT_NAME = re.compile(r"[a-z0-9_-]{1,15}")
_BROADCAST = IPv4Address("255.255.255.255")
_NET = re.compile(r"(0|[1-9][0-9]{0,2})\.(0|[1-9][0-9]{0,2})")
_MTU_WHY = f"{C.OVERHEAD} bytes of every {C.MAX_DATAGRAM}-byte datagram are header and tag"


@dataclass(frozen=True, slots=True)
class PortConfig:
    """One local UDP socket (an entry of ``ports``)."""

    name: str
    """Short name ([a-z0-9_-], at most 15 characters); a metrics label and the engine's port id."""
    address: str = "0.0.0.0"
    """Local IPv4 address to bind. Default 0.0.0.0 (all)."""
    port: int = 0
    """Local UDP port, 0-65535. Default 0: the kernel picks one."""
    interface: str | None = None
    """Bind to this interface (SO_BINDTODEVICE), or None (default) for no binding."""


@dataclass(frozen=True, slots=True)
class ChnrouteConfig:
    """Bulk routes that send listed prefixes outside the tunnel (the original's chnroute)."""

    table: int
    """Routing table number the routes go into. Default "default" = 253."""
    gateway: IPv4Address | None
    """Next hop for the routes; None (the default, written "default") = the host's original
    default gateway."""
    data: Path
    """File with one ``a.b.c.d/len`` per line. Default route_data_cidr.txt in the config dir."""


@dataclass(frozen=True, slots=True)
class DupConfig:
    """Duplicate-send: delayed extra copies of selected packets."""

    policy: DupPolicy = DupPolicy.SYN_DNS
    """Which packets get copies: none, syn_dns (TCP SYN and port 53, default) or all."""
    copies: int = 1
    """Extra copies per selected packet, 0-3. Default 1."""
    delay: float = C.DEFAULT_DUP_DELAY
    """Seconds between copies (copy i leaves i*delay late), 0-2. Default 0.1 (key delay_ms)."""
    queue_max: int = C.DEFAULT_DUP_QUEUE_MAX
    """Most delayed copies waiting at once; more are dropped and counted. Default 4096."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """The Prometheus endpoint."""

    enabled: bool = True
    """Serve metrics. Default true; ``"metrics": false`` turns it off."""
    host: str = "127.0.0.1"
    """IPv4 address to listen on. Default 127.0.0.1."""
    port: int = 9586
    """TCP port to listen on. Default 9586."""


@dataclass(frozen=True, slots=True)
class Config:
    """A validated config file. Build it with :func:`load_config`."""

    path: Path
    """The config file; relative paths in it are relative to its directory."""
    mode: Mode
    """server or client (required, any case)."""
    group: str
    """Group name (required); must be the same on every node."""
    net: IPv4Network
    """The tunnel /16 (required, written "x.y", e.g. "10.17" = 10.17.0.0/16)."""
    id: int
    """Own peer id (required, "A.B", 0.2-255.254); the TUN address is net.A.B/16."""
    gateway: int | None
    """Peer whose tunnel address becomes the default route (required in client mode). Unused in
    server mode, where one that is not a usable peer id is a warning and None."""
    forwarders: tuple[int, ...]
    """Upstream relays, at most 3, in order. Default none."""
    port: int
    """The original's single UDP port, 0-65534 (0 = kernel picks). Default 0."""
    ports: tuple[PortConfig, ...]
    """Local UDP sockets, at most 4. Default: one named "default" on 0.0.0.0:``port``."""
    mtu: int
    """TUN MTU in bytes, 576-1436. Default 1400."""
    log_level: int
    """Logging level number (critical|error|warning|info|debug|notset). Default info (20)."""
    secret_file: Path
    """The secrets file. Default secrets.txt in the config dir."""
    chnroute: ChnrouteConfig | None
    """Bulk outside routes, or None (default) when the key is absent."""
    local_routes: tuple[IPv4Network, ...]
    """Client: destinations kept outside the tunnel (via the original gateway). Default none."""
    pre_up_cmds: tuple[str, ...]
    """Shell commands run before the TUN device is created. Default none."""
    post_up_cmds: tuple[str, ...]
    """Shell commands run after the TUN device has its address. Default none."""
    pre_down_cmds: tuple[str, ...]
    """Shell commands run at shutdown before the TUN device is removed. Default none."""
    post_down_cmds: tuple[str, ...]
    """Shell commands run at shutdown after the TUN device is removed. Default none."""
    tun_name: str = "alpaca0"
    """TUN interface name, at most 15 characters. Default alpaca0."""
    tun_txqueuelen: int = C.DEFAULT_TUN_TXQUEUELEN
    """Packets the kernel queues on the TUN device before dropping (default 64): a short queue
    keeps a saturating flow from adding tens of milliseconds to every other flow's latency,
    at 10-35 % less single-flow throughput (docs/performance.md)."""
    udp_rcvbuf_kib: int = C.DEFAULT_UDP_RCVBUF_KIB
    """Receive buffer of each UDP socket, KiB (default 208; not capped by net.core.rmem_max,
    the daemon has CAP_NET_ADMIN): the
    receiver's part of a saturating flow's standing queue forms here, so it bounds part of the
    latency a bulk flow adds to everything else; larger buffers trade latency for throughput."""
    udp_priority_lane: bool = True
    """Small datagrams (at most 292 bytes of UDP payload: pings, ACKs, DNS, probes) arrive on
    a second socket of each port, read first, instead of waiting behind the bulk standing in
    the receive buffer (alpaca.io.udp). Default on."""
    tun_priority_lane: bool = True
    """Small packets (at most 256 bytes: pings, ACKs, DNS) the host sends into the TUN device
    go to a second queue of it, read first, instead of waiting behind the bulk in the
    device's ring (alpaca.io.tun; needs Linux 4.16, and usually CAP_BPF (5.8+) or
    CAP_SYS_ADMIN, else one queue). Default on."""
    tun_offload: bool = True
    """Checksum and TCP segmentation offload on the TUN device (IFF_VNET_HDR): 64 KiB TCP
    super-packets are read and written in one syscall. Default on; off for troubleshooting."""
    tun_read_ahead_kib: int = C.DEFAULT_TUN_READ_AHEAD_KIB
    """Bulk packets read from the TUN device ahead of handling, KiB (default 128; 0: off), so
    that pings and ACKs queued behind a local bulk sender are read at once and handled first
    (alpaca.io.readahead)."""
    realtime_priority: int = 0
    """SCHED_RR priority of the daemon, 1-99 (alpaca.system.sched): the daemon then runs as
    soon as a packet arrives instead of waiting for its turn among the host's busy processes.
    0 (default): the scheduling the daemon was started with is left as it is. Applied at
    start and on reload."""
    ttl: int = C.DEFAULT_TTL
    """TTL of packets we originate, 1-15 (each relay decrements it). Default 15."""
    probe_interval: float = C.DEFAULT_PROBE_INTERVAL
    """Seconds between probes on each path (key probe_interval_ms, 50-60000). Default 1.0."""
    path_timeout: float = C.DEFAULT_PATH_TIMEOUT
    """Seconds of silence after which a path is down (key path_timeout_ms). Default 3.0."""
    path_lifetime: float = C.DEFAULT_PATH_LIFETIME
    """Seconds of silence after which a learned path is forgotten (key path_lifetime_s).
    Default 60."""
    dup: DupConfig = field(default_factory=DupConfig)
    """Duplicate-send settings."""
    pad_small_packets: bool = False
    """Pad datagrams of at most 500 bytes (by a random 250-752 bytes) to hide their size.
    Default false."""
    replay_window: int = C.DEFAULT_REPLAY_WINDOW
    """Anti-replay window in packets, a power of two 1024-1048576. Default 32768."""
    inner_source_check: bool = True
    """Drop a received packet whose source address the host does not route back through
    the peer that sent it (strict reverse-path check). Default true."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Prometheus endpoint. Default on, 127.0.0.1:9586."""
    control_socket: Path = Path("/run/alpaca-tunnel/alpaca0.sock")
    """Unix socket for ``alpaca-tunnel show``. Default /run/alpaca-tunnel/<tun_name>.sock."""
    state_file: Path = Path("/var/lib/alpaca-tunnel/alpaca0.epoch")
    """File keeping the sender epoch across restarts.
    Default /var/lib/alpaca-tunnel/<tun_name>.epoch."""
    strict_hooks: bool = False
    """A failing hook command stops start-up (true) or is logged (false, the default)."""
    route_table: int = NAMED_TABLES["default"]
    """Table the client's default route moves into. Default "default" = 253."""
    protocol: str = "v2"
    """Wire protocol: "v2" (default) or "legacy-6.1.2" (insecure, for old peers)."""
    peer_protocols: dict[int, str] = field(default_factory=dict)
    """Per-peer protocol overrides, peer id (not the own one) -> protocol. Default none."""
    warnings: tuple[str, ...] = ()
    """Non-fatal findings (obsolete keys), also logged at WARNING."""

    @property
    def tun_address(self) -> IPv4Interface:
        """Our tunnel address: net.A.B/16."""
        return IPv4Interface((int(self.net.network_address) + self.id, 16))

    def peer_address(self, peer_id: int) -> IPv4Address:
        """The tunnel address of ``peer_id`` in our net."""
        return IPv4Address(int(self.net.network_address) + peer_id)

    def engine_settings(self, secrets: Secrets) -> EngineSettings:
        """The engine's values from this config and ``secrets``.

        Raises:
            ConfigError: if a peer the config names (self, gateway, forwarders) has no key
                in the secrets, or a forwarder has no address there.
        """
        _check_against_secrets(self, secrets)
        peers = {
            peer.peer_id: PeerSpec(peer.peer_id, peer.key, peer.addr)
            for peer in secrets.peers.values()
        }
        return EngineSettings(
            self_id=self.id,
            net=int(self.net.network_address),
            group=self.group,
            peers=peers,
            forwarders=self.forwarders,
            gateway=self.gateway if self.mode is Mode.CLIENT else None,
            ports=tuple(port.name for port in self.ports),
            mtu=self.mtu,
            ttl=self.ttl,
            probe_interval=self.probe_interval,
            path_timeout=self.path_timeout,
            path_lifetime=self.path_lifetime,
            dup_policy=self.dup.policy,
            dup_copies=self.dup.copies,
            dup_delay=self.dup.delay,
            dup_queue_max=self.dup.queue_max,
            pad_small=self.pad_small_packets,
            replay_window=self.replay_window,
            inner_source_check=self.inner_source_check,
        )


def _check_against_secrets(config: Config, secrets: Secrets) -> None:
    where = secrets.path
    problems = []
    named = [(config.id, "the own id")]
    if config.mode is Mode.CLIENT and config.gateway is not None:
        named.append((config.gateway, "the gateway"))
    named += [(f, f"forwarders[{i}]") for i, f in enumerate(config.forwarders)]
    for peer_id, role in named:
        text = format_peer_id(peer_id)
        peer = secrets.peers.get(peer_id)
        if peer is None:
            problems.append(f"{where}: {role} {text} has no line (add {text} with its key)")
        elif role.startswith("forwarders") and peer.address is None and peer.hostname is None:
            problems.append(
                f"{where}: {role} {text} has no address (give its peer_ip and peer_port)"
            )
    if problems:
        raise ConfigError(problems)


def reach_warnings(config: Config, secrets: Secrets) -> list[str]:
    """Findings that do not stop the node but leave it unable to reach peers: see
    :func:`_unreachable_gateway` and :func:`_addresses_in_tunnel`."""
    return _unreachable_gateway(config, secrets) + _addresses_in_tunnel(config, secrets)


def _addresses_in_tunnel(config: Config, secrets: Secrets) -> list[str]:
    """Peers whose address lies inside the tunnel's own network (one finding naming the first
    MAX_LISTED): the host routes that network into the TUN device, so the tunnel's
    datagrams to them would go into the tunnel itself."""
    inside = sorted((peer.peer_id, peer.address) for peer in secrets.peers.values()
                    if peer.address and IPv4Address(peer.address) in config.net)
    if not inside:
        return []
    named = named_in_line([f"{format_peer_id(peer)} ({address})" for peer, address in inside])
    return [f"{shown_path(secrets.path)}: peer_ip inside the tunnel's network {config.net}"
            f" ({shown_path(config.path)}: net): {named}: datagrams to them would go into the"
            f" tunnel itself; give each peer's address on the underlying network"]


def _unreachable_gateway(config: Config, secrets: Secrets) -> list[str]:
    """A client whose gateway has no address, without forwarders, cannot send to it, and its
    default route then leads nowhere unless the gateway speaks first (which needs this node's
    address in the gateway's secrets; the own line here has none either)."""
    gateway = secrets.peers.get(config.gateway) if config.gateway is not None else None
    own = secrets.peers.get(config.id)
    if (config.mode is not Mode.CLIENT or config.forwarders or gateway is None or own is None
            or gateway.address or gateway.hostname or own.address or own.hostname):
        return []
    text = format_peer_id(gateway.peer_id)
    return [f"{shown_path(secrets.path)}: the gateway {text} has no address and there are no"
            f" forwarders: this node cannot send to it, and its default route leads nowhere until"
            f" {text} speaks first (only if {text}'s secrets give this node's address, or a"
            f" forwarder still relays its datagrams here); give"
            f" {text}'s peer_ip and peer_port, or forwarders in {shown_path(config.path)}"]


# --- Loading -------------------------------------------------------------------------------


def load_config(path: Path) -> Config:
    """Read and validate ``path`` (UTF-8 JSON, a leading BOM dropped, at most CONFIG_MAX_BYTES).

    Raises:
        ConfigError: with one located line per problem.
    """
    text = read_text_file(path, "the config file", CONFIG_MAX_BYTES,
                          "point -c at the JSON config file")
    data = _decode_json(path, text)
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a JSON object {{...}} at the top"])
    config = _Builder(path, data).build()
    for warning in config.warnings:
        log.warning("%s", warning)
    return config


#: What an empty config file needs.
_EMPTY_CONFIG_FIX = ('write the config in it (a JSON object {"mode": ..., "group": ..., ...}),'
                     " or point -c at the JSON config file")


def _decode_json(path: Path, text: str) -> object:
    """The JSON value of ``text``; integers too long to convert stay HugeInteger, numbers too
    large for a float HugeNumber, reported by the getter of their key."""
    try:
        return json.loads(text, object_pairs_hook=no_duplicate_keys, parse_int=json_integer,
                          parse_float=json_float)
    except json.JSONDecodeError as exc:
        raise ConfigError([json_problem(str(path), text, exc, _EMPTY_CONFIG_FIX)]) from exc
    except DuplicateKey as exc:
        raise ConfigError([f"{path}: invalid JSON: key {show(str(exc))} is given twice"]) from exc
    except RecursionError as exc:
        raise ConfigError([f"{path}: invalid JSON: [ ] and {{ }} nested too deep"]) from exc


TOP_KEYS = [
    "mode", "group", "net", "id", "gateway", "forwarders", "port", "mtu", "log_level",
    "secret_file", "chnroute", "local_routes", "pre_up_cmds", "post_up_cmds", "pre_down_cmds",
    "post_down_cmds", "tun_name", "tun_txqueuelen", "tun_offload", "tun_read_ahead_kib",
    "tun_priority_lane",
    "udp_rcvbuf_kib", "udp_priority_lane", "realtime_priority", "ports", "ttl",
    "probe_interval_ms", "path_timeout_ms", "path_lifetime_s", "dup", "pad_small_packets",
    "replay_window", "inner_source_check", "metrics", "control_socket", "state_file",
    "strict_hooks", "route_table", "protocol", "peer_protocols",
    *OBSOLETE_KEYS,
]  # fmt: skip


class _Builder:
    """Reads every key of the top object into a Config, collecting all problems."""

    def __init__(self, path: Path, data: dict[str, object]) -> None:
        self.path = path
        self.base = path.absolute()
        self.problems: list[str] = []
        #: Non-fatal findings of the getters (an invalid gateway of a server).
        self.warnings: list[str] = []
        self.top = JsonObject(data, "", self.problems, str(path))

    def build(self) -> Config:
        top = self.top
        top.check_keys(TOP_KEYS)
        mode = self.mode()
        own = self.own_id()
        tun_name = self.tun_name()
        port = top.integer("port", 0, 0, 65534)
        probe = top.integer("probe_interval_ms", 1000, 50, 60_000)
        timeout = top.integer("path_timeout_ms", 3000, 1, 600_000)
        if timeout <= probe and top.given("path_timeout_ms"):
            top.fail("path_timeout_ms", f"{timeout} must be above probe_interval_ms ({probe})")
        elif timeout <= probe:
            top.fail("probe_interval_ms", f"{probe} must be below path_timeout_ms ({timeout} by"
                                          " default; raise path_timeout_ms with it)")
        lifetime = top.integer("path_lifetime_s", 60, 1, 86_400)
        if lifetime * 1000 < timeout:
            top.fail("path_lifetime_s", f"{lifetime} s is shorter than path_timeout_ms ({timeout})")
        warnings = tuple(
            f"{self.path}: {key}: obsolete key, ignored ({why}; remove it)"
            for key, why in OBSOLETE_KEYS.items()
            if key in top.data
        )
        if mode is not Mode.CLIENT and top.data.get("local_routes"):
            warnings += (f"{self.path}: local_routes: ignored in {mode.value} mode (they keep "
                         "prefixes out of a client's tunnel; a server routes nothing into it)",)
        config = Config(
            path=self.path,
            mode=mode,
            group=self.group(),
            net=self.net(),
            id=own,
            gateway=self.gateway(mode, own),
            forwarders=self.forwarders(own),
            port=port,
            ports=self.ports(port),
            mtu=top.integer("mtu", 1400, C.MTU_MIN, C.MTU_MAX, _MTU_WHY),
            log_level=self.log_level(),
            secret_file=top.path("secret_file", "secrets.txt", self.base),
            chnroute=self.chnroute(),
            local_routes=self.local_routes(),
            pre_up_cmds=top.strings("pre_up_cmds"),
            post_up_cmds=top.strings("post_up_cmds"),
            pre_down_cmds=top.strings("pre_down_cmds"),
            post_down_cmds=top.strings("post_down_cmds"),
            tun_name=tun_name,
            tun_txqueuelen=top.integer("tun_txqueuelen", C.DEFAULT_TUN_TXQUEUELEN, 2, 100_000),
            tun_offload=top.boolean("tun_offload", True),
            tun_priority_lane=top.boolean("tun_priority_lane", True),
            udp_rcvbuf_kib=top.integer("udp_rcvbuf_kib", C.DEFAULT_UDP_RCVBUF_KIB, 16, 1 << 20),
            udp_priority_lane=top.boolean("udp_priority_lane", True),
            tun_read_ahead_kib=top.integer(
                "tun_read_ahead_kib", C.DEFAULT_TUN_READ_AHEAD_KIB, 0, 1 << 16
            ),
            realtime_priority=top.integer("realtime_priority", 0, 0, sched.MAX_PRIORITY),
            ttl=top.integer("ttl", C.DEFAULT_TTL, 1, C.MAX_TTL),
            probe_interval=probe / 1000,
            path_timeout=timeout / 1000,
            path_lifetime=float(lifetime),
            dup=self.dup(),
            pad_small_packets=top.boolean("pad_small_packets", False),
            replay_window=self.replay_window(),
            inner_source_check=top.boolean("inner_source_check", True),
            metrics=self.metrics(),
            control_socket=self.control_socket(tun_name),
            state_file=top.path("state_file", f"{STATE_DIR}/{tun_name}.epoch", self.base),
            strict_hooks=top.boolean("strict_hooks", False),
            route_table=top.table("route_table", "default"),
            protocol=self.protocol(top, "protocol", top.data.get("protocol")),
            peer_protocols=self.peer_protocols(own),
            warnings=(*warnings, *self.warnings),  # after the getters above: they add to it
        )
        if self.problems:
            raise ConfigError(self.problems)
        return config

    def mode(self) -> Mode:
        text = self.top.required_string("mode")
        if text is None:
            return Mode.SERVER
        try:
            return Mode(text.lower())
        except ValueError:
            self.top.fail("mode", f'{show(text)} is not a mode (expected "server" or "client")')
            return Mode.SERVER

    def group(self) -> str:
        group = self.top.required_string("group")
        if group == "":
            self.top.fail("group", "is empty (use the same group name on every node)")
        return group or ""

    def net(self) -> IPv4Network:
        text = self.top.required_string("net")
        if text is None:
            return IPv4Network("10.17.0.0/16")
        match = _NET.fullmatch(text)
        if match and 1 <= int(match[1]) <= 255 and int(match[2]) <= 255:
            net = IPv4Network(f"{match[1]}.{match[2]}.0.0/16")
            if net.is_loopback or net.is_multicast or net.is_reserved:
                kind = "loopback" if net.is_loopback else "multicast" if net.is_multicast else "reserved"
                self.top.fail("net", f'{show(text)} is a {kind} network, which no host routes to a '
                              'device; choose a private one such as "10.17"')
            return net
        self.top.fail("net", f'{show(text)} is not a /16 prefix (expected "X.Y" such as "10.17",'
                      " X 1-126 or 128-223, Y 0-255, no leading zeros)")
        return IPv4Network("10.17.0.0/16")

    def own_id(self) -> int:
        if not self.top.given("id"):
            self.top.fail("id", 'is required (this node\'s peer id, "A.B")')
            return 2
        return self.top.peer_id("id", self.top.data["id"]) or 2

    def gateway(self, mode: Mode, own: int) -> int | None:
        if not self.top.given("gateway"):
            if mode is Mode.CLIENT:
                self.top.fail("gateway", "is required in client mode (the peer id whose tunnel"
                              " address becomes the default route)")
            return None
        if mode is Mode.SERVER:
            return self.server_gateway()
        gateway = self.top.peer_id("gateway", self.top.data["gateway"])
        if gateway == own:
            self.top.fail("gateway", f"{format_peer_id(own)} is this node's own id")
        return gateway

    def server_gateway(self) -> int | None:
        """The gateway of a server, which uses none (``check`` shows it): one that is not a
        usable peer id is a warning and None, as the original checked it in client mode only."""
        found: list[str] = []
        gateway = JsonObject(self.top.data, "", found, self.top.file).peer_id("gateway",
                                                                              self.top.data["gateway"])
        self.warnings += [f"{problem}; ignored in server mode (remove the key)" for problem in found]
        return gateway

    def forwarders(self, own: int) -> tuple[int, ...]:
        result: list[int] = []
        for where, item in self.top.items("forwarders", C.MAX_FORWARDERS):
            peer = self.top.peer_id(where, item)
            if peer is None:
                continue
            if peer == own:
                self.top.fail(where, f"{format_peer_id(peer)} is this node's own id")
            elif peer in result:
                self.top.fail(where, f"{format_peer_id(peer)} is listed twice")
            else:
                result.append(peer)
        return tuple(result)

    def ports(self, port: int) -> tuple[PortConfig, ...]:
        top = self.top
        if top.data.get("ports") is None:  # absent or null
            return (PortConfig("default", "0.0.0.0", port, None),)
        if port:
            top.fail("port", 'give either "port" or "ports", not both (move the port into "ports")')
        entries = top.items("ports", C.MAX_LOCAL_PORTS)
        if isinstance(top.data["ports"], list) and not entries:
            top.fail("ports", "is empty (give at least one port, or remove the key)")
        result: list[PortConfig] = []
        for where, item in entries:
            entry = self.one_port(where, item)
            if entry is None:
                continue
            if entry.name and any(entry.name == other.name for other in result):
                top.fail(f"{where}.name", f"{show(entry.name)} is used twice (names must be unique)")
            elif entry.port and (clash := next((o for o in result if _overlap(entry, o)), None)):
                top.fail(where, f"{_where(entry)} overlaps port {clash.name} ({_where(clash)}): two "
                         "sockets cannot share a port unless their addresses differ (neither "
                         "0.0.0.0) or both are bound to different interfaces")
            result.append(entry)
        return tuple(result)

    def one_port(self, where: str, item: object) -> PortConfig | None:
        if not isinstance(item, dict):
            self.top.fail(where, f"{show(item)} is not an object {{\"name\": ..., \"port\": ...}}")
            return None
        obj = JsonObject(item, where, self.problems, self.top.file)
        obj.check_keys(["name", "address", "port", "interface"])
        name = obj.required_string("name")
        if name is not None and not _PORT_NAME.fullmatch(name):
            obj.fail("name", f"{show(name)} is not a port name (1-15 of a-z 0-9 _ -)")
            name = None
        address = obj.string("address", "0.0.0.0")
        fault = _address_fault(address, wildcard=True)
        if fault:
            obj.fail("address", f"{show(address)} {fault}")
        port = obj.integer("port", 0, 0, 65535)
        return PortConfig(name or "", address, port, self.ifname(obj, "interface"))

    def ifname(self, obj: JsonObject, key: str) -> str | None:
        """An interface name at ``key``; None if absent, null or invalid (recorded)."""
        value = obj.data.get(key)
        if value is None:
            return None
        if isinstance(value, str) and _IFNAME.fullmatch(value) and value not in (".", ".."):
            return value
        obj.fail(key, f"{show(value)} is not an interface name (1-15 of A-Z a-z 0-9 _ . - @ +)")
        return None

    def tun_name(self) -> str:
        value = self.top.data.get("tun_name")
        if value is None:
            return "alpaca0"
        if value in _RESERVED_DEVICE_NAMES:
            self.top.fail("tun_name", f'{show(value)} names every device in the kernel\'s settings '
                                      '(net.ipv4.conf.all, .default); choose another name')
            return "alpaca0"
        if isinstance(value, str) and _TUN_NAME.fullmatch(value):
            return value
        self.top.fail("tun_name", f"{show(value)} is not a TUN device name (1-15 of A-Z a-z 0-9"
                                  " _ -, not starting with -)")
        return "alpaca0"

    def log_level(self) -> int:
        text = self.top.string("log_level", "info")
        if text.lower() not in LEVELS:
            names = ", ".join(LEVELS)
            self.top.fail("log_level", f"{show(text)} is not a level (expected one of {names})")
            return logging.INFO
        return LEVELS[text.lower()]

    def chnroute(self) -> ChnrouteConfig | None:
        obj = self.top.child("chnroute")
        if obj is None:
            return None
        obj.check_keys(["table", "gateway", "data"])
        table = obj.table("table", "default")
        gateway_text = obj.string("gateway", "default")
        gateway = None
        if gateway_text != "default":
            fault = _address_fault(gateway_text, wildcard=False)
            if fault is None:
                gateway = IPv4Address(gateway_text)
            else:
                obj.fail("gateway", f'{show(gateway_text)} {fault} (give "default" or the address'
                         " of the router on the way out)")
        data = obj.path("data", "route_data_cidr.txt", self.base)
        problem = _not_a_file(data)
        if problem:
            obj.fail("data", f"{shown_path(data)} {problem} (give a file with one a.b.c.d/len a line)")
        return ChnrouteConfig(table, gateway, data)

    def local_routes(self) -> tuple[IPv4Network, ...]:
        result = []
        for where, item in self.top.items("local_routes"):
            network = _network(item)
            if isinstance(network, str):
                self.top.fail(where, network)
            elif network.prefixlen == 0:
                self.top.fail(where, f"{network} would route every destination outside the"
                                     " tunnel; list the networks to keep outside instead")
            else:
                result.append(network)
        return tuple(result)

    def dup(self) -> DupConfig:
        obj = self.top.child("dup")
        if obj is None:
            return DupConfig()
        obj.check_keys(["policy", "copies", "delay_ms", "queue_max"])
        text = obj.string("policy", "syn_dns")
        try:
            policy = DupPolicy(text)
        except ValueError:
            obj.fail("policy", f'{show(text)} is not a policy (expected "none", "syn_dns" or "all")')
            policy = DupPolicy.SYN_DNS
        return DupConfig(
            policy=policy,
            copies=obj.integer("copies", 1, 0, C.MAX_DUP_COPIES),
            delay=obj.integer("delay_ms", 100, 0, int(C.MAX_DUP_DELAY * 1000)) / 1000,
            queue_max=obj.integer("queue_max", C.DEFAULT_DUP_QUEUE_MAX, 1, 1_000_000),
        )

    def replay_window(self) -> int:
        value = self.top.integer("replay_window", C.DEFAULT_REPLAY_WINDOW, 1024, 1 << 20)
        if value & (value - 1):
            self.top.fail("replay_window", f"{value} is not a power of two (e.g. 32768)")
        return value

    def metrics(self) -> MetricsConfig:
        value = self.top.data.get("metrics", True)
        if value is None or value is False:
            return MetricsConfig(enabled=False)
        if not isinstance(value, dict):
            if value is not True:
                expected = '{"listen": "host:port"} or false'
                self.top.fail("metrics", f"{show(value)} is not {expected}")
            return MetricsConfig()
        obj = JsonObject(value, "metrics", self.problems, self.top.file)
        obj.check_keys(["listen"])
        listen = obj.string("listen", DEFAULT_METRICS_LISTEN)
        host, _, port_text = listen.rpartition(":")
        port = digits_value(port_text, 5)
        if not _is_ipv4(host) or port is None or not 1 <= port <= 65535:
            obj.fail("listen", f'{show(listen)} is not IPv4:port (e.g. "{DEFAULT_METRICS_LISTEN}")')
            return MetricsConfig()
        fault = _address_fault(host, wildcard=True)
        if fault:
            obj.fail("listen", f"{show(host)} {fault} (listen on 127.0.0.1, 0.0.0.0 or an address"
                     " of this host)")
            return MetricsConfig()
        return MetricsConfig(True, host, port)

    def control_socket(self, tun_name: str) -> Path:
        path = self.top.path("control_socket", f"{RUN_DIR}/{tun_name}.sock", self.base)
        if len(os.fsencode(path)) > _MAX_UNIX_PATH:  # the bytes the kernel is given
            self.top.fail("control_socket", f"{shown_path(path)} is longer than {_MAX_UNIX_PATH} bytes"
                          " (the limit of a unix socket path; choose a shorter one)")
        fault = socket_path_fault(path)
        if fault:
            self.top.fail("control_socket", f"{show(str(path))} {fault}")
        return path

    def protocol(self, obj: JsonObject, key: str, value: object) -> str:
        if value is None:
            return PROTOCOLS[0]
        if isinstance(value, str) and value in PROTOCOLS:
            return value
        obj.fail(key, f"{show(value)} is not a protocol (expected one of {', '.join(PROTOCOLS)})")
        return PROTOCOLS[0]

    def peer_protocols(self, own: int) -> dict[int, str]:
        obj = self.top.child("peer_protocols")
        if obj is None:
            return {}
        result: dict[int, str] = {}
        for key, value in obj.data.items():
            peer = obj.peer_id(key, key)
            protocol = self.protocol(obj, key, value)
            if peer is None:
                continue
            if peer == own:
                obj.fail(key, f'{format_peer_id(peer)} is this node\'s own id; remove the entry ("protocol"'
                              " sets the one this node speaks to every peer)")
            elif peer in result:
                obj.fail(key, f"{format_peer_id(peer)} is listed twice (keep one entry per peer)")
            else:
                result[peer] = protocol
        return result


def _not_a_file(path: Path) -> str | None:
    """None if ``path`` is a file, else why not ("does not exist", "is not a file", or the
    system's reason: a name too long, a directory that may not be searched)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be checked: {exc.strerror or exc}"
    return None if stat.S_ISREG(mode) else "is not a file"


def _overlap(a: PortConfig, b: PortConfig) -> bool:
    """Whether the kernel refuses to bind ``a`` beside ``b`` (the same UDP port, addresses
    equal or one the wildcard, devices equal or one unbound)."""
    return (a.port == b.port and (a.address == b.address or "0.0.0.0" in (a.address, b.address))
            and (a.interface == b.interface or None in (a.interface, b.interface)))


def _where(port: PortConfig) -> str:
    return f"{port.address}:{port.port}" + (f" on {port.interface}" if port.interface else "")


def _address_fault(text: str, *, wildcard: bool) -> str | None:
    """What makes ``text`` unusable as a unicast IPv4 address (0.0.0.0 allowed with
    ``wildcard``: a socket bound to every address); None when it is usable."""
    try:
        address = IPv4Address(text)
    except ValueError:
        return "is not an IPv4 address"
    if address.is_multicast or address == _BROADCAST:
        return "is a multicast or broadcast address, not one of a host"
    if address.is_unspecified and not wildcard:
        return "is the unspecified address, not one of a host"
    return None


def _is_ipv4(text: str) -> bool:
    try:
        IPv4Address(text)
    except ValueError:
        return False
    return True


def _network(item: object) -> IPv4Network | str:
    """``item`` as an IPv4 network (an address is a /32), or the problem as text."""
    if not isinstance(item, str):
        return f"{show(item)} is not an IPv4 address or prefix"
    try:
        return IPv4Network(item)
    except ValueError:
        pass
    try:
        loose = IPv4Network(item, strict=False)
    except ValueError:
        return f'{show(item)} is not an IPv4 address or prefix (e.g. "10.0.0.0/8")'
    return f'{show(item)} has host bits set (did you mean "{loose}"?)'


def read_chnroute(path: Path) -> tuple[IPv4Network, ...]:
    """Read a chnroute data file: one ``a.b.c.d/len`` per line, ``#`` comments, blank lines.

    Prefixes of length 0 are skipped, as the original did. The file is UTF-8, at most
    CHNROUTE_MAX_BYTES (alpaca.configreader).

    Raises:
        ConfigError: unreadable, too large or not UTF-8, or one located line per bad prefix
            (the first MAX_LISTED, then a count of the rest).
    """
    lines = text_lines(read_chnroute_text(path))
    problems: list[str] = []
    result = []
    for number, line in enumerate(lines, start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        network = _network(text)
        if isinstance(network, str):
            problems.append(f"{shown_path(path)}:{number}: {network}")
        elif network.prefixlen > 0:
            result.append(network)
    if problems:
        raise ConfigError(first_listed(problems, shown_path(path)))
    return tuple(result)
