"""Node-side attacks in the ClientApp: simulation only, off unless ``attack`` is set.

``attack_mod`` is a ClientApp mod for the model-poisoning attacks (sign flip,
Gaussian noise, scaling): a designated malicious node trains honestly, then
replaces its update ``u = w_local - w_global`` with ``attack(u)`` and replies
``w_global + attack(u)``. It sits *inside* the compression mod (later in the mod
list) so the attack acts on the dense update and compression encodes the
poisoned one, as a real attacker's node would. Label flipping happens in the
train handler (``poisoned_labels``). Which partitions are malicious is
``malicious_ids(range(num-partitions), attack-fraction, seed)``: the same call
the server-side threat model makes.

Outside simulation (no ``partition-id`` in the node config) a configured attack
is refused with an error reply.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from fedapp.config import NodeConfig, RunConfig

MODEL_KINDS = ("sign-flip", "gaussian", "scaling")
# Train-reply metric by which the server-side threat model finds the malicious
# partitions; it strips the metric before the strategy sees the replies.
PARTITION_METRIC = "partition-id"
DEFAULT_SCALE = {"gaussian": 1.0, "scaling": 10.0}


class AttackRefused(RuntimeError):
    """An attack was configured on a node that is not part of a simulation."""


def is_malicious(cfg: RunConfig, node: NodeConfig) -> bool:
    """Whether this node plays a Byzantine participant in this run."""
    if cfg.attack == "none":
        return False
    if node.partition_id is None or node.num_partitions is None:
        raise AttackRefused(f"attack={cfg.attack!r} is for simulation only; this node has no "
                            "partition-id (deployment). Set attack='none'.")
    from fedapp.attacks import malicious_ids

    return node.partition_id in malicious_ids(range(node.num_partitions), cfg.attack_fraction,
                                              cfg.seed)


def attack_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Replace a malicious node's TRAIN reply update by the configured model attack."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    cfg = RunConfig.from_flower(context.run_config)
    if cfg.attack not in MODEL_KINDS:
        return call_next(msg, context)
    malicious = is_malicious(cfg, NodeConfig.from_flower(context.node_config))
    reply = call_next(msg, context)
    if not malicious or reply.has_error():
        return reply
    import torch

    from fedapp.attacks import MODEL_ATTACKS

    scale = cfg.attack_scale or DEFAULT_SCALE.get(cfg.attack, 0.0)
    params: dict[str, object] = {}
    if cfg.attack == "gaussian":
        server_round = int(msg.content["config"]["server-round"])  # type: ignore[arg-type]
        params = {"std": scale,
                  "generator": torch.Generator().manual_seed(cfg.seed * 7919 + server_round)}
    elif cfg.attack == "scaling":
        params = {"factor": scale}
    sent, local = msg.content["arrays"], reply.content["arrays"]
    poisoned = {}
    for key, arr in local.items():
        w_global = torch.from_numpy(sent[key].numpy())
        update = torch.from_numpy(arr.numpy()) - w_global
        poisoned[key] = Array((w_global + MODEL_ATTACKS[cfg.attack](update, **params)).numpy())
    reply.content["arrays"] = ArrayRecord(poisoned)
    return reply
