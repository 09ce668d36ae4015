"""One daemon per node: an exclusive lock held for the daemon's whole life.

A second ``alpaca-tunnel run`` with the same control socket (the same node, typically
started by hand while the service runs) would otherwise recover the first one's journal,
undoing its host changes, and delete its TUN device. The lock file sits beside the control
socket; the kernel drops the lock when the process exits, however it exits, so a crash never
leaves a stale lock behind (the file itself stays, empty of meaning).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

import gevent

from alpaca.errors import SystemSetupError

log = logging.getLogger(__name__)

#: Seconds :func:`hold` waits for a lock held by another process.
HOLD_WAIT = 5.0


def lock_path(control_socket: Path) -> Path:
    return control_socket.with_name(control_socket.name + ".lock")


def hold(path: Path, owner: str, wait: float = HOLD_WAIT) -> int:
    """Take the lock at ``path`` (creating it, and its directory mode 0700) and write our pid
    into it; return the descriptor, to be closed at exit.

    Args:
        owner: how to name the setting in an error (``"<config>: control_socket <path>"``).
        wait: seconds to wait for a lock held by another process (another daemon may hold it
            for a moment while it undoes this node's journal, left by a crash).

    Raises:
        SystemSetupError: another process holds it (naming its pid), or the file cannot be made
            or written (nothing is left open).
    """
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise SystemSetupError(f"{owner}: creating the lock file {path}: {exc.strerror or exc}", None,
                               "check that the control socket's directory is writable") from exc
    if not _flock_within(fd, 0.0):  # said at once: the wait is silent otherwise
        log.info("%s: the lock %s is held by pid %s, waiting up to %.0f s for it", owner, path,
                 _holder(fd), wait)
    if not _flock_within(fd, wait):
        holder = _holder(fd)
        os.close(fd)
        raise SystemSetupError(
            f"{owner}: another alpaca-tunnel (pid {holder}) is running this node", None,
            "stop it first, or give this node its own control_socket")
    _claim(fd, path, owner)
    return fd


def _flock_within(fd: int, wait: float) -> bool:
    """Take the exclusive lock of ``fd``, retrying for ``wait`` seconds (gevent-friendly)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            gevent.sleep(0.1)


def _holder(fd: int) -> str:
    """The pid the holder of a lock wrote into it ("?" if none yet)."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"


def holder(path: Path) -> str:
    """The pid written into the lock file at ``path`` by its holder ("?" if none, or no file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return "?"
    try:
        return _holder(fd)
    finally:
        os.close(fd)


def _claim(fd: int, path: Path, owner: str | None = None) -> None:
    """Write our pid into the lock at ``path`` we hold by ``fd`` (an error names the holder
    by it).

    Raises:
        SystemSetupError: the write failed (a full or read-only directory); ``fd`` is closed.
    """
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        prefix = f"{owner}: " if owner else ""
        raise SystemSetupError(
            f"{prefix}writing our pid into the lock file {path}: {exc.strerror or exc}", None,
            f"its directory {path.parent}, the control socket's, is full or not writable:"
            " free space there or make it writable") from exc


def try_hold(path: Path) -> int | None:
    """Take the lock at ``path`` if no process holds it (creating the file if need be); the
    descriptor to close when done, or None if another process holds it or it cannot be made.
    For handling the files of a daemon that is not running (its left-over undo journal).

    Raises:
        SystemSetupError: the lock was taken but our pid cannot be written into it (a full
            directory); nothing is left open.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    _claim(fd, path)
    return fd


def is_held(path: Path) -> bool:
    """True if a running daemon holds the lock at ``path`` (read only: an absent file is free)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
