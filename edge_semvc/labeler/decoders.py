"""Model outputs -> per-class probability planes on the macroblock grid."""
from __future__ import annotations

import numpy as np

from ..frame import MB, mb_grid, prob_to_mb


def segmentation_to_mb(prob: np.ndarray, frame_w: int, frame_h: int) -> np.ndarray:
    """[h, w] per-pixel class probability (already through sigmoid/softmax) -> [mb_h, mb_w]."""
    return prob_to_mb(prob, frame_w, frame_h)


def blazeface_anchors() -> np.ndarray:
    """The 896 anchor centres of BlazeFace short range (MediaPipe's SsdAnchorsCalculator with
    input 128, strides 8/16/16/16, fixed anchor size, offset 0.5): float32[896, 2] in [0, 1]."""
    centres = []
    for grid, per_cell in ((16, 2), (8, 6)):
        ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
        c = np.stack([(xs + 0.5) / grid, (ys + 0.5) / grid], -1).reshape(-1, 1, 2)
        centres.append(np.repeat(c, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(centres).astype(np.float32)


_ANCHORS = blazeface_anchors()


def decode_blazeface(regressors: np.ndarray, logits: np.ndarray, min_score: float,
                     input_size: int = 128, iou_threshold: float = 0.3) -> np.ndarray:
    """Raw BlazeFace head -> float32[n, 5] boxes (x1, y1, x2, y2, score) in input fractions."""
    reg = regressors.reshape(-1, 16)
    scores = 1.0 / (1.0 + np.exp(-np.clip(logits.reshape(-1).astype(np.float32), -80.0, 80.0)))
    keep = scores >= min_score
    if not keep.any():
        return np.zeros((0, 5), np.float32)
    reg, scores, anchors = reg[keep], scores[keep], _ANCHORS[keep]
    cx = anchors[:, 0] + reg[:, 0] / input_size
    cy = anchors[:, 1] + reg[:, 1] / input_size
    w, h = reg[:, 2] / input_size, reg[:, 3] / input_size
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, scores], -1)
    return nms(boxes, iou_threshold)


def nms(boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression on [n, 5] (x1, y1, x2, y2, score)."""
    order = np.argsort(-boxes[:, 4])
    kept = []
    while order.size:
        i = order[0]
        kept.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return boxes[kept].astype(np.float32)


def boxes_to_mb(boxes: np.ndarray, frame_w: int, frame_h: int, scale: float = 1.0) -> np.ndarray:
    """Rasterise [n, 5] boxes (frame fractions + score) to a soft mask on the macroblock grid:
    a macroblock whose centre lies inside a box (grown by `scale` about its centre) takes the
    box's score; overlapping boxes keep the highest."""
    mb_w, mb_h = mb_grid(frame_w, frame_h)
    out = np.zeros((mb_h, mb_w), np.float32)
    cx = (np.arange(mb_w) * MB + MB / 2) / frame_w
    cy = (np.arange(mb_h) * MB + MB / 2) / frame_h
    for x1, y1, x2, y2, score in boxes:
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        hw, hh = (x2 - x1) * scale / 2, (y2 - y1) * scale / 2
        inside = (np.abs(cy - my)[:, None] <= hh) & (np.abs(cx - mx)[None, :] <= hw)
        np.maximum(out, np.where(inside, score, 0.0), out=out)
    return out


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
