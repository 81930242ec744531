"""`edge-semvc bench`: rate-distortion, analytics accuracy and speed, semantic vs x264.

Each clip is encoded at every rate point of a ladder with the same encoder settings by:
- `baseline`: plain x264 with its own adaptive quantisation, no map (our backend, --no-map);
- `semantic`: the full pipeline (labeler, analysis, QP map);
- `ffmpeg` (with `--baseline ffmpeg`): FFmpeg's libx264 through PyAV, the encoder a user would
  otherwise run;
- `core` (with `--baseline core`): the semantic configuration with the method's extensions off;
- `rects8` (with `--baseline rects8`): the semantic run with each map cut down to the 8 ROI
  rectangles with whole-QP deltas Jetson's hardware encoder takes (`rects.py`, rounded as the
  jetson-v4l2 backend does) and rebuilt for x264.
Every output is decoded and compared with the decoded source: Y-PSNR over the whole frame, the
region of interest and the background; VMAF-NEG; detection F1 of an independent detector. Then
BD-rate (akima) of semantic against each baseline on PSNR, VMAF and, where the ROI holds enough
data, ROI-PSNR.

Detection F1 gets no BD-rate: it saturates near 1 and is not monotone in rate, and even where it
spans 0.05 over the ladder its BD-rate moved by -7 to +13 % with an empty ROI (BENCHMARKS.md,
"Analytics at low rates"): noise. Instead, per encoder, the bits needed to reach each F1 target
(`rate_at_f1`: monotone envelope, log-rate interpolation, no extrapolation), semantic's saving
there, and semantic's mean F1 gain over the ladder points (meant for a low ladder, e.g.
--bpp 0.004 0.008 0.016 0.032, where F1 has not saturated).

ROI: the boxes of persons and vehicles an independent detector (`--roi-model`, by default the
YOLOX-nano fixture in ../shared/models when it is there) finds on every original frame: the map
is not graded with its own eyes. A second column, `psnr_roi_own`, takes the macroblocks the
semantic configuration's models label (any class) when they run on every original frame (no CPU
budget, no carry). The same masks for every encode of a clip, so all are judged on the same
pixels. `--start` and `--frames` pick a range of each clip (e.g. tune on its first half,
`--frames 50%`, and report on the second, `--start 50%`).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import preflight
from ..config import Config, ConfigError, load_config
from ..encoders.base import kbit_per_s
from ..pipeline import Extras, run_encode
from ..sources import RawVideoOptions, open_source
from ..stop import between_runs
from ..tools.models import prepare_config
from ..values import QpMap
from .detector import YoloxDetector, default_model
from .metrics import F1_MIN_OBJECTS
from .reference import ClipReference, FrameSpan, evaluate, read_reference, roi_labeler
from .report import rate_label
from .summary import F1_TARGETS, ROI_MIN_FRAMES, ROI_MIN_MBS, Analysis, summarise

DEFAULT_BPP = (0.025, 0.05, 0.1, 0.2)  # bits per pixel for the default abr/cbr ladder
DEFAULT_CRF = (36.0, 32.0, 28.0, 24.0)
CAMERA_GOP_S = 2.0  # the keyframe interval cameras ship with (the storage profile's anchor)


def resolve_ladder(ladder: list[float] | None, bpp: list[float] | None, rc: str, width: int,
                   height: int, fps: float) -> list[float]:
    """The rate points for one clip: explicit rates, or bits per pixel scaled to its size (to
    1 kbit/s, whole bits/s); each must be distinct (a point's encodes are named by its rate) and
    above 0."""
    rates = ladder or (list(DEFAULT_CRF) if rc == "crf" else
                       [round(b * width * height * fps / 1e3) * 1000 for b in (bpp or DEFAULT_BPP)])
    if len(set(rates)) < len(rates) or min(rates) <= 0:
        given = f"--ladder {' '.join(rate_label(r, rc) for r in rates)}" if ladder else \
            f"--bpp {' '.join(f'{b:g}' for b in bpp)} gives {', '.join(str(r) for r in rates)}" \
            f" bit/s at {width}x{height}, {fps:g} fps (rounded to 1 kbit/s)"
        raise ConfigError(f"{given}: each rate point must be distinct and above 0")
    if rc != "crf":  # x264 and x265 run at whole kbit/s: two points there are one encode twice
        ran = [kbit_per_s(r) for r in rates]
        same = [r for r, k in zip(rates, ran) if ran.count(k) > 1]
        if same:
            raise ConfigError(
                f"--ladder {' '.join(rate_label(r, rc) for r in rates)}: "
                f"{' and '.join(rate_label(r, rc) for r in same)} all run at "
                f"{kbit_per_s(same[0])} kbit/s (x264 and x265 take whole kbit/s, the nearest): "
                "each rate point must be distinct")
    return rates


EXTENSIONS = ("attention", "emotion", "scene", "fusion")  # the method's embodiments 2-5


def core_method(cfg: Config) -> Config:
    """`cfg` with every extension of the method switched off."""
    core = copy.deepcopy(cfg)
    for name in EXTENSIONS:
        section = getattr(core, name, None)
        if section is not None:
            section.enabled = False
    return core


def rect_map(max_rects: int):
    """What Jetson's encoder applies of a full map: `max_rects` ROI rectangles (`rects.py`)
    with whole-QP deltas, exactly as the jetson-v4l2 backend plans them (`plan_rois`)."""
    from ..encoders.jetson_v4l2 import plan_rois

    def rebuilt(full: QpMap) -> QpMap:
        return QpMap.from_rects(plan_rois(full.offsets, max_rects).rects, full.offsets.shape)
    return rebuilt


def storage_baseline(cfg: Config, fps) -> Config:
    """What cameras ship, against the storage profile: plain x264 at the same preset and CRF,
    a fixed GOP of CAMERA_GOP_S and every frame; `encoder.params` are the profile's own (what
    an x264 option adds is measured against the camera's default)."""
    plain = copy.deepcopy(cfg)
    plain.encoder.profile = "live"
    plain.encoder.params = {}
    plain.encoder.keyint = max(1, round(CAMERA_GOP_S * fps))
    return plain


def encode_point(kind: str, ref: ClipReference, cfg: Config, raw, out: Path) -> dict:
    src = ref.source(raw)  # the reference's frames
    try:
        if kind == "ffmpeg":
            from .ffmpeg_baseline import encode_with_ffmpeg
            stats = encode_with_ffmpeg(src, str(out), cfg.encoder)
        elif kind == "core":  # the core method alone: the semantic run's extensions off
            stats = run_encode(src, str(out), core_method(cfg))
        elif kind == "baseline" and cfg.encoder.profile == "storage":
            stats = run_encode(src, str(out), storage_baseline(cfg, src.fps), semantic=False)
        elif kind == "rects8":  # the semantic run's maps as 8 ROI rectangles (Jetson's limit)
            stats = run_encode(src, str(out), cfg, extras=Extras(map_filter=rect_map(8)))
        else:
            stats = run_encode(src, str(out), cfg, semantic=kind == "semantic")
    finally:
        src.close()
    between_runs()  # the encode is over: a stop from here on ends the bench where it is
    size = out.stat().st_size
    storage = {k: v for k, v in stats.get("storage", {}).items() if k != "idrs"}
    return {"frames": stats["frames"], "bytes": size,
            "bitrate_kbps": round(size * 8 / ref.duration / 1e3, 3), "fps": stats["fps"],
            "encoder": stats.get("encoder"), **({"storage": storage} if storage else {}),
            "label_runs": stats.get("label_runs")}


@dataclass
class BenchOptions:
    """What `bench_clip` does with each clip (the command line's choices): the encodes
    (`kinds` at each rate of `ladder`, or of `bpp` bits per pixel), where they go, how they
    are judged."""

    kinds: list[str]
    out_dir: Path
    workdir: Path
    ladder: list[float] | None = None
    bpp: list[float] | None = None
    raw: RawVideoOptions | None = None
    detector: YoloxDetector | None = None  # with a detector: the F1 analytics
    eval_every: int = 1
    vmaf: bool = False
    span: FrameSpan = field(default_factory=FrameSpan)  # which frames of each clip
    repeats: int = 1  # speed: the best of this many runs
    analysis: Analysis = field(default_factory=Analysis)
    log: Callable[[str], None] = print
    label_schedules: Path | None = None  # recorded label timing per clip and range (replayed)


def bench_clip(clip: str, cfg: Config, o: BenchOptions) -> dict:
    ref = read_reference(clip, o.raw, o.workdir, o.span, o.detector, o.log,
                         roi_labeler(cfg) if "semantic" in o.kinds else None)
    rates = resolve_ladder(o.ladder, o.bpp, cfg.encoder.rate_control(), ref.width, ref.height,
                           ref.fps)
    cfg, schedule = copy.deepcopy(cfg), None  # this clip's labeler.replay
    if o.label_schedules:
        schedule = o.label_schedules / f"{Path(clip).stem}.{ref.start}+{len(ref.luma)}.json"
        if schedule.exists():
            cfg.labeler.replay = str(schedule)
            o.log(f"  label timing replayed from {schedule}")
    points = []
    order = ["semantic", *[k for k in o.kinds if k != "semantic"]]
    try:
        for rate in rates:
            e = cfg.encoder
            if e.rate_control() == "crf":
                e.crf = float(rate)
            else:
                e.bitrate = int(rate)
            point, label = {"rate_setting": rate}, rate_label(rate, e.rate_control())
            for kind in order:
                path = o.out_dir / "encodes" / f"{Path(clip).stem}.{kind}.{label}.mp4"
                t0 = time.perf_counter()
                result = encode_point(kind, ref, cfg, o.raw, path)
                runs = result.pop("label_runs")
                if schedule and not cfg.labeler.replay and runs:  # the first labelled encode's
                    schedule.parent.mkdir(parents=True, exist_ok=True)
                    schedule.write_text(json.dumps(runs) + "\n")
                    cfg.labeler.replay = str(schedule)
                    o.log(f"  label timing recorded in {schedule}: the other encodes replay it")
                for _ in range(o.repeats - 1):  # speed only: keep the best of several runs
                    again = encode_point(kind, ref, cfg, o.raw, path)
                    result["fps"] = max(result["fps"], again["fps"])
                result.update(evaluate(str(path), ref, o.detector, o.vmaf, o.eval_every))
                point[kind] = result
                o.log(f"  {label} {kind:9s} {result['bitrate_kbps']:9.1f} kbit/s "
                      f"{result['fps']:7.1f} fps  PSNR {result['psnr']} "
                      f"ROI {result.get('psnr_roi')} own-ROI {result.get('psnr_roi_own')} "
                      f"bg {result.get('psnr_background')}"
                      + (f" VMAF {result['vmaf']}" if o.vmaf else "")
                      + (f" F1 {result['f1']}" if o.detector else "")
                      + f"  ({time.perf_counter() - t0:.1f} s)")
            points.append(point)
    except KeyboardInterrupt as e:  # stopped: the rate points done are kept (`run`)
        e.partial = {**summarise(ref, points, order, o.repeats, o.analysis),
                     "ladder_points": len(rates)} if points else None
        raise
    return summarise(ref, points, order, o.repeats, o.analysis)


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
    p.add_argument("--profile", choices=["live", "storage"], default="live",
                   help="storage: the semantic run records with the storage profile (needs --rc "
                        "crf) and the baseline is what cameras ship: plain x264, a fixed "
                        f"{CAMERA_GOP_S:g} s GOP, every frame")
    p.add_argument("--tune", default="")
    p.add_argument("--roi-model", metavar="PATH",
                   help="independent YOLOX ONNX detector: its person and vehicle boxes on the "
                        "original frames are the ROI of ROI-PSNR and the truth of detection F1 "
                        "(IoU 0.5); default: the fixture ../shared/models/yolox_nano.onnx where "
                        "it is; 'none': no detector (only the own-models ROI, no F1)")
    p.add_argument("--f1-targets", nargs="+", type=float, default=list(F1_TARGETS),
                   metavar="F1", help="detection-F1 targets: bits each encoder needs to reach "
                   "them, and semantic's saving there (default 0.9 0.95)")
    p.add_argument("--roi-min-mbs", type=float, default=ROI_MIN_MBS, metavar="N",
                   help="ROI-PSNR BD-rate only if the ROI averages >= N macroblocks a frame "
                        f"(default {ROI_MIN_MBS:g})")
    p.add_argument("--roi-min-frames", type=float, default=ROI_MIN_FRAMES, metavar="FRACTION",
                   help="... and is present in >= FRACTION of the frames "
                        f"(default {ROI_MIN_FRAMES:g})")
    p.add_argument("--f1-min-objects", type=int, default=F1_MIN_OBJECTS, metavar="N",
                   help="detection-F1 figures only if the independent detector finds >= N "
                        f"objects on the judged original frames (default {F1_MIN_OBJECTS})")
    p.add_argument("--baseline", choices=["ffmpeg", "core", "rects8"], action="append",
                   default=[],
                   help="also encode with FFmpeg's libx264 through PyAV (ffmpeg), with the "
                        "core method alone, the configuration's extensions off (core): the "
                        "BD-rates against it are what the extensions add, or with each map "
                        "cut down to 8 ROI rectangles, as Jetson's hardware encoder takes "
                        "(rects8)")
    p.add_argument("--out", default="bench-out", help="output folder (default bench-out)")
    p.add_argument("--start", default="0", metavar="N|P%",
                   help="judge each clip from this frame, or this share of it (50%%: the second "
                        "half); default 0")
    p.add_argument("--frames", default="", metavar="N|P%",
                   help="judge only N frames of each clip (or a share: 50%%); default: to the "
                        "end")
    p.add_argument("--eval-every", type=int, default=1, metavar="N",
                   help="run the detector on every N-th frame (default 1)")
    p.add_argument("--no-vmaf", action="store_true", help="skip VMAF")
    p.add_argument("--label-schedule", metavar="DIR",
                   help="the same label timing for every encode: each clip's (and range's) "
                        "model runs are replayed from DIR/CLIP.FIRST+FRAMES.json, recorded there "
                        "by its first labelled encode when missing (labeler.replay: which "
                        "frames the models run on and from which frame their results are used "
                        "follow the CPU clock: 1-4 BD-rate points from run to run on a busy "
                        "machine; add --set encoder.threads=1 for figures that repeat exactly)")
    p.add_argument("--repeats", type=int, default=1, metavar="N",
                   help="encode each point N times and keep the best fps (speed figures)")
    p.add_argument("--config", help="YAML configuration for the semantic encoder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--input-width", type=int, default=0)
    p.add_argument("--input-height", type=int, default=0)
    p.add_argument("--input-rate", default="0")


def run(args) -> int:
    from fractions import Fraction

    from ..options import parse_bitrate, parse_crf
    from ..stop import exit_status
    from .report import settings, summary_markdown, write_interrupted, write_outputs

    if args.eval_every < 1:
        raise ConfigError(f"--eval-every must be >= 1, got {args.eval_every}")
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {args.repeats}")
    if not all(0 < t <= 1 for t in args.f1_targets):
        raise ConfigError(f"--f1-targets take values in (0, 1], got {args.f1_targets}")
    if args.roi_min_mbs < 0 or not 0 <= args.roi_min_frames <= 1:
        raise ConfigError("--roi-min-mbs takes a value >= 0, --roi-min-frames one in [0, 1]")
    if args.f1_min_objects < 0:
        raise ConfigError(f"--f1-min-objects takes a value >= 0, got {args.f1_min_objects}")
    if args.profile == "storage" and args.rc != "crf":  # --rc's default is cbr
        raise ConfigError(f"--profile storage records at a quality: it needs --rc crf, not "
                          f"{args.rc}")
    analysis = Analysis(tuple(args.f1_targets), args.roi_min_mbs, args.roi_min_frames,
                        args.f1_min_objects)
    # the video alone: its file size over the clip's duration is the bitrate compared
    cfg = load_config(args.config, ["streams.passthrough=[]", *args.set, f"encoder.rc={args.rc}",
                                    f"encoder.profile={args.profile}",
                                    f"encoder.preset={args.preset}", f"encoder.tune={args.tune}",
                                    # placeholder so abr/cbr validate; each point sets its own
                                    # (with crf a bitrate is a VBV cap: only the user's --set)
                                    *([] if args.rc == "crf" else ["encoder.bitrate=1000000"])])
    prepare_config(cfg, cfg.cache_dir(), log=lambda m: print(m, file=sys.stderr))
    preflight.resolve(cfg)  # which runtime and encoder this machine runs (`auto`)
    ladder = None
    if args.bpp and (args.ladder or args.rc == "crf" or min(args.bpp) <= 0):
        raise ConfigError("--bpp takes positive values and goes with --rc abr/cbr, not --ladder")
    if args.ladder:
        try:
            ladder = [parse_crf(r) if args.rc == "crf" else parse_bitrate(r) for r in args.ladder]
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"bad --ladder value: {e}") from None
    vmaf = not args.no_vmaf
    if vmaf:
        from .vmaf import vmaf_available
        ok, why = vmaf_available()
        if not ok:
            raise ConfigError(f"VMAF unavailable ({why}); install the eval extra or use --no-vmaf")
    roi_model = default_model() if args.roi_model is None else \
        (None if args.roi_model == "none" else Path(args.roi_model))
    if roi_model is not None and not roi_model.is_file():
        raise ConfigError(f"--roi-model {args.roi_model}: no such file")
    if roi_model is None:
        print("edge-semvc bench: no independent detector (--roi-model): ROI-PSNR only on the "
              "own models' ROI, no detection F1", file=sys.stderr)
    detector = YoloxDetector(roi_model) if roi_model else None
    span = FrameSpan(args.start, args.frames)
    span.resolve(1000)  # the syntax, before any work
    raw = RawVideoOptions(args.input_width, args.input_height, Fraction(args.input_rate))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {args.out} is a file, not a folder")
    for clip in args.clips:  # each clip opens before any work, not when its turn comes
        src = open_source(clip, raw)
        src.close()
        try:
            resolve_ladder(ladder, args.bpp, args.rc, src.width, src.height, float(src.fps))
        except ConfigError as e:
            raise ConfigError(f"{clip}: {e}") from None
    (out / "encodes").mkdir(parents=True, exist_ok=True)
    kinds = ["baseline", "semantic", *args.baseline]

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    results = {"settings": settings(args, analysis, roi_model), "config": cfg.to_dict(),
               "clips": []}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for n, clip in enumerate(args.clips, 1):
                log(f"[{n}/{len(args.clips)}] {clip}")
                results["clips"].append(bench_clip(clip, cfg, BenchOptions(
                    kinds, out, Path(tmp), ladder, args.bpp, raw, detector, args.eval_every,
                    vmaf, span, args.repeats, analysis, log,
                    Path(args.label_schedule) if args.label_schedule else None)))
                results["complete"] = n == len(args.clips)
                write_outputs(results, out)  # after every clip: a long run loses nothing
        except KeyboardInterrupt as e:  # a stop signal: what is done is written, said so
            log(write_interrupted(results, e, out))
            return exit_status(e)
    print(summary_markdown(results))
    log(f"results in {out}/ (report.md, results.json, results.csv, summary.csv, plots/)")
    return 0
