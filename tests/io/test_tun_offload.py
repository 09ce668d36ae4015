"""TUN offload through real devices: a TCP transfer between two namespaces whose only link is
a relay copying TunDevice reads of one device into ``write_many`` of the other.

The relay runs in a child process in namespace A and owns both devices (B's device is moved
to namespace B after it is opened). A sender in A pushes 24 MiB to a receiver in B; the test
compares SHA-256 of what was sent and received, and reads the relay's counters: segments
per read (TSO in effect) and write syscalls against segments relayed (coalescing in effect).
With offload off on the receiving device, partial checksums are completed in Python and the
kernel verifies them.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.helpers import netns, nsexec, sh

pytestmark = pytest.mark.netns

SIZE = 24 << 20

RELAY = r"""
import hashlib, json, subprocess, sys, gevent
from alpaca.io.tun import TunDevice

ns_b, offload_a, offload_b, size = sys.argv[1], sys.argv[2] == "1", sys.argv[3] == "1", int(sys.argv[4])
a = TunDevice.open("offa0", offload=offload_a)
b = TunDevice.open("offb0", offload=offload_b)
def sh(*cmd):
    subprocess.run(cmd, check=True)
sh("ip", "link", "set", "offb0", "netns", ns_b)
sh("ip", "addr", "add", "10.98.0.1/24", "dev", "offa0")
sh("ip", "link", "set", "offa0", "mtu", "1400", "up")
sh("ip", "-n", ns_b, "addr", "add", "10.98.0.2/24", "dev", "offb0")
sh("ip", "-n", ns_b, "link", "set", "offb0", "mtu", "1400", "up")
stats = {"reads_ab": 0, "segments_ab": 0, "max_segments": 0,
         "partial_ab": 0, "refused": 0}

def relay(src, dst, forward):
    while True:
        src.wait_readable()
        batch = src.read_batch(64)
        if not batch:
            continue
        if forward:
            stats["reads_ab"] += 1
            stats["segments_ab"] += len(batch)
            stats["max_segments"] = max(stats["max_segments"], len(batch))
            stats["partial_ab"] += sum(p for _, p in batch)
        written = dst.write_many(batch)
        stats["refused"] += len(batch) - written

def syscw():
    with open("/proc/self/io") as io:
        return next(int(line.split()[1]) for line in io if line.startswith("syscw:"))

writes0 = syscw()
gevent.spawn(relay, a, b, True)
gevent.spawn(relay, b, a, False)
server = subprocess.Popen(["ip", "netns", "exec", ns_b, sys.executable, "-c", '''
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.98.0.2", 5201)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 16)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest(), flush=True)
'''], stdout=subprocess.PIPE, text=True)
gevent.sleep(0.2)
client = subprocess.Popen([sys.executable, "-c", '''
import hashlib, random, socket, sys, time
size = int(sys.argv[1]); data = random.Random(7).randbytes(size)
for _ in range(50):
    try:
        c = socket.create_connection(("10.98.0.2", 5201), timeout=5); break
    except OSError:
        time.sleep(0.1)
c.sendall(data); c.close(); print(hashlib.sha256(data).hexdigest(), flush=True)
''', str(size)], stdout=subprocess.PIPE, text=True)
with gevent.Timeout(60):
    while client.poll() is None or server.poll() is None:
        gevent.sleep(0.05)
sent = client.stdout.read().split()
got = server.stdout.read().split()
stats.update(write_calls=syscw() - writes0, a_offload=a.offload, b_offload=b.offload,
             sent=sent[-1], received=got[-2:], bad_frames=a.bad_frames + b.bad_frames)
print(json.dumps(stats))
"""


def transfer(offload_a: bool, offload_b: bool) -> dict[str, object]:
    with netns("ofa") as ns_a, netns("ofb") as ns_b:
        sh("ip", "-n", ns_a, "link", "set", "lo", "up")
        sh("ip", "-n", ns_b, "link", "set", "lo", "up")
        out = nsexec(ns_a, sys.executable, "-c", RELAY, ns_b, str(int(offload_a)), str(int(offload_b)),
                     str(SIZE), timeout=90).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return result


def assert_intact(r: dict[str, object]) -> None:
    assert r["received"] == [str(SIZE), r["sent"]], "bytes lost or altered through the relay"
    assert r["bad_frames"] == 0


def test_offload_both_ends_reads_super_packets_and_writes_merged_runs() -> None:
    r = transfer(True, True)
    assert (r["a_offload"], r["b_offload"]) == (True, True)
    assert_intact(r)
    segments, reads = int(str(r["segments_ab"])), int(str(r["reads_ab"]))
    assert int(str(r["max_segments"])) > 8, "no TSO super-packet was read"
    assert int(str(r["partial_ab"])) > segments // 2, "data segments should leave with partial checksums"
    assert segments > reads, "every read returned one packet: no segmentation happened"
    assert int(str(r["write_calls"])) < segments // 4, "segments were not merged into fewer writes"


def test_offload_sender_only_receiver_completes_checksums_in_python() -> None:
    r = transfer(True, False)
    assert (r["a_offload"], r["b_offload"]) == (True, False)
    assert_intact(r)
    assert int(str(r["max_segments"])) > 8
    assert int(str(r["partial_ab"])) > 0


def test_offload_receiver_only_takes_plain_packets() -> None:
    r = transfer(False, True)
    assert (r["a_offload"], r["b_offload"]) == (False, True)
    assert_intact(r)
    assert r["partial_ab"] == 0
    assert int(str(r["segments_ab"])) >= SIZE // 1400
    assert int(str(r["write_calls"])) >= int(str(r["segments_ab"])), "plain packets are written one by one"
