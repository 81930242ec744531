"""The analysis configuration (`analysis:`): how C and V are scaled."""
from __future__ import annotations

from dataclasses import dataclass

from ..config_model import check


@dataclass
class AnalysisConfig:
    # C: log-scaled luma variance per macroblock, 1.0 at `complexity_full_var` (std 32).
    complexity_full_var: float = 1024.0
    # V: mean absolute luma difference to the previous frame, 1.0 at `change_full_mad`.
    change_full_mad: float = 24.0
    # Expected reuse (temporal.py): what coding a block afresh costs beyond its texture (luma
    # levels; a flat block is cheap to code either way, so its noise does not count as kept).
    intra_floor: float = 4.0
    # Expected reuse: the most frames counted.
    reuse_horizon: float = 30.0

    def validate(self) -> None:
        check(self.complexity_full_var > 0, "analysis.complexity_full_var",
              self.complexity_full_var, "> 0")
        check(self.change_full_mad > 0, "analysis.change_full_mad", self.change_full_mad, "> 0")
        check(self.intra_floor > 0, "analysis.intra_floor", self.intra_floor, "> 0")
        check(self.reuse_horizon >= 0, "analysis.reuse_horizon", self.reuse_horizon, ">= 0")
