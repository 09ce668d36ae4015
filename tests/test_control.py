"""The control socket: permissions, stale sockets, bounded requests, ``show`` answers."""

from __future__ import annotations

import contextlib
import json
import os
import socket as std_socket
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import socket

from alpaca import control
from alpaca.control import ControlServer
from alpaca.errors import TunnelError
from alpaca.snapshot import snapshot
from tests.test_metrics import scenario


def _ask(path: Path, data: bytes, *, close_write: bool = True) -> bytes:
    """Send ``data`` on the unix socket and read until the server closes (gevent-friendly)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(path))
        conn.sendall(data)
        if close_write:
            conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "alpaca0.sock"


@pytest.fixture
def served(sock_path: Path) -> Iterator[tuple[ControlServer, dict[str, Any]]]:
    sc = scenario()
    snap = snapshot(sc.engine(sc.c), sc.net.now, version="7")
    server = ControlServer(sock_path, lambda: snapshot(sc.engine(sc.c), sc.net.now, version="7"))
    server.start()
    try:
        yield server, json.loads(json.dumps(snap))
    finally:
        server.stop()


def test_control_socket_is_root_only(served: tuple[ControlServer, dict[str, Any]], sock_path: Path) -> None:
    mode = os.stat(sock_path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(sock_path.parent).st_mode) == 0o700


Served = tuple[ControlServer, dict[str, Any]]


def test_control_show_returns_the_snapshot(served: Served, sock_path: Path) -> None:
    _, expected = served
    reply = json.loads(_ask(sock_path, b"show\n"))
    assert reply == expected
    assert [p["peer"] for p in reply["peers"]] == ["1.1", "1.2", "1.3"]


def test_control_show_without_newline_before_eof(served: tuple[ControlServer, dict[str, Any]],
                                                 sock_path: Path) -> None:
    assert json.loads(_ask(sock_path, b"show"))["node"] == "16.1"


def test_control_unknown_command_is_an_error(served: tuple[ControlServer, dict[str, Any]],
                                             sock_path: Path) -> None:
    reply = json.loads(_ask(sock_path, b"reboot\n"))
    assert reply == {"error": "unknown command", "commands": ["show"]}


def test_control_request_line_is_bounded(served: Served, sock_path: Path) -> None:
    reply = json.loads(_ask(sock_path, b"x" * 300, close_write=False))
    assert reply == {"error": f"request longer than {control.MAX_REQUEST} bytes"}
    assert json.loads(_ask(sock_path, b"x" * 256 + b"\n"))["error"] == "unknown command"
    too_long = json.loads(_ask(sock_path, b"x" * 257 + b"\n"))
    assert too_long["error"].startswith("request longer")


@pytest.mark.parametrize("newline", [b"\n", b""])
def test_control_request_line_of_max_request_bytes_is_served(
        served: Served, sock_path: Path, newline: bytes) -> None:
    """MAX_REQUEST bytes, not counting the newline (or the EOF that ends the line), is the
    longest line served; one byte more is refused, even from a client that keeps the socket
    open."""
    _, expected = served
    assert control.MAX_REQUEST == 256
    line = b"show" + b" " * 252
    assert json.loads(_ask(sock_path, line + newline)) == expected
    refused = {"error": "request longer than 256 bytes"}
    assert json.loads(_ask(sock_path, line + b" " + newline)) == refused
    assert json.loads(_ask(sock_path, line + b" " + newline, close_write=False)) == refused


def test_control_silent_client_is_dropped_after_the_request_deadline(
    monkeypatch: pytest.MonkeyPatch, sock_path: Path
) -> None:
    monkeypatch.setattr(control, "REQUEST_DEADLINE", 0.3)
    server = ControlServer(sock_path, lambda: {"ok": True})
    server.start()
    try:
        started = time.monotonic()
        reply = gevent.spawn(_ask, sock_path, b"", close_write=False).get(timeout=5)
        assert reply == b"" and time.monotonic() - started < 2.0
        assert json.loads(_ask(sock_path, b"show\n")) == {"ok": True}  # still serving
    finally:
        server.stop()


def _trickle(path: Path, *, request: bytes = b"", gap: float = 0.25, give_up: float = 12.0) -> float | None:
    """A client that sends ``request``, then one space every ``gap`` seconds (each read is
    quick), never a newline and never EOF. Returns the seconds until the server closed the
    connection, or None if it had not after ``give_up`` seconds."""
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(path))
        try:
            conn.sendall(request)
            while time.monotonic() - started < give_up:
                conn.sendall(b" ")
                gevent.sleep(gap)
        except OSError:  # EPIPE: the server closed it
            return time.monotonic() - started
    return None


def test_control_trickling_clients_do_not_keep_show_out(
        served: Served, sock_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """MAX_CLIENTS clients send a byte every 0.25 s and never end their line: each recv was
    quick, so they held the pool for CONNECTION_LIFETIME (30 s) and ``show`` timed out. Now
    the line has REQUEST_DEADLINE in all; the closes are counted and logged once."""
    server, expected = served
    slow = [gevent.spawn(_trickle, sock_path) for _ in range(control.MAX_CLIENTS)]
    try:
        gevent.sleep(0.3)  # every place of the pool is taken
        assert json.loads(gevent.spawn(_ask, sock_path, b"show\n").get(timeout=15)) == expected
        assert None not in [greenlet.get(timeout=15) for greenlet in slow]  # all cut
        assert server.slow.total == control.MAX_CLIENTS
        reports = [r for r in caplog.records if "no request line in time" in r.getMessage()]
        assert len(reports) == 1, [r.getMessage() for r in reports]
    finally:
        gevent.killall(slow)


def test_control_a_client_that_trickles_after_its_answer_is_closed(served: Served, sock_path: Path) -> None:
    """After the answer the server reads what the client still sends (so its close sends no
    reset); a client that trickles bytes then held its place until CONNECTION_LIFETIME."""
    server, _ = served
    cut = gevent.spawn(_trickle, sock_path, request=b"show\n").get(timeout=15)
    assert cut is not None
    assert server.slow.total == 0  # its request was in time


def test_control_the_deadline_is_for_the_request_not_the_answer(
        monkeypatch: pytest.MonkeyPatch, sock_path: Path) -> None:
    monkeypatch.setattr(control, "REQUEST_DEADLINE", 0.2)

    def slow_snapshot() -> dict[str, Any]:
        gevent.sleep(0.6)  # a large node's snapshot gives the hub turns
        return {"ok": True}

    server = ControlServer(sock_path, slow_snapshot)
    server.start()
    try:
        assert json.loads(_ask(sock_path, b"show\n")) == {"ok": True}
        assert server.slow.total == 0
    finally:
        server.stop()


def test_control_stale_socket_is_replaced(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    crashed = std_socket.socket(std_socket.AF_UNIX, std_socket.SOCK_STREAM)
    crashed.bind(str(sock_path))  # a crashed run leaves the file behind, nobody listening
    crashed.close()
    assert sock_path.exists()
    server = ControlServer(sock_path, lambda: {"fresh": True})
    server.start()
    try:
        assert json.loads(_ask(sock_path, b"show\n")) == {"fresh": True}
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o600
    finally:
        server.stop()


def test_control_live_socket_is_not_taken_over(served: tuple[ControlServer, dict[str, Any]],
                                               sock_path: Path) -> None:
    with pytest.raises(TunnelError, match="another daemon"):
        ControlServer(sock_path, dict).start()
    assert json.loads(_ask(sock_path, b"show\n"))["node"] == "16.1"


def test_control_refuses_a_path_that_is_not_a_socket(sock_path: Path) -> None:
    sock_path.parent.mkdir(mode=0o700)
    sock_path.write_text("keep me")
    with pytest.raises(TunnelError, match="not a socket"):
        ControlServer(sock_path, dict).start()
    assert sock_path.read_text() == "keep me"


def test_control_stop_removes_the_socket_file(sock_path: Path) -> None:
    server = ControlServer(sock_path, dict)
    server.start()
    server.stop()
    assert not sock_path.exists()
    server.stop()  # idempotent


def test_control_stop_leaves_a_successor_socket_alone(sock_path: Path) -> None:
    first = ControlServer(sock_path, lambda: {"n": 1})
    first.start()
    os.unlink(sock_path)  # an operator removed it; a second daemon took the path
    second = ControlServer(sock_path, lambda: {"n": 2})
    second.start()
    try:
        first.stop()
        assert json.loads(_ask(sock_path, b"show\n")) == {"n": 2}
    finally:
        second.stop()


def test_control_a_failing_snapshot_is_an_error_reply(sock_path: Path) -> None:
    def broken() -> dict[str, Any]:
        raise KeyError("a bug")
    server = ControlServer(sock_path, broken)
    server.start()
    try:
        reply = json.loads(_ask(sock_path, b"show\n"))
        assert reply == {"error": "internal error: KeyError('a bug')"}
        assert json.loads(_ask(sock_path, b"show\n"))["error"].startswith("internal error")
    finally:
        server.stop()


def test_control_a_large_answer_is_written_in_chunks_with_turns_for_the_hub(
        sock_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node of 10,000 peers answers 7 MB: written at once, the packet path waited for the
    whole encoding (0.3-0.45 s); now each CHUNK is followed by a turn of the hub."""
    turns: list[int] = []
    real = control.hub_turns

    @contextlib.contextmanager
    def counting() -> Iterator[Any]:
        with real() as turn:
            yield lambda: (turns.append(1), turn())

    monkeypatch.setattr(control, "hub_turns", counting)
    big = {"peers": [{"peer": f"{i >> 8}.{i & 255}", "paths": ["x" * 100] * 5} for i in range(4000)]}
    server = ControlServer(sock_path, lambda: big)
    server.start()
    try:
        answer = _ask(sock_path, b"show\n")
    finally:
        server.stop()
    assert json.loads(answer) == big
    assert len(turns) >= len(answer) // control.CHUNK >= 30
