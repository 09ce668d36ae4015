"""FileWatch: notice when a file's content changes, however it is replaced.

inotify on *directories* (IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_DELETE, IN_MOVED_FROM):
the directory of the path as configured, and the directory of the file it resolves to. So a
save in place, a save by rename (``sed -i``, editors, config management) and a swap of a
symlink on the way (a Kubernetes secret volume renames ``..data`` to a new directory, then
deletes the old one) are all seen; the original watched IN_MODIFY on the file only and missed
the last two. After a burst of events settles (``debounce``), the file's identity (device,
inode, size, mtime, ctime, following symlinks) is compared with the last one seen: an event
about any other file of those directories calls nothing. Not seen: retargeting a symlink to a
*directory* on the configured path (``ln -sfn v2 /etc/alpaca`` when /etc/alpaca is itself a
link) changes nothing in the directories watched; a SIGHUP reloads then.
Greenlet contract: ``run`` is one greenlet's loop; it waits on the inotify fd with gevent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import gevent
from gevent.socket import wait_read

log = logging.getLogger(__name__)

IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x08, 0x40, 0x80
IN_CREATE, IN_DELETE = 0x100, 0x200
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MASK = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE

Identity = tuple[int, int, int, int, int] | None


def identity(path: Path) -> Identity:
    """What changes when the file behind ``path`` (symlinks followed) changes; None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class FileWatch:
    """Watches one file. ``open()`` then ``run(on_change)`` in a greenlet; ``close()`` to stop."""

    def __init__(self, path: Path, debounce: float = 1.0) -> None:
        self.path = Path(os.path.abspath(path))
        self.debounce = debounce
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        #: directory -> watch descriptor: the configured one, and the resolved file's
        self._watches: dict[Path, int] = {}
        self._seen: Identity = None

    def open(self) -> FileWatch:
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
        self._seen = identity(self.path)
        return self

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
        self._watches.pop(self.path.parent, None)
        try:
            self._watch(self.path.parent)  # the same inode gives the same descriptor back
        except OSError as exc:
            log.debug("not watching %s: %s", self.path.parent, exc)
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

    def _drain(self) -> bool:
        """Read every pending event; whether there was any."""
        seen = False
        while True:
            try:
                seen = bool(os.read(self._fd, 65536)) or seen
            except BlockingIOError:
                return seen

    def run(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` once per burst of changes to the file (forever)."""
        while True:
            wait_read(self._fd)
            if not self._drain():
                continue
            gevent.sleep(self.debounce)
            self._drain()
            self._follow()
            now = identity(self.path)
            if now != self._seen:
                self._seen = now
                on_change()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
