"""The ServerApp's Prometheus metrics: values per round, bounded labels, the endpoint."""

from __future__ import annotations

import logging
import socket
import threading
import time
import urllib.request

import pytest

from fedapp.config import RunConfig
from fedapp.monitoring import FederationMetrics, start
from fedapp.monitoring.metrics import series_names
from fedapp.server.rounds import RoundStats

MODEL_BYTES = 4000


def metrics() -> FederationMetrics:
    return FederationMetrics(run_id=7, dataset="digits", aggregator="median", planned_rounds=5,
                             quorum=2, model_bytes=MODEL_BYTES, dp_budget=3.0)


def row(server_round: int, **extra: float) -> dict[str, float]:
    base = {"round": server_round, "replies": 4, "accepted": 3, "rejected": 1, "failures": 1,
            "failed-timeout": 1, "flagged": 1, "excluded": 1, "bytes-up": 2000.0,
            "bytes-down": 16000.0, "decode-seconds": 0.25, "aggregation-seconds": 0.02,
            "nodes-connected": 6, "nodes-sampled": 5, "nodes-healthy": 5, "nodes-benched": 1,
            "nodes-probation": 0, "kept-previous": 0, "inflated-counts": 1,
            "train-loss": 0.5, "train-accuracy": 0.8, "server-accuracy": 0.9,
            "server-loss": 0.3, "dp-epsilon-max": 2.8}
    return base | extra


def stats(server_round: int, accepted: tuple[int, ...], flagged: dict[int, tuple[str, ...]],
          excluded: tuple[int, ...] = ()) -> RoundStats:
    return RoundStats(server_round, accepted=len(accepted), accepted_nodes=accepted,
                      flagged_checks=flagged, excluded_nodes=excluded,
                      rejected={9: "bad"}, rejected_kinds={"non-finite": 1},
                      node_epsilon={n: 2.0 + n / 10 for n in accepted})


def value(m: FederationMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def test_one_round_sets_every_family_from_the_row_and_the_diagnostics() -> None:
    m = metrics()
    m.observe({"round": 0, "server-accuracy": 0.1, "server-loss": 2.3}, None, {})
    m.observe(row(1), stats(1, (1, 2, 3), {3: ("norm", "copy")}, excluded=(3,)),
              {1: 0.9, 2: 0.8, 3: -0.4})
    assert value(m, "fedapp_round") == 1
    assert value(m, "fedapp_rounds_completed_total") == 1  # the initial evaluation is not one
    assert value(m, "fedapp_server_accuracy_ratio") == 0.9
    assert value(m, "fedapp_server_accuracy_best_ratio") == 0.9
    assert value(m, "fedapp_upload_bytes_total") == 2000
    assert value(m, "fedapp_download_bytes_total") == 16000
    assert value(m, "fedapp_compression_ratio") == pytest.approx(4 * MODEL_BYTES / 2000)
    assert value(m, "fedapp_replies_accepted_total") == 3
    assert value(m, "fedapp_replies_rejected_total", reason="non-finite") == 1
    assert value(m, "fedapp_replies_rejected_total", reason="metrics") == 0
    assert value(m, "fedapp_replies_failed_total", kind="timeout") == 1
    assert value(m, "fedapp_round_bad_replies_ratio") == pytest.approx(2 / 5)
    assert value(m, "fedapp_updates_flagged_total", check="norm") == 1
    assert value(m, "fedapp_updates_excluded_total", check="copy") == 1
    assert value(m, "fedapp_updates_flagged_total", check="cosine") == 0
    assert value(m, "fedapp_node_reputation", node="3") == -0.4
    assert value(m, "fedapp_node_flagged_streak_rounds", node="3") == 1
    assert value(m, "fedapp_node_flagged_streak_rounds", node="1") == 0
    assert value(m, "fedapp_dp_epsilon") == 2.8
    assert value(m, "fedapp_dp_epsilon_budget") == 3.0
    assert value(m, "fedapp_node_dp_epsilon", node="2") == pytest.approx(2.2)
    assert value(m, "fedapp_nodes_benched") == 1
    assert value(m, "fedapp_nodes_quorum") == 2
    assert value(m, "fedapp_aggregation_seconds_count") == 1
    assert value(m, "fedapp_round_duration_seconds_count") == 1
    assert value(m, "fedapp_run_info", run_id="7", dataset="digits", aggregator="median") == 1
    assert value(m, "process_resident_memory_bytes") > 0


def test_secure_aggregation_rounds_count_buckets_and_protocol_seconds() -> None:
    m = metrics()
    for r in (1, 2):
        m.observe(row(r, **{"secagg-buckets": 3, "secagg-buckets-dropped": r - 1,
                            "secagg-seconds": 0.5, "secagg-setup-nodes": 6 if r == 1 else 0}),
                  None, {})
    assert value(m, "fedapp_secagg_buckets_total") == 6
    assert value(m, "fedapp_secagg_key_setups_total") == 6
    assert value(m, "fedapp_secagg_buckets_dropped_total") == 1
    assert value(m, "fedapp_secagg_seconds_total") == 1.0


def test_best_accuracy_holds_and_the_streak_counts_consecutive_flagged_rounds() -> None:
    m = metrics()
    m.observe(row(1, **{"server-accuracy": 0.9}), stats(1, (1, 2), {2: ("cosine",)}), {})
    m.observe(row(2, **{"server-accuracy": 0.7}), stats(2, (1, 2), {2: ("cosine",)}), {})
    assert value(m, "fedapp_server_accuracy_best_ratio") == 0.9
    assert value(m, "fedapp_server_accuracy_ratio") == 0.7
    assert value(m, "fedapp_node_flagged_streak_rounds", node="2") == 2
    m.observe(row(3), stats(3, (1,), {}), {})  # node 2 sat this round out: streak kept
    assert value(m, "fedapp_node_flagged_streak_rounds", node="2") == 2
    m.observe(row(4), stats(4, (1, 2), {}), {})  # passed screening: streak over
    assert value(m, "fedapp_node_flagged_streak_rounds", node="2") == 0
    assert value(m, "fedapp_rounds_completed_total") == 4


def test_series_stay_bounded_by_the_federation_not_the_rounds() -> None:
    m = metrics()
    nodes = (11, 12, 13, 14, 15)

    def count() -> int:
        return sum(len(f.samples) for f in m.registry.collect())

    counts = []
    for r in range(1, 31):
        flagged = {nodes[r % 5]: ("sign",)}
        m.observe(row(r), stats(r, nodes, flagged), {n: 0.5 for n in nodes})
        counts.append(count())
    assert len(set(counts[1:])) == 1, counts  # after the first round, no new series


def test_series_names_follow_the_conventions() -> None:
    names = series_names(metrics().registry)
    fedapp = {n for n in names if n.startswith("fedapp_")}
    assert "fedapp_rounds_completed_total" in fedapp and "fedapp_round" in fedapp
    counters = {f.name for f in metrics().registry.collect() if f.type == "counter"}
    assert all(f"{c}_total" in names for c in counters)
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_endpoint_serves_the_metrics_and_stops() -> None:
    cfg = RunConfig(metrics_port=free_port())
    with start(cfg, run_id=3, model_bytes=MODEL_BYTES) as monitor:
        url = monitor.url
        assert url is not None
        monitor.observe(row(1), stats(1, (1, 2), {}), {1: 0.9})
        text = scrape(url)
        assert "fedapp_rounds_completed_total 1.0" in text
        assert 'fedapp_node_reputation{node="1"} 0.9' in text
    assert monitor.url is None
    with pytest.raises(OSError):
        scrape(url)


def test_a_port_in_use_warns_once_and_the_run_goes_on(caplog: pytest.LogCaptureFixture
                                                      ) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = RunConfig(metrics_port=taken.getsockname()[1])
        with caplog.at_level(logging.WARNING, logger="flwr"):
            monitor = start(cfg, run_id=3, model_bytes=MODEL_BYTES)
    warnings = [r for r in caplog.records if "cannot serve metrics" in r.getMessage()]
    assert len(warnings) == 1 and str(cfg.metrics_port) in warnings[0].getMessage()
    assert monitor.url is None
    monitor.observe(row(1), None, {})  # does nothing, raises nothing
    monitor.close()


def test_metrics_port_zero_starts_nothing() -> None:
    monitor = start(RunConfig(metrics_port=0), run_id=3, model_bytes=MODEL_BYTES)
    assert monitor.url is None and monitor.metrics is None


def test_close_waits_for_one_more_scrape_only_when_someone_scrapes() -> None:
    monitor = start(RunConfig(metrics_port=free_port()), run_id=3, model_bytes=MODEL_BYTES)
    assert monitor.url is not None
    t0 = time.monotonic()
    monitor.observe(row(1), None, {})
    monitor.close()  # nobody scraped: no wait
    assert monitor.server is None and time.monotonic() - t0 < 1.0

    monitor = start(RunConfig(metrics_port=free_port()), run_id=3, model_bytes=MODEL_BYTES)
    url = monitor.url
    assert url is not None
    scrape(url), scrape(url)  # a scraper, every few ms
    monitor.observe(row(1), None, {})  # a round nobody has scraped yet
    seen: list[str] = []
    scraper = threading.Timer(0.3, lambda: seen.append(scrape(url)))
    scraper.start()
    monitor.close()  # returns once that scrape has the round
    scraper.join()
    assert "fedapp_round 1.0" in seen[0]
