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
