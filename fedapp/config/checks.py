"""Checks across run-config keys (``RunConfig`` runs them after each key's own check).

Cheap to import, like ``fedapp.config.run``: the ClientApp parses the config per message.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedapp.config.run import RunConfig


def cross_checks(cfg: RunConfig) -> list[str]:
    """The checks across keys of ``cfg``; one message per problem."""
    from fedapp.config.run import BUILTIN_DATASETS, HF_PREFIX, SYNTHETIC  # run imports us

    errors = []
    if cfg.dataset not in (*BUILTIN_DATASETS, SYNTHETIC) and not (
        cfg.dataset.startswith(HF_PREFIX) and len(cfg.dataset) > len(HF_PREFIX)
    ):
        allowed = ", ".join((*BUILTIN_DATASETS, SYNTHETIC))
        errors.append(
            f"dataset={cfg.dataset!r} is not one of: {allowed}, or 'hf:<hub name>'"
        )
    if cfg.min_train_nodes > cfg.min_available_nodes:
        errors.append(
            f"min-train-nodes={cfg.min_train_nodes} must be <= "
            f"min-available-nodes={cfg.min_available_nodes}"
        )
    if not cfg.label_column:
        errors.append("label-column='' must name the label column")
    if cfg.dp == "central":
        # The accounting holds for the clipped mean only (fedapp.privacy.central).
        for key, value, needed in (("aggregator", cfg.aggregator, "fedavg"),
                                   ("preaggregation", cfg.preaggregation, "none")):
            if value != needed:
                errors.append(f"dp='central' needs {key}={needed!r}, got {value!r}: its "
                              "epsilon is only valid for the clipped mean")
        if cfg.anomaly_detection == "exclude":
            errors.append("dp='central' cannot use anomaly-detection='exclude' (excluding "
                          "nodes after seeing their updates voids the accounting)")
    if cfg.cosine_floor is not None and cfg.cosine_floor > cfg.detect_cosine:
        errors.append(f"detect-cosine-floor={cfg.detect_cosine_floor} must be <= "
                      f"detect-cosine={cfg.detect_cosine} (or -1: no floor)")
    if not cfg.experiment:
        errors.append("experiment='' must name an MLflow experiment")
    if any(c in cfg.registered_model for c in "/:"):
        errors.append(f"registered-model={cfg.registered_model!r} must not contain "
                      "'/' or ':' ('' = fedapp-<dataset>, 'off' = do not register)")
    if not os.path.isabs(os.path.expanduser(cfg.output_dir)):
        errors.append(
            f"output-dir={cfg.output_dir!r} must be an absolute path (or start with ~): "
            "the ServerApp's working directory is wherever the SuperLink started"
        )
    if cfg.dp == "distributed" and not cfg.secagg:
        errors.append("dp='distributed' needs secagg=true: each node adds only a share of "
                      "the noise, which protects a record only inside a secure sum")
    if cfg.dp == "distributed" and cfg.secagg_bits < 16:
        errors.append(f"dp='distributed' needs secagg-bits >= 16, got {cfg.secagg_bits}: "
                      "the noisy sums need the room")
    return errors + secagg_checks(cfg)


def secagg_checks(cfg: RunConfig) -> list[str]:
    """What secure aggregation (``secagg``) composes with, and what it refuses."""
    if not cfg.secagg:
        return []
    from fedapp.attacks import ATTACKS  # cheap: neither torch nor the attacks

    errors = []
    if cfg.compression != "off":
        errors.append(f"secagg=true needs compression='off', got {cfg.compression!r}: sums "
                      "of sparse or separately quantized updates do not add up; secure "
                      "aggregation quantizes on its own (secagg-bits=16 halves the upload)")
    if ATTACKS.get(cfg.attack) == "omniscient":
        errors.append(f"secagg=true cannot simulate attack={cfg.attack!r}: it is played by "
                      "the server on the nodes' plaintext updates, which secure aggregation "
                      "hides; node-side attacks (label-flip, label-flip-inflated, sign-flip, "
                      "gaussian, scaling) act on what a node itself sends")
    if cfg.dp == "central":
        errors.append("secagg=true cannot use dp='central': it clips and noises each "
                      "node's update on the server")
    if cfg.secagg_degree % 2:
        errors.append(f"secagg-degree={cfg.secagg_degree} must be 0 (the whole bucket) or "
                      "even (a ring: half of the share holders on either side)")
    return errors
