"""Resident memory of a server daemon configured with many peers (a script; needs root).

Usage: .venv/bin/python bench/memory.py [--peers 1000,10000] [--no-traffic]

For each peer count N: a secrets file with the server 1.1 and N clients (ids 16.1, 16.2, ...,
fresh random keys), a server config (metrics off), ``alpaca-tunnel run`` in namespace
``alb-m``; VmRSS from /proc after start-up, then after traffic: a sender in namespace
``alb-mc`` (joined by a veth) speaks for *every* configured client, sealing three ICMP echo
requests per client to the server's tunnel address with that client's key, and answering the
server's probes as the clients would. The server authenticates each datagram, opens a replay
window per client, verifies it (its challenge probe answered), learns and confirms a path per
client, writes the pings to its TUN device, and seals the kernel's echo replies back. That
is the per-peer state a busy server holds. Target: under 200 MB with 10,000 peers.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import netns
from netns import BenchError, Lab, nsrun

SERVER_NS, SENDER_NS = "alb-m", "alb-mc"
SERVER_ID = 0x0101
PORT = 10001
GROUP = "alb-memory"
NET = "10.17"


def client_ids(count: int) -> list[int]:
    """``count`` client ids 16.1, 16.2, ... (B from 1 to 254, then the next A)."""
    ids: list[int] = []
    a, b = 16, 1
    while len(ids) < count:
        ids.append(a << 8 | b)
        b += 1
        if b == 255:
            a, b = a + 1, 1
    return ids


def dotted(peer: int) -> str:
    return f"{peer >> 8}.{peer & 0xFF}"


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(src: int, dst: int, seq: int) -> bytes:
    """An IPv4 ICMP echo request from tunnel address of ``src`` to that of ``dst``."""
    icmp = struct.pack("!BBHHH", 8, 0, 0, src, seq) + bytes(32)
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    net = bytes(int(x) for x in NET.split("."))
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq, 0, 64, 1, 0,
                     net + struct.pack("!H", src), net + struct.pack("!H", dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + icmp


def send_traffic(keys: dict[int, bytes], target: tuple[str, int], rounds: int = 3) -> dict[str, int]:
    """Speak for every client: answer the server's probes (its challenge of a sender it has
    not verified, then the probe that confirms a learned path) and seal ``rounds`` echo
    requests each; count what comes back by kind."""
    from alpaca.core import header
    from alpaca.core.constants import PacketType
    from alpaca.core.crypto import KeyRing
    from alpaca.core.header import Header
    from alpaca.core.probing import PROBE, REPLY

    ring = KeyRing(GROUP, keys)
    epoch = int(time.time())
    counters = dict.fromkeys(keys, 0)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("0.0.0.0", 0))
    sock.setblocking(False)
    got = {"sent": 0, "echo_replies": 0, "probes_answered": 0}

    def send(peer: int, ptype: int, payload: bytes) -> None:
        counters[peer] += 1
        cipher = ring.cipher(peer, SERVER_ID, epoch)
        assert cipher is not None
        head = header.encode(Header(ptype, 0, 15, 0, peer, SERVER_ID, epoch, counters[peer]))
        sock.sendto(cipher.seal(head, payload), target)

    def answer(datagram: bytes) -> None:
        h = header.decode(datagram)
        cipher = ring.cipher(h.src, h.dst, h.epoch)
        plain = cipher.open(datagram) if cipher is not None and h.dst in keys else None
        if plain is None:
            return
        if h.ptype == PacketType.PROBE and len(plain) == PROBE.size:
            send(h.dst, PacketType.PROBE_REPLY, REPLY.pack(PROBE.unpack(plain)[0], h.epoch, 0))
            got["probes_answered"] += 1
        elif h.ptype == PacketType.DATA:
            got["echo_replies"] += 1

    def drain() -> None:
        while True:
            try:
                answer(sock.recv(2048))
            except BlockingIOError:
                return

    clients = [peer for peer in keys if peer != SERVER_ID]
    for seq in range(1, rounds + 1):
        for peer in clients:
            send(peer, PacketType.DATA, echo_request(peer, SERVER_ID, seq))
            got["sent"] += 1
            if got["sent"] % 100 == 0:
                time.sleep(0.01)  # pace: the server's socket buffer is bounded
                drain()
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:  # the answers to this round's probes go out
            time.sleep(0.05)
            drain()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        time.sleep(0.05)
        drain()
    return got


def measure(peers: int, workdir: Path, traffic: bool) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    keys = {SERVER_ID: os.urandom(32)} | {peer: os.urandom(32) for peer in client_ids(peers)}
    secrets = workdir / "secrets.txt"
    secrets.write_text("".join(f"{dotted(p)} {k.hex()} null null null\n" for p, k in keys.items()))
    secrets.chmod(0o600)
    config = workdir / "config.json"
    config.write_text(json.dumps({
        "mode": "server", "group": GROUP, "net": NET, "id": dotted(SERVER_ID), "port": PORT,
        "mtu": 1400, "log_level": "warning", "secret_file": str(secrets), "tun_name": "albm0",
        "metrics": False, "control_socket": str(workdir / "control.sock"),
        "state_file": str(workdir / "epoch"),
    }))
    result: dict[str, Any] = {"peers": peers}
    with Lab(workdir) as lab:
        lab.add_ns(SERVER_NS)
        lab.add_ns(SENDER_NS)
        lab.veth(SERVER_NS, "ms", "10.202.0.1/24", SENDER_NS, "mc", "10.202.0.2/24")
        from throughput import alpaca_command

        started = time.monotonic()
        proc = lab.spawn(SERVER_NS, [*alpaca_command(), "-c", str(config), "run"], "daemon")
        try:
            netns.wait_for(lambda: (workdir / "control.sock").exists(), 60, "the daemon's control socket")
        except BenchError as exc:
            raise BenchError(f"{exc}; log:\n{lab.log_tail('daemon')}") from None
        result["startup_s"] = round(time.monotonic() - started, 2)
        time.sleep(1.0)
        result["rss_start_mib"] = round(netns.rss_kib(proc.pid) / 1024, 1)
        if traffic:
            script = (f"import sys, json; sys.path[:0] = {[str(Path(__file__).resolve().parent)]!r}; "
                      f"import memory; keys = {{int(k): bytes.fromhex(v) for k, v in json.load(open("
                      f"{str(workdir / 'keys.json')!r})).items()}}; "
                      f"print(json.dumps(memory.send_traffic(keys, ('10.202.0.1', {PORT}))))")
            (workdir / "keys.json").write_text(json.dumps({str(p): k.hex() for p, k in keys.items()}))
            out = nsrun(SENDER_NS, sys.executable, "-c", script, timeout=300)
            result["traffic"] = json.loads(out.strip().splitlines()[-1])
            time.sleep(1.0)
            result["rss_after_traffic_mib"] = round(netns.rss_kib(proc.pid) / 1024, 1)
        lab.stop(proc)
    return result


def measure_all(counts: list[int], workdir: Path, traffic: bool = True) -> dict[str, Any]:
    return {str(n): measure(n, workdir / str(n), traffic) for n in counts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="1000,10000", help="comma-separated peer counts")
    parser.add_argument("--no-traffic", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("memory.py needs root (network namespaces)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="alb-memory-"))
    try:
        result = measure_all([int(n) for n in args.peers.split(",")], workdir, not args.no_traffic)
    except KeyboardInterrupt:
        print("interrupted: namespaces and processes cleaned up", file=sys.stderr)
        return 130
    for row in result.values():
        print(f"{row['peers']:>6} peers: start-up {row['startup_s']} s, RSS {row['rss_start_mib']} MiB"
              f" after start-up, {row.get('rss_after_traffic_mib', '-')} MiB after traffic"
              f" {row.get('traffic', '')}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
