"""sysctl writes inside a container: /proc/sys is read-only there."""

from __future__ import annotations

import pytest

from tests.helpers import netns, nsexec
from tests.system import PYTHON, ROOT

pytestmark = pytest.mark.netns

#: /proc/sys read-only in a mount namespace of its own, as a container runtime leaves it
READ_ONLY = "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec \"$@\""

WRITE = """
from alpaca.errors import SystemSetupError
from alpaca.system import sysctl
try:
    sysctl.write(sysctl.IP_FORWARD, "{value}")
    print("ok", sysctl.read(sysctl.IP_FORWARD))
except SystemSetupError as exc:
    print("refused", exc)
"""


def run_read_only(ns: str, value: str) -> str:
    return nsexec(ns, "unshare", "--mount", "--propagation", "private", "sh", "-c", READ_ONLY, "sh",
                  "env", f"PYTHONPATH={ROOT}", PYTHON, "-c", WRITE.format(value=value)).stdout.strip()


def test_sysctl_a_value_already_set_is_not_written_to_a_read_only_proc_sys() -> None:
    """The compose lab's daemons set ip_forward 1, which compose's ``sysctls`` had set: the
    write failed (EROFS) and every daemon exited at start."""
    with netns() as ns:
        nsexec(ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        assert run_read_only(ns, "1") == "ok 1"
        refused = run_read_only(ns, "0")  # a change still needs a writable /proc/sys
        assert refused.startswith("refused writing 0 to /proc/sys/net/ipv4/ip_forward: Read-only file system")
