"""Frame -> model input tensors. Planes are resized before colour conversion, so the cost
depends on the model's input size, not the frame's."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..frame import Frame


def rgb_resized(frame: Frame, width: int, height: int) -> np.ndarray:
    """float32[height, width, 3] RGB in [0, 255] (BT.601 limited range).

    Each plane is first decimated by an integer step that keeps it at least twice the target
    size (cheap strided copy), then resampled with a bilinear filter, which still averages
    over the remaining 2x or more: ~0.3 ms from 1080p instead of ~2.5 ms.
    """
    def plane(p: np.ndarray, w: int, h: int) -> np.ndarray:
        step = max(1, min(p.shape[1] // (2 * w), p.shape[0] // (2 * h)))
        if step > 1:
            p = np.ascontiguousarray(p[::step, ::step])
        return np.asarray(Image.fromarray(p).resize((w, h), Image.Resampling.BILINEAR),
                          np.float32)

    def chroma(p: np.ndarray) -> np.ndarray:  # resampled at half size, as it is stored
        c = plane(p, (width + 1) // 2, (height + 1) // 2)
        return np.repeat(np.repeat(c, 2, 0), 2, 1)[:height, :width]

    y, u, v = plane(frame.y, width, height) - 16.0, chroma(frame.u) - 128.0, \
        chroma(frame.v) - 128.0
    rgb = np.stack([1.164 * y + 1.596 * v, 1.164 * y - 0.392 * u - 0.813 * v,
                    1.164 * y + 2.017 * u], axis=-1)
    return np.clip(rgb, 0.0, 255.0)


def letterbox(rgb: np.ndarray, size: int, fill: float = 0.0) -> tuple[np.ndarray, float, float]:
    """Pad an [h, w, 3] image (already scaled so its long side is `size`) to size x size,
    centred; returns the image and the (x, y) padding as fractions of `size`."""
    h, w = rgb.shape[:2]
    out = np.full((size, size, 3), fill, np.float32)
    x0, y0 = (size - w) // 2, (size - h) // 2
    out[y0:y0 + h, x0:x0 + w] = rgb
    return out, x0 / size, y0 / size
