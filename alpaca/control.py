"""The local control socket: ``alpaca-tunnel show`` asks the running daemon for a snapshot.

A unix stream socket (default ``/run/alpaca-tunnel/<tun>.sock``) in a directory created 0700,
the socket itself 0600: only root talks to it, so the answer may show path addresses.

Protocol: the client sends one line (``show\\n``), the server answers one JSON document and
closes. An unknown command gets ``{"error": "..."}``. Everything is bounded: a request line
is at most :data:`MAX_REQUEST` bytes, not counting its newline, and must arrive within
:data:`REQUEST_DEADLINE` seconds of accept (a client that trickles it is closed, counted, and
reported now and then), each write, and each read after the request, may wait at most
:data:`CONNECTION_TIMEOUT` seconds, a connection lives at most :data:`CONNECTION_LIFETIME`
seconds, and at most :data:`MAX_CLIENTS` are served at once. The answer is written in
chunks of :data:`CHUNK` bytes with a turn for the hub after each (a node of 10,000 peers
answers 7 MB): the packet path never waits for a whole ``show``.

A socket file left by a crashed run is replaced; a socket some live process still answers on
is not (that is another daemon with the same path). Served by gevent on the hub: call
``start``/``stop`` from the hub.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
from gevent import socket
from gevent.server import StreamServer

from alpaca.errors import TunnelError
from alpaca.io import hub_turns
from alpaca.slowclients import SlowClientLog

log = logging.getLogger(__name__)

#: The longest request line, bytes, not counting its newline.
MAX_REQUEST = 256
#: Seconds from accept to the end of the request line, at most (``show`` sends it at once).
#: A pool of :data:`MAX_CLIENTS` slow clients keeps a ``show`` out that long, no longer.
REQUEST_DEADLINE = 2.0
#: Seconds one write, or one read after the request, may wait for the client.
CONNECTION_TIMEOUT = 2.0
CONNECTION_LIFETIME = 30.0
CHUNK = 64 * 1024
MAX_CLIENTS = 8
MAX_DRAIN = 64 * 1024
COMMANDS = ("show",)


class ControlServer:
    """Serves :data:`COMMANDS` on a unix socket.

    Args:
        path: the socket path.
        snapshot_fn: returns the JSON-safe snapshot (called in the connection's greenlet, once
            per ``show``; it may give the hub turns itself).
    """

    def __init__(self, path: Path, snapshot_fn: Callable[[], dict[str, Any]]) -> None:
        self.path = Path(path)
        self.snapshot_fn = snapshot_fn
        self._server: StreamServer | None = None
        self._inode: int | None = None
        #: connections closed because their request line came too late
        self.slow = SlowClientLog("control connections closed: no request line in time", REQUEST_DEADLINE)

    def start(self) -> None:
        """Create the directory and socket and start accepting.

        Raises:
            TunnelError: the path is taken (a live daemon, or a file that is not a socket),
                or the socket cannot be created.
        """
        listener = self._bind()
        self._inode = os.stat(self.path).st_ino
        self._server = StreamServer(listener, self._handle, spawn=MAX_CLIENTS)
        self._server.start()
        log.info("control socket listening path=%s", self.path)

    def stop(self) -> None:
        """Stop serving and remove the socket file (only if it is still ours)."""
        if self._server is not None:
            self._server.stop(timeout=CONNECTION_TIMEOUT)
            self._server = None
        self.slow.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.path).st_ino == self._inode:
                os.unlink(self.path)
        self._inode = None

    # ------------------------------------------------------------------ setup
    def _bind(self) -> socket.socket:
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._remove_stale()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        except OSError as exc:
            raise TunnelError(f"cannot create the control socket {self.path}: {exc}") from exc
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o600)
            sock.listen(MAX_CLIENTS)
        except OSError as exc:
            sock.close()
            raise TunnelError(f"cannot create the control socket {self.path}: {exc}") from exc
        return sock

    def _remove_stale(self) -> None:
        try:
            mode = os.lstat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise TunnelError(f"{self.path} exists and is not a socket; remove it or choose "
                              "another control_socket")
        if _is_answering(self.path):
            raise TunnelError(f"another daemon is serving the control socket {self.path}")
        log.warning("replacing a stale control socket path=%s", self.path)
        os.unlink(self.path)

    # ------------------------------------------------------------------ connections
    def _handle(self, conn: socket.socket, _address: object) -> None:
        with contextlib.closing(conn), gevent.Timeout(CONNECTION_LIFETIME, False), hub_turns() as turn:
            try:
                line = self._read_request(conn)
                conn.settimeout(CONNECTION_TIMEOUT)
                for chunk in json_chunks(self._answer(line)):
                    conn.sendall(chunk)
                    turn()
                conn.shutdown(socket.SHUT_WR)
                with gevent.Timeout(CONNECTION_TIMEOUT, False):  # a trickle must not keep it
                    _drain(conn)
            except OSError as exc:  # the client went away or stalled: nothing to answer
                log.debug("control connection failed error=%s", exc)

    def _read_request(self, conn: socket.socket) -> bytes | None:
        """The request line (see :func:`_read_line`), read within :data:`REQUEST_DEADLINE`
        seconds of accept whatever the pace of its bytes.

        Raises:
            TimeoutError: the line was not complete by then (counted in ``slow``).
        """
        conn.settimeout(None)  # the deadline bounds the whole read, not each recv
        timer = gevent.Timeout(REQUEST_DEADLINE)
        timer.start()
        try:
            return _read_line(conn)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._request_late()
            raise TimeoutError(f"no request line within {REQUEST_DEADLINE:g} s") from None
        finally:
            timer.close()

    def _request_late(self) -> None:
        self.slow.closed()

    def _answer(self, line: bytes | None) -> dict[str, Any]:
        if line is None:
            reply: dict[str, Any] = {"error": f"request longer than {MAX_REQUEST} bytes"}
        else:
            command = line.decode("ascii", "replace").strip()
            if command == "show":
                try:
                    reply = self.snapshot_fn()
                except Exception as exc:  # a bug in the snapshot must not end the daemon
                    log.error("the state snapshot failed (this is a bug): %r", exc)
                    reply = {"error": f"internal error: {exc!r}"}
            else:
                reply = {"error": "unknown command", "commands": list(COMMANDS)}
        return reply


def json_chunks(reply: dict[str, Any]) -> Iterator[bytes]:
    """``reply`` as one line of JSON, in pieces of about CHUNK bytes."""
    pieces: list[str] = []
    size = 0
    for piece in json.JSONEncoder(separators=(",", ":")).iterencode(reply):
        pieces.append(piece)
        size += len(piece)
        if size >= CHUNK:
            yield "".join(pieces).encode()
            pieces, size = [], 0
    pieces.append("\n")
    yield "".join(pieces).encode()


def _read_line(conn: socket.socket) -> bytes | None:
    """One request line (without the newline; EOF ends it too), or None when it is longer
    than :data:`MAX_REQUEST` bytes (read no further than the byte that shows it)."""
    buf = b""
    while b"\n" not in buf:
        if len(buf) > MAX_REQUEST:  # MAX_REQUEST + 1 bytes and no newline among them
            return None
        chunk = conn.recv(MAX_REQUEST + 1 - len(buf))
        if not chunk:
            break
        buf += chunk
    line = buf.split(b"\n", 1)[0]
    return line if len(line) <= MAX_REQUEST else None


def _drain(conn: socket.socket) -> None:
    """Read what the client still sends (bounded) until it closes, so the close sends no RST.

    Closing with unread bytes makes the kernel reset the connection, and a reset can destroy
    the answer before the client has read it (an over-long request leaves such bytes).
    """
    left = MAX_DRAIN
    while left > 0:
        chunk = conn.recv(min(left, 4096))
        if not chunk:
            return
        left -= len(chunk)


def _is_answering(path: Path) -> bool:
    """True if some process accepts connections on the unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(0.5)
        probe.connect(str(path))
    except TimeoutError:  # a listener with a full backlog is still a live one
        return True
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()
    return True
