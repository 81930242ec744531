"""The method's formulas: weight matching (S130) and the base quantisation value (S140).

Q = alpha * C + beta * V, with (alpha, beta) chosen per region by comparing V with V_th:
a fast region (V > V_th) weighs the change term (motion masks detail: compress more), a slow
region weighs the complexity term (keep its detail). Larger Q means stronger compression.
This is the weight matching and parameter computation module of the apparatus.
"""
from __future__ import annotations

import numpy as np

from .config import QpConfig


def match_weights(v: np.ndarray, cfg: QpConfig) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta) per element of V (S130)."""
    fast = v > cfg.v_threshold
    alpha = np.where(fast, cfg.alpha_fast, cfg.alpha_slow).astype(np.float32)
    beta = np.where(fast, cfg.beta_fast, cfg.beta_slow).astype(np.float32)
    return alpha, beta


def base_q(c: np.ndarray, v: np.ndarray, cfg: QpConfig) -> np.ndarray:
    """Q = alpha * C + beta * V (S140), elementwise."""
    alpha, beta = match_weights(v, cfg)
    return alpha * c + beta * v
