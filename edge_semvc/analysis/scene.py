"""The scene-transition model of METHOD embodiment 4: per labelled region, the change value S
between F_{t-1} and F_t (thresholded to 0/1), and whether the frame starts a new scene (a cut).

S per macroblock is "how much of it the previous frame cannot explain": the mean absolute luma
difference to the best-matching block of F_{t-1} within a motion search, relative to the
block's own texture,

    S_mb = min_v SAD(v) / (activity + change_floor), clipped to [0, 1]

on luma at 1/8 resolution (every 4th sample, 2x2 means: a macroblock is 2x2 samples, one
sample 8 pixels). The search tries the vectors with |dy| + |dx| <= `search` samples around the
previous frame's most common vector (so a steady pan is followed beyond the range) and the zero
vector. Plain differences would call every moving or panning block a transition; the best
match explains motion, so what is left is content that is new: a cut, a wipe, something
uncovered. The frame's median block-mean difference is removed first, so that an exposure
change (a white car entering an overhead view) is not new content either. `activity` is the
block's mean absolute deviation from its mean: unrelated textured blocks give S ~ 0.8-1, a
matched one ~ 0.1-0.4, and `change_floor` (luma levels) keeps flat, noisy blocks near 0.
Each labelled region takes the mean S_mb of its macroblocks (the method's S is per region; all
background is one region) and S = 1 where that mean exceeds `s_threshold`, else 0.

The cut is a frame-level decision, two independent cues that must agree:
- the colour distribution jumps: the total-variation distance between this frame's and the
  previous frame's normalised histograms (luma 32 bins on the 1/8-resolution grid, U and V 16
  bins each on every 4th chroma sample, the same density), averaged over the three planes,
  exceeds `cut_min_distance` and `cut_ratio` times the recent baseline: the median plus the median
  absolute deviation of the distances of the last `cut_window` frames of the current scene (a
  pan or a busy scene raises it, so a steady stream of large differences is no cut);
- the structure breaks: the frame's mean S_mb exceeds `cut_change` (the histogram jumps
  without that under an exposure step or a large bright object coming into view);
and at least `cut_min_gap` frames have passed since the last cut. The first frame is no cut.
S_mb costs the motion search, so unless the scene extension reads it (`scene.enabled`) it is
measured only on the frames the colours and the gap allow to be cuts (a few in a clip; its mean
decides), and the search's centre follows those frames only; the shared clips get the same cuts
as with S_mb on every frame (tests/test_scene.py).
Defaults and the margins measured on the shared clips: README (embodiment 4).
"""
from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..frame import Frame, edge_pad, pair_sums
from .config import SceneConfig  # noqa: F401  (its section, defined with the others)
from .regions import region_means

SIDE = 2  # search-grid samples per macroblock side
LUMA_BINS, CHROMA_BINS = 32, 16


@dataclass
class SceneResult:
    """One frame's scene-transition values (`scene` and `cut` go into `Modulation`)."""

    change: np.ndarray | None  # float32[mb_h, mb_w]: S_mb in [0, 1], before region averaging
    scene: np.ndarray | None  # float32[mb_h, mb_w]: S in {0, 1}, a macroblock its region's S
    # (change and scene are None where not measured: the scene extension is off and the
    # colours rule out a cut)
    cut: bool  # the frame starts a new scene: the encoder is asked for an IDR
    distance: float  # histogram distance to the previous frame (0 on a first frame)
    baseline: float  # the recent baseline it was compared with


@functools.lru_cache(maxsize=None)
def diamond(radius: int) -> np.ndarray:
    """int[K, 2] offsets with |dy| + |dx| <= radius, (0, 0) first (read-only: shared)."""
    dy, dx = (a.ravel() for a in np.mgrid[-radius:radius + 1, -radius:radius + 1])
    keep = np.abs(dy) + np.abs(dx) <= radius
    offsets = np.stack([dy[keep], dx[keep]], 1)
    offsets = offsets[np.argsort(np.abs(offsets).sum(1), kind="stable")]
    offsets.setflags(write=False)
    return offsets


def unexplained_change(cur: np.ndarray, prev: np.ndarray, centre: tuple[int, int],
                       search: int, floor: float) -> tuple[np.ndarray, tuple[int, int]]:
    """S_mb per macroblock (float32[mb_h, mb_w]) of `cur` against `prev` (both 1/8-resolution
    luma: `Frame.luma_sums` / 4), and the most common best vector (the next frame's search
    centre)."""
    candidates = diamond(search) + np.asarray(centre)
    if centre != (0, 0):
        candidates = np.vstack([candidates, [[0, 0]]])
    pad = int(np.abs(candidates).max())
    h, w = cur.shape
    # Exposure: the frame's typical block-mean difference is no new content.
    cur_sum = pair_sums(cur)
    gain = np.median(cur_sum - pair_sums(prev)) / (SIDE * SIDE)
    # The search in integers of 1/32 level, every candidate at once ([K, h, w]): the samples
    # are quarter levels and the gain a quarter of a median of their sums, so every value is
    # exact; |differences| < 2^15 (int16), their 2x2 sums < 2^16 (uint16).
    padded = edge_pad((prev * 32).astype(np.int16), pad)
    windows = sliding_window_view(padded, (h, w))[pad + candidates[:, 0], pad + candidates[:, 1]]
    np.subtract(windows, (cur * 32).astype(np.int16) - np.int16(np.rint(gain * 32)),
                out=windows)
    rows = np.abs(windows, out=windows)
    rows = (rows[:, 0::2] + rows[:, 1::2]).view(np.uint16)
    sad = rows[..., 0::2] + rows[..., 1::2]
    # Arg-min across candidates as one element-wise min, the index in the low bits: the
    # first of equal minima wins ((0, 0) comes first).
    bits = (len(candidates) - 1).bit_length()
    index = np.arange(len(candidates), dtype=np.int32)[:, None, None]
    key = ((sad.astype(np.int32) << bits) | index).min(0)
    best_index = key & ((1 << bits) - 1)
    best = (key >> bits).astype(np.float32) / 32
    mean = cur_sum / (SIDE * SIDE)
    activity = pair_sums(np.abs(cur - np.repeat(np.repeat(mean, SIDE, 0), SIDE, 1)))
    n = SIDE * SIDE
    s = np.clip((best / n) / (activity / n + floor), 0.0, 1.0).astype(np.float32)
    mode = int(np.bincount(best_index.ravel(), minlength=len(candidates)).argmax())
    return s, (int(candidates[mode][0]), int(candidates[mode][1]))


def colour_histograms(small_y: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """float64[3, LUMA_BINS]: the normalised histograms of the 1/8-resolution luma grid and of
    every 4th U and V sample (chroma rows padded with zeros)."""
    out = np.zeros((3, LUMA_BINS))
    luma = small_y.astype(np.uint8) >> 3  # 0..255.75 -> its bin of 8 levels (LUMA_BINS = 32)
    out[0] = np.bincount(luma.ravel(), minlength=LUMA_BINS)
    # U's bin in the high 4 bits, V's in the low 4: one count of the joint bins, then each
    # plane's marginal (CHROMA_BINS = 16).
    joint = (u[::4, ::4] & 0xF0) | (v[::4, ::4] >> 4)
    counts = np.bincount(joint.ravel(), minlength=256).reshape(CHROMA_BINS, CHROMA_BINS)
    out[1, :CHROMA_BINS], out[2, :CHROMA_BINS] = counts.sum(1), counts.sum(0)
    return out / out.sum(axis=1, keepdims=True)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Total-variation distance per plane (0 = same distribution, 1 = disjoint), averaged."""
    return float(0.5 * np.abs(a - b).sum(axis=1).mean())


def _median(values) -> float:
    """np.median of a few floats (the same value: the middle one, or the mean of the two),
    without its overhead (it ran four times a frame)."""
    v = sorted(values)
    i = len(v) // 2
    return v[i] if len(v) % 2 else (v[i - 1] + v[i]) / 2


class CutDetector:
    """The frame-level cut decision (module docstring) over a stream of per-frame measures."""

    def __init__(self, cfg: SceneConfig):
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        self._history: deque[float] = deque(maxlen=self.cfg.cut_window)
        self._since_cut = self.cfg.cut_min_gap  # the first frame counts as a scene start
        self.baseline = 0.0

    def colours_allow(self, distance: float) -> bool:
        """Whether this frame is a cut if its structure breaks too: the colours jump (against
        the recent baseline, which this sets) and the gap since the last cut is long enough."""
        cfg = self.cfg
        if self._history.maxlen != cfg.cut_window:  # reconfigured live
            self._history = deque(self._history, maxlen=cfg.cut_window)
        if self._history:
            median = _median(self._history)
            self.baseline = median + _median([abs(d - median) for d in self._history])
        else:
            self.baseline = 0.0
        return (distance > cfg.cut_min_distance and distance > cfg.cut_ratio * self.baseline
                and self._since_cut + 1 >= cfg.cut_min_gap)

    def update(self, distance: float, change: float | None) -> bool:
        """`distance`: histogram distance to the previous frame; `change`: the frame's mean
        S_mb (None: not measured, as `colours_allow` said no). Returns whether this frame
        starts a new scene."""
        cut = self.colours_allow(distance) and change is not None and change > self.cfg.cut_change
        self._since_cut += 1
        if cut:  # the baseline starts again with the new scene
            self._history.clear()
            self._since_cut = 0
        else:
            self._history.append(distance)
        return cut


class SceneAnalyser:
    """Feed it every frame in order (also frames with nothing labelled: the cut detector's
    state runs over all of them); each call compares with the frame given before it.

    The run has one (understanding.py): its `cut` is the frame's one scene-cut decision, read
    by the labeler (all models run), the storage profile (an IDR), the scene extension (an IDR
    and S per region, `scene_values`), the statistics and the service's `scene_cut` events."""

    def __init__(self, cfg: SceneConfig):
        self.cfg = cfg
        self.cuts = CutDetector(cfg)
        self.reset()

    def reset(self) -> None:
        """Forget the past (a new clip, a seek): the next frame is a first frame."""
        self._prev: np.ndarray | None = None
        self._prev_hist: np.ndarray | None = None
        self._centre = (0, 0)
        self.cuts.cfg = self.cfg
        self.cuts.reset()

    def analyse(self, frame: Frame, regions: np.ndarray | None = None) -> SceneResult:
        """`regions`: int[mb_h, mb_w] region ids (`RegionStats.regions`), or None: the whole
        frame is one region."""
        self.cuts.cfg = self.cfg
        small = 0.25 * frame.luma_sums  # means: the search's integers are 1/32 levels
        hist = colour_histograms(small, frame.u, frame.v)
        shape = (frame.mb_h, frame.mb_w)
        prev, prev_hist = self._prev, self._prev_hist
        self._prev, self._prev_hist = small, hist
        if prev is None or prev.shape != small.shape:
            self._centre = (0, 0)
            self.cuts.reset()
            zeros = np.zeros(shape, np.float32)
            return SceneResult(zeros, zeros.copy(), False, 0.0, 0.0)
        distance = histogram_distance(hist, prev_hist)
        # S_mb costs a motion search: measured where the scene extension reads it (`enabled`),
        # else only where the colours could make a cut.
        if not (self.cfg.enabled or self.cuts.colours_allow(distance)):
            self.cuts.update(distance, None)
            return SceneResult(None, None, False, distance, self.cuts.baseline)
        change, self._centre = unexplained_change(small, prev, self._centre, self.cfg.search,
                                                  self.cfg.change_floor)
        cut = self.cuts.update(distance, float(change.mean()))
        if cut:
            self._centre = (0, 0)  # the old scene's motion says nothing about the new one
        return SceneResult(change, scene_values(change, regions, self.cfg.s_threshold), cut,
                           distance, self.cuts.baseline)


def scene_values(change: np.ndarray, regions: np.ndarray | None,
                 threshold: float) -> np.ndarray:
    """S per macroblock (float32[mb_h, mb_w] in {0, 1}): 1 where its region's mean S_mb
    exceeds `threshold`. `regions`: int[mb_h, mb_w] region ids, or None: one region."""
    per_region = (np.full(change.shape, change.mean(), np.float32) if regions is None
                  else region_means(regions, change))
    return (per_region > threshold).astype(np.float32)
