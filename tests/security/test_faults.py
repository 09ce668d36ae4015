"""Faults under real daemons: kill -9 and restart, flapping paths, a vanished TUN device, a new
uplink address, a broken secrets file on reload, an unwritable state file."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.security.conftest import ALPACA, Lab, ns_run, rss_kib

pytestmark = pytest.mark.netns


def host_state(lab: Lab, node: str) -> tuple[str, str, str]:
    """Routes (all tables), rules and nftables ruleset of a node's namespace."""
    ns = lab.ns[node]
    routes = ns_run(ns, "ip", "route", "show", "table", "all").stdout
    skip = ("local ", "broadcast ", "multicast ", "fe80", "ff00")
    routes = "\n".join(sorted(line for line in routes.splitlines()
                              if "proto kernel" not in line and not line.startswith(skip)))
    return routes, ns_run(ns, "ip", "rule").stdout, ns_run(ns, "nft", "list", "ruleset").stdout


class Pinger:
    """A ping running in the background; ``result()`` gives (sent, received)."""

    def __init__(self, lab: Lab, count: int, interval: float) -> None:
        self.out: list[tuple[int, int]] = []
        self.thread = threading.Thread(target=lambda: self.out.append(lab.ping(count, interval)))
        self.thread.start()

    def result(self) -> tuple[int, int]:
        self.thread.join()
        return self.out[0]


@pytest.mark.parametrize("role", ["c", "f", "s"])
def test_faults_kill9_and_restart_resumes_traffic_and_leaves_hosts_clean(tmp_path: Path, role: str) -> None:
    with Lab(tmp_path, forwarder=True, client_extra={"forwarders": ["1.2"]}) as lab:
        clean = {n: host_state(lab, n) for n in ("c", "f", "s")}
        lab.start_all()
        lab.wait_tunnel()
        pinger = Pinger(lab, 40, 0.1)
        time.sleep(1.0)
        lab.daemons[role].kill9()
        time.sleep(0.5)
        lab.daemons[role].start()
        sent, received = pinger.result()
        assert received > 0
        lab.wait_tunnel(timeout=20)
        assert lab.ping(10, 0.1) == (10, 10)
        print(f"\nkill -9 of {role}: ping {received}/{sent} across the restart")
        for d in lab.daemons.values():
            assert d.stop() == 0, d.text()[-2000:]
        for n in ("c", "f", "s"):
            assert host_state(lab, n) == clean[n], n


def test_faults_kill9_then_a_broken_file_still_restores_the_host(tmp_path: Path) -> None:
    """The client is killed with -9 (its default route moved into the tunnel), then:
    restarted with a broken secrets file, it stops with the error and undoes the crashed
    run's host changes first; with a config that no longer loads, `cleanup
    --control-socket` does it."""
    with Lab(tmp_path) as lab:
        clean = host_state(lab, "c")
        lab.start_all()
        lab.wait_tunnel()
        client = lab.daemons["c"]
        secrets = Path(client.config["secret_file"])
        good = secrets.read_text()
        for broken in ("secrets", "config"):
            client.kill9()
            assert host_state(lab, "c") != clean
            if broken == "secrets":
                secrets.write_text(good.replace(lab.keys["1.1"], lab.keys["1.1"][:-2]))
                done = ns_run(lab.ns["c"], ALPACA, "-c", str(client.config_path), "run", check=False)
                assert done.returncode == 2 and "peer_key" in done.stderr, done.stderr
                assert "undid the host changes of a previous run" in done.stdout
            else:
                client.config_path.write_text("{")
                sock = client.config["control_socket"]
                done = ns_run(lab.ns["c"], ALPACA, "cleanup", "--control-socket", sock, check=False)
                assert done.returncode == 0 and "undid the host changes" in done.stdout, done.stderr
            assert host_state(lab, "c") == clean, broken
            assert not Path(client.config["control_socket"] + ".journal").exists()
            if broken == "secrets":
                secrets.write_text(good)
                client.start()
                lab.wait_tunnel()


def test_faults_flapping_path_with_duplicate_send_loses_no_ping(tmp_path: Path) -> None:
    extra = {"ports": [{"name": "up1", "interface": "c0"}, {"name": "up2", "interface": "c1"}],
             "dup": {"policy": "all", "copies": 1, "delay_ms": 20}}
    with Lab(tmp_path, second_uplink=True, client_extra=extra) as lab:
        ns_run(lab.ns["c"], "ip", "route", "add", "10.99.2.0/24", "via", "10.99.4.1", "dev", "c1",
               "metric", "500")
        lab.start_all()
        lab.wait_tunnel()
        time.sleep(1.5)
        client = lab.daemons["c"]
        rss = [rss_kib(client.pid)]
        pinger = Pinger(lab, 100, 0.2)
        for i in range(10):
            ns_run(lab.ns["c"], "ip", "link", "set", "c1", "down" if i % 2 == 0 else "up")
            time.sleep(2.0)
            rss.append(rss_kib(client.pid))
        ns_run(lab.ns["c"], "ip", "link", "set", "c1", "up")
        sent, received = pinger.result()
        print(f"\nflapping path: ping {received}/{sent}, client RSS KiB {rss}")
        assert (sent, received) == (100, 100)
        assert max(rss[2:]) - rss[1] < 4096, rss


def test_faults_tun_deleted_under_the_daemon_exits_nonzero_and_cleans_up(tmp_path: Path) -> None:
    with Lab(tmp_path) as lab:
        clean = host_state(lab, "c")
        lab.start_all()
        lab.wait_tunnel()
        client = lab.daemons["c"]
        ns_run(lab.ns["c"], "ip", "link", "del", "alsc0")
        assert client.proc is not None
        code = client.proc.wait(15)
        text = client.text()
        print("\n" + "\n".join(line for line in text.splitlines() if "ERROR" in line or "alsc0" in line))
        assert code != 0
        assert re.search(r"ERROR.*alsc0 (vanished|gone|deleted|removed)", text, re.I), text[-2000:]
        assert host_state(lab, "c") == clean


def test_faults_uplink_address_change_resumes_traffic(tmp_path: Path) -> None:
    with Lab(tmp_path) as lab:
        lab.start_all()
        lab.wait_tunnel()
        ns = lab.ns["c"]
        ns_run(ns, "ip", "addr", "del", "10.99.1.2/24", "dev", "c0")
        ns_run(ns, "ip", "addr", "add", "10.99.1.3/24", "dev", "c0")
        ns_run(ns, "ip", "route", "replace", "10.99.2.2", "via", "10.99.1.1", "dev", "c0", check=False)
        start = time.monotonic()
        lab.wait_tunnel(timeout=20)
        print(f"\nuplink address change: traffic back after {time.monotonic() - start:.1f} s")
        assert lab.ping(5, 0.1) == (5, 5)
        addrs = {p["addr"] for entry in lab.daemons["s"].state()["peers"] for p in entry["paths"]}
        assert any(a.startswith("10.99.1.3:") for a in addrs), addrs


def test_faults_invalid_secrets_on_reload_keep_the_running_state(tmp_path: Path) -> None:
    with Lab(tmp_path) as lab:
        lab.start_all()
        lab.wait_tunnel()
        client = lab.daemons["c"]
        secrets = Path(client.config["secret_file"])
        secrets.write_text("16.1 not-a-key\n1.1 zz\n")
        client.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        text = client.wait_log("reload failed", 10)
        print("\n" + next(line for line in text.splitlines() if "reload failed" in line))
        assert lab.ping(10, 0.1) == (10, 10)
        assert client.proc.poll() is None  # type: ignore[union-attr]


def test_faults_unwritable_state_file_refuses_to_start(tmp_path: Path) -> None:
    with Lab(tmp_path) as lab:
        blocker = tmp_path / "not-a-dir"
        blocker.write_text("x")
        client = lab.daemons["c"]
        client.config["state_file"] = str(blocker / "epoch")
        client.start(wait=False)
        assert client.proc is not None
        code = client.proc.wait(15)
        text = client.text()
        print("\n" + text.strip().splitlines()[-1])
        assert code == 1
        assert str(blocker / "epoch") in text
        assert "Traceback" not in text
        assert ns_run(lab.ns["c"], "ip", "link", "show", "alsc0", check=False).returncode != 0


