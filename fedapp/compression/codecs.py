"""Pure update-compression codecs on a flat float32 vector ``x in R^d`` (numpy only).

Codecs (``CodecSpec.name``):

* ``none``: identity, float32 little-endian (``4 d`` bytes).
* ``fp16``: cast to IEEE half precision, saturating at +-65504 (``2 d`` bytes).
* ``topk``: magnitude top-k sparsification (Aji & Heafield 2017; Stich et al. 2018): keep the
  ``k`` entries of largest ``|x_i|`` (ties: lower index first), send indices + float32 values.
* ``qsgd``: b-bit quantisation on a uniform grid (QSGD-style; Alistarh et al. 2017), with one
  scale per block, deterministic or unbiased stochastic rounding, codes bit-packed densely.
* ``topk-qsgd``: top-k, then ``qsgd`` on the ``k`` kept values.

Quantisation (grid, rounding, error bounds) and bit packing:
:mod:`fedapp.compression.quantize`; top-k selection: :mod:`fedapp.compression.topk`.

Wire form (:class:`EncodedUpdate`): one uint8 ``payload`` and a header of scalars
``{codec, version, d, k, bits, block}``. Payload layouts (little-endian):

* ``none``: ``f32[d]``; ``fp16``: ``f16[d]``;
* ``topk``: ``indices | f32[k]`` (indices as in :mod:`fedapp.compression.indices`);
* ``qsgd``: ``f32 scales[nb] | packed codes (ceil(d b / 8) bytes)``, ``nb = ceil(d / block)``;
* ``topk-qsgd``: ``indices | f32 scales[nb] | packed codes (ceil(k b / 8))``, ``nb = ceil(k /
  block)``.

Header conventions: dense codecs have ``k == d``; ``bits`` is 32 (none, topk), 16 (fp16) or
the code width 1..8; ``block`` is the effective block length (``1..n``, ``n`` the number of
quantised values) for quantising codecs and 0 otherwise.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fedapp.compression.indices import MAX_D, PayloadError, decode_indices, encode_indices
from fedapp.compression.quantize import dequantize, pack_bits, quantize, unpack_bits
from fedapp.compression.topk import k_for, topk_indices

__all__ = [
    "CODEC_NAMES",
    "FORMAT_VERSION",
    "HEADER_KEYS",
    "CodecSpec",
    "EncodedUpdate",
    "PayloadError",
    "decode",
    "encode",
    "k_for",
    "nbytes",
    "pack_bits",
    "topk_indices",
    "unpack_bits",
]

FORMAT_VERSION = 1
CODEC_NAMES = ("none", "fp16", "topk", "qsgd", "topk-qsgd")
HEADER_KEYS = ("codec", "version", "d", "k", "bits", "block")
_SPARSE = frozenset({"topk", "topk-qsgd"})
_QUANT = frozenset({"qsgd", "topk-qsgd"})
_VALUE_BITS = {"none": 32, "fp16": 16, "topk": 32}
_FP16_MAX = 65504.0


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _bad(field: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"CodecSpec.{field}={value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True)
class CodecSpec:
    """What to encode with. ``topk`` is the kept fraction of ``d`` (see :func:`k_for`),
    ``bits`` the code width, ``block_size`` the quantisation block (0 = one per-tensor scale),
    ``stochastic`` selects unbiased stochastic rounding, seeded by ``seed``. Fields that a
    codec does not use are still validated, so a typo never passes silently."""

    name: str = "none"
    topk: float = 0.01
    bits: int = 8
    block_size: int = 0
    stochastic: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in CODEC_NAMES:
            raise _bad("name", self.name, f"one of {', '.join(CODEC_NAMES)}")
        t = self.topk
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0.0 < t <= 1.0:
            raise _bad("topk", t, "a fraction of d in (0, 1]")
        if not _is_int(self.bits) or not 1 <= self.bits <= 8:
            raise _bad("bits", self.bits, "an int in 1..8")
        if not _is_int(self.block_size) or self.block_size < 0:
            raise _bad("block_size", self.block_size, "0 (per-tensor scale) or a positive int")
        if not isinstance(self.stochastic, bool):
            raise _bad("stochastic", self.stochastic, "True or False")
        if not _is_int(self.seed) or self.seed < 0:
            raise _bad("seed", self.seed, "a non-negative int")


@dataclass(frozen=True)
class EncodedUpdate:
    """An encoded update: scalar ``header`` fields (see module docstring) and one uint8
    ``payload`` buffer (a single Array on the wire keeps the per-Array overhead low)."""

    header: dict[str, Any]
    payload: np.ndarray


class _Header(NamedTuple):
    codec: str
    d: int
    k: int
    bits: int
    block: int


def _as_update(x: np.ndarray) -> np.ndarray:
    v = np.asarray(x)
    if v.ndim != 1 or not 1 <= v.size <= MAX_D:
        raise ValueError(f"update must be a 1-D vector of length 1..{MAX_D}, got {v.shape}")
    if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
        raise ValueError(f"update must be a real numeric vector, got dtype {v.dtype}")
    with np.errstate(over="ignore"):  # beyond float32 range -> inf, rejected just below
        v = v.astype(np.float32)
    if not np.isfinite(v).all():
        raise ValueError("update has non-finite entries (or entries beyond float32 range)")
    return v


def _make(codec: str, d: int, k: int, bits: int, block: int, *parts: np.ndarray) -> EncodedUpdate:
    payload = np.concatenate([np.ascontiguousarray(p).view(np.uint8).ravel() for p in parts])
    header = dict(codec=codec, version=FORMAT_VERSION, d=d, k=k, bits=bits, block=block)
    return EncodedUpdate(header=header, payload=payload)


def encode(x: np.ndarray, spec: CodecSpec, *, seed: int | None = None) -> EncodedUpdate:
    """Encode the flat update ``x`` (1-D, finite; cast to float32) with ``spec``.

    ``seed`` overrides ``spec.seed`` for stochastic rounding (e.g. vary it per round).
    Raises ``ValueError`` for an invalid ``x``.
    """
    v = _as_update(x)
    d = v.size
    name = spec.name
    if name == "none":
        return _make(name, d, d, 32, 0, v.astype("<f4"))
    if name == "fp16":
        return _make(name, d, d, 16, 0, np.clip(v, -_FP16_MAX, _FP16_MAX).astype("<f2"))
    rng = np.random.default_rng(spec.seed if seed is None else seed) if spec.stochastic else None
    if name == "qsgd":
        block = min(spec.block_size or d, d)
        return _make(name, d, d, spec.bits, block, *quantize(v, spec.bits, block, rng))
    k = k_for(d, spec.topk)
    idx = topk_indices(v, k)
    ix = encode_indices(idx, d)
    if name == "topk":
        return _make(name, d, k, 32, 0, ix, v[idx].astype("<f4"))
    block = min(spec.block_size or k, k)
    return _make(name, d, k, spec.bits, block, ix, *quantize(v[idx], spec.bits, block, rng))


def nbytes(enc: EncodedUpdate) -> int:
    """Payload bytes (the header is a handful of scalars; Flower adds about 250 B per
    message with one Array on top of this)."""
    return int(enc.payload.nbytes)


def _header_int(header: Mapping[Any, Any], key: str) -> int:
    v = header[key]
    if not _is_int(v):
        raise PayloadError(f"header field {key!r} must be an int, got {type(v).__name__}")
    return int(v)


def _check_header(header: object) -> _Header:
    """Validate the header fields and their mutual consistency (module docstring)."""
    if not isinstance(header, Mapping):
        raise PayloadError(f"header must be a mapping, got {type(header).__name__}")
    codec = header.get("codec")
    if not isinstance(codec, str) or codec not in CODEC_NAMES:
        raise PayloadError(f"unknown codec {codec!r}; known: {', '.join(CODEC_NAMES)}")
    missing = [key for key in HEADER_KEYS if key not in header]
    extra = sorted(repr(key) for key in header if key not in HEADER_KEYS)
    if missing or extra:
        raise PayloadError(f"header fields: missing {missing}, unexpected [{', '.join(extra)}]")
    version = _header_int(header, "version")
    if version != FORMAT_VERSION:
        raise PayloadError(f"unsupported {codec} version {version} (known: {FORMAT_VERSION})")
    d, k, bits, block = (_header_int(header, key) for key in ("d", "k", "bits", "block"))
    if not 1 <= d <= MAX_D:
        raise PayloadError(f"inconsistent header: d={d} not in 1..{MAX_D}")
    if codec in _SPARSE and not 1 <= k <= d:
        raise PayloadError(f"inconsistent header: k={k} not in 1..d={d}")
    if codec not in _SPARSE and k != d:
        raise PayloadError(f"inconsistent header: {codec} needs k == d, got k={k}, d={d}")
    if codec in _QUANT:
        if not 1 <= bits <= 8:
            raise PayloadError(f"inconsistent header: bits={bits} not in 1..8")
        if not 1 <= block <= k:
            raise PayloadError(f"inconsistent header: block={block} not in 1..{k}")
    else:
        if bits != _VALUE_BITS[codec]:
            raise PayloadError(f"inconsistent header: {codec} needs bits={_VALUE_BITS[codec]}")
        if block != 0:
            raise PayloadError(f"inconsistent header: {codec} needs block=0, got {block}")
    return _Header(codec, d, k, bits, block)


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(x).all():
        raise PayloadError(f"non-finite {what}")
    return x


def _expect_size(payload: np.ndarray, start: int, size: int, h: _Header) -> None:
    total = start + size
    if payload.size != total:
        kind = "truncated" if payload.size < total else "oversized"
        raise PayloadError(
            f"{kind} payload: {payload.size} bytes, expected {total} for codec={h.codec} "
            f"d={h.d} k={h.k} bits={h.bits} block={h.block}"
        )


def _dequant_section(payload: np.ndarray, start: int, h: _Header) -> np.ndarray:
    nb = -(-h.k // h.block)
    _expect_size(payload, start, 4 * nb + (h.k * h.bits + 7) // 8, h)
    scales = payload[start : start + 4 * nb].view("<f4")
    if not np.isfinite(scales).all():
        raise PayloadError("non-finite quantisation scale")
    if (scales < 0).any():
        raise PayloadError("negative quantisation scale")
    codes = unpack_bits(payload[start + 4 * nb :], h.bits, h.k)
    return dequantize(scales, codes, h.bits, h.block)


def decode(enc: EncodedUpdate) -> np.ndarray:
    """Decode to a finite float32 vector of length ``d`` (a new, writable array).

    Validates strictly; any malformed input raises :class:`PayloadError` with the reason:
    unknown codec or version, missing/unexpected/non-int header fields, inconsistent
    ``d``/``k``/``bits``/``block``, truncated or oversized payload, indices out of range or
    not strictly increasing, non-finite or negative scales, non-finite values.
    """
    payload = getattr(enc, "payload", None)
    if not isinstance(payload, np.ndarray) or payload.dtype != np.uint8 or payload.ndim != 1:
        raise PayloadError("payload must be a 1-D uint8 numpy array")
    payload = np.ascontiguousarray(payload)
    h = _check_header(getattr(enc, "header", None))
    if h.codec in ("none", "fp16"):
        width = h.bits // 8
        _expect_size(payload, 0, width * h.d, h)
        values = payload.view("<f4" if width == 4 else "<f2").astype(np.float32)
        return _finite(values, "value")
    if h.codec == "qsgd":
        return _dequant_section(payload, 0, h)
    idx, used = decode_indices(payload, h.d, h.k)
    if h.codec == "topk":
        _expect_size(payload, used, 4 * h.k, h)
        values = _finite(payload[used:].view("<f4").astype(np.float32), "value")
    else:
        values = _dequant_section(payload, used, h)
    out = np.zeros(h.d, dtype=np.float32)
    out[idx] = values
    return out
