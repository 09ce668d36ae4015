"""alpaca.io.rename: the hostname follower over a fake resolver and a fake clock (no sockets)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any

import gevent
import pytest

from alpaca.hostnames import REFRESH, RETRY_MIN
from alpaca.io import rename
from alpaca.io.rename import HostnameFollower, named_peers, peer_is_up

GW = 0x0101
NAME = "gw.example.test"


class World:
    """The follower's surroundings: the names in use, which peers are up, the resolver's
    answers, a clock, and the reloads asked for."""

    def __init__(self, named: dict[int, tuple[str, str | None]]) -> None:
        self.named = named
        self.up: set[int] = set()
        self.answers: dict[str, tuple[str, ...]] = {}
        self.now = 0.0
        self.reloads = 0
        self.asked: list[list[str]] = []
        self.follower = HostnameFollower(lambda: self.named, lambda p: p in self.up, self.reload,
                                         self.lookup, lambda: self.now)

    def reload(self) -> None:
        self.reloads += 1

    def lookup(self, names: Iterable[str], deadline: float) -> Mapping[str, tuple[str, ...]]:
        assert deadline == rename.LOOKUP_TIMEOUT
        self.asked.append(sorted(names))
        return {n: self.answers.get(n, ()) for n in names}

    def at(self, now: float) -> None:
        self.now = now
        self.follower.step()


def test_rename_name_that_starts_resolving_asks_for_one_reload(caplog: pytest.LogCaptureFixture) -> None:
    w = World({GW: (NAME, None)})  # did not resolve when the secrets were loaded
    with caplog.at_level(logging.INFO, logger="alpaca.io.rename"):
        w.at(0.0)
        w.at(RETRY_MIN - 0.1)
        assert w.asked == []
        w.at(RETRY_MIN)  # still nothing: the back-off's next step
        assert (w.asked, w.reloads) == ([[NAME]], 0)
        w.at(RETRY_MIN + 9.0)
        assert len(w.asked) == 1
        w.answers[NAME] = ("192.0.2.1",)
        w.at(RETRY_MIN + 10.0)
    assert w.reloads == 1
    assert "does not resolve; looking it up again in 10s peer=1.1 hostname=gw.example.test" in caplog.text
    assert ("resolves to another address; reloading to follow it peer=1.1 hostname=gw.example.test"
            " from=none to=192.0.2.1") in caplog.text


def test_rename_moved_name_is_logged_once_and_followed_until_applied(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = World({GW: (NAME, "192.0.2.1")})
    w.up.add(GW)
    w.answers[NAME] = ("192.0.2.1",)
    w.at(0.0)
    w.at(REFRESH)
    assert (len(w.asked), w.reloads) == (1, 0)
    w.answers[NAME] = ("192.0.2.9",)
    w.up.clear()  # the old address stopped answering: looked up RETRY_MIN after the last
    with caplog.at_level(logging.INFO, logger="alpaca.io.rename"):
        w.at(REFRESH + RETRY_MIN)
        assert w.reloads == 1
        w.at(REFRESH + 3 * RETRY_MIN)  # the reload did not apply it (yet): asked again
        assert w.reloads == 2
        w.named[GW] = (NAME, "192.0.2.9")  # applied
        w.at(REFRESH + 10 * RETRY_MIN)
    assert w.reloads == 2
    assert caplog.text.count("resolves to another address") == 1


def test_rename_a_name_that_may_be_key_digits_is_logged_by_its_length(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """8 to 15 hex digits (perhaps a key cut in two) pass as a hostname: not in a log line."""
    name = "f9f17127c28aafd"
    w = World({GW: (name, None)})
    with caplog.at_level(logging.INFO, logger="alpaca.io.rename"):
        w.at(0.0)
        w.at(RETRY_MIN)
        w.answers[name] = ("192.0.2.1",)
        w.at(RETRY_MIN + 10.0)
    assert w.reloads == 1 and name[:8] not in caplog.text
    assert "does not resolve; looking it up again in 10s peer=1.1 hostname=<15 characters" in caplog.text
    assert "reloading to follow it peer=1.1 hostname=<15 characters, perhaps a key" in caplog.text


def test_rename_name_still_listing_the_address_in_use_stays() -> None:
    w = World({GW: (NAME, "192.0.2.1")})
    w.answers[NAME] = ("192.0.2.9", "192.0.2.1")  # round robin: another one came first
    for now in range(0, 200, 5):
        w.at(float(now))
    assert len(w.asked) > 3 and w.reloads == 0


def test_rename_name_that_stops_resolving_keeps_its_address_and_logs_per_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    w = World({GW: (NAME, "192.0.2.1")})
    with caplog.at_level(logging.INFO, logger="alpaca.io.rename"):
        for now in range(0, 1000):
            w.at(float(now))
    assert w.reloads == 0
    assert caplog.text.count("does not resolve") == 5  # steps 5, 10, 20, 40, 60 s
    assert len(w.asked) == 5 + (1000 - 80) // 60  # at 5, 10, 20, 40, 80 s, then once a minute
    w.answers[NAME] = ("192.0.2.1",)
    with caplog.at_level(logging.INFO, logger="alpaca.io.rename"):
        w.at(1100.0)
    assert "hostname resolves again peer=1.1 hostname=gw.example.test address=192.0.2.1" in caplog.text
    assert w.reloads == 0


def test_rename_one_lookup_per_name_per_round_and_a_peer_renamed_meanwhile_waits() -> None:
    w = World({GW: (NAME, None), 0x0102: (NAME, None), 0x0103: ("other.test", None)})

    def lookup(names: Iterable[str], deadline: float) -> Mapping[str, tuple[str, ...]]:
        w.asked.append(sorted(names))
        w.named[0x0103] = ("renamed.test", None)  # a reload ran while we waited
        return {n: ("192.0.2.1",) for n in names}

    w.follower.lookup = lookup
    w.at(0.0)
    w.at(RETRY_MIN)
    assert w.asked == [[NAME, "other.test"]] and w.reloads == 1
    assert w.follower.book.lookups[0x0103].addresses == ()  # not the old name's answer
    w.at(RETRY_MIN + 0.5)
    assert w.follower.book.lookups[0x0103].hostname == "renamed.test"


def test_rename_resolver_that_cannot_start_is_no_answer(caplog: pytest.LogCaptureFixture) -> None:
    w = World({GW: (NAME, "192.0.2.1")})

    def broken(names: Iterable[str], deadline: float) -> Mapping[str, tuple[str, ...]]:
        raise OSError("no resolver")

    w.follower.lookup = broken
    w.at(0.0)
    w.at(RETRY_MIN)
    assert w.reloads == 0 and "could not look hostnames up error=no resolver" in caplog.text


def test_rename_run_is_a_greenlet_that_steps_every_tick() -> None:
    w = World({GW: (NAME, None)})
    w.answers[NAME] = ("192.0.2.1",)
    runner = gevent.spawn(w.follower.run, 0.01)
    try:
        gevent.sleep(0.03)
        assert w.asked == []
        w.now = RETRY_MIN
        gevent.sleep(0.05)
    finally:
        runner.kill()
    assert w.reloads == 1 and w.asked == [[NAME]]


def test_rename_named_peers_are_the_hostname_peers_but_ourselves() -> None:
    peer = SimpleNamespace
    secrets: Any = SimpleNamespace(peers={
        0x1001: peer(hostname="me.test", address="192.0.2.5"),
        GW: peer(hostname=NAME, address=None),
        0x0102: peer(hostname=None, address="192.0.2.7"),
    })
    assert named_peers(secrets, 0x1001) == {GW: (NAME, None)}


def test_rename_peer_is_up_with_a_path_up_or_a_recent_legacy_datagram() -> None:
    def v2_peer(*ups: bool) -> Any:
        return SimpleNamespace(paths=SimpleNamespace(all=lambda: [SimpleNamespace(up=u) for u in ups]))

    engine: Any = SimpleNamespace(peers={GW: v2_peer(False, True), 0x0102: v2_peer(False)})
    assert peer_is_up(engine, None, GW, 0.0)
    assert not peer_is_up(engine, None, 0x0102, 0.0)
    assert not peer_is_up(engine, None, 0x0103, 0.0) and not peer_is_up(None, None, GW, 0.0)
    legacy = SimpleNamespace(serves=lambda p: p == 0x0102, settings=SimpleNamespace(peer_lifetime=60.0),
                             peers={0x0102: SimpleNamespace(last_seen_at=100.0)})
    mux: Any = SimpleNamespace(legacy=legacy)
    assert peer_is_up(engine, mux, 0x0102, 160.0) and not peer_is_up(engine, mux, 0x0102, 160.5)
    assert peer_is_up(engine, mux, GW, 0.0)
