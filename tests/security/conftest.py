"""Builders for the adversarial tests: engine fingerprints, and a small lab of real daemons.

Engine level (no root): :func:`fingerprint` captures everything an unauthenticated datagram
must not change; :func:`routing_state` what a replayed (authentic but not fresh) one must not.

Namespace level (root): :class:`Lab` builds client 16.1 -- router -- server 1.1 (plus a
forwarder 1.2 on the router) in namespaces named ``als-*``. The router namespace is the
attacker's position: it sees every datagram and can send from its own or a spoofed address.
Counters come from the daemon's state dump (SIGUSR1 logs ``state {json}``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import secrets as pysecrets
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alpaca.core.engine import Engine
from tests.enginenet import Node
from tests.helpers import nsexec, sh

ROOT = Path(__file__).resolve().parents[2]
ALPACA = str(ROOT / ".venv" / "bin" / "alpaca-tunnel")
GROUP = "als-group"
SERVER_PORT, FORWARDER_PORT = 10001, 10002


# --------------------------------------------------------------------------- engine level
def eng(node: Node) -> Engine:
    assert node.engine is not None
    return node.engine


def drops(engine: Engine) -> dict[str, int]:
    return engine.stats.drop_counts()


def drop_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Reasons whose counter moved, with how much."""
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _path_row(p: Any) -> tuple[object, ...]:
    return (p.name, p.kind.value, p.pi, p.port, p.addr, p.up, p.last_ok_at, p.srtt, p.rx_packets,
            p.rx_bytes, p.rx_first, p.rx_duplicates, p.tx_packets, p.probes_answered)


def fingerprint(engine: Engine) -> tuple[object, ...]:
    """Every piece of engine state except drop counters (and the bounded key cache)."""
    peers = []
    for peer_id, peer in sorted(engine.peers.items()):
        rows = sorted((_path_row(p) for p in peer.paths.all()), key=repr)
        peers.append((peer_id, peer.rx_packets, peer.rx_bytes, peer.last_active_at, peer.next_counter,
                      tuple(peer.paths.rx_data), tuple(rows)))
    flows = sorted((k, f.epoch, f.window.top, f.window.accepted, f.window.late, f.window.lost,
                    f.window.duplicate, f.window.too_old) for k, f in engine.flows.items())
    stats = {name: getattr(engine.stats, name) for name in type(engine.stats).__slots__ if name != "drops"}
    return tuple(peers), tuple(flows), tuple(sorted(stats.items())), len(engine.dup)


def routing_state(engine: Engine) -> tuple[object, ...]:
    """What decides delivery and routing: addresses, liveness, epochs and window tops."""
    paths = sorted((pid_, p.name, p.addr, p.up, p.last_ok_at, p.srtt)
                   for pid_, peer in engine.peers.items() for p in peer.paths.all())
    flows = sorted((k, f.epoch, f.window.top, f.window.accepted) for k, f in engine.flows.items())
    s = engine.stats
    return (tuple(paths), tuple(flows), s.delivered_packets, s.forwarded_packets,
            tuple(sorted((i, p.rx_packets, p.last_active_at) for i, p in engine.peers.items())))


# --------------------------------------------------------------------------- namespaces
run = sh  # the shared command runners of tests/helpers.py
ns_run = nsexec


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Daemon:
    """One alpaca-tunnel process in a namespace, with its files."""

    name: str
    ns: str
    directory: Path
    config: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    log_offset: int = 0
    runs: list[int] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.directory / "daemon.log"

    @property
    def config_path(self) -> Path:
        return self.directory / "config.json"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config, indent=1))

    def start(self, wait: bool = True) -> None:
        self.write_config()
        out = self.log.open("ab")
        self.log_offset = self.log.stat().st_size
        argv = ["ip", "netns", "exec", self.ns, ALPACA, "-c", str(self.config_path), "run"]
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.runs.append(self.proc.pid)
        if wait:
            self.wait_log("started node=", 15.0)

    def text(self) -> str:
        return self.log.read_bytes()[self.log_offset:].decode(errors="replace")

    def wait_log(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if needle in text:
                return text
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}:\n{text[-3000:]}")
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no {needle!r} within {timeout} s:\n{self.text()[-3000:]}")

    def state(self) -> dict[str, Any]:
        """The daemon's state dump (SIGUSR1), parsed."""
        before = self.text().count(" state {")
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            dumps = re.findall(r" state (\{.*\})\s*$", self.text(), re.M)
            if len(dumps) > before:
                return json.loads(dumps[-1])  # type: ignore[no-any-return]
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: no state dump:\n{self.text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def kill9(self) -> None:
        """SIGKILL the daemon itself (``ip netns exec`` execs it, so the Popen pid is the daemon)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


def peer_view(state: dict[str, Any], peer: str) -> dict[str, Any]:
    for entry in state["peers"]:
        if entry["peer"] == peer:
            return entry  # type: ignore[no-any-return]
    return {"rx_packets": 0, "accepted_packets": 0, "replay_duplicate": 0, "replay_too_old": 0, "paths": []}


class Lab:
    """client 16.1 (ns C) -- router (ns R, the attacker) -- server 1.1 (ns S); forwarder 1.2 (ns F) on R.

    Addresses: C 10.99.1.2, R 10.99.1.1 / 10.99.2.1 / 10.99.3.1, S 10.99.2.2, F 10.99.3.2.
    The tunnel is 10.17.0.0/16; the client's gateway is 1.1 (no forwarders unless asked).
    """

    def __init__(self, tmp: Path, *, forwarder: bool = False, client_extra: dict[str, Any] | None = None,
                 second_uplink: bool = False) -> None:
        tag = f"{os.getpid() % 10000}"
        self.tmp = tmp
        self.ns = {n: f"als-{n}{tag}" for n in ("c", "r", "s", "f")}
        self.with_forwarder = forwarder
        self.second_uplink = second_uplink
        self.keys = {p: pysecrets.token_hex(32) for p in ("1.1", "1.2", "16.1", "16.2")}
        self.daemons: dict[str, Daemon] = {}
        self.client_extra = client_extra or {}

    # ------------------------------------------------------------------ build
    def __enter__(self) -> Lab:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _veth(self, a: str, a_if: str, a_ip: str, b: str, b_if: str, b_ip: str) -> None:
        tmp_a, tmp_b = f"als{a_if}{os.getpid() % 10000}", f"als{b_if}{os.getpid() % 10000}"
        run("ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b)
        run("ip", "link", "set", tmp_a, "netns", a)
        run("ip", "link", "set", tmp_b, "netns", b)
        for ns, tmp_name, name, ip in ((a, tmp_a, a_if, a_ip), (b, tmp_b, b_if, b_ip)):
            ns_run(ns, "ip", "link", "set", tmp_name, "name", name)
            ns_run(ns, "ip", "addr", "add", ip, "dev", name)
            ns_run(ns, "ip", "link", "set", name, "up")

    def _build(self) -> None:
        ns = self.ns
        names = ["c", "r", "s"] + (["f"] if self.with_forwarder else [])
        for n in names:
            run("ip", "netns", "add", ns[n])
            ns_run(ns[n], "ip", "link", "set", "lo", "up")
        self._veth(ns["c"], "c0", "10.99.1.2/24", ns["r"], "r1", "10.99.1.1/24")
        self._veth(ns["r"], "r2", "10.99.2.1/24", ns["s"], "s0", "10.99.2.2/24")
        if self.second_uplink:
            self._veth(ns["c"], "c1", "10.99.4.2/24", ns["r"], "r4", "10.99.4.1/24")
        if self.with_forwarder:
            self._veth(ns["r"], "r3", "10.99.3.1/24", ns["f"], "f0", "10.99.3.2/24")
            ns_run(ns["f"], "ip", "route", "add", "default", "via", "10.99.3.1")
        ns_run(ns["r"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
        ns_run(ns["c"], "ip", "route", "add", "default", "via", "10.99.1.1")
        ns_run(ns["s"], "ip", "route", "add", "default", "via", "10.99.2.1")
        self.daemons["s"] = self._daemon("s", "1.1", {"mode": "server", "port": SERVER_PORT})
        client = {"mode": "client", "gateway": "1.1", "port": 0, "dup": {"policy": "none"}}
        client.update(self.client_extra)
        self.daemons["c"] = self._daemon("c", "16.1", client)
        if self.with_forwarder:
            self.daemons["f"] = self._daemon("f", "1.2", {"mode": "server", "port": FORWARDER_PORT})

    def secrets_text(self, node: str) -> str:
        lines = [
            f"1.1 {self.keys['1.1']} 10.99.2.2 null {SERVER_PORT}",
            f"16.1 {self.keys['16.1']} null null null",
            f"16.2 {self.keys['16.2']} null null null",
        ]
        if self.with_forwarder:
            lines.append(f"1.2 {self.keys['1.2']} 10.99.3.2 null {FORWARDER_PORT}")
        return "\n".join(lines) + "\n"

    def _daemon(self, node: str, peer: str, extra: dict[str, Any]) -> Daemon:
        directory = self.tmp / node
        directory.mkdir(parents=True, exist_ok=True)
        secrets = directory / "secrets.txt"
        secrets.write_text(self.secrets_text(node))
        secrets.chmod(0o600)
        config: dict[str, Any] = {
            "group": GROUP, "net": "10.17", "id": peer, "mtu": 1400, "log_level": "info",
            "secret_file": str(secrets), "tun_name": f"als{node}0", "metrics": False,
            "control_socket": str(directory / "control.sock"), "state_file": str(directory / "epoch"),
            "probe_interval_ms": 500, "path_timeout_ms": 2000,
        }
        config.update(extra)
        return Daemon(node, self.ns[node], directory, config)

    def close(self) -> None:
        for d in self.daemons.values():
            with contextlib.suppress(Exception):
                d.stop(timeout=5)
        for name in self.ns.values():
            out = run("ip", "netns", "pids", name, check=False).stdout.split()
            for p in out:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(p), signal.SIGKILL)
            run("ip", "netns", "del", name, check=False)

    # ------------------------------------------------------------------ use
    def start_all(self) -> None:
        for key in ("s", "f", "c"):
            if key in self.daemons:
                self.daemons[key].start()

    def ping(self, count: int, interval: float = 0.2, target: str = "10.17.1.1",
             deadline: float | None = None) -> tuple[int, int]:
        """(sent, received) of a ping from the client namespace through the tunnel."""
        args = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "1"]
        if deadline is not None:
            args += ["-w", str(deadline)]
        out = ns_run(self.ns["c"], *args, target, check=False, timeout=count * interval + 30).stdout
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        assert m, out
        return int(m.group(1)), int(m.group(2))

    def wait_tunnel(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping(1, deadline=1)[1] == 1:
                return
        raise AssertionError("the tunnel did not come up:\n" + self.daemons["c"].text()[-2000:])


# --------------------------------------------------------------------------- attacker tools
class Sniffer:
    """Captures the UDP payloads of IPv4 datagrams seen on one interface (AF_PACKET), in a thread.

    A socket keeps the namespace it was made in, so it is created after entering the
    namespace (setns on the calling thread) and the thread comes back at once.
    """

    def __init__(self, ns: str, ifname: str, dport: int | None = None, sport_ip: str | None = None) -> None:
        self.sock = in_netns(ns, _packet_socket)
        self.ifname = ifname
        self.dport, self.sport_ip = dport, sport_ip
        self.captured: list[tuple[str, int, str, int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                frame, where = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            parsed = parse_udp(frame)
            if parsed is None or where[0] != self.ifname or where[2] == socket.PACKET_OUTGOING:
                continue
            src, _, _, dport, _ = parsed
            if self.dport is not None and dport != self.dport:
                continue
            if self.sport_ip is not None and src != self.sport_ip:
                continue
            self.captured.append(parsed)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _packet_socket() -> socket.socket:
    return socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))


def parse_udp(packet: bytes) -> tuple[str, int, str, int, bytes] | None:
    """(src ip, sport, dst ip, dport, payload) of an IPv4/UDP packet, or None."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
        return None
    ihl = (packet[0] & 0x0F) * 4
    sport, dport, length = struct.unpack_from("!HHH", packet, ihl)
    src, dst = socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20])
    return src, sport, dst, dport, packet[ihl + 8: ihl + length]


_NS_LOCK = threading.Lock()
_LIBC = ctypes.CDLL(None, use_errno=True)
_CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    if _LIBC.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def in_netns(ns: str, make: Any) -> Any:
    """Call ``make()`` with this thread inside namespace ``ns`` (sockets keep their namespace)."""
    with _NS_LOCK:
        home = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            _setns(target)
            return make()
        finally:
            _setns(home)
            os.close(home)
            os.close(target)


def raw_udp_socket(ns: str) -> socket.socket:
    """An IPPROTO_RAW socket in ``ns``: send IPv4/UDP with any source address."""
    return in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW))  # type: ignore[no-any-return]


def udp_socket(ns: str) -> socket.socket:
    return in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))  # type: ignore[no-any-return]


def spoofed(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet (UDP checksum 0 = none; the kernel fills the IP checksum)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return ip + udp


def send_spoofed(sock: socket.socket, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
    sock.sendto(spoofed(src, sport, dst, dport, payload), (dst, 0))


@contextlib.contextmanager
def sniffing(ns: str, ifname: str, **kw: Any) -> Iterator[Sniffer]:
    sniffer = Sniffer(ns, ifname, **kw)
    try:
        yield sniffer
    finally:
        sniffer.close()
