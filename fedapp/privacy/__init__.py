"""Differential privacy for fedapp: DP-SGD on nodes (Opacus), central DP, accounting.

- :mod:`fedapp.privacy.local`: sample-level DP-SGD with Opacus's PrivacyEngine (in the
  fastest per-sample-gradient mode the model allows: ghost clipping, ExpandedWeights
  or hooks, :func:`choose_grad_sample_mode`),
  the node's accountant state (:class:`DPState`) kept in ``context.state``, and
  budget enforcement (:func:`would_exceed`);
- :mod:`fedapp.privacy.central`: client-level DP on the server (clipped mean plus
  Gaussian noise) and its per-round accountant;
- :mod:`fedapp.privacy.accounting`: noise calibration and epsilon (Opacus RDP).

Importing this package does not import Opacus: each function imports it when
called, so a ClientApp with DP off never loads it.
"""

from fedapp.privacy.accounting import calibrate_noise, epsilon_of
from fedapp.privacy.central import (
    CentralAccountant,
    CentralDP,
    central_dp_mean,
    clip_updates,
)
from fedapp.privacy.local import (
    GRAD_SAMPLE_MODES,
    STATE_KEY,
    DPState,
    check_model,
    choose_grad_sample_mode,
    dp_train,
    load_state,
    make_compatible,
    plan_steps,
    store_state,
    would_exceed,
)

__all__ = [
    "GRAD_SAMPLE_MODES",
    "STATE_KEY",
    "CentralAccountant",
    "CentralDP",
    "DPState",
    "calibrate_noise",
    "central_dp_mean",
    "check_model",
    "choose_grad_sample_mode",
    "clip_updates",
    "dp_train",
    "epsilon_of",
    "load_state",
    "make_compatible",
    "plan_steps",
    "store_state",
    "would_exceed",
]
