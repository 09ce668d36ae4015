"""Builders shared by the tests: network namespaces, veth links, commands inside them.

Every namespace is created with a unique name and removed in ``finally``; processes started
in it are killed with it (``ip netns pids``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
from collections.abc import Iterator

_counter = itertools.count()


def sh(*args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output as text, raise on failure when ``check``."""
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def nsexec(
    ns: str, *args: str, check: bool = True, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run a command inside namespace ``ns``."""
    return sh("ip", "netns", "exec", ns, *args, check=check, timeout=timeout)


def kill_netns_pids(ns: str) -> None:
    """SIGKILL every process still running in ``ns``."""
    out = sh("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in out:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@contextlib.contextmanager
def netns(prefix: str = "at") -> Iterator[str]:
    """Create a fresh namespace with loopback up; remove it (and its processes) afterwards."""
    name = f"{prefix}{os.getpid() % 100000}x{next(_counter)}"
    sh("ip", "netns", "add", name)
    try:
        nsexec(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        kill_netns_pids(name)
        sh("ip", "netns", "del", name, check=False)


def veth(ns_a: str, addr_a: str, ns_b: str, addr_b: str, name_a: str = "va", name_b: str = "vb") -> None:
    """Link two namespaces with a veth pair; addresses are CIDR strings ("10.0.0.1/24")."""
    tmp_a, tmp_b = f"t{next(_counter)}a{os.getpid() % 10000}", f"t{next(_counter)}b{os.getpid() % 10000}"
    sh("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
    sh("ip", "link", "set", tmp_a, "netns", ns_a)
    sh("ip", "link", "set", tmp_b, "netns", ns_b)
    nsexec(ns_a, "ip", "link", "set", tmp_a, "name", name_a)
    nsexec(ns_b, "ip", "link", "set", tmp_b, "name", name_b)
    nsexec(ns_a, "ip", "addr", "add", addr_a, "dev", name_a)
    nsexec(ns_b, "ip", "addr", "add", addr_b, "dev", name_b)
    nsexec(ns_a, "ip", "link", "set", name_a, "up")
    nsexec(ns_b, "ip", "link", "set", name_b, "up")
