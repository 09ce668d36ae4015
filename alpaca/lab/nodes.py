"""Per-node files and daemon processes of the lab.

Files, under ``STATE_DIR/nodes/<name>/``: ``config.json``, ``secrets.txt``, ``daemon.log``,
``daemon.pid``, ``control.sock``, ``epoch`` (the node's state_file).

Keys: one secrets file for the whole lab, ``STATE_DIR/secrets.txt``, with a fresh
``os.urandom(32)`` key per node, created once per lab (atomically, so concurrent renderers,
e.g. docker containers sharing a volume, agree). Each node's ``secrets.txt`` holds the same
lines, with each peer's address **as seen from that node**: its address on a link the two
share, or null (a peer behind a forwarder is reached through it, never directly).

Metrics: every daemon listens on its management address (``management`` subnet of the
topology, a veth to the bridge ``alp-mgmt`` in the root namespace), port 9586, so Prometheus
and the tests scrape from the root namespace.

Pure parts (:func:`render_config`, :func:`render_secrets`) are tested without root; the rest
starts processes with ``ip netns exec`` and is called by the lab CLI, demo and tests.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from alpaca.errors import AlpacaError
from alpaca.lab.topology import METRICS_PORT, Node, Role, Topology

PROBE_INTERVAL_MS = 500
PATH_TIMEOUT_MS = 2000


class LabError(AlpacaError):
    """A lab step failed; the message says which and, for daemons, shows the log tail."""


def write_record(path: Path, data: object) -> None:
    """Write ``data`` as JSON to the lab state file ``path`` atomically (a temp file renamed
    over it), so that a reader never sees half a record."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def node_dir(state_dir: Path, name: str) -> Path:
    return state_dir / "nodes" / name


def render_config(topology: Topology, node: Node, directory: Path) -> dict[str, Any]:
    """The config.json of a daemon node (pure). Paths point into ``directory``."""
    assert node.peer_id is not None, "hosts have no config"
    config: dict[str, Any] = {
        "mode": "client" if node.role is Role.CLIENT else "server",
        "group": topology.group,
        "net": topology.net,
        "id": node.peer_id,
        "mtu": 1400,
        "log_level": "info",
        "secret_file": str(directory / "secrets.txt"),
        "tun_name": "alpaca0",
        "metrics": {"listen": f"{topology.management_address(node)}:{METRICS_PORT}"},
        "control_socket": str(directory / "control.sock"),
        "state_file": str(directory / "epoch"),
        "probe_interval_ms": PROBE_INTERVAL_MS,
        "path_timeout_ms": PATH_TIMEOUT_MS,
    }
    if node.role is Role.CLIENT:
        config["gateway"] = node.gateway
        config["forwarders"] = list(node.forwarders)
        if node.uplinks:
            config["ports"] = [{"name": up, "address": "0.0.0.0", "port": 0, "interface": up}
                               for up in node.uplinks]
        config["dup"] = {"policy": "syn_dns", "copies": 1, "delay_ms": 20}
    else:
        config["port"] = node.port
    config.update(node.config)
    return config


def new_keys(topology: Topology) -> dict[str, str]:
    """A fresh 32-byte key per daemon node, by peer id."""
    return {n.peer_id: os.urandom(32).hex() for n in topology.daemons if n.peer_id}


def format_keys(keys: dict[str, str]) -> str:
    lines = ["# alpaca lab keys: peer_id key (every node's secrets.txt has these keys)"]
    lines += [f"{peer} {key}" for peer, key in sorted(keys.items())]
    return "\n".join(lines) + "\n"


def parse_keys(text: str) -> dict[str, str]:
    keys = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith("#"):
            keys[parts[0]] = parts[1]
    return keys


def ensure_keys(path: Path, topology: Topology) -> dict[str, str]:
    """Read the lab's key file, creating it first if missing, or adding the keys of nodes it
    lacks (the topology grew). Under an exclusive lock beside it: the compose lab's containers
    run this at once on one volume, each as pid 1.

    Raises:
        LabError: the file or its directory cannot be read or written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = parse_keys(path.read_text()) if path.exists() else {}
            missing = {p: k for p, k in new_keys(topology).items() if p not in keys}
            if missing:
                keys.update(missing)
                _replace(path, format_keys(keys))
    except OSError as exc:
        raise LabError(f"the lab's key file {path}: {exc.strerror or exc}") from exc
    return keys


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) through a temporary file of a unique name."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def render_secrets(topology: Topology, node: Node, keys: dict[str, str]) -> str:
    """The node's secrets.txt: every daemon's key, addresses as seen from ``node`` (pure)."""
    lines = [f"# alpaca lab secrets of {node.name} ({node.peer_id}); generated, do not edit"]
    for other in topology.daemons:
        assert other.peer_id is not None
        address = topology.address_seen_from(node.name, other.name)
        if address is not None and other.port and other is not node:
            lines.append(f"{other.peer_id} {keys[other.peer_id]} {address} null {other.port}")
        else:
            lines.append(f"{other.peer_id} {keys[other.peer_id]} null null null")
    return "\n".join(lines) + "\n"


def write_node_files(topology: Topology, node: Node, state_dir: Path, keys: dict[str, str]) -> Path:
    """Write config.json and secrets.txt of ``node``; returns the config path."""
    directory = node_dir(state_dir, node.name)
    directory.mkdir(parents=True, exist_ok=True)
    secrets = directory / "secrets.txt"
    secrets.write_text(render_secrets(topology, node, keys))
    secrets.chmod(0o600)
    config = directory / "config.json"
    config.write_text(json.dumps(render_config(topology, node, directory), indent=2) + "\n")
    return config


def daemon_command(config: Path) -> list[str]:
    """``alpaca-tunnel -c CONFIG run`` from this interpreter's environment."""
    script = Path(sys.executable).parent / "alpaca-tunnel"
    base = [str(script)] if script.exists() else [sys.executable, "-m", "alpaca"]
    return [*base, "-c", str(config), "run"]


def read_pid(state_dir: Path, name: str) -> int | None:
    return read_pid_file(node_dir(state_dir, name) / "daemon.pid")


def write_pid_file(path: Path, pid: int) -> None:
    """Record ``pid`` with its start time (so that a pid the kernel gave to another process
    since is never taken for ours)."""
    path.write_text(f"{pid} {_started(pid)}\n")


def read_pid_file(path: Path) -> int | None:
    """The pid recorded at ``path`` if that process still runs: the same pid *and* the same
    start time (a stale file, after a crash or a reboot, names someone else's process)."""
    try:
        pid_text, started = path.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if is_alive(pid) and str(_started(pid)) == started else None


def _started(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (/proc/PID/stat field 22); None if gone."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (reaps it if it is our child)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def start_daemon(topology: Topology, node: Node, state_dir: Path) -> int:
    """Start the node's daemon unless it runs; returns its pid."""
    pid = read_pid(state_dir, node.name)
    if pid is not None:
        return pid
    directory = node_dir(state_dir, node.name)
    (directory / "control.sock").unlink(missing_ok=True)
    cmd = ["ip", "netns", "exec", node.namespace, *daemon_command(directory / "config.json")]
    with open(directory / "daemon.log", "ab") as log_out:
        log_out.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        log_out.flush()
        proc = subprocess.Popen(cmd, stdout=log_out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    write_pid_file(directory / "daemon.pid", proc.pid)
    return proc.pid


def log_tail(state_dir: Path, name: str, lines: int = 15) -> str:
    try:
        text = (node_dir(state_dir, name) / "daemon.log").read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def control_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def wait_ready(state_dir: Path, names: list[str], timeout: float = 20.0) -> None:
    """Wait until every named daemon's control socket accepts a connection."""
    deadline = time.monotonic() + timeout
    waiting = list(names)
    while waiting:
        for name in list(waiting):
            directory = node_dir(state_dir, name)
            if control_answers(directory / "control.sock"):
                waiting.remove(name)
            elif read_pid(state_dir, name) is None:
                raise LabError(f"the daemon of {name} exited during start-up; log"
                               f" {directory / 'daemon.log'} ends with:\n{log_tail(state_dir, name)}")
        if waiting and time.monotonic() > deadline:
            name = waiting[0]
            raise LabError(f"the daemon of {name} did not open its control socket within {timeout:g} s;"
                           f" log {node_dir(state_dir, name) / 'daemon.log'} ends with:\n"
                           f"{log_tail(state_dir, name)}")
        if waiting:
            time.sleep(0.1)


def stop_pid(pid: int, grace: float = 5.0) -> None:
    """SIGTERM ``pid``, then SIGKILL after ``grace`` seconds if it still runs."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and is_alive(pid):
            time.sleep(0.05)
        if not is_alive(pid):
            return


def stop_daemon(state_dir: Path, name: str, grace: float = 5.0) -> None:
    """Stop the node's daemon: SIGTERM, then SIGKILL after ``grace`` seconds."""
    pid = read_pid(state_dir, name)
    if pid is not None:
        stop_pid(pid, grace)
    (node_dir(state_dir, name) / "daemon.pid").unlink(missing_ok=True)


def signal_daemon(state_dir: Path, name: str, sig: signal.Signals) -> None:
    """Send ``sig`` (e.g. SIGHUP to reload) to the node's daemon."""
    pid = read_pid(state_dir, name)
    if pid is None:
        raise LabError(f"the daemon of {name} is not running (start the lab: alpaca-tunnel lab up)")
    os.kill(pid, sig)
