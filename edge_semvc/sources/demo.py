"""The built-in default input: a short clip made at run time from a real photograph.

scikit-image ships `astronaut` (Eileen Collins, NASA, public domain). A 16:9 window moves over
it like a hand-held camera (a slow zoom in and out, a sideways pan, a small tilt and a
little shake; the face stays in view) and mild
sensor noise is added, so the person and the face move in frame as they would in real footage.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Iterator

import numpy as np
from PIL import Image

from ..errors import SourceError
from ..frame import Frame

WIDTH, HEIGHT, FPS, FRAMES = 640, 360, Fraction(30), 90


class DemoSource:
    def __init__(self, name: str):
        if name != "astronaut":
            raise SourceError(f"unknown demo input {name!r} (available: demo://astronaut)")
        from skimage import data

        self.image = Image.fromarray(data.astronaut())
        self.width, self.height, self.fps = WIDTH, HEIGHT, FPS
        self.time_base = 1 / FPS
        self.frame_count = FRAMES
        self.description = (f"demo://astronaut ({WIDTH}x{HEIGHT}, {FPS} fps, {FRAMES} frames, "
                            "scikit-image astronaut photo with simulated camera motion)")

    def frames(self) -> Iterator[Frame]:
        rng = np.random.default_rng(0)
        noise = np.rint(rng.normal(0, 2.0, (4, HEIGHT, WIDTH))).astype(np.int16)
        img_w, img_h = self.image.size
        for i in range(FRAMES):
            t = i / (FRAMES - 1)
            zoom = 1.0 - 0.3 * np.sin(np.pi * t)  # window shrinks to 70 % mid-clip
            w = img_w * zoom
            h = w * HEIGHT / WIDTH
            x0 = (img_w - w) * (0.5 + 0.5 * np.sin(2 * np.pi * t)) + 2 * rng.standard_normal()
            y0 = 40 * (1 - np.cos(2 * np.pi * t)) + 2 * rng.standard_normal()
            x0, y0 = float(np.clip(x0, 0, img_w - w)), float(np.clip(y0, 0, img_h - h))
            crop = self.image.resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC,
                                     box=(x0, y0, x0 + w, y0 + h))
            frame = Frame.from_rgb(np.asarray(crop), i, self.time_base, i)
            # Sensor noise on luma, from a small bank of noise planes (cheaper than fresh noise).
            noisy = frame.y.astype(np.int16) + noise[i % len(noise)]
            frame.y = np.clip(noisy, 0, 255).astype(np.uint8)
            yield frame

    def close(self) -> None:
        pass
