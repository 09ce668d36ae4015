"""Client-mode host routing, as the original does it (moved default route, host routes outside
the tunnel), but reversible and idempotent.

Theory of operation (client mode):
    1. :func:`wait_default_route` finds the uplink: the lowest-metric IPv4 default route of table
       ``main`` (gateway and device).
    2. :func:`save_default_routes` captures every IPv4 default route of ``main`` as raw netlink
       payloads (gateway, dev, metric, proto, src, flags, metrics: everything). The caller
       journals them *before* :func:`move_default_route` adds ``default via <net>.<gateway> dev
       <tun> table <table>`` and deletes them from ``main``. Rule 32766 (main) then no longer
       matches and rule 32767 (default, 253) sends traffic into the tunnel, while more specific
       routes of main still win.
    3. :func:`add_host_routes` routes the peers' static addresses and ``local_routes`` via the
       uplink in the same table, so the tunnel's own UDP never enters the tunnel.
    4. :func:`add_uplink_defaults` puts a copy of each moved default into the same table, at
       its metric + :data:`UPLINK_DEFAULT_OFFSET` (after ours): a socket bound to a device
       (``ports[].interface``) looks routes up with that output device, and the kernel skips
       routes through another device, so it reaches the peers via its own uplink's gateway.
    5. :func:`restore_default_route` deletes those copies, replays the saved payloads into
       ``main`` byte for byte and deletes our tunnel default; :func:`remove_host_routes`
       deletes the host routes.

Every route we add carries proto :data:`~alpaca.system.netlink.PROTO_ALPACA`. Callers: the
control greenlet (set-up, teardown, reconcile); waits use ``gevent.sleep``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import gevent
from pyroute2 import IPRoute

from alpaca.errors import SystemSetupError
from alpaca.system import netlink
from alpaca.system.netlink import (
    IFF_UP,
    OK_ADD,
    OK_DEL,
    PROTO_ALPACA,
    RT_TABLE_DEFAULT,
    RT_TABLE_MAIN,
    RTNH_F_ONLINK,
    iproute,
    nl_call,
)

log = logging.getLogger(__name__)

#: route_present: any gateway
_ANY = object()

RTA_CACHEINFO = 12
#: rtm_flags we send back: RTNH_F_PERVASIVE | RTNH_F_ONLINK (DEAD/LINKDOWN/offload are kernel-set).
_FLAGS_KEEP = 0x2 | 0x4
#: Errnos of restoring a saved route whose uplink changed: gateway not on a connected network,
#: device gone, preferred source address (``src``) no longer the host's.
_NO_LONGER_FITS = (errno.ENETUNREACH, errno.ENODEV, errno.EINVAL)
#: Added to a moved default route's metric for its copy in the tunnel's table (an uplink's
#: default): the tunnel's own default (metric 0) stays first there, also beside a copy of a
#: default of metric 0.
UPLINK_DEFAULT_OFFSET = 1000
_METRIC_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Uplink:
    """The original way out: the IPv4 default route of table main.

    Attributes:
        gateway: next-hop address, or None for a point-to-point device.
        oif: output interface index.
        dev: output interface name (re-resolved after a restart, indexes can change).
        metric: the route's priority (lower wins).
        onlink: the route says its gateway is on the link (``onlink``), whatever the
            device's addresses.
    """

    gateway: str | None
    oif: int
    dev: str
    metric: int = 0
    onlink: bool = False

    def route(self, dst: str, table: int) -> ExpectedRoute:
        """The route to ``dst`` (a CIDR string) via this uplink in ``table``, as
        :func:`add_host_routes` adds it."""
        return ExpectedRoute(dst, self.gateway, self.dev, table, self.onlink)


def configured_gateway(gateway: str) -> Uplink:
    """A next hop named in the config (``chnroute.gateway``): no device (the kernel picks the
    one whose network holds ``gateway``)."""
    return Uplink(gateway, 0, "")


@dataclass(frozen=True, slots=True)
class SavedRoute:
    """A default route removed from ``main``, kept as its raw netlink payload for exact restore.

    Attributes:
        payload_hex: the rtmsg and its attributes, as dumped by the kernel, in hex.
        dev: name of its output device ("" if none), used to re-resolve the index.
        text: a readable summary for logs and ``check``.
    """

    payload_hex: str
    dev: str
    text: str

    def to_json(self) -> dict[str, str]:
        return {"payload_hex": self.payload_hex, "dev": self.dev, "text": self.text}

    @classmethod
    def from_json(cls, data: dict[str, str]) -> SavedRoute:
        return cls(data["payload_hex"], data.get("dev", ""), data.get("text", ""))


@dataclass(frozen=True, slots=True)
class ExpectedRoute:
    """A route of ours that should exist (for :func:`alpaca.system.monitor.reconcile`).

    Attributes:
        dst: destination CIDR (``0.0.0.0/0`` for the moved default).
        gateway: next hop, or None for a device route.
        dev: output device name.
        table: routing table id.
        onlink: the gateway is on the link whatever the device's addresses (the uplink's).
        metric: the route's priority; not 0 only for an uplink's default
            (:func:`uplink_default`).
    """

    dst: str
    gateway: str | None
    dev: str
    table: int = RT_TABLE_DEFAULT
    onlink: bool = False
    metric: int = 0


def uplink_default(uplink: Uplink, table: int) -> ExpectedRoute:
    """The copy of ``uplink``'s moved default route in the tunnel's ``table``: same gateway
    and device, its metric + :data:`UPLINK_DEFAULT_OFFSET`."""
    return ExpectedRoute("0.0.0.0/0", uplink.gateway, uplink.dev, table, uplink.onlink,
                         min(uplink.metric + UPLINK_DEFAULT_OFFSET, _METRIC_MAX))


def add_uplink_defaults(uplinks: Iterable[Uplink], table: int,
                        netns: str | None = None) -> list[ExpectedRoute]:
    """Add :func:`uplink_default` of each of ``uplinks`` (journal the default routes they were
    saved from first). One that cannot be added now (its device down or gone) is logged:
    monitor.reconcile adds it once it can.

    Returns:
        Every copy, added or not, for reconcile.
    """
    copies = [uplink_default(u, table) for u in uplinks]
    with iproute(netns) as ipr:
        for route in copies:
            oif = ipr.link_lookup(ifname=route.dev)
            try:
                if oif:
                    add_route(route, oif[0], ipr)
            except SystemSetupError as exc:
                log.info("an uplink's default route is left for later: %s", exc)
    return copies


def add_route(route: ExpectedRoute, oif: int, ipr: IPRoute) -> bool:
    """Add ``route`` with our proto; False if a route to that destination was there already
    (EEXIST counts as done: another program's route to the same prefix serves as well). An
    uplink's default (a metric) is appended: it goes in beside another of the same metric
    (two defaults of one metric were moved), EEXIST only where the same route is there."""
    extra = _via(route.gateway, route.onlink)
    if route.metric:
        extra["priority"] = route.metric
    return nl_call(
        f"adding route {route.dst} via {route.gateway or '-'} dev {route.dev} table {route.table}"
        + (f" metric {route.metric}" if route.metric else ""),
        ipr.route,
        "append" if route.metric else "add",
        dst=route.dst,
        oif=oif,
        table=route.table,
        proto=PROTO_ALPACA,
        ok=OK_ADD,
        **extra,
    ) is not None


def expected_present(route: ExpectedRoute, ipr: IPRoute) -> bool:
    """Whether ``route`` is there: ours to its destination at its metric, and for an uplink's
    default (several may share a metric) via its gateway."""
    return route_present(route.dst, route.table, ipr=ipr, metric=route.metric,
                         gateway=route.gateway if route.metric else _ANY)


def _via(gateway: str | None, onlink: bool) -> dict[str, Any]:
    """The next-hop arguments of a route via ``gateway`` (None: a device route)."""
    if gateway is None:
        return {"scope": netlink.RT_SCOPE_LINK}
    return {"gateway": gateway, "flags": RTNH_F_ONLINK} if onlink else {"gateway": gateway}


def _ifname(ipr: IPRoute, index: int) -> str:
    if not index:
        return ""
    links = nl_call(f"reading link {index}", ipr.get_links, index, ok=(errno.ENODEV,))  # gone since
    return str(links[0].get_attr("IFLA_IFNAME")) if links else ""


def find_default_route(netns: str | None = None, ipr: IPRoute | None = None) -> Uplink | None:
    """The lowest-metric IPv4 default route of table main, or None if there is none (ours,
    which is there with route_table main, is left out)."""
    with iproute(netns, ipr) as nl:
        routes = (
            nl_call(
                "listing routes of table main",
                nl.route,
                "dump",
                table=RT_TABLE_MAIN,
                family=socket.AF_INET,
            )
            or ()
        )
        defaults = [r for r in routes if r["dst_len"] == 0 and r["type"] == 1 and r["proto"] != PROTO_ALPACA]
        if not defaults:
            return None
        best = min(defaults, key=lambda r: r.get_attr("RTA_PRIORITY") or 0)
        oif, metric = best.get_attr("RTA_OIF") or 0, best.get_attr("RTA_PRIORITY") or 0
        hops = best.get_attr("RTA_MULTIPATH") if not oif else None
        if best.get_attr("RTA_VIA") or (hops and hops[0].get_attr("RTA_VIA")):
            raise SystemSetupError(
                "the default route of table main goes via an IPv6 next hop (RFC 5549)", None,
                "the tunnel's host routes need an IPv4 gateway: give the uplink one (a default "
                "route via an IPv4 address, at a lower metric)")
        if hops:
            hop = hops[0]
            return Uplink(hop.get_attr("RTA_GATEWAY"), hop["oif"], _ifname(nl, hop["oif"]), metric,
                          bool(hop["flags"] & RTNH_F_ONLINK))
        return Uplink(best.get_attr("RTA_GATEWAY"), oif, _ifname(nl, oif), metric,
                      bool(best["flags"] & RTNH_F_ONLINK))


def uplink_of(saved: SavedRoute) -> Uplink | None:
    """The way out a saved default route names (gateway, device, metric), or None for one
    through several next hops or a nexthop object (not followed)."""
    payload = bytes.fromhex(saved.payload_hex)
    oif = netlink.route_oif(payload)
    if not oif or netlink.route_nexthops_elsewhere(payload):
        return None
    return Uplink(netlink.route_gateway(payload), oif, saved.dev, netlink.route_metric(payload),
                  bool(netlink.route_flags(payload) & RTNH_F_ONLINK))


def uplink_works(uplink: Uplink, netns: str | None = None) -> bool:
    """Whether ``uplink`` is still a way out: its device is there under the same index, up
    with a carrier, and its gateway (if any) is on the link: the device has an IPv4 address,
    and the route said ``onlink``, or the gateway is inside a network of an address of that
    device, or a route of table main without a gateway covers it on that device (a /32
    address with ``GW dev eth0 scope link``, as cloud VMs are set up). A route lookup says
    nothing here: with the device given, the kernel takes any address as on-link."""
    with iproute(netns) as nl:
        if nl.link_lookup(ifname=uplink.dev) != [uplink.oif]:
            return False
        links = nl_call(f"reading the state of {uplink.dev}", nl.get_links, uplink.oif) or ()
        if not links or not links[0]["flags"] & IFF_UP or links[0].get_attr("IFLA_CARRIER") == 0:
            return False
        if uplink.gateway is None:
            return True
        gateway = ipaddress.IPv4Address(uplink.gateway)
        addrs = nl_call(f"listing the addresses of {uplink.dev}", nl.get_addr,
                        family=socket.AF_INET, index=uplink.oif) or ()
        if not addrs:  # its lease is gone
            return False
        nets = (ipaddress.IPv4Network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
                for a in addrs)
        if uplink.onlink or any(gateway in net for net in nets):
            return True
        return _link_route_covers(nl, gateway, uplink.oif)


def _link_route_covers(nl: IPRoute, address: ipaddress.IPv4Address, oif: int) -> bool:
    """Whether a route of table main without a gateway sends ``address`` out of ``oif``."""
    dump = nl_call("listing routes of table main", nl.route, "dump", table=RT_TABLE_MAIN,
                   family=socket.AF_INET) or ()
    for route in dump:
        if (route.get_attr("RTA_OIF") != oif or route.get_attr("RTA_GATEWAY") or route["type"] != 1
                or not route["dst_len"]):
            continue
        dst = route.get_attr("RTA_DST") or "0.0.0.0"
        if address in ipaddress.IPv4Network(f"{dst}/{route['dst_len']}", strict=False):
            return True
    return False


def wait_default_route(timeout: float = 30.0, interval: float = 3.0, netns: str | None = None) -> Uplink:
    """Poll :func:`find_default_route` until it answers (gevent-friendly, bounded).

    Raises:
        SystemSetupError: no default route after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        uplink = find_default_route(netns)
        if uplink is not None:
            return uplink
        if time.monotonic() + interval > deadline:
            raise SystemSetupError(
                f"waiting for an IPv4 default route in table main: none after {timeout:g} s",
                None,
                "client mode, and chnroute via the uplink (gateway \"default\"), need one; check "
                "`ip route show default`",
            )
        log.info("waiting for a default route interval=%gs", interval)
        gevent.sleep(interval)


def save_default_routes(netns: str | None = None) -> list[SavedRoute]:
    """Capture every IPv4 default route of table main but ours (read only; ours is there
    when route_table is main)."""
    with netlink.RtnlSocket(netns) as rt, iproute(netns) as ipr:
        saved = []
        for payload in rt.dump_routes(socket.AF_INET):
            _family, dst_len, proto, _scope, rtype = netlink.route_fields(payload)
            if dst_len or netlink.route_table(payload) != RT_TABLE_MAIN or rtype != 1:
                continue
            if proto == PROTO_ALPACA:
                continue
            dev = _ifname(ipr, netlink.route_oif(payload))
            text = f"default dev {dev or '-'} proto {proto} table main"
            saved.append(SavedRoute(payload.hex(), dev, text))
        return saved


def move_default_route(
    tunnel_gw_ip: str,
    tun_ifname: str,
    table: int = RT_TABLE_DEFAULT,
    netns: str | None = None,
    saved: Sequence[SavedRoute] | None = None,
) -> list[SavedRoute]:
    """Point the default route into the tunnel: add ours to ``table``, then delete ``saved``
    (default: every IPv4 default of main) from main; with ``table`` main the other way round
    (ours, metric 0, would clash with a saved default of metric 0). Journal ``saved`` before
    calling.

    Returns:
        The routes removed from main, for :func:`restore_default_route`.
    """
    if saved is None:
        saved = save_default_routes(netns)
    if table == RT_TABLE_MAIN:  # ours would clash with a saved one of the same metric
        _delete_routes(saved, netns)
        _add_tunnel_default(tunnel_gw_ip, tun_ifname, table, netns)
    else:  # never a moment without a default
        _add_tunnel_default(tunnel_gw_ip, tun_ifname, table, netns)
        _delete_routes(saved, netns)
    log.info(
        "default route moved dev=%s via=%s table=%d removed=%d",
        tun_ifname,
        tunnel_gw_ip,
        table,
        len(saved),
    )
    return list(saved)


def _add_tunnel_default(tunnel_gw_ip: str, tun_ifname: str, table: int, netns: str | None) -> None:
    with iproute(netns) as ipr:
        oif = link_index_or_fail(ipr, tun_ifname)
        added = nl_call(
            f"adding route default via {tunnel_gw_ip} dev {tun_ifname} table {table}",
            ipr.route,
            "add",
            dst="0.0.0.0/0",
            gateway=tunnel_gw_ip,
            oif=oif,
            table=table,
            proto=PROTO_ALPACA,
            ok=OK_ADD,
        )
        if added is None and not route_present("0.0.0.0/0", table, ipr=ipr):
            raise SystemSetupError(
                f"adding route default via {tunnel_gw_ip} dev {tun_ifname} table {table}: the "
                "table already has a default route of another program", None,
                "give route_table a table of its own")


def _delete_routes(saved: Sequence[SavedRoute], netns: str | None) -> None:
    with netlink.RtnlSocket(netns) as rt:
        for route in saved:
            payload = bytes.fromhex(route.payload_hex)
            if netlink.has_nexthop_id(payload):  # as dumped, the kernel refuses it (EINVAL)
                payload = netlink.rebuild_route(payload, drop={RTA_CACHEINFO}, oif=None,
                                                flags_mask=_FLAGS_KEEP)
            code = rt.send_raw_route(netlink.RTM_DELROUTE, 0, payload)
            if code and code not in OK_DEL:
                raise netlink.setup_error(f"deleting route {route.text}", OSError(code, ""), code)


def repoint_default_route(
    tunnel_gw_ip: str, tun_ifname: str, table: int = RT_TABLE_DEFAULT, netns: str | None = None
) -> None:
    """Point our default route in ``table`` at another gateway, in one step (``replace``: no
    moment without a default). The undo step of :func:`move_default_route` still holds: it
    deletes our default by table and proto, whatever its gateway.

    Raises:
        SystemSetupError: our default is gone and another program's holds its place: it is
            left alone (a replace would take it over, and the undo would then delete it).
    """
    with iproute(netns) as ipr:
        oif = link_index_or_fail(ipr, tun_ifname)
        ours = route_present("0.0.0.0/0", table, netns, ipr)
        nl_call(
            f"pointing route default via {tunnel_gw_ip} dev {tun_ifname} table {table}"
            + ("" if ours else " (ours is gone: another program's default holds its place?)"),
            ipr.route,
            "replace" if ours else "add",
            dst="0.0.0.0/0",
            gateway=tunnel_gw_ip,
            oif=oif,
            table=table,
            proto=PROTO_ALPACA,
        )
    log.info("default route repointed dev=%s via=%s table=%d", tun_ifname, tunnel_gw_ip, table)


def restore_default_route(
    saved: Sequence[SavedRoute], table: int = RT_TABLE_DEFAULT, netns: str | None = None
) -> None:
    """Delete the copies of ``saved`` from ``table`` (:func:`uplink_default`), put ``saved``
    back into main exactly and delete our default from ``table`` (idempotent).

    Every saved route is tried, also after one fails (its device may be gone: a dock
    unplugged), so the others still come back; then the first failure is raised. A saved
    route that no longer fits (its gateway unreachable, its device gone) while main already
    holds another default route through the same device (a DHCP client gave the uplink a
    new one, or a later step of the journal put that one back) is not restored, with a
    warning: its device has its way out back. One whose device has no default in main (a
    dock unplugged, an uplink down while a backup carried the peers) is a failure: the
    journal keeps it, and a later start restores it once its device is back.
    """
    failed: list[SystemSetupError] = []
    others = {route.dev for route in save_default_routes(netns)}
    with netlink.RtnlSocket(netns) as rt, iproute(netns) as ipr:
        delete_uplink_defaults([uplink_default(u, table) for u in map(uplink_of, saved) if u is not None],
                               ipr=ipr)
        if table == RT_TABLE_MAIN:  # ours first: a saved one of the same metric would clash
            _delete_tunnel_default(ipr, table)
        for route in saved:
            payload = bytes.fromhex(route.payload_hex)
            oif = ipr.link_lookup(ifname=route.dev) if route.dev else []
            fixed = netlink.rebuild_route(
                payload, drop={RTA_CACHEINFO}, oif=oif[0] if oif else None, flags_mask=_FLAGS_KEEP
            )
            # APPEND, not EXCL: a second default of the same metric (ip route append) goes in
            # after the first, while one that is there already, identical, is still EEXIST
            flags = netlink.NLM_F_CREATE | netlink.NLM_F_APPEND
            code = rt.send_raw_route(netlink.RTM_NEWROUTE, flags, fixed)
            if code and code not in OK_ADD:
                error = netlink.setup_error(f"restoring route {route.text}", OSError(code, ""), code)
                if route.dev in others and code in _NO_LONGER_FITS:
                    log.warning("saved default route not restored: main has another default through "
                                "its device error=%s", error)
                    continue
                failed.append(error)
        if table != RT_TABLE_MAIN:
            _delete_tunnel_default(ipr, table)
    if failed:
        raise failed[0]
    log.info("default route restored table=%d restored=%d", table, len(saved))


def delete_uplink_defaults(copies: Iterable[ExpectedRoute], netns: str | None = None,
                           ipr: IPRoute | None = None) -> None:
    """Delete ``copies`` (:func:`uplink_default`): exactly those routes (our proto, their
    metric, gateway and device), none of another program's. One whose device is gone went
    with it."""
    with iproute(netns, ipr) as nl:
        for route in copies:
            oif = nl.link_lookup(ifname=route.dev)
            if not oif:
                continue
            nl_call(
                f"deleting route default via {route.gateway or '-'} dev {route.dev} table "
                f"{route.table} metric {route.metric}",
                nl.route,
                "del",
                dst=route.dst,
                oif=oif[0],
                table=route.table,
                proto=PROTO_ALPACA,
                priority=route.metric,
                scope=netlink.RT_SCOPE_NOWHERE,
                ok=OK_DEL,
                **({"gateway": route.gateway} if route.gateway else {}),
            )


def _delete_tunnel_default(ipr: IPRoute, table: int) -> None:
    nl_call(
        f"deleting route default proto {PROTO_ALPACA} table {table}",
        ipr.route,
        "del",
        dst="0.0.0.0/0",
        table=table,
        proto=PROTO_ALPACA,
        scope=netlink.RT_SCOPE_NOWHERE,
        ok=OK_DEL,
    )


def first_lookup(table: int, netns: str | None = None) -> int | None:
    """The priority of the first IPv4 ip rule that looks ``table`` up, None if none does
    (main and default always are, by the kernel's own rules 32766 and 32767, unless an
    administrator deleted them)."""
    with iproute(netns) as ipr:
        rules = nl_call("listing ip rules", ipr.get_rules, family=socket.AF_INET) or ()
        return min((r.get_attr("FRA_PRIORITY") or 0 for r in rules
                    if (r.get_attr("FRA_TABLE") or r["table"]) == table), default=None)


def link_index_or_fail(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise SystemSetupError(f"looking up device {ifname}: {netlink.errno_text(errno.ENODEV)}")
    return int(found[0])


def host_networks(addrs: Iterable[str]) -> list[ipaddress.IPv4Network]:
    """IPv4 networks from addresses/CIDRs; IPv6 entries are skipped (they never enter the
    tunnel, which only takes the IPv4 default)."""
    out: list[ipaddress.IPv4Network] = []
    for addr in addrs:
        net = ipaddress.ip_network(addr, strict=False)
        if isinstance(net, ipaddress.IPv4Network) and net not in out:
            out.append(net)
    return out


def add_host_routes(
    addrs: Iterable[str],
    uplink: Uplink,
    table: int = RT_TABLE_DEFAULT,
    netns: str | None = None,
    ipr: IPRoute | None = None,
    *,
    replace: bool = False,
    done: list[str] | None = None,
) -> list[str]:
    """Route each address/CIDR via ``uplink`` (its gateway, device and ``onlink``) in
    ``table`` (one socket, one call each).

    An existing route for the same destination is left alone (EEXIST counts as done): it may
    be another program's, or one of our chnroute prefixes, and is not this call's to delete.
    With ``replace`` (for routes known to be ours) an existing one is replaced in place.

    Args:
        done: each destination added is appended here as soon as the kernel took it, so a
            caller still knows which routes are its own when a later one fails.

    Returns:
        The destinations it added, as CIDR strings (those that existed left out): the ones a
        reload may delete again with :func:`remove_host_routes`.
    Raises:
        SystemSetupError: the first failure (the routes before it stay, listed in ``done``).
    """
    nets = host_networks(addrs)
    added = [] if done is None else done
    before = len(added)
    via, oif = uplink.gateway, uplink.oif
    extra = _via(via, uplink.onlink)
    with iproute(netns, ipr) as nl:
        for net in nets:
            verb, doing = ("replace", "replacing") if replace else ("add", "adding")
            reply = nl_call(
                f"{doing} route {net} via {via or '-'} oif {oif} table {table}",
                nl.route,
                verb,
                dst=str(net),
                oif=oif,
                table=table,
                proto=PROTO_ALPACA,
                ok=() if replace else OK_ADD,
                **extra,
            )
            if reply is not None:
                added.append(str(net))
    log.info("host routes %s count=%d existed=%d via=%s table=%d", "replaced" if replace else "added",
             len(added) - before, len(nets) - len(added) + before, via, table)
    return added[before:]


def remove_host_routes(
    dsts: Iterable[str],
    table: int = RT_TABLE_DEFAULT,
    netns: str | None = None,
    ipr: IPRoute | None = None,
    *,
    done: list[str] | None = None,
) -> None:
    """Delete our routes to ``dsts`` from ``table`` (only ours: the delete matches our proto).

    Args:
        done: each destination is appended here once its route is gone.
    Raises:
        SystemSetupError: the first failure (the routes before it are gone, listed in ``done``).
    """
    with iproute(netns, ipr) as nl:
        for dst in dsts:
            nl_call(
                f"deleting route {dst} table {table}",
                nl.route,
                "del",
                dst=dst,
                table=table,
                proto=PROTO_ALPACA,
                scope=netlink.RT_SCOPE_NOWHERE,  # any scope: with or without a gateway
                ok=OK_DEL,
            )
            if done is not None:
                done.append(dst)


def route_present(dst: str, table: int, netns: str | None = None, ipr: IPRoute | None = None,
                  metric: int = 0, gateway: object = _ANY) -> bool:
    """Whether a route to exactly ``dst`` with our proto exists in ``table``, at ``metric``
    (0 for all but the uplinks' defaults), via ``gateway`` if one is given."""
    net = ipaddress.ip_network(dst, strict=False)
    with iproute(netns, ipr) as nl:
        routes = (
            nl_call(
                f"listing routes of table {table}",
                nl.route,
                "dump",
                table=table,
                family=socket.AF_INET,
            )
            or ()
        )
        for r in routes:
            if r["proto"] != PROTO_ALPACA or r["dst_len"] != net.prefixlen:
                continue
            if (r.get_attr("RTA_PRIORITY") or 0) != metric:
                continue
            if gateway is not _ANY and r.get_attr("RTA_GATEWAY") != gateway:
                continue
            if (r.get_attr("RTA_DST") or "0.0.0.0") == str(net.network_address):
                return True
        return False
