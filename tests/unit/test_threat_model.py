"""ThreatModel around Flower's own strategies: exactly the malicious replies are replaced,
Flower accepts them, the aggregate moves as predicted, and nothing runs outside simulation."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Message
from flwr.serverapp.strategy import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, MultiKrum

from fedapp.attacks import ATTACKS, malicious_ids
from fedapp.attacks.simulation import SimulationOnlyError, is_simulation
from fedapp.attacks.threat_model import ThreatModel
from fedapp.config import RunConfig
from fedapp.updates import flatten
from tests.unit.threat_model_rounds import (
    BASE,
    GLOBAL,
    NODES,
    Spy,
    StubGrid,
    global_arrays,
    make,
    reply,
    run_round,
    sim_grid,
)


def test_ipm_replaces_exactly_the_malicious_replies_and_fedavg_follows() -> None:
    model, spy = make("ipm", epsilon=2.0)
    deltas = {n: float(i + 1) for i, n in enumerate(NODES[:5])}
    replies, (arrays, metrics) = run_round(model, sim_grid(), deltas)
    bad = malicious_ids(NODES[:5], 0.4, 3)
    assert model.designated == bad and len(bad) == 2
    honest_mean = np.mean([d for n, d in deltas.items() if n not in bad])
    crafted = -2.0 * honest_mean
    for before, after in zip(replies, spy.seen, strict=True):
        node = before.metadata.src_node_id
        assert after.metadata.src_node_id == node
        if node not in bad:
            assert after is before
            continue
        got = after.content["arrays"]
        assert list(got.keys()) == list(GLOBAL)
        for key, ref in GLOBAL.items():
            assert got[key].dtype == str(ref.dtype) and tuple(got[key].shape) == ref.shape
        np.testing.assert_allclose(flatten(got), BASE + crafted, rtol=1e-6)
        assert dict(after.content["metrics"]) == dict(before.content["metrics"])
    expected = (sum(d for n, d in deltas.items() if n not in bad) + 2 * crafted) / 5
    np.testing.assert_allclose(flatten(arrays), BASE + expected, rtol=1e-5)
    assert metrics is not None and model.history[1].replaced == tuple(
        r.metadata.src_node_id for r in replies if r.metadata.src_node_id in bad)
    assert model.history[1].honest == 3
    # The rows an adaptive attacker's aggregator would see: honest nodes first, then crafted.
    order = [r.metadata.src_node_id for r in replies]
    assert model.row_nodes == ([n for n in order if n not in bad] +
                               [n for n in order if n in bad])
    assert model.malicious_nodes == set(bad)


def test_designation_is_stable_across_rounds() -> None:
    model, spy = make("alie", z=1.0)
    deltas = {n: 0.5 * i for i, n in enumerate(NODES)}
    run_round(model, sim_grid(5), deltas, 1)
    first = set(model.history[1].replaced)
    assert first == model.designated
    # Two nodes join: a fresh choice over 7 nodes picks 3; the designation stays.
    assert len(malicious_ids(NODES, 0.4, 3)) == 3
    run_round(model, sim_grid(7), deltas, 2)
    assert set(model.history[2].replaced) == first == model.designated
    assert len(spy.seen) == 7


@pytest.mark.parametrize("attack,params", [
    ("alie", {}), ("ipm", {"epsilon": 0.5}), ("min-max", {"perturbation": "std"}),
    ("min-sum", {}), ("min-max-noisy", {"noise": 1.0}), ("alie-adaptive", {"aggregator": "median"}),
    ("ipm-adaptive", {"aggregator": "trimmed-mean", "aggregator_params": {"f": 1}}),
    ("mimic", {}), ("fang", {"b": 1.5}), ("alie-noisy-adaptive", {"aggregator": "median"}),
    ("sign-balanced", {"z": 1.0}), ("sleeper", {"aggregator": "median", "delay": 0}),
    ("fang-sign-noise", {"share": 0.5}),
])
@pytest.mark.parametrize("flower", [
    FedAvg, FedMedian, lambda **kw: FedTrimmedAvg(beta=0.2, **kw),
    lambda **kw: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=3, **kw),
    lambda **kw: Bulyan(num_malicious_nodes=1, **kw),
])
def test_flower_strategies_accept_crafted_replies(attack: str, params: dict, flower) -> None:  # type: ignore[no-untyped-def]
    inner = flower(min_available_nodes=7, fraction_evaluate=0.0)
    model = ThreatModel(inner, attack, 1 / 7, seed=0, **params)
    deltas = {n: 0.1 * i - 0.2 for i, n in enumerate(NODES)}
    _, (arrays, _) = run_round(model, sim_grid(7), deltas)
    assert len(model.history[1].replaced) == 1
    assert list(arrays.keys()) == list(GLOBAL)
    assert np.isfinite(flatten(arrays)).all()


def test_partition_metric_designates_partitions_and_is_removed() -> None:
    model, spy = make("ipm", partition_metric="partition-id", epsilon=1.0)
    partition = {n: p for p, n in enumerate([305, 9001, 77, 17, 4242])}  # not node-id order
    deltas = {n: 1.0 for n in NODES[:5]}
    run_round(model, sim_grid(), deltas, **{"partition-id": partition})
    bad = malicious_ids(range(5), 0.4, 3)
    assert model.designated == bad
    assert set(model.history[1].replaced) == {n for n, p in partition.items() if p in bad}
    for msg in spy.seen:
        assert "partition-id" not in msg.content["metrics"]
        assert set(msg.content["metrics"]) == {"num-examples", "train-loss"}


def test_compressed_honest_replies_are_decoded_and_the_crafted_reply_is_dense() -> None:
    from fedapp.compression.codecs import CodecSpec, encode
    from fedapp.compression.mod import compress_content

    class Capture(Spy):
        def aggregate_train(self, server_round: int, replies: Iterable[Message]):  # type: ignore[no-untyped-def]
            self.seen = list(replies)
            return None, None

    model, spy = make("ipm", strategy=Capture(min_available_nodes=5), epsilon=1.0)
    msgs = list(model.configure_train(1, global_arrays(), ConfigRecord(), sim_grid()))
    bad = malicious_ids(NODES[:5], 0.4, 3)
    deltas = {n: np.linspace(-1.0, 1.0, BASE.size, dtype=np.float32) * (i + 1)
              for i, n in enumerate(NODES[:5])}
    replies = []
    for m in msgs:
        dense = reply(m, 0.0)
        encoded = encode(deltas[m.metadata.dst_node_id], CodecSpec("none"))
        replies.append(Message(content=compress_content(dense.content, encoded, 0.0),
                               reply_to=m))
    model.aggregate_train(1, replies)
    crafted = -np.mean([deltas[n] for n in NODES[:5] if n not in bad], axis=0)
    for msg in spy.seen:
        if msg.metadata.src_node_id in bad:
            assert not msg.content.config_records
            np.testing.assert_allclose(flatten(msg.content["arrays"]), BASE + crafted, atol=1e-6)
        else:
            assert "compression" in msg.content.config_records


def test_node_side_attacks_pass_replies_through() -> None:
    model, spy = make("sign-flip")
    replies, _ = run_round(model, sim_grid(), {n: 1.0 for n in NODES[:5]})
    assert all(a is b for a, b in zip(replies, spy.seen, strict=True))
    assert model.history == {}
    assert model.designated == malicious_ids(range(5), 0.4, 3)  # partitions, as the mod picks
    model, spy = make("label-flip", partition_metric="partition-id")
    replies, _ = run_round(model, sim_grid(), {n: 1.0 for n in NODES[:5]},
                           **{"partition-id": {n: p for p, n in enumerate(NODES[:5])}})
    for before, after in zip(replies, spy.seen, strict=True):
        assert dict(after.content["metrics"]) == {"num-examples": 10, "train-loss": 1.0}
        assert flatten(after.content["arrays"]).tolist() == flatten(
            before.content["arrays"]).tolist()
    # The designated partitions' nodes are known to the wrapper (for evaluation only).
    assert model.malicious_nodes == {NODES[p] for p in malicious_ids(range(5), 0.4, 3)}


def test_the_sleeper_gets_the_round_and_wakes_after_its_delay() -> None:
    from fedapp.attacks.evasive import alie_noisy_adaptive, honest_looking
    from fedapp.robust import weighted_mean

    model, spy = make("sleeper", aggregator="fedavg", delay=1)
    deltas = {n: float(i + 1) for i, n in enumerate(NODES[:5])}
    bad = malicious_ids(NODES[:5], 0.4, 3)
    honest = torch.tensor([[deltas[n]] * BASE.size for n in NODES[:5] if n not in bad])
    for server_round, expected in [(1, honest_looking(honest, 2)),
                                   (2, alie_noisy_adaptive(honest, 2, weighted_mean))]:
        run_round(model, sim_grid(), deltas, server_round)
        sent = [flatten(m.content["arrays"]) - BASE for m in spy.seen
                if m.metadata.src_node_id in bad]
        np.testing.assert_allclose(np.stack(sent), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_the_rows_an_adaptive_attacker_hands_on_say_whose_weight_and_where() -> None:
    model, _ = make("ipm", epsilon=1.0)
    deltas = {n: 1.0 for n in NODES[:5]}
    examples = {n: 10 * (i + 1) for i, n in enumerate(NODES[:5])}
    replies, _ = run_round(model, sim_grid(), deltas, **{"num-examples": examples})
    bad = malicious_ids(NODES[:5], 0.4, 3)
    order = [r.metadata.src_node_id for r in replies]
    expected = ([i for i, n in enumerate(order) if n not in bad]
                + [i for i, n in enumerate(order) if n in bad])
    assert model.row_positions == expected
    assert model.row_nodes == [order[i] for i in expected]
    assert model.row_weights == [float(examples[order[i]]) for i in expected]


@pytest.mark.parametrize("attack", sorted(set(ATTACKS) - {"none"}))
def test_every_attack_runs_from_the_run_config(attack: str) -> None:
    from fedapp.robust import weighted_mean

    cfg = RunConfig.from_flower({**RunConfig().to_flower(), "attack": attack,
                                 "attack-scale": 1.5, "attack-fraction": 0.4})
    assert cfg.attack == attack
    inner = Spy(min_available_nodes=5, fraction_evaluate=0.0)
    model = ThreatModel.from_config(inner, cfg, target=weighted_mean,
                                    partition_metric="partition-id")
    partitions = {"partition-id": {n: p for p, n in enumerate(NODES[:5])}}
    deltas = {n: 0.1 * i - 0.2 for i, n in enumerate(NODES[:5])}
    _, (arrays, _) = run_round(model, sim_grid(), deltas, 6, **partitions)
    assert np.isfinite(flatten(arrays)).all()
    replaced = model.history[6].replaced if ATTACKS[attack] == "omniscient" else ()
    assert len(replaced) == (2 if ATTACKS[attack] == "omniscient" else 0)


def test_no_honest_update_leaves_replies_unchanged() -> None:
    model, spy = make("ipm", fraction=1.0)
    replies, _ = run_round(model, sim_grid(), {n: 1.0 for n in NODES[:5]})
    assert all(a is b for a, b in zip(replies, spy.seen, strict=True))
    assert model.history[1].note == "no honest update to use"


@pytest.mark.parametrize("grid", [StubGrid(NODES[:5]), StubGrid(NODES[:5], "flwr-serverapp")])
def test_refuses_outside_simulation_before_sampling(grid: StubGrid) -> None:
    model, spy = make("alie")
    assert not is_simulation(grid)  # type: ignore[arg-type]
    with pytest.raises(SimulationOnlyError, match="simulation only"):
        model.configure_train(1, global_arrays(), ConfigRecord(), grid)  # type: ignore[arg-type]
    assert not spy.configured


def test_the_simulation_engines_grid_is_recognised() -> None:
    from flwr.superlink.grid import InMemoryGrid

    class EngineGrid(InMemoryGrid):
        def __init__(self) -> None:  # no link state needed to test the type check
            pass

    assert is_simulation(EngineGrid())
    assert is_simulation(sim_grid())  # type: ignore[arg-type]


@pytest.mark.parametrize("attack,fraction,params,match", [
    ("none", 0.2, {}, "do not wrap"),
    ("backdoor", 0.2, {}, "not one of"),
    ("ipm", 1.5, {}, "fraction"),
    ("ipm", 0.2, {"z": 1.0}, "bad parameters"),
    ("alie-adaptive", 0.2, {}, "needs aggregator"),
    ("alie-adaptive", 0.2, {"aggregator": "nope"}, "not one of"),
    ("fang", 0.2, {"z": 1.0}, "bad parameters"),
    ("sleeper", 0.2, {"delay": 2}, "needs aggregator"),
    ("sleeper", 0.2, {"aggregator": "median", "server_round": 3}, "the round's"),
    ("scaling", 0.2, {"factor": 10.0}, "runs in the ClientApp"),
])
def test_bad_configurations_fail_at_construction(attack: str, fraction: float, params: dict,
                                                 match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ThreatModel(FedAvg(), attack, fraction, seed=0, **params)
