"""net.ipv4.ip_forward (and other sysctls): set, remember the previous value, restore.

The previous value goes into the undo journal *before* the write, so a restart after a crash
restores the ORIGINAL value, not our 1 (the original never restored it at all).

/proc/sys/net is per network namespace. With ``netns=None`` we use the namespace the process
runs in (the daemon's case) and read/write /proc/sys directly; with ``netns`` given we run
``ip netns exec <ns> sysctl`` (tests and the lab). Callers: the control greenlet.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from alpaca.errors import SystemSetupError
from alpaca.system.netlink import HINT_PERM, check_netns

log = logging.getLogger(__name__)

IP_FORWARD = "net.ipv4.ip_forward"


def _proc_path(key: str) -> Path:
    if not key or "/" in key or ".." in key:
        raise ValueError(f"bad sysctl key {key!r}")
    return Path("/proc/sys") / key.replace(".", "/")


def _sysctl(netns: str, *args: str) -> str:
    cmd = ["ip", "netns", "exec", netns, "sysctl", *args]
    try:
        done = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        raise SystemSetupError(f"running {' '.join(cmd)}: {detail.strip()}", exc) from exc
    return done.stdout.strip()


def read(key: str, netns: str | None = None) -> str:
    """The current value of ``key`` (``net.ipv4.ip_forward``) as text."""
    path = _proc_path(key)
    if netns is not None:
        check_netns(netns)
        return _sysctl(netns, "-n", key)
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise SystemSetupError(f"reading {path}: {exc.strerror}", exc) from exc


def write(key: str, value: str, netns: str | None = None) -> None:
    """Set ``key`` to ``value`` (idempotent)."""
    path = _proc_path(key)
    if netns is not None:
        check_netns(netns)
        _sysctl(netns, "-q", "-w", f"{key}={value}")
        return
    try:
        path.write_text(f"{value}\n")
    except OSError as exc:
        hint = HINT_PERM if isinstance(exc, PermissionError) else ""
        raise SystemSetupError(f"writing {value} to {path}: {exc.strerror}", exc, hint) from exc
