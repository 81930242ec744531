"""VMAF (NEG model) through the static FFmpeg with libvmaf that `imageio-ffmpeg` ships.

An evaluation extra (GPLv3 binary), never a run-time dependency of the encoder.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

MODEL = "vmaf_v0.6.1neg"


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def vmaf_available() -> tuple[bool, str]:
    try:
        exe = _ffmpeg()
    except Exception as e:  # ImportError, or the package's own "no binary" error
        return False, f"imageio-ffmpeg: {e}"
    filters = subprocess.run([exe, "-hide_banner", "-filters"], capture_output=True, text=True)
    if "libvmaf" not in filters.stdout:
        return False, f"{exe} has no libvmaf filter"
    return True, ""


def vmaf_neg(distorted: str, reference: str, rate: str = "", threads: int = 2) -> float:
    """Mean VMAF-NEG of `distorted` against `reference`, frame by frame in decode order
    (timestamps are renumbered, so container offsets and edit lists cannot misalign them).
    `rate` (e.g. "25/2"): the reference's frame rate; frames `distorted` leaves out (a dynamic
    frame rate) are then shown as the frame before, as a player does."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "vmaf.json"
        hold = f"fps={rate}," if rate else ""
        graph = (f"[0:v]{hold}setpts=N/FRAME_RATE/TB[d];[1:v]setpts=N/FRAME_RATE/TB[r];"
                 f"[d][r]libvmaf=model=version={MODEL}:n_threads={threads}:log_fmt=json:"
                 f"log_path={log}")
        r = subprocess.run([_ffmpeg(), "-hide_banner", "-nostats", "-loglevel", "error",
                            "-i", distorted, "-i", reference, "-lavfi", graph, "-f", "null", "-"],
                           capture_output=True, text=True)
        if r.returncode != 0 or not log.exists():
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"VMAF of {distorted} failed: {last}")
        return round(json.loads(log.read_text())["pooled_metrics"]["vmaf"]["mean"], 3)
