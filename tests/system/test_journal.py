"""The undo journal: clean undo, crash (kill -9) and recovery by another process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpaca.errors import SystemSetupError
from alpaca.system import journal as jr
from alpaca.system import link
from alpaca.system.plan import HostPlanInput, Mode, apply, keep_default_moved, plan
from tests.helpers import netns, nsexec
from tests.system import add_tun, client_ns, run_python, snapshot

APPLY_AND_CRASH = """
import os, signal
from alpaca.system.journal import Journal, recover
from alpaca.system.plan import ChnrouteInput, HostPlanInput, Mode, apply, plan
path, mode, data = {args}
assert recover(path) in (None, [])
if mode == "client":
    inp = HostPlanInput(Mode.CLIENT, "alpaca0", "10.17.0.0/16", "10.17.16.1", 1408,
                        gateway_ip="10.17.1.1", peer_addresses=("203.0.113.7", "192.0.2.77"),
                        local_routes=("198.51.100.0/24",), chnroute=ChnrouteInput(data))
else:
    inp = HostPlanInput(Mode.SERVER, "alpaca0", "10.17.0.0/16", "10.17.1.1", 1408)
apply(plan(inp), Journal(path))
print("applied", open("/proc/sys/net/ipv4/ip_forward").read().strip(), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""

APPLY_RELOAD_AND_CRASH = """
import os, signal, subprocess
from alpaca.system.journal import Journal
from alpaca.system.plan import HostPlanInput, Mode, apply, plan, update_default_route, update_host_routes
inp = HostPlanInput(Mode.CLIENT, "alpaca0", "10.17.0.0/16", "10.17.16.1", 1408,
                    gateway_ip="10.17.1.1", peer_addresses=("203.0.113.7", "192.0.2.77"))
journal = Journal({path!r})
applied = apply(plan(inp), journal)
assert applied.host_dsts == ("203.0.113.7/32", "192.0.2.77/32"), applied
assert update_host_routes(applied, applied.host_dsts, journal) is applied
# A reload: 192.0.2.77 moved to 198.51.100.9, and local_routes gained 198.18.0.0/15.
applied = update_host_routes(applied, ("203.0.113.7/32", "198.51.100.9/32", "198.18.0.0/15"), journal)
assert update_default_route(applied, "10.17.1.1") is applied
applied = update_default_route(applied, "10.17.1.2")  # and the gateway changed
print("expected", sorted(r.dst for r in applied.expected), flush=True)
print("table", subprocess.run(["ip", "route", "show", "table", "253"], capture_output=True,
                              text=True).stdout, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""

RECOVER = """
from alpaca.system.journal import recover
print("recovered", recover({path!r}))
"""


def crash_run(ns: str, path: Path, mode: str, data: Path) -> str:
    return run_python(ns, APPLY_AND_CRASH.format(args=repr((str(path), mode, str(data)))), check=False)


def chn_file(tmp_path: Path) -> Path:
    data = tmp_path / "cn.txt"
    data.write_text("".join(f"1.{i // 256}.{i % 256}.0/24\n" for i in range(500)))
    return data


@pytest.mark.netns
@pytest.mark.parametrize("mode", ["client", "server"])
def test_journal_recover_after_kill9_restores_namespace_byte_for_byte(mode: str, tmp_path: Path) -> None:
    path, data = tmp_path / "run" / "alpaca0.journal", chn_file(tmp_path)
    with netns() as ns:
        client_ns(ns, tun=False)
        if mode == "server":
            nsexec(ns, "iptables", "-P", "FORWARD", "DROP")
        before = snapshot(ns)
        assert before["ip_forward"].strip() == "0"
        add_tun(ns)
        for _restart in range(2):  # crash, restart (recover + apply), crash again
            out = crash_run(ns, path, mode, data)
            assert "applied 1" in out, out
            assert path.exists()
            assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
            assert "table inet alpaca_alpaca0" in nsexec(ns, "nft", "list", "ruleset").stdout
        routes = nsexec(ns, "ip", "route", "show", "table", "all").stdout
        if mode == "client":
            assert "default via 10.17.1.1 dev alpaca0 table default proto 97" in routes
            assert "192.0.2.254 dev up0 proto static" not in routes
        else:
            assert "alpaca-tunnel:alpaca0" in nsexec(ns, "iptables", "-S").stdout
        assert "recovered []" in run_python(ns, RECOVER.format(path=str(path)))
        assert not path.exists()
        link.remove_stale_link("alpaca0", ns)  # the kernel deletes the daemon's TUN with it
        assert snapshot(ns) == before


@pytest.mark.netns
def test_journal_covers_routes_changed_by_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "run" / "alpaca0.journal"
    with netns() as ns:
        client_ns(ns, tun=False)
        before = snapshot(ns)
        add_tun(ns)
        out = run_python(ns, APPLY_RELOAD_AND_CRASH.format(path=str(path)), check=False)
        expected = "expected ['0.0.0.0/0', '198.18.0.0/15', '198.51.100.9/32', '203.0.113.7/32']"
        assert expected in out, out
        table = out.split("table", 1)[1]
        for dst in ("198.18.0.0/15", "198.51.100.9", "203.0.113.7"):
            assert f"{dst} via 192.0.2.254 dev up0 proto 97" in table, table
        assert "192.0.2.77" not in table, table
        assert "default via 10.17.1.2 dev alpaca0 proto 97" in table, table
        assert "10.17.1.1" not in table, table
        assert "recovered []" in run_python(ns, RECOVER.format(path=str(path)))
        link.remove_stale_link("alpaca0", ns)
        assert snapshot(ns) == before


@pytest.mark.netns
def test_journal_ip_forward_restores_original_value_one(tmp_path: Path) -> None:
    with netns() as ns:
        nsexec(ns, "sysctl", "-w", "net.ipv4.ip_forward=1")
        journal = jr.Journal(tmp_path / "j", ns)
        journal.record("sysctl", key="net.ipv4.ip_forward", value="1")
        journal.record("sysctl", key="net.ipv4.ip_forward", value="0")  # not the original
        assert jr.recover(tmp_path / "j") == []
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"


@pytest.mark.netns
def test_journal_undo_steps_are_idempotent_on_an_untouched_namespace(tmp_path: Path) -> None:
    with netns() as ns:
        client_ns(ns, tun=False)
        before = snapshot(ns)
        journal = jr.Journal(tmp_path / "j", ns)
        journal.record("sysctl", key="net.ipv4.ip_forward", value="0")
        journal.record("chnroute", table=253)
        journal.record("routes", dsts=["203.0.113.7/32"], table=253)
        journal.record("default_route", saved=[], table=253)
        journal.record("nft_table", tun="alpaca0")
        journal.record("iptables", tun="alpaca0")
        assert json.loads((tmp_path / "j").read_text())["netns"] == ns
        assert journal.undo_all() == []
        assert snapshot(ns) == before


@pytest.mark.netns
def test_journal_failing_step_does_not_stop_the_others(tmp_path: Path) -> None:
    with netns() as ns:
        journal = jr.Journal(tmp_path / "j", ns)
        journal.record("sysctl", key="net.ipv4.ip_forward", value="0")
        journal.record("nft_table", tun="bad name")
        nsexec(ns, "sysctl", "-w", "net.ipv4.ip_forward=1")
        failures = journal.undo_all()
        assert len(failures) == 1 and failures[0].startswith("undo nft_table")
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
        assert not (tmp_path / "j").exists()


def test_journal_is_written_before_and_atomically(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "j.json"
    journal = jr.Journal(path)
    assert not path.exists()  # no I/O in the constructor
    journal.record("nft_table", tun="alpaca0")
    journal.record("nft_table", tun="alpaca0")
    data = json.loads(path.read_text())
    assert data == {"version": 1, "netns": None, "steps": [{"kind": "nft_table", "tun": "alpaca0"}]}
    assert not list(path.parent.glob("*.tmp"))
    assert path.stat().st_mode & 0o777 == 0o600


def test_journal_recover_without_file_is_none(tmp_path: Path) -> None:
    assert jr.recover(tmp_path / "absent") is None


def test_journal_recover_refuses_foreign_file(tmp_path: Path) -> None:
    (tmp_path / "j").write_text('{"something": "else"}')
    assert jr.recover(tmp_path / "j") == [
        f"reading {tmp_path / 'j'}: {tmp_path / 'j'}: not an alpaca-tunnel journal (version 1)"
    ]
    assert (tmp_path / "j").exists()


def test_journal_rejects_unknown_step(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        jr.Journal(tmp_path / "j").record("reboot")


def add_uplink0(ns: str) -> None:
    """up0 as :func:`client_ns` makes it, without its default routes."""
    nsexec(ns, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
    for dev in ("up0", "up1"):
        nsexec(ns, "ip", "link", "set", dev, "up")
    nsexec(ns, "ip", "addr", "add", "192.0.2.1/24", "dev", "up0")


@pytest.mark.netns
def test_journal_restores_every_default_it_can_and_keeps_the_rest(tmp_path: Path) -> None:
    """The uplink up0 vanishes while the tunnel runs (a dock unplugged): stop still puts the
    second uplink's default back, and keeps up0's for the next start, which restores it."""
    path = tmp_path / "run" / "alpaca0.journal"
    with netns() as ns:
        client_ns(ns)
        nsexec(ns, "ip", "link", "add", "up2", "type", "veth", "peer", "name", "up3")
        for dev in ("up2", "up3"):
            nsexec(ns, "ip", "link", "set", dev, "up")
        nsexec(ns, "ip", "addr", "add", "198.51.100.1/24", "dev", "up2")
        nsexec(ns, "ip", "route", "add", "default", "via", "198.51.100.254", "dev", "up2", "metric", "600")
        inp = HostPlanInput(Mode.CLIENT, "alpaca0", "10.17.0.0/16", "10.17.16.1", 1408,
                            gateway_ip="10.17.1.1")
        journal = jr.Journal(path, ns)
        apply(plan(inp), journal, ns)
        assert "default via" not in nsexec(ns, "ip", "route", "show", "table", "main").stdout
        nsexec(ns, "ip", "link", "del", "up0")
        failures = journal.undo_all()
        assert len(failures) == 1 and failures[0].startswith("undo default_route: restoring route")
        main = nsexec(ns, "ip", "route", "show", "table", "main").stdout
        assert "default via 198.51.100.254 dev up2 metric 600" in main
        assert [s["kind"] for s in jr.Journal.load(path).steps] == ["default_route"]
        assert jr.resume(path).steps == jr.Journal.load(path).steps
        add_uplink0(ns)
        assert jr.recover(path) == []
        assert not path.exists() and jr.resume(path).steps == []
        main = nsexec(ns, "ip", "route", "show", "table", "main").stdout
        assert "default via 192.0.2.254 dev up0 proto static src 192.0.2.1 metric 100" in main
        assert "default via 192.0.2.253 dev up0 metric 200" in main
        assert "default via 198.51.100.254 dev up2 metric 600" in main


def test_journal_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("a file where the directory should be")
    journal = jr.Journal(tmp_path / "run" / "alpaca0.journal")
    with pytest.raises(SystemSetupError, match=r"writing the undo journal .*control_socket"):
        journal.record("nft_table", tun="alpaca0")


@pytest.mark.netns
@pytest.mark.parametrize("table", [253, 254])
def test_journal_covers_a_default_moved_again_while_running(tmp_path: Path, table: int) -> None:
    """A default route put back into main (a DHCP renewal) is moved again and journaled; with
    route_table main our own default, which sits there too, is left alone."""
    path = tmp_path / "alpaca0.journal"
    with netns() as ns:
        client_ns(ns, tun=False)
        before = snapshot(ns)
        add_tun(ns)
        inp = HostPlanInput(Mode.CLIENT, "alpaca0", "10.17.0.0/16", "10.17.16.1", 1408,
                            gateway_ip="10.17.1.1", route_table=table)
        journal = jr.Journal(path, ns)
        applied = apply(plan(inp), journal, ns)
        assert keep_default_moved(applied, journal, ns) == 0
        nsexec(ns, "ip", "route", "add", "default", "via", "192.0.2.77", "dev", "up0", "metric", "50")
        assert keep_default_moved(applied, journal, ns) == 1
        main = nsexec(ns, "ip", "route", "show", "table", "main").stdout
        assert "192.0.2.77" not in main
        ours = nsexec(ns, "ip", "route", "show", "table", str(table)).stdout
        assert "default via 10.17.1.1 dev alpaca0 proto 97" in ours
        assert journal.undo_all() == []
        link.remove_stale_link("alpaca0", ns)
        after = snapshot(ns)
        moved_back = "default via 192.0.2.77 dev up0 metric 50 \n"
        assert moved_back in after["routes4"]
        after["routes4"] = after["routes4"].replace(moved_back, "")
        assert after == before
