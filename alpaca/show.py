"""``alpaca-tunnel show``: ask the running daemon for its snapshot and print it.

Output is a ``wg show``-style block per peer with a table of its paths (state and reason, RTT,
probe and data loss, packets and bytes each way, duplicates, first-arrival share, last seen),
or the raw JSON with ``--json``. The numbers are the ones ``/metrics`` exports
(:mod:`alpaca.snapshot`). Runs in the command-line process, not in the daemon.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path
from typing import Any

from alpaca.core.ids import printable
from alpaca.errors import AlpacaError, ConfigError
from alpaca.system import instance

PROG = "alpaca-tunnel"
HELP = "show peers and paths of the running daemon"
DEFAULT_SOCKET = Path("/run/alpaca-tunnel/alpaca0.sock")
TIMEOUT = 5.0
MAX_REPLY = 64 << 20
EXIT_OK, EXIT_ERROR = 0, 1

Row = list[str]
PATH_COLUMNS = ("PATH", "KIND", "ADDRESS", "STATE", "REASON", "RTT", "PROBE LOSS", "DATA LOSS",
                "RECEIVED", "SENT", "DUPS", "FIRST", "LAST OK")


# ----------------------------------------------------------------------------- command line
def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``show`` options to its sub-parser."""
    parser.add_argument("--json", dest="as_json", action="store_true", help="print the raw JSON")
    parser.add_argument(
        "--socket", dest="socket", metavar="PATH", default=None,
        help="control socket (default: control_socket from the config, else /run/alpaca-tunnel/alpaca0.sock)",
    )


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``show`` to an argparse sub-parser collection; its handler is :func:`cmd_show`."""
    parser: argparse.ArgumentParser = subparsers.add_parser("show", help=HELP, description=HELP)
    configure(parser)
    parser.set_defaults(handler=cmd_show)
    return parser


def cmd_show(args: argparse.Namespace) -> int:
    """Handler: resolve the socket (``--socket``, else the config's), then :func:`show`."""
    return show(socket_path(args), bool(getattr(args, "as_json", False)))


def socket_path(args: argparse.Namespace) -> Path:
    """``--socket`` if given; else ``control_socket`` of the config named by ``-c``.

    Without ``-c`` a missing or broken default config falls back to :data:`DEFAULT_SOCKET`;
    with ``-c`` its errors are reported (ConfigError), as is an empty ``--socket``.
    """
    given = getattr(args, "socket", None)
    if given == "":
        raise ConfigError(["--socket is empty: give the path of the control socket, or leave"
                           " --socket out for control_socket of the config"])
    if given is not None:
        return Path(given)
    from alpaca.config import load_config  # the config module only when it is needed
    from alpaca.paths import resolve_config_path

    explicit = getattr(args, "config", None)
    try:
        return load_config(resolve_config_path(explicit)).control_socket
    except (AlpacaError, OSError):
        if explicit is not None:
            raise
        return DEFAULT_SOCKET


# ----------------------------------------------------------------------------- client
def fetch(path: Path, command: str = "show") -> dict[str, Any]:
    """Send ``command`` on the control socket and return the decoded JSON answer.

    Raises:
        OSError: no daemon, no permission, or a stalled daemon (TimeoutError).
        ValueError: the answer is not a JSON object.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect(str(path))
        sock.sendall(command.encode() + b"\n")
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_REPLY:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    reply = json.loads(b"".join(chunks))
    if not isinstance(reply, dict):
        raise ValueError("the daemon's answer is not a JSON object")
    return reply


def show(socket_path: Path, as_json: bool) -> int:
    """Print the daemon's snapshot (table, or JSON with ``as_json``); returns the exit code."""
    try:
        reply = fetch(socket_path)
    except (FileNotFoundError, ConnectionRefusedError):
        print(f"{PROG}: {_no_answer(socket_path)}", file=sys.stderr)
        return EXIT_ERROR
    except BlockingIOError:  # the listen queue is full
        print(f"{PROG}: the daemon on {socket_path} is busy answering others; try again",
              file=sys.stderr)
        return EXIT_ERROR
    except PermissionError:
        print(f"{PROG}: permission denied on {socket_path} (the control socket is root only)",
              file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        print(f"{PROG}: no usable answer on {socket_path}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if "error" in reply:
        print(f"{PROG}: the daemon says: {printable(str(reply['error']), 300)}", file=sys.stderr)
        return EXIT_ERROR
    try:
        text = json.dumps(reply, indent=2) if as_json else render(reply)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        print(f"{PROG}: the daemon's answer on {socket_path} is not laid out as this version"
              f" expects ({type(exc).__name__}: {printable(str(exc))}); is the daemon of another"
              " version? restart it after an upgrade", file=sys.stderr)
        return EXIT_ERROR
    print(text)
    return EXIT_OK


def _no_answer(socket_path: Path) -> str:
    """Why nothing listens on the control socket: no daemon, or one that holds the node's
    lock but is starting (waiting for the uplink, running the up hooks) or stopping."""
    lock = instance.lock_path(socket_path)
    if instance.is_held(lock):
        return (f"the daemon (pid {instance.holder(lock)}) is starting or stopping: no control socket"
                f" at {socket_path} yet or any more; try again")
    return f"no daemon is running (no control socket at {socket_path})"


# ----------------------------------------------------------------------------- table
def render(snap: dict[str, Any]) -> str:
    """The snapshot as text: a node header, then one block per peer."""
    lines = _node_lines(snap)
    peers = snap.get("peers", [])
    if not peers:
        lines += ["", "no active peers"]
    for peer in peers:
        lines += ["", *_peer_lines(peer)]
    return "\n".join(lines)


def _node_lines(snap: dict[str, Any]) -> list[str]:
    head = f"node: {snap.get('node')}"
    if snap.get("version"):
        head += f"  version: {snap['version']}"
    head += f"  epoch: {snap.get('epoch')}"
    if snap.get("uptime_s") is not None:
        head += f"  uptime: {duration(snap['uptime_s'])}"
    lines = [head, f"  peers: {snap.get('peers_up', 0)} up of {snap.get('peers_configured', 0)} configured"]
    if snap.get("forwarders"):
        lines.append(f"  forwarders: {', '.join(snap['forwarders'])}")
    lines.append(
        f"  relayed: {snap.get('forwarded_packets', 0)} packets ({size(snap.get('forwarded_bytes', 0))})"
        f"  dup queue: {snap.get('dup_queue_depth', 0)} waiting, {snap.get('dup_queue_dropped', 0)} refused"
    )
    drops = snap.get("drops") or {}
    if drops:
        lines.append("  drops: " + ", ".join(f"{k} {v}" for k, v in sorted(drops.items())))
    return lines


def _peer_lines(peer: dict[str, Any]) -> list[str]:
    roles = [r for r in ("gateway", "forwarder") if peer.get(r)]
    title = f"peer: {peer['peer']}" + (f" ({', '.join(roles)})" if roles else "")
    window = peer.get("window_occupancy")
    lines = [
        f"{title}  {'up' if peer.get('up') else 'down'}",
        f"  last seen: {ago(peer.get('last_seen_s'))}",
        f"  transfer: {size(peer['rx_bytes'])} received ({peer['rx_packets']} packets),"
        f" {size(peer['tx_bytes'])} sent ({peer['tx_packets']} packets)",
        f"  lost end to end: {peer['lost_packets']} ({pct(peer.get('lost_pct'))})"
        f"  duplicate copies sent: {peer['dup_copies_sent']}",
        f"  replay: {peer['replay_duplicate']} duplicate, {peer['replay_too_old']} too old,"
        f" {peer.get('replay_late', 0)} late"
        + (f", window {window * 100:.1f} % seen" if window is not None else ""),
    ]
    rows = [list(PATH_COLUMNS), *(_path_row(p) for p in peer.get("paths", []))]
    lines += ["  " + line for line in table(rows)]
    return lines


def _path_row(path: dict[str, Any]) -> Row:
    return [
        path["name"], path["kind"], path["addr"], path["state"], path["reason"],
        ms(path.get("srtt_ms")), pct(path.get("probe_loss_pct")), pct(path.get("data_loss_pct")),
        f"{path['rx_packets']}/{size(path['rx_bytes'])}", f"{path['tx_packets']}/{size(path['tx_bytes'])}",
        str(path["duplicates"]), pct(path.get("first_arrival_pct")), ago(path.get("last_ok_s")),
    ]


def table(rows: list[Row]) -> list[str]:
    """Left-aligned columns two spaces apart, trailing spaces stripped."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]


def size(n: float) -> str:
    """Bytes in binary units: ``512 B``, ``1.50 KiB``."""
    value, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} B" if unit == "B" else f"{value:.2f} {unit}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def ago(seconds: float | None) -> str:
    return "never" if seconds is None else f"{duration(seconds)} ago"


def duration(seconds: float) -> str:
    """``0.25 s``, ``42 s``, ``3 m 05 s``, ``2 h 03 m``, ``1 d 04 h``."""
    if seconds < 10:
        return f"{seconds:.2f} s"
    s = int(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} m {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} m"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"
