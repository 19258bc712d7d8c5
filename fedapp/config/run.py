"""The run config: one typed, validated object for both apps.

Flower's run config (``[tool.flwr.app.config]`` in pyproject.toml, overridden by
``flwr run . --run-config "k=v ..."``) is a flat mapping of kebab-case keys.
``RunConfig.from_flower`` turns it into a frozen dataclass once, at start-up, on
each side, and fails with one message that names every bad key, its value and
what is allowed. Nothing else in the code reads ``context.run_config[...]``.

This module must stay cheap to import: the ClientApp imports it on every message.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedapp.config.checks import cross_checks

BUILTIN_DATASETS = ("digits", "breast-cancer")
SYNTHETIC = "synthetic"  # generated per node (fedapp.data.synthetic)
HF_PREFIX = "hf:"
PARTITIONERS = ("iid", "dirichlet", "shard")
MODELS = ("auto", "mlp", "cnn")
# Where local training and evaluation run (fedapp.device): auto = CUDA when available.
DEVICES = ("auto", "cpu", "cuda")
# Names of the aggregation rules. Kept here (not imported from fedapp.robust) so
# that parsing the config never imports torch; a test checks the two agree.
AGGREGATOR_NAMES = (
    "fedavg", "krum", "multikrum", "median", "trimmed-mean", "geomed", "centered-clipping",
    "spectral",
)
WEIGHTINGS = ("capped", "num-examples", "uniform")
DETECTION_MODES = ("off", "flag", "exclude")
# Attack names (fedapp.attacks.ATTACKS; a test checks they agree). Simulation only.
ATTACK_NAMES = (
    "none", "label-flip", "sign-flip", "gaussian", "scaling", "alie", "ipm", "min-max",
    "min-sum", "min-max-noisy", "alie-adaptive", "ipm-adaptive", "label-flip-inflated",
    "mimic", "fang", "alie-noisy-adaptive", "sign-balanced", "sleeper", "fang-sign-noise",
)
PERTURBATIONS = ("unit", "sign", "std")
INITIAL_MODELS = ("fresh", "champion")
DP_MODES = ("off", "local", "central", "distributed")
PREAGGREGATIONS = ("none", "bucketing", "nnm")
TRAIN_METRICS = ("send", "none")
COMPRESSION_CODECS = ("off", "fp16", "qsgd", "topk", "topk-qsgd")


class ConfigError(ValueError):
    """A run or node config key has a missing, mistyped or disallowed value."""


def _key(name: str, **rules: Any) -> Any:
    """Field metadata: the kebab-case key and its validation rules."""
    return {"key": name, **rules}


@dataclass(frozen=True)
class RunConfig:
    """Every run-config key of the apps, typed. Defaults equal pyproject.toml's."""

    num_server_rounds: int = field(default=10, metadata=_key("num-server-rounds", min=1))
    fraction_train: float = field(default=1.0, metadata=_key("fraction-train", min=0.0, max=1.0))
    fraction_evaluate: float = field(
        default=0.5, metadata=_key("fraction-evaluate", min=0.0, max=1.0)
    )
    min_train_nodes: int = field(default=2, metadata=_key("min-train-nodes", min=1))
    min_available_nodes: int = field(default=2, metadata=_key("min-available-nodes", min=1))
    round_timeout: float = field(default=600.0, metadata=_key("round-timeout", min=1.0))
    # Seconds a round waits for min-available-nodes; then it runs with the nodes connected
    # if they are at least min-train-nodes, else the run stops with an error.
    wait_timeout: float = field(default=300.0, metadata=_key("wait-timeout", min=1.0))
    # Node health (fedapp.server.health): a node with this many consecutive failures (error
    # reply, rejected reply, no reply by round-timeout) is left out of sampling for
    # health-cooldown rounds, then sampled again on probation; 0 turns it off.
    health_max_failures: int = field(default=3, metadata=_key("health-max-failures", min=0))
    health_cooldown: int = field(default=5, metadata=_key("health-cooldown", min=1))
    local_epochs: int = field(default=3, metadata=_key("local-epochs", min=1))
    batch_size: int = field(default=32, metadata=_key("batch-size", min=1))
    learning_rate: float = field(default=0.05, metadata=_key("learning-rate", min=0.0, max=10.0))
    server_lr: float = field(default=1.0, metadata=_key("server-lr", min=0.0, max=10.0))
    # Defaults of the aggregation block: the recommended robust setting (docs/robustness.md).
    aggregator: str = field(
        default="fedavg", metadata=_key("aggregator", choices=AGGREGATOR_NAMES)
    )
    # Robust aggregation (fedapp.server.pipeline): rule parameters, weights, pre-aggregation.
    aggregator_f: int = field(default=0, metadata=_key("aggregator-f", min=0))
    # f as a fraction of the updates that reach the rule each round (floor(b * n)): follows
    # the federation's size and dropouts. A positive aggregator-f takes precedence.
    byzantine_fraction: float = field(
        default=0.2, metadata=_key("byzantine-fraction", min=0.0, max=0.45)
    )
    weighting: str = field(default="capped", metadata=_key("weighting", choices=WEIGHTINGS))
    weight_cap: float = field(default=2.0, metadata=_key("weight-cap", min=1.0))
    clip_norm: float = field(default=0.0, metadata=_key("clip-norm", min=0.0))
    preaggregation: str = field(
        default="none", metadata=_key("preaggregation", choices=PREAGGREGATIONS)
    )
    bucket_size: int = field(default=2, metadata=_key("bucket-size", min=1))
    clipping_tau: float = field(default=1.0, metadata=_key("clipping-tau", min=1e-9))
    # Anomaly detection (fedapp.server.screen): off, flag (report), exclude.
    anomaly_detection: str = field(
        default="exclude", metadata=_key("anomaly-detection", choices=DETECTION_MODES)
    )
    detect_norm_z: float = field(default=3.5, metadata=_key("detect-norm-z", min=0.0))
    detect_cosine: float = field(default=0.0, metadata=_key("detect-cosine", min=-1.0, max=1.0))
    detect_sign_skew: float = field(default=0.5, metadata=_key("detect-sign-skew", min=0.0,
                                                                   max=1.0))
    detect_duplicate: float = field(default=0.1, metadata=_key("detect-duplicate", min=0.0,
                                                                  max=1.0))
    # The cosine check also needs a node this many robust stds below the round's median.
    detect_cosine_spread: float = field(default=3.0,
                                        metadata=_key("detect-cosine-spread", min=0.0))
    # Cluster check (fedapp.robust.collusion): noisy copies of one update; 0 turns it off.
    detect_cluster: float = field(default=0.1, metadata=_key("detect-cluster", min=0.0,
                                                              max=1.0))
    # The copy check also on sign disagreement (collusion.sign_copy_ratio; Fang's attack).
    detect_sign_copies: bool = field(default=True, metadata=_key("detect-sign-copies"))
    reputation_memory: float = field(
        default=0.9, metadata=_key("reputation-memory", min=0.0, max=0.999)
    )
    # A reputation below this after reputation-warmup rounds is flagged whatever the
    # round's spread (detection_report.reputation_floor); -1 turns the floor off.
    detect_cosine_floor: float = field(default=-0.05,
                                       metadata=_key("detect-cosine-floor", min=-1.0, max=1.0))
    reputation_warmup: int = field(default=3, metadata=_key("reputation-warmup", min=1))
    # Fewer flagged updates than this share of the round are kept, not excluded
    # (fedapp.server.screen.tolerated); 0 excludes every flagged update.
    exclusion_min_share: float = field(default=0.06, metadata=_key("exclusion-min-share",
                                                                   min=0.0, max=0.49))
    # Attack simulation (fedapp.attacks): simulation only.
    attack: str = field(default="none", metadata=_key("attack", choices=ATTACK_NAMES))
    attack_fraction: float = field(
        default=0.2, metadata=_key("attack-fraction", min=0.0, max=0.5)
    )
    attack_scale: float = field(default=0.0, metadata=_key("attack-scale", min=0.0))
    attack_perturbation: str = field(
        default="unit", metadata=_key("attack-perturbation", choices=PERTURBATIONS)
    )
    # Differential privacy (fedapp.privacy): per-node DP-SGD ("local", Opacus), client-level
    # DP on the server ("central": clipped mean + Gaussian noise), or DP-SGD whose noise is
    # shared among the nodes of each secure sum ("distributed", with secagg).
    dp: str = field(default="off", metadata=_key("dp", choices=DP_MODES))
    dp_epsilon: float = field(default=3.0, metadata=_key("dp-epsilon", min=1e-3))
    dp_delta: float = field(default=1e-5, metadata=_key("dp-delta", min=1e-12, max=0.1))
    dp_max_grad_norm: float = field(default=1.0, metadata=_key("dp-max-grad-norm", min=1e-6))
    dp_clip: float = field(default=1.0, metadata=_key("dp-clip", min=1e-6))
    dp_noise: float = field(default=0.0, metadata=_key("dp-noise", min=0.0))
    # dp='distributed' (fedapp.privacy.distributed; needs secagg): one DP-SGD step per round,
    # each record Poisson-sampled with this rate; noise shares summed securely.
    dp_sample_rate: float = field(default=0.05, metadata=_key("dp-sample-rate", min=1e-6,
                                                              max=1.0))
    # What a node reports with its update besides num-examples (and dp-epsilon): "send" its
    # train loss and accuracy (not covered by DP), "none" nothing more.
    train_metrics: str = field(default="send", metadata=_key("train-metrics",
                                                             choices=TRAIN_METRICS))
    dataset: str = field(default="digits", metadata=_key("dataset"))
    label_column: str = field(default="label", metadata=_key("label-column"))
    partitioner: str = field(
        default="dirichlet", metadata=_key("partitioner", choices=PARTITIONERS)
    )
    dirichlet_alpha: float = field(default=0.5, metadata=_key("dirichlet-alpha", min=1e-3))
    shards_per_node: int = field(default=2, metadata=_key("shards-per-node", min=1))
    test_fraction: float = field(default=0.2, metadata=_key("test-fraction", min=0.05, max=0.5))
    # dataset='synthetic' (fedapp.data.synthetic): each node's rows generated from (seed,
    # partition-id); label skew from partitioner / dirichlet-alpha / shards-per-node.
    synthetic_rows: int = field(default=100, metadata=_key("synthetic-rows", min=2))
    synthetic_rows_spread: float = field(default=0.5, metadata=_key("synthetic-rows-spread",
                                                                    min=0.0, max=3.0))
    synthetic_features: int = field(default=32, metadata=_key("synthetic-features", min=1,
                                                              max=4096))
    synthetic_classes: int = field(default=10, metadata=_key("synthetic-classes", min=2,
                                                             max=1000))
    synthetic_feature_shift: float = field(default=0.5,
                                           metadata=_key("synthetic-feature-shift", min=0.0))
    synthetic_model_shift: float = field(default=0.2,
                                         metadata=_key("synthetic-model-shift", min=0.0))
    synthetic_test_rows: int = field(default=2000, metadata=_key("synthetic-test-rows", min=1))
    # The server's test file in a deployment (CSV/Parquet, the hospitals' schema); "" = the
    # built-in held-out split in simulation, no server evaluation in a deployment.
    server_test_path: str = field(default="", metadata=_key("server-test-path"))
    model: str = field(default="auto", metadata=_key("model", choices=MODELS))
    hidden_units: int = field(default=64, metadata=_key("hidden-units", min=1, max=65536))
    # The torch device of local training and evaluation (DP-SGD included) and of the server's
    # evaluation: "auto" (CUDA when available, else CPU), "cpu" (never touches CUDA), or
    # "cuda" (an error naming this key where CUDA is not available). Aggregation stays on CPU.
    device: str = field(default="auto", metadata=_key("device", choices=DEVICES))
    seed: int = field(default=42, metadata=_key("seed", min=0))
    output_dir: str = field(default="~/.fedapp/runs", metadata=_key("output-dir"))
    # Server checkpoints after every round (fedapp.server.checkpoint): the newest N are kept
    # in output-dir/run-<id>/checkpoints (0 = none). resume: '' (off), a checkpoint file or
    # run directory, or 'latest' (the newest run in output-dir with this run config).
    checkpoint_keep: int = field(default=3, metadata=_key("checkpoint-keep", min=0))
    resume: str = field(default="", metadata=_key("resume"))
    # Prometheus metrics of the ServerApp (fedapp.monitoring) at
    # http://metrics-address:metrics-port/metrics; 0 turns them off. On by default so that an
    # operator's scrape config can name a fixed port; loopback by default so that a laptop
    # simulation exposes nothing (containers set metrics-address='0.0.0.0').
    metrics_port: int = field(default=9662, metadata=_key("metrics-port", min=0, max=65535))
    metrics_address: str = field(default="127.0.0.1", metadata=_key("metrics-address"))
    # MLflow tracking and registry (fedapp.tracking, fedapp.tracking.registry).
    tracking: bool = field(default=True, metadata=_key("tracking"))
    tracking_uri: str = field(default="", metadata=_key("tracking-uri"))
    experiment: str = field(default="fedapp", metadata=_key("experiment"))
    parent_run_id: str = field(default="", metadata=_key("parent-run-id"))
    registered_model: str = field(default="", metadata=_key("registered-model"))
    promotion_margin: float = field(
        default=0.0, metadata=_key("promotion-margin", min=0.0, max=1.0)
    )
    initial_model: str = field(
        default="fresh", metadata=_key("initial-model", choices=INITIAL_MODELS)
    )
    # Uplink compression of train replies (fedapp.compression); "off" sends dense arrays.
    compression: str = field(
        default="off", metadata=_key("compression", choices=COMPRESSION_CODECS)
    )
    compression_topk: float = field(
        default=0.01, metadata=_key("compression-topk", min=1e-6, max=1.0)
    )
    compression_bits: int = field(default=8, metadata=_key("compression-bits", min=1, max=8))
    compression_block: int = field(default=0, metadata=_key("compression-block", min=0))
    compression_stochastic: bool = field(
        default=False, metadata=_key("compression-stochastic")
    )
    compression_feedback: bool = field(default=True, metadata=_key("compression-feedback"))
    # Secure aggregation (fedapp.secagg): SecAgg+ inside buckets of secagg-bucket-size nodes,
    # the robust pipeline across the bucket means. secagg-bucket-size >= the round's nodes is
    # plain secure aggregation: one sum, no robustness. Each node clips its update to
    # secagg-clip-norm; secagg-threshold of its share holders must stay; secagg-degree: share
    # holders per node besides itself (0 = its whole bucket); secagg-bits: the ring Z_2^bits;
    # secagg-key-rounds: rounds a node's key pairs serve (1 = fresh keys every round).
    secagg: bool = field(default=False, metadata=_key("secagg"))
    secagg_bucket_size: int = field(default=2, metadata=_key("secagg-bucket-size", min=2))
    secagg_threshold: float = field(default=0.75, metadata=_key("secagg-threshold", min=0.51,
                                                                max=1.0))
    secagg_degree: int = field(default=0, metadata=_key("secagg-degree", min=0))
    secagg_clip_norm: float = field(default=5.0, metadata=_key("secagg-clip-norm", min=1e-6))
    secagg_bits: int = field(default=32, metadata=_key("secagg-bits", min=8, max=32))
    secagg_key_rounds: int = field(default=10, metadata=_key("secagg-key-rounds", min=1))

    def __post_init__(self) -> None:
        errors = [e for f in dataclasses.fields(self) if (e := _check_field(self, f))]
        errors += cross_checks(self)
        if errors:
            raise ConfigError("invalid run config:\n  " + "\n  ".join(errors))

    @property
    def cosine_floor(self) -> float | None:
        """``detect-cosine-floor``, or None when it is -1 (no floor)."""
        return None if self.detect_cosine_floor <= -1.0 else self.detect_cosine_floor

    @property
    def output_path(self) -> str:
        """``output-dir`` with ``~`` expanded: always absolute."""
        return os.path.expanduser(self.output_dir)

    @classmethod
    def from_flower(cls, run_config: Mapping[str, Any]) -> RunConfig:
        """Build from Flower's flat run config; unknown or missing keys are errors."""
        by_key = {f.metadata["key"]: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(run_config) - set(by_key))
        missing = sorted(set(by_key) - set(run_config))
        errors = []
        if unknown:
            errors.append(f"unknown keys {unknown}; allowed keys: {', '.join(sorted(by_key))}")
        if missing:
            errors.append(f"missing keys {missing} (are pyproject.toml defaults complete?)")
        if errors:
            raise ConfigError("invalid run config:\n  " + "\n  ".join(errors))
        return cls(**{by_key[k].name: v for k, v in run_config.items()})

    def to_flower(self) -> dict[str, Any]:
        """The flat kebab-case mapping, as Flower's run config holds it."""
        return {f.metadata["key"]: getattr(self, f.name) for f in dataclasses.fields(self)}


def _check_field(cfg: RunConfig, f: dataclasses.Field[Any]) -> str | None:
    """Type and range check of one field; returns an error message or None."""
    key, value = f.metadata["key"], getattr(cfg, f.name)
    expected = {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
    ok_type = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        object.__setattr__(cfg, f.name, float(value))  # 1 is a fine value for a float key
        value, ok_type = float(value), True
    if not ok_type:
        return f"{key}={value!r} must be of type {expected.__name__}"
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        return f"{key}={value!r} is not one of: {', '.join(choices)}"
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if lo is not None and value < lo:
        return f"{key}={value!r} must be >= {lo}"
    if hi is not None and value > hi:
        return f"{key}={value!r} must be <= {hi}"
    return None
