"""Two real daemons in network namespaces, speaking legacy-6.1.2 to each other; ping through.

Server 1.1 marks only peer 16.1 as legacy (``peer_protocols``); client 16.1 sets the node-wide
``protocol``. Needs root, /dev/net/tun and iproute2 (skipped otherwise).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import netns, nsexec, veth

ALPACA = str(Path(sys.executable).with_name("alpaca-tunnel"))
KEYS = {"1.1": os.urandom(16).hex(), "16.1": os.urandom(32).hex()}


def write_node(directory: Path, name: str, config: dict[str, object]) -> Path:
    directory.mkdir()
    secrets = directory / "secrets.txt"
    secrets.write_text(f"1.1 {KEYS['1.1']} 192.168.77.1 null 5000\n16.1 {KEYS['16.1']}\n")
    secrets.chmod(0o600)
    base: dict[str, object] = {
        "group": "all-legacy", "net": "10.17", "mtu": 1400, "log_level": "info",
        "secret_file": str(secrets), "tun_name": "alg0", "metrics": False,
        "control_socket": str(directory / "control.sock"),
        "state_file": str(directory / "epoch"),
    }
    base.update(config)
    path = directory / "config.json"
    path.write_text(json.dumps(base))
    return path


def start(ns: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, ALPACA, "-c", str(config), "run"],
                                stdout=out, stderr=subprocess.STDOUT)
    # Up once it logs "started": the link exists before its address and the ports (a ping
    # sent in between is lost, or leaves by the default route and the peer's kernel answers).
    for _ in range(100):
        if "started node=" in log.read_text():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"daemon did not come up:\n{log.read_text()}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.netns
def test_legacy_netns_two_daemons_ping(tmp_path: Path) -> None:
    with netns("all-s") as ns_s, netns("all-c") as ns_c:
        veth(ns_s, "192.168.77.1/24", ns_c, "192.168.77.2/24")
        nsexec(ns_c, "ip", "route", "add", "default", "via", "192.168.77.1")
        server = write_node(tmp_path / "s", "s", {
            "mode": "server", "id": "1.1", "port": 5000, "peer_protocols": {"16.1": "legacy-6.1.2"}})
        client = write_node(tmp_path / "c", "c", {
            "mode": "client", "id": "16.1", "gateway": "1.1", "port": 0, "protocol": "legacy-6.1.2"})
        procs = []
        try:
            procs.append(start(ns_s, server, tmp_path / "s.log"))
            procs.append(start(ns_c, client, tmp_path / "c.log"))
            ping = nsexec(ns_c, "ping", "-c", "3", "-i", "0.2", "-W", "2", "10.17.1.1", check=False)
            assert ping.returncode == 0, ping.stdout + (tmp_path / "c.log").read_text()
            back = nsexec(ns_s, "ping", "-c", "2", "-i", "0.2", "-W", "2", "10.17.16.1", check=False)
            assert back.returncode == 0, back.stdout + (tmp_path / "s.log").read_text()
            # The server's only peer is legacy: every datagram it sent, the legacy engine sent,
            # and the node's counters include that engine's.
            show = subprocess.run([ALPACA, "-c", str(server), "show", "--json"],
                                  capture_output=True, text=True, check=True)
            assert json.loads(show.stdout)["sent_datagrams"] >= 5, show.stdout
        finally:
            for proc in reversed(procs):
                stop(proc)
        for name, peers in (("s", "16.1"), ("c", "1.1")):
            text = (tmp_path / f"{name}.log").read_text()
            assert text.count("insecure legacy-6.1.2 protocol") == 1, text
            assert f"peers {peers} use" in text
