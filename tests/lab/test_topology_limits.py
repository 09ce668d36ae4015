"""Hostile topologies: each is a located ConfigError, never a traceback, and the lab's size
is bounded (pure: parses only, no namespace is created)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from alpaca import cli
from alpaca.errors import ConfigError
from alpaca.lab.jsonshape import MAX_DEPTH, MAX_VALUES
from alpaca.lab.topology import (
    MAX_FILE_BYTES,
    MAX_LINKS,
    MAX_NODES,
    load_topology,
    parse_topology,
)

HUGE = 10**5000  # str() of it raises ValueError ("Exceeds the limit") in Python >= 3.11
BASE: dict[str, Any] = json.loads(load_topology().source.read_text())


def _nested(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels):
        value = [value]
    return value


def _contains_itself() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["again"] = loop
    return loop


def _hosts(count: int) -> list[dict[str, str]]:
    return [{"name": f"h{i}", "role": "host"} for i in range(count)]


def _links(count: int) -> list[dict[str, Any]]:
    return [{"name": f"x{i}", "endpoints": [
        {"node": "inet", "ifname": f"x{i}", "address": f"10.{100 + i // 64}.{i % 64 * 4}.1/30"},
        {"node": "s11", "ifname": f"x{i}", "address": f"10.{100 + i // 64}.{i % 64 * 4}.2/30"}]}
        for i in range(count)]


def _parse(change: Callable[[dict[str, Any]], object]) -> list[str]:
    data = copy.deepcopy(BASE)
    change(data)
    with pytest.raises(ConfigError) as info:
        parse_topology(data, Path("topo.json"))
    return info.value.problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # integers too long to print or convert
        (lambda d: d["nodes"][0].update(port=HUGE),
         "nodes[0].port: an integer of about 5001 digits is too large"),
        (lambda d: d["nodes"][0].update(id=HUGE), "nodes[0].id: an integer of about 5001 digits"),
        (lambda d: d["nodes"][3].update(gateway=HUGE), "nodes[3].gateway: an integer of about"),
        (lambda d: d["nodes"][3].update(forwarders=[HUGE]), "nodes[3].forwarders[0]: an integer of"),
        (lambda d: d["nodes"][3].update(uplinks=[HUGE]), "nodes[3].uplinks[0]: an integer of"),
        (lambda d: d.update(internet=HUGE), "internet: an integer of"),
        (lambda d: d.update(management=HUGE), "management: an integer of"),
        (lambda d: d["links"][0]["endpoints"][0].update(address=HUGE), "links[0].endpoints[0].address: an"),
        (lambda d: d["links"][0]["endpoints"][0].update(ifname=HUGE), "links[0].endpoints[0].ifname: an"),
        (lambda d: d["nodes"][0].update(routes=[{"to": "default", "via": HUGE}]), "routes[0].via: an"),
        (lambda d: d["links"][0].update(impair={"loss_pct": HUGE}), "links[0].impair.loss_pct: an"),
        (lambda d: d["links"][0].update(impair={"delay_ms": HUGE}), "links[0].impair.delay_ms: an"),
        (lambda d: d["nodes"][0].update(config={"port": HUGE}), "nodes[0].config.port: an integer of"),
        (lambda d: d.update(net="1" * 5000 + ".1"), 'net: "111111'),
        # nesting and structures that contain themselves
        (lambda d: d.update(name=_nested(100_000)), "topo.json: name[0][0][0][0][0][0][0][0][0][0]"),
        (lambda d: d["nodes"][0].update(id=_nested(5000)), "nodes[0].id[0]"),
        (lambda d: d["nodes"][0].update(role=_nested(5000)), "nodes[0].role[0]"),
        (lambda d: d["nodes"][0].update(config={"x": _nested(MAX_DEPTH)}),
         f"nested more than {MAX_DEPTH} levels"),
        (lambda d: d["nodes"][0].update(config=_contains_itself()), "nodes[0].config.again: contains itself"),
        (lambda d: d["nodes"].append(d["nodes"]), "nodes[5]: contains itself"),
        # values JSON cannot hold, numbers that are not numbers
        (lambda d: d["nodes"][0].update({1: 2}), "nodes[0]: has a key that is not a string (1)"),
        (lambda d: d.update(name={"x"}), "name: is not a JSON value (a set)"),
        (lambda d: d["links"][0].update(impair={"delay_ms": float("nan")}), "delay_ms: NaN is not a finite"),
        (lambda d: d["links"][0].update(impair={"rate_mbit": float("inf")}), "rate_mbit: Infinity is not"),
        # wrong types that str() used to turn into accepted values
        (lambda d: d["nodes"][0].update(port=True), "nodes[0].port: true is not a port number 0-65535"),
        (lambda d: d.update(name={"a": 1}), 'name: {"a": 1} is not a string of 1-64 characters'),
        (lambda d: d["nodes"][0].update(routes=[{"to": 5, "via": "198.18.0.1"}]),
         'nodes[0].routes[0].to: 5 is not "default" or a network'),
        (lambda d: d["nodes"][0].update(routes=[{"to": "default", "via": 3322430721}]),
         "nodes[0].routes[0].via: 3322430721 is not an IPv4 address"),
        # impairments out of range
        (lambda d: d["links"][0].update(impair={"loss_pct": True}),
         "loss_pct: true is not a number (allowed: 0-100"),
        (lambda d: d["links"][0].update(impair={"delay_ms": 10**7}), "delay_ms: 10000000 is out of range"),
        (lambda d: d["links"][0].update(impair={"jitter_ms": 5}), "jitter_ms: 5 needs a delay"),
        # counts
        (lambda d: d["nodes"].extend(_hosts(MAX_NODES)),
         f"nodes: has {MAX_NODES + 5} entries; the lab builds at most {MAX_NODES} nodes"),
        (lambda d: d["links"].extend(_links(MAX_LINKS)),
         f"links: has {MAX_LINKS + 5} entries; the lab builds at most {MAX_LINKS} links"),
        (lambda d: d["nodes"][3].update(forwarders=["1.2"] * 4),
         "nodes[3].forwarders: has 4 entries, at most 3"),
        (lambda d: d["nodes"][3].update(uplinks=["up-a"] * 5), "nodes[3].uplinks: has 5 entries, at most 4"),
        (lambda d: d["nodes"][0].update(routes=[{"to": "default", "via": "198.18.0.1"}] * 17),
         "nodes[0].routes: has 17 entries, at most 16"),
        (lambda d: d["nodes"][0].update(config={"x": [0] * MAX_VALUES}),
         f"top: has more than {MAX_VALUES} values"),
        (lambda d: d["links"].append(copy.deepcopy(d["links"][0]) | {"name": "b"}),
         'links: name "b" is used twice'),
    ],
)
def test_topology_hostile_input_is_a_located_error(change: Callable[[dict[str, Any]], object],
                                                    expected: str) -> None:
    problems = _parse(change)
    assert any(p.startswith("topo.json: ") and expected in p for p in problems), problems


def test_topology_node_count_is_bounded() -> None:
    data = copy.deepcopy(BASE)
    data["nodes"] += _hosts(MAX_NODES - len(data["nodes"]))
    assert len(parse_topology(data, Path("topo.json")).nodes) == MAX_NODES
    data["nodes"] += _hosts(MAX_NODES + 1)[-1:]
    with pytest.raises(ConfigError, match=rf"at most {MAX_NODES} nodes \(each is a network namespace"):
        parse_topology(data, Path("topo.json"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[" * 100_000 + "]" * 100_000, f"nested too deeply (at most {MAX_DEPTH} levels)"),
        ('{"nodes": [{"port": ' + "9" * 5000 + "}]}",
         "an integer has thousands of digits (at most 19 digits)"),
        ('{"name": NaN}', "name: NaN is not a finite number"),
        ('{"name": -Infinity}', "name: -Infinity is not a finite number"),
        (" " * (MAX_FILE_BYTES + 1), "larger than 1 MiB"),
    ],
)
def test_topology_hostile_file_is_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "topo.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert any(p.startswith(f"{path}: ") and expected in p for p in info.value.problems), info.value.problems


def test_topology_hostile_file_from_the_command_line_has_no_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "topo.json"
    path.write_text('{"nodes": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert cli.main(["lab", "compose", "--topology", str(path)]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"{path}: lists or objects nested too deeply" in err
    assert "Traceback" not in err
