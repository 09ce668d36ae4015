"""``lab impair``: figures and link names are checked before anything changes, and
impair.json records only what is in place (pure: no root, no namespace is touched)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from alpaca import cli
from alpaca.lab import impair, netns
from alpaca.lab.nodes import LabError
from alpaca.lab.topology import Impairment, Link, Topology, load_topology


class HostCommands:
    """Stands in for :func:`alpaca.lab.netns.run`, the one way the lab runs ip, tc and nft."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], **_: object) -> None:
        self.calls.append(list(args))
        raise AssertionError(f"a host command ran: {args}")


class Applier:
    """Records what :func:`impair.impair` asks to put in place, and what impair.json said
    at that moment; fails for the impairments listed in ``fail``."""

    def __init__(self, state_dir: Path, fail: tuple[Impairment, ...] = ()) -> None:
        self.state_dir = state_dir
        self.fail = fail
        self.calls: list[tuple[str, Impairment, dict[str, Impairment], dict[str, object]]] = []

    def __call__(self, topology: Topology, state_dir: Path, link: Link, imp: Impairment,
                 in_place: Mapping[str, Impairment]) -> None:
        record = self.state_dir / "impair.json"
        recorded = json.loads(record.read_text()) if record.exists() else {}
        self.calls.append((link.name, imp, dict(in_place), recorded))
        if imp in self.fail:
            raise LabError(f"running tc on link {link.name}: RTNETLINK answers: No such device")


def _record(state_dir: Path) -> dict[str, object]:
    path = state_dir / "impair.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["a", "--loss", "140"], "--loss: 140.0 is out of range (allowed: 0-100 %)"),
        (["a", "--loss", "-5"], "--loss: -5.0 is out of range (allowed: 0-100 %)"),
        (["a", "--loss", "nan"], "--loss: NaN is not a finite number (allowed: 0-100 %)"),
        (["a", "--delay", "inf"], "--delay: Infinity is not a finite number (allowed: 0-10000 ms)"),
        (["a", "--delay", "1e400"], "--delay: Infinity is not a finite number"),
        (["a", "--delay", "86400000"], "--delay: 86400000.0 is out of range (allowed: 0-10000 ms)"),
        (["a", "--delay", "20", "--jitter", "-1"], "--jitter: -1.0 is out of range"),
        (["a", "--rate", "1e-9"], "--rate: 1e-09 is out of range (allowed: 0 (no limit) or 0.01-100000"),
        (["a", "--rate", "1e6"], "--rate: 1000000.0 is out of range"),
        (["a", "--jitter", "5"], "--jitter: 5.0 needs a delay (jitter varies the delay: give --delay"),
        (["a", "--clear", "--loss", "3"], "--clear removes the whole impairment; give it without --loss"),
    ],
)
def test_impair_cli_refuses_bad_arguments_before_any_host_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        args: list[str], expected: str) -> None:
    host = HostCommands()
    monkeypatch.setattr(netns, "run", host)
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)  # the check must not depend on who runs it
    code = cli.main(["lab", "impair", "--state-dir", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code != 0
    assert expected in err, err
    assert "Traceback" not in err
    assert host.calls == []
    assert not (tmp_path / "impair.json").exists()


@pytest.mark.parametrize(
    ("link", "figures", "expected"),
    [
        ("a", {"loss_pct": 100.5}, "loss_pct: 100.5 is out of range (allowed: 0-100 %)"),
        ("a", {"delay_ms": float("nan")}, "delay_ms: NaN is not a finite number"),
        ("a", {"rate_mbit": -1.0}, "rate_mbit: -1.0 is out of range"),
        ("a", {"jitter_ms": 3.0}, "jitter_ms: 3.0 needs a delay"),
        ("zz", {"loss_pct": 5.0}, 'no link "zz" in'),
    ],
)
def test_impair_refuses_bad_figures_and_links_before_applying(
        tmp_path: Path, link: str, figures: dict[str, float], expected: str) -> None:
    applier = Applier(tmp_path)
    with pytest.raises(LabError) as info:
        impair.impair(load_topology(), tmp_path, link, applier=applier, **figures)  # type: ignore[arg-type]
    assert expected in str(info.value)
    assert applier.calls == []
    assert _record(tmp_path) == {}


def test_impair_records_only_after_the_change_is_in_place(tmp_path: Path) -> None:
    applier = Applier(tmp_path)
    impair.impair(load_topology(), tmp_path, "a", loss_pct=10, applier=applier)
    impair.impair(load_topology(), tmp_path, "b", delay_ms=20, jitter_ms=5, applier=applier)
    (_, _, in_place_a, seen_a), (_, _, in_place_b, seen_b) = applier.calls
    assert seen_a == {} and seen_b == {"a": _record(tmp_path)["a"]}
    assert in_place_a == {"a": Impairment(loss_pct=10)}
    assert in_place_b == {"a": Impairment(loss_pct=10), "b": Impairment(delay_ms=20, jitter_ms=5)}
    assert impair.current(tmp_path) == in_place_b


def test_impair_failed_apply_is_not_recorded_and_the_link_is_cleared(tmp_path: Path) -> None:
    topo = load_topology()
    impair.impair(topo, tmp_path, "a", loss_pct=5, applier=Applier(tmp_path))
    impair.impair(topo, tmp_path, "b", rate_mbit=20, applier=Applier(tmp_path))
    failing = Applier(tmp_path, fail=(Impairment(delay_ms=20),))
    with pytest.raises(LabError) as info:
        impair.impair(topo, tmp_path, "a", delay_ms=20, applier=failing)
    message = str(info.value)
    assert "impairing link a failed: running tc on link a" in message
    assert "the link was cleared" in message
    # a's old loss was taken down first, its delay never came: neither is claimed
    assert impair.current(tmp_path) == {"b": Impairment(rate_mbit=20)}
    (_, tried, _, _), (name, rollback, tables, _) = failing.calls
    assert tried == Impairment(delay_ms=20)
    assert (name, rollback, tables) == ("a", Impairment(), {"b": Impairment(rate_mbit=20)})


def test_impair_failed_apply_and_failed_clearing_say_how_to_clean_up(tmp_path: Path) -> None:
    failing = Applier(tmp_path, fail=(Impairment(loss_pct=10), Impairment()))
    with pytest.raises(LabError) as info:
        impair.impair(load_topology(), tmp_path, "a", loss_pct=10, applier=failing)
    message = str(info.value)
    assert "clearing it failed too" in message
    assert "alpaca-tunnel lab impair a --clear" in message
    assert "a" not in impair.current(tmp_path)


@pytest.mark.parametrize("text", ['{"a": {"loss_pct": 10', "[1]", '{"a": 5}', '{"a": {"loss_pct": "x"}}',
                                  '{"a": {"loss_pct": 1e999}}', '{"a": {"colour": 1}}'])
def test_impair_unreadable_record_is_a_clear_error(tmp_path: Path, text: str) -> None:
    (tmp_path / "impair.json").write_text(text)
    with pytest.raises(LabError, match=r"impair.json: not a record of impairments .*--clear"):
        impair.current(tmp_path)
