"""The demo's figures from two /metrics pages (pure: no lab needed), and its teardown on a
stop signal (the lab faked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca.lab.demo import counter_deltas

BEFORE = """# TYPE alpaca_path_data_lost_total counter
alpaca_path_data_lost_total{path="via-1.2",peer="1.1"} 39523.0
alpaca_path_data_lost_total{path="via-1.3",peer="1.1"} 47511.0
alpaca_dup_copies_sent_total{peer="1.1"} 10.0
"""
AFTER = """# TYPE alpaca_path_data_lost_total counter
alpaca_path_data_lost_total{path="via-1.2",peer="1.1"} 39540.0
alpaca_path_data_lost_total{path="via-1.3",peer="1.1"} 47511.0
alpaca_dup_copies_sent_total{peer="1.1"} 210.0
alpaca_peer_lost_packets_total{peer="1.1"} 2.0
"""


def test_demo_shows_what_grew_during_the_step_not_the_totals() -> None:
    assert counter_deltas(BEFORE, AFTER, ("lost", "dup_copies")) == [
        'alpaca_dup_copies_sent_total{peer="1.1"} +200',
        'alpaca_path_data_lost_total{path="via-1.2",peer="1.1"} +17',
        'alpaca_peer_lost_packets_total{peer="1.1"} +2',
    ]


SIGNALLED_DEMO = """
import os, signal, subprocess, sys, time
import alpaca.lab as lab

class Done:
    def __init__(self, args):
        self.args, self.returncode, self.stdout, self.stderr = args, 0, "", ""

subprocess.run = lambda args, **kw: Done(args)  # nothing of the host is touched

def up(self, **kw):  # the lab is up; then the terminal closes, or `kill` comes
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    time.sleep(5)

lab.Lab.up = up
lab.Lab._down = lambda self: print("torn down") or []
from alpaca.cli import main
print("exit", main(["lab", "demo", "--state-dir", sys.argv[2]]))
"""


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_demo_stopped_by_a_signal_tears_the_lab_down(signame: str, tmp_path: Path) -> None:
    """SIGTERM and SIGHUP ended the demo at once: its namespaces and daemons (in sessions of
    their own) ran on. Every stop signal now reaches the demo's teardown."""
    if os.geteuid() != 0:
        pytest.skip("lab commands need root")
    done = subprocess.run([sys.executable, "-c", SIGNALLED_DEMO, signame, str(tmp_path / "state")],
                          cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True,
                          timeout=60, check=False)
    assert "torn down" in done.stdout and done.stdout.strip().endswith("exit 130"), done.stdout + done.stderr
