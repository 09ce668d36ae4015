"""alpaca.secrets: the secrets file format, every error path, and that keys never leak."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import pytest

from alpaca import secrets as secrets_mod
from alpaca.core.ids import parse_peer_id
from alpaca.errors import ConfigError
from alpaca.secrets import PeerSecret, load_secrets

DATA = Path(__file__).parent / "data" / "original-sample"
KEY16 = "1f5c6281e4e3e0db7c57b74d2103e706"
KEY32 = "ebee546b1ac8588f6a6a85d6dc898a09cbe91e97f7c49a5061b6ba16222a9e80"
SELF = parse_peer_id("16.1")
HELP = "expected 32 or 64 hex digits 0-9 a-f A-F and nothing else; make one with `alpaca-tunnel genkey`"


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secrets.txt"
    path.write_text(text)
    path.chmod(mode)
    return path


def problems(path: Path, self_id: int = SELF) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_secrets(path, self_id)
    return info.value.problems


def test_secrets_a_port_of_thousands_of_digits_is_a_located_error(tmp_path: Path) -> None:
    """int() refuses more than 4300 digits: it was a traceback."""
    path = write(tmp_path, f"16.1 {KEY16}\n1.2 {KEY16} 10.0.0.1 null {'9' * 5000}\n")
    assert problems(path) == [f'{path}:2: peer_port: "<5000 characters>" is not a port (expected 1-65535)']


@pytest.mark.parametrize("address", ["0.0.0.0", "255.255.255.255", "224.0.0.1"])
def test_secrets_a_peer_ip_that_is_no_host_is_an_error(tmp_path: Path, address: str) -> None:
    """They were taken, and got a host route via the uplink."""
    path = write(tmp_path, f"16.1 {KEY16}\n1.2 {KEY16} {address} null 5000\n")
    assert problems(path) == [f'{path}:2: peer_ip: "{address}" is not the address of one host (give the '
                              "peer's unicast IPv4 address or hostname, or null)"]


def test_secrets_original_sample_loads(tmp_path: Path) -> None:
    path = write(tmp_path, (DATA / "secrets.txt").read_text())
    secrets = load_secrets(path, SELF)
    assert sorted(secrets.peers) == sorted(
        parse_peer_id(t) for t in ("1.1", "1.2", "3.1", "3.2", "16.1", "16.2")
    )
    gateway = secrets.peers[parse_peer_id("1.1")]
    assert (gateway.address, gateway.port, gateway.hostname) == ("192.168.7.11", 10001, None)
    assert gateway.addr == ("192.168.7.11", 10001)
    own = secrets.peers[SELF]
    assert own.key == bytes.fromhex(KEY16) and own.address is None and own.port == 0
    assert own.addr is None
    assert secrets.path == path


def test_secrets_keys_are_hex_decoded_16_and_32_bytes(tmp_path: Path) -> None:
    path = write(tmp_path, f"16.1 {KEY16}\n1.1 {KEY32.upper()} 10.0.0.1 null 5000\n")
    secrets = load_secrets(path, SELF)
    assert secrets.peers[SELF].key == bytes.fromhex(KEY16)
    assert secrets.peers[parse_peer_id("1.1")].key == bytes.fromhex(KEY32)


def test_secrets_comments_blank_lines_and_null(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"# header\n\n   \n16.1 {KEY16} # trailing comment\n1.1 {KEY16} null null null\n",
    )
    secrets = load_secrets(path, SELF)
    assert secrets.peers[parse_peer_id("1.1")].addr is None
    assert len(secrets.peers) == 2


def test_secrets_hostname_is_resolved_and_kept(tmp_path: Path) -> None:
    path = write(tmp_path, f"16.1 {KEY16}\n1.1 {KEY16} localhost null 4000\n")
    peer = load_secrets(path, SELF).peers[parse_peer_id("1.1")]
    assert peer.address == "127.0.0.1"
    assert peer.hostname == "localhost"
    assert peer.addr == ("127.0.0.1", 4000)


def test_secrets_unresolvable_hostname_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, f"16.1 {KEY16}\n1.1 {KEY16} no-such-host.invalid null 4000\n")
    with caplog.at_level(logging.WARNING):
        secrets = load_secrets(path, SELF)
    peer = secrets.peers[parse_peer_id("1.1")]
    assert peer.address is None and peer.hostname == "no-such-host.invalid"
    assert peer.addr is None
    assert any("does not resolve" in w for w in secrets.warnings)
    assert "does not resolve" in caplog.text


def test_secrets_reload_keeps_the_last_address_of_a_name_that_stops_resolving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, f"16.1 {KEY16}\n1.1 {KEY16} localhost null 4000\n"
                           f"1.2 {KEY16} localhost null 4000\n")
    running = load_secrets(path, SELF)
    assert running.peers[parse_peer_id("1.1")].address == "127.0.0.1"
    names_looked_up(monkeypatch)  # the name server is down now
    write(tmp_path, f"16.1 {KEY16}\n1.1 {KEY16} localhost null 4000\n"
                    f"1.2 {KEY16} elsewhere.example null 4000\n")
    reloaded = load_secrets(path, SELF, running)
    assert reloaded.peers[parse_peer_id("1.1")].addr == ("127.0.0.1", 4000)
    assert reloaded.peers[parse_peer_id("1.2")].addr is None  # renamed: the old address is not its
    assert [w.split(": ", 1)[1] for w in reloaded.warnings] == [
        "hostname localhost of peer 1.1 does not resolve now; it keeps its last address 127.0.0.1",
        "hostname elsewhere.example of peer 1.2 does not resolve; the peer has no static address"
        " until it does",
    ]


def names_looked_up(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The hostnames the secrets loader asks a resolver for (none resolves), as it asks."""
    asked: list[str] = []

    def recording_resolve(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
        asked.extend(names)
        return {}

    monkeypatch.setattr(secrets_mod, "lookup_ipv4", recording_resolve)
    return asked


def test_secrets_key_in_the_wrong_column_is_neither_shown_nor_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line without its id column puts the key where the id goes; one without its key
    column, an address where the key goes; one with two keys, a key where the address goes."""
    asked = names_looked_up(monkeypatch)
    text = (f"16.1 {KEY16}\n{KEY32} 192.168.7.11 null 10001\n1.2 {KEY16} {KEY32} null 10002\n"
            f"1.3 {KEY16} localhost null 10003\n")
    found = problems(write(tmp_path, text))
    assert not any(KEY32 in p or KEY32[:16] in p for p in found), found
    assert any(p.endswith(":2: peer_id: \"<64 characters, perhaps a key: not shown>\" is not a peer id"
                          ' (expected "A.B"; is the peer_id column missing?)') for p in found), found
    assert any(":3: peer_ip: \"<64 characters, perhaps a key: not shown>\"" in p for p in found), found
    assert asked == [], "nothing is resolved before the whole file is valid"


def test_secrets_non_ascii_digits_are_an_error_not_a_traceback(tmp_path: Path) -> None:
    found = problems(write(tmp_path, f"16.1 {KEY16}\n1.\u00b2 {KEY16}\n1.1 {KEY16} 10.0.0.1 null 1\u00b2\n"))
    assert any(':2: peer_id: "1.\u00b2" is not a peer id' in p for p in found), found
    assert any(':3: peer_port: "1\u00b2" is not a port' in p for p in found), found


def test_secrets_ip6_column_warns_once_naming_every_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The warning named the first line only: on the original's sample, 13 of 13, 14 and 15."""
    path = write(tmp_path, (DATA / "secrets.txt").read_text())
    with caplog.at_level(logging.WARNING):
        secrets = load_secrets(path, SELF)
    assert secrets.warnings == (f"{path}: peer_ip6 is ignored on lines 13, 14, 15 (the underlay is"
                                " IPv4 only)",)
    assert caplog.text.count("peer_ip6") == 1
    path = write(tmp_path, f"16.1 {KEY16}\n1.1 {KEY16} 10.0.0.1 2001::6 1\n")
    assert load_secrets(path, SELF).warnings == (
        f"{path}: peer_ip6 is ignored on line 2 (the underlay is IPv4 only)",)


def test_secrets_ip6_column_names_twenty_lines_and_counts_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path, f"16.1 {KEY16}\n" + "".join(
        f"1.{n} {KEY16} 10.0.0.1 2001::6 1\n" for n in range(1, 26)))
    lines = ", ".join(str(n) for n in range(2, 22))
    assert load_secrets(path, SELF).warnings == (
        f"{path}: peer_ip6 is ignored on lines {lines} and 5 more (the underlay is IPv4 only)",)


def test_secrets_group_readable_file_warns_with_chmod_fix(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, f"16.1 {KEY16}\n", mode=0o644)
    with caplog.at_level(logging.WARNING):
        secrets = load_secrets(path, SELF)
    assert len(secrets.warnings) == 1
    assert f"chmod 600 {path}" in secrets.warnings[0]
    assert "readable by group or others" in caplog.text


def test_secrets_private_file_has_no_warning(tmp_path: Path) -> None:
    assert load_secrets(write(tmp_path, f"16.1 {KEY16}\n"), SELF).warnings == ()


def test_secrets_bad_key_is_located_and_not_echoed(tmp_path: Path) -> None:
    secret_like = KEY16[:-1]  # 31 characters: most of a real key
    path = write(tmp_path, f"16.1 {KEY16}\n1.1 {secret_like} 10.0.0.1 null 1\n1.2 zz\n")
    found = problems(path)
    assert found == [
        f"{path}:2: peer_key of peer 1.1: 31 characters, 31 hex digits, 1 too few for a 16-byte key"
        f" ({HELP})",
        f"{path}:3: peer_key of peer 1.2: 2 characters, characters 1, 2 are not hex digits ({HELP})",
    ]
    assert secret_like not in "\n".join(found)


def test_secrets_missing_key(tmp_path: Path) -> None:
    path = write(tmp_path, f"16.1 {KEY16}\n1.1\n")
    assert problems(path) == [f"{path}:2: peer_key of peer 1.1: missing ({HELP})"]


def test_secrets_a_port_in_the_peer_ip6_column_is_named_with_the_fix(tmp_path: Path) -> None:
    """``1.1 <key> 192.0.2.1 10001`` (no peer_ip6 column): "peer_port is missing" although a
    port was given; it landed in the ignored peer_ip6 column."""
    path = write(tmp_path, f"16.1 {KEY16}\n1.1 {KEY16} 192.0.2.1 10001\n1.x {KEY16} 192.0.2.2 10002\n"
                           f"1.3 {KEY16[:8]} {KEY16[8:]} 10003\n")
    found = problems(path)
    assert found[0] == (f"{path}:2: peer_port is missing: 10001 is in the peer_ip6 column"
                        " (write null before the port: 192.0.2.1 null 10001)")
    assert any('"1.x" is not a peer id' in p for p in found)  # the line's other problems too
    assert any("10002 is in the peer_ip6 column" in p for p in found)
    split_key = [p for p in found if p.startswith(f"{path}:4:")]
    assert split_key and not any("peer_ip6 column" in p for p in split_key)  # a key cut in two
    assert KEY16[8:] not in "\n".join(found)


def test_secrets_every_problem_is_collected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "\n".join(
            [
                f"16.1 {KEY16}",
                f"1.x {KEY16}",  # 2 bad id
                f"0.1 {KEY16}",  # 3 reserved
                f"255.255 {KEY16}",  # 4 reserved
                f"0.0 {KEY16}",  # 5 reserved
                f"16.1 {KEY16}",  # 6 duplicate
                f"1.1 {KEY16} 10.0.0.1 null 0",  # 7 port 0 with an address
                f"1.2 {KEY16} 10.0.0.1 null 70000",  # 8 port too big
                f"1.3 {KEY16} 10.0.0.1",  # 9 port missing
                f"1.4 {KEY16} ::1 null 5",  # 10 IPv6 in peer_ip
                f"1.5 {KEY16} bad_host! null 5",  # 11 not a hostname
                f"1.6 {KEY16} 10.0.0.1 null 5 extra",  # 12 too many columns
                f"1.7 {KEY16} 300.1.2.3 null 5",  # 13 neither address nor hostname
            ]
        ),
    )
    found = problems(path)
    lines = [int(p.split(":")[1]) for p in found]
    assert lines == list(range(2, 14))
    text = "\n".join(found)
    assert '"1.x" is not a peer id' in text
    assert "0.1 is reserved" in text and "255.255 is reserved" in text and "0.0 is reserved" in text
    assert "listed again (first on line 1)" in text
    assert 'peer_port: "0" is not a port (expected 1-65535)' in text
    assert 'peer_port: "70000"' in text
    assert "peer_port is missing" in text
    assert "is an IPv6 address" in text
    assert '"bad_host!" is neither an IPv4 address nor a hostname' in text
    assert "6 columns, expected at most 5" in text
    assert '"300.1.2.3" is neither' in text
    assert KEY16 not in text


def test_secrets_problems_are_listed_up_to_twenty(tmp_path: Path) -> None:
    """A file of 100,000 bad lines (the wrong file, say) printed 200,000 problems."""
    path = write(tmp_path, "zz\n" * 100_000)
    found = problems(path)
    assert found[:2] == [f'{path}:1: peer_id: "zz" is not a peer id (expected "A.B", each 0-255)',
                         f"{path}:1: peer_key of peer zz: missing ({HELP})"]
    assert found[20:] == [f"{path}: ... and 199980 more problems, not listed",
                          f"{path}: the own id 16.1 is missing (add a line for 16.1 with this node's key)"]


def test_secrets_own_id_missing(tmp_path: Path) -> None:
    path = write(tmp_path, f"1.1 {KEY16} 10.0.0.1 null 5000\n")
    assert problems(path) == [
        f"{path}: the own id 16.1 is missing (add a line for 16.1 with this node's key)"
    ]


def test_secrets_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    found = problems(path)
    assert found == [f"{path}: cannot read the secrets file: No such file or directory; point"
                     " secret_file at the secrets file (one line per peer)"]


def test_secrets_port_without_address_is_kept_with_a_warning(tmp_path: Path) -> None:
    """The port of a line without an address says nothing where to send: a warning names it."""
    path = write(tmp_path, f"16.1 {KEY16} null null 5000\n1.2 {KEY32} null null null\n")
    secrets = load_secrets(path, SELF)
    peer = secrets.peers[SELF]
    assert peer.port == 5000 and peer.addr is None
    assert secrets.warnings == (f"{path}:1: peer_port 5000 of peer 16.1 is ignored without a"
                                " peer_ip (give its address too, or null)",)


def test_secrets_warnings_of_lines_are_listed_up_to_twenty(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """3,810 lines with a port but no address logged 3,810 warnings at each load; the one
    peer_ip6 warning still comes, before them."""
    lines = [f"{a}.{b} {KEY16} null 2001::{a} 5000" for a in range(1, 16) for b in range(1, 255)]
    path = write(tmp_path, f"16.1 {KEY16}\n" + "\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING):
        secrets = load_secrets(path, SELF)
    assert len(secrets.warnings) == 22 and len(caplog.records) == 22
    assert secrets.warnings[0].startswith(f"{path}: peer_ip6 is ignored on lines 2, 3, ")
    assert secrets.warnings[1] == (f"{path}:2: peer_port 5000 of peer 1.1 is ignored without a"
                                   " peer_ip (give its address too, or null)")
    assert secrets.warnings[20].startswith(f"{path}:21: peer_port 5000 of peer 1.20 ")
    assert secrets.warnings[21] == f"{path}: ... and 3790 more warnings, not listed"


def test_peer_secret_repr_masks_key() -> None:
    key = bytes.fromhex(KEY32)
    peer = PeerSecret(parse_peer_id("1.1"), key, "10.0.0.1", None, 5000)
    text = repr(peer) + str(peer)
    assert KEY32 not in text and key.hex() not in text and repr(key) not in text
    assert "key=<32 bytes hidden>" in text
    assert "peer_id=1.1" in text and "10.0.0.1" in text


def test_secrets_repr_and_logs_never_show_keys(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, (DATA / "secrets.txt").read_text(), mode=0o644)
    with caplog.at_level(logging.DEBUG):
        secrets = load_secrets(path, SELF)
    shown = repr(secrets) + caplog.text + "\n".join(secrets.warnings)
    for peer in secrets.peers.values():
        assert peer.key.hex() not in shown
        assert repr(peer.key) not in shown
    assert KEY16 not in shown


# --- malformed keys: described, never echoed ------------------------------------------------


def key_parts(key: str) -> list[str]:
    """Every 8-character run of ``key`` (4 bytes), in either case: none may reach a message."""
    runs = [key[i:i + 8] for i in range(len(key) - 7)]
    return runs + [run.upper() for run in runs] + [run.lower() for run in runs]


@pytest.mark.parametrize("written,fault", [
    (f"0x{KEY16}", "34 characters, starts with 0x (write the hex digits only)"),
    (f"0X{KEY32}", "66 characters, starts with 0x (write the hex digits only)"),
    (KEY16 + "a", "33 characters, 33 hex digits, 1 too many for a 16-byte key"),
    (KEY32[:-1], "63 characters, 63 hex digits, 1 too few for a 32-byte key"),
    (KEY16[:16] + "g" + KEY16[17:], "32 characters, character 17 is not a hex digit"),
    (KEY16[:-1] + "\u00e9", "32 characters, character 32 is not a hex digit"),
    (f"0x{KEY16[:9]}zz{KEY16[11:]}", "34 characters, starts with 0x (write the hex digits only)"
                                     " and characters 12, 13 are not hex digits"),
])
def test_secrets_malformed_key_column_is_described_without_its_value(
    tmp_path: Path, written: str, fault: str
) -> None:
    path = write(tmp_path, f"16.1 {KEY16}\n1.1 {written} 10.0.0.1 null 5000\n")
    found = problems(path)
    assert found == [f"{path}:2: peer_key of peer 1.1: {fault} ({HELP})"]
    assert not any(part in found[0] for part in key_parts(written)), found


def test_secrets_key_material_in_any_column_is_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key written with 0x or a typo, or split by a space, lands in the id, address or port
    column of a malformed line: no message shows it, and nothing is sent to a resolver. A short
    hex hostname (docker names a container by 12 hex digits) is still a hostname."""
    asked = names_looked_up(monkeypatch)
    typo = KEY32[:20] + "g" + KEY32[21:]
    text = "\n".join([
        f"16.1 {KEY16}",
        f"0x{KEY32} 192.168.7.11 null 10001",  # 2: the id column is missing
        f"1.2 {KEY16} {typo} null 10002",  # 3: a second, mistyped key in peer_ip
        f"1.3 {KEY16} 10.0.0.3 null 0x{KEY16}",  # 4: a key in peer_port
        f"1.4 {KEY16[:8]} {KEY16[8:16]} {KEY16[16:24]} {KEY16[24:]}",  # 5: a key split in four
        f"{typo}",  # 6: a lone mistyped key
        f"1.5 {KEY16} 3f4e5d6c7b8a null 4000",  # 7: valid
    ])
    found = problems(write(tmp_path, text))
    shown = "\n".join(found)
    for key in (KEY16, KEY32, typo):
        assert not any(part in shown for part in key_parts(key)), found
    assert [int(p.split(":")[1]) for p in found] == [2, 2, 3, 4, 5, 5, 6, 6]
    assert ':2: peer_id: "<66 characters, perhaps a key: not shown>" is not a peer id' in shown
    assert ':3: peer_ip: "<64 characters, perhaps a key: not shown>" is neither' in shown
    assert ':4: peer_port: "<34 characters, perhaps a key: not shown>" is not a port' in shown
    assert ':5: peer_port: "<8 characters, perhaps a key: not shown>" is not a port' in shown
    assert ":6: peer_key of peer <64 characters, perhaps a key: not shown>: missing" in shown
    assert asked == []


def test_secrets_mistyped_key_in_peer_ip_is_refused_not_looked_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key with a typo is a valid hostname: it must not reach a resolver or a warning."""
    asked = names_looked_up(monkeypatch)
    typo = KEY16[:5] + "k" + KEY16[6:]
    path = write(tmp_path, f"16.1 {KEY16}\n1.1 {KEY32} {typo} null 5000\n")
    assert problems(path) == [
        f'{path}:2: peer_ip: "<32 characters, perhaps a key: not shown>" is neither an IPv4'
        " address nor a hostname (or null)"
    ]
    assert asked == []


# --- placeholder keys ---------------------------------------------------------------------


@pytest.mark.parametrize("placeholder", [
    "11" * 32, "2222" * 16, "16" * 32, "00" * 16, "ff" * 16, "AB" * 32,
])
def test_secrets_placeholder_key_is_refused(tmp_path: Path, placeholder: str) -> None:
    """Refused: a key whose bytes are all the same; kept: one with a single byte different."""
    almost = placeholder[:-1] + ("1" if placeholder[-1] != "1" else "2")
    path = write(tmp_path, f"16.1 {KEY16}\n1.1 {placeholder} 10.0.0.1 null 5000\n1.2 {almost}\n")
    size = len(placeholder) // 2
    assert problems(path) == [
        f"{path}:2: peer_key of peer 1.1: a placeholder key (all {size} bytes the same);"
        " replace it with the output of `alpaca-tunnel genkey`"
    ]


def test_secrets_shipped_example_is_refused_until_its_keys_are_replaced(tmp_path: Path) -> None:
    example = Path(__file__).parent.parent / "config" / "secrets.example"
    path = write(tmp_path, example.read_text())
    found = problems(path)
    assert len(found) == 4, found
    assert all("a placeholder key" in p and "`alpaca-tunnel genkey`" in p for p in found), found
    assert [p.split(": ")[1] for p in found] == [f"peer_key of peer {peer}" for peer in
                                                 ("1.1", "1.2", "1.3", "16.1")]


# --- size, BOM and encoding ---------------------------------------------------------------


def test_secrets_file_at_the_size_limit_loads_and_one_byte_more_is_refused(tmp_path: Path) -> None:
    line = f"16.1 {KEY16}\n"
    limit = 16 * 1024 * 1024
    path = write(tmp_path, line + "#" * (limit - len(line) - 1) + "\n")
    assert path.stat().st_size == limit
    assert sorted(load_secrets(path, SELF).peers) == [SELF]
    path = write(tmp_path, line + "#" * (limit - len(line)) + "\n")
    assert problems(path) == [
        f"{path}: the secrets file is larger than 16 MiB, the most it may be (is it the right"
        " file?); point secret_file at the secrets file (one line per peer)"
    ]


def test_secrets_endless_file_is_refused_not_read_to_the_end() -> None:
    found = problems(Path("/dev/zero"))
    assert found == [
        "/dev/zero: the secrets file is larger than 16 MiB, the most it may be (is it the right"
        " file?); point secret_file at the secrets file (one line per peer)"
    ]


def test_secrets_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "secrets.txt"
    path.write_bytes(b"\xef\xbb\xbf" + f"16.1 {KEY16}\r\n1.1 {KEY32} 10.0.0.1 null 5000\r\n".encode())
    path.chmod(0o600)
    assert sorted(load_secrets(path, SELF).peers) == sorted([SELF, parse_peer_id("1.1")])


def test_secrets_bytes_that_are_not_utf8_are_located(tmp_path: Path) -> None:
    path = tmp_path / "secrets.txt"
    path.write_bytes(f"16.1 {KEY16}\n# comment\n1.1 {KEY32} caf\xe9.example null 1\n".encode("latin-1"))
    path.chmod(0o600)
    assert problems(path) == [
        f"{path}:3: byte 73 of the line is not UTF-8 text; save the secrets file as UTF-8"
    ]


def test_secrets_key_inside_a_longer_column_is_never_echoed(tmp_path: Path) -> None:
    """A line separated by commas or semicolons is one column; a key inside a URL; a key cut
    so that a few digits land in the port column: the key's digits are left out of every
    message, the rest of the text is still shown to locate the problem."""
    text = "\n".join([
        f"16.1,{KEY16},192.168.7.11,null,10001",
        f"1.2;{KEY32};null;null;null",
        f"1.3 {KEY16} https://h.example/?k={KEY16} null 10003",
        f"1.4 {KEY32[:58]} 10.0.0.4 null {KEY32[58:]}x",
    ])
    found = problems(write(tmp_path, text))
    shown = "\n".join(found)
    for key in (KEY16, KEY32, KEY32[58:]):
        assert not any(part in shown for part in key_parts(key)), found
    assert "16.1,<32 hex digits: not shown>,192.168.7.11,null,10001" in shown
    assert "https://h.example/?k=<32 hex digits: not shown>" in shown
    assert '"<6 hex digits: not shown>x" is not a port' in shown


#: A key written by ``wg genkey`` (base64, 32 bytes).
B64KEY = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="


def test_secrets_key_digits_that_pass_as_a_hostname_or_a_port_are_not_shown(tmp_path: Path) -> None:
    """15 hex digits of a key cut by a stray space pass as a hostname, in the hint for a
    port in the peer_ip6 column; a key's first 10 decimal digits, as a port out of range."""
    text = (f"16.1 {KEY16}\n1.1 {KEY16[:17]} {KEY16[17:]} 10001\n"
            f"1.2 {KEY16} 192.0.2.2 null 2021921265\n1.3 {KEY16} 192.0.2.3 null 123456\n"
            f"1.4 {KEY16} 192.0.2.4 null 70000\n")
    found = problems(write(tmp_path, text))
    shown = "\n".join(found)
    assert not any(part in shown for part in key_parts(KEY16)), found
    assert "2021921265" not in shown and "123456" not in shown
    assert ("(write null before the port: <15 characters, perhaps a key: not shown> null 10001)"
            in shown), found
    assert ':3: peer_port: "<10 characters, perhaps a key: not shown>" is not a port' in shown
    assert ':4: peer_port: "<6 hex digits: not shown>" is not a port' in shown
    assert ':5: peer_port: "70000" is not a port' in shown


def test_secrets_a_hostname_that_may_be_key_digits_is_not_shown_in_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """8 to 15 hex digits pass as a hostname: "does not resolve" named them; the words and
    numbers of an ordinary name are still shown."""
    names_looked_up(monkeypatch)
    names = ["f9f17127c28aafd", "gw1.example.net", "cafe01.example.net", "ip-10-0-0-1.internal",
             "deadbeef00.example.net"]
    lines = [f"1.{i} {KEY16} {name} null 4000" for i, name in enumerate(names, start=1)]
    secrets = load_secrets(write(tmp_path, "\n".join([f"16.1 {KEY16}", *lines])), SELF)
    assert [w.split(": ", 1)[1].split(" of peer")[0] for w in secrets.warnings] == [
        "hostname <15 characters, perhaps a key: not shown>", "hostname gw1.example.net",
        "hostname cafe01.example.net", "hostname ip-10-0-0-1.internal",
        "hostname <10 characters, perhaps a key: not shown>.example.net",
    ]


def test_secrets_a_base64_key_in_any_column_is_never_echoed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key written in base64 (``wg genkey``) where the id, the address or a whole line goes
    is shown as its length, and is not looked up as a hostname; a long lower-case name is
    still one."""
    asked = names_looked_up(monkeypatch)
    no_padding = B64KEY.replace("+", "x").rstrip("=")  # a valid hostname
    text = "\n".join([
        f"16.1 {KEY16}",
        f"{B64KEY} {KEY16}",  # 2: the id column
        f"1.2 {KEY16} {no_padding} null 4000",  # 3: peer_ip
        f"1.3,{B64KEY},192.0.2.3",  # 4: one column
    ])
    found = problems(write(tmp_path, text))
    shown = "\n".join(found)
    for key in (B64KEY, no_padding):
        assert not any(key[i:i + 8] in shown for i in range(len(key) - 7)), found
    assert ':2: peer_id: "<44 characters, perhaps a key: not shown>" is not a peer id' in shown
    assert ':3: peer_ip: "<43 characters, perhaps a key: not shown>" is neither' in shown
    assert "1.3,<44 base64 characters: not shown>,192.0.2.3" in shown
    assert asked == []
    mixed = write(tmp_path, f"16.1 {KEY16}\n1.1 {KEY16} MyCompanyGateway01 null 4000\n")
    assert load_secrets(mixed, SELF).peers[parse_peer_id("1.1")].hostname == "MyCompanyGateway01"
    long_name = write(tmp_path, f"16.1 {KEY16}\n1.1 {KEY16} verylongservername.example null 4000\n")
    assert load_secrets(long_name, SELF).peers[parse_peer_id("1.1")].hostname == (
        "verylongservername.example")
    assert "hostname verylongservername.example of peer 1.1" in load_secrets(long_name, SELF).warnings[0]


def test_secrets_a_name_with_several_addresses_keeps_the_one_in_use_across_reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round-robin name answers in another order at each reload: the peer keeps the
    address it has while the name lists it (it used to take the first answer each time);
    answers that cannot be a host's address (0.0.0.0, multicast, broadcast) are skipped."""
    answers = {"gw.example": ("0.0.0.0", "224.0.0.1", "192.0.2.2", "192.0.2.1")}
    monkeypatch.setattr(secrets_mod, "lookup_ipv4", lambda names: {n: answers.get(n, ()) for n in names})
    path = write(tmp_path, f"1.1 {KEY16} gw.example null 5000\n16.1 {KEY32}\n")
    gw = parse_peer_id("1.1")
    first = load_secrets(path, parse_peer_id("16.1"))
    assert first.peers[gw].address == "192.0.2.2"
    answers["gw.example"] = ("192.0.2.1", "192.0.2.2")
    again = load_secrets(path, parse_peer_id("16.1"), previous=first)
    assert again.peers[gw].address == "192.0.2.2"
    answers["gw.example"] = ("192.0.2.9",)
    moved = load_secrets(path, parse_peer_id("16.1"), previous=again)
    assert moved.peers[gw].address == "192.0.2.9"


def test_secrets_lines_end_at_newlines_only(tmp_path: Path) -> None:
    # A line separator, form feed or \x1c inside a comment ended the line before: the rest
    # of the comment was read as a peer and every later line number was off by one.
    path = write(tmp_path, f"# Ivan\u2028s laptop\f moved\x1c\n16.1 {KEY16}\r\n1.2 {KEY16}\n3.3 bad\n")
    found = problems(path)
    assert len(found) == 1 and found[0].startswith(f"{path}:4: peer_key of peer 3.3:")


def test_secrets_lines_may_end_at_a_carriage_return(tmp_path: Path) -> None:
    """A file saved with old Mac line ends (\r only) was one line of many columns, and the own
    id was said to be missing."""
    text = f"# peers\r16.1 {KEY16}\r1.2 {KEY16} 10.0.0.1 null 5\r\n3.3 bad\n"
    found = problems(write(tmp_path, text))
    assert len(found) == 1 and found[0].startswith(f"{tmp_path / 'secrets.txt'}:4: peer_key of peer 3.3:")
    secrets = load_secrets(write(tmp_path, text.replace("3.3 bad", "")), SELF)
    assert secrets.peers[parse_peer_id("1.2")].addr == ("10.0.0.1", 5)


def test_secrets_a_port_with_leading_zeros_is_its_value(tmp_path: Path) -> None:
    path = write(tmp_path, f"16.1 {KEY16}\n1.2 {KEY16} 10.0.0.1 null 000080\n")
    assert load_secrets(path, SELF).peers[parse_peer_id("1.2")].port == 80


def test_secrets_a_path_that_does_not_print_is_escaped(tmp_path: Path) -> None:
    """secret_file written "s\\n\\u001b[32m..." in the JSON: each message took two lines."""
    missing = tmp_path / "s\n\x1b[32mall good"
    assert problems(missing) == [f"{tmp_path}/s\\n\\u001b[32mall good: cannot read the secrets"
                                 " file: No such file or directory; point secret_file at the"
                                 " secrets file (one line per peer)"]
    path = tmp_path / "s\nx"
    path.write_text(f"16.1 {KEY16}\n1.1 bad\n")
    path.chmod(0o600)
    assert [p.split(": ")[0] for p in problems(path)] == [f"{tmp_path}/s\\nx:2"]


def test_secrets_a_control_character_reaches_the_message_escaped(tmp_path: Path) -> None:
    path = write(tmp_path, f"16.1 {KEY16}\n\x1b]0;x\x07\x1b[2J {KEY16}\n")
    found = problems(path)
    assert "\x1b" not in found[0] and "\\u001b]0;x\\u0007\\u001b[2J" in found[0]
