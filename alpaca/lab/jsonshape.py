"""The shape of a decoded JSON document, checked before any field is read.

A document that passed :func:`shape_problems` can be read field by field without a
traceback: at most :data:`MAX_VALUES` values, nested at most :data:`MAX_DEPTH` levels, no
list or object containing itself, integers within +-:data:`MAX_INT`, finite numbers, string
keys, JSON types only. :func:`show_value` prints any value for a message, however hostile.
Pure; used by :mod:`alpaca.lab.topology` and ``lab impair``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

#: Deepest nesting of lists and objects (the format itself needs 5; config overrides a few more).
MAX_DEPTH = 32
#: Most values (scalars, lists and objects) in a document; the default topology has about 100.
MAX_VALUES = 100_000
#: Largest magnitude of any integer in a topology (ports and figures are far below it).
MAX_INT = 2**63 - 1

def show_value(value: object, limit: int = 60) -> str:
    """``value`` as JSON for an error message, at most ``limit`` characters.

    Safe for any input: an integer too long to print, a non-finite number, a structure
    nested too deeply to print or one that contains itself is described, not printed.
    """
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shape_problems(data: object, limit: int = 10) -> list[str]:
    """Located problems of a document that no field check could read safely (at most ``limit``).

    Walks without recursion: more than MAX_VALUES values, nesting deeper than MAX_DEPTH, a
    list or object that contains itself, an integer beyond ±MAX_INT, NaN or infinity, an
    object key that is not a string, or a value that JSON cannot hold.
    """
    problems: list[str] = []
    for count, (where, value, depth, looped) in enumerate(_walk(data)):
        if count >= MAX_VALUES:
            return [f"top: has more than {MAX_VALUES} values; a real document has a few thousand"]
        text = _shape_problem(value, depth, looped)
        if text is not None:
            problems.append(f"{short(where, 80) or 'top'}: {text}")
            if len(problems) >= limit:
                break
    return problems


def _shape_problem(value: object, depth: int, looped: bool) -> str | None:
    if looped:
        return "contains itself (a JSON document cannot)"
    if depth > MAX_DEPTH:
        return f"nested more than {MAX_DEPTH} levels deep"
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, int):
        return None if abs(value) <= MAX_INT else (
            f"{show_value(value)} is too large (at most {len(str(MAX_INT))} digits)")
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{show_value(value)} is not a finite number"
    if isinstance(value, dict):
        bad = next((k for k in value if not isinstance(k, str)), None)
        return None if bad is None else f"has a key that is not a string ({show_value(bad)})"
    if isinstance(value, list):
        return None
    return f"is not a JSON value (a {type(value).__name__})"


def _walk(data: object) -> Iterator[tuple[str, object, int, bool]]:
    """(location, value, depth, contains-itself) of every value, depth first; does not
    descend below MAX_DEPTH, into a value that contains itself, or into non-string keys."""
    stack: list[tuple[str, object, int, frozenset[int]]] = [("", data, 0, frozenset())]
    while stack:
        where, value, depth, above = stack.pop()
        looped = id(value) in above
        yield where, value, depth, looped
        if looped or depth > MAX_DEPTH:
            continue
        inside = above | {id(value)}
        if isinstance(value, list):
            stack.extend((f"{where}[{i}]", item, depth + 1, inside)
                         for i, item in reversed(list(enumerate(value))))
        elif isinstance(value, dict) and all(isinstance(k, str) for k in value):
            stack.extend((f"{where}.{short(k)}" if where else short(k), item, depth + 1, inside)
                         for k, item in reversed(list(value.items())))


def short(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters for a message."""
    return text if len(text) <= limit else text[: limit - 3] + "..."
