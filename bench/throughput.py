"""Throughput, latency and CPU cost of alpaca-tunnel against a raw veth, a minimal Python
forwarder and wireguard-go, all measured in one run (a script, not a test; needs root).

Usage: .venv/bin/python bench/throughput.py [--quick] [--only ROW[,ROW...]] [--profile] [--no-memory]

Every row builds its own namespaces (``alb-c`` client, ``alb-s`` server), joined by two veths
(``ua``/``sa`` 10.201.1.0/24 and ``ub``/``sb`` 10.201.2.0/24; the server also owns 10.201.9.1
on its loopback, reachable over both). MTU 1400 inside every tunnel. Per row:

* TCP Mbit/s of one stream (``iperf3 -t T -J``) and of four (``-P 4``), client -> server;
* ping RTT p50/p99 idle and during the single-stream transfer (``ping -i 0.02``: netns.PING_INTERVAL);
* CPU seconds per GB: utime + stime of the tunnel processes of both ends during the
  single-stream transfer, divided by the GB iperf3 sent;
* packets/s through the client's tunnel device (rx + tx) during that transfer, as the kernel
  counts them: with TUN offload a TCP super-packet of up to 64 KiB counts once;
* ratio of the single-stream figure to the reference forwarder's and to wireguard-go's.

Realtime rows (``-rt``): the tunnel processes of both ends run under SCHED_RR priority 10
(alpaca-tunnel's ``realtime_priority``, ``chrt -r 10`` for the others), so iperf3 on the same
two cores no longer delays them; their ratios are to reference-rt and wireguard-go-rt.

Lossy rows (``-lossy``): 5 % random loss on each path in each direction (nftables ``numgen``
drop at the receiving side) and 20 ms delay each way (``tc netem`` when the kernel has it,
else the userspace relay of bench/netns.py in the server namespace); TCP with ``-C cubic``;
plus the residual end-to-end loss of ``ping -c 500 -i 0.02``.

``--profile`` also samples the client daemon with py-spy during a transfer of the
alpaca-1path and alpaca-2path-dup rows and prints the functions where the time goes.
Memory rows come from bench/memory.py (skipped by ``--no-memory`` and in ``--only`` runs).
Writes bench/results/<timestamp>.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import netns
from netns import BenchError, Lab, nsrun, run

CLIENT_NS, SERVER_NS = "alb-c", "alb-s"
SERVER_ANY = "10.201.9.1"
RELAY_PORT_ALPACA, RELAY_PORT_WG = 20000, 20001
ALPACA_PORT, WG_PORT, REF_PORT = 10001, 51820, 30000
METRICS_PORT = 9586  # in each namespace's own loopback
LOSS_PCT, DELAY_MS = 5, 20
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # raw | reference | wireguard | alpaca
    paths: int = 1
    dup: bool = False
    lossy: bool = False
    note: str = ""
    #: TUN transmit queue, packets (alpaca-tunnel's default is 64; the kernel's is 500).
    txqueuelen: int = 64
    #: alpaca-tunnel's tun_offload (checksum/TSO offload and coalesced TUN writes).
    offload: bool = True
    #: alpaca-tunnel's udp_rcvbuf_kib (where the standing queue of a saturating flow forms).
    rcvbuf_kib: int = 208
    #: alpaca-tunnel's tun_read_ahead_kib (0: off).
    read_ahead_kib: int = 128
    #: alpaca-tunnel's udp_priority_lane (small datagrams on a socket of their own).
    lane: bool = True
    #: alpaca-tunnel's tun_priority_lane (small packets on a TUN queue of their own).
    tun_lane: bool = True
    #: SCHED_RR priority of the tunnel processes (0: normal scheduling): alpaca-tunnel's
    #: realtime_priority; ``chrt -r`` for the reference forwarder and wireguard-go.
    realtime: int = 0
    #: alpaca-tunnel's metrics endpoint on, and scraped once a second in both namespaces for
    #: the whole row (a monitored gateway; Prometheus' default interval is 15 s).
    scrape: bool = False


SCENARIOS = [
    Scenario("raw-veth", "raw", note="the ceiling"),
    Scenario("reference", "reference", note="bench/reference_forwarder.py"),
    Scenario("reference-q500", "reference", txqueuelen=500, note="kernel's default TUN queue"),
    Scenario("wireguard-go", "wireguard"),
    Scenario("alpaca-1path", "alpaca"),
    Scenario("alpaca-1path-nooffload", "alpaca", offload=False, note="tun_offload false"),
    Scenario("alpaca-1path-q128", "alpaca", txqueuelen=128, note="tun_txqueuelen 128"),
    Scenario("alpaca-1path-q256", "alpaca", txqueuelen=256, note="tun_txqueuelen 256"),
    Scenario("alpaca-1path-q500", "alpaca", txqueuelen=500, note="tun_txqueuelen 500"),
    Scenario("alpaca-1path-rb64", "alpaca", rcvbuf_kib=64, note="udp_rcvbuf_kib 64"),
    Scenario("alpaca-1path-rb2048", "alpaca", rcvbuf_kib=2048, note="udp_rcvbuf_kib 2048"),
    Scenario("alpaca-1path-ra0", "alpaca", read_ahead_kib=0, note="tun_read_ahead_kib 0 (off)"),
    Scenario("alpaca-1path-ra1024", "alpaca", read_ahead_kib=1024, note="tun_read_ahead_kib 1024"),
    Scenario("alpaca-1path-nolane", "alpaca", lane=False, note="udp_priority_lane false"),
    Scenario("alpaca-1path-notunlane", "alpaca", tun_lane=False, note="tun_priority_lane false"),
    Scenario("alpaca-1path-scraped", "alpaca", scrape=True, note="metrics on, scraped every second"),
    Scenario("reference-rt", "reference", realtime=10, note="chrt -r 10"),
    Scenario("wireguard-go-rt", "wireguard", realtime=10, note="chrt -r 10"),
    Scenario("alpaca-1path-rt", "alpaca", realtime=10, note="realtime_priority 10"),
    Scenario("alpaca-1path-rt-rb128", "alpaca", realtime=10, rcvbuf_kib=128,
             note="realtime_priority 10, udp_rcvbuf_kib 128"),
    Scenario("alpaca-1path-rt-rb64", "alpaca", realtime=10, rcvbuf_kib=64,
             note="realtime_priority 10, udp_rcvbuf_kib 64"),
    Scenario("alpaca-2path", "alpaca", paths=2),
    Scenario("alpaca-2path-dup", "alpaca", paths=2, dup=True),
    Scenario("wireguard-go-lossy", "wireguard", lossy=True),
    Scenario("alpaca-1path-lossy", "alpaca", lossy=True),
    Scenario("alpaca-2path-lossy", "alpaca", paths=2, lossy=True),
    Scenario("alpaca-2path-dup-lossy", "alpaca", paths=2, dup=True, lossy=True),
]
QUICK = ["raw-veth", "reference", "wireguard-go", "alpaca-1path", "alpaca-1path-nooffload",
         "alpaca-1path-ra0", "alpaca-1path-nolane", "alpaca-1path-notunlane", "reference-rt",
         "alpaca-1path-rt", "alpaca-2path-dup",
         "wireguard-go-lossy", "alpaca-2path-dup-lossy"]


@dataclass
class Setup:
    """What a running row exposes to the measurements."""

    dst: str  # tunnel address of the server side (iperf3 server, ping target)
    device: str  # client-side device whose packets are counted
    pids: list[int] = field(default_factory=list)  # tunnel processes (CPU accounting)
    daemon_pids: dict[str, int] = field(default_factory=dict)


# environment ----------------------------------------------------------------------------------
def ensure_wireguard() -> str | None:
    """None if wireguard-go and wg are usable (installing them if missing), else why not."""
    if shutil.which("wireguard-go") and shutil.which("wg"):
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "wireguard-go", "wireguard-tools"],
                       capture_output=True, env=env, timeout=300)
    if shutil.which("wireguard-go") and shutil.which("wg"):
        return None
    return "wireguard-go/wireguard-tools not installed and apt-get install failed"


def netem_works(lab: Lab) -> bool:
    ns = lab.add_ns("alb-probe")
    try:
        out = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root",
                              "netem", "delay", "1ms"], capture_output=True, check=False)
        return out.returncode == 0
    finally:
        lab._delete_ns(ns)
        lab.namespaces.remove(ns)


# topology ---------------------------------------------------------------------------------------
def build_underlay(lab: Lab) -> None:
    lab.add_ns(CLIENT_NS)
    lab.add_ns(SERVER_NS)
    lab.veth(CLIENT_NS, "ua", "10.201.1.2/24", SERVER_NS, "sa", "10.201.1.1/24")
    lab.veth(CLIENT_NS, "ub", "10.201.2.2/24", SERVER_NS, "sb", "10.201.2.1/24")
    nsrun(SERVER_NS, "ip", "addr", "add", f"{SERVER_ANY}/32", "dev", "lo")
    nsrun(CLIENT_NS, "ip", "route", "add", "default", "via", "10.201.1.1", "dev", "ua")
    nsrun(CLIENT_NS, "ip", "route", "add", f"{SERVER_ANY}/32", "via", "10.201.1.1", "dev", "ua")
    nsrun(CLIENT_NS, "ip", "route", "add", f"{SERVER_ANY}/32", "via", "10.201.2.1", "dev", "ub",
          "metric", "100")


def impair(lab: Lab, use_netem: bool) -> None:
    """5 % loss per path per direction at the receiving side; 20 ms each way. The rule sees
    only what comes in over a veth (``iifname != "lo"``): in relay mode the relay hands each
    datagram on over lo to the daemon's port, and was dropped a second time there (9.75 %
    instead of 5 % client -> server)."""
    ports = f"{{ {RELAY_PORT_ALPACA}, {RELAY_PORT_WG}, {ALPACA_PORT}, {WG_PORT} }}"
    for ns, match in ((SERVER_NS, "dport"), (CLIENT_NS, "sport")):
        nsrun(ns, "nft", "add", "table", "inet", "alb")
        nsrun(ns, "nft", "add", "chain", "inet", "alb", "impair", "{ type filter hook input priority -10; }")
        nsrun(ns, "nft", "add", "rule", "inet", "alb", "impair", "iifname", "!=", "lo", "udp", match, ports,
              "numgen", "random", "mod", "100", "<", str(LOSS_PCT), "counter", "drop")
    if use_netem:
        for ns, dev in ((CLIENT_NS, "ua"), (CLIENT_NS, "ub"), (SERVER_NS, "sa"), (SERVER_NS, "sb")):
            nsrun(ns, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", f"{DELAY_MS}ms")
        return
    relay = [sys.executable, str(Path(netns.__file__)), "relay", "--delay-ms", str(DELAY_MS)]
    lab.spawn(SERVER_NS, [*relay, "--listen", f"{SERVER_ANY}:{RELAY_PORT_ALPACA}",
                          "--to", f"127.0.0.1:{ALPACA_PORT}"], "relay-alpaca")
    lab.spawn(SERVER_NS, [*relay, "--listen", f"{SERVER_ANY}:{RELAY_PORT_WG}",
                          "--to", f"127.0.0.1:{WG_PORT}"], "relay-wg")
    time.sleep(0.3)


def server_endpoint(sc: Scenario, use_netem: bool, relay_port: int, direct_port: int) -> int:
    return relay_port if sc.lossy and not use_netem else direct_port


def chrt(sc: Scenario) -> list[str]:
    """Command prefix that runs a tunnel process under the row's realtime scheduling."""
    return ["chrt", "-r", str(sc.realtime)] if sc.realtime else []


def start_reference(lab: Lab, sc: Scenario) -> Setup:
    key = os.urandom(32).hex()
    script = str(Path(__file__).resolve().parent / "reference_forwarder.py")
    procs = []
    for ns, address, peer, name in ((SERVER_NS, "10.98.0.1/24", "10.201.1.2", "ref-s"),
                                    (CLIENT_NS, "10.98.0.2/24", "10.201.1.1", "ref-c")):
        procs.append(lab.spawn(ns, [*chrt(sc), sys.executable, script, "--tun", "albref0",
                                    "--address", address,
                                    "--listen", f"0.0.0.0:{REF_PORT}", "--peer", f"{peer}:{REF_PORT}",
                                    "--key", key, "--txqueuelen", str(sc.txqueuelen)], name))
    return Setup("10.98.0.1", "albref0", [p.pid for p in procs])


def start_wireguard(lab: Lab, sc: Scenario, use_netem: bool) -> Setup:
    keys = {}
    for side in ("s", "c"):
        private = run(["wg", "genkey"]).strip()
        public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True,
                                check=True).stdout.strip()
        path = lab.workdir / f"wg-{side}.key"
        path.write_text(private + "\n")
        path.chmod(0o600)
        keys[side] = (path, public)
    port = server_endpoint(sc, use_netem, RELAY_PORT_WG, WG_PORT)
    endpoint = f"{SERVER_ANY}:{port}" if sc.lossy else f"10.201.1.1:{WG_PORT}"
    pids = []
    for ns, side, other, address, extra in (
        (SERVER_NS, "s", "c", "10.97.0.1/24", []),
        (CLIENT_NS, "c", "s", "10.97.0.2/24", ["endpoint", endpoint, "persistent-keepalive", "25"]),
    ):
        dev = f"albwg-{side}"  # distinct: the UAPI socket /var/run/wireguard/<dev>.sock is shared
        proc = lab.spawn(ns, [*chrt(sc), "wireguard-go", "-f", dev], f"wg-{side}",
                         env={"LOG_LEVEL": "error"})
        pids.append(proc.pid)
        netns.wait_for(lambda ns=ns, dev=dev: nsrun(ns, "ip", "link", "show", dev, check=False) != "", 10,
                       f"wireguard-go device in {ns}")
        listen = ["listen-port", str(WG_PORT)] if side == "s" else []
        nsrun(ns, "wg", "set", dev, "private-key", str(keys[side][0]), *listen,
              "peer", keys[other][1], "allowed-ips", "10.97.0.0/24", *extra)
        nsrun(ns, "ip", "addr", "add", address, "dev", dev)
        nsrun(ns, "ip", "link", "set", dev, "mtu", "1400", "txqueuelen", str(sc.txqueuelen), "up")
    return Setup("10.97.0.1", "albwg-c", pids)


def alpaca_command() -> list[str]:
    script = netns.VENV_BIN / "alpaca-tunnel"
    return [str(script)] if script.exists() else [sys.executable, "-m", "alpaca"]


def start_alpaca(lab: Lab, sc: Scenario, use_netem: bool) -> Setup:
    keys = {"1.1": os.urandom(32).hex(), "16.1": os.urandom(32).hex()}
    port = server_endpoint(sc, use_netem, RELAY_PORT_ALPACA, ALPACA_PORT)
    dup = {"policy": "all", "copies": 1, "delay_ms": 10} if sc.dup else {"policy": "none"}
    # replies leave from the address the client talks to, over whichever veth they go back
    for dev, net in (("sa", "10.201.1.0/24"), ("sb", "10.201.2.0/24")):
        nsrun(SERVER_NS, "ip", "route", "replace", net, "dev", dev, "src", SERVER_ANY)
    ports = [{"name": "a", "port": 0, "interface": "ua"}]
    if sc.paths == 2:
        ports.append({"name": "b", "port": 0, "interface": "ub"})
    pids: dict[str, int] = {}
    for side, ns in (("server", SERVER_NS), ("client", CLIENT_NS)):
        directory = lab.workdir / f"alpaca-{side}"
        directory.mkdir(exist_ok=True)
        config: dict[str, Any] = {
            "mode": side, "group": "alb-bench", "net": "10.17", "mtu": 1400, "log_level": "warning",
            "secret_file": str(directory / "secrets.txt"), "tun_name": "alb0",
            "metrics": {"listen": f"127.0.0.1:{METRICS_PORT}"} if sc.scrape else False,
            "control_socket": str(directory / "control.sock"), "state_file": str(directory / "epoch"),
            "probe_interval_ms": 500, "path_timeout_ms": 2000, "dup": dup,
            "tun_txqueuelen": sc.txqueuelen, "tun_offload": sc.offload, "udp_rcvbuf_kib": sc.rcvbuf_kib,
            "tun_read_ahead_kib": sc.read_ahead_kib, "realtime_priority": sc.realtime,
            "udp_priority_lane": sc.lane, "tun_priority_lane": sc.tun_lane,
        }
        if side == "server":
            config.update(id="1.1", port=ALPACA_PORT)
            secrets = f"1.1 {keys['1.1']} null null null\n16.1 {keys['16.1']} null null null\n"
        else:
            config.update(id="16.1", gateway="1.1", ports=ports)
            secrets = f"1.1 {keys['1.1']} {SERVER_ANY} null {port}\n16.1 {keys['16.1']} null null null\n"
        (directory / "secrets.txt").write_text(secrets)
        (directory / "secrets.txt").chmod(0o600)
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        command = [*alpaca_command(), "-c", str(directory / "config.json"), "run"]
        proc = lab.spawn(ns, command, f"alpaca-{side}")
        pids[side] = proc.pid
        try:
            netns.wait_for(lambda ns=ns: nsrun(ns, "ip", "link", "show", "alb0", check=False) != "", 20,
                           f"alpaca {side} TUN device")
        except BenchError as exc:
            raise BenchError(f"{exc}; log:\n{lab.log_tail(f'alpaca-{side}')}") from None
    return Setup("10.17.1.1", "alb0", list(pids.values()), pids)


def wait_tunnel(setup: Setup, timeout: float = 25.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = nsrun(CLIENT_NS, "ping", "-n", "-c", "1", "-W", "1", setup.dst, check=False)
        if " 0% packet loss" in out:
            return
    raise BenchError(f"no ping through the tunnel to {setup.dst} within {timeout:g} s")


# measurements ------------------------------------------------------------------------------------
def iperf(setup: Setup, seconds: float, streams: int, cubic: bool) -> dict[str, Any]:
    args = ["iperf3", "-c", setup.dst, "-t", str(seconds), "-J", "--connect-timeout", "5000"]
    if streams > 1:
        args += ["-P", str(streams)]
    args += ["-C", "cubic" if cubic else "bbr"]  # bbr as the method; cubic shows loss
    for attempt in range(4):
        out = nsrun(CLIENT_NS, *args, check=False, timeout=seconds + 60)
        try:
            data = json.loads(out)
        except json.JSONDecodeError:
            return {"error": out[-300:] or "no output"}
        if "busy" not in data.get("error", "") or attempt == 3:
            break
        time.sleep(3)  # the server still ends the previous test (its last segments were lost)
    if "error" in data:
        return {"error": data["error"]}
    end = data["end"]
    return {"mbit": end["sum_received"]["bits_per_second"] / 1e6, "bytes_sent": end["sum_sent"]["bytes"],
            "bytes_received": end["sum_received"]["bytes"],
            "retransmits": end["sum_sent"].get("retransmits"), "seconds": end["sum_received"]["seconds"]}


def measure(lab: Lab, sc: Scenario, setup: Setup, quick: bool) -> dict[str, Any]:
    seconds = 3 if quick else 5
    idle, _ = netns.ping_rtts(CLIENT_NS, setup.dst, 50 if quick else 200)
    row: dict[str, Any] = {"idle_rtt_ms": netns.summarize_rtts(idle)}
    cpu0 = sum(netns.cpu_seconds(pid) for pid in setup.pids)
    pk0 = netns.tcp_segments(CLIENT_NS)
    under0 = {dev: netns.link_packets(CLIENT_NS, dev) for dev in ("ua", "ub")}
    t0 = time.monotonic()
    with netns.background_ping(lab, CLIENT_NS, setup.dst) as loaded:
        single = iperf(setup, seconds, 1, sc.lossy)
    elapsed = time.monotonic() - t0
    cpu = sum(netns.cpu_seconds(pid) for pid in setup.pids) - cpu0
    pk = netns.tcp_segments(CLIENT_NS) - pk0
    row["underlay_packets"] = {dev: netns.link_packets(CLIENT_NS, dev) - n for dev, n in under0.items()}
    row["single"] = single
    row["loaded_rtt_ms"] = netns.summarize_rtts(loaded.rtts, loaded.sent)
    row["pps"] = pk / single.get("seconds", elapsed) if "mbit" in single else None
    row["elapsed_s"] = round(elapsed, 2)
    row["cpu_s"] = cpu
    row["cpu_s_per_gb"] = (cpu / (single["bytes_sent"] / 1e9)
                           if setup.pids and single.get("bytes_sent") else None)
    row["parallel4"] = iperf(setup, seconds, 4, sc.lossy)
    if sc.lossy:
        _, loss = netns.ping_rtts(CLIENT_NS, setup.dst, 200 if quick else 500)
        row["residual_loss_pct"] = loss
    return row


def run_row(sc: Scenario, workdir: Path, quick: bool, use_netem: bool, wg_problem: str | None,
            profile: bool) -> dict[str, Any]:
    if sc.kind == "wireguard" and wg_problem:
        return {"skipped": wg_problem}
    rowdir = workdir / sc.name
    rowdir.mkdir()
    with Lab(rowdir) as lab:
        build_underlay(lab)
        if sc.lossy:
            impair(lab, use_netem)
        if sc.kind == "raw":
            setup = Setup("10.201.1.1", "ua")
        elif sc.kind == "reference":
            setup = start_reference(lab, sc)
        elif sc.kind == "wireguard":
            setup = start_wireguard(lab, sc, use_netem)
        else:
            setup = start_alpaca(lab, sc, use_netem)
        lab.spawn(SERVER_NS, ["iperf3", "-s"], "iperf3-server")
        time.sleep(0.3)
        try:
            wait_tunnel(setup)
        except BenchError as exc:
            names = ("alpaca-client", "alpaca-server", "wg-c", "ref-c")
            logs = {name: lab.log_tail(name) for name in names}
            raise BenchError(f"{exc}\n{json.dumps(logs, indent=1)}") from None
        if sc.paths == 2:
            time.sleep(1.5)  # let the second path's probes come back
        scraped = (SERVER_NS, CLIENT_NS) if sc.scrape else ()
        scrapers = [lab.spawn(ns, [sys.executable, str(Path(__file__).resolve().parent / "netns.py"),
                                   "scrape", "--url", f"http://127.0.0.1:{METRICS_PORT}/metrics"],
                              f"scrape-{ns}") for ns in scraped]
        row = measure(lab, sc, setup, quick)
        for proc in scrapers:
            lab.stop(proc)
        if scraped:
            row["scrape"] = {ns: netns.scrape_summary(rowdir / f"scrape-{ns}.log") for ns in scraped}
        if profile and sc.kind == "alpaca" and not sc.lossy:
            row["profile"] = profile_daemon(lab, sc, setup, rowdir)
        return row


# profile -------------------------------------------------------------------------------------------
def classify(frame: str) -> str:
    """A coarse bucket for a leaf frame ``Class.func (file:line)`` of py-spy's raw output."""
    qualname, _, where = frame.partition(" (")
    func = qualname.rsplit(".", 1)[-1]
    if "gevent/" in where and func in ("run", "switch", "wait", "_wait", "get"):
        return "gevent hub (event loop, incl. waiting)"
    if func in ("read", "read_batch", "recv", "recvfrom", "recvmsg", "recv_into", "readinto"):
        return "syscalls: TUN read / UDP receive"
    if func in ("write", "_put", "send", "sendto", "sendmsg", "sendall"):
        return "syscalls: TUN write / UDP send"
    if "offload" in where:
        return "TUN offload (split, coalesce)"
    if "crypto" in where:
        return "crypto (AES-GCM seal/open)"
    if "header" in where:
        return "header encode/decode"
    if "replay" in where:
        return "replay window"
    if "/core/" in where:
        return "engine (parse, route, dispatch, dup)"
    if "/io/" in where or "gevent/" in where:
        return "dataplane loop and timers"
    return "other"


def profile_daemon(lab: Lab, sc: Scenario, setup: Setup, rowdir: Path) -> dict[str, Any]:
    """py-spy ``record`` (raw collapsed stacks, 250 Hz, 5 s) of each daemon during a transfer."""
    spy = netns.VENV_BIN / "py-spy"
    if not spy.exists():
        return {"skipped": "py-spy not installed (.venv/bin/pip install py-spy)"}
    result: dict[str, Any] = {}
    for side in ("client", "server"):
        pid = setup.daemon_pids[side]
        raw = rowdir / f"profile-{side}.txt"
        with netns.background_ping(lab, CLIENT_NS, setup.dst):
            iperf_proc = subprocess.Popen(["ip", "netns", "exec", CLIENT_NS, "iperf3", "-c", setup.dst,
                                           "-t", "9"], stdout=subprocess.DEVNULL, start_new_session=True)
            time.sleep(1.5)
            subprocess.run([str(spy), "record", "-d", "5", "-r", "250", "-p", str(pid), "-f", "raw",
                            "-o", str(raw), "--nonblocking"], capture_output=True, timeout=60)
            iperf_proc.wait(timeout=30)
        result[side] = summarize_profile(raw)
        if raw.exists():
            RESULTS.mkdir(exist_ok=True)
            shutil.copy(raw, RESULTS / f"profile-{time.strftime('%Y%m%d-%H%M%S')}-{sc.name}-{side}.txt")
    return result


def summarize_profile(raw: Path) -> dict[str, Any]:
    if not raw.exists():
        return {"error": "py-spy wrote nothing"}
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    buckets: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += count
        leaf = frames[-1]
        own[short(leaf)] += count
        buckets[classify(leaf)] += count
        for frame in {short(f) for f in frames}:
            total[frame] += count

    def pct(counter: collections.Counter[str], n: int) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(samples, 1), 1)) for k, v in counter.most_common(n)]

    return {"samples": samples, "self": pct(own, 15), "total": pct(total, 25), "buckets": pct(buckets, 10)}


def short(frame: str) -> str:
    func, _, where = frame.partition(" (")
    path = where.rstrip(")")
    for marker in ("/alpaca/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    path = path.rsplit(":", 1)[0]
    return f"{func} ({path})"


# report -------------------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def baselines(rows: dict[str, dict[str, Any]], name: str) -> tuple[float | None, float | None]:
    """Single-stream Mbit/s of the reference and wireguard-go rows a row is compared with:
    the lossy rows with wireguard-go-lossy (no reference), realtime rows with the realtime
    ones, the rest with the plain ones."""
    def mbit(row: str) -> float | None:
        value = rows.get(row, {}).get("single", {}).get("mbit")
        return float(value) if value else None

    sc = next(s for s in SCENARIOS if s.name == name)
    if sc.lossy:
        return None, mbit("wireguard-go-lossy")
    if sc.realtime:
        return mbit("reference-rt"), mbit("wireguard-go-rt")
    return mbit("reference"), mbit("wireguard-go")


def rtt_cell(rtt: dict[str, Any]) -> str:
    """p50 / p99 ms, with the pings that got no answer (they count as infinitely late)."""
    p99 = "lost" if rtt.get("p99") is None and rtt.get("lost") else fmt(rtt["p99"], 2)
    lost = f" ({rtt['lost']} of {rtt['n'] + rtt['lost']} lost)" if rtt.get("lost") else ""
    return f"{fmt(rtt['p50'], 2)} / {p99}{lost}"


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = ("| row | 1 stream Mbit/s | -P 4 Mbit/s | idle RTT p50/p99 ms | loaded RTT p50/p99 ms | "
            "CPU s/GB | TCP seg/s | × reference | × wireguard-go | residual loss % |")
    lines = [head, "|" + "---|" * 10]
    for name, row in rows.items():
        if "skipped" in row or "error" in row:
            lines.append(f"| {name} | {row.get('skipped') or row.get('error')} |" + " |" * 8)
            continue
        single = row["single"].get("mbit")
        par = row["parallel4"].get("mbit")
        ref, wg = baselines(rows, name)
        idle, loaded = row["idle_rtt_ms"], row["loaded_rtt_ms"]
        x_ref = single / ref if single and ref else None
        x_wg = single / wg if single and wg else None
        lines.append(
            f"| {name} | {fmt(single, 1)} | {fmt(par, 1)} | {fmt(idle['p50'], 3)} / {fmt(idle['p99'], 3)} | "
            f"{rtt_cell(loaded)} | {fmt(row['cpu_s_per_gb'], 1)} | "
            f"{fmt(row['pps'])} | {fmt(x_ref, 2)} | {fmt(x_wg, 2)} | "
            f"{fmt(row.get('residual_loss_pct'), 1)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 s transfers, fewer rows")
    parser.add_argument("--only", help="comma-separated rows: " + ", ".join(s.name for s in SCENARIOS))
    parser.add_argument("--profile", action="store_true", help="py-spy the daemons of the alpaca rows")
    parser.add_argument("--no-memory", action="store_true", help="skip bench/memory.py")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("throughput.py needs root (network namespaces)", file=sys.stderr)
        return 2
    wanted = [s for s in SCENARIOS if (not args.quick or s.name in QUICK)]
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {s.name for s in SCENARIOS}
        if unknown:
            parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
        wanted = [s for s in SCENARIOS if s.name in names]
    wg_problem = ensure_wireguard() if any(s.kind == "wireguard" for s in wanted) else None
    workdir = Path(tempfile.mkdtemp(prefix="alb-bench-"))
    rows: dict[str, dict[str, Any]] = {}
    with Lab(workdir) as lab:
        use_netem = netem_works(lab)
    delay_how = "tc netem" if use_netem else "userspace relay (bench/netns.py), no netem in this kernel"
    print(f"delay: {delay_how}; loss: nftables numgen {LOSS_PCT} % per path per direction")
    try:
        for sc in wanted:
            started = time.monotonic()
            try:
                rows[sc.name] = run_row(sc, workdir, args.quick, use_netem, wg_problem, args.profile)
            except (BenchError, subprocess.TimeoutExpired) as exc:  # the row fails, not the run
                rows[sc.name] = {"error": str(exc).splitlines()[0]}
                print(f"{sc.name}: FAILED {exc}", file=sys.stderr)
            single = rows[sc.name].get("single", {}).get("mbit")
            print(f"{sc.name}: {fmt(single, 1)} Mbit/s ({time.monotonic() - started:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("interrupted: namespaces and processes cleaned up", file=sys.stderr)
        with contextlib.suppress(OSError):
            shutil.rmtree(workdir)  # (keys of the tunnels)
        return 130
    memory: dict[str, Any] = {}
    if not args.no_memory and not args.only:
        import memory as memory_bench

        try:
            memory = memory_bench.measure_all([1000, 10000], workdir / "memory", traffic=True)
        except (BenchError, KeyboardInterrupt) as exc:
            memory = {"error": str(exc)}
    print()
    print(table(rows))
    for name, row in rows.items():
        for side, prof in (row.get("profile") or {}).items():
            if isinstance(prof, dict) and "buckets" in prof:
                print(f"\nprofile {name} {side} ({prof['samples']} samples): buckets {prof['buckets']}")
                for func, share in prof["self"][:12]:
                    print(f"  {share:5.1f} %  {func}")
    if memory:
        print(f"\nmemory: {json.dumps(memory)}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"quick": args.quick, "delay": delay_how, "loss_pct": LOSS_PCT,
                               "delay_ms_each_way": DELAY_MS, "rows": rows, "memory": memory,
                               "uname": os.uname().release, "cpus": os.cpu_count()}, indent=1))
    print(f"\nwrote {out}")
    with contextlib.suppress(OSError):
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
