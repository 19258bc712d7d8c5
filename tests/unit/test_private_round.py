"""The ClientApp's DP round: budget planned once, persisted in context.state, enforced."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedapp.config import RunConfig
from fedapp.data import DATASET_SPECS, Split
from fedapp.privacy import BudgetExhausted, private_round
from fedapp.task import build_model


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_budget_is_spent_over_planned_rounds_then_refused() -> None:
    cfg = RunConfig(dp="local", dp_epsilon=2.0, num_server_rounds=2, local_epochs=1,
                    batch_size=16, dataset="breast-cancer")
    rng = np.random.default_rng(0)
    data = Split(rng.normal(size=(64, 30)).astype(np.float32),
                 rng.integers(0, 2, 64).astype(np.int64))
    model = build_model("mlp", DATASET_SPECS["breast-cancer"], 8)
    keys = list(model.state_dict())
    state = RecordDict()
    eps1 = private_round(cfg, model, data, 1, state)[2]
    eps2 = private_round(cfg, model, data, 2, state)[2]
    assert 0 < eps1 < eps2 <= cfg.dp_epsilon * 1.01
    assert eps2 == pytest.approx(cfg.dp_epsilon, rel=0.02)  # the plan spends the budget
    assert list(model.state_dict()) == keys  # no Opacus wrapper left in the keys
    with pytest.raises(BudgetExhausted, match=r"would exceed dp-epsilon=2\.0"):
        private_round(cfg, model, data, 3, state)
