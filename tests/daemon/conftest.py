"""A small lab for whole-daemon tests: namespaces, links, configs, running ``alpaca-tunnel``.

``lab`` (a fixture) builds namespaces named ``atd-...``, writes each node's config and secrets
into its own directory under ``tmp_path`` (control socket, journal and epoch file go to a short
directory under /tmp, since a Unix socket path has at most 107 bytes), starts daemons with
``ip netns exec NS alpaca-tunnel -c CONFIG run``, waits until the TUN device is up (or fails
with the tail of the daemon's log), and in ``finally`` stops every daemon (SIGTERM, then
SIGKILL) and removes every namespace it made.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from alpaca.show import fetch
from tests.helpers import netns, nsexec, veth

REPO = Path(__file__).resolve().parents[2]
ALPACA = str(Path(sys.executable).with_name("alpaca-tunnel"))
NET = "10.17"
TUN = "alp0"
PORT = 5000
STOP_WAIT = 10.0


def new_key() -> str:
    return os.urandom(32).hex()


@dataclass
class Peer:
    """One line of a secrets file."""

    peer_id: str
    key: str = field(default_factory=new_key)
    address: str | None = None
    port: int = 0

    def line(self, address: str | None = None) -> str:
        addr = address if address is not None else self.address
        if addr is None:
            return f"{self.peer_id} {self.key} null null 0"
        return f"{self.peer_id} {self.key} {addr} null {self.port}"


@dataclass
class Node:
    """A daemon of the lab: its namespace, files and process."""

    name: str
    ns: str
    peer_id: str
    directory: Path
    run_dir: Path
    config: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    #: "started" lines in the log before the running process was started (the log is kept
    #: across restarts, so an earlier run's line must not count as this one's)
    starts_before: int = 0

    @property
    def config_path(self) -> Path:
        return self.directory / "config.json"

    @property
    def secrets_path(self) -> Path:
        return self.directory / "secrets.txt"

    @property
    def log_path(self) -> Path:
        return self.directory / "daemon.log"

    @property
    def journal_path(self) -> Path:
        return self.run_dir / f"{self.name}.sock.journal"

    def write_config(self, **changes: Any) -> None:
        self.config.update(changes)
        self.config_path.write_text(json.dumps(self.config, indent=1))

    def write_secrets(self, lines: list[str]) -> None:
        """Write the secrets file in place (mode 600)."""
        self.secrets_path.write_text("\n".join(lines) + "\n")
        os.chmod(self.secrets_path, 0o600)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        assert self.proc is not None, f"{self.name} is not running"
        self.proc.send_signal(signum)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Lab:
    """Namespaces and daemons of one test; :meth:`close` removes everything."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.run_dir = Path(tempfile.mkdtemp(prefix="atd-"))
        self.nodes: list[Node] = []
        self._stack = contextlib.ExitStack()
        self.namespaces: dict[str, str] = {}
        self._port = 9600

    # ---------------------------------------------------------------- topology
    def ns(self, name: str) -> str:
        """A fresh namespace (``atd-...``) with loopback up."""
        ns = self._stack.enter_context(netns("atd-"))
        # No duplicate address detection: IPv6 link-local addresses (and their routes) appear
        # when a link comes up instead of seconds later, so snapshots do not race with them.
        for conf in ("default", "all"):
            nsexec(ns, "sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0")
        self.namespaces[name] = ns
        return ns

    def link(self, ns_a: str, addr_a: str, ns_b: str, addr_b: str, name_a: str, name_b: str) -> None:
        veth(ns_a, addr_a, ns_b, addr_b, name_a, name_b)

    # ---------------------------------------------------------------- daemons
    def node(self, name: str, ns: str, peer_id: str, mode: str, **config: Any) -> Node:
        """Write a node's config (secrets are written by the caller) and return it."""
        directory = self.tmp_path / name
        directory.mkdir()
        self._port += 1
        base: dict[str, Any] = {
            "mode": mode, "group": "lab", "net": NET, "id": peer_id, "mtu": 1400,
            "log_level": "info", "secret_file": "secrets.txt", "tun_name": TUN,
            "metrics": {"listen": f"127.0.0.1:{self._port}"},
            "control_socket": str(self.run_dir / f"{name}.sock"),
            "state_file": str(self.run_dir / f"{name}.epoch"),
            "probe_interval_ms": 200, "path_timeout_ms": 1000,
        }
        if "ports" not in config:
            base["port"] = PORT if mode == "server" else 0
        base.update(config)
        node = Node(name, ns, peer_id, directory, self.run_dir, base)
        node.write_config()
        self.nodes.append(node)
        return node

    def start(self, node: Node, *, wait: bool = True, wrap: tuple[str, ...] = ()) -> Node:
        """Start ``node``'s daemon (behind the command prefix ``wrap``, e.g. ``chrt``; it must
        exec, keeping the pid); with ``wait``, return once its TUN device is up."""
        node.starts_before = node.log().count("started node=")
        log = open(node.log_path, "ab")  # noqa: SIM115 - owned by the process below
        try:
            node.proc = subprocess.Popen(
                [*wrap, "ip", "netns", "exec", node.ns, ALPACA, "-c", str(node.config_path), "run"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=node.directory,
            )
        finally:
            log.close()
        if wait:
            self.wait_up(node)
        return node

    def wait_up(self, node: Node, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert node.proc is not None
            if node.proc.poll() is not None:
                pytest.fail(f"{node.name} exited with {node.proc.returncode}:\n{node.log_tail()}")
            done = nsexec(node.ns, "ip", "link", "show", TUN, check=False)
            started = node.log().count("started node=") > node.starts_before
            if done.returncode == 0 and ",UP" in done.stdout and started:
                return
            time.sleep(0.1)
        pytest.fail(f"{node.name}: {TUN} not up after {timeout:g} s:\n{node.log_tail()}")

    def stop(self, node: Node, timeout: float = STOP_WAIT) -> int:
        """SIGTERM, wait, SIGKILL if needed; return the exit code."""
        proc = node.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                pytest.fail(f"{node.name} ignored SIGTERM for {timeout:g} s:\n{node.log_tail()}")
        return proc.returncode

    def kill(self, node: Node) -> None:
        """SIGKILL the daemon (a crash: no clean-up runs)."""
        assert node.proc is not None
        # ``ip netns exec`` execs the daemon, so the Popen pid is the daemon's.
        node.proc.kill()
        node.proc.wait(5)

    def close(self) -> None:
        try:
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is None:
                    node.proc.send_signal(signal.SIGTERM)
            for node in self.nodes:
                if node.proc is not None:
                    try:
                        node.proc.wait(STOP_WAIT)
                    except subprocess.TimeoutExpired:
                        node.proc.kill()
                        node.proc.wait(5)
        finally:
            self._stack.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    built = Lab(tmp_path)
    try:
        yield built
    finally:
        built.close()


# -------------------------------------------------------------------- checks


def ping(ns: str, dst: str, *args: str, timeout: float = 60.0) -> tuple[int, int, str]:
    """Run ping in ``ns``; return (transmitted, received, output)."""
    done = nsexec(ns, "ping", "-n", "-q", *args, dst, check=False, timeout=timeout)
    match = re.search(r"(\d+) packets transmitted, (\d+) received", done.stdout)
    if match is None:
        raise AssertionError(f"ping printed no summary: {done.stdout} {done.stderr}")
    return int(match.group(1)), int(match.group(2)), done.stdout


def wait_ping(ns: str, dst: str, timeout: float = 15.0) -> None:
    """Wait until ``dst`` answers one ping from ``ns`` (paths come up within a few probes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nsexec(ns, "ping", "-n", "-c", "1", "-W", "1", dst, check=False).returncode == 0:
            return
    raise AssertionError(f"{dst} does not answer from {ns} after {timeout:g} s")


def background_ping(ns: str, dst: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-q", *args, dst],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def ping_result(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, int, str]:
    out, _ = proc.communicate(timeout=timeout)
    match = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    if match is None:
        raise AssertionError(f"ping printed no summary: {out}")
    return int(match.group(1)), int(match.group(2)), out


def host_state(ns: str) -> dict[str, str]:
    """Everything a daemon may change in ``ns``, as text, for before/after comparisons."""
    commands = {
        "routes": ["ip", "route", "show", "table", "all"],
        "routes6": ["ip", "-6", "route", "show", "table", "all"],
        "rules": ["ip", "rule"],
        "rules6": ["ip", "-6", "rule"],
        "nft": ["nft", "list", "ruleset"],
        "iptables": ["iptables", "-S"],
        "ip_forward": ["sysctl", "net.ipv4.ip_forward"],
        "links": ["ip", "-o", "link", "show"],
    }
    deadline = time.monotonic() + 5
    while nsexec(ns, "ip", "-6", "addr", "show", "tentative").stdout and time.monotonic() < deadline:
        time.sleep(0.1)
    state = {key: nsexec(ns, *argv).stdout for key, argv in commands.items()}
    # A TUN device has no MAC address: its link-local address is new on every start.
    for key in ("routes", "routes6"):
        state[key] = re.sub(r"fe80::[0-9a-f:]+ dev " + TUN + " ", f"fe80::* dev {TUN} ", state[key])
    # Interface counters and link-layer details are not host configuration.
    state["links"] = "\n".join(
        " ".join(m.groups()) for m in re.finditer(r"^\d+: (\S+): <([^>]*)>", state["links"], re.M)
    )
    return state


# -------------------------------------------------------------------- topologies


@dataclass
class Multipath:
    """Server 1.1 (NAT to inet 198.18.0.2), forwarders 1.2 and 1.3, client 16.1 with uplink A
    (``upa``, to 1.2) and uplink B (``upb``, to 1.3); every node's secrets name the others by
    the address it reaches them at."""

    lab: Lab
    server: Node
    fwd2: Node
    fwd3: Node
    client: Node
    inet: str
    peers: dict[str, Peer]


INET = "198.18.0.2"


def build_multipath(lab: Lab, forwarders: tuple[str, ...] = ("1.2", "1.3")) -> Multipath:
    ts, tf2, tf3, tc, inet = (lab.ns(n) for n in ("server", "fwd2", "fwd3", "client", "inet"))
    lab.link(ts, "198.18.0.1/24", inet, "198.18.0.2/24", "inet", "eth0")
    lab.link(ts, "172.31.12.1/24", tf2, "172.31.12.2/24", "f2", "srv")
    lab.link(ts, "172.31.13.1/24", tf3, "172.31.13.2/24", "f3", "srv")
    lab.link(tf2, "172.31.21.2/24", tc, "172.31.21.1/24", "cli", "upa")
    lab.link(tf3, "172.31.31.2/24", tc, "172.31.31.1/24", "cli", "upb")
    nsexec(inet, "ip", "route", "add", "default", "via", "198.18.0.1")
    nsexec(tc, "ip", "route", "add", "default", "via", "172.31.21.2", "dev", "upa")
    peers = {p: Peer(p, port=PORT) for p in ("1.1", "1.2", "1.3")} | {"16.1": Peer("16.1")}
    sees = {  # who reaches whom at which address
        "server": {"1.2": "172.31.12.2", "1.3": "172.31.13.2"},
        "fwd2": {"1.1": "172.31.12.1"},
        "fwd3": {"1.1": "172.31.13.1"},
        "client": {"1.2": "172.31.21.2", "1.3": "172.31.31.2"},
    }
    server = lab.node("server", ts, "1.1", "server")
    fwd2 = lab.node("fwd2", tf2, "1.2", "server")
    fwd3 = lab.node("fwd3", tf3, "1.3", "server")
    client = lab.node(
        "client", tc, "16.1", "client", gateway="1.1", forwarders=list(forwarders),
        ports=[{"name": "a", "port": 0, "interface": "upa"}, {"name": "b", "port": 0, "interface": "upb"}],
    )
    for node in (server, fwd2, fwd3, client):
        addrs = sees[node.name]
        node.write_secrets([
            p.line(addrs.get(pid, "")) if pid in addrs else Peer(pid, p.key).line()
            for pid, p in peers.items()
        ])
    return Multipath(lab, server, fwd2, fwd3, client, inet, peers)


def start_all(topo: Multipath) -> None:
    """Start the servers, then the client (so that its first probes find them listening);
    return once a ping reaches the inet host. Learned paths need a probe round trip each, so
    some come up after that: see :func:`wait_paths_up`."""
    for node in (topo.server, topo.fwd2, topo.fwd3):
        topo.lab.start(node, wait=False)
    for node in (topo.server, topo.fwd2, topo.fwd3):
        topo.lab.wait_up(node)
    topo.lab.start(topo.client)
    wait_ping(topo.client.ns, INET)


def wait_paths_up(node: Node, peer: str, count: int, timeout: float = 10.0) -> None:
    """Wait until ``node`` (through its control socket) has ``count`` paths up to ``peer``."""
    deadline = time.monotonic() + timeout
    while True:
        snap = fetch(Path(node.config["control_socket"]))
        paths = [p for entry in snap["peers"] if entry["peer"] == peer for p in entry["paths"]]
        if sum(p["state"] == "up" for p in paths) >= count:
            return
        assert time.monotonic() < deadline, f"{node.name}: paths to {peer}: {paths}"
        time.sleep(0.1)


# -------------------------------------------------------------------- TCP transfer with a checksum

_RECEIVER = """
import hashlib, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
s.settimeout(30)
c, _ = s.accept()
c.settimeout(30)
h, n = hashlib.sha256(), 0
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    h.update(b)
    n += len(b)
print(n, h.hexdigest(), flush=True)
"""

_SENDER = """
import hashlib, os, socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.1)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")
end = time.monotonic() + float(sys.argv[3])
h, n = hashlib.sha256(), 0
while time.monotonic() < end:
    chunk = os.urandom(1 << 16)
    s.sendall(chunk)
    h.update(chunk)
    n += len(chunk)
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(n, h.hexdigest(), flush=True)
"""


class Transfer:
    """A TCP stream of random bytes for ``seconds`` from ``src_ns`` to ``dst`` (listening in
    ``dst_ns``); :meth:`result` returns (bytes sent, sha256 sent, bytes received, sha256
    received)."""

    def __init__(self, src_ns: str, dst_ns: str, dst: str, seconds: float, port: int = 7000) -> None:
        self.started_at = time.monotonic()
        self.receiver = subprocess.Popen(
            ["ip", "netns", "exec", dst_ns, sys.executable, "-c", _RECEIVER, dst, str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.sender = subprocess.Popen(
            ["ip", "netns", "exec", src_ns, sys.executable, "-c", _SENDER, dst, str(port), str(seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self, timeout: float = 60.0) -> tuple[int, str, int, str]:
        sent, sent_err = self.sender.communicate(timeout=timeout)
        got, got_err = self.receiver.communicate(timeout=timeout)
        self.elapsed = time.monotonic() - self.started_at
        assert self.sender.returncode == 0, f"sender failed: {sent_err}"
        assert self.receiver.returncode == 0, f"receiver failed: {got_err}"
        n_sent, sha_sent = sent.split()
        n_got, sha_got = got.split()
        return int(n_sent), sha_sent, int(n_got), sha_got

    def close(self) -> None:
        for proc in (self.sender, self.receiver):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def nft_counter(ns: str, table: str) -> int:
    """Sum of the ``counter packets N`` of an nftables table of the test's own."""
    out = nsexec(ns, "nft", "list", "table", "inet", table).stdout
    return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))


def add_nft_rule(ns: str, table: str, hook: str, rule: str) -> None:
    """Create table ``inet <table>`` with one base chain on ``hook`` holding ``rule``."""
    script = (f"table inet {table} {{\n chain c {{\n  type filter hook {hook} priority -10; policy accept;\n"
              f"  {rule}\n }}\n}}\n")
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True, check=True,
                   capture_output=True)


@dataclass
class Simple:
    """Client 16.1 (192.168.50.2, default via the server) -- server 1.1 -- inet 198.18.0.2."""

    lab: Lab
    server: Node
    client: Node
    inet: str
    peers: dict[str, Peer]


def build_simple(lab: Lab, server_config: dict[str, Any] | None = None,
                 client_config: dict[str, Any] | None = None) -> Simple:
    ts, tc, inet = lab.ns("server"), lab.ns("client"), lab.ns("inet")
    lab.link(ts, "198.18.0.1/24", inet, "198.18.0.2/24", "inet", "eth0")
    lab.link(ts, "192.168.50.1/24", tc, "192.168.50.2/24", "cli", "eth0")
    nsexec(inet, "ip", "route", "add", "default", "via", "198.18.0.1")
    nsexec(tc, "ip", "route", "add", "default", "via", "192.168.50.1")
    peers = {"1.1": Peer("1.1", address="192.168.50.1", port=PORT), "16.1": Peer("16.1")}
    server = lab.node("server", ts, "1.1", "server", **(server_config or {}))
    client = lab.node("client", tc, "16.1", "client", gateway="1.1", **(client_config or {}))
    for node in (server, client):
        node.write_secrets([p.line() for p in peers.values()])
    return Simple(lab, server, client, inet, peers)


_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(30)
while True:
    data, addr = s.recvfrom(2048)
    s.sendto(addr[0].encode(), addr)
"""

_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
for _ in range(10):
    s.sendto(b"who am i", (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recvfrom(2048)[0].decode())
        break
    except TimeoutError:
        pass
"""


def seen_source(src_ns: str, dst_ns: str, dst: str, port: int = 7001) -> str:
    """The source address a UDP echo service at ``dst`` in ``dst_ns`` sees from ``src_ns``."""
    echo = subprocess.Popen(["ip", "netns", "exec", dst_ns, sys.executable, "-c", _ECHO, dst, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return nsexec(src_ns, sys.executable, "-c", _ASK, dst, str(port), timeout=20).stdout.strip()
    finally:
        echo.kill()
        echo.wait(5)
