"""Differential privacy for fedapp: DP-SGD on nodes (Opacus), central DP, accounting, audit.

``dp='local'`` (sample-level DP, on every node):

- :mod:`fedapp.privacy.local`: :func:`private_round`, the ClientApp's entry point: one
  DP-SGD round with the node's budget enforced (:class:`BudgetExhausted` when a round
  would exceed it);
- :mod:`fedapp.privacy.dp_sgd`: DP-SGD training (:func:`dp_train`) in the fastest
  per-sample-gradient mode the model allows (:func:`choose_grad_sample_mode`): ``fused``
  (:mod:`fedapp.privacy.fused`, closed-form per-example gradients from
  :mod:`fedapp.privacy.per_example`, Opacus's sampling, noise and accountant) or Opacus's
  PrivacyEngine (ghost clipping, ExpandedWeights or hooks);
- :mod:`fedapp.privacy.modes`: the choice of that mode and the model checks
  (:func:`check_model`, :func:`make_compatible`);
- :mod:`fedapp.privacy.budget`: the node's plan and accountant state (:class:`DPState`),
  kept in ``context.state`` (:func:`load_state`, :func:`store_state`), and the refusal test
  (:func:`would_exceed`): the run's plan;
- :mod:`fedapp.privacy.ledger`: the hospital's lifetime record (:class:`PrivacyLedger`, a
  file on the node's disk, per data identity, across runs) and its cap (node config
  ``dp-budget``); ``python -m fedapp.privacy ledger PATH`` shows what was spent.

``dp='central'`` (client-level DP, on the server):

- :mod:`fedapp.privacy.central`: clipped mean plus Gaussian noise and its per-round
  accountant.

Shared and offline:

- :mod:`fedapp.privacy.accounting`: noise calibration and epsilon (Opacus RDP);
- :mod:`fedapp.privacy.mia` and :mod:`fedapp.privacy.audit`: membership-inference
  attacks (loss threshold, LiRA) and the audit CLI, ``python -m fedapp.privacy.audit``
  (not imported here).

Importing this package does not import Opacus: each function imports it when
called, so a ClientApp with DP off never loads it.
"""

from fedapp.privacy.accounting import calibrate_noise, epsilon_of
from fedapp.privacy.budget import (
    STATE_KEY,
    DPState,
    load_state,
    plan_steps,
    store_state,
    would_exceed,
)
from fedapp.privacy.central import (
    CentralAccountant,
    CentralDP,
    central_dp_mean,
    clip_updates,
)
from fedapp.privacy.dp_sgd import dp_train
from fedapp.privacy.ledger import LedgerError, NodeBudget, PrivacyLedger
from fedapp.privacy.local import BudgetExhausted, private_round
from fedapp.privacy.modes import (
    GRAD_SAMPLE_MODES,
    check_model,
    choose_grad_sample_mode,
    make_compatible,
)

__all__ = [
    "GRAD_SAMPLE_MODES",
    "STATE_KEY",
    "BudgetExhausted",
    "CentralAccountant",
    "CentralDP",
    "DPState",
    "LedgerError",
    "NodeBudget",
    "PrivacyLedger",
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
    "private_round",
    "store_state",
    "would_exceed",
]
