"""Error feedback for biased / lossy update compression (pure function, numpy only).

References: Stich, Cordonnier & Jaggi, "Sparsified SGD with Memory", NeurIPS 2018;
Karimireddy, Rebjock, Stich & Jaggi, "Error Feedback Fixes SignSGD and other Gradient
Compression Schemes", ICML 2019.
"""

from __future__ import annotations

import numpy as np

from fedapp.compression.codecs import CodecSpec, EncodedUpdate, decode, encode

__all__ = ["compress_with_feedback"]


def compress_with_feedback(
    update: np.ndarray,
    residual: np.ndarray | None,
    spec: CodecSpec,
    *,
    seed: int | None = None,
) -> tuple[EncodedUpdate, np.ndarray]:
    """Compress ``update`` with error feedback; return ``(encoded, new_residual)``.

    With ``u_t`` the update, ``e_t`` the residual (``None`` means ``e_0 = 0``), ``C`` =
    :func:`encode` and ``D`` = :func:`decode`::

        c_t     = u_t + e_t              (corrected update)
        m_t     = C(c_t)                 (what is sent)
        e_{t+1} = c_t - D(m_t)           (what was not sent, carried to the next round)

    Summing over rounds telescopes: ``sum_{s<=t} D(m_s) = sum_{s<=t} u_s + e_0 - e_{t+1}``,
    so the receiver's running sum tracks the true running sum up to the current residual.
    For a delta-contractive ``D o C`` (``||c - D(C(c))|| <= sqrt(1 - delta) ||c||``, e.g.
    top-k with ``delta = k / d``) the residual stays bounded:
    ``||e_t|| <= q / (1 - q) * max_s ||u_s||`` with ``q = sqrt(1 - delta)``.

    ``seed`` overrides ``spec.seed`` for stochastic rounding; pass a fresh one each round.
    Arithmetic is float32; raises ``ValueError`` for mismatched shapes or non-finite input.
    """
    u = np.asarray(update, dtype=np.float32)
    if u.ndim != 1:
        raise ValueError(f"update must be a 1-D vector, got shape {u.shape}")
    if residual is None:
        e = np.zeros_like(u)
    else:
        e = np.asarray(residual, dtype=np.float32)
        if e.shape != u.shape:
            raise ValueError(f"residual shape {e.shape} != update shape {u.shape}")
        if not np.isfinite(e).all():
            raise ValueError("residual has non-finite entries")
    corrected = u + e
    encoded = encode(corrected, spec, seed=seed)
    return encoded, corrected - decode(encoded)
