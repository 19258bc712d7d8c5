"""Byzantine attacks, for simulation only: the registry, who is malicious, and parameters.

Two places run attacks, and never unless ``attack`` is configured:

* **node side**, in the ClientApp of the designated malicious nodes
  (``fedapp.attacks.mod``): the ``"data"`` kind (``label-flip``; ``label-flip-inflated``
  also overstates its ``num-examples``, ``node.inflate_examples``) on the local labels,
  the ``"model"`` kind (``fedapp.attacks.node``) on the node's update;
* **server side**, the ``"omniscient"`` kind (``fedapp.attacks.omniscient``, with the
  benchmarks' ``published`` attacks and the ``evasive`` ones aimed at fedapp's own checks),
  played by the ``fedapp.attacks.threat_model.ThreatModel`` strategy wrapper: colluders
  that see every honest update.

Each attack takes its parameters from the run config in one place, ``attack_params``:
``attack-scale`` sets the one scale keyword the attack has (``SCALE_KEYWORD``; 0 keeps the
attack function's own default) and ``attack-perturbation`` the direction of the min-max
family. This module imports neither torch nor the attacks: the ClientApp imports it.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedapp.config import RunConfig

#: Run-config name -> kind: "none", "data" / "model" (node side), "omniscient" (server side).
ATTACKS: dict[str, str] = {
    "none": "none",
    "label-flip": "data",
    "label-flip-inflated": "data",
    "sign-flip": "model",
    "gaussian": "model",
    "scaling": "model",
    "alie": "omniscient",
    "ipm": "omniscient",
    "min-max": "omniscient",
    "min-sum": "omniscient",
    "min-max-noisy": "omniscient",
    "alie-adaptive": "omniscient",
    "ipm-adaptive": "omniscient",
    "mimic": "omniscient",
    "fang": "omniscient",
    "alie-noisy-adaptive": "omniscient",
    "sign-balanced": "omniscient",
    "sleeper": "omniscient",
    "fang-sign-noise": "omniscient",
}

#: The keyword of each attack that ``attack-scale`` sets, when positive.
SCALE_KEYWORD: dict[str, str] = {
    "gaussian": "std",
    "scaling": "factor",
    "alie": "z",
    "ipm": "epsilon",
    "min-max-noisy": "noise",
    "label-flip-inflated": "claimed",
    "fang": "b",
    "alie-noisy-adaptive": "noise",
    "sign-balanced": "z",
    "fang-sign-noise": "share",
}

#: Attacks that take ``attack-perturbation`` (Shejwalkar & Houmansadr's direction).
PERTURBED = ("min-max", "min-sum", "min-max-noisy")


def attack_params(cfg: RunConfig) -> dict[str, Any]:
    """The keyword parameters of ``cfg.attack`` that the run config sets."""
    params: dict[str, Any] = {}
    keyword = SCALE_KEYWORD.get(cfg.attack)
    if keyword is not None and cfg.attack_scale > 0:
        params[keyword] = cfg.attack_scale
    if cfg.attack in PERTURBED:
        params["perturbation"] = cfg.attack_perturbation
    return params


def malicious_ids(candidates: Sequence[int], fraction: float, seed: int) -> set[int]:
    """The ``round(fraction * n)`` designated malicious ids among ``n`` distinct candidates.

    Rounded half up (``0.25 * 10 -> 3``). The choice depends only on the *set* of
    candidates, ``fraction`` and ``seed`` (candidates are sorted first), so the
    ServerApp and every ClientApp that call it with the same arguments agree, e.g.
    ``malicious_ids(range(num_partitions), fraction, seed)`` over partition ids.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    pool = sorted({int(c) for c in candidates})
    count = min(len(pool), math.floor(fraction * len(pool) + 0.5))
    return set(random.Random(seed).sample(pool, count))


__all__ = ["ATTACKS", "PERTURBED", "SCALE_KEYWORD", "attack_params", "malicious_ids"]
