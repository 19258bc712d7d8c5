"""What ``robustness.py`` compares: the rows (aggregators), the attacks, the grid of settings.

Plain data, no heavy imports (the CLI's ``--help`` lists these names): the attack names and
their kinds come from ``fedapp.attacks.ATTACKS`` (a dict, no torch), so an attack added there
is a column here, node side ("data" / "model" kind: one Flower run per attack) or omniscient
(played by the server-side wrapper, all in one Flower run).
"""

from __future__ import annotations

import sys
from typing import Any

from common import REPO

# This checkout's fedapp (the one the App ships), not another the environment has installed.
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))

from fedapp.attacks import ATTACKS

# The grid (``--full-grid``) and the default subset that fits ~45 min of 2 cores.
GRID_NODES = (10, 20, 40)
GRID_ALPHAS = (0.1, 0.3, 1.0)
GRID_FRACTIONS = (0.1, 0.2, 0.3)
GRID_SEEDS = (0, 1, 2)
NODES = (10, 20, 40)
ALPHAS = (0.1, 1.0)
FRACTIONS = (0.2, 0.3)
SEEDS = (0,)
ROUNDS = 8
QUICK_ROUNDS = 3
LOCAL_EPOCHS = 5
LEARNING_RATE = 0.05
BATCH_SIZE = 16
DATASETS = ("digits", "synthetic")  # the first is the grid's (robustness.py --dataset)

NODE_SIDE = tuple(a for a, kind in ATTACKS.items() if kind in ("data", "model"))
OMNISCIENT = tuple(a for a, kind in ATTACKS.items() if kind == "omniscient")
ATTACK_COLUMNS = ("none", *NODE_SIDE, *OMNISCIENT)
# Left out by default (``--attacks all`` plays them): in the one-setting table
# (docs/robustness.md of 2026-11-23: 20 nodes, alpha 0.5, 20% and 30%) none of them was the
# worst case of a default row; alie, ipm and min-max are the fixed-scale versions of
# alie-adaptive, ipm-adaptive and min-max-noisy, and every node-side attack costs one more
# Flower run per setting and fraction. Attacks added to fedapp.attacks are played by default.
LEFT_OUT = ("label-flip", "gaussian", "scaling", "alie", "ipm", "min-max")
DEFAULT_ATTACKS = tuple(a for a in ATTACK_COLUMNS if a not in LEFT_OUT)

# Our rows: run-config overrides of RunConfig. Every robust rule is told the true fraction of
# Byzantine nodes: ours as byzantine-fraction, Flower's as the count f it takes.
OURS: dict[str, dict[str, Any]] = {
    "ours-recommended": {"aggregator": "fedavg", "preaggregation": "none",
                         "anomaly-detection": "exclude"},
    "ours-nnm-tm": {"aggregator": "trimmed-mean", "preaggregation": "nnm",
                    "anomaly-detection": "exclude"},
    "ours-spectral": {"aggregator": "spectral", "preaggregation": "none",
                      "anomaly-detection": "flag"},
    # The default without the cosine check's margin (the fixed threshold 0 alone).
    "ours-no-margin": {"aggregator": "fedavg", "preaggregation": "none",
                       "anomaly-detection": "exclude", "detect-cosine-spread": 0.0},
    # The default's checks in flag mode: every update scored and logged, none left out or
    # scaled down (what exclusion itself costs or saves).
    "ours-flag-only": {"aggregator": "fedavg", "preaggregation": "none",
                       "anomaly-detection": "flag"},
}
FLOWER = ("flwr-fedavg", "flwr-multikrum", "flwr-fedmedian", "flwr-trimmedavg", "flwr-bulyan")
ORACLE = "oracle"  # FedAvg over the honest nodes only: the bound no defense can beat
ALL_ROWS = (*OURS, *FLOWER, ORACLE)
DEFAULT_ROW = "ours-recommended"  # the configuration pyproject.toml and conf/ set
DEFAULT_ROWS = (DEFAULT_ROW, "flwr-fedavg", "flwr-multikrum", "flwr-fedmedian",
                "flwr-trimmedavg", ORACLE)
REFERENCE = "flwr-fedavg"  # clean FedAvg of the same (nodes, alpha, seed): retained's base
# Rows whose clean run does not depend on the Byzantine fraction: played once per
# (nodes, alpha, seed) and shared by every fraction.
FRACTION_FREE = ("flwr-fedavg", "flwr-fedmedian", ORACLE)
QUICK_ROWS = (DEFAULT_ROW, "flwr-multikrum")
QUICK_ATTACKS = ("none", "alie-adaptive")
QUICK_GRID = {"nodes": (10,), "alphas": (0.3,), "fractions": (0.2,), "seeds": (0,)}
LABELS = {"oracle": "oracle (honest nodes only)", "flwr-fedavg": "Flower FedAvg",
          "flwr-multikrum": "Flower MultiKrum",
          "flwr-fedmedian": "Flower FedMedian", "flwr-trimmedavg": "Flower FedTrimmedAvg",
          "flwr-bulyan": "Flower Bulyan"}


def target(fraction: float) -> float:
    """The share of clean FedAvg the worst case must keep: 95% up to 20% Byzantine nodes,
    90% above."""
    return 0.95 if fraction <= 0.2 + 1e-9 else 0.90
