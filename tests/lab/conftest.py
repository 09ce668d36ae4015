"""Short lab state dirs under /tmp (namespace-side paths stay short), removed after the test
with the lock file ``lab`` commands leave beside them (alpaca.lab.exclusive)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def lab_state() -> Iterator[Callable[[], Path]]:
    """A factory of fresh state dirs; every one it made is removed at teardown."""
    made: list[Path] = []

    def make() -> Path:
        made.append(Path(tempfile.mkdtemp(prefix="alp-", dir="/tmp")))
        return made[-1]

    yield make
    for state in made:
        shutil.rmtree(state, ignore_errors=True)
        state.with_name(state.name + ".lock").unlink(missing_ok=True)
