"""Value types that cross stage boundaries: LabelMap, RegionStats, QpMap, Rect, LinkReport.

Stages exchange these and nothing else (DESIGN.md). All arrays are at macroblock resolution
([mb_h, mb_w]); class axis first where there is one.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BACKGROUND = "background"


@dataclass
class LabelMap:
    """What is where: per-class probability per macroblock and the thresholded arg-max label.

    `labels[y, x]` indexes `classes`; index 0 is always `background` (no class above threshold).
    """

    probs: np.ndarray  # float32[len(classes) - 1, mb_h, mb_w], classes[1:] in order
    classes: list[str]  # ["background", "person", "face", ...]
    labels: np.ndarray  # int16[mb_h, mb_w]
    models: list[str] = field(default_factory=list)

    @classmethod
    def from_probs(cls, probs: np.ndarray, names: list[str], threshold: float, models: list[str]):
        """Arg-max over classes whose probability exceeds `threshold` (METHOD S110); else
        background.

        Ties and overlaps go to the higher probability; a face inside a person wins where the
        face model is more confident, which is what the importance table expects.
        """
        probs = np.asarray(probs, np.float32)
        if len(names) != probs.shape[0]:
            raise ValueError(f"{probs.shape[0]} probability planes for {len(names)} class names")
        if probs.shape[0] == 0:
            labels = np.zeros(probs.shape[1:], np.int16)
        else:
            best = probs.argmax(axis=0)
            above = np.take_along_axis(probs, best[None], 0)[0] > threshold
            labels = np.where(above, best + 1, 0).astype(np.int16)
        return cls(probs, [BACKGROUND, *names], labels, list(models))

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape

    def coverage(self) -> dict[str, float]:
        """Fraction of macroblocks carrying each label (background included)."""
        counts = np.bincount(self.labels.ravel(), minlength=len(self.classes))
        return {name: float(c) / self.labels.size for name, c in zip(self.classes, counts)}


@dataclass
class RegionStats:
    """How each macroblock looks and changes, and the per-region aggregates (METHOD S120).

    `complexity` (C) and `change` (V) are normalised to [0, 1]. `region_*` hold the value of the
    labelled region each macroblock belongs to (the mean over that region's macroblocks), which is
    what the policy uses: the method assigns one Q per region.
    """

    complexity: np.ndarray  # float32[mb_h, mb_w]
    change: np.ndarray  # float32[mb_h, mb_w]
    region_complexity: np.ndarray  # float32[mb_h, mb_w]
    region_change: np.ndarray  # float32[mb_h, mb_w]
    # int32[mb_h, mb_w] region id (a connected labelled component; 0 = background)
    regions: np.ndarray
    reuse: np.ndarray | None = None
    index: int = 0  # the frame's number (Frame.index): the still refresh's phase


@dataclass
class QpMap:
    """Signed QP offset per macroblock, already clamped (negative = more bits)."""

    offsets: np.ndarray  # float32[mb_h, mb_w]

    @classmethod
    def from_rects(cls, rects: list[Rect], shape: tuple[int, int]) -> QpMap:
        """The map an encoder given ROI rectangles applies: 0 outside every one. Where they
        overlap the largest |delta| wins (ties: the negative one, more bits), so the result does
        not depend on their order, which encoders resolve differently (FACTS.md); the
        approximation `rects.to_rects` makes none that overlap."""
        out = np.zeros(shape, np.float32)
        for r in sorted(rects, key=lambda r: (abs(r.delta), -r.delta)):  # the strongest last
            out[r.y:r.y + r.h, r.x:r.x + r.w] = r.delta
        return cls(out)


@dataclass(frozen=True)
class Rect:
    """One ROI rectangle in macroblocks (x, y: top-left column and row) with its QP delta."""

    x: int
    y: int
    w: int
    h: int
    delta: float


@dataclass
class Modulation:
    """Per-macroblock terms of the method's extensions (METHOD embodiments 2-5), each None or
    empty when its analyser is off. The QP policy turns them into changes of Q
    (`extensions.py`); each is float32[mb_h, mb_w] unless said otherwise.

    attention: P_t = tanh(D), the recurrent network's predicted change (embodiment 2)
    emotion: E in [-1, 1], the emotion tendency of the faces there, 0 elsewhere (embodiment 3)
    scene: S in {0, 1}, the region changed beyond S_th (embodiment 4)
    data: (theta_k, D_k) per additional source: audio, subtitles, description (embodiment 5)
    """

    attention: np.ndarray | None = None
    emotion: np.ndarray | None = None
    scene: np.ndarray | None = None
    data: list[tuple[float, np.ndarray]] = field(default_factory=list)


@dataclass(frozen=True)
class LinkReport:
    """What an output knows of its link (SRT's acknowledgements, the RTSP server's clients'
    RTCP receiver reports), for the rate follower (`follow.py`): counts since the output's
    sender started (a restarted one starts them again), `seq` numbering the reports, so that
    a report is read once."""

    seq: int
    peers: int  # receivers it reports on (0: nobody connected, nothing to follow)
    rtt_ms: float  # the worst peer's smoothed round trip (RTSP: its last report's)
    sent: int  # data packets sent, resends included (RTSP: those its clients reported on)
    resent: int  # packets sent again (the receiver missed them; RTSP: the clients lost them)
    dropped: int  # packets given up as too late to arrive within the latency (RTSP: 0)
    silent: int = 0  # peers sent to since the last report that acknowledged nothing (RTSP:
    # whose report is overdue)
