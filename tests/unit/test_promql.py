"""tests/promql.py: the metric names PromQL expressions read (used by the alert-rule and
dashboard tests to hold them to the exporter's metrics)."""

from __future__ import annotations

import pytest

from tests.promql import exporter_series, metric_names


@pytest.mark.parametrize(("expr", "names"), [
    ("rate(x_total[5m])", {"x_total"}),
    ("histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m])))", {"x_bucket"}),
    ("histogram_quantile(0.5, sum(rate(x_bucket[$__rate_interval])) by (le, job))",
     {"x_bucket"}),
    ("a > on() group_left 0.9 * b", {"a", "b"}),
    ("a > on(job, instance) group_left() 0.9 * b", {"a", "b"}),
    ("a * on(job, instance) group_left(run_id) info{run_id=~\"$run_id\"}", {"a", "info"}),
    ("sum without (instance) (bytes_total) / ignoring(kind) group_right c", {"bytes_total", "c"}),
    # Label values and strings that look like metric names are not metric names.
    ('x{reason="fedapp_fake_total", kind=~"a|b_total"}', {"x"}),
    ("y{node=~\"${node}\", check!='cosine'} offset 1h30m", {"y"}),
    ('label_replace(up, "run", "$1", "instance", "(fedapp_.*)")', {"up"}),
    ('count_values("fedapp_value", z)', {"z"}),
    # Keywords, numbers, durations, subqueries, functions without arguments.
    ("max_over_time((r > 0 and q <= 0.25)[6h:15s]) or 1e3 unless s", {"q", "r", "s"}),
    ("time() - (a > 0 or b) > 1800 and bool_metric > bool 2", {"a", "b", "bool_metric"}),
    ("increase(c_total[1h] @ 1609746000) / 0x10 + inf - NaN", {"c_total"}),
    # Names that start with a keyword are names: by, on, offset, and.
    ("bytes_up + on_time + offset_seconds + and_more", {"bytes_up", "on_time",
                                                        "offset_seconds", "and_more"}),
    ("colon:recorded:rate5m", {"colon:recorded:rate5m"}),
    ('{__name__="named_by_matcher", job="fedapp"}', {"named_by_matcher"}),
])
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_exporter_series_are_the_exporters_and_prometheus_own() -> None:
    series = exporter_series()
    assert {"fedapp_rounds_completed_total", "fedapp_round_duration_seconds_bucket",
            "fedapp_node_reputation", "process_cpu_seconds_total", "up", "ALERTS"} <= series
    assert "fedapp_rounds_completed" not in series  # a counter is served as *_total
