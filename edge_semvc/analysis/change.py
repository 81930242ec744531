"""Content change rate V per macroblock (METHOD S120): how much a block changed since the
previous frame.

Estimator: mean absolute luma difference to the co-located block of the previous frame (on the
same subsampled luma as complexity), V = MAD / full_mad clipped to [0, 1]. It is cheap and
sees both motion and appearance change; a camera pan raises V everywhere, which the policy
treats as motion masking (METHOD S130). The first frame has V = 0.
"""
from __future__ import annotations

import numpy as np

from ..frame import block_mean


def block_mad(prev_blocks: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Mean absolute luma difference per macroblock between two frames' samples."""
    return block_mean(np.abs(blocks - prev_blocks))


def comparable(prev_blocks: np.ndarray | None, blocks: np.ndarray) -> bool:
    """A previous frame of the same grid exists (else V = 0: a first frame)."""
    return prev_blocks is not None and prev_blocks.shape == blocks.shape


def change_from_mad(mad: np.ndarray | None, full_mad: float, shape) -> np.ndarray:
    if mad is None:
        return np.zeros(shape, np.float32)
    return np.clip(mad / full_mad, 0.0, 1.0).astype(np.float32)


def change_map(prev_blocks: np.ndarray | None, blocks: np.ndarray,
               full_mad: float) -> np.ndarray:
    mad = block_mad(prev_blocks, blocks) if comparable(prev_blocks, blocks) else None
    return change_from_mad(mad, full_mad, (blocks.shape[0], blocks.shape[2]))
