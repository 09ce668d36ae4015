"""The session epoch: a number that grows at every start and is never reused.

Why it must never repeat: the AES-GCM nonce of a datagram is built from the epoch and a
packet counter that restarts at zero with every session. A repeated epoch with a fresh
counter would repeat nonces under the same key, and a repeated GCM nonce leaks the XOR of
the plaintexts and lets an attacker forge tags. So :func:`next_epoch` persists the new epoch
(fsync'ed, atomically renamed) before it returns, and the daemon refuses to start when it
cannot: a start that fails loudly is better than a start that might reuse a nonce.

The epoch is ``max(last + 1, int(wall_now))``: the wall clock keeps epochs increasing
even if the state file is lost, and ``last + 1`` keeps them increasing when the clock goes
backwards. It must fit the header's unsigned 32-bit field. Without a state file the clock is
all there is: a clock before CLOCK_FLOOR (a host without a battery-backed clock, booted
before NTP set it, reads 1970 plus its uptime at every boot) is refused, since two such
boots would take the same epoch; a missing file is logged (a first start, or a lost file).

Two processes that share one state file (one node started twice by mistake, containers that
share the state directory) take their epochs one after the other: :func:`next_epoch` holds an
exclusive flock on ``<state_file>.lock`` (a file beside it, kept) across the read of the last
epoch, the write of the new one and the rename, so the second reads what the first wrote and
they never get the same epoch. The temporary file is made by :func:`tempfile.mkstemp`, a name of
its own even for processes with the same pid (two containers' pid 1).

Called once at startup by the daemon, before any greenlet runs (the fsyncs block).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from alpaca.core.ids import digits_value, is_digits
from alpaca.errors import StateFileError, TunnelError

EPOCH_MAX = 2**32 - 1
#: 2025-01-01 00:00 UTC: no correct clock reads less; without a state file, an earlier reading
#: is a clock not set yet.
CLOCK_FLOOR = 1_735_689_600
#: The most of the state file read, bytes: an epoch is at most 10 digits and a newline.
_READ_MAX = 64
#: Seconds :func:`next_epoch` waits for the state file's lock held by another process (it
#: holds it for a read, a write and two fsyncs).
LOCK_WAIT = 10.0

log = logging.getLogger(__name__)


def next_epoch(state_file: Path, wall_now: float) -> int:
    """Return the epoch for this session, after persisting it to ``state_file``.

    Args:
        state_file: holds the last epoch as decimal text; missing means 0.
        wall_now: wall-clock seconds since the Unix epoch (``clock.wall()``).

    Raises TunnelError naming the file and the fix when the file is unreadable or corrupt
    (StateFileError), when it cannot be written, or when the epoch would exceed 2^32-1.
    """
    with _locked(state_file):
        last = _read_last(state_file)
        if last is None:
            _first_epoch(state_file, wall_now)
        epoch = max((last or 0) + 1, int(wall_now))
        if int(wall_now) > EPOCH_MAX:  # whatever the file holds: new keys would not help
            raise TunnelError(
                f"epoch file {state_file}: the system clock reads {int(wall_now)} seconds since"
                " 1970, past 2^32-1 (the year 2106), the largest epoch; set the system clock right"
            )
        if epoch > EPOCH_MAX:
            raise TunnelError(
                f"epoch file {state_file}: the next epoch {epoch} exceeds 2^32-1; "
                "change the secret keys, then delete the file"
            )
        _write_atomically(state_file, f"{epoch}\n".encode())
    return epoch


def _first_epoch(state_file: Path, wall_now: float) -> None:
    """Refuse a clock not set yet where no state file holds the last epoch; else log that the
    clock alone decides (a first start, or a file lost: then a clock set back since the last
    run would give an epoch, and nonces, used before)."""
    if wall_now < CLOCK_FLOOR:
        raise TunnelError(
            f"epoch file {state_file} does not exist and the system clock reads {int(wall_now)}"
            " seconds since 1970, before 2025: it is not set yet, and an epoch taken from it may"
            " have been used before; start once the clock is set (NTP: the systemd unit starts"
            " after time-sync.target), or restore the state file")
    log.warning("no epoch file: the epoch is the clock's seconds (a first start; if the node "
                "ran before, keep state_file on a disk that survives reboots) state_file=%s", state_file)


def lock_path(state_file: Path) -> Path:
    """The file :func:`next_epoch` locks while it reads and replaces ``state_file``."""
    return state_file.with_name(state_file.name + ".lock")


@contextlib.contextmanager
def _locked(state_file: Path) -> Iterator[None]:
    """Hold the exclusive flock of :func:`lock_path` (creating it, and the directory mode
    0700), waiting for it at most :data:`LOCK_WAIT` seconds.

    Raises:
        TunnelError: it cannot be made, or another process holds it that long.
    """
    lock = lock_path(state_file)
    try:
        lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _unwritable(state_file, f"creating its lock file {lock}: {exc.strerror or exc}") from exc
    try:
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TunnelError(
                        f"epoch file {state_file}: its lock file {lock} has been held by another"
                        f" process for {LOCK_WAIT:g} s; is another alpaca-tunnel starting with"
                        " this state_file? give each node a state_file of its own") from None
                time.sleep(0.05)
            except OSError as exc:  # a file system without locks
                raise _unwritable(state_file, f"locking {lock}: {exc.strerror or exc}") from exc
        yield
    finally:
        os.close(fd)  # drops the lock


def check_state_file(state_file: Path) -> int:
    """What ``check`` can tell without writing: the last epoch recorded (0: none yet).

    Raises:
        TunnelError: as :func:`next_epoch` for a file that is unreadable or corrupt, or whose
            existing directory this process may not write.
    """
    last = _read_last(state_file) or 0
    directory = state_file.parent
    if directory.is_dir() and not os.access(directory, os.W_OK | os.X_OK):
        raise TunnelError(f"epoch file {state_file}: its directory is not writable; make it "
                          "writable or set another state_file")
    return last


def _read_last(state_file: Path) -> int | None:
    """The last epoch ``state_file`` holds; None if it does not exist."""
    fix = (
        "is state_file the right file? if so, restore it, or write into it a number larger than"
        " any epoch used before, such as the current Unix time plus 86400"
    )
    try:
        data = _read_regular(state_file)
    except (FileNotFoundError, NotADirectoryError):
        return None  # never written (the write then reports a directory that is not one)
    except OSError as exc:
        raise TunnelError(f"epoch file {state_file} is unreadable: {exc.strerror or exc} ({fix})") from exc
    if data is None:
        raise StateFileError(f"epoch file {state_file} is not a regular file (a directory, device"
                             " or pipe); set state_file in the config to a file of its own")
    epoch = digits_value(data.decode("ascii", "replace").strip())
    if epoch is None or epoch > EPOCH_MAX:
        raise StateFileError(f"epoch file {state_file} is corrupt: it holds {_held(data)}, not an"
                             f" epoch (a number from 0 to {EPOCH_MAX}) ({fix})")
    return epoch


def _held(data: bytes) -> str:
    """What ``data`` (the first :data:`_READ_MAX` bytes of a state file that holds no epoch)
    is, by size and kind, never a byte of it: a state_file pointed at the secrets file by
    mistake would show a key."""
    text = data.decode("ascii", "replace").strip()
    size = f"{len(data)} bytes" if len(data) < _READ_MAX else f"{_READ_MAX} bytes or more"
    if not text:
        return f"{size} of white space" if data else "nothing"
    if is_digits(text):
        return f"a number above {EPOCH_MAX}"
    kind = "text" if all(32 <= byte < 127 or byte in b"\t\n\r" for byte in data) else "binary data"
    return f"{size} of {kind}"


def _read_regular(path: Path) -> bytes | None:
    """The first :data:`_READ_MAX` bytes of ``path``; None if it is not a regular file (opened
    without blocking, so a FIFO or a device is refused instead of waited on or read forever).

    Raises:
        OSError: it cannot be opened (FileNotFoundError: it does not exist).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, _READ_MAX)
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by a file holding ``data``, fsync'ed (file and directory)."""
    directory = path.parent
    tmp: Path | None = None
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
        tmp = Path(name)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise _unwritable(path, exc.strerror or str(exc)) from exc


def _unwritable(path: Path, why: str) -> TunnelError:
    return TunnelError(
        f"cannot write epoch file {path}: {why}; refusing to start, since an unrecorded epoch"
        " could be reused and repeat nonces (make its directory writable, free disk space, or"
        " set another state file)"
    )
