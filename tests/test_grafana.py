"""Dashboards, alert rules and docs stay in sync with the metrics the collector really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.test_metrics import scenario, scrape

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
ALERTS = ROOT / "config" / "prometheus" / "alerts.yml"
DOCS = ROOT / "docs" / "metrics.md"
DS_UIDS = {"${DS_PROMETHEUS}", "prometheus"}
METRIC = re.compile(r"\balpaca_[a-z0-9_]+\b")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def exprs(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    found = [t["expr"] for p in panels(dashboard) for t in p.get("targets", []) if t.get("expr")]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            found.append(var["query"] if isinstance(var["query"], str) else var["query"]["query"])
    return found


def alert_exprs(text: str) -> list[str]:
    """The ``expr`` values of a rules file (one-line or ``|`` block), without a YAML library."""
    out: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not match:
            continue
        indent, rest = len(match.group(1)), match.group(2)
        if rest not in ("|", ">"):
            out.append(rest)
            continue
        block = []
        for follow in lines[i + 1:]:
            if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                break
            block.append(follow.strip())
        out.append(" ".join(block).strip())
    return out


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Sample names (with _total/_bucket/...) scraped from real engines: client, server, forwarder."""
    sc = scenario()
    names: set[str] = set()
    for node in (sc.s, sc.f1, sc.c):
        names |= {name for name, _ in scrape(sc.registry(node))}
    return names


def test_grafana_dashboards_exist() -> None:
    assert {p.name for p in DASHBOARDS} >= {"alpaca-overview.json", "alpaca-peer.json"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_grafana_dashboard_is_valid_json_with_unique_panel_ids(path: Path) -> None:
    dashboard = load(path)
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    assert dashboard["uid"] and dashboard["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_grafana_every_panel_uses_the_provisioned_datasource(path: Path) -> None:
    dashboard = load(path)
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        source = panel["datasource"]
        assert source["type"] == "prometheus" and source["uid"] in DS_UIDS, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in DS_UIDS, panel["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["current"]["value"] == "prometheus"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_grafana_metric_names_exist_in_a_real_scrape(path: Path, exported: set[str]) -> None:
    used = {name for expr in exprs(load(path)) for name in METRIC.findall(expr)}
    assert used, "the dashboard queries alpaca metrics"
    assert used - exported == set()


def test_grafana_peer_dashboard_has_node_peer_path_variables() -> None:
    dashboard = load(ROOT / "grafana" / "dashboards" / "alpaca-peer.json")
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    for name in ("node", "peer", "path"):
        assert variables[name]["type"] == "query"
        assert variables[name]["query"].startswith("label_values("), name
        assert variables[name]["datasource"]["uid"] in DS_UIDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_grafana_hidden_instance_follows_the_node_picker(path: Path) -> None:
    """``instance`` is derived from ``node``: with node set, its "All" must mean the instances
    of that node (Grafana's regex of the values), not every instance (an allValue of ".*")."""
    variables = {v["name"]: v for v in load(path)["templating"]["list"]}
    instance = variables["instance"]
    assert '$node' in instance["query"] and instance["refresh"] in (1, 2)
    assert "allValue" not in instance


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_grafana_legends_name_the_peer_and_the_node(path: Path) -> None:
    """The node and peer pickers allow several (All by default): a line of a panel that
    follows the peer picker names its peer, and every line names its node (instance), or
    the paths of two peers or two nodes look the same. Tables show the labels as columns."""
    dashboard = load(path)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["peer"]["multi"] and variables["node"]["multi"]
    for panel in panels(dashboard):
        if panel["type"] in ("row", "table"):
            continue
        for target in panel["targets"]:
            legend = target["legendFormat"]
            if "$peer" in target["expr"]:
                assert "{{peer}}" in legend, (panel["title"], legend)
            assert "{{instance}}" in legend or "{{node}}" in legend, (panel["title"], legend)


def test_grafana_overview_shows_what_duplicate_send_buys() -> None:
    dashboard = load(ROOT / "grafana" / "dashboards" / "alpaca-overview.json")
    titles = {p["title"]: p for p in panels(dashboard)}
    panel = titles["What duplicate-send buys: loss per path vs end to end"]
    joined = " ".join(t["expr"] for t in panel["targets"])
    assert "alpaca_path_data_lost_total" in joined and "alpaca_peer_lost_packets_total" in joined
    for wanted in ("Peers up", "Throughput per peer (inner packets)", "RTT per path (smoothed)",
                   "First-arrival share per path", "Drops by reason (expected extra copies left out)",
                   "Duplicate-send queue"):
        assert wanted in titles
    drops = " ".join(t["expr"] for t in titles["Drops by reason (expected extra copies left out)"]["targets"])
    assert 'reason!="duplicate"' in drops and "alpaca_udp_receive_drops_total" in drops


def test_grafana_provisioning_points_at_the_uid() -> None:
    datasource = (ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert re.search(r"^\s+uid: prometheus$", datasource, re.M)
    assert re.search(r"^\s+type: prometheus$", datasource, re.M)
    provider = (ROOT / "grafana" / "provisioning" / "dashboards" / "alpaca.yml").read_text()
    assert "apiVersion: 1" in provider and re.search(r"^\s+type: file$", provider, re.M)


def test_grafana_alert_rules_use_exported_metrics(exported: set[str]) -> None:
    found = alert_exprs(ALERTS.read_text())
    assert len(found) >= 4
    used = {name for expr in found for name in METRIC.findall(expr)}
    assert used - exported == set()
    text = ALERTS.read_text()
    for alert in ("AlpacaPeerDown", "AlpacaPathLoss", "AlpacaPathRttJump", "AlpacaReplayTooOldRising"):
        assert f"alert: {alert}" in text


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_grafana_promtool_accepts_the_rules_and_the_example_config() -> None:
    rules = subprocess.run(["promtool", "check", "rules", str(ALERTS)], capture_output=True, text=True,
                           timeout=60, check=False)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    example = ROOT / "config" / "prometheus" / "prometheus.example.yml"
    config = subprocess.run(["promtool", "check", "config", str(example)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert config.returncode == 0, config.stdout + config.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_grafana_alert_rules_pass_their_unit_tests() -> None:
    """tests/data/alerts_test.yml: a gateway down fires AlpacaPeerDown; a roaming client gone,
    a peer no longer probed and one path of two down do not."""
    done = subprocess.run(["promtool", "test", "rules", str(ROOT / "tests" / "data" / "alerts_test.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_grafana_the_docker_lab_prometheus_config_loads_the_alert_rules(tmp_path: Path) -> None:
    """docker/prometheus.yml, with alerts.yml beside it as compose.yml mounts it."""
    shutil.copy(ROOT / "docker" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    done = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr
    assert '"../config/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"' in (
        ROOT / "docker" / "compose.yml").read_text()


def _data_loss_exprs() -> list[str]:
    """The per-path data-loss ratios of the dashboards (their variables matching all, the
    rate window 1m) and of the alert rules."""
    found = [e for d in DASHBOARDS for e in exprs(load(d)) if "alpaca_path_data_lost_total" in e]
    found = [re.sub(r"\$(instance|peer|path)\b", ".*", e).replace("$__rate_interval", "1m") for e in found]
    found += [line.strip().removesuffix(" > 5") for e in alert_exprs(ALERTS.read_text())
              for line in e.splitlines() if "alpaca_path_data_lost_total" in line]
    return found


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_grafana_path_data_loss_reads_at_most_100_percent(tmp_path: Path) -> None:
    """A path's data loss is counted when its probe replies come back (docs/metrics.md): after
    an outage the loss of the whole outage arrives at once, while little or nothing is sent
    on that path. The ratio read 129-682 %, then +Inf; it is clamped at 100."""
    found = _data_loss_exprs()
    assert len(found) == 3, found
    labels = '{instance="c:9586",job="alpaca-tunnel",peer="1.1",path="via-1.2"}'
    tests = [{"interval": "15s",
              "input_series": [{"series": "alpaca_path_data_sent_total" + labels, "values": "1000x20"},
                               {"series": "alpaca_path_data_lost_total" + labels, "values": "0x10 300x10"}],
              "promql_expr_test": [{"expr": expr, "eval_time": "3m",
                                    "exp_samples": [{"labels": labels, "value": 100}]} for expr in found]}]
    spec = tmp_path / "loss_test.yml"
    spec.write_text(json.dumps({"tests": tests}))  # YAML is a superset of JSON
    done = subprocess.run(["promtool", "test", "rules", str(spec)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _base(name: str) -> str:
    return re.sub(r"_(bucket|count|sum)$", "", name)


def test_grafana_docs_list_every_metric_and_nothing_else(exported: set[str]) -> None:
    documented = set(METRIC.findall(DOCS.read_text()))
    families = {_base(n) for n in exported}
    assert families - documented == set(), "exported but not in docs/metrics.md"
    unknown = {n for n in documented if n not in exported and _base(n) not in families}
    assert unknown == set(), "documented but not exported"
