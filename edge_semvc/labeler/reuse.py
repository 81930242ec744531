"""Temporal label reuse: carry labels to the frames between two labeler runs.

The labeler runs its models every k-th frame (or as a CPU budget allows, with results that may
arrive a few frames late); the frames between get the last probability planes moved by cheap
motion compensation ("motion") instead of unchanged ("hold").

Motion is estimated on luma at 1/8 resolution (every 4th sample, then 2x2 sums: a 16x16
macroblock is a 2x2 block there), one vector per macroblock, by an exhaustive SAD search over
the offsets with |dy| + |dx| <= `search` samples (8*search pixels) around the previous frame's
most common vector (so steady pans are followed beyond the search range), with the SAD pooled
over the 3x3 neighbouring macroblocks and a small penalty on the vector length (flat and noisy
areas stay still). Vectors are whole samples (8 pixels, half a macroblock): a full square search
was 20 % dearer for 0.002 IoU, a sub-sample fit gained nothing and jittered still scenes.

Two kinds of planes, moved differently:
- Soft masks (segmenters; "bilinear"): vectors are chained frame to frame: for every macroblock
  of the current frame the carrier keeps its displacement back to the frame the planes were
  computed on, and samples those planes there once (bilinear on the macroblock grid), so they
  are not re-blurred frame after frame.
- Rasterised boxes (detectors; "nearest"): hard-edged rectangles, each holding its box's score.
  Through a chained per-macroblock field they drifted off small, articulated people and eroded
  (each cell followed its own noisy vector). Instead each box is recovered from the planes
  (`find_boxes`) and moved rigidly, frame by frame, by one match of the whole box: the search's
  own per-macroblock SADs summed over the box per candidate give its whole-sample vector (no
  extra search), one Lucas-Kanade step on the box's samples a fraction of a sample (a fit to
  the SAD curve was biased by the texture: still boxes crept ~0.5 macroblock in 30 frames and
  moving ones lagged 15-25 %; the gradient step is zero where frames match and unbiased on
  average). The box is redrawn at its fractional position by the rasteriser's centre rule
  (half-open, so it keeps its size). An edge on the picture's border is open (the object goes
  on beyond it): an object coming into view stays covered. Growing boxes by their expected
  drift (a margin rising with the distance moved) bought as much ROI-PSNR BD-rate as it cost
  whole-frame PSNR BD-rate, so boxes keep their size.

`PlaneCarrier` holds probability planes in slots (one per model and run, each model may run on
its own frames); `step(frame.luma_sums)` once per frame, `set(slot, planes)` when the model ran, or
`mark(slot)` then `fill(slot, planes)` when the planes arrive later (meanwhile each frame's
search costs are kept, 0.01-0.35 MB at QCIF-1080p, to move the boxes from the marked frame),
`get(slot)` on the frames after. Motion is computed lazily, only on frames where some slot is
carried.

Cost per carried frame (one thread, 2-core development machine): the motion search and a soft
mask 0.16-0.23 ms at QCIF-CIF, ~0.4 ms at 576p, ~1.1 ms at 1080p; each carried box ~0.03 ms
more (matched and redrawn); finding the boxes where a detector ran 0.07-0.15 ms. Against
~20 ms for YOLOX-nano with BlazeFace, ~43 ms for the default models. Frames where every model runs
cost only a copy of the frame's 1/8-resolution luma (`Frame.luma_sums`) as int16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..frame import MB, edge_pad

MODES = ("motion", "hold")
INTERPS = ("bilinear", "nearest")
SCALE = 8  # luma subsampling for the motion search; one macroblock = 2x2 samples
_BLK = MB // SCALE
# A soft mask's displacement is chained when it is read; one not read for this many frames is
# chained anyway (the vectors kept for it cost 3-65 KB a frame at CIF-1080p).
_UNCHAINED = 50


def _nearest(planes: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Nearest-neighbour sample of [C, h, w] at fractional grid positions (clamped)."""
    c, h, w = planes.shape
    iy = np.clip(np.rint(py), 0, h - 1).astype(np.intp)
    ix = np.clip(np.rint(px), 0, w - 1).astype(np.intp)
    return planes.reshape(c, -1)[:, iy * w + ix]


def _sample(planes: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Bilinear sample of float32[C, h, w] at fractional grid positions float32[h', w']
    (clamped to the edge): float32[C, h', w']."""
    c, h, w = planes.shape
    shape = py.shape
    py = np.clip(py.ravel(), 0.0, h - 1.0)
    px = np.clip(px.ravel(), 0.0, w - 1.0)
    y0 = py.astype(np.int32)  # floor: positions are >= 0
    x0 = px.astype(np.int32)
    fy = py - y0
    fx = px - x0
    x1 = np.minimum(x0 + 1, w - 1)
    r0 = y0 * w
    r1 = np.minimum(y0 + 1, h - 1) * w
    flat = planes.reshape(c, -1)
    a, b = flat.take(r0 + x0, axis=1), flat.take(r0 + x1, axis=1)
    top = a + (b - a) * fx
    a, b = flat.take(r1 + x0, axis=1), flat.take(r1 + x1, axis=1)
    bot = a + (b - a) * fx
    return (top + (bot - top) * fy).reshape(c, *shape).astype(np.float32, copy=False)


class MotionField:
    """Per-macroblock motion between two 1/8-resolution luma planes (`Frame.luma_sums`, as
    int16).

    Candidates: the offsets with |dy| + |dx| <= `search` samples (a diamond: diagonal moves
    beyond one sample are rare between consecutive frames, and a steady one is followed by the
    predictor).
    """

    def __init__(self, search: int = 2, penalty: float = 0.25):
        self.search = search
        # Levels of mean absolute difference a vector must win per 1/8-resolution sample of
        # its length: keeps flat and noisy areas still.
        self.penalty = penalty
        r = search
        dy, dx = (a.ravel() for a in np.mgrid[-r:r + 1, -r:r + 1])
        keep = np.abs(dy) + np.abs(dx) <= r
        self.offsets = np.stack([dy[keep], dx[keep]], 1)  # [K, 2], (0, 0) included
        self._shifts = [(int(a), int(b)) for a, b in self.offsets]
        self._bits = (len(self.offsets) - 1).bit_length()
        self._index = np.arange(len(self.offsets), dtype=np.int32)[:, None]
        self._cache: dict = {}
        self.mode = (0, 0)  # the most common integer vector of the last estimate
        # The last estimate, for `track`: (per-macroblock SAD [K, mb_h, mb_w], search centre,
        # current plane edge-extended by 1, previous plane edge-extended by pad, pad).
        self.last = None

    def _candidates(self, py: int, px: int) -> tuple[np.ndarray, np.ndarray]:
        """The candidates around a search centre: the cost added to each for its vector
        length, int32[K, 1], and each one's vector in pixels, float32[2, K]."""
        k = (py, px)
        if k not in self._cache:
            vec = self.offsets + (py, px)
            length = np.hypot(vec[:, 0], vec[:, 1])
            bias = np.rint(self.penalty * 4 * 9 * _BLK * _BLK * length).astype(np.int32)
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[k] = bias[:, None], (vec * SCALE).T.astype(np.float32)
        return self._cache[k]

    def estimate(self, cur: np.ndarray, prev: np.ndarray,
                 predictor: tuple[int, int] = (0, 0)) -> np.ndarray:
        """For each macroblock of `cur`, the offset (dy, dx) in full-resolution pixels to where
        its content was in `prev`: float32[2, mb_h, mb_w]."""
        r = self.search
        py, px = predictor
        h, w = cur.shape
        mb_h, mb_w = h // _BLK, w // _BLK
        pad = r + 1 + max(abs(py), abs(px))  # + 1: the gradients of `track`
        ref = edge_pad(prev, pad)
        K = len(self.offsets)
        d = np.empty((K, h, w), np.int16)
        for k, (dy, dx) in enumerate(self._shifts):
            y0, x0 = pad + py + dy, pad + px + dx
            np.subtract(ref[y0:y0 + h, x0:x0 + w], cur, out=d[k])
        np.abs(d, out=d)
        d = d[:, 0::2] + d[:, 1::2]
        # The SADs inside a zero frame, for the 3x3 pooling (zero outside the grid: the same
        # for every candidate, so the arg-min is unaffected). uint16: a pooled SAD is at most
        # 9 macroblocks x 4 samples x 1020.
        framed = np.zeros((K, mb_h + 2, mb_w + 2), np.uint16)
        sad = framed[:, 1:-1, 1:-1]  # [K, mb_h, mb_w]
        np.add(d[..., 0::2], d[..., 1::2], out=sad, casting="unsafe")  # >= 0: exact
        self.last = (sad, (py, px), edge_pad(cur, 1), ref, pad)
        rows = framed[:, :-2] + framed[:, 1:-1]
        rows += framed[:, 2:]
        cost = rows[..., :-2] + rows[..., 1:-1]
        cost += rows[..., 2:]
        bias, vectors = self._candidates(py, px)
        cost = cost.reshape(K, -1).astype(np.int32)
        cost += bias  # [K, mb]
        # Arg-min across candidates as one element-wise min: the index rides in the low bits.
        bits = self._bits
        cost <<= bits
        cost |= self._index
        key = cost.min(0)
        best = key & ((1 << bits) - 1)
        vec = vectors.take(best, axis=1)
        # The most common vector: the next frame's search centre (follows pans).
        m = self._shifts[int(np.bincount(best, minlength=K).argmax())]
        self.mode = (m[0] + py, m[1] + px)
        return vec.reshape(2, mb_h, mb_w)

    def track(self, boxes: np.ndarray, last: tuple | None = None) -> np.ndarray:
        """`boxes` (see `find_boxes`) moved by the motion of one estimate (`last`, default the
        latest). Each box is matched whole where its last velocity puts it (on the macroblocks
        whose centre it holds, at least the one holding its centre): the SADs of the search
        summed per candidate, plus the length penalty, give the best whole-sample vector; one
        gradient (Lucas-Kanade) step on the box's samples refines it (zero where the frames
        match exactly: a still box does not creep). Boxes out of the picture are dropped."""
        sad, centre, cur, ref, pad = last or self.last
        _, h, w = sad.shape
        boxes = boxes[((boxes[:, 4:6] > 0) & (boxes[:, 2:4] < (h, w))).all(1)]
        if not len(boxes):
            return boxes
        bias = self._candidates(*centre)[0][:, 0].astype(np.int64)
        out = boxes.copy()
        for row in out:  # a few boxes: in Python numbers (numpy's cost per call was most of it)
            _, _, y0, x0, y1, x1, vy, vx = row.tolist()
            top, left, bottom, right = y0 + vy, x0 + vx, y1 + vy, x1 + vx  # moved by its velocity
            mid_y, mid_x = math.floor((top + bottom) / 2), math.floor((left + right) / 2)
            ly = min(max(min(math.ceil(top - 0.5), mid_y), 0), h - 1)
            lx = min(max(min(math.ceil(left - 0.5), mid_x), 0), w - 1)
            hy = min(max(math.ceil(bottom - 0.5), mid_y + 1, ly + 1), h)
            hx = min(max(math.ceil(right - 0.5), mid_x + 1, lx + 1), w)
            cost = sad[:, ly:hy, lx:hx].sum((1, 2), dtype=np.int64)
            cost += bias * ((hy - ly) * (hx - lx)) // 9  # the bias is for 9 macroblocks
            dy, dx = self._shifts[int(cost.argmin())]
            fy, fx = _refine(cur, ref, pad, (ly * _BLK, lx * _BLK), (hy * _BLK, hx * _BLK),
                             (dy + centre[0], dx + centre[1]))
            fy, fx = fy * (-SCALE / MB), fx * (-SCALE / MB)  # the box moved the other way
            row[2:] = y0 + fy, x0 + fx, y1 + fy, x1 + fx, fy, fx
        return out


def _refine(cur: np.ndarray, ref: np.ndarray, pad: int, lo, hi, vec) -> tuple[float, float]:
    """The vector of the samples [lo, hi) of the current frame (`cur`, edge-extended by one),
    found near `vec` (whole samples) in the previous one (`ref`, edge-extended by `pad`), to a
    fraction of a sample: one Lucas-Kanade step (the frames' mean gradient against their
    difference), within half a sample."""
    (y0, x0), (y1, x1), (vy, vx) = lo, hi, vec  # Python ints
    c = cur[y0:y1 + 2, x0:x1 + 2].astype(np.float32)
    p = ref[pad + vy + y0 - 1:pad + vy + y1 + 1, pad + vx + x0 - 1:pad + vx + x1 + 1].astype(
        np.float32)
    gy = (p[2:, 1:-1] - p[:-2, 1:-1] + c[2:, 1:-1] - c[:-2, 1:-1]) / 4
    gx = (p[1:-1, 2:] - p[1:-1, :-2] + c[1:-1, 2:] - c[1:-1, :-2]) / 4
    d = c[1:-1, 1:-1] - p[1:-1, 1:-1]
    yy, xy, xx = float((gy * gy).sum()), float((gy * gx).sum()), float((gx * gx).sum())
    by, bx = float((gy * d).sum()), float((gx * d).sum())
    reg = 1e-3 * (yy + xx) + 1e-6  # flat or one-directional texture: a short step
    yy, xx = yy + reg, xx + reg
    det = yy * xx - xy * xy
    fy, fx = (xx * by - xy * bx) / det, (yy * bx - xy * by) / det
    return vy + min(max(fy, -0.5), 0.5), vx + min(max(fx, -0.5), 0.5)


def find_boxes(planes: np.ndarray) -> np.ndarray:
    """The boxes rasterised into hard-edged planes float32[C, h, w]: float64[n, 8] rows of
    (plane, score, y0, x0, y1, x1, vy, vx), edges in macroblocks (end exclusive), velocity 0.
    Each box holds its own score and overlaps keep the highest, so the cells of one score are
    one box, whose bounding box holds nothing lower; where it does (two boxes of the same score)
    each connected part is taken as a box. An edge on the picture's border is open (the object
    goes on beyond it): it is put as far beyond the border as the box is long."""
    rows = []
    for c, plane in enumerate(planes):
        for v in np.unique(plane[plane > 0]):
            same = plane == v
            parts = ndimage.find_objects(same.view(np.uint8))
            if (plane[parts[0]] < v).any():
                parts = ndimage.find_objects(ndimage.label(same)[0])
            rows += [(c, v, p[0].start, p[1].start, p[0].stop, p[1].stop, 0, 0) for p in parts]
    boxes = np.array(rows, np.float64).reshape(-1, 8)
    lo, hi = boxes[:, 2:4], boxes[:, 4:6]  # views
    size = hi - lo
    end = np.array(planes.shape[1:])
    lo -= np.where(lo == 0, size, 0)
    hi += np.where(hi == end, size, 0)
    return boxes


def draw_boxes(boxes: np.ndarray, shape: tuple) -> np.ndarray:
    """float32[shape] planes holding each box's score on the macroblocks whose centre it holds
    (the rule of `boxes_to_mb`, but half-open: a box keeps its size; overlaps keep the
    highest)."""
    out = np.zeros(shape, np.float32)
    lo = np.ceil(boxes[:, 2:4] - 0.5).astype(int).clip(0, None)
    hi = np.ceil(boxes[:, 4:6] - 0.5).astype(int).clip(None, shape[1:])
    for (c, v), (y0, x0), (y1, x1) in zip(boxes[:, :2], lo, hi):
        if y1 > y0 and x1 > x0:
            cell = out[int(c), y0:y1, x0:x1]
            np.maximum(cell, v, out=cell)
    return out


@dataclass(slots=True)
class _Slot:
    """One model run's planes, as carried."""

    planes: np.ndarray | None  # None: marked, the planes have not arrived
    frame: int  # the frame they were computed on
    interp: str
    boxes: np.ndarray | None = None  # "nearest": the boxes, moved to the last moved frame
    # soft masks: where each macroblock's content was on `frame`, [2, mb_h, mb_w] pixels
    # (None: not moved), chained up to frame `chained`
    disp: np.ndarray | None = None
    chained: int = 0


class PlaneCarrier:
    """Probability planes (float32[C, mb_h, mb_w] per slot) carried from the frame they were
    computed on to later frames.

    Per frame, in display order: `step(frame.luma_sums)` first; then for each slot either
    `set(slot, planes)` (the model ran on this frame), or `mark(slot)` (it runs on this frame
    but its planes come later: `fill(slot, planes)` on the frame they arrive), or `get(slot)`
    (its planes moved to this frame). `follow()` estimates the motion on a frame where
    nothing is carried, so that the search's predictor keeps following the scene. In "hold"
    mode `get` returns the planes unchanged and nothing is computed.
    """

    def __init__(self, mode: str = "motion", search: int = 2, penalty: float = 0.25,
                 interp: str = "bilinear"):
        if mode not in MODES:
            raise ValueError(f"unknown label carry mode {mode!r} (known: {', '.join(MODES)})")
        if search < 1:
            raise ValueError(f"search range must be >= 1, got {search}")
        if interp not in INTERPS:
            raise ValueError(f"unknown interpolation {interp!r} (bilinear, nearest)")
        self.mode = mode
        self.interp = interp
        self.motion = MotionField(search, penalty)
        self.reset()

    def reset(self) -> None:
        """Forget all slots and frames (e.g. at a seek)."""
        self._slots: dict[object, _Slot] = {}
        # frame -> its motion vectors, while a soft mask's displacement has not been chained
        # through them (chained when the mask is read: a gated mask is often not read at all)
        self._vectors: dict = {}
        self._n = -1  # the current frame's number
        self._cur = self._prev = None  # downsampled luma of the current / previous frame
        self._moved = -1  # frame number up to which the slots' displacements are updated
        self._grid = None
        self._pred = (0, 0)
        self._history: dict = {}  # frame -> its motion estimate, while box planes are awaited

    def step(self, sums: np.ndarray) -> None:
        """A new frame arrives (its `Frame.luma_sums`); call before `set`/`get` for that
        frame."""
        if self.mode == "hold":
            self._n += 1
            return
        if self._n >= 0 and self._moved < self._n and self._carried(self._n):
            self._advance()  # nobody asked for the last frame's motion, but the chain needs it
        self._n += 1
        cur = sums.astype(np.int16)
        if self._cur is not None and cur.shape != self._cur.shape:
            self._slots.clear()  # the picture size changed: nothing can be carried
            self._history.clear()
            self._vectors.clear()
            self._cur = None
        if self._grid is None or self._grid.shape[1:] != (cur.shape[0] // 2, cur.shape[1] // 2):
            self._grid = np.mgrid[0:cur.shape[0] // 2, 0:cur.shape[1] // 2].astype(np.float32)
        self._prev, self._cur = self._cur, cur

    def set(self, slot, planes: np.ndarray | None, interp: str | None = None) -> np.ndarray:
        """`planes` were computed on the current frame; returns them. `interp` overrides the
        carrier's for this slot: "nearest" for rasterised boxes (a detector's hard-edged planes:
        each box is moved whole), "bilinear" for soft masks."""
        if self._n < 0:
            raise RuntimeError("PlaneCarrier.set() before the first step()")
        if interp not in (None, *INTERPS):
            raise ValueError(f"unknown interpolation {interp!r} (bilinear, nearest)")
        self._check(planes)
        self._slots[slot] = _Slot(planes, self._n, interp or self.interp, chained=self._n)
        self._boxes(self._slots[slot])
        self._prune()
        return planes

    def mark(self, slot, interp: str | None = None) -> None:
        """Planes for `slot` will be computed on the current frame but arrive later (a model
        running beside the pipeline): follow the motion from here, `fill` them when they come."""
        self.set(slot, None, interp)

    def fill(self, slot, planes: np.ndarray) -> None:
        """The planes of a `mark`ed slot arrived; `get` carries them from the marked frame."""
        s = self._slots.get(slot)
        if s is None or s.planes is not None:
            raise KeyError(f"slot {slot!r} was not marked (or was filled already)")
        self._check(planes)
        s.planes = planes
        if self._boxes(s) is not None:  # catch the boxes up with the frames since the mark
            for n in range(s.frame + 1, self._moved + 1):
                s.boxes = self.motion.track(s.boxes, self._history[n])
        self._prune()

    def drop(self, slot) -> None:
        self._slots.pop(slot, None)
        self._prune()

    def frame_of(self, slot) -> int:
        """The number (in `step` calls, from 0) of the frame the slot's planes belong to."""
        return self._slots[slot].frame

    def get(self, slot) -> np.ndarray:
        """The slot's planes moved to the current frame."""
        try:
            s = self._slots[slot]
        except KeyError:
            raise KeyError(f"no planes in slot {slot!r}: set() them on a frame first") from None
        if s.planes is None:
            raise KeyError(f"slot {slot!r} was marked but its planes have not arrived")
        if self.mode == "hold" or s.frame == self._n or not s.planes.shape[0]:
            return s.planes
        self._advance()
        if s.boxes is not None:
            return draw_boxes(s.boxes, s.planes.shape)
        self._chain(s)
        self._prune()
        if s.disp is None:
            return s.planes
        gy, gx = self._grid
        return _sample(s.planes, gy + s.disp[0] * (1 / MB), gx + s.disp[1] * (1 / MB))

    def __contains__(self, slot) -> bool:
        return slot in self._slots

    def follow(self) -> None:
        """Estimate this frame's motion even when nothing is carried (the predictor follows)."""
        if self.mode != "hold" and self._prev is not None:
            self._advance(force=True)

    def _check(self, planes) -> None:
        if self.mode != "hold" and planes is not None and \
                planes.shape[1:] != self._grid.shape[1:]:
            raise ValueError(f"planes of {planes.shape[1:]} macroblocks for a "
                             f"{self._grid.shape[1:]} grid")

    def _boxes(self, s: _Slot):
        """The boxes of a "nearest" slot whose planes are there (None for others)."""
        if s.interp == "nearest" and s.planes is not None and self.mode != "hold":
            s.boxes = find_boxes(s.planes)
        return s.boxes

    def _chain(self, s: _Slot) -> None:
        """Bring a soft mask's displacement up to the last moved frame, through the vectors of
        each frame since it was last brought up."""
        gy, gx = self._grid
        for n in range(s.chained + 1, self._moved + 1):
            vec = self._vectors[n]
            # where this MB's content was in the previous frame, then where that point was on
            # the slot's own frame (the previous displacement, sampled there)
            s.disp = vec if s.disp is None else \
                vec + _nearest(s.disp, gy + vec[0] * (1 / MB), gx + vec[1] * (1 / MB))
        s.chained = max(s.chained, self._moved)

    def _carried(self, n: int) -> bool:
        return any(s.frame < n for s in self._slots.values())

    def _prune(self) -> None:
        """Keep the motion of the frames after the oldest awaited box planes, and the vectors
        of the frames after the least chained soft mask, no more."""
        if self._history:
            first = min((s.frame for s in self._slots.values()
                         if s.planes is None and s.interp == "nearest"), default=self._n)
            self._history = {n: m for n, m in self._history.items() if n > first}
        if self._vectors:
            first = min((s.chained for s in self._slots.values() if s.interp != "nearest"),
                        default=self._n)
            self._vectors = {n: v for n, v in self._vectors.items() if n > first}

    def _advance(self, force: bool = False) -> None:
        """Move every slot set before the current frame by the motion from the previous frame
        to this one."""
        if self._moved == self._n:
            return
        if self._prev is None or not (force or self._carried(self._n)):
            self._moved = self._n
            return
        vec = self.motion.estimate(self._cur, self._prev, self._pred)
        self._pred = self.motion.mode
        self._moved = self._n
        for s in self._slots.values():
            if s.frame >= self._n:
                continue
            if s.interp != "nearest":
                self._vectors[self._n] = vec  # chained when the planes are read (`get`)
                if self._n - s.chained > _UNCHAINED:
                    self._chain(s)
                    self._prune()
            elif s.boxes is not None:
                s.boxes = self.motion.track(s.boxes)
            elif s.planes is None:
                self._history[self._n] = self.motion.last  # replayed when the planes arrive
