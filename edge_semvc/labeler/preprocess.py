"""Frame -> model input tensors. Planes are resized before colour conversion, so the cost
depends on the model's input size, not the frame's."""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..frame import Frame


def rgb_resized(frame: Frame, width: int, height: int) -> np.ndarray:
    """float32[height, width, 3] RGB in [0, 255] (BT.601 limited range), area-resampled."""
    def plane(p: np.ndarray) -> np.ndarray:
        img = Image.fromarray(p).resize((width, height), Image.Resampling.BILINEAR,
                                        reducing_gap=2.0)
        return np.asarray(img, np.float32)

    y, u, v = plane(frame.y) - 16.0, plane(frame.u) - 128.0, plane(frame.v) - 128.0
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
