"""The labeler (METHOD S110, the label computation module): what is where in each frame.

Each model is wrapped by a small adapter that turns a Frame into per-class probability planes
on the macroblock grid; the Labeler fuses all planes into one LabelMap (arg-max over classes
above the probability threshold) and, with `interval` k > 1, reuses it for k-1 frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import LabelerConfig
from ..frame import Frame
from ..values import LabelMap
from .decoders import boxes_to_mb, decode_blazeface, segmentation_to_mb
from .preprocess import letterbox, rgb_resized
from .runtime import LabelerError, open_runtime


class SelfieSegmenter:
    """MediaPipe selfie segmentation (landscape): person probability, 256x144 RGB in [0, 1]."""

    classes = ["person"]

    def __init__(self, runtime, cfg: LabelerConfig):
        self.rt = runtime
        _, self.h, self.w, _ = runtime.input_shape

    def __call__(self, frame: Frame) -> np.ndarray:
        x = rgb_resized(frame, self.w, self.h)[None] / 255.0
        (prob,) = self.rt.run(x.astype(np.float32)).values()
        return segmentation_to_mb(prob.reshape(self.h, self.w), frame.width, frame.height)[None]


class BlazeFaceDetector:
    """BlazeFace short range: face boxes on a letterboxed 128x128 RGB in [-1, 1]."""

    classes = ["face"]

    def __init__(self, runtime, cfg: LabelerConfig):
        self.rt = runtime
        self.size = runtime.input_shape[1]
        self.min_score = cfg.face_min_score
        self.box_scale = cfg.face_box_scale

    def __call__(self, frame: Frame) -> np.ndarray:
        s = self.size / max(frame.width, frame.height)
        w, h = max(1, round(frame.width * s)), max(1, round(frame.height * s))
        img, px, py = letterbox(rgb_resized(frame, w, h) / 127.5 - 1.0, self.size)
        outs = sorted(self.rt.run(img[None]).values(), key=lambda a: -a.shape[-1])
        boxes = decode_blazeface(outs[0], outs[1], self.min_score, self.size)
        # Letterbox fractions -> frame fractions.
        boxes[:, [0, 2]] = (boxes[:, [0, 2]] - px) * self.size / w
        boxes[:, [1, 3]] = (boxes[:, [1, 3]] - py) * self.size / h
        return boxes_to_mb(boxes, frame.width, frame.height, self.box_scale)[None]


ADAPTERS = {
    "selfie_segmentation_landscape": SelfieSegmenter,
    "face_detection_short_range": BlazeFaceDetector,
}


class Labeler:
    def __init__(self, cfg: LabelerConfig, cache_dir: Path, log=print):
        from .models import prepare_model

        self.cfg = cfg
        self.models = []
        for name in cfg.models:
            if name not in ADAPTERS:
                raise LabelerError(f"no labeler adapter for model {name!r} "
                                   f"(known: {', '.join(ADAPTERS)})")
            path = prepare_model(name, cache_dir, log=log)
            self.models.append((name, ADAPTERS[name](open_runtime(cfg.runtime, path, cfg.threads),
                                                     cfg)))
        self.classes = [c for _, m in self.models for c in m.classes]
        self.model_names = [name for name, _ in self.models]
        self._last: LabelMap | None = None

    def label(self, frame: Frame) -> LabelMap:
        if self._last is not None and frame.index % self.cfg.interval:
            return self._last
        planes = [m(frame) for _, m in self.models]
        probs = np.concatenate(planes) if planes else np.zeros((0, frame.mb_h, frame.mb_w),
                                                                np.float32)
        self._last = LabelMap.from_probs(probs, self.classes, self.cfg.threshold, self.model_names)
        return self._last
