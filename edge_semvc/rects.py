"""A QP map as a few rectangles, each with one QP delta: what an encoder with ROI slots takes
(Jetson's hardware encoder: at most 8 per frame, FACTS.md).

Algorithm: a k-d (guillotine) split by variance reduction. The whole map starts as one
rectangle; the rectangle whose best axis-aligned cut removes the most area-weighted squared
error is cut, again and again; each leaf takes its mean offset (the least-squares value).
Leaves with a zero mean need no slot (the encoder leaves what no rectangle covers at 0), and
leaves with the same delta that together form a rectangle are joined, so a cut that crosses
another region costs no extra slot. The longest sequence of cuts whose result fits
`max_rects` is kept.

Why this one (measured offline on every 4th mapped frame of the first 120 of the shared clips,
mean squared error of the rebuilt map for 8 rectangles, BENCHMARKS.md "Rectangles for hardware
encoders"): our maps are a constant background (all background is one region, pinned to a
positive mean) with constant labelled regions in it. The split covers the background too, with
non-overlapping rectangles, so the result does not depend on how an encoder resolves overlaps
(which differs: FACTS.md). Street / foreman / carphone / bikes: 0.85 / 0.03 / 0.36 / 0.01 QP^2
(a zero map: 3.9-5.7). The largest-|offset| regions first leave the background at 0 (3.2 /
3.5 / 3.4 / 0.95); greedily merged connected components need overlapping boxes (the background's
covers the frame) and fit the street's many pedestrians better (0.31) but not the others (3.5 /
3.4 / 0.65). Deterministic (ties: the first leaf, axis and position); under 1 ms at 1080p.
"""
from __future__ import annotations

import numpy as np

from .values import QpMap, Rect

_ZERO = 1e-3  # QP: a leaf whose mean is smaller than this needs no rectangle
_SAME = 1e-3  # QP: leaves this close in delta are one rectangle when their union is one
_GRACE = 2  # rectangles over the limit before the search gives up
_MIN_GAIN = 1e-6  # squared QP: a cut that removes less is not worth a rectangle


def to_rects(qp: QpMap, max_rects: int) -> list[Rect]:
    """At most `max_rects` non-overlapping rectangles approximating the map in the
    least-squares sense, 0 outside them (`QpMap.from_rects` rebuilds what they apply); deltas
    lie within the map's range. Here, not a `QpMap` method: value types import no stage."""
    if max_rects < 0:
        raise ValueError(f"max_rects must be >= 0, got {max_rects}")
    m = np.asarray(qp.offsets, np.float64)
    if max_rects == 0 or m.size == 0 or not m.any():
        return []
    lo, hi = float(m.min()), float(m.max())
    leaves = [(0, 0, m.shape[1], m.shape[0])]  # x, y, w, h
    cuts = {leaves[0]: _best_cut(m, leaves[0])}
    sums = np.zeros((m.shape[0] + 1, m.shape[1] + 1))
    sums[1:, 1:] = m.cumsum(0).cumsum(1)  # integral image: any leaf's mean in O(1)
    best = _fit(sums, leaves, lo, hi)
    # Each cut adds one leaf; zero leaves and joined pairs need no slot, so a cut may leave
    # the count where it was, or over the limit until the next cut joins a pair again; a few
    # slots' grace covers that. Beyond 4x the slots the gains are long spent.
    for _ in range(4 * max_rects + 4):
        i = max(range(len(leaves)), key=lambda k: (cuts[leaves[k]][0], -k))
        gain, a, b = cuts[leaves[i]]
        if gain <= _MIN_GAIN:
            break
        del cuts[leaves[i]]
        leaves[i:i + 1] = [a, b]
        cuts[a], cuts[b] = _best_cut(m, a), _best_cut(m, b)
        rects = _fit(sums, leaves, lo, hi)
        if len(rects) <= max_rects:
            best = rects
        elif len(rects) > max_rects + _GRACE:
            break
    return best if len(best) <= max_rects else []


def _best_cut(m: np.ndarray, leaf: tuple[int, int, int, int]):
    """(squared error removed, part a, part b) of the leaf's best cut; gain 0 if none."""
    x, y, w, h = leaf
    block = m[y:y + h, x:x + w]
    n, s = block.size, block.sum()
    best = (0.0, leaf, leaf)
    for axis in (0, 1):  # 0: a horizontal cut (rows above / below), 1: a vertical one
        length = block.shape[axis]
        if length < 2:
            continue
        line = block.sum(axis=1 - axis)  # sum per row (axis 0) or per column (axis 1)
        per_line = block.shape[1 - axis]
        left = np.cumsum(line)[:-1]
        n_left = per_line * np.arange(1, length)
        # error removed by a cut = sum^2/n of the parts minus that of the whole
        gain = left ** 2 / n_left + (s - left) ** 2 / (n - n_left) - s * s / n
        k = int(np.argmax(gain))
        if gain[k] > best[0] + _MIN_GAIN:
            c = k + 1
            parts = (((x, y, w, c), (x, y + c, w, h - c)) if axis == 0
                     else ((x, y, c, h), (x + c, y, w - c, h)))
            best = (float(gain[k]), *parts)
    return best


def _fit(sums: np.ndarray, leaves, lo: float, hi: float) -> list[Rect]:
    """Leaves as rectangles with their mean: zero ones dropped, equal neighbours joined."""
    rects = []
    for x, y, w, h in leaves:
        total = sums[y + h, x + w] - sums[y, x + w] - sums[y + h, x] + sums[y, x]
        d = min(max(float(total) / (w * h), lo), hi)
        if abs(d) >= _ZERO:
            rects.append([x, y, w, h, d, w * h])
    joined = True
    while joined:  # few leaves: the quadratic scan costs microseconds
        joined = False
        for i, a in enumerate(rects):
            for j in range(i + 1, len(rects)):
                b = rects[j]
                if abs(a[4] - b[4]) < _SAME and _union_is_rect(a, b):
                    x, y = min(a[0], b[0]), min(a[1], b[1])
                    w = max(a[0] + a[2], b[0] + b[2]) - x
                    h = max(a[1] + a[3], b[1] + b[3]) - y
                    d = (a[4] * a[5] + b[4] * b[5]) / (a[5] + b[5])  # area-weighted
                    rects[i] = [x, y, w, h, d, a[5] + b[5]]
                    del rects[j]
                    joined = True
                    break
            if joined:
                break
    return [Rect(x, y, w, h, d) for x, y, w, h, d, _ in rects]


def _union_is_rect(a, b) -> bool:
    """Side by side with the same rows, or stacked with the same columns."""
    ax, ay, aw, ah = a[:4]
    bx, by, bw, bh = b[:4]
    if ay == by and ah == bh:
        return ax + aw == bx or bx + bw == ax
    if ax == bx and aw == bw:
        return ay + ah == by or by + bh == ay
    return False
