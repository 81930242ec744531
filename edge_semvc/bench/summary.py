"""What a clip's points say (`bench`'s summary): each ROI's coverage, the BD-rates of the
semantic encodes against each anchor, speed ratios and, with a detector, the bits each
encoder needs to reach a detection F1 and what the semantic one saves there. The figures a
ladder cannot pin down are said (a note, a bound), never extrapolated."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import (
    F1_MIN_OBJECTS,
    bd_rate,
    f1_data_note,
    rate_at_f1,
    rate_saving,
    roi_coverage,
    roi_data_note,
)
from .reference import ClipReference

# BD-rate is reported on these; below the span, a metric's curve is too flat to compare.
# No F1: see the module docstring.
METRICS = {"psnr_roi": 0.0, "psnr_roi_own": 0.0, "psnr": 0.0, "vmaf": 0.0}
ROI_METRICS = ("psnr_roi", "psnr_roi_own")  # each judged on its own ROI's coverage
F1_TARGETS = (0.9, 0.95)
# ROI-PSNR BD-rate only where the ROI is big and frequent enough to mean something:
# - >= 16 labelled macroblocks a frame on average (4096 luma samples, about one 64x64 object: a
#   face at CIF, two pedestrians at 768x576). Below, the ROI is a handful of blocks: its PSNR
#   follows their content, and the map can give them any emphasis at almost no cost to the
#   frame, so the figure says little about the encoder (street at low rates with DeepLab: ROI
#   0.0 % of the frame, ROI BD-rate -34 %; parking with YOLOX: ~4 MB/frame, -32 %).
# - in >= 25 % of the frames: else the mean rests on a few frames (under 15 of a 60-frame run)
#   and on where they fall in the GOP.
ROI_MIN_MBS = 16.0
ROI_MIN_FRAMES = 0.25

@dataclass(frozen=True)
class Analysis:
    """How a clip's summary judges analytics and the ROI."""

    f1_targets: tuple[float, ...] = F1_TARGETS
    roi_min_mbs: float = ROI_MIN_MBS
    roi_min_frames: float = ROI_MIN_FRAMES
    f1_min_objects: int = F1_MIN_OBJECTS


def summarise(ref: ClipReference, points: list[dict], kinds: list[str], repeats: int,
              analysis: Analysis) -> dict:
    """A clip's results: its points, each ROI's coverage, BD-rates, speed ratios and, with a
    detector, the F1 analytics."""
    summary = {"clip": Path(ref.clip).name, "width": ref.width, "height": ref.height,
               "fps": ref.fps, "first_frame": ref.start, "frames": len(ref.luma),
               "repeats": repeats, "points": points, "bd_rate": {}, "speed_ratio": {}}
    notes = {}
    for metric, key, masks in (("psnr_roi", "", ref.roi_macroblocks()),
                               ("psnr_roi_own", "_own", ref.roi_own)):
        if not masks:
            continue
        mbs, frames_with = roi_coverage(masks)
        notes[metric] = roi_data_note(mbs, frames_with, analysis.roi_min_mbs,
                                      analysis.roi_min_frames)
        summary[f"roi_fraction{key}"] = round(float(np.mean([m.mean() for m in masks])), 4)
        summary[f"roi_coverage{key}"] = {"mbs_per_frame": round(mbs, 2),
                                         "frame_fraction": round(frames_with, 4),
                                         "enough": not notes[metric]}
    for anchor in (k for k in kinds if k != "semantic"):
        summary["bd_rate"][f"semantic_vs_{anchor}"] = bd_rates(points, anchor, notes)
        summary["speed_ratio"][f"semantic_vs_{anchor}"] = round(float(np.mean(
            [p["semantic"]["fps"] / p[anchor]["fps"] for p in points])), 4)
    if "f1" in points[0]["semantic"]:
        summary.update(f1_analytics(points, kinds, analysis))
    return summary


def _curve(points: list[dict], kind: str, metric: str) -> tuple[list, list]:
    return [p[kind]["bitrate_kbps"] for p in points], [p[kind][metric] for p in points]


def bd_rates(points: list[dict], anchor: str, roi_notes: dict[str, str]) -> dict:
    """BD-rate of semantic against `anchor` per metric; an ROI-PSNR's replaced by its ROI's
    note (`roi_notes`) when that says the ROI holds too little data."""
    out = {}
    for m in (m for m in METRICS if m in points[0]["semantic"]):
        if roi_notes.get(m):
            out[m] = {"percent": None, "note": roi_notes[m]}
        else:
            value, note = bd_rate(*_curve(points, anchor, m), *_curve(points, "semantic", m),
                                  METRICS[m])
            out[m] = {"percent": value, "note": note}
    return out


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def kbps_at_f1(points: list[dict], kind: str, target: float) -> dict:
    """The bitrate `kind` needs to reach detection F1 `target` over this ladder."""
    kbps, note, bound = rate_at_f1(*_curve(points, kind, "f1"), target)
    return {"kbps": _round(kbps, 2), "note": note, "bound_kbps": _round(bound, 2)}


def _known_rate(need: dict) -> tuple[float | None, int]:
    """(rate, side): side 0 exact, -1 at most that rate (below ladder), +1 above it (not
    reached)."""
    side = {"": 0, "below ladder": -1, "not reached": 1}.get(need["note"])
    return (need["kbps"] if side == 0 else need["bound_kbps"]), side


def saving_bound(anchor: dict, test: dict) -> dict | None:
    """What a saving that one ladder cannot pin down is still known to be, from the bounds:
    e.g. {"op": "<=", "percent": -18.7} when the anchor never reaches the target (needs more than
    its top rate) and the test does. None when nothing follows (both below the ladder, ...)."""
    (a, a_side), (t, t_side) = _known_rate(anchor), _known_rate(test)
    if a is None or t is None or a_side is None or t_side is None:
        return None
    sides = {t_side, -a_side} - {0}  # the test's rate up, or the anchor's down: saving up
    if len(sides) != 1:
        return None
    return {"op": ">=" if sides == {1} else "<=", "percent": round(rate_saving(a, t), 2)}


def f1_analytics(points: list[dict], kinds: list[str], analysis: Analysis) -> dict:
    """Per F1 target: each encoder's bitrate to reach it and semantic's saving against each
    anchor there (percent, negative: fewer bits); semantic's mean F1 gain over the ladder
    points (F1 semantic minus anchor at the same rate setting). None of it, but a note, where
    the reference holds fewer than `analysis.f1_min_objects` objects."""
    objects = points[0]["semantic"].get("f1_objects")
    note = "" if objects is None else f1_data_note(objects, analysis.f1_min_objects)
    if note:
        return {"f1_objects": objects, "f1_note": note}
    need = {f"{t:g}": {k: kbps_at_f1(points, k, t) for k in kinds} for t in analysis.f1_targets}
    saving, gain = {}, {}
    for anchor in (k for k in kinds if k != "semantic"):
        pair = f"semantic_vs_{anchor}"
        saving[pair] = {}
        for t, n in need.items():
            percent = rate_saving(n[anchor]["kbps"], n["semantic"]["kbps"])
            why = "; ".join(f"{k} {n[k]['note']}" for k in (anchor, "semantic") if n[k]["note"])
            saving[pair][t] = {"percent": _round(percent, 2), "note": why, "bound": None
                               if percent is not None else saving_bound(n[anchor], n["semantic"])}
        gain[pair] = round(float(np.mean([p["semantic"]["f1"] - p[anchor]["f1"]
                                          for p in points])), 4)
    return {"f1_objects": objects, "kbps_at_f1": need, "f1_rate_saving": saving,
            "f1_gain": gain}
