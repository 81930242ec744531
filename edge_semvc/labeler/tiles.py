"""Tiles: a box detector also run on overlapping crops of a frame much larger than its input.

Seen whole, a 854x480 drone frame shrinks to NanoDet's 512x288 and a car 20 px wide becomes a
few input pixels, below what the detector finds. Cut into overlapping tiles about the input's
size, each crop reaches the detector near its own scale. Each tile is one more model for the
scheduler (schedule.py): it runs within the same budget (the budget decides how often; a job
of the worker holds one tile at most, the one waiting longest, so the tiles take turns and no
job holds the whole view up for a whole grid of runs), its planes are
carried by motion between its runs, a tile that keeps finding nothing runs less often, and its
planes fuse with the whole view's by maximum (labeler/__init__.py). The whole view keeps its
place: large and close objects, the first frame and scene cuts.
"""
from __future__ import annotations

import math

import numpy as np

from ..frame import MB, Frame

OVERLAP = 0.15  # a tile overlaps its neighbour by this share: an object on a seam is whole in one
MAX_SIDE = 4  # tiles per side at most (4K: 16 tiles, each still twice the whole view's scale)


def tile_rects(width: int, height: int, in_w: int, in_h: int,
               above: float) -> list[tuple[float, float, float, float]]:
    """Overlapping tiles (x0, y0, x1, y1 as fractions of the frame) covering a width x height
    frame for a detector whose input is in_w x in_h; none unless the whole frame shrinks by
    `above` or more to fit that input (0: never)."""
    shrink = max(width / in_w, height / in_h)
    if above <= 0 or shrink < above:
        return []
    cols = min(MAX_SIDE, max(1, round(width / in_w * (1 + OVERLAP))))
    rows = min(MAX_SIDE, max(1, round(height / in_h * (1 + OVERLAP))))

    def spans(n: int) -> list[tuple[float, float]]:
        if n == 1:
            return [(0.0, 1.0)]
        size = min(1.0, (1 + OVERLAP) / n)
        return [(i * (1 - size) / (n - 1), i * (1 - size) / (n - 1) + size) for i in range(n)]

    return [(x0, y0, x1, y1) for y0, y1 in spans(rows) for x0, x1 in spans(cols)]


def crop_frame(frame: Frame, x0: int, y0: int, x1: int, y1: int) -> Frame:
    """The part [y0:y1, x0:x1] of `frame` (x0, y0 even: the chroma planes are half size)."""
    c = (slice(y0 // 2, (y1 + 1) // 2), slice(x0 // 2, (x1 + 1) // 2))
    return Frame(np.ascontiguousarray(frame.y[y0:y1, x0:x1]), np.ascontiguousarray(frame.u[c]),
                 np.ascontiguousarray(frame.v[c]), frame.pts, frame.time_base, frame.index)


class Tile:
    """One tile of a box detector: calling it runs the detector on the crop and gives its
    planes on the whole frame's macroblock grid (zero outside the crop). The crop is widened
    to macroblock edges, so its grid is a part of the frame's."""

    def __init__(self, detector, rect: tuple[float, float, float, float], number: int,
                 count: int):
        self.detector, self.rect = detector, rect
        self.name = f"{detector.name} tile {number}/{count}"
        self.classes, self.threshold = detector.classes, detector.threshold
        self.interval, self.requires = detector.interval, detector.requires

    def crop(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The tile in pixels of a width x height frame, on macroblock edges."""
        x0, y0, x1, y1 = self.rect
        return (int(x0 * width) // MB * MB, int(y0 * height) // MB * MB,
                min(width, math.ceil(x1 * width / MB) * MB),
                min(height, math.ceil(y1 * height / MB) * MB))

    def __call__(self, frame: Frame) -> np.ndarray:
        x0, y0, x1, y1 = self.crop(frame.width, frame.height)
        planes = self.detector(crop_frame(frame, x0, y0, x1, y1))
        out = np.zeros((len(self.classes), frame.mb_h, frame.mb_w), np.float32)
        out[:, y0 // MB:y0 // MB + planes.shape[1], x0 // MB:x0 // MB + planes.shape[2]] = planes
        return out
