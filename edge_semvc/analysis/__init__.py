"""Analysers: how each region looks (complexity C) and changes (change rate V).

The content computation module of the method's apparatus (METHOD S120).
"""
from __future__ import annotations

import numpy as np

from ..frame import Frame, block_samples
from ..values import LabelMap, RegionStats
from .change import block_mad, change_from_mad, comparable
from .complexity import complexity_from_variance
from .config import AnalysisConfig
from .regions import region_stats
from .temporal import ReuseTracker


class Analyser:
    """Keeps the previous frame's luma samples; turns (Frame, LabelMap) into RegionStats."""

    def __init__(self, cfg: AnalysisConfig):
        self.cfg = cfg
        self._prev: np.ndarray | None = None
        self.reuse = ReuseTracker()

    def reset(self) -> None:
        """Forget the previous frame (the next one is measured like a first frame: V = 0)."""
        self._prev = None
        self.reuse.reset()

    def analyse(self, frame: Frame, labels: LabelMap) -> RegionStats:
        blocks = block_samples(frame.luma_grid)
        var = frame.luma_variance
        c = complexity_from_variance(var, self.cfg.complexity_full_var)
        mad = block_mad(self._prev, blocks) if comparable(self._prev, blocks) else None
        v = change_from_mad(mad, self.cfg.change_full_mad, c.shape)
        reuse = self.reuse.update(mad, var, self.cfg.intra_floor, self.cfg.reuse_horizon)
        self._prev = blocks
        stats = region_stats(labels.labels, c, v)
        stats.reuse, stats.index = reuse, frame.index
        return stats
