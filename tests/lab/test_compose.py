"""docker/compose.yml and docker/prometheus.yml are generated from the default topology."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca.lab.compose import NODE_DIR, render_compose, render_prometheus
from alpaca.lab.topology import DEFAULT_TOPOLOGY, load_topology
from alpaca.paths import default_config_path

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"


def _compose() -> str:
    return render_compose(load_topology(), os.path.relpath(DEFAULT_TOPOLOGY, DOCKER))


def test_compose_committed_file_is_generated() -> None:
    assert (DOCKER / "compose.yml").read_text() == _compose(), (
        "docker/compose.yml is stale: run alpaca-tunnel lab compose > docker/compose.yml")


def test_compose_committed_prometheus_config_is_generated() -> None:
    assert (DOCKER / "prometheus.yml").read_text() == render_prometheus(load_topology()), (
        "docker/prometheus.yml is stale: run"
        " alpaca-tunnel lab compose --prometheus-config > docker/prometheus.yml")


def test_compose_has_a_service_per_node_and_a_network_per_link() -> None:
    text = _compose()
    topo = load_topology()
    for node in topo.nodes:
        assert f"\n  {node.name}:\n" in text
    for link in topo.links:
        assert f"\n  l-{link.name}:\n    ipam:" in text
    assert "ipv4_address: 172.16.12.2" in text and "/dev/net/tun" in text


def test_compose_validates_with_docker_compose(tmp_path: Path) -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (apt-get install -y docker-compose to run this check)")
    result = subprocess.run([tool, "-f", str(DOCKER / "compose.yml"), "config", "-q"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_compose_the_image_command_finds_the_nodes_config() -> None:
    """``docker-compose exec NODE alpaca-tunnel show`` needs no option: the image's command
    (a copy of the launcher: a link would be resolved to the virtualenv) looks for its config
    in a directory linked to the one render-node fills."""
    dockerfile = (DOCKER / "Dockerfile").read_text()
    command = Path("/usr/local/bin/alpaca-tunnel")
    assert f"install -m 0755 /opt/alpaca/bin/alpaca-tunnel {command}" in dockerfile
    assert re.search(rf"\bln -s {NODE_DIR} {default_config_path(command).parent}\s", dockerfile)
    assert f'"--dir", "{NODE_DIR}"' in (DOCKER / "compose.yml").read_text()


def test_compose_grafana_finds_the_dashboards_and_prometheus() -> None:
    """The dashboards are mounted where the provider reads them, and the datasource names the
    prometheus service (127.0.0.1 inside the grafana container is Grafana itself)."""
    provider = (ROOT / "grafana/provisioning/dashboards/alpaca.yml").read_text()
    path = next(line.split(":", 1)[1].strip() for line in provider.splitlines()
                if line.strip().startswith("path:"))
    compose = (DOCKER / "compose.yml").read_text()
    assert f'"../grafana/dashboards:{path}:ro"' in compose
    source = (DOCKER / "grafana-datasource.yml").read_text()
    assert "url: http://prometheus:9090" in source and "\n  prometheus:\n" in compose
    assert "datasources/prometheus.yml" in compose


def test_compose_a_link_at_dockers_gateway_address_is_a_clear_error(tmp_path: Path) -> None:
    """It was a ValueError: a traceback and "this is a bug"."""
    text = DEFAULT_TOPOLOGY.read_text().replace('"172.16.12.1/24"', '"172.16.12.254/24"')
    topology = tmp_path / "topology.json"
    topology.write_text(text)
    done = subprocess.run([sys.executable, "-m", "alpaca", "lab", "compose", "--topology", str(topology)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "link a: 172.16.12.254 is Docker's gateway address" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.netns
def test_compose_a_node_container_is_set_up_as_the_netns_lab_sets_it_up(tmp_path: Path) -> None:
    """render-node in a container (here a namespace with the compose file's addresses on
    interfaces Docker named): the interfaces get the topology's names, the routes its routes,
    and, as in the netns lab, nothing is forwarded to or from the management network (the
    compose lab lacked that: the tunnel could reach Prometheus and the Docker host)."""
    from tests.helpers import netns, nsexec

    topology = load_topology()
    node = topology.node("s11")
    wanted = [(ep.ifname, str(ep.address)) for _, ep in topology.endpoints_of("s11")]
    wanted.append(("mgmt", f"{topology.management_address(node)}/{topology.management.prefixlen}"))
    with netns() as ns:
        for i, (_, address) in enumerate(wanted):
            nsexec(ns, "ip", "link", "add", f"eth{i}", "type", "veth", "peer", "name", f"peer{i}")
            nsexec(ns, "ip", "addr", "add", address, "dev", f"eth{i}")
            nsexec(ns, "ip", "link", "set", f"eth{i}", "up")
            nsexec(ns, "ip", "link", "set", f"peer{i}", "up")
        done = nsexec(ns, sys.executable, "-m", "alpaca", "lab", "render-node", "s11", "--keys",
                      str(tmp_path / "keys"), "--dir", str(tmp_path / "s11"), check=False)
        assert done.returncode == 0, done.stderr
        names = nsexec(ns, "ip", "-br", "link").stdout
        assert all(ifname in names for ifname, _ in wanted)
        assert "default via 198.18.0.1 dev wan" in nsexec(ns, "ip", "route").stdout
        rules = nsexec(ns, "nft", "list", "table", "inet", "alpaca_lab_mgmt").stdout
        assert 'iifname "mgmt" drop' in rules and 'oifname "mgmt" drop' in rules
    assert (tmp_path / "s11" / "config.json").exists()


@pytest.mark.parametrize("where", ["keys", "dir"])
def test_compose_render_node_into_a_path_it_cannot_write_is_a_clear_error(tmp_path: Path, where: str) -> None:
    """``--keys`` or ``--dir`` under /proc printed a traceback and "this is a bug"."""
    keys, directory = tmp_path / "keys.txt", tmp_path / "out"
    if where == "keys":
        keys = Path("/proc/alpaca-nope/keys.txt")
    else:
        directory = Path("/proc/alpaca-nope")
    done = subprocess.run([sys.executable, "-m", "alpaca", "lab", "render-node", "s11", "--no-container",
                           "--keys", str(keys), "--dir", str(directory)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "this is a bug" not in done.stderr
    assert ("the lab's key file" if where == "keys" else "writing the files of s11") in done.stderr
