"""How long a macroblock's picture is expected to be reused: the temporal stability a static
background has and a walker has not (x264's mb-tree measures it with a lookahead; a live
encoder at zerolatency has none, so the past stands in for the future).

Per frame each macroblock keeps a fraction f of what the next frame can predict from it:
f = clip(1 - mad / (std + intra_floor), 0, 1), the block's change since the previous frame
(mean absolute luma difference) against what coding it afresh costs (its texture, plus a floor:
a flat block is cheap to code either way). Reuse accumulates like mb-tree's propagation, but
over the past: r_t = f_t (1 + r_{t-1}), capped at `horizon` frames. A block static for long has
r of many frames, one that keeps changing r near 0.
"""
from __future__ import annotations

import numpy as np


class ReuseTracker:
    def __init__(self):
        self.reuse: np.ndarray | None = None

    def reset(self) -> None:
        self.reuse = None

    def update(self, mad: np.ndarray | None, var: np.ndarray, intra_floor: float,
               horizon: float) -> np.ndarray:
        """float32[mb_h, mb_w] expected reuse in frames after this frame."""
        if mad is None or self.reuse is None or self.reuse.shape != var.shape:
            self.reuse = np.zeros(var.shape, np.float32)
            if mad is None:
                return self.reuse
        kept = np.clip(1.0 - mad / (np.sqrt(np.maximum(var, 0.0)) + intra_floor), 0.0, 1.0)
        self.reuse = np.minimum(kept * (1.0 + self.reuse), horizon).astype(np.float32)
        return self.reuse
