"""Quality metrics on decoded planes. Region metrics take a macroblock mask and expand it."""
from __future__ import annotations

import warnings

import numpy as np

from ..frame import MB
from ..labeler.decoders import box_iou, match_counts  # noqa: F401 (part of this module's API)


def mb_mask_to_pixels(mb_mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """bool[mb_h, mb_w] -> bool[H, W] (each macroblock flag covers its 16x16 pixels, cropped)."""
    return np.repeat(np.repeat(mb_mask.astype(bool), MB, 0), MB, 1)[:height, :width]


def mse(ref: np.ndarray, dist: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error over all pixels, or over the pixels where `mask` (bool[H, W]) is set."""
    if ref.shape != dist.shape:
        raise ValueError(f"shape mismatch: reference {ref.shape} vs distorted {dist.shape}")
    d = ref.astype(np.float64) - dist.astype(np.float64)
    if mask is not None:
        d = d[mask]
        if d.size == 0:
            return float("nan")
    return float(np.mean(d * d))


def psnr_from_mse(m: float, peak: float = 255.0) -> float:
    if np.isnan(m):
        return float("nan")
    return float("inf") if m == 0 else float(10.0 * np.log10(peak * peak / m))


def psnr(ref: np.ndarray, dist: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Y-PSNR in dB (8-bit peak), optionally restricted to a pixel mask."""
    return psnr_from_mse(mse(ref, dist, mask))


def f1_score(tp: int, fp: int, fn: int) -> float:
    """F1 from counts; 1.0 when there was nothing to find and nothing was found."""
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def bd_rate(rate_anchor, dist_anchor, rate_test, dist_test,
            min_span: float = 0.0) -> tuple[float | None, str]:
    """Bjontegaard delta rate (%, akima) of test against anchor; (None, reason) when the
    curves cannot be compared (too few points, not monotonic, or a quality that varies by less
    than `min_span` over the ladder: then measurement noise decides the figure)."""
    import bjontegaard as bd

    points = [np.asarray(v, float) for v in (rate_anchor, dist_anchor, rate_test, dist_test)]
    if any(len(p) < 2 or not np.all(np.isfinite(p)) for p in points):
        return None, "fewer than 2 finite points"
    span = min(np.ptp(points[1]), np.ptp(points[3]))
    if span < min_span:
        return None, f"varies by only {span:.3f} over the ladder"
    for rate, dist in ((points[0], points[1]), (points[2], points[3])):
        if np.any(np.diff(dist[np.argsort(rate)]) <= 0):
            return None, "quality does not rise strictly with rate"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = float(bd.bd_rate(*points, method="akima", min_overlap=0))
        except Exception as e:  # the package raises plain ValueError/AssertionError texts
            return None, str(e).splitlines()[0] if str(e) else type(e).__name__
    # BD-rate integrates over the quality range both curves share; where they share little,
    # the figure rests on extrapolation: say so.
    a, b = points[1], points[3]
    overlap = min(a.max(), b.max()) - max(a.min(), b.min())
    span = max(a.max() - a.min(), b.max() - b.min())
    if not np.isfinite(value):  # nothing shared to integrate over
        return None, f"the quality ranges do not overlap ({_range(a)} against {_range(b)})"
    note = "; ".join(str(w.message).split(".")[0] for w in caught
                     if "overlap" not in str(w.message))
    if span > 0 and overlap / span < 0.75:
        note = f"quality ranges overlap {100 * max(overlap, 0) / span:.0f} % only"
    return value, note


def _range(v: np.ndarray) -> str:
    return f"{v.min():.2f}-{v.max():.2f}"


def rate_at_f1(rates, f1s, target: float) -> tuple[float | None, str, float | None]:
    """Rate needed to reach detection F1 `target`: (rate, "", None), or (None, why, bound).

    F1 is not monotone in rate (detector noise), so the curve is first made monotone: sorted by
    rate, F1 becomes its running maximum. The rate is then interpolated linearly in log-rate
    between the two ladder points that bracket the target. Never extrapolated: "below ladder"
    when even the lowest rate reaches the target (bound: that rate, the need is at most it),
    "not reached" when the highest rate stays below it (bound: that rate, the need exceeds it)."""
    pairs = sorted((float(r), float(f)) for r, f in zip(rates, f1s)
                   if r is not None and f is not None and np.isfinite(r) and np.isfinite(f)
                   and r > 0)
    if not pairs:
        return None, "no points", None
    rate = np.array([r for r, _ in pairs])
    best = np.maximum.accumulate([f for _, f in pairs])
    above = np.flatnonzero(best >= target)
    if above.size == 0:
        return None, "not reached", float(rate[-1])
    i = int(above[0])
    if i == 0:
        return None, "below ladder", float(rate[0])
    t = (target - best[i - 1]) / (best[i] - best[i - 1])  # best[i - 1] < target <= best[i]
    log_rate = np.log(rate[i - 1]) + t * (np.log(rate[i]) - np.log(rate[i - 1]))
    return float(np.exp(log_rate)), "", None


def rate_saving(anchor: float | None, test: float | None) -> float | None:
    """Rate of `test` relative to `anchor` in percent (negative: fewer bits); None if either
    is missing."""
    if anchor is None or test is None or anchor <= 0:
        return None
    return 100.0 * (test / anchor - 1.0)


def roi_coverage(masks) -> tuple[float, float]:
    """(mean labelled macroblocks per frame, fraction of frames with any) of bool[mb_h, mb_w]
    masks, one a frame."""
    if not masks:
        return 0.0, 0.0
    return (float(np.mean([m.sum() for m in masks])),
            float(np.mean([bool(m.any()) for m in masks])))


# Detection F1 figures only where the independent detector finds >= 50 objects on the judged
# frames of the originals: one detection then moves F1 by at most about 0.01 (1 / 2N), a fifth
# of the step between the targets 0.9 and 0.95. Below, a figure is a handful of boxes (the car
# park: 11 cars on its 189 judged frames, where two detections made "+154 % bits to F1 0.9";
# the drone clip: 2 people).
F1_MIN_OBJECTS = 50


def f1_data_note(objects: int, minimum: int = F1_MIN_OBJECTS) -> str:
    """"" when `objects` reference boxes are enough for a detection-F1 figure, else
    "too little data: ..." with the count."""
    if objects >= minimum:
        return ""
    return f"too little data: {objects} reference objects on the judged frames (min {minimum})"


def roi_data_note(mbs_per_frame: float, frame_fraction: float, min_mbs: float,
                  min_frames: float) -> str:
    """"" when the ROI is big enough and frequent enough for an ROI-PSNR BD-rate, else
    "too little data: ..." with the figures."""
    if mbs_per_frame >= min_mbs and frame_fraction >= min_frames:
        return ""
    return (f"too little data: {mbs_per_frame:.1f} MB/frame (min {min_mbs:g}), ROI in "
            f"{100 * frame_fraction:.0f} % of frames (min {100 * min_frames:.0f} %)")
