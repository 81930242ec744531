"""Pictures of what the encoder was told: the QP map over the frame, label outlines."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import SinkError
from .frame import MB, Frame
from .sinks.file import FORMATS, RAW_CODEC
from .values import LabelMap, QpMap


def overlay(frame: Frame, qp: QpMap, labels: LabelMap) -> np.ndarray:
    """uint8[H, W, 3]: green where the map spends more bits than the frame's average (offset
    below its mean), red where it spends fewer, strongest at the frame's largest deviation;
    labelled macroblocks outlined in white. (The mean itself only shifts x264's rate control.)"""
    h, w = frame.height, frame.width
    rgb = frame.rgb().astype(np.float32)
    dev = qp.offsets - qp.offsets.mean()
    off = np.repeat(np.repeat(dev, MB, 0), MB, 1)[:h, :w]
    a = np.clip(np.abs(off) / max(float(np.abs(dev).max()), 1.0), 0, 1)[..., None] * 0.6
    tint = np.where(off[..., None] < 0, np.array([0, 255, 0], np.float32),
                    np.array([255, 0, 0], np.float32))
    out = rgb * (1 - a) + tint * a
    lab = np.repeat(np.repeat(labels.labels, MB, 0), MB, 1)[:h, :w]
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    out[edge] = 255
    return np.clip(out, 0, 255).astype(np.uint8)


def save_png(rgb: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


# the output extensions that hold H.264 (the map video's libx264): containers and raw .h264
MAP_VIDEO_EXTENSIONS = tuple(e for e in FORMATS if RAW_CODEC.get(e, "h264") == "h264")


def check_map_video(path: str) -> None:
    """Before the run: a name the map video (H.264) can be written under."""
    ext = Path(path).suffix.lower()
    if ext not in MAP_VIDEO_EXTENSIONS:
        raise SinkError(f"--qp-map-video {path}: the map video is H.264, which "
                        f"{ext or 'no extension'!r} does not name; use one of "
                        f"{', '.join(MAP_VIDEO_EXTENSIONS)}")


class OverlayVideo:
    """An H.264 file of overlays, one per frame (PyAV's own libx264; visualisation only)."""

    def __init__(self, path: str, width: int, height: int, fps):
        import av

        self.container = av.open(path, "w")
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"preset": "ultrafast", "crf": "23"}

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
