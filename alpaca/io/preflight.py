"""Before a start changes the host: is each port this node will listen on free?

A port another process holds (or one we may not bind) is found by binding a throwaway socket
the way the real one will be bound, and closing it at once, so the start stops with the error
before any route, rule or nftables table is added (and before a new epoch is taken). An
address or a device that does not exist yet is left to the real bind, which comes after the
host changes: it may be the tunnel's own address, or appear with the uplink.
"""

from __future__ import annotations

import errno
import socket

from alpaca.errors import TunnelError
from alpaca.io.udp import UdpPort

#: bind errors that no host change made by the start can cure
_FINAL = frozenset({errno.EADDRINUSE, errno.EACCES, errno.EPERM})


def check_udp_port(name: str, address: str, port: int, interface: str | None) -> None:
    """Raise the TunnelError :meth:`UdpPort.open` would if the port is taken (port 0: never).

    Raises:
        TunnelError: naming the port, the address and the fix.
    """
    if port == 0:
        return
    try:
        UdpPort.open(name, address, port, interface, gso=False).close()
    except TunnelError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and cause.errno in _FINAL:
            raise


def tcp_port_taken(host: str, port: int) -> OSError | None:
    """The error binding a TCP listener to ``host:port`` gives if the port is taken (port 0,
    or an address not on this host yet: None). SO_REUSEADDR as the listener has, so a port
    left in TIME_WAIT by our previous run is free."""
    if port == 0:
        return None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc if exc.errno in _FINAL else None
    return None
