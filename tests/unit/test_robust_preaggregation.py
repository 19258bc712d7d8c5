"""Pre-aggregation steps: norm clipping, bucketing, nearest-neighbour mixing."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedapp.robust.coordinate import coordinate_median
from fedapp.robust.preaggregation import bucketing, clip_norm, nearest_neighbor_mixing

FAST = settings(max_examples=25, deadline=None)


def test_clip_norm_by_hand() -> None:
    x = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    expected = torch.tensor([[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    torch.testing.assert_close(clip_norm(x, 1.0), expected)


@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8), threshold=st.floats(1e-3, 10.0))
def test_clip_norm_bounds_norms_and_keeps_directions(seed: int, n: int, threshold: float) -> None:
    x = torch.randn(n, 5, generator=torch.Generator().manual_seed(seed)) * 5
    y = clip_norm(x, threshold)
    norms = torch.linalg.vector_norm(y, dim=1)
    assert (norms <= threshold * (1 + 1e-5)).all()
    cos = torch.nn.functional.cosine_similarity(x, y, dim=1)
    torch.testing.assert_close(cos, torch.ones(n))


def test_bucketing_means_of_a_seeded_partition() -> None:
    n, s, seed = 5, 2, 7
    y = bucketing(torch.eye(n), bucket_size=s, seed=seed)
    assert y.shape == (3, n)
    # Row b of the output is the mean of the rows in bucket b of the seeded permutation.
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for b in range(3):
        members = perm[b * s : (b + 1) * s]
        expected = torch.zeros(n)
        expected[members] = 1.0 / len(members)
        assert y[b].tolist() == pytest.approx(expected.tolist())
    assert torch.equal(y, bucketing(torch.eye(n), bucket_size=s, seed=seed))
    others = [bucketing(torch.eye(n), bucket_size=s, seed=k) for k in range(8, 12)]
    assert any(not torch.equal(y, other) for other in others)


@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 12), s=st.integers(1, 5))
def test_bucketing_keeps_the_total(seed: int, n: int, s: int) -> None:
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    y = bucketing(x, bucket_size=s, seed=seed)
    assert y.shape == (-(-n // s), 3)
    sizes = torch.full((y.shape[0],), float(s))
    sizes[-1] = n - s * (y.shape[0] - 1)
    torch.testing.assert_close(sizes @ y, x.sum(0), rtol=1e-5, atol=1e-5)


def test_nearest_neighbor_mixing_by_hand() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0]])
    # n - f = 3 nearest, self included: {0,1,2} for the first three rows, {10,2,1} for the last.
    y = nearest_neighbor_mixing(x, f=1)
    assert y.flatten().tolist() == pytest.approx([1.0, 1.0, 1.0, 13 / 3])
    # f = 0 mixes every row with all rows: the mean.
    assert nearest_neighbor_mixing(x, f=0).flatten().tolist() == pytest.approx([3.25] * 4)


def test_nearest_neighbor_mixing_includes_the_row_itself_on_duplicates() -> None:
    x = torch.tensor([[0.0], [0.0], [0.0], [5.0]])
    # Row 3's two nearest (n - f = 2) are itself and one zero row.
    assert nearest_neighbor_mixing(x, f=2)[3].item() == pytest.approx(2.5)


def test_steps_compose_with_a_rule() -> None:
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [1e6]])
    y = nearest_neighbor_mixing(clip_norm(x, 10.0), f=1)
    assert 0.0 <= coordinate_median(y, f=1).aggregate.item() <= 3.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: clip_norm(x, 0.0), r"threshold > 0"),
        (lambda x: bucketing(x, bucket_size=0, seed=0), r"bucket_size >= 1"),
        (lambda x: nearest_neighbor_mixing(x, f=4), r"0 <= f < n, got n=4, f=4"),
        (lambda x: nearest_neighbor_mixing(x, f=-1), r"0 <= f < n"),
    ],
)
def test_steps_reject_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(torch.zeros(4, 2))
