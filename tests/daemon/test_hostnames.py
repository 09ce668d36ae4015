"""A gateway named by a hostname, followed by the running daemon without a SIGHUP: a name that
does not resolve at start (a host that boots before its name server) and a name that moves.

The client's namespace gets its own hosts file: ``ip netns exec`` bind-mounts
/etc/netns/NS/hosts over /etc/hosts, so it must exist before the daemon starts, and is then
rewritten in place (same inode), never replaced.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.conftest import PORT, Lab, Simple, add_nft_rule, build_simple, wait_ping
from tests.helpers import nsexec

pytestmark = pytest.mark.netns

SERVER_IP = "10.17.1.1"
NAME = "gw.lab.example"
#: Seconds the tunnel may take to come up once the name resolves (the follower's first
#: retry is 5 s after start, the next 10 s after that; a move is looked up within 1 s of the
#: gateway's path going down).
FOLLOW_WITHIN = 15.0


@pytest.fixture
def named_gateway(lab: Lab) -> Iterator[tuple[Simple, Path]]:
    """The simple topology; the client names its gateway by NAME, in a hosts file of its
    namespace (empty for now; removed afterwards)."""
    topo = build_simple(lab)
    etc = Path("/etc/netns") / topo.client.ns
    etc.mkdir(parents=True)
    try:
        hosts = etc / "hosts"
        hosts.write_text("127.0.0.1 localhost\n")
        server = topo.peers["1.1"]
        topo.client.write_secrets([f"1.1 {server.key} {NAME} null {server.port}",
                                   topo.peers["16.1"].line()])
        yield topo, hosts
    finally:
        shutil.rmtree(etc, ignore_errors=True)


def wait_followed(topo: Simple) -> None:
    """Wait up to FOLLOW_WITHIN seconds for the tunnel; fail with the client's log."""
    try:
        wait_ping(topo.client.ns, SERVER_IP, timeout=FOLLOW_WITHIN)
    except AssertionError as exc:
        pytest.fail(f"{exc}; no SIGHUP sent, the client's log:\n{topo.client.log_tail()}")


def is_cut_off(ns: str, dst: str, timeout: float = 10.0) -> bool:
    """Whether ``dst`` stops answering from ``ns`` within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nsexec(ns, "ping", "-n", "-c", "1", "-W", "1", dst, check=False).returncode != 0:
            return True
    return False


def set_hosts(hosts: Path, address: str) -> None:
    """Name ``address`` NAME, in place (the daemon's /etc/hosts is a bind mount of this file)."""
    hosts.write_text(f"127.0.0.1 localhost\n{address} {NAME}\n")


def test_hostname_gateway_that_resolves_after_start_is_reached_without_sighup(
    lab: Lab, named_gateway: tuple[Simple, Path]
) -> None:
    topo, hosts = named_gateway
    lab.start(topo.server)
    lab.start(topo.client)
    assert f"hostname {NAME} of peer 1.1 does not resolve" in topo.client.log()
    set_hosts(hosts, topo.peers["1.1"].address or "")
    wait_followed(topo)
    log = topo.client.log()
    assert f"hostname={NAME} from=none to=192.168.50.1" in log
    assert log.count("resolves to another address") == 1
    assert log.count("reloaded peers=") == 1


def test_hostname_gateway_that_moves_is_followed_without_sighup(
    lab: Lab, named_gateway: tuple[Simple, Path]
) -> None:
    topo, hosts = named_gateway
    set_hosts(hosts, "192.168.50.1")
    lab.start(topo.server)
    lab.start(topo.client)
    wait_ping(topo.client.ns, SERVER_IP)

    # The client is behind a stateful firewall (as behind a NAT): the server cannot reach it
    # first from another address. The server moves to 192.168.50.9 (its replies come from
    # there); the old address stops serving the tunnel (it stays the client's router): the
    # tunnel is cut. Then the name follows.
    ts = topo.server.ns
    add_nft_rule(topo.client.ns, "firewall", "input", f"udp sport {PORT} ct state new drop")
    nsexec(ts, "ip", "addr", "add", "192.168.50.9/24", "dev", "cli")
    nsexec(ts, "ip", "route", "replace", "192.168.50.0/24", "dev", "cli", "src", "192.168.50.9")
    add_nft_rule(ts, "moved", "input", f"ip daddr 192.168.50.1 udp dport {PORT} drop")
    assert is_cut_off(topo.client.ns, SERVER_IP)
    set_hosts(hosts, "192.168.50.9")
    wait_followed(topo)
    log = topo.client.log()
    assert f"hostname={NAME} from=192.168.50.1 to=192.168.50.9" in log
    assert "192.168.50.9 via 192.168.50.1" in nsexec(topo.client.ns, "ip", "route", "show",
                                                      "table", "all").stdout
