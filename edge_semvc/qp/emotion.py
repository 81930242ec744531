"""Embodiment 3's formula: the emotion tuning of Q (the factor module of the apparatus).

METHOD.md, "Embodiment 3 — emotion": "If |E| exceeds a threshold range the region probably
holds an important expression or plot moment and must keep detail (lower compression). An
emotion tuning factor gamma is chosen from that decision and Q_E = Q * (1 - gamma * |E|)".

The configuration is the emotion analyser's (`EmotionConfig`, `emotion:` section, in
labeler/emotion.py); this layer may not import the labeler, so it takes any object with the
three fields below.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class EmotionFactors(Protocol):
    e_threshold: float  # |E| above this is a strong expression
    gamma_high: float  # gamma for a strong expression
    gamma_low: float  # gamma otherwise


def emotion_q(q: np.ndarray, e: np.ndarray, cfg: EmotionFactors) -> np.ndarray:
    """Q_E = Q * (1 - gamma * |E|) per macroblock, gamma = gamma_high where |E| > e_threshold,
    else gamma_low.

    `q`: float32[mb_h, mb_w] (larger = compress more); `e`: E in [-1, 1] per macroblock, 0 where
    there is no face (there Q is unchanged). The magnitude is used, so strong emotion of either
    sign lowers Q. With gamma in [0, 1] (EmotionConfig.validate) Q_E stays in [0, Q].
    """
    magnitude = np.abs(np.asarray(e, np.float32))
    gamma = np.where(magnitude > cfg.e_threshold, np.float32(cfg.gamma_high),
                     np.float32(cfg.gamma_low))
    return (np.asarray(q, np.float32) * (1.0 - gamma * magnitude)).astype(np.float32)
