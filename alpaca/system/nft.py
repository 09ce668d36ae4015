"""NAT, forwarding and TCP MSS clamping in an nftables table of our own; Docker's FORWARD DROP.

The table ``inet alpaca_<tun>`` is loaded with ``nft -f -`` as ONE transaction that declares the
table, deletes it and re-creates it, so a restart after a crash replaces the old table instead
of piling up duplicates (the original appended iptables rules without checking). It holds:

* ``postrouting`` (nat): ``ip saddr <net>/16 masquerade`` with no output-interface restriction,
  like the original: traffic that a policy route sends back into the tunnel is masqueraded too,
  which is what lets PBR chains between servers work (wiki "Routing Optimization").
* ``forward`` (filter): accept ``ip saddr <net>/16`` and ``ip daddr <net>/16``.
* ``mss`` (forward hook, mangle priority): SYNs going out of or coming in from the tunnel
  device get their MSS clamped to ``mtu - 40``, only when larger. The original set a fixed 1300
  on every interface.

An accept in our table does not override a drop in another base chain of the same hook. Docker
sets the iptables (iptables-nft) FORWARD policy to DROP, so on such a host we also insert accept
rules into ``DOCKER-USER`` (Docker's documented place) or, without it, into ``FORWARD``, tagged
``-m comment --comment alpaca-tunnel:<tun>``, added only if absent (``iptables -C``), and removed
by that comment (so removal also works after a crash). A host whose own nftables ruleset drops
forwarded traffic has to allow the tunnel network itself.

Callers: the control greenlet at set-up and teardown. Everything is idempotent.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import shlex
import shutil
import subprocess

from alpaca.errors import SystemSetupError
from alpaca.system.netlink import HINT_PERM, check_netns

log = logging.getLogger(__name__)

_IFNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
COMMENT_PREFIX = "alpaca-tunnel:"
IPTABLES_CHAINS = ("DOCKER-USER", "FORWARD")


def table_name(tun: str) -> str:
    """``alpaca_<tun>``; ``tun`` must be a plain interface name."""
    if not _IFNAME.match(tun):
        raise ValueError(f"bad interface name {tun!r}")
    return f"alpaca_{tun}"


#: Where the tools live on Debian and others, searched after $PATH (a cron-like PATH of
#: /usr/bin:/bin lacks them: an undo must not then take iptables for absent).
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def _tool(name: str) -> str | None:
    """The absolute path of the command ``name``, or None."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", os.defpath), *SBIN]))


def _run(
    argv: list[str], netns: str | None, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [_tool(argv[0]) or argv[0], *argv[1:]]
    if netns is not None:
        check_netns(netns)
        argv = [_tool("ip") or "ip", "netns", "exec", netns, *argv]
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise SystemSetupError(f"running {shlex.join(argv)}", exc) from exc
    if check and done.returncode:
        detail = done.stderr.strip().splitlines()
        hint = HINT_PERM if "Operation not permitted" in done.stderr else ""
        raise SystemSetupError(f"running {shlex.join(argv)}: {' / '.join(detail)}", None, hint)
    return done


def require_nft() -> None:
    if _tool("nft") is None:
        raise SystemSetupError("nft not found", None, "apt-get install nftables")


def ruleset(tun: str, net: str, mtu: int, *, nat: bool = True) -> str:
    """The nft script that (re)creates our table atomically.

    Args:
        tun: tunnel interface name.
        net: the tunnel network (``10.17.0.0/16``).
        mtu: tunnel MTU in bytes; the MSS is clamped to ``mtu - 40``.
        nat: include masquerade and forward accepts (server mode); MSS clamping always.
    """
    name = table_name(tun)
    network = ipaddress.IPv4Network(net, strict=False)
    mss = mtu - 40
    lines = [
        f"table inet {name} {{}}",
        f"delete table inet {name}",
        f"table inet {name} {{",
    ]
    if nat:
        lines += [
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f"    ip saddr {network} masquerade",
            "  }",
            "  chain forward {",
            "    type filter hook forward priority filter; policy accept;",
            f"    ip saddr {network} accept",
            f"    ip daddr {network} accept",
            "  }",
        ]
    clamp = f"tcp flags & (syn | rst) == syn tcp option maxseg size > {mss}"
    lines += [
        "  chain mss {",
        "    type filter hook forward priority mangle; policy accept;",
        f'    oifname "{tun}" {clamp} tcp option maxseg size set {mss}',
        f'    iifname "{tun}" {clamp} tcp option maxseg size set {mss}',
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def apply_table(tun: str, net: str, mtu: int, *, nat: bool = True, netns: str | None = None) -> None:
    """Create or replace our table in one transaction (idempotent)."""
    require_nft()
    _run(["nft", "-f", "-"], netns, ruleset(tun, net, mtu, nat=nat))
    log.info("nftables table applied table=%s nat=%s mss=%d", table_name(tun), nat, mtu - 40)


def table_exists(tun: str, netns: str | None = None) -> bool:
    """Whether our table's name is taken (by a run of ours, or by another program)."""
    require_nft()
    return _run(["nft", "list", "table", "inet", table_name(tun)], netns, check=False).returncode == 0


def remove_table(tun: str, netns: str | None = None) -> None:
    """Delete our table if present (declare-then-delete, one transaction)."""
    require_nft()
    name = table_name(tun)
    _run(["nft", "-f", "-"], netns, f"table inet {name} {{}}\ndelete table inet {name}\n")
    log.info("nftables table removed table=%s", name)


# --- Docker / iptables FORWARD DROP ------------------------------------------------------


def _has_iptables() -> bool:
    return _tool("iptables") is not None


#: Exit codes of ``iptables -S`` that mean there is nothing of ours: 1 no such chain, 3 no
#: usable iptables (legacy iptables without its kernel table, on an nftables-only host).
_LISTED = (0, 1, 3)


def _iptables(args: list[str], netns: str | None,
              ok: tuple[int, ...] = (0, 1)) -> subprocess.CompletedProcess[str]:
    """Run ``iptables -w 5 <args>`` (waiting up to 5 s for the xtables lock another program
    holds: Docker does). Exit 1 is an answer (no such chain, no such rule) and is returned,
    and so is every code in ``ok``.

    Raises:
        SystemSetupError: any other failure (2: bad arguments, 4: the lock or another
            resource problem).
    """
    done = _run(["iptables", "-w", "5", *args], netns, check=False)
    if done.returncode not in ok:
        detail = " / ".join(done.stderr.strip().splitlines())
        raise SystemSetupError(f"running iptables {shlex.join(args)}: exit {done.returncode}: {detail}",
                               None, "retried at the next start, or run `alpaca-tunnel cleanup`")
    return done


def forward_blocked_chain(netns: str | None = None) -> str | None:
    """The iptables chain to put our accepts in, or None when nothing blocks forwarding.

    ``DOCKER-USER`` when it exists, else ``FORWARD`` when its policy is DROP.
    """
    if not _has_iptables():
        return None
    if _iptables(["-S", "DOCKER-USER"], netns, _LISTED).returncode == 0:
        return "DOCKER-USER"
    out = _iptables(["-S", "FORWARD"], netns, _LISTED).stdout
    return "FORWARD" if "-P FORWARD DROP" in out.splitlines() else None


def _accept_specs(tun: str, net: str) -> list[list[str]]:
    network = str(ipaddress.IPv4Network(net, strict=False))
    comment = ["-m", "comment", "--comment", f"{COMMENT_PREFIX}{tun}"]
    return [["-s", network, *comment, "-j", "ACCEPT"], ["-d", network, *comment, "-j", "ACCEPT"]]


def add_forward_accepts(tun: str, net: str, netns: str | None = None) -> str | None:
    """Insert our accept rules where a DROP policy would block them (only if absent).

    Returns:
        The chain used, or None when none was needed.
    """
    chain = forward_blocked_chain(netns)
    if chain is None:
        return None
    for spec in _accept_specs(tun, net):
        if _iptables(["-C", chain, *spec], netns).returncode != 0:
            _run(["iptables", "-w", "5", "-I", chain, "1", *spec], netns)
    log.info("iptables forward accepts added chain=%s net=%s dev=%s", chain, net, tun)
    return chain


def remove_forward_accepts(tun: str, netns: str | None = None) -> int:
    """Delete every rule tagged ``alpaca-tunnel:<tun>`` from DOCKER-USER and FORWARD (a chain
    that does not exist, or a rule gone meanwhile, is done).

    Returns:
        The number of rules deleted.
    Raises:
        SystemSetupError: iptables failed otherwise (the journal keeps the step to retry).
    """
    if not _has_iptables():
        return 0
    removed = 0
    tag = f"{COMMENT_PREFIX}{tun}"
    for chain in IPTABLES_CHAINS:
        listing = _iptables(["-S", chain], netns, _LISTED)
        if listing.returncode:
            continue
        for line in listing.stdout.splitlines():
            words = shlex.split(line)
            if len(words) < 2 or words[0] != "-A" or tag not in words:
                continue
            removed += _iptables(["-D", *words[1:]], netns).returncode == 0
    if removed:
        log.info("iptables forward accepts removed count=%d dev=%s", removed, tun)
    return removed
