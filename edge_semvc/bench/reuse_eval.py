"""How much label agreement temporal reuse loses, and how much time it saves.

    python -m edge_semvc.bench.reuse_eval [CLIP...] [--config FILE] [--k 2 8 30] [--frames N]
                                          [--delay D] [--json FILE]

For each clip (default: every clip in ../shared/data/video except the distorted twin) the
labeler (`--config`'s, else the default one) runs every model on every frame: that is the
reference. For each k, each model's planes of every k-th frame are carried to the frames after
it by `labeler/reuse.py`'s PlaneCarrier exactly as the Labeler does (box planes as objects,
masks by the motion field), either unchanged ("hold") or by motion ("mc"), then gated and fused;
"mc+cut" is mc that also runs the models on a scene cut (analysis/scene.py; those runs are
counted). With `--delay D` a run's planes arrive D frames after the frame they were computed
on (`mark`, then `fill`: a model running beside the pipeline); until then the previous ones are
carried, and every frame from the first arrival on is scored.

On the carried frames the labelled (any class) macroblocks are compared with the reference's,
pooled over the frames: IoU (also per class), recall (the share of the reference's labelled
macroblocks the carried labels cover: what the ROI keeps) and extra (carried labels outside
the reference's, in % of all macroblocks: what the background pays).

Times are per frame on this machine, one thread: the labeler (all models, gating and fusion),
the carrier on frames where the models ran ("keyframe") and on the others ("carry");
"amortised" is the cost per frame when the models run every k-th frame.
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

from ..analysis.scene import SceneAnalyser, SceneConfig
from ..config import Config, load_config
from ..labeler import Labeler, SsdAnchorAdapter, _BoxPlanes, fuse, gate
from ..labeler.reuse import PlaneCarrier
from ..sources import RawVideoOptions, open_source
from ..tools.models import ready_labeler

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


def fused(labeler, planes: list[np.ndarray], grid: tuple[int, int]):
    """The Labeler's gating and fusion of per-model planes into a LabelMap."""
    return fuse([(m.classes, gate(labeler.models, planes, k), m.threshold)
                 for k, (_, m) in enumerate(labeler.models)],
                labeler.cfg.priority, labeler.model_names, grid)


class _Track:
    """One (k, mode) schedule: a carrier per model slot and the agreement it reaches."""

    def __init__(self, k: int, mode: str, labeler, delay: int = 0):
        self.k, self.mode, self.delay, self.labeler = k, mode, delay, labeler
        self.carrier = PlaneCarrier("hold" if mode == "hold" else "motion")
        # The Labeler's choice: box planes (detectors) are hard-edged objects.
        self.interp = ["nearest" if isinstance(m, (SsdAnchorAdapter, _BoxPlanes)) else None
                       for _, m in labeler.models]
        self.classes = list(labeler.classes)
        names = ["any", *self.classes]
        self.inter = dict.fromkeys(names, 0)
        self.union = dict.fromkeys(names, 0)
        self.ref_n = self.hit_n = self.extra_n = self.cells = 0
        self.carry_s: list[float] = []
        self.key_s: list[float] = []
        self.extra_runs = 0
        self.carried = 0
        self.pending: list = []  # (arrival frame, run frame, planes) of runs still computing
        self.live: list = [None] * len(labeler.models)  # the run each model's planes are from

    def _run(self, index: int, planes: list[np.ndarray]) -> None:
        c = self.carrier
        for m, p in enumerate(planes):
            if self.delay:  # slots (model, frame) as the Labeler's
                c.mark((m, index), self.interp[m])
            else:
                c.set(m, p, self.interp[m])
        if self.delay:
            self.pending.append((index + self.delay, index, planes))

    def _arrivals(self, index: int) -> None:
        c = self.carrier
        while self.pending and self.pending[0][0] <= index:
            _, n, planes = self.pending.pop(0)
            for m, p in enumerate(planes):
                c.fill((m, n), p)
                if self.live[m] is not None:
                    c.drop((m, self.live[m]))
                self.live[m] = n

    def step(self, index: int, sums: np.ndarray, planes: list[np.ndarray], ref,
             cut: bool) -> None:
        c = self.carrier
        t0 = time.perf_counter()
        c.step(sums)
        run = index % self.k == 0
        if not run and self.mode == "mc+cut" and cut:
            run = True
            self.extra_runs += 1
        if run:
            self._run(index, planes)
        self._arrivals(index)
        if run and not self.delay:
            self.key_s.append(time.perf_counter() - t0)
            return
        if self.live[0] is None and self.delay:
            return  # nothing has arrived yet
        slots = enumerate(self.live) if self.delay else range(len(planes))
        carried = [c.get(s) for s in slots]
        self.carry_s.append(time.perf_counter() - t0)
        out = fused(self.labeler, carried, ref.shape)
        self.carried += 1
        a, b = out.labels > 0, ref.labels > 0
        self.ref_n += int(np.count_nonzero(b))
        self.hit_n += int(np.count_nonzero(a & b))
        self.extra_n += int(np.count_nonzero(a & ~b))
        self.cells += a.size
        for ci, name in enumerate(["any", *self.classes]):
            if ci:
                a, b = out.labels == ci, ref.labels == ci
            self.inter[name] += int(np.count_nonzero(a & b))
            self.union[name] += int(np.count_nonzero(a | b))

    def summary(self, labeler_ms: float, frames: int) -> dict:
        carry_ms = 1e3 * float(np.mean(self.carry_s)) if self.carry_s else 0.0
        key_ms = 1e3 * float(np.mean(self.key_s)) if self.key_s else 0.0
        runs = len(self.key_s) + self.extra_runs if not self.delay else \
            -(-frames // self.k) + self.extra_runs
        amortised = (runs * (labeler_ms + key_ms) + len(self.carry_s) * carry_ms) / frames
        return {
            "k": self.k, "mode": self.mode, "delay": self.delay,
            "carried_frames": self.carried, "labeler_runs": runs,
            "extra_runs_on_cuts": self.extra_runs,
            "iou": {c: (self.inter[c] / self.union[c] if self.union[c] else None)
                    for c in self.inter},
            "recall": self.hit_n / self.ref_n if self.ref_n else None,
            "extra": self.extra_n / self.cells if self.cells else None,
            "intersection": dict(self.inter), "union": dict(self.union),
            "reference_mbs": self.ref_n, "kept_mbs": self.hit_n, "extra_mbs": self.extra_n,
            "mbs": self.cells,
            "carry_ms": carry_ms, "keyframe_ms": key_ms,
            "amortised_ms": amortised,
            "saving": 1.0 - amortised / labeler_ms if labeler_ms else None,
        }


def make_labeler(config: str | None = None) -> Labeler:
    cfg = load_config(config, ["labeler.interval=1"]) if config else Config()
    cfg.labeler.interval = 1
    return ready_labeler(cfg.labeler, cfg.cache_dir(), log=lambda *_: None)


def evaluate(path, ks: list[int], max_frames: int = 0, labeler=None, delay: int = 0,
             log=print) -> dict:
    if labeler is None:
        labeler = make_labeler()
    tracks = [_Track(k, m, labeler, delay) for k in ks for m in MODES
              if not (delay and m == "mc+cut")]
    src = _open(path)
    scene = SceneAnalyser(SceneConfig())
    lab_s, coverage, n = [], [], 0
    size = f"{src.width}x{src.height}"
    try:
        for frame in src.frames():
            if max_frames and n >= max_frames:
                break
            t0 = time.perf_counter()
            planes = [m(frame) for _, m in labeler.models]
            ref = fused(labeler, planes, (frame.mb_h, frame.mb_w))
            lab_s.append(time.perf_counter() - t0)
            coverage.append(1.0 - ref.coverage()["background"])
            cut = scene.analyse(frame).cut  # the run's decision (analysis/scene.py)
            for t in tracks:
                t.step(n, frame.luma_sums, planes, ref, cut)
            n += 1
    finally:
        src.close()
    labeler_ms = 1e3 * float(np.median(lab_s)) if lab_s else 0.0
    name = str(path) if "://" in str(path) else Path(path).name
    out = {"clip": name, "size": size, "frames": n, "labeler_ms": labeler_ms,
           "labelled_fraction": float(np.mean(coverage)) if coverage else 0.0,
           "results": [t.summary(labeler_ms, n) for t in tracks]}
    log(f"{out['clip']}: {n} frames, labeler {labeler_ms:.2f} ms/frame, "
        f"{100 * out['labelled_fraction']:.1f}% labelled")
    return out


def _fmt(v, pct: bool = False) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def _pooled(xs: list[dict]) -> dict:
    """IoU, recall and extra pooled over several results (of one k and mode)."""
    union = sum(x["union"]["any"] for x in xs)
    ref = sum(x["reference_mbs"] for x in xs)
    cells = sum(x["mbs"] for x in xs)
    return {"iou": sum(x["intersection"]["any"] for x in xs) / union if union else None,
            "recall": sum(x["kept_mbs"] for x in xs) / ref if ref else None,
            "extra": sum(x["extra_mbs"] for x in xs) / cells if cells else None}


def markdown(results: list[dict], ks: list[int]) -> str:
    modes = [m for m in MODES if any(x["mode"] == m for r in results for x in r["results"])]
    lines = ["Labelled macroblocks (any class) on the carried frames: IoU / recall % / extra % "
             "of all macroblocks, against the labeler on every frame:", "",
             "| clip | labelled | mode | " + " | ".join(f"k={k}" for k in ks) + " |",
             "|---|---|---|" + "---|" * len(ks)]
    rows = [(r["clip"], r["size"], f"{100 * r['labelled_fraction']:.1f}%", r["results"])
            for r in results]
    if len(results) > 1:
        rows.append(("all (pooled)", "", "", None))
    for clip, size, labelled, res in rows:
        for m in modes:
            cells = []
            for k in ks:
                xs = [x for r in results for x in r["results"] if x["k"] == k and x["mode"] == m
                      and (res is None or x in res)]
                p = _pooled(xs)
                cell = f"{_fmt(p['iou'])} / {_fmt(p['recall'], True)} / {_fmt(p['extra'], True)}"
                runs = sum(x["extra_runs_on_cuts"] for x in xs)
                cells.append(cell + (f" (+{runs} runs)" if runs else ""))
            lines.append(f"| {clip} {size} | {labelled} | {m} | " + " | ".join(cells) + " |")
            clip = size = labelled = ""
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
    lines += ["", "Time per frame (ms; amortised = models every k-th frame + carrier between; "
              "saving against the models on every frame):", "",
              "| clip | labeler | carry (mc) | keyframe (mc) | " + " | ".join(
                  f"k={k} amortised mc (saving)" for k in ks) + " |",
              "|---|---|---|---|" + "---|" * len(ks)]
    for r in results:
        mc = [x for x in r["results"] if x["mode"] == "mc"]
        carry = float(np.mean([x["carry_ms"] for x in mc]))
        key = float(np.mean([x["keyframe_ms"] for x in mc]))
        cells = []
        for k in ks:
            x = next(x for x in mc if x["k"] == k)
            cells.append(f"{x['amortised_ms']:.2f} ({100 * x['saving']:.0f}%)")
        lines.append(f"| {r['clip']} | {r['labeler_ms']:.2f} | {carry:.3f} | {key:.3f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.reuse_eval",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("clips", nargs="*", help="clips or URIs (default: the shared clips)")
    p.add_argument("--config", help="YAML configuration whose labeler to use (e.g. "
                   "examples/yolox-fixture.yaml for a detector); default: the default labeler")
    p.add_argument("--k", nargs="+", type=int, default=[2, 4, 8, 16, 30],
                   help="labeler intervals")
    p.add_argument("--frames", type=int, default=0, help="at most N frames per clip")
    p.add_argument("--delay", type=int, default=0,
                   help="a run's planes arrive D frames after their frame (default 0)")
    p.add_argument("--json", type=Path, default=Path("out/reuse_eval.json"),
                   help="where to write the results (default out/reuse_eval.json)")
    args = p.parse_args(argv)
    clips = args.clips or default_clips()
    if not clips:
        print(f"no clips given and none in {VIDEO_DIR}", file=sys.stderr)
        return 2
    if any(k < 2 for k in args.k):
        p.error("--k values must be >= 2")
    if args.delay < 0:
        p.error("--delay must be >= 0")
    labeler = make_labeler(args.config)
    results = [evaluate(c, args.k, args.frames, labeler, args.delay) for c in clips]
    table = markdown(results, args.k)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"k": args.k, "config": args.config, "delay": args.delay,
                                     "clips": results}, indent=1))
    print(f"\nwritten {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
