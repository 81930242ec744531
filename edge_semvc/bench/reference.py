"""What every encode of a clip is judged against, and the judging: the clip (or a range of its
frames) decoded once (luma, a .y4m for VMAF, an independent detector's detections on every
original frame: the region of interest and the truth for F1; the semantic configuration's own
models on every original frame: a second ROI), then each encoded file decoded as a player shows
it and measured (PSNR over the frame, each ROI and the background, VMAF-NEG, detection F1, the
longest distance to a keyframe).

Two ROIs, because the map must not be graded with its own eyes: `psnr_roi` is over the boxes
of persons and vehicles the independent detector (YOLOX, not a model the encoder labels with)
finds on the originals; `psnr_roi_own` over the macroblocks the semantic configuration's models
label when they run on every original frame (no budget, no carry). The background is what lies
outside the independent ROI.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from ..config import Config
from ..errors import ConfigError
from ..frame import MB, Frame
from ..labeler import Labeler
from ..sources import RawVideoOptions, Source, open_source
from ..tools.models import ready_labeler
from .detector import GROUPS, YoloxDetector, box_mask
from .metrics import f1_score, match_counts, mb_mask_to_pixels, psnr


@dataclass
class ClipReference:
    """What every encode of one clip is compared with."""

    clip: str
    width: int
    height: int
    fps: float
    start: int = 0  # the clip's frame that is this reference's frame 0
    luma: list[np.ndarray] = field(default_factory=list)
    # the independent detector's boxes per frame (every frame: the ROI; F1 on every N-th)
    truth: list[dict[str, np.ndarray]] = field(default_factory=list)
    roi_own: list[np.ndarray] = field(default_factory=list)  # bool[mb_h, mb_w] per frame
    y4m: str = ""
    rate: str = ""  # the exact frame rate, e.g. "25/2"

    @property
    def duration(self) -> float:
        return len(self.luma) / self.fps

    def source(self, raw: RawVideoOptions | None) -> ClipRange:
        """The same frames again, for an encode."""
        return ClipRange(open_source(self.clip, raw), self.start, len(self.luma))

    def roi(self, i: int) -> np.ndarray | None:
        """bool[H, W]: frame i's independent ROI (None without a detector)."""
        return box_mask(self.truth[i], self.width, self.height) if self.truth else None

    def roi_macroblocks(self) -> list[np.ndarray]:
        """The independent ROI of every frame as macroblock counts (float[mb_h, mb_w]: the
        share of each macroblock inside it), for the ROI's coverage."""
        return [pixels_per_macroblock(self.roi(i)) for i in range(len(self.truth))]


def pixels_per_macroblock(mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    padded = np.zeros((-(-h // MB) * MB, -(-w // MB) * MB), np.float32)
    padded[:h, :w] = mask
    return padded.reshape(padded.shape[0] // MB, MB, -1, MB).mean(axis=(1, 3))


@dataclass(frozen=True)
class FrameSpan:
    """Which frames of a clip to judge: `start` and `count` in frames ("0" and "" mean from the
    first, to the end), or as percentages of the clip ("50%": the second half starts there)."""

    start: str = "0"
    count: str = ""

    def resolve(self, total: int | None) -> tuple[int, int | None]:
        """(first frame, frame count or None = to the end) for a clip of `total` frames."""
        def frames(text: str, what: str) -> int:
            share = text.endswith("%")
            try:
                value = float(text[:-1]) if share else int(text)
            except ValueError:
                raise ConfigError(f"{what} {text!r}: expected a frame count or a percentage "
                                  "such as 50%") from None
            if not share:
                return int(value)
            if total is None:
                raise ConfigError(f"{what} {text}: the clip's length is not known")
            return int(total * value / 100)
        start = frames(self.start or "0", "--start")
        count = frames(self.count, "--frames") if self.count not in ("", "0") else None
        if start < 0 or (count is not None and count < 1):
            raise ConfigError(f"--start {self.start!r} / --frames {self.count!r}: the start "
                              "must be >= 0 and the count >= 1")
        return start, count

    @property
    def relative(self) -> bool:
        return self.start.endswith("%") or self.count.endswith("%")


class ClipRange:
    """A Source: the frames [start, start + count) of another, numbered from 0 and with their
    timestamps starting at 0, so an encode of the range looks like an encode of its own clip."""

    def __init__(self, source: Source, start: int, count: int | None):
        self.source, self.start, self.count = source, start, count
        for name in ("width", "height", "fps", "time_base", "description"):
            setattr(self, name, getattr(source, name))
        known = max(source.frame_count - start, 0) if source.frame_count else None
        self.frame_count = min(x for x in (known, count) if x is not None) \
            if known is not None or count is not None else 0

    def frames(self) -> Iterator[Frame]:
        first_pts = None
        for frame in self.source.frames():
            n = frame.index - self.start
            if n < 0:
                continue
            if self.count is not None and n >= self.count:
                return
            if first_pts is None:
                first_pts = frame.pts or 0
            pts = None if frame.pts is None else frame.pts - first_pts
            yield Frame(frame.y, frame.u, frame.v, pts, frame.time_base, n)

    def close(self) -> None:
        self.source.close()


def open_range(clip: str, raw: RawVideoOptions | None, span: FrameSpan,
               total: int | None = None) -> ClipRange:
    """The clip's frames that `span` names (`total`: its length, for percentages)."""
    src = open_source(clip, raw)
    if span.relative and total is None:
        total = src.frame_count or None
        if total is None:  # a raw stream: count its frames once
            total = sum(1 for _ in src.frames())
            src.close()
            src = open_source(clip, raw)
    start, count = span.resolve(total)
    return ClipRange(src, start, count)


def roi_labeler(cfg: Config) -> Labeler:
    """The semantic run's models on every frame, in line (no budget, no carry): the region of
    interest is what is there, not what a budgeted run happened to label."""
    lab = dataclasses.replace(cfg.labeler, cpu_budget=0.0, interval=1, models=[
        {**m, "interval": 1} if isinstance(m, dict) else {"name": m, "interval": 1}
        for m in cfg.labeler.models])
    return ready_labeler(lab, cfg.cache_dir(), log=lambda *_: None)


def read_reference(clip: str, raw: RawVideoOptions | None, workdir: Path, span: FrameSpan,
                   detector: YoloxDetector | None, log,
                   labeler: Labeler | None = None) -> ClipReference:
    """Decode the clip's frames once: keep the luma, write a .y4m for VMAF, detect on the
    originals (the ROI and F1's truth) and label them (`labeler`: the own-models ROI)."""
    src = open_range(clip, raw, span)
    ref = ClipReference(clip, src.width, src.height, float(src.fps), src.start,
                        rate=str(src.fps))
    ref.y4m = str(workdir / f"{Path(clip).stem}.ref.y4m")
    with open(ref.y4m, "wb") as y4m:
        y4m.write(f"YUV4MPEG2 W{src.width} H{src.height} F{src.fps.numerator}:"
                  f"{src.fps.denominator} Ip A1:1 C420mpeg2 XCOLORRANGE=LIMITED\n".encode())
        try:
            for frame in src.frames():
                y4m.write(b"FRAME\n" + frame.y.tobytes() + frame.u.tobytes() + frame.v.tobytes())
                ref.luma.append(frame.y.copy())
                if labeler:
                    ref.roi_own.append(labeler.label(frame).labels > 0)
                if detector:
                    ref.truth.append(detector.detect(frame))
        finally:
            src.close()
    if not ref.luma:
        raise ConfigError(f"{clip}: no frames in the range --start {span.start} "
                          f"--frames {span.count or 'all'}")
    log(f"{Path(clip).name}: {len(ref.luma)} frames {src.width}x{src.height} from frame "
        f"{src.start}" + (f", {sum(len(b) for d in ref.truth for b in d.values())} reference "
                          f"detections" if detector else ""))
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
             vmaf: bool, eval_every: int = 1) -> dict:
    """Quality of one encoded file against the reference; detection F1 on every
    `eval_every`-th frame."""
    whole, roi, roi_own, background = [], [], [], []
    counts = {g: np.zeros(3, int) for g in GROUPS}
    n = 0
    keyframes = []
    for frame, keyframe in decoded_frames(path, ref.fps):
        keyframes.append(keyframe)
        i = frame.index
        if i >= len(ref.luma):
            break
        whole.append(psnr(ref.luma[i], frame.y))
        mask = ref.roi(i)
        if mask is not None:
            _region_psnr(ref.luma[i], frame.y, mask, roi)
            _region_psnr(ref.luma[i], frame.y, ~mask, background)
        if ref.roi_own:
            _region_psnr(ref.luma[i], frame.y,
                         mb_mask_to_pixels(ref.roi_own[i], ref.width, ref.height), roi_own)
        if detector and i % eval_every == 0:
            found = detector.detect(frame)
            for g in GROUPS:
                counts[g] += match_counts(ref.truth[i][g], found[g])
        n += 1
    if n != len(ref.luma):
        raise RuntimeError(f"{path} decodes to {n} frames, the source has {len(ref.luma)}")
    out = {"psnr": _mean(whole), **({"psnr_roi": _mean(roi),
                                      "psnr_background": _mean(background)} if ref.truth else {}),
           **({"psnr_roi_own": _mean(roi_own)} if ref.roi_own else {}),
           "longest_seek_s": longest_seek(keyframes, ref.fps)}
    if detector:
        total = sum(counts.values())
        out["f1"] = round(f1_score(*total), 4)
        out["f1_objects"] = int(total[0] + total[2])  # the reference's boxes judged (tp + fn)
        out.update({f"f1_{g}": round(f1_score(*c), 4) for g, c in counts.items()})
    if vmaf:
        from .vmaf import vmaf_neg
        out["vmaf"] = vmaf_neg(path, ref.y4m, ref.rate)
    return out


def _region_psnr(ref: np.ndarray, dist: np.ndarray, mask: np.ndarray, out: list) -> None:
    if mask.any():
        out.append(psnr(ref, dist, mask))


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else None
