"""Model adapters: one per `decoder` of the registry (registry.yaml). An adapter wraps one model
(its description, input transform and runtime) and turns a Frame into one probability plane per
product class on the macroblock grid."""
from __future__ import annotations

import numpy as np

from ..errors import LabelerError
from ..frame import Frame
from ..registry import Registry
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


# decoder name (registry.py's DECODERS) -> its adapter
ADAPTERS = Registry("model decoder", {
    "probability-mask": "edge_semvc.labeler.adapters:MaskAdapter",
    "db-text": "edge_semvc.labeler.adapters:MaskAdapter",
    "ssd-anchors": "edge_semvc.labeler.adapters:SsdAnchorAdapter",
    "yolox": "edge_semvc.labeler.adapters:YoloxAdapter",
    "nanodet": "edge_semvc.labeler.adapters:NanodetAdapter",
    "boxes": "edge_semvc.labeler.adapters:BoxesAdapter",
}, LabelerError)
