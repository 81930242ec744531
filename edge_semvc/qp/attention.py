"""The attention policy of METHOD embodiment 2: Q from the recurrent change network's P_t.

METHOD: "If |P_t| leaves a preset threshold range, the change is significant: the region is
worth attention and gets a lower compression rate (more bits); otherwise it gets a higher
compression rate." The product offers this beside the core method's motion masking (S130) as a
named policy, `attention.policy`: `masking` leaves Q as S140 gave it, `attention` applies

    Q_A = Q * (1 - attention_cut)   where |P_t| < p_low or |P_t| > p_high
    Q_A = Q * (1 + quiet_raise)     elsewhere

The factor is chosen from the range decision and multiplies Q, as embodiments 3 and 4 do. P_t
comes from `analysis/recurrent.py`; the config is its `AttentionConfig` (read here through the
fields below: `qp` does not import `analysis`).
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class AttentionPolicy(Protocol):
    """The fields of `analysis.recurrent.AttentionConfig` this formula reads."""

    enabled: bool
    policy: str
    p_low: float
    p_high: float
    attention_cut: float
    quiet_raise: float


def attention_q(q: np.ndarray, p: np.ndarray, cfg: AttentionPolicy) -> np.ndarray:
    """Q_A per macroblock from Q (float32[mb_h, mb_w]) and P_t (same shape; each macroblock
    holds its region's value); Q unchanged when the section is off or the policy is masking."""
    if not cfg.enabled or cfg.policy == "masking":
        return q
    magnitude = np.abs(p)
    outside = (magnitude < cfg.p_low) | (magnitude > cfg.p_high)
    factor = np.where(outside, 1.0 - cfg.attention_cut, 1.0 + cfg.quiet_raise)
    return (q * factor).astype(np.float32)
