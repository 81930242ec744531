"""An independent detector for analytics accuracy and the region of interest: YOLOX (COCO) on
full frames.

It must not be the model the encoder labelled with, or the figures would be circular: the map
would be graded with its own eyes. Pseudo ground truth = its detections on the original frames;
their boxes are the ROI the benchmarks measure PSNR over (`box_mask`); the same detector then
runs on the decoded frames of each encode, and F1 at IoU 0.5 says how much of what it saw
survives.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..frame import Frame
from ..labeler.decoders import decode_yolox
from ..labeler.preprocess import rgb_resized

# COCO class ids -> the groups the accuracy is reported for.
GROUPS = {"person": (0,), "vehicle": (1, 2, 3, 5, 7)}  # bicycle, car, motorcycle, bus, truck
# The test fixture beside the project (../shared/models), the benchmarks' default when present.
FIXTURE = Path(__file__).resolve().parents[3] / "shared" / "models" / "yolox_nano.onnx"


def default_model() -> Path | None:
    """The fixture YOLOX-nano where it is, else None."""
    return FIXTURE if FIXTURE.is_file() else None


def box_mask(dets: dict[str, np.ndarray], width: int, height: int) -> np.ndarray:
    """bool[height, width]: the pixels inside any box of `dets` (as `detect` returns them)."""
    mask = np.zeros((height, width), bool)
    for boxes in dets.values():
        for x1, y1, x2, y2, _ in boxes:
            mask[max(0, int(y1)):min(height, int(np.ceil(y2))),
                 max(0, int(x1)):min(width, int(np.ceil(x2)))] = True
    return mask


class YoloxDetector:
    def __init__(self, path: str | Path, score_threshold: float = 0.35, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise ModelError(f"cannot load model {path}: {str(e).splitlines()[0]}") from None
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4 or not all(isinstance(n, int) for n in inp.shape[2:]):
            raise ModelError(f"{path}: not a YOLOX detector (its input is {inp.shape}, not a "
                             "fixed-size N x 3 x H x W image)")
        self.input_name = inp.name
        _, _, self.h, self.w = inp.shape
        self.score_threshold = score_threshold
        self.name = Path(path).name
        group_of = {c: g for g, ids in GROUPS.items() for c in ids}
        self._group = np.vectorize(lambda c: group_of.get(int(c), ""), otypes=[object])

    def detect(self, frame: Frame) -> dict[str, np.ndarray]:
        """Boxes per group: {"person": float32[n, 5] (x1, y1, x2, y2, score) in frame pixels}."""
        r = min(self.w / frame.width, self.h / frame.height)
        w, h = max(1, round(frame.width * r)), max(1, round(frame.height * r))
        img = np.full((self.h, self.w, 3), 114.0, np.float32)  # YOLOX letterbox: top-left
        img[:h, :w] = rgb_resized(frame, w, h)[..., ::-1]  # BGR, 0..255
        (raw,) = self.session.run(None, {self.input_name: img.transpose(2, 0, 1)[None]})
        dets = decode_yolox(raw, (self.h, self.w), self.score_threshold)
        dets[:, :4] /= r
        groups = self._group(dets[:, 5]) if len(dets) else np.array([], object)
        return {g: dets[groups == g, :5] for g in GROUPS}
