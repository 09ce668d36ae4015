"""The topology file and the per-node files generated from it (pure: no root)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alpaca.config import Mode, load_config
from alpaca.errors import ConfigError
from alpaca.lab import Lab, nodes
from alpaca.lab.impair import nft_script
from alpaca.lab.topology import Impairment, Role, load_topology, parse_topology


def test_topology_default_is_valid() -> None:
    topo = load_topology()
    assert [n.namespace for n in topo.nodes] == ["alp-s11", "alp-f12", "alp-f13", "alp-c161", "alp-inet"]
    assert topo.node("s11").peer_id == "1.1"
    assert topo.internet == "inet"
    assert {ep.address.ip.exploded for _, ep in topo.endpoints_of("inet")} == {"198.18.0.1"}


def test_topology_client_reaches_forwarders_on_its_uplinks() -> None:
    topo = load_topology()
    assert str(topo.address_seen_from("c161", "f12")) == "172.16.12.1"
    assert str(topo.address_seen_from("c161", "f13")) == "172.16.13.1"
    assert topo.address_seen_from("c161", "s11") is None


def _write_node(tmp_path: Path, name: str) -> Path:
    topo = load_topology()
    keys = nodes.ensure_keys(tmp_path / "secrets.txt", topo)
    return nodes.write_node_files(topo, topo.node(name), tmp_path, keys)


def test_topology_client_config_has_gateway_forwarders_and_ports(tmp_path: Path) -> None:
    config = load_config(_write_node(tmp_path, "c161"))
    assert config.mode is Mode.CLIENT
    assert config.gateway == (1 << 8) + 1
    assert config.forwarders == ((1 << 8) + 2, (1 << 8) + 3)
    assert [(p.name, p.interface) for p in config.ports] == [("up-a", "up-a"), ("up-b", "up-b")]
    assert config.dup.policy.value == "syn_dns"
    assert (config.metrics.host, config.metrics.port) == ("172.31.254.14", 9586)


def test_topology_secrets_show_addresses_as_seen_from_the_node(tmp_path: Path) -> None:
    _write_node(tmp_path, "c161")
    lines = (tmp_path / "nodes" / "c161" / "secrets.txt").read_text().splitlines()[1:]
    rows = {line.split()[0]: line.split()[2:] for line in lines}
    assert rows["1.2"] == ["172.16.12.1", "null", "10002"]
    assert rows["1.3"] == ["172.16.13.1", "null", "10003"]
    assert rows["1.1"] == ["null", "null", "null"]


def test_topology_server_config_loads(tmp_path: Path) -> None:
    config = load_config(_write_node(tmp_path, "s11"))
    assert config.mode is Mode.SERVER and config.port == 10001


ENSURE_KEYS = """
import json, os, sys
from pathlib import Path
from alpaca.lab import nodes
from alpaca.lab.topology import load_topology
os.getpid = lambda: 1  # each compose container runs it as pid 1
print(json.dumps(nodes.ensure_keys(Path(sys.argv[1]), load_topology())))
"""


def test_topology_keys_written_at_once_by_several_containers_agree(tmp_path: Path) -> None:
    """The compose lab's containers make the key file at once on one volume, each as pid 1:
    they shared one temporary name (``.secrets.txt.1``) and truncated or removed each
    other's file (errors, and nodes with different keys)."""
    for round_ in range(10):
        path = tmp_path / f"r{round_}" / "secrets.txt"
        if round_ % 2:  # the topology grew: the file lacks a node's key
            nodes.ensure_keys(path, load_topology())
            path.write_text("\n".join(path.read_text().splitlines()[:-1]) + "\n")
        procs = [subprocess.Popen([sys.executable, "-c", ENSURE_KEYS, str(path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
        answers = [p.communicate(timeout=60) for p in procs]
        assert all(p.returncode == 0 for p in procs), [err for _, err in answers]
        assert len({out for out, _ in answers}) == 1
        assert json.loads(answers[0][0]) == nodes.parse_keys(path.read_text())
        assert path.stat().st_mode & 0o777 == 0o600


def test_topology_a_key_file_that_cannot_be_written_is_a_lab_error(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    with pytest.raises(nodes.LabError, match=r"the lab's key file .*keys: Is a directory"):
        nodes.ensure_keys(tmp_path / "keys", load_topology())


def test_topology_keys_are_fresh_and_shared(tmp_path: Path) -> None:
    topo = load_topology()
    first = nodes.ensure_keys(tmp_path / "a.txt", topo)
    again = nodes.ensure_keys(tmp_path / "a.txt", topo)
    other = nodes.ensure_keys(tmp_path / "b.txt", topo)
    assert first == again and first != other
    assert all(len(k) == 64 for k in first.values())


def test_topology_overrides_win(tmp_path: Path) -> None:
    data = json.loads(load_topology().source.read_text())
    data["nodes"][3]["config"] = {"dup": {"policy": "all"}}
    topo = parse_topology(data, tmp_path / "t.json")
    assert nodes.render_config(topo, topo.node("c161"), tmp_path)["dup"] == {"policy": "all"}


def test_topology_names_the_lab_creates_are_distinct(tmp_path: Path) -> None:
    """Nodes "x1a" and "x1": building x1 deleted x1a's management link (the temporary names
    of a veth pair came from a node's name, cut to 8 characters)."""
    data = json.loads(load_topology().source.read_text())
    data["nodes"][1]["name"], data["nodes"][2]["name"] = "x1a", "x1"
    for link in data["links"]:
        for ep in link["endpoints"]:
            ep["node"] = {"f12": "x1a", "f13": "x1"}.get(ep["node"], ep["node"])
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    namespaces, links = Lab(load_topology(path), tmp_path).created_names()
    assert len(set(links)) == len(links) and len(set(namespaces)) == len(namespaces)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d["nodes"][3].update(id="16.x"), 'nodes[3].id: "16.x" is not a peer id'),
        (lambda d: d["nodes"][3].update(forwarders=["1.9"]), 'nodes[3].forwarders[0]: "1.9" is not the id'),
        (lambda d: d["nodes"][0].update(role="router"), "nodes[0].role"),
        (lambda d: d["links"][0]["endpoints"][0].update(node="nope"), 'links[0].endpoints[0].node: "nope"'),
        (lambda d: d["links"][1]["endpoints"][0].update(address="10.99.0.1/24"), "not in one subnet"),
        (lambda d: d.update(internet="moon"), 'internet: "moon" is not a node name'),
        (lambda d: d["nodes"][1].update(colour="red"), "nodes[1].colour: unknown key"),
        (lambda d: d["links"][0].update(impair={"loss_pct": 140}), "links[0].impair.loss_pct"),
        (lambda d: d["nodes"][3].update(forwarders=5), "nodes[3].forwarders: 5 is not a list"),
        (lambda d: d["nodes"][3].update(uplinks=5), "nodes[3].uplinks: 5 is not a list"),
        (lambda d: d["nodes"][3].update(routes=5), "nodes[3].routes: 5 is not a list"),
        (lambda d: d.update(net="abc"), 'net: "abc" is not the first two bytes'),
        (lambda d: d.update(management="172.31.254.0/30"), "management: 172.31.254.0/30 is too small"),
        (lambda d: d["nodes"][1].update(name="gmt"), 'nodes[1].name: "gmt" is taken'),
    ],
)
def test_topology_errors_are_located(tmp_path: Path, change, expected: str) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(load_topology().source.read_text())
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert any(expected in p and str(path) in p for p in info.value.problems), info.value.problems


def test_topology_not_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{"nodes": [\n,]}')
    with pytest.raises(ConfigError, match=r"bad.json:2:1: invalid JSON: Expecting value"):
        load_topology(path)


def test_topology_json_slips_name_their_fix(tmp_path: Path) -> None:
    """A topology file is written by hand like the config: its comment or trailing comma was
    "Expecting property name enclosed in double quotes" too, its emptiness "Expecting value"."""
    path = tmp_path / "bad.json"
    path.write_text('{"nodes": [],\n // links follow\n}')
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert info.value.problems == [f"{path}:2:2: invalid JSON: a comment (JSON has no comments:"
                                   " remove it)"]
    path.write_text("")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert info.value.problems == [f"{path}: the file is empty: write the topology in it (see"
                                   " default.json, the default), or give another file"]


def test_topology_not_utf8_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b'{"name": "\xff"}')
    with pytest.raises(ConfigError, match=r"bad.json: not UTF-8 text"):
        load_topology(path)


def test_topology_roles() -> None:
    assert [n.role for n in load_topology().nodes] == [
        Role.SERVER, Role.FORWARDER, Role.FORWARDER, Role.CLIENT, Role.HOST]


def test_impair_nft_script_drops_on_receiving_interface() -> None:
    script = nft_script([("up-a", Impairment(loss_pct=10), 0), ("up-b", Impairment(delay_ms=20), 47001)])
    assert 'iifname "up-a" numgen random mod 1000 < 100 counter drop' in script
    assert 'iifname "up-b" meta l4proto udp tproxy ip to :47001' in script
    assert nft_script([]).count("table inet alpaca_lab_impair") == 2  # create-then-delete only
