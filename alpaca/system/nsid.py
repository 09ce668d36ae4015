"""Which network namespace a change was made in, by an identity that is never reused.

An identity is ``"cookie:<n>"``: the namespace's cookie (``SO_NETNS_COOKIE``, Linux 5.14),
a 64-bit number the kernel gives each namespace once per boot and never again. (The inode
of its nsfs file is no such identity: a namespace made after another was deleted gets the
same inode.) The undo journal records it, so that a journal is never replayed in another
namespace: two daemons in two namespaces can share one /run. /run is a tmpfs, so a journal
never outlives a reboot and its cookies. On a kernel without cookies the identity is None
and a journal is taken as this namespace's, as before identities existed.
"""

from __future__ import annotations

import socket

from pyroute2 import netns as pr_netns

#: getsockopt(SOL_SOCKET, SO_NETNS_COOKIE) (asm-generic/socket.h)
SO_NETNS_COOKIE = 71


def of(netns: str | None) -> str | None:
    """The identity of the named namespace (``ip netns`` name; its socket is made by a short-
    lived child process) or of the process's own for None; None if the named one does not
    exist or the kernel has no cookies."""
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
        except OSError:
            return None
    return f"cookie:{int.from_bytes(raw, 'little')}"
