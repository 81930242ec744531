"""Embodiment 5's quantisation formula: Q after fusing the additional data sources.

METHOD, embodiment 5: "Scene analysis gives each source a contribution (contributions sum to 1)
and from it a weight theta_k; D_k is the value the source gives to the region.
Q_D = Q + sum_k theta_k * D_k over the n sources. A smaller Q_D marks a more important region
(less compression)."

The terms come from `analysis/fusion.py` (`Modulation.data`); the formula has no parameters of
its own (the sources' strength is inside D_k), so it takes no configuration.
"""
from __future__ import annotations

import numpy as np

_THETA_SUM_TOLERANCE = 1e-4


def fuse_data_sources(q: np.ndarray, data: list[tuple[float, np.ndarray]]) -> np.ndarray:
    """Q_D = Q + sum_k theta_k * D_k, per macroblock (float32[mb_h, mb_w]).

    `data`: (theta_k, D_k) per source present this frame, the theta_k summing to 1; an empty
    list (no source present) leaves Q as it is. Q_D is not clamped: a negative value is a
    region more important than any Q alone expresses, and the QP map's clamp bounds it."""
    if not data:
        return np.asarray(q, np.float32)
    thetas = [theta for theta, _ in data]
    if min(thetas) < 0 or abs(sum(thetas) - 1.0) > _THETA_SUM_TOLERANCE:
        raise ValueError(f"source weights theta_k must be >= 0 and sum to 1, got {thetas}")
    out = np.array(q, np.float32)
    for theta, term in data:
        if term.shape != out.shape:
            raise ValueError(f"a source term of shape {term.shape} for a Q map of {out.shape}")
        out += np.float32(theta) * term
    return out
