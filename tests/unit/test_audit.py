"""fedapp.privacy.audit: membership inference is at chance on unseen data, finds overfitting."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedapp import task
from fedapp.data.builtin import load_raw
from fedapp.data.specs import DATASET_SPECS, Split, preprocess
from fedapp.privacy.audit import main
from fedapp.privacy.membership_inference import (
    AttackResult,
    Recipe,
    balanced_masks,
    logit_confidence,
    run_audit,
)

SPEC = DATASET_SPECS["digits"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shuffled_digits() -> Split:
    x, y, _ = load_raw("digits")
    order = np.random.default_rng(0).permutation(len(y))
    return Split(preprocess("digits", x[order]), y[order])


def rows(data: Split, start: int, stop: int) -> Split:
    return Split(data.x[start:stop], data.y[start:stop])


def trained(recipe: Recipe, data: Split, seed: int = 1) -> torch.nn.Module:
    task.set_seed(seed)
    model = recipe.build(SPEC)
    recipe.fit(model, data, seed)
    return model


def test_attacks_are_at_chance_on_a_model_that_never_saw_the_members(
        shuffled_digits: Split) -> None:
    recipe = Recipe("mlp", 64, 20, 32, 0.05)
    model = trained(recipe, rows(shuffled_digits, 0, 300))
    members, nonmembers = rows(shuffled_digits, 300, 500), rows(shuffled_digits, 500, 700)
    results = run_audit(model, members, nonmembers, recipe, SPEC, shadow_models=4)
    assert [r.name for r in results] == ["loss", "lira-online", "lira-offline"]
    for r in results:
        assert np.std(r.scores) > 0, r.name
        assert 0.4 <= r.auc <= 0.6, (r.name, r.auc)


def test_attacks_find_the_members_of_an_overfit_model(shuffled_digits: Split) -> None:
    recipe = Recipe("mlp", 256, 60, 32, 0.1)
    members, nonmembers = rows(shuffled_digits, 0, 60), rows(shuffled_digits, 60, 120)
    model = trained(recipe, members)
    assert task.evaluate(model, members)[1] == 1.0  # memorised
    results = {r.name: r for r in run_audit(model, members, nonmembers, recipe, SPEC, 4)}
    assert results["loss"].auc > 0.65
    assert results["lira-online"].auc > 0.65
    assert results["lira-offline"].auc > 0.65


def test_roc_summary_on_known_scores() -> None:
    is_member = np.r_[np.ones(50, bool), np.zeros(1000, bool)]
    perfect = AttackResult("perfect", is_member.astype(float), is_member)
    assert perfect.summary() == {"auc": 1.0, "tpr@1%fpr": 1.0, "tpr@0.1%fpr": 1.0}
    # 20 non-members (2 % FPR) score above every member: no threshold reaches the
    # members at <= 1 % FPR.
    scores = np.r_[np.full(50, 1.0), np.full(20, 2.0), np.zeros(980)]
    late = AttackResult("late", scores, is_member)
    assert late.tpr_at(0.01) == 0.0
    assert late.tpr_at(0.03) == 1.0
    assert late.auc == pytest.approx(0.98)


def test_logit_confidence_is_log_odds_of_the_true_class() -> None:
    torch.manual_seed(0)
    model = task.MLP(64, 10, 8)
    data = Split(np.random.default_rng(0).random((20, 64), dtype=np.float32),
                 np.arange(20, dtype=np.int64) % 10)
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(data.x)).double(), 1)
    p_y = p[torch.arange(20), torch.from_numpy(data.y)].numpy()
    assert np.allclose(logit_confidence(model, data), np.log(p_y / (1 - p_y)))


def test_every_example_is_in_half_of_the_shadows() -> None:
    masks = balanced_masks(n=500, k=6, seed=0)
    assert (masks.sum(0) == 3).all()
    assert 200 < masks[0].sum() < 300  # each shadow trains on about half the pool


def test_cli_writes_json_and_roc_png(tmp_path: Path) -> None:
    summary = main(["--train-fresh", "--members", "80", "--epochs", "5", "--hidden", "16",
                    "--shadow-models", "4", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "audit.json").read_text())
    assert written["attacks"] == summary["attacks"]
    assert set(written["attacks"]) == {"loss", "lira-online", "lira-offline"}
    assert set(written["attacks"]["loss"]) == {"auc", "tpr@1%fpr", "tpr@0.1%fpr"}
    assert written["members"] == written["nonmembers"] == 80
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path)])  # a target is required


def test_saved_federated_target_audit_matches_its_run(tmp_path: Path) -> None:
    """``--model`` of a DP run: members = the nodes' training rows, non-members = the
    server's test rows plus the nodes' validation rows (disjoint), shadows use DP-SGD."""
    from fedapp.config import RunConfig
    from fedapp.privacy.audit import _saved_target, parse_args

    cfg = RunConfig(model="mlp", hidden_units=16, dp="local", dp_epsilon=2.5,
                    dp_max_grad_norm=0.7, partitioner="iid", batch_size=64, learning_rate=0.1)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_flower()))
    torch.save(task.build_model("mlp", SPEC, 16).state_dict(), tmp_path / "model.pt")
    args = parse_args(["--model", str(tmp_path / "model.pt"), "--num-partitions", "2",
                       "--epochs", "3"])
    _, members, nonmembers, recipe, _ = _saved_target(args)
    assert (recipe.dp_epsilon, recipe.max_grad_norm, recipe.epochs) == (2.5, 0.7, 3)
    assert (recipe.batch_size, recipe.lr, recipe.hidden) == (64, 0.1, 16)
    x, _, _ = load_raw("digits")
    assert len(members) + len(nonmembers) == len(x)  # every row is one or the other
    seen = {row.tobytes() for row in members.x}
    assert not any(row.tobytes() in seen for row in nonmembers.x)
