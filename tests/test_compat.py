"""Wiring of the legacy protocol: which peers, the split settings, the one warning, check."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gevent
import pytest
from gevent.pool import Group

from alpaca import compat
from alpaca.cli import main
from alpaca.config import load_config
from alpaca.core.drops import DropReason
from alpaca.core.engine import Engine
from alpaca.core.legacy.codec import key_from_bytes
from alpaca.io.dataplane import Dataplane
from alpaca.io.fakes import MemoryPort, MemoryTun
from alpaca.secrets import load_secrets
from tests.enginenet import ipv4

KEY_S, KEY_C = "1f5c6281e4e3e0db7c57b74d2103e706", "ac48f5f6be3cd479c6a3dbd8cfb1dc7f"
KEY_D = "0b21e718ea748562e4604b8475c444ac0ed98333bfdc3ef74297ab8471b7ce8f"


def write(tmp_path: Path, **config: object) -> Path:
    secrets = tmp_path / "secrets.txt"
    secrets.write_text(f"1.1 {KEY_S} 192.0.2.1 null 5000\n16.1 {KEY_C}\n16.2 {KEY_D}\n")
    secrets.chmod(0o600)
    base: dict[str, object] = {"mode": "server", "group": "g", "net": "10.17", "id": "1.1",
                               "secret_file": str(secrets), "port": 5000}
    base.update(config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(base))
    return path


def load(path: Path):  # type: ignore[no-untyped-def]
    config = load_config(path)
    return config, load_secrets(config.secret_file, config.id)


def test_compat_peer_protocols_choose_legacy_peers(tmp_path: Path) -> None:
    config, secrets = load(write(tmp_path, peer_protocols={"16.1": "legacy-6.1.2"}))
    assert compat.legacy_peer_ids(config, secrets) == {0x1001}
    config, secrets = load(write(tmp_path, protocol="legacy-6.1.2", peer_protocols={"16.2": "v2"}))
    assert compat.legacy_peer_ids(config, secrets) == {0x1001}
    config, secrets = load(write(tmp_path))
    assert compat.legacy_peer_ids(config, secrets) == frozenset()
    assert compat.legacy_warning(config, secrets) is None
    assert compat.split_settings(config, secrets, 0.0)[1] is None


def test_compat_split_settings_keep_keys_apart(tmp_path: Path) -> None:
    config, secrets = load(write(tmp_path, mode="client", id="16.1", gateway="1.1", port=0,
                                 peer_protocols={"1.1": "legacy-6.1.2"}))
    v2, legacy = compat.split_settings(config, secrets, 100.0)
    assert legacy is not None
    assert set(legacy.peers) == {0x0101, 0x1001}  # 16.2's key never takes the weak form
    assert legacy.peers[0x0101].key == key_from_bytes(bytes.fromhex(KEY_S)) == b"1f5c6281e4e3e0db"
    assert legacy.peers[0x0101].addr == ("192.0.2.1", 5000) and legacy.gateway == 0x0101
    assert v2.peers[0x0101].addr is None and v2.gateway is None  # v2 never sends to it
    assert legacy.wall_offset == 100.0


@pytest.mark.parametrize(("dup", "copies_syn_dns"), [
    ({}, True), ({"policy": "none"}, False), ({"copies": 0}, False), ({"policy": "all", "copies": 3}, True),
])
def test_compat_the_legacy_engine_copies_syn_and_dns_unless_dup_sends_no_copy(
        tmp_path: Path, dup: dict[str, object], copies_syn_dns: bool) -> None:
    """``dup.copies: 0`` turned copies off for v2 peers only: 6.1.2 peers still got a delayed
    copy of every SYN and DNS packet."""
    config, secrets = load(write(tmp_path, mode="client", id="16.1", gateway="1.1", port=0,
                                 peer_protocols={"1.1": "legacy-6.1.2"}, dup=dup))
    _, legacy = compat.split_settings(config, secrets, 0.0)
    assert legacy is not None and legacy.dup_syn_dns is copies_syn_dns


def test_compat_a_key_in_upper_case_gives_the_c_nodes_key(tmp_path: Path) -> None:
    """The C node keys with the first 16 characters as written: from the hex-decoded bytes
    we made lower-case ones, and every ICV failed without a word."""
    path = write(tmp_path, mode="client", id="16.1", gateway="1.1", port=0, protocol="legacy-6.1.2")
    secrets_path = tmp_path / "secrets.txt"
    secrets_path.write_text(secrets_path.read_text().replace(KEY_S, KEY_S.upper()))
    config, secrets = load(path)
    _, legacy = compat.split_settings(config, secrets, 0.0)
    assert legacy is not None
    assert legacy.peers[0x0101].key == b"1F5C6281E4E3E0DB"
    assert legacy.peers[0x1001].key == b"ac48f5f6be3cd479"


def test_compat_warning_names_the_peers(tmp_path: Path) -> None:
    config, secrets = load(write(tmp_path, protocol="legacy-6.1.2"))
    warning = compat.legacy_warning(config, secrets)
    assert warning is not None and "peers 16.1, 16.2 use the insecure legacy-6.1.2" in warning
    assert "not authenticated" in warning and "64 bits" in warning and "docs/legacy.md" in warning


def test_compat_check_prints_the_warning_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, peer_protocols={"16.2": "legacy-6.1.2"})
    assert main(["-c", str(path), "check"]) == 0
    out = capsys.readouterr().out
    assert out.count("WARNING: peers 16.2 use the insecure legacy-6.1.2 protocol") == 1


# --------------------------------------------------------------------------- the mux at run time
@contextmanager
def running_node(tmp_path: Path, **config: object) -> Iterator[tuple[Dataplane, Engine, MemoryTun,
                                                                       compat.ProtocolMux | None]]:
    """Server 1.1 of ``write``'s files with a dataplane over memory, started in a group."""
    cfg, secrets = load(write(tmp_path, **config))
    tun, port = MemoryTun(), MemoryPort()
    plane = Dataplane(tun, [port])
    v2, legacy = compat.split_settings(cfg, secrets, 0.0)
    engine = Engine(v2, plane, epoch=1, random_bytes=os.urandom)
    mux = compat.attach(plane, engine, legacy, cfg, secrets, os.urandom)
    group = Group()
    plane.start(group)
    try:
        yield plane, engine, tun, mux
    finally:
        group.kill()


def test_compat_drops_the_dataplane_counts_reach_the_mux_stats(tmp_path: Path) -> None:
    with running_node(tmp_path, peer_protocols={"16.2": "legacy-6.1.2"}) as (plane, engine, tun, mux):
        assert mux is not None and plane.engine is mux
        tun.bad_frames = 3  # frames the TUN reader refused while reading this batch
        tun.inject(ipv4("10.17.1.1", "10.17.16.1"))
        with gevent.Timeout(3):
            while mux.stats.drops[DropReason.BAD_OFFLOAD] != 3:
                gevent.sleep(0.01)
        assert engine.stats.drops[DropReason.BAD_OFFLOAD] == 3


def test_compat_reload_builds_the_mux_for_a_first_legacy_peer_and_empties_it_for_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="alpaca.compat")
    with running_node(tmp_path) as (plane, engine, _, mux):
        assert mux is None and plane.engine is engine
        cfg, secrets = load(write(tmp_path, peer_protocols={"16.2": "legacy-6.1.2"}))
        v2, legacy = compat.split_settings(cfg, secrets, 0.0)
        engine.peers[0x1002].paths.learn(0, 0, ("192.0.2.9", 5000), 1.0)  # 16.2 spoke v2 before
        engine.reload(v2)
        mux = compat.reload_legacy(plane, engine, None, legacy, cfg, secrets, os.urandom)
        assert mux is not None and plane.engine is mux and mux.v2 is engine
        assert mux.legacy.serves(0x1002) and not mux.legacy.serves(0x1001)
        assert not engine.peers[0x1002].paths.links()  # the default engine probes it no more

        cfg, secrets = load(write(tmp_path))  # 16.2 speaks v2 again
        v2, legacy = compat.split_settings(cfg, secrets, 0.0)
        assert legacy is None
        assert compat.reload_legacy(plane, engine, mux, legacy, cfg, secrets, os.urandom) is mux
        assert not mux.legacy.serves(0x1002) and mux.legacy_peers == frozenset()
        for _ in range(3):  # later reloads: the mux stays, its emptiness is not news
            assert compat.reload_legacy(plane, engine, mux, legacy, cfg, secrets, os.urandom) is mux
        assert caplog.text.count("the legacy engine serves nobody") == 1


def test_compat_peer_protocols_naming_no_peer_of_the_secrets_builds_nothing(tmp_path: Path) -> None:
    config, secrets = load(write(tmp_path, peer_protocols={"16.9": "legacy-6.1.2"}))
    assert compat.legacy_peer_ids(config, secrets) == frozenset()
    assert compat.split_settings(config, secrets, 0.0)[1] is None


def test_compat_metrics_export_the_legacy_engines_node_counters(tmp_path: Path) -> None:
    """The exporter given the mux's stats (as the daemon gives it) counts both engines'
    drops; given none, only the default engine's."""
    from alpaca.metrics import build_registry
    from tests.test_metrics import scrape, value

    with running_node(tmp_path, peer_protocols={"16.2": "legacy-6.1.2"}) as (_, engine, _, mux):
        assert mux is not None
        mux.legacy.stats.drop(DropReason.LEGACY)  # e.g. a legacy send past its sequence limit
        mux.legacy.stats.drop(DropReason.DUPLICATE)
        mux.legacy.stats.drop(DropReason.DUP_QUEUE_FULL)  # the legacy engine's own queue
        engine.stats.drop(DropReason.DUPLICATE)
        both = scrape(build_registry(lambda: engine, lambda: 0.0, version="x", start_time=0,
                                     node="1.1", stats_ref=lambda: mux.stats))
        alone = scrape(build_registry(lambda: engine, lambda: 0.0, version="x", start_time=0, node="1.1"))
    assert value(both, "alpaca_packets_dropped_total", reason="legacy") == 1
    assert value(both, "alpaca_packets_dropped_total", reason="duplicate") == 2
    assert value(alone, "alpaca_packets_dropped_total", reason="duplicate") == 1
    assert value(both, "alpaca_dup_queue_dropped_total") == 1  # it showed the default engine's only


def test_compat_show_counts_the_legacy_engines_refused_copies_as_the_metric_does(tmp_path: Path) -> None:
    """``show`` said "0 refused" beside a drop count of dup_queue_full 1 (the default engine's
    queue only), where the metric counted both engines'."""
    from alpaca.snapshot import snapshot

    with running_node(tmp_path, peer_protocols={"16.2": "legacy-6.1.2"}) as (_, engine, _, mux):
        assert mux is not None
        mux.legacy.stats.drop(DropReason.DUP_QUEUE_FULL)
        snap = snapshot(engine, 0.0, stats=mux.stats)
    assert snap["dup_queue_dropped"] == snap["drops"]["dup_queue_full"] == 1
