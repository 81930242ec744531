"""A picture's display matrix (a phone held upright, a camera mounted upside down) turned into the
few array operations that make it upright, as FFmpeg's own player and command line do.

Sources turn every frame upright before anything sees it: the labeler then looks at people the
right way up, and the output is encoded upright, so it plays upright in every container and
stream (MPEG-TS, RTP and raw H.264 have no display matrix to carry).
"""
from __future__ import annotations

import logging
import math
import struct

import numpy as np

log = logging.getLogger("edge_semvc")

# each: the numpy equivalent of one FFmpeg filter on a plane (rows, columns)
_OPS = {
    "clock": lambda p: np.rot90(p, -1),  # transpose=clock: 90 degrees clockwise
    "cclock": lambda p: np.rot90(p, 1),  # transpose=cclock: 90 degrees counter-clockwise
    "cclock_flip": lambda p: p.T,  # transpose=cclock_flip
    "clock_flip": lambda p: np.rot90(p, -1)[::-1],  # transpose=clock_flip
    "hflip": lambda p: p[:, ::-1],
    "vflip": lambda p: p[::-1],
}


class Orientation:
    """The operations (names of `_OPS`, applied in order) that show a coded picture upright."""

    def __init__(self, ops: tuple[str, ...] = (), degrees: float = 0.0):
        self.ops = ops
        self.degrees = degrees  # the display matrix's rotation, counter-clockwise

    @classmethod
    def of(cls, frame) -> "Orientation":
        """From a decoded PyAV frame's display matrix (none: nothing to do)."""
        side = frame.side_data.get("DISPLAYMATRIX") if frame is not None else None
        if side is None:
            return cls()
        return cls.from_matrix(struct.unpack("<9i", bytes(side)[:36]))

    @classmethod
    def from_matrix(cls, m) -> "Orientation":
        """FFmpeg's display matrix (9 int32, 16.16 fixed point), read as FFmpeg's command line
        reads it (fftools: get_rotation and the autorotate filters)."""
        scale = (math.hypot(m[0], m[3]), math.hypot(m[1], m[4]))
        if not scale[0] or not scale[1]:
            return cls()
        ccw = -math.degrees(math.atan2(m[1] / scale[1], m[0] / scale[0]))  # av_display_rotation_get
        theta = -round(ccw)
        theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
        if abs(theta - 90) < 1:
            ops = ("cclock_flip",) if m[3] > 0 else ("clock",)
        elif abs(theta - 180) < 1:
            ops = (("hflip",) if m[0] < 0 else ()) + (("vflip",) if m[4] < 0 else ())
        elif abs(theta - 270) < 1:
            ops = ("clock_flip",) if m[3] < 0 else ("cclock",)
        elif abs(theta) < 1:
            ops = ("vflip",) if m[4] < 0 else ()
        else:
            log.warning("the input's display matrix rotates by %.1f degrees, not a multiple of "
                        "90: not applied (the picture is used as coded)", ccw)
            ops = ()
        return cls(ops, ccw)

    @property
    def swaps(self) -> bool:
        """Whether width and height trade places."""
        return sum(op not in ("hflip", "vflip") for op in self.ops) % 2 == 1

    def size(self, width: int, height: int) -> tuple[int, int]:
        return (height, width) if self.swaps else (width, height)

    def plane(self, p: np.ndarray) -> np.ndarray:
        for op in self.ops:
            p = _OPS[op](p)
        return np.ascontiguousarray(p)

    def describe(self) -> str:
        return f"turned upright ({' + '.join(self.ops)}) from its display matrix " \
               f"({self.degrees:g} degrees)"

    def __bool__(self) -> bool:
        return bool(self.ops)
