"""Reading one JSON object of a config file with located errors.

:class:`JsonObject` wraps a decoded object and offers typed getters (``string``, ``integer``,
``peer_id``, ``path``, ``table`` ...) that return a usable default on a bad value and record a
located problem (``config.json: forwarders[1]: "1.x" is not a peer id ...``) instead of raising,
so that a whole file is checked in one pass. alpaca.config builds the Config with it.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path

from alpaca.core.ids import check_usable, is_digits, parse_peer_id
from alpaca.paths import relative_to_config

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


def show(value: object) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


class JsonObject:
    """One JSON object being read: typed getters that record located problems."""

    def __init__(self, data: dict[str, object], where: str, problems: list[str], file: str):
        self.data = data
        self.where = where
        self.problems = problems
        self.file = file

    def loc(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, text: str) -> None:
        self.problems.append(f"{self.file}: {self.loc(key)}: {text}")

    def given(self, key: str) -> bool:
        return self.data.get(key) is not None

    def check_keys(self, valid: list[str]) -> None:
        for key in self.data:
            if key in valid:
                continue
            near = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f'did you mean "{near[0]}"?' if near else "valid keys: " + ", ".join(valid)
            self.fail(key, f"unknown key ({hint})")

    def string(self, key: str, default: str, *, required: bool = False) -> str:
        value = self.data.get(key)
        if value is None:
            if required:
                self.fail(key, "is required")
            return default
        if not isinstance(value, str):
            self.fail(key, f"{show(value)} is not a string")
            return default
        if not _printable_text(value):
            self.fail(key, f"{show(value)} contains a NUL byte or a character that is not valid"
                           " text (a lone surrogate)")
            return default
        return value

    def integer(self, key: str, default: int, low: int, high: int, why: str = "") -> int:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(key, f"{show(value)} is not an integer (expected {low}-{high})")
            return default
        if value < low:
            self.fail(key, f"{value} is below the minimum {low}")
        elif value > high:
            self.fail(key, f"{value} is above the maximum {high}" + (f" ({why})" if why else ""))
        else:
            return value
        return default  # checks that depend on this value see a sane one

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
        return relative_to_config(config_path, self.string(key, default) or default)

    def table(self, key: str, default: str) -> int:
        value = self.data.get(key)
        if value is None:
            value = default
        if isinstance(value, str) and is_digits(value):
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if 1 <= value <= 0xFFFFFFFF:
                return value
            self.fail(key, f"{value} is not a table number (expected 1-4294967295)")
        elif isinstance(value, str):
            number = table_number(value)
            if number is not None and 1 <= number <= 0xFFFFFFFF:
                return number
            if number is not None:
                self.fail(key, f'table "{value}" is {number} (expected 1-4294967295)')
                return NAMED_TABLES["default"]
            files = ", ".join(str(f) for f in RT_TABLES_FILES)
            self.fail(key, f'unknown table name "{value}" (use a number, or add it to {files})')
        else:
            self.fail(key, f"{show(value)} is not a table name or number")
        return NAMED_TABLES["default"]


def table_number(name: str) -> int | None:
    if name in NAMED_TABLES:
        return NAMED_TABLES[name]
    for path in RT_TABLES_FILES:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split("#", 1)[0].split()
            if len(fields) == 2 and fields[1] == name and is_digits(fields[0]):
                return int(fields[0])
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
