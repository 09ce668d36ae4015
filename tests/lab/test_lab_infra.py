"""The lab's own machinery, without daemons: namespaces, links, teardown, impairment.

Each test builds the default topology with ``up(daemons=False)`` in a short state dir under
/tmp (unix socket paths have a 108-byte limit) and tears it down in ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from alpaca.lab import Lab, _sigint_deferred, exclusive, impair, netns
from alpaca.lab.topology import load_topology

pytestmark = pytest.mark.netns

ECHO = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if sys.argv[1] == "serve":
    s.bind(("0.0.0.0", 9000))
    while True:
        data, addr = s.recvfrom(2048)
        s.sendto(data, addr)
s.settimeout(1.0)
rtts = []
for _ in range(int(sys.argv[3])):
    t = time.monotonic()
    s.sendto(b"x" * 100, (sys.argv[2], 9000))
    try:
        s.recvfrom(2048)
        rtts.append((time.monotonic() - t) * 1000)
    except OSError:
        pass
rtts.sort()
print(len(rtts), rtts[len(rtts) // 2] if rtts else -1)
"""


@pytest.fixture
def lab(lab_state: Callable[[], Path]) -> Iterator[Lab]:
    state = lab_state()
    built = Lab(load_topology(), state)
    try:
        built.up(daemons=False)
        yield built
    finally:
        built.down()


def _loss_pct(output: str) -> float:
    match = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    assert match, output
    return 100 * (int(match[1]) - int(match[2])) / int(match[1])


def test_lab_up_every_link_pings(lab: Lab) -> None:
    for link in lab.topology.links:
        out = lab.exec(link.a.node, ["ping", "-c", "1", "-W", "2", str(link.b.address.ip)], check=False)
        assert out.returncode == 0, f"link {link.name}: {out.stdout}"
    assert set(netns.list_namespaces()) >= {n.namespace for n in lab.topology.nodes}


def test_lab_management_addresses_reachable_from_root(lab: Lab) -> None:
    for node in lab.topology.daemons:
        address = str(lab.topology.management_address(node))
        assert subprocess.run(["ping", "-c", "1", "-W", "2", address], capture_output=True).returncode == 0


def test_lab_up_twice_is_idempotent(lab: Lab) -> None:
    before = sorted(netns.list_namespaces())
    lab.up(daemons=False)
    assert sorted(netns.list_namespaces()) == before
    out = lab.exec("c161", ["ip", "-br", "addr", "show", "dev", "up-a"])
    assert out.stdout.count("172.16.12.2") == 1


def test_lab_down_cleans_up_after_sigkill(lab_state: Callable[[], Path]) -> None:
    state = lab_state()
    cmd = [sys.executable, "-m", "alpaca", "lab", "up", "--no-daemons", "--state-dir", str(state)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(netns.list_namespaces()) < 3:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert netns.list_namespaces(), "the lab process was killed before it created anything"
        sleeper = subprocess.Popen(["ip", "netns", "exec", netns.list_namespaces()[0], "sleep", "600"])
    finally:
        down = subprocess.run([sys.executable, "-m", "alpaca", "lab", "down", "--state-dir", str(state)],
                              capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert sleeper.wait(timeout=10) != 0
    assert netns.list_namespaces() == []
    assert netns.root_links() == []
    assert not state.exists()


def test_lab_down_after_up_leaves_no_state_directory(lab_state: Callable[[], Path]) -> None:
    """The key file's lock stayed beside it, and with it the state directory."""
    state = lab_state()
    for verb in ("up", "down"):
        argv = [sys.executable, "-m", "alpaca", "lab", verb, *(["--no-daemons"] if verb == "up" else []),
                "--state-dir", str(state)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    assert not state.exists(), sorted(p.name for p in state.iterdir())


def test_lab_down_leaves_what_another_program_named_alp_alone(lab_state: Callable[[], Path]) -> None:
    """down deleted every alp-* namespace and interface, and killed what ran inside: a
    user's own "alp-home" namespace went with the lab."""
    subprocess.run(["ip", "netns", "add", "alp-home"], check=True)
    subprocess.run(["ip", "link", "add", "alp-wg0", "type", "veth", "peer", "name", "alp-wg1"], check=True)
    try:
        lab = Lab(load_topology(), lab_state())
        lab.up(daemons=False)
        removed = lab.down()
        assert "alp-home" not in removed and "alp-home" in netns.list_namespaces()
        assert {"alp-wg0", "alp-wg1"} <= set(netns.root_links())
        assert set(removed) >= {n.namespace for n in lab.topology.nodes}
    finally:
        subprocess.run(["ip", "netns", "del", "alp-home"], check=False)
        subprocess.run(["ip", "link", "del", "alp-wg0"], check=False)


def test_lab_down_all_removes_every_alp_name(lab_state: Callable[[], Path]) -> None:
    """For a lab whose topology file is gone: everything named alp-*, the lab's or not."""
    subprocess.run(["ip", "netns", "add", "alp-home"], check=True)
    subprocess.run(["ip", "link", "add", "alp-wg0", "type", "veth", "peer", "name", "alp-wg1"], check=True)
    try:
        done = _lab_cli(lab_state(), "down", "--all")
        assert done.returncode == 0, done.stderr
        assert "alp-home" in done.stdout and "alp-wg0" in done.stdout
        assert netns.list_namespaces() == [] and netns.root_links() == []
    finally:
        subprocess.run(["ip", "netns", "del", "alp-home"], check=False, capture_output=True)
        subprocess.run(["ip", "link", "del", "alp-wg0"], check=False, capture_output=True)


def test_lab_down_in_a_directory_without_a_lab_record_removes_no_file(lab_state: Callable[[], Path]) -> None:
    """`lab down --state-dir D` on a directory that never held a lab removed its secrets.txt
    and its nodes/ and prometheus/ directories."""
    state = lab_state()
    for name in ("secrets.txt", "nodes/inventory.txt", "prometheus/rules.yml"):
        (state / name).parent.mkdir(parents=True, exist_ok=True)
        (state / name).write_text("mine\n")
    Lab(load_topology(), state).down()
    assert sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file()) == [
        "nodes/inventory.txt", "prometheus/rules.yml", "secrets.txt"]


@pytest.mark.parametrize("started", ["", " 1"])  # a file of an older version; another start time
def test_lab_down_never_signals_a_process_whose_pid_a_stale_file_names(lab: Lab, started: str) -> None:
    """A daemon or relay gone, its pid given to another process: down killed that one."""
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        for path in (lab.state_dir / "nodes" / "s11" / "daemon.pid", lab.state_dir / "relays" / "a-c161.pid",
                     lab.state_dir / "prometheus" / "pid"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{bystander.pid}{started}\n")
        lab.down()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_impair_loss_is_in_range(lab: Lab) -> None:
    impair.impair(lab.topology, lab.state_dir, "a", loss_pct=10)
    out = lab.exec("c161", ["ping", "-q", "-c", "200", "-i", "0.005", "-W", "1", "172.16.12.1"], check=False)
    # 10 % in each direction: 19 % of round trips expected; 200 samples give about ±6 %.
    assert 8 <= _loss_pct(out.stdout) <= 32, out.stdout
    impair.impair(lab.topology, lab.state_dir, "a", clear=True)
    out = lab.exec("c161", ["ping", "-q", "-c", "50", "-i", "0.005", "-W", "1", "172.16.12.1"], check=False)
    assert _loss_pct(out.stdout) == 0
    assert "numgen" not in lab.exec("c161", ["nft", "list", "ruleset"]).stdout


def test_impair_delay_measured_with_udp_echo(lab: Lab) -> None:
    impair.impair(lab.topology, lab.state_dir, "a", delay_ms=20)
    server = subprocess.Popen(["ip", "netns", "exec", "alp-f12", sys.executable, "-c", ECHO, "serve"])
    try:
        time.sleep(0.3)
        out = lab.exec("c161", [sys.executable, "-c", ECHO, "client", "172.16.12.1", "30"])
        got, median = out.stdout.split()
        assert int(got) >= 28
        assert 38 <= float(median) <= 60, out.stdout  # 20 ms each way
        impair.impair(lab.topology, lab.state_dir, "a", clear=True)
        out = lab.exec("c161", [sys.executable, "-c", ECHO, "client", "172.16.12.1", "10"])
        assert float(out.stdout.split()[1]) < 10
    finally:
        server.kill()
        server.wait()
    assert not list((lab.state_dir / "relays").glob("*.pid"))


def test_impair_rate_installs_tbf(lab: Lab) -> None:
    impair.impair(lab.topology, lab.state_dir, "b", rate_mbit=20)
    assert "tbf" in lab.exec("f13", ["tc", "qdisc", "show", "dev", "client"]).stdout
    assert json.loads((lab.state_dir / "impair.json").read_text())["b"]["rate_mbit"] == 20
    impair.impair(lab.topology, lab.state_dir, "b", clear=True)
    assert "tbf" not in lab.exec("f13", ["tc", "qdisc", "show", "dev", "client"]).stdout


@pytest.mark.skipif(not os.path.exists("/usr/bin/prometheus"), reason="prometheus is not installed")
def test_lab_prometheus_scrapes_every_node(lab: Lab) -> None:
    lab.start_prometheus(listen="127.0.0.1:19590")
    deadline = time.monotonic() + 15
    targets: list[dict[str, dict[str, str]]] = []
    while time.monotonic() < deadline and not targets:
        time.sleep(0.5)
        with urllib.request.urlopen("http://127.0.0.1:19590/api/v1/targets", timeout=5) as response:
            targets = json.load(response)["data"]["activeTargets"]
    assert sorted(t["labels"]["lab_node"] for t in targets) == sorted(n.name for n in lab.topology.daemons)
    with urllib.request.urlopen("http://127.0.0.1:19590/api/v1/rules", timeout=5) as response:
        groups = json.load(response)["data"]["groups"]
    assert "AlpacaPeerDown" in {rule["name"] for group in groups for rule in group["rules"]}
    lab.stop_prometheus()


def _lab_cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "alpaca", "lab", *args, "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=60)


def test_lab_down_without_its_topology_file_still_removes_everything(
        tmp_path: Path, lab_state: Callable[[], Path]) -> None:
    state = lab_state()
    topo = tmp_path / "topo.json"
    topo.write_text(load_topology().source.read_text())
    try:
        assert _lab_cli(state, "up", "--no-daemons", "--topology", str(topo)).returncode == 0
        topo.unlink()
    finally:
        down = _lab_cli(state, "down")
    assert down.returncode == 0, down.stderr
    assert "cannot read the topology" in down.stderr and "those of the default topology" in down.stderr
    assert "lab down --all" in down.stderr
    assert netns.list_namespaces() == [] and netns.root_links() == []


def test_lab_commands_that_change_the_lab_run_one_at_a_time(lab_state: Callable[[], Path]) -> None:
    state = lab_state()
    try:
        with exclusive(state):
            second = _lab_cli(state, "up", "--no-daemons")
        assert second.returncode != 0
        assert f"another lab command (pid {os.getpid()}) is changing the lab" in second.stderr
        assert "Traceback" not in second.stderr
        assert netns.list_namespaces() == []
    finally:
        _lab_cli(state, "down")


def test_lab_start_without_a_lab_or_of_a_plain_host_is_a_clear_error(
        lab: Lab, lab_state: Callable[[], Path]) -> None:
    empty = lab_state()
    no_lab = _lab_cli(empty, "start", "c161")
    assert no_lab.returncode != 0 and "no lab is up" in no_lab.stderr and "Traceback" not in no_lab.stderr
    host = _lab_cli(lab.state_dir, "start", "inet")
    assert host.returncode != 0 and "plain host" in host.stderr


def test_sigint_during_a_teardown_waits_for_its_end() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), _sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the signal has been handled by now, and nothing was raised
        done.append(True)
    assert done == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
