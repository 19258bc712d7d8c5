"""Centered clipping."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedapp.robust.base import weighted_mean
from fedapp.robust.clipping import centered_clipping

FAST = settings(max_examples=25, deadline=None)

X = torch.tensor([[1.0, 0.0], [3.0, 0.0], [100.0, 0.0]])


def test_one_step_from_zero_by_hand() -> None:
    # Differences 1, 3, 100 clipped to radius 2: 1, 2, 2 -> mean 5/3.
    result = centered_clipping(X, tau=2.0)
    assert result.aggregate.tolist() == pytest.approx([5 / 3, 0.0])
    assert result.report.selected == (0,)
    assert result.report.trimmed == (1, 2)
    assert result.report.scores == (1.0, 3.0, 100.0)


def test_center_and_iterations_by_hand() -> None:
    # From center 2: differences -1, 1, 98 -> -1, 1, 2 -> v = 2 + 2/3.
    centered = centered_clipping(X, tau=2.0, center=torch.tensor([2.0, 0.0]))
    assert centered.aggregate.tolist() == pytest.approx([8 / 3, 0.0])
    # Second step from 5/3: differences -2/3, 4/3, 98.33 -> mean (-2/3 + 4/3 + 2) / 3 = 8/9.
    twice = centered_clipping(X, tau=2.0, iterations=2)
    assert twice.aggregate.tolist() == pytest.approx([5 / 3 + 8 / 9, 0.0])


def test_weights_enter_as_a_weighted_mean_of_clipped_differences() -> None:
    w = torch.tensor([2.0, 1.0, 1.0])
    # (2 * 1 + 1 * 2 + 1 * 2) / 4 = 1.5
    assert centered_clipping(X, w, tau=2.0).aggregate.tolist() == pytest.approx([1.5, 0.0])


@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9))
def test_huge_tau_is_the_weighted_mean(seed: int, n: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    w = torch.rand(n, generator=gen) + 0.1
    center = torch.randn(4, generator=gen)
    result = centered_clipping(x, w, tau=1e9, center=center)
    torch.testing.assert_close(result.aggregate, weighted_mean(x, w).aggregate)
    assert result.report.trimmed == ()


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 9),
    tau=st.floats(1e-3, 10.0),
    iterations=st.integers(1, 4),
)
def test_moves_at_most_tau_per_iteration(seed: int, n: int, tau: float, iterations: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen) * 1e4
    center = torch.randn(3, generator=gen)
    v = centered_clipping(x, tau=tau, center=center, iterations=iterations).aggregate
    rounding = 1e-6 * (1 + float(torch.linalg.vector_norm(center)))  # float32 output
    assert float(torch.linalg.vector_norm(v - center)) <= tau * iterations * (1 + 1e-5) + rounding


@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 9))
def test_centered_clipping_is_permutation_invariant(seed: int, n: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    w = torch.rand(n, generator=gen) + 0.1
    perm = torch.randperm(n, generator=gen)
    a = centered_clipping(x, w, tau=0.5, iterations=3).aggregate
    b = centered_clipping(x[perm], w[perm], tau=0.5, iterations=3).aggregate
    torch.testing.assert_close(a, b)


def test_center_is_not_modified() -> None:
    center = torch.tensor([2.0, 0.0])
    centered_clipping(X, tau=2.0, center=center)
    assert center.tolist() == [2.0, 0.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": 0.0}, r"tau > 0, got tau=0.0"),
        ({"tau": float("nan")}, r"tau > 0"),
        ({"tau": 1.0, "iterations": 0}, r"iterations >= 1"),
        ({"tau": 1.0, "center": torch.zeros(3)}, r"center must have shape \(2,\), got \(3,\)"),
        ({"tau": 1.0, "f": 2}, r"centered-clipping needs n > 2f, got n=3, f=2"),
    ],
)
def test_centered_clipping_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        centered_clipping(X, **kwargs)
