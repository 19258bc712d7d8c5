"""The pure part of ``deployment_scale.py``: from every SuperNode's stamped log lines and
the server's round times to one row per round, and medians over rounds.

Each SuperNode handles one message at a time and, with every node sampled every round
and no evaluation, its k-th train message is round k's. A node's ``per-message`` time is
``Receiving: train message`` -> ``Sending: train message`` (``cold_start_deployment``);
the server's round time is the ``seconds`` of the round's row in ``rounds.json``
(``RoundStats``: ``configure_train`` to the end of ``aggregate_train``, the ServerApp's own
clock). Per round:

* ``round-s``: the server's round;
* ``slowest-node-s`` / ``median-node-s`` / ``fastest-node-s``: over the nodes'
  per-message times;
* ``overhead-s`` = ``round-s`` - ``slowest-node-s``: what the round costs beyond its
  slowest node (the SuperNodes' pull of the instruction, the ServerApp's pull of the
  replies, transport, validation and aggregation);
* ``node-span-s``: first node's ``Receiving`` -> last node's ``Sending`` (all stamps read
  by one process, one clock), and ``beyond-span-s`` = ``round-s`` - ``node-span-s``;
* ``pickup-spread-s``: first -> last ``Receiving`` (how far apart the nodes start);
* ``slowest-handler-s``: the longest train handler (local data and training; from the
  ClientApp's cold-start lines) and ``median-to-handler-s``: the median process start ->
  handler entered (interpreter, imports, app loading);
* ``aggregation-s`` (added by the caller from ``rounds.json``): the server's decoding,
  screening and aggregation of the round's replies.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from cold_start_deployment import RECEIVING, SENDING, parse_messages

Lines = Sequence[tuple[float, str]]
ROUND_KEYS = ("round-s", "slowest-node-s", "overhead-s", "median-node-s", "fastest-node-s",
              "node-span-s", "beyond-span-s", "pickup-spread-s", "slowest-handler-s",
              "median-to-handler-s", "aggregation-s")


def train_spans(lines: Lines) -> list[tuple[float, float]]:
    """``(receiving, sending)`` stamps of each train message in one SuperNode's lines."""
    spans: list[tuple[float, float]] = []
    receiving: float | None = None
    for stamp, text in lines:
        if m := RECEIVING.search(text):
            receiving = stamp if m.group(1) == "train" else None
        elif receiving is not None and SENDING.search(text):
            spans.append((receiving, stamp))
            receiving = None
    return spans


def round_rows(nodes: Sequence[Lines], server_seconds: Sequence[float]
               ) -> list[dict[str, float]]:
    """One row per round (keys :data:`ROUND_KEYS` and ``round``, 1-based) from each node's
    lines of one run and the server's round times; every node must have handled exactly
    one train message per round."""
    rounds = len(server_seconds)
    spans = [train_spans(lines) for lines in nodes]
    stages = [parse_messages(list(lines)) for lines in nodes]
    for i, (s, st) in enumerate(zip(spans, stages, strict=True)):
        if len(s) != rounds or len(st) != rounds:
            raise ValueError(f"node {i}: {len(s)} train messages for {rounds} rounds")
    rows = []
    for k in range(rounds):
        here = [s[k] for s in spans]
        per_message = [st[k]["per-message"] for st in stages]
        handlers = [st[k]["handler"] for st in stages if "handler" in st[k]]
        to_handler = [st[k]["process-start->handler"] for st in stages
                      if "process-start->handler" in st[k]]
        span = max(end for _, end in here) - min(start for start, _ in here)
        row = {"round": k + 1, "round-s": server_seconds[k],
               "slowest-node-s": max(per_message),
               "overhead-s": server_seconds[k] - max(per_message),
               "median-node-s": statistics.median(per_message),
               "fastest-node-s": min(per_message),
               "node-span-s": span, "beyond-span-s": server_seconds[k] - span,
               "pickup-spread-s": max(s for s, _ in here) - min(s for s, _ in here)}
        if handlers:
            row["slowest-handler-s"] = max(handlers)
        if to_handler:
            row["median-to-handler-s"] = statistics.median(to_handler)
        rows.append(row)
    return rows


def summarize(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per key of :data:`ROUND_KEYS`: median, min and max over ``rows`` (and ``n``)."""
    out: dict[str, dict[str, float]] = {}
    for key in ROUND_KEYS:
        values = [row[key] for row in rows if key in row]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values),
                        "max": max(values), "n": len(values)}
    return out


def split_first(rows: Sequence[dict[str, float]]
                ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """``(round-1 rows, later rows)``: round 1 carries one-time costs (each SuperNode
    installs the app and fills its data cache on its first message)."""
    return ([r for r in rows if r["round"] == 1], [r for r in rows if r["round"] > 1])


def ratio(a: float, b: float) -> float | None:
    """``a / b``, or None when ``b`` is not positive."""
    return a / b if b > 0 else None
