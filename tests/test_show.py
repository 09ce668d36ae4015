"""``alpaca-tunnel show``: the client, its table, and the no-daemon case."""

from __future__ import annotations

import argparse
import json
import os
import socket as std_socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gevent import subprocess

from alpaca import cli
from alpaca import show as show_mod
from alpaca.control import ControlServer
from alpaca.show import cmd_show, register, render, show
from alpaca.snapshot import snapshot
from alpaca.system import instance
from tests.test_metrics import scenario

CLIENT = (
    "import sys; from pathlib import Path; from alpaca.show import show; "
    "sys.exit(show(Path(sys.argv[1]), sys.argv[2] == 'json'))"
)


def answered_by(server: Any, path: Path) -> subprocess.CompletedProcess[str]:
    """``show`` (table) run against ``server`` (started here, stopped after) at ``path``."""
    server.start()
    try:
        return run_client(path, "table")
    finally:
        server.stop()


def run_client(path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    """Run ``show`` in another process (the server answers from this process's hub)."""
    return subprocess.run([sys.executable, "-c", CLIENT, str(path), mode], capture_output=True,
                          text=True, timeout=30, check=False)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Path]:
    sc = scenario()
    path = tmp_path / "alpaca0.sock"
    server = ControlServer(path, lambda: snapshot(sc.engine(sc.c), sc.net.now, started_at=0.0,
                                                  version="7.0.0"))
    server.start()
    try:
        yield path
    finally:
        server.stop()


def test_show_prints_a_table_per_peer_and_path(daemon: Path) -> None:
    done = run_client(daemon, "table")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("node: 16.1  version: 7.0.0")
    for peer in ("peer: 1.1 (gateway)", "peer: 1.2 (forwarder)", "peer: 1.3 (forwarder)"):
        assert peer in out
    for path in ("via-1.2", "via-1.3", "direct/p0", "direct/p1"):
        assert path in out
    for column in ("STATE", "REASON", "RTT", "PROBE LOSS", "DATA LOSS", "DUPS", "FIRST", "LAST OK"):
        assert column in out
    assert "answering" in out and " ms" in out and "last seen:" in out


def test_show_json_parses(daemon: Path) -> None:
    done = run_client(daemon, "json")
    assert done.returncode == 0, done.stderr
    snap = json.loads(done.stdout)
    assert snap["node"] == "16.1" and [p["peer"] for p in snap["peers"]] == ["1.1", "1.2", "1.3"]


def test_show_without_a_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.sock"
    assert show(missing, False) == 1
    err = capsys.readouterr().err
    assert err == f"alpaca-tunnel: no daemon is running (no control socket at {missing})\n"


def test_show_while_the_daemon_starts_or_stops(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The lock is held but no socket listens (up hooks, uplink wait, down hooks): that was
    "no daemon is running" while a second `run` said another daemon runs the node."""
    sock = tmp_path / "alpaca.sock"
    fd = instance.hold(instance.lock_path(sock), "control_socket")
    try:
        assert show(sock, as_json=False) == 1
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert f"the daemon (pid {os.getpid()}) is starting or stopping" in err and "try again" in err
    assert show(sock, as_json=False) == 1  # the lock released: no daemon
    assert "no daemon is running" in capsys.readouterr().err


def test_show_of_a_daemon_whose_listen_queue_is_full(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A full accept queue: was "no usable answer ...: [Errno 11] Resource temporarily unavailable"."""
    path = tmp_path / "busy.sock"
    server = std_socket.socket(std_socket.AF_UNIX, std_socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(0)
    waiting = []
    try:
        while True:  # fill the queue: no one accepts
            client = std_socket.socket(std_socket.AF_UNIX, std_socket.SOCK_STREAM)
            client.setblocking(False)
            waiting.append(client)
            client.connect(str(path))
    except BlockingIOError:
        pass
    try:
        assert show(path, as_json=False) == 1
    finally:
        for client in waiting:
            client.close()
        server.close()
    assert f"the daemon on {path} is busy answering others; try again" in capsys.readouterr().err


def test_show_with_a_stale_socket_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stale = tmp_path / "stale.sock"
    sock = std_socket.socket(std_socket.AF_UNIX, std_socket.SOCK_STREAM)
    sock.bind(str(stale))
    sock.close()
    assert show(stale, True) == 1
    assert "no daemon is running" in capsys.readouterr().err


def test_show_reports_a_daemon_error(tmp_path: Path) -> None:
    path = tmp_path / "err.sock"
    server = ControlServer(path, lambda: {"error": "not ready"})
    server.start()
    try:
        done = run_client(path, "table")
    finally:
        server.stop()
    assert done.returncode == 1 and "not ready" in done.stderr


def test_show_render_of_an_empty_node() -> None:
    text = render({"node": "1.1", "epoch": 3, "peers": [], "drops": {"bad_tag": 2}})
    assert "node: 1.1" in text and "no active peers" in text and "bad_tag 2" in text


def test_show_register_adds_json_and_socket_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="alpaca-tunnel")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["show", "--json", "--socket", str(tmp_path / "x.sock")])
    assert args.as_json is True and args.handler is cmd_show
    assert args.handler(args) == 1
    assert str(tmp_path / "x.sock") in capsys.readouterr().err


def test_show_socket_defaults_without_a_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("alpaca.paths.executable_path", lambda: tmp_path / "bin" / "alpaca-tunnel")
    args = argparse.Namespace(config=None, socket=None)
    assert show_mod.socket_path(args) == show_mod.DEFAULT_SOCKET


def test_show_empty_socket_option_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--socket ""`` was taken for no --socket: the config's socket was asked instead."""
    assert cli.main(["-c", str(tmp_path / "absent.json"), "show", "--socket", ""]) == 2
    assert capsys.readouterr().err == ("alpaca-tunnel: --socket is empty: give the path of the control"
                                       " socket, or leave --socket out for control_socket of the config\n")


@pytest.mark.parametrize(("seconds", "text"), [
    (0.25, "0.25 s"), (42, "42 s"), (185, "3 m 05 s"), (7380, "2 h 03 m"), (100800, "1 d 04 h"),
])
def test_show_durations(seconds: float, text: str) -> None:
    assert show_mod.duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [(512, "512 B"), (1536, "1.50 KiB"), (3 << 30, "3.00 GiB")])
def test_show_sizes(n: int, text: str) -> None:
    assert show_mod.size(n) == text


def test_show_is_a_cli_command(daemon: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "alpaca", "show", "--json", "--socket", str(daemon)],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["node"] == "16.1"


def test_show_cli_without_a_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from alpaca.cli import main

    missing = tmp_path / "gone.sock"
    assert main(["show", "--socket", str(missing)]) == 1
    assert f"no daemon is running (no control socket at {missing})" in capsys.readouterr().err


@pytest.mark.parametrize("answer", [{"peers": [{}]}, {"peers": 5}, {"drops": [1, 2]},
                                    {"forwarders": [1, 2]}, {"uptime_s": "abc"}, {"uptime_s": float("inf")}])
def test_show_an_answer_of_another_layout_is_an_error_not_a_traceback(
        tmp_path: Path, answer: dict[str, object]) -> None:
    path = tmp_path / "other.sock"
    done = answered_by(ControlServer(path, lambda: answer), path)
    assert done.returncode == 1
    assert "is not laid out as this version expects" in done.stderr
    assert "Traceback" not in done.stderr


def test_show_an_answer_nested_too_deep_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    from gevent import socket as gevent_socket
    from gevent.server import StreamServer

    def answer(conn: std_socket.socket, _addr: object) -> None:
        conn.recv(100)
        conn.sendall(b"[" * 100_000 + b"]" * 100_000)
        conn.close()

    path = tmp_path / "deep.sock"
    listener = gevent_socket.socket(std_socket.AF_UNIX, std_socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    done = answered_by(StreamServer(listener, answer), path)
    assert done.returncode == 1
    assert "no usable answer" in done.stderr and "Traceback" not in done.stderr
