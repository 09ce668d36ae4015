"""UdpPort: the outside, one non-blocking IPv4 UDP port (a socket, and one more for small datagrams).

Reads follow MACHINE.md: one wake-up drains until EAGAIN but at most ``batch`` datagrams,
then yields. Socket buffers are bounded (1 MiB each by default): large buffers under a flood
measured 0.5-2.6 s of queueing delay, and a tunnel would rather drop than queue for seconds.

Sends never raise: a refused datagram (EAGAIN, ENOBUFS, ENETUNREACH, EPERM from a firewall,
a pending ICMP error, ...) returns False and the caller counts it. ICMP errors reported on
receive (ECONNREFUSED and friends) are skipped, never fatal. A datagram that the uplink's
queueing discipline drops after the send (a full tbf, fq or cake queue) is not seen here: the
socket has no IP_RECVERR, so the kernel reports success and counts it only in its own
``UdpSndbufErrors`` (``nstat``) and the qdisc's drops (``tc -s qdisc``); the loss shows in the
path's ``data_lost`` as the peer reports it.

:meth:`UdpPort.send_many` uses UDP GSO (``UDP_SEGMENT``, Linux 4.18+) to hand the kernel
runs of equal-sized datagrams in one ``sendmsg``; the receiver still sees separate
datagrams. Support is probed once at open(); without it, or when a GSO send fails for a
GSO-specific reason, it falls back to one ``sendto`` per datagram.

Priority lane: under a saturating flow the receiver's socket buffer holds a standing queue of
bulk datagrams (docs/performance.md, "Latency under load"), and a ping, an ACK, a DNS query or
a probe waits behind all of it. So the port binds a second socket to the same address and
port (``SO_REUSEPORT``) and the kernel steers each datagram with a classic BPF program
(``SO_ATTACH_REUSEPORT_CBPF``; used from Linux 5.0): UDP payloads of at most
:data:`PRIORITY_BYTES` go to the second socket, the rest to the first. Its reader runs at a
higher watcher priority, so a small datagram waits for at most one batch of bulk. Sends leave
by the first socket only (the same address and port: the peer sees one path). Where the
kernel refuses the program the port runs with one socket, as before. The program sees what
the kernel delivers: small datagrams that a sender's GSO or this host's GRO coalesced into
one larger packet count as one large one and take the first socket. Both sockets ask for
UDP GRO: the kernel picks the socket for GRO by the flow's hash alone, and one without it
would turn GRO off for the flows hashed to it. Rebinding the port to a re-created interface
takes it out of its group: the port then drops its lane (:meth:`UdpPort.rebind_device`) and
runs on one socket until the daemon restarts.

Greenlet contract: one greenlet runs :meth:`UdpPort.read_loop`, another
:meth:`UdpPort.priority_loop` when :attr:`UdpPort.priority_lane`; ``send``/``send_many`` may
be called from any greenlet of the same hub.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import socket as _stdsocket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from alpaca.core.constants import SMALL_DATAGRAM
from alpaca.core.settings import Addr
from alpaca.errors import TunnelError
from alpaca.io import ReadWaiter, kernel_at_least
from alpaca.io.readahead import read_loop
from alpaca.sockbuf import set_buffer

#: Largest datagram recv_batch returns whole; longer ones are truncated (and fail to verify).
MAX_DATAGRAM = 2048
SOL_UDP = 17
UDP_SEGMENT = 103
#: Kernel limit on segments per GSO send (UDP_MAX_SEGMENTS).
GSO_MAX_SEGMENTS = 64
#: Largest UDP payload of one GSO send over IPv4 (65535 - 20 IP - 8 UDP).
GSO_MAX_BYTES = 65507
UDP_GRO = 104
#: Receive buffer for one GRO read: a whole coalesced run (at most 64 KiB of payload).
GRO_BUFFER = 65535
_GRO_CMSG_SPACE = _stdsocket.CMSG_SPACE(4)

_GSO_SIZE = struct.Struct("=H")
_IFNAMSIZ = 16
_LITTLE = struct.pack("=H", 1) == b"\x01\x00"
#: Receive errors that report an earlier ICMP message, not a broken socket.
_ICMP_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EMSGSIZE,
        errno.EPROTO,
        errno.ENOPROTOOPT,
    }
)
#: sendmsg errors after which the run is sent datagram by datagram; EMSGSIZE: a segment
#: above the route's MTU (a plain sendto of it is fragmented by the kernel)
_GSO_ERRNOS = frozenset({errno.EINVAL, errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EMSGSIZE})
_GSO_FATAL_ERRNOS = frozenset({errno.EIO, errno.EOPNOTSUPP, errno.ENOPROTOOPT})
_BIND_HINTS = {
    errno.EADDRINUSE: "the port is in use by another process; stop it or choose another port",
    errno.EADDRNOTAVAIL: "the address is not configured on this host; fix the address",
    errno.EACCES: "ports below 1024 need root or CAP_NET_BIND_SERVICE",
    errno.EPERM: "binding to an interface needs root or CAP_NET_RAW",
    errno.ENODEV: "no such interface; fix the interface name or create it first",
}


#: Receive buffer asked for by default, bytes (the kernel doubles it: 208 KiB, the usual
#: rmem_default; the daemon passes config's udp_rcvbuf_kib). Under a saturating TCP flow the
#: receiving daemon is the bottleneck and this buffer holds the receiver's part of the
#: standing queue (the sender's TUN ring holds the rest; docs/performance.md, "Latency under
#: load").
RCVBUF = 104 << 10
#: UDP payloads of at most this many bytes go to the priority lane: an inner packet of up to
#: SMALL_PACKET bytes and the tunnel's header and tag (alpaca.core.constants).
PRIORITY_BYTES = SMALL_DATAGRAM
#: The oldest kernel the lane is opened on: before 4.14 joining a socket that set
#: SO_REUSEPORT after its bind could dereference a missing group; 5.0 brought UDP_GRO.
LANE_KERNEL = (5, 0)
SO_ATTACH_REUSEPORT_CBPF = 51
_BPF_LD_W_LEN, _BPF_JGE_K, _BPF_RET_K = 0x80, 0x35, 0x06
_SOCK_FILTER = struct.Struct("=HBBI")


#: This namespace's UDP sockets, as the kernel lists them: the inode (10th column) and the
#: datagrams dropped (the last: a full receive buffer, a bad checksum) of each.
PROC_NET_UDP = "/proc/net/udp"


def receive_drops(ports: Sequence[UdpPort], table: str = PROC_NET_UDP) -> list[tuple[str, int]]:
    """(port name, datagrams the kernel dropped at it) per open port, its priority lane
    included: a flood that overruns the receive buffer shows here, not in the engine's drops.
    Empty if the table cannot be read."""
    owners = {inode: port.name for port in ports for inode in port.inodes}
    counts = dict.fromkeys(owners.values(), 0)
    try:
        with open(table, "rb") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return []
    for row in rows:
        fields = row.split()
        name = owners.get(int(fields[9])) if len(fields) > 12 and fields[9].isdigit() else None
        if name is not None and fields[-1].isdigit():
            counts[name] += int(fields[-1])
    return list(counts.items())


class UdpPort:
    """A bound UDP socket. Create with :meth:`open`."""

    def __init__(self, name: str, sock: Any, *, gso: bool, gro: bool = False,
                 interface: str | None = None, lane: Any = None) -> None:
        self._name = name
        self._sock = sock
        #: the priority lane's socket (receive only), or None
        self._lane = lane
        self._lane_waiter = None if lane is None else ReadWaiter(lane.fileno(), priority=1)
        self._interface = interface
        self._local: Addr = sock.getsockname()
        self._gso = gso
        self._gro = gro
        self._closed = False
        self._waiter = ReadWaiter(sock.fileno())
        self._inodes = tuple(os.fstat(one.fileno()).st_ino for one in (sock, lane) if one is not None)
        # Bound methods cached: these run per packet.
        self._recvfrom = sock.recvfrom
        self._sendto = sock.sendto

    @classmethod
    def open(
        cls,
        name: str,
        address: str,
        port: int,
        interface: str | None = None,
        *,
        rcvbuf: int = RCVBUF,
        sndbuf: int = 1 << 20,
        gso: bool = True,
        priority_lane: bool = True,
    ) -> UdpPort:
        """Bind a UDP socket to ``address:port`` (port 0: the kernel picks one).

        Args:
            name: the port's name from config, used in errors and metrics.
            interface: bind to this device (SO_BINDTODEVICE) so that packets leave by it.
            rcvbuf / sndbuf: socket buffer sizes in bytes, which the kernel doubles. The receive
                buffer is set with SO_RCVBUFFORCE where the process may (net.core.rmem_max, 208
                KiB on a default host, would cap it), else capped; the send buffer is capped at
                net.core.wmem_max. See RCVBUF for the receive default.
            gso: use UDP GSO in send_many when the kernel supports it.
            priority_lane: steer small datagrams to a second socket (see the module docstring).

        Raises TunnelError naming the address, the port and the fix.
        """
        # A plain non-blocking socket: waiting is the ReadWaiter's job, and a send that would
        # block is dropped, so gevent's cooperative socket wrapper would only add a Python
        # call around every sendto and recvmsg.
        sock = _stdsocket.socket(_stdsocket.AF_INET, _stdsocket.SOCK_DGRAM)
        sock.setblocking(False)
        where = f"{address}:{port}" + (f" on {interface}" if interface else "")
        try:
            set_buffer(sock, rcvbuf)
            sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_SNDBUF, sndbuf)
            if interface:
                sock.setsockopt(
                    _stdsocket.SOL_SOCKET, _stdsocket.SO_BINDTODEVICE, interface.encode()
                )
            sock.bind((address, port))  # without SO_REUSEPORT: a port in use is refused
        except OSError as exc:
            sock.close()
            hint = _BIND_HINTS.get(exc.errno or 0, "")
            text = f"binding UDP port {name} to {where}: {exc.strerror or exc}"
            raise TunnelError(f"{text} ({hint})" if hint else text) from exc
        offload = gso and _gso_supported(sock)
        gro = offload and _enable_gro(sock)
        lane = None
        if priority_lane and kernel_at_least(LANE_KERNEL):
            lane = _open_lane(sock, interface, rcvbuf, gro)
        return cls(name, sock, gso=offload, gro=gro, interface=interface, lane=lane)

    @property
    def name(self) -> str:
        """The port's name from config."""
        return self._name

    @property
    def inodes(self) -> tuple[int, ...]:
        """The inodes of its sockets (the lane's too) while it is open, as /proc lists them."""
        return () if self._closed else self._inodes

    @property
    def local_addr(self) -> Addr:
        """The bound (ip, port); the kernel's choice when opened with port 0."""
        return self._local

    @property
    def priority_lane(self) -> bool:
        """True when small datagrams arrive on their own socket (:meth:`priority_loop`)."""
        return self._lane is not None

    @property
    def gso(self) -> bool:
        """True while send_many uses UDP GSO."""
        return self._gso

    @property
    def interface(self) -> str | None:
        """The interface the socket is bound to (SO_BINDTODEVICE), from config; or None."""
        return self._interface

    def rebind_device(self) -> str:
        """Bind the socket again to its interface if the device it is bound to is gone.

        The kernel binds a socket to a device's index: once the interface is deleted (a USB
        modem unplugged, a VPN uplink re-created), every send fails with ENODEV, even after a
        new interface of the same name appears. Returns "bound" (nothing to do, or a port
        without an interface), "rebound" (bound to the new device of that name) or "missing"
        (no device of that name now: sends keep failing, and counted, until one appears).
        """
        if not self._interface or self._closed:
            return "bound"
        name = self._interface.encode()
        sock, level, option = self._sock, _stdsocket.SOL_SOCKET, _stdsocket.SO_BINDTODEVICE
        try:
            if sock.getsockopt(level, option, _IFNAMSIZ).rstrip(b"\0") == name:
                return "bound"
        except OSError:
            pass  # ENODEV: the bound index names no device any more
        try:
            sock.setsockopt(level, option, name)
        except OSError:
            return "missing"
        self._drop_lane()
        return "rebound"

    def _drop_lane(self) -> None:
        """Rebinding took the first socket out of its group (the kernel rehashes it), so the
        lane would take every datagram: close it (priority_loop returns), and the port runs
        on its first socket alone, which no other socket may share again. (A new lane cannot
        join it while the old one is open, and the old one closes only once its reader has
        been woken.)"""
        lane, waiter = self._lane, self._lane_waiter
        if lane is None or waiter is None:
            return
        self._lane = self._lane_waiter = None
        waiter.close_then(lane.close)
        with contextlib.suppress(OSError):
            self._sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEPORT, 0)

    def fileno(self) -> int:
        """The socket's fd (-1 once closed)."""
        return -1 if self._closed else int(self._sock.fileno())

    def recv_batch(self, limit: int = 32) -> list[tuple[bytes, Addr]]:
        """Receive up to ``limit`` datagrams without blocking; stop early at EAGAIN.

        ICMP errors reported by the kernel are skipped (each counts toward ``limit``, so
        the call stays bounded). Raises TunnelError if the socket itself fails.
        """
        out: list[tuple[bytes, Addr]] = []
        if self._closed:
            return out
        if self._gro:
            return self._recv_gro(limit, out, self._sock.recvmsg)
        return self._recv_plain(self._recvfrom, limit, out)

    def _recv_lane(self, limit: int) -> list[tuple[bytes, Addr]]:
        """recv_batch of the priority lane."""
        out: list[tuple[bytes, Addr]] = []
        lane = self._lane
        if self._closed or lane is None:  # (a dropped lane's reader reads nothing more)
            return out
        if self._gro:
            return self._recv_gro(limit, out, lane.recvmsg)
        return self._recv_plain(lane.recvfrom, limit, out)

    def _recv_plain(self, recvfrom: Callable[[int], tuple[bytes, Addr]], limit: int,
                    out: list[tuple[bytes, Addr]]) -> list[tuple[bytes, Addr]]:
        for _ in range(limit):
            try:
                out.append(recvfrom(MAX_DATAGRAM))
            except BlockingIOError:
                break
            except OSError as exc:
                self._check_recv_error(exc)
        return out

    def _check_recv_error(self, exc: OSError) -> None:
        """Return if ``exc`` only reports an earlier ICMP error; raise TunnelError otherwise."""
        if exc.errno in _ICMP_ERRNOS:
            return
        raise TunnelError(
            f"UDP port {self._name} on {_fmt(self._local)} failed: "
            f"{exc.strerror or exc}; restart the daemon"
        ) from exc

    def _recv_gro(self, limit: int, out: list[tuple[bytes, Addr]],
                  recvmsg: Callable[..., Any]) -> list[tuple[bytes, Addr]]:
        """recv_batch with UDP GRO: one recvmsg may return a run of coalesced datagrams from
        one sender, all of the size the UDP_GRO control message gives (the last may be
        shorter); they are split back into datagrams. ``limit`` bounds the reads, and no read
        starts once ``limit`` datagrams are in: a batch holds at most limit - 1 + 64 of them,
        so a small packet never waits behind more than one batch of bulk (see dataplane)."""
        for _ in range(limit):
            if len(out) >= limit:
                break
            try:
                data, ancdata, _flags, addr = recvmsg(GRO_BUFFER, _GRO_CMSG_SPACE)
            except BlockingIOError:
                break
            except OSError as exc:
                self._check_recv_error(exc)
                continue
            size = _gro_size(ancdata)
            if size and len(data) > size:
                out.extend((data[i:i + size], addr) for i in range(0, len(data), size))
            else:
                out.append((data, addr))
        return out

    def wait_readable(self) -> None:
        """Park this greenlet until a datagram (or an error) is pending.

        Raises DriverClosed if another greenlet closes the port meanwhile.
        """
        self._waiter.wait()

    def send(self, addr: Addr, data: bytes) -> bool:
        """Send one datagram. False if the kernel refused it; never raises."""
        try:
            self._sendto(data, addr)
        except OSError:
            return False
        return True

    def send_many(self, addr: Addr, datas: Sequence[bytes]) -> int:
        """Send several datagrams to one address; return how many the kernel accepted.

        Runs of equal-sized datagrams (plus one shorter tail) go out in one GSO sendmsg.
        """
        if not self._gso or len(datas) < 2:
            return self._send_each(addr, datas)
        sent, i, n = 0, 0, len(datas)
        while i < n:
            j = _run_end(datas, i)
            if j - i == 1:
                sent += self.send(addr, datas[i])
            else:
                sent += self._send_gso(addr, datas[i:j])
            i = j
        return sent

    def read_loop(
        self, handler: Callable[[list[tuple[bytes, Addr]]], None], *, batch: int = 32,
        lone: int = 0,
    ) -> None:
        """Forever: wait, receive up to ``batch`` datagrams (plus the rest of one GRO
        receive), call ``handler(datagrams)``; a lone datagram of at most ``lone`` bytes is
        handled before reading on (:func:`alpaca.io.readahead.read_loop`).

        Yields to other greenlets after a full batch. Returns when the port is closed by
        another greenlet; exceptions from ``handler`` propagate.
        """
        read_loop(self._waiter.wait, self.recv_batch, handler, batch=batch, lone=lone)

    def priority_loop(self, handler: Callable[[list[tuple[bytes, Addr]]], None], *,
                      batch: int = 32) -> None:
        """:meth:`read_loop` of the priority lane (small datagrams; each wake-up's first is
        handled at once). Returns when the port closes or drops its lane, at once for a port
        without one."""
        waiter = self._lane_waiter
        if waiter is not None:
            read_loop(waiter.wait, self._recv_lane, handler, batch=batch, lone=PRIORITY_BYTES)

    def close(self) -> None:
        """Close the sockets. Idempotent; greenlets in read_loop and priority_loop return."""
        if self._closed:
            return
        self._closed = True
        if self._lane_waiter is not None:
            self._lane_waiter.close_then(self._lane.close)
        self._waiter.close_then(self._sock.close)

    def __repr__(self) -> str:
        return f"UdpPort(name={self._name!r}, local_addr={_fmt(self._local)})"

    def _send_each(self, addr: Addr, datas: Sequence[bytes]) -> int:
        send = self.send
        return sum(send(addr, data) for data in datas)

    def _send_gso(self, addr: Addr, run: Sequence[bytes]) -> int:
        cmsg = [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(len(run[0])))]
        try:
            self._sock.sendmsg([b"".join(run)], cmsg, 0, addr)
        except OSError as exc:
            if exc.errno not in _GSO_ERRNOS:
                return 0  # EAGAIN, ENOBUFS, unreachable...: the run is lost, as with sendto
            if exc.errno in _GSO_FATAL_ERRNOS:
                self._gso = False  # e.g. EIO: the egress device cannot checksum segments
            return self._send_each(addr, run)
        return len(run)


def _run_end(datas: Sequence[bytes], i: int) -> int:
    """End (exclusive) of the GSO run starting at ``i``: equal sizes, then one shorter tail."""
    size = len(datas[i])
    if size == 0:
        return i + 1
    cap = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
    n, j = len(datas), i + 1
    while j < n and j - i < cap and len(datas[j]) == size:
        j += 1
    if j < n and j - i < cap and 0 < len(datas[j]) < size:
        j += 1
    return j


def _open_lane(sock: Any, interface: str | None, rcvbuf: int, gro: bool) -> Any:
    """The priority lane of the bound ``sock``: a second socket on its address and port (with
    a receive buffer of ``rcvbuf`` bytes asked for, as the first: a flood of small packets
    finds as much room as before; UDP GRO if ``gro``), and the steering program; None where
    the kernel refuses any of it or no descriptor is left (the port then works with ``sock``
    alone, which no other socket may share).

    ``sock`` was bound without SO_REUSEPORT, so the bind refused a port any other socket
    held (a group of SO_REUSEPORT sockets included); the option is set afterwards, for the
    lane only. (A process of the same user that binds the port with SO_REUSEPORT later could
    still join the group; the daemon's start checks the port is free first.)"""
    level, reuse = _stdsocket.SOL_SOCKET, _stdsocket.SO_REUSEPORT
    try:
        lane = _stdsocket.socket(_stdsocket.AF_INET, _stdsocket.SOCK_DGRAM)
    except OSError:  # EMFILE, ENFILE
        return None
    lane.setblocking(False)
    try:
        sock.setsockopt(level, reuse, 1)
        set_buffer(lane, rcvbuf)
        lane.setsockopt(level, reuse, 1)
        if interface:
            lane.setsockopt(level, _stdsocket.SO_BINDTODEVICE, interface.encode())
        lane.bind(sock.getsockname())
        if gro:
            lane.setsockopt(SOL_UDP, UDP_GRO, 1)
        _attach_steering(sock, PRIORITY_BYTES)
    except OSError:
        lane.close()
        with contextlib.suppress(OSError):
            sock.setsockopt(level, reuse, 0)
        return None
    return lane


def _attach_steering(sock: Any, small: int) -> None:
    """Steer the datagrams of ``sock``'s SO_REUSEPORT group: a UDP payload shorter than
    ``small + 1`` bytes to the group's second socket (index 1), any other to the first.
    (The program sees the payload's length as ``len``; the kernel copies the program.)"""
    program = [
        (_BPF_LD_W_LEN, 0, 0, 0),
        (_BPF_JGE_K, 0, 1, small + 1),  # len > small: the next instruction, else skip it
        (_BPF_RET_K, 0, 0, 0),
        (_BPF_RET_K, 0, 0, 1),
    ]
    code = ctypes.create_string_buffer(b"".join(_SOCK_FILTER.pack(*i) for i in program))
    fprog = struct.pack("HL", len(program), ctypes.addressof(code))
    sock.setsockopt(_stdsocket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def _gso_supported(sock: Any) -> bool:
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def _enable_gro(sock: Any) -> bool:
    """Ask for coalesced receives (Linux 5.0+); False where the kernel has no UDP_GRO."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def _gro_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    for level, kind, payload in ancdata:
        if level == SOL_UDP and kind == UDP_GRO and len(payload) >= 4:
            return int.from_bytes(payload[:4], "little" if _LITTLE else "big")
    return 0


def _fmt(addr: Addr) -> str:
    return f"{addr[0]}:{addr[1]}"
