"""Daemon.stop() undoes the journal's host changes whatever fails before it: a closer with a
bug, or an exception out of killing the greenlets."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest
from gevent.pool import Group

from alpaca import daemon as d
from alpaca.hooks import HOOK_TIMEOUT


class Journal:
    """Records that the host's changes were undone (the step under test is stop()'s order)."""

    def __init__(self) -> None:
        self.undone = 0

    def undo_all(self) -> list[str]:
        self.undone += 1
        return []


def stopping_daemon(tmp_path: Path, closers: list[object], group: Group | None = None) -> d.Daemon:
    daemon = d.Daemon.__new__(d.Daemon)
    daemon.config = mock.MagicMock(id=0x1001)
    daemon.notify = mock.MagicMock()
    daemon._stopping, daemon._start_signals, daemon._hooks_up = False, [], False
    daemon._lock = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT)
    daemon.group = group if group is not None else Group()
    daemon._closers = closers
    daemon.journal = Journal()  # type: ignore[assignment]
    daemon.plane, daemon.tun, daemon.exit_code = None, None, 0
    return daemon


def test_a_closer_with_a_bug_neither_keeps_the_others_open_nor_skips_the_undo(tmp_path: Path) -> None:
    """A closer raising anything but OSError/AlpacaError ended stop() there: the host's routes
    and rules stayed and the closers before it in the list never ran."""
    closed: list[str] = []

    def broken() -> None:
        raise RuntimeError("bug")

    daemon = stopping_daemon(tmp_path, [lambda: closed.append("first"), broken])
    daemon.stop()
    assert closed == ["first"]
    assert daemon.journal.undone == 1  # type: ignore[attr-defined]
    assert daemon._lock is None


def test_an_exception_out_of_killing_the_greenlets_still_undoes_the_host(tmp_path: Path) -> None:
    group = mock.MagicMock(spec=Group)
    group.kill.side_effect = KeyboardInterrupt
    daemon = stopping_daemon(tmp_path, [], group)
    with pytest.raises(KeyboardInterrupt):
        daemon.stop()
    assert daemon.journal.undone == 1  # type: ignore[attr-defined]
    assert daemon._lock is None


def test_stop_gives_each_down_hook_its_time_with_the_service_manager(tmp_path: Path) -> None:
    """TimeoutStopSec=150 against up to 60 s a down hook: three slow ones got the daemon
    killed before post_down ran. Each hook now extends the stop's timeout first."""
    daemon = stopping_daemon(tmp_path, [])
    daemon._hooks_up = True
    daemon.config.pre_down_cmds = ("true",)
    daemon.config.post_down_cmds = ("true", "true")
    daemon.stop()
    extended = [c.args for c in daemon.notify.extend_timeout.call_args_list]  # type: ignore[attr-defined]
    assert extended == [(HOOK_TIMEOUT + 5,)] * 3
