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
    """One train message on one SuperNode: the stamps of its ``Receiving``, ``Sending``
    and ``Sent successfully`` lines (None: not logged) and its stages
    (``cold_start_deployment.parse_messages``; None without a ``Sending``)."""

    receiving: float
    sending: float | None = None
    sent: float | None = None
    stages: dict[str, float] | None = None


class Done(NamedTuple):
    """A train message whose reply went out: its stamps and stages."""

    receiving: float
    sending: float
    sent: float
    stages: dict[str, float]


def train_spans(lines: Lines) -> list[Span]:
    """Every train message one SuperNode received, in order (a reply that failed to go
    out has no ``sent``)."""
    spans: list[Span] = []
    active = False  # the lines since the last Receiving are a train message's
    for stamp, text in lines:
        if m := RECEIVING.search(text):
            active = m.group(1) == "train"
            if active:
                spans.append(Span(stamp))
        elif active and spans[-1].sending is None and SENDING.search(text):
            spans[-1] = spans[-1]._replace(sending=stamp)
        elif active and spans[-1].sending is not None and SENT in text:
            spans[-1] = spans[-1]._replace(sent=stamp)
            active = False
    stages = iter(parse_messages(list(lines)))  # one per message with a Sending, in order
    return [s._replace(stages=next(stages)) if s.sending is not None else s for s in spans]


def round_rows(nodes: Sequence[Lines], server_seconds: Sequence[float]
               ) -> list[dict[str, float]]:
    """One row per round (``round``, 1-based) from each node's lines of one run and the
    server's round times. A round whose every node received, answered and sent its
    train message gets the keys of :data:`ROUND_KEYS` but ``aggregation-s``; any other
    (a reply lost, a node that never got the message) only ``round-s`` and
    ``unfinished-nodes``, and is left out of the medians (:func:`complete`)."""
    spans = [train_spans(lines) for lines in nodes]
    rows = []
    for k, round_s in enumerate(server_seconds):
        here = [s[k] for s in spans if k < len(s)]
        done = [Done(s.receiving, s.sending, s.sent, s.stages or {}) for s in here
                if s.sending is not None and s.sent is not None]
        if len(done) < len(spans):
            rows.append({"round": k + 1, "round-s": round_s,
                         "unfinished-nodes": len(spans) - len(done)})
        else:
            rows.append(_row(k, done, round_s))
    return rows


def complete(rows: Sequence[dict[str, float]]) -> list[dict[str, float]]:
    """The rounds every node finished (the ones the medians are over)."""
    return [row for row in rows if "unfinished-nodes" not in row]


def _row(k: int, here: list[Done], round_s: float) -> dict[str, float]:
    per_message = [s.sending - s.receiving for s in here]
    handlers = [s.stages["handler"] for s in here if "handler" in s.stages]
    to_handler = [s.stages["process-start->handler"] for s in here
                  if "process-start->handler" in s.stages]
    first = min(s.receiving for s in here)
    span = max(s.sending for s in here) - first
    delivered = max(s.sent for s in here) - first
    with_upload = max(s.sent - s.receiving for s in here)
    row = {"round": k + 1, "round-s": round_s, "slowest-node-s": max(per_message),
           "overhead-s": round_s - max(per_message),
           "skew-s": span - max(per_message), "push-tail-s": delivered - span,
           "server-side-s": round_s - delivered, "slowest-node-sent-s": with_upload,
           "overhead-sent-s": round_s - with_upload,
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
    """``(round-1 rows, later rows)`` of the :func:`complete` rounds: round 1 carries
    one-time costs (each SuperNode installs the app and fills its data cache on its
    first message)."""
    done = complete(rows)
    return ([r for r in done if r["round"] == 1], [r for r in done if r["round"] > 1])


def ratio(a: float, b: float) -> float | None:
    """``a / b``, or None when ``b`` is not positive."""
    return a / b if b > 0 else None
