"""CPU cost of the semantic encode against plain x264, side by side in one run.

    python -m edge_semvc.bench.cpu CLIP... [--frames N] [--repeats 3] [--set KEY=VALUE] [--json F]

Each clip is encoded by `edge-semvc encode` in a child process, alternately with the default
configuration (plus --set overrides) and with --no-map, `--repeats` times each; the CPU time of
each child (user + sys, all its threads) comes from the operating system. The figure is the ratio
of the medians (semantic / --no-map): the whole process, decoding and muxing included, so it is
what a device pays. Same encoder settings for both: CBR at 0.1 bit per pixel, veryfast,
zerolatency (the live setting).

Start-up (imports, the models' sessions, threads) is paid once, more by the semantic encode,
and a short clip's --no-map figure carries a larger share of it: so each side also encodes one
frame per repeat, and `ratio_per_frame` is the ratio of what each frame beyond the first costs
(medians of the differences), what a long recording pays.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def encode_cpu(clip: str, extra: list[str], frames: int, workdir: Path) -> tuple[float, dict]:
    """CPU seconds of one `edge-semvc encode` child process, and its statistics."""
    stats = workdir / "stats.json"
    cmd = [sys.executable, "-m", "edge_semvc", "encode", clip, str(workdir / "out.mp4"),
           "--stats-json", str(stats), "--progress", "off", "--tune", "zerolatency", *extra]
    if frames:
        cmd += ["--frames", str(frames)]
    before = _child_cpu()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {r.stderr.strip().splitlines()[-1:]}")
    return _child_cpu() - before, json.loads(stats.read_text())


def measure(clip: str, sets: list[str], frames: int, repeats: int) -> dict:
    from ..sources import open_source

    src = open_source(clip)
    rate = round(0.1 * src.width * src.height * float(src.fps))
    src.close()
    common = ["--rc", "cbr", "--bitrate", str(rate)]
    cpu = {"semantic": [], "no_map": []}
    start = {"semantic": [], "no_map": []}
    last = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):  # alternate, so drift in machine load hits both alike
            for kind, extra in (("semantic", [f"--set={s}" for s in sets]),
                                ("no_map", ["--no-map"])):
                seconds, last[kind] = encode_cpu(clip, common + extra, frames, Path(tmp))
                cpu[kind].append(seconds)
                start[kind].append(encode_cpu(clip, common + extra, 1, Path(tmp))[0])
    sem, base = (float(np.median(cpu[k])) for k in ("semantic", "no_map"))
    frames_done = last["semantic"]["frames"]
    sem_on, base_on = (float(np.median(np.subtract(cpu[k], start[k])))
                       for k in ("semantic", "no_map"))
    return {"clip": Path(clip).name, "size": f"{src.width}x{src.height}", "frames": frames_done,
            "cpu_s": {k: [round(v, 3) for v in vs] for k, vs in cpu.items()},
            "ms_per_frame": {"semantic": round(sem / frames_done * 1e3, 2),
                             "no_map": round(base / frames_done * 1e3, 2)},
            "ratio": round(sem / base, 3), "start_s": {k: round(float(np.median(v)), 3)
                                                        for k, v in start.items()},
            "ratio_per_frame": round(sem_on / base_on, 3),
            "labeler": last["semantic"].get("labeler", {})}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clips", nargs="+")
    p.add_argument("--frames", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    results = []
    print("| clip | size | frames | CPU ms/frame semantic | --no-map | ratio | start-up s "
          "semantic / --no-map | ratio beyond start-up | labeler runs (staleness mean/max) |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for clip in args.clips:
        r = measure(clip, args.set, args.frames, args.repeats)
        results.append(r)
        runs = ", ".join(f"{n}: {s['runs']} ({s['staleness_frames']['mean']}/"
                         f"{s['staleness_frames']['max']})" for n, s in r["labeler"].items())
        print(f"| {r['clip']} | {r['size']} | {r['frames']} | {r['ms_per_frame']['semantic']} | "
              f"{r['ms_per_frame']['no_map']} | {r['ratio']} | {r['start_s']['semantic']} / "
              f"{r['start_s']['no_map']} | {r['ratio_per_frame']} | {runs} |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
