"""Every dashboard expression against a real Prometheus scraping the real lab.

The lab's daemons run in their namespaces carrying traffic (ping through the tunnel, with loss
on one uplink so the loss panels have something to show); `lab up --prometheus` starts
Debian's Prometheus scraping every node. Each expression used in grafana/dashboards must
evaluate without error and return at least one series.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from alpaca.lab import Lab, impair
from alpaca.lab.topology import load_topology
from tests.lab.test_dashboards_promql import evaluate_dashboard_queries, failures

pytestmark = [pytest.mark.netns, pytest.mark.timeout(240)]
INET = "198.18.0.1"


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus package")
def test_dashboards_every_query_returns_series_from_the_live_lab(lab_state: Callable[[], Path]) -> None:
    state = lab_state()
    lab = Lab(load_topology(), state)
    try:
        lab.up(prometheus=True)
        impair.impair(lab.topology, lab.state_dir, "a", loss_pct=10)  # uplink a: client - 1.2
        traffic = subprocess.Popen(
            ["ip", "netns", "exec", "alp-c161", "ping", "-q", "-i", "0.02", "-c", "3000", INET],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 90
            bad: dict[str, str] = {"": "not evaluated"}
            while bad and time.monotonic() < deadline:
                time.sleep(3.0)
                bad = failures(evaluate_dashboard_queries("http://127.0.0.1:9090"))
            assert bad == {}, "\n".join(f"{why}: {expr}" for expr, why in bad.items())
        finally:
            traffic.kill()
            traffic.wait()
    finally:
        lab.down()
