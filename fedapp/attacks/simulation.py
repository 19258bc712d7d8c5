"""Is this ServerApp running on Flower's simulation engine? Attacks refuse to run elsewhere.

In flwr 1.41/1.42 the simulation runtime hands the ServerApp an ``InMemoryGrid`` (both
``flwr run`` with a simulation federation and the legacy ``run_simulation``), while a
deployed ServerApp (``flwr-serverapp``) gets an ``HttpGrid``; as a second signal, a run
started on a simulation federation has ``grid.run.primary_task_type ==
"flwr-simulation"``.
"""

from __future__ import annotations

import sys

from flwr.serverapp import Grid

IN_MEMORY_GRID_MODULE = "flwr.superlink.grid.inmemory_grid"
SIMULATION_TASK_TYPE = "flwr-simulation"  # flwr.supercore.constant.TaskType.SIMULATION


class SimulationOnlyError(RuntimeError):
    """An attack was configured outside Flower's simulation engine."""


def is_simulation(grid: Grid) -> bool:
    """True when ``grid`` is the simulation engine's (see the module docstring).

    ``InMemoryGrid`` is looked up in ``sys.modules`` rather than imported (its
    import pulls the whole link state, ~3 s): an instance implies a loaded module.
    """
    module = sys.modules.get(IN_MEMORY_GRID_MODULE)
    if module is not None and isinstance(grid, module.InMemoryGrid):
        return True
    try:
        task_type = grid.run.primary_task_type
    except Exception:  # a Grid without run info (a stub, an unset run) is not a simulation
        return False
    return str(task_type) == SIMULATION_TASK_TYPE
