"""Node health: per-node counts and a circuit breaker that benches nodes that keep failing.

``Health`` (held in ``ServerState``, so it persists with the server) keeps, per node that
was ever sampled for training: successes, failures by kind, consecutive failures, the last
round a reply came from the node itself, and its breaker state. Failure
kinds are ``fedapp.node_errors.kind_of``'s (``data``, ``dp-refused``, ``unreachable``,
``crash``, ``other``), ``rejected`` (a reply that failed validation) and ``timeout`` (sampled,
but no reply by the end of the round: Flower's ``round-timeout``).

``Breaker(max_failures, cooldown)`` is the policy (run config ``health-max-failures``,
``health-cooldown``); its rules, each with a unit test (tests/unit/test_health.py):

1. **bench**: a healthy node's ``max_failures``-th consecutive failure benches it.
2. **cooldown**: a node benched in round ``r`` is left out of sampling in rounds
   ``r + 1`` to ``r + cooldown``; in round ``r + cooldown + 1`` it is on probation and can
   be sampled again.
3. **probation success**: one success closes the breaker: the node is healthy, its
   consecutive failures back to 0 (any success does that).
4. **probation failure**: one failure benches it again, with a new cooldown (so does a
   failure of a benched node that was sampled to reach ``min-train-nodes``, rule 6).
5. **off**: ``max_failures = 0`` benches nobody; the counts are still kept.
6. **never stall**: benched nodes are left out of the pool the sample is drawn from, unless
   that leaves fewer than the round's minimum; then the benched nodes closest to probation
   (then by node id) fill the pool up to it. With nobody benched the pool is the connected
   nodes unchanged, so sampling draws exactly as it would without health.

No latency is kept: the only time a reply carries to the ServerApp is Flower's
``created_at``, set by the node's clock (``delivered_at`` is not serialized), so a latency
would mix two machines' clocks; and a wall-clock value would make the state differ between
two servers that saw the same replies.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, field
from logging import INFO, WARNING
from typing import Any

from flwr.common.logger import log

HEALTHY, BENCHED, PROBATION = "healthy", "benched", "probation"
OK, REJECTED, TIMEOUT = "ok", "rejected", "timeout"


@dataclass
class NodeHealth:
    """One node's record (module docstring)."""

    successes: int = 0
    failures: dict[str, int] = field(default_factory=dict)  # kind -> count
    consecutive: int = 0  # failures since the last success
    state: str = HEALTHY
    benched_at: int = 0  # the round whose failure benched it (when benched)
    last_seen: int = 0  # last round a reply came from the node itself; 0: never


@dataclass
class Health:
    """Every sampled node's ``NodeHealth``, by node id."""

    nodes: dict[int, NodeHealth] = field(default_factory=dict)

    def node(self, node_id: int) -> NodeHealth:
        return self.nodes.setdefault(node_id, NodeHealth())

    def in_state(self, state: str) -> list[int]:
        return sorted(n for n, h in self.nodes.items() if h.state == state)

    def counts(self) -> dict[str, int]:
        """The round's metrics: how many nodes are healthy, benched, on probation."""
        return {f"nodes-{s}": len(self.in_state(s)) for s in (HEALTHY, BENCHED, PROBATION)}

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """JSON-ready, kebab-case keys (``node_health.json``, ``ServerState.to_record``)."""
        return {str(n): {k.replace("_", "-"): v for k, v in asdict(h).items()}
                for n, h in sorted(self.nodes.items())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]]) -> Health:
        return cls({int(n): NodeHealth(**{k.replace("-", "_"): dict(v) if k == "failures"
                                          else v for k, v in h.items()})
                    for n, h in data.items()})


@dataclass(frozen=True)
class Reply:
    """What came back from one sampled node: ``OK`` or a failure kind; ``from_node`` is
    False for an answer the SuperLink gives for a node it cannot reach."""

    kind: str = OK
    from_node: bool = True


@dataclass(frozen=True)
class Breaker:
    """The circuit breaker's policy (module docstring, rules 1-6)."""

    max_failures: int = 3
    cooldown: int = 5

    @property
    def enabled(self) -> bool:
        return self.max_failures > 0

    def back_in(self, record: NodeHealth) -> int:
        """The round a benched node is on probation again."""
        return record.benched_at + self.cooldown + 1

    def start_round(self, health: Health, server_round: int) -> list[int]:
        """Rule 2: put the benched nodes whose cooldown is over on probation; returns them."""
        back = [n for n in health.in_state(BENCHED)
                if server_round >= self.back_in(health.nodes[n])]
        for node in back:
            health.nodes[node].state = PROBATION
            log(INFO, "round %d: node %d back on probation after its cooldown", server_round,
                node)
        return back

    def benched(self, health: Health) -> list[int]:
        """The nodes to leave out of this round's sampling (none when off)."""
        return health.in_state(BENCHED) if self.enabled else []

    def pool(self, health: Health, nodes: list[int], minimum: int, *,
             what: str = "round") -> list[int]:
        """Rule 6: the nodes to sample from (``nodes`` itself when none is benched)."""
        benched = set(self.benched(health)) & set(nodes)
        if not benched:
            return nodes
        pool = [n for n in nodes if n not in benched]
        missing = max(minimum - len(pool), 0)
        closest = sorted(benched, key=lambda n: (self.back_in(health.nodes[n]), n))[:missing]
        if closest:
            log(WARNING, "%s: benching would leave %d nodes, fewer than %d; sampling benched "
                "nodes %s rather than stall", what, len(pool), minimum, closest)
        return pool + closest

    def success(self, record: NodeHealth, server_round: int) -> None:
        """Rule 3: one success closes the breaker."""
        record.successes += 1
        record.consecutive = 0
        record.state = HEALTHY
        record.last_seen = server_round

    def failure(self, record: NodeHealth, server_round: int, kind: str, *,
                seen: bool = True) -> bool:
        """Rules 1, 4, 5: count a failure of ``kind``; True if it benches the node."""
        record.failures[kind] = record.failures.get(kind, 0) + 1
        record.consecutive += 1
        if seen:
            record.last_seen = server_round
        if not self.enabled:
            return False
        if record.state != HEALTHY or record.consecutive >= self.max_failures:
            record.state, record.benched_at = BENCHED, server_round
            return True
        return False

    def record_round(self, health: Health, server_round: int, sent: Collection[int],
                     replies: Mapping[int, Reply]) -> list[int]:
        """Apply one training round: ``sent`` are the nodes sampled, ``replies`` maps every
        node that answered to its reply. A sampled node without a reply is a ``timeout``
        failure; returns those nodes."""
        timeouts = sorted(set(sent) - set(replies))
        outcomes = {**replies, **{n: Reply(TIMEOUT, from_node=False) for n in timeouts}}
        for node, reply in sorted(outcomes.items()):
            record = health.node(node)
            if reply.kind == OK:
                self.success(record, server_round)
                continue
            if reply.kind == TIMEOUT:
                log(WARNING, "round %d: node %d failed (timeout): no reply by the end of the "
                    "round (round-timeout)", server_round, node)
            if self.failure(record, server_round, reply.kind, seen=reply.from_node):
                log(WARNING, "round %d: node %d benched after %d consecutive failures; on "
                    "probation again in round %d", server_round, node, record.consecutive,
                    self.back_in(record))
        return timeouts

    def report(self, health: Health) -> dict[str, dict[str, Any]]:
        """``node_health.json``: every node's record, and when a benched one comes back."""
        out = health.to_dict()
        for node in health.in_state(BENCHED):
            out[str(node)]["probation-in-round"] = self.back_in(health.nodes[node])
        return out
