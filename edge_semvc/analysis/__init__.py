"""Analysers: how each region looks (complexity C) and changes (change rate V).

The content computation module of the method's apparatus (METHOD S120).
"""
from __future__ import annotations

import numpy as np

from ..frame import Frame
from ..values import LabelMap, RegionStats
from .change import change_map
from .complexity import block_samples, complexity_map
from .config import AnalysisConfig
from .regions import region_stats


class Analyser:
    """Keeps the previous frame's luma samples; turns (Frame, LabelMap) into RegionStats."""

    def __init__(self, cfg: AnalysisConfig):
        self.cfg = cfg
        self._prev: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the previous frame (the next one is measured like a first frame: V = 0)."""
        self._prev = None

    @property
    def blocks(self) -> np.ndarray | None:
        """The last analysed frame's luma samples per macroblock (`block_samples`), for the
        extensions that work on the same grid (extensions.py)."""
        return self._prev

    def analyse(self, frame: Frame, labels: LabelMap) -> RegionStats:
        blocks = block_samples(frame.y, frame.mb_w, frame.mb_h)
        c = complexity_map(blocks, self.cfg.complexity_full_var)
        v = change_map(self._prev, blocks, self.cfg.change_full_mad)
        self._prev = blocks
        return region_stats(labels.labels, c, v)
