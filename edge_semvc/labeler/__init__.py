"""The labeler (METHOD S110, the label computation module): what is where in each frame.

Each model in `labeler.models` is described by the registry (`registry.yaml`) or by its config
entry, and wrapped by the adapter of its `decoder`: the adapter turns a Frame into one probability
plane per product class (person, face, text, vehicle, ...) on the macroblock grid. The Labeler
fuses the planes of all models into one LabelMap:

1. the same class from several models combines by maximum: probs[c] = max_m P_m[c];
2. a class is a candidate in a macroblock where some model's plane for it exceeds that model's
   threshold (its `threshold`, default `labeler.threshold`);
3. the macroblock takes the candidate that comes first in `labeler.priority` (default face, text,
   person, vehicle: the smaller, more specific region wins where regions overlap); candidates
   not in the list come after the listed ones, the most probable first; no candidate: background.

Each model runs every `interval` frames (its own, default `labeler.interval`); in between, its
last planes are carried to the current frame by per-macroblock motion compensation
(`labeler.reuse: motion`, reuse.py) or held unchanged (`hold`). A detected scene cut makes every
model run.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..frame import Frame
from ..values import LabelMap
from .config import LabelerConfig
from .decoders import (
    blazeface_anchors,
    boxes_to_mb,
    decode_blazeface,
    decode_boxes,
    decode_nanodet,
    decode_yolox,
    pool_max_to_mb,
    segmentation_to_mb,
    sigmoid,
)
from .preprocess import Geometry, InputTransform
from .reuse import PlaneCarrier
from .runtime import LabelerError, open_runtime
from .schedule import Budget, Worker


class Adapter:
    """One model: its description, its input transform, its runtime. Calling it on a frame
    gives float32[len(classes), mb_h, mb_w] (one plane per product class in `classes`)."""

    def __init__(self, desc: dict, runtime, cfg: LabelerConfig, key: str = "model"):
        self.desc, self.rt, self.key = desc, runtime, key
        self.name = desc["name"]
        self.classes: list[str] = list(desc["products"])
        self.targets: list[list[int]] = desc["targets"]  # model class indices per product class
        self.threshold = desc["threshold"] if desc["threshold"] is not None else cfg.threshold
        self.interval = desc["interval"] or cfg.interval
        self.requires: str | None = desc.get("requires")
        self.opts = desc["options"]
        self.input = InputTransform(desc["input"], runtime.input_shape, f"{key}.input")

    def infer(self, frame: Frame) -> tuple[list[np.ndarray], Geometry]:
        x, geometry = self.input(frame)
        return list(self.rt.run(x).values()), geometry

    def __call__(self, frame: Frame) -> np.ndarray:
        raise NotImplementedError

    def _error(self, what: str) -> LabelerError:
        return LabelerError(f"{self.key} ({self.name}): {what}")


class MaskAdapter(Adapter):
    """`probability-mask` and `db-text`: per-pixel class scores [C, h, w] (after `activation`:
    none, sigmoid or softmax over the classes), the letterbox padding cropped off, classes summed
    (softmax: exclusive classes) or maxed (independent ones) into product classes, then pooled
    to macroblocks by area mean (`pool: mean`) or by the maximum over quarter-macroblock cells
    (`pool: max`, the db-text default: text strokes are thin)."""

    def __call__(self, frame: Frame) -> np.ndarray:
        outs, g = self.infer(frame)
        out = self._output(outs)
        layout = self.opts["output_layout"] or self.input.layout
        if out.ndim == 4:
            maps = out[0].transpose(2, 0, 1) if layout == "NHWC" else out[0]
        elif out.ndim in (2, 3):
            maps = out.reshape(-1, *out.shape[-2:])
        else:
            raise self._error(f"output of shape {out.shape} is not a probability map")
        n = len(self.desc["classes"])
        if maps.shape[0] != n:
            raise self._error(f"the output has {maps.shape[0]} channels, `classes` names {n}")
        oh, ow = maps.shape[1:]
        sx, sy = ow / g.in_w, oh / g.in_h
        maps = maps[:, round(g.y0 * sy):round((g.y0 + g.ch) * sy),
                    round(g.x0 * sx):round((g.x0 + g.cw) * sx)].astype(np.float32)  # a copy
        act = self.opts["activation"]
        if act == "softmax":  # exclusive classes: a product class sums its model classes
            maps -= maps.max(axis=0)
            np.exp(maps, out=maps)
            inv = 1.0 / maps.sum(axis=0)
            probs = [maps[t].sum(axis=0) * inv for t in self.targets]
        else:  # independent classes: the most probable one
            if act == "sigmoid":
                maps = sigmoid(maps)
            probs = [np.clip(maps[t].max(axis=0), 0.0, 1.0) for t in self.targets]
        pool = pool_max_to_mb if self.opts["pool"] == "max" else segmentation_to_mb
        return np.stack([pool(p, frame.width, frame.height) for p in probs])

    def _output(self, outs: list[np.ndarray]) -> np.ndarray:
        which = self.opts["output"]
        if isinstance(which, str):
            names = self.rt.output_names
            if which not in names:
                raise self._error(f"no output named {which!r} (outputs: {', '.join(names)})")
            return outs[names.index(which)]
        if which >= len(outs):
            raise self._error(f"output {which} does not exist (the model has {len(outs)})")
        return outs[which]


class SsdAnchorAdapter(Adapter):
    """`ssd-anchors`: BlazeFace-style heads (regressors [1, n, 4+], logits [1, n, 1]) on an anchor
    grid (`anchors: {strides, per_layer}`), sigmoid scores, NMS; boxes grown by `box_scale`
    (default `labeler.face_box_scale`) and rasterised with their score; detections under
    `min_score` (default `labeler.face_min_score`) are dropped."""

    def __init__(self, desc, runtime, cfg, key="model"):
        super().__init__(desc, runtime, cfg, key)
        if len(desc["classes"]) != 1:
            raise self._error("the ssd-anchors decoder takes one class")
        w, h = self.input.size
        if w != h:
            raise self._error(f"the ssd-anchors decoder needs a square input, not {w}x{h}")
        a = self.opts["anchors"]
        self.anchors = blazeface_anchors(w, a["strides"], a["per_layer"])
        self.min_score = self.opts["min_score"]
        if self.min_score is None:
            self.min_score = cfg.face_min_score
        self.box_scale = self.opts["box_scale"] or cfg.face_box_scale
        # The detections of the latest run, float32[n, 5] (x1, y1, x2, y2 in frame pixels,
        # score), as detected (not grown by box_scale); replaced, never changed in place.
        self.last_boxes = np.zeros((0, 5), np.float32)

    def __call__(self, frame: Frame) -> np.ndarray:
        outs, g = self.infer(frame)
        reg, logits = sorted(outs, key=lambda a: -a.shape[-1])[:2]
        try:
            boxes = decode_blazeface(reg, logits, self.min_score, g.in_w,
                                     self.opts["iou_threshold"], self.anchors)
        except ValueError as e:
            raise self._error(str(e)) from None
        boxes[:, :4] *= g.in_w
        boxes = g.boxes_to_frame(boxes)
        pixels = boxes.copy()
        pixels[:, [0, 2]] *= frame.width
        pixels[:, [1, 3]] *= frame.height
        self.last_boxes = pixels
        return boxes_to_mb(boxes, frame.width, frame.height, self.box_scale)[None]


class _BoxPlanes(Adapter):
    def planes(self, boxes: np.ndarray, g: Geometry, frame: Frame) -> np.ndarray:
        """[k, 6] (x1, y1, x2, y2 in input pixels, score, model class) -> product planes.
        Boxes larger than `max_box_area` (a fraction of the frame) are dropped: a detector
        entry can leave close-ups to a segmenter, whose masks follow the person's outline."""
        boxes = g.boxes_to_frame(boxes)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        boxes = boxes[area <= self.opts["max_box_area"]]
        scale = self.opts["box_scale"] or 1.0
        return np.stack([boxes_to_mb(boxes[np.isin(boxes[:, 5], t)], frame.width, frame.height,
                                     scale) for t in self.targets])


class YoloxAdapter(_BoxPlanes):
    """`yolox`: the raw YOLOX head [1, n, 5 + classes] decoded on its grid (`strides`), scored
    objectness x class, per-class NMS (`decode_yolox`); boxes of mapped classes scoring at least
    the model's threshold are rasterised with their score."""

    def __call__(self, frame: Frame) -> np.ndarray:
        outs, g = self.infer(frame)
        raw = outs[0]
        if raw.shape[-1] != 5 + len(self.desc["classes"]):
            raise self._error(f"the head has {raw.shape[-1] - 5} classes, `classes` names "
                              f"{len(self.desc['classes'])}")
        try:
            boxes = decode_yolox(raw, (g.in_h, g.in_w), self.threshold,
                                 self.opts["iou_threshold"], tuple(self.opts["strides"]))
        except ValueError as e:
            raise self._error(str(e)) from None
        return self.planes(boxes, g, frame)


class NanodetAdapter(_BoxPlanes):
    """`nanodet`: a NanoDet/GFL head (per stride: sigmoid class scores and box-side
    distributions, `decode_nanodet`); boxes of mapped classes scoring at least the model's
    threshold are rasterised with their score."""

    def __call__(self, frame: Frame) -> np.ndarray:
        outs, g = self.infer(frame)
        n = len(self.desc["classes"])
        by_size = sorted(outs, key=lambda o: -o.shape[-2])  # finest stride first
        scores = [o for o in by_size if o.shape[-1] == n]
        dists = [o for o in by_size if o.shape[-1] != n]
        strides = self.opts["strides"]
        if not (len(scores) == len(dists) == len(strides)) or any(
                d.shape[-1] % 4 for d in dists):
            raise self._error(f"expected {len(strides)} score outputs [1, HW, {n}] and as many "
                              f"box outputs [1, HW, 4k], got {[o.shape for o in outs]}")
        try:
            boxes = decode_nanodet(scores, dists, (g.in_h, g.in_w), self.threshold,
                                   self.opts["iou_threshold"], tuple(strides))
        except ValueError as e:
            raise self._error(str(e)) from None
        return self.planes(boxes, g, frame)


class BoxesAdapter(_BoxPlanes):
    """`boxes`: detections already decoded by the model (scores [1, n, classes] and boxes
    [1, n, 4] as x1, y1, x2, y2 fractions of the input), per-class NMS."""

    def __call__(self, frame: Frame) -> np.ndarray:
        outs, g = self.infer(frame)
        n = len(self.desc["classes"])
        box_i = [i for i, o in enumerate(outs) if o.shape[-1] == 4][:1]
        score_i = [i for i, o in enumerate(outs) if o.shape[-1] == n and i not in box_i][:1]
        if not box_i or not score_i:
            raise self._error(f"expected a [1, n, 4] box output and a [1, n, {n}] score output, "
                              f"got {[o.shape for o in outs]}")
        ids = sorted({i for t in self.targets for i in t})
        boxes = decode_boxes(outs[score_i[0]], outs[box_i[0]], ids, self.threshold,
                             self.opts["iou_threshold"])
        boxes[:, [0, 2]] *= g.in_w
        boxes[:, [1, 3]] *= g.in_h
        return self.planes(boxes, g, frame)


ADAPTERS = {
    "probability-mask": MaskAdapter,
    "db-text": MaskAdapter,
    "ssd-anchors": SsdAnchorAdapter,
    "yolox": YoloxAdapter,
    "nanodet": NanodetAdapter,
    "boxes": BoxesAdapter,
}


def fuse(contributions: list[tuple[list[str], np.ndarray, float]], priority: list[str],
         models: list[str] = (), shape: tuple[int, int] | None = None) -> LabelMap:
    """The fusion rule (module docstring): `contributions` are (classes, planes, threshold) per
    model. Returns a LabelMap with classes in order of first appearance."""
    classes: list[str] = []
    for cls, _, _ in contributions:
        classes += [c for c in cls if c not in classes]
    if shape is None:
        shape = contributions[0][1].shape[1:] if contributions else (0, 0)
    probs = np.zeros((len(classes), *shape), np.float32)
    above = np.zeros((len(classes), *shape), bool)
    for cls, planes, threshold in contributions:
        for c, plane in zip(cls, planes):
            i = classes.index(c)
            np.maximum(probs[i], plane, out=probs[i])
            above[i] |= plane > threshold
    labels = np.zeros(shape, np.int16)
    ranked = [c for c in priority if c in classes]
    rest = [classes.index(c) for c in classes if c not in ranked]
    if rest:  # unlisted classes: the most probable candidate
        p = np.where(above[rest], probs[rest], -1.0)
        best = p.argmax(axis=0)
        hit = p.max(axis=0) >= 0
        labels[hit] = np.asarray(rest)[best[hit]] + 1
    for c in reversed(ranked):  # listed classes, the first one last: it wins
        i = classes.index(c)
        labels[above[i]] = i + 1
    return LabelMap(probs, ["background", *classes], labels, list(models))


def gate(models: list[tuple[str, Adapter]], planes: list[np.ndarray], k: int) -> np.ndarray:
    """Model k's planes, restricted to its regions that touch a region of its `requires` class
    (from any model) when it has one: e.g. a selfie segmenter's person only where a face was
    found, which drops the walls, trees and cliffs such a model mistakes for people."""
    m = models[k][1]
    if not m.requires:
        return planes[k]
    required = np.zeros(planes[k].shape[1:], bool)
    for (_, other), p in zip(models, planes):
        if m.requires in other.classes:
            required |= p[other.classes.index(m.requires)] > other.threshold
    near = ndimage.binary_dilation(required)  # touching counts
    out = planes[k].copy()
    for plane in out:
        regions, n = ndimage.label(plane > m.threshold)
        if n:
            keep = np.zeros(n + 1, bool)
            keep[np.unique(regions[near & (regions > 0)])] = True
            plane[(regions > 0) & ~keep[regions]] = 0.0
    return out


class Labeler:
    """All models of `labeler.models`, scheduled, carried between their runs and fused."""

    def __init__(self, cfg: LabelerConfig, cache_dir: Path, log=print,
                 clock=None, thread_clock=None):
        from .registry import describe, prepared_file

        self.cfg = cfg
        self.models: list[tuple[str, Adapter]] = []
        for i, entry in enumerate(cfg.models):
            key = f"labeler.models[{i}]"
            desc = describe(entry, key)
            path = prepared_file(desc, key, cache_dir)
            adapter = ADAPTERS[desc["decoder"]](desc, open_runtime(cfg.runtime, path, cfg.threads),
                                                cfg, key)
            self.models.append((desc["name"], adapter))
        self.classes: list[str] = []
        for _, m in self.models:
            self.classes += [c for c in m.classes if c not in self.classes]
        self.model_names = [name for name, _ in self.models]
        for i, (_, m) in enumerate(self.models):
            if m.requires and m.requires not in self.classes:
                logging.getLogger("edge_semvc").warning(
                    "labeler.models[%d] (%s) requires %r, which no model here labels: its "
                    "regions are used without that check (set its `requires: null` to "
                    "silence this)", i, m.name, m.requires)
                m.requires = None
        self.carrier = PlaneCarrier(cfg.reuse)
        intervals = [m.interval for _, m in self.models]
        self.budget = (Budget(cfg.cpu_budget, intervals, **({"clock": clock} if clock else {}))
                       if cfg.cpu_budget > 0 else None)
        self.worker = Worker(self._run_model, inline=self.budget is None or not cfg.parallel,
                             **({"thread_clock": thread_clock} if thread_clock else {}))
        self._n = -1  # frames seen
        self._live: list[int | None] = [None] * len(self.models)  # frame of each model's planes
        self._last_run = [-(1 << 30)] * len(self.models)
        self._last_run_s = [float("-inf")] * len(self.models)  # stream time of that frame
        self._now_s = 0.0
        self.runs = [0] * len(self.models)
        # How old each model's labels were on each frame: a histogram (runs last for months).
        self.staleness = [Counter() for _ in self.models]
        self._fresh: set[int] = set()  # models whose new results arrived on this frame
        self._grid = None
        self._grid_changed = True  # the current frame starts a new picture size (or the first)

    def _run_model(self, k: int, frame: Frame) -> np.ndarray:
        return self.models[k][1](frame)

    def _due(self, cut: bool) -> list[int]:
        """The models to run on the current frame."""
        if cut or self._grid_changed:
            return list(range(len(self.models)))
        intervals = (self.budget.intervals() if self.budget else
                     [m.interval for _, m in self.models])
        if self.budget is None:  # fixed intervals: every k-th frame
            return [k for k, iv in enumerate(intervals) if self._n % iv == 0]
        # The budget's interval, or sooner when the labels would get older than max_age_s.
        return [k for k, iv in enumerate(intervals) if self._n - self._last_run[k] >= iv
                or self._now_s - self._last_run_s[k] >= self.cfg.max_age_s]

    def _collect(self, results) -> None:
        for n, out in results:
            for k, planes, cost in out:
                if self.budget:
                    self.budget.add_run(k, cost)
                    self._fresh.add(k)
                if (k, n) not in self.carrier:  # computed before the picture size changed
                    continue
                if self._live[k] is not None and self._live[k] != n:
                    self.carrier.drop((k, self._live[k]))
                self.carrier.fill((k, n), planes)
                self._live[k] = n

    def label(self, frame: Frame, cut: bool = False) -> LabelMap:
        """`cut`: the frame starts a new scene (the run's one decision, analysis/scene.py):
        every model runs on it and it waits for their labels."""
        c = self.carrier
        self._n += 1
        if frame.pts is not None and frame.time_base:
            self._now_s = float(frame.pts * frame.time_base)
        c.step(frame.y)
        if self.budget:
            self.budget.frame()
        grid = (frame.mb_h, frame.mb_w)
        self._grid_changed = grid != self._grid
        if self._grid_changed:  # first frame or a new picture size: nothing to carry
            self._live = [None] * len(self.models)
            self._grid = grid
        self._collect(self.worker.results())
        continues = self._n > 0 and not self._grid_changed
        if continues:
            c.follow()
        cut = cut and continues
        due = self._due(cut)
        if cut and self.worker.busy:  # what is running started before the cut
            self._collect(self.worker.results(wait=True))
        if due and not self.worker.busy:
            for k in due:
                # Box planes: each box is moved whole (reuse.py).
                interp = "nearest" if isinstance(self.models[k][1],
                                                 (SsdAnchorAdapter, _BoxPlanes)) else None
                c.mark((k, self._n), interp)
                self._last_run[k], self._last_run_s[k] = self._n, self._now_s
                self.runs[k] += 1
            self.worker.submit(self._n, frame, due)
            # The first frame and a cut wait for their own labels (see schedule.py).
            self._collect(self.worker.results(wait=cut or self._grid_changed
                                              or self.worker.inline))
        planes = []
        for k, (_, m) in enumerate(self.models):
            n = self._live[k]
            if n is None:
                planes.append(np.zeros((len(m.classes), *grid), np.float32))
                continue
            planes.append(c.get((k, n)))
            self.staleness[k][self._n - n] += 1
        gated = [gate(self.models, planes, k) for k in range(len(self.models))]
        for k in self._fresh:  # what a new result added, after its `requires` check
            self.budget.found(k, bool((gated[k] > self.models[k][1].threshold).any()))
        self._fresh.clear()
        return fuse([(m.classes, gated[k], m.threshold) for k, (_, m) in enumerate(self.models)],
                    self.cfg.priority, self.model_names, grid)

    def last_boxes(self, name: str) -> np.ndarray | None:
        """Read-only: the face boxes of the ssd-anchors model `name` from its latest run,
        float32[n, 5] (x1, y1, x2, y2 in frame pixels, score); None when no such model runs
        here. Under a CPU budget that run may be a few frames old (its planes are carried with
        the motion; these boxes are not)."""
        for model_name, m in self.models:
            if model_name == name and isinstance(m, SsdAnchorAdapter):
                return m.last_boxes
        return None

    def stats(self) -> dict:
        """Per model: runs, how stale its labels were (frames), mean CPU per run."""
        out = {}
        for k, name in enumerate(self.model_names):
            hist = self.staleness[k] or Counter({0: 1})
            ages = np.array(sorted(hist))
            counts = np.array([hist[a] for a in ages])
            cum = np.cumsum(counts)
            cost = self.budget.costs[k] if self.budget else None
            out[name] = {"runs": self.runs[k],
                         "staleness_frames": {
                             "mean": round(float((ages * counts).sum() / cum[-1]), 2),
                             "p95": int(ages[np.searchsorted(cum, 0.95 * cum[-1])]),
                             "max": int(ages[-1])},
                         "cpu_ms_per_run": round(cost * 1e3, 2) if cost else None}
        return out

    def close(self) -> None:
        self.worker.close()
