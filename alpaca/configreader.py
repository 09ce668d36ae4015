"""Reading one JSON object of a config file with located errors.

:class:`JsonObject` wraps a decoded object and offers typed getters (``string``, ``integer``,
``peer_id``, ``path``, ``table`` ...) that return a usable default on a bad value and record a
located problem (``config.json: forwarders[1]: "1.x" is not a peer id ...``) instead of raising,
so that a whole file is checked in one pass. alpaca.config builds the Config with it.

:func:`read_text_file` reads the config, secrets and chnroute files: bounded in size, a leading
UTF-8 BOM dropped, bytes that are not UTF-8 reported with their line.
"""

from __future__ import annotations

import codecs
import difflib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from alpaca.core.ids import check_usable, digits_value, is_digits, parse_peer_id, printable, quoted
from alpaca.errors import ConfigError
from alpaca.paths import relative_to_config

MIB = 1 << 20
#: The largest config file read, bytes. A config with every key and ``peer_protocols`` naming
#: the 65,533 usable ids of the other nodes is about 2 MB; a real one is a few KB.
CONFIG_MAX_BYTES = 4 * MIB
#: The largest secrets file read, bytes. 10,000 peers take about 1 MB; a line for each of the
#: 65,534 usable ids, with a 64-digit key, an address and a port, about 7 MB.
SECRETS_MAX_BYTES = 16 * MIB
#: The largest chnroute data file read, bytes: about 450,000 prefixes of ~18 bytes, some 40
#: times a published China list (~10,000 lines, ~200 KB).
CHNROUTE_MAX_BYTES = 8 * MIB
#: The longest JSON integer converted, digits. The largest value of any key has 10 digits;
#: a longer one is kept as a :class:`HugeInteger` and reported where it stands.
JSON_INT_MAX_DIGITS = 100
#: Unknown keys listed per object; a file of thousands gets a count for the rest.
MAX_UNKNOWN_SHOWN = 20
#: Problems (or warnings) listed per secrets or chnroute file; a file of thousands of bad
#: lines (the wrong file, say) gets a count for the rest.
MAX_LISTED = 20
#: The longest path shown in a message, characters: PATH_MAX, the longest the kernel takes.
PATH_SHOWN_MAX = 4096

#: Where a line of a config, secrets or chnroute file ends: \r\n, \n or \r (a file saved on
#: Windows, Unix or an old Mac). Not at a form feed, \x1c or U+2028, which str.splitlines
#: also takes for line ends and a comment may hold.
_LINE_END = re.compile(r"\r\n|\r|\n")
#: What JSON takes for blanks between its tokens.
_JSON_BLANKS = " \t\r\n"

NAMED_TABLES = {"default": 253, "main": 254, "local": 255}
RT_TABLES_FILES = (Path("/etc/iproute2/rt_tables"), Path("/usr/share/iproute2/rt_tables"))


class DuplicateKey(ValueError):
    """A key given twice in one JSON object (json.loads hook)."""

    pass


def no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKey(key)
        result[key] = value
    return result


@dataclass(frozen=True, slots=True)
class HugeInteger:
    """A JSON integer of more than JSON_INT_MAX_DIGITS digits, kept unconverted (Python refuses
    to convert more than 4300) so that the problem names the key that holds it."""

    digits: int
    """How many digits it has."""
    negative: bool
    """Whether it has a minus sign."""

    def __str__(self) -> str:
        sign = "a negative" if self.negative else "an"
        return f"{sign} integer of {self.digits} digits"


def json_integer(text: str) -> int | HugeInteger:
    """``parse_int`` hook of json.loads: the integer, or a HugeInteger if it is too long."""
    digits = len(text.lstrip("-"))
    if digits > JSON_INT_MAX_DIGITS:
        return HugeInteger(digits, text.startswith("-"))
    return int(text)


@dataclass(frozen=True, slots=True)
class HugeNumber:
    """A JSON number too large for a float (``1e400``), kept as written: json.loads made it
    Infinity, which the problem named instead of a number too large."""

    text: str
    """The number as written."""

    @property
    def negative(self) -> bool:
        """Whether it has a minus sign."""
        return self.text.startswith("-")

    def __str__(self) -> str:
        return self.text if len(self.text) <= 20 else f"a number of {len(self.text)} characters"


def json_float(text: str) -> float | HugeNumber:
    """``parse_float`` hook of json.loads: the float, or a HugeNumber if it is too large."""
    value = float(text)
    return HugeNumber(text) if math.isinf(value) else value


def json_problem(name: str, text: str, exc: json.JSONDecodeError, empty_fix: str) -> str:
    """The problem of ``text``, which json.loads refused with ``exc``: located, with the fix
    where the cause is a common slip (:func:`_json_slip`). ``empty_fix`` says what to do about
    a file that holds nothing but blanks."""
    if not text.strip(_JSON_BLANKS):
        return f"{name}: the file is empty: {empty_fix}"
    offset, slip = _json_slip(text, exc.pos)
    line, column = line_and_column(text, offset)
    return f"{name}:{line}:{column}: invalid JSON: {slip or exc.msg}"


def _json_slip(text: str, offset: int) -> tuple[int, str | None]:
    """Where and what the mistake json.loads found at ``offset`` is, if it is one JSON is
    often written with: a comment, a comma before ``}`` or ``]``, a string in single quotes.
    Else ``offset`` and None."""
    ahead = text[offset:offset + 2]
    if ahead.startswith(("//", "/*", "#")):
        return offset, "a comment (JSON has no comments: remove it)"
    before = text[:offset].rstrip(_JSON_BLANKS)
    if ahead[:1] in ("}", "]") and before.endswith(","):
        return len(before) - 1, (f'a comma before "{ahead[0]}" (JSON allows none there:'
                                 " remove the trailing comma)")
    if ahead.startswith("'"):
        return offset, "a single quote (JSON strings take double quotes: write \"...\")"
    return offset, None


def show(value: object) -> str:
    if isinstance(value, HugeInteger | HugeNumber):
        return str(value)
    if isinstance(value, str):
        return quoted(value)
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def shown_path(path: Path) -> str:
    """``path`` for a message: characters that do not print (a newline or an escape sequence,
    legal in a file name or written ``\\n`` in the JSON; a byte that is not UTF-8) escaped, so
    the message stays one line and nothing of the file name reaches a terminal as a control."""
    return printable(str(path), PATH_SHOWN_MAX)


def read_text_file(path: Path, what: str, max_bytes: int, fix: str) -> str:
    """The text of ``path``, which may hold at most ``max_bytes`` bytes.

    At most ``max_bytes + 1`` bytes are read, so that a file without end (/dev/zero, a pipe)
    or a huge log given by mistake fails at once instead of filling memory; a FIFO without a
    writer reads as empty instead of blocking. A leading UTF-8 BOM is dropped.

    Args:
        path: the file.
        what: its role, for messages ("the secrets file").
        max_bytes: the largest size accepted, bytes.
        fix: what to do about a file that cannot be read or is too large ("point secret_file
            at ...").

    Raises:
        ConfigError: the file cannot be read, is larger than ``max_bytes`` or is not UTF-8.
    """
    data = _read_at_most(path, what, max_bytes + 1, fix)
    if len(data) > max_bytes:
        raise ConfigError([f"{shown_path(path)}: {what} is larger than {_size(max_bytes)}, the most it may"
                           f" be (is it the right file?); {fix}"])
    return _utf8_text(path, what, data)


def read_chnroute_text(path: Path) -> str:
    """The text of a chnroute data file (at most CHNROUTE_MAX_BYTES).

    Raises:
        ConfigError: the file cannot be read, is too large or is not UTF-8.
    """
    return read_text_file(path, "the chnroute data", CHNROUTE_MAX_BYTES,
                          "point chnroute.data at a list of prefixes, one a.b.c.d/len a line")


def first_listed(lines: list[str], where: str, kind: str = "problems") -> list[str]:
    """The first MAX_LISTED of ``lines`` (a new list), then one line, starting ``where``,
    that counts the rest (``kind``: "problems", "warnings")."""
    shown = lines[:MAX_LISTED]
    if len(lines) > MAX_LISTED:
        shown.append(f"{where}: ... and {len(lines) - MAX_LISTED} more {kind}, not listed")
    return shown


def named_in_line(items: list[str]) -> str:
    """The first MAX_LISTED of ``items`` joined by commas, then "and K more" for the rest."""
    rest = len(items) - MAX_LISTED
    return ", ".join(items[:MAX_LISTED]) + (f" and {rest} more" if rest > 0 else "")


def text_lines(text: str) -> list[str]:
    """The lines of ``text``, each ended by ``\\r\\n``, ``\\n`` or ``\\r`` (:data:`_LINE_END`)."""
    return _LINE_END.split(text)


def line_and_column(text: str, offset: int) -> tuple[int, int]:
    """Line and column (both from 1) of the character at ``offset`` of ``text``, lines ended
    as :func:`text_lines` ends them."""
    lines = text_lines(text[:offset])
    return len(lines), len(lines[-1]) + 1


def _read_at_most(path: Path, what: str, size: int, fix: str) -> bytes:
    """Up to ``size`` bytes of ``path`` (fewer at its end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # no wait for a writer
        with open(fd, "rb") as file:
            os.set_blocking(fd, True)
            return file.read(size)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError([f"{shown_path(path)}: cannot read {what}: {reason}; {fix}"]) from exc


def _utf8_text(path: Path, what: str, data: bytes) -> str:
    """``data`` decoded as UTF-8 after a leading BOM; else a problem naming line and byte."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_and_byte(data[:start + exc.start].decode("utf-8"))
        raise ConfigError([f"{shown_path(path)}:{line}: byte {column} of the line is not UTF-8 text;"
                           f" save {what} as UTF-8"]) from exc


def _line_and_byte(before: str) -> tuple[int, int]:
    """Line (from 1) and byte of that line (from 1, in UTF-8) just after ``before``, the
    text that precedes a spot in a file."""
    lines = text_lines(before)
    return len(lines), len(lines[-1].encode("utf-8")) + 1


def _size(size: int) -> str:
    """``size`` bytes as MiB when whole, else as bytes."""
    return f"{size // MIB} MiB" if size % MIB == 0 else f"{size} bytes"


class JsonObject:
    """One JSON object being read: typed getters that record located problems."""

    def __init__(self, data: dict[str, object], where: str, problems: list[str], file: str):
        self.data = data
        self.where = where
        self.problems = problems
        self.file = file

    def loc(self, key: str) -> str:
        key = printable(key)
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, text: str) -> None:
        self.problems.append(f"{self.file}: {self.loc(key)}: {text}")

    def given(self, key: str) -> bool:
        return self.data.get(key) is not None

    def check_keys(self, valid: list[str]) -> None:
        unknown = [key for key in self.data if key not in valid]
        for key in unknown[:MAX_UNKNOWN_SHOWN]:
            near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f'did you mean "{near[0]}"?' if near else "valid keys: " + ", ".join(valid)
            self.fail(key, f"unknown key ({hint})")
        if len(unknown) > MAX_UNKNOWN_SHOWN:
            self.problems.append(f"{self.file}: {self.where or 'the top level'}: "
                                 f"{len(unknown) - MAX_UNKNOWN_SHOWN} more unknown keys not listed")

    def string(self, key: str, default: str) -> str:
        """The string at ``key``; ``default`` if absent or null, or (recorded) not a string or
        not text."""
        text = self.text(key)
        return default if text is None else text

    def required_string(self, key: str) -> str | None:
        """The string at ``key``, an empty one included (the caller says what it lacks);
        None, with the problem recorded, if it is absent, null, not a string or not text."""
        if self.data.get(key) is None:
            self.fail(key, "is required")
            return None
        return self.text(key)

    def text(self, key: str) -> str | None:
        """The string at ``key``; None if absent or null, or (recorded) not a string or not
        text a file or terminal takes."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(key, f"{show(value)} is not a string")
            return None
        if not _printable_text(value):
            self.fail(key, f"{show(value)} contains a NUL byte or a character that is not valid"
                           " text (a lone surrogate)")
            return None
        return value

    def integer(self, key: str, default: int, low: int, high: int, why: str = "") -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if isinstance(value, HugeInteger | HugeNumber):
            self.out_of_range(key, value, value.negative, (low, high), why)
        elif not isinstance(value, int) or isinstance(value, bool):
            self.fail(key, f"{show(value)} is not an integer (expected {low}-{high})")
        elif low <= value <= high:
            return value
        else:
            self.out_of_range(key, value, value < low, (low, high), why)
        return default  # checks that depend on this value see a sane one

    def out_of_range(self, key: str, value: object, below: bool, bounds: tuple[int, int],
                     why: str) -> None:
        """Record that ``value`` is below the minimum or above the maximum of ``bounds``."""
        if below:
            self.fail(key, f"{value} is below the minimum {bounds[0]}")
        else:
            self.fail(key, f"{value} is above the maximum {bounds[1]}" + (f" ({why})" if why else ""))

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(key, f"{show(value)} is not true or false")
            return default
        return value

    def items(self, key: str, limit: int | None = None) -> list[tuple[str, object]]:
        """The entries of a list as (location, value); [] if absent or not a list."""
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.fail(key, f"{show(value)} is not a list")
            return []
        if limit is not None and len(value) > limit:
            self.fail(key, f"{len(value)} entries, at most {limit} allowed")
        return [(f"{key}[{i}]", item) for i, item in enumerate(value)]

    def strings(self, key: str) -> tuple[str, ...]:
        result = []
        for where, item in self.items(key):
            if not (isinstance(item, str) and item.strip()):
                self.fail(where, f"{show(item)} is not a non-empty string")
            elif not _printable_text(item):
                self.fail(where, f"{show(item)} contains a NUL byte or a character that is not"
                                 " valid text (a lone surrogate)")
            else:
                result.append(item)
        return tuple(result)

    def child(self, key: str) -> JsonObject | None:
        """The nested object at ``key``; None if absent, null or not an object (recorded)."""
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.fail(key, f"{show(value)} is not an object {{...}}")
            return None
        return JsonObject(value, self.loc(key), self.problems, self.file)

    def peer_id(self, where: str, value: object) -> int | None:
        try:
            if not isinstance(value, str):
                raise ValueError(f'{show(value)} is not a peer id (expected "A.B", each 0-255)')
            peer = parse_peer_id(value)
            check_usable(peer)
        except ValueError as exc:
            self.fail(where, str(exc))
            return None
        return peer

    def path(self, key: str, default: str, config_path: Path) -> Path:
        """The path at ``key`` (relative to the config file's directory), ``default`` if the
        key is absent or null; an empty string is a problem (it named no file)."""
        value = self.string(key, default)
        if not value:
            self.fail(key, f'is empty; give a path, or leave the key out for the default "{default}"')
            value = default
        return relative_to_config(config_path, value)

    def table(self, key: str, default: str) -> int:
        value = self.data.get(key)
        if value is None:
            value = default
        if isinstance(value, str) and is_digits(value):
            value = digits_value(value)
            if value is None:
                self.fail(key, f"{show(self.data.get(key))} is not a table number (expected 1-4294967295)")
                return NAMED_TABLES["default"]
        if isinstance(value, int) and not isinstance(value, bool):
            if 1 <= value <= 0xFFFFFFFF:
                return value
            self.fail(key, f"{value} is not a table number (expected 1-4294967295)")
        elif isinstance(value, HugeInteger | HugeNumber):
            self.fail(key, f"{value} is not a table number (expected 1-4294967295)")
        elif isinstance(value, str):
            number = table_number(value)
            if number is not None and 1 <= number <= 0xFFFFFFFF:
                return number
            if number is not None:
                self.fail(key, f"table {show(value)} is {number} (expected 1-4294967295)")
                return NAMED_TABLES["default"]
            files = ", ".join(str(f) for f in RT_TABLES_FILES)
            self.fail(key, f"unknown table name {show(value)} (use a number, or add it to {files})")
        else:
            self.fail(key, f"{show(value)} is not a table name or number")
        return NAMED_TABLES["default"]


def table_number(name: str) -> int | None:
    """The number of the routing table ``name``: a built-in, or one listed in RT_TABLES_FILES
    (read as UTF-8; a byte that is not, in a comment say, does not hide the other names)."""
    if name in NAMED_TABLES:
        return NAMED_TABLES[name]
    for path in RT_TABLES_FILES:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
        except OSError:
            continue
        for line in lines:
            fields = line.split("#", 1)[0].split()
            number = digits_value(fields[0]) if len(fields) == 2 and fields[1] == name else None
            if number is not None:
                return number
    return None


def _printable_text(value: str) -> bool:
    """No NUL byte (no path or command can hold one) and no lone surrogate (no file, log or
    terminal can take one)."""
    if "\0" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
