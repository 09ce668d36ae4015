"""Hostname lookups that keep the hub running: c-ares on gevent, no OS thread, bounded.

``socket.getaddrinfo`` stops the whole process (every greenlet, so the tunnel) for as long as
the name server takes: 5 s per try with glibc's defaults when it does not answer. gevent's
default resolver would run it in an OS thread instead. The c-ares resolver
(``gevent.resolver.ares``) sends and waits on the hub, so the dataplane carries packets while
a reload waits for names. It reads /etc/hosts and /etc/resolv.conf (name servers, search,
ndots) afresh for each :func:`lookup_ipv4` call, and not the modules of nsswitch.conf.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable

import gevent
from gevent.pool import Pool
from gevent.resolver.ares import Resolver

#: Seconds c-ares waits for the first answer of one try (later tries wait longer).
TRY_TIMEOUT = 2.0
#: Tries per name server.
TRIES = 2
#: Seconds one :func:`lookup_ipv4` call takes at most, however many names it is given.
DEADLINE = 10.0
#: Names looked up at once.
CONCURRENCY = 64


def lookup_ipv4(hostnames: Iterable[str], deadline: float = DEADLINE,
                **channel: object) -> dict[str, tuple[str, ...]]:
    """Look up every name at once; return name -> all its IPv4 addresses in the resolver's
    order (no repeats), or ``()`` for a name that did not resolve (no such name, no answer
    before ``deadline`` seconds).

    ``channel`` goes to the c-ares channel (``servers``, ``udp_port``: tests point them at a
    name server of their own). Call from any greenlet; it waits cooperatively.

    Raises:
        ValueError, OSError: the channel options are refused (a bad server address).
    """
    names = sorted(set(hostnames))
    found: dict[str, tuple[str, ...]] = dict.fromkeys(names, ())
    if not names:
        return found
    Resolver(timeout=TRY_TIMEOUT, tries=TRIES, **channel).close()  # options it refuses raise here
    pool = Pool(CONCURRENCY)
    answers = pool.imap_unordered(lambda n: (n, _addresses(n, channel)), names)
    try:
        with gevent.Timeout(deadline, False):
            for name, addresses in answers:
                found[name] = addresses
    finally:  # the feeder first: it would start the names still waiting
        answers.kill()
        pool.kill()
    return found


def _addresses(name: str, channel: dict[str, object]) -> tuple[str, ...]:
    """``name``'s IPv4 addresses, on a channel of its own: on one channel shared by several
    names, a name server that refuses (ICMP port unreachable) made c-ares fail the other
    queries from inside a sending greenlet, not the hub; gevent's callback then raised
    (AssertionError, a traceback on stderr) and those names waited out the deadline."""
    try:
        resolver = Resolver(timeout=TRY_TIMEOUT, tries=TRIES, **channel)
    except (OSError, ValueError):  # (no socket left, say): no answer for this name
        return ()
    try:
        infos = resolver.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_DGRAM)
    except (OSError, UnicodeError, ValueError):  # gaierror is an OSError
        return ()
    finally:
        resolver.close()
    return tuple(dict.fromkeys(str(info[4][0]) for info in infos))
