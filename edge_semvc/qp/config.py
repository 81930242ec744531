"""The QP policy's configuration (`qp:`): S130's weights and how Q and importance become an
offset."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config_model import check


@dataclass
class QpConfig:
    # The semantic map: false = plain encoding (x264 gets no map; the labeler still runs, so
    # what is seen is still reported). A live key: a dashboard switch (README, Home Assistant).
    enabled: bool = True
    # Where the map is computed: cpu (numpy, the reference) or cuda (qp/cuda: CuPy or pycuda).
    device: str = "cpu"
    # S130: alpha weighs complexity C, beta weighs change V; chosen by V against v_threshold
    # (0-1).
    v_threshold: float = 0.25
    alpha_slow: float = 0.6  # weight of C in a slow region (0-10)
    beta_slow: float = 0.4  # weight of V in a slow region (0-10)
    alpha_fast: float = 0.3  # weight of C in a fast region (0-10)
    beta_fast: float = 1.0  # weight of V in a fast region (0-10)
    # How Q (larger = compress more) and class importance become a QP offset.
    q_gain: float = 4.0  # QP per unit of Q (0-51)
    # The background pays the frame-average emphasis (gain x mean importance) back, so the
    # gain follows the labelled area: importance_gain at a mean importance of
    # importance_reference, times (reference / mean) ** exponent, where the exponent is
    # importance_exponent above the reference (a large area: milder) and
    # importance_boost_exponent below it (a small one: firmer), at most importance_boost_max
    # times (a lone distant car), capped by importance_budget.
    importance_gain: float = 10.0  # QP removed from a region of importance 1.0 (0-51)
    importance_reference: float = 0.035  # mean importance at that gain (0-1; street: 0.035)
    importance_exponent: float = 0.4  # above the reference (0-2); 0: the gain never falls
    importance_boost_exponent: float = 0.8  # below the reference (0-2); 0: it never rises
    importance_boost_max: float = 3.0  # most a small labelled area multiplies the gain by (1-4)
    importance_budget: float = 1.75  # the frame-average emphasis never exceeds this (0-51 QP)
    # How much each product class matters, 0..1 (a table: setting one entry keeps the others).
    importance: dict[str, float] = field(default_factory=lambda: {
        "background": 0.0, "person": 0.8, "face": 1.0, "text": 0.7,
        "vehicle": 0.6})
    offset_min: float = -12.0  # the offsets are clamped to [offset_min, offset_max] (-51-0 QP)
    offset_max: float = 12.0  # (see offset_min; 0-51 QP)
    # The map is shifted so its frame mean is this (FACTS: a positive mean stops x264's CRF from
    # spending more bits overall when it sees negative offsets); within [offset_min, offset_max].
    target_mean: float = 1.5
    # Importance of a background macroblock that moves while the camera is still (what the
    # labels missed or lag behind), at V >= motion_high; 0 turns the term off.
    moving_background: float = 0.4
    motion_low: float = 0.08  # V up to which a background macroblock counts as still
    motion_high: float = 0.25  # V from which it takes all of moving_background
    # QP removed per doubling of a macroblock's expected reuse (analysis/temporal.py): what
    # x264's mb-tree does with a lookahead, for encoders without one.
    reuse_gain: float = 1.0
    # When the reuse term applies: auto (where the encoder does not weigh reuse itself: x264
    # and x265 with zerolatency), always, never.
    reuse: str = "auto"
    # The still refresh (where the reuse term applies): a still macroblock, labelled or not,
    # gets refresh_gain QP less once every refresh_period frames (staggered) and refresh_hold
    # QP more in the frames between, where the encoder then skips it.
    refresh_period: int = 8  # Frames from one refresh to the next (2-250; 0: off)
    refresh_gain: float = 2.0  # QP removed in a block's refresh frame (0-51)
    refresh_hold: float = 3.0  # QP added in the frames between (0-51)

    def validate(self) -> None:
        # whether cuda runs here is the pre-flight's question (preflight.py), not validation's
        check(self.device in ("cpu", "cuda"), "qp.device", self.device, "cpu or cuda")
        check(0.0 <= self.v_threshold <= 1.0, "qp.v_threshold", self.v_threshold,
              "between 0 and 1")
        # Finite ranges: a weight or gain of 1e308 passes ">= 0" and makes every map NaN.
        for name, top in (("alpha_slow", 10), ("beta_slow", 10), ("alpha_fast", 10),
                          ("beta_fast", 10), ("q_gain", 51), ("importance_gain", 51),
                          ("importance_budget", 51), ("reuse_gain", 51),
                          ("refresh_gain", 51), ("refresh_hold", 51)):
            check(0 <= getattr(self, name) <= top, f"qp.{name}", getattr(self, name),
                  f"between 0 and {top}")
        check(0.0 < self.importance_reference <= 1.0, "qp.importance_reference",
              self.importance_reference, "in (0, 1]")
        for name in ("importance_exponent", "importance_boost_exponent"):
            check(0.0 <= getattr(self, name) <= 2.0, f"qp.{name}", getattr(self, name),
                  "between 0 and 2")
        check(1.0 <= self.importance_boost_max <= 4.0, "qp.importance_boost_max",
              self.importance_boost_max, "between 1 and 4")
        check(0.0 <= self.moving_background <= 1.0, "qp.moving_background",
              self.moving_background, "between 0 and 1")
        check(0.0 < self.motion_high <= 1.0, "qp.motion_high", self.motion_high,
              "in (0, 1]")
        check(0.0 <= self.motion_low < self.motion_high, "qp.motion_low", self.motion_low,
              f"in [0, qp.motion_high) = [0, {self.motion_high})")
        check(self.reuse in ("auto", "always", "never"), "qp.reuse", self.reuse,
              "auto, always or never")
        check(self.refresh_period == 0 or 2 <= self.refresh_period <= 250, "qp.refresh_period",
              self.refresh_period, "0 (off) or 2 to 250 frames")
        for name, value in self.importance.items():
            check(isinstance(value, (int, float)) and 0.0 <= value <= 1.0,
                  f"qp.importance.{name}", value, "a number between 0 and 1")
        check(-51 <= self.offset_min <= 0, "qp.offset_min", self.offset_min, "between -51 and 0")
        check(0 <= self.offset_max <= 51, "qp.offset_max", self.offset_max, "between 0 and 51")
        check(self.offset_min <= self.target_mean <= self.offset_max, "qp.target_mean",
              self.target_mean,
              f"within [qp.offset_min, qp.offset_max] = [{self.offset_min}, {self.offset_max}]")
