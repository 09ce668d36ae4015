"""The command line: ``alpaca-tunnel [-c CONFIG] [-t] [-v] [COMMAND]``.

Without a command it runs the daemon, as the original did. Commands are rows of
:data:`SUBCOMMANDS`: adding one is a handler function plus one row.

Exit codes: 0 success, 1 runtime error (``alpaca-tunnel: <message>``), 2 bad config or usage
(one ``alpaca-tunnel: <problem>`` line per problem, never a traceback). Any other exception
is a bug: the traceback is printed and the exit code is 1.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import signal
import socket
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from alpaca import __version__, show
from alpaca.config import Config, Mode, load_config, reach_warnings, read_chnroute
from alpaca.configreader import shown_path
from alpaca.core.ids import format_peer_id, printable, quoted
from alpaca.entry import EarlySignals
from alpaca.errors import AlpacaError, ConfigError, StateFileError
from alpaca.hostplan import host_plan
from alpaca.lab import cli as lab_cli
from alpaca.log import setup_logging
from alpaca.paths import resolve_config_path, socket_path_fault
from alpaca.secrets import Secrets, load_secrets, shown_host
from alpaca.system.link import tun_name_problem
from alpaca.system.plan import LoadChnroute, MoveDefaultRoute, Op, lookup_problems

PROG = "alpaca-tunnel"
EXIT_OK, EXIT_ERROR, EXIT_CONFIG = 0, 1, 2
#: what a shell reports for a program that SIGPIPE ended (``alpaca-tunnel show | head``)
EXIT_SIGPIPE = 128 + signal.SIGPIPE

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True, slots=True)
class Subcommand:
    """One row of the command table."""

    name: str
    help: str
    handler: Handler
    #: Adds the command's own arguments to its sub-parser, if it has any.
    configure: Callable[[argparse.ArgumentParser], None] | None = None


def load_all(args: argparse.Namespace) -> tuple[Config, Secrets]:
    """Load the config named by ``-c`` (or the default path) and its secrets file."""
    config = load_config(resolve_config_path(args.config))
    return config, load_secrets(config.secret_file, config.id)


def cmd_run(args: argparse.Namespace, early: EarlySignals | None = None) -> int:
    """Run the tunnel until it is stopped (SIGINT/SIGTERM). ``early``: the signals held since
    the process began (:mod:`alpaca.entry`); held from here when None."""
    early = early or EarlySignals()
    config = load_config(resolve_config_path(args.config))
    setup_logging(config.log_level, args.timestamps)
    try:
        secrets = load_secrets(config.secret_file, config.id)
        config.engine_settings(secrets)  # cross-checks the two files before touching the host
        for warning in reach_warnings(config, secrets):
            logging.getLogger(PROG).warning("%s", warning)
        if config.chnroute is not None:  # read again when loaded: a broken file touches nothing
            read_chnroute(config.chnroute.data)
        _check_state_file(config)
    except AlpacaError:
        _undo_crashed_run(config.control_socket, f"{config.path}: control_socket")
        raise
    try:
        daemon = importlib.import_module("alpaca.daemon")  # lazily: the CLI works without it
    except ModuleNotFoundError as exc:
        if exc.name != "alpaca.daemon":
            raise
        print(f"{PROG}: this installation has no daemon module (alpaca.daemon)", file=sys.stderr)
        return EXIT_ERROR
    result: int = daemon.run(config, secrets, lambda: early.reload_asked)
    return result


def _undo_crashed_run(control_socket: Path, owner: str) -> list[str] | None:
    """Undo what a crashed run of this node left on the host (a start that stops on a
    broken file must not leave a client without its default route); None if nothing was
    left, else the steps that failed."""
    from alpaca.system import journal  # lazily: pyroute2 and nft only where needed

    try:
        failures = journal.undo_left_behind(control_socket, f"{owner} {control_socket}")
    except AlpacaError as exc:  # the node runs: its journal is its own
        logging.getLogger(PROG).warning("host changes of a previous run left as they are: %s", exc)
        return None
    if failures is not None:
        logging.getLogger(PROG).warning("undid the host changes of a previous run failed=%d",
                                        len(failures))
    return failures


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Undo the host changes a crashed run left (its journal), without starting the tunnel."""
    if args.cleanup_socket is not None:
        sock = Path(args.cleanup_socket)
        fault = socket_path_fault(sock)
        if fault:
            print(f"{PROG}: --control-socket {quoted(args.cleanup_socket)} {fault}", file=sys.stderr)
            return EXIT_CONFIG
    else:
        sock = load_config(resolve_config_path(args.config)).control_socket
    from alpaca.system import journal  # lazily: pyroute2 and nft only where needed

    try:
        own = journal.undo_left_behind(sock, f"control socket {sock}")
    except AlpacaError as exc:  # the node runs: its journal is its own, nothing is done
        print(f"{PROG}: nothing done: {exc}", file=sys.stderr)
        return EXIT_ERROR
    runs = [] if own is None else [sock]
    failures = own or []
    try:  # runs with another control socket (tun_name, which names the default one, changed)
        orphans = journal.recover_orphans(journal.journal_of(sock))
        runs += [path.with_name(path.name.removesuffix(journal.SUFFIX)) for path in orphans.undone]
        failures += orphans.failures
    except AlpacaError as exc:  # an orphan's lock cannot be made (a full directory)
        failures.append(str(exc))
    for failure in failures:
        print(f"{PROG}: {failure}", file=sys.stderr)
    if failures:
        return EXIT_ERROR
    if not runs:
        print(f"{PROG}: nothing to undo for {sock}")
        return EXIT_OK
    print(f"{PROG}: undid the host changes a previous run of {', '.join(map(str, runs))} left")
    return EXIT_OK


def _configure_cleanup(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--control-socket", dest="cleanup_socket", metavar="PATH", default=None,
        help="the node's control socket (default: control_socket from the config); "
             "for a config that no longer loads",
    )


def cmd_check(args: argparse.Namespace) -> int:
    """Validate config and secrets; print the settings and the host changes (never keys)."""
    config, secrets = load_all(args)
    config.engine_settings(secrets)
    prefixes = len(read_chnroute(config.chnroute.data)) if config.chnroute else 0
    _check_state_file(config)  # run refuses a corrupt one: so does check
    print("\n".join(describe_settings(config, secrets)))
    print()
    ops = host_ops(config, secrets)
    print("\n".join(describe_host_changes(config, ops, prefixes)))
    from alpaca.compat import legacy_warning  # lazily, like the daemon

    warnings = [*reach_warnings(config, secrets), *host_warnings(config, ops)]
    legacy = legacy_warning(config, secrets)
    for warning in [*warnings, legacy] if legacy else warnings:
        print(f"\nWARNING: {warning}")
    print(f"\n{PROG}: config OK")
    return EXIT_OK


def _check_state_file(config: Config) -> None:
    """Refuse a state file that holds no epoch as a problem of the config (exit 2) naming
    its key: state_file may name the wrong file (the secrets file, say).

    Raises:
        ConfigError: the state file's content is not an epoch, or it is no regular file.
        TunnelError: it cannot be read, or its directory is not writable.
    """
    from alpaca.io.epoch import check_state_file  # lazily, like the daemon

    try:
        check_state_file(config.state_file)
    except StateFileError as exc:
        raise ConfigError([f"{config.path}: state_file: {exc}"]) from exc


def cmd_genkey(args: argparse.Namespace) -> int:
    """Print a new random key: 64 hex characters (32 bytes) for the secrets file."""
    print(os.urandom(32).hex())
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    """Print the version."""
    print(f"{PROG} {__version__}")
    return EXIT_OK


SUBCOMMANDS: list[Subcommand] = [
    Subcommand("run", "run the tunnel (the default without a command)", cmd_run),
    Subcommand("check", "validate config and secrets, show what run would do", cmd_check),
    Subcommand("cleanup", "undo the host changes a crashed run left, without starting",
               cmd_cleanup, _configure_cleanup),
    Subcommand("genkey", "print a new random key for the secrets file", cmd_genkey),
    Subcommand("version", "print the version", cmd_version),
    Subcommand("show", show.HELP, show.cmd_show, show.configure),
    Subcommand("lab", "namespace lab: up, down, status, exec, impair, start, stop, reload, demo;"
               " compose, render-node for the Docker lab", lab_cli.run, lab_cli.configure),
]


def _add_global_options(parser: argparse.ArgumentParser, *, in_subcommand: bool) -> None:
    # Sub-parsers repeat the options with SUPPRESS defaults so that both
    # "alpaca-tunnel -c X check" and "alpaca-tunnel check -c X" work.
    def default(value: object) -> object:
        return argparse.SUPPRESS if in_subcommand else value

    parser.add_argument(
        "-c", "-C", "--config", dest="config", metavar="CONFIG", default=default(None),
        help="config file (default: found from the executable's location)",
    )
    parser.add_argument(
        "-t", "-T", "--timestamps", dest="timestamps", action="store_true",
        default=default(False), help="prefix log lines with the local time",
    )
    parser.add_argument(
        "-v", "-V", "--version", dest="version", action="store_true", default=default(False),
        help="print the version and exit",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every row of :data:`SUBCOMMANDS`."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Multi-peer, multi-path UDP VPN with forwarders and duplicate-send."
    )
    _add_global_options(parser, in_subcommand=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for row in SUBCOMMANDS:
        sub = commands.add_parser(row.name, help=row.help, description=row.help)
        _add_global_options(sub, in_subcommand=True)
        if row.configure is not None:
            row.configure(sub)
        sub.set_defaults(handler=row.handler)
    parser.set_defaults(handler=cmd_run)
    return parser


def main(argv: Sequence[str] | None = None, early: EarlySignals | None = None) -> int:
    """Run the command line; returns the exit code. ``early``: SIGHUP and SIGUSR1 held since
    the process began (:mod:`alpaca.entry`): ``run`` takes them over, any other command
    gives them their default actions back."""
    _escape_unencodable_output()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error; argparse has printed it
        if early is not None:
            early.release()
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    runs = args.handler is cmd_run and not args.version
    if early is not None and not runs:
        early.release()
    if not args.version:
        setup_logging(logging.INFO, args.timestamps)
    try:
        handler: Handler = cmd_version if args.version else args.handler
        code = cmd_run(args, early) if runs else handler(args)
        sys.stdout.flush()  # here: a full disk is this command's error, not the exit's
        return code
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{PROG}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    except AlpacaError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # stdout closed early (``| head``): as a program SIGPIPE ended
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silences the flush at exit
        return EXIT_SIGPIPE
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS:
            return _bug()
        print(f"{PROG}: cannot write the output: {os.strerror(exc.errno)}", file=sys.stderr)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - the buffered rest goes nowhere
        return EXIT_ERROR
    except Exception:
        return _bug()


def _escape_unencodable_output() -> None:
    """Make stdout and stderr write a character their encoding cannot take (a file name's
    non-UTF-8 byte, held as a lone surrogate) as a backslash escape instead of raising: under
    a strict encoding (a UTF-8 locale, PYTHONIOENCODING) such a path in a message was a
    traceback. A stream without ``reconfigure`` (not a text file) is left as it is."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


#: errno values of a write to stdout that fails for want of room or a working device
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _bug() -> int:
    """Print the exception being handled as a bug to report; the exit code."""
    traceback.print_exc()
    print(f"{PROG}: this is a bug; please report it with the traceback above", file=sys.stderr)
    return EXIT_ERROR


# --- check output ---------------------------------------------------------------------------


def _ids(peers: Sequence[int]) -> str:
    return ", ".join(format_peer_id(p) for p in peers) or "none"


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


#: What the protocol line adds when every peer speaks v2 (an original 6.1.2 config loads so).
_V2_ONLY = " (nodes of the C alpaca-tunnel 6.1.2 need legacy-6.1.2, here or in peer_protocols)"


def describe_settings(config: Config, secrets: Secrets) -> list[str]:
    """The resolved settings, one per line. Keys are shown by length only."""
    dup = config.dup
    metrics = config.metrics
    gateway = "none"
    if config.gateway is not None:
        gateway = f"{format_peer_id(config.gateway)} ({config.peer_address(config.gateway)})"
        if config.mode is Mode.SERVER:
            gateway += ", not used in server mode"
    overrides = ", ".join(f"{format_peer_id(p)}={v}" for p, v in config.peer_protocols.items())
    lines = [
        f"config:          {config.path}",
        f"secrets:         {secrets.path} ({len(secrets.peers)} peers)",
        f"mode:            {config.mode.value}",
        f"group:           {printable(config.group)}",
        f"id:              {format_peer_id(config.id)}",
        f"gateway:         {gateway}",
        f"forwarders:      {_ids(config.forwarders)}",
        f"mtu:             {config.mtu} bytes",
        f"ttl:             {config.ttl}",
        f"paths:           probe every {config.probe_interval:g} s, down after"
        f" {config.path_timeout:g} s, forgotten after {config.path_lifetime:g} s",
        f"duplicate-send:  {dup.policy.value}, {_count(dup.copies, 'extra copy', 'extra copies')}"
        f" {dup.delay * 1000:g} ms apart, at most {dup.queue_max} waiting",
        f"padding:         {_on(config.pad_small_packets)}",
        f"TUN device:      offload {_on(config.tun_offload)}, read ahead"
        f" {config.tun_read_ahead_kib} KiB, priority lane {_on(config.tun_priority_lane)}",
        f"UDP ports:       receive buffer {config.udp_rcvbuf_kib} KiB, priority lane"
        f" {_on(config.udp_priority_lane)}",
        f"replay window:   {config.replay_window} packets",
        f"source check:    {_on(config.inner_source_check)}",
        f"protocol:        {config.protocol}" + (f" (peers: {overrides})" if overrides else _V2_ONLY
                                                    if config.protocol == "v2" else ""),
        "metrics:         "
        + (f"http://{metrics.host}:{metrics.port}/metrics" if metrics.enabled else "off"),
        f"control socket:  {config.control_socket}",
        f"state file:      {config.state_file}",
        f"log level:       {logging.getLevelName(config.log_level).lower()}",
        f"hooks:           {'strict' if config.strict_hooks else 'a failure is logged'}",
        "scheduling:      "
        + (f"SCHED_RR priority {config.realtime_priority}" if config.realtime_priority else "normal"),
        "peers:",
    ]
    for peer in sorted(secrets.peers.values(), key=lambda p: p.peer_id):
        where = f"{peer.address}:{peer.port}" if peer.address else "address learned"
        if peer.hostname:
            where = f"{shown_host(peer.hostname)} -> {where}"
        own = " (self)" if peer.peer_id == config.id else ""
        legacy = config.peer_protocols.get(peer.peer_id, config.protocol) != "v2"
        key = "legacy key (its first 16 characters)" if legacy else f"{len(peer.key)}-byte key"
        lines.append(f"  {format_peer_id(peer.peer_id):<8} {where}, {key}{own}")
    return lines


def host_warnings(config: Config, ops: list[Op]) -> list[str]:
    """What ``run`` would find wrong on this host as it is now (read only): a device in the
    way of the TUN device, a port's interface that does not exist (the bind fails), a metrics
    address no interface has, and the ip rules that would keep traffic out of the tunnel's
    default route or send the chnroute prefixes into it (as ``run`` warns of them when it
    makes ``ops``)."""
    where = shown_path(config.path)
    found = _tun_warnings(config)
    found += [f"{where}: ports[{i}].interface: no device {quoted(port.interface)} on this host now;"
              f" run fails to bind the port {quoted(port.name)} until it exists"
              for i, port in enumerate(config.ports)
              if port.interface and not _device_exists(port.interface)]
    found += _metrics_warnings(config)
    chn_table = None
    for op in ops:
        if isinstance(op, LoadChnroute):
            chn_table = op.table
        elif isinstance(op, MoveDefaultRoute):
            try:
                found += [f"{where}: {problem}" for problem in lookup_problems(op.table, chn_table)]
            except (AlpacaError, OSError) as exc:
                found.append(f"the ip rules could not be read to check route_table: {exc}")
    return found


def _tun_warnings(config: Config) -> list[str]:
    try:
        problem = tun_name_problem(config.tun_name)
    except AlpacaError as exc:
        return [f"the devices could not be read to check tun_name: {exc}"]
    return [] if problem is None else [f"{shown_path(config.path)}: tun_name: {problem}; run fails to start"]


def _metrics_warnings(config: Config) -> list[str]:
    """The metrics address, if no interface of this host has it (binding port 0 of it: the
    port itself may be held by this config's own running daemon), unless it is the node's
    tunnel address (the TUN device has it before the metrics are served)."""
    host = config.metrics.host
    if not config.metrics.enabled or host == str(config.peer_address(config.id)):
        return []
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError as exc:
            return [f"{shown_path(config.path)}: metrics.listen: cannot listen on {host}"
                    f" ({exc.strerror or exc}); run fails to start: listen on an address of this host,"
                    " 127.0.0.1 or 0.0.0.0"]
    return []


def _device_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def host_ops(config: Config, secrets: Secrets) -> list[Op]:
    """The host changes ``run`` makes (alpaca.hostplan), a plan error as a config error."""
    try:
        return host_plan(config, secrets)
    except ValueError as exc:
        raise ConfigError([f"{config.path}: {exc}"]) from exc


def describe_host_changes(config: Config, ops: list[Op], chnroute_prefixes: int) -> list[str]:
    """What ``run`` changes on the host (``ops``: :func:`host_ops`), one change per line."""
    lines = ["host changes:"]
    lines += [f"  run pre_up_cmds: {cmd}" for cmd in config.pre_up_cmds]
    lines += [f"  run post_up_cmds: {cmd}" for cmd in config.post_up_cmds]
    for port in config.ports:
        bound = f" on interface {port.interface}" if port.interface else ""
        number = f"port {port.port}" if port.port else "a port the kernel picks"
        lines.append(f'  bind UDP socket "{port.name}": {port.address}, {number}{bound}')
    lines += [f"  {op.description}" for op in ops]
    if config.chnroute is not None:
        lines.append(f"  (chnroute: {_count(chnroute_prefixes, 'prefix', 'prefixes')} in"
                     f" {config.chnroute.data})")
    lines += [f"  at stop, run pre_down_cmds: {cmd}" for cmd in config.pre_down_cmds]
    lines += [f"  at stop, run post_down_cmds: {cmd}" for cmd in config.post_down_cmds]
    return lines
