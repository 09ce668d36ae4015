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

Every figure is checked before anything changes (:func:`checked_impairment`, ranges in
:data:`alpaca.lab.topology.IMPAIR_LIMITS`), and so is the link name.

``STATE_DIR/impair.json`` records, per link, the impairment fully in place, and nothing else:
a change is applied first (:func:`apply`) and recorded after. If applying fails, the link is
cleared again (its old impairment was already taken down) and left out of the record, and the
error says whether the clearing worked. Each change rebuilds the nftables table of the
namespaces concerned from the record plus the change, so applying the same impairment twice
is harmless. Cleanup never depends on the record: ``clear`` deletes the link's qdiscs on both
ends, stops the relays named by ``STATE_DIR/relays/*.pid`` (written as each relay starts) and
rebuilds the tables without the link; :func:`clear_all` (``lab down``) also stops every relay
of that directory, and the namespaces it deletes take every qdisc and table with them.
Callers: the lab CLI, demo and tests (root).
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
from collections.abc import Callable, Mapping
from pathlib import Path

from alpaca.lab import netns
from alpaca.lab.jsonshape import show_value
from alpaca.lab.nodes import LabError, read_pid_file, write_pid_file, write_record
from alpaca.lab.topology import (
    IMPAIR_LIMITS,
    NS_PREFIX,
    Endpoint,
    Impairment,
    Link,
    Topology,
    impairment_problems,
)

log = logging.getLogger(__name__)

TABLE = "alpaca_lab_impair"
RELAY_PORT_BASE = 47000
#: How the figures are named in errors of :func:`impair` (its keyword arguments).
KEYWORDS = {key: key for key in IMPAIR_LIMITS}

#: Puts an impairment in place on a link: (topology, state dir, link, impairment, the
#: impairment of every link once it is in place). :func:`apply` is the real one.
Applier = Callable[[Topology, Path, Link, Impairment, Mapping[str, Impairment]], None]


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
    """The recorded impairments by link name; LabError if the record is unreadable."""
    path = state_dir / "impair.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise LabError(f"{path}: cannot read the record of impairments ({exc})") from exc
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not an object")
        return {str(name): _recorded(values) for name, values in data.items()}
    except (ValueError, RecursionError, LabError) as exc:
        raise LabError(f"{path}: not a record of impairments ({exc}); delete it, then clear each"
                       " link: alpaca-tunnel lab impair LINK --clear") from exc


def _recorded(values: object) -> Impairment:
    """One link's entry of impair.json; ValueError or LabError unless it holds valid figures
    only."""
    if not isinstance(values, dict) or not set(values) <= set(IMPAIR_LIMITS):
        raise ValueError(f"{show_value(values)} is not an object of {', '.join(IMPAIR_LIMITS)}")
    return checked_impairment(values)


def _save(state_dir: Path, in_place: Mapping[str, Impairment]) -> None:
    """Record ``in_place`` (impairments by link name; clear ones are left out), atomically."""
    path = state_dir / "impair.json"
    state_dir.mkdir(parents=True, exist_ok=True)
    write_record(path, {name: dataclasses.asdict(imp) for name, imp in in_place.items() if not imp.is_clear})


def current(state_dir: Path) -> dict[str, Impairment]:
    """The impairment of every impaired link, by link name."""
    return _load(state_dir)


def checked_impairment(values: Mapping[str, float], labels: Mapping[str, str] = KEYWORDS) -> Impairment:
    """The impairment of ``values`` (figures by field name, missing ones 0).

    Raises:
        LabError: naming each bad figure (by its label in ``labels``), its value and the
            allowed range; nothing has been changed then.
    """
    problems = impairment_problems(values, labels)
    if problems:
        raise LabError("; ".join(problems))
    return Impairment(**{key: float(values.get(key, 0.0)) for key in IMPAIR_LIMITS})


def find_link(topology: Topology, name: str) -> Link:
    """The link called ``name``; LabError listing the topology's links if there is none."""
    try:
        return topology.link(name)
    except KeyError:
        names = ", ".join(link.name for link in topology.links)
        raise LabError(f"no link {show_value(name)} in {topology.source} (links: {names})") from None


def impair(topology: Topology, state_dir: Path, link_name: str, *, loss_pct: float = 0.0,
           delay_ms: float = 0.0, jitter_ms: float = 0.0, rate_mbit: float = 0.0,
           clear: bool = False, applier: Applier | None = None) -> Impairment:
    """Set (replace) or clear the impairment of one link; returns what is now in effect.

    Loss in percent, delay and jitter in milliseconds, rate in Mbit/s (0: none), each
    direction. Bad figures or link names raise LabError before anything changes. The change
    is recorded only once ``applier`` (default :func:`apply`) has put it in place; if that
    fails, the link is cleared, left out of the record, and LabError says so.
    """
    link = find_link(topology, link_name)
    figures = {"loss_pct": loss_pct, "delay_ms": delay_ms, "jitter_ms": jitter_ms, "rate_mbit": rate_mbit}
    imp = Impairment() if clear else checked_impairment(figures)
    put_in_place = applier or apply
    others = {name: rec for name, rec in _load(state_dir).items() if name != link.name}
    try:
        put_in_place(topology, state_dir, link, imp, {**others, link.name: imp})
    except BaseException as exc:
        outcome = _roll_back(topology, state_dir, link, others, put_in_place)
        _save(state_dir, others)
        if not isinstance(exc, Exception):
            raise
        doing = "clearing" if clear else "impairing"
        raise LabError(f"{doing} link {link.name} failed: {exc}; {outcome}") from exc
    _save(state_dir, {**others, link.name: imp})
    if imp.is_clear:
        log.info("link cleared link=%s", link.name)
    else:
        log.info("link impaired link=%s loss_pct=%g delay_ms=%g jitter_ms=%g rate_mbit=%g",
                 link.name, imp.loss_pct, imp.delay_ms, imp.jitter_ms, imp.rate_mbit)
    return imp


def _roll_back(topology: Topology, state_dir: Path, link: Link, others: Mapping[str, Impairment],
               applier: Applier) -> str:
    """Clear ``link`` after a failed change; returns how that went, for the error message."""
    try:
        applier(topology, state_dir, link, Impairment(), others)
    except Exception as exc:
        return (f"clearing it failed too ({exc}), so it may be partly impaired: run"
                f" alpaca-tunnel lab impair {link.name} --clear, or alpaca-tunnel lab down")
    return "the link was cleared (no impairment is in effect on it)"


def apply(topology: Topology, state_dir: Path, link: Link, imp: Impairment,
          in_place: Mapping[str, Impairment]) -> None:
    """Put ``imp`` in place on both ends of ``link``: qdiscs and relays, then the nftables
    table of each endpoint's namespace, built from ``in_place`` (every link's impairment once
    this one is in place)."""
    apply_link(topology, state_dir, link, imp)
    for name in sorted({ep.node for ep in link.endpoints}):
        _write_table(topology, topology.node(name).namespace, name, in_place)


def clear_all(topology: Topology, state_dir: Path) -> None:
    """Remove every impairment (used by ``lab down`` before namespaces go away)."""
    with contextlib.suppress(LabError):
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
    write_pid_file(pidfile, proc.pid)


def _stop_relay(pidfile: Path) -> None:
    pid = read_pid_file(pidfile)  # None: gone, or the pid is another process's now
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
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


def _write_table(topology: Topology, ns: str, node: str, wanted: Mapping[str, Impairment]) -> None:
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
