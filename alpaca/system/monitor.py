"""RouteMonitor: wake up when routes, rules or addresses change (IPv4 and IPv6).

A NETLINK_ROUTE socket (created by pyroute2 in the namespace when one is named) is bound to the
multicast groups below. The original subscribed to IPv4 route/rule/address only and asked in
its wiki FAQ how to hear about IPv6 rule changes: there is no ``RTMGRP_IPV6_RULE`` constant in
<linux/rtnetlink.h>, but the group exists, ``RTNLGRP_IPV6_RULE = 19``, and the legacy bind()
bitmask for group ``n`` is ``1 << (n - 1)``, so its bit is ``1 << 18`` (0x40000).

gevent contract: the socket is non-blocking; :attr:`RouteMonitor.fileno` lets a greenlet
``gevent.socket.wait_read(fd)`` and then :meth:`RouteMonitor.drain` without blocking the hub.
:meth:`RouteMonitor.run` does exactly that and calls ``on_change`` at most once per
``debounce`` seconds (a burst of changes gives one call after it settles to the interval).
Not thread-safe; one greenlet owns a monitor. No netlink I/O in the constructor: call
:meth:`open` (or use ``with``).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable, Iterable

from gevent.socket import wait_read

from alpaca.errors import AlpacaError
from alpaca.system import netlink, routes

log = logging.getLogger(__name__)

# Legacy group bitmasks (linux/rtnetlink.h). RTMGRP_x = 1 << (RTNLGRP_x - 1).
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV4_RULE = 0x80
RTMGRP_IPV6_IFADDR = 0x100
RTMGRP_IPV6_ROUTE = 0x400
RTNLGRP_IPV6_RULE = 19
#: No RTMGRP_ constant exists for it in the kernel headers; computed from the group number.
RTMGRP_IPV6_RULE = 1 << (RTNLGRP_IPV6_RULE - 1)

GROUPS = (
    RTMGRP_LINK
    | RTMGRP_IPV4_IFADDR
    | RTMGRP_IPV4_ROUTE
    | RTMGRP_IPV4_RULE
    | RTMGRP_IPV6_IFADDR
    | RTMGRP_IPV6_ROUTE
    | RTMGRP_IPV6_RULE
)

#: Message types that count as a change (new/del link, addr, route, rule).
CHANGE_TYPES = frozenset({16, 17, 20, 21, 24, 25, 32, 33})
#: Seconds between two calls when a default route was added to table main (bounds the CPU
#: another program re-adding one in a loop can take).
URGENT_DEBOUNCE = 0.05


class RouteMonitor:
    """Counts route/rule/address/link notifications; see the module docstring.

    Args:
        netns: namespace to watch (None: the process's own).
        groups: bind() group bitmask (default :data:`GROUPS`).
    """

    def __init__(self, netns: str | None = None, groups: int = GROUPS) -> None:
        self.netns = netns
        self.groups = groups
        self.changes = 0
        #: a default route was added to table main since the last :meth:`run` call (it takes
        #: traffic out of the tunnel: handled at once, not after the debounce)
        self.default_added = False
        self._sock: socket.socket | None = None

    def open(self) -> RouteMonitor:
        from pyroute2 import netns as pr_netns

        netlink.check_netns(self.netns)
        family, kind = socket.AF_NETLINK, socket.SOCK_RAW
        try:
            if self.netns:
                sock = pr_netns.create_socket(self.netns, family, kind, netlink.NETLINK_ROUTE, flags=0)
            else:
                sock = socket.socket(family, kind, netlink.NETLINK_ROUTE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024 * 1024)
            sock.bind((0, self.groups))
            sock.setblocking(False)
        except OSError as exc:
            raise netlink.setup_error("subscribing to route/rule/address changes", exc) from exc
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> RouteMonitor:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def fileno(self) -> int:
        assert self._sock is not None, "RouteMonitor not open"
        return self._sock.fileno()

    def drain(self) -> int:
        """Read every pending notification without blocking; return how many were changes.

        A receive-buffer overrun (ENOBUFS) means we lost some: count it as a change.
        """
        assert self._sock is not None, "RouteMonitor not open"
        seen = 0
        while True:
            try:
                data = self._sock.recv(1024 * 1024)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                seen += 1
                continue
            for kind, _flags, _seq, payload in netlink.iter_messages(data):
                if kind in CHANGE_TYPES:
                    seen += 1
                    self.default_added |= kind == netlink.RTM_NEWROUTE and _default_in_main(payload)
        self.changes += seen
        return seen

    def run(self, on_change: Callable[[], None], debounce: float = 1.0) -> None:
        """Loop forever (kill the greenlet to stop): wait, drain, and call ``on_change`` at most
        once per ``debounce`` seconds when something changed; when a default route was added
        to table main (a DHCP client's: traffic leaves outside the tunnel until it is moved),
        at most :data:`URGENT_DEBOUNCE` seconds after the previous call, also when it comes
        while the debounce is being waited out."""
        last_call = float("-inf")
        while True:
            wait_read(self.fileno)
            if not self.drain():
                continue
            self._wait_out(last_call, debounce)
            last_call = time.monotonic()
            self.default_added = False
            on_change()

    def _wait_out(self, last_call: float, debounce: float) -> None:
        """Until ``debounce`` seconds (URGENT_DEBOUNCE once a default route was added to main)
        have passed since ``last_call``, reading every notification that comes meanwhile."""
        while True:
            span = URGENT_DEBOUNCE if self.default_added else debounce
            left = last_call + span - time.monotonic()
            if left <= 0:
                return
            try:
                wait_read(self.fileno, timeout=left)
            except TimeoutError:
                return
            self.drain()


def reconcile(
    expected_routes: Iterable[routes.ExpectedRoute], netns: str | None = None,
    displaced: set[routes.ExpectedRoute] | None = None,
) -> list[routes.ExpectedRoute]:
    """Put back any of our routes that disappeared (an interface flap, another tool). A route
    that cannot be put back now is logged and the others are still tried (an uplink's
    default at debug level: its device is down or gone, a backup link unplugged, until it
    is back).

    Args:
        displaced: the caller's record of our default routes whose place another program's
            route holds (traffic then bypasses the tunnel): each is warned about once, when
            it is found, and forgotten when ours is back.

    Returns:
        The routes that were re-added.
    """
    restored = []
    with netlink.iproute(netns) as ipr:
        for route in expected_routes:
            if routes.expected_present(route, ipr):
                if displaced is not None:
                    displaced.discard(route)
                continue
            level = logging.DEBUG if route.metric else logging.WARNING
            oif = ipr.link_lookup(ifname=route.dev)
            if not oif:
                log.log(level, "route device missing dst=%s dev=%s", route.dst, route.dev)
                continue
            try:
                added = routes.add_route(route, oif[0], ipr)
            except AlpacaError as exc:  # e.g. its gateway is no longer on a link: the next go
                log.log(level, "could not restore a route: %s", exc)
                continue
            if not added:  # another program's route to that prefix serves
                _displaced(route, displaced)
                continue
            if displaced is not None:
                displaced.discard(route)
            restored.append(route)
            log.info(
                "route restored dst=%s via=%s dev=%s table=%d",
                route.dst,
                route.gateway,
                route.dev,
                route.table,
            )
    return restored


def _displaced(route: routes.ExpectedRoute, displaced: set[routes.ExpectedRoute] | None) -> None:
    """Another program's route holds ``route``'s place. For a host route that is as good
    (it was there before us, say); for the default, traffic leaves outside the tunnel."""
    if route.dst != "0.0.0.0/0" or route.metric or displaced is None or route in displaced:
        return
    if route.table == netlink.RT_TABLE_MAIN:  # route_table main: keep_default_moved, next in
        return                                # this pass, moves that one out, and ours comes back
    displaced.add(route)
    log.warning("another program's default route holds table %d, where the tunnel's was: traffic "
                "bypasses the tunnel until that route is deleted (ip route del default table %d)",
                route.table, route.table)


def _default_in_main(payload: bytes) -> bool:
    """Whether a route message is an IPv4 default route of table main."""
    if len(payload) < 12:
        return False
    family, dst_len, _proto, _scope, _type = netlink.route_fields(payload)
    return family == socket.AF_INET and dst_len == 0 and netlink.route_table(payload) == netlink.RT_TABLE_MAIN
