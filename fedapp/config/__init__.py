"""fedapp's configuration, parsed once and typed.

- ``fedapp.config.run``: ``RunConfig``, every run-config key of the apps (Flower's
  ``--run-config``; defaults in ``pyproject.toml``), with the allowed values;
- ``fedapp.config.node``: ``NodeConfig`` (``--node-config`` of a SuperNode: what differs per
  node) and ``run_config_of`` / ``node_config_of``, the ClientApp's parse-once per message.

They are the only readers of Flower's config mappings; a bad value fails at start-up with
a message naming the key, the value and what is allowed. Cheap to import (no torch): the
ClientApp imports it on every message.
"""

from fedapp.config.node import NodeConfig, node_config_of, run_config_of
from fedapp.config.run import (
    AGGREGATOR_NAMES,
    ATTACK_NAMES,
    BUILTIN_DATASETS,
    COMPRESSION_CODECS,
    DETECTION_MODES,
    DEVICES,
    DP_MODES,
    HF_PREFIX,
    INITIAL_MODELS,
    MODELS,
    PARTITIONERS,
    PERTURBATIONS,
    PREAGGREGATIONS,
    SYNTHETIC,
    TRAIN_METRICS,
    WEIGHTINGS,
    ConfigError,
    RunConfig,
)

__all__ = [
    "AGGREGATOR_NAMES",
    "ATTACK_NAMES",
    "BUILTIN_DATASETS",
    "COMPRESSION_CODECS",
    "DETECTION_MODES",
    "DEVICES",
    "DP_MODES",
    "HF_PREFIX",
    "INITIAL_MODELS",
    "MODELS",
    "PARTITIONERS",
    "PERTURBATIONS",
    "PREAGGREGATIONS",
    "SYNTHETIC",
    "TRAIN_METRICS",
    "WEIGHTINGS",
    "ConfigError",
    "NodeConfig",
    "RunConfig",
    "node_config_of",
    "run_config_of",
]
