"""Model outputs -> per-class probability planes on the macroblock grid."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..frame import MB, mb_grid, prob_to_mb


def segmentation_to_mb(prob: np.ndarray, frame_w: int, frame_h: int) -> np.ndarray:
    """[h, w] per-pixel class probability (already through sigmoid/softmax) -> [mb_h, mb_w]."""
    return prob_to_mb(prob, frame_w, frame_h)


def blazeface_anchors(input_size: int = 128, strides=(8, 16, 16, 16),
                      per_layer: int = 2) -> np.ndarray:
    """SSD anchor centres as MediaPipe's SsdAnchorsCalculator makes them for BlazeFace (fixed
    anchor size, offset 0.5): consecutive layers with the same stride share one grid, each
    adding `per_layer` anchors per cell. float32[n, 2] in [0, 1]. The defaults are BlazeFace
    short range (128, 896 anchors); full range is (192, strides (4,), 1 per layer): 2304."""
    groups: list[list[int]] = []
    for s in strides:
        if groups and groups[-1][0] == s:
            groups[-1][1] += per_layer
        else:
            groups.append([s, per_layer])
    centres = []
    for stride, per_cell in groups:
        grid = -(-input_size // stride)
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        c = np.stack([(xs + 0.5) / grid, (ys + 0.5) / grid], -1).reshape(-1, 1, 2)
        centres.append(np.repeat(c, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


_ANCHORS = blazeface_anchors()


def decode_blazeface(regressors: np.ndarray, logits: np.ndarray, min_score: float,
                     input_size: int = 128, iou_threshold: float = 0.3,
                     anchors: np.ndarray | None = None) -> np.ndarray:
    """Raw BlazeFace head -> float32[n, 5] boxes (x1, y1, x2, y2, score) in input fractions."""
    anchors = _ANCHORS if anchors is None else anchors
    reg = regressors.reshape(-1, regressors.shape[-1])
    if len(reg) != len(anchors):
        raise ValueError(f"SSD head has {len(reg)} boxes, the anchor layout gives {len(anchors)}")
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits.reshape(-1).astype(np.float32), -80.0, 80.0)))
    keep = scores >= min_score
    if not keep.any():
        return np.zeros((0, 5), np.float32)
    reg, scores, anchors = reg[keep], scores[keep], anchors[keep]
    cx = anchors[:, 0] + reg[:, 0] / input_size
    cy = anchors[:, 1] + reg[:, 1] / input_size
    w, h = reg[:, 2] / input_size, reg[:, 3] / input_size
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, scores], -1)
    return nms(boxes, iou_threshold)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes a[n, >=4] and b[m, >=4] (x1, y1, x2, y2)."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_counts(truth: np.ndarray, found: np.ndarray, iou: float = 0.5) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives): greedy one-to-one matching of
    `found` (highest score first, column 4) to `truth` at IoU >= `iou`."""
    if len(truth) == 0 or len(found) == 0:
        return 0, len(found), len(truth)
    found = found[np.argsort(-found[:, 4])] if found.shape[1] > 4 else found
    ious = box_iou(found, truth)
    used = np.zeros(len(truth), bool)
    tp = 0
    for row in ious:
        row = np.where(used, -1.0, row)
        j = int(row.argmax())
        if row[j] >= iou:
            used[j] = True
            tp += 1
    return tp, len(found) - tp, len(truth) - tp


def nms(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression on [n, 5] (x1, y1, x2, y2, score)."""
    order = np.argsort(-boxes[:, 4])
    kept = []
    while order.size:
        i, rest = order[0], order[1:]
        kept.append(i)
        order = rest[box_iou(boxes[i:i + 1], boxes[rest])[0] <= iou_threshold]
    return boxes[kept].astype(np.float32)


def boxes_to_mb(boxes: np.ndarray, frame_w: int, frame_h: int, scale: float = 1.0) -> np.ndarray:
    """Rasterise [n, 5] boxes (frame fractions + score) to a soft mask on the macroblock grid:
    a macroblock whose centre lies inside a box (grown by `scale` about its centre) takes the
    box's score, and so does the macroblock holding the box's centre (a box smaller than a
    macroblock is not lost); overlapping boxes keep the highest."""
    mb_w, mb_h = mb_grid(frame_w, frame_h)
    out = np.zeros((mb_h, mb_w), np.float32)
    cx = (np.arange(mb_w) * MB + MB / 2) / frame_w
    cy = (np.arange(mb_h) * MB + MB / 2) / frame_h
    for x1, y1, x2, y2, score in np.asarray(boxes, np.float32)[:, :5]:
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        hw, hh = (x2 - x1) * scale / 2, (y2 - y1) * scale / 2
        inside = (np.abs(cy - my)[:, None] <= hh) & (np.abs(cx - mx)[None, :] <= hw)
        np.maximum(out, np.where(inside, score, 0.0), out=out)
        if 0.0 <= mx < 1.0 and 0.0 <= my < 1.0:
            i, j = int(my * frame_h) // MB, int(mx * frame_w) // MB
            out[i, j] = max(out[i, j], score)
    return out


def pool_max_to_mb(prob: np.ndarray, frame_w: int, frame_h: int,
                   sub: int | None = None) -> np.ndarray:
    """Like `segmentation_to_mb` but the maximum: the map is area-averaged onto `sub` x `sub`
    cells per macroblock (default: about one map pixel per cell, at least 4), then each
    macroblock takes its highest cell. For thin structures (text lines) that a macroblock mean
    would dilute."""
    mb_w, mb_h = mb_grid(frame_w, frame_h)
    h, w = prob.shape
    if sub is None:
        sub = max(4, int(np.ceil(max(w * MB / frame_w, h * MB / frame_h))))
    span_w, span_h = w * mb_w * MB / frame_w, h * mb_h * MB / frame_h
    padded = np.pad(prob.astype(np.float32), ((0, int(np.ceil(span_h)) - h + 1),
                                              (0, int(np.ceil(span_w)) - w + 1)), mode="edge")
    img = Image.fromarray(padded, mode="F").resize(
        (mb_w * sub, mb_h * sub), Image.Resampling.BOX, box=(0.0, 0.0, span_w, span_h))
    return np.asarray(img, np.float32).reshape(mb_h, sub, mb_w, sub).max(axis=(1, 3))


def decode_boxes(scores: np.ndarray, boxes: np.ndarray, class_ids, min_score: float,
                 iou_threshold: float = 0.3) -> np.ndarray:
    """Already decoded detections (scores [1, n, classes], boxes [1, n, 4] as x1, y1, x2, y2 in
    input fractions, e.g. Ultra-Light-Fast face) -> float32[k, 6] (x1, y1, x2, y2, score, class)
    for the classes in `class_ids`, after per-class NMS."""
    sc = scores.reshape(-1, scores.shape[-1]).astype(np.float32)
    bx = boxes.reshape(-1, 4).astype(np.float32)
    out = [np.zeros((0, 6), np.float32)]
    for c in class_ids:
        keep = sc[:, c] >= min_score
        if keep.any():
            kept = nms(np.column_stack([bx[keep], sc[keep, c]]), iou_threshold)
            out.append(np.column_stack([kept, np.full(len(kept), c, np.float32)]))
    return np.concatenate(out).astype(np.float32)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -80.0, 80.0)))


def decode_yolox(raw: np.ndarray, input_hw: tuple[int, int], score_threshold: float = 0.3,
                 iou_threshold: float = 0.45, strides=(8, 16, 32)) -> np.ndarray:
    """A raw YOLOX head [1, n, 5 + classes] -> float32[k, 6] (x1, y1, x2, y2, score, class) in
    input pixels, after per-class NMS. Cells are ordered stride by stride, row-major:
    xy = (out + grid) * stride, wh = exp(out) * stride, score = objectness * class score."""
    pred = raw.reshape(-1, raw.shape[-1]).astype(np.float32)
    h, w = input_hw
    grids, scale = [], []
    for s in strides:
        gy, gx = np.meshgrid(np.arange(h // s), np.arange(w // s), indexing="ij")
        grids.append(np.stack([gx, gy], -1).reshape(-1, 2))
        scale.append(np.full(len(grids[-1]), s))
    grid, scale = np.concatenate(grids), np.concatenate(scale)[:, None]
    if len(grid) != len(pred):
        raise ValueError(f"YOLOX head has {len(pred)} cells, input {w}x{h} gives {len(grid)}")
    cls = pred[:, 5:].argmax(1)
    score = pred[:, 4] * pred[np.arange(len(pred)), 5 + cls]
    keep = score >= score_threshold
    xy = (pred[keep, :2] + grid[keep]) * scale[keep]
    wh = np.exp(np.clip(pred[keep, 2:4], -10, 10)) * scale[keep]
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2, score[keep, None], cls[keep, None]], 1)
    out = [np.zeros((0, 6), np.float32)]
    for c in np.unique(boxes[:, 5]):
        kept = nms(boxes[boxes[:, 5] == c, :5], iou_threshold)
        out.append(np.column_stack([kept, np.full(len(kept), c)]))
    return np.concatenate(out).astype(np.float32)


def decode_nanodet(scores: list[np.ndarray], dists: list[np.ndarray], input_hw: tuple[int, int],
                   score_threshold: float = 0.4, iou_threshold: float = 0.6,
                   strides=(8, 16, 32)) -> np.ndarray:
    """A NanoDet (GFL) head -> float32[k, 6] (x1, y1, x2, y2, score, class) in input pixels,
    after per-class NMS. Per stride s: `scores` [1, HW, C] (already sigmoid) and `dists`
    [1, HW, 4 x (reg_max + 1)] on the (H/s) x (W/s) grid, row-major; each box side is the
    expected value of a softmax over reg_max + 1 bins, times s, measured from the cell centre
    ((i + 0.5) s) as left, top, right, bottom."""
    h, w = input_hw
    out = [np.zeros((0, 6), np.float32)]
    found = []
    for s, sc, dist in zip(strides, scores, dists):
        gh, gw = -(-h // s), -(-w // s)
        sc = sc.reshape(-1, sc.shape[-1])
        if len(sc) != gh * gw:
            raise ValueError(f"NanoDet head has {len(sc)} cells at stride {s}, input {w}x{h} "
                             f"gives {gh * gw}")
        cls = sc.argmax(1)
        score = sc[np.arange(len(sc)), cls]
        keep = np.flatnonzero(score >= score_threshold)
        if not keep.size:
            continue
        d = dist.reshape(len(sc), 4, -1)[keep].astype(np.float32)
        d = np.exp(d - d.max(-1, keepdims=True))
        side = (d * np.arange(d.shape[-1], dtype=np.float32)).sum(-1) / d.sum(-1) * s  # [k, 4]
        cx = (keep % gw + 0.5) * s
        cy = (keep // gw + 0.5) * s
        found.append(np.column_stack([cx - side[:, 0], cy - side[:, 1], cx + side[:, 2],
                                      cy + side[:, 3], score[keep], cls[keep]]))
    if found:
        boxes = np.concatenate(found).astype(np.float32)
        for c in np.unique(boxes[:, 5]):
            kept = nms(boxes[boxes[:, 5] == c, :5], iou_threshold)
            out.append(np.column_stack([kept, np.full(len(kept), c)]))
    return np.concatenate(out).astype(np.float32)
