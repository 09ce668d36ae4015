"""sd_notify: the datagrams systemd's Type=notify reads, and silence without systemd."""

from __future__ import annotations

import logging
import os
import socket

import pytest

from alpaca.system.sdnotify import Notifier


def test_notifier_sends_to_an_abstract_socket_and_leaves_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"alpaca-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = Notifier.from_environment()
        assert "NOTIFY_SOCKET" not in os.environ  # hook commands must not inherit it
        notifier.send("READY=1", "STATUS=up")
        assert listener.recv(4096) == b"READY=1\nSTATUS=up"
        notifier.reloading(1234)
        assert listener.recv(4096) == b"RELOADING=1\nMONOTONIC_USEC=1234"
        notifier.extend_timeout(65)
        assert listener.recv(4096) == b"EXTEND_TIMEOUT_USEC=65000000"


def test_notifier_without_systemd_sends_nothing_and_a_dead_socket_is_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    quiet = Notifier.from_environment()
    assert quiet.address is None
    quiet.send("READY=1")
    gone = Notifier(f"/nonexistent-{os.getpid()}/notify")
    with caplog.at_level(logging.WARNING):
        gone.send("READY=1")
        gone.send("STOPPING=1")
    assert len([r for r in caplog.records if "could not notify" in r.getMessage()]) == 1
