"""The node's side of SecAgg+ on the Message API: a ClientApp mod.

A TRAIN message that carries Flower's SecAgg+ configs record (``secaggplus_configs``) is
one stage of the protocol; any other message passes through. The node's protocol state
lives in ``context.state`` (Flower's ``SecAggPlusState``), which persists per node within
a run, so a deployment's one-process-per-message ClientApp works too.

Stages (the server's order, ``fedapp.secagg.server``):

1. ``setup``: two key pairs (Flower's ``_setup``: ``generate_key_pairs``). Only when the
   server asks: a node that completed the previous round's unmask stage keeps its key
   pairs for up to ``secagg-key-rounds`` rounds (``enter_stage``);
2. ``share_keys``: a fresh private mask seed; Shamir shares of it and of the first private
   key, each encrypted for its neighbour with a key agreed by ECDH (Flower's
   ``_share_keys``: ``create_shares``, ``generate_shared_key``, Fernet ``encrypt``). The
   message's ``secagg-round`` record names the round (pairwise masks are bound to it, and
   a node with kept keys refuses a round that is not after its last one) and the round's
   parameters (bucket size, threshold, ranges);
3. ``collect_masked_vectors``: the ClientApp trains as usual (``call_next``); the update
   ``w_local - w_global`` is clipped to ``clip_norm``, quantized, masked
   (``fedapp.secagg.masking``) and sent instead of the weights. The shares received are
   decrypted and checked (Fernet authenticates them: a tampered share fails here, and the
   node answers with a ``SECAGG_ERROR`` reply naming the sender);
4. ``unmask``: the shares the server asks for: the private mask seed share of each node
   it says contributed, the key share of each node it says dropped; a node named in both
   lists is refused (that would give the server both secrets).

Flower's own ``secaggplus_mod`` does not fit this ClientApp: it reads the reply as a
legacy ``FitRes``, masks the weights (not the update) multiplied by the self-reported
``num-examples`` (a node could buy weight, and its sum could wrap around), clips each
coordinate instead of the norm, and expands masks with a numpy generator seeded by 32
bits. Its stages 1, 2 and its state and checks are reused as they are.
"""

from __future__ import annotations

from typing import cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.client.mod.secure_aggregation.secaggplus_mod import (
    SecAggPlusState,
    _setup,
    _share_keys,
    check_configs,
    check_stage,
)
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_separate
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedapp.config import run_config_of
from fedapp.node_errors import SECAGG_ERROR, error_reply
from fedapp.secagg import masking
from fedapp.updates import update_of

MASKED_KEY = "secagg-masked"  # the reply's ArrayRecord: one flat array in Z_M
ROUND_KEY = "secagg-round"  # share_keys: the round and its setup parameters (ConfigRecord)
NODE_KEY = "secagg-node"  # context.state: the round this node's shares and masks are for


class ProtocolError(ValueError):
    """A stage cannot go on (a share failed authentication, a bad request)."""


def secagg_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Run the SecAgg+ stage ``msg`` asks for (module docstring); other messages pass.
    A protocol failure is a ``SECAGG_ERROR`` reply and resets the node's protocol state;
    a failure of training itself is reported as it would be without the mod."""
    if (msg.metadata.message_type != MessageType.TRAIN
            or RECORD_KEY_CONFIGS not in msg.content.config_records):
        return call_next(msg, context)
    records = context.state.config_records
    state = SecAggPlusState(**records.get(RECORD_KEY_STATE, ConfigRecord({})))
    configs = ConfigRecord(dict(msg.content.config_records[RECORD_KEY_CONFIGS]))
    if NODE_KEY not in records:
        records[NODE_KEY] = ConfigRecord({"round": 0})
    node = records[NODE_KEY]
    try:
        enter_stage(state, configs, msg.content.config_records.get(ROUND_KEY), node)
    except (ValueError, KeyError, TypeError) as exc:
        return _failed(msg, records, exc)
    trained = None
    if state.current_stage == Stage.COLLECT_MASKED_VECTORS:
        trained = call_next(msg, context)  # train as usual, outside the protocol's errors
        if trained.has_error():
            records[RECORD_KEY_STATE] = ConfigRecord(SecAggPlusState().to_dict())
            return trained
    try:
        noise = dp_share_std(context, state) if trained is not None else 0.0
        reply = _run_stage(state, configs, msg, trained, noise, int(node["round"]))
    except (ValueError, KeyError, TypeError) as exc:  # ProtocolError and Flower's checks
        return _failed(msg, records, exc)
    records[RECORD_KEY_STATE] = ConfigRecord(state.to_dict())
    return reply


def enter_stage(state: SecAggPlusState, configs: ConfigRecord,
                round_record: ConfigRecord | None, node: ConfigRecord) -> None:
    """Check the stage ``configs`` names against ``state`` (Flower's order: setup,
    share_keys, collect_masked_vectors, unmask) and enter it. A share_keys stage needs the
    round record; right after an unmask stage it keeps this node's key pairs and takes the
    round's parameters from the record, for a round after the last one (``node``)."""
    if configs.get(Key.STAGE) == Stage.SHARE_KEYS:
        if round_record is None:
            raise ProtocolError(f"share_keys without the {ROUND_KEY!r} record")
        server_round, last = int(cast(int, round_record["round"])), int(cast(int, node["round"]))
        if state.current_stage != Stage.SETUP:
            if state.current_stage != Stage.UNMASK or not state.sk1:
                raise ProtocolError("no key pairs kept from a completed round (this node's "
                                    "protocol state was reset): the server must run setup")
            if server_round <= last:
                raise ProtocolError(f"round {server_round} is not after round {last}: "
                                    "pairwise masks would repeat")
            keep_keys(state, round_record)
        node["round"] = server_round
    check_stage(state.current_stage, configs)
    state.current_stage = cast(str, configs.pop(Key.STAGE))
    check_configs(state.current_stage, configs)


def keep_keys(state: SecAggPlusState, params: ConfigRecord) -> None:
    """Enter a round with the key pairs of an earlier one: Flower's ``_setup`` takes the
    round's parameters and empties the share dictionaries; the key pairs it draws are
    replaced by the kept ones."""
    check_configs(Stage.SETUP, params)
    kept = (state.sk1, state.pk1, state.sk2, state.pk2)
    _setup(state, params)
    state.sk1, state.pk1, state.sk2, state.pk2 = kept
    state.current_stage = Stage.SETUP


def _failed(msg: Message, records: dict, exc: Exception) -> Message:  # type: ignore[type-arg]
    records[RECORD_KEY_STATE] = ConfigRecord(SecAggPlusState().to_dict())  # start over
    return error_reply(msg, SECAGG_ERROR, f"secure aggregation: {exc}")


def _run_stage(state: SecAggPlusState, configs: ConfigRecord, msg: Message,
               trained: Message | None, noise_std: float, server_round: int) -> Message:
    stage = state.current_stage
    if stage == Stage.SETUP:
        state.nid = msg.metadata.dst_node_id
        return _answer(msg, _setup(state, configs))
    if stage == Stage.SHARE_KEYS:
        return _answer(msg, _share_keys(state, configs))
    if stage == Stage.UNMASK:
        return _answer(msg, unmask_shares(state, configs))
    assert trained is not None  # COLLECT_MASKED_VECTORS
    available = receive_shares(state, configs)
    update = update_of(msg.content["arrays"], trained.content["arrays"])
    if isinstance(update, str):
        raise ProtocolError(f"no update to mask: {update}")
    masked = masked_update(state, update, available, np.random.default_rng(),
                           noise_std=noise_std, server_round=server_round)
    content = RecordDict({MASKED_KEY: ArrayRecord({"masked": Array(masked)})})
    for name, record in trained.content.metric_records.items():
        content[name] = record
    return Message(content=content, reply_to=msg)


def dp_share_std(context: Context, state: SecAggPlusState) -> float:
    """This node's noise share under ``dp='distributed'`` (else 0): ``z C / sqrt(t)``, with
    ``t`` the bucket's threshold, the fewest contributors a released sum can have (this
    node refuses to help unmask fewer: ``unmask_shares``)."""
    cfg = run_config_of(context)
    if cfg.dp != "distributed":
        return 0.0
    from fedapp.privacy.distributed import run_noise, share_std

    return share_std(run_noise(cfg, context.state), cfg.dp_max_grad_norm, int(state.threshold))


def _answer(msg: Message, values: dict) -> Message:  # type: ignore[type-arg]
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(values, False)})
    return Message(content=content, reply_to=msg)


def receive_shares(state: SecAggPlusState, configs: ConfigRecord) -> list[int]:
    """Decrypt and check the shares the neighbours sent (Fernet: authenticated); store
    them in ``state``; returns the senders. Raises ``ProtocolError`` naming a sender whose
    share fails authentication or is addressed to another node."""
    ciphertexts = cast(list[bytes], configs[Key.CIPHERTEXT_LIST])
    sources = cast(list[int], configs[Key.SOURCE_LIST])
    if len(ciphertexts) + 1 < state.threshold:
        raise ProtocolError(f"{len(ciphertexts) + 1} share holders, fewer than the "
                            f"threshold {state.threshold}")
    for src, ciphertext in zip(sources, ciphertexts, strict=True):
        if src not in state.ss2_dict:
            raise ProtocolError(f"a share from node {src}, which is not a neighbour")
        try:
            plaintext = decrypt(state.ss2_dict[src], ciphertext)
        except Exception as exc:  # cryptography.fernet.InvalidToken
            raise ProtocolError(f"the share from node {src} failed authentication") from exc
        actual, dst, seed_share, key_share = share_keys_plaintext_separate(plaintext)
        if actual != src or dst != state.nid:
            raise ProtocolError(f"the share relayed as from node {src} to {state.nid} was "
                                f"made by node {actual} for node {dst}")
        state.rd_seed_share_dict[src] = seed_share
        state.sk1_share_dict[src] = key_share
    return list(sources)


def masked_update(state: SecAggPlusState, update: np.ndarray, available: list[int],
                  rng: np.random.Generator, noise_std: float = 0.0, server_round: int = 0
                  ) -> np.ndarray:
    """``update`` clipped to the norm ``state.clipping_range``, quantized to
    ``state.target_range`` levels, masked with the private mask and one pairwise mask per
    available neighbour (bound to ``server_round``), in ``Z_M`` (``M = state.mod_range``),
    in the wire dtype. With
    ``noise_std`` (``dp='distributed'``: this node's noise share) the update is a clipped
    gradient sum: Gaussian noise of that std is added and the result quantized in steps of
    ``masking.dp_unit``, without clipping."""
    bits = int(state.mod_range).bit_length() - 1
    bound, num_levels = float(state.clipping_range), int(state.target_range)
    if noise_std > 0:
        noisy = update.astype(np.float64) + rng.normal(0.0, noise_std, update.size)
        q = masking.quantize_unbounded(noisy, masking.dp_unit(noise_std, bits), rng)
    else:
        q = masking.quantize(masking.clip_to_norm(update, bound), bound, num_levels, rng)
    v = masking.add_mask(masking.to_ring(q, bits), masking.prg(state.rd_seed, q.size, bits),
                         1, bits)
    own_key = bytes_to_private_key(state.sk1)
    for node in available:
        shared = generate_shared_key(own_key, bytes_to_public_key(state.public_keys_dict[node][0]))
        v = masking.add_mask(v, masking.prg(shared, q.size, bits,
                                            masking.round_context(server_round)),
                             masking.pairwise_sign(state.nid, node), bits)
    return v.astype(masking.wire_dtype(bits))


def unmask_shares(state: SecAggPlusState, configs: ConfigRecord) -> dict:  # type: ignore[type-arg]
    """The shares the server asks for (module docstring, stage 4)."""
    active = cast(list[int], configs[Key.ACTIVE_NODE_ID_LIST])
    dead = cast(list[int], configs[Key.DEAD_NODE_ID_LIST])
    if len(active) < state.threshold:
        raise ProtocolError(f"{len(active)} contributors named, fewer than the threshold "
                            f"{state.threshold}: the sum would hide too little")
    both = set(active) & set(dead)
    if both:
        raise ProtocolError(f"nodes {sorted(both)} named both contributing and dropped")
    unknown = (set(active) - set(state.rd_seed_share_dict)) | (
        set(dead) - set(state.sk1_share_dict))
    if unknown:
        raise ProtocolError(f"no shares held for nodes {sorted(unknown)}")
    shares = [state.rd_seed_share_dict[n] for n in active]
    shares += [state.sk1_share_dict[n] for n in dead]
    return {Key.NODE_ID_LIST: active + dead, Key.SHARE_LIST: shares}
