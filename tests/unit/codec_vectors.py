"""Test vectors for the codec tests (``test_codecs.py``, ``test_codec_payloads.py``)."""

from __future__ import annotations

import numpy as np


def vec(d: int, seed: int = 0) -> np.ndarray:
    """Normal entries with per-region scales spanning 4 decades, plus exact zeros."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(d) * 10.0 ** rng.integers(-2, 2, d)
    x[rng.random(d) < 0.1] = 0.0
    return x.astype(np.float32)
