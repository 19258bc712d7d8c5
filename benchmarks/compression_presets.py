"""What ``compression.py`` compares: the models, the codec presets and the fixed setting.

Plain data, no heavy imports (the CLI's ``--help`` lists these names).
"""

from __future__ import annotations

from typing import Any

NUM_NODES = 10
FEDERATION = f"num-supernodes={NUM_NODES} client-resources-num-cpus=1"
SEED = 42
ROUNDS = 10
QUICK_ROUNDS = 3
# The big MLP's local training, the same for all its codecs. Chosen on the 'off' baseline
# (10 rounds, seed 42) with `--models big --codecs off --big-lr LR --big-epochs E`; those
# runs' results, copied here, go into the report. lr 0.05 x 5 epochs converges smoothly
# (no late dips that would blur a final-accuracy comparison) to about the CNN's accuracy.
BIG_LR = 0.05
BIG_EPOCHS = 5
BIG_CALIBRATION: list[dict[str, Any]] = [
    {"learning-rate": lr, "local-epochs": ep, "final-accuracy": fin, "best-accuracy": best,
     "measured": "2026-11-23, flwr 1.41.0, 2 shared cores"}
    for lr, ep, fin, best in ((0.01, 3, 0.8361, 0.8361), (0.05, 3, 0.9194, 0.9194),
                              (0.1, 3, 0.9278, 0.9444), (0.05, 5, 0.9306, 0.9306))
]

MODELS: dict[str, dict[str, Any]] = {
    "small": {"label": "small CNN (model='auto')", "run-config": {"model": "auto"}},
    "big": {"label": "MLP, hidden-units=1000", "run-config": {"model": "mlp",
                                                              "hidden-units": 1000}},
}


def _codec(name: str, feedback: bool, topk: float | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {"compression": name, "compression-feedback": feedback}
    if name in ("qsgd", "topk-qsgd"):
        cfg["compression-bits"] = 8
    if topk is not None:
        cfg["compression-topk"] = topk
    return cfg


# id -> run-config overrides. fp16 is a plain cast (error feedback off); top-k and qsgd
# run with and without error feedback.
CODECS: dict[str, dict[str, Any]] = {
    "off": {"compression": "off"},
    "fp16": _codec("fp16", False),
    "qsgd8-ef": _codec("qsgd", True),
    "qsgd8": _codec("qsgd", False),
    "topk10-q8-ef": _codec("topk-qsgd", True, 0.1),
    "topk10-q8": _codec("topk-qsgd", False, 0.1),
    "topk1-q8-ef": _codec("topk-qsgd", True, 0.01),
    "topk1-q8": _codec("topk-qsgd", False, 0.01),
    "topk0.1-q8-ef": _codec("topk-qsgd", True, 0.001),
    "topk0.1-q8": _codec("topk-qsgd", False, 0.001),
}
QUICK_CODECS = ("off", "topk1-q8-ef")


def model_overrides(model: str, big_lr: float, big_epochs: int) -> dict[str, Any]:
    """A model's run-config overrides (the big MLP's learning rate and epochs included)."""
    over = dict(MODELS[model]["run-config"])
    if model == "big":
        over |= {"learning-rate": big_lr, "local-epochs": big_epochs}
    return over
