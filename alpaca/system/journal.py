"""The undo journal: what to do to put the host back, written BEFORE each change.

The journal is a small JSON file (e.g. ``/run/alpaca-tunnel/<tun>.journal``)::

    {"version": 1, "netns": null, "steps": [{"kind": "sysctl", "key": "...", "value": "0"}, ...]}

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

At start-up the daemon calls :func:`recover` (undo a journal left by a crashed run), and on a
clean exit :meth:`Journal.undo_all`. Callers: the control greenlet.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alpaca.errors import AlpacaError, SystemSetupError
from alpaca.system import chnroute, nft, routes, sysctl

log = logging.getLogger(__name__)

VERSION = 1
Step = dict[str, Any]


def _undo_sysctl(step: Step, netns: str | None) -> None:
    sysctl.write(step["key"], step["value"], netns)


def _undo_routes(step: Step, netns: str | None) -> None:
    routes.remove_host_routes(step["dsts"], step["table"], netns)


def _undo_default_route(step: Step, netns: str | None) -> None:
    saved = [routes.SavedRoute.from_json(item) for item in step["saved"]]
    routes.restore_default_route(saved, step["table"], netns)


def _undo_chnroute(step: Step, netns: str | None) -> None:
    chnroute.remove(step["table"], netns)


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
        self.steps: list[Step] = []

    def record(self, kind: str, **params: Any) -> None:
        """Add an undo step and persist the journal (call BEFORE making the change).

        Raises:
            SystemSetupError: the file could not be written (then make no change).
        """
        if kind not in UNDO:
            raise ValueError(f"unknown undo step {kind!r}")
        step: Step = {"kind": kind, **params}
        if step in self.steps:
            return
        if kind == "sysctl" and any(s["kind"] == "sysctl" and s["key"] == params["key"] for s in self.steps):
            return
        self.steps.append(step)
        try:
            self._write()
        except OSError as exc:
            raise SystemSetupError(
                f"writing the undo journal {self.path}: {exc.strerror or exc}", None,
                "it is kept beside control_socket: check that its directory is writable and not full",
            ) from exc

    def _write(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"version": VERSION, "netns": self.netns, "steps": self.steps}, indent=1)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @classmethod
    def load(cls, path: str | Path) -> Journal:
        """Read a journal file (ValueError if it is not one of ours)."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ValueError(f"{path}: not an alpaca-tunnel journal (version {VERSION})")
        journal = cls(path, data.get("netns"))
        journal.steps = [s for s in data.get("steps", []) if isinstance(s, dict)]
        return journal

    def undo_all(self) -> list[str]:
        """Run every undo step, newest first; then delete the file, or, if some steps failed on
        the host's state (not malformed ones), keep just those in it for the next start to
        retry (:func:`recover`).

        Returns:
            One line per failed step (each is also logged); empty when all went well.
        """
        failures: list[str] = []
        kept: list[Step] = []
        for step in reversed(self.steps):
            kind = step.get("kind", "?")
            try:
                UNDO[kind](step, self.netns)
            except (AlpacaError, OSError) as exc:  # the host's state: may work later
                failures.append(f"undo {kind}: {exc}")
                kept.insert(0, step)
                log.error("undo step failed step=%s journal=%s error=%s", kind, self.path, exc)
            except (KeyError, ValueError, TypeError) as exc:  # a malformed step: never will
                failures.append(f"undo {kind}: {exc}")
                log.error("undo step failed step=%s journal=%s error=%s", kind, self.path, exc)
        self.steps = kept
        if kept and self._keep():
            log.warning("undo steps kept for the next start journal=%s steps=%d", self.path, len(kept))
        else:
            self.path.unlink(missing_ok=True)
        self.path.with_name(self.path.name + ".tmp").unlink(missing_ok=True)
        log.info("host changes undone journal=%s failed=%d", self.path, len(failures))
        return failures

    def _keep(self) -> bool:
        """Rewrite the file with the remaining steps; False if that is not possible."""
        try:
            self._write()
        except OSError as exc:
            log.error("could not keep the failed undo steps journal=%s error=%s", self.path, exc)
            return False
        return True


def recover(path: str | Path) -> list[str] | None:
    """Undo a journal left by a crashed run, then remove it (a step that fails again stays in
    it: the daemon takes such a journal over, see :func:`resume`).

    Returns:
        None if there was no journal, else the failures (empty list: fully recovered).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        journal = Journal.load(path)
    except (OSError, ValueError) as exc:
        log.error("unreadable journal left as is journal=%s error=%s", path, exc)
        return [f"reading {path}: {exc}"]
    log.warning("recovering from a previous run journal=%s steps=%d", path, len(journal.steps))
    return journal.undo_all()


def resume(path: str | Path) -> Journal:
    """The journal a run starts with: the steps :func:`recover` could not undo, if it kept
    any (so that this run's stop retries them), else an empty one."""
    try:
        return Journal.load(path)
    except (OSError, ValueError):
        return Journal(path)
