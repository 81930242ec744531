"""Content change rate V per macroblock (METHOD S120): how much a block changed since the
previous frame.

Estimator: mean absolute luma difference to the co-located block of the previous frame (on the
same subsampled picture as complexity), V = MAD / full_mad clipped to [0, 1]. It is cheap and
sees both motion and appearance change; a camera pan raises V everywhere, which the policy
treats as motion masking (METHOD S130). The first frame has V = 0.
"""
from __future__ import annotations

import numpy as np

from .complexity import BLOCK, SUB
from ..frame import pad_to_mb


def change_map(prev_y: np.ndarray | None, y: np.ndarray, mb_w: int, mb_h: int,
           full_mad: float) -> np.ndarray:
    if prev_y is None or prev_y.shape != y.shape:
        return np.zeros((mb_h, mb_w), np.float32)
    a = y[::SUB, ::SUB].astype(np.int16)
    b = prev_y[::SUB, ::SUB].astype(np.int16)
    diff = pad_to_mb(np.abs(a - b).astype(np.float32), BLOCK)[: mb_h * BLOCK, : mb_w * BLOCK]
    mad = diff.reshape(mb_h, BLOCK, mb_w, BLOCK).sum(3).sum(1) / (BLOCK * BLOCK)
    return np.clip(mad / full_mad, 0.0, 1.0).astype(np.float32)
