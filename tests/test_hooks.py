"""Hook commands: run through /bin/sh as the original's system() did, bounded in time and output."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import gevent
import pytest

from alpaca import hooks
from alpaca.daemon import StartInterrupted
from alpaca.hooks import BACKGROUND_READ, OUTPUT_TAIL, HookError, run_hooks, run_one


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_hook_leaving_a_process_in_the_background_returns_at_once(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    start = time.monotonic()
    code, output = run_one(f"sleep 60 & echo $! > {pidfile}; echo started")
    elapsed = time.monotonic() - start
    pid = int(pidfile.read_text())
    try:
        assert (code, output) == (0, "started")
        assert alive(pid), "the background process goes on running"
        assert elapsed < 30, elapsed  # not held until the background process ends
    finally:
        os.kill(pid, signal.SIGKILL)


def test_hook_running_too_long_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    code, output = run_one(f"echo waiting for the nfs server; sleep 60 & echo $! > {pidfile}; wait",
                           timeout=0.5)
    assert (code, output) == (None, "waiting for the nfs server")  # what it said is kept
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while alive(pid):
        assert time.monotonic() < deadline, "the hook's child survived"
        time.sleep(0.05)


def test_hook_output_is_kept_to_its_tail() -> None:
    code, output = run_one("head -c 100000 /dev/zero | tr '\\0' x; echo END; exit 3")
    assert code == 3
    assert len(output) <= OUTPUT_TAIL and output.endswith("xxxEND")


def test_hook_output_never_goes_to_disk_and_a_background_writer_is_read_slowly(tmp_path: Path) -> None:
    """The hook writes into a pipe (not a file that a chatty background process could grow
    without bound). What a process it leaves in the background writes is read at
    BACKGROUND_READ bytes a second and dropped: that process waits on its pipe rather than
    costing the daemon a CPU, and still gets its output written in the end."""
    marker = tmp_path / "done"
    size = 5 * BACKGROUND_READ
    writer = f"(sleep 0.5; head -c {size} /dev/zero; touch {marker}) &"
    code, output = run_one(f"[ -p /dev/stdout ] || exit 9; {writer} echo started")
    assert (code, output) == (0, "started")
    gevent.sleep(2.5)
    assert not marker.exists()  # 5 s worth of output: still being read
    deadline = time.monotonic() + 20
    while not marker.exists():
        assert time.monotonic() < deadline, "the background writer is stuck on its output"
        gevent.sleep(0.1)


def test_failing_hooks_are_counted_and_strict_ones_raise() -> None:
    assert run_hooks("post_up", ("true", "exit 2", "false")) == 2
    with pytest.raises(HookError, match=r"post_up_cmds\[1\] failed with exit code 2: 'exit 2'"):
        run_hooks("post_up", ("true", "exit 2", "true"), strict=True)


def test_hook_whose_wait_is_interrupted_is_killed_with_its_children(tmp_path: Path) -> None:
    """A stop signal during start-up raises in the starting greenlet while a hook runs: the
    hook's processes go too, so nothing of it changes the host after the undo."""
    pidfile, marker = tmp_path / "pid", tmp_path / "late"
    runner = gevent.spawn(run_one, f"(sleep 1; touch {marker}) & echo $! > {pidfile}; wait")
    deadline = time.monotonic() + 5
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        gevent.sleep(0.05)
    runner.kill(StartInterrupted("stop"), block=True)
    assert isinstance(runner.exception, StartInterrupted)
    pid = int(pidfile.read_text())
    assert not alive(pid), "the hook's child survived the interrupt"
    time.sleep(1.5)
    assert not marker.exists()


def test_hooks_a_stop_while_the_hook_is_being_started_kills_it(tmp_path: Path) -> None:
    """gevent's Popen waits for the exec; a stop landing there left run_one without the
    process to kill: the hook went on after the daemon had undone its changes."""
    marker = tmp_path / "ran"
    stop = StartInterrupted("stopped by a signal during start-up")  # as the daemon's handler throws
    gevent.spawn(gevent.kill, gevent.getcurrent(), stop)  # runs at the first wait: the start
    with pytest.raises(StartInterrupted):
        run_one(f"sleep 0.5; touch {marker}")
    gevent.sleep(1.0)
    assert not marker.exists()


def test_hooks_a_shell_that_cannot_start_is_its_error_without_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise BlockingIOError(11, "Resource temporarily unavailable")  # fork refused

    monkeypatch.setattr(hooks.subprocess, "Popen", refuse)
    with pytest.raises(BlockingIOError):
        run_one("true")
    assert "Traceback" not in capfd.readouterr().err


def test_strict_hook_that_times_out_says_so(monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """It read "failed with exit code -1", and the log had "timed out" in place of the output."""
    monkeypatch.setattr(hooks, "HOOK_TIMEOUT", 0.3)
    with pytest.raises(HookError, match=r"pre_up_cmds\[0\] timed out after 0.3 s: 'echo mounting; sleep 30'"):
        run_hooks("pre_up", ("echo mounting; sleep 30",), strict=True)
    assert "hook timed out stage=pre_up index=0 after=0.3s" in caplog.text
    assert "output='mounting'" in caplog.text
