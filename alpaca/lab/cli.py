"""``alpaca-tunnel lab ...``: build, inspect, impair and tear down the namespace lab.

Commands: ``up [--topology FILE] [--prometheus] [--no-daemons]``, ``down``, ``status``,
``exec NODE -- CMD...``, ``impair LINK --loss PCT --delay MS --jitter MS --rate MBIT | --clear``,
``start NODE``, ``stop NODE``, ``reload NODE`` (SIGHUP), ``demo``, ``compose
[--topology FILE] [--prometheus-config]``, ``render-node NAME`` (inside a container). Every
command but ``compose`` and ``render-node``, which use no lab state, takes ``--state-dir``
(default /run/alpaca-lab).

Registered in :mod:`alpaca.cli` by one row of its command table that points at
:func:`configure` and :func:`run`. Errors are :class:`alpaca.errors.AlpacaError`\\ s, printed by
:func:`alpaca.cli.main`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from alpaca.errors import AlpacaError
from alpaca.lab import DEFAULT_STATE_DIR, Lab, LabError, exclusive, impair, netns, stop_signals_interrupt
from alpaca.lab.topology import DEFAULT_TOPOLOGY, IMPAIR_LIMITS, NS_PREFIX, Impairment, load_topology

Handler = Callable[[argparse.Namespace], int]

#: The option of ``lab impair`` for each impairment figure.
IMPAIR_OPTIONS = {"loss_pct": "--loss", "delay_ms": "--delay", "jitter_ms": "--jitter", "rate_mbit": "--rate"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the lab's sub-commands to the ``lab`` sub-parser."""
    commands = parser.add_subparsers(dest="lab_command", metavar="LAB_COMMAND", required=True)

    def add(name: str, help_text: str, handler: Handler, *, state: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if state:
            sub.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                             help=f"lab state directory (default {DEFAULT_STATE_DIR})")
        sub.set_defaults(lab_handler=handler)
        return sub

    up = add("up", "build the lab (idempotent) and start a daemon per node", cmd_up)
    up.add_argument("--topology", type=Path, help=f"topology file (default {DEFAULT_TOPOLOGY.name})")
    up.add_argument("--prometheus", action="store_true", help="also run prometheus on 127.0.0.1:9090")
    up.add_argument("--no-daemons", dest="daemons", action="store_false",
                    help="build namespaces and links only")
    down = add("down", "stop every lab process, delete the lab's namespaces and links and the state",
               cmd_down)
    down.add_argument("--all", action="store_true",
                      help=f"also every {NS_PREFIX}* namespace and link, whatever made it (a lab"
                           " whose topology file is gone)")
    add("status", "show nodes, daemons and impairments", cmd_status)
    ex = add("exec", "run a command in a node's namespace", cmd_exec)
    ex.add_argument("node")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    imp = add("impair", "set or clear loss/delay/jitter/rate on a link (each direction)", cmd_impair)
    imp.add_argument("link")
    for key, metavar, text in (("loss_pct", "PCT", "loss in percent"),
                               ("delay_ms", "MS", "delay in milliseconds"),
                               ("jitter_ms", "MS", "the delay varies by up to this, in milliseconds"),
                               ("rate_mbit", "MBIT", "rate limit in Mbit/s")):
        low, high, _ = IMPAIR_LIMITS[key]
        imp.add_argument(IMPAIR_OPTIONS[key], dest=key, type=float, metavar=metavar,
                         help=f"{text}, {low:g}-{high:g}, each direction")
    imp.add_argument("--clear", action="store_true", help="remove the link's impairment")
    for name, text, handler in (("start", "start a node's daemon", cmd_start),
                                ("stop", "stop a node's daemon (SIGTERM, then SIGKILL)", cmd_stop),
                                ("reload", "send SIGHUP to a node's daemon", cmd_reload)):
        add(name, text, handler).add_argument("node")
    add("demo", "build the lab, show traffic, loss and duplicate-send figures, tear down", cmd_demo)
    comp = add("compose", "print docker/compose.yml for a topology", cmd_compose, state=False)
    comp.add_argument("--topology", type=Path, help=f"topology file (default {DEFAULT_TOPOLOGY.name})")
    comp.add_argument("--prometheus-config", action="store_true", help="print docker/prometheus.yml instead")
    render = add("render-node", "inside a container: set up a node from the topology", cmd_render_node,
                 state=False)
    render.add_argument("node")
    render.add_argument("--topology", type=Path, help=f"topology file (default {DEFAULT_TOPOLOGY.name})")
    render.add_argument("--keys", type=Path, required=True, help="lab key file (created if missing)")
    render.add_argument("--dir", type=Path, required=True, help="where config.json and secrets.txt go")
    render.add_argument("--run", action="store_true", help="exec the daemon afterwards")
    render.add_argument("--no-container", dest="container", action="store_false",
                        help="do not rename interfaces or change routes")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lab`` to an argparse sub-parser collection (for callers without a command table)."""
    parser = subparsers.add_parser("lab", help="network-namespace lab", description=__doc__)
    configure(parser)
    parser.set_defaults(handler=run)


#: Commands that change the lab: one at a time (:func:`alpaca.lab.exclusive`).
CHANGING = ("up", "down", "impair", "start", "stop", "demo")


def run(args: argparse.Namespace) -> int:
    """Dispatch to the chosen lab command."""
    _require_root(args.lab_command)
    handler: Handler = args.lab_handler
    if args.lab_command not in CHANGING:
        return handler(args)
    with stop_signals_interrupt(), exclusive(args.state_dir):
        return handler(args)


def _require_root(command: str) -> None:
    if command not in ("compose",) and os.geteuid() != 0:
        raise LabError(f"lab {command} needs root (network namespaces); run it with sudo")


def _lab(args: argparse.Namespace) -> Lab:
    return Lab.from_state(args.state_dir, getattr(args, "topology", None))


def cmd_up(args: argparse.Namespace) -> int:
    lab = _lab(args)
    lab.up(daemons=args.daemons, prometheus=args.prometheus)
    print("\n".join(lab.status()))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    try:
        lab = _lab(args)
    except AlpacaError as exc:  # the recorded topology is gone or broken
        hint = "" if args.all else f" (`lab down --all` removes every {NS_PREFIX}* namespace and link)"
        print(f"{exc}; removing those of the default topology{hint}", file=sys.stderr)
        lab = Lab(load_topology(DEFAULT_TOPOLOGY), args.state_dir)
    removed = lab.down()
    if args.all:
        removed += netns.remove_leftovers()
    print(f"removed: {', '.join(removed) if removed else 'nothing (no lab found)'}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    print("\n".join(_lab(args).status()))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise LabError("lab exec needs a command: alpaca-tunnel lab exec NODE -- CMD [ARGS...]")
    ns = _lab(args).node(args.node).namespace
    if not netns.namespace_exists(ns):
        raise LabError(f"namespace {ns} does not exist (run: alpaca-tunnel lab up)")
    argv = ["ip", "netns", "exec", ns, *cmd]
    os.execvp(argv[0], argv)


def impairment_from_args(args: argparse.Namespace) -> Impairment | None:
    """The impairment ``lab impair`` asks for, None for ``--clear``.

    Pure, so it runs before anything is read or changed. Raises LabError naming the option,
    its value and the allowed range.
    """
    given = {key: value for key in IMPAIR_OPTIONS if (value := getattr(args, key)) is not None}
    if args.clear:
        if given:
            options = ", ".join(IMPAIR_OPTIONS[key] for key in given)
            raise LabError(f"--clear removes the whole impairment; give it without {options}")
        return None
    if not given:
        raise LabError("give --loss, --delay, --jitter or --rate, or --clear")
    return impair.checked_impairment(given, IMPAIR_OPTIONS)


def cmd_impair(args: argparse.Namespace) -> int:
    wanted = impairment_from_args(args)
    lab = _lab(args)
    lab.require_up()
    figures = dataclasses.asdict(wanted) if wanted is not None else {}
    imp = impair.impair(lab.topology, lab.state_dir, args.link, clear=wanted is None, **figures)
    how = "netem" if imp.delay_ms and impair.netem_available() else "udp relay" if imp.delay_ms else ""
    print(f"link {args.link}: loss {imp.loss_pct:g} %, delay {imp.delay_ms:g} ms {how},"
          f" jitter {imp.jitter_ms:g} ms, rate {imp.rate_mbit:g} Mbit/s (each direction)")
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    lab = _lab(args)
    lab.node(args.node)
    lab.start_daemons([args.node])
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    lab = _lab(args)
    lab.node(args.node)
    lab.stop_daemon(args.node)
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    from alpaca.lab import nodes

    lab = _lab(args)
    lab.node(args.node)
    nodes.signal_daemon(lab.state_dir, args.node, signal.SIGHUP)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from alpaca.lab.demo import run_demo

    return run_demo(args.state_dir)


def cmd_compose(args: argparse.Namespace) -> int:
    from alpaca.lab.compose import render_compose, render_prometheus

    path = (args.topology or DEFAULT_TOPOLOGY).resolve()
    topology = load_topology(path)
    if args.prometheus_config:
        sys.stdout.write(render_prometheus(topology))
    else:
        docker_dir = Path(__file__).resolve().parents[2] / "docker"
        sys.stdout.write(render_compose(topology, os.path.relpath(path, docker_dir)))
    return 0


def cmd_render_node(args: argparse.Namespace) -> int:
    from alpaca.lab.compose import render_node

    topology = load_topology(args.topology or DEFAULT_TOPOLOGY)
    try:
        topology.node(args.node)
    except KeyError:
        raise LabError(f'no node "{args.node}" in {topology.source}') from None
    config = render_node(topology, args.node, args.keys, args.dir, run=args.run, container=args.container)
    print(config or f"{args.node} is a host: nothing to write")
    return 0
