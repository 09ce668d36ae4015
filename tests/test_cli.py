"""alpaca.cli (in process through main(), plus one run of the console script) and alpaca.log."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca import __version__, cli
from alpaca import secrets as secrets_mod
from alpaca.errors import SystemSetupError, TunnelError
from alpaca.log import setup_logging

DATA = Path(__file__).parent / "data" / "original-sample"
KEYS = ["cf27c2b105d9fc6bb50ab02c71f8f0dd",
        "952339cca6d96ba47b804793324168a2837834e9dacffe89675641c986a8b5cb",
        "cdf2146aa3ebfe1b7d48013f4835fcbf"]


def client_setup(tmp_path: Path, **extra: object) -> Path:
    (tmp_path / "cn.txt").write_text("1.0.1.0/24\n1.0.2.0/23\n")
    config = {
        "mode": "client", "group": "lab", "net": "10.17", "id": "16.1", "gateway": "1.1",
        "forwarders": ["1.2"], "local_routes": ["192.168.0.0/16"],
        "chnroute": {"data": "cn.txt"},
        "ports": [{"name": "wan", "port": 5000}, {"name": "lte", "port": 5001}],
        **extra,
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    secrets = tmp_path / "secrets.txt"
    secrets.write_text(
        f"16.1 {KEYS[0]}\n1.1 {KEYS[1]} 192.0.2.1 null 10001\n1.2 {KEYS[2]} 192.0.2.2 null 10002\n"
    )
    secrets.chmod(0o600)
    return path


def test_cli_check_good_client_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = client_setup(tmp_path)
    assert cli.main(["-c", str(path), "check"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    for key in KEYS:
        assert key not in out and key.upper() not in out
    assert "configure alpaca0: mtu 1400, txqueuelen 64, address 10.17.16.1/16, up" in out
    assert 'bind UDP socket "wan": 0.0.0.0, port 5000' in out
    assert 'bind UDP socket "lte": 0.0.0.0, port 5001' in out
    assert "add default via 10.17.1.1 dev alpaca0 table 253 proto 97" in out
    assert "route 192.0.2.1/32, 192.0.2.2/32, 192.168.0.0/16 via the uplink table 253 proto 97" in out
    assert "chnroute: 2 prefixes" in out
    assert "masquerade" not in out
    assert "32-byte key" in out and "16-byte key (self)" in out
    assert "scheduling:      normal" in out
    assert "duplicate-send:  syn_dns, 1 extra copy 100 ms apart" in out
    assert "TUN device:      offload on, read ahead 128 KiB, priority lane on" in out
    assert "UDP ports:       receive buffer 208 KiB, priority lane on" in out
    assert out.rstrip().endswith("alpaca-tunnel: config OK")


def test_cli_check_refuses_a_corrupt_epoch_file_as_run_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """check said "config OK" for a state file that run refuses to start with."""
    state = tmp_path / "alpaca0.epoch"
    state.write_text("not a number\n")
    path = client_setup(tmp_path, state_file=str(state))
    assert cli.main(["-c", str(path), "check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"alpaca-tunnel: {path}: state_file: epoch file {state} is corrupt: it holds"
                          " 13 bytes of text, not an epoch")
    state.write_text("1700000000\n")
    assert cli.main(["-c", str(path), "check"]) == 0


def test_cli_state_file_naming_the_secrets_file_is_a_config_error_that_shows_no_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The corrupt-epoch error quoted the file's first 40 characters (a peer's key) and exited
    1 without naming the config; check and run now exit 2 naming state_file."""
    path = client_setup(tmp_path, state_file="secrets.txt", control_socket=str(tmp_path / "ctl.sock"))
    assert cli.main(["-c", str(path), "check"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"alpaca-tunnel: {path}: state_file: epoch file {tmp_path / 'secrets.txt'} is corrupt: it"
        " holds 64 bytes or more of text, not an epoch (a number from 0 to 4294967295) (is"
        " state_file the right file? if so, restore it, or write into it a number larger than any"
        " epoch used before, such as the current Unix time plus 86400)"]
    run = subprocess.run([sys.executable, "-m", "alpaca", "-c", str(path), "run"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert (run.returncode, run.stderr) == (2, err)
    for key in KEYS:
        assert not any(key[i:i + 8] in err + run.stdout for i in range(len(key) - 7))


def test_cli_check_shows_a_group_that_does_not_print_escaped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = client_setup(tmp_path, group="lab\n\x1b[31mOK")
    assert cli.main(["-c", str(path), "check"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "group:           lab\\n\\u001b[31mOK\n" in out


def test_cli_check_original_sample_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for item in DATA.iterdir():
        shutil.copy(item, tmp_path / item.name)
    (tmp_path / "secrets.txt").chmod(0o600)
    assert cli.main(["check", "-c", str(tmp_path / "config.json")]) == 0
    out = capsys.readouterr().out
    assert "[WARNING] alpaca.config:" in out and out.count("obsolete key") == 2
    assert "chnroute: 6594 prefixes" in out
    assert "masquerade ip saddr 10.17.0.0/16" in out
    assert "set net.ipv4.ip_forward=1" in out
    assert "add default via" not in out
    assert "1f5c6281e4e3e0db7c57b74d2103e706" not in out
    assert ("protocol:        v2 (nodes of the C alpaca-tunnel 6.1.2 need legacy-6.1.2, here or in"
            " peer_protocols)\n") in out


def test_cli_check_names_the_key_a_legacy_peer_uses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A peer that speaks legacy-6.1.2 uses the first 16 characters of its key as written:
    check called it a 16-byte key (its hex decoded)."""
    path = client_setup(tmp_path, peer_protocols={"1.2": "legacy-6.1.2"})
    assert cli.main(["-c", str(path), "check"]) == 0
    out = capsys.readouterr().out
    assert "protocol:        v2 (peers: 1.2=legacy-6.1.2)\n" in out
    assert "  1.1      192.0.2.1:10001, 32-byte key\n" in out
    assert "  1.2      192.0.2.2:10002, legacy key (its first 16 characters)\n" in out


def test_cli_broken_config_exits_2_with_located_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = client_setup(tmp_path, mtu=2000, forwarders=["1.x"], colour="red")
    assert cli.main(["-c", str(path), "check"]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"alpaca-tunnel: {path}: ") for line in lines)
    assert "Traceback" not in err + out
    assert any('forwarders[0]: "1.x" is not a peer id' in line for line in lines)
    assert any("mtu: 2000 is above the maximum 1436" in line for line in lines)


def test_cli_broken_secrets_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = client_setup(tmp_path)
    (tmp_path / "secrets.txt").write_text(f"16.1 {KEYS[0]}\n1.1 xyz\n1.1 {KEYS[1]}\n")
    assert cli.main(["check", "-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"alpaca-tunnel: {tmp_path / 'secrets.txt'}:2: peer_key of peer 1.1: 3 characters,"
        " characters 1, 2, 3 are not hex digits (expected 32 or 64 hex digits 0-9 a-f A-F and"
        " nothing else; make one with `alpaca-tunnel genkey`)",
        f"alpaca-tunnel: {tmp_path / 'secrets.txt'}:3: peer 1.1 is listed again (first on line 2);"
        " keep one line per peer",
    ]


def test_cli_check_lists_a_hostname_that_may_be_key_digits_by_its_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """15 hex digits of a key pass as a hostname: check's list of peers showed them."""
    monkeypatch.setattr(secrets_mod, "lookup_ipv4", lambda names: {})  # no name server
    path = client_setup(tmp_path)
    with (tmp_path / "secrets.txt").open("a") as secrets:
        secrets.write(f"1.3 {KEYS[0]} {KEYS[1][:15]} null 10003\n1.4 {KEYS[0]} gw1.example.net null 4\n")
    assert cli.main(["check", "-c", str(path)]) == 0
    out = capsys.readouterr().out
    assert KEYS[1][:8] not in out
    assert "1.3      <15 characters, perhaps a key: not shown> -> address learned" in out
    assert "1.4      gw1.example.net -> address learned" in out


def test_cli_check_reports_peers_missing_from_secrets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = client_setup(tmp_path, forwarders=["3.3"])
    assert cli.main(["check", "-c", str(path)]) == 2
    assert "forwarders[0] 3.3 has no line" in capsys.readouterr().err


def check_warnings(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[str, list[str]]:
    """``check``'s output (it must pass) and its warnings, each without its prefix."""
    assert cli.main(["-c", str(path), "check"]) == 0
    out = capsys.readouterr().out
    return out, [line.removeprefix("WARNING: ") for line in out.splitlines() if line.startswith("WARNING")]


def test_cli_check_warns_of_what_would_leave_the_client_cut_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check said "config OK" where run cuts the host off: a gateway that has no address
    and no forwarder, a port's interface that does not exist, a route_table no ip rule looks
    up (4242: no host has one). Each is a warning; the good config has none."""
    path = client_setup(tmp_path)
    assert cli.main(["-c", str(path), "check"]) == 0
    assert "WARNING" not in capsys.readouterr().out
    path = client_setup(tmp_path, forwarders=[], route_table=4242,
                        ports=[{"name": "wan", "port": 5000, "interface": "nosuchdev9"}])
    secrets = tmp_path / "secrets.txt"
    secrets.write_text(f"16.1 {KEYS[0]}\n1.1 {KEYS[1]}\n")
    out, warnings = check_warnings(path, capsys)
    assert warnings == [
        f"{secrets}: the gateway 1.1 has no address and there are no forwarders: this node cannot"
        " send to it, and its default route leads nowhere until 1.1 speaks first (only if 1.1's"
        " secrets give this node's address, or a forwarder still relays its datagrams here); give"
        f" 1.1's peer_ip and peer_port, or forwarders in {path}",
        f'{path}: ports[0].interface: no device "nosuchdev9" on this host now; run fails to bind the'
        ' port "wan" until it exists',
        f"{path}: route_table 4242: no ip rule looks this table up, so no traffic enters the tunnel;"
        " add one (ip rule add ... lookup 4242) or use route_table default",
    ]
    assert out.rstrip().endswith("alpaca-tunnel: config OK")


def test_cli_check_warns_of_what_stops_run_on_this_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check said "config OK" where run then failed (exit 1): a tun_name taken by a device of
    another kind (lo), a metrics address no interface has; and where the tunnel's own
    datagrams would go into the tunnel: a peer's peer_ip inside net."""
    path = client_setup(tmp_path, tun_name="lo", metrics={"listen": "192.0.2.77:9586"})
    secrets = tmp_path / "secrets.txt"
    secrets.write_text(f"16.1 {KEYS[0]}\n1.1 {KEYS[1]} 192.0.2.1 null 10001\n"
                       f"1.2 {KEYS[2]} 10.17.1.2 null 10002\n")
    assert check_warnings(path, capsys)[1] == [
        f"{secrets}: peer_ip inside the tunnel's network 10.17.0.0/16 ({path}: net): 1.2 (10.17.1.2):"
        " datagrams to them would go into the tunnel itself; give each peer's address on the"
        " underlying network",
        f"{path}: tun_name: device lo exists and is not a TUN device (kind none) (choose another"
        " tun_name: that device is not ours); run fails to start",
        f"{path}: metrics.listen: cannot listen on 192.0.2.77 (Cannot assign requested address); run"
        " fails to start: listen on an address of this host, 127.0.0.1 or 0.0.0.0",
    ]


def test_cli_check_devices_that_cannot_be_read_are_not_a_tun_name_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A netlink failure reading the devices was reported as "tun_name: ...; run fails to
    start"; it says the devices could not be read."""
    from alpaca.system import link

    def unreadable(ifname: str, nl: object) -> str | None:
        raise SystemSetupError(f"reading device {ifname}: No buffer space available")

    monkeypatch.setattr(link, "_tun_in_the_way", unreadable)
    path = client_setup(tmp_path)
    assert check_warnings(path, capsys)[1] == [
        "the devices could not be read to check tun_name: reading device alpaca0: No buffer space available"]


def test_cli_check_metrics_on_the_tunnel_address_is_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node's own tunnel address is no host's until run brings the TUN device up, which
    it does before it serves the metrics: check said run would fail."""
    path = client_setup(tmp_path, metrics={"listen": "10.17.16.1:9586"})
    assert check_warnings(path, capsys)[1] == []


def test_cli_check_a_gateway_that_can_reach_the_client_is_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without forwarders and without the gateway's address, a client whose own line has an
    address can be reached by the gateway first (a server that calls its clients)."""
    path = client_setup(tmp_path, forwarders=[])
    (tmp_path / "secrets.txt").write_text(f"16.1 {KEYS[0]} 192.0.2.16 null 5000\n1.1 {KEYS[1]}\n")
    assert cli.main(["-c", str(path), "check"]) == 0
    assert "WARNING" not in capsys.readouterr().out


def test_cli_invalid_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"mode": }')
    assert cli.main(["-C", str(path), "check"]) == 2
    assert capsys.readouterr().err == f"alpaca-tunnel: {path}:1:10: invalid JSON: Expecting value\n"


@pytest.mark.parametrize("command", ["check", "cleanup", "show", "run"])
def test_cli_empty_config_option_is_named(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``-c ""`` was read as the working directory: ".: cannot read the config file: Is a
    directory"."""
    assert cli.main(["-c", "", command]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alpaca-tunnel: -c is empty: give the path of the config file, or leave"
                          " -c out for the default "), err
    assert err.count("\n") == 1


def test_cli_without_command_runs_the_daemon_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The default command loads the config first, so a broken one proves the dispatch
    # without starting a tunnel.
    path = tmp_path / "config.json"
    path.write_text("{}")
    assert cli.main(["-c", str(path)]) == 2
    assert "mode: is required" in capsys.readouterr().err


def test_cli_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["-c", str(tmp_path / "none.json"), "check"]) == 2
    assert "cannot read the config file: No such file or directory" in capsys.readouterr().err


def test_cli_genkey(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["genkey"]) == 0
    first = capsys.readouterr().out.strip()
    assert cli.main(["genkey"]) == 0
    second = capsys.readouterr().out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", first) and re.fullmatch(r"[0-9a-f]{64}", second)
    assert first != second


@pytest.mark.parametrize("argv", [["version"], ["-v"], ["-V"], ["--version"], ["check", "-v"]])
def test_cli_version(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == f"alpaca-tunnel {__version__}\n"


def test_cli_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--no-such-option"]) == 2
    assert "usage: alpaca-tunnel" in capsys.readouterr().err


def test_cli_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for row in cli.SUBCOMMANDS:
        assert row.name in out


def test_cli_lab_help_names_every_lab_command(capsys: pytest.CaptureFixture[str]) -> None:
    lab = next(row for row in cli.SUBCOMMANDS if row.name == "lab")
    assert lab.configure is not None
    parser = argparse.ArgumentParser()
    lab.configure(parser)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert commands.choices
    for name in commands.choices:
        assert re.search(rf"[ :]{name}[,;]?( |$)", lab.help), name
    # compose reads no lab state: no --state-dir to mislead
    assert cli.main(["lab", "compose", "--state-dir", "/tmp"]) == 2
    assert "unrecognized arguments: --state-dir" in capsys.readouterr().err


def _add_row(monkeypatch: pytest.MonkeyPatch, name: str, handler: cli.Handler) -> None:
    monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, cli.Subcommand(name, "x", handler)])


def test_cli_runtime_error_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fail(args: argparse.Namespace) -> int:
        raise TunnelError("the TUN device alpaca0 vanished")

    _add_row(monkeypatch, "fail", fail)
    assert cli.main(["fail"]) == 1
    assert capsys.readouterr().err == "alpaca-tunnel: the TUN device alpaca0 vanished\n"


def test_cli_unexpected_exception_is_a_bug_with_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def crash(args: argparse.Namespace) -> int:
        raise KeyError("oops")

    _add_row(monkeypatch, "crash", crash)
    assert cli.main(["crash"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err
    assert err.rstrip().endswith("this is a bug; please report it with the traceback above")


def test_cli_new_subcommand_is_one_row(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def hello(args: argparse.Namespace) -> int:
        print("hello", args.config, args.timestamps)
        return 0

    _add_row(monkeypatch, "hello", hello)
    assert cli.main(["hello", "-c", "x.json", "-t"]) == 0
    assert capsys.readouterr().out == "hello x.json True\n"


def test_console_script_runs(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "alpaca-tunnel"
    assert script.exists(), "install the package (make venv) to get the console script"
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"mode": "client", "mtu": "big"}))
    result = subprocess.run(
        [str(script), "-c", str(bad), "check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 5 and all(line.startswith("alpaca-tunnel: ") for line in lines)
    version = subprocess.run([str(script), "version"], capture_output=True, text=True, timeout=60)
    assert (version.returncode, version.stdout) == (0, f"alpaca-tunnel {__version__}\n")


# --- alpaca.log ---------------------------------------------------------------------------


def test_setup_logging_splits_streams_and_formats() -> None:
    out, err = io.StringIO(), io.StringIO()
    setup_logging("debug", stdout=out, stderr=err)
    try:
        log = logging.getLogger("alpaca.test")
        log.debug("probe sent peer=%s", "1.1")
        log.warning("path down peer=%s path=%s", "1.1", "192.0.2.1:5000")
        log.error("tun vanished dev=%s", "alpaca0")
        log.critical("stopping")
    finally:
        setup_logging(logging.WARNING)
    assert out.getvalue().splitlines() == [
        "[DEBUG] alpaca.test: probe sent peer=1.1",
        "[WARNING] alpaca.test: path down peer=1.1 path=192.0.2.1:5000",
    ]
    assert err.getvalue().splitlines() == [
        "[ERROR] alpaca.test: tun vanished dev=alpaca0",
        "[CRITICAL] alpaca.test: stopping",
    ]


def test_setup_logging_level_and_timestamps() -> None:
    out = io.StringIO()
    setup_logging("WARNING", timestamps=True, stdout=out, stderr=out)
    try:
        logging.getLogger("alpaca.test").info("hidden")
        logging.getLogger("alpaca.test").warning("shown")
    finally:
        setup_logging(logging.WARNING)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[WARNING\] alpaca\.test: shown\n", out.getvalue()
    )


def test_setup_logging_replaces_its_own_handlers() -> None:
    setup_logging(logging.INFO)
    setup_logging(logging.INFO)
    try:
        ours = [h for h in logging.getLogger().handlers if type(h).__name__ == "_ConsoleHandler"]
        assert len(ours) == 2
    finally:
        setup_logging(logging.WARNING)


def test_setup_logging_rejects_unknown_level() -> None:
    with pytest.raises(ValueError, match='unknown log level "loud"'):
        setup_logging("loud")


class ClosedPipe(io.StringIO):
    """stdout whose reader went away (``| head`` that has read enough)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_cli_output_into_a_closed_pipe_exits_like_sigpipe(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["genkey"]) == 141
    assert "Traceback" not in capsys.readouterr().err


def test_cli_version_flag_into_a_closed_pipe_exits_like_sigpipe(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``-v`` was answered before the error handling: a traceback, exit 1."""
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert cli.main(["-v"]) == 141
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["genkey"], ["-v"], ["version"]])
def test_cli_output_onto_a_full_disk_is_one_line_not_a_bug(argv: list[str]) -> None:
    """``genkey > /dev/full`` printed a traceback and "this is a bug"."""
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "alpaca", *argv], stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr == "alpaca-tunnel: cannot write the output: No space left on device\n"


def test_cli_path_that_is_not_utf8_is_escaped_on_a_strict_output(tmp_path: Path) -> None:
    """A -c path with a byte that is not UTF-8, written to a stdout of strict encoding (a
    UTF-8 locale; PYTHONIOENCODING here): "Logging error" tracebacks, then "this is a bug"."""
    directory = tmp_path / os.fsdecode(b"cfg_\xff")
    shutil.copytree(DATA, directory)
    (directory / "secrets.txt").chmod(0o600)
    done = subprocess.run([sys.executable, "-m", "alpaca", "-c", directory / "config.json", "check"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert (done.returncode, done.stderr) == (0, "")
    assert "config:          " + str(tmp_path / "cfg_\\udcff" / "config.json") in done.stdout
    assert done.stdout.rstrip().endswith("alpaca-tunnel: config OK")


@pytest.mark.parametrize("sock", ["", "/", ".", "/tmp"])
def test_cli_cleanup_of_a_path_that_is_no_socket_is_refused(
        sock: str, capsys: pytest.CaptureFixture[str]) -> None:
    # The journal and the lock are named after the socket's file: "/" and "." name none
    # (a traceback before), "/tmp" is a directory.
    assert cli.main(["cleanup", "--control-socket", sock]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alpaca-tunnel: --control-socket ")
    assert "names no file" in err or "exists and is not a socket" in err


SIGHUP_WHILE_IMPORTING = """
import importlib.abc, os, signal, sys
class HangUpOnTheCommandLine(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "alpaca.cli":  # the imports: 0.5-1.3 s before run's own handlers
            sys.meta_path.remove(self)
            os.kill(os.getpid(), signal.SIGHUP)
        return None
sys.meta_path.insert(0, HangUpOnTheCommandLine())
sys.argv[0] = "alpaca-tunnel"
from alpaca.entry import main
sys.exit(main())
"""


def test_cli_a_sighup_while_the_command_line_is_imported_does_not_end_run(tmp_path: Path) -> None:
    """A SIGHUP (``systemctl reload`` at boot) that came while the command line was being
    imported ended ``run`` with status 129 and nothing logged, which systemd counts as a
    clean exit: the node stayed down. It is held from the process's first instant now; this
    run goes on to its own end (a secrets file that is missing)."""
    path = client_setup(tmp_path)
    (tmp_path / "secrets.txt").unlink()
    done = subprocess.run([sys.executable, "-c", SIGHUP_WHILE_IMPORTING, "-c", str(path), "run"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == cli.EXIT_CONFIG, (done.returncode, done.stderr)
    assert "secrets.txt" in done.stderr
    script = Path(sys.executable).with_name("alpaca-tunnel")
    if script.exists():  # the console script starts there too
        assert "from alpaca.entry import main" in script.read_text()


def test_cli_a_sighup_while_importing_still_ends_another_command(tmp_path: Path) -> None:
    """Only ``run`` keeps a SIGHUP for itself: ``check`` (a terminal hung up) ends as before."""
    path = client_setup(tmp_path)
    done = subprocess.run([sys.executable, "-c", SIGHUP_WHILE_IMPORTING, "-c", str(path), "check"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == -1, (done.returncode, done.stdout, done.stderr)
