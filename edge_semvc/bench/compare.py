"""Semantic map versus plain x264 on one clip: speed ratio and ROI/background quality.

Both runs use the same decode, encoder backend and settings; the baseline skips the labeler,
analysis and map (`semantic=False`). The region of interest of every frame is the set of
macroblocks the semantic run labelled (any class); PSNR is Y-PSNR per frame, averaged.

    python -m edge_semvc.bench.compare CLIP... --rc cbr --bitrate 600k [--set key=value]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import av
import numpy as np

from ..config import Config, load_config
from ..pipeline import run_encode
from ..sources import RawVideoOptions, open_source
from .metrics import mb_mask_to_pixels, psnr


def decoded_luma(path: str) -> list[np.ndarray]:
    """Y planes as coded (format="gray" would rescale limited-range luma to full range)."""
    with av.open(path) as c:
        return [f.to_ndarray(format="yuv420p")[: f.height] for f in c.decode(video=0)]


def compare(clip: str, cfg: Config, workdir: str, raw: RawVideoOptions | None = None,
            repeats: int = 1, max_frames: int = 0) -> dict:
    """Encode `clip` both ways; returns sizes, fps, and whole/ROI/background Y-PSNR of each."""
    refs: list[np.ndarray] = []
    rois: list[np.ndarray] = []

    def keep(frame, labels, qp):
        refs.append(frame.y.copy())
        rois.append(mb_mask_to_pixels(labels.labels > 0, frame.width, frame.height))

    runs: dict[str, dict] = {}
    for rep in range(repeats):  # alternate the two so machine noise hits both alike
        for name, semantic in (("baseline", False), ("semantic", True)):
            out = str(Path(workdir) / f"{Path(clip).stem}.{name}.mp4")
            src = open_source(clip, raw)
            try:
                stats = run_encode(src, out, cfg, semantic=semantic, max_frames=max_frames,
                                   on_frame=keep if (semantic and rep == 0) else None)
            finally:
                src.close()
            best = runs.get(name)
            if best is None or stats["fps"] > best["fps"]:
                runs[name] = {**stats, "path": out}
    result = {"clip": Path(clip).name, "frames": len(refs)}
    for name, stats in runs.items():
        dist = decoded_luma(stats["path"])
        if len(dist) != len(refs):
            raise RuntimeError(f"{name} output has {len(dist)} frames, input {len(refs)}")
        whole = [psnr(r, d) for r, d in zip(refs, dist)]
        roi = [psnr(r, d, m) for r, d, m in zip(refs, dist, rois) if m.any()]
        bg = [psnr(r, d, ~m) for r, d, m in zip(refs, dist, rois) if (~m).any()]
        result[name] = {
            "bitrate_kbps": stats["bitrate_kbps"], "bytes": stats["bytes"], "fps": stats["fps"],
            "psnr": _mean(whole), "psnr_roi": _mean(roi), "psnr_background": _mean(bg),
            "stages": {k: v["mean_ms"] for k, v in stats["stages"].items()},
        }
    result["roi_fraction"] = float(np.mean([m.mean() for m in rois])) if rois else 0.0
    result["fps_ratio"] = result["semantic"]["fps"] / result["baseline"]["fps"]
    result["overhead_pct"] = 100.0 * (result["baseline"]["fps"] / result["semantic"]["fps"] - 1)
    result["encoder"] = runs["semantic"]["encoder"]
    return result


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 3) if finite else None


def markdown_row(r: dict) -> str:
    b, s = r["baseline"], r["semantic"]
    return (f"| {r['clip']} | {r['frames']} | {100 * r['roi_fraction']:.1f} % | "
            f"{b['bitrate_kbps']:.0f} / {s['bitrate_kbps']:.0f} | "
            f"{b['fps']:.1f} / {s['fps']:.1f} ({r['overhead_pct']:+.1f} %) | "
            f"{b['psnr']:.2f} / {s['psnr']:.2f} | {b['psnr_roi']} / {s['psnr_roi']} | "
            f"{b['psnr_background']:.2f} / {s['psnr_background']:.2f} |")


HEADER = ("| clip | frames | ROI | kbit/s base / sem | fps base / sem (overhead) | "
          "Y-PSNR base / sem | ROI-PSNR base / sem | background-PSNR base / sem |\n"
          "|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clips", nargs="+")
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--rc", default="cbr")
    p.add_argument("--bitrate", default="")
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--tune", default="")
    p.add_argument("--repeats", type=int, default=2, help="runs of each, best fps kept")
    p.add_argument("--frames", type=int, default=0, help="only the first N frames (0: all)")
    p.add_argument("--json", help="write all results here")
    args = p.parse_args(argv)
    from ..cli import parse_bitrate

    overrides = [f"encoder.rc={args.rc}", f"encoder.preset={args.preset}",
                 f"encoder.tune={args.tune}", *args.set]
    if args.bitrate:
        overrides.append(f"encoder.bitrate={parse_bitrate(args.bitrate)}")
    cfg = load_config(args.config, overrides)
    results = []
    print(HEADER)
    with tempfile.TemporaryDirectory() as tmp:
        for clip in args.clips:
            r = compare(clip, cfg, tmp, repeats=args.repeats, max_frames=args.frames)
            results.append(r)
            print(markdown_row(r), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
