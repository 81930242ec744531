"""Frame -> model input tensors. Planes are resized before colour conversion, so the cost
depends on the model's input size, not the frame's."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import LabelerError
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


@dataclass(frozen=True)
class Geometry:
    """Where the frame's picture lies in the model's input tensor (input pixels)."""

    in_w: int  # tensor width and height
    in_h: int
    x0: int  # the picture's box inside it (letterbox padding around it)
    y0: int
    cw: int
    ch: int

    def boxes_to_frame(self, boxes: np.ndarray) -> np.ndarray:
        """[n, >=4] boxes (x1, y1, x2, y2 in input pixels, extra columns kept) -> frame
        fractions."""
        out = np.array(boxes, np.float32, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.x0) / self.cw
        out[:, [1, 3]] = (out[:, [1, 3]] - self.y0) / self.ch
        return out


class InputTransform:
    """Frame -> one model's input tensor, from the `input` part of its description (registry
    fields: size, layout, color, mean, std, resize, pad, multiple) and the model's own input
    shape. Sizes: a static model's size is its own (a different `size` is an error); a model
    with dynamic height/width runs at `size` (`fit`: the frame's aspect ratio kept inside it,
    each side rounded to a multiple of `multiple`)."""

    def __init__(self, inp: dict, model_shape, key: str = "input"):
        shape = list(model_shape)
        if len(shape) != 4:
            raise LabelerError(f"{key}: the model's input has shape {shape}; a 4-D image "
                               f"tensor is expected")
        static = [d if isinstance(d, int) and d > 0 else None for d in shape]
        layout = inp.get("layout")
        if layout is None:
            if static[1] == 3 and static[3] != 3:
                layout = "NCHW"
            elif static[3] == 3 and static[1] != 3:
                layout = "NHWC"
            else:
                raise LabelerError(f"{key}.layout: the model's input {shape} does not tell; "
                                   f"set NCHW or NHWC")
        ch_dim, h_dim, w_dim = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
        if static[ch_dim] not in (None, 3):
            raise LabelerError(f"{key}: the model takes {static[ch_dim]} channels in {layout} "
                               f"{shape}; 3 (RGB or BGR) are supported")
        h, w = static[h_dim], static[w_dim]
        size = inp.get("size")
        self.dynamic = h is None or w is None
        if not self.dynamic:
            if size is not None and list(size) != [w, h]:
                raise LabelerError(f"invalid value for {key}.size: {list(size)} (the model's "
                                   f"input is fixed at {w}x{h})")
            size = [w, h]
        elif size is None:
            raise LabelerError(f"{key}.size: the model's input {shape} has dynamic dimensions; "
                               f"give the size to run it at ([width, height])")
        self.resize = inp.get("resize", "stretch")
        if self.resize == "fit" and not self.dynamic:
            raise LabelerError(f"{key}.resize: fit needs a model with dynamic input dimensions "
                               f"(this one is fixed at {w}x{h}); use stretch or letterbox")
        self.size = (int(size[0]), int(size[1]))
        self.layout = layout
        self.bgr = inp.get("color", "RGB") == "BGR"
        mean = np.broadcast_to(np.asarray(inp.get("mean", 0.0), np.float32), (3,))
        std = np.broadcast_to(np.asarray(inp.get("std", 1.0), np.float32), (3,))
        self.scale = (1.0 / std).astype(np.float32)
        self.offset = (-mean / std).astype(np.float32)
        self.pad = float(inp.get("pad", 0.0))
        self.multiple = int(inp.get("multiple", 1))
        self._geometry: dict[tuple[int, int], Geometry] = {}

    def geometry(self, frame_w: int, frame_h: int) -> Geometry:
        g = self._geometry.get((frame_w, frame_h))
        if g is None:
            g = self._geometry[(frame_w, frame_h)] = self._layout(frame_w, frame_h)
        return g

    def _layout(self, fw: int, fh: int) -> Geometry:
        w, h = self.size
        if self.resize == "stretch":
            return Geometry(w, h, 0, 0, w, h)
        s = min(w / fw, h / fh)
        if self.resize == "fit":
            m = self.multiple
            w2, h2 = (max(m, int(round(v * s / m)) * m) for v in (fw, fh))
            return Geometry(w2, h2, 0, 0, w2, h2)
        cw, ch = max(1, round(fw * s)), max(1, round(fh * s))
        return Geometry(w, h, (w - cw) // 2, (h - ch) // 2, cw, ch)

    def __call__(self, frame: Frame) -> tuple[np.ndarray, Geometry]:
        g = self.geometry(frame.width, frame.height)
        img = rgb_resized(frame, g.cw, g.ch)
        order = (2, 1, 0) if self.bgr else (0, 1, 2)
        ys, xs = slice(g.y0, g.y0 + g.ch), slice(g.x0, g.x0 + g.cw)
        if self.layout == "NCHW":
            out = np.empty((1, 3, g.in_h, g.in_w), np.float32)
            for c, src in enumerate(order):  # one channel at a time: no extra full-size copies
                if (g.cw, g.ch) != (g.in_w, g.in_h):
                    out[0, c] = self.pad * self.scale[c] + self.offset[c]
                np.multiply(img[..., src], self.scale[c], out=out[0, c, ys, xs])
                out[0, c, ys, xs] += self.offset[c]
        else:
            img = np.ascontiguousarray(img[..., ::-1]) if self.bgr else img  # ours: in place
            img *= self.scale
            img += self.offset
            if (g.cw, g.ch) == (g.in_w, g.in_h):
                return img[None], g
            out = np.empty((1, g.in_h, g.in_w, 3), np.float32)
            out[0] = self.pad * self.scale + self.offset
            out[0, ys, xs] = img
        return out, g
