"""Config -> the host changes a node makes (alpaca.system.plan's input).

One mapping serves both ``run`` (which applies the plan) and ``check`` (which prints it), so
what ``check`` shows is what ``run`` does.
"""

from __future__ import annotations

from alpaca.config import Config, Mode
from alpaca.secrets import Secrets
from alpaca.system.plan import ChnrouteInput, HostPlanInput, Op, plan
from alpaca.system.plan import Mode as PlanMode


def host_plan_input(config: Config, secrets: Secrets) -> HostPlanInput:
    """What the host changes depend on, from the config and the secrets."""
    chn = config.chnroute
    return HostPlanInput(
        mode=PlanMode.CLIENT if config.mode is Mode.CLIENT else PlanMode.SERVER,
        tun=config.tun_name,
        net=str(config.net),
        address=str(config.tun_address.ip),
        mtu=config.mtu,
        gateway_ip=str(config.peer_address(config.gateway)) if config.gateway is not None else None,
        peer_addresses=tuple(sorted({p.address for p in secrets.peers.values()
                                     if p.address and p.peer_id != config.id})),
        local_routes=tuple(str(n) for n in config.local_routes),
        chnroute=None if chn is None else ChnrouteInput(
            str(chn.data), None if chn.gateway is None else str(chn.gateway), chn.table,
            f"{config.path}: chnroute.gateway"),
        route_table=config.route_table,
        txqueuelen=config.tun_txqueuelen,
    )


def host_plan(config: Config, secrets: Secrets) -> list[Op]:
    """The ordered host changes ``run`` makes for this config."""
    return plan(host_plan_input(config, secrets))
