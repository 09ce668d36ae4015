"""The undo journal: what to do to put the host back, written BEFORE each change.

The journal is a small JSON file beside the control socket (``/run/alpaca-tunnel/<tun>.sock.journal``)::

    {"version": 1, "netns": null, "netns_id": "cookie:3",
     "steps": [{"kind": "sysctl", "key": "...", "value": "0"}, ...]}

Invariants:
    * Write-ahead: :meth:`Journal.record` rewrites the file atomically (temp file, fsync,
      rename) before the caller makes the change it undoes. A crash at any point leaves a
      journal that describes a superset of what was changed.
    * Every undo step is idempotent (deleting something absent, restoring something present
      count as done), so replaying a journal twice, or replaying a step whose change never
      happened, is harmless.
    * Steps run in reverse order; a failing step is logged and the others still run. A step
      that failed on the host's state (a device gone) stays in the file; the next start
      retries it and, if it fails again, carries it into its own journal (:func:`resume`).
    * The first ``sysctl`` step for a key wins: it holds the ORIGINAL value.
    * Host routes a reload deleted leave their ``routes`` step once they are gone
      (:meth:`Journal.forget_routes`): the file holds what may still be there, not every
      address a peer ever had.
    * Turning ip_forward back off resets accept_redirects and devices' forwarding; the undo
      puts those back as they were before the start when its write changed ip_forward, or
      when the file says an earlier run's undo began that write (a crash in between). When
      ip_forward was already back off (turned off by hand while we ran), they stay as set.
    * A default route saved again moves its step to the end (its undo runs first); one saved
      for a way out (device, gateway) an earlier step holds, of the same proto at another
      metric, leaves that step: only the latest comes back.
    * A journal is undone only in the network namespace it was written in (``netns_id``, see
      :mod:`alpaca.system.nsid`). Another namespace's journal at our own path is moved aside
      for a person (``<name>.other-netns-<time>``); one beside it is left alone.
    * Daemons sharing a namespace and a journal directory share what they both changed: a step
      another running daemon's journal also holds (ip_forward, a chnroute table, a host route)
      is left in place for it, a chnroute's removal spares the routes it keeps in that table
      (its host routes, its moved default), and a sysctl step takes over its original value,
      so the last one to stop restores the host's. ip_forward stays on, though, when a routed bridge
      (Docker's, libvirt's) appeared meanwhile: its containers need it. Undo, recovery and
      those sysctl records run one at a time per directory (:func:`_directory_lock`), so two
      daemons stopping at once cannot each leave a shared step to the other.
    * A step that keeps failing is given up after :data:`MAX_TRIES` runs spread over at least
      :data:`GIVE_UP_AFTER` seconds (logged), so a change that can never be undone (a saved
      route whose uplink is gone for good) does not make every later stop fail, while a crash
      loop does not use the tries up in a minute.

At start-up the daemon calls :func:`recover` (undo a journal left by a crashed run, and
:func:`recover_orphans`: those of runs with another control socket), and on a clean exit
:meth:`Journal.undo_all`. Journals live beside their daemon's instance lock
(:func:`lock_of`); a journal whose lock is held belongs to a running daemon and is never
undone by another. Callers: the control greenlet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from alpaca.errors import AlpacaError, SystemSetupError
from alpaca.system import chnroute, instance, link, netlink, nft, nsid, routes, sysctl

log = logging.getLogger(__name__)

VERSION = 1
#: Runs (stop, then each start's recovery) a failing undo step is tried before it is given up...
MAX_TRIES = 3
#: ...and the seconds that must have passed since it first failed (wall clock).
GIVE_UP_AFTER = 3600.0
SUFFIX = ".journal"
#: Set in the file on ip_forward's step just before the undo turns it back off (see _mark_begun).
UNDO_BEGUN = "undo_begun"
Step = dict[str, Any]


def lock_of(path: Path) -> Path:
    """The instance lock of the daemon that writes the journal at ``path``
    (``<sock>.journal`` -> ``<sock>.lock``, see :func:`alpaca.system.instance.lock_path`)."""
    return path.with_name(path.name.removesuffix(SUFFIX) + ".lock")


#: directory -> (descriptor, depth) of the directory locks this process holds
_held_dirs: dict[Path, tuple[int, int]] = {}


@contextlib.contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """Hold the exclusive lock of a journal directory (flock on the directory itself, waited
    for; re-entrant within the process). Nothing is locked if the directory does not exist."""
    held = _held_dirs.get(directory)
    if held is not None:
        _held_dirs[directory] = (held[0], held[1] + 1)
    else:
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held_dirs[directory] = (fd, 1)
    try:
        yield
    finally:
        fd, depth = _held_dirs[directory]
        if depth > 1:
            _held_dirs[directory] = (fd, depth - 1)
        else:
            del _held_dirs[directory]
            os.close(fd)


def _undo_sysctl(step: Step, netns: str | None) -> None:
    key = step["key"]
    if key == sysctl.IP_FORWARD and _forwarding_still_needed(step, netns):
        return
    turns_off = _turns_forwarding_off(step)
    changed = turns_off and sysctl.read(key, netns) != str(step["value"])
    sysctl.write(key, step["value"], netns)
    if changed or (turns_off and step.get(UNDO_BEGUN)):
        # Only a write that changed ip_forward reset these; UNDO_BEGUN: a crash came between
        # an earlier run's write and their own. Put back by hand meanwhile, they stay as set.
        _restore_side_settings(step, netns)


def _turns_forwarding_off(step: Step) -> bool:
    """Whether ``step`` puts ip_forward back to off (its value before the start was not 1)."""
    return step.get("key") == sysctl.IP_FORWARD and str(step.get("value")) != "1"


def _restore_side_settings(step: Step, netns: str | None) -> None:
    """Put back what turning ip_forward back reset besides itself, as it was before the
    tunnel started (accept_redirects, the forwarding of devices set on their own), for the
    devices still there. Best effort: ip_forward itself is back, a failure is a warning."""
    before = step.get("side_settings")
    if not isinstance(before, dict):
        return  # a journal of an earlier version
    now = sysctl.forward_side_settings(netns)
    for key, value in before.items():
        if key in now and now[key] != str(value):
            try:
                sysctl.write_path(key, str(value), netns)
            except (SystemSetupError, ValueError) as exc:
                log.warning("could not put %s back to %s after ip_forward: %s", key, value, exc)


def _forwarding_still_needed(step: Step, netns: str | None) -> bool:
    """True (and logged) if ip_forward should stay on although it was off before: a routed
    bridge (an IPv4 address on a bridge: Docker's docker0, libvirt's virbr0, LXC, Podman)
    appeared while we ran, and the containers or VMs behind it need forwarding now."""
    before = step.get("routed_bridges")
    if not isinstance(before, list) or str(step["value"]) == "1":
        return False  # a journal of an earlier version, or nothing to turn off
    if sysctl.read(sysctl.IP_FORWARD, netns) != "1":
        return False
    new = [name for name in link.routed_bridges(netns) if name not in before]
    if not new:
        return False
    log.warning("%s left at 1 (it was %s before the tunnel started): %s appeared meanwhile and "
                "what is behind it needs forwarding; `sysctl -w %s=%s` turns it off",
                sysctl.IP_FORWARD, step["value"], ", ".join(new), sysctl.IP_FORWARD, step["value"])
    return True


def _undo_routes(step: Step, netns: str | None) -> None:
    routes.remove_host_routes(step["dsts"], step["table"], netns)


def _undo_default_route(step: Step, netns: str | None) -> None:
    saved = [routes.SavedRoute.from_json(item) for item in step["saved"]]
    routes.restore_default_route(saved, step["table"], netns)


def _undo_chnroute(step: Step, netns: str | None) -> None:
    chnroute.remove(step["table"], netns, keep=step.get("keep", ()))


def _undo_nft_table(step: Step, netns: str | None) -> None:
    nft.remove_table(step["tun"], netns)


def _undo_iptables(step: Step, netns: str | None) -> None:
    nft.remove_forward_accepts(step["tun"], netns)


UNDO: dict[str, Callable[[Step, str | None], None]] = {
    "sysctl": _undo_sysctl,
    "routes": _undo_routes,
    "default_route": _undo_default_route,
    "chnroute": _undo_chnroute,
    "nft_table": _undo_nft_table,
    "iptables": _undo_iptables,
}


class Journal:
    """An undo journal bound to a file. No I/O until :meth:`record`.

    Args:
        path: the state file; its directory is created (mode 0700) on first write.
        netns: the namespace the changes are made in (None: the process's own), stored in the
            file so that recovery undoes them in the same place.
    """

    def __init__(self, path: str | Path, netns: str | None = None) -> None:
        self.path = Path(path)
        self.netns = netns
        #: the namespace's identity (:mod:`alpaca.system.nsid`), taken at the first write
        self.netns_id: str | None = None
        self.steps: list[Step] = []
        #: True once this object wrote or read the file: only then may undo_all() delete it
        #: (a run that failed before its first change leaves another's file alone)
        self.owns_file = False

    def record(self, kind: str, **params: Any) -> None:
        """Add an undo step and persist the journal (call BEFORE making the change).

        A callable parameter is called under the directory's lock: a sysctl's value is read
        there, so a daemon stopping meanwhile has either put its original back or not begun.

        Raises:
            SystemSetupError: the file could not be written (then make no change).
        """
        if kind not in UNDO:
            raise ValueError(f"unknown undo step {kind!r}")
        step: Step = {"kind": kind, **params}
        same = [s for s in self.steps if _bare(s) == step]  # also one kept from a failed undo
        if same and kind != "default_route":
            return
        if kind == "sysctl" and any(s["kind"] == "sysctl" and s["key"] == params["key"] for s in self.steps):
            return
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with _directory_lock(self.path.parent):
                original = self._original_sysctl(params["key"]) if kind == "sysctl" else {}
                if original:  # a running daemon changed it first: its record is the original
                    step = {"kind": kind, "key": params["key"], **original}
                else:
                    step = {"kind": kind, **{name: value() if callable(value) else value
                                             for name, value in params.items()}}
                # a default saved again (a roam back to an earlier network) moves to the end:
                # its undo comes first, then those of the networks between
                kept = [s for s in self.steps if not any(s is t for t in same)]
                if kind == "default_route":
                    kept = _without_ways_of(kept, params["saved"])
                steps = [*kept, step]
                self._write(steps)  # in memory only once on disk: a failed write is retried
                self.steps = steps
        except OSError as exc:
            raise SystemSetupError(
                f"writing the undo journal {self.path}: {exc.strerror or exc}", None,
                "it is kept beside control_socket: check that its directory is writable and not full",
            ) from exc

    def forget_routes(self, dsts: list[str], table: int) -> None:
        """Drop ``dsts`` from the routes steps of ``table`` (a step left empty goes): routes
        this run deleted itself, so that the file does not grow by every address a peer ever
        had (a peer followed by its hostname). Best effort: on a failed write they stay, and
        their undo deletes nothing."""
        gone = set(dsts)
        steps: list[Step] = []
        changed = False
        for step in self.steps:
            held = step.get("dsts") if step.get("kind") == "routes" and step.get("table") == table else None
            if not isinstance(held, list) or gone.isdisjoint(held):
                steps.append(step)
                continue
            changed = True
            if left := [dst for dst in held if dst not in gone]:
                steps.append({**step, "dsts": left})
        if not changed:
            return
        try:
            with _directory_lock(self.path.parent):
                self._write(steps)
        except OSError as exc:
            log.warning("could not drop deleted routes from the journal journal=%s error=%s",
                        self.path, exc)
            return
        self.steps = steps

    def _original_sysctl(self, key: str) -> Step:
        """What a running daemon of this namespace recorded for ``key`` before it changed it
        (its ``value`` and ``routed_bridges``), or nothing: then the caller's is the original."""
        for peer in self._live_peers():
            for step in peer.steps:
                if step.get("kind") == "sysctl" and step.get("key") == key and "value" in step:
                    return {name: step[name] for name in ("value", "routed_bridges", "side_settings")
                            if name in step}
        return {}

    def _write(self, steps: list[Step]) -> None:
        """Replace the file with one holding ``steps`` (fsync'ed, then renamed over it).

        Raises:
            OSError: the old file is left as it was.
        """
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.netns_id is None:
            self.netns_id = nsid.of(self.netns)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"version": VERSION, "netns": self.netns, "netns_id": self.netns_id,
                           "steps": steps}, indent=1).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(data)
            while view:  # a write cut short (a file system nearly full) goes on, or raises
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        self.owns_file = True
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: str | Path) -> Journal:
        """Read a journal file (ValueError if it is not one of ours or is damaged; a step of an
        unknown shape is kept and reported by :meth:`undo_all`)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except RecursionError as exc:
            raise ValueError(f"{path}: nested too deeply for a journal") from exc
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"{path}: not an alpaca-tunnel journal (version {VERSION})")
        steps, netns, netns_id = data.get("steps"), data.get("netns"), data.get("netns_id")
        if not isinstance(steps, list) or not isinstance(netns, str | None) \
                or not isinstance(netns_id, str | None):
            raise ValueError(f"{path}: a damaged alpaca-tunnel journal (steps, netns or netns_id)")
        journal = cls(path, netns)
        journal.netns_id = netns_id
        journal.owns_file = True
        journal.steps = [s if isinstance(s, dict) else {"kind": repr(s)[:40]} for s in steps]
        return journal

    def is_here(self) -> bool:
        """True if it was written in the namespace it names now (or carries no identity:
        written before identities)."""
        return self.netns_id is None or nsid.of(self.netns) == self.netns_id

    def _live_peers(self) -> list[Journal]:
        """The journals of the other running daemons of this namespace in this directory."""
        here = self.netns_id or nsid.of(self.netns)
        peers: list[Journal] = []
        if here is None:
            return peers
        for other in sorted(self.path.parent.glob(f"*{SUFFIX}")):
            if other == self.path or not instance.is_held(lock_of(other)):
                continue
            try:
                peer = Journal.load(other)
            except (OSError, ValueError):
                continue
            if peer.netns_id == here:
                peers.append(peer)
        return peers

    def undo_all(self) -> list[str]:
        """Run every undo step, newest first; then delete the file, or, if some steps failed on
        the host's state (not malformed ones), keep just those in it for the next start to
        retry (:func:`recover`). Holds the directory's lock throughout.

        Returns:
            One line per failed step (each is also logged); empty when all went well.
        """
        with _directory_lock(self.path.parent):
            return self._undo_all()

    def _undo_all(self) -> list[str]:
        failures: list[str] = []
        kept: list[Step] = []
        peers = self._live_peers()
        undone = bool(self.steps)
        for step in reversed(self.steps):
            kind = str(step.get("kind", "?"))
            try:
                mine = _not_shared(step, peers)
                if mine is not None:
                    self._mark_begun(step)
                    UNDO[kind](mine, self.netns)
            except (AlpacaError, OSError) as exc:  # the host's state: may work later
                failures.append(f"undo {kind}: {exc}")
                self._keep_step(step, kept, exc)
            except (KeyError, ValueError, TypeError, AttributeError, struct.error) as exc:  # malformed
                failures.append(f"undo {kind}: a malformed step ({type(exc).__name__}: {exc})")
                log.error("undo step failed step=%s journal=%s error=malformed %s", kind, self.path, exc)
        self.steps = kept
        if kept:  # rewritten with just those; else the old file stays: every step is retried
            if self._keep():
                log.warning("undo steps kept for the next start journal=%s steps=%d", self.path, len(kept))
        elif self.owns_file:
            self.path.unlink(missing_ok=True)
            self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
        if failures or kept or undone:
            log.info("host changes undone journal=%s failed=%d", self.path, len(failures))
        return failures

    def _mark_begun(self, step: Step) -> None:
        """Before ip_forward is turned back off, note in the file that its undo began (the
        step in memory, which the undo reads, is left as it was): a retry after a crash
        between that write and the restore of what it reset knows to restore those. Best
        effort: without the note a retry leaves them as they are."""
        if not _turns_forwarding_off(step) or step.get(UNDO_BEGUN):
            return
        try:
            self._write([{**s, UNDO_BEGUN: True} if s is step else s for s in self.steps])
        except OSError as exc:
            log.warning("could not note the undo of ip_forward journal=%s error=%s", self.path, exc)

    def _keep_step(self, step: Step, kept: list[Step], exc: Exception) -> None:
        """Keep a failed step for the next run, unless it has failed :data:`MAX_TRIES` times."""
        tries = step.get("tries", 0) + 1 if isinstance(step.get("tries"), int) else 1
        now = time.time()
        first = step.get("failed_since")
        first = first if isinstance(first, float | int) and first <= now else now
        if tries >= MAX_TRIES and now - first >= GIVE_UP_AFTER:
            log.error("undo step given up after %d tries in %.0f s step=%s journal=%s error=%s: "
                      "undo it by hand if it still matters", tries, now - first, step.get("kind"),
                      self.path, exc)
            return
        log.error("undo step failed step=%s journal=%s error=%s", step.get("kind"), self.path, exc)
        kept.insert(0, {**step, "tries": tries, "failed_since": first})

    def _keep(self) -> bool:
        """Rewrite the file with the remaining steps; False if that is not possible (the old
        file, with every step, stays)."""
        try:
            self._write(self.steps)
        except OSError as exc:
            log.error("could not keep the failed undo steps journal=%s error=%s", self.path, exc)
            return False
        return True


def recover(path: str | Path) -> list[str] | None:
    """Undo a journal left by a crashed run, then remove it (a step that fails again stays in
    it: the daemon takes such a journal over, see :func:`resume`). A journal that cannot be
    read, or that was written in another network namespace, is moved aside
    (``<path>.unreadable-<time>``, ``<path>.other-netns-<time>``) for a person to act on.

    Returns:
        None if there was no journal, else the failures (empty list: fully recovered).
    Raises:
        SystemSetupError: such a journal cannot be moved aside.
    """
    path = Path(path)
    if not path.exists():
        return None
    with _directory_lock(path.parent):
        try:
            journal = Journal.load(path)
        except (OSError, ValueError) as exc:
            return [_set_aside(path, "unreadable", exc)]
        if not journal.is_here():
            return [_set_aside(path, "other-netns", f"written in another network namespace "
                                                    f"({journal.netns_id}), not undone here")]
        log.warning("recovering from a previous run journal=%s steps=%d", path, len(journal.steps))
        return journal.undo_all()


def _way_of(item: Any) -> tuple[str, str | None, int, int] | None:
    """The way out (device, gateway) a saved default route names, who put it there (its
    proto) and its metric; None for one that names several ways, or an entry that cannot be
    read."""
    try:
        payload = bytes.fromhex(item["payload_hex"])
        up = routes.uplink_of(routes.SavedRoute.from_json(item))
        proto = netlink.route_fields(payload)[2]
    except (ValueError, KeyError, TypeError, AttributeError, struct.error):
        return None
    return None if up is None else (up.dev, up.gateway, proto, up.metric)


def _gave_way(old: tuple[str, str | None, int, int], new: tuple[str, str | None, int, int]) -> bool:
    """Whether the saved default ``old`` gave way to ``new``, saved later: on the same device
    at the same metric (without the tunnel the kernel holds one default of a metric, short of
    ``ip route append``: it was replaced, as a DHCP client does for a new router), or through
    the same gateway by the same program at another metric (a metric flap)."""
    dev, gateway, proto, metric = old
    return dev == new[0] and (metric == new[3] or (gateway, proto) == new[1:3])


def _without_ways_of(steps: list[Step], saved: list[Any]) -> list[Step]:
    """``steps`` less the saved default routes of earlier ``default_route`` steps that gave
    way to one ``saved`` names (:func:`_gave_way`): only the latest must come back on exit,
    not both. One of another program at another metric (a DHCP client's beside a static
    route) stays. The earlier steps stay (their undo also deletes our default)."""
    news = [way for way in map(_way_of, saved) if way is not None]
    if not news:
        return steps

    def stays(item: Any) -> bool:
        old = _way_of(item)
        return old is None or not any(_gave_way(old, new) for new in news)

    return [
        {**s, "saved": [i for i in s["saved"] if stays(i)]}
        if s.get("kind") == "default_route" and isinstance(s.get("saved"), list) else s
        for s in steps
    ]


def _bare(step: Step) -> Step:
    """``step`` without the retry marks a failed undo adds to it."""
    return {k: v for k, v in step.items() if k not in ("tries", "failed_since")}


def journal_of(control_socket: Path) -> Path:
    """Where the undo journal of the daemon with this control socket lives: beside the
    socket, which is unique per daemon (two daemons in two namespaces share one filesystem),
    on a tmpfs under /run by default."""
    return control_socket.with_name(control_socket.name + SUFFIX)


def undo_left_behind(control_socket: Path, owner: str) -> list[str] | None:
    """Undo the journal a crashed run of the daemon with this control socket left, holding
    that daemon's instance lock meanwhile (for a start that stops on a broken config or
    secrets file, and for ``alpaca-tunnel cleanup``).

    Returns:
        As :func:`recover`.

    Raises:
        SystemSetupError: the daemon runs (it holds the lock), or the lock cannot be made.
    """
    path = journal_of(control_socket)
    if not path.exists():
        return None
    fd = instance.hold(instance.lock_path(control_socket), owner, wait=0.0)
    try:
        return recover(path)
    finally:
        os.close(fd)


def _set_aside(path: Path, why: str, error: object) -> str:
    """Move a journal we must not undo out of the way (a new run would overwrite it), keeping
    it for a person; return the failure line.

    Raises:
        SystemSetupError: it cannot be moved: a run must not start over it (it would take
            another namespace's steps for its own, or write over them).
    """
    aside = path.with_name(f"{path.name}.{why}-{int(time.time())}")
    try:
        os.replace(path, aside)
    except OSError as move_exc:
        raise SystemSetupError(f"reading {path}: {error}; moving it to {aside}", move_exc,
                               "move the journal away by hand, check the host changes it names, "
                               "then start again") from move_exc
    log.error("journal moved aside journal=%s error=%s: the host changes it recorded were not "
              "undone; check routes, ip rules, nft tables and ip_forward where it was written, "
              "then delete it", aside, error)
    return f"reading {path}: {error} (moved to {aside})"


class Orphans(NamedTuple):
    """What :func:`recover_orphans` did: the journals it undid and the failures."""

    undone: list[Path]
    failures: list[str]


def recover_orphans(path: str | Path) -> Orphans:
    """Undo the journals that crashed runs of this namespace with another control socket (a
    tun_name changed since) left beside ``path``. Journals of running daemons, of other
    namespaces, without a unique namespace identity (a kernel without cookies:
    :mod:`alpaca.system.nsid`), or unreadable are left alone. Failures are also logged.

    Raises:
        SystemSetupError: an orphan's lock file cannot be written (a full directory).
    """
    path = Path(path)
    found = Orphans([], [])
    if not path.parent.is_dir():
        return found
    with _directory_lock(path.parent):
        for other in sorted(path.parent.glob(f"*{SUFFIX}")):
            if other == path:
                continue
            fd = instance.try_hold(lock_of(other))
            if fd is None:  # its daemon runs
                continue
            try:
                failures = _recover_orphan(other)
            finally:
                os.close(fd)
            if failures is not None:
                found.undone.append(other)
                found.failures.extend(failures)
    return found


def _recover_orphan(path: Path) -> list[str] | None:
    """The failures of undoing the orphan at ``path``; None if it is not ours to undo."""
    try:
        journal = Journal.load(path)
    except (OSError, ValueError) as exc:
        log.warning("left alone an unreadable journal of another run journal=%s error=%s", path, exc)
        return None
    if not nsid.unique(journal.netns_id) or not journal.is_here():
        return None
    log.warning("recovering from a previous run with another control socket journal=%s steps=%d",
                path, len(journal.steps))
    return journal.undo_all()


def resume(path: str | Path) -> Journal:
    """The journal a run starts with: the steps :func:`recover` could not undo, if it kept
    any (so that this run's stop retries them), else an empty one."""
    try:
        return Journal.load(path)
    except (OSError, ValueError):
        return Journal(path)


def _not_shared(step: Step, peers: list[Journal]) -> Step | None:
    """``step`` less what a running peer's journal also undoes (None: all of it is shared and
    stays in place for that peer). Shared: a sysctl key, a chnroute table, host routes."""
    kind = step["kind"]
    if kind == "chnroute":
        return _chnroute_not_shared(step, peers)
    theirs = [s for peer in peers for s in peer.steps
              if s.get("kind") == kind or (kind == "routes" and s.get("kind") == "chnroute")]
    if not theirs:
        return step
    if kind == "sysctl" and any(s.get("key") == step["key"] for s in theirs):
        log.info("sysctl left for another running daemon key=%s", step["key"])
        return None
    if kind == "routes":
        return _routes_not_shared(step, theirs)
    return step


def _routes_not_shared(step: Step, theirs: list[Step]) -> Step | None:
    """A routes step less the destinations a running peer's routes step names in its table;
    None while a running peer keeps a chnroute there: the routes step lists the host routes
    that were there already too, and one may be its prefix (our proto on both). Its own
    removal deletes ours with its chnroute (every route of ours in the table but those a
    running daemon keeps)."""
    table = step["table"]
    if any(s.get("kind") == "chnroute" and s.get("table") == table for s in theirs):
        log.info("host routes left for the chnroute of another running daemon table=%s", table)
        return None
    shared = {d for s in theirs if s.get("kind") == "routes" and s.get("table") == table
              and isinstance(s.get("dsts"), list) for d in s["dsts"] if isinstance(d, str)}
    dsts = [d for d in step["dsts"] if d not in shared]
    return {**step, "dsts": dsts} if dsts else None


def _chnroute_not_shared(step: Step, peers: list[Journal]) -> Step | None:
    """A chnroute step less what running peers keep in its table: None if one loaded a
    chnroute there too; else the step with ``keep``, the prefixes of their host routes and
    moved default route in that table (removing the chnroute deletes every route of ours
    in the table but those)."""
    table = step["table"]
    theirs = [s for peer in peers for s in peer.steps if s.get("table") == table]
    if any(s.get("kind") == "chnroute" for s in theirs):
        log.info("chnroute left for another running daemon table=%s", table)
        return None
    keep = [d for s in theirs if s.get("kind") == "routes" and isinstance(s.get("dsts"), list)
            for d in s["dsts"] if isinstance(d, str)]
    if any(s.get("kind") == "default_route" for s in theirs):
        keep.append("0.0.0.0/0")
    return {**step, "keep": keep} if keep else step
