"""Blockwise b-bit quantisation (QSGD-style; Alistarh et al. 2017) and dense bit packing.

Pure numpy; used by the ``qsgd`` and ``topk-qsgd`` codecs of
:mod:`fedapp.compression.codecs`.

Quantisation, per block ``B`` of the vector being quantised (the whole vector when
``block_size == 0``): scale ``m_B = max_{i in B} |x_i|`` (sent as float32), ``L = 2**b - 1``,
step ``delta_B = 2 m_B / L``, grid ``{-m_B + q delta_B : q = 0..L}``. Encoding computes
``u_i = (x_i + m_B) / delta_B in [0, L]`` and the code ``q_i = round(u_i)`` (nearest, ties to
even) or, stochastically, ``q_i = floor(u_i + r_i)`` with ``r_i ~ U[0, 1)``, so that
``P(q_i = floor(u_i) + 1) = frac(u_i)`` and ``E[q_i] = u_i``. Decoding is
``x_hat_i = q_i delta_B - m_B``. Hence deterministic rounding has ``|x_i - x_hat_i| <=
delta_B / 2 = m_B / L`` (plus float32 rounding of the result, ``<= 2**-24 m_B``), stochastic
rounding ``|x_i - x_hat_i| < delta_B`` and ``E[x_hat_i] = x_i``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dequantize", "pack_bits", "quantize", "unpack_bits"]


def pack_bits(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes ``< 2**bits`` densely, ``bits`` per code, most significant bit first;
    ``ceil(n bits / 8)`` bytes, the last byte zero-padded."""
    codes = np.asarray(codes, dtype=np.uint8)
    if bits == 8:
        return codes.copy()
    left = codes << np.uint8(8 - bits)  # code's bits at the top of the byte
    return np.packbits(np.unpackbits(left[:, None], axis=1, count=bits))


def unpack_bits(buf: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` for ``n`` codes; ``buf`` must hold ``ceil(n bits / 8)``."""
    if bits == 8:
        return buf[:n].copy()
    rows = np.unpackbits(buf, count=n * bits).reshape(n, bits)
    return np.packbits(rows, axis=1).ravel() >> np.uint8(8 - bits)


def quantize(
    v: np.ndarray, bits: int, block: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Blockwise b-bit quantisation (module docstring); returns (f32 scales, packed codes)."""
    n = v.size
    nb = -(-n // block)
    vp = np.zeros(nb * block, dtype=np.float64)
    vp[:n] = v
    vp = vp.reshape(nb, block)
    m = np.abs(vp).max(axis=1)  # exact float32 values held in float64
    levels = (1 << bits) - 1
    step = m * (2.0 / levels)
    u = (vp + m[:, None]) / np.where(step > 0.0, step, 1.0)[:, None]
    q = np.rint(u) if rng is None else np.floor(u + rng.random(u.shape))
    codes = np.clip(q, 0, levels).astype(np.uint8).ravel()[:n]
    return m.astype("<f4"), pack_bits(codes, bits)


def dequantize(scales: np.ndarray, codes: np.ndarray, bits: int, block: int) -> np.ndarray:
    """``x_hat = q delta_B - m_B``, clipped to ``[-m_B, m_B]`` against float64 rounding."""
    n, nb = codes.size, scales.size
    m = scales.astype(np.float64)[:, None]
    step = m * (2.0 / ((1 << bits) - 1))
    cp = np.zeros(nb * block, dtype=np.float64)
    cp[:n] = codes
    x = np.clip(cp.reshape(nb, block) * step - m, -m, m)
    return x.ravel()[:n].astype(np.float32)
