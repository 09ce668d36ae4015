"""Paths: the ways we can reach one peer, with liveness, RTT and counters.

A *path* is a (local port, remote UDP endpoint) pair plus the path index (``pi``, 0-15) we
stamp on packets sent over it. Three kinds:

* STATIC: the peer's address from the secrets file, once per local port. ``pi`` = port index.
* LEARNED: an address learned from an authentic, fresh packet of the peer, filed under the
  path index the *sender* stamped and the local port it arrived on. We answer on the same
  index, so both ends account the path alike. At most 16 indexes x 4 ports per peer.
* VIA: "to this peer through forwarder i" (upstream only). Its next hop is the forwarder's
  best path; ``pi`` = (i+1) << 2 | local port index, as the original's ``pi_a``.

Path index layout (4 bits): ``fslot << 2 | port`` where fslot 0 means "direct" and 1-3 the
origin's forwarder. Liveness: a path is up while it has delivered an authentic packet or a
probe reply within ``path_timeout`` seconds. A path whose probes have gone unanswered for
``path_timeout`` seconds is not *answering*: it may still be up (the peer's datagrams arrive on
it), but it is the last choice to send on, so a path that fails in our direction only is left
(:func:`send_order`). Owned by the Engine; not thread-safe.
"""

from __future__ import annotations

import math
from array import array
from enum import Enum

from alpaca.core.constants import MAX_LOCAL_PORTS, PATH_SLOTS
from alpaca.core.ids import format_peer_id
from alpaca.core.ippkt import ip_to_int
from alpaca.core.settings import Addr

NEVER = -math.inf

#: Direct path indexes (0-3: the sender's port) and the forwarders' (4-15).
DIRECT_SLOTS = 4


def rx_slot(pi: int, port: int) -> int:
    """Where DATA received with path index ``pi`` on local port ``port`` is counted.

    A direct index names only the sender's port: the sender's static path from its port i
    and its answer on the slot i it learned from us carry the same index, to different local
    ports of ours, so a direct index is counted per local port (port 0 at the index itself,
    the others after the 16 indexes: a node of one port keeps 16 counts a peer). A
    forwarder's index reaches us through forwarders, on whichever port they use, so it is
    counted alone."""
    if pi >= DIRECT_SLOTS or port == 0:
        return pi
    return PATH_SLOTS + (port - 1) * DIRECT_SLOTS + pi


def rx_slots(ports: int) -> int:
    """How many receive counts :func:`rx_slot` uses on a node of ``ports`` local ports."""
    return PATH_SLOTS + (min(max(ports, 1), MAX_LOCAL_PORTS) - 1) * DIRECT_SLOTS

#: RTT samples a path keeps between two scrapes (32 floats, about 1 KiB a path: a server with
#: 10,000 clients nobody scrapes keeps about 10-20 MiB of them, not 80).
RTT_SAMPLES_MAX = 32


class Generation:
    """A counter shared by every path table of one engine, bumped on any change that can
    alter where packets go (a path learned, moved, forgotten, up or down). The engine caches
    each peer's send targets under the generation they were computed in."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def bump(self) -> None:
        self.value += 1


class PathKind(Enum):
    STATIC = "static"
    LEARNED = "learned"
    VIA = "via"


class Path:
    """One path and its counters (plain ints and floats, read by the metrics collector).

    Times (``*_at``) are monotonic seconds; RTTs are seconds.
    """

    __slots__ = (
        "addr", "answering", "challenged_at", "changes", "confirmed", "data_lost", "data_sent", "ip",
        "kind", "last_ok_at", "name", "peer",
        "peer_data_rx", "pi", "port", "probe_data_mark", "probes_answered", "probes_sent",
        "reason", "rtt_last", "rtt_samples", "rx_bytes", "rx_duplicates", "rx_first",
        "rx_packets", "silent_probes", "srtt", "tx_bytes", "tx_packets", "unanswered_since", "up",
        "via",
    )

    def __init__(
        self, peer: int, kind: PathKind, pi: int, port: int, addr: Addr | None, name: str,
        via: int | None = None,
    ) -> None:
        self.peer, self.kind, self.pi, self.port, self.addr = peer, kind, pi, port, addr
        self.ip = ip_to_int(addr[0]) if addr is not None else 0
        self.name, self.via = name, via
        self.up = False
        #: False for a learned path until a probe sent to its address is answered: until then
        #: it is never up, so a spoofed source address gets probes at most, never traffic
        self.confirmed = kind is not PathKind.LEARNED
        #: when a probe was last sent to confirm it (monotonic seconds)
        self.challenged_at = NEVER
        self.reason = "new"
        self.changes = 0
        self.last_ok_at = NEVER
        #: when the oldest probe sent since the last answer left (inf: none waiting)
        self.unanswered_since = math.inf
        self.answering = True
        self.srtt: float | None = None
        self.rtt_last: float | None = None
        self.rtt_samples = array("d")  # 8 bytes a sample (a list of floats: 32)
        self.probes_sent = self.probes_answered = 0
        #: probes sent to this address (not carried from a path it replaces) while it has
        #: never answered nor been up; -1 once it has (the prober's dormancy)
        self.silent_probes = 0
        self.tx_packets = self.tx_bytes = self.rx_packets = self.rx_bytes = 0
        self.rx_first = self.rx_duplicates = 0
        self.data_sent = 0
        self.peer_data_rx = 0
        self.data_lost = 0
        #: (data_sent, peer_data_rx) at the last report, and the shortfall of DATA it left
        #: not yet counted lost (a surplus: negative)
        self.probe_data_mark = (0, 0, 0)

    def __repr__(self) -> str:
        return f"Path({format_peer_id(self.peer)} {self.name} {self.addr} up={self.up})"

    def on_rtt(self, sample: float) -> None:
        """Fold one RTT sample into srtt (RFC 6298's weight, 1/8)."""
        self.rtt_last = sample
        if self.srtt is None:
            self.srtt = sample
        else:
            self.srtt = 0.875 * self.srtt + 0.125 * sample
        if len(self.rtt_samples) < RTT_SAMPLES_MAX:  # drained by the metrics histogram
            self.rtt_samples.append(sample)

    def on_data_report(self, peer_rx: int, sent: int, sent_after: int) -> None:
        """A probe reply says the peer had received ``peer_rx`` of our DATA on this path index
        when the probe reached it; ``sent`` is our ``data_sent`` when that probe left, and
        ``sent_after`` how much more we sent before its reply came back.

        Both counts stop at the probe, which travels behind the data it follows, so data in
        flight is in neither (measured against ``data_sent`` at the reply, it was counted
        lost: 2-3 % on a lossless path). A link that reorders moves data across the probe
        both ways: data put behind it is missing at this report and arrives before the next
        one; data sent after it but overtaking it is received before it is counted sent. So
        the shortfall (sent minus received, not yet counted lost) is carried from report to
        report, and as much of it as lasts from one report to the next is counted lost. A
        surplus is carried too, at most ``sent_after`` (what can have overtaken the probe;
        duplicates cannot hide more loss than that). Counts cannot tell which packets are
        missing, so a link that reorders still shows a little loss: 0-2 of 5,000 with 10 ms
        of jitter, where counting each report's shortfall at once gave 8-14. Real loss is counted one report
        late, and the shortfall of the last report is left uncounted when the path goes.
        """
        sent_before, rx_before, short_before = self.probe_data_mark
        if sent < sent_before or (sent == sent_before and peer_rx < rx_before):
            return  # the reply to an older probe (or one that left with it), overtaken
        self.peer_data_rx = peer_rx
        if peer_rx < rx_before:  # the peer restarted: its count starts over
            self.probe_data_mark = (sent, peer_rx, 0)
            return
        short = short_before + (sent - sent_before) - (peer_rx - rx_before)
        lost = max(0, min(short_before, short))
        self.data_lost += lost
        self.probe_data_mark = (sent, peer_rx, max(short - lost, -sent_after))

    def on_probe_sent(self, now: float) -> None:
        if self.silent_probes >= 0:
            self.silent_probes += 1
        if self.unanswered_since == math.inf:
            self.unanswered_since = now

    def on_probe_answered(self) -> None:
        self.unanswered_since = math.inf
        self.silent_probes = -1

    def check_answers(self, now: float, timeout: float, since: float = -math.inf) -> bool:
        """Update ``answering`` (no probe unanswered for ``timeout`` seconds, counted from
        ``since`` at the earliest while answering: see :meth:`evaluate`); True if it changed."""
        answering = _silence(now, self.unanswered_since, since, self.answering) < timeout
        if answering == self.answering:
            return False
        self.answering = answering
        if self.up:
            self.reason = "answering" if answering else "unanswered"
        return True

    def evaluate(self, now: float, timeout: float, since: float = -math.inf) -> bool:
        """Update ``up`` from ``last_ok_at`` (and ``confirmed``); True if the state changed.
        ``since``: a path that is up counts its silence from then at the earliest (a reload
        shortened the timeout: the silence before it was within the old one)."""
        up = self.confirmed and _silence(now, self.last_ok_at, since, self.up) < timeout
        if up == self.up:
            return False
        self.up = up
        if up:
            self.silent_probes = -1
        self.reason = ("answering" if self.answering else "unanswered") if up else "timeout"
        self.changes += 1
        return True


def _silence(now: float, last: float, since: float, holding: bool) -> float:
    """Seconds of silence at ``now`` since ``last``; for a state still ``holding`` (up,
    answering), since ``since`` at the earliest (a reload shortened the timeout then)."""
    return now - (max(last, since) if holding else last)


def send_order(path: Path) -> tuple[bool, float]:
    """Sort key of the links to one peer, best first: answering ones, then by smoothed RTT
    (unmeasured last)."""
    return (not path.answering, path.srtt if path.srtt is not None else math.inf)


def port_label(ports: tuple[str, ...], port: int) -> str:
    return ports[port] if port < len(ports) else str(port)


class PeerPaths:
    """All paths to one peer, plus the DATA receive counts probes report (:func:`rx_slot`)."""

    __slots__ = ("by_endpoint", "candidates", "generation", "learned", "peer", "ports", "rx_data",
                 "static", "via", "via_retired")

    def __init__(
        self, peer: int, ports: tuple[str, ...], static_addr: Addr | None, generation: Generation,
    ) -> None:
        self.peer = peer
        self.ports = ports
        self.generation = generation
        self.static: list[Path] = []
        #: (local port, remote address) -> static or learned path: the receive-side lookup.
        self.by_endpoint: dict[tuple[int, Addr], Path] = {}
        if static_addr is not None:
            for port, label in enumerate(ports):
                path = Path(peer, PathKind.STATIC, port, port, static_addr, f"direct/{label}")
                self.static.append(path)
                self.by_endpoint[(port, static_addr)] = path
        self.learned: dict[tuple[int, int], Path] = {}
        #: (pi, port) -> a new address heard under a confirmed learned path's slot, waiting
        #: for a probe's answer before the path moves there (never used for sending)
        self.candidates: dict[tuple[int, int], Path] = {}
        self.via: dict[int, Path] = {}
        #: forwarder id -> its VIA path while a reload left it out of forwarders (added back,
        #: it goes on with its counters: exported counters never go backwards)
        #: (None while there is none: 10,000 peers would hold 0.6 MB of empty dicts)
        self.via_retired: dict[int, Path] | None = None
        #: DATA received from the peer, per rx_slot(path index, local port)
        self.rx_data = [0] * rx_slots(len(ports))

    def all(self) -> list[Path]:
        """Every path, VIA paths included."""
        return [*self.static, *self.learned.values(), *self.via.values()]

    def links(self) -> list[Path]:
        """Static and learned paths: the ones with an address of their own."""
        return [*self.static, *self.learned.values()]

    def take_over(self, old: PeerPaths) -> None:
        """Carry what does not depend on the static address from the paths of a peer being
        rebuilt (its static address changed): its learned paths (except those at an endpoint
        that is now a static path's: one path per endpoint), its VIA paths, the per-slot data
        counts, and each static path's counters into the new one of the same name, so the
        exported counters never go backwards."""
        for key, path in old.learned.items():
            assert path.addr is not None
            endpoint = (path.port, path.addr)
            if endpoint not in self.by_endpoint:
                self.learned[key] = path
                self.by_endpoint[endpoint] = path
        self.via = dict(old.via)
        self.via_retired = old.via_retired
        self.rx_data = list(old.rx_data)
        self.carry_static(old)

    def carry_static(self, old: PeerPaths) -> None:
        """Carry each static path's counters of ``old`` into the new one of the same name."""
        before = {path.name: path for path in old.static}
        for path in self.static:
            if path.name in before:
                _carry(path, before[path.name])

    def match(self, port: int, addr: Addr) -> Path | None:
        """The static or learned path with exactly this local port and remote address."""
        return self.by_endpoint.get((port, addr))

    def learn(self, pi: int, port: int, addr: Addr, now: float) -> Path:
        """File ``addr`` under (pi, port); an existing exact match is reused.

        Called only for authentic, fresh packets. Static paths are never overwritten. A new
        path, or an unconfirmed one moved to ``addr``, is unconfirmed (see
        :attr:`Path.confirmed`). A confirmed path does not move: ``addr`` becomes the slot's
        candidate, which :meth:`confirm` moves it to once a probe sent there is answered, so
        a spoofed source address can take no traffic from where the peer answers.
        """
        path = self.by_endpoint.get((port, addr))
        if path is None:
            key = (pi, port)
            path = self.learned.get(key)
            if path is None:
                path = Path(self.peer, PathKind.LEARNED, pi, port, addr,
                            f"slot{pi}/{port_label(self.ports, port)}")
                self.learned[key] = path
                self.generation.bump()
            elif path.confirmed:
                path = self._candidate(key, addr)  # never sent on: no new send plans
            else:
                self._move(path, addr)
                self.generation.bump()
            self.by_endpoint[(port, addr)] = path
        path.last_ok_at = now
        return path

    def _candidate(self, key: tuple[int, int], addr: Addr) -> Path:
        """The slot's candidate at ``addr`` (a newer address replaces an older candidate). It
        inherits the slot's last challenge time, so that however the addresses alternate (a
        forwarder sending from two ports) the slot is probed at most once per challenge
        interval."""
        learned = self.learned[key]
        made = Path(self.peer, PathKind.LEARNED, key[0], key[1], addr, learned.name)
        made.challenged_at = learned.challenged_at
        old = self.candidates.get(key)
        if old is not None:
            self._drop_candidate(key)
            made.challenged_at = max(made.challenged_at, old.challenged_at)
        self.candidates[key] = made
        return made

    def _drop_candidate(self, key: tuple[int, int]) -> None:
        """Forget the slot's candidate; what it sent and received counts on the slot's path."""
        cand = self.candidates.pop(key)
        self._unmap(cand)
        learned = self.learned.get(key)
        if learned is not None:
            _absorb(learned, cand)

    def _move(self, path: Path, addr: Addr) -> None:
        """Refile the unconfirmed ``path`` at ``addr`` (its challenge time is kept: a source
        that keeps changing is still probed at most once per challenge interval)."""
        self._unmap(path)
        path.addr, path.ip = addr, ip_to_int(addr[0])

    def roaming(self, cand: Path, now: float) -> Path | None:
        """The slot's path if ``cand`` looks like the peer's new address: that path has heard
        nothing for two of its round trips (a NAT rebinding, a new uplink), else None."""
        slot = self.learned.get((cand.pi, cand.port))
        if slot is None or slot is cand or slot.srtt is None or now - slot.last_ok_at <= 2 * slot.srtt:
            return None
        return slot

    def settled(self) -> bool:
        """True when time alone changes nothing here: no path up (it would go down), none
        waiting for a probe's answer while still counted answering, no learned path or
        candidate (they expire). Only a datagram, a probe or a reply unsettles it, or a
        reload (a longer path_timeout brings a recent path back up)."""
        if self.learned or self.candidates:
            return False
        return not any(p.up or (p.answering and p.unanswered_since != math.inf)
                       for p in (*self.static, *self.via.values()))

    def unconfirmed(self) -> list[Path]:
        """Learned paths and candidates that still wait for a probe's answer."""
        return [*(p for p in self.learned.values() if not p.confirmed), *self.candidates.values()]

    def counting(self, path: Path) -> Path:
        """The path whose DATA count a probe on ``path`` reports: a candidate's slot (the
        slot moves to the candidate's address when it is confirmed), else ``path`` itself."""
        key = (path.pi, path.port)
        if self.candidates.get(key) is path:
            return self.learned.get(key) or path
        return path

    def confirm(self, path: Path) -> Path | None:
        """A probe sent to ``path``'s address was answered from the peer: ``path`` is
        confirmed. A slot's candidate moves the slot's path to its address (confirmed, with
        the candidate's counters) and that path is returned; a learned path or candidate no
        longer filed (replaced, expired), or a one-off path, gives None: nothing to update.
        """
        key = (path.pi, path.port)
        cand = self.candidates.get(key)
        if path.kind is PathKind.LEARNED and self.learned.get(key) is not path and cand is not path:
            return None
        path.confirmed = True
        if cand is not path:
            return path
        del self.candidates[key]
        learned = self.learned.get(key)
        if learned is None:  # expired meanwhile: the candidate takes the slot
            self.learned[key] = path
            self.generation.bump()
            return path
        assert path.addr is not None
        self._unmap(path)
        self._unmap(learned)
        learned.addr, learned.ip = path.addr, path.ip
        learned.confirmed = True
        _absorb(learned, path)
        learned.last_ok_at = max(learned.last_ok_at, path.last_ok_at)
        learned.challenged_at = max(learned.challenged_at, path.challenged_at)
        self.by_endpoint[(learned.port, path.addr)] = learned
        self.generation.bump()
        return learned

    def _unmap(self, path: Path) -> None:
        """Drop ``path``'s receive-side entry, if the entry is ``path``'s (not a static path's)."""
        assert path.addr is not None
        endpoint = (path.port, path.addr)
        if self.by_endpoint.get(endpoint) is path:
            del self.by_endpoint[endpoint]

    def live_links(self) -> list[Path]:
        """Static and learned paths that are up."""
        return [p for p in self.links() if p.up]

    def best_link(self) -> Path | None:
        """The first up link in :func:`send_order`; else the first link of any state."""
        live = self.live_links()
        if live:
            return min(live, key=send_order)
        links = self.links()
        return links[0] if links else None

    def expire(self, now: float, lifetime: float) -> list[Path]:
        """Forget learned paths (and candidates) silent for ``lifetime`` seconds; return the
        paths removed."""
        for key in [k for k, c in self.candidates.items() if now - c.last_ok_at >= lifetime]:
            self._drop_candidate(key)
        gone = [self.learned.pop(k) for k, p in list(self.learned.items()) if now - p.last_ok_at >= lifetime]
        for path in gone:
            self._unmap(path)
        if gone:
            self.generation.bump()
        return gone


#: The counters of a path (exported as metrics): they only grow, whatever happens to the path.
COUNTERS = ("tx_packets", "tx_bytes", "rx_packets", "rx_bytes", "rx_first", "rx_duplicates",
            "probes_sent", "probes_answered", "data_sent", "data_lost", "changes")


def _carry(path: Path, old: Path) -> None:
    """Add ``old``'s counters to ``path`` (which takes its place) and take its data-report
    marks, so that the peer's next report is measured from where ``old`` left off."""
    _absorb(path, old)
    path.peer_data_rx, path.probe_data_mark = old.peer_data_rx, old.probe_data_mark


def _absorb(path: Path, cand: Path) -> None:
    """Add every counter of ``cand`` (a candidate, or a path being replaced) to ``path``
    (counters only grow; the answers to a candidate's probes count with the probes)."""
    for name in COUNTERS:
        setattr(path, name, getattr(path, name) + getattr(cand, name))
