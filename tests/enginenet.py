"""EngineNet: several Engines joined by a fake network on a virtual clock.

Each node owns one UDP endpoint per local port. Links between endpoints carry a one-way
delay, jitter (reordering) and a loss probability, all driven by one seeded RNG, so every
scenario is deterministic. `run(until)` interleaves deliveries and engine timers in time order.
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
from dataclasses import dataclass, field

from alpaca.core import offload
from alpaca.core.engine import Engine
from alpaca.core.header import HEADER
from alpaca.core.settings import DupPolicy, EngineSettings, PeerSpec

NET = 0x0A110000  # 10.17.0.0/16


def pid(text: str) -> int:
    a, b = text.split(".")
    return int(a) * 256 + int(b)


def tunnel_ip(peer: int) -> str:
    return f"10.17.{peer >> 8}.{peer & 0xFF}"


def ipv4(src: str, dst: str, proto: int = 1, payload: bytes = b"x" * 36, *, syn: bool = False,
         sport: int = 40000, dport: int = 80) -> bytes:
    """A minimal IPv4 packet (checksum left zero: the engine does not check it)."""
    if proto in (6, 17):
        if proto == 6:
            l4 = struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x02 if syn else 0x10, 0, 0, 0)
        else:
            l4 = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0)
        payload = l4 + payload
    total = 20 + len(payload)
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, proto, 0,
                       bytes(int(x) for x in src.split(".")), bytes(int(x) for x in dst.split(".")))
    return head + payload


@dataclass
class Link:
    """One direction of a link between two endpoints."""

    delay: float = 0.005
    jitter: float = 0.0
    loss: float = 0.0
    up: bool = True


@dataclass
class Node:
    name: str
    peer_id: int
    endpoints: list[tuple[str, int]]
    engine: Engine | None = None
    tun: list[bytes] = field(default_factory=list)
    sent: int = 0
    #: TUN writes that arrived with a partial checksum (completed before recording).
    partial_writes: int = 0


class NetOutput:
    def __init__(self, net: EngineNet, node: Node) -> None:
        self.net, self.node = net, node

    def send(self, port: int, addr: tuple[str, int], data: bytes) -> bool:
        self.node.sent += 1
        return self.net.transmit(self.node.endpoints[port], addr, data)

    def write_tun(self, packet: bytes, csum_partial: bool = False) -> bool:
        """Record what a TUN device without offload receives: a completed checksum."""
        complete = offload.whole(packet, csum_partial)
        if complete is None:
            return False
        self.node.tun.append(complete)
        self.node.partial_writes += csum_partial
        return True


class EngineNet:
    """A network of engines. Build nodes with `add`, links with `link`, then `start`."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.nodes: dict[str, Node] = {}
        self.links: dict[tuple[tuple[str, int], tuple[str, int]], Link] = {}
        self.owner: dict[tuple[str, int], tuple[Node, int]] = {}
        self._events: list[tuple[float, int, tuple[str, int], tuple[str, int], bytes]] = []
        self._seq = itertools.count()
        self.keys: dict[int, bytes] = {}
        self.static: dict[int, tuple[str, int]] = {}
        self.epochs = itertools.count(1000)
        #: ground truth: the counters sent (with when) and those that arrived, per (src id, dst id)
        self.counters_sent: dict[tuple[int, int], dict[int, float]] = {}
        self.counters_arrived: dict[tuple[int, int], set[int]] = {}

    def add(self, name: str, peer: str, endpoints: list[tuple[str, int]], *, static: bool = True) -> Node:
        node = Node(name, pid(peer), endpoints)
        self.nodes[name] = node
        for i, ep in enumerate(endpoints):
            self.owner[ep] = (node, i)
        self.keys[node.peer_id] = bytes([node.peer_id & 0xFF, node.peer_id >> 8]) * 8
        if static:
            self.static[node.peer_id] = endpoints[0]
        return node

    def link(self, a: tuple[str, int], b: tuple[str, int], **props: float) -> tuple[Link, Link]:
        """Connect two endpoints both ways with the same properties; returns (a->b, b->a)."""
        ab, ba = Link(**props), Link(**props)  # type: ignore[arg-type]
        self.links[(a, b)] = ab
        self.links[(b, a)] = ba
        return ab, ba

    def settings(self, node: Node, **kw: object) -> EngineSettings:
        peers = {p: PeerSpec(p, k, self.static.get(p)) for p, k in self.keys.items()}
        base: dict[str, object] = dict(
            self_id=node.peer_id, net=NET, group="test-group", peers=peers,
            ports=tuple(f"p{i}" for i in range(len(node.endpoints))), dup_policy=DupPolicy.NONE,
        )
        base.update(kw)
        return EngineSettings(**base)  # type: ignore[arg-type]

    def start(self, node: Node, resolver: object = None, **kw: object) -> Engine:
        node.engine = Engine(self.settings(node, **kw), NetOutput(self, node), epoch=next(self.epochs),
                             random_bytes=lambda n: bytes(n), resolver=resolver)  # type: ignore[arg-type]
        return node.engine

    def transmit(self, src: tuple[str, int], dst: tuple[str, int], data: bytes) -> bool:
        link = self.links.get((src, dst))
        if link is None:
            return False  # no route: the kernel would refuse (ENETUNREACH)
        key, counter = _flow_of(data)
        self.counters_sent.setdefault(key, {}).setdefault(counter, self.now)
        if not link.up or self.rng.random() < link.loss:
            return True  # lost on the wire: the sender cannot tell
        at = self.now + link.delay + (self.rng.random() * link.jitter if link.jitter else 0.0)
        heapq.heappush(self._events, (at, next(self._seq), src, dst, data))
        return True

    def run(self, duration: float) -> None:
        """Advance the clock by ``duration``, delivering datagrams and firing timers in order."""
        end = self.now + duration
        while True:
            t_event = self._events[0][0] if self._events else None
            t_timer, timer_node = None, None
            for node in self.nodes.values():
                if node.engine is None:
                    continue
                d = node.engine.next_deadline()
                if d is not None and (t_timer is None or d < t_timer):
                    t_timer, timer_node = d, node
            candidates = [t for t in (t_event, t_timer) if t is not None]
            nxt = min(candidates) if candidates else None
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            if t_event is not None and t_event <= (t_timer if t_timer is not None else t_event):
                _, _, src, dst, data = heapq.heappop(self._events)
                self.counters_arrived.setdefault(_flow_of(data)[0], set()).add(_flow_of(data)[1])
                owner = self.owner.get(dst)
                if owner is not None and owner[0].engine is not None:
                    owner[0].engine.on_datagram(data, src, owner[1], self.now)
            elif timer_node is not None and timer_node.engine is not None:
                timer_node.engine.on_timer(self.now)
        self.now = end

    def never_arrived(self, src: Node, dst: Node, since: float, before: float) -> int:
        """Datagrams from ``src`` to ``dst`` sent from ``since`` to ``before`` (seconds) that no
        link delivered."""
        key = (src.peer_id, dst.peer_id)
        arrived = self.counters_arrived.get(key, set())
        return sum(1 for c, at in self.counters_sent.get(key, {}).items()
                   if since <= at < before and c not in arrived)

    def inject_tun(self, node: Node, packet: bytes, csum_partial: bool = False) -> None:
        assert node.engine is not None
        node.engine.on_tun_packet(packet, self.now, csum_partial)


def _flow_of(data: bytes) -> tuple[tuple[int, int], int]:
    """((src id, dst id), counter) of a datagram, from its header."""
    _, _, _, _, src, dst, _, counter = HEADER.unpack_from(data)
    return (src, dst), counter


SERVER_EP, CLIENT1_EP, CLIENT2_EP = ("10.0.0.1", 5000), ("10.1.0.1", 6000), ("10.2.0.1", 6000)


def server_and_two_clients(
    seed: int = 1, *, endpoints: tuple[tuple[str, int], tuple[str, int]] = (CLIENT1_EP, CLIENT2_EP),
    **client: object,
) -> tuple[EngineNet, Node, Node, Node]:
    """Server 1.1 and clients 16.1 and 16.2 (at ``endpoints``), each client linked straight to
    the server, all started (clients with gateway 1.1 plus ``client`` settings) and run for
    2 s of probes."""
    net = EngineNet(seed=seed)
    s = net.add("S", "1.1", [SERVER_EP])
    c1 = net.add("C1", "16.1", [endpoints[0]], static=False)
    c2 = net.add("C2", "16.2", [endpoints[1]], static=False)
    net.link(endpoints[0], SERVER_EP)
    net.link(endpoints[1], SERVER_EP)
    net.start(s)
    for c in (c1, c2):
        net.start(c, gateway=pid("1.1"), **client)
    net.run(2.0)
    return net, s, c1, c2


FWD_A, FWD_B = ("10.0.0.2", 5000), ("10.0.9.2", 5001)


def forwarder_on_two_ports(resolver: object, seed: int = 3) -> tuple[EngineNet, Node, Node, Node]:
    """Server 1.1, forwarder 1.2 with two ports (FWD_A, FWD_B) that both reach the server
    (10 ms, 4 ms jitter), client 16.1 behind FWD_A; all started (the client with ``resolver``
    and forwarder 1.2), then run for 2 s."""
    net = EngineNet(seed=seed)
    s = net.add("S", "1.1", [SERVER_EP])
    f = net.add("F", "1.2", [FWD_A, FWD_B])
    c = net.add("C", "16.1", [CLIENT1_EP], static=False)
    net.link(CLIENT1_EP, FWD_A, delay=0.005)
    net.link(FWD_A, SERVER_EP, delay=0.010, jitter=0.004)
    net.link(FWD_B, SERVER_EP, delay=0.010, jitter=0.004)
    net.start(s)
    net.start(f)
    net.start(c, resolver=resolver, forwarders=(pid("1.2"),), gateway=pid("1.1"))
    net.run(2.0)
    return net, s, f, c
