"""Which network namespace a change was made in, by an identity that outlives names.

An identity is ``"<dev>:<inode>"`` of the namespace's nsfs file: fixed for the namespace's
life, unique among the namespaces that exist at one time. The undo journal records it, so
that a journal is never replayed in another namespace (two daemons in two namespaces can
share one /run); /run is a tmpfs, so a journal never outlives a reboot and its inode numbers.
"""

from __future__ import annotations

import glob
import os

#: Where namespaces are kept alive besides their processes: ``ip netns`` and Docker.
_NAMED = ("/run/netns/*", "/run/docker/netns/*", "/proc/[0-9]*/ns/net")


def _identity(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def of(netns: str | None) -> str | None:
    """The identity of the named namespace (``ip netns`` name), or of the process's own for
    None; None if the named one does not exist."""
    return _identity(f"/run/netns/{netns}" if netns else "/proc/self/ns/net")


def exists(identity: str) -> bool:
    """True if a process or a bind mount (``ip netns``, Docker) still holds the namespace."""
    return any(_identity(path) == identity for pattern in _NAMED for path in glob.iglob(pattern))
