"""Network namespaces, veth pairs and the management bridge, created idempotently with ``ip``.

Every name starts with ``alp-`` (namespaces, and the root-namespace side of links while they
are being moved). A lab removes the names its topology gives (:func:`remove_named`), never
another program's ``alp-`` namespace; :func:`remove_leftovers` (``lab down --all``) removes
every ``alp-*`` name, for a lab whose topology file is gone. Callers: :mod:`alpaca.lab.cli`,
:mod:`alpaca.lab.demo` and the lab tests, as root. Nothing here touches interfaces or
namespaces without the prefix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence

from alpaca.core.ids import is_digits
from alpaca.errors import SystemSetupError
from alpaca.lab.topology import NS_PREFIX

log = logging.getLogger(__name__)

MGMT_BRIDGE = "alp-mgmt"
MGMT_IFNAME = "mgmt"
#: Loaded in every daemon node: nothing is forwarded to or from the management network.
MGMT_NFT = """table inet alpaca_lab_mgmt {}
delete table inet alpaca_lab_mgmt
table inet alpaca_lab_mgmt {
  chain forward {
    type filter hook forward priority 0;
    iifname "mgmt" drop
    oifname "mgmt" drop
  }
}
"""


def run(args: Sequence[str], *, check: bool = True, timeout: float = 30.0,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise SystemSetupError naming the command and its stderr.

    The command runs in a process group of its own: a Ctrl-C in the terminal reaches the lab
    command (which finishes a teardown first), not an ``ip netns del`` half-way.
    """
    try:
        result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                                input=input_text, check=False, process_group=0)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SystemSetupError(f"running {' '.join(args)}", exc) from exc
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise SystemSetupError(f"running {' '.join(args)}",
                               hint=detail[-1] if detail else f"exit code {result.returncode}")
    return result


def exec_in(ns: str, cmd: Sequence[str], *, check: bool = True, timeout: float = 30.0,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` inside namespace ``ns`` and capture its output."""
    return run(["ip", "netns", "exec", ns, *cmd], check=check, timeout=timeout, input_text=input_text)


def list_namespaces(prefix: str = NS_PREFIX) -> list[str]:
    """Namespaces whose name starts with ``prefix``."""
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def namespace_exists(ns: str) -> bool:
    return os.path.exists(f"/run/netns/{ns}")


def ensure_namespace(ns: str) -> None:
    """Create ``ns`` with loopback up, unless it exists."""
    if not ns.startswith(NS_PREFIX):
        raise ValueError(f"lab namespace {ns!r} must start with {NS_PREFIX!r}")
    if not namespace_exists(ns):
        run(["ip", "netns", "add", ns])
        log.info("namespace created ns=%s", ns)
    exec_in(ns, ["ip", "link", "set", "lo", "up"])


def link_exists(ns: str | None, ifname: str) -> bool:
    cmd = ["ip", "link", "show", "dev", ifname]
    result = run(cmd, check=False) if ns is None else exec_in(ns, cmd, check=False)
    return result.returncode == 0


def ensure_veth(ns_a: str, if_a: str, ns_b: str | None, if_b: str, tag: str) -> None:
    """A veth pair ``ns_a:if_a`` <-> ``ns_b:if_b`` (``ns_b`` None = root namespace), up.

    ``tag`` makes the temporary root-side names unique (at most 8 characters). Existing
    pairs are kept; a half-pair (one side vanished with its namespace) is replaced.
    """
    a_ok = link_exists(ns_a, if_a)
    b_ok = link_exists(ns_b, if_b)
    if a_ok and b_ok:
        return
    if a_ok:
        exec_in(ns_a, ["ip", "link", "del", "dev", if_a], check=False)
    if b_ok:
        _ip(ns_b, ["link", "del", "dev", if_b])
    tmp_a, tmp_b = f"{NS_PREFIX}{tag}a", f"{NS_PREFIX}{tag}b"
    for tmp in (tmp_a, tmp_b):
        run(["ip", "link", "del", "dev", tmp], check=False)
    run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
    run(["ip", "link", "set", "dev", tmp_a, "netns", ns_a])
    exec_in(ns_a, ["ip", "link", "set", "dev", tmp_a, "name", if_a])
    exec_in(ns_a, ["ip", "link", "set", "dev", if_a, "up"])
    if ns_b is not None:
        run(["ip", "link", "set", "dev", tmp_b, "netns", ns_b])
    _ip(ns_b, ["link", "set", "dev", tmp_b, "name", if_b])
    _ip(ns_b, ["link", "set", "dev", if_b, "up"])
    log.info("link created a=%s:%s b=%s:%s", ns_a, if_a, ns_b or "root", if_b)


def _ip(ns: str | None, args: list[str]) -> None:
    if ns is None:
        run(["ip", *args])
    else:
        exec_in(ns, ["ip", *args])


def ensure_address(ns: str, ifname: str, address: str) -> None:
    """``ip addr replace``: idempotent."""
    exec_in(ns, ["ip", "addr", "replace", address, "dev", ifname])


def ensure_route(ns: str, to: str, via: str) -> None:
    exec_in(ns, ["ip", "route", "replace", to, "via", via])


def ensure_bridge(name: str, address: str) -> None:
    """A bridge in the root namespace with ``address`` (for the management network)."""
    if not link_exists(None, name):
        run(["ip", "link", "add", name, "type", "bridge"])
    run(["ip", "addr", "replace", address, "dev", name])
    run(["ip", "link", "set", "dev", name, "up"])


def attach_to_bridge(ifname: str, bridge: str) -> None:
    run(["ip", "link", "set", "dev", ifname, "master", bridge])
    run(["ip", "link", "set", "dev", ifname, "up"])


def kill_namespace_processes(ns: str, grace: float = 2.0) -> None:
    """SIGTERM every process in ``ns``, then SIGKILL what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = namespace_pids(ns)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and namespace_pids(ns):
            time.sleep(0.05)


def namespace_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    return [int(p) for p in out if is_digits(p)]


def delete_namespace(ns: str) -> None:
    """Kill the namespace's processes and delete it (its veth ends go with it)."""
    if not ns.startswith(NS_PREFIX):
        raise ValueError(f"refusing to delete {ns!r}: not a lab namespace")
    if namespace_exists(ns):
        kill_namespace_processes(ns)
        run(["ip", "netns", "del", ns], check=False)
        log.info("namespace deleted ns=%s", ns)


def root_links(prefix: str = NS_PREFIX) -> list[str]:
    """Root-namespace interfaces whose name starts with ``prefix``."""
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if name.startswith(prefix):
                names.append(name)
    return names


def remove_named(namespaces: Sequence[str], links: Sequence[str]) -> list[str]:
    """Delete those of ``namespaces`` and of the root-namespace ``links`` that exist (each
    named ``alp-*``); returns their names."""
    present = set(list_namespaces())
    removed = []
    for ns in namespaces:
        if ns in present:
            delete_namespace(ns)
            removed.append(ns)
    present_links = set(root_links())
    for ifname in links:
        if ifname in present_links and ifname.startswith(NS_PREFIX):
            run(["ip", "link", "del", "dev", ifname], check=False)
            removed.append(ifname)
    return removed


def remove_leftovers(prefix: str = NS_PREFIX) -> list[str]:
    """Delete every namespace and root-namespace link named ``prefix*``; returns their names."""
    return remove_named(list_namespaces(prefix), root_links(prefix))
