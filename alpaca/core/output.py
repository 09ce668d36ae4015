"""The engine's output port: how the core hands packets to the shell.

Calling an injected port instead of returning a list of action objects per packet saves an
allocation per packet on the hot path (measured in bench/micro.py); the core stays sans-IO
because the port is a protocol that tests implement in memory.
"""

from __future__ import annotations

from typing import Protocol

from alpaca.core.settings import Addr


class Output(Protocol):
    """Implemented by the daemon (real sockets and TUN) and by test fakes."""

    def send(self, port: int, addr: Addr, data: bytes) -> bool:
        """Send one datagram from local port ``port`` to ``addr``. False if the kernel refused."""
        ...

    def write_tun(self, packet: bytes, csum_partial: bool = False) -> bool:
        """Write one inner IP packet to the TUN device. False if the kernel refused.

        ``csum_partial``: its TCP/UDP checksum field holds only the pseudo-header sum
        (alpaca.core.offload); the writer completes it or lets the kernel do so.
        """
        ...


class RouteResolver(Protocol):
    """Asks the host's routing table for the gateway of an outside destination."""

    def __call__(self, dst: str, src: str) -> str | None:
        """Return the gateway address (text) of the route to ``dst`` from ``src``, or None."""
        ...
