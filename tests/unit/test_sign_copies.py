"""The copy check on sign disagreement (``collusion.sign_copy_ratio``, ``detect-sign-copies``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedapp.attacks.published import fang
from fedapp.config.run import RunConfig
from fedapp.robust.collusion import sign_copy_ratio
from fedapp.robust.detection import detect_anomalies
from fedapp.robust.screening_kernels import median_pass


def honest_rows(n: int, d: int, seed: int) -> torch.Tensor:
    """Updates sharing a common direction plus a larger node-specific part, with some
    coordinates exactly 0 in every row (inputs that are always 0, as digits' corner pixels)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g)
    rows = 0.5 * common + torch.randn(n, d, generator=g)
    rows[:, : d // 10] = 0.0
    return rows


def grams(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.sign(x.astype(np.float64))
    return s @ s.T, np.abs(s) @ np.abs(s).T


def test_rows_with_one_sign_pattern_score_zero_and_honest_rows_about_one() -> None:
    honest = honest_rows(14, 600, 0)
    rows = torch.cat([honest, fang(honest, 6)]).numpy()
    q = sign_copy_ratio(*grams(rows))
    assert q[14:].tolist() == [0.0] * 6
    assert q[:14].min() > 0.5  # the honest rows' nearest disagreement is typical


def test_disagreement_is_counted_where_both_rows_are_non_zero_only() -> None:
    # Rows 0 and 1 agree on every coordinate where both are non-zero; row 2 and 3 are zero
    # on most coordinates; a pair with no common support counts as no evidence (1/2).
    x = np.array([[1.0, 2.0, 0.0, -1.0], [3.0, 1.0, 5.0, -2.0], [0.0, 0.0, -1.0, 0.0],
                  [-1.0, 0.0, 0.0, 0.0]])
    a, c = grams(x)
    q = sign_copy_ratio(a, c)
    # nearest disagreement: 0 (rows 0, 1), 1 for row 2 (its only support is row 1's +5),
    # 1 for row 3 (row 0 or 1 on coordinate 0): the median is 0.5.
    assert q.tolist() == [0.0, 0.0, 2.0, 2.0]
    assert sign_copy_ratio(np.zeros((2, 2)), np.zeros((2, 2))).tolist() == [1.0, 1.0]
    assert sign_copy_ratio(np.ones((1, 1)), np.ones((1, 1))).tolist() == [1.0]


def test_half_or_more_sign_copies_give_zero_and_infinity() -> None:
    x = np.array([[1.0, 1.0], [2.0, 3.0], [1.0, 5.0], [-1.0, 1.0]])
    assert sign_copy_ratio(*grams(x)).tolist() == [0.0, 0.0, 0.0, float("inf")]


@pytest.mark.parametrize("n", [10, 21])
def test_the_blocked_pass_adds_up_the_same_sign_grams(n: int) -> None:
    x = honest_rows(n, 70_001, 1).numpy()  # several column blocks
    out = median_pass(x, signs=True)
    a, c = grams(x)
    assert out.sign_gram is not None and out.sign_support is not None
    np.testing.assert_array_equal(out.sign_gram, a)
    np.testing.assert_array_equal(out.sign_support, c)
    assert median_pass(x).sign_gram is None  # not asked: not computed


def test_detection_flags_fang_colluders_as_copies_only_when_asked() -> None:
    honest = honest_rows(14, 600, 2)
    rows = torch.cat([honest, fang(honest, 6)])
    off = detect_anomalies(rows, cluster_threshold=0.1)
    on = detect_anomalies(rows, cluster_threshold=0.1, sign_copies=True)
    assert not any("copy" in off.checks.get(i, ()) for i in range(14, 20))
    assert all("copy" in on.checks[i] for i in range(14, 20))
    assert not any("copy" in on.checks.get(i, ()) for i in range(14))


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_honest_rows_alone_raise_no_sign_copy_flag(seed: int) -> None:
    report = detect_anomalies(honest_rows(20, 500, seed), sign_copies=True)
    assert not any("copy" in checks for checks in report.checks.values())


def test_the_run_config_key_reaches_the_screen() -> None:
    from fedapp.server.build import build_strategy

    base = RunConfig().to_flower()
    robust, _ = build_strategy(RunConfig.from_flower(base))
    assert robust.screen_updates.sign_copies is True  # the default
    robust, _ = build_strategy(RunConfig.from_flower({**base, "detect-sign-copies": False}))
    assert robust.screen_updates.sign_copies is False


def test_a_scaled_copy_of_an_honest_update_flags_both_as_an_exact_copy_would() -> None:
    # Which of two rows with one sign pattern is the original cannot be told from the
    # rows: both are flagged, as the distance check flags both rows of an exact copy.
    honest = honest_rows(10, 300, 6)
    rows = torch.cat([honest, 1000.0 * honest[:1]])
    report = detect_anomalies(rows, sign_copies=True)
    assert "copy" in report.checks[0] and "copy" in report.checks[10]
    assert not any("copy" in report.checks.get(i, ()) for i in range(1, 10))


def test_fang_with_sign_noise_escapes_the_sign_copy_check_by_design() -> None:
    from fedapp.attacks.evasive import fang_sign_noise, typical_sign_disagreement

    honest = honest_rows(14, 2000, 7)
    rows = fang_sign_noise(honest, 6)  # share 0.3: three times the check's threshold
    q = sign_copy_ratio(*grams(torch.cat([honest, rows]).numpy()))
    assert q[14:].min() > 0.1
    # ... while nearly every coordinate keeps Fang's sign: the attack is Fang's.
    same = (torch.sign(rows) == torch.sign(fang(honest, 6))).double().mean()
    expected = 0.5 * (1 - (1 - 2 * 0.3 * typical_sign_disagreement(honest)) ** 0.5)
    assert 1 - float(same) == pytest.approx(expected, abs=0.01)
    assert torch.equal(fang_sign_noise(honest, 6, share=0.0), fang(honest, 6))
    with pytest.raises(ValueError, match="share must be finite and >= 0"):
        fang_sign_noise(honest, 6, share=-0.5)


def test_large_models_count_signs_on_every_strided_column(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    import fedapp.robust.screening_kernels as kernels

    monkeypatch.setattr(kernels, "SIGN_COLUMNS", 1000)
    x = honest_rows(12, 70_001, 8).numpy()  # several column blocks, stride 71
    assert kernels.sign_stride(70_001) == 71 and kernels.sign_stride(999) == 1
    out = median_pass(x, signs=True)
    a, c = grams(x[:, ::71])
    np.testing.assert_array_equal(out.sign_gram, a)
    np.testing.assert_array_equal(out.sign_support, c)
