"""A stop signal during start-up: what the process exits with, and that a second signal never
finds SIGTERM at its default action (death, with nothing undone). Each case runs in a child
process: the signal handlers are the process's own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

UNDO_FAILS = """
import os, signal
from pathlib import Path
from unittest import mock
import gevent
from alpaca import daemon as d

config = mock.MagicMock(control_socket=Path({sock!r}), id=0x1001, pre_down_cmds=(), post_down_cmds=())

def start(self):  # the host changes are journaled; then a stop signal while start-up waits
    self._catch_stop_during_start()
    self._lock = os.open({lock!r}, os.O_RDWR | os.O_CREAT)
    gevent.spawn_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
    gevent.sleep(5)

with mock.patch.object(d.Daemon, "start", start), \\
        mock.patch.object(d.journal_mod.Journal, "undo_all", lambda self: ["undo routes: EPERM"]), \\
        mock.patch.object(d.Notifier, "from_environment", classmethod(lambda cls: mock.MagicMock())):
    print("exit", d.run(config, mock.MagicMock()))
"""

SECOND_SIGNAL = """
import signal
from unittest import mock
from alpaca import daemon as d

def caught() -> bool:
    for line in open("/proc/self/status"):
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    raise AssertionError("no SigCgt")

daemon = d.Daemon.__new__(d.Daemon)
daemon._stopping, daemon._lock, daemon.notify = False, None, mock.MagicMock()
daemon._start_signals = []
daemon._catch_stop_during_start()
cancel, seen = daemon._cancel_start_signals, []

def cancel_and_look() -> None:
    cancel()
    seen.append(caught())

daemon._cancel_start_signals = cancel_and_look
daemon.stop()
print("caught after each cancel", seen)
"""


def run_child(script: str) -> str:
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_stop_during_start_whose_undo_failed_exits_1(tmp_path: Path) -> None:
    """It exited 0 and logged "the host changes made so far are undone" (a normal stop
    whose undo fails exits 1)."""
    out = run_child(UNDO_FAILS.format(sock=str(tmp_path / "a.sock"), lock=str(tmp_path / "a.lock")))
    assert out.strip().endswith("exit 1")


def test_stop_after_a_start_interrupt_keeps_sigterm_caught() -> None:
    """stop() cancelled the start-up handlers before it put its own: for that instant a
    second SIGTERM killed the process before anything was undone."""
    out = run_child(SECOND_SIGNAL)
    assert "caught after each cancel [True" in out


INTERRUPT_IN_STOP = """
import os, signal
import gevent
from alpaca import daemon as d

daemon = d.Daemon.__new__(d.Daemon)
daemon._stopping = False
daemon._catch_stop_during_start()
daemon._stopping = True  # stop() has begun (start-up failed otherwise): its undo must run whole
os.kill(os.getpid(), signal.SIGTERM)
try:
    gevent.sleep(0.2)  # a wait inside stop(): group.kill, a closer
    print("stop went on")
except d.StartInterrupted:
    print("stop cut short")
"""


def test_a_start_interrupt_landing_inside_stop_is_not_delivered() -> None:
    """The interrupt, queued when the signal came, was thrown into the first wait of stop()
    (after a start-up that failed for another reason): the journal was never undone."""
    assert run_child(INTERRUPT_IN_STOP).strip() == "stop went on"
