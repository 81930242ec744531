"""Embodiment 4's formula: the scene-transition tuning of Q (the indicator module of the
apparatus).

METHOD.md, "Embodiment 4 — scene transition": "`S > S_th` sets `S = 1`, else `S = 0`. A
scene-change indicator `delta` is large when `S = 1`, small otherwise.
`Q_S = Q * (1 - delta * S)` [...] A strong transition gets a smaller Q, so the cut or transition
is not smeared or blocky; a calm region keeps its Q."

S comes from `analysis/scene.py` (`Modulation.scene`); the configuration is its `SceneConfig`
(`scene:` section), read here through the two fields below: `qp` does not import `analysis`.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np


class SceneIndicator(Protocol):
    delta_high: float  # delta where S = 1
    delta_low: float  # delta where S = 0


def scene_q(q: np.ndarray, s: np.ndarray, cfg: SceneIndicator) -> np.ndarray:
    """Q_S = Q * (1 - delta * S) per macroblock, delta = delta_high where S = 1, else delta_low.

    `q`: float32[mb_h, mb_w] (larger = compress more); `s`: S in {0, 1} per macroblock, each
    macroblock holding its region's value. Where S = 0 the product delta * S is 0 whatever
    delta_low is, so a calm region keeps its Q exactly; with delta in [0, 1]
    (SceneConfig.validate) Q_S stays in [0, Q]."""
    s = np.asarray(s, np.float32)
    delta = np.where(s > 0.5, np.float32(cfg.delta_high), np.float32(cfg.delta_low))
    return (np.asarray(q, np.float32) * (1.0 - delta * s)).astype(np.float32)
