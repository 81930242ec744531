"""Periodic intra refresh against periodic IDRs on a narrow link: how far the bit rate over
100 ms windows overshoots the CBR target (what a radio link's buffer has to absorb), at the
same refresh/IDR interval, CBR rate and low-latency settings.

    python -m edge_semvc.bench.intra_refresh CLIP... --rates 500 1000 2000 --gop-s 1

Plain x264 (no map: the rate control itself), preset veryfast, tune zerolatency, CBR with a
1 s VBV buffer. A window is the nearest whole number of frames to 100 ms (at least one),
sliding by one frame; its rate is its bits over its duration. Figures are over the steady
state, from the second interval on (both modes start with one IDR). Clips shorter than
``--seconds`` are played forwards and backwards until they last that long (no jump where it
turns), so short clips still hold several intervals. Y-PSNR of the decoded stream against
the source says what the refresh costs in quality at the same rate.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..encoders import ENCODERS, get_encoder
from ..encoders.base import EncoderSettings
from ..frame import Frame
from ..sources import open_source
from .metrics import psnr
from .static_clip import ping_pong

WINDOW_S = 0.1
MIN_INTERVALS = 5  # steady-state intervals below which a row says "too little data"


def clip_frames(clip: str, seconds: float) -> tuple[list[Frame], Fraction, int]:
    """The clip's frames, played forwards and backwards to last ``seconds`` when shorter; its
    frame rate and how many frames it has."""
    src = open_source(clip)
    try:
        frames, fps = list(src.frames()), src.fps
    finally:
        src.close()
    total = max(len(frames), round(seconds * fps))
    order = ping_pong(len(frames), total) if total > len(frames) else range(total)
    tb = 1 / fps
    return [Frame(frames[k].y, frames[k].u, frames[k].v, n, tb, n)
            for n, k in enumerate(order)], fps, len(frames)


def encode(frames: list[Frame], fps: Fraction, kbps: int, keyint: int, refresh: bool,
           preset: str) -> list[bytes]:
    f = frames[0]
    s = EncoderSettings(width=f.width, height=f.height, fps=fps, time_base=1 / fps, rc="cbr",
                        bitrate=kbps * 1000, preset=preset, tune="zerolatency", keyint=keyint,
                        intra_refresh=refresh)
    out = []
    with get_encoder("x264")(s) as enc:
        for frame in frames:
            out += [p.data for p in enc.encode(frame)]
        out += [p.data for p in enc.flush()]
    return out


def window_ratios(sizes: list[int], fps: Fraction, kbps: int, start: int) -> np.ndarray:
    """Rate over each sliding window of about 100 ms from frame ``start`` on, / the target."""
    n = max(1, round(WINDOW_S * float(fps)))
    bits = np.convolve(np.asarray(sizes[start:], float) * 8, np.ones(n), "valid")
    return bits / (n / float(fps)) / (kbps * 1000)


def mean_psnr(packets: list[bytes], frames: list[Frame]) -> float:
    with av.open(io.BytesIO(b"".join(packets)), format="h264") as c:
        decoded = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]  # no range change
    if len(decoded) != len(frames):
        raise RuntimeError(f"decoded {len(decoded)} pictures of {len(frames)}")
    return float(np.mean([psnr(f.y, d[:f.height]) for f, d in zip(frames, decoded)]))


def bench_clip(clip: str, rates: list[int], gop_s: float, seconds: float, preset: str,
               log) -> dict:
    frames, fps, source_frames = clip_frames(clip, seconds)
    keyint = max(2, round(gop_s * float(fps)))
    n = max(1, round(WINDOW_S * float(fps)))
    steady = (len(frames) - keyint) / keyint
    result = {"clip": Path(clip).name, "size": f"{frames[0].width}x{frames[0].height}",
              "fps": round(float(fps), 3), "source_frames": source_frames,
              "frames": len(frames), "keyint": keyint,
              "window_ms": round(1000 * n / float(fps)), "steady_intervals": round(steady, 1),
              "too_little_data": steady < MIN_INTERVALS, "rows": []}
    for kbps in rates:
        row = {"kbps": kbps}
        for mode, refresh in (("idr", False), ("refresh", True)):
            packets = encode(frames, fps, kbps, keyint, refresh, preset)
            sizes = [len(p) for p in packets]
            w = window_ratios(sizes, fps, kbps, keyint)
            row[mode] = {"peak": round(float(w.max()), 2),
                         "p99": round(float(np.percentile(w, 99)), 2),
                         "mean": round(sum(sizes[keyint:]) * 8 * float(fps)
                                       / (len(sizes) - keyint) / (kbps * 1000), 3),
                         "psnr": round(mean_psnr(packets, frames), 2)}
            log(f"  {kbps} kbit/s {mode}: {row[mode]}")
        result["rows"].append(row)
    return result


def markdown(results: list[dict]) -> str:
    lines = ["| clip (window) | CBR kbit/s | peak / target: IDRs → refresh | 99th pct: IDRs → "
             "refresh | mean / target: IDRs / refresh | Y-PSNR dB: IDRs / refresh |",
             "|---|---|---|---|---|---|"]
    for r in results:
        played = (f"{r['frames']} fr" if r["frames"] == r["source_frames"] else
                  f"{r['source_frames']} fr played to {r['frames']}")
        name = (f"{r['clip']} {r['size']} @ {r['fps']:g} fps, {played}, keyint {r['keyint']} "
                f"({r['window_ms']} ms)")
        if r["too_little_data"]:
            name += f" — too little data ({r['steady_intervals']} intervals)"
        for row in r["rows"]:
            i, f = row["idr"], row["refresh"]
            lines.append(f"| {name} | {row['kbps']} | {i['peak']:.2f} → {f['peak']:.2f} | "
                         f"{i['p99']:.2f} → {f['p99']:.2f} | {i['mean']:.2f} / {f['mean']:.2f} "
                         f"| {i['psnr']:.2f} / {f['psnr']:.2f} |")
            name = "″"
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("clips", nargs="+", metavar="CLIP")
    p.add_argument("--rates", nargs="+", type=int, default=[500, 1000, 2000],
                   help="CBR targets, kbit/s")
    p.add_argument("--gop-s", type=float, default=1.0,
                   help="IDR interval = intra refresh period, seconds")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="shorter clips are played forwards and backwards to this length")
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    why = ENCODERS.why_unavailable("x264")
    if why is not None:
        p.error(f"x264 is not available here: {why}")

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    results = []
    for clip in args.clips:
        log(clip)
        results.append(bench_clip(clip, args.rates, args.gop_s, args.seconds, args.preset, log))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
