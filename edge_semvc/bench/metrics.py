"""Quality metrics on decoded planes. Region metrics take a macroblock mask and expand it."""
from __future__ import annotations

import numpy as np

from ..frame import MB


def mb_mask_to_pixels(mb_mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """bool[mb_h, mb_w] -> bool[H, W] (each macroblock flag covers its 16x16 pixels, cropped)."""
    return np.repeat(np.repeat(mb_mask.astype(bool), MB, 0), MB, 1)[:height, :width]


def mse(ref: np.ndarray, dist: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over all pixels, or over the pixels where `mask` (bool[H, W]) is set."""
    if ref.shape != dist.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs distorted {dist.shape}")
    d = ref.astype(np.float64) - dist.astype(np.float64)
    if mask is not None:
        d = d[mask]
        if d.size == 0:
            return float("nan")
    return float(np.mean(d * d))


def psnr_from_mse(m: float, peak: float = 255.0) -> float:
    if np.isnan(m):
        return float("nan")
    return float("inf") if m == 0 else float(10.0 * np.log10(peak * peak / m))


def psnr(ref: np.ndarray, dist: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Y-PSNR in dB (8-bit peak), optionally restricted to a pixel mask."""
    return psnr_from_mse(mse(ref, dist, mask))
