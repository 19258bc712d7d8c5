"""Coordinate-wise median and trimmed mean."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedapp.robust.coordinate import coordinate_median, trimmed_mean

FAST = settings(max_examples=30, deadline=None)


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- hand-computed cases ------------------------------------------------------------


def test_median_by_hand() -> None:
    x = _t([[1, 10], [2, 20], [100, -5]])
    assert coordinate_median(x).aggregate.tolist() == [2.0, 10.0]
    # Even n: midpoint of the two middle values, as numpy.median.
    assert coordinate_median(_t([[1], [2], [3], [100]])).aggregate.tolist() == [2.5]


def test_weighted_median_by_hand() -> None:
    x = _t([[1], [2], [3]])
    assert coordinate_median(x, torch.tensor([1.0, 1.0, 5.0])).aggregate.tolist() == [3.0]
    # Cumulative weights 1, 2, 4 hit exactly half (2) at value 2: midpoint of 2 and 3.
    assert coordinate_median(x, torch.tensor([1.0, 1.0, 2.0])).aggregate.tolist() == [2.5]
    # A zero-weight row between the others does not count.
    y = _t([[1], [2], [3]])
    assert coordinate_median(y, torch.tensor([1.0, 0.0, 1.0])).aggregate.tolist() == [2.0]


def test_trimmed_mean_by_hand() -> None:
    x = _t([[1, 5], [2, 1], [3, 3], [4, 2], [100, 4]])
    result = trimmed_mean(x, f=1)
    # Column 0 keeps 2, 3, 4; column 1 keeps 2, 3, 4.
    assert result.aggregate.tolist() == [3.0, 3.0]
    # Row 0 is trimmed in both columns (1, then 5); row 1 (1) and row 4 (100) in one.
    assert result.report.scores == (1.0, 0.5, 0.0, 0.0, 0.5)
    assert result.report.extra["k"] == 1.0
    # beta = 0.39 trims floor(0.39 * 5) = 1 per side, like scipy and Flower.
    assert trimmed_mean(x, beta=0.39).aggregate.tolist() == [3.0, 3.0]
    assert trimmed_mean(x, f=0).aggregate.tolist() == pytest.approx([22.0, 3.0])


def test_weighted_trimmed_mean_by_hand() -> None:
    x = _t([[1], [2], [3], [4], [100]])
    # Kept 2 (w 3), 3 (w 1), 4 (w 1): (6 + 3 + 4) / 5; the huge weight was trimmed.
    w = torch.tensor([1.0, 3.0, 1.0, 1.0, 50.0])
    assert trimmed_mean(x, w, f=1).aggregate.item() == pytest.approx(2.6)
    # All kept weights zero: the kept values are averaged uniformly.
    w0 = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    assert trimmed_mean(x, w0, f=1).aggregate.item() == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: coordinate_median(x, f=2), r"median needs n > 2f, got n=4, f=2"),
        (lambda x: trimmed_mean(x, f=2), r"trimmed-mean needs n > 2f, got n=4, f=2"),
        (lambda x: trimmed_mean(x), r"exactly one of f or beta"),
        (lambda x: trimmed_mean(x, f=1, beta=0.1), r"exactly one of f or beta"),
        (lambda x: trimmed_mean(x, beta=0.5), r"0 <= beta < 0.5, got beta=0.5"),
        (lambda x: coordinate_median(x, torch.tensor([1.0, -1, 1, 1])), r">= 0"),
        (lambda x: coordinate_median(x, chunk_columns=0), r"chunk_columns must be >= 1"),
    ],
)
def test_coordinate_rules_reject_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(torch.zeros(4, 3))


# --- equivalence with Flower 1.41 (FedMedian uses np.median, FedTrimmedAvg trim_mean) -


@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), beta=st.floats(0.0, 0.49))
def test_median_and_trimmed_mean_match_flower(seed: int, n: int, beta: float) -> None:
    x = torch.randn(n, 7, generator=torch.Generator().manual_seed(seed))
    stacked = x.numpy()
    np.testing.assert_allclose(
        coordinate_median(x).aggregate.numpy(), np.median(stacked, axis=0), rtol=1e-6
    )
    np.testing.assert_allclose(
        trimmed_mean(x, beta=beta).aggregate.numpy(),
        trim_mean(stacked, beta),
        rtol=1e-5,
        atol=1e-6,
    )


# --- properties ---------------------------------------------------------------------

matrices = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=8),
    elements=st.floats(-1e6, 1e6, width=32),
)


@FAST
@given(x=matrices, chunk=st.integers(1, 3))
def test_chunked_columns_match_unchunked(x: np.ndarray, chunk: int) -> None:
    t = torch.from_numpy(x)
    k = (t.shape[0] - 1) // 2
    assert torch.equal(
        coordinate_median(t, chunk_columns=chunk).aggregate, coordinate_median(t).aggregate
    )
    a, b = trimmed_mean(t, f=k, chunk_columns=chunk), trimmed_mean(t, f=k)
    assert torch.equal(a.aggregate, b.aggregate)
    assert a.report.scores == b.report.scores


@FAST
@given(x=matrices, seed=st.integers(0, 2**31 - 1))
def test_coordinate_rules_are_permutation_invariant(x: np.ndarray, seed: int) -> None:
    t = torch.from_numpy(x)
    n = t.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = (n - 1) // 2
    assert torch.equal(coordinate_median(t).aggregate, coordinate_median(t[perm]).aggregate)
    assert torch.equal(trimmed_mean(t, f=k).aggregate, trimmed_mean(t[perm], f=k).aggregate)
    # Weighted, on data without ties (ties make "which weight is kept" order-dependent).
    y = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    w = torch.rand(n, generator=torch.Generator().manual_seed(seed + 1)) + 0.1
    torch.testing.assert_close(
        coordinate_median(y, w).aggregate, coordinate_median(y[perm], w[perm]).aggregate
    )
    torch.testing.assert_close(
        trimmed_mean(y, w, f=k).aggregate, trimmed_mean(y[perm], w[perm], f=k).aggregate
    )


@FAST
@given(
    honest=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 8), st.integers(1, 4)),
        elements=st.floats(-1, 1, width=32),
    ),
    data=st.data(),
)
def test_outputs_stay_in_honest_coordinate_range(honest: np.ndarray, data: st.DataObject) -> None:
    h, d = honest.shape
    f = data.draw(st.integers(0, h - 1))  # f < h, so f < n / 2 with n = h + f
    outliers = data.draw(
        hnp.arrays(
            np.float32, (f, d), elements=st.floats(allow_nan=False, allow_infinity=False, width=32)
        )
    )
    order = data.draw(st.permutations(range(h + f)))
    x = torch.from_numpy(np.concatenate([honest, outliers]))[list(order)]
    lo = torch.from_numpy(honest).min(0).values
    hi = torch.from_numpy(honest).max(0).values
    for result in (coordinate_median(x, f=f), trimmed_mean(x, f=f)):
        assert (result.aggregate >= lo).all() and (result.aggregate <= hi).all()
