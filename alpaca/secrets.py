"""The secrets file: one line per peer with its id, key and optional static address.

Format (the original's, whitespace separated, ``#`` starts a comment, ``null`` means empty)::

    # peer_id  peer_key                            peer_ip        peer_ip6  peer_port
    1.1        ac48f5f6be3cd479c6a3dbd8cfb1dc7f    192.168.7.11   null      10001
    16.1       1f5c6281e4e3e0db7c57b74d2103e706

Keys are hex: 32 hex characters give 16 bytes, 64 give 32 bytes (``alpaca-tunnel genkey``).
Unlike the original, which used the first 16 ASCII characters, the whole key is decoded. A key
whose bytes are all the same (``1111...``, ``0000...``: the placeholders of secrets.example) is
refused. The file is UTF-8 (a leading BOM is dropped), at most SECRETS_MAX_BYTES.
``peer_ip`` is an IPv4 literal or a hostname (resolved here, kept for re-resolution);
``peer_ip6`` is accepted and ignored (the underlay is IPv4 only).

Invariant: a key never appears in a log line, an error message or a repr.
Called once at start-up (and on reload) from the control greenlet; pure apart from DNS.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import stat
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from alpaca.configreader import (
    SECRETS_MAX_BYTES,
    first_listed,
    named_in_line,
    read_text_file,
    shown_path,
    text_lines,
)
from alpaca.core.ids import (
    check_usable,
    digits_value,
    format_peer_id,
    is_digits,
    parse_peer_id,
    printable,
)
from alpaca.errors import ConfigError
from alpaca.hostnames import moved_to, one_host
from alpaca.io.dns import lookup_ipv4
from alpaca.paths import FileIdentity, file_identity

log = logging.getLogger(__name__)

_HEX_KEY = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{64}")
#: The shortest text that may be part of a key, characters: 8 hex digits are 4 bytes of a key,
#: enough to keep out of every message.
_KEY_PART_MIN = 8
#: The shortest key-like text refused as a hostname, characters: shorter hex names are real
#: hostnames (docker names a container by 12 hex digits).
_KEY_AS_HOST_MIN = 16
#: The shortest run of hex digits left out of any text a message quotes: no peer id, port or
#: IPv4 address has one; 6 digits are 3 bytes of a key.
_HEX_RUN_MIN = 6
_HEX_RUN = re.compile(rf"(?:0[xX])?[0-9a-fA-F]{{{_HEX_RUN_MIN},}}")
#: The shortest base64 text taken for (part of) a key, characters: 12 bytes of a key written
#: the way ``wg genkey`` or ``openssl rand -base64`` write one.
_BASE64_RUN_MIN = 16
_BASE64_RUN = re.compile(rf"[A-Za-z0-9+/]{{{_BASE64_RUN_MIN},}}={{0,2}}")
#: The shortest base64 text refused as a hostname, characters: a name such as
#: ``MyCompanyGateway01`` mixes cases too; a key's 44 characters (or 43 without ``=``) do not
#: pass for one.
_BASE64_AS_HOST_MIN = 32
#: The longest peer_port shown as written, characters: a port has at most 5 digits, and a
#: longer number may be the decimal digits that start a key.
_PORT_SHOWN_MAX = 5
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_KEY_HELP = ("expected 32 or 64 hex digits 0-9 a-f A-F and nothing else;"
             " make one with `alpaca-tunnel genkey`")
_PLACEHOLDER_FIX = "replace it with the output of `alpaca-tunnel genkey`"
_COLUMNS = 5
#: lines parsed between two turns of the caller's ``turn`` (about 9 ms)
TURN_LINES = 500


@dataclass(frozen=True, slots=True)
class PeerSecret:
    """One line of the secrets file."""

    peer_id: int
    """16-bit peer id."""
    key: bytes = field(repr=False)
    """16 or 32 secret bytes (hex-decoded). Never logged; the repr masks it."""
    address: str | None
    """Static IPv4 address (resolved from ``hostname`` if one was given), or None."""
    hostname: str | None
    """The hostname as written, kept for later re-resolution; None for a literal or null."""
    port: int
    """Static UDP port, 1-65535 when an address or hostname is given, else 0."""
    legacy_key: bytes = field(default=b"", repr=False)
    """The key's first 16 characters as written (ASCII): what a 6.1.2 node uses as its key,
    upper-case digits included. Never logged."""

    def __repr__(self) -> str:
        return (
            f"PeerSecret(peer_id={format_peer_id(self.peer_id)},"
            f" key=<{len(self.key)} bytes hidden>, address={self.address!r},"
            f" hostname={self.hostname!r}, port={self.port})"
        )

    @property
    def addr(self) -> tuple[str, int] | None:
        """The static UDP endpoint ``(address, port)``, or None if the peer has none."""
        if self.address is None or self.port == 0:
            return None
        return (self.address, self.port)


@dataclass(frozen=True, slots=True)
class Secrets:
    """Every peer of the secrets file, keyed by peer id (the own id included)."""

    peers: dict[int, PeerSecret]
    """Peer id -> its line."""
    path: Path
    """The file they were read from."""
    warnings: tuple[str, ...] = ()
    """Non-fatal findings (also logged at WARNING), e.g. a hostname that did not resolve."""
    identity: FileIdentity = None
    """The file's identity just before it was read (alpaca.paths.file_identity): a change
    made after that, while the daemon was starting, is seen as a change."""


def load_secrets(
    path: Path, self_id: int, previous: Secrets | None = None, turn: Callable[[], None] | None = None,
) -> Secrets:
    """Read and validate the secrets file.

    Args:
        path: the secrets file.
        self_id: our own peer id, which must have a line (its key is ours).
        previous: the secrets in use (a reload): a hostname that does not resolve now keeps
            the address it had there, so a name server that is down (or reached through the
            tunnel) does not take the peer's address and its host route away.
        turn: called every TURN_LINES lines (a running daemon's reload gives the packet path
            a turn: 10,000 lines take about 0.2 s).

    Raises:
        ConfigError: with one located line per problem, of every line, not the first only
            (the first MAX_LISTED, then a count of the rest).
    """
    identity = file_identity(path)
    text = read_text_file(path, "the secrets file", SECRETS_MAX_BYTES,
                          "point secret_file at the secrets file (one line per peer)")
    warnings: list[str] = []
    _check_mode(path, warnings)
    parser = _Parser(shown_path(path))
    for number, line in enumerate(text_lines(text), start=1):
        parser.parse_line(number, line)
        if turn is not None and number % TURN_LINES == 0:
            turn()
    problems = first_listed(parser.problems, parser.name)
    if self_id not in parser.lines:
        problems.append(
            f"{parser.name}: the own id {format_peer_id(self_id)} is missing"
            f" (add a line for {format_peer_id(self_id)} with this node's key)"
        )
    if problems:
        raise ConfigError(problems)
    parser.resolve_hostnames(previous.peers if previous else {})  # a broken file sends nothing
    warnings += parser.ip6_warnings() + first_listed(parser.warnings, parser.name, "warnings")
    for warning in warnings:
        log.warning("%s", warning)
    return Secrets(peers=parser.peers, path=path, warnings=tuple(warnings), identity=identity)


def _check_mode(path: Path, warnings: list[str]) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(
            f"{shown_path(path)} is readable by group or others (mode {stat.S_IMODE(mode):04o});"
            f" fix: chmod 600 {shown_path(path)}"
        )


def _may_be_key(text: str, shortest: int = _KEY_PART_MIN, base64_shortest: int = _BASE64_RUN_MIN) -> bool:
    """Whether ``text`` may be (part of) a key: after an optional ``0x``, at least ``shortest``
    characters of which at most one in eight is not a hex digit (a typo); or at least
    ``base64_shortest`` characters of base64 text (:func:`_is_base64_key`)."""
    if len(text) >= base64_shortest and _BASE64_RUN.fullmatch(text) and _is_base64_key(text):
        return True
    digits = text[2:] if text[:2] in ("0x", "0X") else text
    if len(digits) < shortest:
        return False
    return sum(char not in string.hexdigits for char in digits) * 8 <= len(digits)


def _is_base64_key(run: str) -> bool:
    """Whether a run of :data:`_BASE64_RUN` may be a key: random base64 mixes upper- and
    lower-case letters, a word or a hostname (``verylongservername``) seldom does."""
    return any(char.isupper() for char in run) and any(char.islower() for char in run)


def _shown(text: str) -> str:
    """``text`` for a message, unless it may be a key: then only its length; runs of hex
    digits inside it that may be part of a key are left out (:func:`_masked`)."""
    if _may_be_key(text):
        return f"<{len(text)} characters, perhaps a key: not shown>"
    return printable(_masked(text))


def _masked(text: str) -> str:
    """``text`` with every run of :data:`_HEX_RUN_MIN` or more hex digits (a key fragment,
    in a line split by commas, a URL, a key cut in two), and every base64 run that may be a
    key (:func:`_is_base64_key`), replaced by its length."""
    text = _BASE64_RUN.sub(lambda run: f"<{len(run.group())} base64 characters: not shown>"
                           if _is_base64_key(run.group()) else run.group(), text)
    return _HEX_RUN.sub(lambda run: f"<{len(run.group())} hex digits: not shown>", text)


def shown_host(text: str) -> str:
    """A peer_ip (an IPv4 address or a hostname) for a message or a log line: each part of
    it between dots and dashes that may be part of a key (:func:`_may_be_key`; 8 to 15 hex
    digits pass as a hostname) replaced by its length, the words and numbers of a name
    (``gw1.example.net``, ``ip-10-0-0-1``) shown as written."""
    return "".join(f"<{len(part)} characters, perhaps a key: not shown>" if _may_be_key(part)
                   else printable(part) for part in re.split(r"([.-])", text))


def _key_fault(text: str) -> str:
    """What is wrong with a key column that is not 32 or 64 hex digits, without its value."""
    prefixed = text[:2] in ("0x", "0X")
    digits = text[2:] if prefixed else text
    faults = ["starts with 0x (write the hex digits only)"] if prefixed else []
    not_hex = [i for i, char in enumerate(text, start=1)
               if char not in string.hexdigits and not (prefixed and i <= 2)]
    if not_hex:
        faults.append(_not_hex_fault(not_hex))
    elif len(digits) not in (32, 64):
        faults.append(_length_fault(len(digits)))
    return f"{len(text)} characters, " + " and ".join(faults)


def _not_hex_fault(positions: list[int]) -> str:
    """The positions (1-based) of characters that are not hex digits, the first three."""
    listed = ", ".join(str(p) for p in positions[:3]) + (", ..." if len(positions) > 3 else "")
    if len(positions) == 1:
        return f"character {listed} is not a hex digit"
    return f"characters {listed} are not hex digits"


def _length_fault(digits: int) -> str:
    """How far ``digits`` hex digits are from the nearest key length (32 or 64)."""
    nearest = 32 if digits < 48 else 64
    gap = digits - nearest
    direction = "many" if gap > 0 else "few"
    return f"{digits} hex digits, {abs(gap)} too {direction} for a {nearest // 2}-byte key"


class _Parser:
    """Accumulates peers, problems and warnings line by line."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.peers: dict[int, PeerSecret] = {}
        self.lines: dict[int, int] = {}
        self.problems: list[str] = []
        self.warnings: list[str] = []
        #: Lines whose peer_ip6 is not null, for :meth:`ip6_warnings`.
        self.ip6_lines: list[int] = []

    def problem(self, number: int, text: str) -> None:
        self.problems.append(f"{self.name}:{number}: {text}")

    def parse_line(self, number: int, line: str) -> None:
        columns = line.split("#", 1)[0].split()
        if not columns:
            return
        if len(columns) > _COLUMNS:
            self.problem(
                number,
                f"{len(columns)} columns, expected at most {_COLUMNS}"
                " (peer_id peer_key peer_ip peer_ip6 peer_port)",
            )
            return
        four = len(columns) == _COLUMNS - 1
        columns += ["null"] * (_COLUMNS - len(columns))
        id_text, key_text, ip_text, ip6_text, port_text = columns
        peer_id = self.parse_id(number, id_text)
        key = self.parse_key(number, key_text, _shown(id_text))
        address, hostname = self.parse_ip(number, ip_text)
        if four and (address or hostname) and _port_like(ip6_text):
            self.problem(number, f'peer_port is missing: {ip6_text} is in the peer_ip6 column (write'
                                 f" null before the port: {shown_host(ip_text)} null {ip6_text})")
            return
        self.check_ip6(number, ip6_text)
        port = self.parse_port(number, port_text, needed=ip_text.lower() != "null")
        if peer_id is None or key is None or port is None:
            return
        if port and address is None and hostname is None:
            self.warnings.append(f"{self.name}:{number}: peer_port {port} of peer {format_peer_id(peer_id)}"
                                 " is ignored without a peer_ip (give its address too, or null)")
        self.peers[peer_id] = PeerSecret(peer_id, key, address, hostname, port, key_text[:16].encode())

    def resolve_hostnames(self, previous: Mapping[int, PeerSecret]) -> None:
        """Give each peer named by a hostname its address, all names looked up at once on the
        hub: the address it had in ``previous`` (named the same) while the name still lists
        it (a name with several addresses does not flip at each reload), else the first
        answer. One that does not resolve keeps its address from ``previous``, else has no
        static address until a reload finds one (a warning either way)."""
        named = {pid: peer for pid, peer in self.peers.items() if peer.hostname is not None}
        found = lookup_ipv4(peer.hostname for peer in named.values() if peer.hostname)
        for peer_id, peer in named.items():
            before = previous.get(peer_id)
            in_use = before.address if before is not None and before.hostname == peer.hostname else None
            answers = one_host(found.get(peer.hostname or "", ()))
            address = in_use if in_use in answers else moved_to(in_use, answers)
            if address is None:
                address = self._last_address(peer, before)
            self.peers[peer_id] = replace(peer, address=address)

    def _last_address(self, peer: PeerSecret, before: PeerSecret | None) -> str | None:
        name = shown_host(peer.hostname or "")
        where = f"{self.name}:{self.lines[peer.peer_id]}: hostname {name} of peer" \
                f" {format_peer_id(peer.peer_id)} does not resolve"
        if before is not None and before.hostname == peer.hostname and before.address is not None:
            self.warnings.append(f"{where} now; it keeps its last address {before.address}")
            return before.address
        self.warnings.append(f"{where}; the peer has no static address until it does")
        return None

    def parse_id(self, number: int, text: str) -> int | None:
        if _may_be_key(text):
            self.problem(number, f'peer_id: "{_shown(text)}" is not a peer id (expected "A.B";'
                                 " is the peer_id column missing?)")
            return None
        try:
            peer_id = parse_peer_id(text)
            check_usable(peer_id)
        except ValueError as exc:
            self.problem(number, f"peer_id: {_masked(str(exc))}")
            return None
        if peer_id in self.lines:
            self.problem(
                number, f"peer {text} is listed again (first on line {self.lines[peer_id]});"
                " keep one line per peer",
            )
            return None
        self.lines[peer_id] = number
        return peer_id

    def parse_key(self, number: int, text: str, id_text: str) -> bytes | None:
        # The text of a bad key is never echoed: it may be most of a real key.
        if text.lower() == "null":
            self.problem(number, f"peer_key of peer {id_text}: missing ({_KEY_HELP})")
            return None
        if not _HEX_KEY.fullmatch(text):
            self.problem(number, f"peer_key of peer {id_text}: {_key_fault(text)} ({_KEY_HELP})")
            return None
        key = bytes.fromhex(text)
        if len(set(key)) == 1:
            self.problem(number, f"peer_key of peer {id_text}: a placeholder key (all {len(key)}"
                                 f" bytes the same); {_PLACEHOLDER_FIX}")
            return None
        return key

    def parse_ip(self, number: int, text: str) -> tuple[str | None, str | None]:
        if text.lower() == "null":
            return None, None
        try:
            parsed = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            if parsed.version == 4 and (parsed.is_unspecified or parsed.is_multicast
                                        or parsed == ipaddress.IPv4Address("255.255.255.255")):
                self.problem(number, f'peer_ip: "{_shown(text)}" is not the address of one host (give the '
                                     "peer's unicast IPv4 address or hostname, or null)")
                return None, None
            if parsed.version == 4:
                return str(parsed), None
            self.problem(
                number,
                f'peer_ip: "{_shown(text)}" is an IPv6 address (the underlay is IPv4 only;'
                " give an IPv4 address or hostname, or null)",
            )
            return None, None
        if (not _HOSTNAME.fullmatch(text) or is_digits(text.replace(".", ""))
                or _may_be_key(text, _KEY_AS_HOST_MIN, _BASE64_AS_HOST_MIN)):
            self.problem(
                number, f'peer_ip: "{_shown(text)}" is neither an IPv4 address nor a hostname (or null)'
            )
            return None, None
        return None, text  # resolved by resolve_hostnames once the whole file is valid

    def check_ip6(self, number: int, text: str) -> None:
        if text.lower() != "null":
            self.ip6_lines.append(number)

    def ip6_warnings(self) -> list[str]:
        """One warning naming the lines whose peer_ip6 is ignored (the first MAX_LISTED, then
        a count of the rest); none without such a line."""
        if not self.ip6_lines:
            return []
        numbers = named_in_line([str(number) for number in self.ip6_lines])
        lines = ("line " if len(self.ip6_lines) == 1 else "lines ") + numbers
        return [f"{self.name}: peer_ip6 is ignored on {lines} (the underlay is IPv4 only)"]

    def parse_port(self, number: int, text: str, *, needed: bool) -> int | None:
        if text.lower() == "null":
            if needed:
                self.problem(number, "peer_port is missing (expected 1-65535 after an address)")
                return None
            return 0
        low = 1 if needed else 0
        port = digits_value(text.lstrip("0") or "0", 5)  # leading zeros: "08080" is 8080
        if port is None or not low <= port <= 65535:
            shown = (text if is_digits(text) and len(text) <= _PORT_SHOWN_MAX else
                     _shown(text) if len(text) <= 60 else f"<{len(text)} characters>")
            self.problem(number, f'peer_port: "{shown}" is not a port (expected {low}-65535)')
            return None
        return port


def _port_like(text: str) -> bool:
    """Whether ``text`` reads as a UDP port, 1-65535 (at most 5 digits)."""
    return is_digits(text) and len(text) <= 5 and 1 <= int(text) <= 65535
