"""alpaca.paths: the config path rules of the original's wiki ("File Path")."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from alpaca.errors import ConfigError
from alpaca.paths import (
    default_config_path,
    executable_path,
    relative_to_config,
    resolve_config_path,
)


@pytest.mark.parametrize(
    ("exe", "expected"),
    [
        ("/usr/bin/alpaca-tunnel", "/etc/alpaca-tunnel.d/config.json"),
        ("/usr/local/bin/alpaca-tunnel", "/usr/local/etc/alpaca-tunnel.d/config.json"),
        ("/opt/at/alpaca-tunnel", "/opt/at/alpaca-tunnel.d/config.json"),
        ("/usr/bin/sub/alpaca-tunnel", "/usr/bin/sub/alpaca-tunnel.d/config.json"),
        ("/usr/local/bin2/alpaca-tunnel", "/usr/local/bin2/alpaca-tunnel.d/config.json"),
    ],
)
def test_default_config_path_from_executable(exe: str, expected: str) -> None:
    assert default_config_path(Path(exe)) == Path(expected)


def test_resolve_config_path_given_wins() -> None:
    assert resolve_config_path("x/c.json", Path("/usr/bin/alpaca-tunnel")) == Path("x/c.json")


def test_resolve_config_path_default_uses_executable() -> None:
    exe = Path("/usr/local/bin/alpaca-tunnel")
    assert resolve_config_path(None, exe) == Path("/usr/local/etc/alpaca-tunnel.d/config.json")


def test_resolve_config_path_empty_is_an_error_naming_the_default() -> None:
    """``-c ""`` named the working directory: "cannot read the config file: Is a directory"."""
    with pytest.raises(ConfigError) as info:
        resolve_config_path("", Path("/usr/bin/alpaca-tunnel"))
    assert info.value.problems == ["-c is empty: give the path of the config file, or leave -c out"
                                   " for the default /etc/alpaca-tunnel.d/config.json"]


def test_resolve_config_path_without_injection_uses_argv0(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The program started as <dir>/alpaca-tunnel reads <dir>/alpaca-tunnel.d/config.json."""
    program = tmp_path / "bin" / "alpaca-tunnel"
    program.parent.mkdir()
    program.write_text("")
    monkeypatch.setattr(sys, "argv", [str(program), "show"])
    assert resolve_config_path(None) == tmp_path / "bin" / "alpaca-tunnel.d" / "config.json"


def test_executable_path_resolves_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "real" / "alpaca-tunnel"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "alpaca-tunnel"
    link.symlink_to(real)
    assert executable_path(str(link)) == real.resolve()
    assert default_config_path(executable_path(str(link))) == (
        real.resolve().parent / "alpaca-tunnel.d" / "config.json"
    )


def test_executable_path_bare_name_is_found_in_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = tmp_path / "alpaca-tunnel-test"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    assert executable_path("alpaca-tunnel-test") == exe.resolve()


def test_relative_to_config() -> None:
    config = Path("/etc/alpaca-tunnel.d/config.json")
    assert relative_to_config(config, "secrets.txt") == Path("/etc/alpaca-tunnel.d/secrets.txt")
    assert relative_to_config(config, "../s.txt") == Path("/etc/alpaca-tunnel.d/../s.txt")
    assert relative_to_config(config, "/srv/s.txt") == Path("/srv/s.txt")
