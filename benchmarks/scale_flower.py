"""Per-round work that grows with the number of nodes, in this process, for ``scale.py``.

* ``server_sampling_ms``: fedapp's own work per round over N connected node ids;
* ``flower_costs``: what Flower's simulation engine (flwr 1.42, ``flwr.server.superlink.
  fleet.vce.vce_api``) does per node: registering the SuperNodes (``_register_nodes``) and
  their contexts (``_register_node_info_stores``: each node's ``Context`` holds its own run
  config, fused from the app's ``pyproject.toml`` once per node), and one sweep of
  ``add_messages_to_queue``, the thread that hands messages to the Ray actors: every 0.1 s it
  asks the ``InMemoryLinkState`` for each registered node's next message
  (``get_message_ins(node_id, limit=1)``), and each such call checks every message in flight.

These call Flower's internals by their 1.42 names; with another Flower the probe reports
what failed instead of numbers.
"""

from __future__ import annotations

import logging
import random
import time
import tracemalloc
from types import SimpleNamespace
from typing import Any

from common import REPO


def server_sampling_ms(nodes: int, sampled: int, rounds: int = 20) -> float:
    """Median milliseconds of the server's own per-round work over ``nodes`` connected node
    ids: ``RobustStrategy.configure_train`` (the wait check, the health pool, the sample,
    the instructions) with a grid that answers ``nodes`` ids, and each round's outcomes
    recorded in node health (which grows with the nodes seen)."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.supercore.task_identity import TaskIdentity

    from fedapp.config import RunConfig
    from fedapp.server.build import build_strategy
    from fedapp.server.health import Reply

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1  # a ServerApp's
    ids = list(range(2, nodes + 2))
    grid = SimpleNamespace(get_node_ids=lambda: ids)
    cfg = RunConfig(dataset="synthetic", fraction_train=(sampled + 0.5) / nodes,
                    fraction_evaluate=0.0, min_available_nodes=nodes)
    robust, _ = build_strategy(cfg)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # no "Sampled 20 nodes" lines
    arrays = ArrayRecord(torch.nn.Linear(32, 10).state_dict())
    times = []
    for r in range(1, rounds + 1):
        start = time.perf_counter()
        sent = [m.metadata.dst_node_id for m in robust.configure_train(
            r, arrays, ConfigRecord(), grid)]  # type: ignore[arg-type]
        robust.breaker.record_round(robust.state.health, r, sent, {n: Reply() for n in sent})
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def _link_state() -> tuple[Any, Any, Any]:
    """An in-memory LinkState with one run registered, as the simulation builds it."""
    from flwr.proto.task_pb2 import Task  # pylint: disable=no-name-in-module
    from flwr.server.superlink.linkstate import LinkStateFactory
    from flwr.server.superlink.linkstate.in_memory_linkstate import RunRecord
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, NOOP_FEDERATION_ID
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.superlink.federation import NoOpFederationManager

    factory = LinkStateFactory(FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(),
                               ObjectStoreFactory())
    state = factory.state()
    run = Run.create_empty(run_id=7)
    run.primary_task_id, run.federation_id = 9, NOOP_FEDERATION_ID
    state.run_ids[7] = RunRecord(run=run)
    state.task_store[9] = Task(task_id=9, run_id=7)
    return factory, state, run


def flower_costs(nodes: int, in_flight: int, contexts: bool = True) -> dict[str, Any]:
    """Seconds to register ``nodes`` SuperNodes (and their contexts, with this app's
    pyproject), bytes per context, and the milliseconds of one dispatch sweep over them
    with none and with ``in_flight`` messages waiting (the best of 3)."""
    try:
        from flwr.app import Message, RecordDict
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.server.superlink.fleet.vce import vce_api
        from flwr.supercore.task_identity import TaskIdentity
        from flwr.superlink.grid import InMemoryGrid

        factory, state, run = _link_state()
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, SUPERLINK_NODE_ID, 9
        out: dict[str, Any] = {"nodes": nodes, "in-flight": in_flight}
        start = time.perf_counter()
        mapping = vce_api._register_nodes(nodes, factory)
        out["register-nodes-s"] = time.perf_counter() - start
        if contexts:
            start = time.perf_counter()
            vce_api._register_node_info_stores(mapping, run, app_dir=str(REPO))
            out["register-contexts-s"] = time.perf_counter() - start
            tracemalloc.start()  # per node, on a few: the same for every node
            kept = vce_api._register_node_info_stores(dict(list(mapping.items())[:200]), run,
                                                      app_dir=str(REPO))
            out["context-bytes-per-node"] = tracemalloc.get_traced_memory()[0] / len(kept)
            tracemalloc.stop()
            del kept
        ids = list(mapping)

        def sweep() -> float:
            start = time.perf_counter()
            for node in ids:
                state.get_message_ins(node_id=node, limit=1)
            return 1000 * (time.perf_counter() - start)

        out["sweep-empty-ms"] = min(sweep() for _ in range(3))
        grid = InMemoryGrid(state_factory=factory)
        grid.set_run(run)
        grid.push_messages([Message(RecordDict(), dst_node_id=n, message_type="train")
                            for n in random.Random(0).sample(ids, in_flight)])
        out["sweep-in-flight-ms"] = min(sweep() for _ in range(3))
        return out
    except Exception as exc:  # another Flower: say what failed
        return {"nodes": nodes, "error": f"{type(exc).__name__}: {exc}"}
