"""Encoder backends side by side: the same clips, presets and CRF ladder through each backend
(plain, no map: what the encoder itself does), decoded and compared with the source.

    python -m edge_semvc.bench.backends CLIP... --backends x264 x265 --ladder 20 25 30 35

Per clip and backend: bitrate, Y-PSNR and fps at each CRF; per backend after the first: its
BD-rate against the first on PSNR (negative: fewer bits for the same quality) and its speed
ratio (fps over the first's, same run, same machine). `--threads 1` (the default) keeps the
speed comparison about the encoders, not about how each spreads over cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..config import load_config
from ..encoders import ENCODERS
from ..pipeline import run_encode
from .metrics import bd_rate
from .reference import FrameSpan, evaluate, read_reference


def bench_backends(clip: str, backends: list[str], ladder: list[float], preset: str,
                   threads: int, frames: int, workdir: Path, log) -> dict:
    ref = read_reference(clip, None, workdir, FrameSpan(count=str(frames or "")), None, log)
    curves = {}
    for backend in backends:
        points = []
        for crf in ladder:
            cfg = load_config(None, [f"encoder.backend={backend}", f"encoder.crf={crf:g}",
                                     f"encoder.preset={preset}", f"encoder.threads={threads}",
                                     "streams.passthrough=[]"])  # sizes of the video alone
            out = workdir / f"{Path(clip).stem}.{backend}.{crf:g}.mkv"
            src = ref.source(None)
            try:
                stats = run_encode(src, str(out), cfg, semantic=False)
            finally:
                src.close()
            quality = evaluate(str(out), ref, None, vmaf=False)
            kbps = out.stat().st_size * 8 / ref.duration / 1e3
            points.append({"crf": crf, "kbps": round(kbps, 2), "psnr": quality["psnr"],
                           "fps": stats["fps"]})
            log(f"  {backend} crf {crf:g}: {kbps:8.1f} kbit/s  PSNR {quality['psnr']}  "
                f"{stats['fps']} fps")
        curves[backend] = points
    first = curves[backends[0]]
    result = {"clip": Path(clip).name, "size": f"{ref.width}x{ref.height}",
              "frames": len(ref.luma), "points": curves, "vs_first": {}}
    for backend in backends[1:]:
        other = curves[backend]
        bd, note = bd_rate([p["kbps"] for p in first], [p["psnr"] for p in first],
                           [p["kbps"] for p in other], [p["psnr"] for p in other], 0.0)
        speed = float(np.mean([o["fps"] / f["fps"] for o, f in zip(other, first)]))
        result["vs_first"][backend] = {"bd_rate_psnr": bd, "note": note,
                                       "speed_ratio": round(speed, 3)}
    return result


def markdown(results: list[dict], backends: list[str]) -> str:
    head = "| clip | " + " | ".join(f"{b} vs {backends[0]}: BD-rate PSNR / speed"
                                    for b in backends[1:]) + " | fps " + \
        " / ".join(backends) + " (mean over the ladder) |"
    lines = [head, "|" + "---|" * (len(backends) + 1)]
    for r in results:
        cells = []
        for b in backends[1:]:
            v = r["vs_first"][b]
            bd = "n/a" if v["bd_rate_psnr"] is None else f"{v['bd_rate_psnr']:+.1f} %"
            cells.append(f"{bd} / {v['speed_ratio']:.2f}x")
        fps = " / ".join(f"{np.mean([p['fps'] for p in r['points'][b]]):.0f}" for b in backends)
        lines.append(f"| {r['clip']} ({r['size']}, {r['frames']} fr) | " + " | ".join(cells)
                     + f" | {fps} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("clips", nargs="+", metavar="CLIP")
    p.add_argument("--backends", nargs="+", default=["x264", "x265"])
    p.add_argument("--ladder", nargs="+", type=float, default=[20.0, 25.0, 30.0, 35.0])
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--frames", type=int, default=0, help="only the first N frames of each clip")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    for backend in args.backends:
        why = ENCODERS.why_unavailable(backend)
        if why is not None:
            p.error(f"backend {backend} is not available here: {why}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for clip in args.clips:
            log(clip)
            results.append(bench_backends(clip, args.backends, args.ladder, args.preset,
                                          args.threads, args.frames, Path(tmp), log))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(markdown(results, args.backends))
    return 0


if __name__ == "__main__":
    sys.exit(main())
