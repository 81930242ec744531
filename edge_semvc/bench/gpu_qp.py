"""The CUDA QP map (qp/cuda) against the numpy reference, per frame size.

    python -m edge_semvc.bench.gpu_qp --sizes 720p,1080p,4k [--repeats 100] [--json FILE]
    python -m edge_semvc.bench.gpu_qp --sizes 720p,1080p,4k --cpu-only     (no GPU: numpy alone)
    python -m edge_semvc.bench.gpu_qp --save-frames FILE   (real luma pairs, for a GPU machine)

Inputs per size: two textured frames, the second moved by a pan, played alternately (so V is
never 0), with a person, a face and a vehicle labelled (15 % of the frame); default `qp:` and
`analysis:` settings. Per size it reports:
- numpy_ms: `Analyser.analyse` + `build_qp_map` on this machine's CPU (median);
- kernels_ms: the four kernels of one frame, between CUDA events, warm (median);
- upload_ms: the frame's copies to the device (CUDA events: every 4th luma row, labels);
- map_ms: `CudaQpMapper.map`, wall clock: copies, kernels, the wait, the map back (median);
- bytes: what the kernels move in device memory (`traffic`: compulsory, and the four kernels
  with nothing cached between them) and floor_us, those bytes at the memory bandwidth the device
  attributes give (memory clock x bus width x 2);
- max_abs_diff between the GPU's map and numpy's (QP).
The GPU "pays off" at a size where map_ms < numpy_ms: the pipeline pays map_ms for the GPU path.
`--save-frames` writes the first two frames' luma of the shared test clips for the parity test
(`EDGE_SEMVC_REAL_FRAMES`) on a machine without PyAV or the clips.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..analysis import Analyser
from ..analysis.config import AnalysisConfig
from ..frame import Frame, mb_grid
from ..qp.config import QpConfig
from ..qp.qpmap import build_qp_map, importance_vector
from ..values import LabelMap

NAMED = {"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080), "1440p": (2560, 1440),
         "4k": (3840, 2160), "2160p": (3840, 2160)}
CLASSES = ["background", "person", "face", "text", "vehicle"]
# Clips of ../shared/data/video for --save-frames: a CIF sequence, a size that is not a
# multiple of 16, and 1080p.
CLIPS = ("foreman_cif.h264", "drone_karma_coast_854x480.mp4", "road_traffic_signs_1080p.h264")


def parse_sizes(text: str) -> list[tuple[str, int, int]]:
    out = []
    for item in filter(None, (s.strip().lower() for s in text.split(","))):
        if item in NAMED:
            out.append((item, *NAMED[item]))
            continue
        w, sep, h = item.partition("x")
        if not (sep and w.isdigit() and h.isdigit() and int(w) >= 2 and int(h) >= 2
                and int(w) % 2 == 0 and int(h) % 2 == 0):
            raise argparse.ArgumentTypeError(
                f"{item!r} is not a size: {', '.join(NAMED)} or WxH (even)")
        out.append((item, int(w), int(h)))
    if not out:
        raise argparse.ArgumentTypeError("no size given")
    return out


def frame_of(y: np.ndarray, index: int = 0) -> Frame:
    h, w = y.shape
    chroma = np.full(((h + 1) // 2, (w + 1) // 2), 128, np.uint8)  # not read by the map
    return Frame(y, chroma, chroma, index, Fraction(1, 25), index)


def scene(width: int, height: int, seed: int = 0) -> tuple[list[Frame], LabelMap]:
    """Two frames (a textured picture and the same after a 3x2-pixel pan, each with sensor
    noise) and the labels: a person with a face, a vehicle."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height + 2, 0:width + 3].astype(np.float32)
    picture = (110 + 50 * np.sin(xx / 37) * np.cos(yy / 23) + 40 * xx / width
               + rng.normal(0, 14, xx.shape) * (xx > width / 2))
    frames = []
    for i, (dy, dx) in enumerate(((0, 0), (2, 3))):
        y = picture[dy:dy + height, dx:dx + width] + rng.normal(0, 2, (height, width))
        frames.append(frame_of(np.clip(y, 0, 255).astype(np.uint8), i))
    mb_w, mb_h = mb_grid(width, height)
    labels = np.zeros((mb_h, mb_w), np.int16)

    def box(cls, x0, y0, x1, y1):
        labels[int(y0 * mb_h):max(int(y1 * mb_h), int(y0 * mb_h) + 1),
               int(x0 * mb_w):max(int(x1 * mb_w), int(x0 * mb_w) + 1)] = cls

    box(1, 0.20, 0.30, 0.34, 0.92)  # person
    box(2, 0.23, 0.32, 0.31, 0.45)  # face
    box(4, 0.60, 0.55, 0.86, 0.80)  # vehicle
    probs = np.zeros((len(CLASSES) - 1, mb_h, mb_w), np.float32)
    return frames, LabelMap(probs, CLASSES, labels, ["synthetic"])


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples), 4)


def time_numpy(frames: list[Frame], labels: LabelMap, repeats: int) -> tuple[float, np.ndarray]:
    cfg, analyser = QpConfig(), Analyser(AnalysisConfig())
    importance = importance_vector(CLASSES, cfg)
    analyser.analyse(frames[1], labels)
    times, qp = [], None
    for i in range(repeats + 1):  # the first is a warm-up
        t = time.perf_counter()
        qp = build_qp_map(analyser.analyse(frames[i % 2], labels), labels, importance, cfg)
        if i:
            times.append((time.perf_counter() - t) * 1e3)
    return _median_ms(times), qp.offsets


def time_gpu(mapper, frames: list[Frame], labels: LabelMap, repeats: int,
             last: int) -> dict:
    """`last`: which frame the numpy run ended on, so both maps compare the same step."""
    cfg, analysis = QpConfig(), AnalysisConfig()
    importance = importance_vector(CLASSES, cfg)
    mapper.reset()
    gpu = mapper.gpu
    kernels, uploads, maps = [], [], []
    with gpu.activate():
        for i in range(3):  # warm-up: allocation, first launches
            mapper.map(frames[i % 2], labels, importance, cfg, analysis)
        for i in range(repeats):
            with gpu.timed() as up:
                mapper.upload(frames[i % 2].y, labels.labels, importance)
            with gpu.timed() as k:
                mapper.launch(cfg, analysis)
            uploads += up
            kernels += k
        mapper.map(frames[1 - last], labels, importance, cfg, analysis)
        for i in range(repeats):
            t = time.perf_counter()
            mapper.map(frames[i % 2], labels, importance, cfg, analysis)
            maps.append((time.perf_counter() - t) * 1e3)
        mapper.map(frames[1 - last], labels, importance, cfg, analysis)
        offsets = mapper.map(frames[last], labels, importance, cfg, analysis).offsets
    return {"kernels_ms": _median_ms(kernels), "upload_ms": _median_ms(uploads),
            "map_ms": _median_ms(maps), "offsets": offsets}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(sizes, repeats: int, cpu_repeats: int, backend: str | None, cpu_only: bool) -> dict:
    from ..qp.cuda import CudaQpMapper, traffic

    mapper = None if cpu_only else CudaQpMapper(backend)
    report: dict = {"cpu": cpu_name(), "repeats": repeats, "cpu_repeats": cpu_repeats,
                    "sizes": []}
    bw = None
    if mapper is not None:
        bw = mapper.bandwidth()
        report["gpu"] = {"launcher": mapper.describe(), **mapper.gpu.versions, **bw}
    for name, w, h in sizes:
        frames, labels = scene(w, h)
        mb_w, mb_h = mb_grid(w, h)
        numpy_ms, ref = time_numpy(frames, labels, cpu_repeats)
        moved = traffic(w, h)
        row = {"size": name, "width": w, "height": h, "macroblocks": mb_w * mb_h,
               "numpy_ms": numpy_ms, "bytes": moved}
        if mapper is not None:
            g = time_gpu(mapper, frames, labels, repeats, last=cpu_repeats % 2)
            row.update({k: v for k, v in g.items() if k != "offsets"})
            row["max_abs_diff"] = float(np.abs(g["offsets"] - ref).max())
            row["parity_ok"] = row["max_abs_diff"] <= 1e-3
            if bw and bw["bytes_per_s"] > 0:
                row["floor_us"] = {k: round(moved[k] / bw["bytes_per_s"] * 1e6, 3)
                                   for k in ("compulsory", "kernels")}
            row["gpu_pays_off"] = row["map_ms"] < numpy_ms
        report["sizes"].append(row)
        _print_row(row)
    report["gpu_pays_off_from"] = pays_off_from(report["sizes"])
    return report


def pays_off_from(rows: list[dict]) -> str | None:
    """The smallest size from which the GPU map is faster at every larger size measured."""
    found = None
    for r in sorted(rows, key=lambda r: r["macroblocks"], reverse=True):
        if not r.get("gpu_pays_off"):
            break
        found = r["size"]
    return found


def _print_row(r: dict) -> None:
    b = r["bytes"]
    line = (f"{r['size']:>6} ({r['width']}x{r['height']}, {r['macroblocks']} macroblocks): "
            f"numpy {r['numpy_ms']} ms")
    if "map_ms" in r:
        floor = r.get("floor_us", {})
        line += (f" | GPU map {r['map_ms']} ms (kernels {r['kernels_ms']} ms, upload "
                 f"{r['upload_ms']} ms) | bytes {b['compulsory']} compulsory, {b['kernels']} "
                 f"by the kernels; floor {floor.get('compulsory')} / {floor.get('kernels')} us"
                 f" | max diff {r['max_abs_diff']:.2e} QP"
                 f"{'' if r['parity_ok'] else ' (OVER 1e-3)'}"
                 f" | {'pays off' if r['gpu_pays_off'] else 'numpy faster'}")
    print(line, flush=True)


def save_frames(path: Path, video: Path) -> list[str]:
    """The first two frames' luma of each clip in CLIPS found under `video` into one .npz
    (`NAME_0`, `NAME_1`)."""
    from ..sources import open_source

    arrays = {}
    for clip in CLIPS:
        if not (video / clip).exists():
            continue
        src = open_source(str(video / clip))
        try:
            ys = [f.y.copy() for _, f in zip(range(2), src.frames())]
        finally:
            src.close()
        if len(ys) == 2:
            stem = clip.split(".")[0]
            arrays.update({f"{stem}_0": ys[0], f"{stem}_1": ys[1]})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return sorted(arrays)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.gpu_qp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=parse_sizes, default=parse_sizes("720p,1080p,4k"))
    p.add_argument("--repeats", type=int, default=100, help="GPU timings per size")
    p.add_argument("--cpu-repeats", type=int, default=20, help="numpy timings per size")
    p.add_argument("--backend", choices=("cupy", "pycuda"), help="default: pycuda, else CuPy")
    p.add_argument("--cpu-only", action="store_true", help="numpy timings only (no GPU)")
    p.add_argument("--json", help="write the report here (- for stdout)")
    p.add_argument("--save-frames", type=Path, metavar="NPZ",
                   help="write real luma pairs from --video and stop")
    p.add_argument("--video", type=Path,
                   default=Path(__file__).resolve().parents[3] / "shared" / "data" / "video")
    args = p.parse_args(argv)
    if args.save_frames:
        names = save_frames(args.save_frames, args.video)
        print(f"{args.save_frames}: {', '.join(names) or 'no clip found under ' + str(args.video)}")
        return 0 if names else 1
    from ..qp.cuda import CudaError

    try:
        report = run(args.sizes, args.repeats, args.cpu_repeats, args.backend, args.cpu_only)
    except CudaError as e:
        print(f"gpu_qp: error: {e} (--cpu-only times numpy alone)", file=sys.stderr)
        return 2
    if report.get("gpu"):
        print(f"GPU: {report['gpu']['launcher']}, "
              f"{report['gpu']['bytes_per_s'] / 1e9:.0f} GB/s; CPU: {report['cpu']}; "
              f"GPU pays off from: {report['gpu_pays_off_from'] or 'no size measured'}")
    else:
        print(f"CPU: {report['cpu']}")
    if args.json == "-":
        json.dump(report, sys.stdout, indent=2)
        print()
    elif args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if any(r.get("parity_ok") is False for r in report["sizes"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
