"""Content complexity C per macroblock (METHOD S120): how much detail a block holds.

Estimator: luma variance of the block, measured on a 4x4 grid of samples per macroblock (every
4th pixel: 16x cheaper than all 256, and enough to tell flat from textured), log-scaled so that
flat sky is ~0 and dense texture ~1: C = log(1 + var) / log(1 + full_var), clipped to [0, 1].
"""
from __future__ import annotations

from functools import reduce

import numpy as np

from ..frame import GRID, MB

BLOCK = MB // GRID  # luma-grid samples per macroblock side


def block_samples(grid: np.ndarray) -> np.ndarray:
    """float32[mb_h, BLOCK, mb_w, BLOCK]: a luma grid (`Frame.luma_grid`) by macroblock (a
    view). Complexity and change both read it."""
    h, w = grid.shape
    return grid.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK)


def block_mean(blocks: np.ndarray) -> np.ndarray:
    """Mean over each block's BLOCK x BLOCK samples: float32[mb_h, mb_w]."""
    # Adding strided slices is ~8x faster than numpy's reduction over such short axes.
    rows = reduce(np.add, (blocks[..., i] for i in range(BLOCK)))
    return reduce(np.add, (rows[:, i] for i in range(BLOCK))) / (BLOCK * BLOCK)


def block_variance(blocks: np.ndarray) -> np.ndarray:
    mean = block_mean(blocks)
    return block_mean(blocks * blocks) - mean * mean


def complexity_from_variance(var: np.ndarray, full_var: float) -> np.ndarray:
    c = np.log1p(np.maximum(var, 0.0)) / np.log1p(full_var)
    return np.clip(c, 0.0, 1.0).astype(np.float32)


def complexity_map(blocks: np.ndarray, full_var: float) -> np.ndarray:
    return complexity_from_variance(block_variance(blocks), full_var)
