"""In-memory doubles of the drivers, so a daemon can run without fds or root.

Modelled on wireguard-go's ``tuntest.ChannelTUN`` and ``bindtest.ChannelBind``:

- :class:`MemoryOutput` implements the core's ``Output`` port and records what the engine
  emits.
- :class:`MemoryTun` has TunDevice's surface: tests ``inject()`` packets that the daemon
  reads, and find what it wrote in ``written``.
- :class:`MemoryPort` has UdpPort's surface: tests ``inject()`` datagrams, and find sends in
  ``sent``; ports created by one :class:`MemoryNetwork` deliver to each other by address.

Every record is a bounded deque (``maxlen``), so a long test cannot grow without bound.
Greenlet contract: as for the real drivers, one hub; readers park on a gevent Event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from gevent.event import Event

from alpaca.core import offload
from alpaca.core.settings import Addr
from alpaca.errors import TunnelError
from alpaca.io import DriverClosed, TunPacket
from alpaca.io.readahead import ReadAhead, read_loop

if TYPE_CHECKING:
    from alpaca.core.output import Output
    from alpaca.io import DatagramPort, PacketDevice

DEFAULT_MAXLEN = 10_000
T = TypeVar("T")


class MemoryOutput:
    """Records ``send`` and ``write_tun`` calls; ``refuse_send``/``refuse_tun`` make them fail.

    Refused calls return False and are not recorded.
    """

    def __init__(self, maxlen: int = DEFAULT_MAXLEN) -> None:
        #: (port, addr, data) of every accepted send, oldest first.
        self.sent: deque[tuple[int, Addr, bytes]] = deque(maxlen=maxlen)
        #: Every accepted TUN write, oldest first.
        self.tun_writes: deque[bytes] = deque(maxlen=maxlen)
        self.refuse_send = False
        self.refuse_tun = False

    def send(self, port: int, addr: Addr, data: bytes) -> bool:
        if self.refuse_send:
            return False
        self.sent.append((port, addr, data))
        return True

    def write_tun(self, packet: bytes, csum_partial: bool = False) -> bool:
        """Record the packet as a TUN device without offload would take it (checksum done)."""
        complete = offload.whole(packet, csum_partial)
        if self.refuse_tun or complete is None:
            return False
        self.tun_writes.append(complete)
        return True


class _Inbox(Generic[T]):
    """A bounded queue with a readiness event; the reading half of a fake driver."""

    def __init__(self, maxlen: int) -> None:
        self.queue: deque[T] = deque(maxlen=maxlen)
        self.ready = Event()
        self.closed = False

    def put(self, item: T) -> None:
        self.queue.append(item)
        self.ready.set()

    def take(self, limit: int) -> list[T]:
        queue = self.queue
        items = [queue.popleft() for _ in range(min(limit, len(queue)))]
        if not queue:
            self.ready.clear()
        return items

    def wait(self) -> None:
        if self.closed:
            raise DriverClosed
        self.ready.wait()
        if self.closed:
            raise DriverClosed

    def close(self) -> None:
        self.closed = True
        self.ready.set()


class MemoryTun:
    """A fake TUN device: ``inject()`` feeds reads, ``written`` records writes.

    It behaves as a device without offload: partial checksums are completed on write.
    """

    def __init__(self, name: str = "mem0", maxlen: int = DEFAULT_MAXLEN) -> None:
        self._name = name
        self._inbox: _Inbox[TunPacket] = _Inbox(maxlen)
        self._vanished = False
        #: Packets the daemon wrote, oldest first.
        self.written: deque[bytes] = deque(maxlen=maxlen)
        #: When True, write() refuses (returns False), like a kernel EINVAL.
        self.refuse = False
        #: Always 0: a memory device has no offload header to get wrong.
        self.bad_frames = 0

    @property
    def name(self) -> str:
        return self._name

    def inject(self, packet: bytes, csum_partial: bool = False) -> None:
        """Queue a packet for the daemon to read, as if the kernel routed it to the device."""
        self._inbox.put((packet, csum_partial))

    def vanish(self) -> None:
        """Simulate deletion of the device: the next read raises TunnelError."""
        self._vanished = True
        self._inbox.ready.set()

    def read_batch(self, limit: int = 32) -> list[TunPacket]:
        if self._vanished:
            raise TunnelError(f"TUN device {self._name} vanished: deleted (memory device)")
        return self._inbox.take(limit)

    def wait_readable(self) -> None:
        self._inbox.wait()

    def write(self, packet: bytes) -> bool:
        if self.refuse or self._inbox.closed or self._vanished:
            return False
        self.written.append(packet)
        return True

    def write_many(self, packets: list[TunPacket]) -> int:
        written = 0
        for packet, partial in packets:
            complete = offload.whole(packet, partial)
            written += complete is not None and self.write(complete)
        return written

    def read_loop(
        self, handler: Callable[[list[TunPacket]], None], *, batch: int = 32,
        ahead: ReadAhead | None = None, lone: int = 0,
    ) -> None:
        read_loop(self._inbox.wait, self.read_batch, handler, batch=batch, ahead=ahead, lone=lone)

    #: one queue for every packet (TunDevice's priority lane is the kernel's)
    priority_lane = False

    def priority_loop(self, handler: Callable[[list[TunPacket]], None], *, batch: int = 32) -> None:
        return

    def close(self) -> None:
        self._inbox.close()


class MemoryNetwork:
    """Delivers datagrams between the MemoryPorts it created, by local address.

    A datagram to an address no port holds is silently lost (UDP: the send still succeeds).
    ``blocked`` holds (src, dst) address pairs whose datagrams are lost, to cut a path.
    """

    def __init__(self) -> None:
        self.ports: dict[Addr, MemoryPort] = {}
        self.blocked: set[tuple[Addr, Addr]] = set()

    def port(self, name: str, addr: Addr, maxlen: int = DEFAULT_MAXLEN) -> MemoryPort:
        """Create a port bound to ``addr`` on this network."""
        if addr in self.ports:
            raise ValueError(f"address {addr} already bound on this network")
        port = MemoryPort(name, addr, maxlen, network=self)
        self.ports[addr] = port
        return port

    def deliver(self, src: Addr, dst: Addr, data: bytes) -> None:
        if (src, dst) in self.blocked:
            return
        target = self.ports.get(dst)
        if target is not None:
            target.inject(data, src)


class MemoryPort:
    """A fake UDP port: ``inject()`` feeds receives, ``sent`` records sends."""

    def __init__(
        self,
        name: str = "default",
        local_addr: Addr = ("127.0.0.1", 5000),
        maxlen: int = DEFAULT_MAXLEN,
        *,
        network: MemoryNetwork | None = None,
    ) -> None:
        self._name = name
        self._local = local_addr
        self._network = network
        self._inbox: _Inbox[tuple[bytes, Addr]] = _Inbox(maxlen)
        #: (addr, data) of every accepted send, oldest first.
        self.sent: deque[tuple[Addr, bytes]] = deque(maxlen=maxlen)
        #: When True, send() refuses (returns False), like a kernel ENOBUFS.
        self.refuse = False

    @property
    def name(self) -> str:
        return self._name

    @property
    def local_addr(self) -> Addr:
        return self._local

    def inject(self, data: bytes, src: Addr) -> None:
        """Queue a datagram from ``src`` for the daemon to receive."""
        self._inbox.put((data, src))

    def recv_batch(self, limit: int = 32) -> list[tuple[bytes, Addr]]:
        return self._inbox.take(limit)

    def wait_readable(self) -> None:
        self._inbox.wait()

    def send(self, addr: Addr, data: bytes) -> bool:
        if self.refuse or self._inbox.closed:
            return False
        self.sent.append((addr, data))
        if self._network is not None:
            self._network.deliver(self._local, addr, data)
        return True

    def send_many(self, addr: Addr, datas: Sequence[bytes]) -> int:
        return sum(self.send(addr, data) for data in datas)

    def read_loop(
        self, handler: Callable[[list[tuple[bytes, Addr]]], None], *, batch: int = 32,
        lone: int = 0,
    ) -> None:
        read_loop(self._inbox.wait, self.recv_batch, handler, batch=batch, lone=lone)

    #: one queue for every datagram (UdpPort's priority lane is the kernel's)
    priority_lane = False

    def priority_loop(
        self, handler: Callable[[list[tuple[bytes, Addr]]], None], *, batch: int = 32,
    ) -> None:
        return

    def close(self) -> None:
        self._inbox.close()
        if self._network is not None and self._network.ports.get(self._local) is self:
            del self._network.ports[self._local]


if TYPE_CHECKING:
    # Static proof that the fakes (and the real drivers) fit the driver surfaces.
    from alpaca.io.tun import TunDevice
    from alpaca.io.udp import UdpPort

    def _conforms(
        o: MemoryOutput, t: MemoryTun, p: MemoryPort, rt: TunDevice, rp: UdpPort
    ) -> tuple[Output, PacketDevice, DatagramPort, PacketDevice, DatagramPort]:
        return o, t, p, rt, rp
