"""The analysis configuration (`analysis:`): how C and V are scaled."""
from __future__ import annotations

from dataclasses import dataclass

from ..config_model import check


@dataclass
class AnalysisConfig:
    # C: log-scaled luma variance per macroblock, 1.0 at `complexity_full_var` (std 32; 1-16384,
    # the most 8-bit luma can vary).
    complexity_full_var: float = 1024.0
    # V: mean absolute luma difference to the previous frame, 1.0 at `change_full_mad` (0.5-255).
    change_full_mad: float = 24.0

    def validate(self) -> None:
        # Finite ranges within what 8-bit luma can measure: a scale of 1e-300 makes C or V
        # infinite and the map NaN.
        check(1.0 <= self.complexity_full_var <= 16384.0, "analysis.complexity_full_var",
              self.complexity_full_var, "between 1 and 16384")
        check(0.5 <= self.change_full_mad <= 255.0, "analysis.change_full_mad",
              self.change_full_mad, "between 0.5 and 255 luma levels")
