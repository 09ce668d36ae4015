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
KEY32 = "ab" * 32
SELF = parse_peer_id("16.1")


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secrets.txt"
    path.write_text(text)
    path.chmod(mode)
    return path


def problems(path: Path, self_id: int = SELF) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_secrets(path, self_id)
    return info.value.problems


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


def test_secrets_key_in_the_wrong_column_is_neither_shown_nor_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line without its id column puts the key where the id goes; one without its key
    column, an address where the key goes; one with two keys, a key where the address goes."""
    asked: list[str] = []

    def recording_resolve(names: Iterable[str]) -> dict[str, str | None]:
        asked.extend(names)
        return {}

    monkeypatch.setattr(secrets_mod, "resolve_ipv4", recording_resolve)
    text = (f"16.1 {KEY16}\n{KEY32} 192.168.7.11 null 10001\n1.2 {KEY16} {KEY32} null 10002\n"
            f"1.3 {KEY16} localhost null 10003\n")
    found = problems(write(tmp_path, text))
    assert not any(KEY32 in p or KEY32[:16] in p for p in found), found
    assert any(p.endswith(":2: peer_id: \"<64 hex characters, perhaps a key: not shown>\" is not a peer id"
                          ' (expected "A.B"; is the peer_id column missing?)') for p in found), found
    assert any(":3: peer_ip: \"<64 hex characters, perhaps a key: not shown>\"" in p for p in found), found
    assert asked == [], "nothing is resolved before the whole file is valid"


def test_secrets_non_ascii_digits_are_an_error_not_a_traceback(tmp_path: Path) -> None:
    found = problems(write(tmp_path, f"16.1 {KEY16}\n1.\u00b2 {KEY16}\n1.1 {KEY16} 10.0.0.1 null 1\u00b2\n"))
    assert any(':2: peer_id: "1.\u00b2" is not a peer id' in p for p in found), found
    assert any(':3: peer_port: "1\u00b2" is not a port' in p for p in found), found


def test_secrets_ip6_column_warns_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(
        tmp_path,
        f"16.1 {KEY16}\n1.1 {KEY16} 10.0.0.1 2001::6 1\n1.2 {KEY16} 10.0.0.2 2001::7 2\n",
    )
    with caplog.at_level(logging.WARNING):
        secrets = load_secrets(path, SELF)
    assert [w for w in secrets.warnings if "peer_ip6" in w] == [
        f"{path}:2: peer_ip6 is ignored (the underlay is IPv4 only)"
    ]
    assert caplog.text.count("peer_ip6") == 1


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
        f'{path}:2: the key of peer 1.1 is not a key (31 characters; expected 32 or 64 hex'
        ' characters; make one with "alpaca-tunnel genkey")',
        f'{path}:3: the key of peer 1.2 is not a key (2 characters; expected 32 or 64 hex'
        ' characters; make one with "alpaca-tunnel genkey")',
    ]
    assert secret_like not in "\n".join(found)


def test_secrets_missing_key(tmp_path: Path) -> None:
    path = write(tmp_path, f"16.1 {KEY16}\n1.1\n")
    assert problems(path) == [
        f'{path}:2: peer 1.1 has no key (expected 32 or 64 hex characters;'
        ' make one with "alpaca-tunnel genkey")'
    ]


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


def test_secrets_own_id_missing(tmp_path: Path) -> None:
    path = write(tmp_path, f"1.1 {KEY16} 10.0.0.1 null 5000\n")
    assert problems(path) == [
        f"{path}: the own id 16.1 is missing (add a line for 16.1 with this node's key)"
    ]


def test_secrets_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.txt"
    found = problems(path)
    assert found == [f"{path}: cannot read the secrets file: No such file or directory"]


def test_secrets_port_without_address_is_kept(tmp_path: Path) -> None:
    path = write(tmp_path, f"16.1 {KEY16} null null 5000\n")
    peer = load_secrets(path, SELF).peers[SELF]
    assert peer.port == 5000 and peer.addr is None


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
