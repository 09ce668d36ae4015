"""Shared pytest configuration.

Tests marked ``netns`` need root, /dev/net/tun and ``ip netns``; they are skipped otherwise
(CI runs as root, so they run there). Namespaces come from :func:`tests.helpers.netns`.
"""

from __future__ import annotations

import os
import shutil

import pytest

CAN_NETNS = (
    os.geteuid() == 0 and os.path.exists("/dev/net/tun") and shutil.which("ip") is not None
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CAN_NETNS:
        return
    skip = pytest.mark.skip(reason="needs root, /dev/net/tun and iproute2")
    for item in items:
        if "netns" in item.keywords:
            item.add_marker(skip)
