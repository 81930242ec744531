"""How much label agreement temporal reuse loses, and how much time it saves.

    python -m edge_semvc.bench.reuse_eval [CLIP...] [--k 2 3 5] [--frames N] [--json FILE]

For each clip (default: every clip in ../shared/data/video except the distorted twin) the
default labeler runs on every frame: that is the reference. For each k the labeler's map of
every k-th frame is carried to the k-1 frames after it, either unchanged ("hold") or by motion
compensation ("mc", `labeler/reuse.py`); "mc+cut" is mc that also runs the models when the
carrier reports a scene cut (those runs are counted). On the carried frames the labelled
(non-background) macroblock set is compared with the reference's: IoU per class and overall
(any label vs background), pooled over the carried frames (intersections summed over unions
summed: a per-frame mean, also in the JSON as `iou_mean`, is dominated by frames where a class
covers a handful of macroblocks).

Times are per frame on this machine, one thread: the labeler (both models, preprocessing and
fusion), the carrier's keyframe step and its carry step; "amortised" is the labeler's cost per
frame when it runs every k-th frame and the carrier fills in between.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..config import Config, LabelerConfig
from ..labeler import Labeler
from ..labeler.reuse import LabelCarrier
from ..sources import RawVideoOptions, open_source

VIDEO_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "video"
MODES = ("hold", "mc", "mc+cut")


def default_clips() -> list[Path]:
    return sorted(p for p in VIDEO_DIR.glob("*") if p.suffix != ".md"
                  and "distorted" not in p.name)


def _open(path):
    if "://" in str(path):  # demo://astronaut and other URIs
        return open_source(str(path))
    path = Path(path)
    raw = None
    m = re.search(r"(\d+)x(\d+)_(\d+)fps", path.name)
    if path.suffix == ".yuv":
        if not m:
            raise SystemExit(f"{path}: raw .yuv needs WxH_FPSfps in its name")
        raw = RawVideoOptions(int(m[1]), int(m[2]), Fraction(int(m[3])))
    return open_source(str(path), raw)


def _iou(a: np.ndarray, b: np.ndarray) -> float | None:
    union = np.count_nonzero(a | b)
    return None if union == 0 else np.count_nonzero(a & b) / union


def relabel_for(labeler, threshold: float):
    """The labeler's own fusion rule as a LabelCarrier `relabel` (probs, key map) -> LabelMap:
    the carried class planes split back into each model's classes with its threshold, fused
    with `labeler.priority`. None (LabelMap.from_probs) for a labeler without `fuse`."""
    try:
        from ..labeler import fuse
    except ImportError:
        return None
    models = [(list(m.classes), getattr(m, "threshold", threshold)) for _, m in labeler.models]
    priority = list(getattr(labeler.cfg, "priority", []))

    def relabel(probs, key):
        index = {c: i for i, c in enumerate(key.classes[1:])}
        parts = [(cls, probs[[index[c] for c in cls]], thr) for cls, thr in models]
        return fuse(parts, priority, key.models, probs.shape[1:])

    return relabel


class _Track:
    """One (k, mode) schedule: its carrier and the agreement it reaches."""

    def __init__(self, k: int, mode: str, threshold: float, classes: list[str], relabel=None):
        self.k, self.mode = k, mode
        self.carrier = LabelCarrier(threshold, "hold" if mode == "hold" else "motion",
                                    relabel=relabel)
        self.classes = classes
        self.ious: dict[str, list[float]] = {c: [] for c in ["any", *classes]}
        self.inter = {c: 0 for c in self.ious}
        self.union = {c: 0 for c in self.ious}
        self.carry_s: list[float] = []
        self.key_s: list[float] = []
        self.extra_runs = 0
        self.carried = 0

    def step(self, index: int, y: np.ndarray, ref) -> None:
        if index % self.k == 0:
            t0 = time.perf_counter()
            self.carrier.keyframe(ref, y)
            self.key_s.append(time.perf_counter() - t0)
            return
        t0 = time.perf_counter()
        out = self.carrier.carry(y)
        self.carry_s.append(time.perf_counter() - t0)
        if self.mode == "mc+cut" and self.carrier.scene_cut:
            self.extra_runs += 1
            self.carrier.replace(ref)  # the labeler runs here: its map is the reference
            out = ref
        self.carried += 1
        for ci, c in enumerate(["any", *self.classes]):
            a = out.labels > 0 if c == "any" else out.labels == ci
            b = ref.labels > 0 if c == "any" else ref.labels == ci
            v = _iou(a, b)
            if v is not None:
                self.ious[c].append(v)
                self.inter[c] += int(np.count_nonzero(a & b))
                self.union[c] += int(np.count_nonzero(a | b))

    def summary(self, labeler_ms: float, frames: int) -> dict:
        carry_ms = 1e3 * float(np.mean(self.carry_s)) if self.carry_s else 0.0
        key_ms = 1e3 * float(np.mean(self.key_s)) if self.key_s else 0.0
        runs = len(self.key_s) + self.extra_runs
        amortised = (runs * (labeler_ms + key_ms) + len(self.carry_s) * carry_ms) / frames
        return {
            "k": self.k, "mode": self.mode, "carried_frames": self.carried,
            "labeler_runs": runs, "extra_runs_on_cuts": self.extra_runs,
            "iou": {c: (self.inter[c] / self.union[c] if self.union[c] else None)
                    for c in self.ious},
            "iou_mean": {c: (float(np.mean(v)) if v else None) for c, v in self.ious.items()},
            "iou_frames": {c: len(v) for c, v in self.ious.items()},
            "intersection": dict(self.inter), "union": dict(self.union),
            "carry_ms": carry_ms, "keyframe_ms": key_ms,
            "amortised_ms": amortised,
            "saving": 1.0 - amortised / labeler_ms if labeler_ms else None,
        }


def evaluate(path, ks: list[int], max_frames: int = 0, labeler=None,
             log=print) -> dict:
    cfg = Config()
    threshold = cfg.labeler.threshold
    if labeler is None:
        labeler = Labeler(LabelerConfig(interval=1), cfg.cache_dir(), log=lambda *_: None)
    relabel = relabel_for(labeler, threshold)
    tracks = [_Track(k, m, threshold, labeler.classes, relabel) for k in ks for m in MODES]
    src = _open(path)
    lab_s, coverage, n = [], [], 0
    size = f"{src.width}x{src.height}"
    try:
        for frame in src.frames():
            if max_frames and n >= max_frames:
                break
            t0 = time.perf_counter()
            ref = labeler.label(frame)
            lab_s.append(time.perf_counter() - t0)
            coverage.append(1.0 - ref.coverage()["background"])
            for t in tracks:
                t.step(frame.index, frame.y, ref)
            n += 1
    finally:
        src.close()
    labeler_ms = 1e3 * float(np.median(lab_s))
    name = str(path) if "://" in str(path) else Path(path).name
    out = {"clip": name, "size": size, "frames": n, "labeler_ms": labeler_ms,
           "labelled_fraction": float(np.mean(coverage)) if coverage else 0.0,
           "results": [t.summary(labeler_ms, n) for t in tracks]}
    log(f"{out['clip']}: {n} frames, labeler {labeler_ms:.2f} ms/frame, "
        f"{100 * out['labelled_fraction']:.1f}% labelled")
    return out


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def markdown(results: list[dict], ks: list[int]) -> str:
    lines = ["| clip | size | frames | labelled | " + " | ".join(
        f"k={k} hold / mc / mc+cut" for k in ks) + " |",
        "|---|---|---|---|" + "---|" * len(ks)]
    for r in results:
        cells = []
        for k in ks:
            by = {x["mode"]: x for x in r["results"] if x["k"] == k}
            cell = " / ".join(_fmt(by[m]["iou"]["any"]) for m in MODES)
            if by["mc+cut"]["extra_runs_on_cuts"]:
                cell += f" (+{by['mc+cut']['extra_runs_on_cuts']} runs)"
            cells.append(cell)
        lines.append(f"| {r['clip']} | {r['size']} | {r['frames']} | "
                     f"{100 * r['labelled_fraction']:.1f}% | " + " | ".join(cells) + " |")
    lines += ["", "Per class (IoU pooled over all clips; hold / mc):", "",
              "| class | " + " | ".join(f"k={k}" for k in ks) + " |",
              "|---|" + "---|" * len(ks)]
    classes = [c for c in results[0]["results"][0]["iou"]] if results else []
    for c in classes:
        cells = []
        for k in ks:
            vals = {}
            for m in ("hold", "mc"):
                xs = [x for r in results for x in r["results"] if x["k"] == k and x["mode"] == m]
                union = sum(x["union"][c] for x in xs)
                vals[m] = sum(x["intersection"][c] for x in xs) / union if union else None
            cells.append(f"{_fmt(vals['hold'])} / {_fmt(vals['mc'])}")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    lines += ["", "Time per frame (ms; amortised = labeler every k-th frame + carrier between; "
              "saving against the labeler on every frame):", "",
              "| clip | labeler | carry (mc) | keyframe (mc) | " + " | ".join(
                  f"k={k} amortised hold / mc (saving mc)" for k in ks) + " |",
              "|---|---|---|---|" + "---|" * len(ks)]
    for r in results:
        mc = [x for x in r["results"] if x["mode"] == "mc"]
        carry = float(np.mean([x["carry_ms"] for x in mc]))
        key = float(np.mean([x["keyframe_ms"] for x in mc]))
        cells = []
        for k in ks:
            by = {x["mode"]: x for x in r["results"] if x["k"] == k}
            cells.append(f"{by['hold']['amortised_ms']:.2f} / {by['mc']['amortised_ms']:.2f} "
                         f"({100 * by['mc']['saving']:.0f}%)")
        lines.append(f"| {r['clip']} | {r['labeler_ms']:.2f} | {carry:.3f} | {key:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.reuse_eval",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("clips", nargs="*", help="clips or URIs (default: the shared clips)")
    p.add_argument("--k", nargs="+", type=int, default=[2, 3, 5], help="labeler intervals")
    p.add_argument("--frames", type=int, default=0, help="at most N frames per clip")
    p.add_argument("--json", type=Path, default=Path("out/reuse_eval.json"),
                   help="where to write the results (default out/reuse_eval.json)")
    args = p.parse_args(argv)
    clips = args.clips or default_clips()
    if not clips:
        print(f"no clips given and none in {VIDEO_DIR}", file=sys.stderr)
        return 2
    if any(k < 2 for k in args.k):
        p.error("--k values must be >= 2")
    cfg = Config()
    labeler = Labeler(LabelerConfig(interval=1), cfg.cache_dir(), log=lambda *_: None)
    results = [evaluate(c, args.k, args.frames, labeler) for c in clips]
    table = markdown(results, args.k)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"k": args.k, "clips": results}, indent=1))
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
