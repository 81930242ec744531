"""What every encode of a clip is judged against, and the judging: the clip decoded once
(luma, a .y4m for VMAF, the region of interest from the semantic configuration's models on
every original frame, an independent detector's detections), then each encoded file decoded
as a player shows it and measured (PSNR over the frame, the ROI and the background, VMAF-NEG,
detection F1, the longest distance to a keyframe).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from ..config import Config
from ..frame import Frame
from ..labeler import Labeler
from ..sources import RawVideoOptions, open_source
from ..tools.models import ready_labeler
from .detector import GROUPS, YoloxDetector
from .metrics import f1_score, match_counts, mb_mask_to_pixels, psnr


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
    rate: str = ""  # the exact frame rate, e.g. "25/2"

    @property
    def duration(self) -> float:
        return len(self.luma) / self.fps


def roi_labeler(cfg: Config) -> Labeler:
    """The semantic run's models on every frame, in line (no budget, no carry): the region of
    interest is what is there, not what a budgeted run happened to label."""
    lab = dataclasses.replace(cfg.labeler, cpu_budget=0.0, interval=1, models=[
        {**m, "interval": 1} if isinstance(m, dict) else {"name": m, "interval": 1}
        for m in cfg.labeler.models])
    return ready_labeler(lab, cfg.cache_dir(), log=lambda *_: None)


def read_reference(clip: str, raw: RawVideoOptions | None, workdir: Path, max_frames: int,
                   detector: YoloxDetector | None, eval_every: int, log,
                   labeler: Labeler | None = None) -> ClipReference:
    """Decode the clip once: keep the luma, write a .y4m for VMAF, detect on the originals and
    label them (`labeler`: the ROI mask)."""
    src = open_source(clip, raw)
    ref = ClipReference(clip, src.width, src.height, float(src.fps), rate=str(src.fps))
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
                if labeler:
                    ref.roi.append(labeler.label(frame).labels > 0)
                if detector and frame.index % eval_every == 0:
                    ref.truth[frame.index] = detector.detect(frame)
        finally:
            src.close()
    log(f"{Path(clip).name}: {len(ref.luma)} frames {src.width}x{src.height}"
        + (f", {sum(len(b) for d in ref.truth.values() for b in d.values())} reference "
           f"detections on {len(ref.truth)} frames" if detector else ""))
    return ref


def decoded_frames(path: str, fps: float):
    """(frame, keyframe) as a player shows them at the source's frame rate: a frame the
    encoder left out (the storage profile's dynamic frame rate) shows the one before it, so
    each source frame is judged against what is on screen at its time."""
    shown, start = None, None
    with av.open(path) as c:
        for f in c.decode(video=0):
            start = f.time if start is None else start
            index = round((f.time - start) * fps)
            frame = Frame.from_i420(f.to_ndarray(format="yuv420p"), f.width, f.height, f.pts,
                                    1, index)
            while shown is not None and shown[0].index + 1 < index:  # held
                held = shown[0]
                shown = (Frame(held.y, held.u, held.v, held.pts, 1, held.index + 1), False)
                yield shown
            shown = (frame, bool(f.key_frame))
            yield shown


def longest_seek(keyframes: list[bool], fps: float) -> float | None:
    """Seconds from the farthest frame back to the keyframe a decoder must start at (the
    longest GOP, counted in shown frames)."""
    starts = [i for i, k in enumerate(keyframes) if k] + [len(keyframes)]
    return round(max(b - a for a, b in zip(starts, starts[1:])) / fps, 3) if keyframes else None


def evaluate(path: str, ref: ClipReference, detector: YoloxDetector | None,
             vmaf: bool) -> dict:
    """Quality of one encoded file against the reference."""
    whole, roi, background = [], [], []
    counts = {g: np.zeros(3, int) for g in GROUPS}
    n = 0
    keyframes = []
    for frame, keyframe in decoded_frames(path, ref.fps):
        keyframes.append(keyframe)
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
    out = {"psnr": _mean(whole), "psnr_roi": _mean(roi), "psnr_background": _mean(background),
           "longest_seek_s": longest_seek(keyframes, ref.fps)}
    if detector:
        total = sum(counts.values())
        out["f1"] = round(f1_score(*total), 4)
        out.update({f"f1_{g}": round(f1_score(*c), 4) for g, c in counts.items()})
    if vmaf:
        from .vmaf import vmaf_neg
        out["vmaf"] = vmaf_neg(path, ref.y4m, ref.rate)
    return out


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else None
