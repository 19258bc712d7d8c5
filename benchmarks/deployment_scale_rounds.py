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
  slowest node. All node stamps are read by one process (one clock), so it splits into
  ``skew-s`` (``node-span-s``, first node's ``Receiving`` -> last node's ``Sending``,
  minus the slowest node), ``push-tail-s`` (last ``Sending`` -> last ``Sent
  successfully``: the replies' upload to the SuperLink) and ``server-side-s`` (the rest:
  the round's start to the first node's pickup, the last reply's upload to the round's
  end: the nodes' and the ServerApp's polls and the server's own work);
* ``slowest-node-sent-s``: the longest ``Receiving`` -> ``Sent successfully`` (a node's
  time with its reply's upload: a SuperNode logs ``Sending`` once the reply's message has
  reached it, while the reply's arrays may still be on their way from the ClientApp
  process) and ``overhead-sent-s`` = ``round-s`` minus that;
* ``pickup-spread-s``: first -> last ``Receiving``; ``slowest-push-s``: the longest
  ``Sending`` -> ``Sent successfully`` of one node;
* ``slowest-handler-s``: the longest train handler (local data and training; from the
  ClientApp's cold-start lines) and ``median-to-handler-s``: the median process start ->
  handler entered (interpreter, imports, app loading);
* ``aggregation-s`` (added by the caller from ``rounds.json``): the server's decoding,
  screening and aggregation of the round's replies.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import NamedTuple

from cold_start_deployment import RECEIVING, SENDING, parse_messages

Lines = Sequence[tuple[float, str]]
SENT = "Sent successfully"
ROUND_KEYS = ("round-s", "slowest-node-s", "overhead-s", "skew-s", "push-tail-s",
              "server-side-s", "slowest-node-sent-s", "overhead-sent-s", "median-node-s",
              "fastest-node-s", "node-span-s",
              "pickup-spread-s", "slowest-push-s", "slowest-handler-s",
              "median-to-handler-s", "aggregation-s")


class Span(NamedTuple):
    """Stamps of one train message on one SuperNode."""

    receiving: float
    sending: float
    sent: float


def train_spans(lines: Lines) -> list[Span]:
    """The stamps of each train message in one SuperNode's lines whose reply was sent."""
    spans: list[Span] = []
    receiving: float | None = None
    sending: float | None = None
    for stamp, text in lines:
        if m := RECEIVING.search(text):
            receiving, sending = (stamp if m.group(1) == "train" else None), None
        elif receiving is not None and sending is None and SENDING.search(text):
            sending = stamp
        elif receiving is not None and sending is not None and SENT in text:
            spans.append(Span(receiving, sending, stamp))
            receiving = sending = None
    return spans


def round_rows(nodes: Sequence[Lines], server_seconds: Sequence[float]
               ) -> list[dict[str, float]]:
    """One row per round (keys :data:`ROUND_KEYS` but ``aggregation-s``, and ``round``,
    1-based) from each node's lines of one run and the server's round times; every node
    must have handled (and sent the reply of) exactly one train message per round."""
    rounds = len(server_seconds)
    spans = [train_spans(lines) for lines in nodes]
    stages = [parse_messages(list(lines)) for lines in nodes]
    for i, (s, st) in enumerate(zip(spans, stages, strict=True)):
        if len(s) != rounds or len(st) != rounds:
            raise ValueError(f"node {i}: {len(s)} train messages for {rounds} rounds")
    return [_row(k, [s[k] for s in spans], [st[k] for st in stages], server_seconds[k])
            for k in range(rounds)]


def _row(k: int, here: list[Span], stages: list[dict[str, float]], round_s: float,
         ) -> dict[str, float]:
    per_message = [st["per-message"] for st in stages]
    handlers = [st["handler"] for st in stages if "handler" in st]
    to_handler = [st["process-start->handler"] for st in stages
                  if "process-start->handler" in st]
    first = min(s.receiving for s in here)
    span = max(s.sending for s in here) - first
    delivered = max(s.sent for s in here) - first
    row = {"round": k + 1, "round-s": round_s, "slowest-node-s": max(per_message),
           "overhead-s": round_s - max(per_message),
           "skew-s": span - max(per_message), "push-tail-s": delivered - span,
           "server-side-s": round_s - delivered,
           "slowest-node-sent-s": max(s.sent - s.receiving for s in here),
           "overhead-sent-s": round_s - max(s.sent - s.receiving for s in here),
           "median-node-s": statistics.median(per_message),
           "fastest-node-s": min(per_message), "node-span-s": span,
           "pickup-spread-s": max(s.receiving for s in here) - first,
           "slowest-push-s": max(s.sent - s.sending for s in here)}
    if handlers:
        row["slowest-handler-s"] = max(handlers)
    if to_handler:
        row["median-to-handler-s"] = statistics.median(to_handler)
    return row


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
