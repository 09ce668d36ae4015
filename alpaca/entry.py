"""The ``alpaca-tunnel`` command's entry point (the console script and ``python -m alpaca``).

SIGHUP and SIGUSR1 are held here, before anything else is imported: importing the command
line takes 0.5-1.3 s, and until the handlers are in place their default action ends the
process (exit 129, nothing logged; systemd counts a death by SIGHUP as clean, so
``Restart=on-failure`` would leave the node down after a ``systemctl reload`` at boot). Only
the standard library is imported here.
"""

from __future__ import annotations

import os
import signal


class EarlySignals:
    """SIGHUP and SIGUSR1 from the first instant until ``run``'s daemon installs its own
    handlers. A SIGHUP is remembered (``reload_asked``) and becomes a reload once the daemon
    runs; a SIGUSR1 (a state dump) is ignored until there is state. Every other command
    gives them back (:meth:`release`)."""

    def __init__(self) -> None:
        self.reload_asked = False
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)

    def _on_hup(self, _signum: int, _frame: object) -> None:
        self.reload_asked = True

    def release(self) -> None:
        """The default actions back (a command other than ``run``); a SIGHUP that came
        meanwhile ends the process as it would have."""
        signal.signal(signal.SIGUSR1, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        if self.reload_asked:
            os.kill(os.getpid(), signal.SIGHUP)


def main() -> int:
    """Hold the signals, then run the command line; returns the exit code."""
    early = EarlySignals()
    from alpaca import cli  # after the handlers, on purpose

    return cli.main(early=early)
