"""alpaca.config: every key, every error path, the original's sample, engine_settings."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest

from alpaca import configreader
from alpaca.config import (
    ChnrouteConfig,
    Config,
    DupConfig,
    MetricsConfig,
    Mode,
    PortConfig,
    load_config,
    read_chnroute,
)
from alpaca.core import constants as C
from alpaca.core.ids import parse_peer_id
from alpaca.core.settings import DupPolicy, PeerSpec
from alpaca.errors import ConfigError
from alpaca.secrets import load_secrets
from alpaca.system import chnroute

DATA = Path(__file__).parent / "data" / "original-sample"
CN = str(DATA / "route_data_cidr.txt")
KEY = "1f5c6281e4e3e0db7c57b74d2103e706"
BASE: dict[str, Any] = {
    "mode": "client",
    "group": "lab",
    "net": "10.17",
    "id": "16.1",
    "gateway": "1.1",
}


def write(tmp_path: Path, data: dict[str, Any] | str, name: str = "config.json") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def load(tmp_path: Path, **keys: Any) -> Config:
    return load_config(write(tmp_path, {**BASE, **keys}))


def problems(tmp_path: Path, data: dict[str, Any] | str | None = None, **keys: Any) -> list[str]:
    path = write(tmp_path, {**BASE, **keys} if data is None else data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def only(tmp_path: Path, **keys: Any) -> str:
    found = problems(tmp_path, **keys)
    assert len(found) == 1, found
    return found[0]


# --- the original's sample ---------------------------------------------------------------


def test_config_original_sample_loads_with_three_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for item in DATA.iterdir():
        shutil.copy(item, tmp_path / item.name)
    with caplog.at_level(logging.WARNING):
        config = load_config(tmp_path / "config.json")
    assert config.mode is Mode.SERVER
    assert config.group == "caonima"
    assert config.net == IPv4Network("10.17.0.0/16")
    assert config.id == parse_peer_id("16.1")
    assert config.gateway == parse_peer_id("1.1")
    assert config.forwarders == (parse_peer_id("1.1"), parse_peer_id("1.2"))
    assert config.port == 0
    assert config.ports == (PortConfig("default", "0.0.0.0", 0, None),)
    assert config.mtu == 1408
    assert config.log_level == logging.DEBUG
    assert config.secret_file == tmp_path / "secrets.txt"
    assert config.chnroute == ChnrouteConfig(253, None, tmp_path / "route_data_cidr.txt")
    assert config.local_routes == tuple(
        IPv4Network(n) for n in ("114.114.114.114/32", "10.0.0.0/8", "172.16.0.0/12",
                                 "192.168.0.0/16")
    )
    assert config.pre_up_cmds == config.post_down_cmds == ()
    assert len(config.warnings) == 3
    assert "ack_termination: obsolete key" in config.warnings[0]
    assert "use_dns: obsolete key" in config.warnings[1]
    assert "local_routes: ignored in server mode" in config.warnings[2]
    assert caplog.text.count("obsolete key") == 2 and caplog.text.count("ignored in server mode") == 1
    assert len(read_chnroute(config.chnroute.data)) == 6594


def test_config_original_sample_maps_to_engine_settings(tmp_path: Path) -> None:
    for item in DATA.iterdir():
        shutil.copy(item, tmp_path / item.name)
    config = load_config(tmp_path / "config.json")
    secrets = load_secrets(config.secret_file, config.id)
    settings = config.engine_settings(secrets)
    assert settings.self_id == 0x1001
    assert settings.net == 0x0A110000
    assert settings.group == "caonima"
    assert settings.forwarders == (0x0101, 0x0102)
    assert settings.gateway is None  # server mode: the gateway key is not used
    assert settings.ports == ("default",)
    assert settings.mtu == 1408
    assert settings.peers[0x0101] == PeerSpec(0x0101, bytes.fromhex("ac48f5f6be3cd479c6a3dbd8cfb1dc7f"),
                                              ("192.168.7.11", 10001))
    assert settings.peers[0x1001].addr is None
    assert set(settings.peers) == set(secrets.peers)


# --- defaults and every key --------------------------------------------------------------


def test_config_defaults(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.mode is Mode.CLIENT
    assert config.forwarders == ()
    assert config.port == 0 and config.ports == (PortConfig("default"),)
    assert config.mtu == 1400
    assert config.log_level == logging.INFO
    assert config.secret_file == tmp_path / "secrets.txt"
    assert config.chnroute is None and config.local_routes == ()
    assert config.tun_name == "alpaca0" and config.tun_txqueuelen == 64
    assert config.ttl == 15
    assert (config.probe_interval, config.path_timeout, config.path_lifetime) == (1.0, 3.0, 60.0)
    assert config.dup == DupConfig(DupPolicy.SYN_DNS, 1, 0.1, 4096)
    assert config.pad_small_packets is False
    assert config.replay_window == 32768 and config.inner_source_check is True
    assert config.metrics == MetricsConfig(True, "127.0.0.1", 9586)
    assert config.control_socket == Path("/run/alpaca-tunnel/alpaca0.sock")
    assert config.state_file == Path("/var/lib/alpaca-tunnel/alpaca0.epoch")
    assert config.strict_hooks is False
    assert config.route_table == 253
    assert config.protocol == "v2" and config.peer_protocols == {}
    assert config.warnings == ()
    assert str(config.tun_address) == "10.17.16.1/16"
    assert config.peer_address(parse_peer_id("1.1")) == IPv4Address("10.17.1.1")


def test_config_every_new_key(tmp_path: Path) -> None:
    (tmp_path / "cn.txt").write_text("1.0.1.0/24\n")
    config = load(
        tmp_path,
        mode="CLIENT",
        forwarders=["1.2", "1.3", "3.1"],
        mtu=C.MTU_MAX,
        log_level="WaRnInG",
        secret_file="/etc/x/secrets.txt",
        chnroute={"table": 100, "gateway": "192.168.1.1", "data": "cn.txt"},
        local_routes=["114.114.114.114", "10.0.0.0/8"],
        pre_up_cmds=["echo a"], post_up_cmds=["echo b"],
        pre_down_cmds=["echo c"], post_down_cmds=["echo d"],
        tun_name="at-1",
        ports=[{"name": "wan", "address": "192.0.2.1", "port": 5000, "interface": "eth0"},
               {"name": "lte_2", "port": 5001}],
        ttl=7, probe_interval_ms=250, path_timeout_ms=900, path_lifetime_s=30,
        dup={"policy": "all", "copies": 3, "delay_ms": 40, "queue_max": 10},
        pad_small_packets=True, replay_window=1024, inner_source_check=False,
        metrics={"listen": "0.0.0.0:9000"},
        control_socket="run/ctl.sock", state_file="state/epoch",
        strict_hooks=True, route_table="main",
        protocol="legacy-6.1.2", peer_protocols={"1.2": "v2"},
    )
    assert config.mode is Mode.CLIENT
    assert config.forwarders == (0x0102, 0x0103, 0x0301)
    assert config.mtu == 1436
    assert config.log_level == logging.WARNING
    assert config.secret_file == Path("/etc/x/secrets.txt")
    assert config.chnroute == ChnrouteConfig(100, IPv4Address("192.168.1.1"), tmp_path / "cn.txt")
    assert config.local_routes == (IPv4Network("114.114.114.114/32"), IPv4Network("10.0.0.0/8"))
    assert (config.pre_up_cmds, config.post_up_cmds) == (("echo a",), ("echo b",))
    assert (config.pre_down_cmds, config.post_down_cmds) == (("echo c",), ("echo d",))
    assert config.tun_name == "at-1"
    assert config.ports == (PortConfig("wan", "192.0.2.1", 5000, "eth0"),
                            PortConfig("lte_2", "0.0.0.0", 5001, None))
    assert (config.ttl, config.probe_interval, config.path_timeout) == (7, 0.25, 0.9)
    assert config.path_lifetime == 30.0
    assert config.dup == DupConfig(DupPolicy.ALL, 3, 0.04, 10)
    assert config.pad_small_packets is True and config.replay_window == 1024
    assert config.inner_source_check is False
    assert config.metrics == MetricsConfig(True, "0.0.0.0", 9000)
    assert config.control_socket == tmp_path / "run" / "ctl.sock"
    assert config.state_file == tmp_path / "state" / "epoch"
    assert config.strict_hooks is True and config.route_table == 254
    assert config.protocol == "legacy-6.1.2" and config.peer_protocols == {0x0102: "v2"}


def test_config_tun_txqueuelen_is_read_and_bounded(tmp_path: Path) -> None:
    assert load(tmp_path, tun_txqueuelen=500).tun_txqueuelen == 500
    with pytest.raises(ConfigError) as err:
        load(tmp_path, tun_txqueuelen=1)
    assert "tun_txqueuelen" in str(err.value)


def test_config_offload_and_receive_buffer_are_read_and_bounded(tmp_path: Path) -> None:
    config = load(tmp_path)
    assert config.tun_offload is True and config.udp_rcvbuf_kib == 208
    assert config.tun_read_ahead_kib == 128 and config.realtime_priority == 0
    assert config.udp_priority_lane is True and config.tun_priority_lane is True
    config = load(tmp_path, tun_offload=False, udp_rcvbuf_kib=2048, tun_read_ahead_kib=1024,
                  realtime_priority=10, udp_priority_lane=False, tun_priority_lane=False)
    assert config.tun_offload is False and config.udp_rcvbuf_kib == 2048
    assert config.tun_read_ahead_kib == 1024 and config.realtime_priority == 10
    assert config.udp_priority_lane is False and config.tun_priority_lane is False
    found = problems(tmp_path, tun_offload="yes", udp_rcvbuf_kib=8, tun_read_ahead_kib=-1,
                     realtime_priority=100, udp_priority_lane=1, tun_priority_lane="on")
    assert any("tun_offload" in p for p in found) and any("udp_rcvbuf_kib" in p for p in found)
    assert any("udp_priority_lane" in p for p in found), found
    assert any("tun_priority_lane" in p for p in found), found
    assert any("tun_read_ahead_kib" in p for p in found)
    assert any("realtime_priority: 100 is above the maximum 99" in p for p in found), found


def test_config_an_empty_path_is_a_problem_not_the_default(tmp_path: Path) -> None:
    """"secret_file": "" and the like named no file: each is refused with its key, where it
    quietly became the default."""
    found = problems(tmp_path, secret_file="", state_file="", control_socket="",
                     chnroute={"data": ""})
    for key, default in [("secret_file", "secrets.txt"),
                         ("state_file", "/var/lib/alpaca-tunnel/alpaca0.epoch"),
                         ("control_socket", "/run/alpaca-tunnel/alpaca0.sock"),
                         ("chnroute.data", "route_data_cidr.txt")]:
        assert f'{key}: is empty; give a path, or leave the key out for the default "{default}"' in \
            " ".join(found), key


def test_config_tun_name_sets_default_paths(tmp_path: Path) -> None:
    config = load(tmp_path, tun_name="vpn7")
    assert config.control_socket == Path("/run/alpaca-tunnel/vpn7.sock")
    assert config.state_file == Path("/var/lib/alpaca-tunnel/vpn7.epoch")


def test_config_control_socket_in_a_directory_whose_name_is_not_utf8(tmp_path: Path) -> None:
    """The path's length is measured in the bytes the kernel gets, not re-encoded as UTF-8."""
    directory = tmp_path / os.fsdecode(b"dir_\xff")
    directory.mkdir()
    config = load_config(write(directory, {**BASE, "control_socket": "ctl.sock"}))
    assert config.control_socket == directory / "ctl.sock"


@pytest.mark.parametrize("value", [False, None])
def test_config_metrics_off(tmp_path: Path, value: Any) -> None:
    assert load(tmp_path, metrics=value).metrics.enabled is False


def test_config_metrics_true_and_empty_object_mean_default(tmp_path: Path) -> None:
    assert load(tmp_path, metrics=True).metrics == MetricsConfig()
    assert load(tmp_path, metrics={}).metrics == MetricsConfig()


@pytest.mark.parametrize(("table", "number"), [("default", 253), ("local", 255), ("42", 42),
                                               (4294967295, 4294967295)])
def test_config_route_table_names_and_numbers(tmp_path: Path, table: Any, number: int) -> None:
    assert load(tmp_path, route_table=table).route_table == number


def test_config_route_table_name_from_a_names_file_that_is_not_all_utf8(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Latin-1 comment in /etc/iproute2/rt_tables was a UnicodeDecodeError (a traceback)."""
    names = tmp_path / "rt_tables"
    names.write_bytes(b"255\tlocal\n# r\xe9seau de secours\n100\tbackup\n")
    monkeypatch.setattr(configreader, "RT_TABLES_FILES", (names,))
    assert load(tmp_path, route_table="backup").route_table == 100


def test_config_chnroute_defaults(tmp_path: Path) -> None:
    (tmp_path / "route_data_cidr.txt").write_text("")
    config = load(tmp_path, chnroute={})
    assert config.chnroute == ChnrouteConfig(253, None, tmp_path / "route_data_cidr.txt")


def test_config_server_mode_needs_no_gateway(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, {**BASE, "mode": "server", "gateway": None}))
    assert config.mode is Mode.SERVER and config.gateway is None


@pytest.mark.parametrize("gateway", ["0.0", "", "255.255", "none", 5])
def test_config_server_gateway_that_is_no_peer_id_is_ignored_with_a_warning(
        tmp_path: Path, gateway: Any) -> None:
    """The original checks the gateway in client mode only ("Ignored in server mode"): such a
    server config was refused."""
    config = load(tmp_path, mode="server", gateway=gateway)
    assert config.gateway is None
    assert len(config.warnings) == 1, config.warnings
    assert config.warnings[0].startswith(f"{tmp_path / 'config.json'}: gateway: ")
    assert config.warnings[0].endswith("; ignored in server mode (remove the key)")


def test_config_server_gateway_that_is_a_peer_id_is_kept_and_a_client_one_still_checked(
        tmp_path: Path) -> None:
    assert load(tmp_path, mode="server", gateway="1.1").gateway == parse_peer_id("1.1")
    assert load(tmp_path, mode="server", gateway="16.1").warnings == ()  # its own id: unused
    assert only(tmp_path, gateway="none").endswith('gateway: "none" is not a peer id (expected "A.B",'
                                                   " each 0-255)")


def test_config_port_builds_the_default_port(tmp_path: Path) -> None:
    assert load(tmp_path, port=10001).ports == (PortConfig("default", "0.0.0.0", 10001),)


def test_config_port_zero_with_ports_is_allowed(tmp_path: Path) -> None:
    assert load(tmp_path, port=0, ports=[{"name": "a", "port": 1}]).ports[0].name == "a"


# --- errors --------------------------------------------------------------------------------


def test_config_required_keys(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    assert sorted(problems(tmp_path, {})) == sorted([
        f"{path}: mode: is required",
        f'{path}: id: is required (this node\'s peer id, "A.B")',
        f"{path}: group: is required",
        f"{path}: net: is required",
    ])  # without a mode there is no client-mode gateway problem


def test_config_empty_mode_is_refused_not_taken_for_a_server(tmp_path: Path) -> None:
    """"mode": "" was taken for an absent mode without a word: the node ran as a server."""
    assert only(tmp_path, mode="") == (f'{tmp_path / "config.json"}: mode: "" is not a mode'
                                       ' (expected "server" or "client")')


def test_config_empty_net_is_refused_not_taken_for_10_17(tmp_path: Path) -> None:
    """"net": "" was taken for an absent net without a word: the tunnel became 10.17.0.0/16."""
    assert only(tmp_path, net="") == (f'{tmp_path / "config.json"}: net: "" is not a /16 prefix'
                                      ' (expected "X.Y" such as "10.17", X 1-126 or 128-223, Y 0-255,'
                                      " no leading zeros)")


@pytest.mark.parametrize(("group", "expected"), [
    (5, "group: 5 is not a string"),
    (None, "group: is required"),
    ("a\u0000b", 'group: "a\\u0000b" contains a NUL byte or a character that is not valid text'
                 " (a lone surrogate)"),
    ("", "group: is empty (use the same group name on every node)"),
])
def test_config_group_has_one_problem_each(tmp_path: Path, group: Any, expected: str) -> None:
    """A group that was not a string, null or not text was also said to be empty."""
    assert only(tmp_path, group=group) == f"{tmp_path / 'config.json'}: {expected}"


def test_config_client_needs_gateway(tmp_path: Path) -> None:
    assert "gateway: is required in client mode" in only(tmp_path, gateway=None)


def test_config_invalid_json_is_located(tmp_path: Path) -> None:
    found = problems(tmp_path, '{\n  "mode": "client",\n  "mtu": 1400,,\n}')
    assert found == [f"{tmp_path / 'config.json'}:3:15: invalid JSON: Expecting property name"
                     " enclosed in double quotes"]


@pytest.mark.parametrize(("text", "expected"), [
    ('{\n  // the server\n  "mode": "server"\n}',
     ":2:3: invalid JSON: a comment (JSON has no comments: remove it)"),
    ('{\n  "mode": "server", # the role\n}',
     ":2:21: invalid JSON: a comment (JSON has no comments: remove it)"),
    ('/* config */ {"mode": "server"}', ":1:1: invalid JSON: a comment (JSON has no comments: remove it)"),
    ('{\n  "mode": "server",\n}',
     ':2:19: invalid JSON: a comma before "}" (JSON allows none there: remove the trailing comma)'),
    ('{"forwarders": ["1.2", ]}',
     ':1:22: invalid JSON: a comma before "]" (JSON allows none there: remove the trailing comma)'),
    ("{'mode': 'server'}",
     ':1:2: invalid JSON: a single quote (JSON strings take double quotes: write "...")'),
    ('{"mode": "server",, "mtu": 1}',
     ":1:19: invalid JSON: Expecting property name enclosed in double quotes"),
])
def test_config_invalid_json_names_the_fix_of_a_common_slip(
        tmp_path: Path, text: str, expected: str) -> None:
    """A comment, a trailing comma or single quotes were told as "Expecting property name
    enclosed in double quotes" or "Expecting value", at the place after the slip."""
    assert problems(tmp_path, text) == [f"{tmp_path / 'config.json'}{expected}"]


@pytest.mark.parametrize("text", ["", " \r\n\t\n"])
def test_config_empty_file_is_named_empty(tmp_path: Path, text: str) -> None:
    """An empty config was "1:1: invalid JSON: Expecting value"."""
    assert problems(tmp_path, text) == [
        f'{tmp_path / "config.json"}: the file is empty: write the config in it (a JSON object'
        ' {"mode": ..., "group": ..., ...}), or point -c at the JSON config file']


@pytest.mark.parametrize(("number", "expected"), [
    ("1e400", f"mtu: 1e400 is above the maximum {C.MTU_MAX} ("),
    ("-1e400", f"mtu: -1e400 is below the minimum {C.MTU_MIN}"),
    ("1" * 400 + ".0", f"mtu: a number of 402 characters is above the maximum {C.MTU_MAX} ("),
])
def test_config_number_too_large_for_a_float_is_above_the_maximum(
        tmp_path: Path, number: str, expected: str) -> None:
    """json.loads makes 1e400 Infinity: it was "Infinity is not an integer"."""
    found = problems(tmp_path, json.dumps(BASE)[:-1] + f', "mtu": {number}}}')
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'config.json'}: {expected}"), found


@pytest.mark.parametrize("key", ["route_table", "tun_name"])
def test_config_number_too_large_for_a_float_is_shown_as_written(tmp_path: Path, key: str) -> None:
    found = problems(tmp_path, json.dumps(BASE)[:-1] + f', "{key}": 1e400}}')
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'config.json'}: {key}: 1e400 is not a"), found


def test_config_problems_are_located_in_a_file_of_carriage_returns(tmp_path: Path) -> None:
    """A config saved with old Mac line ends (\r only) had every problem on line 1."""
    found = problems(tmp_path, '{\r  "mode": "client",\r\n  "mtu": 1400,,\r}')
    assert found == [f"{tmp_path / 'config.json'}:3:15: invalid JSON: Expecting property name"
                     " enclosed in double quotes"]
    path = tmp_path / "config.json"
    path.write_bytes(b'{\r  "mode": "client",\r  "group": "caf\xe9"\r}')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}:3: byte 16 of the line is not UTF-8 text; save the config file as UTF-8"
    ]


def test_config_duplicate_json_key(tmp_path: Path) -> None:
    found = problems(tmp_path, '{"mtu": 1400, "mtu": 1300}')
    assert found == [f'{tmp_path / "config.json"}: invalid JSON: key "mtu" is given twice']


def test_config_keys_and_paths_that_do_not_print_are_escaped(tmp_path: Path) -> None:
    """A duplicate key and a chnroute.data path holding a newline and an escape sequence were
    printed raw: the problem took two lines and the terminal turned red."""
    dup = problems(tmp_path, '{"mode": "server", "x\\n\\u001b[31mOK": 1, "x\\n\\u001b[31mOK": 2}')
    assert dup == [f'{tmp_path / "config.json"}: invalid JSON: key "x\\n\\u001b[31mOK" is given twice']
    data = only(tmp_path, chnroute={"data": "r\n\x1b[31mx"})
    assert data == (f"{tmp_path / 'config.json'}: chnroute.data: {tmp_path}/r\\n\\u001b[31mx does not"
                    " exist (give a file with one a.b.c.d/len a line)")


def test_config_top_must_be_object(tmp_path: Path) -> None:
    assert "expected a JSON object" in problems(tmp_path, "[1, 2]")[0]


def test_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.json")
    assert info.value.problems == [
        f"{tmp_path / 'nope.json'}: cannot read the config file: No such file or directory;"
        " point -c at the JSON config file"
    ]


def test_config_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(BASE).encode())
    assert load_config(path).group == "lab"


def test_config_bytes_that_are_not_utf8_are_located(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_bytes('{\n  "mode": "client",\n  "group": "caf\xe9"\n}'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}:3: byte 16 of the line is not UTF-8 text; save the config file as UTF-8"
    ]


@pytest.mark.parametrize("keys,expected", [
    ({"mtu": "1" * 5000}, f"mtu: an integer of 5000 digits is above the maximum {C.MTU_MAX} ("),
    ({"ports": [{"name": "wan", "port": "-" + "9" * 4301}]},
     "ports[0].port: a negative integer of 4301 digits is below the minimum 0"),
    ({"forwarders": ["9" * 200]},
     'forwarders[0]: an integer of 200 digits is not a peer id (expected "A.B", each 0-255)'),
    ({"route_table": "4" * 10_000},
     "route_table: an integer of 10000 digits is not a table number (expected 1-4294967295)"),
    ({"metrics": ["7" * 5000]},
     'metrics: ["an integer of 5000 digits"] is not {"listen": "host:port"} or false'),
    ({"pre_up_cmds": ["true", "7" * 5000]},
     "pre_up_cmds[1]: an integer of 5000 digits is not a non-empty string"),
])
def test_config_integer_of_thousands_of_digits_names_its_key(
    tmp_path: Path, keys: dict[str, Any], expected: str
) -> None:
    """Python refuses to convert integers of more than 4300 digits: the key is still named."""
    text = json.dumps({**BASE, **keys})
    for digits in (value for value in re.findall(r'"(-?[0-9]{100,})"', text)):
        text = text.replace(f'"{digits}"', digits)  # the number itself, not a string of it
    found = problems(tmp_path, text)
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'config.json'}: {expected}"), found


def test_config_file_at_the_size_limit_loads_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    limit = 4 * 1024 * 1024
    text = json.dumps(BASE)
    path = write(tmp_path, text + " " * (limit - len(text)))
    assert load_config(path).group == "lab"
    path = write(tmp_path, text + " " * (limit - len(text) + 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [
        f"{path}: the config file is larger than 4 MiB, the most it may be (is it the right"
        " file?); point -c at the JSON config file"
    ]


def test_config_endless_file_is_refused_not_read_to_the_end() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Path("/dev/zero"))
    assert info.value.problems[0].startswith("/dev/zero: the config file is larger than 4 MiB")


def test_config_fifo_without_a_writer_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    outcome: list[ConfigError] = []

    def load_into_outcome() -> None:
        try:
            load_config(fifo)
        except ConfigError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=load_into_outcome, daemon=True)
    reader.start()
    reader.join(5)
    try:
        assert not reader.is_alive(), "load_config waits for a writer"
        assert str(outcome[0]).startswith(f"{fifo}: the file is empty: ")
    finally:
        if reader.is_alive():  # release the blocked reader
            os.close(os.open(fifo, os.O_WRONLY))
            reader.join(5)


def test_config_unknown_key_suggests_nearest(tmp_path: Path) -> None:
    assert only(tmp_path, mtuu=1400).endswith('mtuu: unknown key (did you mean "mtu"?)')
    assert only(tmp_path, forwarder=["1.2"]).endswith('(did you mean "forwarders"?)')
    text = only(tmp_path, zzzzzz=1)
    assert "zzzzzz: unknown key (valid keys: mode, group, net" in text


def test_config_unknown_nested_key(tmp_path: Path) -> None:
    text = only(tmp_path, dup={"polcy": "all"})
    assert text.endswith('dup.polcy: unknown key (did you mean "policy"?)')


def test_config_messages_from_the_brief(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    assert only(tmp_path, forwarders=["1.2", "1.x"]) == (
        f'{path}: forwarders[1]: "1.x" is not a peer id (expected "A.B", each 0-255)'
    )
    assert only(tmp_path, mtu=2000) == (
        f"{path}: mtu: 2000 is above the maximum 1436"
        " (36 bytes of every 1472-byte datagram are header and tag)"
    )


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"mode": "router"}, 'mode: "router" is not a mode (expected "server" or "client")'),
        ({"mode": 1}, "mode: 1 is not a string"),
        ({"group": ""}, "group: is empty"),
        ({"net": "10"}, 'net: "10" is not a /16 prefix'),
        ({"net": "0.5"}, 'net: "0.5" is not a /16 prefix (expected "X.Y" such as "10.17",'
                         " X 1-126 or 128-223, Y 0-255, no leading zeros)"),
        ({"net": "10.256"}, 'net: "10.256" is not a /16 prefix'),
        ({"id": "0.1"}, "id: 0.1 is reserved (use 0.2 to 255.254)"),
        ({"id": 257}, 'id: 257 is not a peer id (expected "A.B", each 0-255)'),
        ({"gateway": "16.1"}, "gateway: 16.1 is this node's own id"),
        ({"gateway": "255.255"}, "gateway: 255.255 is reserved"),
        ({"forwarders": "1.2"}, 'forwarders: "1.2" is not a list'),
        ({"forwarders": ["1.2", "1.3", "1.4", "1.5"]}, "forwarders: 4 entries, at most 3 allowed"),
        ({"forwarders": ["16.1"]}, "forwarders[0]: 16.1 is this node's own id"),
        ({"forwarders": ["1.2", "1.2"]}, "forwarders[1]: 1.2 is listed twice"),
        ({"forwarders": ["0.0"]}, "forwarders[0]: 0.0 is reserved"),
        ({"port": 65535}, "port: 65535 is above the maximum 65534"),
        ({"port": -1}, "port: -1 is below the minimum 0"),
        ({"port": "1"}, 'port: "1" is not an integer (expected 0-65534)'),
        ({"port": True}, "port: true is not an integer"),
        ({"mtu": 575}, "mtu: 575 is below the minimum 576"),
        ({"mtu": 1440}, "mtu: 1440 is above the maximum 1436 (36 bytes"),
        ({"log_level": "loud"}, 'log_level: "loud" is not a level (expected one of critical,'),
        ({"secret_file": 5}, "secret_file: 5 is not a string"),
        ({"chnroute": []}, "chnroute: [] is not an object {...}"),
        ({"chnroute": {"data": "missing.txt"}}, "missing.txt does not exist"),
        ({"local_routes": ["10.0.0.1/8"]},
         'local_routes[0]: "10.0.0.1/8" has host bits set (did you mean "10.0.0.0/8"?)'),
        ({"local_routes": ["example.com"]}, 'local_routes[0]: "example.com" is not an IPv4'),
        ({"local_routes": [5]}, "local_routes[0]: 5 is not an IPv4 address or prefix"),
        ({"pre_up_cmds": ["ok", ""]}, 'pre_up_cmds[1]: "" is not a non-empty string'),
        ({"post_down_cmds": "echo"}, 'post_down_cmds: "echo" is not a list'),
        ({"tun_name": "a" * 16}, "tun_name: \"" + "a" * 16 + "\" is not a TUN device name"),
        ({"tun_name": "a/b"}, 'tun_name: "a/b" is not a TUN device name'),
        ({"tun_name": ""}, 'tun_name: "" is not a TUN device name'),
        ({"tun_name": "a@b"}, 'tun_name: "a@b" is not a TUN device name (1-15 of A-Z a-z 0-9 _ -'),
        ({"tun_name": "-ab"}, 'tun_name: "-ab" is not a TUN device name'),
        ({"tun_name": "alp.0"}, 'tun_name: "alp.0" is not a TUN device name'),
        ({"net": "\u0661\u0660.17"}, "net: "),
        ({"local_routes": ["0.0.0.0/0"]},
         "local_routes[0]: 0.0.0.0/0 would route every destination outside the tunnel"),
        ({"pre_up_cmds": ["echo a\u0000b"]}, "pre_up_cmds[0]: "),
        ({"post_up_cmds": ["echo \ud800"]}, "post_up_cmds[0]: "),
        ({"ttl": 0}, "ttl: 0 is below the minimum 1"),
        ({"ttl": 16}, "ttl: 16 is above the maximum 15"),
        ({"probe_interval_ms": 49}, "probe_interval_ms: 49 is below the minimum 50"),
        ({"probe_interval_ms": 60001}, "probe_interval_ms: 60001 is above the maximum 60000"),
        ({"path_timeout_ms": 1000}, "path_timeout_ms: 1000 must be above probe_interval_ms (1000)"),
        ({"probe_interval_ms": 5000},
         "probe_interval_ms: 5000 must be below path_timeout_ms (3000 by default;"),
        ({"control_socket": "/run/a\u0000b.sock"}, "control_socket: "),
        ({"path_lifetime_s": 0}, "path_lifetime_s: 0 is below the minimum 1"),
        ({"path_lifetime_s": 2}, "path_lifetime_s: 2 s is shorter than path_timeout_ms (3000)"),
        ({"dup": "all"}, 'dup: "all" is not an object'),
        ({"dup": {"policy": "some"}}, 'dup.policy: "some" is not a policy'),
        ({"dup": {"copies": 4}}, "dup.copies: 4 is above the maximum 3"),
        ({"dup": {"delay_ms": 2001}}, "dup.delay_ms: 2001 is above the maximum 2000"),
        ({"dup": {"queue_max": 0}}, "dup.queue_max: 0 is below the minimum 1"),
        ({"pad_small_packets": 1}, "pad_small_packets: 1 is not true or false"),
        ({"inner_source_check": "yes"}, 'inner_source_check: "yes" is not true or false'),
        ({"replay_window": 3000}, "replay_window: 3000 is not a power of two"),
        ({"replay_window": 512}, "replay_window: 512 is below the minimum 1024"),
        ({"replay_window": 1 << 21}, "replay_window: 2097152 is above the maximum 1048576"),
        ({"metrics": "on"}, 'metrics: "on" is not {"listen": "host:port"} or false'),
        ({"metrics": {"listen": "localhost:9586"}}, 'metrics.listen: "localhost:9586" is not'),
        ({"metrics": {"listen": "127.0.0.1:0"}}, 'metrics.listen: "127.0.0.1:0" is not IPv4:port'),
        ({"metrics": {"port": 1}}, "metrics.port: unknown key"),
        ({"control_socket": "/" + "x" * 120}, "is longer than 107 bytes"),
        ({"strict_hooks": "yes"}, 'strict_hooks: "yes" is not true or false'),
        ({"route_table": 0}, "route_table: 0 is not a table number (expected 1-4294967295)"),
        ({"route_table": "no-such-table-name"}, 'route_table: unknown table name "no-such-table'),
        ({"route_table": 1.5}, "route_table: 1.5 is not a table name or number"),
        ({"route_table": "unspec"}, 'route_table: table "unspec" is 0 (expected 1-4294967295)'),
        ({"metrics": {"listen": "127.0.0.1:9\u00b2"}}, "metrics.listen: "),
        # more than 4300 digits in a string: int() refuses them (a traceback before)
        ({"route_table": "4" * 5000}, 'route_table: "' + "4" * 55 + '..." is not a table number'),
        ({"chnroute": {"data": "a" * 300}}, "cannot be checked: File name too long (give a file"),
        ({"net": "127.0"}, 'net: "127.0" is a loopback network'),
        ({"net": "224.0"}, 'net: "224.0" is a multicast network'),
        ({"net": "255.255"}, 'net: "255.255" is a reserved network'),
        ({"tun_name": "all"}, 'tun_name: "all" names every device in the kernel\'s settings'),
        ({"tun_name": "default"}, 'tun_name: "default" names every device'),
        ({"metrics": {"listen": "127.0.0.1:" + "9" * 5000}},
         'metrics.listen: "127.0.0.1:' + "9" * 45 + '..." is not IPv4:port'),
        ({"protocol": "v3"}, 'protocol: "v3" is not a protocol (expected one of v2, legacy-6.1.2)'),
        ({"peer_protocols": {"1.x": "v2"}}, 'peer_protocols.1.x: "1.x" is not a peer id'),
        ({"peer_protocols": {"1.2": "v9"}}, 'peer_protocols.1.2: "v9" is not a protocol'),
        ({"peer_protocols": ["v2"]}, "peer_protocols: [\"v2\"] is not an object"),
        ({"ports": []}, "ports: is empty"),
        ({"ports": [{"name": n} for n in "abcde"]}, "ports: 5 entries, at most 4 allowed"),
        ({"ports": [5]}, "ports[0]: 5 is not an object"),
        ({"ports": [{"port": 1}]}, "ports[0].name: is required"),
        ({"ports": [{"name": "WAN"}]}, 'ports[0].name: "WAN" is not a port name'),
        ({"ports": [{"name": "a", "address": "::"}]}, 'ports[0].address: "::" is not an IPv4'),
        ({"ports": [{"name": "a", "port": 70000}]}, "ports[0].port: 70000 is above the maximum"),
        ({"ports": [{"name": "a", "interface": 3}]}, "ports[0].interface: 3 is not an interface"),
        ({"ports": [{"name": "a", "prot": 1}]}, 'ports[0].prot: unknown key (did you mean "port"?)'),
        ({"ports": [{"name": "a"}, {"name": "a"}]}, 'ports[1].name: "a" is used twice'),
        ({"ports": [{"name": "a", "port": 7}, {"name": "b", "port": 7}]},
         "ports[1]: 0.0.0.0:7 overlaps port a (0.0.0.0:7): two sockets cannot share a port"),
        ({"ports": [{"name": "a", "port": 7}, {"name": "b", "port": 7, "address": "192.0.2.1"}]},
         "ports[1]: 192.0.2.1:7 overlaps port a (0.0.0.0:7)"),
        ({"ports": [{"name": "a", "port": 7, "interface": "eth0"}, {"name": "b", "port": 7}]},
         "ports[1]: 0.0.0.0:7 overlaps port a (0.0.0.0:7 on eth0)"),
        ({"port": 5000, "ports": [{"name": "a"}]}, 'port: give either "port" or "ports"'),
        # leading zeros: ipaddress refuses them (a traceback before)
        ({"net": "10.017"}, 'net: "10.017" is not a /16 prefix'),
        ({"net": "01.1"}, 'net: "01.1" is not a /16 prefix'),
        # the same peer spelt twice: the last one won silently before
        ({"peer_protocols": {"1.1": "v2", "01.001": "legacy-6.1.2"}},
         "peer_protocols.01.001: 1.1 is listed twice"),
        # addresses of no single host: accepted before
        ({"chnroute": {"gateway": "0.0.0.0", "data": CN}},
         'chnroute.gateway: "0.0.0.0" is the unspecified'),
        ({"chnroute": {"gateway": "224.0.0.1", "data": CN}},
         'chnroute.gateway: "224.0.0.1" is a multicast'),
        ({"chnroute": {"gateway": "255.255.255.255", "data": CN}},
         "is a multicast or broadcast address"),
        ({"metrics": {"listen": "224.0.0.1:9586"}}, 'metrics.listen: "224.0.0.1" is a multicast'),
        ({"ports": [{"name": "a", "address": "255.255.255.255"}]},
         'ports[0].address: "255.255.255.255" is a multicast or broadcast address'),
        # nothing beside it can be named after it (a traceback in cleanup before)
        ({"control_socket": "/"}, 'control_socket: "/" names no file'),
        ({"control_socket": "/tmp"}, 'control_socket: "/tmp" exists and is not a socket'),
        # a control character reaches the message escaped, never as itself
        ({"mode": "client\u001b[2J"}, 'mode: "client\\u001b[2J" is not a mode'),
        ({"dup": {"policy": "x" * 1000}}, 'dup.policy: "' + "x" * 55 + '..." is not a policy'),
    ],
)
def test_config_error(tmp_path: Path, keys: dict[str, Any], expected: str) -> None:
    text = only(tmp_path, **keys)
    assert text.startswith(f"{tmp_path / 'config.json'}: ")
    assert expected in text


def test_config_empty_port_name_is_refused(tmp_path: Path) -> None:
    """"name": "" passed as a name: a port named nothing in the metrics and the engine."""
    assert only(tmp_path, ports=[{"name": ""}]) == (f'{tmp_path / "config.json"}: ports[0].name: ""'
                                                    " is not a port name (1-15 of a-z 0-9 _ -)")


def test_config_ports_without_a_usable_name_are_not_said_to_share_one(tmp_path: Path) -> None:
    """Two ports whose names were missing or not strings were also said to use "" twice."""
    path = tmp_path / "config.json"
    assert problems(tmp_path, ports=[{"port": 1}, {"name": 5, "port": 2}]) == [
        f"{path}: ports[0].name: is required",
        f"{path}: ports[1].name: 5 is not a string",
    ]


def test_config_peer_protocols_naming_the_own_id_is_refused_as_forwarders_do(tmp_path: Path) -> None:
    """An entry for the node itself was dropped without a word (a node speaks to no one as
    itself); a forwarder naming it is refused the same way."""
    path = tmp_path / "config.json"
    assert problems(tmp_path, peer_protocols={"16.1": "legacy-6.1.2"}, forwarders=["16.1"]) == [
        f"{path}: forwarders[0]: 16.1 is this node's own id",
        f'{path}: peer_protocols.16.1: 16.1 is this node\'s own id; remove the entry ("protocol"'
        " sets the one this node speaks to every peer)",
    ]


def test_config_ports_that_the_kernel_can_bind_side_by_side_are_accepted(tmp_path: Path) -> None:
    config = load(tmp_path, ports=[
        {"name": "a", "port": 7, "interface": "eth0"}, {"name": "b", "port": 7, "interface": "eth1"},
        {"name": "c", "port": 8, "address": "192.0.2.1"}, {"name": "d", "port": 8, "address": "192.0.2.2"}])
    assert [p.name for p in config.ports] == ["a", "b", "c", "d"]


def test_config_ports_null_means_the_single_port(tmp_path: Path) -> None:
    config = load(tmp_path, ports=None, port=5000)
    assert [(p.name, p.port) for p in config.ports] == [("default", 5000)]


def test_config_text_that_no_file_or_terminal_takes_is_an_error(tmp_path: Path) -> None:
    found = problems(tmp_path, group="lab\ud800")
    assert found[0].endswith('group: "lab\\ud800" contains a NUL byte or a character that is not'
                             " valid text (a lone surrogate)"), found


def test_config_collects_every_problem(tmp_path: Path) -> None:
    found = problems(tmp_path, mtu=2000, ttl=0, forwarders=["x"], dup={"copies": 9}, bogus=1)
    assert len(found) == 5
    assert [p.split(": ")[1] for p in found] == ["bogus", "forwarders[0]", "mtu", "ttl",
                                                 "dup.copies"]


def test_config_obsolete_keys_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="alpaca.config"):
        config = load(tmp_path, ack_termination=False, use_dns=[])
    assert len(config.warnings) == 2
    assert all("obsolete key, ignored" in w and "remove it" in w for w in config.warnings)
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]


def test_config_local_routes_of_a_server_warn_that_they_are_ignored(tmp_path: Path) -> None:
    """The original's sample server config lists local_routes; they were dropped without a word."""
    config = load(tmp_path, mode="server", local_routes=["10.0.0.0/8"])
    assert config.warnings == (f"{tmp_path / 'config.json'}: local_routes: ignored in server mode (they"
                               " keep prefixes out of a client's tunnel; a server routes nothing into it)",)


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load(tmp_path)
    with pytest.raises(AttributeError):
        config.mtu = 1000  # type: ignore[misc]


# --- engine_settings and the cross-check with secrets ------------------------------------


def secrets_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "secrets.txt"
    path.write_text(text)
    path.chmod(0o600)


def test_engine_settings_maps_every_value(tmp_path: Path) -> None:
    secrets_file(tmp_path, f"16.1 {KEY}\n1.1 {KEY} 192.0.2.1 null 5000\n1.2 {KEY} localhost"
                           " null 5001\n1.3 {KEY} no-such-host.invalid null 5002\n".replace(
                               "{KEY}", KEY))
    config = load(
        tmp_path, forwarders=["1.2", "1.3"], ports=[{"name": "a"}, {"name": "b", "port": 9}],
        mtu=1300, ttl=9, probe_interval_ms=200, path_timeout_ms=700, path_lifetime_s=20,
        dup={"policy": "none", "copies": 2, "delay_ms": 30, "queue_max": 7},
        pad_small_packets=True, replay_window=2048, inner_source_check=False,
    )
    settings = config.engine_settings(load_secrets(config.secret_file, config.id))
    assert settings.self_id == 0x1001 and settings.net == 0x0A110000 and settings.group == "lab"
    assert settings.gateway == 0x0101 and settings.forwarders == (0x0102, 0x0103)
    assert settings.ports == ("a", "b")
    assert (settings.mtu, settings.ttl) == (1300, 9)
    assert (settings.probe_interval, settings.path_timeout, settings.path_lifetime) == (
        0.2, 0.7, 20.0)
    assert (settings.dup_policy, settings.dup_copies, settings.dup_delay,
            settings.dup_queue_max) == (DupPolicy.NONE, 2, 0.03, 7)
    assert settings.pad_small is True and settings.replay_window == 2048
    assert settings.inner_source_check is False
    assert settings.peers[0x0101].addr == ("192.0.2.1", 5000)
    assert settings.peers[0x0102].addr == ("127.0.0.1", 5001)
    assert settings.peers[0x0103].addr is None  # hostname did not resolve: learned later
    assert settings.peers[0x1001].key == bytes.fromhex(KEY)


def test_engine_settings_requires_named_peers_in_secrets(tmp_path: Path) -> None:
    secrets_file(tmp_path, f"16.1 {KEY}\n1.3 {KEY}\n")
    config = load(tmp_path, forwarders=["1.2", "1.3"])
    secrets = load_secrets(config.secret_file, config.id)
    with pytest.raises(ConfigError) as info:
        config.engine_settings(secrets)
    path = tmp_path / "secrets.txt"
    assert info.value.problems == [
        f"{path}: the gateway 1.1 has no line (add 1.1 with its key)",
        f"{path}: forwarders[0] 1.2 has no line (add 1.2 with its key)",
        f"{path}: forwarders[1] 1.3 has no address (give its peer_ip and peer_port)",
    ]


def test_engine_settings_checks_own_id(tmp_path: Path) -> None:
    secrets_file(tmp_path, f"16.2 {KEY}\n1.1 {KEY}\n")
    config = load(tmp_path)
    secrets = load_secrets(config.secret_file, parse_peer_id("16.2"))
    with pytest.raises(ConfigError, match=r"the own id 16\.1 has no line"):
        config.engine_settings(secrets)


# --- chnroute data -----------------------------------------------------------------------


def test_read_chnroute_skips_comments_and_default(tmp_path: Path) -> None:
    path = tmp_path / "cn.txt"
    path.write_text("# comment\n\n1.0.1.0/24\n0.0.0.0/0\n8.8.8.8  # host\n")
    assert read_chnroute(path) == (IPv4Network("1.0.1.0/24"), IPv4Network("8.8.8.8/32"))


def test_read_chnroute_errors(tmp_path: Path) -> None:
    path = tmp_path / "cn.txt"
    path.write_text("1.0.1.0/24\n1.0.1.1/24\nnope\n")
    with pytest.raises(ConfigError) as info:
        read_chnroute(path)
    assert [p.split(": ")[0] for p in info.value.problems] == [f"{path}:2", f"{path}:3"]
    with pytest.raises(ConfigError, match="cannot read the chnroute data"):
        read_chnroute(tmp_path / "absent.txt")


def test_read_chnroute_lines_end_at_newlines_only(tmp_path: Path) -> None:
    # A form feed in a comment ended the line before: "page 2" became a bad prefix.
    path = tmp_path / "cn.txt"
    path.write_text("# list \f page 2\n1.0.1.0/24\r\nnope\n")
    with pytest.raises(ConfigError) as info:
        read_chnroute(path)
    assert info.value.problems == [f'{path}:3: "nope" is not an IPv4 address or prefix (e.g. "10.0.0.0/8")']


def test_read_chnroute_lines_may_end_at_a_carriage_return(tmp_path: Path) -> None:
    """\r alone (an old Mac's line end) did not end a line: "1.0.1.0/24\rnope" was one bad
    prefix on line 1."""
    path = tmp_path / "cn.txt"
    path.write_text("# list\r1.0.1.0/24\rnope\r\n1.0.2.0/24\n")
    with pytest.raises(ConfigError) as info:
        read_chnroute(path)
    assert info.value.problems == [f'{path}:3: "nope" is not an IPv4 address or prefix (e.g. "10.0.0.0/8")']
    path.write_text("# list\r1.0.1.0/24\r\n1.0.2.0/24\r")
    assert read_chnroute(path) == (IPv4Network("1.0.1.0/24"), IPv4Network("1.0.2.0/24"))


def test_read_chnroute_problems_are_listed_up_to_twenty(tmp_path: Path) -> None:
    """A file of 100,000 bad lines printed 100,000 problems."""
    path = tmp_path / "cn.txt"
    path.write_text("1.0.1.0/24\n" + "nope\n" * 100_000)
    with pytest.raises(ConfigError) as info:
        read_chnroute(path)
    found = info.value.problems
    assert len(found) == 21
    assert found[0] == f'{path}:2: "nope" is not an IPv4 address or prefix (e.g. "10.0.0.0/8")'
    assert found[19].startswith(f"{path}:21: ")
    assert found[20] == f"{path}: ... and 99980 more problems, not listed"
    path.write_text("nope\n" * 20)
    with pytest.raises(ConfigError) as info:
        read_chnroute(path)
    assert len(info.value.problems) == 20 and info.value.problems[-1].startswith(f"{path}:20: ")


def test_config_unknown_keys_are_listed_up_to_twenty(tmp_path: Path) -> None:
    found = problems(tmp_path, **{f"junk{i}": 1 for i in range(1000)})
    assert len(found) == 21
    assert found[-1].endswith(": the top level: 980 more unknown keys not listed")


def test_read_chnroute_larger_than_the_limit_is_refused(tmp_path: Path) -> None:
    limit = 8 * 1024 * 1024
    path = tmp_path / "cn.txt"
    line = "1.0.1.0/24\n"
    path.write_text(line + "#" * (limit - len(line) - 1) + "\n")
    assert path.stat().st_size == limit
    assert read_chnroute(path) == (IPv4Network("1.0.1.0/24"),)
    assert chnroute.load_file(path) == [IPv4Network("1.0.1.0/24")]
    with path.open("a") as more:
        more.write("\n")
    expected = [f"{path}: the chnroute data is larger than 8 MiB, the most it may be (is it the"
                " right file?); point chnroute.data at a list of prefixes, one a.b.c.d/len a line"]
    for reader in (read_chnroute, chnroute.load_file):
        with pytest.raises(ConfigError) as info:
            reader(path)
        assert info.value.problems == expected


def test_read_chnroute_bytes_that_are_not_utf8_are_located(tmp_path: Path) -> None:
    path = tmp_path / "cn.txt"
    path.write_bytes(b"1.0.1.0/24\n1.0.2.0/23 # \xff\n")
    expected = [f"{path}:2: byte 14 of the line is not UTF-8 text; save the chnroute data as UTF-8"]
    for reader in (read_chnroute, chnroute.load_file):
        with pytest.raises(ConfigError) as info:
            reader(path)
        assert info.value.problems == expected


# --- the shipped examples ----------------------------------------------------------------

EXAMPLES = Path(__file__).parent.parent / "config"


def with_fresh_keys(text: str) -> str:
    """``text`` with each placeholder key of secrets.example replaced by a random key, as the
    comment at its top asks."""
    fresh, count = re.subn(r"\b([0-9a-f]{2})\1{31}\b", lambda _: os.urandom(32).hex(), text)
    assert count == 4
    return fresh


@pytest.mark.parametrize("name", ["server.json", "forwarder.json", "client.json"])
def test_config_examples_load_with_example_secrets(tmp_path: Path, name: str) -> None:
    shutil.copy(EXAMPLES / name, tmp_path / "config.json")
    secrets_file(tmp_path, with_fresh_keys((EXAMPLES / "secrets.example").read_text()))
    config = load_config(tmp_path / "config.json")
    assert config.warnings == ()
    settings = config.engine_settings(load_secrets(config.secret_file, config.id))
    assert settings.self_id == config.id


def test_config_client_example_shape() -> None:
    config = load_config(EXAMPLES / "client.json")
    assert config.mode is Mode.CLIENT and config.id == parse_peer_id("16.1")
    assert config.gateway == parse_peer_id("1.1")
    assert config.forwarders == (parse_peer_id("1.2"), parse_peer_id("1.3"))
    assert [p.name for p in config.ports] == ["wan", "lte"]
    assert config.dup.policy is DupPolicy.SYN_DNS


def test_reload_names_every_changed_key_that_needs_a_restart(tmp_path: Path) -> None:
    from alpaca.daemon import RESTART_KEYS, restart_keys_changed

    running = load(tmp_path)
    assert all(hasattr(running, key) for key in RESTART_KEYS)
    loaded = load(tmp_path, udp_rcvbuf_kib=64, tun_offload=False, gateway="1.2", ttl=5,
                  realtime_priority=10, forwarders=["1.3"], pre_down_cmds=["true"],
                  local_routes=["203.0.113.0/24"])
    assert restart_keys_changed(running, loaded) == [
        "tun_offload", "udp_rcvbuf_kib", "pre_down_cmds"]
    assert restart_keys_changed(running, load(tmp_path)) == []
