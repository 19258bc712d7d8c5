"""Exclusion's minimum share: a lone flagged row among many is kept, a group is dropped."""

from __future__ import annotations

import pytest
import torch

from fedapp.config import RunConfig
from fedapp.server.build import build_strategy
from fedapp.server.screen import Screen, exclusion_limit, tolerated


@pytest.mark.parametrize(("flagged", "n", "share", "kept"), [
    (1, 40, 0.06, True), (2, 40, 0.06, True), (3, 40, 0.06, False),
    (1, 20, 0.06, True), (2, 20, 0.06, False), (1, 17, 0.06, True),
    (1, 16, 0.06, False), (1, 10, 0.06, False), (0, 40, 0.06, False),
    (1, 40, 0.0, False),
])
def test_tolerated(flagged: int, n: int, share: float, kept: bool) -> None:
    assert tolerated(flagged, n, share) is kept


def rows_against(n: int, bad: int) -> torch.Tensor:
    """``n`` updates around one direction, the first ``bad`` of them sign-flipped."""
    gen = torch.Generator().manual_seed(0)
    x = torch.ones(200) + 0.5 * torch.randn(n, 200, generator=gen)
    x[:bad] *= -1.0
    return x


def plan(x: torch.Tensor, share: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
    screen = Screen("exclude", min_keep=2, cosine_spread=3.0, min_share=share)
    p = screen.plan(list(range(len(x))), x, limit=exclusion_limit(len(x)))
    return p.report.excludable, p.dropped


def test_a_lone_flagged_row_among_many_is_kept_and_still_reported() -> None:
    excludable, dropped = plan(rows_against(40, 1), 0.06)
    assert excludable == (0,) and dropped == ()
    excludable, dropped = plan(rows_against(40, 1), 0.0)  # 0: every flagged row goes
    assert excludable == (0,) and dropped == (0,)


def test_a_group_of_flagged_rows_is_dropped() -> None:
    excludable, dropped = plan(rows_against(40, 3), 0.06)
    assert excludable == dropped == (0, 1, 2)


def test_small_rounds_drop_a_lone_flagged_row() -> None:
    excludable, dropped = plan(rows_against(10, 1), 0.06)
    assert excludable == dropped == (0,)


def test_the_run_config_sets_the_share() -> None:
    assert RunConfig().exclusion_min_share == 0.06
    robust, _ = build_strategy(RunConfig(anomaly_detection="exclude", exclusion_min_share=0.1))
    assert robust.screen_updates.min_share == 0.1


def test_a_share_of_half_or_more_is_refused() -> None:
    with pytest.raises(ValueError, match=r"min_share must be in \[0, 0.5\)"):
        Screen("exclude", min_share=0.5)
