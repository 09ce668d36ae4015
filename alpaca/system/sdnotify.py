"""Tell the service manager how the daemon is doing (systemd's ``Type=notify``).

systemd passes ``NOTIFY_SOCKET`` (a unix datagram socket; ``@name`` is in the abstract
namespace) to a ``Type=notify`` service and waits for ``READY=1`` before it counts the start as
done: ``systemctl start`` returns once the tunnel is up, units ordered after it start then,
and a ``systemctl reload`` asked for meanwhile waits its turn instead of reaching a daemon
that cannot handle it yet. ``RELOADING=1``/``READY=1`` frame a reload, ``STOPPING=1`` starts
the stop, ``EXTEND_TIMEOUT_USEC`` before each hook gives it its time. Without
``NOTIFY_SOCKET`` (not run by systemd) nothing is sent.

The variable is taken out of the environment, so hook commands do not inherit it. A failed
send is logged once and otherwise ignored: the tunnel never depends on it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to one address (None: nowhere)."""

    def __init__(self, address: str | None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        self._warned = False

    @classmethod
    def from_environment(cls) -> Notifier:
        """The notifier systemd asked for, if any (``NOTIFY_SOCKET`` is removed)."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    def send(self, *fields: str) -> None:
        """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one notification."""
        if self.address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._warned:
                log.warning("could not notify the service manager address=%r error=%s",
                            self.address, exc)
                self._warned = True

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more before the start or stop counts as hung (a hook runs: the
        unit's TimeoutStartSec/TimeoutStopSec cannot know how many there are)."""
        self.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def reloading(self, monotonic_usec: int) -> None:
        """A reload begins (``MONOTONIC_USEC``: CLOCK_MONOTONIC now, in microseconds)."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec}")
