"""What differs per node (``--node-config``), and the ClientApp's per-message parsing.

``NodeConfig.from_flower`` parses a node's config; ``run_config_of`` / ``node_config_of``
parse the run and node config of the message a ClientApp handles, once per message.
This module must stay cheap to import: the ClientApp imports it on every message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedapp.config.run import ConfigError, RunConfig


@dataclass(frozen=True)
class NodeConfig:
    """What differs per node (``--node-config``).

    Simulation gives each node ``partition-id`` and ``num-partitions``. A
    hospital's SuperNode sets ``data-path`` (CSV or Parquet) instead, and may set
    ``label-column`` when its file names the label differently, and ``ignore-columns``
    (comma-separated names, e.g. ``'patient_id,visit_date'``) for columns of its file
    that are no feature (ids): they are dropped unread (``fedapp.data.schema``).

    Under ``dp='local'`` the node charges every round to its lifetime privacy ledger
    (``fedapp.privacy.ledger``): ``privacy-ledger`` (a path; default
    ``$XDG_DATA_HOME/fedapp/privacy-ledger.json``), ``dp-budget`` (the lifetime epsilon cap
    of this node's data; unset = recorded, not capped) at ``dp-delta`` (default 1e-5). They
    are the node's: the run config cannot set them.
    """

    partition_id: int | None = None
    num_partitions: int | None = None
    data_path: str | None = None
    label_column: str | None = None
    ignore_columns: tuple[str, ...] = ()
    privacy_ledger: str | None = None
    dp_budget: float | None = None
    dp_delta: float = 1e-5

    @classmethod
    def from_flower(cls, node_config: Mapping[str, Any]) -> NodeConfig:
        known = {"partition-id", "num-partitions", "data-path", "label-column", "ignore-columns",
                 "privacy-ledger", "dp-budget", "dp-delta"}
        errors = []
        pid, num = node_config.get("partition-id"), node_config.get("num-partitions")
        path, label = node_config.get("data-path"), node_config.get("label-column")
        if path is None and (pid is None or num is None):
            errors.append(
                "node config needs either data-path=<csv or parquet file> or both "
                f"partition-id and num-partitions; got {dict(node_config)} "
                f"(known keys: {', '.join(sorted(known))})"
            )
        for key, value in (("partition-id", pid), ("num-partitions", num)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                errors.append(f"node config {key}={value!r} must be an integer")
        if not errors and path is None and not 0 <= pid < num:  # type: ignore[operator]
            errors.append(f"node config partition-id={pid} must be in [0, num-partitions={num})")
        if path is not None and (not isinstance(path, str) or not path):
            errors.append(f"node config data-path={path!r} must be a non-empty path")
        ignore = node_config.get("ignore-columns", "")
        if not isinstance(ignore, str):
            errors.append(f"node config ignore-columns={ignore!r} must be a string of "
                          "comma-separated column names, e.g. 'patient_id,visit_date'")
        ledger, budget, delta = _privacy_keys(node_config, errors)
        if errors:
            raise ConfigError("invalid node config:\n  " + "\n  ".join(errors))
        return cls(
            partition_id=pid,
            num_partitions=num,
            data_path=os.path.expanduser(path) if path else None,
            label_column=str(label) if label else None,
            ignore_columns=tuple(dict.fromkeys(c.strip() for c in ignore.split(",")
                                               if c.strip())),
            privacy_ledger=ledger,
            dp_budget=budget,
            dp_delta=delta,
        )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _privacy_keys(node_config: Mapping[str, Any], errors: list[str]
                  ) -> tuple[str | None, float | None, float]:
    """``privacy-ledger``, ``dp-budget`` and ``dp-delta``, checked (errors appended)."""
    ledger = node_config.get("privacy-ledger")
    if ledger is not None and (not isinstance(ledger, str) or not ledger):
        errors.append(f"node config privacy-ledger={ledger!r} must be a non-empty path")
    budget = node_config.get("dp-budget")
    if budget is not None and not (_number(budget) and budget > 0):
        errors.append(f"node config dp-budget={budget!r} must be a number > 0 (the lifetime "
                      "epsilon cap of this node's data)")
    delta = node_config.get("dp-delta", 1e-5)
    if not (_number(delta) and 0 < delta < 1):
        errors.append(f"node config dp-delta={delta!r} must be a number in (0, 1)")
    return (os.path.expanduser(ledger) if isinstance(ledger, str) and ledger else None,
            float(budget) if _number(budget) else None,
            float(delta) if _number(delta) else 1e-5)




# The last parsed config per attribute: (context, mapping, parsed); see ``run_config_of``.
_PARSED: dict[str, tuple[object, object, Any]] = {}


def _parsed(context: Any, attr: str, parse: Any) -> Any:
    mapping, last = getattr(context, attr), _PARSED.get(attr)
    if last is None or last[0] is not context or last[1] is not mapping:
        last = _PARSED[attr] = (context, mapping, parse(mapping))
    return last[2]


def run_config_of(context: Any) -> RunConfig:
    """The ``RunConfig`` of the message a ClientApp handles, parsed once per message: Flower
    hands the same ``Context`` to every mod and the handler, so the first caller parses and
    the others reuse it (keyed on the identity of the context and of its mapping; only the
    last is kept, as a deployed ClientApp handles one message per process)."""
    return _parsed(context, "run_config", RunConfig.from_flower)  # type: ignore[no-any-return]


def node_config_of(context: Any) -> NodeConfig:
    """The ``NodeConfig`` of the message a ClientApp handles, parsed once (``run_config_of``)."""
    return _parsed(context, "node_config", NodeConfig.from_flower)  # type: ignore[no-any-return]
