"""Temporal label reuse: carry labels to the frames between two labeler runs.

The labeler runs its models every k-th frame; the frames between get the last probability
planes moved by cheap motion compensation ("motion") instead of unchanged ("hold").

Motion is estimated on luma at 1/8 resolution (every 4th sample, then 2x2 sums: a 16x16
macroblock is a 2x2 block there), one vector per macroblock, by an exhaustive SAD search over
the offsets with |dy| + |dx| <= `search` samples (8*search pixels) around the previous frame's
most common vector (so steady pans are followed beyond the search range), with the SAD pooled
over the 3x3 neighbouring macroblocks and a small penalty on the vector length (flat and noisy
areas stay still). Vectors are whole samples (8 pixels, half a macroblock): a full square search
was 20 % dearer for 0.002 IoU, a sub-sample fit gained nothing and jittered still scenes.

Vectors are estimated between consecutive frames and chained: for every macroblock of the
current frame the carrier keeps its displacement back to the frame the planes were computed
on, and samples those planes there once (bilinear on the macroblock grid), so they are not
re-blurred frame after frame. Labels are then recomputed from the moved planes by the
labeler's own fusion rule.

Two levels:
- `PlaneCarrier`: probability planes in slots (one per model, each model may run on its own
  frames); `step(y)` once per frame, `set(slot, planes)` when the model ran, `get(slot)`
  otherwise. Motion is computed lazily, only on frames where some slot is carried.
- `LabelCarrier`: one LabelMap (`keyframe(map, y)`, then `carry(y)` on each frame after it),
  relabelled by a `relabel(probs, key_map)` function (default: `LabelMap.from_probs` with
  `threshold`).

Cost per carried frame (one thread, `python -m edge_semvc.bench.reuse_eval`): ~0.25-0.35 ms
at QCIF-CIF (mostly fixed numpy overhead), ~0.5-0.8 ms at 480p-720p, ~1.5-1.9 ms at 1080p,
against ~5 ms for the two default models; frames where every model runs cost only the luma
subsampling (0.02-0.2 ms).
"""

from __future__ import annotations

import numpy as np

from ..frame import MB, mb_grid
from ..values import LabelMap

MODES = ("motion", "hold")
SCALE = 8  # luma subsampling for the motion search; one macroblock = 2x2 samples
_BLK = MB // SCALE


def downsample(y: np.ndarray) -> np.ndarray:
    """uint8[H, W] luma -> int16[2*mb_h, 2*mb_w]: every 4th sample, then 2x2 sums (0..1020).
    The grid covers the macroblock grid exactly (edge-extended where H, W are not multiples
    of 16)."""
    mb_w, mb_h = mb_grid(y.shape[1], y.shape[0])
    s = y[1::4, 1::4]
    th, tw = 4 * mb_h, 4 * mb_w
    if s.shape != (th, tw):
        s = np.pad(s[:th, :tw], ((0, max(0, th - s.shape[0])), (0, max(0, tw - s.shape[1]))),
                   mode="edge")
    s = s.astype(np.int16)
    s = s[0::2] + s[1::2]
    return s[:, 0::2] + s[:, 1::2]


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
    """Per-macroblock motion between two downsampled luma planes (see `downsample`).

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
        self._bits = (len(self.offsets) - 1).bit_length()
        self._cache: dict = {}
        self.mode = (0, 0)  # the most common integer vector of the last estimate

    def _bias(self, py: int, px: int) -> np.ndarray:
        """Cost added to each candidate for its vector length: int32[K, 1]."""
        k = (py, px)
        if k not in self._cache:
            length = np.hypot(self.offsets[:, 0] + py, self.offsets[:, 1] + px)
            bias = np.rint(self.penalty * 4 * 9 * _BLK * _BLK * length).astype(np.int32)
            if len(self._cache) > 64:
                self._cache.clear()
            self._cache[k] = bias[:, None]
        return self._cache[k]

    def estimate(self, cur: np.ndarray, prev: np.ndarray,
                 predictor: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, float]:
        """For each macroblock of `cur`, the offset (dy, dx) in full-resolution pixels to where
        its content was in `prev`: float32[2, mb_h, mb_w]; and the mean absolute difference per
        sample at the chosen vectors (in 2x2-sum units, 0..1020) as a match-quality figure."""
        r = self.search
        py, px = predictor
        h, w = cur.shape
        mb_h, mb_w = h // _BLK, w // _BLK
        pad = r + max(abs(py), abs(px))
        ref = np.pad(prev, pad, mode="edge")
        K = len(self.offsets)
        d = np.empty((K, h, w), np.int16)
        for k, (dy, dx) in enumerate(self.offsets):
            y0, x0 = pad + py + dy, pad + px + dx
            np.subtract(ref[y0:y0 + h, x0:x0 + w], cur, out=d[k])
        np.abs(d, out=d)
        d = d[:, 0::2] + d[:, 1::2]
        sad = (d[..., 0::2] + d[..., 1::2]).astype(np.int32)  # [K, mb_h, mb_w]
        # Pool over the 3x3 neighbourhood (zero outside the grid: the same for every
        # candidate, so the arg-min is unaffected).
        pooled = sad.copy()
        pooled[:, 1:] += sad[:, :-1]
        pooled[:, :-1] += sad[:, 1:]
        tmp = pooled.copy()
        pooled[..., 1:] += tmp[..., :-1]
        pooled[..., :-1] += tmp[..., 1:]
        bias = self._bias(py, px)
        cost = pooled.reshape(K, -1)
        cost += bias  # [K, mb]
        # Arg-min across candidates as one element-wise min: the index rides in the low bits.
        bits = self._bits
        key = ((cost << bits) | np.arange(K, dtype=np.int32)[:, None]).min(0)
        best = key & ((1 << bits) - 1)
        c = key >> bits
        off = self.offsets[best]
        vec = np.empty((2, mb_h * mb_w), np.float32)
        vec[0] = (off[:, 0] + py) * SCALE
        vec[1] = (off[:, 1] + px) * SCALE
        # The most common vector: the next frame's search centre (follows pans).
        m = self.offsets[int(np.bincount(best, minlength=K).argmax())]
        self.mode = (int(m[0]) + py, int(m[1]) + px)
        # Mean absolute difference per sample at the chosen vectors (2x2-sum units); the
        # pooled cost spans 9 macroblocks of 4 samples (a little fewer at the border).
        mad = float((c - bias[best, 0]).mean()) / (9 * _BLK * _BLK)
        return vec.reshape(2, mb_h, mb_w), mad


class PlaneCarrier:
    """Probability planes (float32[C, mb_h, mb_w] per slot) carried from the frame they were
    computed on to later frames.

    Per frame, in display order: `step(frame.y)` first; then for each slot either
    `set(slot, planes)` (the model ran on this frame) or `get(slot)` (its last planes moved to
    this frame). `scene_cut` says whether this frame fails to match the previous one (mean
    absolute luma difference at the best vectors above `cut_mad` 8-bit levels): carried planes
    are then meaningless and the models should run. In "hold" mode `get` returns the planes
    unchanged and nothing is computed.
    """

    def __init__(self, mode: str = "motion", search: int = 2, penalty: float = 0.25,
                 cut_mad: float = 24.0, interp: str = "bilinear"):
        if mode not in MODES:
            raise ValueError(f"unknown label carry mode {mode!r} (known: {', '.join(MODES)})")
        if search < 1:
            raise ValueError(f"search range must be >= 1, got {search}")
        if interp not in ("bilinear", "nearest"):
            raise ValueError(f"unknown interpolation {interp!r} (bilinear, nearest)")
        self.mode = mode
        self.cut_mad = cut_mad
        self.motion = MotionField(search, penalty)
        self._interp = _sample if interp == "bilinear" else _nearest
        self.reset()

    def reset(self) -> None:
        """Forget all slots and frames (e.g. at a seek)."""
        # slot -> [planes, disp [2, mb_h, mb_w] | None, frame number, interpolation | None]
        self._slots: dict = {}
        self._n = -1  # the current frame's number
        self._cur = self._prev = None  # downsampled luma of the current / previous frame
        self._moved = -1  # frame number up to which the slots' displacements are updated
        self._grid = None
        self._pred = (0, 0)
        self._cut = False
        self.last_mad = 0.0  # 8-bit levels; 0 until motion has been estimated

    def step(self, y: np.ndarray) -> None:
        """A new frame (uint8 luma [H, W]) arrives; call before `set`/`get` for that frame."""
        if self.mode == "hold":
            self._n += 1
            return
        if self._n >= 0 and self._moved < self._n and self._carried(self._n):
            self._advance()  # nobody asked for the last frame's motion, but the chain needs it
        self._n += 1
        self._cut = False
        cur = downsample(y)
        if self._cur is not None and cur.shape != self._cur.shape:
            self._slots.clear()  # the picture size changed: nothing can be carried
            self._cur = None
        if self._grid is None or self._grid.shape[1:] != (cur.shape[0] // 2, cur.shape[1] // 2):
            self._grid = np.mgrid[0:cur.shape[0] // 2, 0:cur.shape[1] // 2].astype(np.float32)
        self._prev, self._cur = self._cur, cur

    def set(self, slot, planes: np.ndarray, interp: str | None = None) -> np.ndarray:
        """`planes` were computed on the current frame; returns them. `interp` overrides the
        carrier's interpolation for this slot: "nearest" suits rasterised boxes (a detector's
        hard-edged planes keep their size; bilinear erodes them at a 0.7 threshold), "bilinear"
        soft masks."""
        if self._n < 0:
            raise RuntimeError("PlaneCarrier.set() before the first step()")
        if self.mode != "hold" and planes.shape[1:] != self._grid.shape[1:]:
            raise ValueError(f"planes of {planes.shape[1:]} macroblocks for a "
                             f"{self._grid.shape[1:]} grid")
        if interp not in (None, "bilinear", "nearest"):
            raise ValueError(f"unknown interpolation {interp!r} (bilinear, nearest)")
        self._slots[slot] = [planes, None, self._n, interp]
        return planes

    def get(self, slot) -> np.ndarray:
        """The slot's planes moved to the current frame."""
        try:
            planes, disp, _, interp = self._slots[slot]
        except KeyError:
            raise KeyError(f"no planes in slot {slot!r}: set() them on a frame first") from None
        if self.mode == "hold":
            return planes
        self._advance()
        disp = self._slots[slot][1]
        if disp is None or not planes.shape[0]:
            return planes
        gy, gx = self._grid
        sample = self._interp if interp is None else (_sample if interp == "bilinear"
                                                      else _nearest)
        return sample(planes, gy + disp[0] * (1 / MB), gx + disp[1] * (1 / MB))

    def __contains__(self, slot) -> bool:
        return slot in self._slots

    @property
    def scene_cut(self) -> bool:
        """This frame does not continue the previous one (computes the motion if needed)."""
        if self.mode == "hold" or self._prev is None:
            return False
        self._advance(force=True)
        return self._cut

    def _carried(self, n: int) -> bool:
        return any(s[2] < n for s in self._slots.values())

    def _advance(self, force: bool = False) -> None:
        """Update the displacement of every slot set before the current frame by the motion
        from the previous frame to this one."""
        if self._moved == self._n:
            return
        if self._prev is None or not (force or self._carried(self._n)):
            self._moved = self._n
            return
        vec, mad = self.motion.estimate(self._cur, self._prev, self._pred)
        self._pred = self.motion.mode
        self.last_mad = mad / 4.0  # 2x2 sums -> 8-bit levels
        self._cut = self.last_mad > self.cut_mad
        gy, gx = self._grid
        sy, sx = gy + vec[0] * (1 / MB), gx + vec[1] * (1 / MB)
        for s in self._slots.values():
            if s[2] < self._n:
                # Where this MB's content was in the previous frame, then where that point
                # was on the slot's own frame (the previous displacement, sampled there).
                s[1] = vec if s[1] is None else vec + _nearest(s[1], sy, sx)
        self._moved = self._n


class LabelCarrier:
    """One LabelMap carried from the frame it was computed on to the frames after it.

    `keyframe(map, y)` on every frame where the labeler ran, `carry(y)` on every frame in
    between, in display order. Labels of a carried map are recomputed from its moved planes by
    `relabel(probs, key_map) -> LabelMap` (default: `LabelMap.from_probs` with `threshold`, the
    rule of a labeler whose models share one threshold). In "hold" mode `carry` returns the key
    map itself.
    """

    def __init__(self, threshold: float = 0.7, mode: str = "motion", relabel=None, **kw):
        self.threshold = threshold
        self.mode = mode
        self.planes = PlaneCarrier(mode, **kw)
        self.relabel = relabel or (lambda probs, key: LabelMap.from_probs(
            probs, key.classes[1:], self.threshold, key.models))
        self._key: LabelMap | None = None

    def reset(self) -> None:
        self.planes.reset()
        self._key = None

    def keyframe(self, label_map: LabelMap, y: np.ndarray) -> LabelMap:
        """`label_map` was computed on the frame whose luma is `y`; returns it."""
        if label_map.shape != tuple(reversed(mb_grid(y.shape[1], y.shape[0]))):
            raise ValueError(f"label map of {label_map.shape} macroblocks for a "
                             f"{y.shape[1]}x{y.shape[0]} frame")
        self.planes.step(y)
        return self.replace(label_map)

    def replace(self, label_map: LabelMap) -> LabelMap:
        """The labeler ran on the current frame after all (after `carry` saw a scene cut):
        carry `label_map` from here on."""
        self._key = label_map
        self.planes.set(0, label_map.probs)
        return label_map

    def carry(self, y: np.ndarray) -> LabelMap:
        """The key map moved to this frame (the next one after the last keyframe/carry)."""
        if self._key is None:
            raise RuntimeError("LabelCarrier.carry() before the first keyframe()")
        self.planes.step(y)
        if self.mode == "hold":
            return self._key
        if 0 not in self.planes:  # the picture size changed
            raise ValueError("the frame size changed since the last keyframe")
        return self.relabel(self.planes.get(0), self._key)

    @property
    def scene_cut(self) -> bool:
        return self.planes.scene_cut

    @property
    def last_mad(self) -> float:
        return self.planes.last_mad


def carry_map(label_map: LabelMap, labelled_y: np.ndarray, current_y: np.ndarray,
              threshold: float = 0.7, mode: str = "motion", relabel=None) -> LabelMap:
    """Stateless form: `label_map` (computed on the frame whose luma is `labelled_y`) moved to
    the frame `current_y` in one step (one motion search between the two frames: +-16 pixels;
    the stateful carriers follow every frame and track larger motion)."""
    c = LabelCarrier(threshold, mode, relabel)
    c.keyframe(label_map, labelled_y)
    return c.carry(current_y)
