"""Weights from self-reported example counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedapp.robust.weights import DEFAULT_CAP, capped_weights, node_weights, uniform_weights


def test_capped_weights_by_hand() -> None:
    # Lower median of (10, 20, 30, 1e9) is 20; cap 2 -> at most 40.
    assert capped_weights([10, 20, 30, 1e9]).tolist() == [10.0, 20.0, 30.0, 40.0]
    assert capped_weights([10, 20, 30, 1e9], cap=1.0).tolist() == [10.0, 20.0, 20.0, 20.0]
    assert DEFAULT_CAP == 2.0


def test_modes() -> None:
    assert node_weights([5, 1e9, 7], mode="uniform").tolist() == [1.0, 1.0, 1.0]
    assert node_weights([5, 1e9, 7]).tolist() == [5.0, 14.0, 7.0]
    assert uniform_weights(2).dtype == torch.float64


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.floats(1.0, 1e12), min_size=1, max_size=20),
    cap=st.floats(1.0, 10.0),
)
def test_no_weight_exceeds_cap_times_the_median(counts: list[float], cap: float) -> None:
    w = capped_weights(counts, cap)
    c = torch.tensor(counts, dtype=torch.float64)
    assert float(w.max()) <= cap * float(torch.median(w)) * (1 + 1e-12)
    assert (w <= c).all()
    # Counts at or below the median are untouched.
    assert torch.equal(w[c <= torch.median(c)], c[c <= torch.median(c)])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: capped_weights([1, -1, 2]), r"finite and >= 0"),
        (lambda: capped_weights([1, float("nan"), 2]), r"finite and >= 0"),
        (lambda: capped_weights([]), r"empty"),
        (lambda: capped_weights([1, 2], cap=0.5), r"cap must be a finite number >= 1"),
        (lambda: capped_weights([0, 0, 5]), r"median num-examples is 0"),
        (
            lambda: node_weights([1, 2], mode="fair"),
            r"'capped', 'uniform' or 'num-examples', got 'fair'",
        ),
        (lambda: uniform_weights(0), r"n >= 1"),
    ],
)
def test_weights_reject_bad_input(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
