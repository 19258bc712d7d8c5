"""The metric names a PromQL expression reads, for tests that hold alert rules and
dashboards to the metrics the exporter registers (``fedapp.monitoring.metrics``).

Not a PromQL parser: a tokenizer that drops everything that cannot be a metric name
(strings, label matchers, ranges and subqueries, durations, numbers, Grafana variables,
the label lists of ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``,
keywords) and keeps the identifiers that are not called like a function. A selector that
names its metric with ``{__name__="..."}`` counts too.
"""

from __future__ import annotations

import functools
import re

KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"})
LABEL_LIST_KEYWORDS = ("by", "without", "on", "ignoring", "group_left", "group_right")

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*=\s*"((?:\\.|[^"\\])*)"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")
_LABEL_LIST = re.compile(r"\b(?:" + "|".join(LABEL_LIST_KEYWORDS) + r")\b\s*(?:\([^()]*\))?")
_TOKEN = re.compile(
    r"(?P<duration>\b\d+(?:ms|s|m|h|d|w|y)(?:\d+(?:ms|s|m|h|d|w|y))*\b)"
    r"|(?P<number>(?:0[xX][0-9a-fA-F]+|\d*\.?\d+(?:[eE][+-]?\d+)?))"
    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?"
)


def metric_names(expr: str) -> set[str]:
    """Every metric name ``expr`` selects."""
    names = {m.group(1) for m in _NAME_MATCHER.finditer(expr)}
    text = _STRING.sub(" ", expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)  # [5m], [$__rate_interval], subqueries' [6h:15s]
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    for token in _TOKEN.finditer(text):
        name = token.group("name")
        if name and not token.group("call") and name.lower() not in KEYWORDS:
            names.add(name)
    return names


# Series that Prometheus itself writes for every target, and the alert state it records.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS"})


@functools.cache
def exporter_series() -> frozenset[str]:
    """Every series name the ServerApp's exporter serves (DP budget set, so every metric
    family is there), plus those Prometheus adds (``PROMETHEUS_SERIES``)."""
    from fedapp.monitoring.metrics import FederationMetrics, series_names

    metrics = FederationMetrics(run_id=1, dataset="breast-cancer", aggregator="fedavg",
                                planned_rounds=3, quorum=2, model_bytes=4, dp_budget=1.0)
    return frozenset(series_names(metrics.registry)) | PROMETHEUS_SERIES
