"""The error hierarchy. `str()` of every error is a complete sentence for the user.

Peer input never raises out of the core: bad datagrams become counted drops. These errors are
for the operator: a broken config, a failed system change, a fatal runtime condition.
"""

from __future__ import annotations


class AlpacaError(Exception):
    """Base of every error the command line prints without a traceback."""


class ConfigError(AlpacaError):
    """The config or secrets file is invalid. `problems` holds one located line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class SystemSetupError(AlpacaError):
    """A change to the host (link, address, route, rule, nftables, sysctl) failed.

    Args:
        op: what was being done, spelled out (``adding route 10.17.0.0/16 dev alpaca0``).
        cause: the underlying exception.
        hint: how to fix it, when known.
    """

    def __init__(self, op: str, cause: BaseException | None = None, hint: str = "") -> None:
        self.op = op
        self.cause = cause
        self.hint = hint
        text = op if cause is None else f"{op}: {cause}"
        if hint:
            text = f"{text} ({hint})"
        super().__init__(text)


class TunnelError(AlpacaError):
    """A fatal runtime condition: the TUN device vanished, a port could not be bound, ..."""


class StateFileError(TunnelError):
    """The state file holds no epoch (its content is not one, or it is no regular file): the
    config's ``state_file`` may name the wrong file. The message never quotes the content."""
