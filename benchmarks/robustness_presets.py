"""What ``robustness.py`` compares: the rows (aggregators), the attacks, the fixed setting.

Plain data, no heavy imports (the CLI's ``--help`` lists these names).
"""

from __future__ import annotations

from typing import Any

NUM_NODES = 20
SEED = 42
ROUNDS = 15
QUICK_ROUNDS = 3
LOCAL_EPOCHS = 5
LEARNING_RATE = 0.05
BATCH_SIZE = 16
FRACTIONS = (0.2, 0.3)
NODE_SIDE = ("label-flip", "sign-flip", "gaussian", "scaling", "label-flip-inflated")
OMNISCIENT = ("alie", "ipm", "min-max", "min-sum", "alie-adaptive", "ipm-adaptive",
              "min-max-noisy", "mimic", "fang", "alie-noisy-adaptive", "sign-balanced",
              "sleeper")
ATTACK_COLUMNS = ("none", *NODE_SIDE, *OMNISCIENT)
# Our rows: run-config overrides of RunConfig. Every robust rule is told the true fraction of
# Byzantine nodes: ours as byzantine-fraction, Flower's as the count f it takes.
OURS: dict[str, dict[str, Any]] = {
    "ours-recommended": {"aggregator": "fedavg", "preaggregation": "none",
                         "anomaly-detection": "exclude"},
    "ours-nnm-tm": {"aggregator": "trimmed-mean", "preaggregation": "nnm",
                    "anomaly-detection": "exclude"},
    "ours-spectral": {"aggregator": "spectral", "preaggregation": "none",
                      "anomaly-detection": "flag"},
}
FLOWER = ("flwr-fedavg", "flwr-multikrum", "flwr-fedmedian", "flwr-trimmedavg", "flwr-bulyan")
ORACLE = "oracle"  # FedAvg over the honest nodes only: the bound no defense can beat
ALL_ROWS = (*OURS, *FLOWER, ORACLE)
QUICK_ROWS = ("ours-recommended", "flwr-multikrum")
QUICK_ATTACKS = ("none", "alie")
QUICK_FRACTIONS = (0.2,)
LABELS = {"oracle": "oracle (honest nodes only)", "flwr-fedavg": "Flower FedAvg",
          "flwr-multikrum": "Flower MultiKrum",
          "flwr-fedmedian": "Flower FedMedian", "flwr-trimmedavg": "Flower FedTrimmedAvg",
          "flwr-bulyan": "Flower Bulyan"}
BASELINE = ("flwr-fedavg", "none")
DEFAULT_ROW = "ours-recommended"  # the configuration pyproject.toml and conf/ set
