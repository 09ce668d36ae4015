"""The undo journal: clean undo, crash (kill -9) and recovery by another process."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from alpaca.errors import SystemSetupError
from alpaca.system import instance, link, nsid, routes, sysctl
from alpaca.system import journal as jr
from alpaca.system.monitor import reconcile
from alpaca.system.plan import (
    Applied,
    ChnrouteInput,
    HostPlanInput,
    Mode,
    SetSysctl,
    apply,
    follow_uplink,
    keep_default_moved,
    note_restored,
    note_ways,
    plan,
    update_default_route,
    update_host_routes,
)
from tests.helpers import netns, nsexec, veth
from tests.system import (
    BACKUP_DEFAULT,
    PYTHON,
    ROOT,
    add_backup_uplink,
    add_tun,
    client_ns,
    del_tun,
    run_python,
    snapshot,
)

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


def client_input(**kw: Any) -> HostPlanInput:
    """The client these tests set up: alpaca0, 10.17.16.1 in 10.17.0.0/16, gateway 10.17.1.1."""
    return HostPlanInput(Mode.CLIENT, "alpaca0", "10.17.0.0/16", "10.17.16.1", 1408,
                         gateway_ip="10.17.1.1", **kw)


def started_with_backup(ns: str, path: Path) -> tuple[jr.Journal, Applied]:
    """The client started in ``ns`` with two uplinks (up0 and the backup), its host changes
    journalled at ``path``: (journal, what apply did)."""
    client_ns(ns)
    add_backup_uplink(ns)
    journal = jr.Journal(path, ns)
    return journal, apply(plan(client_input()), journal, ns)


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
        del_tun(ns)  # the kernel deletes the daemon's TUN with it
        assert snapshot(ns) == before


@pytest.mark.netns
def test_journal_covers_routes_changed_by_a_reload(tmp_path: Path) -> None:
    path = tmp_path / "run" / "alpaca0.journal"
    with netns() as ns:
        client_ns(ns, tun=False)
        before = snapshot(ns)
        add_tun(ns)
        out = run_python(ns, APPLY_RELOAD_AND_CRASH.format(path=str(path)), check=False)
        expected = ("expected ['0.0.0.0/0', '0.0.0.0/0', '0.0.0.0/0', '198.18.0.0/15', '198.51.100.9/32', "
                    "'203.0.113.7/32']")  # the tunnel's default and the two uplink defaults
        assert expected in out, out
        table = out.split("table", 1)[1]
        for dst in ("198.18.0.0/15", "198.51.100.9", "203.0.113.7"):
            assert f"{dst} via 192.0.2.254 dev up0 proto 97" in table, table
        assert "192.0.2.77" not in table, table
        assert "default via 10.17.1.2 dev alpaca0 proto 97" in table, table
        assert "10.17.1.1" not in table, table
        assert "recovered []" in run_python(ns, RECOVER.format(path=str(path)))
        del_tun(ns)
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
def test_journal_ip_forward_turned_back_off_puts_back_what_it_reset(tmp_path: Path) -> None:
    """Writing ip_forward resets conf/all/accept_redirects and every device's forwarding: a
    hardened host (accept_redirects=0) accepted ICMP redirects after the tunnel stopped, and
    a device forwarding on its own stopped forwarding. Both come back now."""
    def value(key: str) -> str:
        return nsexec(ns, "cat", f"/proc/sys/net/ipv4/conf/{key}").stdout.strip()

    with netns() as ns:
        nsexec(ns, "ip", "link", "add", "dum.1", "type", "veth", "peer", "name", "dum2")
        nsexec(ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.accept_redirects=0",
               "net/ipv4/conf/dum.1/forwarding=1")
        journal = jr.Journal(tmp_path / "j", ns)
        inp = HostPlanInput(Mode.SERVER, "alpaca0", "10.17.0.0/16", "10.17.1.1", 1400)
        apply([op for op in plan(inp) if isinstance(op, SetSysctl)], journal, ns)
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
        assert journal.undo_all() == []
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
        assert (value("all/accept_redirects"), value("dum.1/forwarding"), value("default/forwarding")) \
            == ("0", "1", "0")


UNDO_KILLED_AFTER_IP_FORWARD = """
import os, signal
from alpaca.system import journal as jr
jr._restore_side_settings = lambda step, netns: os.kill(os.getpid(), signal.SIGKILL)
jr.Journal.load({path!r}).undo_all()
"""


@pytest.mark.netns
def test_journal_a_crash_between_ip_forward_and_what_it_reset_is_mended_by_the_retry(tmp_path: Path) -> None:
    """A kill -9 after the undo wrote ip_forward back (which reset accept_redirects) but
    before it put accept_redirects back: the retry (the next start's recovery, `cleanup`)
    found ip_forward as recorded and left accept_redirects at 1, and the next start then
    recorded that as the host's own setting."""
    def accept_redirects() -> str:
        return nsexec(ns, "sysctl", "-n", "net.ipv4.conf.all.accept_redirects").stdout.strip()

    with netns() as ns:
        nsexec(ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.accept_redirects=0")
        path = tmp_path / "j"
        inp = HostPlanInput(Mode.SERVER, "alpaca0", "10.17.0.0/16", "10.17.1.1", 1400)
        apply([op for op in plan(inp) if isinstance(op, SetSysctl)], jr.Journal(path, ns), ns)
        run_python(ns, UNDO_KILLED_AFTER_IP_FORWARD.format(path=str(path)), check=False)
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
        assert accept_redirects() == "1" and path.exists()
        assert jr.recover(path) == []
        assert accept_redirects() == "0" and not path.exists()


@pytest.mark.netns
def test_journal_ip_forward_turned_off_by_hand_leaves_what_was_set_after(tmp_path: Path) -> None:
    """A person turned ip_forward off while the tunnel ran and then set accept_redirects on
    purpose: the undo at stop, finding ip_forward already as it was, changes nothing it did
    not reset itself (it put accept_redirects back to the value before the start)."""
    def accept_redirects() -> str:
        return nsexec(ns, "sysctl", "-n", "net.ipv4.conf.all.accept_redirects").stdout.strip()

    with netns() as ns:
        nsexec(ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.accept_redirects=0")
        journal = jr.Journal(tmp_path / "j", ns)
        inp = HostPlanInput(Mode.SERVER, "alpaca0", "10.17.0.0/16", "10.17.1.1", 1400)
        apply([op for op in plan(inp) if isinstance(op, SetSysctl)], journal, ns)
        nsexec(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
        nsexec(ns, "sysctl", "-q", "-w", "net.ipv4.conf.all.accept_redirects=1")
        assert journal.undo_all() == []
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
        assert accept_redirects() == "1"


@pytest.mark.netns
def test_journal_a_reload_repointing_a_displaced_default_leaves_the_other_one_alone(tmp_path: Path) -> None:
    """Our default gone from the table and another program's in its place: a reload that
    changed the gateway replaced theirs with ours, and the undo at exit then deleted it."""
    with netns() as ns:
        client_ns(ns)
        journal = jr.Journal(tmp_path / "j", ns)
        applied = apply(plan(client_input()), journal, ns)
        nsexec(ns, "ip", "route", "del", "default", "table", "253")
        nsexec(ns, "ip", "route", "add", "default", "via", "192.0.2.254", "dev", "up0", "table", "253",
               "proto", "static")
        with pytest.raises(SystemSetupError, match="another program's default"):
            update_default_route(applied, "10.17.1.2", ns)
        assert journal.undo_all() == []
        table = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "default via 192.0.2.254 dev up0 proto static" in table


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
    assert data == {"version": 1, "netns": None, "netns_id": nsid.of(None),
                    "steps": [{"kind": "nft_table", "tun": "alpaca0"}]}
    assert data["netns_id"] and ":" in data["netns_id"]
    assert not list(path.parent.glob("*.tmp"))
    assert path.stat().st_mode & 0o777 == 0o600


def test_journal_recover_without_file_is_none(tmp_path: Path) -> None:
    assert jr.recover(tmp_path / "absent") is None


def test_journal_recover_refuses_foreign_file(tmp_path: Path) -> None:
    (tmp_path / "j").write_text('{"something": "else"}')
    failures = jr.recover(tmp_path / "j")
    [aside] = [str(p) for p in tmp_path.glob("j.unreadable-*")]
    path = tmp_path / "j"
    assert failures == [f"reading {path}: {path}: not an alpaca-tunnel journal (version 1) "
                        f"(moved to {aside})"]
    assert Path(aside).read_text() == '{"something": "else"}'



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
        journal, _ = started_with_backup(ns, path)
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


def _enospc_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next rename of a journal fails as on a full file system; later ones work."""
    real, failed = os.replace, []

    def replace(src: Any, dst: Any) -> None:
        if not failed:
            failed.append(dst)
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(jr.os, "replace", replace)


def test_journal_a_record_that_could_not_be_written_is_written_by_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The step stayed in memory after the failed write, so the same record at the next
    reload wrote nothing, and the route it stood for was never in the file."""
    journal = jr.Journal(tmp_path / "j")
    journal.record("nft_table", tun="alpaca0")
    _enospc_once(monkeypatch)
    with pytest.raises(SystemSetupError, match="No space left"):
        journal.record("routes", dsts=["192.0.2.1/32"], table=253)
    journal.record("routes", dsts=["192.0.2.1/32"], table=253)
    assert [s["kind"] for s in jr.Journal.load(journal.path).steps] == ["nft_table", "routes"]


def test_journal_whose_kept_steps_cannot_be_written_stays_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An undo step failed and the file could not be rewritten with it: the file was deleted,
    and with it the step. Now the old file stays, every step in it for the next start."""
    journal = jr.Journal(tmp_path / "j")
    journal.record("nft_table", tun="alpaca0")
    journal.record("routes", dsts=["192.0.2.1/32"], table=253)

    def refuse(_step: Any, _netns: str | None) -> None:
        raise SystemSetupError("deleting route 192.0.2.1/32", None, "retry")

    monkeypatch.setitem(jr.UNDO, "nft_table", lambda _step, _netns: None)
    monkeypatch.setitem(jr.UNDO, "routes", refuse)
    _enospc_once(monkeypatch)
    assert len(journal.undo_all()) == 1
    assert [s["kind"] for s in jr.Journal.load(journal.path).steps] == ["nft_table", "routes"]


def test_journal_written_in_short_writes_is_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.write
    monkeypatch.setattr(jr.os, "write", lambda fd, data: real(fd, bytes(data[:7])))
    journal = jr.Journal(tmp_path / "j")
    for table in range(20):
        journal.record("routes", dsts=["192.0.2.1/32"], table=100 + table)
    assert len(jr.Journal.load(journal.path).steps) == 20


@pytest.mark.netns
def test_journal_a_saved_route_cut_short_is_malformed_and_the_rest_is_undone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """struct.error from the cut route escaped: no step after it ran, and every start failed."""
    ran: list[str] = []
    monkeypatch.setitem(jr.UNDO, "nft_table", lambda _step, _netns: ran.append("nft_table"))
    with netns() as ns:
        path = tmp_path / "j"
        path.write_text(json.dumps({"version": 1, "netns": ns, "steps": [
            {"kind": "nft_table", "tun": "alpaca0"},
            {"kind": "default_route", "saved": [{"payload_hex": "0200", "dev": "lo", "text": "x"}],
             "table": 253}]}))
        failures = jr.recover(path)
    assert failures is not None and len(failures) == 1 and "malformed" in failures[0]
    assert ran == ["nft_table"] and not path.exists()


def test_journal_a_sysctl_original_is_read_under_the_directory_lock(tmp_path: Path) -> None:
    """Read before the lock, a daemon starting while another stopped took the value the
    stopping one was about to restore (1) for the original: ip_forward stayed on after both."""
    seen: list[bool] = []
    journal = jr.Journal(tmp_path / "j")
    journal.record("sysctl", key="net.ipv4.ip_forward",
                   value=lambda: seen.append(instance.is_held(tmp_path)) or "0")
    assert seen == [True] and jr.Journal.load(journal.path).steps[0]["value"] == "0"


def test_journal_undoes_a_default_saved_again_first(tmp_path: Path) -> None:
    """Leases on one device: home, office, home again. The journal kept the first record of
    the default saved twice, so the undo restored the office's last, when the home default
    was not back yet and nothing else was in main: it no longer fits, and the stop failed.
    Now the home default's undo comes first, then the office's (which main's default then
    makes a warning, not a failure)."""
    def route(gateway: str) -> dict[str, str]:
        return {"payload_hex": gateway, "dev": "eth0", "text": f"default via {gateway} dev eth0"}

    journal = jr.Journal(tmp_path / "alpaca0.journal")
    for gateway in ("home", "office", "home"):
        journal.record("default_route", saved=[route(gateway)], table=253)
    undo_order = [step["saved"][0]["payload_hex"] for step in reversed(jr.resume(journal.path).steps)]
    assert undo_order == ["home", "office"]


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
        inp = client_input(route_table=table)
        journal = jr.Journal(path, ns)
        applied = apply(plan(inp), journal, ns)
        assert keep_default_moved(applied, journal, ns) == []
        nsexec(ns, "ip", "route", "add", "default", "via", "192.0.2.77", "dev", "up0", "metric", "50")
        assert len(keep_default_moved(applied, journal, ns)) == 1
        main = nsexec(ns, "ip", "route", "show", "table", "main").stdout
        assert "192.0.2.77 dev up0 metric 50" not in main
        ours = nsexec(ns, "ip", "route", "show", "table", str(table)).stdout
        assert "default via 10.17.1.1 dev alpaca0 proto 97" in ours
        assert journal.undo_all() == []
        del_tun(ns)
        after = snapshot(ns)
        moved_back = "default via 192.0.2.77 dev up0 metric 50 \n"
        assert moved_back in after["routes4"]
        after["routes4"] = after["routes4"].replace(moved_back, "")
        assert after == before


@pytest.mark.netns
def test_journal_a_default_moved_again_at_another_metric_comes_back_once(tmp_path: Path) -> None:
    """The network manager re-adds its default route with another metric (a metric flap):
    moved again, and on exit only the latest comes back (both did: two defaults via one
    gateway of one program); the other default of that device, via another gateway, and a
    default another program (proto dhcp) added beside them come back as well."""
    with netns() as ns:
        client_ns(ns, tun=False)
        add_tun(ns)
        inp = client_input()
        journal = jr.Journal(tmp_path / "alpaca0.journal", ns)
        applied = apply(plan(inp), journal, ns)
        nsexec(ns, "ip", "route", "add", "default", "via", "192.0.2.254", "dev", "up0",
               "proto", "static", "metric", "600")
        assert len(keep_default_moved(applied, journal, ns)) == 1
        nsexec(ns, "ip", "route", "add", "default", "via", "192.0.2.253", "dev", "up0",
               "proto", "dhcp", "metric", "50")  # another program's, beside the static one
        assert len(keep_default_moved(applied, journal, ns)) == 1
        assert journal.undo_all() == []
        main = nsexec(ns, "ip", "route", "show", "default", "table", "main").stdout.splitlines()
        assert sorted(main) == ["default via 192.0.2.253 dev up0 metric 200 ",
                                "default via 192.0.2.253 dev up0 proto dhcp metric 50 ",
                                "default via 192.0.2.254 dev up0 proto static metric 600 "], main
        del_tun(ns)


@pytest.mark.netns
@pytest.mark.parametrize("how", [("replace",), ("add", "proto", "static")],
                         ids=["ip route replace", "a DHCP client"])
def test_journal_a_default_replaced_on_its_device_comes_back_alone(tmp_path: Path, how: tuple[str, ...]
                                                                   ) -> None:
    """The uplink's router changes while the tunnel runs (a DHCP lease with a new router, an
    operator's `ip route replace`): the new default of up0 at the saved one's metric comes
    back on exit, the old one does not (it did too: two defaults of one metric, which the
    kernel refuses without the tunnel, the stale router chosen when the new one's neighbour
    entry fails). up0's other default, at another metric, comes back as well."""
    with netns() as ns:
        client_ns(ns, tun=False)
        nsexec(ns, "ip", "addr", "add", "192.0.2.2/24", "dev", "up0")
        add_tun(ns)
        journal = jr.Journal(tmp_path / "alpaca0.journal", ns)
        applied = apply(plan(client_input()), journal, ns)
        nsexec(ns, "ip", "route", how[0], "default", "via", "192.0.2.252", "dev", "up0", *how[1:],
               "metric", "100")
        assert len(keep_default_moved(applied, journal, ns)) == 1
        assert journal.undo_all() == []
        main = nsexec(ns, "ip", "route", "show", "default", "table", "main").stdout.splitlines()
        proto = " proto static" if len(how) > 1 else ""
        assert sorted(main) == [f"default via 192.0.2.252 dev up0{proto} metric 100 ",
                                "default via 192.0.2.253 dev up0 metric 200 "], main
        del_tun(ns)


@pytest.mark.netns
def test_journal_a_multipath_uplink_is_a_way_out_to_come_back_to(tmp_path: Path) -> None:
    """A multipath default names no single way out; its first hop, the uplink in use, is
    one of the ways the host routes may go back to after a fail-over (they stayed on the
    backup for good), beside the backup's."""
    with netns() as ns:
        client_ns(ns, tun=False)
        nsexec(ns, "ip", "route", "del", "default", "table", "main")
        nsexec(ns, "ip", "route", "del", "default", "table", "main")
        nsexec(ns, "ip", "addr", "add", "192.0.2.2/24", "dev", "up1")
        nsexec(ns, "ip", "route", "add", "default", "nexthop", "via", "192.0.2.254", "dev", "up0",
               "nexthop", "via", "192.0.2.253", "dev", "up1")
        nsexec(ns, "ip", "route", "add", "default", "via", "192.0.2.252", "dev", "up1", "metric", "600")
        add_tun(ns)
        inp = client_input()
        journal = jr.Journal(tmp_path / "alpaca0.journal", ns)
        applied = apply(plan(inp), journal, ns)
        assert [(u.dev, u.gateway, u.metric) for u in applied.ways] == [
            ("up0", "192.0.2.254", 0), ("up1", "192.0.2.252", 600)]
        assert applied.uplink == applied.ways[0]
        assert journal.undo_all() == []
        del_tun(ns)


@pytest.mark.parametrize("text", ['{"version": 1, "netns": null, "steps": null}',
                                  '{"version": 1, "netns": null, "steps": [{"kind": "sysc',
                                  '{"version": 1, "netns": 7, "steps": []}',
                                  b'\xff\xfe{}'])
def test_journal_damaged_is_moved_aside_for_a_person(tmp_path: Path, text: str | bytes) -> None:
    """A damaged journal is neither a traceback nor silently overwritten by the next run: it
    is moved aside, named in the failure, and the run starts with an empty journal."""
    path = tmp_path / "alpaca0.sock.journal"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    failures = jr.recover(path)
    assert failures is not None and len(failures) == 1
    aside = list(tmp_path.glob("alpaca0.sock.journal.unreadable-*"))
    assert len(aside) == 1 and str(aside[0]) in failures[0]
    assert not path.exists() and jr.resume(path).steps == []
    jr.resume(path).record("nft_table", tun="alpaca0")
    assert (aside[0].read_bytes() if isinstance(text, bytes) else aside[0].read_text()) == text


def test_journal_step_that_keeps_failing_is_given_up(tmp_path: Path) -> None:
    """A step the host will never accept (here a sysctl that does not exist) is retried by
    the next runs, and given up once it failed MAX_TRIES times over GIVE_UP_AFTER seconds:
    later stops stop failing, and a crash loop does not use the tries up in a minute."""
    path = tmp_path / "j"
    step = {"kind": "sysctl", "key": "net.ipv4.no_such_sysctl", "value": "1"}
    path.write_text(json.dumps({"version": 1, "netns": None, "steps": [step]}))
    for tries in range(1, jr.MAX_TRIES + 2):  # quick runs: kept, however many
        assert len(jr.recover(path) or []) == 1
        [kept] = jr.Journal.load(path).steps
        assert kept["tries"] == tries and time.time() - kept["failed_since"] < 60
    data = json.loads(path.read_text())
    data["steps"][0]["failed_since"] -= jr.GIVE_UP_AFTER  # the first failure an hour ago
    path.write_text(json.dumps(data))
    assert len(jr.recover(path) or []) == 1
    assert not path.exists()


def test_journal_a_step_kept_from_a_failed_undo_is_not_recorded_twice(tmp_path: Path) -> None:
    """The run that takes over a journal whose undo failed records its own change again:
    the kept step (with its retry marks) stands for it, no second copy is added."""
    path = tmp_path / "j"
    step = {"kind": "nft_table", "tun": "alpaca0"}
    path.write_text(json.dumps({"version": 1, "netns": None,
                                "steps": [{**step, "tries": 1, "failed_since": time.time()}]}))
    journal = jr.Journal.load(path)
    journal.record("nft_table", tun="alpaca0")
    assert len(jr.Journal.load(path).steps) == 1


def test_journal_malformed_steps_are_reported_and_dropped(tmp_path: Path) -> None:
    path = tmp_path / "j"
    path.write_text(json.dumps({"version": 1, "netns": None,
                                "steps": [7, {"kind": "sysctl"}, {"kind": "reboot"}]}))
    failures = jr.recover(path)
    assert failures is not None and len(failures) == 3
    assert all("malformed" in f for f in failures)
    assert not path.exists()


def test_journal_of_a_run_that_made_no_change_leaves_the_file_alone(tmp_path: Path) -> None:
    """A run that fails before its first change (its journal object never wrote) does not
    delete the file at its path, which may hold another run's undo steps."""
    path = tmp_path / "j"
    path.write_text("precious")
    assert jr.Journal(path).undo_all() == []
    assert path.read_text() == "precious"


def test_journal_one_that_cannot_be_moved_aside_stops_the_start(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal not to be undone here whose move aside failed was left at our path: the run
    took its steps over (resume) and undid them at its stop, or wrote over them."""
    monkeypatch.setattr(jr.time, "time", lambda: 1000.0)
    path = tmp_path / "j"
    path.write_text('{"something": "else"}')
    (tmp_path / "j.unreadable-1000" / "x").mkdir(parents=True)  # the aside name is taken
    with pytest.raises(SystemSetupError, match=r"reading .*/j: .*moving it to .*j\.unreadable-1000.*"
                                               r"move the journal away by hand"):
        jr.recover(path)
    assert path.read_text() == '{"something": "else"}'


JOURNAL_IN_NS = """
import sys
from alpaca.system.journal import Journal
Journal(sys.argv[1]).record("sysctl", key="net.ipv4.ip_forward", value="0")
"""


@pytest.mark.netns
def test_journal_of_another_namespace_is_not_undone_here(tmp_path: Path) -> None:
    """A journal written by a daemon in another namespace (a shared /run) is never undone
    here: beside ours it is left alone, at our own path it is moved aside for a person."""
    path = tmp_path / "alpaca0.sock.journal"
    with netns() as ns:
        nsexec(ns, PYTHON, "-c", JOURNAL_IN_NS, str(path))
        written = json.loads(path.read_text())
        assert written["netns"] is None and written["netns_id"] == nsid.of(ns) != nsid.of(None)
        before = sysctl.read(sysctl.IP_FORWARD)
        assert jr.recover_orphans(tmp_path / "other.sock.journal") == ([], [])
        assert path.exists()
        failures = jr.recover(path)
        [aside] = tmp_path.glob("alpaca0.sock.journal.other-netns-*")
        assert failures and "another network namespace" in failures[0] and str(aside) in failures[0]
        assert json.loads(aside.read_text()) == written and not path.exists()
        assert sysctl.read(sysctl.IP_FORWARD) == before


@pytest.mark.netns
def test_journal_namespace_identity_is_not_reused() -> None:
    """A namespace made after another was deleted gets the same nsfs inode, never the same
    identity: a journal of the deleted one is not taken for the new one's."""
    identities = []
    for _ in range(3):
        with netns() as ns:
            identities.append(nsid.of(ns))
        time.sleep(0.5)  # the kernel frees a deleted namespace (and its inode) a moment later
    assert None not in identities and len(set(identities)) == 3, identities


@pytest.mark.netns
def test_journal_without_cookies_an_orphan_is_left_alone_and_a_foreign_one_set_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without namespace cookies (linux < 5.14) the identity is the nsfs inode: it tells two
    living namespaces apart (a journal of another one is not taken for ours), but a
    deleted namespace's successor may have it, so an orphan beside ours is not undone."""
    monkeypatch.setattr(nsid, "SO_NETNS_COOKIE", 4095)  # ENOPROTOOPT, as such a kernel answers
    with netns() as ns, netns() as other:
        assert nsid.of(ns) != nsid.of(other) and not nsid.unique(nsid.of(ns))
        assert nsid.of(ns) == nsid.of(ns) and str(nsid.of(ns)).startswith("ino:")
        orphan = jr.Journal(tmp_path / "old.sock.journal", ns)
        orphan.record("sysctl", key=sysctl.IP_FORWARD, value="0")
        assert jr.recover_orphans(tmp_path / "alpaca0.sock.journal") == ([], [])
        assert orphan.path.exists()
        foreign = jr.Journal(tmp_path / "alpaca1.sock.journal", other)
        foreign.record("sysctl", key=sysctl.IP_FORWARD, value="0")
        found = jr.Journal.load(foreign.path)
        assert found.is_here()
        found.netns = ns  # the same file, as a daemon in ns would find it
        assert not found.is_here()


CONCURRENT_STOP = """
import os, sys, time
from alpaca.system import instance, journal as jr
path, go = sys.argv[1], sys.argv[2]
journal = jr.Journal.load(path)
fd = instance.hold(jr.lock_of(journal.path), "test")
live_peers = jr.Journal._live_peers
def slow_live_peers(self):  # widen the window between choosing what to leave and deleting
    peers = live_peers(self)
    time.sleep(0.3)
    return peers
jr.Journal._live_peers = slow_live_peers
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.001)
print(journal.undo_all(), flush=True)
"""


@pytest.mark.netns
def test_journal_two_daemons_stopping_at_once_restore_ip_forward(tmp_path: Path) -> None:
    """Two daemons of one namespace stop in the same instant (a host shutdown): their undos
    run one after the other, so the second sees the first gone and restores the original 0
    (each used to leave it to the other)."""
    with netns() as ns:
        nsexec(ns, "sysctl", "-w", "net.ipv4.ip_forward=0")
        paths, locks = [], []
        for name in ("a", "b"):  # started one after the other
            journal = jr.Journal(tmp_path / f"{name}.sock.journal", ns)
            locks.append(instance.hold(jr.lock_of(journal.path), "test"))
            journal.record("sysctl", key=sysctl.IP_FORWARD, value=sysctl.read(sysctl.IP_FORWARD, ns))
            nsexec(ns, "sysctl", "-w", "net.ipv4.ip_forward=1")
            paths.append(journal.path)
        assert [jr.Journal.load(p).steps[0]["value"] for p in paths] == ["0", "0"]
        for fd in locks:  # handed to the processes that stop them
            os.close(fd)
        go = tmp_path / "go"
        procs = [subprocess.Popen([PYTHON, "-c", CONCURRENT_STOP, str(p), str(go)],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT) for p in paths]
        try:
            assert all(proc.stdout is not None and proc.stdout.readline() == "ready\n" for proc in procs)
            go.touch()
            outs = [proc.communicate(timeout=30)[0] for proc in procs]
        finally:
            for proc in procs:
                proc.kill()
        assert outs == ["[]\n", "[]\n"]
        assert not list(tmp_path.glob("*.journal"))
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"


def test_instance_lock_held_for_a_moment_is_waited_for(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another daemon holds a crashed node's lock while it undoes that node's journal: a start
    of the node waits for it, and says so at once (it waited in silence); one held for good
    names the live holder's pid."""
    caplog.set_level(logging.INFO, logger="alpaca.system.instance")
    lock = tmp_path / "alpaca0.sock.lock"
    holder = subprocess.Popen([PYTHON, "-c", HOLD_LOCK, str(lock), "0.5"], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    os.close(instance.hold(lock, "test", wait=5.0))
    assert f"test: the lock {lock} is held by pid {holder.pid}, waiting up to 5 s for it" in caplog.text
    holder.wait(timeout=10)
    holder = subprocess.Popen([PYTHON, "-c", HOLD_LOCK, str(lock), "30"], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(SystemSetupError, match=rf"another alpaca-tunnel \(pid {holder.pid}\)"):
            instance.hold(lock, "test", wait=0.3)
    finally:
        holder.kill()
        holder.wait()



def _no_space(*args: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("call", ["ftruncate", "pwrite"])
def test_instance_lock_on_a_full_directory_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str) -> None:
    """A full /run (ENOSPC writing the pid into the lock) is an error naming the lock file and
    its directory, not a bare OSError (the command line printed "cannot write the output"),
    and leaves no descriptor open."""
    lock = tmp_path / "alpaca0.sock.lock"
    monkeypatch.setattr(instance.os, call, _no_space)
    before = _open_fds()
    with pytest.raises(SystemSetupError) as err:
        instance.hold(lock, "cfg.json: control_socket x", wait=0.0)
    text = str(err.value)
    assert text.startswith("cfg.json: control_socket x: writing our pid into the lock file ")
    assert str(lock) in text and "No space left on device" in text
    assert f"its directory {tmp_path}, the control socket's, is full or not writable" in text
    with pytest.raises(SystemSetupError, match="is full or not writable"):
        instance.try_hold(lock)
    assert _open_fds() == before
    monkeypatch.undo()
    os.close(instance.hold(lock, "test", wait=0.0))  # the lock was let go


def test_orphan_recovery_and_cleanup_on_a_full_directory_name_the_lock(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """recover_orphans and ``alpaca-tunnel cleanup`` report a lock that cannot be written as
    the setup error, which the command line prints as it is."""
    from alpaca import cli

    (tmp_path / "old.sock.journal").write_text("")
    monkeypatch.setattr(instance.os, "pwrite", _no_space)
    with pytest.raises(SystemSetupError, match=r"lock file .*old\.sock\.lock: No space left"):
        jr.recover_orphans(tmp_path / "new.sock.journal")
    assert cli.main(["cleanup", "--control-socket", str(tmp_path / "old.sock")]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("alpaca-tunnel: nothing done: control socket ")
    assert f"lock file {tmp_path / 'old.sock.lock'}: No space left on device" in err
    assert "cannot write the output" not in err

@pytest.mark.netns
def test_cleanup_reports_its_own_undo_when_an_orphans_lock_cannot_be_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The node's own journal is undone, then an orphan's lock file cannot be written (a full
    directory): `cleanup` names that failure and exits 1, and does not say "nothing done" of
    what it did."""
    from alpaca import cli

    real_pwrite = os.pwrite

    def pwrite(fd: int, data: bytes, offset: int) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith("old.sock.lock"):
            _no_space()
        return real_pwrite(fd, data, offset)

    with netns() as ns:
        own = jr.Journal(tmp_path / "new.sock.journal", ns)
        own.record("sysctl", key="net.ipv4.ip_forward", value="0")
        nsexec(ns, "sysctl", "-w", "net.ipv4.ip_forward=1")
        (tmp_path / "old.sock.journal").write_text("")
        monkeypatch.setattr(instance.os, "pwrite", pwrite)
        assert cli.main(["cleanup", "--control-socket", str(tmp_path / "new.sock")]) == cli.EXIT_ERROR
        err = capsys.readouterr().err
        assert "nothing done" not in err
        assert f"lock file {tmp_path / 'old.sock.lock'}: No space left on device" in err
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
        assert not own.path.exists()


HOLD_LOCK = """
import os, sys, time
from pathlib import Path
from alpaca.system import instance
fd = instance.try_hold(Path(sys.argv[1]))
assert fd is not None
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


@pytest.mark.netns
def test_journal_orphan_of_another_control_socket_is_recovered(tmp_path: Path) -> None:
    """A crashed run with tun_name alpaca0 left alpaca0.sock.journal; the next run is
    alpaca1's: it undoes the orphan unless a running daemon holds its lock."""
    with netns() as ns:
        orphan = jr.Journal(tmp_path / "alpaca0.sock.journal", ns)
        orphan.record("sysctl", key="net.ipv4.ip_forward", value="0")
        nsexec(ns, "sysctl", "-w", "net.ipv4.ip_forward=1")
        ours = tmp_path / "alpaca1.sock.journal"
        fd = instance.hold(jr.lock_of(orphan.path), "test")
        try:
            assert jr.recover_orphans(ours) == ([], [])
            assert orphan.path.exists()
        finally:
            os.close(fd)
        assert jr.recover_orphans(ours) == ([orphan.path], [])
        assert not orphan.path.exists()
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"


@pytest.mark.netns
def test_cleanup_undoes_a_crashed_run_with_another_control_socket(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run with tun_name alpaca0 crashed after the config said alpaca1: `cleanup` (the
    unit's ExecStopPost) found nothing at alpaca1's socket and said so, leaving the crashed
    run's routes, table and ip_forward until a next start, which a crash without a restart
    never sees. It undoes the orphan now, as a start does."""
    from alpaca import cli

    with netns() as ns:
        orphan = jr.Journal(tmp_path / "alpaca0.sock.journal", ns)
        orphan.record("sysctl", key="net.ipv4.ip_forward", value="0")
        nsexec(ns, "sysctl", "-w", "net.ipv4.ip_forward=1")
        assert cli.main(["cleanup", "--control-socket", str(tmp_path / "alpaca1.sock")]) == cli.EXIT_OK
        assert capsys.readouterr().out.splitlines()[-1] == \
            f"alpaca-tunnel: undid the host changes a previous run of {tmp_path / 'alpaca0.sock'} left"
        assert not orphan.path.exists()
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
        assert cli.main(["cleanup", "--control-socket", str(tmp_path / "alpaca1.sock")]) == cli.EXIT_OK
        assert capsys.readouterr().out == f"alpaca-tunnel: nothing to undo for {tmp_path / 'alpaca1.sock'}\n"


def two_daemons_turn_ip_forward_on(ns: str, tmp_path: Path, after_each: Callable[[], None] = lambda: None,
                                   ) -> tuple[list[jr.Journal], list[int]]:
    """Two daemons' journals (with their instance locks held) record ip_forward, then set it."""
    nsexec(ns, "sysctl", "-w", "net.ipv4.ip_forward=0")
    journals, locks = [], []
    for name in ("a", "b"):
        journal = jr.Journal(tmp_path / f"{name}.sock.journal", ns)
        locks.append(instance.hold(jr.lock_of(journal.path), "test"))
        journal.record("sysctl", key=sysctl.IP_FORWARD, value=sysctl.read(sysctl.IP_FORWARD, ns),
                       routed_bridges=link.routed_bridges(ns))
        nsexec(ns, "sysctl", "-w", "net.ipv4.ip_forward=1")
        after_each()
        journals.append(journal)
    return journals, locks


@pytest.mark.netns
@pytest.mark.parametrize("cookies", [True, False], ids=["cookies", "no cookies (linux < 5.14)"])
def test_journal_two_daemons_in_one_namespace_share_ip_forward(
        tmp_path: Path, cookies: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two daemons (two TUNs) of one namespace: the first to stop leaves ip_forward at 1 for
    the other; the last restores the host's original 0, whichever order they stop in. Without
    namespace cookies they shared nothing: the first stop turned ip_forward off under the
    other, whose stop then left it on."""
    if not cookies:  # getsockopt answers ENOPROTOOPT, as a kernel without the option does
        monkeypatch.setattr(nsid, "SO_NETNS_COOKIE", 4095)
    for first in (0, 1):
        with netns() as ns:
            journals, locks = two_daemons_turn_ip_forward_on(ns, tmp_path)
            assert [j.steps[0]["value"] for j in journals] == ["0", "0"]
            assert journals[first].undo_all() == []
            os.close(locks[first])
            assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
            assert journals[1 - first].undo_all() == []
            os.close(locks[1 - first])
            assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"


@pytest.mark.netns
def test_journal_a_default_whose_device_has_none_back_is_kept_across_steps(tmp_path: Path) -> None:
    """Two uplinks, the backup's lease renewed while the tunnel ran (a second step), and the
    primary unplugged at stop (a dock): the backup's default comes back (the later step's
    undo), and the primary's, which cannot, is kept for the next start: its device has no
    default back (it was dropped as if the backup's were the primary's new one)."""
    path = tmp_path / "run" / "alpaca0.journal"
    with netns() as ns:
        journal, applied = started_with_backup(ns, path)
        nsexec(ns, "ip", "route", "add", *BACKUP_DEFAULT)  # the backup's DHCP client renews its lease
        assert len(keep_default_moved(applied, journal, ns)) == 1
        nsexec(ns, "ip", "link", "del", "up0")
        failures = journal.undo_all()
        assert len(failures) == 1 and "default dev up0" in failures[0], failures
        main = nsexec(ns, "ip", "route", "show", "default", "table", "main").stdout
        assert main == "default via 198.51.100.254 dev up2 metric 600 \n", main
        add_uplink0(ns)
        assert jr.recover(path) == []
        main = nsexec(ns, "ip", "route", "show", "default", "table", "main").stdout
        assert "via 192.0.2.254 dev up0" in main and "via 198.51.100.254 dev up2" in main, main


@pytest.mark.netns
def test_journal_saved_default_that_no_longer_fits_is_not_kept(tmp_path: Path) -> None:
    """While the tunnel ran, the uplink moved to another subnet and a DHCP client put a new
    default into main: the saved default (gateway 192.0.2.254) cannot come back, and the
    host has its way out, so stop succeeds and keeps nothing for later runs."""
    path = tmp_path / "alpaca0.journal"
    with netns() as ns:
        client_ns(ns)
        inp = client_input()
        journal = jr.Journal(path, ns)
        apply(plan(inp), journal, ns)
        nsexec(ns, "ip", "addr", "del", "192.0.2.1/24", "dev", "up0")
        nsexec(ns, "ip", "addr", "add", "198.51.100.1/24", "dev", "up0")
        nsexec(ns, "ip", "route", "add", "default", "via", "198.51.100.254", "dev", "up0")
        assert journal.undo_all() == []
        assert not path.exists()
        main = nsexec(ns, "ip", "route", "show", "table", "main").stdout
        assert "default via 198.51.100.254 dev up0" in main and "192.0.2.25" not in main
        assert "10.17.1.1" not in nsexec(ns, "ip", "route", "show", "table", "all").stdout


@pytest.mark.netns
def test_journal_route_table_main_moves_a_default_of_metric_zero(tmp_path: Path) -> None:
    """route_table main with an uplink default of metric 0 (as `ip route add default via`
    makes it): ours takes its place in main, and stop puts it back byte for byte."""
    with netns() as ns:
        nsexec(ns, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        for dev in ("up0", "up1"):
            nsexec(ns, "ip", "link", "set", dev, "up")
        nsexec(ns, "ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
        nsexec(ns, "ip", "route", "add", "default", "via", "192.0.2.254", "dev", "up0")
        before = snapshot(ns)
        add_tun(ns)
        inp = client_input(route_table=254)
        journal = jr.Journal(tmp_path / "j", ns)
        apply(plan(inp), journal, ns)
        main = nsexec(ns, "ip", "route", "show", "table", "main").stdout
        assert "default via 10.17.1.1 dev alpaca0 proto 97" in main, main
        assert "default via 192.0.2.254 dev up0 proto 97 metric 1000 " in main, main  # its copy
        assert "default via 192.0.2.254 dev up0 \n" not in main, main
        assert journal.undo_all() == []
        del_tun(ns)
        assert snapshot(ns) == before


@pytest.mark.netns
def test_journal_an_onlink_uplink_outside_the_devices_subnet_carries_the_host_routes(tmp_path: Path) -> None:
    """``default via 10.99.0.1 dev up0 onlink`` with up0 in 192.0.2.0/24 (as some VPS are set
    up): the start failed with ENETUNREACH on the first host route; the host routes, the
    chnroute prefixes and a route put back after another program deleted it say onlink too,
    and the stop leaves the host as it was."""
    with netns() as ns:
        nsexec(ns, "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1")
        for dev in ("up0", "up1"):
            nsexec(ns, "ip", "link", "set", dev, "up")
        nsexec(ns, "ip", "addr", "add", "192.0.2.1/24", "dev", "up0")
        nsexec(ns, "ip", "route", "add", "default", "via", "10.99.0.1", "dev", "up0", "onlink")
        before = snapshot(ns)
        add_tun(ns)
        inp = client_input(peer_addresses=("198.51.100.7",), local_routes=("203.0.113.0/24",),
                           chnroute=ChnrouteInput(str(chn_file(tmp_path))))
        journal = jr.Journal(tmp_path / "j", ns)
        applied = apply(plan(inp), journal, ns)
        table = nsexec(ns, "ip", "route", "show", "table", "default").stdout
        for dst in ("198.51.100.7", "203.0.113.0/24", "1.0.0.0/24"):
            assert f"{dst} via 10.99.0.1 dev up0 proto 97 onlink" in table, (dst, table)
        nsexec(ns, "ip", "route", "del", "198.51.100.7", "table", "default")
        assert [r.dst for r in reconcile(applied.expected, ns)] == ["198.51.100.7/32"]
        assert "198.51.100.7 via 10.99.0.1 dev up0 proto 97 onlink" in \
            nsexec(ns, "ip", "route", "show", "table", "default").stdout
        assert journal.undo_all() == []
        del_tun(ns)
        assert snapshot(ns) == before


@pytest.mark.netns
def test_journal_route_table_nobody_looks_up_is_named_in_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """route_table 100 without an ip rule for it: the tunnel would carry nothing, and the log
    says so; with the administrator's rule in place, nothing is said."""
    inp = client_input(route_table=100)
    for ruled in (False, True):
        caplog.clear()
        with netns() as ns:
            client_ns(ns)
            if ruled:
                nsexec(ns, "ip", "rule", "add", "from", "10.17.0.0/16", "lookup", "100")
            journal = jr.Journal(tmp_path / f"j{ruled}", ns)
            apply(plan(inp), journal, ns)
            warned = [r.message for r in caplog.records if "no ip rule looks this table up" in r.message]
            assert bool(warned) is not ruled
            assert journal.undo_all() == []


@pytest.mark.netns
@pytest.mark.parametrize(("route_table", "chn_table", "warned"), [
    (254, 253, True),    # route_table main, chnroute.table default: main comes first
    (254, 254, False), (253, 253, False), (253, 254, False),
])
def test_journal_a_chnroute_table_looked_up_after_the_tunnels_is_named_in_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, route_table: int, chn_table: int,
        warned: bool) -> None:
    """route_table main with chnroute in table default: the tunnel's default route in main
    took the chnroute prefixes' traffic before table default was looked up, silently."""
    chnroute = ChnrouteInput(str(chn_file(tmp_path)), table=chn_table)
    inp = client_input(route_table=route_table, chnroute=chnroute)
    with netns() as ns:
        client_ns(ns)
        journal = jr.Journal(tmp_path / "j", ns)
        apply(plan(inp), journal, ns)
        lines = [r.message for r in caplog.records if r.message.startswith("chnroute.table")]
        assert bool(lines) is warned, lines
        assert not warned or "chnroute.table 253 is looked up after route_table 254" in lines[0]
        assert journal.undo_all() == []


@pytest.mark.netns
@pytest.mark.parametrize(("bridge", "restored"), [
    ("after", "1"),           # Docker started while the tunnel ran: its containers need forwarding
    ("before", "0"),          # there before the tunnel: it did without forwarding then
    ("after-no-address", "0"),  # a plain L2 bridge routes nothing
])
def test_journal_ip_forward_stays_on_for_a_routed_bridge_that_appeared(
        tmp_path: Path, bridge: str, restored: str, caplog: pytest.LogCaptureFixture) -> None:
    def add_bridge(address: bool) -> None:
        nsexec(ns, "ip", "link", "add", "docker0", "type", "bridge")
        if address:
            nsexec(ns, "ip", "addr", "add", "172.17.0.1/16", "dev", "docker0")

    with netns() as ns:
        nsexec(ns, "sysctl", "-w", "net.ipv4.ip_forward=0")
        if bridge == "before":
            add_bridge(True)
        add_tun(ns)
        journal = jr.Journal(tmp_path / "j", ns)
        apply(plan(HostPlanInput(Mode.SERVER, "alpaca0", "10.17.0.0/16", "10.17.1.1", 1408)), journal, ns)
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
        if bridge != "before":
            add_bridge(bridge == "after")
        assert journal.undo_all() == []
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == restored
        left = [r.getMessage() for r in caplog.records if "left at 1" in r.getMessage()]
        assert bool(left) == (restored == "1")
        assert all("docker0 appeared" in m and "sysctl -w net.ipv4.ip_forward=0" in m for m in left)


@pytest.mark.netns
def test_journal_second_daemon_inherits_the_bridges_seen_before_the_first(tmp_path: Path) -> None:
    """Docker started between two daemons of one namespace: the last to stop keeps ip_forward on
    for it, because the record it inherited was taken before docker0 existed."""
    with netns() as ns:
        def docker_starts() -> None:
            nsexec(ns, "ip", "link", "add", "docker0", "type", "bridge", check=False)
            nsexec(ns, "ip", "addr", "replace", "172.17.0.1/16", "dev", "docker0")

        journals, locks = two_daemons_turn_ip_forward_on(ns, tmp_path, docker_starts)
        assert [j.steps[0]["routed_bridges"] for j in journals] == [[], []]
        for journal, lock in zip(journals, locks, strict=True):
            assert journal.undo_all() == []
            os.close(lock)
        assert nsexec(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"


def server_and_client_in_table_253(ns: str, tmp_path: Path, client_peers: tuple[str, ...],
                                   ) -> tuple[dict[str, jr.Journal], dict[str, int]]:
    """Daemon a (alpaca0, a server) with :func:`chn_file`'s chnroute and daemon b (alpaca1, a
    client of those peer addresses), both in table 253 of ``ns``, applied in that order and
    running (their locks held): (journals, locks) by name."""
    add_tun(ns, "alpaca0")
    add_tun(ns, "alpaca1")
    inputs = {
        "a": HostPlanInput(Mode.SERVER, "alpaca0", "10.17.0.0/16", "10.17.1.1", 1408,
                           chnroute=ChnrouteInput(str(chn_file(tmp_path)))),
        "b": HostPlanInput(Mode.CLIENT, "alpaca1", "10.18.0.0/16", "10.18.16.1", 1408,
                           gateway_ip="10.18.1.1", peer_addresses=client_peers),
    }
    journals, locks = {}, {}
    for name, inp in inputs.items():
        journals[name] = jr.Journal(tmp_path / f"{name}.sock.journal", ns)
        locks[name] = instance.hold(jr.lock_of(journals[name].path), "test")
        apply(plan(inp), journals[name], ns)
    return journals, locks


@pytest.mark.netns
def test_journal_undoing_a_chnroute_leaves_the_routes_of_another_daemon_in_its_table(
        tmp_path: Path) -> None:
    """Daemon a (alpaca0, a server) loads chnroute into table 253, where daemon b (alpaca1, a
    client) keeps its default route and its host routes. a stops: b's routes stay (they went
    with a's chnroute, every route of ours in the table); b stops: the host is as before."""
    with netns() as ns:
        client_ns(ns, tun=False)
        before = snapshot(ns)
        journals, locks = server_and_client_in_table_253(ns, tmp_path, ("203.0.113.7",))
        try:
            assert journals["a"].undo_all() == []
            os.close(locks.pop("a"))
            table = nsexec(ns, "ip", "route", "show", "table", "253").stdout
            assert "default via 10.18.1.1 dev alpaca1 proto 97" in table, table
            assert "203.0.113.7 via 192.0.2.254 dev up0 proto 97" in table, table
            assert "1.0.0.0/24" not in table, table
            assert journals["b"].undo_all() == []
        finally:
            for fd in locks.values():
                os.close(fd)
        del_tun(ns, "alpaca0")
        del_tun(ns, "alpaca1")
        assert snapshot(ns) == before


@pytest.mark.netns
def test_journal_a_clients_host_route_to_another_daemons_chnroute_prefix_is_not_deleted_at_its_stop(
        tmp_path: Path) -> None:
    """Server a loads chnroute into table 253; client b, in the same table, routes one of its
    prefixes as a local route (the route was there: EEXIST). b's journal lists it all the
    same, and b's stop deleted a's route (our proto on both): a never put it back. b's host
    routes are left to a's removal of its chnroute (the routes of ours in the table)."""
    with netns() as ns:
        client_ns(ns, tun=False)
        journals, locks = server_and_client_in_table_253(ns, tmp_path, ("203.0.113.7", "1.0.1.0/24"))
        try:
            assert journals["b"].undo_all() == []
            os.close(locks.pop("b"))
            table = nsexec(ns, "ip", "route", "show", "table", "253").stdout
            assert "1.0.1.0/24 via 192.0.2.254 dev up0 proto 97" in table, table
            assert journals["a"].undo_all() == []
            assert "proto 97" not in nsexec(ns, "ip", "route", "show", "table", "253").stdout
        finally:
            for fd in locks.values():
                os.close(fd)


@pytest.mark.netns
def test_journal_a_reload_that_drops_a_local_route_keeps_the_chnroute_prefix_it_shadowed(
        tmp_path: Path) -> None:
    """local_routes and chnroute both hold 1.0.1.0/24 (table 253): the host route found the
    chnroute one in place. A reload that drops it from local_routes deleted the chnroute
    route with it (sending that prefix into the tunnel until a restart); now it stays, and a
    local route the run added itself is still deleted."""
    data = tmp_path / "cn.txt"
    data.write_text("1.0.1.0/24\n1.0.2.0/24\n")
    with netns() as ns:
        client_ns(ns, tun=False)
        before = snapshot(ns)
        add_tun(ns)
        inp = client_input(local_routes=("1.0.1.0/24", "198.51.100.0/24"),
                             chnroute=ChnrouteInput(str(data)))
        journal = jr.Journal(tmp_path / "j", ns)
        applied = apply(plan(inp), journal, ns)
        assert applied.host_added == {"198.51.100.0/24"}
        applied = update_host_routes(applied, (), journal, ns)
        table = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "1.0.1.0/24 via 192.0.2.254" in table and "198.51.100.0" not in table, table
        assert journal.undo_all() == []
        del_tun(ns)
        assert snapshot(ns) == before


@pytest.mark.netns
def test_journal_a_local_route_put_back_in_the_place_of_another_programs_is_ours_to_delete(
        tmp_path: Path) -> None:
    """Another program's route held 172.16.0.0/12 at start (ours found it: not counted ours);
    it went and the monitor's reconcile put ours back. A reload dropping 172.16.0.0/12 left
    ours in place (that traffic bypassing the tunnel against the new config) until exit."""
    with netns() as ns:
        client_ns(ns, tun=False)
        before = snapshot(ns)
        add_tun(ns)
        nsexec(ns, "ip", "route", "add", "172.16.0.0/12", "via", "192.0.2.254", "table", "253",
               "proto", "static")
        journal = jr.Journal(tmp_path / "j", ns)
        applied = apply(plan(client_input(local_routes=("172.16.0.0/12",))), journal, ns)
        assert applied.host_added == set()
        nsexec(ns, "ip", "route", "del", "172.16.0.0/12", "table", "253", "proto", "static")
        applied = note_restored(applied, reconcile(applied.expected, ns))
        assert "172.16.0.0/12 via 192.0.2.254 dev up0 proto 97" in \
            nsexec(ns, "ip", "route", "show", "table", "253").stdout
        applied = update_host_routes(applied, (), journal, ns)
        assert "172.16.0.0/12" not in nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert journal.undo_all() == []
        del_tun(ns)
        assert snapshot(ns) == before


@pytest.mark.netns
def test_journal_keeps_only_the_host_routes_a_reload_did_not_delete(tmp_path: Path) -> None:
    """A peer followed by its hostname moved to 40 addresses in turn: every reload added a
    routes step and none left, so the file grew by every address the peer ever had (and was
    rewritten whole at each change). The ones a reload deleted leave it now; the undo at exit
    still takes away what is there."""
    with netns() as ns:
        client_ns(ns, tun=False)
        before = snapshot(ns)
        add_tun(ns)
        path = tmp_path / "j"
        journal = jr.Journal(path, ns)
        applied = apply(plan(client_input(peer_addresses=("203.0.113.7",))), journal, ns)
        start = len(path.read_bytes())
        for n in range(1, 41):
            applied = update_host_routes(applied, ("203.0.113.7/32", f"198.51.100.{n}/32"), journal, ns)
        table = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "198.51.100.40 via" in table and "198.51.100.39 " not in table, table
        held = [dst for step in json.loads(path.read_text())["steps"] if step["kind"] == "routes"
                for dst in step["dsts"]]
        assert sorted(held) == ["198.51.100.40/32", "203.0.113.7/32"], held
        assert len(path.read_bytes()) < start + 200
        assert journal.undo_all() == []
        del_tun(ns)
        assert snapshot(ns) == before


def refuse_route(monkeypatch: pytest.MonkeyPatch, op_prefix: str) -> None:
    """The kernel refuses the one route operation whose description starts with
    ``op_prefix`` (``adding route 203.0.113.0/24``) with ENOBUFS; every other one is real."""
    real = routes.nl_call

    def call(op: str, *args: Any, **kw: Any) -> Any:
        if op.startswith(op_prefix):
            raise SystemSetupError(op, OSError(105, "No buffer space available"))
        return real(op, *args, **kw)

    monkeypatch.setattr(routes, "nl_call", call)


@pytest.mark.netns
@pytest.mark.parametrize("refused", ["adding route 203.0.113.0/24", "deleting route 198.51.100.0/24"])
def test_journal_a_reload_whose_host_routes_fail_part_way_leaves_them_as_they_were(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: str) -> None:
    """A reload adds two host routes and drops one; the kernel refuses the second add (or the
    delete). The routes added before it used to stay without being counted as ours: a later
    reload that no longer wanted them left them (traffic to them bypassing the tunnel) until
    exit. Now the change is undone, the host matches the Applied the daemon keeps, and the
    same reload again makes the whole change."""
    with netns() as ns:
        client_ns(ns, tun=False)
        before = snapshot(ns)
        add_tun(ns)
        journal = jr.Journal(tmp_path / "j", ns)
        applied = apply(plan(client_input(local_routes=("198.51.100.0/24",))), journal, ns)
        wanted = ("198.18.0.0/15", "203.0.113.0/24")
        table_before = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        with monkeypatch.context() as patch:
            refuse_route(patch, refused)
            with pytest.raises(SystemSetupError, match="No buffer space"):
                update_host_routes(applied, wanted, journal, ns)
        assert nsexec(ns, "ip", "route", "show", "table", "253").stdout == table_before
        applied = update_host_routes(applied, wanted, journal, ns)
        table = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "198.18.0.0/15 via 192.0.2.254" in table and "203.0.113.0/24 via 192.0.2.254" in table
        assert "198.51.100.0" not in table, table
        assert applied.host_added == {"198.18.0.0/15", "203.0.113.0/24"}
        applied = update_host_routes(applied, (), journal, ns)
        assert "198.18.0.0" not in nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert journal.undo_all() == []
        del_tun(ns)
        assert snapshot(ns) == before


# --- a port bound to each uplink (ports[].interface): the uplinks' defaults in the tunnel's table

RECEIVE_ONE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 4000))
s.settimeout(5)
print("ready", flush=True)
try:
    print("from", s.recvfrom(100)[1][0], flush=True)
except TimeoutError:
    print("nothing", flush=True)
"""

SEND_BOUND = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[1].encode())
s.sendto(b"probe", (sys.argv[2], 4000))
"""


def laptop(client: str, wlan_router: str, wwan_router: str, peer: str) -> None:
    """``client`` with two uplinks, each with its own gateway: wlan 192.0.2.1/24 via
    192.0.2.254 (metric 100) and wwan 198.51.100.1/24 via 198.51.100.254 (metric 600). The
    peer 203.0.113.7 is reachable behind the wwan router only."""
    veth(client, "192.0.2.1/24", wlan_router, "192.0.2.254/24", "wlan", "lan")
    veth(client, "198.51.100.1/24", wwan_router, "198.51.100.254/24", "wwan", "lan")
    veth(wwan_router, "203.0.113.1/24", peer, "203.0.113.7/24", "out", "in")
    nsexec(wwan_router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    nsexec(peer, "ip", "route", "add", "default", "via", "203.0.113.1")
    nsexec(client, "ip", "route", "add", "default", "via", "192.0.2.254", "dev", "wlan", "metric", "100")
    nsexec(client, "ip", "route", "add", "default", "via", "198.51.100.254", "dev", "wwan", "metric", "600")


def bound_send_arrives(client: str, dev: str, peer: str) -> str:
    """Send one datagram to the peer 203.0.113.7 from a socket of ``client`` bound to ``dev``;
    the source address it arrived from at ``peer``, or "nothing"."""
    receiver = subprocess.Popen(["ip", "netns", "exec", peer, PYTHON, "-c", RECEIVE_ONE],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None and receiver.stdout.readline() == "ready\n"
        nsexec(client, PYTHON, "-c", SEND_BOUND, dev, "203.0.113.7")
        return receiver.stdout.readline().split()[-1]
    finally:
        receiver.kill()
        receiver.wait()


def route_get(ns: str, *args: str) -> str:
    return nsexec(ns, "ip", "route", "get", *args).stdout


@pytest.mark.netns
@pytest.mark.parametrize("table", [253, 254])
def test_journal_a_port_bound_to_each_uplink_reaches_the_peers_via_its_own_gateway(
        tmp_path: Path, table: int) -> None:
    """A laptop's wlan and wwan, each with its own gateway, and a port bound to each: the
    peers' host routes go via wlan (the uplink), so the port bound to wwan had no route to
    any peer (its sends went out of wwan to no gateway, and its paths stayed down until wlan
    failed over). Each moved default now has a copy in the tunnel's table after ours: a
    datagram from a socket bound to wwan reaches a peer behind the wwan router, unbound
    traffic still takes the tunnel, and the stop leaves the host as it was (another
    program's route in that table included)."""
    with netns() as c, netns() as r1, netns() as r2, netns() as p:
        laptop(c, r1, r2, p)
        if table == 253:  # another program's route in the tunnel's table, like our copy
            nsexec(c, "ip", "route", "add", "default", "via", "198.51.100.254", "dev", "wwan",
                   "table", "253", "metric", "1600", "proto", "static")
        before = snapshot(c)
        add_tun(c)
        journal = jr.Journal(tmp_path / "alpaca0.journal", c)
        apply(plan(client_input(route_table=table, peer_addresses=("203.0.113.7",))), journal, c)
        ours = nsexec(c, "ip", "route", "show", "table", str(table)).stdout
        assert "default via 192.0.2.254 dev wlan proto 97 metric 1100 " in ours, ours
        assert "default via 198.51.100.254 dev wwan proto 97 metric 1600 " in ours, ours
        assert "via 198.51.100.254 dev wwan " in route_get(c, "203.0.113.7", "oif", "wwan")
        assert bound_send_arrives(c, "wwan", p) == "198.51.100.1"
        assert "via 192.0.2.254 dev wlan " in route_get(c, "203.0.113.7")  # the host route
        assert "dev alpaca0 " in route_get(c, "198.18.0.1")  # everything else: the tunnel
        assert journal.undo_all() == []
        del_tun(c)
        assert snapshot(c) == before


APPLY_TWO_UPLINKS_AND_CRASH = """
import os, signal
from alpaca.system.journal import Journal
from alpaca.system.plan import HostPlanInput, Mode, apply, plan
inp = HostPlanInput(Mode.CLIENT, "alpaca0", "10.17.0.0/16", "10.17.16.1", 1408,
                    gateway_ip="10.17.1.1", peer_addresses=("203.0.113.7",))
apply(plan(inp), Journal({path!r}))
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.netns
def test_journal_the_uplinks_defaults_are_undone_after_a_crash(tmp_path: Path) -> None:
    """A run with two uplinks killed (kill -9) after its start: the next start's recovery
    deletes the copies of the moved defaults with the rest."""
    path = tmp_path / "run" / "alpaca0.journal"
    with netns() as ns:
        client_ns(ns, tun=False)
        add_backup_uplink(ns)
        before = snapshot(ns)
        add_tun(ns)
        run_python(ns, APPLY_TWO_UPLINKS_AND_CRASH.format(path=str(path)), check=False)
        assert "via 198.51.100.254 dev up2 " in route_get(ns, "203.0.113.7", "oif", "up2")
        assert "recovered []" in run_python(ns, RECOVER.format(path=str(path)))
        del_tun(ns)
        assert snapshot(ns) == before


@pytest.mark.netns
def test_journal_reconcile_puts_back_an_uplinks_default_and_the_tunnels_beside_them(tmp_path: Path) -> None:
    """The copy of a moved default deleted (by hand) is put back; so is the tunnel's own
    default when only the copies, also of our proto, are left in its table."""
    with netns() as ns:
        journal, applied = started_with_backup(ns, tmp_path / "alpaca0.journal")
        nsexec(ns, "ip", "route", "del", "default", "via", "198.51.100.254", "dev", "up2",
               "table", "253", "metric", "1600")
        assert [(r.gateway, r.metric) for r in reconcile(applied.expected, ns)] == [("198.51.100.254", 1600)]
        assert reconcile(applied.expected, ns) == []
        assert "via 198.51.100.254 dev up2 " in route_get(ns, "203.0.113.7", "oif", "up2")
        nsexec(ns, "ip", "route", "del", "default", "via", "10.17.1.1", "table", "253")
        assert [r.dev for r in reconcile(applied.expected, ns)] == ["alpaca0"]
        assert journal.undo_all() == []
        del_tun(ns)


@pytest.mark.netns
def test_journal_an_uplinks_default_moved_again_at_another_metric_is_copied_once(tmp_path: Path) -> None:
    """The backup's DHCP client renews its lease at another metric: the default is moved
    again and its copy in the tunnel's table follows (the old one deleted, not left
    behind at exit); the peers fail over to the backup while up0 is down, and up0's copies,
    gone with it, come back with it."""
    with netns() as ns:
        client_ns(ns, tun=False)
        add_backup_uplink(ns)
        before = snapshot(ns)
        add_tun(ns)
        journal = jr.Journal(tmp_path / "alpaca0.journal", ns)
        applied = apply(plan(client_input(peer_addresses=("203.0.113.7",))), journal, ns)
        nsexec(ns, "ip", "route", "add", "default", "via", "198.51.100.254", "dev", "up2", "metric", "700")
        moved = keep_default_moved(applied, journal, ns)
        applied = note_ways(applied, moved, "alpaca0")
        ours = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "default via 198.51.100.254 dev up2 proto 97 metric 1700 " in ours, ours
        assert "metric 1600" not in ours, ours
        assert reconcile(applied.expected, ns) == []
        nsexec(ns, "ip", "link", "set", "up0", "down")  # the kernel drops every route through it
        applied = follow_uplink(applied, next(w for w in applied.ways if w.dev == "up2"), ns)
        assert "via 198.51.100.254 dev up2 " in route_get(ns, "203.0.113.7")
        assert reconcile(applied.expected, ns) == []  # up0's copies wait for up0
        nsexec(ns, "ip", "link", "set", "up0", "up")
        assert sorted(r.metric for r in reconcile(applied.expected, ns)) == [1100, 1200]
        assert "via 192.0.2.254 dev up0 " in route_get(ns, "203.0.113.7", "oif", "up0")
        assert journal.undo_all() == []
        del_tun(ns)
        after = snapshot(ns)
        after["routes4"] = after["routes4"].replace("metric 700", "metric 600")  # its latest
        # up0 set down and up again: the kernel lists its routes in another order
        assert {k: sorted(v.splitlines()) for k, v in after.items()} == \
            {k: sorted(v.splitlines()) for k, v in before.items()}


@pytest.mark.netns
def test_journal_an_uplinks_default_through_a_new_router_replaces_its_copy(tmp_path: Path) -> None:
    """The backup's network now gives out another router on the same subnet: the default via
    it is moved out of main, and its copy takes the place of the old router's (which stayed
    ahead at the same metric, so a port bound to up2 kept sending to the router replaced)."""
    with netns() as ns:
        client_ns(ns, tun=False)
        add_backup_uplink(ns)
        add_tun(ns)
        journal = jr.Journal(tmp_path / "alpaca0.journal", ns)
        applied = apply(plan(client_input(peer_addresses=("203.0.113.7",))), journal, ns)
        nsexec(ns, "ip", "route", "add", "default", "via", "198.51.100.253", "dev", "up2", "metric", "600")
        applied = note_ways(applied, keep_default_moved(applied, journal, ns), "alpaca0")
        ours = nsexec(ns, "ip", "route", "show", "table", "253").stdout
        assert "default via 198.51.100.253 dev up2 proto 97 metric 1600 " in ours, ours
        assert "198.51.100.254" not in ours, ours
        assert "via 198.51.100.253 dev up2 " in route_get(ns, "203.0.113.7", "oif", "up2")
        assert [(r.dev, r.gateway) for r in applied.expected if r.metric and r.dev == "up2"] == \
            [("up2", "198.51.100.253")]
        assert reconcile(applied.expected, ns) == []
        assert journal.undo_all() == []
        del_tun(ns)
        assert "proto 97" not in nsexec(ns, "ip", "route", "show", "table", "all").stdout
