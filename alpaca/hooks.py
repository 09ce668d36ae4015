"""pre_up / post_up / pre_down / post_down commands, run as the original ran them.

Each command runs through ``/bin/sh -c`` in the order given. A failing command is logged with
its exit code and the tail of its output; start-up continues (the original's behaviour) unless
``strict_hooks`` is set, in which case the first failure raises and the daemon stops.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable

import gevent
import gevent.event
from gevent import os as gevent_os
from gevent import subprocess

from alpaca.errors import AlpacaError

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 60.0
OUTPUT_TAIL = 400
#: Seconds to wait, once the shell exited, for the end of its output (a process left in the
#: background may hold the pipe open: its output is not waited for).
OUTPUT_WAIT = 0.2
#: Bytes a second read (and dropped) from the output of processes a hook left running.
BACKGROUND_READ = 64 * 1024


class HookError(AlpacaError):
    """A hook command failed and hooks are strict."""


def run_hooks(stage: str, commands: tuple[str, ...], *, strict: bool = False,
              before_each: Callable[[float], None] | None = None) -> int:
    """Run ``commands`` of ``stage`` in order; return how many failed.

    Args:
        before_each: called with the seconds the next command may take (HOOK_TIMEOUT), before
            it starts (the daemon tells the service manager to wait that long).

    Raises:
        HookError: on the first failure when ``strict``.
    """
    failed = 0
    for index, command in enumerate(commands):
        if before_each is not None:
            before_each(HOOK_TIMEOUT)
        code, output = run_one(command)
        if code == 0:
            log.info("hook ran stage=%s index=%d", stage, index)
            continue
        failed += 1
        if code is None:
            how = f"timed out after {HOOK_TIMEOUT:g} s"
            log.warning("hook timed out stage=%s index=%d after=%gs command=%r output=%r",
                        stage, index, HOOK_TIMEOUT, command, output)
        else:
            how = f"failed with exit code {code}"
            log.warning("hook failed stage=%s index=%d exit=%d command=%r output=%r",
                        stage, index, code, command, output)
        if strict:
            raise HookError(f"{stage}_cmds[{index}] {how}: {command!r} "
                            f"(fix the command, or set \"strict_hooks\": false to continue anyway)")
    return failed


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the hook's process group (its shell and what it started) and reap the shell."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class _Tail:
    """Reads a hook's output pipe until end of file and keeps only its last bytes: memory is
    bounded and nothing goes to disk, however much the hook (or a process it leaves in the
    background, for as long as it runs) writes. Once the hook's shell is done, the pipe is
    read at most :data:`BACKGROUND_READ` bytes a second and discarded: a chatty background
    process then waits on its full pipe instead of costing the packet path a CPU."""

    KEEP = 4 * OUTPUT_TAIL

    def __init__(self, fd: int) -> None:
        self.kept = bytearray()
        self.done = gevent.event.Event()
        self.shell_done = False
        gevent_os.make_nonblocking(fd)
        gevent.spawn(self._drain, fd)

    def _drain(self, fd: int) -> None:
        try:
            while chunk := gevent_os.nb_read(fd, 65536):
                self.kept += chunk
                del self.kept[:-self.KEEP]
                if self.shell_done:
                    gevent.sleep(len(chunk) / BACKGROUND_READ)
        except OSError:
            pass
        finally:
            os.close(fd)
            self.done.set()

    def text(self, wait: float) -> str:
        """The tail so far, after up to ``wait`` seconds for the end of the output; from then
        on the pipe is read slowly (what is left belongs to background processes)."""
        self.done.wait(wait)
        self.shell_done = True
        return bytes(self.kept).decode(errors="replace").strip()


def _start_shell(command: str, stdout: int) -> subprocess.Popen[bytes] | OSError:
    """``/bin/sh -c command`` in a session of its own; the error if it cannot start (returned,
    not raised: a greenlet that fails would print a traceback of its own)."""
    try:
        return subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.DEVNULL, stdout=stdout,
                                stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return exc


def _kill_once_started(starting: gevent.Greenlet) -> None:
    """Wait until ``starting`` (a Popen being made) is done, then kill what it started: the
    shell must not go on after a stop that came while it was being started."""
    while not starting.ready():
        try:
            starting.join()
        except BaseException:  # a second stop: this wait is short (an exec)
            continue
    if starting.successful() and not isinstance(starting.value, OSError):
        _kill_group(starting.value)


def run_one(command: str, timeout: float | None = None) -> tuple[int | None, str]:
    """Run ``command`` through ``/bin/sh -c``; return (exit code, the tail of its output).

    Only the shell is waited for, as ``system()`` did: a process the command leaves in the
    background (``dnsmasq &``) keeps running and does not hold start-up. Output goes to a pipe
    that :class:`_Tail` drains; the last OUTPUT_TAIL characters are returned, and what a
    background process writes later is read slowly and dropped. A shell still
    running after ``timeout`` (HOOK_TIMEOUT) seconds is killed with its process group; its
    exit code is None, its output what it wrote until then.
    So is one whose wait is interrupted (e.g. StartInterrupted), before the exception goes on,
    also while it is being started (gevent's Popen waits for the exec).
    """
    limit = HOOK_TIMEOUT if timeout is None else timeout
    read_end, write_end = os.pipe()
    starting = gevent.spawn(_start_shell, command, write_end)
    try:
        proc = starting.get()
        if isinstance(proc, OSError):
            raise proc
    except BaseException:  # it failed to start, or a stop came while it did
        _kill_once_started(starting)
        os.close(read_end)
        raise
    finally:
        os.close(write_end)  # once the child has its copy
    tail = _Tail(read_end)
    try:
        code = proc.wait(limit)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return None, tail.text(OUTPUT_WAIT)[-OUTPUT_TAIL:]
    except BaseException:  # a stop during start-up: the hook must not go on after the undo
        _kill_group(proc)
        tail.shell_done = True
        raise
    return code, tail.text(OUTPUT_WAIT)[-OUTPUT_TAIL:]
