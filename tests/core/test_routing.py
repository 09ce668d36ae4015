"""routing.targets: the forwarding rules as pure functions of the path tables (no engine)."""

from __future__ import annotations

from alpaca.core.ids import parse_peer_id
from alpaca.core.paths import Generation
from alpaca.core.peers import Peer
from alpaca.core.routing import targets
from alpaca.core.settings import EngineSettings, PeerSpec

ME, GW, OTHER, FWD = (parse_peer_id(x) for x in ("16.1", "1.1", "16.2", "2.1"))
GW_ADDR, OTHER_ADDR, FWD_ADDR = ("192.0.2.1", 3000), ("198.51.100.7", 4000), ("192.0.2.2", 3000)
PORTS = ("a", "b")


def node(me: int, addrs: dict[int, tuple[str, int] | None], forwarders: tuple[int, ...],
         gateway: int | None) -> tuple[EngineSettings, dict[int, Peer]]:
    """The settings and fresh path tables of node ``me`` (two ports) with these peers."""
    gen = Generation()
    peers = {pid: Peer(pid, PORTS, addr, gen) for pid, addr in addrs.items()}
    settings = EngineSettings(
        self_id=me, net=0x0A110000, group="g",
        peers={pid: PeerSpec(pid, bytes(16), addr) for pid, addr in addrs.items()},
        forwarders=forwarders, gateway=gateway, ports=PORTS,
    )
    return settings, peers


def table(other_addr: tuple[str, int] | None, forwarders: tuple[int, ...] = ()) -> tuple[
        EngineSettings, dict[int, Peer]]:
    """A client (16.1) with two uplinks, its gateway 1.1 and another client 16.2."""
    return node(ME, {ME: None, GW: GW_ADDR, OTHER: other_addr, FWD: FWD_ADDR}, forwarders, GW)


def test_routing_a_peer_with_a_live_link_is_reached_on_it_not_through_the_gateway() -> None:
    settings, peers = table(OTHER_ADDR)
    direct_a, _direct_b = peers[OTHER].paths.static
    direct_a.up = True
    chosen, spare = targets(settings, peers, ME, OTHER, None, None)
    assert chosen == [(direct_a, 0, direct_a)] and spare == []


def test_routing_a_peer_with_no_live_link_gets_every_known_link() -> None:
    settings, peers = table(OTHER_ADDR)  # static: known, not stale
    links = peers[OTHER].paths.static
    assert targets(settings, peers, ME, OTHER, None, None)[0] == [(p, p.pi, p) for p in links]


def test_routing_a_peer_never_heard_from_goes_to_the_gateways_live_links_only() -> None:
    settings, peers = table(None)  # no address at all: the upstream way
    gw_a, gw_b = peers[GW].paths.static
    assert targets(settings, peers, ME, OTHER, None, None)[0] == [
        (gw_a, 0, None), (gw_b, 1, None)]  # none live yet: every link
    gw_b.up = True
    assert targets(settings, peers, ME, OTHER, None, None)[0] == [(gw_b, 1, None)]
    # a relay keeps the path index it received
    assert targets(settings, peers, ME, OTHER, None, 9)[0] == [(gw_b, 9, None)]


def test_routing_split_horizon_compares_ip_and_port() -> None:
    settings, peers = table(OTHER_ADDR)
    for path in peers[OTHER].paths.static:
        path.up = True
    same_ip_other_port = (OTHER_ADDR[0], OTHER_ADDR[1] + 1)
    assert len(targets(settings, peers, GW, OTHER, same_ip_other_port, 5)[0]) == 2
    assert targets(settings, peers, GW, OTHER, OTHER_ADDR, 5)[0] == []


def relay_table() -> tuple[EngineSettings, dict[int, Peer]]:
    """Forwarder 2.1 (us, listed first in forwarders as in a shared config) relaying upstream
    through forwarder 2.2."""
    fwd2, fwd2_addr = parse_peer_id("2.2"), ("203.0.113.5", 3000)
    return node(FWD, {ME: None, GW: GW_ADDR, FWD: FWD_ADDR, fwd2: fwd2_addr}, (FWD, fwd2), None)


def test_routing_a_forwarder_never_sends_to_itself() -> None:
    settings, peers = relay_table()
    fwd2 = peers[parse_peer_id("2.2")]
    chosen, _spare = targets(settings, peers, ME, GW, ("198.51.100.9", 5000), 4)
    assert [t[0] for t in chosen] == fwd2.paths.static  # not live yet: every link of 2.2 only


def test_routing_spare_links_to_a_forwarder_keep_the_split_horizon() -> None:
    settings, peers = relay_table()
    fwd2 = peers[parse_peer_id("2.2")]
    static_a, static_b = fwd2.paths.static
    there = ("198.51.100.9", 5000)
    learned = fwd2.paths.learn(4, 1, there, 0.0)
    fwd2.paths.confirm(learned)
    for path, rtt in ((static_a, 0.01), (static_b, 0.02), (learned, 0.03)):
        path.up, path.srtt = True, rtt
    chosen, spare = targets(settings, peers, ME, GW, None, 4)
    assert [t[0] for t in chosen] == [static_a] and [t[0] for t in spare] == [static_b, learned]
    # relayed from the learned link's address: never sent back there, first copy or spare
    chosen, spare = targets(settings, peers, ME, GW, there, 4)
    assert chosen == [(static_a, 4, None)] and spare == [(static_b, 4, None)]


def test_routing_upstream_goes_through_each_forwarder_stamped_and_counted_as_its_via_path() -> None:
    settings, peers = table(None, forwarders=(FWD,))
    peers[GW].set_via_paths((FWD,), ["via/2.1"])
    via = peers[GW].paths.via[1]
    _fwd_a, fwd_b = peers[FWD].paths.static
    fwd_b.up = True
    assert targets(settings, peers, ME, GW, None, None) == ([(fwd_b, via.pi, via)], [])
    # a destination with no VIA path: forwarder 1's index (1 << 2) | the local port, counted
    # on no path (nothing reports it)
    other = parse_peer_id("1.2")
    peers[other] = Peer(other, PORTS, ("192.0.2.9", 3000), peers[GW].paths.generation)
    assert targets(settings, peers, ME, other, None, None) == ([(fwd_b, 4 | 1, None)], [])
    # a relay keeps the index it received
    assert targets(settings, peers, ME, other, ("198.51.100.9", 5000), 6)[0] == [
        (fwd_b, 6, None)]


def test_routing_a_forwarder_that_is_the_destination_is_sent_to_directly() -> None:
    settings, peers = table(None, forwarders=(FWD,))
    fwd_a, _fwd_b = peers[FWD].paths.static
    fwd_a.up = True
    assert targets(settings, peers, ME, FWD, None, None) == ([(fwd_a, 0, fwd_a)], [])
    assert targets(settings, peers, ME, FWD, ("198.51.100.9", 5000), 7)[0] == [
        (fwd_a, 7, fwd_a)]
