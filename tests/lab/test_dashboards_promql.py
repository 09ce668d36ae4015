"""Every dashboard expression, evaluated by a real Prometheus scraping a real metrics endpoint.

:func:`evaluate_dashboard_queries` runs each panel expression and template-variable selector of
grafana/dashboards/*.json through ``/api/v1/query`` (variables become ``.*`` matchers,
``$__rate_interval`` and friends become ``30s``). The netns-marked test starts Prometheus on
loopback against two in-process metrics servers (a client and its server on an EngineNet
carrying traffic, advanced by a background greenlet) and fails on any expression that errors
or returns no series. Set ``ALPACA_PROM_URL`` to check a Prometheus that already scrapes
live nodes instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import gevent
import pytest
from gevent import socket, subprocess

from alpaca.metrics import serve_metrics
from tests.enginenet import ipv4, tunnel_ip
from tests.test_grafana import ALERTS, DASHBOARDS, exprs, load
from tests.test_metrics import Scenario, scenario

RANGE_VARS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")
TEMPLATE_VARS = re.compile(r"\$\{(\w+)\}|\$(\w+)")
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*\w+\)$", re.S)


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    """A plain HTTP/1.0 GET over a gevent socket (no threads, no blocking of the hub)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(f"GET {target} HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def concrete(expr: str) -> str:
    """A dashboard expression as Prometheus can run it: ranges 30s, template variables ``.*``."""
    expr = RANGE_VARS.sub("30s", expr)
    expr = TEMPLATE_VARS.sub(".*", expr)
    match = LABEL_VALUES.match(expr.strip())
    return match.group(1).strip() if match else expr


def dashboard_queries() -> list[str]:
    """Every distinct expression of every dashboard, made concrete, in a stable order."""
    seen: dict[str, None] = {}
    for path in DASHBOARDS:
        for expr in exprs(load(path)):
            seen[concrete(expr)] = None
    return list(seen)


def query(prom_url: str, expr: str) -> dict[str, Any]:
    """``/api/v1/query`` at now; returns the decoded answer (status, data or error)."""
    status, body = http_get(f"{prom_url.rstrip('/')}/api/v1/query?query={quote(expr)}")
    answer: dict[str, Any] = json.loads(body)
    answer["http_status"] = status
    return answer


def evaluate_dashboard_queries(prom_url: str) -> dict[str, dict[str, Any]]:
    """Run every dashboard expression against the Prometheus at ``prom_url``.

    Returns:
        expression -> the API answer (``status``, ``data.result`` or ``error``).
    """
    return {expr: query(prom_url, expr) for expr in dashboard_queries()}


def failures(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Expressions that errored or returned no series, with why."""
    bad: dict[str, str] = {}
    for expr, answer in results.items():
        if answer.get("status") != "success":
            bad[expr] = f"error: {answer.get('error')}"
        elif not answer["data"]["result"]:
            bad[expr] = "no series"
    return bad


# --------------------------------------------------------------------------- in-process target
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _drive(sc: Scenario) -> None:
    """Keep the virtual network busy: traffic both ways, virtual time following real time."""
    while True:
        for _ in range(5):
            sc.net.inject_tun(sc.c, ipv4(tunnel_ip(sc.c.peer_id), "8.8.8.8"))
            sc.net.inject_tun(sc.s, ipv4("8.8.8.8", tunnel_ip(sc.c.peer_id)))
            sc.net.run(0.01)
        gevent.sleep(0.05)


def _prometheus_config(tmp: Path, targets: list[str]) -> Path:
    config = tmp / "prometheus.yml"
    rules = tmp / "alerts.yml"
    shutil.copy(ALERTS, rules)
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files:\n  - {rules}\n"
        "scrape_configs:\n  - job_name: alpaca-tunnel\n    static_configs:\n"
        f"      - targets: [{', '.join(repr(t) for t in targets)}]\n"
    )
    return config


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[str]:
    """Two metrics endpoints on loopback and a Prometheus scraping them every second."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed")
    sc = scenario()
    driver = gevent.spawn(_drive, sc)
    servers = [serve_metrics(sc.registry(node), "127.0.0.1", 0) for node in (sc.c, sc.s)]
    port = _free_port()
    config = _prometheus_config(tmp_path, [f"127.0.0.1:{s.server_port}" for s in servers])
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=10)
        log.close()
        for server in servers:
            server.stop()
        driver.kill()


def _wait_ready(url: str, proc: Any, deadline: float = 20.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {proc.returncode}")
        try:
            if http_get(f"{url}/-/ready", timeout=1)[0] == 200:
                return
        except OSError:
            pass
        gevent.sleep(0.2)
    raise AssertionError("prometheus did not become ready")


def _rules_health(url: str) -> dict[str, str]:
    body = json.loads(http_get(f"{url}/api/v1/rules")[1])
    return {rule["name"]: rule["health"] for group in body["data"]["groups"] for rule in group["rules"]}


@pytest.mark.netns
@pytest.mark.timeout(120)
def test_dashboards_every_query_returns_series_from_a_real_prometheus(prometheus: str) -> None:
    deadline = time.monotonic() + 45
    bad: dict[str, str] = {"": "not evaluated"}
    while bad and time.monotonic() < deadline:
        gevent.sleep(2.0)  # rates need a few scrapes (1 s apart) inside their 30 s window
        bad = failures(evaluate_dashboard_queries(prometheus))
    assert bad == {}, "\n".join(f"{why}: {expr}" for expr, why in bad.items())
    health = _rules_health(prometheus)
    assert health and set(health.values()) == {"ok"}, health


@pytest.mark.skipif(not os.environ.get("ALPACA_PROM_URL"), reason="set ALPACA_PROM_URL to check live nodes")
def test_dashboards_every_query_returns_series_on_live_nodes() -> None:
    bad = failures(evaluate_dashboard_queries(os.environ["ALPACA_PROM_URL"]))
    assert bad == {}, "\n".join(f"{why}: {expr}" for expr, why in bad.items())


def test_dashboards_queries_are_made_concrete() -> None:
    assert concrete('rate(x{peer=~"$peer", path=~"${path}"}[$__rate_interval])') == (
        'rate(x{peer=~".*", path=~".*"}[30s])')
    assert concrete('label_values(alpaca_build_info{node=~"$node"}, instance)') == (
        'alpaca_build_info{node=~".*"}')
    assert all("$" not in q for q in dashboard_queries())
