"""pre_up / post_up / pre_down / post_down commands, run as the original ran them.

Each command runs through ``/bin/sh -c`` in the order given. A failing command is logged with
its exit code and the tail of its output; start-up continues (the original's behaviour) unless
``strict_hooks`` is set, in which case the first failure raises and the daemon stops.
"""

from __future__ import annotations

import logging

from gevent import subprocess

from alpaca.errors import AlpacaError

log = logging.getLogger(__name__)

HOOK_TIMEOUT = 60.0
OUTPUT_TAIL = 400


class HookError(AlpacaError):
    """A hook command failed and hooks are strict."""


def run_hooks(stage: str, commands: tuple[str, ...], *, strict: bool = False) -> int:
    """Run ``commands`` of ``stage`` in order; return how many failed.

    Raises:
        HookError: on the first failure when ``strict``.
    """
    failed = 0
    for index, command in enumerate(commands):
        try:
            done = subprocess.run(["/bin/sh", "-c", command], capture_output=True, text=True,
                                  timeout=HOOK_TIMEOUT, check=False)
            code, output = done.returncode, (done.stdout + done.stderr).strip()
        except subprocess.TimeoutExpired:
            code, output = -1, f"timed out after {HOOK_TIMEOUT:.0f} s"
        if code == 0:
            log.info("hook ran stage=%s index=%d", stage, index)
            continue
        failed += 1
        log.warning("hook failed stage=%s index=%d exit=%d command=%r output=%r",
                    stage, index, code, command, output[-OUTPUT_TAIL:])
        if strict:
            raise HookError(f"{stage}_cmds[{index}] failed with exit code {code}: {command!r} "
                            f"(fix the command, or set \"strict_hooks\": false to continue anyway)")
    return failed
