"""`edge-semvc bench`: rate-distortion, analytics accuracy and speed, semantic vs x264.

Each clip is encoded at every rate point of a ladder with the same encoder settings by:
- `baseline`: plain x264 with its own adaptive quantisation, no map (our backend, --no-map);
- `semantic`: the full pipeline (labeler, analysis, QP map);
- `ffmpeg` (with `--baseline ffmpeg`): FFmpeg's libx264 through PyAV, the encoder a user would
  otherwise run.
Every output is decoded and compared with the decoded source: Y-PSNR over the whole frame, the
region of interest and the background; VMAF-NEG; detection F1 of an independent detector. Then
BD-rate (akima) of semantic against each baseline per metric.

ROI mask: the macroblocks that the semantic run's labeler labelled (any class) on the original
frames; the same mask for every encode of a clip, so all are judged on the same pixels.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from ..config import Config, ConfigError, load_config
from ..frame import Frame
from ..pipeline import run_encode
from ..sources import RawVideoOptions, open_source
from .detector import GROUPS, YoloxDetector
from .metrics import bd_rate, f1_score, match_counts, mb_mask_to_pixels, psnr

# BD-rate is reported on these; below the span, a metric's curve is too flat to compare
# (F1 near saturation moves by a few hundredths, and noise would decide the figure).
METRICS = {"psnr_roi": 0.0, "psnr": 0.0, "vmaf": 0.0, "f1": 0.05}
DEFAULT_BPP = (0.025, 0.05, 0.1, 0.2)  # bits per pixel for the default abr/cbr ladder
DEFAULT_CRF = (36.0, 32.0, 28.0, 24.0)


@dataclass
class ClipReference:
    """What every encode of one clip is compared with."""

    clip: str
    width: int
    height: int
    fps: float
    luma: list[np.ndarray] = field(default_factory=list)
    truth: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)  # frame -> detections
    roi: list[np.ndarray] = field(default_factory=list)  # bool[mb_h, mb_w] per frame
    y4m: str = ""

    @property
    def duration(self) -> float:
        return len(self.luma) / self.fps


def resolve_ladder(ladder: list[float] | None, bpp: list[float] | None, rc: str, width: int,
                   height: int, fps: float) -> list[float]:
    """The rate points for one clip: explicit rates, or bits per pixel scaled to its size."""
    if ladder:
        return ladder
    if rc == "crf":
        return list(DEFAULT_CRF)
    return [round(b * width * height * fps, -3) for b in (bpp or DEFAULT_BPP)]


def read_reference(clip: str, raw: RawVideoOptions | None, workdir: Path, max_frames: int,
                   detector: YoloxDetector | None, eval_every: int, log) -> ClipReference:
    """Decode the clip once: keep the luma, write a .y4m for VMAF, detect on the originals."""
    src = open_source(clip, raw)
    ref = ClipReference(clip, src.width, src.height, float(src.fps))
    ref.y4m = str(workdir / f"{Path(clip).stem}.ref.y4m")
    with open(ref.y4m, "wb") as y4m:
        y4m.write(f"YUV4MPEG2 W{src.width} H{src.height} F{src.fps.numerator}:"
                  f"{src.fps.denominator} Ip A1:1 C420mpeg2 XCOLORRANGE=LIMITED\n".encode())
        try:
            for frame in src.frames():
                if max_frames and frame.index >= max_frames:
                    break
                y4m.write(b"FRAME\n" + frame.y.tobytes() + frame.u.tobytes() + frame.v.tobytes())
                ref.luma.append(frame.y.copy())
                if detector and frame.index % eval_every == 0:
                    ref.truth[frame.index] = detector.detect(frame)
        finally:
            src.close()
    log(f"{Path(clip).name}: {len(ref.luma)} frames {src.width}x{src.height}"
        + (f", {sum(len(b) for d in ref.truth.values() for b in d.values())} reference "
           f"detections on {len(ref.truth)} frames" if detector else ""))
    return ref


def decoded_frames(path: str):
    with av.open(path) as c:
        for i, f in enumerate(c.decode(video=0)):
            yield Frame.from_i420(f.to_ndarray(format="yuv420p"), f.width, f.height, f.pts, 1, i)


def evaluate(path: str, ref: ClipReference, detector: YoloxDetector | None,
             vmaf: bool) -> dict:
    """Quality of one encoded file against the reference."""
    whole, roi, background = [], [], []
    counts = {g: np.zeros(3, int) for g in GROUPS}
    n = 0
    for frame in decoded_frames(path):
        i = frame.index
        if i >= len(ref.luma):
            break
        mask = mb_mask_to_pixels(ref.roi[i], ref.width, ref.height) if ref.roi else None
        whole.append(psnr(ref.luma[i], frame.y))
        if mask is not None and mask.any():
            roi.append(psnr(ref.luma[i], frame.y, mask))
        if mask is not None and not mask.all():
            background.append(psnr(ref.luma[i], frame.y, ~mask))
        if detector and i in ref.truth:
            found = detector.detect(frame)
            for g in GROUPS:
                counts[g] += match_counts(ref.truth[i][g], found[g])
        n += 1
    if n != len(ref.luma):
        raise RuntimeError(f"{path} decodes to {n} frames, the source has {len(ref.luma)}")
    out = {"psnr": _mean(whole), "psnr_roi": _mean(roi), "psnr_background": _mean(background)}
    if detector:
        total = sum(counts.values())
        out["f1"] = round(f1_score(*total), 4)
        out.update({f"f1_{g}": round(f1_score(*c), 4) for g, c in counts.items()})
    if vmaf:
        from .vmaf import vmaf_neg
        out["vmaf"] = vmaf_neg(path, ref.y4m)
    return out


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else None


def encode_point(kind: str, ref: ClipReference, cfg: Config, raw, out: Path,
                 max_frames: int) -> dict:
    src = open_source(ref.clip, raw)
    try:
        if kind == "ffmpeg":
            from .ffmpeg_baseline import encode_with_ffmpeg
            stats = encode_with_ffmpeg(src, str(out), cfg.encoder, max_frames)
        else:
            collect = kind == "semantic" and not ref.roi
            stats = run_encode(src, str(out), cfg, semantic=kind == "semantic",
                               max_frames=max_frames,
                               on_frame=(lambda f, lm, qp: ref.roi.append(lm.labels > 0))
                               if collect else None)
    finally:
        src.close()
    size = out.stat().st_size
    return {"frames": stats["frames"], "bytes": size,
            "bitrate_kbps": round(size * 8 / ref.duration / 1e3, 3), "fps": stats["fps"],
            "encoder": stats.get("encoder")}


def bench_clip(clip: str, cfg: Config, ladder: list[float] | None, kinds: list[str],
               out_dir: Path, workdir: Path, raw, detector, eval_every: int, vmaf: bool,
               max_frames: int, log, repeats: int = 1, bpp: list[float] | None = None) -> dict:
    ref = read_reference(clip, raw, workdir, max_frames, detector, eval_every, log)
    rates = resolve_ladder(ladder, bpp, cfg.encoder.rc, ref.width, ref.height, ref.fps)
    points = []
    # Semantic first: its labels define the ROI mask every encode is measured on.
    order = ["semantic", *[k for k in kinds if k != "semantic"]]
    for rate in rates:
        e = cfg.encoder
        if e.rc == "crf":
            e.crf = float(rate)
        else:
            e.bitrate = int(rate)
        point = {"rate_setting": rate}
        for kind in order:
            path = out_dir / "encodes" / f"{Path(clip).stem}.{kind}.{rate:g}.mp4"
            t0 = time.perf_counter()
            result = encode_point(kind, ref, cfg, raw, path, max_frames)
            for _ in range(repeats - 1):  # speed only: keep the best of several runs
                again = encode_point(kind, ref, cfg, raw, path, max_frames)
                result["fps"] = max(result["fps"], again["fps"])
            result.update(evaluate(str(path), ref, detector, vmaf))
            point[kind] = result
            log(f"  {rate:g} {kind:9s} {result['bitrate_kbps']:9.1f} kbit/s "
                f"{result['fps']:7.1f} fps  PSNR {result['psnr']} ROI {result['psnr_roi']} "
                f"bg {result['psnr_background']}"
                + (f" VMAF {result['vmaf']}" if vmaf else "")
                + (f" F1 {result['f1']}" if detector else "")
                + f"  ({time.perf_counter() - t0:.1f} s)")
        points.append(point)
    summary = {"clip": Path(clip).name, "width": ref.width, "height": ref.height,
               "fps": ref.fps, "frames": len(ref.luma), "repeats": repeats,
               "roi_fraction": round(float(np.mean([m.mean() for m in ref.roi])), 4),
               "points": points, "bd_rate": {}, "speed_ratio": {}}
    metrics = [m for m in METRICS if m in points[0]["semantic"]]
    for anchor in (k for k in order if k != "semantic"):
        summary["bd_rate"][f"semantic_vs_{anchor}"] = {
            m: dict(zip(("percent", "note"), bd_rate(
                [p[anchor]["bitrate_kbps"] for p in points], [p[anchor][m] for p in points],
                [p["semantic"]["bitrate_kbps"] for p in points],
                [p["semantic"][m] for p in points], METRICS[m])))
            for m in metrics}
        summary["speed_ratio"][f"semantic_vs_{anchor}"] = round(float(np.mean(
            [p["semantic"]["fps"] / p[anchor]["fps"] for p in points])), 4)
    return summary


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("clips", nargs="+", metavar="CLIP")
    p.add_argument("--ladder", nargs="+", metavar="RATE",
                   help="rate points: bitrates (800k, 2M) for abr/cbr, CRF values for crf "
                        "(default: 4 points, 0.025-0.2 bit/pixel or CRF 36-24)")
    p.add_argument("--bpp", nargs="+", type=float, metavar="BPP",
                   help="abr/cbr rate points in bits per pixel, scaled to each clip's size and "
                        "frame rate (default 0.025 0.05 0.1 0.2)")
    p.add_argument("--rc", choices=["crf", "abr", "cbr"], default="cbr")
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--tune", default="")
    p.add_argument("--roi-model", metavar="PATH",
                   help="independent YOLOX ONNX detector for analytics accuracy (F1 at IoU 0.5, "
                        "person and vehicle); e.g. ../shared/models/yolox_nano.onnx")
    p.add_argument("--baseline", choices=["ffmpeg"], action="append", default=[],
                   help="also encode with FFmpeg's libx264 through PyAV")
    p.add_argument("--out", default="bench-out", help="output folder (default bench-out)")
    p.add_argument("--frames", type=int, default=0, help="only the first N frames of each clip")
    p.add_argument("--eval-every", type=int, default=1, metavar="N",
                   help="run the detector on every N-th frame (default 1)")
    p.add_argument("--no-vmaf", action="store_true", help="skip VMAF")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="encode each point N times and keep the best fps (speed figures)")
    p.add_argument("--config", help="YAML configuration for the semantic encoder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--input-width", type=int, default=0)
    p.add_argument("--input-height", type=int, default=0)
    p.add_argument("--input-rate", default="0")


def run(args) -> int:
    from fractions import Fraction

    from ..cli import parse_bitrate
    from .report import write_outputs

    if args.eval_every < 1:
        raise ConfigError(f"--eval-every must be >= 1, got {args.eval_every}")
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    cfg = load_config(args.config, [*args.set, f"encoder.rc={args.rc}",
                                    f"encoder.preset={args.preset}", f"encoder.tune={args.tune}",
                                    # placeholder so abr/cbr validate; each point sets its own
                                    "encoder.bitrate=1000000"])
    ladder = None
    if args.bpp and (args.ladder or args.rc == "crf" or min(args.bpp) <= 0):
        raise ConfigError("--bpp takes positive values and goes with --rc abr/cbr, not --ladder")
    if args.ladder:
        try:
            ladder = [float(r) if args.rc == "crf" else parse_bitrate(r) for r in args.ladder]
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"bad --ladder value: {e}") from None
    vmaf = not args.no_vmaf
    if vmaf:
        from .vmaf import vmaf_available
        ok, why = vmaf_available()
        if not ok:
            raise ConfigError(f"VMAF unavailable ({why}); install the eval extra or use --no-vmaf")
    if args.roi_model and not Path(args.roi_model).is_file():
        raise ConfigError(f"--roi-model {args.roi_model}: no such file")
    detector = YoloxDetector(args.roi_model) if args.roi_model else None
    raw = RawVideoOptions(args.input_width, args.input_height, Fraction(args.input_rate))
    out = Path(args.out)
    (out / "encodes").mkdir(parents=True, exist_ok=True)
    kinds = ["baseline", "semantic", *args.baseline]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    results = {"settings": {"rc": args.rc, "preset": args.preset, "tune": args.tune,
                            "ladder": args.ladder, "bpp": args.bpp,
                            "roi_model": args.roi_model,
                            "frames": args.frames, "eval_every": args.eval_every,
                            "roi_mask": "macroblocks labelled by the semantic run's labeler"},
               "config": cfg.to_dict(), "clips": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n, clip in enumerate(args.clips, 1):
            log(f"[{n}/{len(args.clips)}] {clip}")
            results["clips"].append(bench_clip(
                clip, cfg, ladder, kinds, out, Path(tmp), raw, detector, args.eval_every, vmaf,
                args.frames, log, args.repeats, args.bpp))
            write_outputs(results, out)  # after every clip: a long run loses nothing
    log(f"results in {out}/ (report.md, results.json, results.csv, plots/)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m` entry: the same as `edge-semvc bench` (one place handles errors)."""
    from ..cli import main as cli_main

    return cli_main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
