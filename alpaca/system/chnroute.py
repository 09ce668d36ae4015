"""chnroute: thousands of prefixes routed outside the tunnel, loaded and removed in bulk.

File format (as the original's ``route_data_cidr.txt``): one ``a.b.c.d/len`` per line; ``#``
starts a comment; blank lines are ignored; prefix length 0 is skipped (as the original skips
lengths below 1, so a stray ``0.0.0.0/0`` cannot swallow the tunnel's default). Bad lines are
reported with their line numbers, all at once; a prefix with host bits set is one (the parser
is ``check``'s, :func:`alpaca.config.read_chnroute`).

Loading sends hand-encoded RTM_NEWROUTE messages, about 1,400 per ``sendto`` (64 KiB), through
:class:`~alpaca.system.netlink.RtnlSocket`; removal dumps the routes once and deletes every route
of the table that carries our proto (but those another running daemon keeps there), so it also
cleans up after a crash without any journal.
Callers: the control greenlet, at set-up and teardown.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Iterable
from pathlib import Path

from alpaca.config import read_chnroute
from alpaca.system import netlink
from alpaca.system.netlink import OK_ADD, OK_DEL, PROTO_ALPACA, RT_TABLE_DEFAULT
from alpaca.system.routes import Uplink

log = logging.getLogger(__name__)


def load_file(path: str | Path) -> list[ipaddress.IPv4Network]:
    """Read and check a chnroute data file: :func:`alpaca.config.read_chnroute` (the parser
    ``check`` and the start-up use too, so the three agree on what a file holds).

    Raises:
        ConfigError: the file or one located line per bad prefix.
    """
    return list(read_chnroute(Path(path)))


def add(
    nets: Iterable[ipaddress.IPv4Network],
    uplink: Uplink,
    table: int = RT_TABLE_DEFAULT,
    netns: str | None = None,
    *,
    replace: bool = False,
) -> list[ipaddress.IPv4Network]:
    """Add ``nets`` via ``uplink`` (its gateway, device and ``onlink``) to ``table`` in bulk.
    An existing route to the same prefix counts as done and is left alone (another
    program's); with ``replace`` (for routes known to be ours: the uplink moved) each is
    replaced in place, or added if it is gone.

    Returns:
        The prefixes whose route this call added or replaced (those that existed left out).
    Raises:
        SystemSetupError: the first real failure, with the prefix named.
    """
    gateway, oif = uplink.gateway, uplink.oif
    flags = netlink.NLM_F_REQUEST | netlink.NLM_F_ACK | netlink.NLM_F_CREATE
    flags |= netlink.NLM_F_REPLACE if replace else netlink.NLM_F_EXCL
    with netlink.RtnlSocket(netns) as rt:
        by_seq: dict[int, ipaddress.IPv4Network] = {}
        messages = []
        for net in nets:
            seq = rt.next_seq()
            by_seq[seq] = net
            messages.append(
                netlink.encode_route(netlink.RTM_NEWROUTE, flags, seq, net, table, gateway=gateway, oif=oif,
                                     onlink=uplink.onlink)
            )
        results = rt.request_many(messages)
    _raise_first(results, by_seq, () if replace else OK_ADD, f"via {gateway or '-'} oif {oif} table {table}",
                 "replacing" if replace else "adding")
    done = [by_seq[seq] for seq, code in sorted(results.items()) if not code]
    log.info("chnroute %s count=%d existed=%d via=%s table=%d", "replaced" if replace else "loaded",
             len(done), len(messages) - len(done), gateway, table)
    return done


def remove(
    table: int = RT_TABLE_DEFAULT, netns: str | None = None, keep: Iterable[str] = (),
) -> int:
    """Delete every IPv4 route with our proto in ``table`` (idempotent, journal-free), except
    those to a prefix in ``keep`` (CIDR strings; another running daemon's routes in the
    table; malformed entries are ignored).

    Returns:
        How many routes were deleted.
    """
    kept = _networks(keep)
    flags = netlink.NLM_F_REQUEST | netlink.NLM_F_ACK
    with netlink.RtnlSocket(netns) as rt:
        by_seq: dict[int, ipaddress.IPv4Network] = {}
        messages = []
        for payload in rt.dump_routes(socket.AF_INET):
            _family, _dst_len, proto, _scope, _rtype = netlink.route_fields(payload)
            if proto != PROTO_ALPACA or netlink.route_table(payload) != table:
                continue
            net = _dst_of(payload)
            if net in kept:
                continue
            seq = rt.next_seq()
            by_seq[seq] = net
            messages.append(netlink.encode_route(netlink.RTM_DELROUTE, flags, seq, net, table))
        results = rt.request_many(messages)
    _raise_first(results, by_seq, OK_DEL, f"table {table}", "deleting")
    if messages:
        log.info("routes removed count=%d proto=%d table=%d", len(messages), PROTO_ALPACA, table)
    return len(messages)


def held_by_others(
    nets: Iterable[ipaddress.IPv4Network], table: int, netns: str | None = None,
) -> set[ipaddress.IPv4Network]:
    """Those of ``nets`` to which ``table`` holds another program's route and none of ours
    (one dump): a route of ours that another program replaced. A replace there would take
    it over, and the undo (which deletes our proto) would then delete it."""
    wanted = set(nets)
    ours: set[ipaddress.IPv4Network] = set()
    others: set[ipaddress.IPv4Network] = set()
    with netlink.RtnlSocket(netns) as rt:
        for payload in rt.dump_routes(socket.AF_INET):
            if netlink.route_table(payload) != table:
                continue
            net = _dst_of(payload)
            if net in wanted:
                (ours if netlink.route_fields(payload)[2] == PROTO_ALPACA else others).add(net)
    return others - ours


def _networks(cidrs: Iterable[str]) -> set[ipaddress.IPv4Network]:
    found = set()
    for cidr in cidrs:
        try:
            found.add(ipaddress.IPv4Network(cidr, strict=False))
        except ValueError:
            continue
    return found


def _dst_of(payload: bytes) -> ipaddress.IPv4Network:
    _family, dst_len, *_ = netlink.route_fields(payload)
    dst = netlink.parse_attrs(payload, 12).get(netlink.RTA_DST, b"\0\0\0\0")
    return ipaddress.IPv4Network((ipaddress.IPv4Address(dst[:4]), dst_len))


def _raise_first(
    results: dict[int, int],
    by_seq: dict[int, ipaddress.IPv4Network],
    ok: tuple[int, ...],
    where: str,
    verb: str,
) -> None:
    failed = [(seq, code) for seq, code in sorted(results.items()) if code and code not in ok]
    if not failed:
        return
    seq, code = failed[0]
    op = f"{verb} route {by_seq[seq]} {where} ({len(failed)} of {len(results)} failed)"
    raise netlink.setup_error(op, OSError(code, errno.errorcode.get(code, str(code))), code)
