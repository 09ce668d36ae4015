"""The lab topology: nodes, links between them, and the node that stands for the internet.

A topology is a JSON file (format in docs/lab.md; the default is ``alpaca/lab/default.json``).
:func:`load_topology` reads it once into frozen dataclasses and reports every problem with
its location (``nodes[3].id: "16.x" is not a peer id``), like :func:`alpaca.config.load_config`.

Hostile input is refused with a located error, never a traceback: the file is at most
:data:`MAX_FILE_BYTES`; :func:`parse_topology` first checks the shape of the whole document
(nesting at most :data:`MAX_DEPTH` levels, no value referring to itself, integers within
±:data:`MAX_INT`, finite numbers, JSON types only), and the lab builds at most
:data:`MAX_NODES` namespaces and :data:`MAX_LINKS` links. The ranges of link impairments
(:data:`IMPAIR_LIMITS`) are shared with ``lab impair`` (:func:`impairment_problems`).

Pure: no I/O besides reading the file; everything else in ``alpaca.lab`` builds on this.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Any

from alpaca.configreader import json_problem
from alpaca.core.constants import MAX_FORWARDERS, MAX_LOCAL_PORTS
from alpaca.errors import ConfigError
from alpaca.lab.jsonshape import MAX_DEPTH, MAX_INT, shape_problems, short, show_value

DEFAULT_TOPOLOGY = Path(__file__).with_name("default.json")
NS_PREFIX = "alp-"
METRICS_PORT = 9586
_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,9}")
_IFNAME = re.compile(r"[a-z][a-z0-9_-]{0,14}")
_PEER_ID = re.compile(r"(\d{1,3})\.(\d{1,3})")
_NET = re.compile(r"\d{1,3}\.\d{1,3}")
_RESERVED_IFNAMES = {"lo", "mgmt", "alpaca0"}
#: management addresses beyond one per node: 11 before the first daemon, 10 between the
#: daemons and the other nodes (Topology.management_address), the broadcast address
_MANAGEMENT_SPARE = 23
#: Largest topology file read, in bytes (the default topology is about 2 KiB).
MAX_FILE_BYTES = 1 << 20
#: Nodes (one network namespace each) and links (one veth pair each) a lab may have.
MAX_NODES = 64
MAX_LINKS = 128
#: Static routes per node.
MAX_ROUTES = 16
#: Length of the lab's name and group, in characters.
MAX_LABEL = 64
#: Allowed range of each impairment figure, both ends included: (lowest, highest, unit).
IMPAIR_LIMITS: dict[str, tuple[float, float, str]] = {
    "loss_pct": (0.0, 100.0, "%"),
    "delay_ms": (0.0, 10_000.0, "ms"),
    "jitter_ms": (0.0, 10_000.0, "ms"),
    "rate_mbit": (0.0, 100_000.0, "Mbit/s"),
}
#: Lowest rate limit in Mbit/s (10 kbit/s); 0 means no limit.
MIN_RATE_MBIT = 0.01


class Role(Enum):
    """What a node runs: an alpaca daemon in server/client mode, or nothing (a plain host)."""

    SERVER = "server"
    FORWARDER = "forwarder"
    CLIENT = "client"
    HOST = "host"


@dataclass(frozen=True, slots=True)
class Route:
    """A static route set in the node's namespace before the daemon starts."""

    to: str
    """Destination: "default" or a CIDR."""
    via: IPv4Address


@dataclass(frozen=True, slots=True)
class Node:
    """One namespace (``alp-<name>``) and, unless a host, one alpaca daemon."""

    name: str
    role: Role
    peer_id: str | None = None
    """The daemon's peer id "A.B"; None for hosts."""
    port: int = 0
    """UDP port of a server or forwarder (0 for clients: the kernel picks)."""
    gateway: str | None = None
    forwarders: tuple[str, ...] = ()
    uplinks: tuple[str, ...] = ()
    """Client: interfaces that each get a UDP port bound to them (SO_BINDTODEVICE)."""
    routes: tuple[Route, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    """Keys merged last into the generated config.json (overrides)."""

    @property
    def namespace(self) -> str:
        return NS_PREFIX + self.name

    @property
    def is_daemon(self) -> bool:
        return self.role is not Role.HOST


@dataclass(frozen=True, slots=True)
class Endpoint:
    node: str
    ifname: str
    address: IPv4Interface


@dataclass(frozen=True, slots=True)
class Impairment:
    """Link conditions; every figure applies to each direction."""

    loss_pct: float = 0.0
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_mbit: float = 0.0

    @property
    def is_clear(self) -> bool:
        return not (self.loss_pct or self.delay_ms or self.jitter_ms or self.rate_mbit)


def figure_problem(key: str, value: object) -> str | None:
    """Why ``value`` cannot be the impairment figure ``key`` (a field of
    :class:`Impairment`), or None if it can."""
    low, high, unit = IMPAIR_LIMITS[key]
    allowed = f"allowed: {low:g}-{high:g} {unit}"
    if key == "rate_mbit":
        allowed = f"allowed: 0 (no limit) or {MIN_RATE_MBIT:g}-{high:g} {unit}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{show_value(value)} is not a number ({allowed})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{show_value(value)} is not a finite number ({allowed})"
    if not low <= value <= high or (key == "rate_mbit" and 0 < value < MIN_RATE_MBIT):
        return f"{show_value(value)} is out of range ({allowed})"
    return None


def impairment_problems(values: Mapping[str, object], labels: Mapping[str, str]) -> list[str]:
    """Every reason ``values`` (figures by :class:`Impairment` field) cannot be an impairment.

    Each line starts with the label of its field (``links[0].impair.loss_pct``, ``--loss``),
    taken from ``labels``. Figures missing from ``values`` count as 0.
    """
    problems = [f"{labels[key]}: {text}" for key in IMPAIR_LIMITS
                if (text := figure_problem(key, values.get(key, 0))) is not None]
    if not problems and values.get("jitter_ms") and not values.get("delay_ms"):
        problems.append(f"{labels['jitter_ms']}: {show_value(values['jitter_ms'])} needs a delay"
                        f" (jitter varies the delay: give {labels['delay_ms']} as well)")
    return problems


@dataclass(frozen=True, slots=True)
class Link:
    """A veth pair between two nodes."""

    name: str
    a: Endpoint
    b: Endpoint
    impair: Impairment = Impairment()

    @property
    def endpoints(self) -> tuple[Endpoint, Endpoint]:
        return (self.a, self.b)


@dataclass(frozen=True, slots=True)
class Topology:
    name: str
    group: str
    net: str
    internet: str
    management: IPv4Network
    nodes: tuple[Node, ...]
    links: tuple[Link, ...]
    source: Path

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def link(self, name: str) -> Link:
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(name)

    def node_by_id(self, peer_id: str) -> Node:
        for node in self.nodes:
            if node.peer_id == peer_id:
                return node
        raise KeyError(peer_id)

    @property
    def daemons(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.is_daemon)

    def management_address(self, node: Node) -> IPv4Address:
        """The node's address on the management bridge (metrics are served there)."""
        index = self.daemons.index(node) if node.is_daemon else len(self.daemons) + 10
        return self.management.network_address + 11 + index

    @property
    def management_root_address(self) -> IPv4Interface:
        """The root namespace's address on the management bridge (the first host address)."""
        return IPv4Interface(f"{self.management.network_address + 1}/{self.management.prefixlen}")

    def endpoints_of(self, name: str) -> list[tuple[Link, Endpoint]]:
        return [(link, ep) for link in self.links for ep in link.endpoints if ep.node == name]

    def address_seen_from(self, viewer: str, target: str) -> IPv4Address | None:
        """``target``'s address on a link it shares with ``viewer``, or None if none."""
        for link in self.links:
            names = {link.a.node: link.a, link.b.node: link.b}
            if viewer in names and target in names and viewer != target:
                return names[target].address.ip
        return None


def load_topology(path: Path | None = None) -> Topology:
    """Read and validate a topology file (default: the package's default.json)."""
    path = path or DEFAULT_TOPOLOGY
    return parse_topology(_read_json(path), path)


#: What an empty topology file needs.
_EMPTY_FIX = f"write the topology in it (see {DEFAULT_TOPOLOGY.name}, the default), or give another file"


def _read_json(path: Path) -> object:
    """The decoded JSON of a topology file of at most MAX_FILE_BYTES bytes."""
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the topology ({exc.strerror or exc})"]) from exc
    except ValueError as exc:  # a NUL byte in the path
        raise ConfigError([f"{show_value(str(path))}: not a usable file name ({exc})"]) from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB; a topology of"
                           f" {MAX_NODES} nodes and {MAX_LINKS} links needs far less"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([json_problem(str(path), text, exc, _EMPTY_FIX)]) from exc
    except RecursionError as exc:
        raise ConfigError([f"{path}: lists or objects nested too deeply"
                           f" (at most {MAX_DEPTH} levels)"]) from exc
    except ValueError as exc:  # json.loads refuses integers of more than 4300 digits
        raise ConfigError([f"{path}: an integer has thousands of digits"
                           f" (at most {len(str(MAX_INT))} digits)"]) from exc


def parse_topology(data: object, source: Path) -> Topology:
    """Validate decoded JSON; raise one ConfigError listing every located problem."""
    shape = shape_problems(data)
    if shape:
        raise ConfigError([f"{source}: {problem}" for problem in shape])
    checker = _Checker(str(source))
    topology = checker.topology(data, source)
    if checker.problems or topology is None:
        raise ConfigError(checker.problems or [f"{source}: not a topology"])
    return topology


class _Checker:
    """Field checks of a document that passed :func:`shape_problems`; collects problems."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[str] = []

    def fail(self, where: str, text: str) -> None:
        self.problems.append(f"{self.file}: {where}: {text}")

    def keys(self, obj: dict[str, Any], where: str, valid: set[str]) -> None:
        for key in sorted(set(obj) - valid):
            self.fail(f"{where}{short(key)}", f"unknown key (expected one of {', '.join(sorted(valid))})")

    def topology(self, data: object, source: Path) -> Topology | None:
        if not isinstance(data, dict):
            self.fail("top", "is not a JSON object")
            return None
        self.keys(data, "", {"name", "group", "net", "internet", "management", "nodes", "links"})
        nodes = tuple(n for n in self.list_of(data, "nodes", (MAX_NODES, "a network namespace"), self.node)
                      if n is not None)
        names = [n.name for n in nodes]
        for dup in sorted({n for n in names if names.count(n) > 1}):
            self.fail("nodes", f'name "{dup}" is used twice')
        ids = [n.peer_id for n in nodes if n.peer_id]
        for dup in sorted({i for i in ids if ids.count(i) > 1}):
            self.fail("nodes", f'peer id "{dup}" is used twice')
        links = tuple(ln for ln in self.list_of(data, "links", (MAX_LINKS, "a veth pair"),
                                                lambda i, o: self.link(i, o, names))
                      if ln is not None)
        link_names = [ln.name for ln in links]
        for dup in sorted({n for n in link_names if link_names.count(n) > 1}):
            self.fail("links", f'name "{dup}" is used twice')
        self.cross_check(nodes, links)
        internet = data.get("internet", "")
        if not isinstance(internet, str) or internet not in names:
            expected = f" (expected one of {', '.join(names)})" if names else ""
            self.fail("internet", f"{show_value(internet)} is not a node name{expected}")
            internet = ""
        management = self.network(data.get("management", "172.31.254.0/24"), "management")
        if management.num_addresses < len(nodes) + _MANAGEMENT_SPARE:
            self.fail("management", f"{management} is too small for {len(nodes)} nodes (use a /24)")
        net = data.get("net", "10.17")
        if not isinstance(net, str) or not _NET.fullmatch(net) or any(
                int(p) > 255 for p in net.split(".")):
            self.fail("net", f'{show_value(net)} is not the first two bytes of the tunnel network ("10.17")')
            net = "10.17"
        return Topology(
            name=self.label(data, "name", source.stem), group=self.label(data, "group", "alpaca-lab"),
            net=net, internet=internet,
            management=management, nodes=nodes, links=links, source=source,
        )

    def label(self, data: dict[str, Any], key: str, default: str) -> str:
        """The lab's ``name`` or ``group``: 1 to MAX_LABEL characters."""
        value = data.get(key, default)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_LABEL or "\0" in value:
            self.fail(key, f"{show_value(value)} is not a string of 1-{MAX_LABEL} characters")
            return default
        return value

    def list_of(self, data: dict[str, Any], key: str, limit: tuple[int, str], make: Any) -> list[Any]:
        """The checked items of a required list; ``limit`` is (most entries, what each builds)."""
        items = data.get(key)
        if not isinstance(items, list) or not items:
            self.fail(key, "is required: a non-empty list")
            return []
        most, each = limit
        if len(items) > most:
            self.fail(key, f"has {len(items)} entries; the lab builds at most {most} {key}"
                      f" (each is {each} on this machine)")
            return []
        return [make(f"{key}[{i}]", item) for i, item in enumerate(items)]

    def network(self, value: object, where: str) -> IPv4Network:
        try:
            if not isinstance(value, str):
                raise ValueError(value)
            return IPv4Network(value)
        except ValueError:
            self.fail(where, f'{show_value(value)} is not an IPv4 network such as "172.31.254.0/24"')
            return IPv4Network("172.31.254.0/24")

    def peer_id(self, value: object, where: str) -> str | None:
        match = _PEER_ID.fullmatch(value) if isinstance(value, str) else None
        if not match or int(match[1]) > 255 or int(match[2]) > 255:
            self.fail(where, f'{show_value(value)} is not a peer id (expected "A.B", each 0-255)')
            return None
        return match[0]

    def node(self, where: str, obj: object) -> Node | None:
        if not isinstance(obj, dict):
            self.fail(where, "is not an object")
            return None
        self.keys(obj, f"{where}.", {"name", "role", "id", "port", "gateway", "forwarders",
                                     "uplinks", "routes", "config"})
        name = obj.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            self.fail(f"{where}.name", f"{show_value(name)} is not a node name (1-10 of a-z 0-9 -)")
            return None
        if name == "gmt":  # its management link, alp-m<name>, would be the bridge alp-mgmt
            self.fail(f"{where}.name", '"gmt" is taken (the management bridge is alp-mgmt)')
            return None
        role_text = obj.get("role")
        if role_text not in {r.value for r in Role}:
            self.fail(f"{where}.role", f"{show_value(role_text)} is not server|forwarder|client|host")
            return None
        role = Role(role_text)
        peer_id = None
        if role is not Role.HOST:
            peer_id = self.peer_id(obj.get("id"), f"{where}.id")
        port = obj.get("port", 0)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            self.fail(f"{where}.port", f"{show_value(port)} is not a port number 0-65535")
            port = 0
        if role in (Role.SERVER, Role.FORWARDER) and not port:
            self.fail(f"{where}.port", "is required for a server or forwarder")
        gateway = None
        if role is Role.CLIENT:
            gateway = self.peer_id(obj.get("gateway"), f"{where}.gateway")
        forwarders = tuple(
            f for i, v in enumerate(self.optional_list(obj, "forwarders", where, MAX_FORWARDERS))
            if (f := self.peer_id(v, f"{where}.forwarders[{i}]"))
        )
        uplinks = tuple(u for i, u in enumerate(self.optional_list(obj, "uplinks", where, MAX_LOCAL_PORTS))
                        if self.ifname(u, f"{where}.uplinks[{i}]", reserved=set()))
        routes = tuple(rt for i, r in enumerate(self.optional_list(obj, "routes", where, MAX_ROUTES))
                       if (rt := self.route(r, f"{where}.routes[{i}]")))
        config = obj.get("config", {})
        if not isinstance(config, dict):
            self.fail(f"{where}.config", "is not an object of config.json keys")
            config = {}
        return Node(name, role, peer_id, port, gateway, forwarders, uplinks, routes, config)

    def optional_list(self, obj: dict[str, Any], key: str, where: str, limit: int) -> list[Any]:
        value = obj.get(key, [])
        if not isinstance(value, list):
            self.fail(f"{where}.{key}", f"{show_value(value)} is not a list")
            return []
        if len(value) > limit:
            self.fail(f"{where}.{key}", f"has {len(value)} entries, at most {limit}")
            return []
        return value

    def ifname(self, value: object, where: str, reserved: set[str]) -> bool:
        """Whether ``value`` is a usable interface name (recording why not)."""
        if isinstance(value, str) and _IFNAME.fullmatch(value) and value not in reserved:
            return True
        avoid = f", not {', '.join(sorted(reserved))}" if reserved else ""
        self.fail(where, f"{show_value(value)} is not a usable interface name"
                  f" (a-z 0-9 _ -, at most 15, starting with a letter{avoid})")
        return False

    def route(self, obj: object, where: str) -> Route | None:
        if not isinstance(obj, dict) or set(obj) != {"to", "via"}:
            self.fail(where, 'is not {"to": "default" or CIDR, "via": address}')
            return None
        to, via = obj["to"], obj["via"]
        ok = True
        try:
            if not isinstance(to, str):
                raise ValueError(to)
            if to != "default":
                IPv4Network(to)
        except ValueError:
            self.fail(f"{where}.to", f'{show_value(to)} is not "default" or a network such as "10.0.0.0/8"')
            ok = False
        try:
            if not isinstance(via, str):
                raise ValueError(via)
            gateway = IPv4Address(via)
        except ValueError:
            self.fail(f"{where}.via", f'{show_value(via)} is not an IPv4 address such as "198.18.0.1"')
            return None
        return Route(to, gateway) if ok else None

    def link(self, where: str, obj: object, names: list[str]) -> Link | None:
        if not isinstance(obj, dict):
            self.fail(where, "is not an object")
            return None
        self.keys(obj, f"{where}.", {"name", "endpoints", "impair"})
        name = obj.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            self.fail(f"{where}.name", f"{show_value(name)} is not a link name (1-10 of a-z 0-9 -)")
            return None
        ends = obj.get("endpoints")
        if not isinstance(ends, list) or len(ends) != 2:
            self.fail(f"{where}.endpoints", "is not a list of exactly two endpoints")
            return None
        parsed = [self.endpoint(e, f"{where}.endpoints[{i}]", names) for i, e in enumerate(ends)]
        a, b = parsed
        if a is None or b is None:
            return None
        if a.address.network != b.address.network:
            self.fail(f"{where}.endpoints", f"{a.address} and {b.address} are not in one subnet")
        return Link(name, a, b, self.impairment(obj.get("impair", {}), f"{where}.impair"))

    def endpoint(self, obj: object, where: str, names: list[str]) -> Endpoint | None:
        if not isinstance(obj, dict) or set(obj) != {"node", "ifname", "address"}:
            self.fail(where, 'is not {"node": ..., "ifname": ..., "address": "a.b.c.d/len"}')
            return None
        node, ifname, text = obj["node"], obj["ifname"], obj["address"]
        if not isinstance(node, str) or node not in names:
            self.fail(f"{where}.node", f"{show_value(node)} is not a node name")
        usable = self.ifname(ifname, f"{where}.ifname", _RESERVED_IFNAMES)
        try:
            if not isinstance(text, str):
                raise ValueError(text)
            address = IPv4Interface(text)
        except ValueError:
            self.fail(f"{where}.address", f"{show_value(text)} is not an address with a prefix length"
                      ' such as "172.16.12.2/24"')
            return None
        if address.network.prefixlen > 30 or address.ip in (address.network.network_address,
                                                              address.network.broadcast_address):
            self.fail(f"{where}.address", f"{address} is not a host address in a /30 or larger")
        if not isinstance(node, str) or not usable:
            return None
        return Endpoint(node, ifname, address)

    def impairment(self, obj: object, where: str) -> Impairment:
        if not isinstance(obj, dict):
            self.fail(where, "is not an object")
            return Impairment()
        self.keys(obj, f"{where}.", set(IMPAIR_LIMITS))
        values = {key: obj.get(key, 0) for key in IMPAIR_LIMITS}
        problems = impairment_problems(values, {key: f"{where}.{key}" for key in IMPAIR_LIMITS})
        for problem in problems:
            self.problems.append(f"{self.file}: {problem}")
        if problems:
            return Impairment()
        return Impairment(**{key: float(value) for key, value in values.items()})

    def cross_check(self, nodes: tuple[Node, ...], links: tuple[Link, ...]) -> None:
        by_id = {n.peer_id: n for n in nodes if n.peer_id}
        seen: dict[tuple[str, str], str] = {}
        addresses: dict[IPv4Address, str] = {}
        for link in links:
            for ep in link.endpoints:
                where = f'link "{link.name}"'
                if (ep.node, ep.ifname) in seen:
                    self.fail(where, f"{ep.node}:{ep.ifname} is already used by link"
                              f' "{seen[(ep.node, ep.ifname)]}"')
                seen[(ep.node, ep.ifname)] = link.name
                if ep.address.ip in addresses:
                    self.fail(where, f"{ep.address.ip} is already used on link"
                              f' "{addresses[ep.address.ip]}"')
                addresses[ep.address.ip] = link.name
        for i, node in enumerate(nodes):
            where = f"nodes[{i}]"
            for key, ref in [("gateway", node.gateway)] + [
                (f"forwarders[{j}]", f) for j, f in enumerate(node.forwarders)
            ]:
                if ref is not None and ref not in by_id:
                    self.fail(f"{where}.{key}", f'"{ref}" is not the id of a node')
            for j, up in enumerate(node.uplinks):
                if (node.name, up) not in seen:
                    self.fail(f"{where}.uplinks[{j}]", f'"{up}" is not an interface of a link of {node.name}')
            for fwd in node.forwarders:
                other = by_id.get(fwd)
                if other is not None and not any(
                    {link.a.node, link.b.node} == {node.name, other.name} for link in links
                ):
                    self.fail(f"{where}.forwarders", f"{fwd} ({other.name}) shares no link with {node.name}")


def is_lab_address(text: str) -> bool:
    """True for addresses the lab may use: private, 198.18.0.0/15 or documentation ranges."""
    return ipaddress.ip_address(text.split("/")[0]).is_private
