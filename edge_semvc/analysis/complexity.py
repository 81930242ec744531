"""Content complexity C per macroblock (METHOD S120): how much detail a block holds.

Estimator: luma variance of the block, measured on a 4x4 grid of samples per macroblock (every
4th pixel: 16x cheaper than all 256, and enough to tell flat from textured), log-scaled so that
flat sky is ~0 and dense texture ~1: C = log(1 + var) / log(1 + full_var), clipped to [0, 1].
"""
from __future__ import annotations

import numpy as np


def complexity_from_variance(var: np.ndarray, full_var: float) -> np.ndarray:
    """C from the variance per macroblock, the Frame's (`Frame.luma_variance`, cached: the
    encoder's own AQ given back under the map reads it too, encoders/x264.py)."""
    c = np.log1p(np.maximum(var, 0.0)) / np.log1p(full_var)
    return np.clip(c, 0.0, 1.0).astype(np.float32)
