"""Krum / Multi-Krum and the Gram-matrix distances they use."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.multikrum import compute_distances, select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedapp.robust.distances import pairwise_sq_distances
from fedapp.robust.krum import krum, krum_scores, multi_krum

FAST = settings(max_examples=25, deadline=None)


def _line(*values: float) -> torch.Tensor:
    return torch.tensor([[v] for v in values], dtype=torch.float32)


def _random(seed: int, n: int, d: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


# --- hand-computed cases ------------------------------------------------------------


def test_krum_scores_by_hand() -> None:
    # n=5, f=1: each row sums its n-f-2 = 2 nearest squared distances.
    x = _line(0, 1, 2, 3, 100)
    scores = krum_scores(x, f=1)
    assert scores.tolist() == [1 + 4, 1 + 1, 1 + 1, 1 + 4, 97**2 + 98**2]


def test_krum_selects_lowest_score_lowest_index_on_tie() -> None:
    result = krum(_line(0, 1, 2, 3, 100), f=1)
    assert result.aggregate.tolist() == [1.0]
    assert result.report.selected == (1,)
    assert result.report.trimmed == (0, 2, 3, 4)
    assert result.report.scores == (5.0, 2.0, 2.0, 5.0, 19013.0)


def test_krum_2d_by_hand() -> None:
    # n=6, f=1 -> 3 neighbours. Honest cluster around the origin, one far row.
    x = torch.tensor([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5], [50, 50]], dtype=torch.float32)
    # Row 4 (the centre) is at squared distance 0.5 from the four corners: score 1.5.
    scores = krum_scores(x, f=1)
    assert scores[4].item() == pytest.approx(1.5)
    assert krum(x, f=1).aggregate.tolist() == [0.5, 0.5]


def test_multikrum_averages_m_best() -> None:
    x = _line(0, 1, 2, 3, 100)
    two = multi_krum(x, f=1, m=2)
    assert two.report.selected == (1, 2)
    assert two.aggregate.tolist() == [1.5]
    default = multi_krum(x, f=1)  # m = n - f = 4
    assert default.report.selected == (0, 1, 2, 3)
    assert default.report.trimmed == (4,)
    assert default.aggregate.tolist() == [1.5]


def test_multikrum_weights_only_weigh_the_selected_rows() -> None:
    x = _line(0, 1, 2, 3, 100)
    w = torch.tensor([1.0, 1.0, 1.0, 3.0, 1e6])
    # Row 4 is not selected whatever it reports; (0 + 1 + 2 + 9) / 6 = 2.
    assert multi_krum(x, w, f=1).aggregate.item() == pytest.approx(2.0)
    # Krum's selection ignores weights.
    assert krum(x, w, f=1).report.selected == (1,)


def test_multikrum_with_m_1_is_krum() -> None:
    x = _random(0, 9, 4)
    assert torch.equal(multi_krum(x, f=2, m=1).aggregate, krum(x, f=2).aggregate)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: krum(x, f=2), r"krum needs n > 2f \+ 2, got n=5, f=2"),
        (lambda x: multi_krum(x, f=2), r"multikrum needs n > 2f \+ 2, got n=5, f=2"),
        (lambda x: krum(x, f=-1), r"f must be a non-negative int"),
        (lambda x: multi_krum(x, f=1, m=0), r"1 <= m <= n, got m=0, n=5"),
        (lambda x: multi_krum(x, f=1, m=6), r"1 <= m <= n, got m=6, n=5"),
        (lambda x: krum(x[0], f=0), r"2-D"),
    ],
)
def test_krum_rejects_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(_random(1, 5, 3))


# --- distances ----------------------------------------------------------------------


def test_pairwise_distances_by_hand() -> None:
    x = torch.tensor([[0, 0], [3, 4], [6, 8]], dtype=torch.float32)
    expected = [[0, 25, 100], [25, 0, 25], [100, 25, 0]]
    assert pairwise_sq_distances(x).tolist() == expected
    assert pairwise_sq_distances(x, block_rows=1).tolist() == expected


@FAST
@given(
    x=hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9),
        elements=st.floats(-1e3, 1e3, width=32),
    ),
    block_rows=st.integers(1, 4),
)
def test_chunked_and_unchunked_distances_agree(x: np.ndarray, block_rows: int) -> None:
    t = torch.from_numpy(x)
    full = pairwise_sq_distances(t)
    chunked = pairwise_sq_distances(t, block_rows=block_rows)
    x64 = t.double()
    direct = ((x64[:, None, :] - x64[None, :, :]) ** 2).sum(-1)
    scale = 1.0 + float((x64**2).sum(1).max())
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(full, direct, rtol=0, atol=1e-12 * scale)
    assert (full >= 0).all() and (full.diagonal() == 0).all()


# --- equivalence with Flower 1.41 ---------------------------------------------------


def _flower_contents(x: torch.Tensor, counts: list[int]) -> list[RecordDict]:
    """One RecordDict per row, the row split into two arrays as a model would be."""
    contents = []
    for row, count in zip(x.numpy(), counts, strict=True):
        arrays = ArrayRecord([row[:2].copy(), row[2:].copy()])
        contents.append(
            RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": count})})
        )
    return contents


@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(4, 10), data=st.data())
def test_multikrum_matches_flower(seed: int, n: int, data: st.DataObject) -> None:
    # n - f - 2 >= 2 neighbours: with a single neighbour, two mutually nearest rows
    # always tie, and tie-breaking is not part of the rule.
    f = data.draw(st.integers(0, (n - 4) // 2))
    m = data.draw(st.integers(1, n))
    x = _random(seed, n, 5)
    counts = torch.randint(1, 100, (n,), generator=torch.Generator().manual_seed(seed))
    contents = _flower_contents(x, counts.tolist())

    flower_d = compute_distances([c["arrays"] for c in contents])
    np.testing.assert_allclose(pairwise_sq_distances(x).numpy(), flower_d, rtol=1e-4, atol=1e-4)

    chosen = select_multikrum(contents, num_malicious_nodes=f, num_nodes_to_select=m)
    flower_idx = sorted(next(i for i, c in enumerate(contents) if c is s) for s in chosen)
    ours = multi_krum(x, counts.float(), f=f, m=m)
    assert list(ours.report.selected) == flower_idx

    flower_agg = aggregate_arrayrecords(chosen, "num-examples")
    flat = np.concatenate([a.numpy().ravel() for a in flower_agg.values()])
    np.testing.assert_allclose(ours.aggregate.numpy(), flat, rtol=1e-5, atol=1e-6)


# --- properties ---------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(4, 10), data=st.data())
def test_krum_is_permutation_invariant(seed: int, n: int, data: st.DataObject) -> None:
    f = data.draw(st.integers(0, (n - 4) // 2))  # >= 2 neighbours: no forced ties
    x = _random(seed, n, 4)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 1))
    a, b = multi_krum(x, f=f), multi_krum(x[perm], f=f)
    assert {int(perm[i]) for i in b.report.selected} == set(a.report.selected)
    torch.testing.assert_close(a.aggregate, b.aggregate)
    assert torch.equal(krum(x, f=f).aggregate, krum(x[perm], f=f).aggregate)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(3, 11),
    magnitude=st.floats(1e3, 1e6),
    data=st.data(),
)
def test_krum_selects_only_honest_rows_against_far_outliers(
    seed: int, n: int, magnitude: float, data: st.DataObject
) -> None:
    f = data.draw(st.integers(0, (n - 3) // 2))
    gen = torch.Generator().manual_seed(seed)
    d = 3
    honest = torch.rand(n - f, d, generator=gen) * 2 - 1  # in [-1, 1]^d
    signs = torch.randint(0, 2, (f, d), generator=gen) * 2 - 1
    outliers = signs * magnitude * (1 + torch.rand(f, d, generator=gen))
    positions = torch.randperm(n, generator=gen)
    x = torch.empty(n, d)
    x[positions[: n - f]] = honest
    x[positions[n - f :]] = outliers
    honest_rows = set(positions[: n - f].tolist())

    assert set(krum(x, f=f).report.selected) <= honest_rows
    result = multi_krum(x, f=f)  # m = n - f: exactly the honest rows
    assert set(result.report.selected) == honest_rows
    assert (result.aggregate >= honest.min(0).values - 1e-6).all()
    assert (result.aggregate <= honest.max(0).values + 1e-6).all()


def test_large_inputs_get_centered_float32_distances_as_accurate_as_float64() -> None:
    # More elements than one block: the fast path (centered, float32 per block). A large
    # component shared by every row is what ruins an uncentered float32 Gram.
    from fedapp.robust.distances import BLOCK_ELEMENTS, pairwise_sq_distances

    gen = torch.Generator().manual_seed(0)
    n = 12
    d = 2 * (BLOCK_ELEMENTS // n) + 7
    x = torch.randn(d, generator=gen) * 100 + torch.randn(n, d, generator=gen) * 0.01
    fast = pairwise_sq_distances(x)
    exact = pairwise_sq_distances(x, block_rows=n)  # float64 reference path
    off_diagonal = ~torch.eye(n, dtype=torch.bool)
    assert torch.allclose(fast[off_diagonal], exact[off_diagonal], rtol=1e-4)
    gram32 = x @ x.T  # what an uncentered float32 Gram would give
    sq = gram32.diagonal()
    naive = (sq[:, None] + sq[None, :] - 2 * gram32).to(torch.float64)
    assert not torch.allclose(naive[off_diagonal], exact[off_diagonal], rtol=1e-2)
