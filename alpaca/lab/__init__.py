"""The network-namespace lab: a topology of alpaca nodes built on one machine.

:class:`Lab` builds a :class:`~alpaca.lab.topology.Topology` (namespaces ``alp-<node>``, one
veth pair per link, static routes, the management bridge ``alp-mgmt``), starts one daemon per
node (:mod:`alpaca.lab.nodes`), impairs links (:mod:`alpaca.lab.impair`) and tears it all down.

State lives in a state dir (default ``/run/alpaca-lab``): ``lab.json`` is written *before*
anything is created, so ``down`` after a crash knows the topology; ``down`` also removes
every ``alp-*`` namespace and root interface it finds, so it works without the state too.
``up`` is idempotent: it completes what exists and starts what is not running.

One lab per machine. Callers: :mod:`alpaca.lab.cli`, :mod:`alpaca.lab.demo`, tests (root).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

from alpaca.lab import impair, netns, nodes
from alpaca.lab.nodes import LabError
from alpaca.lab.topology import DEFAULT_TOPOLOGY, METRICS_PORT, NS_PREFIX, Node, Topology, load_topology
from alpaca.system import instance

#: The alert rules the lab's Prometheus loads (in a checkout of the repository).
ALERT_RULES = Path(__file__).resolve().parents[2] / "config" / "prometheus" / "alerts.yml"

__all__ = ["DEFAULT_STATE_DIR", "Lab", "LabError", "exclusive"]

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/run/alpaca-lab")
PROMETHEUS_LISTEN = "127.0.0.1:9090"


#: What stops a lab command: Ctrl-C, ``kill``, the terminal closing.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP are remembered, not acted on, until the block ends (then
    KeyboardInterrupt); outside the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: caught.append(signum)) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if caught:
        raise KeyboardInterrupt


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt as SIGINT does, so that what a lab command
    does in ``finally`` (the demo's teardown) runs: by default they ended the process there
    and then, its namespaces and daemons left running. Outside the main thread: nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _interrupt) for s in STOP_SIGNALS if s != signal.SIGINT}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def exclusive(state_dir: Path) -> Iterator[None]:
    """One lab command that changes the lab at a time, per state dir (a lock file beside it).

    Raises:
        LabError: another one runs (its pid is named).
    """
    state_dir = state_dir.resolve()
    if not state_dir.name:
        raise LabError(f"--state-dir {state_dir} names no directory of its own; choose another")
    lock = state_dir.with_name(state_dir.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise LabError(f"cannot make the lab's lock {lock}: {exc.strerror}; choose another"
                       " --state-dir") from exc
    fd = instance.try_hold(lock)
    if fd is None:
        raise LabError(f"another lab command (pid {instance.holder(lock)}) is changing the lab in"
                       f" {state_dir}; wait for it to finish")
    try:
        yield
    finally:
        os.close(fd)


def recorded_topology(record: Path) -> Path | None:
    """The topology file named by the lab record ``record`` (lab.json), None without one.

    Raises:
        LabError: naming the record and the fix when it cannot be read.
    """
    try:
        text = record.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise LabError(f"{record}: cannot read the lab record ({exc})") from exc
    try:
        path = json.loads(text)["topology"]
        if not isinstance(path, str) or not path:
            raise ValueError("no topology file name")
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise LabError(f'{record}: not a lab record (expected {{"topology": FILE, ...}}, written by'
                       f" lab up); delete it: lab down then removes every {NS_PREFIX}* namespace by"
                       " name, and lab up builds the lab anew") from exc
    return Path(path)


class Lab:
    """One lab: a topology and its state dir. Construct, then ``up()``/``down()``."""

    def __init__(self, topology: Topology, state_dir: Path = DEFAULT_STATE_DIR) -> None:
        self.topology = topology
        self.state_dir = state_dir

    @classmethod
    def from_state(cls, state_dir: Path = DEFAULT_STATE_DIR, topology: Path | None = None) -> Lab:
        """The lab recorded in ``state_dir`` (or ``topology``, or the default topology)."""
        if topology is None:
            topology = recorded_topology(state_dir / "lab.json")
        return cls(load_topology(topology or DEFAULT_TOPOLOGY), state_dir)

    # --- up -----------------------------------------------------------------------------

    def up(self, *, daemons: bool = True, prometheus: bool = False, timeout: float = 20.0) -> None:
        """Build everything that is missing; start daemons (and Prometheus) that are not running."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        nodes.write_record(self.state_dir / "lab.json",
                           {"topology": str(self.topology.source.resolve()),
                            "namespaces": [n.namespace for n in self.topology.nodes]})
        self.build_network()
        keys = nodes.ensure_keys(self.state_dir / "secrets.txt", self.topology)
        for node in self.topology.daemons:
            nodes.write_node_files(self.topology, node, self.state_dir, keys)
        if daemons:
            self.start_daemons(timeout=timeout)
        if prometheus:
            self.start_prometheus()

    def build_network(self) -> None:
        """Namespaces, links, addresses, routes, management network, topology impairments."""
        topo = self.topology
        for node in topo.nodes:
            netns.ensure_namespace(node.namespace)
        for i, link in enumerate(topo.links):
            a, b = (topo.node(ep.node) for ep in link.endpoints)
            netns.ensure_veth(a.namespace, link.a.ifname, b.namespace, link.b.ifname, tag=f"l{i}")
            for ep, node in ((link.a, a), (link.b, b)):
                netns.ensure_address(node.namespace, ep.ifname, str(ep.address))
        netns.ensure_bridge(netns.MGMT_BRIDGE, str(topo.management_root_address))
        for j, node in enumerate(topo.daemons):
            root_side = f"{NS_PREFIX}m{node.name}"
            netns.ensure_veth(node.namespace, netns.MGMT_IFNAME, None, root_side, tag=f"t{j}")
            netns.attach_to_bridge(root_side, netns.MGMT_BRIDGE)
            address = f"{topo.management_address(node)}/{topo.management.prefixlen}"
            netns.ensure_address(node.namespace, netns.MGMT_IFNAME, address)
            netns.exec_in(node.namespace, ["nft", "-f", "-"], input_text=netns.MGMT_NFT)
        for node in topo.nodes:
            if node.is_daemon and nodes.read_pid(self.state_dir, node.name) is not None:
                continue  # its daemon moved the default route into the tunnel: leave them be
            for route in node.routes:
                netns.ensure_route(node.namespace, route.to, str(route.via))
        wanted = impair.current(self.state_dir)
        for link in topo.links:
            if not link.impair.is_clear and link.name not in wanted:
                imp = link.impair
                impair.impair(topo, self.state_dir, link.name, loss_pct=imp.loss_pct,
                              delay_ms=imp.delay_ms, jitter_ms=imp.jitter_ms, rate_mbit=imp.rate_mbit)

    def start_daemons(self, names: Sequence[str] | None = None, timeout: float = 20.0) -> None:
        """Start the named daemons (default: all; the server first) and wait until ready:
        control sockets answer, and every client among them reaches its gateway through the
        tunnel."""
        if names is not None:
            for name in names:
                if not self.node(name).is_daemon:
                    raise LabError(f'node "{name}" is a plain host of the topology: it runs no daemon')
        self.require_up()
        chosen = [n for n in self.topology.daemons if names is None or n.name in names]
        for node in chosen:
            nodes.start_daemon(self.topology, node, self.state_dir)
        nodes.wait_ready(self.state_dir, [n.name for n in chosen], timeout)
        self.wait_tunnels([n.name for n in chosen], timeout)

    def wait_tunnels(self, names: Sequence[str], timeout: float = 20.0) -> None:
        """Wait until each client among ``names`` pings its gateway's tunnel address (the
        daemons have probed their paths and proved themselves live to each other:
        docs/protocol.md 5.1)."""
        deadline = time.monotonic() + timeout
        for node in self.topology.daemons:
            if node.gateway is None or node.name not in names:
                continue
            high, low = (int(x) for x in node.gateway.split("."))
            target = f"{self.topology.net}.{high}.{low}"
            while netns.exec_in(node.namespace, ["ping", "-n", "-q", "-c", "1", "-W", "1", target],
                                check=False).returncode != 0:
                if time.monotonic() > deadline:
                    log_file = self.state_dir / "nodes" / node.name / "daemon.log"
                    raise LabError(f"{node.name} does not reach its gateway {target} through the"
                                   f" tunnel within {timeout:g} s; see {log_file}")
                time.sleep(0.1)

    def require_up(self) -> None:
        """Raises LabError unless ``up`` has run (its record is there)."""
        if not (self.state_dir / "lab.json").exists():
            raise LabError(f"no lab is up in {self.state_dir}: run `alpaca-tunnel lab up` first")

    def stop_daemon(self, name: str) -> None:
        nodes.stop_daemon(self.state_dir, name)

    # --- down ---------------------------------------------------------------------------

    def down(self) -> list[str]:
        """Stop everything and delete every lab namespace, link and state file; returns names
        removed. Ctrl-C waits until it is done: half a teardown leaves daemons running."""
        with _sigint_deferred():
            return self._down()

    def _down(self) -> list[str]:
        recorded = (self.state_dir / "lab.json").exists()  # else: no lab's files to remove here
        if recorded:
            self.stop_prometheus()
            for node in self.topology.daemons:
                with contextlib.suppress(Exception):
                    nodes.stop_daemon(self.state_dir, node.name, grace=3.0)
            with contextlib.suppress(Exception):
                impair.clear_all(self.topology, self.state_dir)
        removed = netns.remove_named(*self.created_names())
        if recorded:
            for name in ("lab.json", "secrets.txt", ".secrets.txt.lock", "impair.json"):
                (self.state_dir / name).unlink(missing_ok=True)
            for name in ("nodes", "relays", "prometheus"):
                shutil.rmtree(self.state_dir / name, ignore_errors=True)
            with contextlib.suppress(OSError):
                self.state_dir.rmdir()
        return removed

    def created_names(self) -> tuple[list[str], list[str]]:
        """(namespaces, root-namespace links) that ``up`` creates for this topology, the
        temporary names of veth pairs being moved included."""
        topo = self.topology
        links = [netns.MGMT_BRIDGE]
        tags = [f"l{i}" for i in range(len(topo.links))]  # as build_network names them
        for j, node in enumerate(topo.daemons):
            links.append(f"{NS_PREFIX}m{node.name}")
            tags.append(f"t{j}")
        links += [f"{NS_PREFIX}{tag}{side}" for tag in tags for side in "ab"]
        return [n.namespace for n in topo.nodes], links

    # --- inspection ---------------------------------------------------------------------

    def node(self, name: str) -> Node:
        try:
            return self.topology.node(name)
        except KeyError:
            names = ", ".join(n.name for n in self.topology.nodes)
            raise LabError(f'no node "{name}" in the topology (nodes: {names})') from None

    def exec(self, name: str, cmd: Sequence[str], *, check: bool = True,
             timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` in the node's namespace, capturing its output."""
        return netns.exec_in(self.node(name).namespace, cmd, check=check, timeout=timeout)

    def metrics_url(self, name: str) -> str:
        return f"http://{self.topology.management_address(self.node(name))}:{METRICS_PORT}/metrics"

    def scrape(self, name: str, timeout: float = 3.0) -> str:
        """The node's /metrics text (from the root namespace, over the management bridge)."""
        with urllib.request.urlopen(self.metrics_url(name), timeout=timeout) as response:
            text: str = response.read().decode()
        return text

    def control_socket(self, name: str) -> Path:
        return nodes.node_dir(self.state_dir, name) / "control.sock"

    def config_path(self, name: str) -> Path:
        return nodes.node_dir(self.state_dir, name) / "config.json"

    def status(self) -> list[str]:
        """One line per node and per impaired link."""
        lines = [f"lab {self.topology.name} ({self.topology.source}), state {self.state_dir}"]
        for node in self.topology.nodes:
            exists = netns.namespace_exists(node.namespace)
            line = f"  {node.name:<6} {node.role.value:<9} {node.peer_id or '-':<6} ns {node.namespace}"
            line += "" if exists else " (missing)"
            if node.is_daemon:
                pid = nodes.read_pid(self.state_dir, node.name)
                ready = pid is not None and nodes.control_answers(self.control_socket(node.name))
                line += f"  daemon {'pid ' + str(pid) if pid else 'stopped'}{' ready' if ready else ''}"
                line += f"  metrics {self.metrics_url(node.name)}"
            lines.append(line)
        for name, imp in impair.current(self.state_dir).items():
            lines.append(f"  link {name}: loss {imp.loss_pct:g} %, delay {imp.delay_ms:g} ms,"
                         f" jitter {imp.jitter_ms:g} ms, rate {imp.rate_mbit:g} Mbit/s")
        prom = self._prometheus_pid()
        if prom:
            lines.append(f"  prometheus pid {prom} http://{PROMETHEUS_LISTEN}/")
        return lines

    # --- prometheus ---------------------------------------------------------------------

    def start_prometheus(self, binary: str = "/usr/bin/prometheus", listen: str = PROMETHEUS_LISTEN) -> int:
        """Debian's prometheus in the root namespace, scraping every node's management address."""
        from alpaca.lab.compose import render_prometheus

        pid = self._prometheus_pid()
        if pid:
            return pid
        if not Path(binary).exists():
            raise LabError(f"{binary} is missing (apt-get install -y prometheus)")
        directory = self.state_dir / "prometheus"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "prometheus.yml").write_text(render_prometheus(self.topology, interval="2s"))
        rules = directory / "alerts.yml"
        if ALERT_RULES.is_file():
            shutil.copy(ALERT_RULES, rules)
        else:  # an installed package without the repository's config/
            rules.write_text("groups: []\n")
        cmd = [binary, f"--config.file={directory / 'prometheus.yml'}",
               f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address={listen}"]
        with open(directory / "prometheus.log", "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        nodes.write_pid_file(directory / "pid", proc.pid)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{listen}/-/ready", timeout=1):
                return proc.pid
            if not nodes.is_alive(proc.pid):
                break
            time.sleep(0.2)
        raise LabError(f"prometheus did not become ready; see {directory / 'prometheus.log'}")

    def _prometheus_pid(self) -> int | None:
        return nodes.read_pid_file(self.state_dir / "prometheus" / "pid")

    def stop_prometheus(self) -> None:
        pid = self._prometheus_pid()
        if pid:
            nodes.stop_pid(pid)
