"""The analysis configuration (`analysis:`: how C and V are scaled) and the extensions'
analysers' (`attention:`, `scene:`, `fusion:`; METHOD embodiments 2, 4 and 5, run by
recurrent.py, scene.py and fusion.py)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..config_model import check


@dataclass
class AnalysisConfig:
    # C: log-scaled luma variance per macroblock, 1.0 at `complexity_full_var` (std 32; 1-16384,
    # the most 8-bit luma can vary).
    complexity_full_var: float = 1024.0
    # V: mean absolute luma difference to the previous frame, 1.0 at `change_full_mad` (0.5-255).
    change_full_mad: float = 24.0
    # Expected reuse (temporal.py): what coding a block afresh costs beyond its texture (luma
    # levels; a flat block is cheap to code either way, so its noise does not count as kept).
    intra_floor: float = 4.0
    # Expected reuse: the most frames counted.
    reuse_horizon: float = 30.0

    def validate(self) -> None:
        # Finite ranges within what 8-bit luma can measure: a scale of 1e-300 makes C or V
        # infinite and the map NaN.
        check(1.0 <= self.complexity_full_var <= 16384.0, "analysis.complexity_full_var",
              self.complexity_full_var, "between 1 and 16384")
        check(0.5 <= self.change_full_mad <= 255.0, "analysis.change_full_mad",
              self.change_full_mad, "between 0.5 and 255 luma levels")

        check(0.0 < self.intra_floor <= 255.0, "analysis.intra_floor", self.intra_floor,
              "above 0, at most 255 luma levels")
        check(0.0 <= self.reuse_horizon <= 10000.0, "analysis.reuse_horizon",
              self.reuse_horizon, "between 0 and 10000 frames")

POLICIES = ("masking", "attention")


@dataclass
class AttentionConfig:
    """The `attention:` section (METHOD embodiment 2)."""

    enabled: bool = False  # run the recurrent change analyser and apply its policy
    # masking: the core method unchanged (a changing region is compressed more, S130);
    # attention: a region whose |P_t| leaves [p_low, p_high] gets a lower Q, others a higher one.
    policy: str = "attention"
    p_low: float = 0.0  # |P_t| below this leaves the range (0: never)
    p_high: float = 0.5  # |P_t| above this leaves the range (D > 0.55: 4.4 levels of excess)
    attention_cut: float = 0.5  # Q is multiplied by (1 - attention_cut) outside the range
    quiet_raise: float = 0.1  # Q is multiplied by (1 + quiet_raise) inside it
    fast_rate: float = 0.5  # a_fast: weight of the new frame in the fast change estimate
    floor_rise: float = 0.02  # a_rise: noise-floor learning rate upwards, gate closed
    floor_fall: float = 0.1  # a_fall: the same downwards (a quieter picture is believed sooner)
    floor_busy: float = 0.005  # a_busy: the rate while the gate is open (the change is real)
    floor_factor: float = 2.0  # k: change must exceed k x the noise floor ...
    floor_margin: float = 2.0  # m: ... plus this many luma levels (clean video has a 0 floor)
    gate_width: float = 1.0  # w: luma levels over which the gate opens (sigmoid slope)
    scale: float = 8.0  # luma levels of excess that make D = 1 (P = 0.76)

    def validate(self) -> None:
        check(self.policy in POLICIES, "attention.policy", self.policy, " | ".join(POLICIES))
        check(0.0 <= self.p_low < self.p_high < 1.0, "attention.p_low", (self.p_low, self.p_high),
              "0 <= attention.p_low < attention.p_high < 1 (|tanh| < 1)")
        check(0.0 <= self.attention_cut <= 1.0, "attention.attention_cut", self.attention_cut,
              "between 0 and 1")
        check(self.quiet_raise >= 0.0, "attention.quiet_raise", self.quiet_raise, ">= 0")
        for name in ("fast_rate", "floor_rise", "floor_fall", "floor_busy"):
            value = getattr(self, name)
            check(0.0 < value <= 1.0, f"attention.{name}", value, "in (0, 1]")
        check(self.floor_factor >= 1.0, "attention.floor_factor", self.floor_factor, ">= 1")
        check(self.floor_margin >= 0.0, "attention.floor_margin", self.floor_margin, ">= 0")
        for name in ("gate_width", "scale"):
            check(getattr(self, name) > 0.0, f"attention.{name}", getattr(self, name), "> 0")


@dataclass
class SceneConfig:
    """The `scene:` section (METHOD embodiment 4)."""

    enabled: bool = False  # run the scene-transition analyser and apply Q_S = Q * (1 - delta * S)
    s_threshold: float = 0.65  # S_th: a region whose mean S_mb exceeds this gets S = 1
    delta_high: float = 0.5  # delta where S = 1 (Q halved: the transition is not smeared)
    delta_low: float = 0.1  # delta where S = 0 (multiplies S = 0: Q stays; the method's "small")
    change_floor: float = 4.0  # luma levels added to a block's texture in S_mb's denominator
    search: int = 3  # motion search: |dy| + |dx| <= this many 8-pixel samples around the predictor
    cut_change: float = 0.65  # a cut needs the frame's mean S_mb above this ...
    cut_ratio: float = 3.0  # ... a histogram distance above this x the recent baseline ...
    cut_min_distance: float = 0.08  # ... and above this (total variation, 0..1) ...
    cut_min_gap: int = 10  # ... and this many frames since the last cut
    cut_window: int = 10  # frames of the current scene the histogram baseline is taken over

    def validate(self) -> None:
        for name in ("s_threshold", "cut_change", "cut_min_distance"):
            value = getattr(self, name)
            check(0.0 < value < 1.0, f"scene.{name}", value, "between 0 and 1 (exclusive)")
        for name in ("delta_high", "delta_low"):
            value = getattr(self, name)
            check(0.0 <= value <= 1.0, f"scene.{name}", value, "between 0 and 1 (Q_S >= 0)")
        check(self.delta_low <= self.delta_high, "scene.delta_low", self.delta_low,
              f"<= scene.delta_high ({self.delta_high})")
        check(self.change_floor > 0.0, "scene.change_floor", self.change_floor, "> 0")
        check(1 <= self.search <= 8, "scene.search", self.search, "an integer from 1 to 8")
        check(self.cut_ratio >= 1.0, "scene.cut_ratio", self.cut_ratio, ">= 1")
        check(self.cut_min_gap >= 1, "scene.cut_min_gap", self.cut_min_gap, ">= 1")
        check(self.cut_window >= 1, "scene.cut_window", self.cut_window, ">= 1")


SOURCES = ("audio", "subtitles", "description")
MAX_DESCRIPTION = 500  # characters of fusion.description (it is matched word by word)


@dataclass
class FusionConfig:
    enabled: bool = False  # fuse the additional sources into Q (embodiment 5)
    audio: bool = True  # use the input's own audio track, when it has one
    subtitles: bool = True  # use subtitles: `subtitle_file`, else the input's embedded stream
    subtitle_file: str = ""  # a sidecar .srt or .vtt file ("" = embedded stream, if any)
    # what to watch, in words ("watch the vehicles at the gate"; at most 500 characters)
    description: str = ""
    # Relative weight of each source; renormalised over the sources present each frame.
    weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(SOURCES, 1.0))
    strength: float = 1.0  # how far (in units of Q) a source at full relevance lowers Q
    voice_classes: list[str] = field(default_factory=lambda: ["person", "face"])  # voices here
    voice_window_s: float = 0.4  # a frame's voice activity: mean over +-window/2 of its time
    noise_percentile: float = 10.0  # the track's noise floor: this percentile of hop levels
    activity_span_db: float = 20.0  # speech-band level this far above the floor = activity 1
    silence_db: float = -70.0  # the floor never goes below this (digital silence), dBFS
    words: dict[str, str] = field(default_factory=dict)  # more word -> class entries

    def validate(self) -> None:
        check(len(self.description) <= MAX_DESCRIPTION, "fusion.description", self.description,
              f"at most {MAX_DESCRIPTION} characters")
        check(self.subtitle_file == "" or self.subtitle_file.lower().endswith((".srt", ".vtt")),
              "fusion.subtitle_file", self.subtitle_file, "a .srt or .vtt file, or empty")
        for name, value in self.weights.items():
            check(name in SOURCES, f"fusion.weights.{name}", value,
                  f"a weight for one of {', '.join(SOURCES)}")
            check(0.0 <= value <= 1e6, f"fusion.weights.{name}", value, ">= 0")
        check(0.0 <= self.strength <= 4.0, "fusion.strength", self.strength, "between 0 and 4")
        check(bool(self.voice_classes) and all(self.voice_classes), "fusion.voice_classes",
              self.voice_classes, "a non-empty list of class names")
        check(0.02 <= self.voice_window_s <= 10.0, "fusion.voice_window_s", self.voice_window_s,
              "between 0.02 and 10 seconds")
        check(0.0 <= self.noise_percentile < 100.0, "fusion.noise_percentile",
              self.noise_percentile, "in [0, 100)")
        check(self.activity_span_db > 0, "fusion.activity_span_db", self.activity_span_db,
              "> 0 dB")
        check(-150.0 <= self.silence_db <= 0.0, "fusion.silence_db", self.silence_db,
              "between -150 and 0 dBFS")
        for word, cls in self.words.items():
            check(re.fullmatch(r"[a-z]+", word) is not None, f"fusion.words.{word}", cls,
                  "keys of lowercase letters only")
            check(isinstance(cls, str) and cls != "", f"fusion.words.{word}", cls,
                  "a class name")
