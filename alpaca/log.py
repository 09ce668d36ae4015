"""Console logging, as the original printed it: ERROR and CRITICAL to stderr, the rest to stdout.

Line format: ``[LEVEL] logger: message key=value ...``; with timestamps (``-t``) the line
starts with the local time ``YYYY-mm-dd HH:MM:SS.mmm``.

Field conventions for callers: the message is a fixed description of the event and the
variable data follows as ``key=value`` with fixed names, %-style (lazy)::

    log.info("path up peer=%s path=%s port=%s", format_peer_id(peer), addr, port_name)

Names in use: ``peer`` (A.B), ``path`` (ip:port), ``port`` (local port name), ``dev``,
``table``, ``reason``, ``file``, ``line``. Per-packet events are counters, never log lines.
Keys never appear in a log line.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

FORMAT = "[%(levelname)s] %(name)s: %(message)s"

#: The level names the config's ``log_level`` accepts (case-insensitive).
LEVELS: dict[str, int] = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "notset": logging.NOTSET,
}


class _TimestampFormatter(logging.Formatter):
    """Prefixes the local time with milliseconds: ``2024-03-01 12:00:00.123``."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}"


class _ConsoleHandler(logging.Handler):
    """Writes to sys.stdout or sys.stderr as they are at emit time (they may be replaced)."""

    def __init__(self, to_stderr: bool, stream: TextIO | None) -> None:
        super().__init__()
        self.to_stderr = to_stderr
        self.fixed_stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = self.fixed_stream
            if stream is None:
                stream = sys.stderr if self.to_stderr else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except BrokenPipeError:  # the reader went away (``| head``); nothing left to tell
            pass
        except Exception:
            self.handleError(record)


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno < logging.ERROR


def setup_logging(
    level: int | str = logging.INFO,
    timestamps: bool = False,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> None:
    """Configure the root logger; calling it again replaces what the previous call installed.

    Args:
        level: a logging level number or a name from :data:`LEVELS` (any case).
        timestamps: prefix every line with the local time (``-t``).
        stdout / stderr: streams to use instead of the process's (tests).

    Raises:
        ValueError: for an unknown level name.
    """
    if isinstance(level, str):
        if level.lower() not in LEVELS:
            raise ValueError(f'unknown log level "{level}" (expected one of {", ".join(LEVELS)})')
        level = LEVELS[level.lower()]
    fmt = f"%(asctime)s {FORMAT}" if timestamps else FORMAT
    formatter: logging.Formatter = (
        _TimestampFormatter(fmt) if timestamps else logging.Formatter(fmt)
    )
    out = _ConsoleHandler(False, stdout)
    out.addFilter(_below_error)
    err = _ConsoleHandler(True, stderr)
    err.setLevel(logging.ERROR)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ConsoleHandler):
            root.removeHandler(handler)
    for handler in (out, err):
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level)
