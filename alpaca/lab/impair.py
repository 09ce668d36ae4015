"""Link impairment: loss, delay, jitter and rate on one lab link, in both directions.

- **Loss** is dropped at the *receiving* side, inside each endpoint's namespace: table
  ``inet alpaca_lab_impair``, chain ``loss`` (prerouting, priority -300), one rule per
  impaired interface: ``iifname X numgen random mod 1000 < 10*N drop`` (0.1 % steps). A drop
  on the sending side would be visible to the sender, which the wire never is.
- **Rate** is ``tc qdisc replace dev X root tbf`` on each endpoint's egress.
- **Delay/jitter** use ``tc netem`` on egress when the kernel has it (probed once). Otherwise
  each endpoint runs :mod:`alpaca.lab.delayrelay` and the chain ``delay`` (prerouting,
  priority mangle) diverts every UDP datagram arriving on the interface to it with
  ``tproxy``. Only UDP is delayed then (the tunnel is UDP; ICMP is not), so measure with a
  UDP echo, not ping.

The wanted state of every link lives in ``STATE_DIR/impair.json``; each change rebuilds the
table of the namespaces concerned from it, so applying the same impairment twice is harmless
and ``clear`` removes everything (rules, qdiscs, relay processes). Callers: the lab CLI, demo
and tests (root).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from alpaca.lab import netns
from alpaca.lab.topology import NS_PREFIX, Endpoint, Impairment, Link, Topology

log = logging.getLogger(__name__)

TABLE = "alpaca_lab_impair"
RELAY_PORT_BASE = 47000


@functools.cache
def netem_available() -> bool:
    """Whether ``tc qdisc add ... netem`` works here (tried once in a scratch namespace)."""
    ns = f"{NS_PREFIX}netem-probe"
    netns.ensure_namespace(ns)
    try:
        result = netns.exec_in(ns, ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                               check=False)
        return result.returncode == 0
    finally:
        netns.delete_namespace(ns)


def _load(state_dir: Path) -> dict[str, Impairment]:
    path = state_dir / "impair.json"
    if not path.exists():
        return {}
    return {name: Impairment(**values) for name, values in json.loads(path.read_text()).items()}


def _save(state_dir: Path, wanted: dict[str, Impairment]) -> None:
    path = state_dir / "impair.json"
    state_dir.mkdir(parents=True, exist_ok=True)
    data = {name: dataclasses.asdict(imp) for name, imp in wanted.items() if not imp.is_clear}
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def current(state_dir: Path) -> dict[str, Impairment]:
    """The impairment of every impaired link, by link name."""
    return _load(state_dir)


def impair(topology: Topology, state_dir: Path, link_name: str, *, loss_pct: float = 0.0,
           delay_ms: float = 0.0, jitter_ms: float = 0.0, rate_mbit: float = 0.0,
           clear: bool = False) -> Impairment:
    """Set (replace) or clear the impairment of one link; returns what is now in effect."""
    link = topology.link(link_name)
    wanted = _load(state_dir)
    imp = Impairment() if clear else Impairment(loss_pct, delay_ms, jitter_ms, rate_mbit)
    if jitter_ms and not delay_ms:
        raise ValueError("jitter needs a delay (give --delay as well)")
    wanted[link.name] = imp
    _save(state_dir, wanted)
    apply_link(topology, state_dir, link, imp)
    nodes = {ep.node for ep in link.endpoints}
    for name in nodes:
        _write_table(topology, topology.node(name).namespace, name, wanted)
    log.info("link impaired link=%s loss_pct=%g delay_ms=%g jitter_ms=%g rate_mbit=%g",
             link.name, imp.loss_pct, imp.delay_ms, imp.jitter_ms, imp.rate_mbit)
    return imp


def clear_all(topology: Topology, state_dir: Path) -> None:
    """Remove every impairment (used by ``lab down`` before namespaces go away)."""
    for name in list(_load(state_dir)):
        with contextlib.suppress(Exception):
            impair(topology, state_dir, name, clear=True)
    for pidfile in (state_dir / "relays").glob("*.pid") if (state_dir / "relays").exists() else []:
        _stop_relay(pidfile)


def relay_port(topology: Topology, link: Link, ep: Endpoint) -> int:
    return RELAY_PORT_BASE + 2 * topology.links.index(link) + (0 if ep is link.a else 1)


def apply_link(topology: Topology, state_dir: Path, link: Link, imp: Impairment) -> None:
    """qdiscs and relay processes of both endpoints (nftables comes from _write_table)."""
    use_netem = bool(imp.delay_ms) and netem_available()
    for ep in link.endpoints:
        ns = topology.node(ep.node).namespace
        netns.exec_in(ns, ["tc", "qdisc", "del", "dev", ep.ifname, "root"], check=False)
        if use_netem:
            cmd = ["tc", "qdisc", "replace", "dev", ep.ifname, "root", "netem",
                   "delay", f"{imp.delay_ms}ms"]
            cmd += [f"{imp.jitter_ms}ms"] if imp.jitter_ms else []
            cmd += ["rate", f"{imp.rate_mbit}mbit"] if imp.rate_mbit else []
            netns.exec_in(ns, cmd)
        elif imp.rate_mbit:
            burst = max(15000, int(imp.rate_mbit * 1e6 / 8 / 100))  # 10 ms of traffic
            netns.exec_in(ns, ["tc", "qdisc", "replace", "dev", ep.ifname, "root", "tbf",
                               "rate", f"{imp.rate_mbit}mbit", "burst", str(burst), "latency", "50ms"])
        pidfile = state_dir / "relays" / f"{link.name}-{ep.node}.pid"
        _stop_relay(pidfile)
        if imp.delay_ms and not use_netem:
            _start_relay(ns, pidfile, relay_port(topology, link, ep), imp, state_dir)


def _start_relay(ns: str, pidfile: Path, port: int, imp: Impairment, state_dir: Path) -> None:
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    logfile = pidfile.with_suffix(".log")
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "alpaca.lab.delayrelay",
           "--port", str(port), "--delay-ms", str(imp.delay_ms), "--jitter-ms", str(imp.jitter_ms)]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    with open(logfile, "ab") as log_out:
        proc = subprocess.Popen(cmd, stdout=log_out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env)
    pidfile.write_text(f"{proc.pid}\n")


def _stop_relay(pidfile: Path) -> None:
    if not pidfile.exists():
        return
    with contextlib.suppress(ValueError, ProcessLookupError):
        os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(int(pidfile.read_text().strip()), 0)
    pidfile.unlink(missing_ok=True)


def nft_script(rules: list[tuple[str, Impairment, int]]) -> str:
    """The whole ``inet alpaca_lab_impair`` table for one namespace (pure).

    Args:
        rules: (ifname, impairment, relay port or 0 when netem or no delay) per interface.
    """
    loss = [f'    iifname "{ifname}" numgen random mod 1000 < {round(imp.loss_pct * 10)} counter drop'
            for ifname, imp, _ in rules if imp.loss_pct]
    delay = [f'    iifname "{ifname}" meta l4proto udp tproxy ip to :{port}'
             for ifname, _, port in rules if port]
    lines = [f"table inet {TABLE} {{}}", f"delete table inet {TABLE}"]
    if loss or delay:
        lines += [f"table inet {TABLE} {{",
                  "  chain loss {", "    type filter hook prerouting priority -300;", *loss, "  }",
                  "  chain delay {", "    type filter hook prerouting priority mangle;", *delay, "  }",
                  "}"]
    return "\n".join(lines) + "\n"


def _write_table(topology: Topology, ns: str, node: str, wanted: dict[str, Impairment]) -> None:
    rules = []
    for link in topology.links:
        imp = wanted.get(link.name)
        if imp is None or imp.is_clear:
            continue
        for ep in link.endpoints:
            if ep.node == node:
                port = relay_port(topology, link, ep) if imp.delay_ms and not netem_available() else 0
                rules.append((ep.ifname, imp, port))
    netns.exec_in(ns, ["nft", "-f", "-"], input_text=nft_script(rules))
