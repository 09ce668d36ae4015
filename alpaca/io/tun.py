"""TunDevice: the inside, a Linux TUN device read and written through a non-blocking fd.

The device is created with ``IFF_TUN | IFF_NO_PI`` (and ``IFF_MULTI_QUEUE`` for the priority
lane) and is not persistent: it exists while its fds are open, and the kernel removes it when
the process exits, however it exits.
Addresses, MTU and link state are configured elsewhere (``alpaca.system``), after open().

Namespaces: the device is created in the network namespace of the calling process. To run
the daemon in another namespace, start it there (``ip netns exec NAME alpaca-tunnel ...``).

Reading follows the measurements in MACHINE.md: one wake-up reads until EAGAIN but at most
``batch`` packets (32), then yields, so a flood in one direction cannot starve the other.

Offload (the default): the device is opened with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD``
(checksum, TSO for TCP/IPv4). The kernel then hands over TCP super-packets of up to 64 KiB,
cut here into segments by :func:`alpaca.core.offload.split`, and :meth:`write_many` writes
consecutive segments of a flow as one super-packet (:func:`alpaca.core.offload.coalesce`):
one syscall and one pass through the kernel's stack per run instead of per packet. Packets
cross this driver as ``(packet, csum_partial)`` pairs (see alpaca.core.offload). Where the
kernel refuses the offload ioctl the device is reopened without it.

Priority lane (``open(priority_lane=True)``): under a saturating TCP flow the device's ring
holds a few of the sender's 64 KiB super-packets (measured: 150-400 KiB ahead of a ping that
waited 4 ms), and a ping, an ACK or a DNS query queued behind them waits until the daemon has
read and handled all of it. So the device is created with ``IFF_MULTI_QUEUE`` and a second
queue, and an eBPF program (:func:`alpaca.io.ebpf.size_steering`, ``TUNSETSTEERINGEBPF``,
Linux 4.16+) puts every packet of at most :data:`LANE_BYTES` into the second queue's ring;
its reader runs at a higher watcher priority (the program belongs to the device and goes
with it). Each queue's ring is ``txqueuelen`` packets long. Writes go through the first fd.
The program is loaded before the device is created: where the kernel refuses (no ``CAP_BPF`` or
``CAP_SYS_ADMIN``, an older kernel) the device is created as without the lane, and
:attr:`TunDevice.lane_problem` says why (also when the second queue cannot be attached or
steered, e.g. no descriptor left: the device then stays multi-queue and runs on one).
alpaca.system.link gives a multi-queue device one root qdisc before it comes up (the kernel's
``mq`` would create one per possible queue: 256). Small packets can overtake the bulk ahead of
them in the ring, as they do in the read-ahead's lanes.

Greenlet contract: one greenlet runs :meth:`TunDevice.read_loop`, another
:meth:`TunDevice.priority_loop` when :attr:`TunDevice.priority_lane`;
:meth:`TunDevice.write` may be called from any greenlet of the same hub.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections.abc import Callable, Sequence

import gevent
from gevent.os import make_nonblocking
from gevent.socket import wait_write

from alpaca.core import offload
from alpaca.core.constants import SMALL_PACKET
from alpaca.core.offload import Buffer
from alpaca.errors import TunnelError
from alpaca.io import ReadWaiter, TunPacket, ebpf, kernel_at_least
from alpaca.io.readahead import ReadAhead, read_loop

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100
TUNSETSTEERINGEBPF = 0x800454E0
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO_ECN = 0x01, 0x02, 0x08
#: What we ask the kernel for: partial checksums and TCP/IPv4 segmentation (with ECN/CWR).
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO_ECN
IFNAMSIZ = 16
#: Largest packet a TUN read can return (any MTU up to the IPv4 maximum), plus the
#: virtio-net header when offload is on.
READ_SIZE = 65535 + offload.VNET_HDR_LEN
#: How long write() waits for room when the device queue is full, seconds.
WRITE_WAIT = 0.01

#: Packets of at most this many bytes go to the priority lane's queue (index 1).
LANE_BYTES = SMALL_PACKET
LANE_QUEUE = 1
#: The oldest kernel the lane is asked of (TUNSETSTEERINGEBPF).
LANE_KERNEL = (4, 16)

_IFREQ = struct.Struct("16sH22x")
_OPEN_HINTS = {
    errno.ENOENT: "load the tun module (modprobe tun), or give the container /dev/net/tun",
    errno.EPERM: "run as root or grant CAP_NET_ADMIN",
    errno.EACCES: "run as root or grant CAP_NET_ADMIN",
    errno.EBUSY: "another process holds a device of that name; stop it or choose another tun_name",
    errno.EINVAL: "the kernel refuses that name, or a device of another kind has it; choose "
                  "another tun_name",
}


class TunDevice:
    """An open TUN device. Create with :meth:`open`; the constructor takes an open fd."""

    def __init__(self, fd: int, name: str, *, offload: bool = False, lane_fd: int | None = None,
                 lane_problem: str | None = None) -> None:
        self._fd = fd
        self._name = name
        self._offload = offload
        self._closed = False
        self._waiter = ReadWaiter(fd)
        #: the priority lane's queue (read only), or None
        self._lane_fd = lane_fd
        self._lane_waiter = None if lane_fd is None else ReadWaiter(lane_fd, priority=1)
        #: Why a lane asked for is missing (None: it runs, or none was asked for).
        self.lane_problem = lane_problem
        #: Reads whose offload header could not be taken apart (DropReason.BAD_OFFLOAD);
        #: the dataplane collects and resets it.
        self.bad_frames = 0

    @classmethod
    def open(cls, name: str, *, offload: bool = True, priority_lane: bool = False) -> TunDevice:
        """Create (or attach to) TUN device ``name`` in the current network namespace.

        ``name`` may contain ``%d`` for the kernel to pick a number; :attr:`name` is the
        final name. ``offload``: ask for checksum and TCP segmentation offload (falls back
        to none where the kernel refuses). ``priority_lane``: a second queue for small
        packets (see the module docstring; falls back to one queue). Raises TunnelError
        naming the device and the fix.
        """
        raw = name.encode()
        if not raw or len(raw) >= IFNAMSIZ:
            raise TunnelError(f"TUN device name {name!r} must be 1 to {IFNAMSIZ - 1} bytes long")
        program, lane_problem = _steering_program() if priority_lane else (None, None)
        try:
            flags = IFF_TUN | IFF_NO_PI | (IFF_MULTI_QUEUE if program is not None else 0)
            if offload:
                fd, final = _open_fd(name, flags | IFF_VNET_HDR)
                try:
                    fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS)
                    flags |= IFF_VNET_HDR
                except OSError:
                    os.close(fd)
            if not flags & IFF_VNET_HDR:
                fd, final = _open_fd(name, flags)
            lane_fd = None
            if program is not None:
                lane_fd, lane_problem = _open_lane(fd, final, flags, program)
        finally:
            if program is not None:
                os.close(program)  # an attached program is held by the device
        return cls(fd, final, offload=bool(flags & IFF_VNET_HDR), lane_fd=lane_fd,
                   lane_problem=lane_problem)

    @property
    def name(self) -> str:
        """The interface name the kernel gave the device."""
        return self._name

    @property
    def offload(self) -> bool:
        """True if reads and writes carry virtio-net headers (offload on)."""
        return self._offload

    @property
    def fd(self) -> int:
        """The non-blocking file descriptor (-1 once closed)."""
        return -1 if self._closed else self._fd

    @property
    def priority_lane(self) -> bool:
        """True if small packets arrive on a queue of their own (read by priority_loop)."""
        return self._lane_fd is not None

    def read_batch(self, limit: int = 32) -> list[TunPacket]:
        """Read packets without blocking until ``limit`` or EAGAIN: (packet, csum_partial).

        With offload one read may yield many segments; reading stops at the first read that
        reaches ``limit``, so a batch holds at most ``limit`` - 1 packets plus the segments of
        one super-packet (64 KiB / MSS: 48 at MTU 1400).
        Raises TunnelError when the device is gone (EBADFD, EIO, ENODEV, ...).
        """
        return self._read_from(self._fd, limit)

    def _read_lane(self, limit: int) -> list[TunPacket]:
        """read_batch of the priority lane's queue."""
        lane = self._lane_fd
        return [] if lane is None else self._read_from(lane, limit)

    def _read_from(self, fd: int, limit: int) -> list[TunPacket]:
        packets: list[TunPacket] = []
        if self._closed:
            return packets
        read, split = os.read, offload.split
        while len(packets) < limit:
            try:
                frame = read(fd, READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                raise self._vanished(exc) from exc
            if not frame:
                # A TUN fd never reads empty while the device exists; looping on it would spin.
                raise self._vanished(OSError(errno.EIO, "read returned no data"))
            if not self._offload:
                packets.append((frame, False))
                continue
            got = split(frame)
            if got is None:
                self.bad_frames += 1
                continue
            segments, partial = got
            packets.extend([(segment, partial) for segment in segments])
        return packets

    def wait_readable(self) -> None:
        """Park this greenlet until a packet (or an error) is pending.

        Raises DriverClosed if another greenlet closes the device meanwhile.
        """
        self._waiter.wait()

    def write(self, packet: bytes) -> bool:
        """Write one IP packet with a complete checksum. False if the kernel refused it."""
        return self._put([offload.PLAIN_HDR, packet] if self._offload else [packet])

    def write_many(self, packets: list[TunPacket]) -> int:
        """Write (packet, csum_partial) pairs; return how many packets the kernel took.

        With offload, runs of one TCP flow go out as one super-packet; without, a partial
        checksum is completed here first. A partial packet that is not TCP/UDP is refused.
        """
        if self._closed:
            return 0
        written = 0
        if self._offload:
            for iov, count in offload.coalesce(packets):
                written += count if self._put(iov) else 0
            return written
        for packet, partial in packets:
            complete = offload.whole(packet, partial)
            written += complete is not None and self._put([complete])
        return written

    def _put(self, iov: Sequence[Buffer]) -> bool:
        """One writev; never raises for a bad packet. On EAGAIN waits WRITE_WAIT once."""
        if self._closed:
            return False
        size = sum(map(len, iov))
        try:
            return os.writev(self._fd, iov) == size
        except BlockingIOError:
            pass
        except OSError:
            return False
        try:
            wait_write(self._fd, timeout=WRITE_WAIT)
            return os.writev(self._fd, iov) == size
        except (OSError, gevent.Timeout):
            return False

    def read_loop(
        self, handler: Callable[[list[TunPacket]], None], *, batch: int = 32,
        ahead: ReadAhead | None = None, lone: int = 0,
    ) -> None:
        """Forever: wait, read, call ``handler(packets)`` with at most ``batch`` packets (plus
        the rest of one super-packet), reading ahead into ``ahead`` if given; a lone packet
        of at most ``lone`` bytes is handled before reading on
        (:func:`alpaca.io.readahead.read_loop`).

        Returns when the device is closed by another greenlet; raises TunnelError when the
        device vanishes; exceptions from ``handler`` propagate.
        """
        read_loop(self._waiter.wait, self.read_batch, handler, batch=batch, ahead=ahead, lone=lone)

    def priority_loop(self, handler: Callable[[list[TunPacket]], None], *, batch: int = 32) -> None:
        """:meth:`read_loop` of the priority lane's queue (small packets; each wake-up's first
        is handled at once). Returns when the device closes, at once without a lane."""
        waiter = self._lane_waiter
        if waiter is not None:
            read_loop(waiter.wait, self._read_lane, handler, batch=batch, lone=LANE_BYTES)

    def close(self) -> None:
        """Close the fds (the kernel then deletes the device). Idempotent.

        Greenlets inside :meth:`read_loop` and :meth:`priority_loop` return instead of
        reading a closed fd.
        """
        if self._closed:
            return
        self._closed = True
        lane, lane_waiter = self._lane_fd, self._lane_waiter
        if lane is not None and lane_waiter is not None:
            lane_waiter.close_then(lambda: os.close(lane))
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


def _open_fd(name: str, flags: int) -> tuple[int, str]:
    """Open /dev/net/tun and attach device ``name`` with ``flags``: (fd, final name)."""
    try:
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise _open_error(name, exc) from exc
    try:
        ifr = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
        make_nonblocking(fd)
    except OSError as exc:
        os.close(fd)
        raise _open_error(name, exc) from exc
    return fd, _IFREQ.unpack(ifr)[0].rstrip(b"\0").decode()


def _steering_program() -> tuple[int | None, str | None]:
    """The lane's steering program, loaded: (fd, None), or (None, why not). Loaded before the
    device is created, so that a refusal leaves an ordinary single-queue device."""
    if not kernel_at_least(LANE_KERNEL):
        return None, f"Linux {LANE_KERNEL[0]}.{LANE_KERNEL[1]} or newer needed"
    try:
        return ebpf.load_socket_filter(ebpf.size_steering(LANE_BYTES, LANE_QUEUE)), None
    except OSError as exc:
        hint = " (needs CAP_BPF, Linux 5.8+, or CAP_SYS_ADMIN)" if exc.errno == errno.EPERM else ""
        return None, f"loading the steering program: {exc.strerror or exc}{hint}"


def _open_lane(fd: int, name: str, flags: int, program: int) -> tuple[int | None, str | None]:
    """Attach the lane's queue to the multi-queue device ``name`` (open on ``fd``) and steer
    small packets to it with ``program``: (lane fd, None), or (None, why not) with the device
    left on one queue."""
    try:
        lane, _ = _open_fd(name, flags)
    except TunnelError as exc:
        return None, str(exc)
    try:
        fcntl.ioctl(fd, TUNSETSTEERINGEBPF, struct.pack("i", program))
    except OSError as exc:
        os.close(lane)
        return None, f"attaching the steering program: {exc.strerror or exc}"
    return lane, None


def _open_error(name: str, exc: OSError) -> TunnelError:
    hint = _OPEN_HINTS.get(exc.errno or 0, "")
    text = f"opening TUN device {name} via {TUN_PATH}: {exc.strerror or exc}"
    return TunnelError(f"{text} ({hint})" if hint else text)
