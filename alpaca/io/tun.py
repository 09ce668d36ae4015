"""TunDevice: the inside, a Linux TUN device read and written through a non-blocking fd.

The device is created with ``IFF_TUN | IFF_NO_PI`` and is not persistent: it exists while
the fd is open, and the kernel removes it when the process exits, however it exits.
Addresses, MTU and link state are configured elsewhere (``alpaca.system``), after open().

Namespaces: the device is created in the network namespace of the calling process. To run
the daemon in another namespace, start it there (``ip netns exec NAME alpaca-tunnel ...``).

Reading follows the measurements in MACHINE.md: one wake-up reads until EAGAIN but at most
``batch`` packets (32), then yields, so a flood in one direction cannot starve the other.

Greenlet contract: one greenlet runs :meth:`TunDevice.read_loop`; :meth:`TunDevice.write`
may be called from any greenlet of the same hub.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable

import gevent
from gevent.os import make_nonblocking
from gevent.socket import wait_write

from alpaca.errors import TunnelError
from alpaca.io import DriverClosed, ReadWaiter

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
#: Largest packet a TUN read can return (any MTU up to the IPv4 maximum).
READ_SIZE = 65535
#: How long write() waits for room when the device queue is full, seconds.
WRITE_WAIT = 0.01

_IFREQ = struct.Struct("16sH22x")
_OPEN_HINTS = {
    errno.ENOENT: "load the tun module (modprobe tun), or give the container /dev/net/tun",
    errno.EPERM: "run as root or grant CAP_NET_ADMIN",
    errno.EACCES: "run as root or grant CAP_NET_ADMIN",
    errno.EBUSY: "another process holds a device of that name; stop it or choose another name",
    errno.EINVAL: "a non-TUN link of that name exists; delete it or choose another name",
}


class TunDevice:
    """An open TUN device. Create with :meth:`open`; the constructor takes an open fd."""

    def __init__(self, fd: int, name: str) -> None:
        self._fd = fd
        self._name = name
        self._closed = False
        self._waiter = ReadWaiter(fd)

    @classmethod
    def open(cls, name: str) -> TunDevice:
        """Create (or attach to) TUN device ``name`` in the current network namespace.

        ``name`` may contain ``%d`` for the kernel to pick a number; :attr:`name` is the
        final name. Raises TunnelError naming the device and the fix.
        """
        raw = name.encode()
        if not raw or len(raw) >= IFNAMSIZ:
            raise TunnelError(f"TUN device name {name!r} must be 1 to {IFNAMSIZ - 1} bytes long")
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise _open_error(name, exc) from exc
        try:
            ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(raw, IFF_TUN | IFF_NO_PI))
            make_nonblocking(fd)
        except OSError as exc:
            os.close(fd)
            raise _open_error(name, exc) from exc
        final = _IFREQ.unpack(ifr)[0].rstrip(b"\0").decode()
        return cls(fd, final)

    @property
    def name(self) -> str:
        """The interface name the kernel gave the device."""
        return self._name

    @property
    def fd(self) -> int:
        """The non-blocking file descriptor (-1 once closed)."""
        return -1 if self._closed else self._fd

    def read_batch(self, limit: int = 32) -> list[bytes]:
        """Read up to ``limit`` packets without blocking; stop early at EAGAIN.

        Raises TunnelError when the device is gone (EBADFD, EIO, ENODEV, ...).
        """
        packets: list[bytes] = []
        if self._closed:
            return packets
        read, fd = os.read, self._fd
        while len(packets) < limit:
            try:
                packet = read(fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                raise self._vanished(exc) from exc
            if not packet:
                # A TUN fd never reads empty while the device exists; looping on it would spin.
                raise self._vanished(OSError(errno.EIO, "read returned no data"))
            packets.append(packet)
        return packets

    def wait_readable(self) -> None:
        """Park this greenlet until a packet (or an error) is pending.

        Raises DriverClosed if another greenlet closes the device meanwhile.
        """
        self._waiter.wait()

    def write(self, packet: bytes) -> bool:
        """Write one IP packet. False if the kernel refused it; never raises for a bad packet.

        On EAGAIN it waits up to WRITE_WAIT seconds for room, once, then gives up.
        """
        if self._closed:
            return False
        try:
            return os.write(self._fd, packet) == len(packet)
        except BlockingIOError:
            pass
        except OSError:
            return False
        try:
            wait_write(self._fd, timeout=WRITE_WAIT)
            return os.write(self._fd, packet) == len(packet)
        except (OSError, gevent.Timeout):
            return False

    def read_loop(self, handler: Callable[[list[bytes]], None], *, batch: int = 32) -> None:
        """Forever: wait, read up to ``batch`` packets, call ``handler(packets)``.

        Yields to other greenlets after a full batch. Returns when the device is closed by
        another greenlet; raises TunnelError when the device vanishes; exceptions from
        ``handler`` propagate.
        """
        try:
            while not self._closed:
                self._waiter.wait()
                packets = self.read_batch(batch)
                if packets:
                    handler(packets)
                if len(packets) >= batch:
                    gevent.sleep(0)
        except DriverClosed:
            return

    def close(self) -> None:
        """Close the fd (the kernel then deletes the device). Idempotent.

        A greenlet inside :meth:`read_loop` returns instead of reading a closed fd.
        """
        if self._closed:
            return
        self._closed = True
        fd = self._fd
        self._waiter.close_then(lambda: os.close(fd))

    def __repr__(self) -> str:
        return f"TunDevice(name={self._name!r}, fd={self.fd})"

    def _vanished(self, exc: OSError) -> TunnelError:
        text = exc.strerror or str(exc)
        return TunnelError(
            f"TUN device {self._name} vanished: {text}; it was deleted or its namespace went "
            "away; restart the daemon"
        )


def _open_error(name: str, exc: OSError) -> TunnelError:
    hint = _OPEN_HINTS.get(exc.errno or 0, "")
    text = f"opening TUN device {name} via {TUN_PATH}: {exc.strerror or exc}"
    return TunnelError(f"{text} ({hint})" if hint else text)
