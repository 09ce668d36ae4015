"""UdpPort over real loopback sockets (no root needed), plus one namespace test."""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import sys
import time
from collections.abc import Callable, Iterator

import gevent
import pytest

from alpaca.core.constants import OVERHEAD, SMALL_PACKET
from alpaca.errors import TunnelError
from alpaca.io import kernel_at_least
from alpaca.io.udp import LANE_KERNEL, PRIORITY_BYTES, UdpPort, receive_drops
from tests.helpers import netns, nsexec
from tests.io import live_greenlets

IP_RECVERR = 11  # linux/in.h; not exported by the socket module


@pytest.fixture
def pair() -> Iterator[tuple[UdpPort, UdpPort]]:
    """Two ports of one socket each (the priority lane has tests of its own)."""
    a = UdpPort.open("a", "127.0.0.1", 0, priority_lane=False)
    b = UdpPort.open("b", "127.0.0.1", 0, priority_lane=False)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def recv_n(port: UdpPort, n: int, timeout: float = 2.0) -> list[tuple[bytes, tuple[str, int]]]:
    got: list[tuple[bytes, tuple[str, int]]] = []
    with gevent.Timeout(timeout):
        while len(got) < n:
            port.wait_readable()
            got.extend(port.recv_batch(64))
    return got


def receive_both(port: UdpPort, n: int, timeout: float = 2.0) -> list[tuple[str, bytes]]:
    """The next ``n`` datagrams ``port`` hands out, each tagged with the loop that did
    ("bulk": read_loop, "lane": priority_loop), in the order they were handled."""
    got: list[tuple[str, bytes]] = []

    def tagged(tag: str) -> Callable[[list[tuple[bytes, tuple[str, int]]]], None]:
        return lambda batch: got.extend((tag, data) for data, _ in batch)

    loops = [gevent.spawn(port.read_loop, tagged("bulk"), batch=8),
             gevent.spawn(port.priority_loop, tagged("lane"), batch=8)]
    try:
        with gevent.Timeout(timeout):
            while len(got) < n:
                gevent.sleep(0.001)
    finally:
        gevent.killall(loops)
    return got


def test_udp_small_datagrams_arrive_on_the_priority_lane() -> None:
    """UDP payloads of up to PRIORITY_BYTES (the dataplane's small datagram) come out of
    priority_loop, longer ones out of read_loop; a reply goes back from the one address and
    port (the peer sees one path)."""
    port = UdpPort.open("p", "127.0.0.1", 0)
    peer = UdpPort.open("peer", "127.0.0.1", 0, priority_lane=False)
    try:
        assert port.priority_lane and not peer.priority_lane
        assert PRIORITY_BYTES == SMALL_PACKET + OVERHEAD
        for size in (1, PRIORITY_BYTES, PRIORITY_BYTES + 1, 1400):
            assert peer.send(port.local_addr, b"x" * size)
        got = receive_both(port, 4)
        assert sorted((tag, len(data)) for tag, data in got) == [
            ("bulk", PRIORITY_BYTES + 1), ("bulk", 1400), ("lane", 1), ("lane", PRIORITY_BYTES)]
        assert port.send(peer.local_addr, b"reply")
        assert recv_n(peer, 1) == [(b"reply", port.local_addr)]
    finally:
        port.close()
        peer.close()


def test_udp_a_small_datagram_does_not_wait_behind_the_bulk_queued_before_it() -> None:
    """300 bulk datagrams stand in the receive buffer, then a ping-sized one arrives: it is
    handled within the first batches, not after the 300 (it was, with one socket)."""
    for lane in (True, False):
        port = UdpPort.open("p", "127.0.0.1", 0, rcvbuf=4 << 20, priority_lane=lane)
        peer = UdpPort.open("peer", "127.0.0.1", 0, priority_lane=False)
        try:
            assert peer.send_many(port.local_addr, [b"b" * 1200] * 300) == 300
            assert peer.send(port.local_addr, b"ping")
            got = receive_both(port, 301, timeout=5)
            where = [data for _, data in got].index(b"ping")
            assert (where < 20) if lane else (where == 300), (lane, where)
        finally:
            port.close()
            peer.close()


def test_udp_a_port_with_a_lane_is_still_refused_when_in_use() -> None:
    """The port is bound before SO_REUSEPORT is set: a socket holding it (with or without
    SO_REUSEPORT) makes the bind fail, and a plain socket cannot take the lane's port."""
    taker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    taker.bind(("127.0.0.1", 0))
    port = UdpPort.open("p", "127.0.0.1", 0)
    try:
        with pytest.raises(TunnelError, match="in use"):
            UdpPort.open("second", "127.0.0.1", taker.getsockname()[1])
        with pytest.raises(TunnelError, match="in use"):
            UdpPort.open("third", "127.0.0.1", port.local_addr[1])
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(OSError) as err:
            plain.bind(port.local_addr)
        plain.close()
        assert err.value.errno == errno.EADDRINUSE
    finally:
        taker.close()
        port.close()


def test_udp_rebinding_to_a_recreated_interface_drops_the_lane() -> None:
    """Rebinding takes the socket out of its SO_REUSEPORT group (the kernel rehashes it): the
    lane then took every datagram, GRO and priority gone. The port drops its lane instead:
    priority_loop returns, the lane's socket is closed, every datagram arrives on read_loop,
    and the port is exclusive again."""
    if os.geteuid() != 0:
        pytest.skip("SO_BINDTODEVICE needs CAP_NET_RAW")
    port = UdpPort.open("p", "127.0.0.1", 0, "lo")
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fds = len(os.listdir("/proc/self/fd"))
        own = socket.socket(fileno=os.dup(port.fileno()))
        own.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"")  # as if lo's index had died
        own.close()
        lane = gevent.spawn(port.priority_loop, lambda batch: None)
        gevent.sleep(0.01)
        assert port.rebind_device() == "rebound"
        lane.join(timeout=2)
        assert lane.dead and lane.successful() and not port.priority_lane
        assert len(os.listdir("/proc/self/fd")) == fds - 1
        for size in (10, 1400, 20):
            peer.sendto(b"x" * size, port.local_addr)
        assert sorted(len(data) for data, _ in recv_n(port, 3)) == [10, 20, 1400]
        taker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taker.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        with pytest.raises(OSError):
            taker.bind(port.local_addr)
        taker.close()
    finally:
        peer.close()
        port.close()


def test_udp_lane_only_on_kernels_that_have_what_it_needs() -> None:
    def lane(release: str) -> bool:
        return kernel_at_least(LANE_KERNEL, release)

    assert not lane("4.19.0-27-amd64") and not lane("4.9.0")
    assert lane("5.0.0") and lane("6.1.0-41-amd64") and lane("6.18.3+") and lane("5.0-rc2")
    assert not lane("not-a-release")
    assert not kernel_at_least((4, 16), "4.1-rc6")  # (not 4.16)


def test_udp_a_port_without_a_descriptor_for_its_lane_works_on_one_socket() -> None:
    """No descriptor left for the lane (EMFILE): the port opens with one socket (it raised an
    OSError out of open)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lowest_free = probe.fileno()
    probe.close()
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free + 1, hard))  # the port's socket only
    try:
        port = UdpPort.open("p", "127.0.0.1", 0)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert not port.priority_lane
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.sendto(b"small", port.local_addr)
        peer.close()
        assert recv_n(port, 1)[0][0] == b"small"
    finally:
        port.close()


def test_udp_close_wakes_both_loops_and_releases_both_sockets() -> None:
    before = len(os.listdir("/proc/self/fd"))
    port = UdpPort.open("p", "127.0.0.1", 0)
    assert len(os.listdir("/proc/self/fd")) == before + 2
    loops = [gevent.spawn(port.read_loop, lambda batch: None),
             gevent.spawn(port.priority_loop, lambda batch: None)]
    gevent.sleep(0.01)
    port.close()
    gevent.joinall(loops, timeout=2)
    assert all(loop.dead and loop.successful() for loop in loops)
    assert len(os.listdir("/proc/self/fd")) == before
    assert live_greenlets() == []


def test_udp_open_port_zero_reports_kernel_choice(pair: tuple[UdpPort, UdpPort]) -> None:
    a, _ = pair
    assert a.local_addr[0] == "127.0.0.1"
    assert a.local_addr[1] > 0
    assert a.name == "a"


def test_udp_socket_buffers_are_bounded() -> None:
    port = UdpPort.open("p", "127.0.0.1", 0, rcvbuf=65536, sndbuf=65536)
    try:
        s = socket.socket(fileno=os.dup(port.fileno()))
        try:
            # The kernel doubles the request for its bookkeeping.
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * 65536
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 65536
        finally:
            s.close()
    finally:
        port.close()


def test_udp_send_and_recv_roundtrip(pair: tuple[UdpPort, UdpPort]) -> None:
    a, b = pair
    assert a.send(b.local_addr, b"hello")
    assert recv_n(b, 1) == [(b"hello", a.local_addr)]


def test_udp_recv_batch_without_data_returns_empty(pair: tuple[UdpPort, UdpPort]) -> None:
    assert pair[0].recv_batch() == []


def test_udp_recv_batch_respects_cap(pair: tuple[UdpPort, UdpPort]) -> None:
    a, b = pair
    for i in range(50):
        assert a.send(b.local_addr, b"%d" % i)
    b.wait_readable()
    first = b.recv_batch(32)
    rest = b.recv_batch(32)
    assert len(first) == 32
    assert len(rest) == 18
    assert [d for d, _ in first + rest] == [b"%d" % i for i in range(50)]


def test_udp_read_loop_delivers_capped_batches(pair: tuple[UdpPort, UdpPort]) -> None:
    a, b = pair
    sizes: list[int] = []
    data: list[bytes] = []

    def handler(batch: list[tuple[bytes, tuple[str, int]]]) -> None:
        sizes.append(len(batch))
        data.extend(d for d, _ in batch)

    loop = gevent.spawn(b.read_loop, handler, batch=8)
    gevent.sleep(0)
    for i in range(100):
        a.send(b.local_addr, b"%d" % i)
    with gevent.Timeout(2):
        while len(data) < 100:
            gevent.sleep(0.01)
    assert max(sizes) <= 8
    assert data == [b"%d" % i for i in range(100)]
    b.close()
    loop.join(timeout=2)
    assert loop.successful()


def test_udp_close_wakes_read_loop_and_leaves_no_greenlet() -> None:
    port = UdpPort.open("p", "127.0.0.1", 0)
    loop = gevent.spawn(port.read_loop, lambda batch: None)
    gevent.sleep(0.01)
    port.close()
    port.close()  # idempotent
    loop.join(timeout=2)
    assert loop.dead and loop.successful()
    assert port.recv_batch() == []
    assert not port.send(("127.0.0.1", 9), b"x")
    assert live_greenlets() == []


def test_udp_send_refused_returns_false(pair: tuple[UdpPort, UdpPort]) -> None:
    a, _ = pair
    assert not a.send(("127.0.0.1", 0), b"port zero")  # EINVAL
    assert not a.send(("255.255.255.255", 9), b"no SO_BROADCAST")  # EACCES


def test_udp_icmp_port_unreachable_is_not_fatal(pair: tuple[UdpPort, UdpPort]) -> None:
    a, b = pair
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead.bind(("127.0.0.1", 0))
    dead_addr = dead.getsockname()
    dead.close()
    # IP_RECVERR makes the kernel report the ICMP error on the next receive.
    raw = socket.socket(fileno=os.dup(a.fileno()))
    try:
        raw.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        assert a.send(dead_addr, b"to nobody")
        gevent.sleep(0.05)
        assert a.recv_batch() == []  # the ECONNREFUSED was read and skipped...
        assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # ...so none is pending
        assert a.send(dead_addr, b"again")
        gevent.sleep(0.05)
    finally:
        raw.close()
    got: list[bytes] = []
    loop = gevent.spawn(a.read_loop, lambda batch: got.extend(d for d, _ in batch))
    gevent.sleep(0)
    assert b.send(a.local_addr, b"real")
    with gevent.Timeout(2):
        while not got:
            gevent.sleep(0.01)
    assert got == [b"real"]
    assert not loop.dead


def test_udp_icmp_port_unreachable_is_reported_by_the_kernel() -> None:
    # Checks the premise of the test above: the scenario does raise ECONNREFUSED.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        s.settimeout(1)
        dead.bind(("127.0.0.1", 0))
        dead_addr = dead.getsockname()
        dead.close()
        s.sendto(b"x", dead_addr)
        time.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            s.recvfrom(100)
    finally:
        s.close()


def test_udp_bind_conflict_names_address_port_and_fix(pair: tuple[UdpPort, UdpPort]) -> None:
    a, _ = pair
    port = a.local_addr[1]
    with pytest.raises(TunnelError) as err:
        UdpPort.open("second", "127.0.0.1", port)
    text = str(err.value)
    assert f"127.0.0.1:{port}" in text
    assert "second" in text
    assert "in use" in text


def test_udp_bind_unknown_interface_names_it() -> None:
    with pytest.raises(TunnelError) as err:
        UdpPort.open("p", "127.0.0.1", 0, "alpaca-nope9")
    assert "alpaca-nope9" in str(err.value)
    assert isinstance(err.value.__cause__, OSError)
    assert err.value.__cause__.errno in (errno.ENODEV, errno.EPERM)


def test_udp_bind_to_interface_lo_works() -> None:
    if os.geteuid() != 0:
        pytest.skip("SO_BINDTODEVICE needs CAP_NET_RAW")
    port = UdpPort.open("p", "127.0.0.1", 0, "lo")
    try:
        assert port.priority_lane
        assert port.send(port.local_addr, b"self" * 100)
        assert port.send(port.local_addr, b"self")
        assert recv_n(port, 1) == [(b"self" * 100, port.local_addr)]
        assert receive_both(port, 1) == [("lane", b"self")]
    finally:
        port.close()


def gso_datagrams() -> list[bytes]:
    return [bytes([i]) * 1000 for i in range(10)] + [b"tail" * 75]


@pytest.mark.parametrize("gso", [True, False], ids=["gso", "sendto"])
def test_udp_send_many_delivers_separate_datagrams(gso: bool) -> None:
    a = UdpPort.open("a", "127.0.0.1", 0, gso=gso)
    b = UdpPort.open("b", "127.0.0.1", 0)
    try:
        if gso and not a.gso:
            pytest.skip("kernel without UDP GSO")
        assert a.gso is gso
        datas = gso_datagrams()
        assert a.send_many(b.local_addr, datas) == len(datas)
        got = recv_n(b, len(datas))
        assert [d for d, _ in got] == datas
        assert {src for _, src in got} == {a.local_addr}
    finally:
        a.close()
        b.close()


def test_udp_send_many_splits_runs_of_mixed_sizes(pair: tuple[UdpPort, UdpPort]) -> None:
    a, b = pair
    # Runs: [900 x3 + 500 tail], [900 x2], [1200], [b""], [700 x70 -> 64 + 6].
    datas = [b"a" * 900] * 3 + [b"b" * 500] + [b"c" * 900] * 2 + [b"d" * 1200, b""]
    datas += [bytes([i % 256]) * 700 for i in range(70)]
    assert a.send_many(b.local_addr, datas) == len(datas)
    got = recv_n(b, len(datas))
    assert [d for d, _ in got] == datas


def test_udp_send_many_counts_refused(pair: tuple[UdpPort, UdpPort]) -> None:
    a, _ = pair
    assert a.send_many(("127.0.0.1", 0), [b"x" * 100] * 4) == 0
    assert a.send_many(("127.0.0.1", 0), [b"x"]) == 0


UNREACHABLE = """
import json
from alpaca.io.udp import UdpPort
p = UdpPort.open("p", "127.0.0.1", 0)
print(json.dumps([p.send(("10.123.0.1", 5000), b"x"),
                  p.send_many(("10.123.0.1", 5000), [b"y" * 100] * 3)]))
p.close()
"""


@pytest.mark.netns
def test_udp_send_to_unreachable_network_returns_false() -> None:
    with netns("atu") as ns:
        out = nsexec(ns, sys.executable, "-c", UNREACHABLE, timeout=30).stdout
    assert json.loads(out) == [False, 0]


SMALL_MTU = """
import json, time
from alpaca.io.udp import UdpPort
a = UdpPort.open("a", "127.0.0.1", 0)
b = UdpPort.open("b", "127.0.0.1", 0)
sent = a.send_many(b.local_addr, [bytes([i]) * 1436 for i in range(32)])
got, end = [], time.monotonic() + 5
while len(got) < 32 and time.monotonic() < end:
    got += b.recv_batch(64)
    time.sleep(0.01)
print(json.dumps([a.gso, sent, len(got)]))
a.close(); b.close()
"""


@pytest.mark.netns
def test_udp_send_many_on_a_path_smaller_than_the_datagrams_falls_back_to_sendto() -> None:
    """A GSO send with segments above the route's MTU fails (EMSGSIZE) where a plain sendto
    is fragmented by the kernel: the run goes out datagram by datagram, not lost."""
    with netns("atu") as ns:
        nsexec(ns, "ip", "link", "set", "lo", "mtu", "1300")
        out = nsexec(ns, sys.executable, "-c", SMALL_MTU, timeout=30).stdout
    gso, sent, got = json.loads(out)
    if not gso:
        pytest.skip("kernel without UDP GSO")
    assert (sent, got) == (32, 32)


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_RCVBUFFORCE needs CAP_NET_ADMIN")
def test_udp_receive_buffer_is_not_capped_by_rmem_max() -> None:
    """udp_rcvbuf_kib above net.core.rmem_max (208 KiB on a default host) is granted, on the
    port's socket and on its lane, instead of being capped without a word."""
    with open("/proc/sys/net/core/rmem_max") as f:
        rmem_max = int(f.read())
    asked = rmem_max + (1 << 20)
    port = UdpPort.open("p", "127.0.0.1", 0, rcvbuf=asked, priority_lane=True)
    try:
        socks = [port._sock] + ([port._lane] if port.priority_lane else [])
        for sock in socks:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 2 * asked
    finally:
        port.close()


def test_udp_receive_drops_are_the_kernels_for_each_port() -> None:
    """A port whose receive buffer overflows: the datagrams the kernel dropped are counted for
    it (and none for a port that kept up), as /proc/net/udp has them; a closed port and an
    unreadable table give nothing."""
    full = UdpPort.open("full", "127.0.0.1", 0, rcvbuf=4096, priority_lane=False)
    idle = UdpPort.open("idle", "127.0.0.1", 0, priority_lane=False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _ in range(200):
            sender.sendto(b"x" * 1000, full.local_addr)
        (name, dropped), (other, none) = receive_drops([full, idle])
        assert (name, other, none) == ("full", "idle", 0)
        assert 150 < dropped <= 200
        assert receive_drops([full], table="/nonexistent") == []
    finally:
        sender.close()
        full.close()
        idle.close()
    assert receive_drops([full, idle]) == []
