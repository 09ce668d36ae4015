"""The minimal reference: a TUN <-> UDP forwarder with AES-GCM, gevent, nothing else.

Usage (inside a namespace, as root)::

    python bench/reference_forwarder.py --tun albref0 --address 10.98.0.1/24 \
        --listen 0.0.0.0:30000 --peer 10.201.1.2:30000 --key HEX64

One TUN device, one UDP socket, one static peer. Each side waits on one read watcher of its
own (made once, as the daemon does: ``wait_read`` would add an epoll_ctl per wake-up), reads
until EAGAIN, at most 32 packets per wake-up, then yields to the other direction.
Datagram = 12-byte nonce (4 random bytes of this process + 8-byte counter) ||
AES-256-GCM(packet). No replay window, no header, no paths, no timers: this is the floor of
per-packet Python work the real daemon is compared against.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import socket
import struct
import subprocess
import sys

import gevent
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
BATCH = 32


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tun", required=True)
    parser.add_argument("--address", required=True, help="a.b.c.d/len of the TUN device")
    parser.add_argument("--mtu", type=int, default=1400)
    parser.add_argument("--txqueuelen", type=int, default=64,
                        help="TUN transmit queue, packets (64 = alpaca-tunnel's default)")
    parser.add_argument("--listen", type=addr, required=True)
    parser.add_argument("--peer", type=addr, required=True)
    parser.add_argument("--key", required=True, help="64 hex characters")
    args = parser.parse_args()

    tun = open_tun(args.tun)
    for cmd in (["ip", "addr", "add", args.address, "dev", args.tun],
                ["ip", "link", "set", args.tun, "mtu", str(args.mtu), "txqueuelen", str(args.txqueuelen),
                 "up"]):
        subprocess.run(cmd, check=True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(args.listen)
    sock.setblocking(False)
    aead = AESGCM(bytes.fromhex(args.key))
    peer = args.peer
    prefix = os.urandom(4)

    hub = gevent.get_hub()

    def inside() -> None:  # TUN -> UDP
        counter = 0
        read, seal, send, pack = os.read, aead.encrypt, sock.sendto, struct.Struct("!Q").pack
        readable = hub.loop.io(tun, 1)
        while True:
            hub.wait(readable)
            for _ in range(BATCH):
                try:
                    packet = read(tun, 65535)
                except BlockingIOError:
                    break
                counter += 1
                nonce = prefix + pack(counter)
                try:  # noqa: SIM105 - try/except is cheaper than contextlib.suppress per packet
                    send(nonce + seal(nonce, packet, None), peer)
                except (BlockingIOError, OSError):
                    pass
            gevent.sleep(0)

    def outside() -> None:  # UDP -> TUN
        recv, open_, write = sock.recv, aead.decrypt, os.write
        readable = hub.loop.io(sock.fileno(), 1)
        while True:
            hub.wait(readable)
            for _ in range(BATCH):
                try:
                    data = recv(65535)
                except BlockingIOError:
                    break
                try:
                    packet = open_(data[:12], data[12:], None)
                    write(tun, packet)
                except Exception:  # forged datagram or full TUN queue: drop
                    pass
            gevent.sleep(0)

    greenlets = [gevent.spawn(inside), gevent.spawn(outside)]
    with contextlib.suppress(KeyboardInterrupt):
        gevent.joinall(greenlets, raise_error=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
