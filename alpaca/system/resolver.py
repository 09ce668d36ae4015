"""KernelResolver: the host's answer to "which gateway for this destination?".

The engine asks it (through its route cache) for packets read from the TUN device whose
destination is outside the tunnel: the route's gateway must be a tunnel address
(``via <net>.<id>``) for the packet to have a peer. It asks the same for the way back of a
received packet with an outside source (the reverse-path check, ``inner_source_check``).
One netlink socket is kept open for the daemon's lifetime; it is used only from the engine's
greenlets (one hub, no threads).
"""

from __future__ import annotations

import logging
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from alpaca.core.routecache import LookupFailed

log = logging.getLogger(__name__)


class KernelResolver:
    """Callable ``(dst, src) -> gateway | None`` backed by RTM_GETROUTE. A lookup the socket
    fails raises LookupFailed (counted in ``errors``), which the engine's route cache does not
    keep and the engine turns into "no route" for this packet (a reply's source check: not
    a forgery); any other exception is kept from the reader that asked."""

    def __init__(self) -> None:
        self._ipr: Any = None
        self._failing = False  # the last lookup failed on the socket: logged once, not again
        self.errors = 0

    def __call__(self, dst: str, src: str) -> str | None:
        try:
            if self._ipr is None:
                self._ipr = IPRoute()  # may fail too (EMFILE, ENOBUFS): no route, retried
            routes = self._routes(dst, src)
        except OSError as exc:  # the socket itself: a new one at the next lookup
            self.close()
            if not self._failing:
                log.warning("route lookup failed, reopening netlink at the next one error=%s", exc)
            self._failing = True
            self.errors += 1
            raise LookupFailed(str(exc)) from exc
        self._failing = False
        if not routes:
            self.errors += 1
            return None
        gateway = routes[0].get_attr("RTA_GATEWAY")
        return str(gateway) if gateway else None

    def _routes(self, dst: str, src: str) -> list[Any] | None:
        """The kernel's routes to ``dst`` as sent from ``src``, else from anywhere; None when
        neither is routed.

        Raises:
            OSError: the netlink socket failed.
        """
        for query in ({"dst": dst, "src": src}, {"dst": dst}):
            try:
                routes = self._ipr.route("get", **query)
            except NetlinkError:
                continue
            if routes:
                return list(routes)
        return None

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
