"""The server's last step of SecAgg+: from masked vectors and Shamir shares to a bucket sum.

Pure (no Grid): ``fedapp.secagg.server`` collects the inputs, a test feeds them directly.

For a bucket whose contributors ``A`` sent masked vectors ``y_a`` and whose nodes ``D``
shared keys but sent no (usable) vector:

    sum = sum_a y_a - sum_a PRG(b_a) - sum_{d in D} sum_{a in A, a ~ d} sign(a, d) PRG(s_ad)

in ``Z_M``, where ``b_a`` (private mask seed) and ``sk_d`` (pairwise key of ``d``, giving
``s_ad`` by ECDH with ``a``'s public key) are recovered from at least ``t`` Shamir shares
(Flower's ``combine_shares``). With more than ``t`` shares, two different ``t``-subsets
must give the same secret: a tampered share is caught there. The decoded sum must pass
``masking.sum_bound_ok``; a bucket that fails anything is left out with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fedapp.secagg import masking


class UnmaskFailed(ValueError):
    """The bucket's sum cannot be recovered (the reason names the node or the check)."""


@dataclass(frozen=True)
class Encoding:
    """How the bucket's nodes encoded their updates (``fedapp.secagg.masking``)."""

    bits: int
    clip_norm: float
    num_levels: int
    dp_unit: float = 0.0  # dp='distributed': the quantization step of noisy sums (unbounded)
    mask_round: int = 0  # the round the pairwise masks are bound to (masking.round_context)


def reconstruct(shares: Sequence[bytes], t: int, what: str) -> bytes:
    """The secret behind ``shares`` (at least ``t``); with more than ``t``, the first and
    the last ``t`` must agree. Raises ``UnmaskFailed`` naming ``what``."""
    if len(shares) < t:
        raise UnmaskFailed(f"{what}: {len(shares)} shares, fewer than the threshold {t}")
    try:
        secret = combine_shares(list(shares[:t]))
        if len(shares) > t and combine_shares(list(shares[-t:])) != secret:
            raise UnmaskFailed(f"{what}: the shares disagree (a share was tampered with)")
    except ValueError as exc:  # bad padding: a share was tampered with
        if isinstance(exc, UnmaskFailed):
            raise
        raise UnmaskFailed(f"{what}: the shares do not combine ({exc})") from exc
    return secret


def bucket_sum(masked: Mapping[int, np.ndarray], dropped: Sequence[int],
               graph: Mapping[int, Sequence[int]], public_keys: Mapping[int, bytes],
               seed_shares: Mapping[int, Sequence[bytes]],
               key_shares: Mapping[int, Sequence[bytes]], t: int, enc: Encoding
               ) -> np.ndarray:
    """The decoded, signed integer sum of the contributors' quantized updates (module
    docstring). ``masked``: contributor -> its masked vector; ``dropped``: nodes that
    shared keys but contributed nothing; ``graph``: each node's neighbours (itself
    included); ``public_keys``: each node's first public key; ``seed_shares`` /
    ``key_shares``: the shares the live nodes returned, per contributor / dropped node.
    Raises ``UnmaskFailed``."""
    if len(masked) < t:
        raise UnmaskFailed(f"{len(masked)} contributors, fewer than the threshold {t}")
    sizes = {v.size for v in masked.values()}
    if len(sizes) != 1:
        raise UnmaskFailed(f"masked vectors of different sizes {sorted(sizes)}")
    size, bits = sizes.pop(), enc.bits
    total = np.zeros(size, dtype=np.uint64)
    for node, vector in masked.items():
        total = masking.add_mask(total, np.asarray(vector, dtype=np.uint64), 1, bits)
        seed = reconstruct(seed_shares.get(node, ()), t, f"node {node}'s mask seed")
        total = masking.add_mask(total, masking.prg(seed, size, bits), -1, bits)
    for node in dropped:
        partners = [a for a in graph.get(node, ()) if a in masked and a != node]
        if not partners:
            continue
        key = bytes_to_private_key(reconstruct(key_shares.get(node, ()), t,
                                               f"dropped node {node}'s key"))
        for a in partners:
            shared = generate_shared_key(key, bytes_to_public_key(public_keys[a]))
            mask = masking.prg(shared, size, bits, masking.round_context(enc.mask_round))
            total = masking.add_mask(total, mask, -masking.pairwise_sign(a, node), bits)
    signed = masking.centered(total, bits)
    reason = (masking.sum_bound_ok(signed, len(masked), enc.clip_norm, enc.num_levels)
              if not enc.dp_unit else None)
    if reason:
        raise UnmaskFailed(f"the sum fails its bound: {reason}")
    return signed
