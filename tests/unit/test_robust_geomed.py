"""Geometric median (smoothed Weiszfeld)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedapp.robust.geomed import geometric_median

FAST = settings(max_examples=25, deadline=None)


def _objective(x: torch.Tensor, z: torch.Tensor, w: torch.Tensor) -> float:
    w64 = w.double() / w.double().sum()
    return float(w64 @ torch.linalg.vector_norm(x.double() - z.double(), dim=1))


def test_geomed_on_a_line_is_the_median() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0]])
    result = geometric_median(x)
    assert result.aggregate.item() == pytest.approx(2.0, abs=1e-4)
    assert result.report.extra["converged"] == 1.0
    assert result.report.scores[4] == pytest.approx(98.0, abs=1e-4)


def test_weighted_geomed_follows_the_heavy_row() -> None:
    # In 1-D the weighted geometric median is the weighted median: 10 holds 5/7.
    x = torch.tensor([[0.0], [1.0], [10.0]])
    result = geometric_median(x, torch.tensor([1.0, 1.0, 5.0]), nu=1e-8)
    assert result.aggregate.item() == pytest.approx(10.0, abs=1e-3)


def test_geomed_of_a_symmetric_cross_is_its_centre() -> None:
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.0, 0.0]]) + 3.0
    assert geometric_median(x).aggregate.tolist() == pytest.approx([3.0, 3.0], abs=1e-5)


def test_geomed_reports_iterations_and_respects_the_cap() -> None:
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    capped = geometric_median(x, max_iter=2, tol=0.0)
    assert capped.report.extra["iterations"] == 2.0
    assert capped.report.extra["converged"] == 0.0
    full = geometric_median(x, tol=1e-10)
    assert 2 < full.report.extra["iterations"] <= 100
    w = torch.ones(7)
    assert _objective(x, full.aggregate, w) <= _objective(x, capped.aggregate, w) + 1e-7


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nu": 0.0}, r"nu > 0"),
        ({"max_iter": 0}, r"max_iter >= 1"),
        ({"tol": -1.0}, r"tol >= 0"),
        ({"f": 2}, r"geomed needs n > 2f, got n=4, f=2"),
    ],
)
def test_geomed_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        geometric_median(torch.zeros(4, 2), **kwargs)


@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(3, 9))
def test_geomed_is_a_minimum(seed: int, n: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    w = torch.rand(n, generator=gen) + 0.1
    # Weiszfeld converges slowly when the median sits near a row: 100 iterations left
    # about 1 draw in 700 short of the optimum (flaky); give it room to converge.
    z = geometric_median(x, w, tol=1e-10, max_iter=5000).aggregate
    best = _objective(x, z, w)
    for _ in range(10):
        step = torch.randn(4, generator=gen) * 1e-2
        assert best <= _objective(x, z + step, w) * (1 + 1e-5) + 1e-6  # smoothed optimum


@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 9))
def test_geomed_is_permutation_invariant(seed: int, n: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=gen)
    w = torch.rand(n, generator=gen) + 0.1
    perm = torch.randperm(n, generator=gen)
    a = geometric_median(x, w, tol=1e-12).aggregate
    b = geometric_median(x[perm], w[perm], tol=1e-12).aggregate
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    h=st.integers(2, 8),
    magnitude=st.floats(1.0, 1e6),
    data=st.data(),
)
def test_geomed_stays_near_the_honest_rows(
    seed: int, h: int, magnitude: float, data: st.DataObject
) -> None:
    # With Byzantine weight share a < 1/2 and every honest row within r of y,
    # g(z) <= g(y) and the triangle inequality give ||z - y|| <= 2(1 - a) r / (1 - 2a).
    f = data.draw(st.integers(0, h - 1))
    gen = torch.Generator().manual_seed(seed)
    honest = torch.rand(h, 3, generator=gen) * 2 - 1
    outliers = (torch.rand(f, 3, generator=gen) * 2 - 1) * magnitude
    x = torch.cat([honest, outliers])
    y = honest.mean(0)
    r = float(torch.linalg.vector_norm(honest - y, dim=1).max())
    a = f / (h + f)
    z = geometric_median(x, f=f, tol=1e-10, max_iter=500).aggregate
    bound = 2 * (1 - a) * r / (1 - 2 * a)
    assert float(torch.linalg.vector_norm(z - y)) <= bound * 1.001 + 1e-4
