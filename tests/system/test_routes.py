"""Client routing in namespaces: default route moved and restored byte for byte, host routes."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca.errors import SystemSetupError
from alpaca.system import chnroute, link, netlink, plan, routes
from tests.helpers import netns, nsexec
from tests.system import add_backup_uplink, client_ns, snapshot

pytestmark = pytest.mark.netns


def test_netlink_error_names_the_operation_and_errno() -> None:
    err = netlink.setup_error("adding route 10.17.0.0/16 dev alpaca0 table 253", OSError(17, "x"))
    assert str(err) == "adding route 10.17.0.0/16 dev alpaca0 table 253: File exists (EEXIST)"
    assert "CAP_NET_ADMIN" in str(netlink.setup_error("adding", OSError(1, "x")))


def test_netlink_unknown_namespace_is_refused_not_created() -> None:
    with pytest.raises(SystemSetupError, match="no such namespace"):
        routes.find_default_route(netns="at-does-not-exist")


def test_routes_find_default_route_picks_lowest_metric() -> None:
    with netns() as ns:
        client_ns(ns)
        uplink = routes.find_default_route(ns)
        assert uplink is not None
        assert (uplink.gateway, uplink.dev) == ("192.0.2.254", "up0")
        assert uplink.oif == link.link_index("up0", ns)


def test_routes_find_default_route_leaves_ours_out() -> None:
    """With route_table main our default (proto alpaca, metric 0) is in main: the way out
    is the other one, with its metric."""
    with netns() as ns:
        client_ns(ns)
        nsexec(ns, "ip", "link", "set", "alpaca0", "up")
        nsexec(ns, "ip", "route", "add", "default", "dev", "alpaca0", "proto", str(netlink.PROTO_ALPACA))
        uplink = routes.find_default_route(ns)
        assert uplink is not None
        assert (uplink.gateway, uplink.dev, uplink.metric) == ("192.0.2.254", "up0", 100)


def test_routes_a_saved_default_names_its_way_out_and_whether_it_still_works() -> None:
    with netns() as ns:
        client_ns(ns)
        ways = [routes.uplink_of(saved) for saved in routes.save_default_routes(ns)]
        index = link.link_index("up0", ns)
        assert ways == [routes.Uplink("192.0.2.254", index, "up0", 100, onlink=True),
                        routes.Uplink("192.0.2.253", index, "up0", 200)]
        assert ways[0] is not None and routes.uplink_works(ways[0], ns)
        nsexec(ns, "ip", "link", "set", "up1", "down")  # the carrier is lost
        assert not routes.uplink_works(ways[0], ns)
        nsexec(ns, "ip", "link", "set", "up1", "up")
        assert routes.uplink_works(ways[0], ns)
        nsexec(ns, "ip", "link", "set", "up0", "down")  # set down by hand
        assert not routes.uplink_works(ways[0], ns)
        nsexec(ns, "ip", "link", "set", "up0", "up")
        nsexec(ns, "ip", "addr", "del", "192.0.2.1/24", "dev", "up0")  # the gateway is off-link now
        assert not routes.uplink_works(ways[0], ns)
        assert not routes.uplink_works(routes.Uplink("192.0.2.254", index + 100, "up0"), ns)


def test_routes_an_uplink_whose_gateway_is_on_the_link_by_a_route_works() -> None:
    """A /32 address with ``GW dev eth0 scope link`` (cloud VMs), or a gateway outside the
    device's networks with ``onlink``: the uplink works (it was taken for dead, and the peers
    moved to a backup link); without the route, or once the device has no address, not."""
    with netns() as ns:
        client_ns(ns, tun=False)
        nsexec(ns, "ip", "addr", "del", "192.0.2.1/24", "dev", "up0")
        nsexec(ns, "ip", "addr", "add", "192.0.2.1/32", "dev", "up0")
        index = link.link_index("up0", ns)
        assert index is not None
        cloud = routes.Uplink("203.0.113.1", index, "up0")
        assert not routes.uplink_works(cloud, ns)
        nsexec(ns, "ip", "route", "add", "203.0.113.1", "dev", "up0", "scope", "link")
        assert routes.uplink_works(cloud, ns)
        nsexec(ns, "ip", "route", "add", "default", "via", "198.51.100.1", "dev", "up0", "onlink",
               "metric", "700")
        way = routes.Uplink("198.51.100.1", index, "up0", 700, onlink=True)
        assert routes.find_default_route(ns) == way  # (deleting the /24 flushed the others)
        assert [routes.uplink_of(saved) for saved in routes.save_default_routes(ns)] == [way]
        assert routes.uplink_works(routes.Uplink("198.51.100.1", index, "up0", 700, onlink=True), ns)
        assert not routes.uplink_works(routes.Uplink("198.51.100.1", index, "up0", 700), ns)
        nsexec(ns, "ip", "addr", "flush", "dev", "up0")
        assert not routes.uplink_works(routes.Uplink("198.51.100.1", index, "up0", 700, onlink=True), ns)


def two_uplinks(ns: str) -> tuple[int, int]:
    """:func:`client_ns` without TUN plus the backup uplink with no default: the indexes of
    up0 and up2."""
    client_ns(ns, tun=False)
    add_backup_uplink(ns, default=False)
    up0, up2 = link.link_index("up0", ns), link.link_index("up2", ns)
    assert up0 is not None and up2 is not None
    return up0, up2


def test_routes_next_way_fails_over_from_a_dead_uplink_and_back_to_a_better_one_at_once() -> None:
    """plan.next_way: from a dead uplink to the working backup (dead: the daemon waits out its
    hold first); back to the primary once it works again, without a hold (it is better, and
    the backup in use is not dead); nothing while the way in use is the best that works."""
    with netns() as ns:
        up0, up2 = two_uplinks(ns)
        primary = routes.Uplink("192.0.2.253", up0, "up0", 200)
        backup = routes.Uplink("198.51.100.254", up2, "up2", 600)
        default = routes.ExpectedRoute(plan.DEFAULT_DST, "10.17.1.1", "alpaca0")
        on_primary = plan.Applied(expected=(default,), uplink=primary, ways=(primary, backup))
        on_backup = plan.Applied(expected=(default,), uplink=backup, ways=(primary, backup))
        assert plan.next_way(on_primary, ns) == (None, False)
        assert plan.next_way(on_backup, ns) == (primary, False)
        nsexec(ns, "ip", "link", "set", "up1", "down")  # the primary's carrier is lost
        assert plan.next_way(on_primary, ns) == (backup, True)
        assert plan.next_way(on_backup, ns) == (None, False)
        nsexec(ns, "ip", "link", "set", "up3", "down")
        assert plan.next_way(on_primary, ns) == (None, True)


def test_routes_wait_default_route_gives_up_with_clear_error() -> None:
    with netns() as ns, pytest.raises(SystemSetupError, match=r"none after 0\.2 s"):
        routes.wait_default_route(timeout=0.2, interval=0.1, netns=ns)


def test_routes_default_moved_and_restored_byte_for_byte() -> None:
    with netns() as ns:
        client_ns(ns)
        link.configure_tun("alpaca0", "10.17.16.1/16", 1408, ns)
        before = snapshot(ns)
        saved = routes.move_default_route("10.17.1.1", "alpaca0", 253, ns)
        assert len(saved) == 2
        moved = nsexec(ns, "ip", "route", "show", "table", "all").stdout
        assert "default via 10.17.1.1 dev alpaca0 table default proto 97" in moved
        assert "192.0.2.254" not in moved
        routes.restore_default_route(saved, 253, ns)
        routes.restore_default_route(saved, 253, ns)  # idempotent
        assert snapshot(ns) == before


@pytest.mark.parametrize("table", [253, 254])
def test_routes_two_defaults_of_one_metric_both_come_back(table: int) -> None:
    """``ip route append default ...``: a second default of the same metric (a fallback
    uplink). Its restore was refused with EEXIST (the first holds that metric) and counted
    done, so it was gone after the stop."""
    with netns() as ns:
        client_ns(ns)
        nsexec(ns, "ip", "link", "add", "up2", "type", "veth", "peer", "name", "up3")
        nsexec(ns, "ip", "link", "set", "up2", "up")
        nsexec(ns, "ip", "addr", "add", "198.51.100.1/24", "dev", "up2")
        nsexec(ns, "ip", "route", "append", "default", "via", "198.51.100.254", "dev", "up2",
               "proto", "static", "metric", "100")
        link.configure_tun("alpaca0", "10.17.16.1/16", 1408, ns)
        before = snapshot(ns)
        saved = routes.move_default_route("10.17.1.1", "alpaca0", table, ns)
        assert "198.51.100.254" not in nsexec(ns, "ip", "route", "show", "table", "main").stdout
        routes.restore_default_route(saved, table, ns)
        routes.restore_default_route(saved, table, ns)  # idempotent: each is there once
        assert snapshot(ns) == before


@pytest.mark.parametrize("table", [253, 254])
def test_routes_a_default_through_a_nexthop_object_is_moved_and_restored(table: int) -> None:
    """``default nhid 10`` (FRR, systemd-networkd): the kernel dumps it with the nexthop's
    gateway and device, and refuses those beside a nexthop id, so the start failed with
    EINVAL ("deleting route default ..."); it is moved and put back as it was."""
    with netns() as ns:
        client_ns(ns)
        nsexec(ns, "ip", "route", "flush", "table", "main", "default")
        nsexec(ns, "ip", "nexthop", "add", "id", "10", "via", "192.0.2.254", "dev", "up0")
        nsexec(ns, "ip", "route", "add", "default", "nhid", "10", "proto", "static", "metric", "100")
        link.configure_tun("alpaca0", "10.17.16.1/16", 1408, ns)
        before = snapshot(ns)
        saved = routes.move_default_route("10.17.1.1", "alpaca0", table, ns)
        assert len(saved) == 1
        moved = nsexec(ns, "ip", "route", "show", "table", "all").stdout
        assert "nhid 10" not in moved and "default via 10.17.1.1 dev alpaca0" in moved
        routes.restore_default_route(saved, table, ns)
        assert snapshot(ns) == before
        assert "default nhid 10" in nsexec(ns, "ip", "route", "show", "table", "main").stdout


def test_routes_default_not_moved_into_a_table_with_a_foreign_default() -> None:
    with netns() as ns:
        client_ns(ns)
        link.configure_tun("alpaca0", "10.17.16.1/16", 1408, ns)
        nsexec(ns, "ip", "route", "add", "default", "via", "192.0.2.99", "table", "253")
        before = snapshot(ns)
        with pytest.raises(SystemSetupError, match=r"another program.*route_table"):
            routes.move_default_route("10.17.1.1", "alpaca0", 253, ns)
        assert snapshot(ns) == before  # main keeps its defaults, table 253 its own


def test_routes_host_routes_added_and_removed() -> None:
    with netns() as ns:
        client_ns(ns)
        before = snapshot(ns)
        up = routes.find_default_route(ns)
        assert up is not None
        addrs = ["203.0.113.7", "198.51.100.0/24", "2001:db8::1"]
        dsts = routes.add_host_routes(addrs, up, 253, ns)
        routes.add_host_routes(addrs, up, 253, ns)  # EEXIST is done
        assert dsts == ["203.0.113.7/32", "198.51.100.0/24"]
        shown = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "203.0.113.7 via 192.0.2.254 dev up0 proto 97" in shown
        assert "198.51.100.0/24 via 192.0.2.254 dev up0 proto 97" in shown
        assert routes.route_present("203.0.113.7/32", 253, ns)
        routes.remove_host_routes(dsts, 253, ns)
        routes.remove_host_routes(dsts, 253, ns)  # ENOENT is done
        assert snapshot(ns) == before


def test_routes_host_routes_via_an_uplink_without_gateway_are_removed() -> None:
    with netns() as ns:
        client_ns(ns)
        before = snapshot(ns)
        oif = link.link_index("up0", ns) or 0
        up = routes.Uplink(None, oif, "up0")
        dsts = routes.add_host_routes(["203.0.113.7", "198.51.100.0/24"], up, 253, ns)
        shown = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "203.0.113.7 dev up0 proto 97 scope link" in shown
        routes.remove_host_routes(dsts, 253, ns)
        assert snapshot(ns) == before


def test_routes_remove_leaves_foreign_routes_alone() -> None:
    with netns() as ns:
        client_ns(ns)
        nsexec(ns, "ip", "route", "add", "203.0.113.7", "via", "192.0.2.9", "table", "253")
        routes.remove_host_routes(["203.0.113.7/32"], 253, ns)
        assert "203.0.113.7" in nsexec(ns, "ip", "route", "show", "table", "253").stdout


def test_link_configure_tun_is_idempotent() -> None:
    with netns() as ns:
        nsexec(ns, "ip", "tuntap", "add", "dev", "alpaca0", "mode", "tun")
        link.configure_tun("alpaca0", "10.17.16.1/16", 1408, ns)
        link.configure_tun("alpaca0", "10.17.16.1/16", 1408, ns)
        shown = nsexec(ns, "ip", "addr", "show", "alpaca0").stdout
        assert shown.count("inet 10.17.16.1/16") == 1
        assert "mtu 1408" in shown
        assert ",UP" in shown


def test_link_configure_tun_gives_a_multi_queue_device_one_root_qdisc(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Not mq with a child for each of the 256 queues a multi-queue TUN device has room for
    (0.85 MiB of kernel memory); a single-queue device keeps the kernel's default. Configuring
    again (the daemon's repair after a flush) leaves it and warns of nothing."""
    with netns() as ns:
        nsexec(ns, "ip", "tuntap", "add", "dev", "alpaca0", "mode", "tun", "multi_queue")
        nsexec(ns, "ip", "tuntap", "add", "dev", "alpaca1", "mode", "tun")
        for dev in ("alpaca0", "alpaca1", "alpaca0"):
            link.configure_tun(dev, f"10.{17 + int(dev[-1])}.16.1/16", 1408, ns, txqueuelen=64)
        assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text
        shown = nsexec(ns, "tc", "qdisc", "show", "dev", "alpaca0").stdout.splitlines()
        assert len(shown) == 1 and shown[0].startswith("qdisc pfifo_fast") and " root " in shown[0]
        default = Path("/proc/sys/net/core/default_qdisc").read_text().strip()
        assert nsexec(ns, "tc", "qdisc", "show", "dev", "alpaca1").stdout.startswith(f"qdisc {default}")


def test_link_check_name_free_leaves_a_persistent_tun_device_alone() -> None:
    """A persistent TUN device is someone's (``ip tuntap add``, another VPN): it used to be
    deleted at start, and was gone after we exited."""
    with netns() as ns:
        link.check_name_free("alpaca0", ns)
        nsexec(ns, "ip", "tuntap", "add", "dev", "alpaca0", "mode", "tun")
        wanted = r"alpaca0 is a persistent TUN device.*tun_name.*ip link del alpaca0"
        with pytest.raises(SystemSetupError, match=wanted):
            link.check_name_free("alpaca0", ns)
        assert link.link_index("alpaca0", ns) is not None


HOLD_TUN = """
import fcntl, os, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"alpaca0", 0x0001 | 0x1000))  # TUNSETIFF
if sys.argv[1:] == ["carrier-off"]:
    fcntl.ioctl(fd, 0x400454E2, struct.pack("i", 0))  # TUNSETCARRIER
print("open", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("carrier", ["carrier-on", "carrier-off"])
def test_link_check_name_free_leaves_a_tun_device_another_program_has_open(carrier: str) -> None:
    """A non-persistent TUN exists only while its program runs: it is that program's, in use,
    also when that program turned the device's carrier off."""
    with netns() as ns:
        holder = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", HOLD_TUN, carrier],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == "open\n"
            with netlink.iproute(ns) as nl:
                carrier_on = nl.get_links(ifname="alpaca0")[0].get_attr("IFLA_CARRIER")
            assert carrier_on == (carrier == "carrier-on")
            with pytest.raises(SystemSetupError, match=r"another running program has open.*tun_name"):
                link.check_name_free("alpaca0", ns, wait=0.2)
            assert link.link_index("alpaca0", ns) is not None
            if carrier == "carrier-off":
                assert holder.pid in link.tun_holders("alpaca0")  # (and any alpaca0 elsewhere)
        finally:
            holder.kill()
            holder.wait()
        link.check_name_free("alpaca0", ns)  # its program gone, the kernel deleted it
        assert link.link_index("alpaca0", ns) is None


def test_link_check_name_free_leaves_a_device_of_another_kind() -> None:
    with netns() as ns:
        nsexec(ns, "ip", "link", "add", "alpaca0", "type", "veth", "peer", "name", "other0")
        wanted = r"alpaca0 exists and is not a TUN device \(kind veth\).*tun_name"
        with pytest.raises(SystemSetupError, match=wanted):
            link.check_name_free("alpaca0", ns)
        assert link.link_index("alpaca0", ns) is not None
        assert link.link_index("other0", ns) is not None


def test_link_configure_missing_device_fails_clearly() -> None:
    with netns() as ns, pytest.raises(SystemSetupError, match="configuring nope0: No such device"):
        link.configure_tun("nope0", "10.17.16.1/16", 1408, ns)


def test_routes_following_the_uplink_leaves_a_route_another_program_took_over() -> None:
    """plan.follow_uplink replaced our host routes and chnroute prefixes in place: one that
    another program had replaced since (``ip route replace``) became ours again, and the
    undo at exit deleted it. It is left to that program, and no longer counted as ours."""
    with netns() as ns:
        up0, up2 = two_uplinks(ns)
        primary = routes.Uplink("192.0.2.254", up0, "up0", 100)
        backup = routes.Uplink("198.51.100.254", up2, "up2", 50)
        host = routes.add_host_routes(["203.0.113.7", "203.0.113.8"], primary, 253, ns)
        prefixes = [ipaddress.IPv4Network("100.64.1.0/24"), ipaddress.IPv4Network("100.64.2.0/24")]
        chnroute.add(prefixes, primary, 253, ns)
        for dst in ("203.0.113.8", "100.64.2.0/24"):  # another program's now
            nsexec(ns, "ip", "route", "replace", dst, "via", "192.0.2.253", "dev", "up0", "table", "253",
                   "proto", "static")
        default = routes.ExpectedRoute(plan.DEFAULT_DST, "10.17.1.1", "alpaca0")
        applied = plan.Applied(expected=(default,), uplink=primary, host_dsts=tuple(host), route_table=253,
                               host_added=frozenset(host), chnroute=plan.UplinkPrefixes(tuple(prefixes), 253))
        followed = plan.follow_uplink(applied, backup, ns)
        shown = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "203.0.113.7 via 198.51.100.254 dev up2 proto 97" in shown
        assert "100.64.1.0/24 via 198.51.100.254 dev up2 proto 97" in shown
        assert "203.0.113.8 via 192.0.2.253 dev up0 proto static" in shown
        assert "100.64.2.0/24 via 192.0.2.253 dev up0 proto static" in shown
        assert followed.host_added == {"203.0.113.7/32"}
        assert followed.chnroute == plan.UplinkPrefixes((prefixes[0],), 253)
        routes.remove_host_routes(sorted(applied.host_added), 253, ns)  # the journal's undo
        chnroute.remove(253, ns)
        shown = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "proto 97" not in shown
        assert "203.0.113.8 via 192.0.2.253" in shown and "100.64.2.0/24 via 192.0.2.253" in shown


def test_routes_a_default_via_an_ipv6_next_hop_is_a_clear_error_not_an_uplink_without_gateway() -> None:
    """``default via inet6 fe80::1 dev up0`` (RFC 5549): the next hop is in RTA_VIA, which was
    not read: the uplink had no gateway, the host routes went ``scope link`` (the peers were
    looked for on the link) and it always "worked", so nothing failed over."""
    with netns() as ns:
        client_ns(ns, tun=False)
        nsexec(ns, "ip", "route", "flush", "table", "main", "default")
        nsexec(ns, "ip", "-4", "route", "add", "default", "via", "inet6", "fe80::1", "dev", "up0")
        with pytest.raises(SystemSetupError, match=r"via an IPv6 next hop.*need an IPv4 gateway"):
            routes.find_default_route(ns)
        [saved] = routes.save_default_routes(ns)
        assert routes.uplink_of(saved) is None  # not a way out to follow
