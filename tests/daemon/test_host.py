"""Host integration of real daemons: what they change in their namespace, and that they put
everything back (after SIGTERM, and after a SIGKILL followed by a restart)."""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alpaca.config import read_chnroute
from tests.daemon.conftest import (
    ALPACA,
    INET,
    PORT,
    REPO,
    TUN,
    Lab,
    Peer,
    Simple,
    build_simple,
    host_state,
    ping,
    seen_source,
    wait_ping,
)
from tests.helpers import nsexec

CHNROUTE = REPO / "tests" / "data" / "original-sample" / "route_data_cidr.txt"


def start(topo: Simple) -> None:
    topo.lab.start(topo.server)
    topo.lab.start(topo.client)
    wait_ping(topo.client.ns, INET)


def assert_through_tunnel(topo: Simple) -> None:
    assert f"dev {TUN}" in nsexec(topo.client.ns, "ip", "route", "get", INET).stdout
    # The inet side sees the server's address: the packet left the server through its NAT.
    assert seen_source(topo.client.ns, topo.inet, INET) == "198.18.0.1"


def assert_same(before: dict[str, str], after: dict[str, str]) -> None:
    for key in before:
        assert after[key] == before[key], f"{key} differs"


def assert_same_lines(first: dict[str, str], second: dict[str, str]) -> None:
    """The same lines, in any order (two runs create the TUN's IPv6 routes in varying order)."""
    for key in first:
        assert sorted(second[key].splitlines()) == sorted(first[key].splitlines()), f"{key} differs"


def table_routes(ns: str, table: str) -> list[dict[str, object]]:
    out = nsexec(ns, "ip", "-j", "route", "show", "table", table).stdout
    return list(json.loads(out or "[]"))


@pytest.mark.netns
def test_host_client_mode_changes_are_undone(lab: Lab) -> None:
    topo = build_simple(lab)
    before = host_state(topo.client.ns)
    before_server = host_state(topo.server.ns)
    start(topo)
    assert_through_tunnel(topo)
    during = host_state(topo.client.ns)
    assert during["routes"] != before["routes"] and during["nft"] != before["nft"]
    assert lab.stop(topo.client) == 0
    assert lab.stop(topo.server) == 0
    assert_same(before, host_state(topo.client.ns))
    assert_same(before_server, host_state(topo.server.ns))


@pytest.mark.netns
def test_host_routes_removed_under_the_daemon_are_put_back(lab: Lab) -> None:
    topo = build_simple(lab)
    start(topo)
    first = table_routes(topo.client.ns, "253")
    assert any(r["dst"] == "default" for r in first)
    for route in first:  # another tool (or an interface flap) deletes our routes
        nsexec(topo.client.ns, "ip", "route", "del", str(route["dst"]), "table", "253")
    wanted = sorted(str(r["dst"]) for r in first)
    deadline = time.monotonic() + 5  # the monitor reconciles at most once a second
    while sorted(str(r["dst"]) for r in table_routes(topo.client.ns, "253")) != wanted:
        assert time.monotonic() < deadline, table_routes(topo.client.ns, "253")
        time.sleep(0.1)
    wait_ping(topo.client.ns, INET)
    assert "route restored" in topo.client.log()
    assert lab.stop(topo.client) == 0


@pytest.mark.netns
def test_host_client_recovers_after_kill(lab: Lab) -> None:
    topo = build_simple(lab)
    before = host_state(topo.client.ns)
    start(topo)
    first = host_state(topo.client.ns)
    lab.kill(topo.client)
    assert topo.client.journal_path.exists(), "a crash leaves the undo journal"
    lab.start(topo.client)
    assert "recovering from a previous run" in topo.client.log()
    wait_ping(topo.client.ns, INET)
    second = host_state(topo.client.ns)
    assert_same_lines(first, second)  # one copy of every route, rule and table
    defaults = [(r["dev"], r.get("metric", 0)) for r in table_routes(topo.client.ns, "253")
                if r["dst"] == "default"]
    # the tunnel's, and the copy of the uplink's moved default for a port bound to it
    assert sorted(defaults) == [(TUN, 0), ("eth0", 1000)], defaults
    assert second["nft"].count(f"table inet alpaca_{TUN} ") == 1
    assert_through_tunnel(topo)
    assert lab.stop(topo.client) == 0
    assert_same(before, host_state(topo.client.ns))


@pytest.mark.netns
def test_host_server_recovers_after_kill(lab: Lab) -> None:
    topo = build_simple(lab)
    nsexec(topo.server.ns, "sysctl", "-w", "net.ipv4.ip_forward=0")
    before = host_state(topo.server.ns)
    start(topo)
    first = host_state(topo.server.ns)
    assert first["ip_forward"].strip().endswith("= 1")
    lab.kill(topo.server)
    lab.start(topo.server)
    assert "recovering from a previous run" in topo.server.log()
    wait_ping(topo.client.ns, INET)
    second = host_state(topo.server.ns)
    assert_same_lines(first, second)
    assert second["nft"].count(f"table inet alpaca_{TUN} ") == 1
    assert_through_tunnel(topo)
    assert lab.stop(topo.server) == 0
    after = host_state(topo.server.ns)
    assert after["ip_forward"].strip() == "net.ipv4.ip_forward = 0"
    assert_same(before, after)


@pytest.mark.netns
def test_host_chnroute_loaded_and_removed(lab: Lab) -> None:
    topo = build_simple(lab, client_config={"chnroute": {"data": str(CHNROUTE)}})
    expected = {ipaddress.IPv4Network(n) for n in read_chnroute(CHNROUTE)}
    before = host_state(topo.client.ns)
    start(topo)
    loaded = {
        ipaddress.IPv4Network(str(r["dst"]))
        for r in table_routes(topo.client.ns, "253")
        if r["dst"] != "default" and str(r.get("protocol")) == "97"
    }
    chn = loaded & expected
    print(f"chnroute: {len(expected)} prefixes in the file, {len(chn)} in table 253")
    assert len(expected) == 6594
    assert chn == expected
    assert_through_tunnel(topo)
    assert lab.stop(topo.client) == 0
    assert_same(before, host_state(topo.client.ns))
    assert not table_routes(topo.client.ns, "253")


@pytest.mark.netns
@pytest.mark.parametrize("broken", ["host bits", "unreachable gateway"])
def test_host_a_chnroute_that_cannot_load_stops_the_start_with_its_key(lab: Lab, broken: str) -> None:
    """A prefix with host bits (``check`` refused it, ``run`` took it) and a chnroute.gateway
    no route reaches (the error named no key): the start stops with the file and line or the
    key in the error, and the host is as it was."""
    data = lab.tmp_path / "cn.txt"
    chn: dict[str, object] = {"data": str(data)}
    if broken == "host bits":
        data.write_text("1.0.1.0/24\n1.0.2.9/23\n")
    else:
        data.write_text("1.0.1.0/24\n")
        chn["gateway"] = "203.0.113.99"
    topo = build_simple(lab, client_config={"chnroute": chn})
    if broken == "host bits":  # a config error: nothing on the host is touched
        wanted, code = f'{data}:2: "1.0.2.9/23" has host bits set (did you mean "1.0.2.0/23"?)', 2
    else:
        wanted, code = f"{topo.client.config_path}: chnroute.gateway: 203.0.113.99 is not reachable", 1
    before = host_state(topo.client.ns)
    lab.start(topo.client, wait=False)
    assert topo.client.proc is not None
    assert topo.client.proc.wait(30) == code, topo.client.log_tail()
    assert wanted in topo.client.log(), topo.client.log_tail()
    assert_same(before, host_state(topo.client.ns))


@pytest.mark.netns
def test_host_a_client_follows_its_uplink_onto_another_network(lab: Lab) -> None:
    """A DHCP lease on another network (new address, new gateway) while the tunnel runs: the
    host route to the server follows the new gateway and the tunnel carries traffic again,
    with no reload (it used to stay dead until a restart); on exit the new default is back
    in main."""
    topo = build_simple(lab)
    lab.start(topo.server)
    lab.start(topo.client)
    wait_ping(topo.client.ns, INET)
    c = topo.client.ns
    nsexec(topo.server.ns, "ip", "addr", "add", "192.168.60.1/24", "dev", "cli")
    nsexec(c, "ip", "addr", "del", "192.168.50.2/24", "dev", "eth0")
    nsexec(c, "ip", "addr", "add", "192.168.60.2/24", "dev", "eth0")
    nsexec(c, "ip", "route", "add", "default", "via", "192.168.60.1", "dev", "eth0")  # as dhclient does
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        host = [r.get("gateway") for r in table_routes(c, "253") if r["dst"] == "192.168.50.1"]
        main = nsexec(c, "ip", "route", "show", "default", "table", "main").stdout
        if host == ["192.168.60.1"] and not main:
            break
        time.sleep(0.2)
    assert host == ["192.168.60.1"] and not main, (table_routes(c, "253"), main, topo.client.log())
    assert "the uplink changed" in topo.client.log()
    wait_ping(c, INET, timeout=10)  # through the tunnel: main has no default
    assert nsexec(c, "ip", "route", "show", "default", "table", "main").stdout == ""
    assert lab.stop(topo.client) == 0
    assert "default via 192.168.60.1 dev eth0" in nsexec(c, "ip", "route", "show", "table", "main").stdout


@pytest.mark.netns
def test_host_a_default_route_added_during_start_up_is_moved_too(lab: Lab) -> None:
    """A default route put into main after the host plan was applied and before the route
    monitor ran (here by a post_up hook; a DHCP client can do the same) was never seen: the
    monitor reads only what changes after it opened, so traffic left outside the tunnel
    until some other route event came."""
    hook = "ip route add default via 192.168.50.1 dev eth0 metric 50"
    topo = build_simple(lab, client_config={"post_up_cmds": [hook]})
    lab.start(topo.server)
    lab.start(topo.client)
    c = topo.client.ns
    deadline = time.monotonic() + 5
    while nsexec(c, "ip", "route", "show", "default", "table", "main").stdout:
        assert time.monotonic() < deadline, topo.client.log_tail()
        time.sleep(0.1)
    wait_ping(c, INET, timeout=10)
    assert_through_tunnel(topo)
    assert lab.stop(topo.client) == 0
    main = nsexec(c, "ip", "route", "show", "default", "table", "main").stdout
    assert "default via 192.168.50.1 dev eth0 metric 50" in main, main


@pytest.mark.netns
def test_host_chnroute_follows_the_uplink_onto_another_network(lab: Lab) -> None:
    """chnroute via the uplink (no chnroute.gateway): when a DHCP lease moves the uplink to
    another network, the kernel flushes the prefixes' routes with the old gateway; they are
    routed via the new one (they went through the tunnel until a restart), and removed on
    exit."""
    topo = build_simple(lab, client_config={"chnroute": {"data": str(CHNROUTE)}})
    expected = {ipaddress.IPv4Network(n) for n in read_chnroute(CHNROUTE)}
    start(topo)
    c = topo.client.ns
    nsexec(topo.server.ns, "ip", "addr", "add", "192.168.60.1/24", "dev", "cli")
    nsexec(c, "ip", "addr", "del", "192.168.50.2/24", "dev", "eth0")
    nsexec(c, "ip", "addr", "add", "192.168.60.2/24", "dev", "eth0")
    nsexec(c, "ip", "route", "add", "default", "via", "192.168.60.1", "dev", "eth0")
    deadline = time.monotonic() + 10
    while True:
        via = {ipaddress.IPv4Network(str(r["dst"])): r.get("gateway") for r in table_routes(c, "253")
               if r["dst"] != "default" and str(r.get("protocol")) == "97"}
        chn = {net: gateway for net, gateway in via.items() if net in expected}
        if (set(chn) == expected and set(chn.values()) == {"192.168.60.1"}) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(chn) == len(expected), (len(chn), topo.client.log_tail())
    assert set(chn.values()) == {"192.168.60.1"}, topo.client.log_tail()
    assert "via 192.168.60.1 dev eth0" in nsexec(c, "ip", "route", "get", "1.0.1.1").stdout
    wait_ping(c, INET, timeout=10)  # INET is no chnroute prefix: through the tunnel
    assert lab.stop(topo.client) == 0
    assert not table_routes(c, "253")


def _host_route_gateway(ns: str, dst: str, timeout: float = 10.0, want: str | None = None) -> object:
    """The gateway of our host route to ``dst`` in table 253 (once it is ``want``, if given),
    after the default routes of main were moved out of the way."""
    deadline = time.monotonic() + timeout
    while True:
        gateways = [r.get("gateway") for r in table_routes(ns, "253") if r["dst"] == dst]
        main = nsexec(ns, "ip", "route", "show", "default", "table", "main").stdout
        if ((want is None or gateways == [want]) and not main) or time.monotonic() > deadline:
            return gateways[0] if len(gateways) == 1 else gateways
        time.sleep(0.2)


@pytest.mark.netns
def test_host_a_backup_uplink_renewing_its_lease_does_not_take_the_peers(lab: Lab) -> None:
    """A second uplink (metric 600) renews its lease while the primary works: the host
    routes stay on the primary. Once the primary has lost its address, the backup's next
    renewal takes them, and the tunnel carries traffic over it."""
    topo = build_simple(lab)
    c = topo.client.ns
    lab.link(topo.server.ns, "192.168.52.1/24", c, "192.168.52.2/24", "cli2", "wlan0")
    lab.start(topo.server)
    lab.start(topo.client)
    wait_ping(c, INET)
    nsexec(c, "ip", "route", "add", "default", "via", "192.168.52.1", "dev", "wlan0", "metric", "600")
    time.sleep(2.5)  # the route event is handled (at most 1 s later) and the default moved
    assert _host_route_gateway(c, "192.168.50.1") == "192.168.50.1", topo.client.log_tail()
    assert "the uplink changed" not in topo.client.log()
    nsexec(c, "ip", "addr", "del", "192.168.50.2/24", "dev", "eth0")  # the primary is gone
    nsexec(c, "ip", "route", "add", "default", "via", "192.168.52.1", "dev", "wlan0", "metric", "600")
    assert _host_route_gateway(c, "192.168.50.1", want="192.168.52.1") == "192.168.52.1", \
        (table_routes(c, "253"), topo.client.log_tail())
    wait_ping(c, INET, timeout=10)


def _with_backup_uplink(lab: Lab) -> Simple:
    """The simple topology whose client has a backup uplink at start: wlan0 (192.168.52.2,
    gateway 192.168.52.1 on the server) with a default route of metric 600; both daemons
    running and the tunnel carrying traffic."""
    topo = build_simple(lab)
    c = topo.client.ns
    lab.link(topo.server.ns, "192.168.52.1/24", c, "192.168.52.2/24", "cli2", "wlan0")
    nsexec(c, "ip", "route", "add", "default", "via", "192.168.52.1", "dev", "wlan0", "metric", "600")
    lab.start(topo.server)
    lab.start(topo.client)
    wait_ping(c, INET)
    return topo


@pytest.mark.netns
def test_host_a_backup_uplink_known_at_start_takes_the_peers_when_the_primary_fails(lab: Lab) -> None:
    """Two uplinks at start (the backup at metric 600), both defaults moved out of main. The
    primary goes down and no default route comes back into main (the backup's DHCP client
    may not renew for hours): the host routes move to the backup, and the tunnel carries
    traffic over it (it stayed dead). Once the primary is up again, they go back to it. On
    exit both defaults are in main again."""
    topo = _with_backup_uplink(lab)
    c = topo.client.ns
    assert _host_route_gateway(c, "192.168.50.1") == "192.168.50.1", topo.client.log_tail()
    nsexec(c, "ip", "link", "set", "eth0", "down")
    assert _host_route_gateway(c, "192.168.50.1", want="192.168.52.1") == "192.168.52.1", \
        (table_routes(c, "253"), topo.client.log_tail())
    assert "the uplink changed" in topo.client.log()
    wait_ping(c, INET, timeout=10)
    nsexec(c, "ip", "link", "set", "eth0", "up")
    assert _host_route_gateway(c, "192.168.50.1", want="192.168.50.1") == "192.168.50.1", \
        (table_routes(c, "253"), topo.client.log_tail())
    wait_ping(c, INET, timeout=10)
    assert lab.stop(topo.client) == 0
    main = nsexec(c, "ip", "route", "show", "default", "table", "main").stdout
    assert "default via 192.168.50.1 dev eth0" in main and "via 192.168.52.1 dev wlan0" in main, main


@pytest.mark.netns
def test_host_a_client_stopped_while_on_its_backup_uplink_keeps_the_primarys_default(lab: Lab) -> None:
    """Stopped while the primary is down and the peers go over the backup: the backup's
    default comes back and the tunnel's goes; the primary's cannot be added while its device
    is down, so the stop reports it and the journal keeps it (as for a dock unplugged), and
    the next start puts it back once the device is up."""
    topo = _with_backup_uplink(lab)
    c = topo.client.ns
    nsexec(c, "ip", "link", "set", "eth0", "down")
    assert _host_route_gateway(c, "192.168.50.1", want="192.168.52.1") == "192.168.52.1", \
        (table_routes(c, "253"), topo.client.log_tail())
    assert lab.stop(topo.client) == 1, topo.client.log_tail()
    main = nsexec(c, "ip", "route", "show", "default", "table", "main").stdout
    assert main == "default via 192.168.52.1 dev wlan0 metric 600 \n", main
    assert "restoring route default dev eth0" in topo.client.log()
    assert not table_routes(c, "253")
    nsexec(c, "ip", "link", "set", "eth0", "up")
    lab.start(topo.client)
    assert lab.stop(topo.client) == 0, topo.client.log_tail()
    main = nsexec(c, "ip", "route", "show", "default", "table", "main").stdout
    assert "default via 192.168.50.1 dev eth0" in main and "via 192.168.52.1 dev wlan0" in main, main
    assert not topo.client.journal_path.exists()


@pytest.mark.netns
def test_host_a_roam_with_a_backup_uplink_moves_the_peers_once(lab: Lab) -> None:
    """A DHCP lease on another network (the old address deleted, the new default a moment
    later) on a client with a backup link: the peers follow the new default, and never go
    over the backup meanwhile (the uplink was dead for a moment only)."""
    topo = _with_backup_uplink(lab)
    c = topo.client.ns
    nsexec(topo.server.ns, "ip", "addr", "add", "192.168.60.1/24", "dev", "cli")
    nsexec(c, "ip", "addr", "del", "192.168.50.2/24", "dev", "eth0")
    time.sleep(1.5)  # the route event of the deletion is handled (at most 1 s later)
    nsexec(c, "ip", "addr", "add", "192.168.60.2/24", "dev", "eth0")
    nsexec(c, "ip", "route", "add", "default", "via", "192.168.60.1", "dev", "eth0")
    assert _host_route_gateway(c, "192.168.50.1", want="192.168.60.1") == "192.168.60.1", \
        (table_routes(c, "253"), topo.client.log_tail())
    time.sleep(3.5)  # past the hold: a pending check must find the new uplink working
    assert _host_route_gateway(c, "192.168.50.1") == "192.168.60.1"
    assert topo.client.log().count("the uplink changed") == 1, topo.client.log_tail()
    wait_ping(c, INET, timeout=10)


@pytest.mark.netns
@pytest.mark.parametrize("change", ["flush", "down", "mtu"])
def test_host_a_tunnel_device_changed_by_hand_is_set_up_again_with_its_routes(lab: Lab, change: str) -> None:
    """``ip addr flush`` on the TUN device, or ``ip link set down`` (the kernel drops every
    route through it, the tunnel's default too), or another MTU (our packets of 1400 bytes
    then are dropped): the daemon sets the device up again and the routes follow, so the
    tunnel carries traffic again (it used to stay without a route while show said all up)."""
    topo = build_simple(lab)
    lab.start(topo.server)
    lab.start(topo.client)
    c = topo.client.ns
    wait_ping(c, INET)
    if change == "flush":
        nsexec(c, "ip", "addr", "flush", "dev", TUN)
    elif change == "down":
        nsexec(c, "ip", "link", "set", TUN, "down")
    else:
        nsexec(c, "ip", "link", "set", TUN, "mtu", "1280")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        shown = nsexec(c, "ip", "-d", "addr", "show", "dev", TUN).stdout
        default = [r for r in table_routes(c, "253") if r["dst"] == "default"]
        told = "the tunnel device was changed" in topo.client.log()  # written just after the fix
        if "10.17.16.1/16" in shown and "mtu 1400" in shown and ",UP" in shown and default and told:
            break
        time.sleep(0.2)
    assert "10.17.16.1/16" in shown and "mtu 1400" in shown and default, (shown, topo.client.log_tail())
    assert "the tunnel device was changed" in topo.client.log()
    wait_ping(c, INET, timeout=10)
    transmitted, received, _ = ping(c, INET, "-c", "3", "-s", "1300", "-i", "0.2", "-W", "2")
    assert received == transmitted, topo.client.log_tail()


@pytest.mark.netns
def test_host_a_default_route_of_another_program_in_our_table_is_warned_about_once(lab: Lab) -> None:
    """Another program replaces the tunnel's default route in its table: traffic bypasses
    the tunnel, which is said once (it was silent), however many route events follow; once
    that route is deleted, the tunnel's is back."""
    topo = build_simple(lab)
    lab.start(topo.server)
    lab.start(topo.client)
    c = topo.client.ns
    wait_ping(c, INET)
    nsexec(c, "ip", "route", "replace", "default", "via", "192.168.50.1", "dev", "eth0", "table", "253")
    for i in range(3):  # more route events: one warning all the same
        time.sleep(1.2)
        nsexec(c, "ip", "route", "add", f"203.0.113.{i}/32", "via", "192.168.50.1")
    warning = "another program's default route holds table 253"
    deadline = time.monotonic() + 5
    while warning not in topo.client.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert topo.client.log().count(warning) == 1, topo.client.log_tail()
    nsexec(c, "ip", "route", "del", "default", "table", "253")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        default = [r for r in table_routes(c, "253") if r["dst"] == "default"]
        if default and default[0].get("dev") == TUN:
            break
        time.sleep(0.2)
    assert default and default[0].get("dev") == TUN, table_routes(c, "253")


_HOLD = """
import socket, sys, time
kind = socket.SOCK_DGRAM if sys.argv[1] == "udp" else socket.SOCK_STREAM
s = socket.socket(socket.AF_INET, kind)
s.bind((sys.argv[2], int(sys.argv[3])))
if kind == socket.SOCK_STREAM:
    s.listen()
print("bound", flush=True)
time.sleep(60)
"""


@pytest.mark.netns
def test_host_a_metrics_port_held_by_another_process_is_served_once_free(lab: Lab) -> None:
    """Any local user may bind an unprivileged port first: the metrics port held stopped the
    tunnel's start. Now the tunnel comes up, the error is logged and the port tried again."""
    topo = build_simple(lab)
    node = topo.client
    address, port = node.config["metrics"]["listen"].split(":")
    holder = subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, "-c", _HOLD, "tcp",
                               address, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "bound\n"
        lab.start(topo.server)
        lab.start(node)
        assert "the tunnel runs without it, trying again every 10 s" in node.log(), node.log_tail()
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 20
    while "metrics served url=" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://{address}:{port}/metrics').read())"
    got = subprocess.run(["ip", "netns", "exec", node.ns, sys.executable, "-c", fetch],
                         capture_output=True, text=True, timeout=10)
    assert "alpaca_build_info" in got.stdout, node.log_tail()
    assert re.search(r'alpaca_udp_receive_drops_total\{port="[^"]+"\} 0\.0', got.stdout), got.stdout


@pytest.mark.netns
def test_host_a_udp_port_held_by_another_process_stops_the_start_before_the_host_is_touched(
        lab: Lab) -> None:
    """The server's UDP port is another process's: the start stops with the error before it
    takes an epoch (the state file is not written) or changes anything on the host; it used to
    set the host up, fail, and undo it all."""
    held = "udp"
    topo = build_simple(lab)
    node = topo.server
    address, port = "0.0.0.0", PORT
    holder = subprocess.Popen(["ip", "netns", "exec", node.ns, sys.executable, "-c", _HOLD, held, address,
                               str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "bound\n"
        before = host_state(node.ns)
        lab.start(node, wait=False)
        assert node.proc is not None
        assert node.proc.wait(30) == 1, node.log_tail()
    finally:
        holder.kill()
        holder.wait()
    wanted = f"binding UDP port default to 0.0.0.0:{PORT}"
    assert wanted in node.log() and "Address already in use" in node.log(), node.log_tail()
    assert not Path(node.config["state_file"]).exists(), "an epoch was taken"
    assert_same(before, host_state(node.ns))


@pytest.mark.netns
def test_host_a_secrets_change_during_start_up_is_applied(lab: Lab) -> None:
    """A pre_up hook adds a peer to the secrets file (as config management might while the
    daemon waits for hooks, the uplink, name servers): the file was read before, and the
    watch, opened after, took the new file as the one read. Now the start reloads it."""
    ns = lab.ns("server")
    added = Peer("16.9").line()
    secrets = lab.tmp_path / "server" / "secrets.txt"
    node = lab.node("server", ns, "1.1", "server", pre_up_cmds=[f"echo '{added}' >> {secrets}"])
    node.write_secrets([Peer("1.1").line(), Peer("16.1").line()])
    lab.start(node)
    deadline = time.monotonic() + 10
    while "reloaded peers=3" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "the secrets file changed during start-up; reloading" in node.log(), node.log_tail()
    assert "reloaded peers=3" in node.log(), node.log_tail()


@pytest.mark.netns
def test_host_server_behind_forward_drop(lab: Lab) -> None:
    topo = build_simple(lab)
    nsexec(topo.server.ns, "iptables", "-P", "FORWARD", "DROP")
    nsexec(topo.server.ns, "iptables", "-A", "FORWARD", "-s", "203.0.113.0/24", "-j", "ACCEPT")
    before = host_state(topo.server.ns)
    start(topo)
    assert f"alpaca-tunnel:{TUN}" in nsexec(topo.server.ns, "iptables", "-S", "FORWARD").stdout
    assert_through_tunnel(topo)
    sent, received, _ = ping(topo.client.ns, INET, "-c", "10", "-i", "0.05")
    assert received == sent
    assert lab.stop(topo.server) == 0
    after = host_state(topo.server.ns)
    assert after["iptables"] == before["iptables"]
    assert_same(before, after)


def _hooks(path: str) -> dict[str, list[str]]:
    tun = f"ip link show {TUN} >/dev/null 2>&1"
    return {
        "pre_up_cmds": [f"{tun} && echo pre_up tun >> {path} || echo pre_up notun >> {path}",
                        "echo failing; exit 3",
                        f"echo pre_up second >> {path}"],
        "post_up_cmds": [f"ip -o addr show dev {TUN} | grep -q 10.17.1.1/16 && echo post_up addr >> {path}"],
        "pre_down_cmds": [f"{tun} && echo pre_down tun >> {path} || echo pre_down notun >> {path}"],
        "post_down_cmds": [f"{tun} && echo post_down tun >> {path} || echo post_down notun >> {path}"],
    }


@pytest.mark.netns
def test_host_hooks_run_in_order(lab: Lab) -> None:
    ns = lab.ns("server")
    record = lab.tmp_path / "hooks.txt"
    node = lab.node("server", ns, "1.1", "server", **_hooks(str(record)))
    node.write_secrets([Peer("1.1").line()])
    lab.start(node)
    assert lab.stop(node) == 0
    assert record.read_text().splitlines() == [
        "pre_up notun", "pre_up second", "post_up addr", "pre_down tun", "post_down notun",
    ]
    assert "hook failed stage=pre_up index=1 exit=3" in node.log()


@pytest.mark.netns
def test_host_strict_hook_failure_stops_startup(lab: Lab) -> None:
    ns = lab.ns("server")
    record = lab.tmp_path / "hooks.txt"
    node = lab.node("server", ns, "1.1", "server", strict_hooks=True, **_hooks(str(record)))
    node.write_secrets([Peer("1.1").line()])
    nsexec(ns, "sysctl", "-w", "net.ipv4.ip_forward=0")
    before = host_state(ns)
    lab.start(node, wait=False)
    assert node.proc is not None
    code = node.proc.wait(20)
    assert code not in (0, -signal.SIGKILL), node.log_tail()
    assert "pre_up_cmds[1] failed with exit code 3" in node.log()
    # Nothing after the failing hook, and no down hook: the post_up hooks never ran.
    assert record.read_text().splitlines() == ["pre_up notun"]
    assert_same(before, host_state(ns))
    assert not node.journal_path.exists()


@pytest.mark.netns
def test_host_a_persistent_tun_device_of_our_name_is_refused_and_kept(lab: Lab) -> None:
    """Someone's persistent TUN device has our tun_name: the start stops with an error naming
    it and the key, before any hook runs (a pre_up hook's change had no down hook to undo
    it), and the device is still there afterwards (it used to be deleted)."""
    ns = lab.ns("server")
    hooked = lab.tmp_path / "pre_up.ran"
    node = lab.node("server", ns, "1.1", "server", pre_up_cmds=[f"touch {hooked}"])
    node.write_secrets([Peer("1.1").line()])
    nsexec(ns, "ip", "tuntap", "add", "dev", TUN, "mode", "tun")
    before = host_state(ns)
    lab.start(node, wait=False)
    assert node.proc is not None
    assert node.proc.wait(20) == 1, node.log_tail()
    assert f"device {TUN} is a persistent TUN device" in node.log() and "tun_name" in node.log()
    assert_same(before, host_state(ns))
    assert "persist on" in nsexec(ns, "ip", "-d", "link", "show", TUN).stdout
    assert not hooked.exists()
    nsexec(ns, "ip", "link", "del", TUN)


UNIT = REPO / "config" / "alpaca-tunnel.service"


def test_service_unit_verifies(tmp_path: Path) -> None:
    """``systemd-analyze verify`` accepts the unit (with ExecStart pointed at this installation's
    executable, since /usr/local/bin/alpaca-tunnel exists only after ``make install``)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/alpaca-tunnel -c /usr/local/etc/alpaca-tunnel.d/config.json run" in text
    for line in ("CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE CAP_SYS_NICE CAP_BPF",
                 "DeviceAllow=/dev/net/tun rw", "RuntimeDirectory=alpaca-tunnel",
                 "StateDirectory=alpaca-tunnel", "Restart=on-failure", "NoNewPrivileges=yes"):
        assert line in text.splitlines()
    unit = tmp_path / "alpaca-tunnel.service"
    exe = str(Path(sys.executable).with_name("alpaca-tunnel"))
    unit.write_text(text.replace("/usr/local/bin/alpaca-tunnel", exe))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr


@pytest.mark.netns
def test_host_second_instance_of_a_node_leaves_the_first_alone(lab: Lab) -> None:
    """The same node started again by hand while it runs: refused before it touches anything
    (no journal recovery, no check of its device name), and the first keeps working."""
    topo = build_simple(lab)
    before = host_state(topo.client.ns)
    start(topo)
    during = host_state(topo.client.ns)
    second = subprocess.run(
        ["ip", "netns", "exec", topo.client.ns, ALPACA, "-c", str(topo.client.config_path), "run"],
        capture_output=True, text=True, timeout=30, check=False)
    assert second.returncode == 1, second.stderr
    assert f"another alpaca-tunnel (pid {topo.client.proc.pid}) is running this node" in second.stderr
    assert "control_socket" in second.stderr
    cleanup = subprocess.run(
        ["ip", "netns", "exec", topo.client.ns, ALPACA, "-c", str(topo.client.config_path), "cleanup"],
        capture_output=True, text=True, timeout=30, check=False)
    assert cleanup.returncode == 1, cleanup.stderr  # it said "nothing to undo", exit 0
    assert "nothing done: control socket" in cleanup.stderr
    assert f"another alpaca-tunnel (pid {topo.client.proc.pid}) is running this node" in cleanup.stderr
    assert_same_lines(during, host_state(topo.client.ns))
    assert topo.client.journal_path.exists()
    assert_through_tunnel(topo)
    assert lab.stop(topo.client) == 0
    assert_same(before, host_state(topo.client.ns))


@pytest.mark.netns
def test_host_stop_signal_during_start_undoes_what_was_done(lab: Lab) -> None:
    """A server with chnroute waits for an uplink (up to 30 s) after it turned ip_forward on
    and configured its TUN; SIGHUP and SIGUSR1 (a ``systemctl reload`` at boot) leave it
    waiting, SIGTERM then stops it at once, and the host is as before."""
    ns = lab.ns("server")
    node = lab.node("server", ns, "1.1", "server", chnroute={"data": str(CHNROUTE)})
    node.write_secrets([Peer("1.1", port=5000).line(), Peer("16.1").line()])
    before = host_state(ns)
    lab.start(node, wait=False)
    deadline = time.monotonic() + 15
    while "waiting for a default route" not in node.log():
        assert time.monotonic() < deadline and node.alive, node.log_tail()
        time.sleep(0.1)
    assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    node.signal(signal.SIGHUP)
    node.signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert node.alive, f"exit {node.proc and node.proc.returncode}:\n{node.log_tail()}"
    started = time.monotonic()
    node.signal(signal.SIGTERM)
    assert node.proc is not None
    assert node.proc.wait(10) == 0  # a stop asked for (systemctl stop during activation)
    assert time.monotonic() - started < 5
    assert "stopped by a signal during start-up" in node.log()
    assert not node.journal_path.exists()
    assert_same(before, host_state(ns))


@pytest.mark.netns
def test_host_default_route_put_back_into_main_is_moved_again(lab: Lab) -> None:
    """A DHCP client renewing its lease adds a default route to table main while the tunnel
    runs: the daemon moves it away again (traffic stays in the tunnel) and puts it back on
    exit, beside the original default."""
    topo = build_simple(lab)
    client = topo.client
    before = host_state(client.ns)
    start(topo)
    nsexec(client.ns, "ip", "route", "add", "default", "via", "192.168.50.1", "dev", "eth0",
           "metric", "50", "proto", "dhcp")
    deadline = time.monotonic() + 5  # the monitor reacts at most once a second
    while "default" in nsexec(client.ns, "ip", "route", "show", "table", "main").stdout:
        assert time.monotonic() < deadline, client.log_tail()
        time.sleep(0.1)
    assert "a default route reappeared in table main" in client.log()
    assert_through_tunnel(topo)
    assert lab.stop(client) == 0
    after = host_state(client.ns)
    dhcp = "default via 192.168.50.1 dev eth0 proto dhcp metric 50 \n"
    assert dhcp in after["routes"]
    after["routes"] = after["routes"].replace(dhcp, "")
    assert_same(before, after)


@pytest.mark.netns
def test_host_uplink_moved_to_another_subnet_sends_nothing_outside_the_tunnel(lab: Lab) -> None:
    """The uplink's lease moves to another subnet: the host route to the server via the old
    gateway cannot be put back, and the DHCP client adds a default route to table main. That
    default is still moved out of the way, so traffic keeps to the tunnel device."""
    topo = build_simple(lab)
    client = topo.client
    start(topo)
    nsexec(topo.server.ns, "ip", "addr", "add", "192.168.60.1/24", "dev", "cli")
    nsexec(client.ns, "ip", "addr", "del", "192.168.50.2/24", "dev", "eth0")
    nsexec(client.ns, "ip", "addr", "add", "192.168.60.2/24", "dev", "eth0")
    nsexec(client.ns, "ip", "route", "add", "default", "via", "192.168.60.1", "dev", "eth0",
           "proto", "dhcp")
    deadline = time.monotonic() + 6  # the monitor reacts at most once a second
    while "default" in nsexec(client.ns, "ip", "route", "show", "table", "main").stdout:
        assert time.monotonic() < deadline, client.log_tail()
        time.sleep(0.1)
    assert "could not restore a route" in client.log()
    assert f"dev {TUN}" in nsexec(client.ns, "ip", "route", "get", INET).stdout


@pytest.mark.netns
def test_tun_device_deleted_under_the_daemon_stops_it_with_a_clear_line(lab: Lab) -> None:
    """An expected failure (the TUN device gone) stops the daemon with one line naming the
    task and the cause, no traceback, its host changes undone, exit code 1."""
    topo = build_simple(lab)
    before = host_state(topo.server.ns)
    lab.start(topo.server)
    nsexec(topo.server.ns, "ip", "link", "del", TUN)
    assert topo.server.proc is not None
    assert topo.server.proc.wait(20) == 1
    log = topo.server.log()
    assert f"stopping after a fatal error in the reader of TUN device {TUN}: " in log
    assert "Traceback" not in log
    assert host_state(topo.server.ns) == before


@pytest.mark.netns
def test_the_service_manager_hears_ready_reloading_and_stopping(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Type=notify: READY=1 once the tunnel carries traffic, RELOADING=1 and READY=1 around a
    reload, STOPPING=1 at the stop, EXTEND_TIMEOUT_USEC before each hook; the hooks do not
    inherit NOTIFY_SOCKET."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    topo = build_simple(lab, server_config={"post_up_cmds": [f"env > {tmp_path / 'hook-env'}"]})
    try:
        lab.start(topo.server, wait=False)
        assert listener.recv(4096) == b"EXTEND_TIMEOUT_USEC=65000000"  # before the post_up hook
        ready = listener.recv(4096).decode().split("\n")
        assert ready[0] == "READY=1" and ready[1].startswith("STATUS=node 1.1 up on ")
        assert "started node=1.1" in topo.server.log()  # READY only once it is all in place
        assert "NOTIFY_SOCKET" not in (tmp_path / "hook-env").read_text()
        topo.server.signal(signal.SIGHUP)
        reloading = listener.recv(4096).decode().split("\n")
        assert reloading[0] == "RELOADING=1" and reloading[1].startswith("MONOTONIC_USEC=")
        assert listener.recv(4096) == b"READY=1"
        assert lab.stop(topo.server) == 0
        assert listener.recv(4096) == b"STOPPING=1"
    finally:
        listener.close()
