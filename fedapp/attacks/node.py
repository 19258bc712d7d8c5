"""Node-side Byzantine attacks, for simulation only: pure functions, each with its paper.

They run in the ClientApp of the designated malicious nodes (``fedapp.attacks.mod``):
``label_flip`` on the local labels before training (the ``"data"`` kind; with
``label-flip-inflated`` the reply also reports ``inflate_examples``' count); ``sign_flip``,
``gaussian_noise``, ``scale`` on the node's update (local weights minus the global weights
it received) before the reply leaves (the ``"model"`` kind). Their defaults are the
defaults of the run config's ``attack-scale = 0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def label_flip(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label flipping: ``y -> C - 1 - y`` for ``C = num_classes``.

    The mapping of Fang et al., "Local Model Poisoning Attacks to Byzantine-Robust
    Federated Learning", USENIX Security 2020 (https://arxiv.org/abs/1911.11815);
    label flipping in FL is studied by Tolpegin et al., "Data Poisoning Attacks
    Against Federated Learning Systems", ESORICS 2020. Raises ``ValueError`` on a
    label outside ``[0, C)`` or a non-integer tensor.
    """
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {y.dtype}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{int(y.min())}, {int(y.max())}]")
    return (num_classes - 1) - y


def sign_flip(update: torch.Tensor) -> torch.Tensor:
    """Sign flipping: send ``-u`` instead of the update ``u``.

    Li et al., "RSA: Byzantine-Robust Stochastic Aggregation Methods for Distributed
    Learning from Heterogeneous Datasets", AAAI 2019 (https://arxiv.org/abs/1811.03761).
    """
    return -update


def gaussian_noise(update: torch.Tensor, std: float = 1.0, generator: torch.Generator | None = None,
                   *, replace: bool = False) -> torch.Tensor:
    """Gaussian attack: ``u + std * e`` with ``e ~ N(0, I)``, or ``std * e`` if ``replace``.

    The Gaussian Byzantine worker of Blanchard et al., "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017
    (https://arxiv.org/abs/1703.02757) sends a Gaussian vector in place of its
    update (``replace=True``); the default adds the noise to the honest update.
    ``generator`` makes it reproducible.
    """
    if std < 0 or not math.isfinite(std):
        raise ValueError(f"std must be finite and >= 0, got {std}")
    noise = torch.randn(update.shape, generator=generator, dtype=update.dtype,
                        device=update.device) * std
    return noise if replace else update + noise


def scale(update: torch.Tensor, factor: float = 10.0) -> torch.Tensor:
    """Boosting / model replacement: send ``factor * u``.

    Bhagoji et al., "Analyzing Federated Learning through an Adversarial Lens",
    ICML 2019 (explicit boosting); Bagdasaryan et al., "How To Backdoor Federated
    Learning", AISTATS 2020 (model replacement with ``factor = n / server_lr``).
    """
    if not math.isfinite(factor):
        raise ValueError(f"factor must be finite, got {factor}")
    return update * factor


def inflate_examples(num_examples: int, claimed: float = 1_000_000) -> int:
    """Inflated sample count: report ``max(num_examples, floor(claimed))`` training examples
    (default 10^6) instead of the true ``num_examples``.

    FedAvg weights each update by the count its node reports, so a node that overstates it
    takes the weight of many honest ones: Portnoy, Tirosh, Hendler, "Towards Federated
    Learning with Byzantine-Robust Client Weighting" (https://arxiv.org/abs/2004.04986),
    who bound it by truncating the weights (as fedapp's ``weighting = "capped"`` does).
    Raises ``ValueError`` unless ``claimed >= 1`` is finite.
    """
    if not (math.isfinite(claimed) and claimed >= 1):
        raise ValueError(f"claimed must be finite and >= 1, got {claimed}")
    return max(int(num_examples), int(claimed))


#: Node-side update attacks by name, as ``f(update, **params)``.
MODEL_ATTACKS: dict[str, Callable[..., torch.Tensor]] = {
    "sign-flip": sign_flip,
    "gaussian": gaussian_noise,
    "scaling": scale,
}
