"""net.ipv4.ip_forward (and other sysctls): set, remember the previous value, restore.

The previous value goes into the undo journal *before* the write, so a restart after a crash
restores the ORIGINAL value, not our 1 (the original never restored it at all).

/proc/sys/net is per network namespace. With ``netns=None`` we use the namespace the process
runs in (the daemon's case) and read/write /proc/sys directly; with ``netns`` given we run
``ip netns exec <ns> sysctl`` (tests and the lab). Callers: the control greenlet.

A write that changes ip_forward also resets other settings (the kernel's
``inet_forward_change``): ``conf/all/accept_redirects`` to its opposite, and the forwarding of
``conf/default`` and of every device to it. :func:`forward_side_settings` reads them before,
so that the undo can put back, say, the accept_redirects=0 of a hardened host.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from alpaca.errors import SystemSetupError
from alpaca.system.netlink import HINT_PERM, check_netns

log = logging.getLogger(__name__)

IP_FORWARD = "net.ipv4.ip_forward"
#: Under /proc/sys: the settings a change of ip_forward resets besides itself.
_CONF = "net/ipv4/conf"
_ACCEPT_REDIRECTS = f"{_CONF}/all/accept_redirects"


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
    """Set ``key`` to ``value`` (idempotent). One that holds the value already is not written:
    a container's /proc/sys is read-only, and its runtime set what it needs (compose's
    ``sysctls``)."""
    if netns is not None:
        check_netns(netns)
        _sysctl(netns, "-q", "-w", f"{key}={value}")
        return
    _write_proc(_proc_path(key), value)


def _write_proc(path: Path, value: str) -> None:
    """Write ``value`` to the /proc/sys file ``path`` unless it holds it already.

    Raises:
        SystemSetupError: the write failed (with the capability hint on EPERM/EACCES).
    """
    try:
        if path.read_text().strip() == str(value):
            return
    except OSError:
        pass  # the write says what is wrong
    try:
        path.write_text(f"{value}\n")
    except OSError as exc:
        hint = HINT_PERM if isinstance(exc, PermissionError) else ""
        raise SystemSetupError(f"writing {value} to {path}: {exc.strerror}", exc, hint) from exc


def forward_side_settings(netns: str | None = None) -> dict[str, str]:
    """The settings a change of ip_forward resets, as paths under /proc/sys -> value:
    ``conf/all/accept_redirects`` and the ``forwarding`` of ``conf/default`` and of each device
    (``conf/all/forwarding`` is ip_forward itself)."""
    argv = ["grep", "-r", "-H", "--include=forwarding", "--include=accept_redirects", ".",
            f"/proc/sys/{_CONF}"]
    if netns is not None:
        check_netns(netns)
        argv = ["ip", "netns", "exec", netns, *argv]
    try:  # grep's exit code is no answer here: a device gone while it reads is fine
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemSetupError(f"running {' '.join(argv)}", exc) from exc
    values = {}
    for line in out.splitlines():
        path, _, value = line.rpartition(":")  # a device name holds no ":"
        key = path.removeprefix("/proc/sys/")
        device_forwarding = key.endswith("/forwarding") and key != f"{_CONF}/all/forwarding"
        if (device_forwarding or key == _ACCEPT_REDIRECTS) and value in ("0", "1"):
            values[key] = value
    return values


def write_path(key: str, value: str, netns: str | None = None) -> None:
    """Set the setting at ``key``, a path under /proc/sys/net/ipv4/conf (a device name may hold
    dots, so this one is not written with dots); as :func:`write`, not when it holds ``value``."""
    if not key.startswith(f"{_CONF}/") or ".." in key.split("/"):
        raise ValueError(f"bad setting path {key!r}")
    if netns is not None:
        check_netns(netns)
        _sysctl(netns, "-q", "-w", f"{key}={value}")
        return
    _write_proc(Path("/proc/sys") / key, value)
