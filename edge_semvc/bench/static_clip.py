"""A long static scene from a short clip: a quiet stretch played forwards and backwards
(so no jump where it turns) until it lasts as long as asked, written losslessly (FFV1 in
Matroska). Every frame keeps the camera's own sensor noise, so it is the case recorded
video is mostly made of: minutes where nothing happens.

    python -m edge_semvc.bench.static_clip overhead_parking_cars_768x432.mp4 quiet.mkv \\
        --start 110 --end 190 --seconds 120
"""
from __future__ import annotations

import argparse
import sys
from fractions import Fraction

import av
import numpy as np

from ..sources import open_source


def quiet_frames(clip: str, start: int, end: int) -> tuple[list[np.ndarray], Fraction, int, int]:
    """Frames start..end (inclusive) of `clip` as packed I420, its frame rate and size."""
    src = open_source(clip)
    frames = []
    try:
        for frame in src.frames():
            if frame.index > end:
                break
            if frame.index >= start:
                frames.append(np.concatenate([frame.y.ravel(), frame.u.ravel(), frame.v.ravel()]))
    finally:
        src.close()
    if len(frames) < 2:
        raise SystemExit(f"{clip}: frames {start}..{end} hold {len(frames)} frame(s); need 2+")
    return frames, src.fps, src.width, src.height


def ping_pong(count: int, total: int):
    """Indices 0, 1, .., count-1, count-2, .., 1, 0, 1, .. for `total` frames."""
    period = 2 * (count - 1)
    for i in range(total):
        k = i % period
        yield k if k < count else period - k


def write_static_clip(clip: str, output: str, start: int, end: int, seconds: float) -> int:
    frames, fps, width, height = quiet_frames(clip, start, end)
    total = round(seconds * fps)
    with av.open(output, "w") as out:
        stream = out.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for n, k in enumerate(ping_pong(len(frames), total)):
            picture = av.VideoFrame.from_ndarray(
                frames[k].reshape(height * 3 // 2, width), format="yuv420p")
            picture.pts = n
            picture.time_base = 1 / fps
            out.mux(stream.encode(picture))
        out.mux(stream.encode(None))
    return total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("clip")
    p.add_argument("output", help="a .mkv file (FFV1, lossless)")
    p.add_argument("--start", type=int, required=True, help="first frame of the quiet stretch")
    p.add_argument("--end", type=int, required=True, help="last frame of the quiet stretch")
    p.add_argument("--seconds", type=float, default=120.0, help="length (default 120)")
    args = p.parse_args(argv)
    if not 0 <= args.start < args.end or args.seconds <= 0:
        p.error("need 0 <= --start < --end and --seconds > 0")
    n = write_static_clip(args.clip, args.output, args.start, args.end, args.seconds)
    print(f"{args.output}: {n} frames", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
