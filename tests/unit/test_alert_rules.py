"""monitoring/prometheus: the alert rules, their promtool unit tests and the scrape config.

promtool (Debian's `prometheus` package) checks the rule and config files and runs the
rules' unit tests (alerts_test.yml); without it those tests skip, and CI installs it. The
rest needs no promtool: every metric an expression (or an annotation's query) reads is
one the ServerApp's exporter serves, so renaming a metric fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.promql import exporter_series, metric_names

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "monitoring" / "prometheus"
RULES = PROMETHEUS / "alerts.yml"
RULE_TESTS = PROMETHEUS / "alerts_test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
PROMTOOL = shutil.which("promtool")
REQUIRED = {
    "FedappAccuracyDropped", "FedappBadReplies", "FedappNodeFlagged",
    "FedappEpsilonNearBudget", "FedappNodeEpsilonNearBudget", "FedappNoRoundCompleted",
    "FedappServerAppDown", "FedappBelowQuorum",
}
SEVERITIES = {"info", "warning", "critical"}
# A template's query: {{ query "..." }} or {{ with printf "..." args | query }}.
TEMPLATE_QUERY = re.compile(
    r'query\s+"((?:\\.|[^"\\])*)"|printf\s+"((?:\\.|[^"\\])*)"[^|}]*\|\s*query\b')

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not on PATH (Debian: apt-get install prometheus)")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    groups = load(RULES)["groups"]
    assert [g["name"] for g in groups] == ["fedapp"], "one rule group"
    return groups[0]["rules"]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_checks_the_config_and_the_rule_files_it_names() -> None:
    # rule_files are relative to the config file: promtool reads alerts.yml beside it, as
    # Prometheus does in the container (the directory is mounted at /etc/prometheus).
    result = promtool("check", "config", str(CONFIG.relative_to(REPO)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    assert f"Checking {RULES.relative_to(REPO)}" in result.stdout


def test_the_required_alerts_exist_with_severity_and_annotations() -> None:
    found = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    assert set(found) == REQUIRED
    for name, rule in found.items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        # The annotations name the value behind the alert: the expression's value or,
        # where that says nothing (up == 0), a value they query.
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        assert "$value" in text or TEMPLATE_QUERY.search(text), name


def test_every_rule_has_firing_and_quiet_unit_tests() -> None:
    fired, quiet = set(), set()
    for case in load(RULE_TESTS)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
            for alert in check.get("exp_alerts") or []:
                assert alert["exp_labels"].get("severity"), check["alertname"]
                assert {"summary", "description"} <= set(alert["exp_annotations"])
    assert fired == REQUIRED, f"never seen firing: {REQUIRED - fired}"
    assert quiet == REQUIRED, f"never seen quiet: {REQUIRED - quiet}"


def test_rules_read_only_metrics_the_exporter_serves() -> None:
    served, queries = exporter_series(), 0
    for rule in rules():
        name = rule.get("alert") or rule.get("record")
        used = metric_names(rule["expr"])
        assert used, f"{name}: no metric in {rule['expr']!r}"
        assert used <= served, f"{name} reads metrics the exporter lacks: {used - served}"
        for key, text in rule.get("annotations", {}).items():
            for query in (a or b for a, b in TEMPLATE_QUERY.findall(text)):
                queries += 1
                assert metric_names(query), f"{name}'s {key}: no metric in {query!r}"
                unknown = metric_names(query) - served
                assert not unknown, f"{name}'s {key} queries unknown metrics: {unknown}"
    assert queries, "no annotation queries found: has their syntax changed?"


def test_scrape_config_targets_the_serverapp_with_the_rules() -> None:
    config = load(CONFIG)
    assert config["rule_files"] == [RULES.name]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"fedapp"}, "the rules select job=\"fedapp\""
    job = jobs["fedapp"]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["serverapp:9662"]
    # FedappBadReplies's subquery steps at the scrape interval.
    bad = next(r for r in rules() if r.get("alert") == "FedappBadReplies")
    assert "[6h:15s]" in bad["expr"]
    for rule in rules():
        for job_name in re.findall(r'job="([^"]*)"', rule["expr"]):
            assert job_name in jobs, rule["alert"]
