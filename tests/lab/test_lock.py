"""The lock of the lab commands that change the lab (alpaca.lab.exclusive)."""

from __future__ import annotations

from pathlib import Path

import pytest

from alpaca.lab import LabError, exclusive


def test_lock_of_a_state_dir_whose_parent_is_missing_is_taken(tmp_path: Path) -> None:
    """The lock file could not be made there, and that read as "another lab command (pid ?)
    is changing the lab": a wrong diagnosis, and nothing to wait for."""
    state = tmp_path / "no-such-parent" / "state"
    with exclusive(state):
        assert state.with_name("state.lock").exists()


def test_lock_held_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with exclusive(state), pytest.raises(LabError, match="another lab command"), exclusive(state):
        pass


@pytest.mark.parametrize("state", ["/", "relative-dot", "lock-is-a-dir", "/proc/alpaca-nope"])
def test_lock_of_a_state_dir_that_cannot_have_one_is_a_clear_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str) -> None:
    """``--state-dir .`` or ``/`` raised ValueError (a traceback, "this is a bug"); a lock
    path that is a directory raised IsADirectoryError; one that cannot be made read as
    "another lab command (pid ?) is changing the lab"."""
    monkeypatch.chdir(tmp_path)
    if state == "relative-dot":
        path = Path(".")  # the lock goes beside the directory it names: tmp_path's
        with exclusive(path):
            assert tmp_path.with_name(tmp_path.name + ".lock").exists()
        return
    if state == "lock-is-a-dir":
        (tmp_path / "state.lock").mkdir()
        path = tmp_path / "state"
    else:
        path = Path(state)
    with pytest.raises(LabError, match=r"names no directory of its own|cannot make the lab's lock"), \
            exclusive(path):
        pass
