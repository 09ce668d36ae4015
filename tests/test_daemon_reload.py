"""Daemon reload in-process: real config and secrets files, a real Engine on an output that
records what it sends; only the host's netlink answers are stood in for."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import gevent
import pytest

from alpaca import compat
from alpaca import daemon as d
from alpaca.config import load_config
from alpaca.core.engine import Engine
from alpaca.errors import SystemSetupError
from alpaca.metrics import build_registry
from alpaca.secrets import load_secrets
from alpaca.system import routes
from alpaca.system.plan import Applied

KEYS = {peer: os.urandom(32).hex() for peer in ("1.1", "16.1")}
OLD, NEW = "198.51.100.1", "198.51.100.9"
UPLINK = routes.Uplink("192.168.1.1", 2, "eth0", 100, False)


class Output:
    """The dataplane's place: takes what the engine sends (the engine under test is real)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def send(self, port: int, addr: tuple[str, int], data: bytes) -> bool:
        self.sent.append(addr)
        return True

    def write_tun(self, packet: bytes, csum_partial: bool = False) -> bool:
        return True

    def rearm(self) -> None:
        pass

    def attach(self, engine: Engine) -> None:
        pass


def write_files(tmp: Path, server_addr: str, **more: object) -> Path:
    config = {"mode": "client", "group": "g", "net": "10.17", "id": "16.1", "gateway": "1.1",
              "control_socket": str(tmp / "a.sock"), "state_file": str(tmp / "a.epoch"), **more}
    (tmp / "config.json").write_text(json.dumps(config))
    secrets = tmp / "secrets.txt"
    secrets.write_text(f"16.1 {KEYS['16.1']}\n1.1 {KEYS['1.1']} {server_addr} null 10001\n")
    os.chmod(secrets, 0o600)
    return tmp / "config.json"


def running_client(tmp: Path, **more: object) -> d.Daemon:
    """A client daemon after start: its engine runs and the host routes OLD via the uplink."""
    config = load_config(write_files(tmp, OLD, **more))
    secrets = load_secrets(config.secret_file, config.id)
    daemon = d.Daemon(config, secrets)
    out = Output()
    settings, legacy = compat.split_settings(config, secrets, 0.0)
    daemon.engine = Engine(settings, out, epoch=1_700_000_000, random_bytes=os.urandom)
    daemon.plane = out  # type: ignore[assignment]
    daemon.mux = compat.attach(out, daemon.engine, legacy, config, secrets, os.urandom)  # type: ignore[arg-type]
    daemon.applied = Applied(
        expected=(routes.ExpectedRoute(f"{OLD}/32", UPLINK.gateway, UPLINK.dev, 253),),
        uplink=UPLINK, host_dsts=(f"{OLD}/32",), route_table=253, host_added=frozenset({f"{OLD}/32"}))
    daemon.journal = mock.MagicMock()
    return daemon


def test_reload_whose_host_routes_are_refused_keeps_the_old_address_and_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server moved; the kernel refuses the route to its new address for a moment. The
    engine went on to the new address, which the host routed into the tunnel itself, and
    nothing tried the routes again. Now it keeps the old one and the reload runs again. The
    reload is kept whole: its realtime_priority is applied only with the rest."""
    daemon = running_client(tmp_path)
    write_files(tmp_path, NEW, realtime_priority=5)
    added: list[str] = []
    refuse = [True]
    scheduled: list[int] = []

    def set_realtime(priority: int) -> None:  # the process of the tests keeps its own
        scheduled.append(priority)

    def add_host_routes(dsts: object, *_args: object, **_kw: object) -> list[str]:
        if refuse[0]:
            raise SystemSetupError(f"adding route {NEW}/32 via 192.168.1.1: Network is unreachable")
        added.extend(dsts)  # type: ignore[call-overload]
        return list(dsts)  # type: ignore[call-overload]

    monkeypatch.setattr(routes, "add_host_routes", add_host_routes)
    monkeypatch.setattr(routes, "remove_host_routes", lambda *a, **k: None)
    monkeypatch.setattr(d, "RELOAD_RETRY", 0.05, raising=False)
    monkeypatch.setattr(d.sched, "set_realtime", set_realtime)
    assert daemon.engine is not None
    daemon._reload()
    assert daemon.engine.peers[0x0101].addr == (OLD, 10001) and scheduled == []
    assert daemon.applied.host_dsts == (f"{OLD}/32",)
    assert daemon._reload_retry is not None and not daemon._reload_retry.dead
    refuse[0] = False
    daemon._reload_wanted.wait(timeout=2)  # the retry asks for a reload
    daemon._reload()
    assert added == [f"{NEW}/32"] and daemon.applied.host_dsts == (f"{NEW}/32",)
    assert daemon.engine.peers[0x0101].addr == (NEW, 10001) and scheduled == [5]
    daemon.group.kill()


def test_reload_asks_for_one_retry_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = running_client(tmp_path)
    monkeypatch.setattr(d, "RELOAD_RETRY", 60.0)
    daemon._retry_reload()
    first = daemon._reload_retry
    daemon._retry_reload()
    assert daemon._reload_retry is first and len(daemon.group) == 1
    daemon.group.kill()
    gevent.sleep(0)


def test_reload_of_many_peers_gives_the_packet_path_turns(tmp_path: Path) -> None:
    """Reading 2,000 peers' lines took the hub for the whole parse (10,000: 0.2 s, thousands
    of datagrams at 1 Gbit/s): now the other greenlets run every TURN_LINES lines."""
    daemon = running_client(tmp_path)
    secrets = tmp_path / "secrets.txt"
    lines = [f"{20 + n // 250}.{1 + n % 250} {os.urandom(32).hex()}\n" for n in range(2000)]
    secrets.write_text(secrets.read_text() + "".join(lines))
    ticks: list[int] = []

    def ticker() -> None:  # a timer, as the packet path's fds: an idle turn lets it run
        while True:
            ticks.append(1)
            gevent.sleep(0.001)

    task = gevent.spawn(ticker)
    gevent.sleep(0)
    ticks.clear()
    daemon._reload()
    during = len(ticks)
    task.kill()
    assert daemon.engine is not None and len(daemon.engine.peers) == 2001
    assert during >= 2000 // 500 - 1


def test_reload_names_a_changed_chnroute_data_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The prefixes are read at start only: an edited file was ignored without a word."""
    data = tmp_path / "cn.txt"
    data.write_text("1.0.1.0/24\n")
    daemon = running_client(tmp_path, chnroute={"data": "cn.txt"})
    daemon._reload()
    assert "chnroute" not in caplog.text
    data.write_text("1.0.1.0/24\n1.0.2.0/23\n")
    daemon._reload()
    assert f"chnroute data file changed but needs a restart file={data}" in caplog.text


def test_reload_that_keeps_the_running_configuration_shows_in_the_metrics(tmp_path: Path) -> None:
    """A reload of a broken file was only a log line: systemctl reload succeeds whatever the
    daemon does with SIGHUP, and alpaca_config_reloads_total counts applied reloads only.
    A failed one now counts, and the gauge says whether the last one applied."""
    daemon = running_client(tmp_path)
    assert daemon.engine is not None
    registry = build_registry(lambda: daemon.engine, lambda: 0.0, version="t", start_time=0.0, node="16.1")

    def scraped() -> tuple[float | None, float | None, float | None]:
        return tuple(registry.get_sample_value(name) for name in (  # type: ignore[return-value]
            "alpaca_config_reloads_total", "alpaca_config_reload_failures_total",
            "alpaca_config_last_reload_successful"))

    assert scraped() == (0, 0, 1)
    (tmp_path / "config.json").write_text('{"mode": "client",')
    daemon._reload()
    assert scraped() == (0, 1, 0)
    write_files(tmp_path, OLD, id="16.2")  # another node's config: refused whole
    daemon._reload()
    assert scraped() == (0, 2, 0)
    write_files(tmp_path, OLD)
    daemon._reload()
    assert scraped() == (1, 2, 1)


def test_reload_of_a_change_only_a_restart_applies_shows_in_the_metrics(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A changed tun_name or port was one warning and then "reloaded": the gauge said the
    reload applied, and nothing showed the running node differs from its file. Now
    alpaca_config_restart_pending says so until a reload reads a file without the change."""
    daemon = running_client(tmp_path)
    assert daemon.engine is not None
    registry = build_registry(lambda: daemon.engine, lambda: 0.0, version="t", start_time=0.0, node="16.1")

    def scraped() -> tuple[float | None, float | None]:
        return tuple(registry.get_sample_value(name) for name in (  # type: ignore[return-value]
            "alpaca_config_restart_pending", "alpaca_config_last_reload_successful"))

    assert scraped() == (0, 1)
    write_files(tmp_path, OLD, tun_name="alpaca7")
    daemon._reload()
    assert "config key changed but needs a restart key=tun_name" in caplog.text
    assert scraped() == (1, 1) and daemon.engine.stats.reloads == 1
    write_files(tmp_path, OLD, id="16.2")  # refused whole: id needs a restart too
    daemon._reload()
    assert scraped() == (1, 0)
    write_files(tmp_path, OLD)
    daemon._reload()
    assert scraped() == (0, 1)


def test_reload_whose_default_route_cannot_move_is_a_failed_reload(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peers' routes were updated but the default route could not be pointed at the new
    gateway (retried every 5 s): the reload counted as applied, so the alert never fired."""
    daemon = running_client(tmp_path)
    assert daemon.engine is not None

    def refuse(applied: Applied, gateway_ip: str, *_args: object) -> Applied:
        raise SystemSetupError("replacing route default via 10.17.1.2 table 253: Network is unreachable")

    monkeypatch.setattr(d, "update_default_route", refuse)
    monkeypatch.setattr(d, "RELOAD_RETRY", 60.0, raising=False)
    daemon._reload()
    assert (daemon.engine.stats.reloads, daemon.engine.stats.reload_failures) == (1, 1)
    assert daemon.engine.stats.reload_failed == 1
    assert daemon._reload_retry is not None
    daemon._reload_retry.kill()
