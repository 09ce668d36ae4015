"""Realtime scheduling (alpaca.system.sched), each case in a child interpreter: the test
runner itself never changes its scheduling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca.system import sched

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import json, os, sys
from alpaca.system.sched import current_priority, set_realtime
out = {"before": current_priority()}
if len(sys.argv) > 2:
    os.setgid(65534); os.setuid(65534)  # nobody: no CAP_SYS_NICE, RLIMIT_RTPRIO 0
out["problem"] = set_realtime(int(sys.argv[1]))
out["after"] = current_priority()
out["policy"] = os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK
r, w = os.pipe()
if os.fork() == 0:
    os.write(w, str(os.sched_getscheduler(0)).encode())
    os._exit(0)
os.close(w)
out["child_policy"] = int(os.read(r, 64))
os.wait()
out["back"] = set_realtime(0)
out["final"] = current_priority()
print(json.dumps(out))
"""


def child(*args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.netns  # needs root (CAP_SYS_NICE)
def test_set_realtime_takes_rr_and_children_start_normal() -> None:
    out = child("10")
    assert out["before"] == 0 and out["problem"] is None
    assert out["after"] == 10
    assert out["policy"] == os.SCHED_RR
    # SCHED_RESET_ON_FORK: a hook or any other child runs with normal scheduling
    assert out["child_policy"] == os.SCHED_OTHER
    assert out["back"] is None and out["final"] == 0


@pytest.mark.netns
def test_set_realtime_refused_is_reported_and_changes_nothing() -> None:
    out = child("10", "as-nobody")
    assert isinstance(out["problem"], str) and "CAP_SYS_NICE" in out["problem"]
    assert out["after"] == 0


def test_set_realtime_rejects_out_of_range() -> None:
    for priority in (-1, sched.MAX_PRIORITY + 1):
        with pytest.raises(ValueError, match="outside"):
            sched.set_realtime(priority)
