"""fedapp ServerApp: wiring only (config, model, strategy, round log, outputs)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedapp import registry, task
from fedapp.aggregation import AggregationPipeline
from fedapp.attack_mod import PARTITION_METRIC
from fedapp.config import RunConfig
from fedapp.data.loading import dataset_spec, load_server_test
from fedapp.strategy import RobustStrategy
from fedapp.tracking import Tracker, resolve_tracking_uri

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flower(context.run_config)
    out_dir = Path(cfg.output_path) / f"run-{context.run_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    test_set = load_server_test(cfg)
    task.set_seed(cfg.seed)
    model = task.build_model(cfg.model, dataset_spec(cfg), cfg.hidden_units)
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri, cfg.output_path)
    model_name = cfg.registered_model or registry.model_name_for(cfg.dataset)
    if cfg.initial_model == "champion":
        load_champion(model, tracking_uri, model_name)
    robust, strategy = build_strategy(cfg)
    tracker = (Tracker.open(tracking_uri, cfg.experiment, f"flwr-run-{context.run_id}",
                            cfg.to_flower(), parent_run_id=cfg.parent_run_id or None,
                            tags={"flwr-run-id": str(context.run_id)})
               if cfg.tracking else Tracker.disabled("tracking=false"))
    rows: list[dict[str, float]] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = task.evaluate(model, test_set)
        row = round_row(server_round, loss, acc, robust, strategy)
        rows.append(row)
        log(INFO, "%s", round_line(row, cfg.num_server_rounds))
        tracker.log_round(server_round, {k: v for k, v in row.items() if k != "round"})
        return MetricRecord({"server-loss": loss, "server-accuracy": acc})

    log(INFO, "[fedapp] %s on %s (%d test rows), aggregator %s, outputs in %s",
        type(model).__name__, cfg.dataset, len(test_set), cfg.aggregator, out_dir)
    with tracker:  # an exception ends the MLflow run as FAILED and propagates
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=cfg.num_server_rounds,
            timeout=cfg.round_timeout,
            evaluate_fn=evaluate_fn,
        )
        model.load_state_dict(result.arrays.to_torch_state_dict())
        torch.save(model.state_dict(), out_dir / "model.pt")
        (out_dir / "config.json").write_text(json.dumps(cfg.to_flower(), indent=2))
        (out_dir / "rounds.json").write_text(json.dumps(rows, indent=2))
        (out_dir / "reputation.json").write_text(
            json.dumps(robust.reputation.to_dict(), indent=2))
        tracker.log_artifacts([out_dir / n for n in ("config.json", "rounds.json",
                                                     "reputation.json")])
        tracker.log_curves(rows, out_dir / "curves.png")
        final = rows[-1]["server-accuracy"]
        if cfg.registered_model != "off":  # logs the model, the version and the gate's decision
            tracker.register_model(out_dir / "model.pt", model_name, final,
                                   {"flwr-run-id": str(context.run_id)}, cfg.promotion_margin)
        else:
            tracker.log_artifacts([out_dir / "model.pt"], "model")
    log(INFO, "[fedapp] final accuracy %.4f; model, config and per-round metrics in %s",
        final, out_dir)


def build_strategy(cfg: RunConfig) -> tuple[RobustStrategy, Strategy]:
    """The robust strategy, and what runs the rounds: itself, or the threat model
    wrapping it when an attack is configured (simulation only)."""
    aggregate_fn: Callable[..., Any] = AggregationPipeline.from_config(cfg)
    accountant = None
    if cfg.dp == "central":
        from fedapp.privacy import CentralAccountant, CentralDP, calibrate_noise

        z = cfg.dp_noise or calibrate_noise(cfg.dp_epsilon, cfg.dp_delta, cfg.fraction_train,
                                            cfg.num_server_rounds)
        aggregate_fn, accountant = CentralDP(cfg.dp_clip, z), CentralAccountant(z, cfg.dp_delta)
    robust = RobustStrategy(
        aggregate_fn=aggregate_fn,
        dp_accountant=accountant,
        server_lr=cfg.server_lr,
        detection=cfg.anomaly_detection,
        norm_threshold=cfg.detect_norm_z,
        cosine_threshold=cfg.detect_cosine,
        sign_threshold=cfg.detect_sign_skew,
        duplicate_threshold=cfg.detect_duplicate,
        reputation_memory=cfg.reputation_memory,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_train_nodes,
        min_evaluate_nodes=1,
        min_available_nodes=cfg.min_available_nodes,
    )
    return robust, robust if cfg.attack == "none" else threat_model(robust, cfg)


def load_champion(model: torch.nn.Module, tracking_uri: str, name: str) -> None:
    """``initial-model=champion``: start from the registry's champion, if there is one."""
    path = registry.champion_state_dict_path(tracking_uri, name)
    if path is None:
        log(WARNING, "[fedapp] no champion of %s: starting from a fresh model", name)
        return
    try:
        model.load_state_dict(torch.load(path, weights_only=True))
    except RuntimeError as exc:
        raise RuntimeError(f"the champion of {name!r} does not fit the configured "
                           f"{type(model).__name__}: {exc}") from exc
    log(INFO, "[fedapp] starting from the champion of %s", name)


def round_row(server_round: int, loss: float, acc: float, robust: RobustStrategy,
              strategy: Strategy) -> dict[str, float]:
    """Everything known about one round, for the log line, rounds.json and MLflow."""
    row: dict[str, float] = {"round": server_round, "server-loss": loss, "server-accuracy": acc}
    stats = robust.history.get(server_round)
    if stats is not None:
        row |= {"replies": stats.replies, "accepted": stats.accepted,
                "rejected": len(stats.rejected), "failures": len(stats.failed),
                "flagged": len(stats.flagged), "excluded": stats.excluded,
                "kept-previous": int(stats.kept_previous),
                "bytes-up": stats.bytes_up, "bytes-down": stats.bytes_down,
                "decode-seconds": stats.decode_seconds,
                "seconds": time.perf_counter() - stats.started}
        if stats.dp_epsilon is not None:
            row["dp-epsilon"] = stats.dp_epsilon
        row |= {k: v for k, v in stats.train_metrics.items() if k != "num-examples"}
    attack_round = getattr(strategy, "history", {}).get(server_round)
    if strategy is not robust and attack_round is not None:
        row["byzantine-replaced"] = len(attack_round.replaced)
    return row


def threat_model(robust: RobustStrategy, cfg: RunConfig) -> Strategy:
    """Wrap the strategy in the simulation-only attack harness (``attack != 'none'``)."""
    from fedapp.threat_model import ThreatModel

    scale = cfg.attack_scale
    params: dict[str, object] = {}
    if cfg.attack == "alie" and scale > 0:
        params["z"] = scale
    elif cfg.attack == "ipm" and scale > 0:
        params["epsilon"] = scale
    elif cfg.attack in ("min-max", "min-sum", "min-max-noisy"):
        params["perturbation"] = cfg.attack_perturbation
        if cfg.attack == "min-max-noisy" and scale > 0:
            params["noise"] = scale
    threats: list[ThreatModel] = []  # the wrapper, once built, says whose row is whose
    if cfg.attack in ("alie-adaptive", "ipm-adaptive"):
        params["aggregator"] = adaptive_target(cfg, robust, lambda: threats[0].row_nodes)
    threats.append(ThreatModel(robust, cfg.attack, cfg.attack_fraction, cfg.seed,
                               partition_metric=PARTITION_METRIC, **params))
    return threats[0]


def adaptive_target(cfg: RunConfig, robust: RobustStrategy,
                    row_nodes: Callable[[], list[int]]) -> Callable[..., Any]:
    """The rule an adaptive attacker searches against: the whole defense as it stands, i.e.
    ``robust.screen`` (detection with the current reputations, exclusion; no state changes)
    and then the configured pipeline. ``row_nodes()`` gives the node of every row it is
    handed (``ThreatModel.row_nodes``): the reputations are per node."""

    def rule(updates: torch.Tensor) -> Any:
        nodes = row_nodes()
        if len(nodes) != len(updates):
            raise RuntimeError(f"{len(nodes)} node ids for {len(updates)} rows")
        ones = torch.ones(len(updates), dtype=torch.float64)
        if robust.detection == "off":
            x, w = updates, ones
        else:
            x, w, _, _ = robust.screen(list(nodes), updates, ones, record=False)
        pipeline = AggregationPipeline.from_config(cfg)  # fresh: no momentum state
        return pipeline(x, w, num_replies=len(updates))

    rule.__name__ = f"defense ({cfg.anomaly_detection} + {cfg.aggregator})"
    return rule


def round_line(row: dict[str, float], num_rounds: int) -> str:
    """One concise log line per round."""
    head = (f"[fedapp] round {int(row['round'])}/{num_rounds}: "
            f"acc {row['server-accuracy']:.4f} loss {row['server-loss']:.4f}")
    if "replies" not in row:
        return head + " (initial model)"
    kept = " | kept previous model" if row["kept-previous"] else ""
    if row.get("flagged"):
        kept += f" | flagged {int(row['flagged'])} excluded {int(row['excluded'])}"
    if "byzantine-replaced" in row:
        kept += f" | byzantine {int(row['byzantine-replaced'])}"
    epsilon = row.get("dp-epsilon-max", row.get("dp-epsilon"))  # local: worst node
    if epsilon is not None:
        kept += f" | epsilon {epsilon:.2f}"
    return (f"{head} | replies {int(row['replies'])} accepted {int(row['accepted'])} "
            f"rejected {int(row['rejected'])} failed {int(row['failures'])}{kept} | "
            f"up {row['bytes-up'] / 1e3:.1f} kB down {row['bytes-down'] / 1e3:.1f} kB | "
            f"{row['seconds']:.1f}s")
