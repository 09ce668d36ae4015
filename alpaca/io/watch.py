"""FileWatch: notice when a file's content changes, however it is replaced.

inotify on *directories* (IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_MOVED_FROM,
and IN_MOVE_SELF / IN_DELETE_SELF: a directory swapped by renames is watched again by path):
the directory of the path as configured, and the directory of the file it resolves to. So a
save in place, a save by rename (``sed -i``, editors, config management) and a swap of a
symlink on the way (a Kubernetes secret volume renames ``..data`` to a new directory, then
deletes the old one) are all seen; the original watched IN_MODIFY on the file only and missed
the last two. Only events that name the file (or the first step of its symlink) count: a file
being written in place is read once it is closed, even when another file of its directory is
saved meanwhile. After a burst of events settles (``debounce``), the file's identity (device,
inode, size, mtime, ctime, following symlinks) is compared with the last one seen; a file
some program still has open for writing (deleted, then created again and being written) is
read once that program closes it (:func:`open_for_writing`, up to WRITER_WAIT). Not seen:
retargeting a symlink to a *directory* on the configured path (``ln -sfn v2 /etc/alpaca``
when /etc/alpaca is itself a link), a directory higher up swapped by renames, or a link in
the middle of a chain retargeted changes nothing in the directories watched: the watch looks
again every ``recheck`` seconds (one stat), so such a change is found within that time (a
SIGHUP reloads at once). While the configured directory is gone (deleted, to come back
later), nothing can be watched there: the watch looks again every ``debounce`` until it is
back, and catches up with the file then.
Greenlet contract: ``run`` is one greenlet's loop; it waits on the inotify fd with gevent.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

import gevent
from gevent.socket import wait_read

from alpaca.paths import FileIdentity, file_identity

log = logging.getLogger(__name__)

IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x08, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MASK = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
#: Seconds between two looks at the file without an event (changes no watched directory shows).
RECHECK = 30.0
#: Seconds a change is held back while a program has the file open for writing (its close is
#: the event that tells it is done); after that the file is read as it is.
WRITER_WAIT = 60.0
#: Processes looked at between two turns of the hub when looking for a writer.
PROCS_PER_TURN = 256



class FileWatch:
    """Watches one file. ``open()`` then ``run(on_change)`` in a greenlet; ``close()`` to stop."""

    def __init__(self, path: Path, debounce: float = 1.0, recheck: float = RECHECK) -> None:
        self.path = Path(os.path.abspath(path))
        self.debounce = debounce
        self.recheck = recheck
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        #: directory -> watch descriptor: the configured one, and the resolved file's
        self._watches: dict[Path, int] = {}
        self._seen: FileIdentity = None
        self._blind = False  # the configured directory could not be watched (logged once)
        self._writer_since: float | None = None  # monotonic: a writer was first found then

    def open(self, seen: FileIdentity | None = None) -> FileWatch:
        """Start watching. ``seen``: the identity of the file as its content was last read
        (by default: now); :meth:`catch_up` tells whether it changed since."""
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"watching {self.path}: {os.strerror(err)}")
        self._fd, self._libc = fd, libc
        try:
            self._watch(self.path.parent)
        except OSError:
            self.close()
            raise
        self._follow()
        self._seen = file_identity(self.path) if seen is None else seen
        return self

    def catch_up(self) -> bool:
        """Whether the file changed since it was last seen (``seen`` given to :meth:`open`, or
        the last change :meth:`run` reported); if so, its current identity becomes the one seen
        (the caller reloads it now)."""
        now = file_identity(self.path)
        if now == self._seen:
            return False
        self._seen = now
        return True

    def _watch(self, directory: Path) -> None:
        assert self._libc is not None
        wd = self._libc.inotify_add_watch(self._fd, str(directory).encode(), MASK)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"watching {directory}: {os.strerror(err)}")
        self._watches[directory] = wd

    def _follow(self) -> None:
        """Watch the configured directory again (it may have been re-created: its old watch is
        gone) and the directory the path resolves to now, and no longer the one before."""
        before = self._watches.pop(self.path.parent, None)
        try:
            self._watch(self.path.parent)  # the same inode gives the same descriptor back
        except OSError as exc:
            if not self._blind:
                log.warning("cannot watch %s: %s; looking again every %.1f s (a SIGHUP reloads"
                            " meanwhile)", self.path.parent, exc, self.debounce)
            self._blind = True
        else:
            if self._blind:
                log.info("watching %s again", self.path.parent)
            self._blind = False
        if before is not None and self._watches.get(self.path.parent) != before:
            assert self._libc is not None  # a directory moved away: no longer ours to watch
            self._libc.inotify_rm_watch(self._fd, before)
        try:
            target = self.path.resolve().parent
        except (OSError, RuntimeError):  # RuntimeError: a symlink loop
            return
        kept = self._watches.get(self.path.parent)
        for directory in [d for d in self._watches if d not in (self.path.parent, target)]:
            wd = self._watches.pop(directory)
            if wd != kept:  # a directory reached two ways shares one descriptor
                assert self._libc is not None
                self._libc.inotify_rm_watch(self._fd, wd)
        if target not in self._watches:
            try:
                self._watch(target)
            except OSError as exc:  # e.g. the link points nowhere yet: the configured dir tells
                log.debug("not watching %s: %s", target, exc)

    def _names(self) -> set[tuple[int, str]]:
        """(watch descriptor, name) of the events that concern the file: its own name in the
        configured directory, the first step of its symlink there (a Kubernetes ``..data``),
        and its name in the directory it resolves to."""
        names = set()
        configured = self._watches.get(self.path.parent)
        if configured is not None:
            names.add((configured, self.path.name))
            with contextlib.suppress(OSError, IndexError):  # not a symlink
                names.add((configured, Path(os.readlink(self.path)).parts[0]))
        try:
            resolved = self.path.resolve()
        except (OSError, RuntimeError):
            return names
        wd = self._watches.get(resolved.parent)
        if wd is not None:
            names.add((wd, resolved.name))
        return names

    def _drain(self) -> bool:
        """Read every pending event; whether one concerns the file (an event of another file
        of these directories does not: a secrets file still being written in place, seen
        after the config beside it was saved, is read when it is closed), or a watched
        directory itself moved or went (it is watched again by path)."""
        wanted, relevant = self._names(), False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return relevant
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].split(b"\0", 1)[0]
                offset += _EVENT.size + length
                self_or_overflow = mask & (IN_Q_OVERFLOW | IN_DELETE_SELF | IN_MOVE_SELF)
                relevant = relevant or bool(self_or_overflow) or (wd, os.fsdecode(name)) in wanted

    def run(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` once per burst of changes to the file (forever)."""
        while True:
            try:
                wait_read(self._fd, timeout=self._timeout())
            except TimeoutError:
                pass
            else:
                if not self._drain():
                    continue
            gevent.sleep(self.debounce)
            self._drain()
            self._follow()
            current = file_identity(self.path)
            if current == self._seen:
                self._writer_since = None
            elif not self._held_by_writer():
                self._seen = current
                on_change()

    def _timeout(self) -> float:
        """Seconds to wait for an event: while blind, ``debounce`` (no event will come from
        the directory's return); while a change waits for its writer, until WRITER_WAIT ends;
        else ``recheck``."""
        if self._blind:
            return self.debounce
        if self._writer_since is not None:
            left = self._writer_since + WRITER_WAIT - time.monotonic()
            return max(self.debounce, min(self.recheck, left))
        return self.recheck

    def _held_by_writer(self) -> bool:
        """Whether a change must wait for a program that has the file open for writing (a
        file deleted and created again is seen as soon as it exists, before it is written);
        at most WRITER_WAIT seconds from the first time one is found."""
        if not open_for_writing(self.path):
            self._writer_since = None
            return False
        now = time.monotonic()
        if self._writer_since is None:
            self._writer_since = now
            log.info("%s changed and a program has it open for writing; reading it once closed (at most"
                     " %.0f s from now)", self.path, WRITER_WAIT)
        if now - self._writer_since < WRITER_WAIT:
            return True
        log.warning("%s is still open for writing after %.0f s; reading it as it is", self.path, WRITER_WAIT)
        self._writer_since = None
        return False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_for_writing(path: Path) -> bool:
    """Whether a process has ``path`` open for writing now: a descriptor in /proc/<pid>/fd
    naming the file as the kernel spells its path, whose flags (/proc/<pid>/fdinfo) allow
    writing. False where /proc cannot tell: no file; without CAP_SYS_PTRACE, processes of
    other users are not seen. (A read lease would tell too, but its break sends SIGIO, whose
    default ends the process.) The hub gets a turn every PROCS_PER_TURN processes."""
    try:
        target = os.path.realpath(path, strict=True)
    except OSError:
        return False
    for count, pid in enumerate(name for name in os.listdir("/proc") if name.isdigit()):
        if count % PROCS_PER_TURN == PROCS_PER_TURN - 1:
            gevent.sleep(0)
        if _writes_to(pid, target):
            return True
    return False


def _writes_to(pid: str, target: str) -> bool:
    """Whether process ``pid`` has ``target`` open for writing (False if it cannot be read)."""
    fds = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
    except OSError:
        return False
    for fd in names:
        try:
            if os.readlink(f"{fds}/{fd}") == target and _fd_writable(pid, fd):
                return True
        except OSError:  # closed meanwhile, or the process is gone
            continue
    return False


def _fd_writable(pid: str, fd: str) -> bool:
    with open(f"/proc/{pid}/fdinfo/{fd}", encoding="ascii") as info:
        for line in info:
            if line.startswith("flags:"):
                return int(line.split()[1], 8) & os.O_ACCMODE != os.O_RDONLY
    return False
