"""nftables table and Docker-style FORWARD DROP, in namespaces."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from alpaca.errors import SystemSetupError
from alpaca.system import nft
from alpaca.system.journal import Journal
from alpaca.system.plan import HostPlanInput, Mode, apply, plan
from tests.helpers import netns, nsexec, veth
from tests.system import add_tun, del_tun, snapshot

NET = "10.17.0.0/16"


def test_nft_ruleset_is_one_replace_transaction() -> None:
    script = nft.ruleset("alpaca0", NET, 1408).splitlines()
    assert script[:3] == [
        "table inet alpaca_alpaca0 {}",
        "delete table inet alpaca_alpaca0",
        "table inet alpaca_alpaca0 {",
    ]


def test_nft_mss_rules_are_bound_to_the_tun_device() -> None:
    script = nft.ruleset("alpaca0", NET, 1408)
    mss = [line for line in script.splitlines() if "maxseg size set" in line]
    assert len(mss) == 2
    assert mss[0].strip().startswith('oifname "alpaca0"')
    assert mss[1].strip().startswith('iifname "alpaca0"')
    assert all("set 1368" in line for line in mss)


def test_nft_client_ruleset_has_no_nat() -> None:
    assert "masquerade" not in nft.ruleset("alpaca0", NET, 1408, nat=False)


def test_nft_table_name_rejects_odd_names() -> None:
    with pytest.raises(ValueError):
        nft.table_name('x"; flush ruleset')


@pytest.mark.netns
def test_nft_table_created_idempotent_and_removed() -> None:
    with netns() as ns:
        before = nsexec(ns, "nft", "list", "ruleset").stdout
        nft.apply_table("alpaca0", NET, 1408, netns=ns)
        once = nsexec(ns, "nft", "list", "ruleset").stdout
        nft.apply_table("alpaca0", NET, 1408, netns=ns)
        twice = nsexec(ns, "nft", "list", "ruleset").stdout
        assert once == twice
        assert once.count("table inet alpaca_alpaca0") == 1
        assert once.count("masquerade") == 1
        assert 'oifname "alpaca0"' in once and 'iifname "alpaca0"' in once
        nft.remove_table("alpaca0", ns)
        nft.remove_table("alpaca0", ns)
        assert nsexec(ns, "nft", "list", "ruleset").stdout == before


@pytest.mark.netns
def test_nft_a_table_of_our_name_that_another_program_made_refuses_the_start(tmp_path: object) -> None:
    """An administrator's table inet alpaca_alpaca0 (a set, a chain dropping it) was replaced
    at start and deleted at stop; now the start is refused, names the table and the fix, and
    leaves it as it was. Our own table applied again (the same journal) is no refusal."""
    script = Path(f"{tmp_path}/admin.nft")
    script.write_text("table inet alpaca_alpaca0 {\n  set admin_blocklist { type ipv4_addr; }\n"
                      "  chain input { type filter hook input priority 0;"
                      " ip saddr @admin_blocklist drop; }\n}\n")
    with netns() as ns:
        nsexec(ns, "nft", "-f", str(script))
        add_tun(ns)
        before = nsexec(ns, "nft", "list", "ruleset").stdout
        journal = Journal(f"{tmp_path}/j", ns)
        inp = HostPlanInput(Mode.SERVER, "alpaca0", NET, "10.17.1.1", 1408)
        with pytest.raises(SystemSetupError) as info:
            apply(plan(inp), journal, ns)
        assert "the nftables table inet alpaca_alpaca0 exists and is not this node's" in str(info.value)
        assert "nft delete table inet alpaca_alpaca0" in str(info.value)
        assert journal.undo_all() == []
        assert nsexec(ns, "nft", "list", "ruleset").stdout == before
        nsexec(ns, "nft", "delete", "table", "inet", "alpaca_alpaca0")
        apply(plan(inp), journal, ns)
        apply(plan(inp), journal, ns)
        assert journal.undo_all() == []
        assert "alpaca_alpaca0" not in nsexec(ns, "nft", "list", "ruleset").stdout
        del_tun(ns, "alpaca0")


def ping(ns: str, addr: str) -> bool:
    return nsexec(ns, "ping", "-c", "1", "-W", "1", addr, check=False).returncode == 0


def docker_router(router: str, docker_user: bool) -> None:
    nsexec(router, "iptables", "-P", "FORWARD", "DROP")
    if docker_user:
        nsexec(router, "iptables", "-N", "DOCKER-USER")
        nsexec(router, "iptables", "-A", "DOCKER-USER", "-j", "RETURN")
        nsexec(router, "iptables", "-A", "FORWARD", "-j", "DOCKER-USER")


@pytest.mark.netns
@pytest.mark.parametrize("docker_user", [False, True], ids=["forward", "docker-user"])
def test_nft_docker_drop_policy_gets_our_accepts(docker_user: bool, tmp_path: object) -> None:
    with netns("ata") as a, netns("atr") as router, netns("atb") as b:
        veth(a, "10.17.0.2/24", router, "10.17.0.1/24", "eth0", "ra")
        veth(router, "198.51.100.1/24", b, "198.51.100.2/24", "rb", "eth0")
        nsexec(a, "ip", "route", "add", "default", "via", "10.17.0.1")
        docker_router(router, docker_user)
        before = snapshot(router)
        assert not ping(a, "198.51.100.2")
        nsexec(router, "ip", "tuntap", "add", "dev", "alpaca0", "mode", "tun")  # the daemon's TUN
        inp = HostPlanInput(Mode.SERVER, "alpaca0", NET, "10.17.1.1", 1408)
        journal = Journal(f"{tmp_path}/j.json", router)
        apply(plan(inp), journal, router)
        apply(plan(inp), journal, router)  # a second apply adds nothing
        rules = nsexec(router, "iptables", "-S").stdout.replace('"', "")
        chain = "DOCKER-USER" if docker_user else "FORWARD"
        assert rules.count("alpaca-tunnel:alpaca0") == 2
        assert f"-A {chain} -s 10.17.0.0/16 -m comment --comment alpaca-tunnel:alpaca0" in rules
        assert ping(a, "198.51.100.2")  # forwarded (and masqueraded: b has no route back)
        assert journal.undo_all() == []
        assert "alpaca-tunnel" not in nsexec(router, "iptables", "-S").stdout
        assert not ping(a, "198.51.100.2")
        del_tun(router)  # the daemon closes its TUN
        assert snapshot(router) == before


def test_nft_tools_are_found_outside_a_short_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """With PATH=/usr/bin:/bin (cron-like), nft and iptables in /usr/sbin are still found:
    an undo must not take iptables for absent and drop its step with the rules in place."""
    if shutil.which("iptables", path="/usr/sbin:/sbin") is None:
        pytest.skip("iptables is not installed in /usr/sbin or /sbin")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert nft._has_iptables() and nft._tool("nft") is not None
    nft.require_nft()


def _iptables_answering(monkeypatch: pytest.MonkeyPatch, codes: dict[str, int]) -> list[list[str]]:
    """iptables as a fake: exit ``codes[option]`` (-S lists one rule of ours); the calls made."""
    calls: list[list[str]] = []
    rule = '-A DOCKER-USER -s 10.17.0.0/16 -m comment --comment "alpaca-tunnel:alpaca0" -j ACCEPT'

    def run(argv: list[str], netns: str | None, stdin: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        code = codes.get(argv[3], 0)
        out = rule if argv[3] == "-S" and argv[4] == "DOCKER-USER" and code == 0 else ""
        err = "Another app is currently holding the xtables lock" if code == 4 else ""
        return subprocess.CompletedProcess(argv, code, out, err)

    monkeypatch.setattr(nft, "_has_iptables", lambda: True)
    monkeypatch.setattr(nft, "_run", run)
    return calls


@pytest.mark.parametrize("failing", ["-S", "-D"])
def test_nft_forward_accepts_not_removed_are_an_error_the_journal_keeps(
        monkeypatch: pytest.MonkeyPatch, failing: str) -> None:
    """The xtables lock held by Docker (exit 4) counted as removed: the journal step went and
    the ACCEPT rules stayed. Now it is an error (the step is kept), and -w waits for the lock."""
    calls = _iptables_answering(monkeypatch, {failing: 4})
    with pytest.raises(SystemSetupError, match="exit 4: Another app"):
        nft.remove_forward_accepts("alpaca0")
    assert all(argv[:3] == ["iptables", "-w", "5"] for argv in calls)


def test_nft_an_iptables_that_cannot_list_its_table_has_nothing_of_ours(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Legacy iptables on a host without its kernel table exits 3: a server started there
    (nothing blocks forwarding) and its undo step is done, as before -w checked exit codes."""
    _iptables_answering(monkeypatch, {"-S": 3})
    assert nft.forward_blocked_chain() is None
    assert nft.remove_forward_accepts("alpaca0") == 0


def test_nft_forward_accepts_of_a_chain_or_rule_gone_are_done(monkeypatch: pytest.MonkeyPatch) -> None:
    _iptables_answering(monkeypatch, {"-D": 1})
    assert nft.remove_forward_accepts("alpaca0") == 0
    _iptables_answering(monkeypatch, {})
    assert nft.remove_forward_accepts("alpaca0") == 1
