"""ServerApp of the robustness benchmark: many (aggregator, attack) scenarios in one Flower run.

``benchmarks/robustness.py`` (``robustness_cells.build_app``) packages this module with
``fedapp`` as a Flower App whose ServerApp is ``robustness_server:app`` and whose ClientApp
is fedapp's, unchanged. One ``flwr run`` (simulation, 10-40 nodes) then plays a list of
scenarios one after the other, each a complete ``Strategy.start`` from the same seeded
initial model on Flower's engine: our ``RobustStrategy`` configurations and Flower's
built-in FedAvg, MultiKrum, FedMedian, FedTrimmedAvg and Bulyan, all wrapped by the same
``ThreatModel`` so that every row faces exactly the same attackers. Node-side attacks (label
flip, sign flip, Gaussian, scaling) are chosen by the run config (``attack``), so one run
holds one node-side attack; omniscient attacks are chosen per scenario by the server-side
wrapper.

The scenario list is ``<output-dir>/scenarios.json``; each finished scenario appends one JSON
line to ``<output-dir>/results.jsonl`` (the driver reads it for progress and resumes from it).
Benchmark-only code: nothing in ``fedapp`` imports it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    MultiKrum,
    Strategy,
)

from fedapp import task
from fedapp.attacks import ATTACKS
from fedapp.attacks.mod import PARTITION_METRIC
from fedapp.attacks.threat_model import ADAPTIVE, ThreatModel
from fedapp.config import RunConfig
from fedapp.data.loading import dataset_spec, load_server_test
from fedapp.robust import AggregationReport, AggregationResult
from fedapp.robust.base import weighted_mean
from fedapp.robust.coordinate import coordinate_median, trimmed_mean
from fedapp.robust.krum import krum_scores, multi_krum
from fedapp.server.build import adaptive_target, build_strategy

app = ServerApp()

FLOWER_ROWS = ("flwr-fedavg", "flwr-multikrum", "flwr-fedmedian", "flwr-trimmedavg",
               "flwr-bulyan")
ORACLE = "oracle"


def bulyan_f(n: int, f: int) -> int:
    """Flower's Bulyan needs ``n >= 4f + 3``: the largest such ``f`` not above the true one."""
    return max(0, min(f, (n - 3) // 4))


def bulyan_rule(f: int) -> Callable[..., AggregationResult]:
    """The aggregation of Flower's ``Bulyan`` as a pure rule on an ``(n, d)`` matrix, for the
    adaptive attacks: keep the ``theta = n - 2f`` rows with the lowest Krum scores, then per
    coordinate average the ``beta = theta - 2f`` values closest to the coordinate median."""
    def rule(updates: torch.Tensor, weights: torch.Tensor | None = None) -> AggregationResult:
        n = updates.shape[0]
        theta = n - 2 * f
        beta = theta - 2 * f
        chosen = torch.argsort(krum_scores(updates, f), stable=True)[:theta]
        kept = updates[chosen]
        median = kept.median(dim=0).values if theta % 2 else kept.quantile(0.5, dim=0)
        idx = torch.argsort((kept - median).abs(), dim=0)[:beta]
        agg = torch.take_along_dim(kept, idx, dim=0).mean(dim=0)
        return AggregationResult(agg, AggregationReport("bulyan"))
    return rule


def flower_row(name: str, n: int, f: int, fraction: float) -> tuple[Strategy,
                                                                     Callable[..., Any]]:
    """A Flower built-in strategy and the pure rule equal to its aggregation (for the
    adaptive attacker). Every built-in gets the true number of Byzantine nodes ``f``."""
    common: dict[str, Any] = {"fraction_train": 1.0, "fraction_evaluate": 0.0,
                              "min_train_nodes": n, "min_available_nodes": n}
    if name == "flwr-fedavg":
        return FedAvg(**common), weighted_mean
    if name == "flwr-multikrum":
        return (MultiKrum(num_malicious_nodes=f, num_nodes_to_select=n - f, **common),
                lambda x: multi_krum(x, f=f, m=n - f))
    if name == "flwr-fedmedian":
        return FedMedian(**common), coordinate_median
    if name == "flwr-trimmedavg":
        return FedTrimmedAvg(beta=fraction, **common), lambda x: trimmed_mean(x, beta=fraction)
    if name == "flwr-bulyan":
        fb = bulyan_f(n, f)
        return Bulyan(num_malicious_nodes=fb, **common), bulyan_rule(fb)
    raise ValueError(f"unknown Flower row {name!r}; one of {FLOWER_ROWS}")


class HonestOnlyFedAvg(FedAvg):
    """The oracle bound: Flower's FedAvg over the replies of the nodes that are *not*
    Byzantine, told by the threat model (``malicious_nodes``). No defense can do better in
    expectation: it would have to know the attackers, and their data is lost all the same."""

    def __init__(self, malicious: Callable[[], set[int]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._malicious = malicious

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        bad = self._malicious()
        return super().aggregate_train(
            server_round, [m for m in replies if m.metadata.src_node_id not in bad])


def scenario_strategy(sc: dict[str, Any], base: RunConfig, n: int) -> tuple[Strategy, Any]:
    """The strategy that plays scenario ``sc``, and our RobustStrategy (or None)."""
    attack, fraction = sc["attack"], float(sc["fraction"])
    f = round(fraction * n)
    cfg: RunConfig | None = None
    rule: Callable[..., AggregationResult] = weighted_mean
    threats: list[ThreatModel] = []  # the wrapper, once built, for the rules below
    if sc["row"] == ORACLE:
        strategy = HonestOnlyFedAvg(lambda: threats[0].malicious_nodes if threats else set(),
                                    fraction_train=1.0, fraction_evaluate=0.0,
                                    min_train_nodes=n, min_available_nodes=n)
        robust = None
    elif sc["row"] in FLOWER_ROWS:
        strategy, rule = flower_row(sc["row"], n, f, fraction)
        robust = None
    else:
        overrides = {k.replace("-", "_"): v for k, v in sc["config"].items()}
        # f as the fraction (what a user configures); min-train-nodes stays small, as it is
        # also the floor below which detection does not exclude.
        cfg = dataclasses.replace(base, **overrides, aggregator_f=0, byzantine_fraction=fraction,
                                  attack="none", fraction_evaluate=0.0, min_train_nodes=2,
                                  min_available_nodes=n)
        robust, strategy = build_strategy(cfg)
    if attack == "none" and base.attack == "none":
        return strategy, robust
    # Node-side attacks: the ClientApp attacks, the wrapper checks simulation and strips ids.
    run_attack = attack if ATTACKS.get(attack) == "omniscient" else base.attack
    target = None
    if attack in ADAPTIVE:
        target = rule if robust is None else adaptive_target(
            cfg, robust, lambda: threats[0].row_nodes)  # type: ignore[arg-type]
    attack_cfg = dataclasses.replace(base, attack=run_attack, attack_fraction=fraction)
    threats.append(ThreatModel.from_config(strategy, attack_cfg, target=target,
                                           partition_metric=PARTITION_METRIC))
    return threats[0], robust


@app.main()
def main(grid: Grid, context: Context) -> None:
    base = RunConfig.from_flower(context.run_config)
    out = Path(base.output_path)
    spec = json.loads((out / "scenarios.json").read_text())
    n = int(spec["num-nodes"])
    done_file = out / "results.jsonl"
    done = set()
    if done_file.exists():
        done = {json.loads(line)["id"] for line in done_file.read_text().splitlines() if line}
    test_set = load_server_test(base)
    for sc in spec["scenarios"]:
        if sc["id"] in done:
            continue
        task.set_seed(base.seed)
        model = task.build_model(base.model, dataset_spec(base), base.hidden_units)
        strategy, robust = scenario_strategy(sc, base, n)
        accs: list[float] = []

        def evaluate_fn(server_round: int, arrays: ArrayRecord,
                        model: torch.nn.Module = model,
                        accs: list[float] = accs) -> MetricRecord:
            model.load_state_dict(arrays.to_torch_state_dict())
            loss, acc = task.evaluate(model, test_set)
            accs.append(acc)
            return MetricRecord({"server-loss": loss, "server-accuracy": acc})

        log(INFO, "[robustness] scenario %s: %s vs %s at %s", sc["id"], sc["row"],
            sc["attack"], sc["fraction"])
        t0 = time.perf_counter()
        strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                       num_rounds=base.num_server_rounds, timeout=base.round_timeout,
                       evaluate_fn=evaluate_fn)
        row: dict[str, Any] = {**sc, "accuracy": accs, "final-accuracy": accs[-1],
                               "seconds": time.perf_counter() - t0}
        if robust is not None:
            stats = robust.history.values()
            row["flagged-per-round"] = [len(s.flagged) for s in stats]
            row["excluded-per-round"] = [s.excluded for s in stats]
            row["kept-previous-rounds"] = sum(int(s.kept_previous) for s in stats)
        with done_file.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        log(INFO, "[robustness] scenario %s done: final accuracy %.4f in %.1fs", sc["id"],
            accs[-1], row["seconds"])
