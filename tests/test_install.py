"""`make install` puts the config where the installed launcher will look for it, and the
systemd unit names both (staged with DESTDIR, using this checkout's virtualenv)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca.cli import EXIT_CONFIG
from alpaca.paths import default_config_path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


@pytest.mark.parametrize("prefix", ["/usr", "/usr/local", "/opt/alpaca"])
def test_make_install_files_agree_with_the_launchers_config_path(tmp_path: Path, prefix: str) -> None:
    appdir = tmp_path / prefix.lstrip("/") / "lib" / "alpaca-tunnel"
    appdir.parent.mkdir(parents=True)
    appdir.symlink_to(VENV)  # the virtualenv `make install` would have made
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "install-files", f"DESTDIR={tmp_path}",
                           f"PREFIX={prefix}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    conf = default_config_path(Path(prefix) / "bin" / "alpaca-tunnel")
    staged = tmp_path / str(conf).lstrip("/")
    assert json.loads(staged.read_text()) == json.loads((ROOT / "config" / "client.json").read_text())
    assert (staged.parent / "secrets.txt").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / prefix.lstrip("/") / "bin" / "alpaca-tunnel").exists()
    unit = (tmp_path / "etc/systemd/system/alpaca-tunnel.service").read_text()
    assert f"ExecStart={prefix}/bin/alpaca-tunnel -c {conf} run\n" in unit
    assert f"ExecStopPost=-{prefix}/bin/alpaca-tunnel -c {conf} cleanup\n" in unit


def test_make_install_refuses_destdir(tmp_path: Path) -> None:
    """A virtualenv built under DESTDIR names the staging path in its scripts: refused."""
    done = subprocess.run(["make", "-s", "-C", str(ROOT), "install", f"DESTDIR={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "install-files" in done.stdout
    assert not any(tmp_path.iterdir())


def test_the_unit_does_not_restart_after_a_config_error() -> None:
    """A bad config exits with EXIT_CONFIG: restarting every RestartSec cannot fix it."""
    unit = (ROOT / "config" / "alpaca-tunnel.service").read_text()
    assert "Restart=on-failure\n" in unit
    assert f"RestartPreventExitStatus={EXIT_CONFIG}\n" in unit
