"""The blocked screening kernels compute what the previous detection computed.

``tests/reference_detection.py`` is detection as it was; every report here is compared
with it. Integer-valued inputs make every sum exact in float32 and float64, so there the
reports must be equal field for field, but for the cosines: within 1e-12 (``||r||`` is
``sqrt`` of an exact sum here, ``torch.linalg.vector_norm`` there, which can differ in
the last bit). On Gaussian inputs the rows flagged, the checks and the reasons must be
equal, and the scores equal up to float rounding:

* norm z-scores within 1e-6 x max(1, |z|) (both use float64 norms),
* cosines within 1e-6 of the reference run on the same rows in float64, and within 1e-4
  of the reference itself (its dots are one float32 matrix-vector product over all ``d``
  columns: 3e-5 off for a row and itself at ``d = 6e5``; ours add block products in
  float64),
* sign skews exactly (counts),
* reasons exactly, to those of the reference run in float64 on the Gaussian inputs (they
  print the scores, and a copy's ratio printed 0.001 instead of 0.000 with the float32
  reference's distances),
* nearest-neighbour ratios within 1e-4 x max(1, q) of the reference run on the same rows
  in float64, and within 2e-2 x max(1, q) of the reference itself (its distances come from
  a mean-centered float32 Gram matrix: 1% off float64 with a 1000x row; ours are centered
  on the median).

One deliberate difference: with a row 1e4 times the others' norm (float32, more than
``BLOCK_ELEMENTS`` entries), the reference's mean-centered float32 Gram matrix loses the
distances between the other rows and flags them as copies; the new one (centered on the
median) agrees with the reference run on the same rows in float64.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedapp.attacks.omniscient import alie, min_max
from fedapp.robust import column_order as order
from fedapp.robust import screening_kernels as kernels
from fedapp.robust.detection import DetectionReport, detect_anomalies, sign_skew
from fedapp.robust.distances import BLOCK_ELEMENTS
from tests import reference_detection as ref


def assert_same_report(new: DetectionReport, old: DetectionReport, exact: bool = False,
                       old64: DetectionReport | None = None) -> None:
    """Equal flags, checks, reasons and sign skews; the other scores within the module
    docstring's tolerances (``exact``: equal, the cosines within 1e-12). ``old64``: the
    reference's report on the rows in float64, for the reasons (their numbers show the
    reference's float32 rounding, e.g. a copy 0.001 away), the cosines and the ratios."""
    assert new.flagged == old.flagged
    assert new.checks == old.checks
    assert new.reasons == (old if old64 is None else old64).reasons
    assert new.sign_skew == old.sign_skew
    if exact:
        assert (new.norm_z, new.nearest_ratio) == (old.norm_z, old.nearest_ratio)
        np.testing.assert_allclose(new.cosine, old.cosine, rtol=0, atol=1e-12)
        assert new == DetectionReport(**{**vars(old), "cosine": new.cosine})
        return
    np.testing.assert_allclose(new.norm_z, old.norm_z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new.cosine, old.cosine, rtol=0, atol=1e-4)
    np.testing.assert_allclose(new.nearest_ratio, old.nearest_ratio, rtol=2e-2, atol=2e-2)
    if old64 is not None:
        np.testing.assert_allclose(new.cosine, old64.cosine, rtol=0, atol=1e-6)
        np.testing.assert_allclose(new.nearest_ratio, old64.nearest_ratio, rtol=1e-4,
                                   atol=1e-4)


def int_matrix(draw: st.DrawFn, max_n: int = 12, max_d: int = 40) -> torch.Tensor:
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    values = draw(st.lists(st.integers(-4, 4), min_size=n * d, max_size=n * d))
    return torch.tensor(values, dtype=torch.float32).reshape(n, d)


@st.composite
def attacked_int_matrix(draw: st.DrawFn) -> torch.Tensor:
    """Small integers (many ties) with some rows scaled, flipped, shifted or copied."""
    x = int_matrix(draw)
    for i in range(x.shape[0]):
        kind = draw(st.sampled_from(["keep", "keep", "scale", "flip", "shift", "copy", "zero"]))
        if kind == "scale":
            x[i] *= 64
        elif kind == "flip":
            x[i] *= -1
        elif kind == "shift":
            x[i] -= 3
        elif kind == "copy" and i > 0:
            x[i] = x[draw(st.integers(0, i - 1))]
        elif kind == "zero":
            x[i] = 0
    return x


@given(attacked_int_matrix(), st.sampled_from([0.5, 0.0]), st.sampled_from([0.1, 0.0]))
def test_integer_inputs_give_the_identical_report(x: torch.Tensor, sign: float,
                                                  dup: float) -> None:
    kwargs = {"sign_threshold": sign, "duplicate_threshold": dup}
    assert_same_report(detect_anomalies(x, **kwargs), ref.detect_anomalies(x, **kwargs),
                       exact=True)


def gaussian(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(d, generator=gen) + torch.randn(n, d, generator=gen)


def variants(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The adversarial inputs of the issue, built from honest rows ``x``."""
    n = x.shape[0]
    scaled, flipped, copies, zeros = x.clone(), x.clone(), x.clone(), x.clone()
    scaled[0] *= 1e3  # huge norm (1e4 breaks the reference: see the test below)
    scaled[1] *= 30
    flipped[: max(1, n // 5)] *= -1
    copies[1:4] = copies[0]
    zeros[: n // 2] = 0
    honest = x[: n - n // 4]
    return {
        "honest": x, "huge and large": scaled, "sign-flipped": flipped, "copies": copies,
        "half zero": zeros, "all equal": x[:1].repeat(n, 1),
        "alie (sign suspects)": torch.cat([honest, alie(honest, n // 4, z=0.5)]),
        "min-max (copies)": torch.cat([honest, min_max(honest, n // 4)]),
        "scaled and alie": torch.cat([30 * honest[:1], honest[1:], alie(honest, 2, z=0.5)]),
    }


@pytest.mark.parametrize(("n", "d"), [(9, 50), (20, 400), (10, 3 * BLOCK_ELEMENTS // 10 + 7),
                                      (21, 2 * BLOCK_ELEMENTS // 21 + 3)])
@pytest.mark.parametrize("seed", [0, 1])
def test_gaussian_and_adversarial_inputs_give_the_same_report(n: int, d: int,
                                                              seed: int) -> None:
    for name, x in variants(gaussian(n, d, seed)).items():
        before = x.clone()
        new, old = detect_anomalies(x), ref.detect_anomalies(x)
        assert torch.equal(x, before), name
        try:
            assert_same_report(new, old, old64=ref.detect_anomalies(x.to(torch.float64)))
        except AssertionError as exc:
            raise AssertionError(f"{name} (n={n}, d={d}, seed={seed}): {exc}") from exc


@pytest.mark.parametrize("n", [1, 2, 3])
def test_one_to_three_rows(n: int) -> None:
    for x in (gaussian(n, 30, 3), torch.zeros(n, 30), torch.arange(n * 30.0).reshape(n, 30)):
        assert_same_report(detect_anomalies(x), ref.detect_anomalies(x))
    x = torch.arange(n * 30.0).reshape(n, 30) - 40
    assert_same_report(detect_anomalies(x), ref.detect_anomalies(x), exact=True)


def test_an_explicit_reference_and_float64_input() -> None:
    x = gaussian(12, 300, 4)
    r = -x.mean(0).to(torch.float64)
    assert_same_report(detect_anomalies(x, reference=r), ref.detect_anomalies(x, reference=r))
    x64 = x.to(torch.float64)
    assert_same_report(detect_anomalies(x64), ref.detect_anomalies(x64))
    assert sign_skew(x, r).tolist() == ref.sign_skew(x, r).tolist()


def test_every_branch_of_the_reference_choice_is_taken(monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    """No suspects; suspects only from the norm and copy checks (one sort gives both
    medians); new suspects from the sign check (a third pass); too many suspects (the
    median of all rows)."""
    calls: list[str] = []
    for name in ("median_pass", "clean_median_dots"):
        real = getattr(kernels, name)
        monkeypatch.setattr(f"fedapp.robust.detection.{name}",
                            lambda *a, _r=real, _n=name, **k: calls.append(_n) or _r(*a, **k))
    x = gaussian(12, 500, 5)
    cases = {"clean": x, "norm": variants(x)["huge and large"],
             "sign": variants(x)["alie (sign suspects)"], "copy": variants(x)["copies"],
             "most": x.clone()}
    cases["most"][5:] = x[5]  # 7 copies of 12: the reference is the median of all rows
    for name, m in cases.items():
        calls.clear()
        assert_same_report(detect_anomalies(m), ref.detect_anomalies(m))
        assert calls.count("clean_median_dots") == (name in ("sign", "copy")), name


def test_a_huge_row_no_longer_makes_the_others_look_like_copies() -> None:
    x = gaussian(10, 3 * BLOCK_ELEMENTS // 10 + 7, 0)
    x[0] *= 1e4
    # The float32 reference lost the others' distances to rounding on some CPUs (they
    # looked like copies); whether it does depends on the CPU's summation order, the
    # blocked kernels must not: only the huge row, as the float64 reference says.
    new = detect_anomalies(x)
    assert new.flagged == (0,) and new.checks[0] == ("norm",)
    assert_same_report(new, ref.detect_anomalies(x.to(torch.float64)))


@st.composite
def sorted_pair(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    c = draw(st.integers(1, 5))
    s, m = draw(st.integers(0, 6)), draw(st.integers(1, 9))
    values = draw(st.lists(st.integers(-3, 3), min_size=(s + m) * c, max_size=(s + m) * c))
    both = np.array(values, dtype=np.float32).reshape(s + m, c)
    return np.sort(both[:s], axis=0), np.sort(both[s:], axis=0)


@given(sorted_pair())
def test_union_rank_is_the_rank_of_the_merged_columns(pair: tuple[np.ndarray, np.ndarray]
                                                      ) -> None:
    low, high = pair
    merged = np.sort(np.concatenate([low, high]), axis=0)
    for r in range(len(merged)):
        np.testing.assert_array_equal(order.union_rank(low, high, r), merged[r])
        first = max(0, r - len(low))  # the window of high's ranks that rank r can need
        window = high[first: r + 1]
        np.testing.assert_array_equal(order.union_rank(low, window, r, first, len(high)),
                                      merged[r])


@pytest.mark.parametrize("s", range(1, order.NETWORK_ROWS + 3))
def test_sort_columns_sorts_every_column(s: int) -> None:
    rows = np.random.default_rng(s).integers(-2, 3, size=(s, 50)).astype(np.float32)
    expected = np.sort(rows, axis=0)
    order.sort_columns(rows)
    np.testing.assert_array_equal(rows, expected)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6, 7, 10, 19, 20, 41])
def test_medians_by_selection_and_by_merging_equal_numpys(n: int) -> None:
    """Every suspect count (extremes after a selection for few, a sort for many), with
    suspects anywhere among the rows."""
    rng = np.random.default_rng(n)
    x = rng.integers(-3, 4, size=(n, 64)).astype(np.float32)
    x[: n // 3] *= 5  # suspects far out on both sides
    scratch = order.Scratch(x.size)
    np.testing.assert_array_equal(order.select_median(x, scratch), np.median(x, axis=0))
    for s in range(1, n // 2 + 1):
        suspects = sorted(rng.choice(n, size=s, replace=False).tolist())
        clean = [i for i in range(n) if i not in suspects]
        both, med = order.merged_medians(x, clean, suspects, scratch)
        np.testing.assert_array_equal(both, np.median(x, axis=0))
        np.testing.assert_array_equal(med, np.median(x[clean], axis=0))


@given(st.integers(1, 12), st.integers(0, 4), st.booleans(), st.integers(0, 10**6))
def test_extremes_are_the_sorted_ends_of_each_column(rows: int, t: int, largest: bool,
                                                      seed: int) -> None:
    t = min(t, rows)
    x = np.random.default_rng(seed).integers(-3, 4, size=(rows, 9)).astype(np.float32)
    ordered = np.sort(x, axis=0)
    expected = ordered[rows - t:] if largest else ordered[:t]
    np.testing.assert_array_equal(order.extremes(x, t, largest), expected)


def test_blocks_cover_the_columns_and_stay_small() -> None:
    for n, d in [(1, 1), (3, 10), (20, 10**6), (100, 10**5), (7, 12_345_678)]:
        blocks = kernels.column_blocks(n, d)
        assert blocks[0].start == 0 and blocks[-1].stop >= d
        assert all(a.stop == b.start for a, b in itertools.pairwise(blocks))
        width = blocks[0].stop - blocks[0].start
        assert n * width <= max(kernels.KERNEL_BLOCK_ELEMENTS, n)
        if n * d >= 16 * kernels.MIN_BLOCK_ELEMENTS:
            assert n * width <= n * d / 16 + n


@pytest.mark.parametrize("outlier", [1.0, 1e6])
def test_distances_stay_accurate_with_a_common_offset_or_a_huge_row(outlier: float) -> None:
    n, d = 8, 2 * BLOCK_ELEMENTS // 8 + 5  # the centered float32 path, several blocks
    gen = torch.Generator().manual_seed(9)
    x = 1000.0 + 0.01 * torch.randn(n, d, generator=gen)
    x[0] *= outlier
    dist = kernels.sq_distances(kernels.median_pass(x.numpy()).gram)
    x64 = x.to(torch.float64)
    exact = torch.stack([((x64 - row) ** 2).sum(1) for row in x64])  # differences, float64
    np.testing.assert_allclose(dist, exact.numpy(), rtol=1e-5)
    np.testing.assert_allclose(kernels.squared_norms(x.numpy()), (x64 * x64).sum(1).numpy(),
                               rtol=1e-12)
