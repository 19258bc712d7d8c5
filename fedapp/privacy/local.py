"""``dp='local'``: one DP-SGD round on a node, with the budget enforced (the ClientApp's entry).

The node-side counterpart of :mod:`fedapp.privacy.central` (``dp='central'``, on the
server): :func:`private_round` plans the run's budget on its first round, refuses a round
that would exceed it (:mod:`fedapp.privacy.budget`) or the hospital's lifetime cap
(:mod:`fedapp.privacy.ledger`, charged before training), trains with DP-SGD
(:mod:`fedapp.privacy.dp_sgd`) and stores the accountant's state back in ``context.state``.
"""

from __future__ import annotations

from logging import WARNING

import torch
from flwr.app import RecordDict
from flwr.common.logger import log
from torch import nn

from fedapp.config import RunConfig
from fedapp.data.specs import Split
from fedapp.privacy.budget import (
    BudgetExhausted,
    DPState,
    load_state,
    plan_steps,
    store_state,
    would_exceed,
)
from fedapp.privacy.dp_sgd import dp_train
from fedapp.privacy.ledger import LedgerError, NodeBudget

__all__ = ["BudgetExhausted", "private_round"]


def private_round(cfg: RunConfig, model: nn.Module, data: Split, seed: int,
                  state: RecordDict, budget: NodeBudget | None = None,
                  device: torch.device | str = "cpu") -> tuple[float, float, float]:
    """Train ``model`` in place with DP-SGD for ``local-epochs``; return (loss, acc, epsilon).

    The first call plans the whole run (noise calibrated once for
    ``num-server-rounds x local-epochs`` epochs at the target ``dp-epsilon``); the
    accountant's history lives in ``state`` (the node's ``context.state``) and is
    written back only after the round trained. A round that would push the run's epsilon
    past ``dp-epsilon``, or (with ``budget``) the lifetime epsilon of the node's data past
    its ``dp-budget``, raises ``BudgetExhausted`` before any training: the node replies
    with that error, the server counts a failure, the run goes on. With ``budget`` the
    round is charged to the ledger as pending *before* it trains and settled after, so a
    crash in between leaves it charged (over-counted, never under-counted).
    The epsilon returned is the run's (what the reply's ``dp-epsilon`` reports). DP-SGD runs
    on ``device`` (``fedapp.device.resolve_device``).
    """
    plan = load_state(state) or DPState.plan(
        target_epsilon=cfg.dp_epsilon, delta=cfg.dp_delta, num_examples=len(data),
        batch_size=cfg.batch_size, local_epochs=cfg.local_epochs,
        num_rounds=cfg.num_server_rounds)
    q, per_epoch = plan_steps(len(data), cfg.batch_size)
    steps = cfg.local_epochs * per_epoch
    if would_exceed(plan, steps, q, plan.noise_multiplier, cfg.dp_delta, cfg.dp_epsilon):
        raise BudgetExhausted(
            f"DP budget: another round would exceed dp-epsilon={cfg.dp_epsilon} "
            f"(spent {plan.epsilon:.3f} in {plan.steps_taken} steps); not training")
    entry = (budget.ledger.charge(budget, plan.noise_multiplier, q, steps, cfg.dp_epsilon)
             if budget is not None else None)
    before = plan.steps_taken
    loss, acc, eps, plan = dp_train(model, data, cfg.local_epochs, cfg.batch_size,
                                    cfg.learning_rate, seed, cfg.dp_max_grad_norm,
                                    plan.noise_multiplier, cfg.dp_delta, plan, device=device)
    store_state(state, plan)
    if budget is not None and entry is not None:
        try:
            budget.ledger.settle(budget.dataset, entry, plan.steps_taken - before)
        except LedgerError as exc:  # the round stays charged as pending: safe to reply
            log(WARNING, "[fedapp] %s", exc)
    return loss, acc, eps
