"""The tiles' recall and cost (issue 22, item 3): small objects from high cameras and drones.

Reference: the fixture detector (YOLOX-nano) on 2x-upscaled tiles of every evaluated frame (the
frame cut into overlapping tiles of half the detector's input, each magnified 2x into it), its
boxes merged across tiles. The product's labeler runs on every frame (in line, its own budget:
`--set labeler.cpu_budget=...`, or `--live-share S` for a camera whose models may use S of each
frame period); a reference object counts as found when the labeler gives the macroblock at its
centre its group's class (person, vehicle). Cost: the labeler's CPU per frame.

    python -m edge_semvc.bench.tiles CLIP... --frames 150 --every 3 [--set labeler.tiles=0]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from itertools import islice
from pathlib import Path

import numpy as np

from ..config import load_config
from ..frame import MB, Frame
from ..labeler import Labeler
from ..labeler.decoders import nms
from ..labeler.tiles import crop_frame
from ..sources import open_source
from .detector import GROUPS, YoloxDetector

FIXTURE = Path(__file__).resolve().parents[2] / ".." / "shared" / "models" / "yolox_nano.onnx"
OVERLAP = 0.25  # reference tiles: an object on a seam is whole in one of them


def reference(det: YoloxDetector, frame: Frame) -> dict[str, np.ndarray]:
    """Boxes per group (x1, y1, x2, y2, score in frame pixels) from 2x-upscaled tiles."""
    tw, th = det.w // 2, det.h // 2  # half the input: the detector magnifies each tile 2x

    def starts(size: int, tile: int) -> list[int]:
        if size <= tile:
            return [0]
        n = math.ceil((size - tile) / (tile * (1 - OVERLAP))) + 1
        return [round(i * (size - tile) / (n - 1)) for i in range(n)]

    out: dict[str, list] = {g: [] for g in GROUPS}
    for y0 in starts(frame.height, th):
        for x0 in starts(frame.width, tw):
            x0e, y0e = x0 - x0 % 2, y0 - y0 % 2
            x1, y1 = min(frame.width, x0e + tw), min(frame.height, y0e + th)
            for g, boxes in det.detect(crop_frame(frame, x0e, y0e, x1, y1)).items():
                b = boxes.copy()
                b[:, [0, 2]] += x0e
                b[:, [1, 3]] += y0e
                # a box cut by an inner seam is whole in the overlapping tile
                cut = (((b[:, 0] <= x0e + 1) & (x0e > 0))
                       | ((b[:, 2] >= x1 - 1) & (x1 < frame.width))
                       | ((b[:, 1] <= y0e + 1) & (y0e > 0))
                       | ((b[:, 3] >= y1 - 1) & (y1 < frame.height)))
                out[g].append(b[~cut])
    merged = {}
    for g, parts in out.items():
        b = np.concatenate(parts) if parts else np.zeros((0, 5), np.float32)
        merged[g] = nms(b, 0.5) if len(b) else b
    return merged


def found(labels, classes: list[str], boxes: np.ndarray, group: str) -> int:
    if group not in classes or not len(boxes):
        return 0
    cls = classes.index(group)
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2 // MB).astype(int).clip(0, labels.shape[1] - 1)
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2 // MB).astype(int).clip(0, labels.shape[0] - 1)
    return int((labels[cy, cx] == cls).sum())


def run(clip: str, frames: int, every: int, overrides: list[str], live_share: float | None,
        det: YoloxDetector) -> dict:
    cfg = load_config(None, overrides)
    cfg.labeler.parallel = False  # in line: the same labels on every run
    lab = Labeler(cfg.labeler, cfg.cache_dir(), log=lambda *_: None, live_share=live_share)
    src = open_source(clip)
    totals = {g: [0, 0] for g in GROUPS}
    cpu = 0.0
    n = 0
    try:
        for f in islice(src.frames(), frames):
            t0 = time.process_time()
            labels = lab.label(f)
            cpu += time.process_time() - t0
            n += 1
            if f.index % every:
                continue
            for g, boxes in reference(det, f).items():
                totals[g][0] += found(labels.labels, labels.classes, boxes, g)
                totals[g][1] += len(boxes)
    finally:
        src.close()
        lab.close()
    return {"clip": Path(clip).name, "set": overrides, "live_share": live_share, "frames": n,
            "recall": {g: (round(hit / total, 3) if total else None)
                       for g, (hit, total) in totals.items()},
            "reference_objects": {g: total for g, (_, total) in totals.items()},
            "labeler_cpu_ms_per_frame": round(cpu / max(n, 1) * 1e3, 2),
            "budget": lab.budget_stats(),
            "runs": {name: s["runs"] for name, s in lab.stats().items()},
            "age_frames": {name: s["staleness_frames"] for name, s in lab.stats().items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("clips", nargs="+")
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--every", type=int, default=3, help="evaluate every k-th frame")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE configuration")
    ap.add_argument("--live-share", type=float, default=None)
    ap.add_argument("--detector", default=str(FIXTURE))
    args = ap.parse_args(argv)
    det = YoloxDetector(args.detector)
    for clip in args.clips:
        print(json.dumps(run(clip, args.frames, args.every, args.set, args.live_share, det)),
              flush=True)


if __name__ == "__main__":
    main()
