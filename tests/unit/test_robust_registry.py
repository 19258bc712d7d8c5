"""The registry of rules by run-config name, and the contract every rule keeps."""

from __future__ import annotations

import pytest
import torch

from fedapp.robust import AGGREGATORS, AggregationResult

# Per-rule parameters beyond (updates, weights, f).
EXTRA = {"centered-clipping": {"tau": 1.0}}
ROBUST = ["krum", "multikrum", "median", "trimmed-mean", "geomed", "centered-clipping",
          "spectral"]


def test_all_rules_are_registered() -> None:
    assert set(ROBUST) | {"fedavg"} <= set(AGGREGATORS)


@pytest.mark.parametrize("name", ROBUST)
def test_rule_contract(name: str) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(7, 5, generator=gen)
    w = torch.rand(7, generator=gen) + 0.5
    before = x.clone()
    result = AGGREGATORS[name](x, w, f=2, **EXTRA.get(name, {}))
    assert isinstance(result, AggregationResult)
    assert result.report.rule == name
    assert result.aggregate.shape == (5,) and result.aggregate.dtype == torch.float32
    assert torch.isfinite(result.aggregate).all()
    assert torch.equal(x, before)  # pure: the input is not modified
    assert all(0 <= i < 7 for i in result.report.selected + result.report.trimmed)
    assert len(result.report.scores) in (0, 7)


@pytest.mark.parametrize("name", ROBUST)
def test_one_row_moved_far_away_moves_no_robust_rule_far(name: str) -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(7, 5, generator=gen)
    attacked = x.clone()
    attacked[0] = 1e8
    kwargs = {"f": 1, **EXTRA.get(name, {})}
    clean = AGGREGATORS[name](x, **kwargs).aggregate
    moved = AGGREGATORS[name](attacked, **kwargs).aggregate
    assert float(torch.linalg.vector_norm(moved - clean)) < 10.0
    # The plain mean is moved, so this test can tell a robust rule from FedAvg.
    fedavg = AGGREGATORS["fedavg"]
    assert float(torch.linalg.vector_norm(fedavg(attacked).aggregate - fedavg(x).aggregate)) > 1e6
