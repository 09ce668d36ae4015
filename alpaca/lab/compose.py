"""The same lab in Docker: ``docker/compose.yml`` and ``docker/prometheus.yml`` from a topology.

One source of truth: the compose file only names the topology file (mounted read-only into
every container) and the node; each container runs ``alpaca-tunnel lab render-node NAME
--run``, which (:func:`render_node`) renames its interfaces to the topology's names (found by
address), replaces Docker's default route by the topology's routes, writes config.json and
secrets.txt from the topology (keys from a volume shared by all nodes, created by the first
node that starts) and execs the daemon.

Docker networks: one per link, with the link's subnet; Docker's own gateway address on each is
the subnet's last host address (a topology must not use it), on the management network the
first one. YAML is written by hand (no YAML library), deterministically, so a test compares
the output with the committed file.

Callers: the lab CLI (``lab compose``, ``lab render-node``) and tests; :func:`render_node`
runs as root inside a container.
"""

from __future__ import annotations

import json
import os
from ipaddress import IPv4Network
from pathlib import Path

from alpaca.lab import LabError, netns, nodes
from alpaca.lab.topology import METRICS_PORT, Node, Role, Topology

IMAGE = "alpaca-tunnel:lab"
PROMETHEUS_IMAGE = "prom/prometheus:v2.42.0"
GRAFANA_IMAGE = "grafana/grafana:10.4.2"
KEYS = "/lab/keys/secrets.txt"
TOPOLOGY_IN_CONTAINER = "/lab/topology.json"
NODE_DIR = "/run/alpaca-lab"


def docker_gateway(subnet: IPv4Network) -> str:
    """The address Docker's bridge takes on a link network: the last host address."""
    return str(subnet.broadcast_address - 1)


def _q(text: str) -> str:
    return json.dumps(text)


def render_compose(topology: Topology, topology_path: str) -> str:
    """compose.yml text; ``topology_path`` is the topology file relative to the docker/ dir."""
    out = [
        f"# Generated from {topology.source.name} by `alpaca-tunnel lab compose > docker/compose.yml`;",
        "# do not edit: change the topology and regenerate (docker/README.md).",
        'version: "2.4"',
        "",
        "services:",
    ]
    for node in topology.nodes:
        out += _service(topology, node, topology_path)
    mgmt = topology.management.network_address
    out += [
        "  prometheus:",
        f"    image: {PROMETHEUS_IMAGE}",
        "    volumes:",
        '      - "./prometheus.yml:/etc/prometheus/prometheus.yml:ro"',
        '      - "../config/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"',
        "    ports:",
        '      - "127.0.0.1:9090:9090"',
        "    networks:",
        "      mgmt:",
        f"        ipv4_address: {mgmt + 2}",
        "  grafana:",
        f"    image: {GRAFANA_IMAGE}",
        "    volumes:",
        '      - "../grafana/provisioning/dashboards:/etc/grafana/provisioning/dashboards:ro"',
        '      - "./grafana-datasource.yml:/etc/grafana/provisioning/datasources/prometheus.yml:ro"',
        '      - "../grafana/dashboards:/var/lib/grafana/dashboards/alpaca-tunnel:ro"',
        "    environment:",
        '      GF_AUTH_ANONYMOUS_ENABLED: "true"',
        '      GF_AUTH_ANONYMOUS_ORG_ROLE: "Viewer"',
        "    ports:",
        '      - "127.0.0.1:3000:3000"',
        "    networks:",
        "      mgmt:",
        f"        ipv4_address: {mgmt + 3}",
        "",
        "networks:",
    ]
    for link in topology.links:
        subnet = link.a.address.network
        if any(str(ep.address.ip) == docker_gateway(subnet) for ep in link.endpoints):
            raise LabError(f"link {link.name}: {docker_gateway(subnet)} is Docker's gateway address;"
                           " use another address in the topology")
        out += _network(f"l-{link.name}", subnet, docker_gateway(subnet))
    out += _network("mgmt", topology.management, str(topology.management_root_address.ip))
    out += ["", "volumes:", "  lab-keys: {}", ""]
    return "\n".join(out)


def _network(name: str, subnet: IPv4Network, gateway: str) -> list[str]:
    return [f"  {name}:", "    ipam:", "      config:", f"        - subnet: {subnet}",
            f"          gateway: {gateway}"]


def _service(topology: Topology, node: Node, topology_path: str) -> list[str]:
    command = ["alpaca-tunnel", "lab", "render-node", node.name, "--topology", TOPOLOGY_IN_CONTAINER,
               "--keys", KEYS, "--dir", NODE_DIR, "--run"]
    out = [
        f"  {node.name}:",
        f"    image: {IMAGE}",
        "    build:",
        "      context: ..",
        "      dockerfile: docker/Dockerfile",
        f"    hostname: {node.name}",
        "    cap_add:",
        "      - NET_ADMIN",
    ]
    if node.is_daemon:
        out += ["    devices:", '      - "/dev/net/tun:/dev/net/tun"',
                "    sysctls:", '      net.ipv4.ip_forward: "1"']
    out += [
        "    volumes:",
        f"      - {_q(topology_path + ':' + TOPOLOGY_IN_CONTAINER + ':ro')}",
        '      - "lab-keys:/lab/keys"',
        f"    command: [{', '.join(_q(c) for c in command)}]",
        "    networks:",
    ]
    for link, ep in topology.endpoints_of(node.name):
        out += [f"      l-{link.name}:", f"        ipv4_address: {ep.address.ip}"]
    if node.is_daemon:
        out += ["      mgmt:", f"        ipv4_address: {topology.management_address(node)}"]
    return out


def render_prometheus(topology: Topology, interval: str = "5s") -> str:
    """prometheus.yml scraping every daemon on its management address, with the alert rules
    (``alerts.yml`` beside it: config/prometheus/alerts.yml) and the job name they expect.
    Target labels ``lab_node``, ``peer_id`` and ``role`` (not ``node``: the exporter's own
    ``alpaca_build_info{node}`` would be renamed ``exported_node``)."""
    out = [
        f"# Generated from {topology.source.name} by `alpaca-tunnel lab compose --prometheus-config`.",
        "global:",
        f"  scrape_interval: {interval}",
        f"  evaluation_interval: {interval}",
        "rule_files:",
        "  - alerts.yml",
        "scrape_configs:",
        "  - job_name: alpaca-tunnel",
        "    static_configs:",
    ]
    for node in topology.daemons:
        out += [f'      - targets: ["{topology.management_address(node)}:{METRICS_PORT}"]',
                "        labels:", f'          lab_node: "{node.name}"',
                f'          peer_id: "{node.peer_id}"', f'          role: "{node.role.value}"']
    return "\n".join(out) + "\n"


def _interfaces() -> dict[str, str]:
    """Address -> interface name of the current namespace."""
    data = json.loads(netns.run(["ip", "-j", "-4", "addr", "show"]).stdout)
    return {a["local"]: link["ifname"] for link in data for a in link.get("addr_info", [])}


def _rename(current: str, wanted: str) -> None:
    if current != wanted:
        netns.run(["ip", "link", "set", "dev", current, "down"])
        netns.run(["ip", "link", "set", "dev", current, "name", wanted])
        netns.run(["ip", "link", "set", "dev", wanted, "up"])


def prepare_container(topology: Topology, node: Node) -> None:
    """Interface names, routes and the management network's isolation of ``node`` inside its
    container (root, NET_ADMIN)."""
    by_address = _interfaces()
    wanted = {str(ep.address.ip): ep.ifname for _, ep in topology.endpoints_of(node.name)}
    if node.is_daemon:
        wanted[str(topology.management_address(node))] = netns.MGMT_IFNAME
    for address, ifname in wanted.items():
        if address not in by_address:
            raise nodes.LabError(f"{node.name}: no interface has {address} (is the compose file"
                                 " generated from this topology?)")
        _rename(by_address[address], ifname)
    if node.is_daemon:  # as in the netns lab: the tunnel never reaches the management network
        netns.run(["nft", "-f", "-"], input_text=netns.MGMT_NFT)
    netns.run(["ip", "route", "del", "default"], check=False)
    for route in node.routes:
        netns.run(["ip", "route", "replace", route.to, "via", str(route.via)])


def render_node(topology: Topology, name: str, keys: Path, directory: Path, *, run: bool,
                container: bool = True) -> Path | None:
    """Write the node's files into ``directory``; with ``run``, exec its daemon (never returns).

    Hosts (role host) have no files; with ``run`` they sleep forever.
    """
    node = topology.node(name)
    if container:
        prepare_container(topology, node)
    config = None
    if node.role is not Role.HOST:
        key_map = nodes.ensure_keys(keys, topology)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            config = _write_flat(topology, node, directory, key_map)
        except OSError as exc:
            raise nodes.LabError(f"writing the files of {name} into {directory}: {exc.strerror or exc}"
                                 " (give --dir a writable directory)") from exc
    if run:
        argv = nodes.daemon_command(config) if config else ["sleep", "infinity"]
        os.execvp(argv[0], argv)
    return config


def _write_flat(topology: Topology, node: Node, directory: Path, keys: dict[str, str]) -> Path:
    (directory / "secrets.txt").write_text(nodes.render_secrets(topology, node, keys))
    (directory / "secrets.txt").chmod(0o600)
    path = directory / "config.json"
    path.write_text(json.dumps(nodes.render_config(topology, node, directory), indent=2) + "\n")
    return path
