"""From the run config to the server: its state, the strategy stack, the initial model.

``build_strategy(cfg, state)`` creates (or continues from) one ``ServerState`` and builds
around it, outermost first:

``RoundRecorder`` -> [``ThreatModel``: ``attack != 'none'``, simulation only] ->
[``CentralDPAccounting``: ``dp = 'central'`` | ``SecureAggregation``: ``secagg``] ->
``RobustStrategy``

with the ``Aggregation`` (``AggregationPipeline``, or ``CentralDP`` for central DP) and the
``Screen`` bound from the config. ``adaptive_target`` is what an adaptive attacker searches
against: the whole defense as it stands.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from logging import INFO, WARNING

import torch
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedapp.attacks.simulation import is_simulation
from fedapp.config import RunConfig
from fedapp.data.loading import dataset_spec, load_server_test
from fedapp.data.specs import Split
from fedapp.privacy import CentralAccountant, CentralDP, calibrate_noise
from fedapp.robust import AggregationResult
from fedapp.server.pipeline import Aggregation, AggregationPipeline
from fedapp.server.screen import Reputation
from fedapp.server.state import ServerState
from fedapp.server.strategy import RobustStrategy
from fedapp.server.wrappers import CentralDPAccounting, RoundRecorder
from fedapp.tracking import registry


def fresh_state(cfg: RunConfig) -> ServerState:
    """The state of a server that has run no round yet."""
    return ServerState(reputation=Reputation(memory=cfg.reputation_memory,
                                             threshold=cfg.detect_cosine))


def central_dp(cfg: RunConfig, state: ServerState) -> CentralDP:
    """Central DP's mechanism, with its noise calibrated to the run's budget; its generator
    and its accountant live in ``state``."""
    z = cfg.dp_noise or calibrate_noise(cfg.dp_epsilon, cfg.dp_delta, cfg.fraction_train,
                                        cfg.num_server_rounds)
    mechanism = CentralDP(cfg.dp_clip, z, generator=state.noise)
    state.noise = mechanism.generator
    if state.dp_accountant is None:
        state.dp_accountant = CentralAccountant(z, cfg.dp_delta)
    return mechanism


def build_strategy(cfg: RunConfig, state: ServerState | None = None, *, round_offset: int = 0
                   ) -> tuple[RobustStrategy, Strategy]:
    """The robust strategy, and the stack that runs the rounds (module docstring), around
    ``state`` (default: ``fresh_state(cfg)``). ``round_offset``: Flower's round 1 is round
    ``round_offset + 1`` of the run (a resume after that round)."""
    state = state or fresh_state(cfg)
    aggregation: Aggregation = (central_dp(cfg, state) if cfg.dp == "central"
                                else AggregationPipeline.from_config(cfg, state.pipeline))
    robust = RobustStrategy(
        aggregation=aggregation,
        state=state,
        server_lr=cfg.server_lr,
        detection=cfg.anomaly_detection,
        norm_threshold=cfg.detect_norm_z,
        cosine_threshold=cfg.detect_cosine,
        sign_threshold=cfg.detect_sign_skew,
        duplicate_threshold=cfg.detect_duplicate,
        cosine_spread=cfg.detect_cosine_spread,
        cluster_threshold=cfg.detect_cluster,
        sign_copies=cfg.detect_sign_copies,
        cosine_floor=cfg.cosine_floor,
        floor_rounds=cfg.reputation_warmup,
        exclusion_min_share=cfg.exclusion_min_share,
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=cfg.min_train_nodes,
        min_evaluate_nodes=1,
        min_available_nodes=cfg.min_available_nodes,
        wait_timeout=cfg.wait_timeout,
        weight_cap=cfg.weight_cap,
        health_max_failures=cfg.health_max_failures,
        health_cooldown=cfg.health_cooldown,
    )
    stack: Strategy = robust
    if state.dp_accountant is not None and cfg.dp == "central":
        stack = CentralDPAccounting(stack, state.dp_accountant)
    if cfg.secagg:  # the config refuses central DP and server-side attacks with it
        from fedapp.secagg.bucket import settings_of
        from fedapp.secagg.server import SecureAggregation

        stack = SecureAggregation(robust, settings_of(cfg), timeout=cfg.round_timeout)
    if cfg.attack != "none":
        from fedapp.attacks.mod import PARTITION_METRIC
        from fedapp.attacks.threat_model import ThreatModel

        threats: list[ThreatModel] = []  # the wrapper, once built, says whose row is whose
        target = adaptive_target(cfg, robust, lambda: threats[0].row_nodes,
                                 row_weights=lambda: threats[0].row_weights,
                                 row_positions=lambda: threats[0].row_positions)
        threats.append(ThreatModel.from_config(stack, cfg, target=target,
                                               partition_metric=PARTITION_METRIC))
        stack = threats[0]
    return robust, RoundRecorder(stack, state, offset=round_offset)


def adaptive_target(cfg: RunConfig, robust: RobustStrategy,
                    row_nodes: Callable[[], list[int]], *,
                    row_weights: Callable[[], list[float]] | None = None,
                    row_positions: Callable[[], list[int]] | None = None
                    ) -> Callable[..., AggregationResult]:
    """The rule an adaptive attacker searches against: the whole defense as it stands, i.e.
    ``robust.screen`` (detection with the current reputations, exclusion; no state changes)
    and then a deep copy of the strategy's own ``robust.aggregation`` with its current state
    (centered clipping's center, the call count that seeds bucketing; central DP's noise
    generator too, so that attacker foresees the noise: an upper bound). Every trial thus
    aggregates as the real round will, and the real state is never touched.

    For the rows it is handed (``ThreatModel``: honest rows first, then the crafted ones)
    ``row_nodes()`` gives each row's node (the reputations are per node), ``row_weights()``
    each row's reported ``num-examples`` (default: uniform, for a caller that does not know
    them) and ``row_positions()`` each row's position among the round's replies: the rows are
    put in that order first, the order the strategy sees them in (bucketing's shuffle
    depends on it). ``num_sampled`` is the number of rows (the round's sample when no
    sampled node failed)."""

    def rule(updates: torch.Tensor) -> AggregationResult:
        nodes = list(row_nodes())
        n = len(updates)
        if len(nodes) != n:
            raise RuntimeError(f"{len(nodes)} node ids for {n} rows")
        weights = (torch.ones(n, dtype=torch.float64) if row_weights is None
                   else torch.tensor(row_weights(), dtype=torch.float64))
        if row_positions is not None:
            order = sorted(range(n), key=row_positions().__getitem__)
            if order != list(range(n)):
                index = torch.tensor(order)
                updates, weights = updates[index], weights[index]
                nodes = [nodes[i] for i in order]
        if robust.detection == "off":
            x, w = updates, weights
        else:
            x, w, _, _ = robust.screen(nodes, updates, weights, record=False)
        aggregation = copy.deepcopy(robust.aggregation)  # its state as it stands, not shared
        return aggregation(x, w, num_replies=n, num_sampled=n)

    rule.__name__ = f"defense ({cfg.anomaly_detection} + {cfg.aggregator})"
    return rule


def server_test_set(cfg: RunConfig, grid: Grid) -> Split | None:
    """What the server evaluates on: ``server-test-path`` if set (the operator's file, the
    hospitals' schema); else, in simulation, the built-in held-out split (no partition holds
    its rows); else (a deployment without a test file) nothing: the built-in split may be
    in a hospital's file, so the rounds report the nodes' federated evaluation instead."""
    if cfg.server_test_path:
        from fedapp.data.local import load_table

        return load_table(cfg.server_test_path, cfg.label_column, dataset_spec(cfg),
                          cache=False)
    if is_simulation(grid):
        return load_server_test(cfg)
    log(WARNING, "[fedapp] no server-test-path in a deployment: the server does not evaluate; "
        "the rounds report the nodes' federated evaluation (set server-test-path to a file "
        "no hospital trains on)")
    return None


def load_champion(model: torch.nn.Module, tracking_uri: str, name: str) -> None:
    """``initial-model=champion``: start from the registry's champion, if there is one."""
    path = registry.champion_state_dict_path(tracking_uri, name)
    if path is None:
        log(WARNING, "[fedapp] no champion of %s: starting from a fresh model", name)
        return
    try:
        model.load_state_dict(torch.load(path, weights_only=True))
    except RuntimeError as exc:
        raise RuntimeError(f"the champion of {name!r} does not fit the configured "
                           f"{type(model).__name__}: {exc}") from exc
    log(INFO, "[fedapp] starting from the champion of %s", name)
