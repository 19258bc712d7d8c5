"""The Hydra entry of ``python -m fedapp.sweep [-m] [overrides]``; see ``fedapp.sweep``."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fedapp.sweep.jobs import run_job


# config_path is relative to this file: fedapp/sweep/ -> the repository's conf/.
@hydra.main(config_path="../../conf", config_name="config", version_base=None)
def main(cfg: DictConfig) -> float:
    result = run_job(cfg)
    print(f"{result['overrides']}: run {result['run-id']} {result['status']}, final accuracy "
          f"{result['final-accuracy']:.4f}, job {result['job-seconds']:.1f}s "
          f"(Flower run {result['flower-run-seconds']:.1f}s)")
    return float(result["final-accuracy"])


if __name__ == "__main__":
    main()
