"""End-to-end scenarios on the default topology with every daemon running.

Each test builds the lab (``Lab.up``) in a short state dir and tears it down in ``finally``.
Figures are printed (``pytest -s``) so a run documents what it measured.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from alpaca.lab import Lab, impair, nodes
from alpaca.lab.demo import iperf, parse_metrics, path_probe_loss
from alpaca.lab.topology import load_topology, parse_topology

pytestmark = pytest.mark.netns
INET = "198.18.0.1"


def _build(state: Path, topology_data: dict[str, Any] | None = None) -> Lab:
    topo = load_topology() if topology_data is None else parse_topology(topology_data, state / "topo.json")
    return Lab(topo, state)


@pytest.fixture
def lab(lab_state: Callable[[], Path]) -> Iterator[Lab]:
    built = _build(lab_state())
    try:
        built.up()
        yield built
    finally:
        built.down()


def _ping(lab: Lab, node: str, address: str, count: int, interval: str = "0.2") -> tuple[int, int]:
    out = lab.exec(node, ["ping", "-q", "-c", str(count), "-i", interval, "-W", "2", address],
                   check=False, timeout=count * 0.5 + 30)
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out.stdout)
    assert match, out.stdout + out.stderr
    return int(match[1]), int(match[2])


def _path_up(lab: Lab, node: str, peer: str) -> dict[str, float]:
    metrics = parse_metrics(lab.scrape(node))
    return {labels: value for (name, labels), value in metrics.items()
            if name == "alpaca_path_up" and f'peer="{peer}"' in labels}


def test_scenario_baseline_ping_and_tcp_through_server_nat(lab: Lab) -> None:
    sent, got = _ping(lab, "c161", INET, 5)
    assert got == sent
    rate = iperf(lab, "c161", "inet", INET, seconds=3)
    print(f"\nbaseline: ping {got}/{sent}, iperf3 TCP {rate:.0f} Mbit/s")
    assert rate > 5


@contextmanager
def _transfer_to_inet(seconds: int) -> Iterator[Callable[[], float]]:
    """iperf3 from c161 to inet for ``seconds``; the body starts 2 s into it. The yielded
    function waits for the end and returns Mbit/s, asserting iperf3 reported no error."""
    srv = subprocess.Popen(["ip", "netns", "exec", "alp-inet", "iperf3", "-s", "-1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        client = subprocess.Popen(
            ["ip", "netns", "exec", "alp-c161", "iperf3", "-c", INET, "-t", str(seconds), "-J"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2)

        def finish() -> float:
            out, _ = client.communicate(timeout=30)
            result = json.loads(out)
            assert "error" not in result, result["error"]
            return float(result["end"]["sum_received"]["bits_per_second"]) / 1e6

        yield finish
    finally:
        srv.kill()
        srv.wait()


def test_scenario_forwarder_killed_during_transfer(lab: Lab) -> None:
    with _transfer_to_inet(8) as finish:
        pid = nodes.read_pid(lab.state_dir, "f12")
        assert pid is not None
        were_up = [labels for labels, v in _path_up(lab, "c161", "1.2").items() if v == 1]
        assert were_up, "no path to forwarder 1.2 was up before the kill"
        killed_at = time.monotonic()
        nodes.stop_pid(pid, grace=0)  # SIGTERM then SIGKILL at once: a crash
        down_after = None
        while time.monotonic() - killed_at < 10 and down_after is None:
            now_up = _path_up(lab, "c161", "1.2")
            if all(now_up.get(labels) == 0 for labels in were_up):
                down_after = time.monotonic() - killed_at
            time.sleep(0.2)
        rate = finish()
        print(f"\nforwarder 1.2 killed: transfer completed at {rate:.0f} Mbit/s,"
              f" path down after {down_after} s")
        assert down_after is not None and down_after <= nodes.PATH_TIMEOUT_MS / 1000 + 2


def _wait_paths_up(lab: Lab, node: str, peer: str, count: int, timeout: float = 10.0) -> None:
    """Wait until ``node`` has at least ``count`` paths to ``peer`` up (learned paths need a
    probe round trip each, so they come up during the first second after ``lab.up()``)."""
    deadline = time.monotonic() + timeout
    while sum(v == 1 for v in _path_up(lab, node, peer).values()) < count:
        assert time.monotonic() < deadline, _path_up(lab, node, peer)
        time.sleep(0.1)


def test_scenario_loss_on_one_uplink_is_hidden(lab: Lab) -> None:
    # Steady state first: the server knows both uplinks of the client, the client all four
    # of its paths to the server (direct over each uplink, and via each forwarder).
    _wait_paths_up(lab, "s11", "16.1", 2)
    _wait_paths_up(lab, "c161", "1.1", 4)
    impair.impair(lab.topology, lab.state_dir, "a", loss_pct=10)
    before = lab.scrape("c161")
    sent, got = _ping(lab, "c161", INET, 500, interval="0.01")
    time.sleep(1)
    rows = path_probe_loss(before, lab.scrape("c161"))
    lossy = [(labels, s, lost) for labels, s, lost in rows if "up-a" in labels and s]
    e2e = 100 * (sent - got) / sent
    print(f"\n10 % loss on uplink a: end-to-end {sent - got}/{sent} ({e2e:.2f} %); per path: {rows}")
    assert e2e < 0.5
    assert sum(lost for _, _, lost in lossy) > 0, rows


def test_scenario_forwarders_reloaded_with_open_tcp(lab: Lab) -> None:
    with _transfer_to_inet(6) as finish:
        path = lab.config_path("c161")
        config = json.loads(path.read_text())
        config["forwarders"] = ["1.3"]
        path.write_text(json.dumps(config, indent=2))
        nodes.signal_daemon(lab.state_dir, "c161", signal.SIGHUP)
        rate = finish()
        assert "reloaded" in nodes.log_tail(lab.state_dir, "c161", 50)
        print(f"\nreload during TCP: {rate:.0f} Mbit/s")


def _two_clients() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(load_topology().source.read_text())
    data["nodes"].insert(4, {"name": "c162", "role": "client", "id": "16.2", "gateway": "1.1",
                             "forwarders": ["1.3"], "uplinks": ["up-a"],
                             "routes": [{"to": "default", "via": "172.16.23.1"}]})
    data["links"].append({"name": "c", "endpoints": [
        {"node": "c162", "ifname": "up-a", "address": "172.16.23.2/24"},
        {"node": "f13", "ifname": "client2", "address": "172.16.23.1/24"}]})
    return data


def test_scenario_p2p_between_two_clients(lab_state: Callable[[], Path]) -> None:
    lab = _build(lab_state(), _two_clients())
    try:
        lab.up()
        # Packets of a new client-to-client session are dropped by design until each side has
        # proved itself live to the other (docs/protocol.md 5.1): wait for the first reply.
        started = time.monotonic()
        while _ping(lab, "c161", "10.17.16.2", 1)[1] == 0:
            assert time.monotonic() - started < 10, "no P2P reply within 10 s"
        start_s = time.monotonic() - started
        sent, got = _ping(lab, "c161", "10.17.16.2", 10)
        print(f"\nP2P 16.1 -> 16.2: first reply after {start_s:.1f} s, then {got}/{sent}")
        assert got == sent
    finally:
        lab.down()


def test_scenario_server_restart_resumes_traffic(lab: Lab) -> None:
    started = time.monotonic()
    lab.stop_daemon("s11")
    lab.start_daemons(["s11"])
    resumed = None
    while time.monotonic() - started < 15:
        if _ping(lab, "c161", INET, 1)[1] == 1:
            resumed = time.monotonic() - started
            break
    print(f"\nserver restart (stop, start, ready): traffic resumed {resumed} s after the stop")
    assert resumed is not None and resumed < 15


def test_scenario_up_again_leaves_the_running_daemons_routes_alone(lab: Lab) -> None:
    """A second ``up`` (after a killed one, or by mistake) completes what is missing and must
    not put back the client's default route that its daemon moved into the tunnel."""
    def main_table() -> str:
        return lab.exec("c161", ["ip", "route", "show", "table", "main"]).stdout

    moved = main_table()
    assert "default" not in moved  # the daemon's: moved out of main while it runs
    lab.up()
    assert main_table() == moved
    assert _ping(lab, "c161", INET, 3) == (3, 3)
