"""Binding an omniscient attack to its parameters, once, for ``ThreatModel``.

``crafter(attack, params)`` looks the attack up in ``OMNISCIENT_ATTACKS``, resolves the
``aggregator=`` of the adaptive attacks (``ADAPTIVE``) and checks every parameter against
the attack function's signature, so that a bad configuration fails when the threat model
is built, not in its first round. The ``Crafter`` it returns crafts the Byzantine rows of
a round, handing the round to an attack that takes one (``ROUND_KEYWORD``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from fedapp.attacks.omniscient import OMNISCIENT_ATTACKS
from fedapp.robust import AGGREGATORS

#: Attacks that search against a defense: they take ``aggregator=``, the rule to search.
ADAPTIVE = ("alie-adaptive", "ipm-adaptive", "alie-noisy-adaptive", "sleeper")
#: The keyword through which an attack that depends on the round gets it (``sleeper``).
ROUND_KEYWORD = "server_round"


@dataclass
class Crafter:
    """An omniscient attack with its parameters bound: ``(honest, num_byzantine, round)`` in,
    the Byzantine rows out."""

    fn: Callable[..., torch.Tensor]
    params: dict[str, Any] = field(default_factory=dict)
    aggregator: Callable[..., Any] | None = None
    by_round: bool = False  # fn takes the run's round as ROUND_KEYWORD

    def __call__(self, honest: torch.Tensor, num_byzantine: int,
                 server_round: int) -> torch.Tensor:
        params = self.params | ({ROUND_KEYWORD: server_round} if self.by_round else {})
        if self.aggregator is None:
            return self.fn(honest, num_byzantine, **params)
        return self.fn(honest, num_byzantine, self.aggregator, **params)


def crafter(attack: str, params: dict[str, Any]) -> Crafter:
    """Bind and check an omniscient attack's parameters once (module docstring)."""
    fn = OMNISCIENT_ATTACKS[attack]
    params = dict(params)
    aggregator = None
    if attack in ADAPTIVE:
        name = params.pop("aggregator", None)
        if name is None:
            raise ValueError(f"attack {attack!r} needs aggregator=<rule name or callable>: the "
                             f"pure rule it adapts to, one of {sorted(AGGREGATORS)}")
        if isinstance(name, str) and name not in AGGREGATORS:
            raise ValueError(f"aggregator={name!r} is not one of {sorted(AGGREGATORS)}")
        aggregator = AGGREGATORS[name] if isinstance(name, str) else name
        params.update(params.pop("aggregator_params", None) or {})
    args = (torch.zeros(1, 1), 1) + ((aggregator,) if aggregator is not None else ())
    signature = inspect.signature(fn)
    by_round = ROUND_KEYWORD in signature.parameters
    if by_round and ROUND_KEYWORD in params:
        raise ValueError(f"attack {attack!r}: {ROUND_KEYWORD} is the round's, not a parameter")
    try:
        signature.bind(*args, **params, **({ROUND_KEYWORD: 1} if by_round else {}))
    except TypeError as exc:
        allowed = [p for p in signature.parameters if p != ROUND_KEYWORD][2:]
        raise ValueError(f"attack {attack!r}: bad parameters {sorted(params)} ({exc}); "
                         f"allowed: {allowed}") from exc
    return Crafter(fn, params, aggregator, by_round)
