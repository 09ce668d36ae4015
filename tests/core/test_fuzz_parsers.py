"""Fuzz the config loader and the secrets parser: any input gives a Config or a ConfigError.

Never another exception, and never a traceback through ``alpaca-tunnel check`` (exit 0 or 2).
Hostnames in generated secrets are never resolved (``lookup_ipv4`` is replaced), so the
tests touch no network. ``HYPOTHESIS_PROFILE=long`` runs many more examples. An atheris
run (coverage-guided, bounded) is added when atheris is installed.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alpaca import cli
from alpaca import secrets as secrets_mod
from alpaca.config import load_config
from alpaca.errors import ConfigError
from alpaca.secrets import load_secrets

_LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
FUZZ = settings(max_examples=5000 if _LONG else 150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

KEY = "ba3db29ce7ae2a0ab49daf296a88d50a1bd6ff23ceb239db5bf6dbe505e9bd53"
KEYS = ["mode", "group", "net", "id", "gateway", "forwarders", "port", "mtu", "log_level", "secret_file",
        "chnroute", "local_routes", "pre_up_cmds", "tun_name", "ports", "ttl", "probe_interval_ms",
        "path_timeout_ms", "path_lifetime_s", "dup", "pad_small_packets", "replay_window", "metrics",
        "inner_source_check", "control_socket", "state_file", "strict_hooks", "route_table", "protocol",
        "peer_protocols", "use_dns", "ack_termination"]
VALID = {"mode": "client", "group": "g", "net": "10.17", "id": "16.1", "gateway": "1.1",
         "secret_file": "secrets.txt", "metrics": False, "control_socket": "c.sock", "state_file": "epoch"}
SECRETS = f"1.1 {KEY} 10.0.0.1 null 10001\n16.1 {KEY}\n"

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["1.1", "16.1", "10.17", "0.0", "255.255", "client", "server",
                                           "all", "none", "1.2.3.4:5", "eth0", "-1", "1e9", KEY]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from([*KEYS, "name", "port", "policy", "listen", "data", "table"]),
                    inner, max_size=4)), max_leaves=12)
configs = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), values, max_size=10),
    st.builds(lambda base, extra: {**base, **extra}, st.just(VALID),
              st.dictionaries(st.sampled_from(KEYS), values, max_size=3)),
)
tokens = st.sampled_from(["1.1", "16.1", "1.2", "0.1", "255.255", "300.1", KEY, KEY[:32], KEY[:31], "zz" * 16,
                          "10.0.0.1", "null", "10001", "0", "65536", "::1", "#", "-", "1.1.1.1.1", "\t"])
lines = st.lists(st.one_of(st.lists(tokens, max_size=6).map(" ".join), st.text(max_size=40)), max_size=6)


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(secrets_mod, "lookup_ipv4", lambda names: {})


def _write(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    path.chmod(0o600)
    return path


def _load_config(path: Path) -> None:
    try:
        load_config(path)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


def _check_cli(config: Path) -> None:
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = cli.main(["-c", str(config), "check"])
    assert "Traceback" not in err.getvalue() and "this is a bug" not in err.getvalue(), err.getvalue()
    assert code in (0, 2), (code, err.getvalue())


@FUZZ
@given(data=configs)
def test_fuzz_config_random_json_objects_give_config_or_config_error(tmp_path: Path, data: object) -> None:
    _write(tmp_path, "secrets.txt", SECRETS)
    path = _write(tmp_path, "config.json", json.dumps(data, allow_nan=True))
    _load_config(path)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_fuzz_config_random_text_gives_config_error(tmp_path: Path, text: str) -> None:
    _load_config(_write(tmp_path, "config.json", text))


@pytest.mark.parametrize("text", ["[" * 100_000, "{\"mtu\": " + "1" * 5000 + "}", "{\"mtu\": 1e999}",
                                  "\ufeff{}", "{\"a\": \"\\ud800\"}", "\x00", "{" * 1000 + "}" * 1000])
def test_fuzz_config_pathological_json_gives_config_error(tmp_path: Path, text: str) -> None:
    _load_config(_write(tmp_path, "config.json", text))


@FUZZ
@given(body=lines)
def test_fuzz_secrets_random_lines_give_secrets_or_config_error(tmp_path: Path, body: list[str]) -> None:
    path = _write(tmp_path, "secrets.txt", "\n".join(body))
    try:
        load_secrets(path, 0x1001)
    except ConfigError as exc:
        assert exc.problems


@FUZZ
@given(raw=st.binary(max_size=300))
def test_fuzz_secrets_random_bytes_give_secrets_or_config_error(tmp_path: Path, raw: bytes) -> None:
    path = _write(tmp_path, "secrets.txt", raw)
    try:
        load_secrets(path, 0x1001)
    except ConfigError as exc:
        assert exc.problems


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=configs, body=lines)
def test_fuzz_check_command_never_prints_a_traceback(tmp_path: Path, data: object, body: list[str]) -> None:
    _write(tmp_path, "secrets.txt", "\n".join(body) if body else SECRETS)
    _check_cli(_write(tmp_path, "config.json", json.dumps(data, allow_nan=True)))


ATHERIS_HARNESS = """
import contextlib, sys
from pathlib import Path
import atheris
with atheris.instrument_imports():
    from alpaca import secrets as secrets_mod
    from alpaca.config import load_config
    from alpaca.errors import ConfigError
    from alpaca.secrets import load_secrets
secrets_mod.lookup_ipv4 = lambda names: {}
config, secrets = Path(sys.argv[1]) / "config.json", Path(sys.argv[1]) / "secrets.txt"

def one(data):
    config.write_bytes(data)
    secrets.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(config)
    with contextlib.suppress(ConfigError):
        load_secrets(secrets, 0x1001)

atheris.Setup([sys.argv[0], "-runs=3000"], one)
atheris.Fuzz()
"""


@pytest.mark.slow  # `make fuzz` installs atheris and runs it
def test_fuzz_atheris_config_and_secrets(tmp_path: Path) -> None:
    """Coverage-guided, 3000 runs over both parsers, when atheris is installed.

    libFuzzer ends its process when done, so it runs in a child; an uncaught exception makes
    the child exit non-zero with the Python traceback.
    """
    pytest.importorskip("atheris")
    done = subprocess.run([sys.executable, "-c", ATHERIS_HARNESS, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
