"""fedapp ClientApp: wiring only (load local data, train or evaluate, reply).

In deployment every message starts a fresh process that imports this module, so
the import path is kept lean: Flower's client API and fedapp's mods; torch is imported by
the train and evaluate handlers only (a secure-aggregation stage that does not train,
``fedapp.secagg``, never imports it). Dataset
libraries are imported inside the data loaders, when (and only if) needed, and a
hospital's parsed file is cached between messages (fedapp.data.local). Local
training avoids ``torch.optim`` (its first use imports ``torch._dynamo``, seconds per
process; see ``task.train``) and runs on one torch thread by default; ``device='cpu'``
never touches CUDA (``fedapp.device``). With
``FEDAPP_COLD_START_LOG=1`` in the SuperNode's environment each handler logs how
long after its process started it was entered and how long the local data took,
and when it returned, with wall-clock (epoch) stamps of the process start, the
handler's entry and its return (``benchmarks/cold_start.py`` reads them).
"""

from __future__ import annotations

import functools
import os
import time
import zlib
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fedapp.attacks.mod import PARTITION_METRIC, attack_mod, training_data
from fedapp.compression.mod import compression_mod
from fedapp.config import RunConfig, node_config_of, run_config_of
from fedapp.data import Split
from fedapp.data.loading import dataset_spec, load_node_data
from fedapp.data.local import DataFileError
from fedapp.node_errors import BUDGET_REFUSED, DATA_ERROR, error_reply
from fedapp.secagg.client import secagg_mod

if TYPE_CHECKING:
    import torch

# Mods, outermost first. secagg_mod runs the stages of secure aggregation when a TRAIN
# message carries them (secagg=true; it masks the update, so it comes last on the way
# out); compression_mod encodes TRAIN replies as update payloads when `compression` is
# not "off"; attack_mod (simulation only, off by default) poisons a malicious node's dense
# update before compression sees it. Flower's clipping mods, if added, go after
# compression_mod.
app = ClientApp(mods=[secagg_mod, compression_mod, attack_mod])


COLD_START_LOG_ENV = "FEDAPP_COLD_START_LOG"
TORCH_THREADS_ENV = "FEDAPP_TORCH_THREADS"


def _limit_torch_threads() -> None:
    """One intra-op thread unless told otherwise. The models are tiny: extra threads gain
    nothing and, on a busy machine, cost seconds per message (measured: a 152-row MLP
    round took 1.5-2.3 s with 2 threads under load 6, 0.04-0.1 s with 1).
    ``FEDAPP_TORCH_THREADS=N`` sets N, ``auto`` keeps torch's default; an explicit
    ``OMP_NUM_THREADS`` is respected as well."""
    wanted = os.environ.get(TORCH_THREADS_ENV, "").strip().lower()
    if wanted == "auto" or (not wanted and "OMP_NUM_THREADS" in os.environ):
        return
    threads = int(wanted) if wanted.isdigit() else 1 if not wanted else 0
    if threads < 1:
        raise ValueError(f"{TORCH_THREADS_ENV}={wanted!r}: expected a positive integer or 'auto'")
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


Handler = Callable[[Message, Context], Message]


def _process_age() -> float | None:
    """Seconds since this process started (Linux /proc, 10 ms resolution), else None."""
    try:
        stat = Path("/proc/self/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22: starttime
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _cold_start_logged(handler: Handler) -> Handler:
    """With ``FEDAPP_COLD_START_LOG=1``: log when ``handler`` returned (epoch) and how long
    it ran; ``_setup`` logs its entry. Otherwise ``handler`` runs as it is."""
    @functools.wraps(handler)
    def logged(msg: Message, context: Context) -> Message:
        if os.environ.get(COLD_START_LOG_ENV) != "1":
            return handler(msg, context)
        t0 = time.perf_counter()
        reply = handler(msg, context)
        log(INFO, "[fedapp] cold start: %s handler returned at %.3f (epoch) after %.3fs",
            msg.metadata.message_type, time.time(), time.perf_counter() - t0)
        return reply

    return logged


def _setup(msg: Message, context: Context
           ) -> tuple[RunConfig, torch.nn.Module, Split, Split, int]:
    """The run config, the received global model, the local (train, validation) splits and
    this (node, round)'s seed. The config is parsed once per message (``run_config_of``)."""
    entered = _process_age() if os.environ.get(COLD_START_LOG_ENV) == "1" else None
    entered_epoch = time.time()
    _limit_torch_threads()
    cfg, node = run_config_of(context), node_config_of(context)
    t0 = time.perf_counter()
    train_data, val_data = load_node_data(cfg, node)
    if entered is not None:
        log(INFO, "[fedapp] cold start: %s handler entered %.2fs after process start; "
            "local data loaded in %.3fs (process start %.3f, entered %.3f epoch)",
            msg.metadata.message_type, entered, time.perf_counter() - t0,
            entered_epoch - entered, entered_epoch)
    spec = dataset_spec(cfg)
    train_data = training_data(cfg, node, train_data, spec.num_classes)  # attack: sim only
    from fedapp import task

    model = task.build_model(cfg.model, spec, cfg.hidden_units)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
    # Distinct, reproducible seed per (run seed, node, round); a hospital is keyed by
    # its file's name, which does not change when the file moves.
    node_key = node.partition_id if node.partition_id is not None else zlib.crc32(
        os.path.basename(str(node.data_path)).encode())
    seed = (cfg.seed * 1_000_003 + node_key * 1009 + server_round) % 2**31
    return cfg, model, train_data, val_data, seed


def _refuse(msg: Message, code: int, exc: Exception) -> Message:
    """The error reply for a refusal the node makes on purpose (``fedapp.node_errors``): the
    first line of ``exc`` goes to the server; the node's own log (its operators' eyes only)
    gets all of it, with a ``DataFileError``'s ``local_detail``."""
    detail = getattr(exc, "local_detail", None)
    log(WARNING, "[fedapp] %s refused (code %d): %s%s", msg.metadata.message_type, code,
        str(exc).strip(), f"\n{detail}" if detail else "")
    return error_reply(msg, code, str(exc))


@app.train()
@_cold_start_logged
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on local data; reply with weights and metrics.

    The reply's MetricRecord holds ``num-examples`` (the server's weight), ``dp-epsilon``
    under ``dp='local'`` or ``'distributed'``, and ``train-loss`` / ``train-accuracy`` unless
    ``train-metrics='none'``: none of them is covered by DP (docs/node-data.md). An unusable
    data file (``DATA_ERROR``) or a spent DP budget (``BUDGET_REFUSED``: the run's
    ``dp-epsilon``, the node's lifetime ``dp-budget``, or an unusable privacy ledger) is
    answered with a one-line error reply; anything else raises and Flower reports it.
    """
    try:
        cfg, model, train_data, _, seed = _setup(msg, context)
    except DataFileError as exc:
        return _refuse(msg, DATA_ERROR, exc)
    from fedapp import task
    from fedapp.device import resolve_device

    device = resolve_device(cfg.device)  # 'cuda' without CUDA raises, naming the key
    metrics = MetricRecord({"num-examples": len(train_data)})
    if cfg.dp in ("local", "distributed"):  # refused past the budget (fedapp.privacy)
        from fedapp.privacy import BudgetExhausted

        step = _local_dp_round if cfg.dp == "local" else _distributed_step
        try:
            loss, acc, metrics["dp-epsilon"] = step(cfg, model, train_data, msg, context,
                                                    seed, device)
        except BudgetExhausted as exc:
            return _refuse(msg, BUDGET_REFUSED, exc)
    else:
        loss, acc = task.train(model, train_data, cfg.local_epochs, cfg.batch_size,
                               cfg.learning_rate, seed, device)
    if cfg.train_metrics == "send":
        metrics["train-loss"], metrics["train-accuracy"] = loss, acc
    if cfg.attack != "none":  # simulation only: lets the threat model find its nodes
        metrics[PARTITION_METRIC] = node_config_of(context).partition_id
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def _local_dp_round(cfg: RunConfig, model: torch.nn.Module, data: Split, msg: Message,
                    context: Context, seed: int, device: torch.device
                    ) -> tuple[float, float, float]:
    """``dp='local'``: DP-SGD (Opacus, imported only here), charged to the node's lifetime
    ledger before it trains (``fedapp.privacy.ledger``)."""
    from fedapp.privacy import private_round
    from fedapp.privacy.ledger import node_budget

    budget = node_budget(cfg, node_config_of(context), context.run_id,
                         int(msg.content["config"]["server-round"]))  # type: ignore[arg-type]
    return private_round(cfg, model, data, seed, context.state, budget, device)


def _distributed_step(cfg: RunConfig, model: torch.nn.Module, data: Split, msg: Message,
                      context: Context, seed: int, device: torch.device
                      ) -> tuple[float, float, float]:
    """``dp='distributed'``: the model's weights become ``w + sum clip_C(g_i)`` (the update
    the secure-aggregation mod noises, masks and sends; ``fedapp.privacy.distributed``).
    Returns the batch's loss, no accuracy (0.0), and the run's epsilon after this round."""
    from fedapp.privacy.distributed import distributed_round, run_noise
    from fedapp.privacy.ledger import node_budget

    server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
    budget = node_budget(cfg, node_config_of(context), context.run_id, server_round)
    grads, loss, eps = distributed_round(cfg, model, data, server_round, budget,
                                         z=run_noise(cfg, context.state))
    import torch

    with torch.no_grad():
        offset = 0
        for value in model.state_dict().values():
            n = value.numel()
            value.add_(torch.from_numpy(grads[offset:offset + n]).view_as(value))
            offset += n
    return loss, 0.0, eps


@app.evaluate()
@_cold_start_logged
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the node's local validation split (an
    unusable data file is answered with a ``DATA_ERROR`` reply, as in ``train``)."""
    try:
        cfg, model, train_data, val_data, _ = _setup(msg, context)
    except DataFileError as exc:
        return _refuse(msg, DATA_ERROR, exc)
    data = val_data if len(val_data) else train_data
    from fedapp import task
    from fedapp.device import resolve_device

    loss, acc = task.evaluate(model, data, device=resolve_device(cfg.device))
    metrics = MetricRecord({"num-examples": len(data), "eval-loss": loss, "eval-accuracy": acc})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
