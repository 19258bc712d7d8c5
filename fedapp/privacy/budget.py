"""A node's DP-SGD budget over the run: the plan, the accountant's state, the refusal test.

DP-SGD's guarantee (:mod:`fedapp.privacy.dp_sgd`) holds for the whole run only if the
accounting (:mod:`fedapp.privacy.accounting`) composes the steps of *all* rounds. The
node plans once (:meth:`DPState.plan`: the noise multiplier ``z`` calibrated so that
``rounds x local-epochs x steps_per_epoch`` steps spend exactly the target epsilon), keeps
the accountant's history in :class:`DPState`, which the ClientApp stores in
``context.state`` between rounds (:func:`load_state`, :func:`store_state`), and refuses a
round that would spend more (:func:`would_exceed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from flwr.app import ConfigRecord, RecordDict

from fedapp.privacy.accounting import (
    ACCOUNTANT,
    History,
    calibrate_noise,
    check_history,
    epsilon_of,
)


class BudgetExhausted(RuntimeError):
    """Training this round would spend more than the node's budget: the run's plan
    (``dp-epsilon``) or the hospital's lifetime cap (``dp-budget``, :mod:`.ledger`)."""


#: Key of the node's DP-SGD state (a ConfigRecord) in ``context.state``.
STATE_KEY = "dp-sgd"
_VERSION = 1


def plan_steps(num_examples: int, batch_size: int) -> tuple[float, int]:
    """``(sample_rate, steps_per_epoch)`` exactly as Opacus derives them.

    ``make_private`` sets ``q = 1 / len(loader)`` with ``len(loader) = ceil(N / B)``
    for a non-dropping loader of batch size ``B``, and its Poisson loader then yields
    ``int(1 / q)`` batches of expected size ``q N`` per epoch.
    """
    if num_examples < 1 or batch_size < 1:
        raise ValueError(f"need num_examples >= 1 and batch_size >= 1, got "
                         f"{num_examples}, {batch_size}")
    sample_rate = 1 / math.ceil(num_examples / batch_size)
    return sample_rate, int(1 / sample_rate)


@dataclass(frozen=True)
class DPState:
    """A node's DP-SGD plan and its accountant's state; immutable, one per round.

    ``history`` is Opacus's RDP accountant history ``[(z, q, steps), ...]`` of every
    DP-SGD step this node has taken in the run; ``noise_multiplier`` was calibrated
    once (:meth:`plan`) so that ``planned_steps = rounds x steps_per_round`` steps
    spend exactly ``target_epsilon`` at ``delta``.
    """

    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    planned_steps: int
    target_epsilon: float
    delta: float
    history: tuple[tuple[float, float, int], ...] = field(default=())

    @classmethod
    def plan(cls, *, target_epsilon: float, delta: float, num_examples: int, batch_size: int,
             local_epochs: int, num_rounds: int) -> DPState:
        """Calibrate ``z`` for a node that trains in every one of ``num_rounds`` rounds.

        A node that is not sampled every round spends less; the plan is the worst case.
        """
        q, per_epoch = plan_steps(num_examples, batch_size)
        per_round = local_epochs * per_epoch
        total = num_rounds * per_round
        z = calibrate_noise(target_epsilon, delta, q, total)
        return cls(z, q, per_round, total, target_epsilon, delta)

    @property
    def steps_taken(self) -> int:
        return sum(steps for _, _, steps in self.history)

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at ``delta``."""
        return epsilon_of(self.history, self.delta)

    def with_history(self, history: History) -> DPState:
        return replace(self, history=tuple(check_history(history)))

    def to_record(self) -> ConfigRecord:
        """A Flower ConfigRecord (survives Flower's protobuf serde of ``context.state``)."""
        return ConfigRecord({
            "version": _VERSION,
            "accountant": ACCOUNTANT,
            "noise-multiplier": self.noise_multiplier,
            "sample-rate": self.sample_rate,
            "steps-per-round": self.steps_per_round,
            "planned-steps": self.planned_steps,
            "target-epsilon": self.target_epsilon,
            "delta": self.delta,
            "history-noise": [float(z) for z, _, _ in self.history],
            "history-rate": [float(q) for _, q, _ in self.history],
            "history-steps": [int(s) for _, _, s in self.history],
        })

    @classmethod
    def from_record(cls, record: ConfigRecord) -> DPState:
        """Inverse of :meth:`to_record`; raises ``ValueError`` on anything else."""
        try:
            if record["version"] != _VERSION or record["accountant"] != ACCOUNTANT:
                raise ValueError(f"unsupported version/accountant {record['version']!r}, "
                                 f"{record['accountant']!r}")
            zs, qs, steps = (list(record[k]) for k in  # type: ignore[call-overload]
                             ("history-noise", "history-rate", "history-steps"))
            if not len(zs) == len(qs) == len(steps):
                raise ValueError("history columns differ in length")
            return cls(
                noise_multiplier=float(record["noise-multiplier"]),  # type: ignore[arg-type]
                sample_rate=float(record["sample-rate"]),  # type: ignore[arg-type]
                steps_per_round=int(record["steps-per-round"]),  # type: ignore[arg-type]
                planned_steps=int(record["planned-steps"]),  # type: ignore[arg-type]
                target_epsilon=float(record["target-epsilon"]),  # type: ignore[arg-type]
                delta=float(record["delta"]),  # type: ignore[arg-type]
                history=tuple(check_history(zip(zs, qs, steps, strict=True))),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a DP-SGD state record: {exc!r}") from exc


def load_state(state: RecordDict) -> DPState | None:
    """The node's DP-SGD state from ``context.state``, or None before its first round."""
    record = state.get(STATE_KEY)
    if record is None:
        return None
    if not isinstance(record, ConfigRecord):
        raise ValueError(f"context.state[{STATE_KEY!r}] is a {type(record).__name__}")
    return DPState.from_record(record)


def store_state(state: RecordDict, dp: DPState) -> None:
    """Write ``dp`` into ``context.state`` (call only after training succeeded)."""
    state[STATE_KEY] = dp.to_record()


def would_exceed(state: DPState, next_steps: int, sample_rate: float, noise_multiplier: float,
                 delta: float, target_epsilon: float) -> bool:
    """True if ``next_steps`` more steps at ``(noise_multiplier, sample_rate)`` would push the
    epsilon spent (at ``delta``) above ``target_epsilon``: the node must refuse the round."""
    projected = [*state.history, (noise_multiplier, sample_rate, next_steps)]
    return epsilon_of(projected, delta) > target_epsilon
