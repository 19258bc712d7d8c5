"""The arithmetic of secure aggregation: bounded integer encodings and their masks.

Pure functions (numpy and the ``cryptography`` package), used by both sides.

Encoding (Bonawitz et al. 2017, "Practical Secure Aggregation for Privacy-Preserving
Machine Learning", section 3; Bell et al. 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", SecAgg+): every node clips its update to the L2 norm
``C`` (``clip_to_norm``), so that each coordinate lies in ``[-C, C]``, and rounds it
stochastically to an integer in ``[-L, L]`` with step ``C / L`` (``quantize``; unbiased:
``E[q] = x L / C``). In the ring ``Z_M`` (``M = 2**bits``) a bucket of ``s`` nodes then
sums to an integer vector in ``[-s L, s L]``; ``levels(bits, s)`` picks the largest ``L``
with ``s L < M / 2``, so the sum never wraps around and ``centered`` decodes it exactly.

Masks: a node adds its private mask ``PRG(b_i)`` and, for every neighbour ``j``, the
pairwise mask ``+PRG(s_ij)`` if ``i > j`` else ``-PRG(s_ij)``; pairwise masks cancel in
the sum, private masks are removed by the server after it reconstructs ``b_i`` from
Shamir shares. ``prg`` expands a 32-byte secret with ChaCha20 (``cryptography``), keyed
through HKDF-SHA256: a cryptographic generator, unlike a numpy generator seeded with 32
bits (which a server could search). A node's key pairs may serve several rounds
(``secagg-key-rounds``), so a pairwise mask is bound to its round (``round_context`` in
HKDF's info): the same pair of nodes never adds the same mask twice. Private mask seeds
are fresh every round (they are revealed at unmask).
"""

from __future__ import annotations

import math

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MIN_BITS, MAX_BITS = 8, 32
_NONCE = bytes(16)  # each (secret, context) key expands one mask only: a fixed nonce is safe
_INFO = b"fedapp secure aggregation mask v1"


def wire_dtype(bits: int) -> np.dtype:
    """The smallest unsigned dtype that holds ``Z_M`` with ``M = 2**bits``."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits={bits} must be in [{MIN_BITS}, {MAX_BITS}]")
    return np.dtype(np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32)


def levels(bits: int, bucket_size: int) -> int:
    """The largest ``L`` with ``bucket_size * L < 2**(bits - 1)``: a sum of that many
    values in ``[-L, L]`` cannot wrap around in ``Z_M``. Raises ``ValueError`` if
    ``L < 1`` (too few bits for the bucket)."""
    if bucket_size < 1:
        raise ValueError(f"bucket size {bucket_size} must be >= 1")
    wire_dtype(bits)
    top = (2 ** (bits - 1) - 1) // bucket_size
    if top < 1:
        raise ValueError(f"{bits} bits cannot hold the sum of {bucket_size} values")
    return top


def clip_to_norm(x: np.ndarray, bound: float) -> np.ndarray:
    """``x * min(1, bound / ||x||_2)`` in float64 (``x`` itself is not changed)."""
    x = np.asarray(x, dtype=np.float64)
    norm = float(np.linalg.norm(x))
    return x * (bound / norm) if norm > bound else x.copy()


def quantize(x: np.ndarray, bound: float, num_levels: int,
             rng: np.random.Generator) -> np.ndarray:
    """Stochastic rounding of ``x * L / C`` (coordinates in ``[-C, C]``, ``C = bound``)
    to int64 in ``[-L, L]``: ``floor(y) + Bernoulli(y - floor(y))``, unbiased.
    Coordinates outside ``[-C, C]`` are saturated first."""
    y = np.clip(np.asarray(x, dtype=np.float64), -bound, bound) * (num_levels / bound)
    low = np.floor(y)
    q = low + (rng.random(y.shape) < (y - low))
    return np.clip(q, -num_levels, num_levels).astype(np.int64)


def quantize_unbounded(x: np.ndarray, unit: float, rng: np.random.Generator) -> np.ndarray:
    """Stochastic rounding of ``x / unit`` to int64, without clipping: under distributed DP
    (``dp='distributed'``) a node's noisy gradient sum is not bounded, and reducing the sum
    modulo ``M`` is post-processing of the integer sum (it can only cost accuracy, if a
    coordinate ever reached ``M / 2`` units)."""
    y = np.asarray(x, dtype=np.float64) / unit
    low = np.floor(y)
    return (low + (rng.random(y.shape) < (y - low))).astype(np.int64)


def dp_unit(share_std: float, bits: int) -> float:
    """The quantization step under distributed DP: 1/1000 of a node's noise std (32 bits),
    1/10 with fewer bits. Rounding after the noise is then a lattice sample of a density
    whose Gaussian part is 1000 (10) steps wide (analysis: ``docs/privacy.md``)."""
    wire_dtype(bits)
    return share_std / (1000.0 if bits > 16 else 10.0)


def dequantize(q: np.ndarray, bound: float, num_levels: int) -> np.ndarray:
    """Inverse scale of ``quantize`` (float64): a sum of quantized vectors becomes the
    sum of the vectors, up to the rounding (at most ``C / L`` per coordinate each)."""
    return np.asarray(q, dtype=np.float64) * (bound / num_levels)


def to_ring(q: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers to ``Z_M`` (uint64 holding values in ``[0, M)``)."""
    return (np.asarray(q, dtype=np.int64) % (1 << bits)).astype(np.uint64)


def centered(v: np.ndarray, bits: int) -> np.ndarray:
    """``Z_M`` back to signed int64 in ``[-M/2, M/2)``."""
    m = 1 << bits
    v = np.asarray(v, dtype=np.uint64) % np.uint64(m)
    signed = v.astype(np.int64)
    return np.where(signed >= m // 2, signed - m, signed)


def round_context(server_round: int) -> bytes:
    """HKDF info that binds a pairwise mask to ``server_round`` (module docstring)."""
    return f" round {int(server_round)}".encode()


def secret_key(secret: bytes, context: bytes = b"") -> bytes:
    """32 bytes of key material from a secret of at least 128 bits of entropy (a private
    mask seed, or a Flower shared key from ``generate_shared_key``): HKDF-SHA256, with
    ``context`` appended to the info (different contexts give independent keys)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=_INFO + context).derive(secret)


def prg(secret: bytes, size: int, bits: int, context: bytes = b"") -> np.ndarray:
    """``size`` uniform elements of ``Z_M`` (uint64) from ``secret``: the ChaCha20
    keystream under ``secret_key(secret, context)``, read as uint32 and reduced mod
    ``2**bits`` (``M`` divides ``2**32``, so the reduction stays uniform)."""
    wire_dtype(bits)
    key = secret_key(secret, context)
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(4 * size))
    words = np.frombuffer(stream, dtype="<u4").astype(np.uint64)
    return words & np.uint64((1 << bits) - 1)


def pairwise_sign(own: int, other: int) -> int:
    """The sign with which node ``own`` adds the mask it shares with ``other``."""
    return 1 if own > other else -1


def add_mask(v: np.ndarray, mask: np.ndarray, sign: int, bits: int) -> np.ndarray:
    """``v + sign * mask`` in ``Z_M`` (uint64)."""
    m = np.uint64(1 << bits)
    return (v + mask) % m if sign > 0 else (v + (m - mask)) % m


def sum_bound_ok(total: np.ndarray, contributors: int, bound: float, num_levels: int
                 ) -> str | None:
    """Why a decoded bucket sum (signed integers) cannot be a sum of ``contributors``
    clipped, quantized updates, or None if it can. Each coordinate must lie in
    ``[-k L, k L]``, and the L2 norm of the dequantized sum must be at most ``k C`` plus
    the rounding (``k * sqrt(d) * C / L``). A wrapped-around or tampered sum (for
    instance a wrong mask: uniform noise in ``Z_M``) fails both."""
    k, d = contributors, total.size
    widest = int(np.abs(total).max()) if d else 0
    if widest > k * num_levels:
        return (f"a coordinate is {widest}, beyond the {k} x {num_levels} a sum of {k} "
                "clipped updates can reach (wrapped around or tampered)")
    norm = float(np.linalg.norm(dequantize(total, bound, num_levels)))
    slack = k * math.sqrt(d) * bound / num_levels
    if norm > k * bound + slack:
        return (f"norm {norm:.4g} above {k} x the clip norm {bound:g} "
                f"(+{slack:.2g} rounding): not a sum of {k} clipped updates")
    return None
