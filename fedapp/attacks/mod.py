"""Node-side attacks in the ClientApp: simulation only, off unless ``attack`` is set.

``attack_mod`` is a ClientApp mod for the model-poisoning attacks (sign flip, Gaussian
noise, scaling; ``fedapp.attacks.node``): a designated malicious node trains honestly,
then replaces its update ``u = w_local - w_global`` with ``attack(u)`` and replies
``w_global + attack(u)``. It sits *inside* the compression mod (later in the mod list)
so the attack acts on the dense update and compression encodes the poisoned one, as a
real attacker's node would. Label flipping changes the training data instead
(``training_data``, called by the train handler); under ``label-flip-inflated`` the mod
also overstates the reply's ``num-examples`` (``fedapp.attacks.node.inflate_examples``).
Which partitions are malicious is
``malicious_ids(range(num-partitions), attack-fraction, seed)``: the same call the
server-side threat model makes.

Outside simulation (no ``partition-id`` in the node config) a configured attack is
refused with an error reply.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedapp.attacks import ATTACKS, attack_params, malicious_ids
from fedapp.config import NodeConfig, RunConfig, node_config_of, run_config_of
from fedapp.data.specs import Split
from fedapp.updates import flatten, unflatten, update_of
from fedapp.validation import WEIGHT_KEY

# Data attacks whose reply also overstates its number of training examples.
INFLATED = ("label-flip-inflated",)
# Train-reply metric by which the server-side threat model finds the malicious
# partitions; it strips the metric before the strategy sees the replies.
PARTITION_METRIC = "partition-id"


class AttackRefused(RuntimeError):
    """An attack was configured on a node that is not part of a simulation."""


def is_malicious(cfg: RunConfig, node: NodeConfig) -> bool:
    """Whether this node plays a Byzantine participant in this run."""
    if cfg.attack == "none":
        return False
    if node.partition_id is None or node.num_partitions is None:
        raise AttackRefused(f"attack={cfg.attack!r} is for simulation only; this node has no "
                            "partition-id (deployment). Set attack='none'.")
    return node.partition_id in malicious_ids(range(node.num_partitions), cfg.attack_fraction,
                                              cfg.seed)


def training_data(cfg: RunConfig, node: NodeConfig, data: Split, num_classes: int) -> Split:
    """The split this node trains on: label-flipped (``fedapp.attacks.node.label_flip``)
    on a malicious node under a ``"data"`` attack, else ``data`` itself."""
    if ATTACKS[cfg.attack] != "data" or not is_malicious(cfg, node):
        return data
    import torch

    from fedapp.attacks.node import label_flip

    return Split(data.x, label_flip(torch.from_numpy(data.y), num_classes).numpy())


def attack_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Replace a malicious node's TRAIN reply update by the configured model attack, or
    overstate its ``num-examples`` under an ``INFLATED`` data attack."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    cfg = run_config_of(context)
    if ATTACKS[cfg.attack] != "model" and cfg.attack not in INFLATED:
        return call_next(msg, context)
    malicious = is_malicious(cfg, node_config_of(context))
    reply = call_next(msg, context)
    if not malicious or reply.has_error():
        return reply
    if cfg.attack in INFLATED:
        return inflate_reply(reply, cfg)
    import torch

    from fedapp.attacks.node import MODEL_ATTACKS

    params = attack_params(cfg)
    if cfg.attack == "gaussian":  # fresh, reproducible noise per (run seed, round)
        server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
        params["generator"] = torch.Generator().manual_seed(cfg.seed * 7919 + server_round)
    sent = msg.content["arrays"]
    update = update_of(sent, reply.content["arrays"])
    if isinstance(update, str):  # not an update of the model: the server will reject it
        return reply
    # Array by array, in the model's order (a noise generator draws in that order).
    sizes = [int(np.prod(a.shape, dtype=np.int64)) for a in sent.values()]
    attack = MODEL_ATTACKS[cfg.attack]
    poisoned = torch.cat([attack(piece, **params)
                          for piece in torch.split(torch.from_numpy(update), sizes)])
    reply.content["arrays"] = unflatten(flatten(sent) + poisoned.numpy(), sent)
    return reply


def inflate_reply(reply: Message, cfg: RunConfig) -> Message:
    """``reply`` with its ``num-examples`` metric replaced by
    ``inflate_examples(num-examples, **attack_params(cfg))`` (the reply is changed)."""
    from fedapp.attacks.node import inflate_examples

    for record in reply.content.metric_records.values():
        value = record.get(WEIGHT_KEY)
        if isinstance(value, int | float) and not isinstance(value, bool):
            record[WEIGHT_KEY] = inflate_examples(int(value), **attack_params(cfg))
    return reply
