"""FileWatch: notice when a file is rewritten, replaced by rename, created or deleted.

Uses inotify on the file's *directory* (IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE, IN_DELETE,
IN_MOVED_FROM) filtered by name, so saves by rename (``sed -i``, editors, config management)
are seen; the original watched IN_MODIFY only and missed them. Changes are debounced.
Greenlet contract: ``run`` is one greenlet's loop; it waits on the inotify fd with gevent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path

import gevent
from gevent.socket import wait_read

log = logging.getLogger(__name__)

IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x08, 0x40, 0x80
IN_CREATE, IN_DELETE = 0x100, 0x200
IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000
MASK = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_EVENT = struct.Struct("iIII")


class FileWatch:
    """Watches one file. ``open()`` then ``run(on_change)`` in a greenlet; ``close()`` to stop."""

    def __init__(self, path: Path, debounce: float = 1.0) -> None:
        self.path = path.resolve()
        self.debounce = debounce
        self._fd = -1

    def open(self) -> FileWatch:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0 or libc.inotify_add_watch(fd, str(self.path.parent).encode(), MASK) < 0:
            err = ctypes.get_errno()
            if fd >= 0:
                os.close(fd)
            raise OSError(err, f"watching {self.path.parent}: {os.strerror(err)}")
        self._fd = fd
        return self

    def _names(self) -> set[str]:
        names: set[str] = set()
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return names
            offset = 0
            while offset + _EVENT.size <= len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                raw = data[offset + _EVENT.size: offset + _EVENT.size + length]
                names.add(raw.rstrip(b"\0").decode(errors="replace"))
                offset += _EVENT.size + length

    def run(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` once per burst of changes to the file (forever)."""
        while True:
            wait_read(self._fd)
            if self.path.name not in self._names():
                continue
            gevent.sleep(self.debounce)
            self._names()
            on_change()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
