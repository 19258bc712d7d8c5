"""Sampling the round's nodes without stalling when a hospital is down.

Flower's ``sample_nodes`` waits for ``min_available_nodes`` with no timeout: one hospital
going down stops the run until it comes back. ``available_nodes`` waits at most
``timeout`` seconds; after that the round goes on with the nodes that are connected if they
are at least the round's minimum, else it raises ``NotEnoughNodes`` naming what it waited
for. Benched nodes (``fedapp.server.health``) are counted out of the wait: it waits for
``min-available-nodes`` minus the benched ones, among the nodes not benched. ``sample`` then
draws exactly as Flower's FedAvg does (``random.sample`` from Python's global generator), so
a run with every node present and healthy samples the same nodes as before.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection
from logging import INFO, WARNING

from flwr.common.logger import log
from flwr.serverapp import Grid

POLL_SECONDS = 1.0
NAMED = 10  # missing nodes named in a message; more are counted (thousands of hospitals)


class NotEnoughNodes(RuntimeError):
    """Fewer nodes connected than a round needs, after waiting ``wait-timeout``."""


def available_nodes(grid: Grid, wanted: int, needed: int, timeout: float, *,
                    known: Collection[int] = (), what: str = "round",
                    benched: Collection[int] = (),
                    clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """The connected node ids once ``wanted`` are connected, or after ``timeout`` seconds
    if at least ``needed`` are; raises ``NotEnoughNodes`` otherwise. ``known`` are nodes
    seen before: those missing are named in the log. ``benched`` nodes are counted out:
    the wait is for ``wanted - len(benched)`` connected nodes that are not benched (and
    ``needed`` connected in all)."""
    start = clock()
    out = set(benched)
    wanted_ready = max(wanted - len(out), 0)

    def short(nodes: list[int]) -> bool:
        ready = sum(1 for n in nodes if n not in out)
        return ready < wanted_ready or len(nodes) < needed

    nodes = list(grid.get_node_ids())
    while short(nodes) and clock() - start < timeout:
        log(INFO, "%s: waiting for nodes: %d connected (min-available-nodes %d%s), %.0fs of "
            "wait-timeout %.0fs", what, len(nodes), wanted,
            f", {len(out)} benched counted out" if out else "", clock() - start, timeout)
        sleep(min(POLL_SECONDS, max(timeout - (clock() - start), 0.0)))
        nodes = list(grid.get_node_ids())
    waited = clock() - start
    if not short(nodes):
        if waited >= POLL_SECONDS:
            log(INFO, "%s: %d nodes connected after waiting %.0fs", what, len(nodes), waited)
        return nodes
    missing = sorted(set(known) - set(nodes))
    shown = missing if len(missing) <= NAMED else f"{len(missing)} nodes, e.g. {missing[:NAMED]}"
    gone = f"; missing since earlier rounds: {shown}" if missing else ""
    if len(nodes) < needed:
        raise NotEnoughNodes(
            f"{what}: {len(nodes)} nodes connected after waiting {waited:.0f}s (wait-timeout), "
            f"fewer than the {needed} the round needs (min-available-nodes {wanted}){gone}")
    log(WARNING, "%s: waited %.0fs (wait-timeout) for min-available-nodes %d; going on with "
        "the %d connected%s", what, waited, wanted, len(nodes), gone)
    return nodes


def sample(nodes: list[int], fraction: float, minimum: int) -> list[int]:
    """``max(int(len(nodes) * fraction), minimum)`` of ``nodes`` (at most all of them),
    drawn as Flower's FedAvg draws them."""
    size = min(max(int(len(nodes) * fraction), minimum), len(nodes))
    return random.sample(nodes, size)
