"""Analysers: how each region looks (complexity C) and changes (change rate V).

The content computation module of the method's apparatus (METHOD S120).
"""
from __future__ import annotations

import numpy as np

from ..config import AnalysisConfig
from ..frame import Frame
from ..values import LabelMap, RegionStats
from .change import change_map
from .complexity import complexity_map
from .regions import region_stats


class Analyser:
    """Keeps the previous frame's luma; turns (Frame, LabelMap) into RegionStats."""

    def __init__(self, cfg: AnalysisConfig):
        self.cfg = cfg
        self._prev_y: np.ndarray | None = None

    def analyse(self, frame: Frame, labels: LabelMap) -> RegionStats:
        c = complexity_map(frame.y, frame.mb_w, frame.mb_h, self.cfg.complexity_full_var)
        v = change_map(self._prev_y, frame.y, frame.mb_w, frame.mb_h, self.cfg.change_full_mad)
        self._prev_y = frame.y
        return region_stats(labels.labels, c, v)
