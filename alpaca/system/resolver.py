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

log = logging.getLogger(__name__)


class KernelResolver:
    """Callable ``(dst, src) -> gateway | None`` backed by RTM_GETROUTE. Never raises: a
    failed lookup is None (counted in ``errors``), so a packet has no route rather than the
    reader that asked losing its greenlet."""

    def __init__(self) -> None:
        self._ipr: Any = None
        self.errors = 0

    def __call__(self, dst: str, src: str) -> str | None:
        if self._ipr is None:
            self._ipr = IPRoute()
        for query in ({"dst": dst, "src": src}, {"dst": dst}):
            try:
                answer = self._ipr.route("get", **query)
            except NetlinkError:
                continue
            except OSError as exc:  # the socket itself (ENOBUFS...): a new one next time; the
                log.warning("route lookup failed, reopening netlink error=%s", exc)  # packet
                self.close()                                                    # has no route
                break
            for msg in answer:
                gateway = msg.get_attr("RTA_GATEWAY")
                return str(gateway) if gateway else None
        self.errors += 1
        return None

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
