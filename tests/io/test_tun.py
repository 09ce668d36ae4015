"""TunDevice in a network namespace created by the test.

The TUN code runs in a child process started with ``ip netns exec``, so the device is
created inside the namespace and the test process keeps its own namespace. The child prints
one JSON object with what it observed.
"""

from __future__ import annotations

import json
import sys

import pytest

from alpaca.errors import TunnelError
from alpaca.io.tun import TunDevice
from tests.helpers import netns, nsexec

pytestmark = pytest.mark.netns

ECHO = r"""
import json, struct, subprocess, gevent
from alpaca.io.tun import TunDevice

def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF

def reply_to(req):
    ihl = (req[0] & 0x0F) * 4
    icmp = bytearray(req[ihl:])
    icmp[0] = 0  # echo reply
    icmp[2:4] = b"\0\0"
    icmp[2:4] = struct.pack("!H", csum(bytes(icmp)))
    # Swapping source and destination leaves the IP header checksum valid.
    return req[:12] + req[16:20] + req[12:16] + req[20:ihl] + bytes(icmp)

dev = TunDevice.open("alpaca-test0")
r = {"name": dev.name}
subprocess.run(["ip", "addr", "add", "10.99.0.1/24", "dev", dev.name], check=True)
subprocess.run(["ip", "link", "set", dev.name, "up"], check=True)
ping = subprocess.Popen(["ping", "-n", "-c", "1", "-W", "5", "10.99.0.2"],
                        stdout=subprocess.DEVNULL)
request = None
with gevent.Timeout(5):
    while request is None:
        dev.wait_readable()
        for pkt, _ in dev.read_batch():
            if pkt[0] >> 4 == 4 and pkt[9] == 1 and pkt[16:20] == bytes([10, 99, 0, 2]):
                request = pkt
r["version"] = request[0] >> 4
r["dst"] = ".".join(map(str, request[16:20]))
r["icmp_type"] = request[(request[0] & 0x0F) * 4]
r["reply_written"] = dev.write(reply_to(request))
r["ping_rc"] = ping.wait(timeout=5)
r["bad_version_written"] = dev.write(b"\x70" + b"\0" * 39)
r["empty_written"] = dev.write(b"")
dev.close()
dev.close()
r["after_close_written"] = dev.write(request)
r["after_close_read"] = dev.read_batch()
r["link_gone"] = subprocess.run(["ip", "link", "show", "alpaca-test0"],
                                capture_output=True).returncode != 0
print(json.dumps(r))
"""

VANISH = r"""
import json, resource, subprocess, time, gevent
from alpaca.errors import TunnelError
from alpaca.io.tun import TunDevice

dev = TunDevice.open("alpaca-test0")
subprocess.run(["ip", "link", "set", dev.name, "up"], check=True)
loop = gevent.spawn(dev.read_loop, lambda batch: None)
gevent.sleep(0.05)
cpu0 = resource.getrusage(resource.RUSAGE_SELF).ru_utime
t0 = time.monotonic()
subprocess.run(["ip", "link", "del", dev.name], check=True)
loop.join(timeout=3)
r = {
    "dead": loop.dead,
    "error": type(loop.exception).__name__,
    "message": str(loop.exception),
    "seconds": time.monotonic() - t0,
    "cpu": resource.getrusage(resource.RUSAGE_SELF).ru_utime - cpu0,
}
dev.close()
print(json.dumps(r))
"""

CLOSE = r"""
import gc, json, gevent
from alpaca.io.tun import TunDevice

dev = TunDevice.open("alpaca-test0")
loop = gevent.spawn(dev.read_loop, lambda batch: None)
gevent.sleep(0.05)
dev.close()
loop.join(timeout=2)
gc.collect()
live = [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead]
print(json.dumps({"successful": loop.successful(), "live": len(live), "fd": dev.fd}))
"""


def run_in_netns(code: str) -> dict[str, object]:
    with netns("att") as ns:
        out = nsexec(ns, sys.executable, "-c", code, timeout=60).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_tun_reads_ping_and_accepts_crafted_reply() -> None:
    r = run_in_netns(ECHO)
    assert r["name"] == "alpaca-test0"
    assert r["version"] == 4
    assert r["dst"] == "10.99.0.2"
    assert r["icmp_type"] == 8
    assert r["reply_written"] is True
    assert r["ping_rc"] == 0, "the kernel did not accept the written echo reply"
    assert r["bad_version_written"] is False
    assert r["empty_written"] is False
    assert r["after_close_written"] is False
    assert r["after_close_read"] == []
    assert r["link_gone"] is True


def test_tun_deleted_device_makes_read_loop_raise_promptly() -> None:
    r = run_in_netns(VANISH)
    assert r["dead"] is True
    assert r["error"] == "TunnelError"
    assert "TUN device alpaca-test0 vanished" in str(r["message"])
    assert float(str(r["seconds"])) < 1.0
    assert float(str(r["cpu"])) < 0.5, "read_loop spun on the dead fd"


def test_tun_close_ends_read_loop_and_leaves_no_greenlet() -> None:
    r = run_in_netns(CLOSE)
    assert r == {"successful": True, "live": 0, "fd": -1}


def test_tun_name_too_long_is_an_error() -> None:
    with pytest.raises(TunnelError, match="1 to 15 bytes"):
        TunDevice.open("x" * 16)


LANE = r"""
import json, socket, subprocess, sys, gevent
from alpaca.io import ebpf
from alpaca.io.tun import TunDevice

mode = sys.argv[1]
if mode == "refused":
    def refuse(program):
        raise PermissionError(1, "Operation not permitted")
    ebpf.load_socket_filter = refuse
dev = TunDevice.open("alpaca-test0", priority_lane=mode != "off")
r = {"lane": dev.priority_lane, "problem": dev.lane_problem}
subprocess.run(["ip", "addr", "add", "10.99.0.1/24", "dev", dev.name], check=True)
subprocess.run(["ip", "link", "set", dev.name, "up"], check=True)
r["queues"] = sorted(q for q in subprocess.run(
    ["ls", f"/sys/class/net/{dev.name}/queues"], capture_output=True, text=True).stdout.split()
    if q.startswith("tx"))
details = subprocess.run(["ip", "-d", "link", "show", dev.name], capture_output=True, text=True).stdout
r["room"] = int(details.split("numtxqueues ")[1].split()[0])
# 60 bulk packets stand in the device's ring, then three small ones: the largest that goes
# to the lane (256 bytes: 228 of UDP payload), the smallest that does not (257), and one more
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(60):
    sock.sendto(b"b" * 1200, ("10.99.0.2", 9))
for size in (228, 229, 10):
    sock.sendto(b"s" * size, ("10.99.0.2", 9))
order = []
def handle(source):
    def on_batch(packets):
        order.extend((source, len(p)) for p, _ in packets if p[9] == 17)
    return on_batch
loops = [gevent.spawn(dev.read_loop, handle("main"), batch=8)]
loops.append(gevent.spawn(dev.priority_loop, handle("lane"), batch=8))
with gevent.Timeout(5):
    while len(order) < 63:
        gevent.sleep(0.01)
r["small"] = [(where, i) for i, (where, size) in enumerate(order) if size < 1000]
dev.close()
gevent.joinall(loops, timeout=2)
r["loops_ended"] = all(g.successful() for g in loops)
r["link_gone"] = subprocess.run(["ip", "link", "show", "alpaca-test0"],
                                capture_output=True).returncode != 0
print(json.dumps(r))
"""


def run_lane(mode: str) -> dict[str, object]:
    with netns("atl") as ns:
        out = nsexec(ns, sys.executable, "-c", LANE, mode, timeout=60).stdout
    result: dict[str, object] = json.loads(out)
    return result


def test_tun_lane_takes_small_packets_ahead_of_the_bulk_queued_before_them() -> None:
    r = run_lane("on")
    assert r["lane"] is True and r["problem"] is None
    assert r["queues"] == ["tx-0", "tx-1"] and r["room"] == 256
    # 256 bytes and the 38-byte one on the lane, handled first; 257 bytes with the bulk
    assert r["small"] == [["lane", 0], ["lane", 1], ["main", 62]], r["small"]
    assert r["loops_ended"] is True and r["link_gone"] is True


def test_tun_without_the_lane_small_packets_wait_behind_the_bulk() -> None:
    r = run_lane("off")
    assert r["lane"] is False and r["problem"] is None and r["queues"] == ["tx-0"] and r["room"] == 1
    assert r["small"] == [["main", 60], ["main", 61], ["main", 62]], r["small"]
    assert r["loops_ended"] is True and r["link_gone"] is True


def test_tun_lane_refused_by_the_kernel_runs_on_one_queue_and_says_why() -> None:
    r = run_lane("refused")
    assert r["lane"] is False and r["queues"] == ["tx-0"] and r["room"] == 1  # as without a lane
    assert "loading the steering program: Operation not permitted (needs CAP_BPF" in str(r["problem"])
    assert r["small"] == [["main", 60], ["main", 61], ["main", 62]], r["small"]
    assert r["loops_ended"] is True and r["link_gone"] is True
