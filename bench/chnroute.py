"""Time loading and removing N chnroute prefixes in a throw-away network namespace.

Usage (root): ``.venv/bin/python bench/chnroute.py [N]`` (default 10,000). Prints the figures;
the target is well under 2 s for each of load and remove. The namespace is always deleted.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time

from alpaca.system import chnroute
from alpaca.system.netlink import RT_TABLE_DEFAULT
from alpaca.system.routes import Uplink


def ns_run(ns: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *args], check=True, capture_output=True)


def generate(count: int) -> list[ipaddress.IPv4Network]:
    """``count`` distinct /24s from 1.0.0.0 upwards (skipping nothing; it is a namespace)."""
    base = int(ipaddress.IPv4Address("1.0.0.0"))
    return [ipaddress.IPv4Network((base + (i << 8), 24)) for i in range(count)]


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    ns = f"atbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ns_run(ns, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        ns_run(ns, "ip", "link", "set", "up0", "up")
        ns_run(ns, "ip", "link", "set", "up1", "up")
        ns_run(ns, "ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "cat", "/sys/class/net/up0/ifindex"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        oif = int(out)
        nets = generate(count)
        start = time.perf_counter()
        chnroute.add(nets, Uplink("192.0.2.254", oif, ""), RT_TABLE_DEFAULT, netns=ns)
        loaded = time.perf_counter() - start
        start = time.perf_counter()
        removed = chnroute.remove(RT_TABLE_DEFAULT, netns=ns)
        unloaded = time.perf_counter() - start
        print(f"chnroute prefixes={count}")
        print(f"  load   {loaded:.3f} s  ({loaded / count * 1e6:.1f} us/route)")
        per_route = unloaded / count * 1e6
        print(f"  remove {unloaded:.3f} s  ({per_route:.1f} us/route, removed={removed})")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
