"""Strategy wrappers: a delegating base, the round recorder, and central DP's accountant.

The strategy stack, outermost first (``fedapp.server.build``):

``RoundRecorder`` -> [``ThreatModel``, simulation only] -> [``CentralDPAccounting``] ->
``RobustStrategy``

Each layer returns the round's ``MetricRecord``, adding its own keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedapp.privacy.central import CentralAccountant
from fedapp.server.state import ServerState


class StrategyWrapper(Strategy):
    """A Strategy that delegates everything to ``strategy``; subclasses override what they
    add (the way Flower's DP wrappers hold the strategy they wrap)."""

    def __init__(self, strategy: Strategy) -> None:
        super().__init__()
        self.strategy = strategy

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)


class RoundRecorder(StrategyWrapper):
    """The outermost layer: stores each round's final train metrics (every wrapper's keys
    included) and the nodes' evaluation metrics as the round's row in ``state``.

    ``offset`` shifts Flower's round numbers: a run resumed after round ``r`` is started
    by Flower at round 1, which is round ``r + 1`` of the run for every layer below (and
    for the nodes, which seed their training by it)."""

    def __init__(self, strategy: Strategy, state: ServerState, offset: int = 0) -> None:
        super().__init__(strategy)
        self.state = state
        self.offset = offset

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_train(server_round + self.offset, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.offset
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if metrics is not None:
            self.state.record_round(server_round, dict(metrics))  # type: ignore[arg-type]
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round + self.offset, arrays, config,
                                                grid)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        """The nodes' weighted evaluation metrics join the round's row."""
        server_round += self.offset
        metrics = self.strategy.aggregate_evaluate(server_round, replies)
        if metrics is not None:
            self.state.record_round(server_round, {k: v for k, v in metrics.items()  # type: ignore[misc]
                                                   if k != "num-examples"})
        return metrics


class CentralDPAccounting(StrategyWrapper):
    """Client-level central DP around a ``RobustStrategy`` whose aggregation is
    ``fedapp.privacy.central.CentralDP`` (the clipped mean plus Gaussian noise, which
    receives the public sample size from the strategy): composes each round that updated
    the model into ``accountant`` (the node sampling rate ``sampled / connected``, taken
    when the round is configured) and adds the epsilon spent so far as ``dp-epsilon``."""

    def __init__(self, strategy: Strategy, accountant: CentralAccountant) -> None:
        super().__init__(strategy)
        self.accountant = accountant
        self._sampling = (0, 0)  # (nodes sampled, nodes connected) this round

    def summary(self) -> None:
        self.strategy.summary()
        log(INFO, "\t└──> Central DP: noise multiplier %s, delta %s, epsilon so far %.3f",
            self.accountant.noise_multiplier, self.accountant.delta, self.accountant.epsilon)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sampling = (len(messages), len(list(grid.get_node_ids())))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        if metrics is not None and not metrics.get("kept-previous"):
            metrics["dp-epsilon"] = self.accountant.step(*self._sampling)
        return arrays, metrics
