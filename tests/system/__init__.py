"""Tests of alpaca.system, plus the namespace builders they share.

Everything that changes a host runs inside namespaces created by :func:`tests.helpers.netns`;
nothing touches the root namespace.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.helpers import nsexec

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def settle(ns: str, timeout: float = 10.0) -> None:
    """Wait for IPv6 duplicate address detection to finish (it changes routes and addresses
    by itself a second or two after a link comes up)."""
    deadline = time.monotonic() + timeout
    while nsexec(ns, "ip", "-6", "addr", "show", "tentative").stdout.strip():
        if time.monotonic() > deadline:
            raise AssertionError(f"IPv6 DAD did not settle in {ns}")
        time.sleep(0.1)


def snapshot(ns: str) -> dict[str, str]:
    """Everything we may change in ``ns``, as text, to compare before/after."""
    settle(ns)
    out = {}
    for label, cmd in {
        "routes4": ("ip", "route", "show", "table", "all"),
        "routes6": ("ip", "-6", "route", "show", "table", "all"),
        "rules4": ("ip", "rule"),
        "rules6": ("ip", "-6", "rule"),
        "addrs": ("ip", "addr"),
        "nft": ("nft", "-s", "list", "ruleset"),  # -s: no counter values
        "iptables": ("iptables", "-S"),
        "ip_forward": ("sysctl", "-n", "net.ipv4.ip_forward"),
    }.items():
        out[label] = nsexec(ns, *cmd).stdout
    return out


def client_ns(ns: str, tun: bool = True) -> None:
    """An uplink ``up0`` 192.0.2.1/24 with a rich default route, and a TUN ``alpaca0``."""
    nsexec(ns, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
    nsexec(ns, "ip", "link", "set", "up0", "up")
    nsexec(ns, "ip", "link", "set", "up1", "up")
    nsexec(ns, "ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
    nsexec(
        ns,
        "ip",
        "route",
        "add",
        "default",
        "via",
        "192.0.2.254",
        "dev",
        "up0",
        "proto",
        "static",
        "metric",
        "100",
        "src",
        "192.0.2.1",
        "onlink",
        "mtu",
        "lock",
        "1400",
    )
    nsexec(ns, "ip", "route", "add", "default", "via", "192.0.2.253", "dev", "up0", "metric", "200")
    if tun:
        add_tun(ns)


#: the default route of :func:`add_backup_uplink`'s link, as ``ip route`` arguments
BACKUP_DEFAULT = ("default", "via", "198.51.100.254", "dev", "up2", "metric", "600")


def add_backup_uplink(ns: str, default: bool = True) -> None:
    """A second uplink ``up2`` 198.51.100.1/24 beside :func:`client_ns`'s, with its default
    route (gateway 198.51.100.254, metric 600) unless ``default`` is False."""
    nsexec(ns, "ip", "link", "add", "up2", "type", "veth", "peer", "name", "up3")
    for dev in ("up2", "up3"):
        nsexec(ns, "ip", "link", "set", dev, "up")
    nsexec(ns, "ip", "addr", "add", "198.51.100.1/24", "dev", "up2")
    if default:
        nsexec(ns, "ip", "route", "add", *BACKUP_DEFAULT)


def add_tun(ns: str, name: str = "alpaca0") -> None:
    """A persistent TUN standing in for the one the daemon opens."""
    nsexec(ns, "ip", "tuntap", "add", "dev", name, "mode", "tun")


def del_tun(ns: str, name: str = "alpaca0") -> None:
    """Delete the TUN of :func:`add_tun`, as the kernel does with the daemon's when it exits."""
    nsexec(ns, "ip", "link", "del", name)


def run_python(ns: str, code: str, check: bool = True) -> str:
    """Run ``code`` with our interpreter inside ``ns`` (as the daemon would run there)."""
    env = f"PYTHONPATH={ROOT}"
    done = nsexec(ns, "env", env, PYTHON, "-c", code, check=False)
    if check and done.returncode:
        raise AssertionError(f"rc={done.returncode}\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr
