"""Shared helpers of the benchmark scripts: namespaces, processes, measurements, delay relay.

Everything a benchmark creates is named with the prefix ``alb-`` (namespaces) and is
registered with a :class:`Lab`, whose ``close()`` stops every process it started (by pid) and
deletes every namespace it created, also on Ctrl-C or SIGTERM (``with Lab() as lab:``).

Run as a script, this module is the userspace delay line used where ``tc netem`` is missing::

    python bench/netns.py relay --listen 10.201.9.1:20000 --to 127.0.0.1:10001 --delay-ms 20

It forwards every datagram arriving on ``--listen`` to ``--to`` from a socket of its own per
client address (so each client address and port stays a distinct path), and every answer back
to that client, each datagram held in a heap until it is ``--delay-ms`` old. One process,
``select`` only, queue bounded by ``--max-queue`` datagrams (more are dropped).

``python bench/netns.py scrape --url URL --interval 1`` fetches a metrics endpoint as
Prometheus would, once a second, and logs each scrape's duration and size.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import json
import math
import os
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

PREFIX = "alb-"
ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Seconds between the pings of every measurement. Not 10 ms: iputils ping spins
#: (``sched_yield`` and a non-blocking ``recvmsg`` in a loop) until its next send whenever no
#: ping is in flight and the next send is at most one 100 Hz tick (10 ms) away. At a 10 ms
#: interval that is after every answer that took 1 ms or more: through a saturated tunnel the
#: probe itself took 2.1-2.4 s of CPU in 8 s, a quarter of one of the machine's two CPUs,
#: taken from the tunnel it measured. At 20 ms it spins only for answers later than 10 ms.
PING_INTERVAL = 0.02


class BenchError(RuntimeError):
    """A benchmark step failed (the message says which)."""


def run(args: Sequence[str], *, check: bool = True, timeout: float = 60.0) -> str:
    """Run a command, return its stdout; raise BenchError with its stderr if ``check`` fails."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise BenchError(f"{' '.join(args)} -> {proc.returncode}: {detail}")
    return proc.stdout


def nsrun(ns: str, *args: str, check: bool = True, timeout: float = 60.0) -> str:
    return run(["ip", "netns", "exec", ns, *args], check=check, timeout=timeout)


def stale_namespaces() -> list[str]:
    out = run(["ip", "-j", "netns", "list"], check=False) or "[]"
    return [entry["name"] for entry in json.loads(out or "[]") if entry["name"].startswith(PREFIX)]


def netns_pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split()]


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) in seconds; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB (0 if unknown)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def link_packets(ns: str, dev: str) -> int:
    """rx + tx packets of ``dev`` in ``ns``."""
    out = run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev], check=False)
    if not out:
        return 0
    stats = json.loads(out)[0]["stats64"]
    return int(stats["rx"]["packets"]) + int(stats["tx"]["packets"])


def tcp_segments(ns: str) -> int:
    """TCP segments sent + received in ``ns`` (/proc/net/snmp OutSegs + InSegs): counted per
    segment whatever the TUN devices batch (with offload one TUN read carries up to 45)."""
    out = nsrun(ns, "cat", "/proc/net/snmp", check=False)
    rows = [line.split() for line in out.splitlines() if line.startswith("Tcp:")]
    if len(rows) < 2:
        return 0
    fields = dict(zip(rows[0][1:], rows[1][1:], strict=False))
    return int(fields.get("OutSegs", 0)) + int(fields.get("InSegs", 0))


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Lab:
    """Namespaces and processes of one benchmark run; ``close()`` undoes all of it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._old_term: Any = None

    def __enter__(self) -> Lab:
        self._old_term = signal.signal(signal.SIGTERM, self._on_term)
        for ns in stale_namespaces():  # left over by an earlier run that was killed hard
            self._delete_ns(ns)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
        signal.signal(signal.SIGTERM, self._old_term or signal.SIG_DFL)

    @staticmethod
    def _on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # namespaces -------------------------------------------------------------------------------
    def add_ns(self, name: str) -> str:
        assert name.startswith(PREFIX)
        if name in stale_namespaces():
            self._delete_ns(name)
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        nsrun(name, "ip", "link", "set", "lo", "up")
        for key in ("net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                    "net.ipv4.ip_forward=1"):
            nsrun(name, "sysctl", "-qw", key)
        return name

    def veth(self, ns_a: str, dev_a: str, addr_a: str, ns_b: str, dev_b: str, addr_b: str) -> None:
        """A veth pair ``dev_a``@ns_a -- ``dev_b``@ns_b with the given ``a.b.c.d/len`` addresses."""
        tmp_a, tmp_b = f"albt{os.getpid() % 10000}{dev_a}"[:15], f"albu{os.getpid() % 10000}{dev_b}"[:15]
        run(["ip", "link", "add", tmp_a, "type", "veth", "peer", "name", tmp_b])
        run(["ip", "link", "set", tmp_a, "netns", ns_a, "name", dev_a])
        run(["ip", "link", "set", tmp_b, "netns", ns_b, "name", dev_b])
        for ns, dev, addr in ((ns_a, dev_a, addr_a), (ns_b, dev_b, addr_b)):
            nsrun(ns, "ip", "addr", "add", addr, "dev", dev)
            nsrun(ns, "ip", "link", "set", dev, "up")

    def _delete_ns(self, name: str) -> None:
        for pid in netns_pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        run(["ip", "netns", "del", name], check=False)

    # processes --------------------------------------------------------------------------------
    def spawn(self, ns: str | None, args: Sequence[str], log_name: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``args`` (inside ``ns`` unless None) in its own session, output to a log file."""
        cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
        log = open(self.workdir / f"{log_name}.log", "ab")  # noqa: SIM115 - kept for the child
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=full_env)
        log.close()
        self.procs.append(proc)
        return proc

    def log_tail(self, log_name: str, lines: int = 12) -> str:
        with contextlib.suppress(OSError):
            text = (self.workdir / f"{log_name}.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return "(no log)"

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM the process (its session), then SIGKILL after ``grace`` seconds."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        while self.procs:
            self.stop(self.procs[-1], grace=3.0)
        while self.namespaces:
            self._delete_ns(self.namespaces.pop())


# measurements --------------------------------------------------------------------------------
def ping_rtts(ns: str, dst: str, count: int, interval: float = PING_INTERVAL, timeout: float = 120.0,
              size: int = 56) -> tuple[list[float], float]:
    """(RTTs in ms of the answered pings, loss %) of ``ping -c count -i interval``."""
    out = nsrun(ns, "ping", "-n", "-c", str(count), "-i", str(interval),
                "-s", str(size), "-W", "1", dst, check=False, timeout=timeout)
    rtts = [float(part.split("=")[1]) for line in out.splitlines() for part in line.split()
            if part.startswith("time=")]
    loss = float("nan")
    for line in out.splitlines():
        if "packet loss" in line:
            loss = float(line.split("%")[0].split()[-1])
    return rtts, loss


@dataclasses.dataclass
class PingRecord:
    """What a background ping saw: the RTTs (ms) of the answered pings, and how many it sent."""

    rtts: list[float] = dataclasses.field(default_factory=list)
    sent: int = 0


@contextlib.contextmanager
def background_ping(lab: Lab, ns: str, dst: str, interval: float = PING_INTERVAL) -> Iterator[PingRecord]:
    """Ping ``dst`` every ``interval`` seconds while the block runs; yields its record."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-i", str(interval), "-W", "1", dst],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    record = PingRecord()
    try:
        yield record
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        record.rtts.extend(float(part.split("=")[1]) for line in out.splitlines() for part in line.split()
                           if part.startswith("time="))
        for line in out.splitlines():
            if "packets transmitted" in line:
                record.sent = int(line.split()[0])


def summarize_rtts(rtts: Sequence[float], sent: int | None = None) -> dict[str, float | int | None]:
    """p50/p99/mean of ``rtts`` (ms). Given ``sent``, the pings that got no answer count as
    infinitely late in the percentiles (a row that drops pings must not look faster for it;
    a p99 that falls on one is None), and ``lost`` says how many, the last one sent (still on
    its way when ping stopped) not counted."""
    lost = max(0, sent - len(rtts) - 1) if sent is not None else 0
    values = [*rtts, *([math.inf] * lost)]

    def finite(q: float) -> float | None:
        value = percentile(values, q)
        return None if math.isinf(value) else value

    return {"p50": finite(50), "p99": finite(99), "mean": statistics.fmean(rtts) if rtts else float("nan"),
            "n": len(rtts), "lost": lost}


# delay relay -----------------------------------------------------------------------------------
def _addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def relay_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="netns.py relay")
    parser.add_argument("--listen", type=_addr, required=True)
    parser.add_argument("--to", type=_addr, required=True)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--max-queue", type=int, default=20000)
    args = parser.parse_args(argv)
    delay = args.delay_ms / 1000
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(args.listen)
    front.setblocking(False)
    upstream: dict[tuple[str, int], socket.socket] = {}  # client address -> its own socket
    client_of: dict[int, tuple[str, int]] = {}  # upstream fd -> client address
    heap: list[tuple[float, int, int, bytes, tuple[str, int]]] = []  # due, seq, fd, data, to
    by_fd: dict[int, socket.socket] = {front.fileno(): front}
    seq = dropped = 0

    while True:
        now = time.monotonic()
        timeout = max(0.0, heap[0][0] - now) if heap else 1.0
        readable, _, _ = select.select(list(by_fd.values()), [], [], timeout)
        now = time.monotonic()
        for sock in readable:
            for _ in range(64):
                try:
                    data, src = sock.recvfrom(65535)
                except BlockingIOError:
                    break
                if len(heap) >= args.max_queue:
                    dropped += 1
                    continue
                seq += 1
                if sock is front:
                    up = upstream.get(src)
                    if up is None:
                        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                        up.bind(("127.0.0.1", 0))
                        up.setblocking(False)
                        upstream[src] = up
                        client_of[up.fileno()] = src
                        by_fd[up.fileno()] = up
                    heapq.heappush(heap, (now + delay, seq, up.fileno(), data, args.to))
                else:
                    heapq.heappush(heap, (now + delay, seq, front.fileno(), data, client_of[sock.fileno()]))
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, fd, data, to = heapq.heappop(heap)
            with contextlib.suppress(OSError):
                by_fd[fd].sendto(data, to)


# metrics scraper ---------------------------------------------------------------------------------
def scrape_main(argv: Sequence[str]) -> int:
    """Fetch ``--url`` every ``--interval`` seconds until SIGTERM, as Prometheus would; one line
    per scrape on stdout: ``scrape <ms> <bytes>``, or ``failed <reason>``."""
    parser = argparse.ArgumentParser(prog="netns.py scrape")
    parser.add_argument("--url", required=True)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(args.url, timeout=5) as response:
                size = len(response.read())
            print(f"scrape {(time.monotonic() - t0) * 1000:.2f} {size}", flush=True)
        except OSError as exc:
            print(f"failed {exc}", flush=True)
        time.sleep(max(0.0, args.interval - (time.monotonic() - t0)))


def scrape_summary(log: Path) -> dict[str, Any]:
    """Count, median and maximum duration (ms) and size of the scrapes a scraper logged."""
    ms, sizes, failed = [], [], 0
    with contextlib.suppress(OSError):
        for line in log.read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["scrape"] and len(parts) == 3:
                ms.append(float(parts[1]))
                sizes.append(int(parts[2]))
            elif parts[:1] == ["failed"]:
                failed += 1
    return {"scrapes": len(ms), "failed": failed, "ms_p50": percentile(ms, 50) if ms else None,
            "ms_max": max(ms, default=None), "bytes": max(sizes, default=None)}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("relay", "scrape"):
        sys.exit((relay_main if sys.argv[1] == "relay" else scrape_main)(sys.argv[2:]))
    print(__doc__)
