"""Which frames a calibration reads: N spread evenly over folders of images and video clips
(anything `encode` reads), loaded as Frames, and listed in `<model>.int8.frames.txt` so a
calibration can be repeated and held-out frames chosen (`tools/calibrate.py`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import LabelerError
from ..frame import Frame

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class FrameRef:
    """One calibration frame: a clip and its frame index, or an image file (index None)."""

    source: str
    index: int | None = None

    def line(self) -> str:
        return self.source if self.index is None else f"{self.source}\t{self.index}"


# ---- frames --------------------------------------------------------------------------------

def _image_frame(path: Path, index: int) -> Frame:
    from PIL import Image

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2  # I420 needs even sizes
    if h < 2 or w < 2:
        raise LabelerError(f"{path}: image too small ({rgb.shape[1]}x{rgb.shape[0]})")
    return Frame.from_rgb(np.ascontiguousarray(rgb[:h, :w]), index, Fraction(1, 25), index)


def _open_clip(source: str, raw=None):
    """Open a clip; geometry options apply to raw video only. A raw .yuv without them takes its
    geometry from a name like `clip_320x192_12fps_yuv420p.yuv`."""
    from ..sources import RawVideoOptions, open_source
    from ..sources.pyav import RAW_EXTENSIONS

    if Path(source).suffix.lower() not in RAW_EXTENSIONS:
        return open_source(source)
    if raw is None:
        size = re.search(r"(\d+)x(\d+)", Path(source).name)
        rate = re.search(r"(\d+)fps", Path(source).name)
        if size and rate:
            raw = RawVideoOptions(int(size[1]), int(size[2]), Fraction(int(rate[1])))
    return open_source(source, raw)


def _evenly(total: int, n: int) -> list[int]:
    if total <= 0 or n <= 0:
        return []
    if n >= total:
        return list(range(total))
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, n)})


def _clip_count(source: str, raw) -> int:
    src = _open_clip(source, raw)
    try:
        if src.frame_count:
            return src.frame_count
        return sum(1 for _ in src.frames())
    finally:
        src.close()


def select_frames(sources: list[str], count: int, raw=None,
                  exclude: set[FrameRef] | frozenset = frozenset()) -> list[FrameRef]:
    """`count` frames spread evenly over the sources (split equally between them), skipping
    `exclude`. A source is a folder of images or a clip/URI."""
    if not sources:
        raise LabelerError("no frame source given")
    cands_by_source = []
    for source in sources:
        p = Path(source)
        if "://" not in source and p.exists():
            source = str(p.resolve())  # frame lists name files unambiguously
            p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise LabelerError(f"{source}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            cands = [FrameRef(str(f)) for f in files]
        else:
            if "://" not in source and not p.exists():
                raise LabelerError(f"frame source not found: {source}")
            cands = [FrameRef(source, i) for i in range(_clip_count(source, raw))]
        cands_by_source.append([c for c in cands if c not in exclude])
    # An equal share per source; what a short source cannot give goes to the others.
    per = [0] * len(sources)
    left = count
    while left > 0:
        open_ = [i for i, c in enumerate(cands_by_source) if per[i] < len(c)]
        if not open_:
            break
        share = max(1, left // len(open_))
        for i in open_:
            take = min(share, len(cands_by_source[i]) - per[i], left)
            per[i] += take
            left -= take
            if left == 0:
                break
    refs: list[FrameRef] = []
    for cands, n in zip(cands_by_source, per):
        refs += [cands[i] for i in _evenly(len(cands), n)]
    return refs


def load_frames(refs: list[FrameRef], raw=None):
    """Yield (ref, Frame) for the references, decoding each clip once, in order."""
    by_clip: dict[str, set[int]] = {}
    for r in refs:
        if r.index is not None:
            by_clip.setdefault(r.source, set()).add(r.index)
    for i, r in enumerate(refs):
        if r.index is None:
            yield r, _image_frame(Path(r.source), i)
    for source, wanted in by_clip.items():
        src = _open_clip(source, raw)
        try:
            last = max(wanted)
            for f in src.frames():
                if f.index in wanted:
                    yield FrameRef(source, f.index), f
                if f.index >= last:
                    break
        finally:
            src.close()


def read_frames_list(path: Path) -> list[FrameRef]:
    out = []
    for line in Path(path).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        src, _, idx = line.partition("\t")
        out.append(FrameRef(src, int(idx) if idx else None))
    return out


# ---- the model and its adapter ---------------------------------------------------------------
