"""monitoring/grafana: the provisioned dashboards and datasource, checked without Grafana.

Grafana does not run here: these tests check the provisioning files' structure (what
Grafana needs to load them: uid, title, schemaVersion, panels with type, gridPos,
datasource and targets), that every panel queries the provisioned Prometheus datasource,
that the panels do not overlap, and that every metric a query reads is one the
ServerApp's exporter serves (tests/promql.py). With promtool on PATH, every query (Grafana
variables replaced by sample values) is also parsed by Prometheus's own parser.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql import exporter_series, metric_names

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "monitoring" / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "fedapp.yml"
REQUIRED = ("training", "communication", "security", "system")
PANEL_TYPES = {"timeseries", "stat", "gauge", "table", "bargauge"}
GRID_WIDTH = 24
# Grafana's own variables, with values for parsing the queries.
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__range": "6h", "__interval": "15s"}
VARIABLE = re.compile(r"\$(?:\{(\w+)(?::\w+)?\}|(\w+))")
LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(.*),\s*)?(\w+)\s*\)\s*$", re.DOTALL)


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


@functools.cache
def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


@functools.cache
def datasource() -> dict[str, Any]:
    sources = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert len(sources) == 1, "one provisioned datasource: the dashboards' Prometheus"
    return sources[0]


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    out = []
    for panel in board["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every query: panel targets, annotations, variables."""
    out = [(f"{panel['title']}/{target['refId']}", target["expr"])
           for panel in panels(board) if panel["type"] != "row"
           for target in panel["targets"]]
    out += [(f"annotation {a['name']}", a["expr"])
            for a in board.get("annotations", {}).get("list", []) if a.get("expr")]
    for variable in board.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            match = LABEL_VALUES.match(query)
            if match:  # label_values(metric, label): the metric is PromQL, the label not
                if match.group(1):
                    out.append((f"variable {variable['name']}", match.group(1)))
            else:
                out.append((f"variable {variable['name']}", query))
    return out


def variable_values(board: dict[str, Any]) -> dict[str, str]:
    """A value for each variable: a custom one's current value, a query one's match-all."""
    values = dict(BUILTIN_VARIABLES)
    for variable in board.get("templating", {}).get("list", []):
        if variable["type"] == "custom":
            values[variable["name"]] = variable["current"]["value"]
        else:
            values[variable["name"]] = variable.get("allValue") or ".*"
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    return VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def test_the_four_dashboards_exist_with_distinct_uids() -> None:
    names = [p.stem for p in dashboard_files()]
    assert set(REQUIRED) <= set(names), f"missing: {set(REQUIRED) - set(names)}"
    uids = [load(p)["uid"] for p in dashboard_files()]
    assert len(set(uids)) == len(uids), f"duplicate uids: {uids}"


def test_datasource_provisioning_names_the_prometheus_uid() -> None:
    source = datasource()
    assert source["type"] == "prometheus"
    assert source["uid"] == "fedapp-prometheus"
    assert source["url"] == "http://prometheus:9090"  # the compose service and its port


def test_dashboard_provider_loads_the_mounted_directory() -> None:
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert [p["type"] for p in providers] == ["file"]
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_dashboard_structure(path: Path) -> None:
    board = load(path)
    uid = datasource()["uid"]
    assert isinstance(board["uid"], str) and 0 < len(board["uid"]) <= 40
    assert board["title"] and isinstance(board["schemaVersion"], int)
    assert board["panels"], "no panels"
    for panel in panels(board):
        title = panel.get("title")
        assert title, f"a panel without a title: {panel.get('id')}"
        assert panel["type"] in PANEL_TYPES, f"{title}: type {panel['type']}"
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "xywh"), title
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, title
        assert grid["x"] + grid["w"] <= GRID_WIDTH, f"{title} is wider than the grid"
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, title
        targets = panel["targets"]
        assert targets and all(t.get("expr", "").strip() for t in targets), title
        ref_ids = [t["refId"] for t in targets]
        assert len(set(ref_ids)) == len(ref_ids), f"{title}: duplicate refIds {ref_ids}"
        for target in targets:
            assert target.get("datasource", panel["datasource"])["uid"] == uid, title
    for variable in board.get("templating", {}).get("list", []):
        if variable["type"] == "query":
            assert variable["datasource"]["uid"] == uid, variable["name"]
    for annotation in board.get("annotations", {}).get("list", []):
        assert annotation["datasource"]["uid"] == uid, annotation["name"]


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_panels_do_not_overlap(path: Path) -> None:
    boxes = [(p["title"], p["gridPos"]) for p in load(path)["panels"]]
    for (a, g), (b, h) in itertools.combinations(boxes, 2):
        apart = (g["x"] + g["w"] <= h["x"] or h["x"] + h["w"] <= g["x"]
                 or g["y"] + g["h"] <= h["y"] or h["y"] + h["h"] <= g["y"])
        assert apart, f"{a!r} overlaps {b!r}"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_queries_read_only_metrics_the_exporter_serves(path: Path) -> None:
    board = load(path)
    served = exporter_series()
    for where, expr in queries(board):
        used = metric_names(expr)
        assert used, f"{where}: no metric in {expr!r}"
        assert used <= served, f"{where} reads metrics the exporter lacks: {used - served}"


@pytest.mark.parametrize("path", dashboard_files(), ids=lambda p: p.stem)
def test_queries_use_only_defined_variables(path: Path) -> None:
    board = load(path)
    values = variable_values(board)
    for where, expr in queries(board):
        for match in VARIABLE.finditer(expr):
            name = match.group(1) or match.group(2)
            assert name in values, f"{where}: ${name} is not a variable of {path.name}"


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool is not on PATH (Debian: apt-get install prometheus)")
def test_prometheus_parses_every_query(tmp_path: Path) -> None:
    rules = []
    for path in dashboard_files():
        board = load(path)
        values = variable_values(board)
        for n, (where, expr) in enumerate(queries(board)):
            rules.append({"record": f"dashboard:{path.stem}:{n}",
                          "expr": substitute(expr, values),
                          "labels": {"where": f"{path.name}: {where}"}})
    file = tmp_path / "dashboard-queries.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(["promtool", "check", "rules", str(file)], capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
