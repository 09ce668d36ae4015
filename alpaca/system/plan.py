"""Host changes as data: :func:`plan` (pure) turns a :class:`HostPlanInput` into a list of
:class:`Op`; :func:`apply` performs them in order, journaling each undo step first;
:func:`update_host_routes` and :func:`update_default_route` follow a reload's new peer
addresses, local_routes and gateway; :func:`keep_default_moved` answers a default route that
another program puts back into ``main``, and :func:`follow_uplink` moves the host routes to
the way out such a route names when it is a new one.

``alpaca-tunnel check`` prints ``op.description`` for each op; the daemon maps its Config to
:class:`HostPlanInput`, calls :func:`alpaca.system.journal.recover` on its journal path,
:func:`alpaca.system.link.check_name_free`, creates the TUN device, then :func:`apply`; on
exit it calls ``journal.undo_all()``.

Order (client): wait for the uplink (nothing changed yet if there is none), ip_forward, TUN,
chnroute, host routes for peers and local_routes via the uplink, then move the default route
(host routes first, so the tunnel's own UDP never enters the tunnel) and copy each moved one
into the tunnel's table after ours (a socket bound to an uplink's device reaches the peers
via that uplink: :func:`alpaca.system.routes.add_uplink_defaults`), MSS clamping.
Order (server): ip_forward, TUN, [uplink and chnroute], NAT/forward/MSS table, Docker accepts.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
from dataclasses import dataclass, field, replace
from enum import Enum

from alpaca.errors import SystemSetupError
from alpaca.system import chnroute, link, nft, routes, sysctl
from alpaca.system.journal import Journal
from alpaca.system.netlink import PROTO_ALPACA, RT_TABLE_DEFAULT

log = logging.getLogger(__name__)

#: the destination of the default route, as ExpectedRoute spells it
DEFAULT_DST = "0.0.0.0/0"


class Mode(Enum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class ChnrouteInput:
    """chnroute settings.

    Attributes:
        data: path of the CIDR list file.
        gateway: next hop; None means the uplink's gateway and device (the original's "default").
        table: routing table id (253 = "default").
        gateway_key: how errors name the gateway's setting (``<config>: chnroute.gateway``).
    """

    data: str
    gateway: str | None = None
    table: int = RT_TABLE_DEFAULT
    gateway_key: str = "chnroute.gateway"


@dataclass(frozen=True, slots=True)
class HostPlanInput:
    """What the host changes depend on (the daemon maps its Config to this).

    Attributes:
        mode: client (moves the default route) or server (NAT).
        tun: TUN interface name.
        net: the tunnel network, ``"10.17.0.0/16"``.
        address: own tunnel address, ``"10.17.16.1"`` (gets the /16 of ``net``).
        mtu: TUN MTU in bytes; the TCP MSS is clamped to ``mtu - 40``.
        gateway_ip: the gateway's tunnel address (client mode), ``"10.17.1.1"``.
        peer_addresses: static underlay addresses of the peers (client: routed via the uplink).
        local_routes: CIDRs/addresses kept outside the tunnel (client only).
        chnroute: chnroute settings, or None when off.
        route_table: table for the moved default route and host routes (253 = "default").
        uplink_timeout: seconds to wait for a default route before giving up.
        txqueuelen: the TUN device's transmit queue, packets.
    """

    mode: Mode
    tun: str
    net: str
    address: str
    mtu: int
    gateway_ip: str | None = None
    peer_addresses: tuple[str, ...] = ()
    local_routes: tuple[str, ...] = ()
    chnroute: ChnrouteInput | None = None
    route_table: int = RT_TABLE_DEFAULT
    uplink_timeout: float = 30.0
    txqueuelen: int = 64


@dataclass(frozen=True, slots=True)
class Op:
    """One host change. ``description`` is what ``check`` prints."""

    description: str


@dataclass(frozen=True, slots=True)
class WaitUplink(Op):
    timeout: float


@dataclass(frozen=True, slots=True)
class SetSysctl(Op):
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class ConfigureTun(Op):
    tun: str
    address_cidr: str
    mtu: int
    txqueuelen: int = 64


@dataclass(frozen=True, slots=True)
class LoadChnroute(Op):
    data: str
    gateway: str | None
    table: int
    gateway_key: str = "chnroute.gateway"


@dataclass(frozen=True, slots=True)
class AddHostRoutes(Op):
    dsts: tuple[str, ...]
    table: int


@dataclass(frozen=True, slots=True)
class MoveDefaultRoute(Op):
    gateway_ip: str
    tun: str
    table: int


@dataclass(frozen=True, slots=True)
class ApplyNft(Op):
    tun: str
    net: str
    mtu: int
    nat: bool


@dataclass(frozen=True, slots=True)
class AddForwardAccepts(Op):
    tun: str
    net: str


def host_route_dsts(inp: HostPlanInput) -> tuple[str, ...]:
    """The destinations a client routes via the uplink (CIDR strings, in input order): the
    peers' underlay addresses and local_routes. A server routes none."""
    if inp.mode is not Mode.CLIENT:
        return ()
    return tuple(str(n) for n in routes.host_networks((*inp.peer_addresses, *inp.local_routes)))


def plan(inp: HostPlanInput) -> list[Op]:
    """The ordered host changes for ``inp`` (pure; ValueError on inconsistent input)."""
    net = ipaddress.IPv4Network(inp.net, strict=False)
    address = ipaddress.IPv4Address(inp.address)
    if address not in net:
        raise ValueError(f"address {address} is outside net {net}")
    nft.table_name(inp.tun)  # validates the interface name
    client = inp.mode is Mode.CLIENT
    if client and not inp.gateway_ip:
        raise ValueError("client mode needs gateway_ip")
    ops: list[Op] = []
    tag = f"proto {PROTO_ALPACA}"
    wait = WaitUplink(
        f"wait up to {inp.uplink_timeout:g} s for an IPv4 default route in table main (the uplink)",
        inp.uplink_timeout,
    )
    if client:
        ops.append(wait)
    ops.append(
        SetSysctl(f"set {sysctl.IP_FORWARD}=1 (previous value restored on exit)", sysctl.IP_FORWARD, "1")
    )
    cidr = f"{address}/{net.prefixlen}"
    ops.append(
        ConfigureTun(f"configure {inp.tun}: mtu {inp.mtu}, txqueuelen {inp.txqueuelen}, address {cidr}, up",
                     inp.tun, cidr, inp.mtu, inp.txqueuelen)
    )
    if inp.chnroute is not None:
        c = inp.chnroute
        if c.gateway is None and not client:
            ops.append(wait)
        via = c.gateway or "the uplink gateway"
        ops.append(
            LoadChnroute(
                f"load chnroute prefixes from {c.data} via {via} table {c.table} {tag}",
                c.data,
                c.gateway,
                c.table,
                c.gateway_key,
            )
        )
    if client:
        dsts = host_route_dsts(inp)
        if dsts:
            ops.append(
                AddHostRoutes(
                    f"route {', '.join(dsts)} via the uplink table {inp.route_table} {tag}",
                    dsts,
                    inp.route_table,
                )
            )
        assert inp.gateway_ip is not None
        ops.append(
            MoveDefaultRoute(
                f"add default via {inp.gateway_ip} dev {inp.tun} table {inp.route_table} {tag}, "
                "then remove the IPv4 default routes of table main (saved, restored on exit) and "
                f"add a copy of each to table {inp.route_table} {tag} at its metric + "
                f"{routes.UPLINK_DEFAULT_OFFSET} (for the ports bound to its device)",
                inp.gateway_ip,
                inp.tun,
                inp.route_table,
            )
        )
    name = nft.table_name(inp.tun)
    if client:
        ops.append(
            ApplyNft(
                f"nftables table inet {name}: clamp TCP MSS to {inp.mtu - 40} on {inp.tun}",
                inp.tun,
                str(net),
                inp.mtu,
                False,
            )
        )
    else:
        ops.append(
            ApplyNft(
                f"nftables table inet {name}: masquerade ip saddr {net}, accept "
                f"forwarding from/to {net}, clamp TCP MSS to {inp.mtu - 40} on "
                f"{inp.tun}",
                inp.tun,
                str(net),
                inp.mtu,
                True,
            )
        )
        ops.append(
            AddForwardAccepts(
                f"if iptables FORWARD drops (Docker): accept {net} in "
                f"DOCKER-USER or FORWARD, comment "
                f"{nft.COMMENT_PREFIX}{inp.tun}",
                inp.tun,
                str(net),
            )
        )
    return ops


@dataclass(slots=True)
class _Context:
    netns: str | None
    uplink: routes.Uplink | None = None
    done: list[Op] = field(default_factory=list)
    expected: list[routes.ExpectedRoute] = field(default_factory=list)
    host_dsts: tuple[str, ...] = ()
    host_added: frozenset[str] = frozenset()
    route_table: int = RT_TABLE_DEFAULT
    chnroute: UplinkPrefixes | None = None
    ways: tuple[routes.Uplink, ...] = ()
    #: the table chnroute was loaded into, None without chnroute
    chnroute_table: int | None = None


@dataclass(frozen=True, slots=True)
class UplinkPrefixes:
    """chnroute prefixes routed via the uplink's gateway and device (``chnroute.gateway``
    left out): they follow the uplink when it moves.

    Attributes:
        nets: the prefixes whose route this run added (those another program's route held at
            start left out).
        table: their routing table.
    """

    nets: tuple[ipaddress.IPv4Network, ...]
    table: int


@dataclass(frozen=True, slots=True)
class Applied:
    """What :func:`apply` leaves in place, owned by the daemon until it exits.

    Attributes:
        expected: the routes the host must keep while we run (host routes, the moved default
            and the uplinks' defaults: :func:`alpaca.system.routes.uplink_default`), for
            :func:`alpaca.system.monitor.reconcile` after a route change.
        uplink: the way out found at start (client; None for a server without chnroute).
        host_dsts: the destinations routed via the uplink (CIDR strings).
        route_table: the table the host routes and the moved default are in.
        host_added: those of ``host_dsts`` whose route this run added (not one that was
            there: a chnroute prefix of the same table, another program's route).
        chnroute: the chnroute prefixes that follow the uplink (None: no chnroute, or one
            via a configured gateway).
        ways: the ways out named by the default routes moved out of main, at start and
            since (the latest per device and gateway), and the uplink found at start, for
            :func:`next_way`.
    """

    expected: tuple[routes.ExpectedRoute, ...] = ()
    uplink: routes.Uplink | None = None
    host_dsts: tuple[str, ...] = ()
    route_table: int = RT_TABLE_DEFAULT
    host_added: frozenset[str] = frozenset()
    chnroute: UplinkPrefixes | None = None
    ways: tuple[routes.Uplink, ...] = ()

    @property
    def moved_default(self) -> routes.ExpectedRoute | None:
        """Our default route into the tunnel (client), None if this node moved none."""
        return next((r for r in self.expected if r.dst == DEFAULT_DST and not r.metric), None)


def apply(ops: list[Op], journal: Journal, netns: str | None = None) -> Applied:
    """Perform ``ops`` in order; each undo step is journaled before its change.

    On failure the exception propagates; the journal already holds the undo for everything done
    so far, so the caller runs ``journal.undo_all()``.
    """
    ctx = _Context(netns)
    for op in ops:
        _apply_one(op, journal, ctx)
        ctx.done.append(op)
    return Applied(tuple(ctx.expected), ctx.uplink, ctx.host_dsts, ctx.route_table, ctx.host_added,
                   ctx.chnroute, ctx.ways)


def update_host_routes(applied: Applied, dsts: tuple[str, ...], journal: Journal,
                       netns: str | None = None) -> Applied:
    """Make the host routes of a running client match ``dsts`` (a reload changed a peer's
    address or local_routes): the new ones are journaled and added via the uplink found at
    start, in the same table; the ones no longer wanted are deleted if this run added them,
    never a route that was there before (a chnroute prefix of the same table). A server (no
    uplink) is left as it is.

    All or nothing: on a failure the routes this call added are deleted again and those it
    deleted are added back, so the host matches the :class:`Applied` the caller keeps (a
    route left behind would be one no later reload deletes; the journal would only at exit).
    The routes it deleted leave the journal (:meth:`Journal.forget_routes`).

    Returns:
        The new :class:`Applied` (its ``expected`` list follows the change).
    Raises:
        SystemSetupError: the first failure, after the undo.
    """
    if applied.uplink is None or dsts == applied.host_dsts:
        return applied
    up, table = applied.uplink, applied.route_table
    added = tuple(d for d in dsts if d not in applied.host_dsts)
    removed = tuple(d for d in applied.host_dsts if d not in dsts)
    owned = applied.host_added - set(removed)
    added_now: list[str] = []
    removed_now: list[str] = []
    try:
        if added:
            journal.record("routes", dsts=list(added), table=table)
            owned |= set(routes.add_host_routes(added, up, table, netns, done=added_now))
        ours = [d for d in removed if d in applied.host_added]
        if ours:
            routes.remove_host_routes(ours, table, netns, done=removed_now)
    except Exception:
        _undo_host_routes(added_now, removed_now, up, table, netns)
        raise
    if removed_now:
        journal.forget_routes(removed_now, table)
    expected = tuple(r for r in applied.expected if r.dst not in removed) + tuple(
        up.route(d, table) for d in added)
    return replace(applied, expected=expected, host_dsts=dsts, host_added=frozenset(owned))


def _undo_host_routes(added: list[str], removed: list[str], up: routes.Uplink, table: int,
                      netns: str | None) -> None:
    """Best effort: delete the host routes just ``added``, add back those just ``removed``
    (a failure here is logged: the journal still deletes ours at exit)."""
    try:
        if added:
            routes.remove_host_routes(added, table, netns)
        if removed:
            routes.add_host_routes(removed, up, table, netns)
    except Exception as exc:  # the first failure is the one the caller reports
        log.warning("could not undo a partial change of the host routes table=%d: %s", table, exc)


def follow_uplink(applied: Applied, uplink: routes.Uplink, netns: str | None = None) -> Applied:
    """A running client's way out may have changed: the host's network manager put a default
    route with another gateway or device into ``main`` (a DHCP lease on another network).
    Follow it when it is no worse than the uplink in use (its metric not higher), or when the
    one in use no longer works (:func:`routes.uplink_works`): a backup link renewing its lease
    does not take the peers from a working primary. Our host routes are replaced in place
    (the journal's step for them undoes either), but one another program's route replaced
    since (it is that program's now, and no longer counted as ours); one to a destination
    that another program's route held at start is added if that route is gone. The chnroute prefixes
    loaded via the uplink follow it too (the kernel flushed those whose gateway left with
    the old network). A node without a moved default, or the same uplink, is left as it is.

    Returns:
        The new :class:`Applied` (its ``uplink``, ``expected`` and ``host_added`` follow).
    Raises:
        SystemSetupError: a netlink failure; nothing is forgotten (call again): a route this
            call added where another program's had been is deleted again first, since the
            ``Applied`` the caller keeps does not count it as ours.
    """
    old = applied.uplink
    if applied.moved_default is None or old is None or uplink == old:
        return applied
    if uplink.metric > old.metric and routes.uplink_works(old, netns):
        return applied
    table, dsts = applied.route_table, applied.host_dsts
    ours = applied.host_added - _taken_over(applied.host_added, table, netns)
    chn = _chnroute_still_ours(applied.chnroute, netns)
    added: list[str] = []
    try:
        if ours:
            routes.add_host_routes(sorted(ours), uplink, table, netns, replace=True)
        others = [d for d in dsts if d not in ours]
        if others:
            routes.add_host_routes(others, uplink, table, netns, done=added)
        if chn is not None and chn.nets:
            chnroute.add(chn.nets, uplink, chn.table, netns, replace=True)
    except Exception:
        _undo_host_routes(added, [], uplink, table, netns)
        raise
    expected = tuple(r for r in applied.expected if r.dst not in dsts) + tuple(
        uplink.route(d, table) for d in dsts)
    return replace(applied, uplink=uplink, expected=expected, host_added=ours | set(added), chnroute=chn)


def _chnroute_still_ours(chn: UplinkPrefixes | None, netns: str | None) -> UplinkPrefixes | None:
    """``chn`` without the prefixes another program's route took over (:func:`_taken_over`)."""
    if chn is None or not chn.nets:
        return chn
    taken = _taken_over({str(n) for n in chn.nets}, chn.table, netns)
    return replace(chn, nets=tuple(n for n in chn.nets if str(n) not in taken)) if taken else chn


def _taken_over(dsts: frozenset[str] | set[str], table: int, netns: str | None) -> set[str]:
    """Those of our routes' ``dsts`` (CIDR strings) whose place another program's route took
    since we added them: they are its now (left alone, with a warning), no longer ours to
    move or to delete."""
    if not dsts:
        return set()
    nets = {ipaddress.IPv4Network(d, strict=False): d for d in dsts}
    taken = {nets[n] for n in chnroute.held_by_others(nets, table, netns)}
    if taken:
        log.warning("routes of ours replaced by another program's, left to it: %s table=%d",
                    " ".join(sorted(taken)[:10]) + (" ..." if len(taken) > 10 else ""), table)
    return taken


def note_ways(applied: Applied, saved: list[routes.SavedRoute], tun: str) -> Applied:
    """Remember the ways out that ``saved`` (default routes just moved out of main by
    :func:`keep_default_moved`) name, for :func:`next_way`: one through ``tun`` (the tunnel's
    own) is left out, and one via the same device and gateway as a known one replaces it (its
    metric may have changed); their copies in the tunnel's table replace those of the known
    ones in ``expected`` likewise."""
    ways = _with_ways(applied.ways, saved, tun)
    expected = _with_uplink_defaults(applied, ways_of(saved, tun))
    if ways == applied.ways and expected == applied.expected:
        return applied
    return replace(applied, ways=ways, expected=expected)


def _with_uplink_defaults(applied: Applied, ways: list[routes.Uplink]) -> tuple[routes.ExpectedRoute, ...]:
    """``applied.expected`` with the uplinks' defaults of ``ways`` in place of those of the
    same devices: a device's newest default is the way a port bound to it takes (a copy of
    an older one, through a router its network no longer gives out, would stay first at a
    lower metric or ahead at the same one). A node without a moved default has none."""
    if applied.moved_default is None or not ways:
        return applied.expected
    devices = {u.dev for u in ways}
    kept = tuple(r for r in applied.expected if not (r.metric and r.dev in devices))
    return kept + tuple(routes.uplink_default(u, applied.route_table) for u in ways)


def note_restored(applied: Applied, restored: list[routes.ExpectedRoute]) -> Applied:
    """Count the host routes ``restored`` (put back by monitor.reconcile) as ours: one whose
    place another program's route held at start is ours once that route went and ours took
    its place, so a reload that drops its destination deletes it."""
    mine = {r.dst for r in restored if r.dst in applied.host_dsts} - applied.host_added
    return replace(applied, host_added=applied.host_added | mine) if mine else applied


def ways_of(saved: list[routes.SavedRoute], tun: str) -> list[routes.Uplink]:
    """The ways out ``saved`` default routes name, but one through ``tun`` (ours) and those
    through several next hops."""
    return [u for u in map(routes.uplink_of, saved) if u is not None and u.dev != tun]


def _with_ways(known: tuple[routes.Uplink, ...], saved: list[routes.SavedRoute],
               tun: str) -> tuple[routes.Uplink, ...]:
    new = ways_of(saved, tun)
    names = {(u.dev, u.gateway) for u in new}
    return (*(u for u in known if (u.dev, u.gateway) not in names), *new)


def next_way(applied: Applied, netns: str | None = None) -> tuple[routes.Uplink | None, bool]:
    """Where a running client's host routes should go instead of the uplink in use, if
    anywhere: the working way out of lowest metric among those the moved default routes
    named (:attr:`Applied.ways`), when it is not the one in use. The one in use may have
    stopped working (lost its device, carrier or network: :func:`routes.uplink_works`)
    without a default route coming back into main to name another (a backup link's default
    was moved out at start, and its DHCP client may not renew for hours), or a better one
    may work again. Nothing is looked up for a node that knows one way out.

    Returns:
        (the way to follow with :func:`follow_uplink`, or None; whether the one in use was
        found dead: a move away from a dead uplink may wait, a move to a better one need not).
    Raises:
        SystemSetupError: a netlink failure (call again).
    """
    current = applied.uplink
    if current is None or applied.moved_default is None:
        return None, False
    others = [u for u in applied.ways if (u.dev, u.gateway) != (current.dev, current.gateway)]
    if not others:
        return None, False
    dead = False
    for way in sorted((current, *others), key=lambda u: u.metric):  # stable: current first
        if way is current:
            if routes.uplink_works(current, netns):
                return None, False
            dead = True
        elif routes.uplink_works(way, netns):
            return way, dead
    return None, dead


def keep_default_moved(applied: Applied, journal: Journal,
                       netns: str | None = None) -> list[routes.SavedRoute]:
    """A running client: move any IPv4 default route that appeared in ``main`` since the start
    (a DHCP client renewing its lease puts one back) out of the way again, journaled like the
    first move, so the tunnel keeps the default and the route comes back on exit; its copy
    goes into the tunnel's table in place of the one of its way out at another metric.

    Returns:
        The routes moved (none for a node without a moved default): the way out they name
        may be a new one (:func:`follow_uplink`); :func:`note_ways` counts them.
    """
    default = applied.moved_default
    if default is None or default.gateway is None:
        return []
    saved = routes.save_default_routes(netns)
    if saved:
        ways = ways_of(saved, default.dev)
        copies = _with_uplink_defaults(applied, ways)
        stale = [r for r in applied.expected if r.metric and r not in copies]
        if stale:  # before the record: the journal may no longer name the routes they copy
            routes.delete_uplink_defaults(stale, netns)
        journal.record("default_route", saved=[s.to_json() for s in saved], table=default.table)
        routes.move_default_route(default.gateway, default.dev, default.table, netns, saved)
        routes.add_uplink_defaults(ways, default.table, netns)
    return saved


def update_default_route(applied: Applied, gateway_ip: str | None, netns: str | None = None) -> Applied:
    """Point a running client's moved default route at ``gateway_ip`` (a reload changed the
    gateway); a node without a moved default is left as it is.

    Returns:
        The new :class:`Applied` (its ``expected`` list follows the change).
    """
    default = applied.moved_default
    if default is None or gateway_ip is None or default.gateway == gateway_ip:
        return applied
    routes.repoint_default_route(gateway_ip, default.dev, default.table, netns)
    moved = replace(default, gateway=gateway_ip)
    return replace(applied, expected=tuple(moved if r is default else r for r in applied.expected))


def _uplink(ctx: _Context) -> routes.Uplink:
    if ctx.uplink is None:
        raise ValueError("plan error: an op needs the uplink before WaitUplink ran")
    return ctx.uplink


def lookup_problems(table: int, chn_table: int | None, netns: str | None = None) -> list[str]:
    """Why the tunnel's default route in ``table`` would take no traffic or too much: no ip
    rule looks ``table`` up (no traffic enters the tunnel), or the chnroute table
    ``chn_table`` is looked up after it (the tunnel's default takes the chnroute prefixes'
    traffic: route_table main beside chnroute.table default). Reads the rules only."""
    first = routes.first_lookup(table, netns)
    if first is None:
        return [f"route_table {table}: no ip rule looks this table up, so no traffic enters the "
                f"tunnel; add one (ip rule add ... lookup {table}) or use route_table default"]
    if chn_table is None or chn_table == table:
        return []
    chn_first = routes.first_lookup(chn_table, netns)
    if chn_first is not None and chn_first <= first:
        return []
    order = "by no ip rule, not before" if chn_first is None else "after"
    return [f"chnroute.table {chn_table} is looked up {order} route_table {table}, whose default "
            "route takes the chnroute prefixes' traffic into the tunnel; give chnroute.table the "
            "value of route_table"]


def _refuse_foreign_table(tun: str, journal: Journal, netns: str | None) -> None:
    """Refuse a start whose nftables table name another program holds: applying replaces the
    table, and the stop deletes it, with everything the other program put in it. A crashed
    run's table is gone by now (its journal was undone before the start)."""
    ours = any(step["kind"] == "nft_table" and step.get("tun") == tun for step in journal.steps)
    if not ours and nft.table_exists(tun, netns):
        name = nft.table_name(tun)
        raise SystemSetupError(f"the nftables table inet {name} exists and is not this node's", None,
                               f"remove it (nft delete table inet {name}) or give this node another tun_name")


def _gateway_error(op: LoadChnroute, exc: SystemSetupError) -> SystemSetupError:
    """``exc`` of a chnroute load, naming the configured gateway when it is the cause."""
    code = getattr(exc.cause, "errno", None)
    if op.gateway is None or code not in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EINVAL):
        return exc
    return SystemSetupError(
        f"{op.gateway_key}: {op.gateway} is not reachable from this host ({exc.op})", None,
        "set it to a router on a network this host is directly on, or leave it out to use "
        "the uplink's gateway")


def _apply_one(op: Op, journal: Journal, ctx: _Context) -> None:
    ns = ctx.netns
    match op:
        case WaitUplink():
            if ctx.uplink is None:
                ctx.uplink = routes.wait_default_route(op.timeout, netns=ns)
        case SetSysctl():
            key = op.key  # read under the journal's lock: a daemon stopping meanwhile restores first
            forward = {"routed_bridges": lambda: link.routed_bridges(ns),
                       "side_settings": lambda: sysctl.forward_side_settings(ns)}
            journal.record("sysctl", key=key, value=lambda: sysctl.read(key, ns),
                           **(forward if key == sysctl.IP_FORWARD else {}))
            sysctl.write(op.key, op.value, ns)
        case ConfigureTun():
            link.configure_tun(op.tun, op.address_cidr, op.mtu, ns, txqueuelen=op.txqueuelen)
        case LoadChnroute():
            nets = chnroute.load_file(op.data)
            via = _uplink(ctx) if op.gateway is None else routes.configured_gateway(op.gateway)
            journal.record("chnroute", table=op.table)
            try:
                added = chnroute.add(nets, via, op.table, ns)
            except SystemSetupError as exc:
                raise _gateway_error(op, exc) from exc
            if op.gateway is None:
                ctx.chnroute = UplinkPrefixes(tuple(added), op.table)
            ctx.chnroute_table = op.table
        case AddHostRoutes():
            up = _uplink(ctx)
            journal.record("routes", dsts=list(op.dsts), table=op.table)
            ctx.host_added = frozenset(routes.add_host_routes(op.dsts, up, op.table, ns))
            ctx.expected.extend(up.route(str(net), op.table) for net in routes.host_networks(op.dsts))
            ctx.host_dsts, ctx.route_table = op.dsts, op.table
        case MoveDefaultRoute():
            saved = routes.save_default_routes(ns)
            journal.record("default_route", saved=[s.to_json() for s in saved], table=op.table)
            routes.move_default_route(op.gateway_ip, op.tun, op.table, ns, saved)
            ctx.route_table = op.table
            ctx.ways = _with_ways((), saved, op.tun)
            start = ctx.uplink  # a multipath default names no single way: keep its first hop
            if start is not None and all((u.dev, u.gateway) != (start.dev, start.gateway) for u in ctx.ways):
                ctx.ways = (start, *ctx.ways)
            for problem in lookup_problems(op.table, ctx.chnroute_table, ns):
                log.warning("%s", problem)
            ctx.expected.append(routes.ExpectedRoute(DEFAULT_DST, op.gateway_ip, op.tun, op.table))
            ctx.expected.extend(routes.add_uplink_defaults(ways_of(saved, op.tun), op.table, ns))
        case ApplyNft():
            _refuse_foreign_table(op.tun, journal, ns)
            journal.record("nft_table", tun=op.tun)
            nft.apply_table(op.tun, op.net, op.mtu, nat=op.nat, netns=ns)
        case AddForwardAccepts():
            journal.record("iptables", tun=op.tun)
            nft.add_forward_accepts(op.tun, op.net, ns)
        case _:
            raise ValueError(f"unknown op {op!r}")
