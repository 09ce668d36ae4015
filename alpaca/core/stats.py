"""Engine counters: plain ints the metrics collector reads at scrape time.

The core never imports prometheus; `alpaca.metrics` turns these into metric families.
"""

from __future__ import annotations

from typing import Any

from alpaca.core.drops import DropReason


class EngineStats:
    """Node-wide counters. Per-peer and per-path counters live on Peer and Path objects."""

    __slots__ = (
        "delivered_bytes", "delivered_packets", "drops", "dup_copies_sent", "epoch_resets",
        "forwarded_bytes", "forwarded_packets", "path_changes", "probe_replies_received",
        "probes_answered", "probes_sent", "reload_failed", "reload_failures", "reloads",
        "restart_pending", "sent_bytes", "sent_datagrams",
    )

    def __init__(self) -> None:
        self.drops = [0] * len(DropReason)
        self.sent_datagrams = self.sent_bytes = 0
        self.delivered_packets = self.delivered_bytes = 0
        self.forwarded_packets = self.forwarded_bytes = 0
        self.dup_copies_sent = 0
        self.probes_sent = self.probes_answered = self.probe_replies_received = 0
        self.path_changes = 0
        self.epoch_resets = 0
        self.reloads = 0
        #: Reloads that kept the running configuration (set by the daemon, which reads the files).
        self.reload_failures = 0
        #: 1 while the last reload failed, else 0.
        self.reload_failed = 0
        #: 1 while the config file read at the last reload holds a change only a restart
        #: applies (set by the daemon), else 0.
        self.restart_pending = 0

    def drop(self, reason: DropReason) -> None:
        self.drops[reason] += 1

    def delivered(self, peer: Any, size: int) -> None:
        """One inner packet of ``size`` bytes from ``peer`` was written to the TUN device.

        ``peer`` is any object with ``rx_packets``/``rx_bytes`` counters (either engine's).
        """
        peer.rx_packets += 1
        peer.rx_bytes += size
        self.delivered_packets += 1
        self.delivered_bytes += size

    def drop_counts(self) -> dict[str, int]:
        """Drops by reason label, every reason present (zeros included)."""
        return {r.label: self.drops[r] for r in DropReason}
