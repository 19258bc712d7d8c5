"""fedapp ServerApp: wiring only (config, model, strategy, round log, outputs)."""

from __future__ import annotations

import json
import time
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedapp import task
from fedapp.aggregation import AggregationPipeline
from fedapp.config import RunConfig
from fedapp.data.loading import dataset_spec, load_server_test
from fedapp.strategy import RobustStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flower(context.run_config)
    out_dir = Path(cfg.output_path) / f"run-{context.run_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = dataset_spec(cfg)
    test_set = load_server_test(cfg)
    task.set_seed(cfg.seed)
    model = task.build_model(cfg.model, spec, cfg.hidden_units)
    strategy = RobustStrategy(
        aggregate_fn=AggregationPipeline.from_config(cfg),
        server_lr=cfg.server_lr,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_train_nodes,
        min_evaluate_nodes=1,
        min_available_nodes=cfg.min_available_nodes,
    )
    rows: list[dict[str, float]] = []

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = task.evaluate(model, test_set)
        row = {"round": server_round, "server-loss": loss, "server-accuracy": acc}
        stats = strategy.history.get(server_round)
        if stats is not None:
            row |= {"replies": stats.replies, "accepted": stats.accepted,
                    "rejected": len(stats.rejected), "failures": len(stats.failed),
                    "kept-previous": int(stats.kept_previous),
                    "bytes-up": stats.bytes_up, "bytes-down": stats.bytes_down,
                    "seconds": time.perf_counter() - stats.started}
            row |= {k: v for k, v in stats.train_metrics.items() if k != "num-examples"}
        rows.append(row)
        log(INFO, "%s", round_line(row, cfg.num_server_rounds))
        return MetricRecord({"server-loss": loss, "server-accuracy": acc})

    log(INFO, "[fedapp] %s on %s (%d test rows), aggregator %s, outputs in %s",
        type(model).__name__, cfg.dataset, len(test_set), cfg.aggregator, out_dir)
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
    log(INFO, "[fedapp] final accuracy %.4f; model, config and per-round metrics in %s",
        rows[-1]["server-accuracy"], out_dir)


def round_line(row: dict[str, float], num_rounds: int) -> str:
    """One concise log line per round."""
    head = (f"[fedapp] round {int(row['round'])}/{num_rounds}: "
            f"acc {row['server-accuracy']:.4f} loss {row['server-loss']:.4f}")
    if "replies" not in row:
        return head + " (initial model)"
    kept = " | kept previous model" if row["kept-previous"] else ""
    return (f"{head} | replies {int(row['replies'])} accepted {int(row['accepted'])} "
            f"rejected {int(row['rejected'])} failed {int(row['failures'])}{kept} | "
            f"up {row['bytes-up'] / 1e3:.1f} kB down {row['bytes-down'] / 1e3:.1f} kB | "
            f"{row['seconds']:.1f}s")
