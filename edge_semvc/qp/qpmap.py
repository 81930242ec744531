"""From per-region Q and class importance to the signed per-macroblock QP offsets x264 takes.

offset = q_gain * Q - gain * importance[label] (and, where the encoder has no lookahead, the
temporal terms: reuse, the still refresh), then shifted so the frame mean is
`target_mean` and clamped to [offset_min, offset_max]; gain is `importance_gain`, firmer on
frames with a small labelled area, milder on those with a large one, limited by
`importance_budget` (see `importance_gain`). Only differences between macroblocks matter to
the picture; the mean decides whether the map adds or saves bits at CRF (FACTS.md), so it is
pinned rather than left to the content.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..errors import ConfigError
from ..values import LabelMap, QpMap, RegionStats
from .config import QpConfig
from .policy import base_q

_BISECTIONS = 24  # at most; the shift's bracket is < 120 QP wide: 24 halvings leave < 1e-5 QP
_TOLERANCE = 0.005  # QP: how close the clamped mean must come to the target
# A camera is still when this share of its background macroblocks changes less than
# motion_low: from STILL_FROM (moving background counts for nothing) to STILL_FULL (fully).
STILL_FROM, STILL_FULL = 0.7, 0.9
# A still macroblock takes the whole still refresh from this many frames of expected reuse
# (analysis/temporal.py) on.
REFRESH_FULL_REUSE = 4.0


def importance_vector(classes: list[str], cfg: QpConfig) -> np.ndarray:
    """Importance per class index; a class the labeler emits but the table lacks is an error."""
    missing = [c for c in classes if c not in cfg.importance]
    if missing:
        raise ConfigError(f"qp.importance has no entry for class(es) {', '.join(missing)} "
                          f"(set e.g. --set qp.importance.{missing[0]}=0.5)")
    return np.array([cfg.importance[c] for c in classes], np.float32)


def build_qp_map(stats: RegionStats, labels: LabelMap, importance: np.ndarray,
                 cfg: QpConfig, adjust: Callable[[np.ndarray], np.ndarray] | None = None,
                 encoder_weighs_reuse: bool = False) -> QpMap:
    """`adjust`: what the method's extensions do to Q (embodiments 2-5), before the offsets.
    `encoder_weighs_reuse`: the encoder weighs blocks by their reuse itself (x264's mb-tree),
    so the map's temporal terms stay out (`map_weighs_reuse`)."""
    q = base_q(stats.region_complexity, stats.region_change, cfg)
    if adjust is not None:
        q = adjust(q)
    still = still_camera(labels.labels, stats.change, cfg)
    weight = macroblock_weight(labels.labels, stats.change, importance, cfg, still)
    raw = cfg.q_gain * q - importance_gain(weight, cfg) * weight
    if map_weighs_reuse(cfg, encoder_weighs_reuse) and stats.reuse is not None:
        raw = raw - cfg.reuse_gain * np.log2(1.0 + stats.reuse)
        if cfg.refresh_period and still > 0:
            raw = raw + still_refresh(stats.reuse, stats.index, cfg, still)
    return QpMap(pin_mean(raw, cfg.target_mean, cfg.offset_min, cfg.offset_max))


def still_camera(labels: np.ndarray, change: np.ndarray, cfg: QpConfig) -> float:
    """How far the camera is still, 0-1: 0 while under STILL_FROM of the background
    macroblocks change less than motion_low, 1 from STILL_FULL. On a moving camera every block
    moves and the background terms (moving background, still refresh) say nothing."""
    background = labels == 0
    if not background.any():
        return 0.0
    share = float((change[background] < cfg.motion_low).mean())
    return min(max((share - STILL_FROM) / (STILL_FULL - STILL_FROM), 0.0), 1.0)


def macroblock_weight(labels: np.ndarray, change: np.ndarray, importance: np.ndarray,
                      cfg: QpConfig, still: float) -> np.ndarray:
    """Importance per macroblock: its class's, plus, for a background macroblock that moves on
    a still camera (`still`: `still_camera`), up to `moving_background` (ramped over V from
    motion_low to motion_high): there a detector's labels miss or lag behind what moves (a
    person it did not find, a walker its carried box fell behind)."""
    weight = importance[labels]
    scale = cfg.moving_background * still
    if scale <= 0:
        return weight
    background = labels == 0
    moving = np.clip((change - cfg.motion_low) / np.float32(cfg.motion_high - cfg.motion_low),
                     0.0, 1.0)
    return np.where(background, weight + np.float32(scale) * moving, weight).astype(np.float32)


def map_weighs_reuse(cfg: QpConfig, encoder_weighs_reuse: bool) -> bool:
    """Whether the map's temporal terms (reuse, still refresh) apply: where the encoder
    has no lookahead to weigh reuse itself (`qp.reuse: auto`), always or never."""
    return cfg.reuse == "always" or (cfg.reuse == "auto" and not encoder_weighs_reuse)


def reuse_gain(cfg: QpConfig, encoder_weighs_reuse: bool) -> float:
    """QP per doubling of a macroblock's expected reuse, 0 where the term does not apply."""
    return cfg.reuse_gain if map_weighs_reuse(cfg, encoder_weighs_reuse) else 0.0


def refresh_period(cfg: QpConfig, encoder_weighs_reuse: bool) -> int:
    """Frames between a still macroblock's refreshes, 0 where the term is off."""
    return cfg.refresh_period if map_weighs_reuse(cfg, encoder_weighs_reuse) else 0


def still_refresh(reuse: np.ndarray, index: int, cfg: QpConfig, still: float) -> np.ndarray:
    """Still macroblocks refined once every `refresh_period` frames and held between.

    Coded at a steady QP, a still block's camera noise is coded again in every frame; x264's
    mb-tree (a lookahead, B-frames) codes the frames others reference finer and the rest
    coarser, which zerolatency turns off. Here each still macroblock gets `refresh_gain` QP
    less in its refresh frame and `refresh_hold` more in the others, where x264 mostly skips
    it: a copy of the refined block costs nothing. The refresh frames are staggered (x + 2y +
    frame), so every frame refreshes one in `refresh_period` of the still blocks, spread over
    its rows, and costs about the same. A block's share grows with its expected reuse, whole
    from REFRESH_FULL_REUSE frames, labelled or not: the still part of a person's box (the
    ground around a walker, a standing person) is refined and then copied like any other,
    while a walker, changing every frame, takes little of it. On a moving camera (`still`:
    `still_camera`) the blocks that hold are flat ones (sky, road), where the refresh bought
    nothing in the benchmarks: the term fades out with the camera's stillness."""
    y, x = np.indices(reuse.shape)
    due = (x + 2 * y + index) % cfg.refresh_period == 0
    step = np.where(due, np.float32(-cfg.refresh_gain), np.float32(cfg.refresh_hold))
    kept = np.minimum(reuse / np.float32(REFRESH_FULL_REUSE), np.float32(1.0))
    return step * kept * np.float32(still)


def importance_gain(weight: np.ndarray, cfg: QpConfig) -> float:
    """QP per unit of importance for this frame. The pinned mean makes the background pay the
    frame-average emphasis `gain * mean(weight)` back, so the gain follows the labelled area:
    `importance_gain` at a mean importance of `importance_reference`, times (reference /
    mean) ** exponent (the background pays the mean to the power 1 - exponent). Below the
    reference the exponent is `importance_boost_exponent`, at most `importance_boost_max`
    times: a few distant cars get a firmer emphasis for little; above it
    `importance_exponent`: riders filling a third of the frame get a milder one.
    `importance_budget` caps the average outright: a frame that is half face gets a milder map
    instead of a ruined background."""
    mean_weight = float(weight.mean())
    if mean_weight <= 0:
        return cfg.importance_gain  # nothing weighs: the gain multiplies zeros
    exponent = (cfg.importance_boost_exponent if mean_weight < cfg.importance_reference
                else cfg.importance_exponent)
    gain = cfg.importance_gain * min(
        cfg.importance_boost_max, (cfg.importance_reference / mean_weight) ** exponent)
    if mean_weight * gain <= cfg.importance_budget:
        return gain
    return cfg.importance_budget / mean_weight


def pin_mean(raw: np.ndarray, target: float, lo: float, hi: float) -> np.ndarray:
    """Shift `raw` so that, after clamping to [lo, hi], its mean is `target` (to 0.01 QP).

    The clamped mean grows monotonically and piecewise linearly with the shift (its slope is the
    share of unclamped values), so Newton steps find it in a few passes over the map; a step
    that leaves the bracket known to hold the answer is replaced by bisection, which keeps it
    safe where the slope changes."""
    s_lo, s_hi = lo - float(raw.max()), hi - float(raw.min())
    shift = target - float(raw.mean(dtype=np.float64))  # exact when nothing clamps; float64 sums
    # like the CUDA kernel's, so both stop at the same Newton step
    for _ in range(_BISECTIONS):
        moved = raw + shift
        error = float(np.clip(moved, lo, hi).mean(dtype=np.float64)) - target
        if abs(error) < _TOLERANCE:
            break
        if error < 0:
            s_lo = shift
        else:
            s_hi = shift
        slope = float(((moved > lo) & (moved < hi)).mean())
        step = shift - error / slope if slope > 0 else None
        shift = step if step is not None and s_lo < step < s_hi else 0.5 * (s_lo + s_hi)
    return np.clip(raw + shift, lo, hi).astype(np.float32)
