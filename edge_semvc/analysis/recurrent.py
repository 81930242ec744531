"""The recurrent change network of METHOD embodiment 2: per labelled region, the predicted
inter-frame difference D and its squashed value P_t = tanh(D).

The method asks for a recurrent network that looks at a region in F_{t-1} and F_t and predicts
their difference D. Ours is a small gated recurrent cell per macroblock whose weights are set
analytically (nothing is trained), so that D is large for real change and 0 for sensor noise.
Its state is two numbers per macroblock: a noise floor `n` that adapts slowly and a fast change
estimate `f`. Each frame, with x_t the mean absolute luma difference of the macroblock's 4x4
samples (the grid `frame.block_samples` gives, in luma levels):

    f_t = f_{t-1} + a_fast * (x_t - f_{t-1})             fast change estimate
    th_t = k * n_{t-1} + m                               noise threshold
    g_t = sigmoid((max(f_t, x_t) - th_t) / w)            gate: 0 = noise, 1 = real change
    a_t = a_rise if x_t > n_{t-1} else a_fall            the floor falls faster than it rises
    u_t = a_t * (1 - g_t) + a_busy * g_t                 floor update rate, held while changing
    n_t = n_{t-1} + u_t * (min(x_t, th_t) - n_{t-1})     noise floor, from noise-like samples
    D_t = max(f_t - th_t, 0) / scale                     gated excess over the floor, normalised

Why these weights: for Gaussian sensor noise of standard deviation s, x (16 samples, each a
difference of two noisy frames) has mean ~1.13 s and a relative spread of ~19 %; a_fast = 0.5
halves a one-frame spike (variance x1/3) and still lets a step through within two frames. With
k = 2 and m = 2 levels the threshold sits at least 9 spreads of f above the noise mean, so no
macroblock of a static noisy picture crosses it (measured: none at s = 3 to 12), while a walking
person (x of tens of levels over a floor of a few) crosses it on the first or second frame.
The floor rises at a_rise = 0.02 and falls at a_fall = 0.1: it settles a little under the noise
mean (a low quantile, averaged over ~50 frames), drops within ~10 frames when the picture gets
quieter (after a pan at start-up), and a slow walker whose change stays under the threshold
lifts it only slowly. It learns from x capped at the threshold, 4x slower still (a_busy) while
the gate is open, so a person moving in one place for seconds is not absorbed as "noise"; a
macroblock that keeps changing for good (leaves in the wind, a screen) is, after a few hundred
frames.
The cell starts at rest: n = f = the frame's median x (most of a frame is static, so the median
is its noise), so the first frames neither trigger on noise nor miss a person already moving.

D is averaged over each labelled region (the method's D is per region) and P_t = tanh(mean D):
P = 0.76 at an excess of `scale` levels. `qp/attention.py` turns P into a change of Q.
"""
from __future__ import annotations

import numpy as np

from ..frame import Frame, block_mean, block_samples
from .config import AttentionConfig  # noqa: F401  (its section, defined with the others)
from .regions import region_means


class RecurrentChange:
    """The recurrent change network: feed it every frame's luma samples in order; it returns
    P_t = tanh(D) per macroblock, each macroblock holding its region's value. Each step compares
    with the frame given before it (skip none, or `reset()` after a gap). `excess` holds the
    last D per macroblock, before region averaging."""

    def __init__(self, cfg: AttentionConfig):
        self.cfg = cfg
        self.reset()

    def reset(self) -> None:
        """Forget the past (a new clip, a gap in the frames): the next frame is a first frame."""
        self._prev: np.ndarray | None = None
        self._floor: np.ndarray | None = None  # n, luma levels per macroblock
        self._fast: np.ndarray | None = None  # f, luma levels per macroblock
        self.excess = np.zeros((0, 0), np.float32)  # D per macroblock, before region averaging

    def analyse(self, frame: Frame, regions: np.ndarray | None = None) -> np.ndarray:
        """`step` on the frame's luma samples (`Frame.luma_grid`)."""
        return self.step(block_samples(frame.luma_grid), regions)

    def step(self, blocks: np.ndarray, regions: np.ndarray | None = None) -> np.ndarray:
        """One time step. `blocks`: float32[mb_h, 4, mb_w, 4] luma samples
        (`frame.block_samples`); `regions`: int[mb_h, mb_w] region ids
        (`RegionStats.regions`), or None for per-macroblock values.
        Returns P_t, float32[mb_h, mb_w]; 0 on a first frame."""
        blocks = np.asarray(blocks, np.float32)  # uint8 differences would wrap
        shape = (blocks.shape[0], blocks.shape[2])
        if self._prev is None or self._prev.shape != blocks.shape:
            self.reset()
            self._prev = blocks
            self.excess = np.zeros(shape, np.float32)
            return np.zeros(shape, np.float32)
        x = block_mean(np.abs(blocks - self._prev))
        self._prev = blocks
        if self._floor is None:  # at rest: the frame's typical change is its noise
            rest = np.float32(np.median(x))
            self._floor = np.full(shape, rest, np.float32)
            self._fast = self._floor.copy()
        self.excess = self._cell(x)
        d = self.excess if regions is None else region_means(regions, self.excess)
        return np.tanh(d).astype(np.float32)

    def _cell(self, x: np.ndarray) -> np.ndarray:
        """The cell's update (module docstring); returns D per macroblock."""
        cfg = self.cfg
        self._fast += cfg.fast_rate * (x - self._fast)
        threshold = cfg.floor_factor * self._floor + cfg.floor_margin
        over = self._fast - threshold
        # A new sample above the threshold is no noise either, even before f has caught up.
        gate_in = np.maximum(over, x - threshold)
        gate = 0.5 + 0.5 * np.tanh(gate_in / (2.0 * cfg.gate_width))  # sigmoid, overflow-free
        quiet = np.where(x > self._floor, cfg.floor_rise, cfg.floor_fall)
        rate = quiet + (cfg.floor_busy - quiet) * gate
        # x capped at the threshold: a walker staying on a macroblock for seconds lifts its
        # floor by at most a_busy * ((k - 1) * n + m) a frame, never at the pace of x.
        self._floor += rate * (np.minimum(x, threshold) - self._floor)
        return (np.maximum(over, 0.0) / cfg.scale).astype(np.float32)
