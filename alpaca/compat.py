"""Wiring of the legacy 6.1.2 protocol: which peers use it, its settings, the mux, the warning.

A peer speaks ``legacy-6.1.2`` when ``peer_protocols`` says so, or when the node's
``protocol`` is ``legacy-6.1.2`` and ``peer_protocols`` does not say ``v2`` for it. With no
legacy peer, nothing here changes the node: the dataplane drives the default engine alone.

Otherwise the default engine keeps routing every TUN packet, but it gets the legacy peers
without their static address (so it never probes them or sends them its own datagrams), no
legacy forwarder and no legacy gateway; the legacy engine gets only the legacy peers' keys,
in the 6.1.2 form (the first 16 characters of the lower-case hex key). See docs/legacy.md.

Called from the daemon's control greenlet (start and reload) and from ``alpaca-tunnel check``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from alpaca.config import Config, Mode
from alpaca.core.engine import Engine
from alpaca.core.ids import format_peer_id
from alpaca.core.legacy.codec import key_from_bytes, key_from_text
from alpaca.core.legacy.header import MTU_MAX
from alpaca.core.legacy.peers import LegacyPeerSpec, LegacySettings
from alpaca.core.mux import ProtocolMux
from alpaca.core.output import Output
from alpaca.core.settings import DupPolicy, EngineSettings, PeerSpec
from alpaca.secrets import Secrets

if TYPE_CHECKING:
    from alpaca.io.dataplane import Dataplane

__all__ = ["LEGACY", "ProtocolMux", "attach", "legacy_peer_ids", "legacy_warning", "reload_legacy",
           "split_settings"]

log = logging.getLogger(__name__)

LEGACY = "legacy-6.1.2"


def legacy_peer_ids(config: Config, secrets: Secrets) -> frozenset[int]:
    """Ids of the peers (never ourselves, and only peers of the secrets file) spoken to in the
    6.1.2 protocol."""
    chosen = {p for p in secrets.peers if config.protocol == LEGACY}
    for peer, protocol in config.peer_protocols.items():
        if protocol == LEGACY:
            chosen.add(peer)
        else:
            chosen.discard(peer)
    chosen.discard(config.id)
    return frozenset(chosen & secrets.peers.keys())  # an id without a key is no peer


def legacy_warning(config: Config, secrets: Secrets) -> str | None:
    """The one warning about the legacy protocol, naming its peers; None if none uses it."""
    peers = sorted(legacy_peer_ids(config, secrets))
    if not peers:
        return None
    names = ", ".join(format_peer_id(p) for p in peers)
    return (
        f"peers {names} use the insecure legacy-6.1.2 protocol: their payload is not"
        " authenticated (bits can be flipped), keys have only 64 bits (16 hex characters),"
        " and replayed packets can be accepted; migrate them to v2 (see docs/legacy.md)"
    )


def split_settings(
    config: Config, secrets: Secrets, wall_offset: float
) -> tuple[EngineSettings, LegacySettings | None]:
    """The default engine's settings and, if any peer is legacy, the legacy engine's.

    Args:
        wall_offset: wall clock minus monotonic clock, seconds (the legacy header carries
            the sender's Unix time).

    Raises:
        ConfigError: as :meth:`Config.engine_settings`.
    """
    base = config.engine_settings(secrets)
    legacy = legacy_peer_ids(config, secrets)
    if not legacy:
        return base, None
    v2_peers = {p: spec if p not in legacy else PeerSpec(p, spec.key, None) for p, spec in base.peers.items()}
    v2 = replace(
        base, peers=v2_peers, forwarders=tuple(f for f in base.forwarders if f not in legacy),
        gateway=None if base.gateway in legacy else base.gateway,
    )
    served = legacy | {config.id}
    specs = {
        p: LegacyPeerSpec(p, key_from_text(s.legacy_key.decode()) if s.legacy_key else key_from_bytes(s.key),
                          s.addr)
        for p, s in secrets.peers.items() if p in served
    }
    gateway = config.gateway if config.mode is Mode.CLIENT and config.gateway in legacy else None
    return v2, LegacySettings(
        self_id=config.id, net=base.net, group=config.group, peers=specs,
        forwarders=tuple(f for f in config.forwarders if f in legacy), gateway=gateway,
        mtu=min(config.mtu, MTU_MAX), ttl=config.ttl, wall_offset=wall_offset,
        dup_syn_dns=config.dup.policy is not DupPolicy.NONE and config.dup.copies > 0,
        dup_delay=config.dup.delay,
        dup_queue_max=config.dup.queue_max,
    )


def attach(
    plane: Dataplane, engine: Engine, legacy: LegacySettings | None, config: Config,
    secrets: Secrets, random_bytes: Callable[[int], bytes],
) -> ProtocolMux | None:
    """Attach ``engine`` to ``plane``, or a ProtocolMux of it and a new LegacyEngine.

    Logs the legacy warning once when a mux is built. Returns the mux, or None.
    """
    from alpaca.core.legacy.engine import LegacyEngine

    if legacy is None:
        plane.attach(engine)
        return None
    warning = legacy_warning(config, secrets)
    if warning:
        log.warning("%s", warning)
    out: Output = plane
    mux = ProtocolMux(engine, LegacyEngine(legacy, out, random_bytes=random_bytes))
    plane.attach(mux)
    return mux


def reload_legacy(
    plane: Dataplane, engine: Engine, mux: ProtocolMux | None, legacy: LegacySettings | None,
    config: Config, secrets: Secrets, random_bytes: Callable[[int], bytes],
) -> ProtocolMux | None:
    """Apply reloaded legacy settings; return the mux the dataplane drives now (or None).

    The first legacy peer builds the mux and puts it in front of the running ``engine``; once
    the last legacy peer is gone, the legacy engine serves nobody (no key of a removed peer
    stays in use). Learned legacy paths stay across reloads; the paths ``engine`` learned to
    a peer that turned legacy are forgotten (it would go on probing them).
    """
    before = set(mux.legacy.settings.peers) if mux is not None else set()
    if legacy is not None:
        engine.forget_paths(set(legacy.peers) - before - {legacy.self_id})
    if mux is None:
        return None if legacy is None else attach(plane, engine, legacy, config, secrets, random_bytes)
    if legacy is None:
        running = mux.legacy.settings
        if set(running.peers) != {running.self_id}:  # said once, not at every reload after
            log.info("no peer uses legacy-6.1.2 any more; the legacy engine serves nobody")
        legacy = replace(running, peers={running.self_id: running.peers[running.self_id]},
                         forwarders=(), gateway=None)
    elif legacy.peers.keys() != mux.legacy.settings.peers.keys():
        log.warning("%s", legacy_warning(config, secrets))
    mux.legacy.reload(legacy)
    return mux
