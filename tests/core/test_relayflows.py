"""A relay's (src, dst) windows are bounded: silent ones expire, the oldest go beyond a cap,
and what they leave (a floor, the replay counts) keeps replays out and counters monotonic."""

from __future__ import annotations

import tracemalloc

from alpaca.core import header
from alpaca.core.crypto import KeyRing
from alpaca.core.engine import Engine
from alpaca.core.header import Header
from alpaca.core.peers import Flow
from alpaca.core.relayflows import RelayFlows
from alpaca.core.replay import ReplayWindow
from alpaca.core.settings import Addr, EngineSettings, PeerSpec
from alpaca.snapshot import replay_by_sender

GROUP = "relay-test"
NET = 0x0A110000
RELAY, CLIENT = 0x0102, 0x1001  # 1.2 and 16.1
SERVERS = [0x0100 + i for i in range(3, 43)]  # 1.3 .. 1.42
CLIENT_KEY = bytes(range(32))
EPOCH = 7
CLIENT_ADDR: Addr = ("192.0.2.16", 40000)


class Wire:
    """The relay's side of the network: what it carries to the servers (probes it sends back
    to the client, which confirm the client's learned path, are left out)."""

    def __init__(self) -> None:
        self.sent: list[tuple[Addr, bytes]] = []

    def send(self, port: int, addr: Addr, data: bytes) -> bool:
        if addr != CLIENT_ADDR:
            self.sent.append((addr, data))
        return True

    def write_tun(self, packet: bytes, csum_partial: bool = False) -> bool:
        raise AssertionError("a relay writes nothing to its TUN here")


def relay(now: float = 0.0) -> tuple[Engine, Wire]:
    peers = {RELAY: PeerSpec(RELAY, bytes(32)), CLIENT: PeerSpec(CLIENT, CLIENT_KEY)}
    for server in SERVERS:
        peers[server] = PeerSpec(server, bytes([server & 0xFF]) * 16, (f"198.51.100.{server & 0xFF}", 10001))
    wire = Wire()
    engine = Engine(EngineSettings(RELAY, NET, GROUP, peers), wire, epoch=1, random_bytes=bytes)
    return engine, wire


def datagram(dst: int, counter: int, epoch: int = EPOCH) -> bytes:
    """From the holder of the client's key (which seals every pair with a smaller id)."""
    cipher = KeyRing(GROUP, {CLIENT: CLIENT_KEY}).cipher(CLIENT, dst, epoch)
    assert cipher is not None
    head = header.encode(Header(ptype=0, flags=0, ttl=15, pi=0, src=CLIENT, dst=dst, epoch=epoch,
                                counter=counter))
    return cipher.seal(head, b"E" + bytes(40))


def relayed_flows(engine: Engine) -> int:
    return sum(1 for _, dst in engine.flows if dst != engine.self_id)


def test_relay_keeps_at_most_max_flows_and_still_refuses_replays() -> None:
    engine, wire = relay()
    engine.relayed.max_flows = 8
    first = datagram(SERVERS[0], 5)
    engine.on_datagram(first, CLIENT_ADDR, 0, 1.0)
    for i, server in enumerate(SERVERS[1:]):
        engine.on_datagram(datagram(server, 5), CLIENT_ADDR, 0, 2.0 + i)
    assert relayed_flows(engine) == 8
    assert engine.relayed.forgotten == len(SERVERS) - 8
    carried = len(wire.sent)
    assert carried == len(SERVERS)
    engine.on_datagram(first, CLIENT_ADDR, 0, 100.0)  # the first flow was forgotten
    assert len(wire.sent) == carried
    assert engine.stats.drop_counts()["too_old"] == 1
    engine.on_datagram(datagram(SERVERS[0], 6), CLIENT_ADDR, 0, 101.0)  # its next one goes
    assert len(wire.sent) == carried + 1


def test_relay_forgets_silent_flows_and_counts_stay_monotonic() -> None:
    engine, wire = relay()
    for server in SERVERS[:5]:
        for counter in (1, 2, 2):  # one duplicate each
            engine.on_datagram(datagram(server, counter), CLIENT_ADDR, 0, 1.0)
    assert relayed_flows(engine) == 5
    assert replay_by_sender(engine)[CLIENT].duplicate == 5
    engine.on_timer(1.0 + engine.settings.path_lifetime / 2)
    assert relayed_flows(engine) == 5
    engine.on_datagram(datagram(SERVERS[0], 3), CLIENT_ADDR, 0, 30.0)  # keeps one alive
    engine.on_timer(1.0 + engine.settings.path_lifetime + 1)
    assert [dst for _, dst in engine.flows if dst != RELAY] == [SERVERS[0]]
    assert replay_by_sender(engine)[CLIENT].duplicate == 5
    before = len(wire.sent)
    engine.on_datagram(datagram(SERVERS[1], 2), CLIENT_ADDR, 0, 100.0)  # a replay
    assert len(wire.sent) == before
    assert engine.stats.drop_counts()["too_old"] == 1


def test_relay_flows_of_a_removed_peer_leave_their_floor_until_its_key_changes() -> None:
    """A peer removed by a reload leaves no flow, only the floor of each (~200 B, bounded):
    added back with the same key, a replay of what was relayed is not carried again; added
    back with another key, the floor goes (the old datagrams do not open any more)."""
    engine, wire = relay()
    old = datagram(SERVERS[0], 1)
    engine.on_datagram(old, CLIENT_ADDR, 0, 1.0)
    engine.on_datagram(datagram(SERVERS[1], 1), CLIENT_ADDR, 0, 1.0)
    full = engine.settings
    peers = {k: v for k, v in full.peers.items() if k != SERVERS[0]}
    engine.reload(EngineSettings(RELAY, NET, GROUP, peers))
    assert relayed_flows(engine) == 1 and list(engine.relayed.keys) == [(CLIENT, SERVERS[1])]
    assert list(engine.relayed.floors) == [(CLIENT, SERVERS[0])]
    engine.reload(full)
    carried = len(wire.sent)
    engine.on_datagram(old, CLIENT_ADDR, 0, 2.0)
    assert len(wire.sent) == carried and engine.stats.drop_counts()["too_old"] == 1
    engine.reload(EngineSettings(RELAY, NET, GROUP, {**full.peers, CLIENT: PeerSpec(CLIENT, bytes(32))}))
    assert not engine.relayed.floors and relayed_flows(engine) == 0


def test_replay_window_ring_is_flat_whatever_the_counters() -> None:
    """A window costs its ring (4 KiB at 2**15) and not one object per touched block: a
    sender spreading counters over every block cannot make a relay's windows grow."""
    tracemalloc.start()
    windows = [ReplayWindow(2**15) for _ in range(100)]
    for window in windows:
        for counter in range(63, 2**15, 64):  # bit 63 of each block: a big int per block
            window.accept(counter)
    per_window = tracemalloc.get_traced_memory()[0] / len(windows)
    tracemalloc.stop()
    assert per_window < 5 * 1024


def test_relay_refuses_an_older_epoch_after_forgetting_a_flow() -> None:
    """A replay from the sender's previous run, after the flow was forgotten, is old_epoch as
    it was while the flow lived; it neither wipes the floor nor lets the current run's
    datagrams through again."""
    engine, wire = relay()
    captured = [datagram(SERVERS[0], c) for c in range(1, 11)]
    for data in captured:
        engine.on_datagram(data, CLIENT_ADDR, 0, 1.0)
    engine.on_timer(2.0 + engine.settings.path_lifetime)
    assert relayed_flows(engine) == 0
    carried = len(wire.sent)
    engine.on_datagram(datagram(SERVERS[0], 50, epoch=EPOCH - 1), ("203.0.113.66", 9), 0, 100.0)
    assert engine.stats.drop_counts()["old_epoch"] == 1
    for data in captured:
        engine.on_datagram(data, ("203.0.113.66", 9), 0, 101.0)
    assert len(wire.sent) == carried
    assert engine.stats.drop_counts()["too_old"] == len(captured)
    engine.on_datagram(datagram(SERVERS[0], 11), CLIENT_ADDR, 0, 102.0)
    assert len(wire.sent) == carried + 1


def test_relay_evicts_the_least_recently_used_flow() -> None:
    """Beyond the cap, a flow still in use stays: a late copy on it (never seen, inside its
    window) is carried, where a rebuilt flow would refuse it as too old."""
    engine, wire = relay()
    engine.relayed.max_flows = 4
    for i, server in enumerate(SERVERS[:4]):
        engine.on_datagram(datagram(server, 10), CLIENT_ADDR, 0, 1.0 + i)
    engine.on_datagram(datagram(SERVERS[0], 20), CLIENT_ADDR, 0, 6.0)  # the first one is busy
    engine.on_datagram(datagram(SERVERS[4], 10), CLIENT_ADDR, 0, 7.0)
    assert (CLIENT, SERVERS[0]) in engine.flows and (CLIENT, SERVERS[1]) not in engine.flows
    carried = len(wire.sent)
    engine.on_datagram(datagram(SERVERS[0], 15), CLIENT_ADDR, 0, 8.0)
    assert len(wire.sent) == carried + 1


def test_reload_keeps_the_replay_counts_of_the_flows_it_drops() -> None:
    engine, _ = relay()
    for server in SERVERS[:3]:
        for counter in (1, 1):
            engine.on_datagram(datagram(server, counter), CLIENT_ADDR, 0, 1.0)
    assert replay_by_sender(engine)[CLIENT].duplicate == 3
    peers = dict(engine.settings.peers)
    peers[CLIENT] = PeerSpec(CLIENT, bytes(range(1, 33)))  # re-keyed: its flows are dropped
    engine.reload(EngineSettings(RELAY, NET, GROUP, peers))
    assert relayed_flows(engine) == 0
    assert replay_by_sender(engine)[CLIENT].duplicate == 3


def _flow_with_counts(verified: bool = True) -> Flow:
    """A flow of epoch 7 whose window saw 0, 1, 1 (duplicate), 100, 2 (too old), 90 (late)."""
    flow = Flow(EPOCH, 128, verified=verified)  # 64 counters told apart
    for counter in (0, 1, 1, 100, 2, 90):
        flow.window.accept(counter)
    w = flow.window
    assert (w.duplicate, w.too_old, w.late, w.accepted) == (1, 1, 1, 4)
    return flow


def test_relayflows_retire_keeps_each_count_in_its_place() -> None:
    flows = RelayFlows()
    flows.retire(CLIENT, _flow_with_counts())  # relayed: the first three only
    assert flows.retired[CLIENT] == [1, 1, 1, 0, 0]
    to_us = _flow_with_counts()
    flows.retire(CLIENT, to_us, to_us=True)  # ours: accepted, and lost (closed at once)
    assert to_us.window.lost == 97  # 2..99 but 90, below the top 100
    assert flows.retired[CLIENT] == [2, 2, 2, 4, 97]
    flows.retire(CLIENT, _flow_with_counts(verified=False), to_us=True)  # no loss to show
    assert flows.retired[CLIENT] == [3, 3, 3, 8, 97]


def test_relayflows_a_forgotten_relayed_flow_leaves_its_floor_and_relayed_counts() -> None:
    flows = RelayFlows(max_floors=2)
    kept: dict[tuple[int, int], Flow] = {}
    for i, server in enumerate(SERVERS[:3]):
        key = (CLIENT, server)
        kept[key] = _flow_with_counts()
        flows.admit(key, kept[key], kept, float(i))
    assert flows.expire(kept, 100.0, idle=50.0) == 3 and not kept and flows.forgotten == 3
    assert flows.retired[CLIENT] == [3, 3, 3, 0, 0]  # relayed: no accepted, no loss
    # at most max_floors floors, the oldest go first
    assert flows.floors == {(CLIENT, SERVERS[1]): (EPOCH, 100), (CLIENT, SERVERS[2]): (EPOCH, 100)}


def test_relayflows_floors_follow_the_epoch_and_the_pair_key() -> None:
    flows = RelayFlows()
    to_a, to_b = (CLIENT, SERVERS[0]), (CLIENT, SERVERS[1])
    flows.drop(to_a, _flow_with_counts(), to_us=False, keep_floor=True)
    flows.drop(to_b, _flow_with_counts(), to_us=False, keep_floor=True)
    assert flows.floors[to_a] == (EPOCH, 100)
    assert flows.newer_epoch(to_a, EPOCH - 1) and not flows.newer_epoch(to_a, EPOCH)
    same = Flow(EPOCH, 128, verified=True)
    flows.inherit(to_a, same)  # the same session goes on: its floor is the old top
    assert same.floor == 100 and to_a not in flows.floors
    later = Flow(EPOCH + 1, 128, verified=True)
    flows.inherit(to_b, later)  # the sender restarted: no floor, and none left behind
    assert later.floor == -1 and to_b not in flows.floors
    flows.drop(to_a, _flow_with_counts(), to_us=False, keep_floor=True)
    flows.drop(to_b, _flow_with_counts(), to_us=False, keep_floor=True)
    flows.forget_pairs({CLIENT})  # the pairs' key (the client's, the bigger id) changed
    assert flows.floors == {}
    flows.drop(to_a, _flow_with_counts(), to_us=False, keep_floor=True)
    flows.forget_pairs({SERVERS[0]})  # the smaller id's key: not the pair's
    assert to_a in flows.floors
    flows.drop(to_a, _flow_with_counts(), to_us=False, keep_floor=False)  # re-keyed: it goes
    assert to_a not in flows.floors
