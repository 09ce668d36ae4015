"""Socket buffer sizes, for the UDP ports (alpaca.io) and the netlink sockets (alpaca.system)
alike; no imports beyond the standard library, so either layer may use it."""

from __future__ import annotations

import socket
from typing import Any

#: SO_RCVBUF and SO_SNDBUF without the net.core.rmem_max / wmem_max cap (CAP_NET_ADMIN); the
#: socket module does not name them.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33


def set_buffer(sock: Any, size: int, *, send: bool = False) -> None:
    """Ask for a receive (``send``: send) buffer of ``size`` bytes, which the kernel doubles:
    uncapped where the process has CAP_NET_ADMIN, else capped at net.core.rmem_max (wmem_max).
    """
    forced, plain = ((SO_SNDBUFFORCE, socket.SO_SNDBUF) if send
                     else (SO_RCVBUFFORCE, socket.SO_RCVBUF))
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, plain, size)
