"""Live reload of real daemons: SIGHUP, and a secrets file saved by rename (inotify)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alpaca.system.sched import current_priority
from tests.daemon.conftest import (
    INET,
    PORT,
    Lab,
    Node,
    Peer,
    add_nft_rule,
    background_ping,
    build_multipath,
    build_simple,
    host_state,
    new_key,
    nft_counter,
    ping,
    ping_result,
    seen_source,
    start_all,
    wait_ping,
)
from tests.helpers import nsexec

pytestmark = pytest.mark.netns

SERVER_IP = "10.17.1.1"


def is_cut_off(ns: str, dst: str, timeout: float = 10.0) -> bool:
    """Whether ``dst`` stops answering from ``ns`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ping(ns, dst, "-c", "3", "-i", "0.2", "-W", "1")[1] == 0:
            return True
    return False


def save_by_rename(node: Node, lines: list[str]) -> None:
    tmp = node.secrets_path.with_name(".secrets.txt.new")
    tmp.write_text("\n".join(lines) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, node.secrets_path)


def test_reload_secrets_adds_and_removes_peers(lab: Lab) -> None:
    ts = lab.ns("server")
    server = lab.node("server", ts, "1.1", "server")
    peers = {"1.1": Peer("1.1", port=PORT)} | {p: Peer(p) for p in ("16.1", "16.2", "16.3")}
    clients = {}
    for i, pid in enumerate(("16.1", "16.2", "16.3"), start=1):
        ns = lab.ns(f"c{i}")
        lab.link(ts, f"192.168.5{i}.1/24", ns, f"192.168.5{i}.2/24", f"c{i}", "eth0")
        nsexec(ns, "ip", "route", "add", "default", "via", f"192.168.5{i}.1")
        client = lab.node(f"c{i}", ns, pid, "client", gateway="1.1")
        client.write_secrets([peers["1.1"].line(f"192.168.5{i}.1"), peers[pid].line()])
        clients[pid] = client

    def server_secrets(*ids: str) -> list[str]:
        return [peers[p].line() for p in ("1.1", *ids)]

    server.write_secrets(server_secrets("16.1", "16.3"))
    for node in (server, *clients.values()):
        lab.start(node, wait=False)
    for node in (server, *clients.values()):
        lab.wait_up(node)
    wait_ping(clients["16.1"].ns, SERVER_IP)
    wait_ping(clients["16.3"].ns, SERVER_IP)
    assert ping(clients["16.2"].ns, SERVER_IP, "-c", "2", "-W", "1")[1] == 0, "16.2 is not known yet"

    # SIGHUP: 16.2 added, 16.3 removed; 16.1 keeps pinging through the reload.
    steady = background_ping(clients["16.1"].ns, SERVER_IP, "-c", "120", "-i", "0.05")
    time.sleep(1.0)
    server.write_secrets(server_secrets("16.1", "16.2"))
    server.signal(signal.SIGHUP)
    wait_ping(clients["16.2"].ns, SERVER_IP, timeout=10)
    assert is_cut_off(clients["16.3"].ns, SERVER_IP), "removed peer 16.3 still answered"
    sent, received, out = ping_result(steady)
    print(f"16.1 during the reload: {received}/{sent}")
    assert sent == 120 and received == sent, out

    # A save by rename, without a signal: 16.3 comes back, 16.2 is cut off.
    reloads = server.log().count("reloaded peers=")
    save_by_rename(server, server_secrets("16.1", "16.3"))
    wait_ping(clients["16.3"].ns, SERVER_IP, timeout=10)
    assert is_cut_off(clients["16.2"].ns, SERVER_IP), "removed peer 16.2 still answered"
    assert server.log().count("reloaded peers=") > reloads
    assert ping(clients["16.1"].ns, SERVER_IP, "-c", "5", "-i", "0.05")[1] == 5


def test_reload_invalid_secrets_keeps_running(lab: Lab) -> None:
    topo = build_simple(lab)
    lab.start(topo.server)
    lab.start(topo.client)
    wait_ping(topo.client.ns, INET)
    steady = background_ping(topo.client.ns, INET, "-c", "80", "-i", "0.05")
    time.sleep(1.0)
    good = topo.server.secrets_path.read_text()
    topo.server.write_secrets(["1.1 not-a-key null null 0", topo.peers["16.1"].line()])
    topo.server.signal(signal.SIGHUP)
    sent, received, out = ping_result(steady)
    print(f"ping during the failed reload: {received}/{sent}")
    assert sent == 80 and received == sent, out
    assert topo.server.alive
    assert "reload failed, keeping the running configuration" in topo.server.log()
    assert "secrets.txt" in topo.server.log().split("reload failed", 1)[1].splitlines()[0]
    # The running state is intact: a later good file is taken, and traffic still flows.
    topo.server.write_secrets(good.splitlines())
    topo.server.signal(signal.SIGHUP)
    assert ping(topo.client.ns, INET, "-c", "5", "-i", "0.05")[1] == 5
    assert lab.stop(topo.server) == 0


def test_reload_forwarder_added_live(lab: Lab) -> None:
    check_forwarder_change(lab, ("1.2",))


def test_reload_forwarder_removed_live(lab: Lab) -> None:
    check_forwarder_change(lab, ("1.2", "1.3"))


def check_forwarder_change(lab: Lab, first: tuple[str, ...]) -> None:
    """Ping upstream while the client's forwarders change from ``first`` to ["1.3"]."""
    topo = build_multipath(lab, forwarders=first)
    # A long probe interval makes the gap after the change (up to one interval) visible every time.
    topo.client.write_config(probe_interval_ms=5000, path_timeout_ms=15000)
    big = "udp dport 5000 meta length > 1000 counter"  # upstream ping datagrams, not probes
    for node in (topo.fwd2, topo.fwd3):
        add_nft_rule(node.ns, "atd_up", "input", f'iifname "cli" {big}')
    start_all(topo)

    def counters() -> tuple[int, int]:
        return nft_counter(topo.fwd2.ns, "atd_up"), nft_counter(topo.fwd3.ns, "atd_up")

    steady = background_ping(topo.client.ns, INET, "-c", "250", "-i", "0.02", "-s", "1100")
    time.sleep(1.0)
    before = counters()
    time.sleep(0.5)
    only_2 = counters()
    topo.client.write_config(forwarders=["1.3"])
    topo.client.signal(signal.SIGHUP)
    time.sleep(0.5)
    switched = counters()
    time.sleep(1.5)
    only_3 = counters()
    sent, received, out = ping_result(steady)
    print(f"ping across the forwarder change: {received}/{sent}; upstream datagrams at 1.2/1.3: "
          f"{before} -> {only_2} -> (reload) {switched} -> {only_3}")
    assert sent == 250 and received >= 249, out
    assert only_2[0] - before[0] >= 5, "1.2 relayed before"
    assert (only_2[1] > before[1]) == ("1.3" in first), "1.3 relayed before only if configured"
    assert only_3[1] - switched[1] >= 10 and only_3[0] == switched[0], "only 1.3 relayed after"
    assert "reloaded peers=4 forwarders=1.3" in topo.client.log()


def test_reload_realtime_priority_applies_live_and_hooks_run_normal(lab: Lab, tmp_path: Path) -> None:
    hook_out = tmp_path / "pre_down.txt"
    topo = build_simple(lab, server_config={"realtime_priority": 10,
                                            "pre_down_cmds": [f"chrt -p $$ > {hook_out}"]})
    lab.start(topo.server)
    lab.start(topo.client, wrap=("chrt", "-r", "5"))
    wait_ping(topo.client.ns, INET)
    assert topo.server.proc is not None and topo.client.proc is not None
    server_pid = topo.server.proc.pid  # `ip netns exec` execs the daemon: same pid
    assert current_priority(server_pid) == 10
    # the default 0 leaves the scheduling the daemon was started with (here chrt's)
    assert current_priority(topo.client.proc.pid) == 5
    for priority in (0, 20):
        topo.server.write_config(realtime_priority=priority)
        topo.server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while current_priority(server_pid) != priority and time.monotonic() < deadline:
            time.sleep(0.05)
        assert current_priority(server_pid) == priority, topo.server.log_tail()
        assert ping(topo.client.ns, INET, "-c", "3", "-i", "0.05")[1] == 3
    assert lab.stop(topo.server) == 0
    # the daemon was SCHED_RR when it ran the hook; the hook itself was not
    assert "SCHED_OTHER" in hook_out.read_text(), hook_out.read_text()


def route_dsts(ns: str, table: str = "253") -> set[str]:
    out = nsexec(ns, "ip", "-j", "route", "show", "table", table).stdout
    return {str(r["dst"]) for r in json.loads(out or "[]")}


def test_reload_moves_host_routes_with_peer_addresses_and_local_routes(lab: Lab) -> None:
    topo = build_simple(lab)
    client, server = topo.client, topo.server
    before = host_state(client.ns)
    lab.start(server)
    lab.start(client)
    wait_ping(client.ns, INET)
    assert route_dsts(client.ns) == {"default", "192.168.50.1"}

    # The gateway moves to a second address and a local route is added: one reload.
    nsexec(server.ns, "ip", "addr", "add", "192.168.50.3/24", "dev", "cli")
    client.write_config(local_routes=["203.0.113.0/24"])
    save_by_rename(client, [topo.peers["1.1"].line("192.168.50.3"), topo.peers["16.1"].line()])
    client.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while route_dsts(client.ns) != {"default", "192.168.50.3", "203.0.113.0/24"}:
        assert time.monotonic() < deadline, route_dsts(client.ns)
        time.sleep(0.1)
    assert "host routes updated added=192.168.50.3/32,203.0.113.0/24 removed=192.168.50.1/32" \
        in client.log()
    assert "needs a restart" not in client.log()
    wait_ping(client.ns, INET)
    assert ping(client.ns, INET, "-c", "5", "-i", "0.05")[1] == 5

    # A crash, then a start with the first files: the journal undoes the reload's routes too.
    lab.kill(client)
    client.write_config(local_routes=[])
    save_by_rename(client, [p.line() for p in topo.peers.values()])
    lab.start(client)
    wait_ping(client.ns, INET)
    assert route_dsts(client.ns) == {"default", "192.168.50.1"}
    assert lab.stop(client) == 0
    assert host_state(client.ns) == before


def test_reload_gateway_repoints_the_default_route(lab: Lab) -> None:
    topo = build_multipath(lab)
    client = topo.client
    before = host_state(client.ns)
    start_all(topo)
    assert seen_source(client.ns, topo.inet, INET) == "198.18.0.1"  # the NAT of gateway 1.1
    # 1.2 becomes the gateway: it masquerades the tunnel network itself and reaches the inet
    # host through 1.1's namespace (plain routing there).
    nsexec(topo.fwd2.ns, "ip", "route", "add", "198.18.0.0/24", "via", "172.31.12.1")
    client.write_config(gateway="1.2")
    client.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "default via 10.17.1.2 dev alp0" not in nsexec(client.ns, "ip", "route", "show",
                                                         "table", "253").stdout:
        assert time.monotonic() < deadline, client.log_tail()
        time.sleep(0.1)
    assert "needs a restart" not in client.log()
    wait_ping(client.ns, INET)
    assert seen_source(client.ns, topo.inet, INET) == "172.31.12.2"
    assert lab.stop(client) == 0
    assert host_state(client.ns) == before


_SILENT_NAME_SERVER = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 53))
print("ready", flush=True)
time.sleep(120)
"""


@pytest.fixture
def silent_resolver(lab: Lab) -> Iterator[str]:
    """A namespace whose /etc/resolv.conf (``ip netns exec`` mounts /etc/netns/NS/ over /etc)
    names a name server on its loopback that takes queries and never answers."""
    ns = lab.ns("client")
    etc = Path("/etc/netns") / ns
    etc.mkdir(parents=True)
    server = None
    try:
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _SILENT_NAME_SERVER],
                                  stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        yield ns
    finally:
        if server is not None:
            server.kill()
            server.wait(5)
        shutil.rmtree(etc, ignore_errors=True)


def test_reload_waiting_for_a_silent_name_server_does_not_stop_the_tunnel(
    lab: Lab, silent_resolver: str
) -> None:
    tc, ts = silent_resolver, lab.ns("server")
    lab.link(ts, "192.168.50.1/24", tc, "192.168.50.2/24", "cli", "eth0")
    nsexec(tc, "ip", "route", "add", "default", "via", "192.168.50.1")
    peers = {"1.1": Peer("1.1", address="192.168.50.1", port=PORT), "16.1": Peer("16.1")}
    server = lab.node("server", ts, "1.1", "server")
    client = lab.node("client", tc, "16.1", "client", gateway="1.1")
    before = host_state(tc)
    for node in (server, client):
        node.write_secrets([p.line() for p in peers.values()])
        lab.start(node)
    wait_ping(tc, SERVER_IP)

    # A new peer named by a hostname: the reload waits for a name server that never answers.
    lines = [p.line() for p in peers.values()]
    client.write_secrets([*lines, f"1.5 {new_key()} peer5.lab.example null 5000"])
    client.signal(signal.SIGHUP)
    sent, received, out = ping(tc, SERVER_IP, "-c", "25", "-i", "0.2", "-W", "1")
    assert (sent, received) == (25, 25), out
    deadline = time.monotonic() + 30
    while "reloaded peers=3" not in client.log():
        assert time.monotonic() < deadline, client.log_tail()
        time.sleep(0.2)
    assert "hostname peer5.lab.example of peer 1.5 does not resolve" in client.log()

    # A stop while a reload waits for names ends that reload: nothing of it lands afterwards.
    client.write_secrets([*lines, f"1.6 {new_key()} peer6.lab.example null 5000"])
    client.signal(signal.SIGHUP)
    time.sleep(0.5)
    started = time.monotonic()
    assert lab.stop(client) == 0
    assert time.monotonic() - started < 3.0
    assert client.log().count("reloaded peers=") == 1
    assert host_state(tc) == before


def test_sighup_while_start_up_waits_for_names_is_a_reload_afterwards(
    lab: Lab, silent_resolver: str
) -> None:
    """A SIGHUP that comes before the daemon's handlers (here while start-up waits for a name
    server that never answers) must not end the process (its default action): it becomes a
    reload once the daemon runs."""
    tc, ts = silent_resolver, lab.ns("server")
    lab.link(ts, "192.168.50.1/24", tc, "192.168.50.2/24", "cli", "eth0")
    nsexec(tc, "ip", "route", "add", "default", "via", "192.168.50.1")
    hosts = Path("/etc/netns") / tc / "hosts"
    hosts.write_text("")  # there at exec time, so that the daemon's /etc/hosts is this file
    peers = {"1.1": Peer("1.1", address="192.168.50.1", port=PORT), "16.1": Peer("16.1")}
    server = lab.node("server", ts, "1.1", "server")
    client = lab.node("client", tc, "16.1", "client", gateway="1.1")
    server.write_secrets([p.line() for p in peers.values()])
    named = f"1.5 {new_key()} peer5.lab.example null 5000"
    client.write_secrets([*(p.line() for p in peers.values()), named])
    lab.start(server)
    lab.start(client, wait=False)
    time.sleep(1.5)  # start-up is waiting for peer5.lab.example
    assert "started node=" not in client.log()
    client.signal(signal.SIGHUP)
    hosts.write_text("192.0.2.55 peer5.lab.example\n")  # found at once by the reload
    lab.wait_up(client)
    deadline = time.monotonic() + 10
    while "reloaded peers=3" not in client.log():
        assert client.alive and time.monotonic() < deadline, client.log_tail()
        time.sleep(0.2)
    assert client.log().count("peer5.lab.example of peer 1.5 does not resolve") == 1  # at start only
    wait_ping(tc, SERVER_IP)


def test_reload_keeps_the_address_of_a_peer_whose_name_stops_resolving(lab: Lab) -> None:
    """The client names its server by a hostname. A reload while the name does not resolve
    (a name server down, or reached through the tunnel) keeps the server's address and its
    host route via the uplink: without them the tunnel's own datagrams would follow the
    default route into the tunnel."""
    topo = build_simple(lab)
    tc, server = topo.client.ns, topo.peers["1.1"]
    etc = Path("/etc/netns") / tc
    etc.mkdir(parents=True)
    try:
        (etc / "hosts").write_text(f"{server.address} server.lab.example\n")
        named = f"1.1 {server.key} server.lab.example null {server.port}"
        topo.client.write_secrets([named, topo.peers["16.1"].line()])
        for node in (topo.server, topo.client):
            lab.start(node)
        wait_ping(tc, SERVER_IP)
        routes = nsexec(tc, "ip", "route", "show", "table", "all").stdout
        assert f"{server.address} via" in routes

        (etc / "hosts").write_text("")  # in place: the daemon's /etc/hosts is a bind mount of it
        topo.client.signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "reloaded peers=" not in topo.client.log():
            assert time.monotonic() < deadline, topo.client.log_tail()
            time.sleep(0.2)
        assert f"keeps its last address {server.address}" in topo.client.log()
        assert nsexec(tc, "ip", "route", "show", "table", "all").stdout == routes
        assert ping(tc, SERVER_IP, "-c", "5", "-i", "0.2", "-W", "1")[1] == 5
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def test_reload_a_changed_restart_key_is_logged_and_not_half_applied(lab: Lab) -> None:
    """net places the TUN address and decides which destinations are peers: applied by a
    reload, the server would take its clients' addresses for outside ones. It needs a
    restart, so the reload logs it and keeps the running value."""
    topo = build_simple(lab)
    lab.start(topo.server)
    lab.start(topo.client)
    wait_ping(topo.client.ns, SERVER_IP)
    topo.server.write_config(net="10.18")
    topo.server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "reloaded peers=" not in topo.server.log():
        assert time.monotonic() < deadline, topo.server.log_tail()
        time.sleep(0.1)
    assert "config key changed but needs a restart key=net" in topo.server.log()

    # Renumbered in both files, or turned into a client without a gateway: another node,
    # whose gateway, forwarders and secrets would be applied to this one (a client's gateway
    # was dropped that way): refused whole, after the restart keys are named.
    server, client = topo.peers["1.1"], topo.peers["16.1"]
    topo.server.write_secrets([server.line().replace("1.1 ", "1.2 ", 1), client.line()])
    topo.server.write_config(id="1.2")
    topo.server.signal(signal.SIGHUP)
    while "reload refused" not in topo.server.log():
        assert time.monotonic() < deadline + 10, topo.server.log_tail()
        time.sleep(0.1)
    log = topo.server.log()
    assert log.index("needs a restart key=id") < log.index("reload refused: id changed")
    topo.client.write_config(mode="server", gateway=None)
    topo.client.signal(signal.SIGHUP)
    while "reload refused" not in topo.client.log():
        assert time.monotonic() < deadline + 20, topo.client.log_tail()
        time.sleep(0.1)
    assert "reload refused: mode changed, the config describes another node" in topo.client.log()
    sent, received, out = ping(topo.client.ns, SERVER_IP, "-c", "10", "-i", "0.1", "-W", "1")
    assert (sent, received) == (10, 10), out
