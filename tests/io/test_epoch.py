"""next_epoch: strictly increasing, persisted before use, refuses to start when it cannot."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca.errors import StateFileError, TunnelError
from alpaca.io import epoch as epoch_mod
from alpaca.io.epoch import CLOCK_FLOOR, EPOCH_MAX, check_state_file, lock_path, next_epoch

ROOT = Path(__file__).resolve().parents[2]


def test_epoch_missing_file_starts_at_wall_clock(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "state" / "epoch"
    assert next_epoch(state, 1_800_000_000.9) == 1_800_000_000
    assert state.read_text() == "1800000000\n"
    assert stat.S_IMODE(state.parent.stat().st_mode) & 0o077 == 0
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    assert [r.getMessage() for r in caplog.records] == [
        "no epoch file: the epoch is the clock's seconds (a first start; if the node ran before,"
        f" keep state_file on a disk that survives reboots) state_file={state}"]


def test_epoch_strictly_increases_when_wall_clock_goes_back(tmp_path: Path) -> None:
    state = tmp_path / "epoch"
    got = [next_epoch(state, wall) for wall in (2e9, 5.0, 5.0, 2e9 + 1.5, 0.0)]
    assert got == [2e9, 2e9 + 1, 2e9 + 2, 2e9 + 3, 2e9 + 4]


@pytest.mark.parametrize("wall", [0.0, 93.0, CLOCK_FLOOR - 1.0])
def test_epoch_without_a_file_a_clock_not_set_yet_is_refused(tmp_path: Path, wall: float) -> None:
    """A host without a battery-backed clock and a state file on a tmpfs (lost at every
    reboot) booted before NTP set the clock: each boot read 1970 plus its uptime, and two
    boots took the same epoch, so the same nonces under the same keys."""
    state = tmp_path / "epoch"
    with pytest.raises(TunnelError) as err:
        next_epoch(state, wall)
    assert str(err.value).startswith(
        f"epoch file {state} does not exist and the system clock reads {int(wall)} seconds")
    assert "start once the clock is set" in str(err.value)
    assert not state.exists()
    state.write_text("1800000000\n")  # with the file, the clock may be anything
    assert next_epoch(state, wall) == 1_800_000_001


def test_epoch_jumps_to_wall_clock_when_ahead(tmp_path: Path) -> None:
    state = tmp_path / "epoch"
    state.write_text("1000\n")
    assert next_epoch(state, 5000.0) == 5000


def test_epoch_leaves_no_temporary_file(tmp_path: Path) -> None:
    state = tmp_path / "epoch"
    next_epoch(state, CLOCK_FLOOR)
    next_epoch(state, CLOCK_FLOOR)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch", "epoch.lock"]
    assert lock_path(state) == tmp_path / "epoch.lock"


#: One start: waits for the go file, then takes an epoch. Its pid reads as 1 (two containers'
#: daemons, each pid 1 in its own namespace), and it dawdles between reading the last epoch and
#: writing the next, so that two starts overlap in every round unless a lock keeps them apart.
START = """
import os, sys, time
from pathlib import Path
from alpaca.io import epoch
os.getpid = lambda: 1
read_last = epoch._read_last
def slow_read_last(path):
    last = read_last(path)
    time.sleep(0.05)
    return last
epoch._read_last = slow_read_last
state, go = Path(sys.argv[1]), Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    print(epoch.next_epoch(state, 500.0), flush=True)
except Exception as exc:
    print(repr(exc), flush=True)
"""


def test_epoch_two_starts_at_once_on_one_file_get_different_epochs(tmp_path: Path) -> None:
    """Two daemons sharing one state file (containers with a shared state directory, both pid 1)
    that start at the same moment: the second waits for the first's lock and reads its epoch,
    instead of taking the same one (or failing on the other's temporary file of the same name)."""
    for round_ in range(5):
        state, go = tmp_path / f"shared{round_}.epoch", tmp_path / f"go{round_}"
        state.write_text("1000\n")  # the clock is behind the file: each takes last + 1
        procs = [subprocess.Popen([sys.executable, "-c", START, str(state), str(go)],
                                  stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)]
        try:
            assert all(proc.stdout is not None and proc.stdout.readline() == "ready\n"
                       for proc in procs)
            go.touch()
            outs = sorted(proc.communicate(timeout=30)[0].strip() for proc in procs)
        finally:
            for proc in procs:
                proc.kill()
        assert outs == ["1001", "1002"], f"round {round_}"
        assert state.read_text() == "1002\n"


def test_epoch_leftover_temporary_file_of_another_process_is_left_alone(tmp_path: Path) -> None:
    """The temporary name is no longer ``.<name>.<pid>.tmp``: a file of that name, another
    process's with the same pid (in another pid namespace), is neither taken nor clobbered."""
    state = tmp_path / "epoch"
    state.write_text("1000\n")
    theirs = tmp_path / f".epoch.{os.getpid()}.tmp"
    theirs.write_text("5000\n")
    assert next_epoch(state, 10.0) == 1001
    assert state.read_text() == "1001\n"
    assert theirs.read_text() == "5000\n"


def test_epoch_lock_held_too_long_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "epoch"
    state.write_text("1000\n")
    monkeypatch.setattr(epoch_mod, "LOCK_WAIT", 0.2)
    fd = os.open(lock_path(state), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(TunnelError) as err:
            next_epoch(state, 10.0)
    finally:
        os.close(fd)
    assert str(err.value) == (
        f"epoch file {state}: its lock file {tmp_path / 'epoch.lock'} has been held by another"
        " process for 0.2 s; is another alpaca-tunnel starting with this state_file? give each"
        " node a state_file of its own")
    assert state.read_text() == "1000\n"
    assert next_epoch(state, 10.0) == 1001


@pytest.mark.parametrize("content", ["", "abc\n", "-5\n", "12.5\n", "1 2\n", str(2**32), "9" * 5000])
def test_epoch_corrupt_file_is_an_error(tmp_path: Path, content: str) -> None:
    state = tmp_path / "epoch"
    state.write_text(content)
    with pytest.raises(TunnelError) as err:
        next_epoch(state, 1000.0)
    assert str(state) in str(err.value)
    assert "corrupt" in str(err.value)
    assert state.read_text() == content


@pytest.mark.parametrize("content,held", [
    ("", "nothing"), ("\n\n", "2 bytes of white space"), ("abc\n", "4 bytes of text"),
    (str(2**32), "a number above 4294967295"), ("9" * 5000, "a number above 4294967295"),
    ("1.1 ac48f5f6be3cd479c6a3dbd8cfb1dc7f 192.168.7.11 null 10001\n" * 2, "64 bytes or more of text"),
    ("\xe9t\xe9", "5 bytes of binary data"),
])
def test_epoch_corrupt_file_is_described_by_size_and_kind_never_quoted(
        tmp_path: Path, content: str, held: str) -> None:
    """The message quoted the first 40 characters: a key, for a state_file naming the secrets file."""
    state = tmp_path / "epoch"
    state.write_text(content)
    with pytest.raises(StateFileError) as err:
        check_state_file(state)
    assert f"epoch file {state} is corrupt: it holds {held}, not an epoch" in str(err.value)
    assert "ac48f5f6" not in str(err.value) and "abc" not in str(err.value)


def test_epoch_binary_file_is_an_error(tmp_path: Path) -> None:
    state = tmp_path / "epoch"
    state.write_bytes(b"\xff\xfe")
    with pytest.raises(TunnelError, match="corrupt"):
        next_epoch(state, 1000.0)


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_epoch_state_file_that_is_no_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    # A directory, a FIFO without a writer (a blocking read would wait forever) and
    # /dev/zero (a read to the end would fill memory): each refused, naming state_file.
    state = Path("/dev/zero") if kind == "device" else tmp_path / "epoch"
    if kind == "directory":
        state.mkdir()
    elif kind == "fifo":
        os.mkfifo(state)
    with pytest.raises(TunnelError) as err:
        check_state_file(state)
    assert f"epoch file {state} is not a regular file" in str(err.value)
    assert "set state_file" in str(err.value)


def test_epoch_directory_that_is_a_file_refuses_to_start(tmp_path: Path) -> None:
    blocker = tmp_path / "notadir"
    blocker.write_text("")
    state = blocker / "epoch"
    with pytest.raises(TunnelError) as err:
        next_epoch(state, 1000.0)
    text = str(err.value)
    assert str(state) in text
    assert "refusing to start" in text
    assert isinstance(err.value.__cause__, OSError)


def test_epoch_unwritable_filesystem_refuses_to_start() -> None:
    # /proc accepts no new files, even from root.
    state = Path("/proc/self/alpaca-epoch")
    with pytest.raises(TunnelError, match="cannot write epoch file /proc/self/alpaca-epoch"):
        next_epoch(state, 1000.0)


def test_epoch_must_fit_u32(tmp_path: Path) -> None:
    state = tmp_path / "epoch"
    with pytest.raises(TunnelError, match="2\\^32-1"):
        next_epoch(state, float(2**32))
    assert not state.exists()
    state.write_text(f"{EPOCH_MAX}\n")
    with pytest.raises(TunnelError, match="2\\^32-1"):
        next_epoch(state, 0.0)
    assert next_epoch(tmp_path / "other", float(EPOCH_MAX)) == EPOCH_MAX


@pytest.mark.parametrize("last", [None, 1000])
def test_epoch_clock_past_u32_names_the_clock(tmp_path: Path, last: int | None) -> None:
    """The clock itself is past 2^32-1 (a wrong RTC): the fix is the clock, not new keys."""
    state = tmp_path / "epoch"
    if last is not None:
        state.write_text(f"{last}\n")
    with pytest.raises(TunnelError) as err:
        next_epoch(state, float(2**32 + 5))
    assert str(err.value) == (
        f"epoch file {state}: the system clock reads 4294967301 seconds since 1970, past 2^32-1"
        " (the year 2106), the largest epoch; set the system clock right")
    assert state.exists() == (last is not None)


def test_epoch_file_at_u32_asks_for_new_keys(tmp_path: Path) -> None:
    state = tmp_path / "epoch"
    state.write_text(f"{EPOCH_MAX}\n")
    with pytest.raises(TunnelError) as err:
        next_epoch(state, 1000.0)
    assert str(err.value) == (f"epoch file {state}: the next epoch {2**32} exceeds 2^32-1;"
                              " change the secret keys, then delete the file")
