"""The gevent shell: the only code in alpaca that owns fds, sockets and sleeps.

Drivers (``tun.TunDevice``, ``udp.UdpPort``) and their in-memory doubles (``fakes``) share
the surfaces :class:`PacketDevice` and :class:`DatagramPort`, so the daemon runs unchanged
over real fds or over memory.

Greenlet contract: every driver belongs to the hub of the thread that opened it. Each fd has
one reader (its ``read_loop`` greenlet); ``send``/``write`` may be called from any greenlet of
that hub. Nothing here monkey-patches, and nothing starts an OS thread.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from gevent.hub import get_hub

from alpaca.core.settings import Addr

if TYPE_CHECKING:
    from alpaca.io.readahead import ReadAhead

__all__ = ["DatagramPort", "DriverClosed", "PacketDevice", "ReadWaiter", "TunPacket", "hub_turns",
           "kernel_at_least"]

#: An inner packet and whether its TCP/UDP checksum is partial (alpaca.core.offload).
TunPacket = tuple[bytes, bool]


def kernel_at_least(version: tuple[int, int], release: str | None = None) -> bool:
    """Whether the running kernel (``release``: as uname gives it) is ``version`` or newer;
    False for a release that does not parse."""
    match = re.match(r"(\d+)\.(\d+)", release or os.uname().release)
    return match is not None and (int(match[1]), int(match[2])) >= version


class DriverClosed(Exception):
    """Thrown into a greenlet waiting on a driver that another greenlet closed."""


class PacketDevice(Protocol):
    """The inside: a TUN device carrying raw IPv4 packets (no packet-info header).

    Reads yield :data:`TunPacket` pairs; ``write_many`` takes them and returns how many
    packets the kernel accepted; ``write`` takes one packet with a complete checksum.
    ``bad_frames`` counts reads that could not be taken apart (reset by the reader).
    """

    bad_frames: int

    @property
    def name(self) -> str: ...

    def read_batch(self, limit: int = 32) -> list[TunPacket]: ...

    def wait_readable(self) -> None: ...

    def write(self, packet: bytes) -> bool: ...

    def write_many(self, packets: list[TunPacket]) -> int: ...

    def read_loop(
        self, handler: Callable[[list[TunPacket]], None], *, batch: int = 32,
        ahead: ReadAhead | None = None, lone: int = 0,
    ) -> None: ...

    @property
    def priority_lane(self) -> bool: ...

    def priority_loop(self, handler: Callable[[list[TunPacket]], None], *, batch: int = 32) -> None: ...

    def close(self) -> None: ...


class DatagramPort(Protocol):
    """The outside: one local UDP socket."""

    @property
    def name(self) -> str: ...

    @property
    def local_addr(self) -> Addr: ...

    def recv_batch(self, limit: int = 32) -> list[tuple[bytes, Addr]]: ...

    def wait_readable(self) -> None: ...

    def send(self, addr: Addr, data: bytes) -> bool: ...

    def send_many(self, addr: Addr, datas: Sequence[bytes]) -> int: ...

    def read_loop(
        self, handler: Callable[[list[tuple[bytes, Addr]]], None], *, batch: int = 32,
        lone: int = 0,
    ) -> None: ...

    @property
    def priority_lane(self) -> bool: ...

    def priority_loop(
        self, handler: Callable[[list[tuple[bytes, Addr]]], None], *, batch: int = 32,
    ) -> None: ...

    def close(self) -> None: ...


class ReadWaiter:
    """One reusable read watcher on an fd, owned by a driver.

    ``wait()`` parks the calling greenlet until the fd is readable (or in error: a vanished
    TUN device polls as readable, and the following read reports the error). Reusing one
    watcher avoids creating a native watcher per wake-up, as ``gevent.socket.wait_read`` does.
    ``close_then(fn)`` throws :class:`DriverClosed` into a waiting greenlet, releases the
    watcher, and only then calls ``fn`` (which closes the fd), so the loop never sees a closed
    or reused fd number.
    """

    def __init__(self, fd: int, priority: int = 0) -> None:
        """``priority``: the watcher's (libev: -2..2); of the fds ready at one poll, those of
        higher priority run first."""
        self._hub: Any = get_hub()
        self._watcher: Any = self._hub.loop.io(fd, 1)
        self._watcher.priority = priority

    def wait(self) -> None:
        """Block this greenlet until the fd is readable. Raises DriverClosed once closed."""
        if self._watcher is None:
            raise DriverClosed
        self._hub.wait(self._watcher)

    def close_then(self, then: Callable[[], None]) -> None:
        """Wake any waiter with DriverClosed, release the watcher, then call ``then``."""
        watcher, self._watcher = self._watcher, None
        if watcher is None:
            return
        self._hub.cancel_waits_close_and_then((watcher,), DriverClosed, then)


@contextlib.contextmanager
def hub_turns() -> Iterator[Callable[[], None]]:
    """A function that gives the hub a turn, for long work done in a greenlet (a scrape, a
    ``show`` of 10,000 peers): it waits on an idle watcher, so every pending fd (the packet
    path's included) runs first. Call it only from a greenlet, never from the hub itself."""
    hub = get_hub()
    turn = hub.loop.idle()
    try:
        yield lambda: hub.wait(turn)
    finally:
        turn.close()
