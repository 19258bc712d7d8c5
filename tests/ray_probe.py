"""Read a Ray cluster's GCS from a short-lived driver (``python -m tests.ray_probe ADDRESS ...``).

Ray's state API (``ray.util.state``, ``ray list actors``) asks the dashboard, which needs
``ray[default]``'s extra packages; ``flwr[simulation]`` installs plain ``ray``, so these
machines have no dashboard. The probe joins the cluster as a driver instead and reads the
GCS tables: ``ray.nodes()`` (public) and the actor table (``ray._private.state.actors()``,
which ``ray list actors`` reads through the dashboard). It prints one JSON document.

- ``nodes N TIMEOUT``: wait until N nodes are alive (at most TIMEOUT seconds), print
  ``{node id: resources}`` of the alive nodes;
- ``actors``: print every actor the cluster has seen, dead ones included:
  ``[{"class", "node", "state", "job"}]``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import ray


def alive_nodes() -> dict[str, dict[str, float]]:
    return {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}


def wait_for_nodes(count: int, timeout: float) -> dict[str, dict[str, float]]:
    deadline = time.monotonic() + timeout
    nodes = alive_nodes()
    while len(nodes) < count and time.monotonic() < deadline:
        time.sleep(0.5)
        nodes = alive_nodes()
    return nodes


def actors() -> list[dict[str, Any]]:
    from ray._private import state

    return [{"class": a["ActorClassName"], "node": a["Address"]["NodeID"], "state": a["State"],
             "job": a["JobID"]} for a in state.actors().values()]


def main(argv: list[str]) -> None:
    address, what = argv[0], argv[1]
    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        if what == "nodes":
            result: object = wait_for_nodes(int(argv[2]), float(argv[3]))
        elif what == "actors":
            result = actors()
        else:
            raise SystemExit(f"unknown probe {what!r}: nodes N TIMEOUT | actors")
        print(json.dumps(result))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
