"""plan(): pure, no root."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from alpaca.system import netlink, routes
from alpaca.system import plan as p


def client(**kw: object) -> p.HostPlanInput:
    base: dict[str, object] = dict(
        mode=p.Mode.CLIENT,
        tun="alpaca0",
        net="10.17.0.0/16",
        address="10.17.16.1",
        mtu=1408,
        gateway_ip="10.17.1.1",
        peer_addresses=("203.0.113.7", "198.51.100.9"),
        local_routes=("192.168.0.0/16",),
    )
    base.update(kw)
    return p.HostPlanInput(**base)  # type: ignore[arg-type]  # kwargs built as a dict on purpose


def test_plan_client_order() -> None:
    ops = p.plan(client())
    assert [type(o) for o in ops] == [
        p.WaitUplink,
        p.SetSysctl,
        p.ConfigureTun,
        p.AddHostRoutes,
        p.MoveDefaultRoute,
        p.ApplyNft,
    ]


def test_plan_client_host_routes_cover_peers_and_local_routes() -> None:
    ops = p.plan(client(peer_addresses=("203.0.113.7", "203.0.113.7", "2001:db8::1")))
    host = next(o for o in ops if isinstance(o, p.AddHostRoutes))
    assert host.dsts == ("203.0.113.7/32", "192.168.0.0/16")
    assert host.table == 253


def test_plan_client_tun_gets_the_net_prefix() -> None:
    tun = next(o for o in p.plan(client()) if isinstance(o, p.ConfigureTun))
    assert (tun.address_cidr, tun.mtu) == ("10.17.16.1/16", 1408)


def test_plan_client_nft_only_clamps() -> None:
    nft = next(o for o in p.plan(client()) if isinstance(o, p.ApplyNft))
    assert not nft.nat
    assert "1368" in nft.description


def test_plan_client_chnroute_before_default_move() -> None:
    ops = p.plan(client(chnroute=p.ChnrouteInput("/x/cn.txt")))
    kinds = [type(o) for o in ops]
    assert kinds.index(p.LoadChnroute) < kinds.index(p.MoveDefaultRoute)
    assert "via the uplink gateway" in ops[kinds.index(p.LoadChnroute)].description


def test_plan_server_nat_and_docker() -> None:
    ops = p.plan(client(mode=p.Mode.SERVER, gateway_ip=None))
    assert [type(o) for o in ops] == [p.SetSysctl, p.ConfigureTun, p.ApplyNft, p.AddForwardAccepts]
    assert next(o for o in ops if isinstance(o, p.ApplyNft)).nat


def test_plan_server_chnroute_default_gateway_waits_for_uplink() -> None:
    ops = p.plan(client(mode=p.Mode.SERVER, chnroute=p.ChnrouteInput("/x/cn.txt")))
    kinds = [type(o) for o in ops]
    assert kinds.index(p.WaitUplink) < kinds.index(p.LoadChnroute)


def test_plan_server_chnroute_explicit_gateway_needs_no_uplink() -> None:
    ops = p.plan(client(mode=p.Mode.SERVER, chnroute=p.ChnrouteInput("/x", "192.0.2.9", 100)))
    assert not any(isinstance(o, p.WaitUplink) for o in ops)


def test_plan_every_op_has_a_description() -> None:
    for inp in (client(), client(mode=p.Mode.SERVER, chnroute=p.ChnrouteInput("/x"))):
        assert all(op.description for op in p.plan(inp))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"address": "10.18.0.1"}, "outside net"),
        ({"gateway_ip": None}, "gateway_ip"),
        ({"tun": "bad name"}, "interface name"),
    ],
)
def test_plan_rejects_inconsistent_input(kw: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        p.plan(client(**kw))


def _saved(dev: str, gateway: str, oif: int, metric: int) -> routes.SavedRoute:
    """A default route of table main as the kernel dumps it (rtmsg and attributes)."""
    body = netlink._RTMSG.pack(socket.AF_INET, 0, 0, 0, 254, 3, 0, 1, 0)
    attrs = (netlink._attr(netlink.RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed)
             + netlink._attr(netlink.RTA_OIF, struct.pack("=i", oif))
             + netlink._attr(netlink.RTA_PRIORITY, struct.pack("=I", metric)))
    return routes.SavedRoute((body + attrs).hex(), dev, f"default via {gateway} dev {dev}")


def test_note_ways_keeps_the_latest_per_device_and_gateway_and_not_the_tunnel() -> None:
    """next_way looks at the ways out the moved defaults named: a backup renewing its lease
    at another metric replaces its entry; the tunnel's own device is never a way out."""
    applied = p.Applied(uplink=routes.Uplink("192.168.50.1", 2, "eth0", 0))
    applied = p.note_ways(applied, [_saved("eth0", "192.168.50.1", 2, 0),
                                    _saved("wlan0", "192.168.52.1", 3, 600)], "alpaca0")
    assert [(u.dev, u.metric) for u in applied.ways] == [("eth0", 0), ("wlan0", 600)]
    applied = p.note_ways(applied, [_saved("wlan0", "192.168.52.1", 3, 700),
                                    _saved("alpaca0", "10.17.1.1", 9, 0)], "alpaca0")
    assert [(u.dev, u.metric) for u in applied.ways] == [("eth0", 0), ("wlan0", 700)]
    assert p.note_ways(applied, [_saved("wlan0", "192.168.52.1", 3, 700)], "alpaca0") is applied


def test_next_way_looks_nothing_up_for_a_single_uplink() -> None:
    """No other way known (or no moved default): no netlink call (none is possible here)."""
    one = routes.Uplink("192.168.50.1", 2, "eth0", 0)
    default = routes.ExpectedRoute(p.DEFAULT_DST, "10.17.1.1", "alpaca0")
    applied = p.Applied(expected=(default,), uplink=one, ways=(one,))
    assert p.next_way(applied, netns="absent-namespace") == (None, False)
    server = p.Applied(uplink=one, ways=(one, routes.Uplink("192.168.52.1", 3, "wlan0", 600)))
    assert p.next_way(server, netns="absent-namespace") == (None, False)
