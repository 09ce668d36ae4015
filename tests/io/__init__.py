"""Tests of the gevent shell: drivers over real loopback and namespaces, and the fakes."""

from __future__ import annotations

import gc

import gevent


def live_greenlets() -> list[gevent.Greenlet]:
    """Every gevent Greenlet that has not finished (a leak check after stop/close)."""
    gc.collect()
    return [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead]
