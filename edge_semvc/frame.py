"""The Frame value type and macroblock-grid helpers.

Every stage works on a grid of 16x16 macroblocks (the unit x264 takes QP offsets for).
The grid rounds up: a 854x480 frame has 54x30 macroblocks, the last column only partly covered.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, reduce

import numpy as np

MB = 16


def mb_grid(width: int, height: int) -> tuple[int, int]:
    """(mb_w, mb_h) for a frame size, rounding partial macroblocks up."""
    return -(-width // MB), -(-height // MB)


GRID = 4  # the luma grid takes every 4th sample: a macroblock is 4x4 samples of it


def luma_grid(y: np.ndarray) -> np.ndarray:
    """float32[4 * mb_h, 4 * mb_w]: every 4th luma sample, the last row and column repeated
    where the picture does not fill the macroblock grid (np.pad's "edge" on two sides, filled
    in place: np.pad is slow). The scene analyser, the labeler's carrier and the analysis all
    start from it (`Frame.luma_grid`)."""
    mb_w, mb_h = mb_grid(y.shape[1], y.shape[0])
    rows, cols = GRID * mb_h, GRID * mb_w
    sub = y[::GRID, ::GRID][:rows, :cols]
    h, w = sub.shape
    out = np.empty((rows, cols), np.float32)
    out[:h, :w] = sub
    out[h:, :w] = sub[-1]
    out[:, w:] = out[:, w - 1:w]
    return out


BLOCK = MB // GRID  # luma-grid samples per macroblock side


def block_samples(grid: np.ndarray) -> np.ndarray:
    """float32[mb_h, BLOCK, mb_w, BLOCK]: a luma grid (`Frame.luma_grid`) by macroblock (a
    view). Complexity and change both read it."""
    h, w = grid.shape
    return grid.reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK)


def block_mean(blocks: np.ndarray) -> np.ndarray:
    """Mean over each block's BLOCK x BLOCK samples: float32[mb_h, mb_w]."""
    # Adding strided slices is ~8x faster than numpy's reduction over such short axes.
    rows = reduce(np.add, (blocks[..., i] for i in range(BLOCK)))
    return reduce(np.add, (rows[:, i] for i in range(BLOCK))) / (BLOCK * BLOCK)


def block_variance(blocks: np.ndarray) -> np.ndarray:
    mean = block_mean(blocks)
    return block_mean(blocks * blocks) - mean * mean


def pair_sums(a: np.ndarray) -> np.ndarray:
    """[..., 2h, 2w] -> [..., h, w]: the sums of 2x2 neighbours over the last two axes (of a
    luma grid: `Frame.luma_sums`; of the motion searches' samples: a macroblock's)."""
    rows = a[..., 0::2, :] + a[..., 1::2, :]
    return rows[..., 0::2] + rows[..., 1::2]


def edge_pad(a: np.ndarray, p: int) -> np.ndarray:
    """`a` [H, W] extended by `p` samples on each side with its edge values (np.pad's "edge",
    without its overhead): the motion searches' reference planes."""
    h, w = a.shape
    out = np.empty((h + 2 * p, w + 2 * p), a.dtype)
    out[p:p + h, p:p + w] = a
    out[p:p + h, :p] = a[:, :1]
    out[p:p + h, p + w:] = a[:, -1:]
    out[:p] = out[p]
    out[p + h:] = out[p + h - 1]
    return out


@dataclass
class Frame:
    """One decoded picture in I420 (planar 4:2:0, 8 bit)."""

    y: np.ndarray  # uint8[H, W]
    u: np.ndarray  # uint8[ceil(H/2), ceil(W/2)]
    v: np.ndarray  # uint8[ceil(H/2), ceil(W/2)]
    pts: int | None
    time_base: Fraction
    index: int

    @property
    def width(self) -> int:
        return self.y.shape[1]

    @property
    def height(self) -> int:
        return self.y.shape[0]

    @property
    def mb_w(self) -> int:
        return mb_grid(self.width, self.height)[0]

    @property
    def mb_h(self) -> int:
        return mb_grid(self.width, self.height)[1]

    @cached_property
    def luma_grid(self) -> np.ndarray:
        """`luma_grid(self.y)`, computed once: the picture is read once a frame, not once per
        analyser (a strided read touches a quarter of the frame's memory: ~0.1 ms at 720p).
        Read-only; sources turn or fill `y` before they hand the frame on, never after."""
        return luma_grid(self.y)

    @cached_property
    def luma_sums(self) -> np.ndarray:
        """float32[2 * mb_h, 2 * mb_w]: the luma grid's 2x2 sums (0..1020, exact), computed
        once: the 1/8-resolution picture the labeler's carrier and the scene analyser search
        motion on (a macroblock is 2x2 of it). Read-only."""
        return pair_sums(self.luma_grid)

    @cached_property
    def luma_variance(self) -> np.ndarray:
        """float32[mb_h, mb_w]: each macroblock's luma variance over its 4x4 samples of the luma
        grid (point samples: an unbiased estimate of the variance of all 256), computed once:
        the analysis's complexity and the encoder's own AQ (encoders/x264.py) read it.
        Read-only."""
        return block_variance(block_samples(self.luma_grid))

    @classmethod
    def from_i420(cls, buf: np.ndarray, width: int, height: int, pts, time_base, index) -> "Frame":
        """Split a packed I420 buffer (as PyAV's to_ndarray(format='yuv420p') gives) into planes."""
        cw, ch = (width + 1) // 2, (height + 1) // 2
        flat = buf.reshape(-1)
        y = flat[: width * height].reshape(height, width)
        u = flat[width * height: width * height + cw * ch].reshape(ch, cw)
        v = flat[width * height + cw * ch: width * height + 2 * cw * ch].reshape(ch, cw)
        return cls(y, u, v, pts, time_base, index)

    @classmethod
    def from_rgb(cls, rgb: np.ndarray, pts, time_base, index) -> "Frame":
        """uint8[H, W, 3] RGB (even H, W) -> BT.601 limited-range I420."""
        f = rgb.astype(np.float32)
        r, g, b = f[..., 0], f[..., 1], f[..., 2]
        y = 16.0 + 0.257 * r + 0.504 * g + 0.098 * b
        u = 128.0 - 0.148 * r - 0.291 * g + 0.439 * b
        v = 128.0 + 0.439 * r - 0.368 * g - 0.071 * b
        h, w = y.shape

        def sub(c):  # 2x2 average for the chroma planes
            return c.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

        to8 = lambda a: np.clip(np.rint(a), 0, 255).astype(np.uint8)  # noqa: E731
        return cls(to8(y), to8(sub(u)), to8(sub(v)), pts, time_base, index)

    def rgb(self) -> np.ndarray:
        """uint8[H, W, 3] RGB (BT.601 limited range), for the labeler."""
        h, w = self.height, self.width
        y = self.y.astype(np.float32) - 16.0
        u = np.repeat(np.repeat(self.u, 2, 0), 2, 1)[:h, :w].astype(np.float32) - 128.0
        v = np.repeat(np.repeat(self.v, 2, 0), 2, 1)[:h, :w].astype(np.float32) - 128.0
        r = 1.164 * y + 1.596 * v
        g = 1.164 * y - 0.392 * u - 0.813 * v
        b = 1.164 * y + 2.017 * u
        return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def prob_to_mb(prob: np.ndarray, frame_w: int, frame_h: int) -> np.ndarray:
    """Area-average a low-resolution probability map that spans the whole frame onto the
    frame's macroblock grid: float32[mb_h, mb_w].

    The grid reaches past the frame's right/bottom edge when the size is not a multiple of 16;
    the map is edge-extended to cover that part, as the encoder's own padding is.
    """
    from PIL import Image

    mb_w, mb_h = mb_grid(frame_w, frame_h)
    h, w = prob.shape
    span_w, span_h = w * mb_w * MB / frame_w, h * mb_h * MB / frame_h  # grid extent, map cells
    padded = np.pad(prob.astype(np.float32), ((0, int(np.ceil(span_h)) - h + 1),
                                              (0, int(np.ceil(span_w)) - w + 1)), mode="edge")
    img = Image.fromarray(padded, mode="F")
    out = img.resize((mb_w, mb_h), Image.Resampling.BOX, box=(0.0, 0.0, span_w, span_h))
    return np.asarray(out, np.float32)
