"""Weights from self-reported example counts."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedapp.robust.weights import (
    DEFAULT_CAP,
    capped_weights,
    count_outliers,
    inflated_counts,
    node_weights,
    uniform_weights,
)


def test_capped_weights_by_hand() -> None:
    # 1e9 is an outlier (log z >> 3.5): it weighs as the lower median of the others, 20.
    assert count_outliers([10, 20, 30, 1e9]) == ((3,), 20.0)
    assert capped_weights([10, 20, 30, 1e9]).tolist() == [10.0, 20.0, 30.0, 20.0]
    assert capped_weights([10, 20, 30, 1e9], cap=1.0).tolist() == [10.0, 20.0, 20.0, 20.0]
    # 45 is no outlier: it is capped at 2 x the lower median (20).
    assert capped_weights([10, 20, 30, 45]).tolist() == [10.0, 20.0, 30.0, 40.0]
    assert DEFAULT_CAP == 2.0


def test_a_count_a_little_off_many_equal_ones_is_no_outlier() -> None:
    # MAD 0 -> the MeanAD scale is tiny and 101's z-score huge, but 101 < 2 x 100.
    assert count_outliers([100] * 19 + [101]) == ((), 100.0)
    assert capped_weights([100] * 19 + [101]).tolist()[-1] == 101.0


def test_thirty_percent_liars_hold_no_more_than_their_share() -> None:
    honest = [50.0 + 10 * i for i in range(14)]  # 50 .. 180, median 110 (lower)
    w = capped_weights(honest + [1e6] * 6)
    assert w[14:].tolist() == [110.0] * 6  # each liar weighs as the honest median
    assert w[:14].tolist() == honest  # honest counts are all under 2 x 110
    assert float(w[14:].sum() / w.sum()) < 0.30
    assert [i for i, _ in inflated_counts(honest + [1e6] * 6)] == list(range(14, 20))


@pytest.mark.parametrize("lie", [1e6, 1e3, 400.0, 250.0, 181.0])
def test_a_liar_minority_cannot_lift_the_cap_beyond_the_honest_counts(lie: float) -> None:
    """Whatever 6 of 20 report, no weight exceeds cap x the honest 71st percentile (the
    ``1 / (2 (1 - f))`` quantile): the liars shift the reference by at most 6 ranks."""
    honest = [50.0 + 10 * i for i in range(14)]
    w = capped_weights(honest + [lie] * 6)
    bound = DEFAULT_CAP * sorted(honest)[9]  # the 10th of 14: 20 - 9 - 6 = 5th largest
    assert float(w.max()) <= bound
    assert (w[14:] <= min(lie, bound)).all()


def test_modes() -> None:
    assert node_weights([5, 1e9, 7], mode="uniform").tolist() == [1.0, 1.0, 1.0]
    assert node_weights([5, 1e9, 7]).tolist() == [5.0, 5.0, 7.0]  # 1e9: an outlier
    assert uniform_weights(2).dtype == torch.float64


@settings(max_examples=50, deadline=None)
@given(
    counts=st.lists(st.floats(1.0, 1e12), min_size=1, max_size=20),
    cap=st.floats(1.0, 10.0),
)
def test_no_weight_exceeds_cap_times_the_reference(counts: list[float], cap: float) -> None:
    w = capped_weights(counts, cap)
    c = torch.tensor(counts, dtype=torch.float64)
    outliers, ref = count_outliers(counts, cap)
    assert float(w.max()) <= cap * ref * (1 + 1e-12)
    assert all(float(w[i]) <= ref for i in outliers)
    assert (w <= c).all()
    # Counts at or below the reference are untouched.
    assert torch.equal(w[c <= ref], c[c <= ref])


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
