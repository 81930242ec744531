"""The encoder a user would otherwise run: FFmpeg's libx264 through PyAV, same preset, tune and
rate control as our x264 backend, fed the same decoded frames (new frames, so no picture type
is inherited: see FACTS.md on PyAV's pict_type trap)."""
from __future__ import annotations

import time
from pathlib import Path

import av
import numpy as np

from ..config import EncoderConfig
from ..sources import Source


def ffmpeg_options(e: EncoderConfig) -> tuple[dict[str, str], int | None]:
    """(libx264 codec options, stream bit_rate) equivalent to our backend's settings."""
    opts = {"preset": e.preset}
    if e.tune:
        opts["tune"] = e.tune
    if e.keyint:
        opts["g"] = str(e.keyint)
    bit_rate = None
    rc = e.rate_control()
    if rc == "crf":
        opts["crf"] = f"{e.crf:g}"
        if e.bitrate:
            opts.update(maxrate=str(e.bitrate), bufsize=str(e.bitrate))
    else:
        bit_rate = e.bitrate
        if rc == "cbr":
            opts.update(maxrate=str(e.bitrate), bufsize=str(e.bitrate))
    if e.params:
        opts["x264-params"] = ":".join(f"{k}={v}" for k, v in e.params.items())
    return opts, bit_rate


def encode_with_ffmpeg(source: Source, output: str, e: EncoderConfig, max_frames: int = 0) -> dict:
    """Decode `source` and encode it with PyAV's libx264; returns frames, bytes, fps."""
    opts, bit_rate = ffmpeg_options(e)
    t0 = time.perf_counter()
    frames = 0
    with av.open(output, "w") as out:
        stream = out.add_stream("libx264", rate=source.fps)
        stream.width, stream.height, stream.pix_fmt = source.width, source.height, "yuv420p"
        stream.time_base = source.time_base
        stream.codec_context.time_base = source.time_base
        if bit_rate:
            stream.bit_rate = bit_rate
        stream.options = opts
        for frame in source.frames():
            if max_frames and frames >= max_frames:
                break
            buf = np.concatenate([frame.y.ravel(), frame.u.ravel(), frame.v.ravel()])
            vf = av.VideoFrame.from_ndarray(buf.reshape(-1, frame.width), format="yuv420p")
            vf.pts, vf.time_base = frame.pts, frame.time_base
            out.mux(stream.encode(vf))
            frames += 1
        out.mux(stream.encode())
    wall = time.perf_counter() - t0
    return {"frames": frames, "bytes": Path(output).stat().st_size,
            "fps": round(frames / wall, 3) if wall else 0.0, "encoder": {"ffmpeg_libx264": opts}}
