"""Which network namespace a change was made in, by an identity that is never reused.

An identity is ``"cookie:<n>"``: the namespace's cookie (``SO_NETNS_COOKIE``, Linux 5.14),
a 64-bit number the kernel gives each namespace once per boot and never again. (The inode
of its nsfs file is no such identity: a namespace made after another was deleted gets the
same inode.) The undo journal records it, so that a journal is never replayed in another
namespace: two daemons in two namespaces can share one /run. /run is a tmpfs, so a journal
never outlives a reboot and its cookies.

On a kernel without cookies the identity is ``"ino:<dev>:<inode>"`` of the namespace's nsfs
file: it tells two living namespaces apart (two running daemons of one namespace still
share ip_forward and a chnroute table), but it may name a deleted namespace's successor, so
:func:`unique` is False for it and a journal it names beside ours is left alone.
"""

from __future__ import annotations

import os
import socket

from pyroute2 import netns as pr_netns

#: getsockopt(SOL_SOCKET, SO_NETNS_COOKIE) (asm-generic/socket.h)
SO_NETNS_COOKIE = 71
#: where ``ip netns`` keeps its namespaces' files
NETNS_RUN_DIR = "/run/netns"


def of(netns: str | None) -> str | None:
    """The identity of the named namespace (``ip netns`` name; its socket is made by a short-
    lived child process) or of the process's own for None; None if the named one does not
    exist."""
    try:
        if netns is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        else:
            sock = pr_netns.create_socket(netns, socket.AF_INET, socket.SOCK_DGRAM, flags=0)
    except OSError:
        return None
    with sock:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
        except OSError:  # a kernel before 5.14
            return _inode_of(netns)
    return f"cookie:{int.from_bytes(raw, 'little')}"


def unique(identity: str | None) -> bool:
    """Whether ``identity`` can never name another namespace (a cookie)."""
    return identity is not None and identity.startswith("cookie:")


def _inode_of(netns: str | None) -> str | None:
    path = "/proc/self/ns/net" if netns is None else os.path.join(NETNS_RUN_DIR, netns)
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"ino:{st.st_dev}:{st.st_ino}"
