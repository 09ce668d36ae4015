"""The TUN link: MTU, the tunnel /16 address, up. Also the check that its name is free.

The daemon creates the device itself by opening /dev/net/tun (TUNSETIFF, non-persistent, so the
kernel deletes it when the process exits, even after kill -9). These helpers only configure it.
Before creating it, the daemon calls :func:`check_name_free`: it would otherwise attach to a
*persistent* device of the same name (``ip tuntap add``, another VPN) and configure a device
that outlives us, or share one another program has open. Neither is ours, so neither is
removed: the start stops with an error. A TUN device is held open when its carrier is on (the
kernel turns it on when a descriptor attaches, off when the last one detaches) or, for a
program that turned the carrier off itself (TUNSETCARRIER), when a descriptor in /proc shows
it (:func:`tun_holders`).
Callers: the control greenlet at set-up.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import TC_H_ROOT

from alpaca.errors import SystemSetupError
from alpaca.system import sysctl
from alpaca.system.netlink import IFF_UP, OK_ADD, errno_text, iproute, nl_call

log = logging.getLogger(__name__)


def link_index(ifname: str, netns: str | None = None, ipr: IPRoute | None = None) -> int | None:
    """The interface index of ``ifname``, or None if there is no such device."""
    with iproute(netns, ipr) as nl:
        found = nl.link_lookup(ifname=ifname)
        return int(found[0]) if found else None


def differs_from(ifname: str, address_cidr: str, mtu: int, netns: str | None = None,
                 ipr: IPRoute | None = None) -> str | None:
    """How ``ifname`` differs from what :func:`configure_tun` made of it: its address flushed
    (the kernel then dropped every route through it), the device set down, or another MTU
    (a packet of our MTU then is dropped), in words; None when it is as configured, or gone
    (nothing to put back on it).

    Raises:
        SystemSetupError: a netlink failure (operation spelled out).
    """
    iface = ipaddress.ip_interface(address_cidr)
    with iproute(netns, ipr) as nl:
        index = link_index(ifname, ipr=nl)
        links = nl_call(f"reading the state of {ifname}", nl.get_links, index) if index else None
        if not links:
            return None
        if not links[0]["flags"] & IFF_UP:
            return "set down"
        if links[0].get_attr("IFLA_MTU") != mtu:
            return f"mtu {links[0].get_attr('IFLA_MTU')}"
        addrs = nl_call(f"listing the addresses of {ifname}", nl.get_addr, family=socket.AF_INET,
                        index=index) or ()
        if not any(a.get_attr("IFA_ADDRESS") == str(iface.ip) and a["prefixlen"] == iface.network.prefixlen
                   for a in addrs):
            return "address gone"
        return None


def configure_tun(
    ifname: str,
    address_cidr: str,
    mtu: int,
    netns: str | None = None,
    ipr: IPRoute | None = None,
    *,
    txqueuelen: int | None = None,
) -> int:
    """Set the MTU (and transmit queue), add ``address_cidr`` (idempotent), bring ``ifname`` up.

    IPv6 is turned off on the device before it comes up: only IPv4 is carried, and otherwise
    the kernel's own IPv6 traffic (router solicitations) is read from it and dropped. The
    setting belongs to the device and goes away with it, so there is nothing to restore.

    Returns:
        The interface index.
    Raises:
        SystemSetupError: no such device, or a netlink failure (operation spelled out).
    """
    iface = ipaddress.ip_interface(address_cidr)
    with iproute(netns, ipr) as nl:
        index = link_index(ifname, ipr=nl)
        if index is None:
            raise SystemSetupError(f"configuring {ifname}: {errno_text(errno.ENODEV)}")
        nl_call(f"setting mtu {mtu} on {ifname}", nl.link, "set", index=index, mtu=mtu)
        if txqueuelen is not None:
            nl_call(f"setting txqueuelen {txqueuelen} on {ifname}", nl.link, "set", index=index,
                    txqlen=txqueuelen)
        _one_root_qdisc(nl, ifname, index)
        nl_call(
            f"adding address {iface.with_prefixlen} to {ifname}",
            nl.addr,
            "add",
            index=index,
            address=str(iface.ip),
            prefixlen=iface.network.prefixlen,
            ok=OK_ADD,
        )
        _disable_ipv6(ifname, netns)
        nl_call(f"setting {ifname} up", nl.link, "set", index=index, state="up")
    log.info("tun configured dev=%s addr=%s mtu=%d", ifname, iface.with_prefixlen, mtu)
    return index


def _one_root_qdisc(nl: IPRoute, ifname: str, index: int) -> None:
    """Give a multi-queue device (the TUN device with its priority lane) one root qdisc
    before it comes up. Otherwise the kernel attaches ``mq`` with a child qdisc for each of
    the 256 queues a multi-queue TUN device has room for: 0.85 MiB of kernel memory at 64
    packets per queue, 3.5 MiB at 500 (measured; 0.23 with one root). A TUN device never
    holds packets back in its qdisc (a full ring drops), so one ``pfifo_fast`` serves all
    queues; each packet keeps the queue the steering program chose. A refusal is a warning:
    the device works with the kernel's qdiscs."""
    links = nl_call(f"reading {ifname}", nl.get_links, index)
    if not links or (links[0].get_attr("IFLA_NUM_TX_QUEUES") or 1) <= 1:
        return
    qdiscs = nl_call(f"reading the qdiscs of {ifname}", nl.get_qdiscs, index=index) or ()
    if [q.get_attr("TCA_KIND") for q in qdiscs if q["parent"] == TC_H_ROOT] == ["pfifo_fast"]:
        return  # done before (a repair calls configure_tun again; pfifo_fast cannot "change")
    try:
        nl.tc("replace", "pfifo_fast", index, 0, parent=TC_H_ROOT)
    except NetlinkError as exc:
        log.warning("could not give %s one root qdisc (%s); the kernel's per-queue qdiscs stay",
                    ifname, errno_text(exc.code))


def check_name_free(
    ifname: str, netns: str | None = None, ipr: IPRoute | None = None, *, wait: float = 2.0,
) -> None:
    """Make sure no device is named ``ifname`` before the daemon creates its TUN device.

    Nothing is ever deleted. A TUN device of an earlier run of ours is not persistent: the
    kernel deletes it when its last descriptor closes, so one that is still there without a
    holder is being deleted, and is waited for (up to ``wait`` seconds).

    Raises:
        SystemSetupError: the name is taken by a device of another kind, by a persistent TUN
            device (``ip tuntap add``, another VPN), or by a TUN device a running program has
            open. Each error names the device and says to choose another ``tun_name``.
    """
    deadline = time.monotonic() + wait
    with iproute(netns, ipr) as nl:
        while True:
            found = _tun_in_the_way(ifname, nl)
            if found is None:
                return
            if found == "dying" and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            break
    if found == "persistent":
        raise SystemSetupError(
            f"device {ifname} is a persistent TUN device (made by `ip tuntap add` or another "
            "program); it is not ours to delete", None,
            f"choose another tun_name, or delete it with `ip link del {ifname}` if nothing uses it")
    holders = tun_holders(ifname)
    who = f" (pid {', '.join(map(str, holders))})" if holders else ""
    raise SystemSetupError(
        f"device {ifname} is a TUN device another running program has open{who}", None,
        f"choose another tun_name, or stop that program (see `ip -d link show {ifname}`)")


class NotATun(SystemSetupError):
    """The TUN device's name is taken by a device of another kind."""


def tun_name_problem(ifname: str, netns: str | None = None) -> str | None:
    """Why ``run`` could not create its TUN device ``ifname`` now, whoever starts it: the
    name is taken by a device of another kind or by a persistent TUN device. None otherwise,
    also for a TUN device a program has open (it may be this config's own running daemon).
    Read only.

    Raises:
        SystemSetupError: the devices could not be read.
    """
    with iproute(netns) as nl:
        try:
            found = _tun_in_the_way(ifname, nl)
        except NotATun as exc:
            return str(exc)
    if found == "persistent":
        return (f"device {ifname} is a persistent TUN device (made by `ip tuntap add` or another program);"
                " choose another tun_name")
    return None


def _tun_in_the_way(ifname: str, nl: IPRoute) -> str | None:
    """None if no device is named ``ifname``; else "persistent", "held" (a program has it
    open) or "dying" (a non-persistent TUN device nobody has open: the kernel is deleting it).

    Raises:
        SystemSetupError: the device is not a TUN device.
    """
    index = link_index(ifname, ipr=nl)
    links = nl_call(f"reading device {ifname}", nl.get_links, index,
                    ok=(errno.ENODEV,)) if index is not None else None
    if not links:
        return None
    kind = link_kind(links[0])
    if kind != "tun":
        raise NotATun(
            f"device {ifname} exists and is not a TUN device (kind {kind or 'none'})", None,
            "choose another tun_name: that device is not ours")
    info = links[0].get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    if data is not None and data.get_attr("IFLA_TUN_PERSIST"):
        return "persistent"
    if links[0].get_attr("IFLA_CARRIER") or tun_holders(ifname):  # see the module docstring
        return "held"
    return "dying"


def routed_bridges(netns: str | None = None, ipr: IPRoute | None = None) -> list[str]:
    """Names of the bridges with an IPv4 address: hosts behind them (containers, VMs) reach
    the rest of the world through this host's forwarding."""
    with iproute(netns, ipr) as nl:
        names = {int(msg["index"]): str(msg.get_attr("IFLA_IFNAME")) for msg in
                 nl_call("listing devices", nl.get_links) or () if link_kind(msg) == "bridge"}
        routed = {int(msg["index"]) for msg in
                  nl_call("listing addresses", nl.get_addr, family=socket.AF_INET) or ()}
    return sorted(name for index, name in names.items() if index in routed)


def tun_holders(ifname: str, proc: Path = Path("/proc")) -> list[int]:
    """Pids of the processes with a /dev/net/tun descriptor attached to a device ``ifname``.

    The kernel shows the attached device in the descriptor's fdinfo (``iff:\t<name>``). The
    name is not tied to a namespace: a holder of a same-named device in another namespace
    counts too, which errs on the side of leaving a device alone. Processes that exit or
    that we may not look into during the scan are skipped.
    """
    wanted = f"iff:\t{ifname}\n"
    holders = []
    for entry in proc.iterdir():
        if entry.name.isdigit() and _holds_tun(entry, wanted):
            holders.append(int(entry.name))
    return sorted(holders)


def _holds_tun(pid_dir: Path, wanted: str) -> bool:
    try:
        fds = os.listdir(pid_dir / "fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(pid_dir / "fd" / fd) != "/dev/net/tun":
                continue
            if wanted in (pid_dir / "fdinfo" / fd).read_text():
                return True
        except OSError:
            continue
    return False


def link_kind(link: Any) -> str | None:
    """The kind of a link message (``"tun"``, ``"veth"``...), None for a device without one
    (e.g. a NIC)."""
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return str(kind) if kind is not None else None


def _disable_ipv6(ifname: str, netns: str | None) -> None:
    key = f"net.ipv6.conf.{ifname}.disable_ipv6"
    try:
        sysctl.write(key, "1", netns)
    except SystemSetupError as exc:  # a kernel without IPv6: nothing to turn off
        log.debug("ipv6 not disabled dev=%s error=%s", ifname, exc)
