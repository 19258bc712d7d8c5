"""fedapp ServerApp: wiring only (config, model, strategy stack, evaluation, outputs).

The strategy stack and its state come from ``fedapp.server.build``; each round's row
(``fedapp.server.rounds``) gets the server's evaluation here and is logged, written to
``rounds.json`` (rewritten atomically after every round) and sent to MLflow, and the whole
server state is checkpointed (``fedapp.server.checkpoint``). ``resume`` continues a run
from a checkpoint (``fedapp.server.resume``) at its next round, in the same MLflow run. At
the end, ``reputation.json`` and ``node_health.json`` (``fedapp.server.health``) join them.
The server's evaluation runs on the run's ``device`` (``fedapp.device``; with a test set,
``cuda`` without CUDA stops the run at start-up); the update matrix's aggregation stays
on the CPU.
"""

from __future__ import annotations

import json
import os
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fedapp import monitoring, task
from fedapp.config import RunConfig
from fedapp.data.loading import dataset_spec
from fedapp.device import resolve_device
from fedapp.server import checkpoint
from fedapp.server.build import build_strategy, load_champion, server_test_set
from fedapp.server.checkpoint import Checkpoint
from fedapp.server.health import Breaker
from fedapp.server.resume import find_checkpoint
from fedapp.server.rounds import round_line
from fedapp.server.state import ServerState
from fedapp.tracking import Tracker, registry, resolve_tracking_uri

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_flower(context.run_config)
    out_dir = Path(cfg.output_path) / f"run-{context.run_id}"
    resumed = find_checkpoint(cfg, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test_set = server_test_set(cfg, grid)
    device = resolve_device(cfg.device) if test_set is not None else torch.device("cpu")
    task.set_seed(cfg.seed)
    model = task.build_model(cfg.model, dataset_spec(cfg), cfg.hidden_units)
    tracking_uri = resolve_tracking_uri(cfg.tracking_uri, cfg.output_path)
    model_name = cfg.registered_model or registry.model_name_for(cfg.dataset)
    if cfg.initial_model == "champion" and resumed is None:
        load_champion(model, tracking_uri, model_name)
    state = restored_state(resumed, cfg.num_server_rounds)
    done = state.server_round if state else 0
    robust, strategy = build_strategy(cfg, state, round_offset=done)
    state = robust.state
    tracker = open_tracker(cfg, context.run_id, tracking_uri, resumed)
    writer = checkpoint.Writer(out_dir / checkpoint.DIRECTORY, cfg.checkpoint_keep)
    monitor = monitoring.start(cfg, context.run_id, model_bytes=4 * sum(  # float32 updates
        t.numel() for t in model.state_dict().values()))

    def evaluate_fn(flower_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        server_round = flower_round + done
        if flower_round == 0 and done:  # the restored model: its round is recorded
            return None
        evaluation = None
        if test_set is not None:
            model.load_state_dict(arrays.to_torch_state_dict())
            loss, acc = task.evaluate(model, test_set, device=device)
            evaluation = MetricRecord({"server-loss": loss, "server-accuracy": acc})
        row = state.record_round(server_round, dict(evaluation or {}))  # type: ignore[arg-type]
        log(INFO, "%s", round_line(row, cfg.num_server_rounds))
        write_json(out_dir / "rounds.json", state.history())
        tracker.log_round(server_round, {k: v for k, v in row.items() if k != "round"})
        monitor.observe(row, robust.history.get(server_round), state.reputation.scores())
        if server_round > 0 and cfg.checkpoint_keep > 0:
            writer.save(state, cfg.to_flower(), context.run_id, tracker.run_id or "")
        return evaluation

    log(INFO, "[fedapp] %s on %s (%s test rows), aggregator %s, outputs in %s",
        type(model).__name__, cfg.dataset, "no" if test_set is None else len(test_set),
        cfg.aggregator, out_dir)
    initial = state.arrays if state.arrays is not None else ArrayRecord(model.state_dict())
    # The monitor stops serving last (after one more scrape, if Prometheus scrapes it); an
    # exception ends the MLflow run as FAILED and propagates.
    with monitor, tracker:
        try:
            result = strategy.start(grid=grid, initial_arrays=initial,
                                    num_rounds=max(cfg.num_server_rounds - done, 0),
                                    timeout=cfg.round_timeout, evaluate_fn=evaluate_fn)
        finally:
            writer.close()  # the last round's checkpoint is on disk
        model.load_state_dict(result.arrays.to_torch_state_dict())
        final = save_outputs(model, cfg, state, out_dir, tracker)
        register(cfg, tracker, model, model_name, final, context.run_id)
    log(INFO, "[fedapp] final accuracy %s; model, config and per-round metrics in %s",
        "n/a" if final is None else f"{final:.4f}", out_dir)


def restored_state(resumed: Checkpoint | None, num_rounds: int) -> ServerState | None:
    """The resumed checkpoint's server state, its sampling RNG restored (None without)."""
    if resumed is None:
        return None
    resumed.state.restore_sampling_rng()
    log(INFO, "[fedapp] resuming from %s: round %d of %d done", resumed.path,
        resumed.state.server_round, num_rounds)
    return resumed.state


def open_tracker(cfg: RunConfig, run_id: int, tracking_uri: str,
                 resumed: checkpoint.Checkpoint | None) -> Tracker:
    """This run's MLflow run: the checkpoint's, continued, when resuming; else a new one."""
    if not cfg.tracking:
        return Tracker.disabled("tracking=false")
    if resumed is not None and resumed.mlflow_run_id:
        return Tracker.resume(tracking_uri, resumed.mlflow_run_id, cfg.to_flower(), tags={
            f"resumed-by-flwr-run-{run_id}": f"after round {resumed.state.server_round}",
            "num-server-rounds-now": str(cfg.num_server_rounds)})
    return Tracker.open(tracking_uri, cfg.experiment, f"flwr-run-{run_id}", cfg.to_flower(),
                        parent_run_id=cfg.parent_run_id or None,
                        tags={"flwr-run-id": str(run_id)})


def register(cfg: RunConfig, tracker: Tracker, model: torch.nn.Module, model_name: str,
             final: float | None, run_id: int) -> None:
    """Log the final model as an MLflow Model (``fedapp.tracking.model``: the dataset's
    inputs, logits out) and register it behind the promotion gate, or only log it when
    not registering."""
    if cfg.registered_model != "off" and final is None:
        log(WARNING, "[fedapp] no accuracy to gate a model version on (no server test "
            "set, no federated evaluation): the model is logged, not registered")
    if not tracker.enabled:
        return
    spec = dataset_spec(cfg)
    if cfg.registered_model != "off" and final is not None:
        tracker.register_model(model, spec, model_name, final, {"flwr-run-id": str(run_id)},
                               cfg.promotion_margin)
    else:
        tracker.log_model(model, spec)


def save_outputs(model: torch.nn.Module, cfg: RunConfig, state: ServerState, out_dir: Path,
                 tracker: Tracker) -> float | None:
    """Write the final model, config, rounds, reputations and node health; log them.
    Returns the final accuracy: the server's, else the nodes' federated one, else None."""
    torch.save(model.state_dict(), out_dir / "model.pt")
    write_json(out_dir / "config.json", cfg.to_flower())
    write_json(out_dir / "reputation.json", state.reputation.to_dict())
    write_json(out_dir / "rounds.json", state.history())
    breaker = Breaker(cfg.health_max_failures, cfg.health_cooldown)
    write_json(out_dir / "node_health.json", breaker.report(state.health))
    tracker.log_artifacts([out_dir / n for n in ("config.json", "rounds.json",
                                                 "reputation.json", "node_health.json")])
    rows = state.history()
    tracker.log_curves(rows, out_dir / "curves.png")
    accuracy = rows[-1].get("server-accuracy", rows[-1].get("eval-accuracy"))
    return None if accuracy is None else float(accuracy)


def write_json(path: Path, data: object) -> None:
    """Write ``data`` as JSON atomically: readers see the old file or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
