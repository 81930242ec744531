"""How well NanoDet-g's labels agree with an independent detector (YOLOX-nano) on outdoor clips.

    python -m edge_semvc.bench.agreement [CLIP...] [--sizes WxH ...] [--every 5] [--frames N]
                                         [--config FILE] [--json FILE]

On every `--every`-th of the first `--frames` frames of each clip (default: the outdoor shared
clips), NanoDet-g alone at each input size (the labeler's own adapter) and the labeler (of
`--config`, else the default; cpu_budget 0: every model on every scored frame) are scored
against YOLOX-nano (0.35, bench/detector.py) for person and vehicle (car, bus, truck,
motorcycle, bicycle), per clip and pooled: macroblock recall R / precision P of the labelled MBs
against the MBs YOLOX's boxes cover (both rasterised by `boxes_to_mb`); for NanoDet also box R /
P (greedy, IoU >= 0.5, class-agnostic in the group) and its mean ONNX Runtime inference and
whole-adapter ms (labeler.threads, after a warm-up; wall clock, noisy on shared cores). The
labeler's person MBs are those labelled person or face. Acceptance: its person MB R >= 0.8."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import replace
from fractions import Fraction
from functools import reduce
from itertools import islice
from pathlib import Path

import numpy as np

from ..config import Config, load_config
from ..frame import Frame
from ..labeler.decoders import box_iou, boxes_to_mb
from ..sources import open_source
from ..tools.models import ready_labeler
from .detector import GROUPS, YoloxDetector

SHARED = Path(__file__).resolve().parents[2].parent / "shared"
VIDEO_DIR, YOLOX = SHARED / "data" / "video", SHARED / "models" / "yolox_nano.onnx"
OUTDOOR = ["street_pedestrians_vtest_768x576.avi", "road_traffic_signs_1080p.h264",
           "overhead_parking_cars_768x432.mp4", "bikes_street_scene_cuts_640x272.mp4",
           "drone_karma_coast_854x480.mp4"]
SIZES = ["416x416", "448x256", "512x288", "576x320"]


class Tally:
    """Pooled counts of one (clip, model) for the two groups, and its times."""
    KEYS = ("mb_hit", "mb_ref", "mb_got", "box_hit", "box_ref", "box_got")

    def __init__(self):
        self.c = {g: dict.fromkeys(self.KEYS, 0) for g in GROUPS}
        self.ms, self.total_ms, self.frames = [], [], 0

    def add(self, g: str, got: np.ndarray, ref: np.ndarray, got_boxes=None, ref_boxes=None):
        new = [(got & ref).sum(), ref.sum(), got.sum()]
        if got_boxes is not None:
            new += [match(got_boxes, ref_boxes), len(ref_boxes), len(got_boxes)]
        for k, v in zip(self.KEYS, new):
            self.c[g][k] += int(v)

    def row(self) -> dict:
        out = {"frames": self.frames}
        for g, c in self.c.items():  # mb_recall = mb_hit / mb_ref, mb_precision = / mb_got, ...
            out[g] = {f"{u}_{m}": round(c[f"{u}_hit"] / c[f"{u}_{d}"], 3) if c[f"{u}_{d}"]
                      else None for u in ("mb", "box")
                      for m, d in (("recall", "ref"), ("precision", "got"))} | c
        if self.ms:
            out["infer_ms"] = round(float(np.mean(self.ms)), 1)
            out["adapter_ms"] = round(float(np.mean(self.total_ms)), 1)
        return out

    def merge(self, other: "Tally") -> "Tally":
        for g, c in self.c.items():
            for k in c:
                c[k] += other.c[g][k]
        self.ms, self.total_ms = self.ms + other.ms, self.total_ms + other.total_ms
        self.frames += other.frames
        return self


def _size(text: str) -> str:
    if not re.fullmatch(r"\d+x\d+", text) or any(int(v) % 32 for v in text.split("x")):
        raise argparse.ArgumentTypeError(f"{text!r} is not WxH in multiples of 32")
    return text


def match(got: np.ndarray, ref: np.ndarray, iou: float = 0.5) -> int:
    """Greedy one-to-one matches of `got` (highest score first) to `ref` at IoU >= iou."""
    if not len(got) or not len(ref):
        return 0
    m = box_iou(got[np.argsort(-got[:, 4])], ref)
    free = np.ones(len(ref), bool)
    for row in m:
        j = int(np.where(free, row, -1.0).argmax())
        if free[j] and row[j] >= iou:
            free[j] = False
    return int((~free).sum())


def nanodet(size: str, cfg: Config) -> tuple:
    """NanoDet-g's adapter at `size` (WxH; other fields from cfg's nanodet_g entry, if a mapping),
    with its inference timed and its boxes kept."""
    w, h = (int(v) for v in size.split("x"))
    entry = next((dict(m) for m in cfg.labeler.models if isinstance(m, dict)
                  and m.get("name") == "nanodet_g"), {"name": "nanodet_g"})
    entry["input"] = {**entry.get("input", {}), "size": [w, h]}
    lab = replace(cfg.labeler, cpu_budget=0, models=[entry])
    adapter = ready_labeler(lab, cfg.cache_dir(), log=lambda *_: None).models[0][1]
    seen, run, planes = {"ms": 0.0, "boxes": None}, adapter.rt.run, adapter.planes

    def timed_run(x):
        t, out = time.perf_counter(), run(x)
        seen["ms"] = (time.perf_counter() - t) * 1e3
        return out

    def kept_planes(boxes, g, frame):  # the boxes planes() rasterises: frame fractions
        b = g.boxes_to_frame(boxes)  # x1, y1, x2, y2, score, class
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        seen["boxes"] = b[area <= adapter.opts.get("max_box_area", 1.0)]
        return planes(boxes, g, frame)

    adapter.rt.run, adapter.planes = timed_run, kept_planes
    adapter(Frame.from_rgb(np.full((h, w, 3), 128, np.uint8), None, Fraction(1, 25), 0))  # warm
    return adapter, seen


def reference(det: YoloxDetector, frame) -> tuple[dict, dict]:
    """YOLOX boxes per group (frame fractions + score) and the macroblocks they cover."""
    boxes, masks = {}, {}
    for g, b in det.detect(frame).items():
        b = b / np.array([frame.width, frame.height] * 2 + [1], np.float32)
        boxes[g], masks[g] = b, boxes_to_mb(b, frame.width, frame.height) > 0
    return boxes, masks


def labeler_masks(lm) -> dict[str, np.ndarray]:
    """The default labeler's person (person or face) and vehicle macroblocks."""
    ids = {c: i for i, c in enumerate(lm.classes)}
    return {"person": np.isin(lm.labels, [ids.get("person", -1), ids.get("face", -1)]),
            "vehicle": lm.labels == ids.get("vehicle", -1)}


def evaluate(clip: Path, sizes: list[str], every: int, frames: int, det, adapters, labeler,
             log=print) -> dict:
    nd, lab, n_ref = {s: Tally() for s in sizes}, Tally(), dict.fromkeys(GROUPS, 0)
    src = open_source(str(clip))
    try:
        for i, frame in enumerate(islice(src.frames(), frames or None)):
            if i % every:
                continue
            ref, masks = reference(det, frame)
            n_ref = {g: n + len(ref[g]) for g, n in n_ref.items()}
            for s in sizes:
                (adapter, seen), tally = adapters[s], nd[s]
                t = time.perf_counter()
                planes, boxes = adapter(frame), seen["boxes"]
                tally.total_ms.append((time.perf_counter() - t) * 1e3)
                tally.ms.append(seen["ms"])
                tally.frames += 1
                for g, ids in GROUPS.items():
                    got = planes[adapter.classes.index(g)] > adapter.threshold
                    tally.add(g, got, masks[g], boxes[np.isin(boxes[:, 5], ids), :5], ref[g])
            if labeler is not None:
                lab.frames += 1
                for g, got in labeler_masks(labeler.label(frame)).items():
                    lab.add(g, got, masks[g])
    finally:
        src.close()
    log(f"{clip.name}: YOLOX boxes {n_ref}")
    return {"clip": clip.name, "yolox_boxes": n_ref, "nanodet": nd, "labeler": lab}


def fmt(*values) -> str:
    return " | ".join("–" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)
                      for v in values)  # a float is a ratio; counts and ms are ints


def tables(results: list[dict], sizes: list[str], with_labeler: bool = True) -> str:
    lines = ["NanoDet-g alone vs YOLOX-nano (0.35): macroblock and box (IoU 0.5) recall R / "
             "precision P; ms: mean ONNX Runtime inference and whole adapter, labeler.threads "
             f"(wall clock on {os.cpu_count()} cores, noisy when they are shared)", "",
             "| clip | size | frames | person MB R | P | box R | P | vehicle MB R | P | box R | P "
             "| infer ms | adapter ms |", "|---" * 13 + "|"]
    pooled = {s: reduce(Tally.merge, (r["nanodet"][s] for r in results), Tally()) for s in sizes}
    rows = [(r["clip"], r["nanodet"]) for r in results] + [("**all (pooled)**", pooled)]
    for name, per in rows:
        for s in sizes:
            row = per[s].row()
            vals = [row[g][k] for g in GROUPS for k in ("mb_recall", "mb_precision",
                                                        "box_recall", "box_precision")]
            ms = [round(row[k]) if k in row else None for k in ("infer_ms", "adapter_ms")]
            lines.append(f"| {name} | {s} | {fmt(row['frames'], *vals, *ms)} |")
    if not with_labeler:
        return "\n".join(lines)
    lines += ["", "Labeler (cpu_budget 0; person = person or face MBs) vs YOLOX-nano; "
              "acceptance: person MB recall >= 0.8", "",
              "| clip | frames | YOLOX person boxes | person MB R | P | vehicle MB R | P |",
              "|---" * 7 + "|"]
    entries = [(r["clip"], r["labeler"], r["yolox_boxes"]["person"]) for r in results]
    entries.append(("**all (pooled)**", reduce(Tally.merge, (r["labeler"] for r in results),
                                               Tally()), sum(e[2] for e in entries)))
    for name, t, nref in entries:
        row = t.row()
        vals = [row[g][k] for g in GROUPS for k in ("mb_recall", "mb_precision")]
        lines.append(f"| {name} | {fmt(row['frames'], nref, *vals)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.agreement",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("clips", nargs="*", type=Path,
                   help="clips (default: the outdoor clips in ../shared/data/video)")
    p.add_argument("--sizes", nargs="+", default=SIZES, type=_size,
                   help="NanoDet input sizes, WxH, multiples of 32 (clips go before this)")
    p.add_argument("--every", type=lambda v: max(1, int(v)), default=5,
                   help="score every k-th frame")
    p.add_argument("--frames", type=int, default=0, help="read at most N frames per clip")
    p.add_argument("--yolox", type=Path, default=YOLOX, help="the reference YOLOX-nano .onnx")
    p.add_argument("--config", help="YAML configuration whose labeler to score (default: the "
                   "default one; its nanodet_g entry's fields also apply to NanoDet alone)")
    p.add_argument("--no-labeler", action="store_true", help="score NanoDet alone only")
    p.add_argument("--json", type=Path, help="write the figures here")
    a = p.parse_args(argv)
    clips = a.clips or [VIDEO_DIR / c for c in OUTDOOR]
    for path in (path for path in [a.yolox, *clips] if not path.exists()):
        p.error(f"{path} is missing")
    log = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    cfg = load_config(a.config)
    det = YoloxDetector(a.yolox, 0.35, threads=cfg.labeler.threads or 1)
    adapters = {s: nanodet(s, cfg) for s in a.sizes}
    results, cfg.labeler.cpu_budget = [], 0
    for clip in clips:  # a fresh labeler per clip: nothing carried across clips
        labeler = None if a.no_labeler else ready_labeler(cfg.labeler, cfg.cache_dir(), log=log)
        results.append(evaluate(clip, a.sizes, a.every, a.frames, det, adapters, labeler, log))
        getattr(labeler, "close", lambda: None)()
    print(tables(results, a.sizes, not a.no_labeler))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        clips = [{"clip": r["clip"], "yolox_boxes": r["yolox_boxes"],
                  "nanodet": {s: t.row() for s, t in r["nanodet"].items()},
                  "labeler": None if a.no_labeler else r["labeler"].row()} for r in results]
        a.json.write_text(json.dumps({"every": a.every, "frames": a.frames, "config": a.config,
                                      "reference": "yolox_nano@0.35", "clips": clips}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
