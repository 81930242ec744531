"""Bench runs set against one anchor: each encode of each run against another run's `--no-map`.

    python -m edge_semvc.bench.anchor --anchor DIR [--anchor DIR...] RUN [RUN...]

`bench` gives a run's semantic encode against that run's own `--no-map`. Runs that differ in the
encoder's mode (zerolatency, a lookahead, mb-tree) differ in their `--no-map` too, so their
ratios do not tell which output is better. This sets the baseline and the semantic encode of
each RUN (a `bench --out` folder) against the anchor run's baseline, clip by clip, with bench's
BD-rate and its too-little-data rule for the ROI. The runs must cover the same frames of the
same clips with the same ladder; an ROI that is not the anchor's (the own models' ROI of a run
with other models) is left out with a note. The anchor's clips may come from several runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import EdgeSemvcError
from .metrics import roi_data_note
from .summary import METRICS, bd_rates

ENCODERS = ("baseline", "semantic")


class Mismatch(EdgeSemvcError, ValueError):
    """Two runs that cannot be compared (names the clip and what differs)."""


def load(folder: str | Path) -> dict:
    path = Path(folder) / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise Mismatch(f"{path}: not a bench result ({e})") from e
    if not isinstance(results, dict) or not isinstance(results.get("clips"), list):
        raise Mismatch(f"{path}: not a bench result (no list of clips)")
    if not results["clips"]:  # a bench stopped before its first rate point was judged
        raise Mismatch(f"{path}: no clip was judged ({results.get('interrupted', 'empty')})")
    return results


def _roi_notes(ref: dict, clip: dict) -> dict[str, str]:
    """Why an ROI's BD-rate is left out, as `bd_rates` takes it: bench's too-little-data rule
    on the anchor's clip (with the anchor run's thresholds), or an ROI that is not the
    anchor's (the own models' ROI of a run with other models)."""
    notes = {}
    for metric, key in (("psnr_roi", ""), ("psnr_roi_own", "_own")):
        cov, ours, theirs = (ref.get(f"roi_coverage{key}"), clip.get(f"roi_fraction{key}"),
                             ref.get(f"roi_fraction{key}"))
        if ours != theirs:
            notes[metric] = f"the ROI covers {ours} of the frame here, {theirs} in the anchor"
        elif cov:
            note = roi_data_note(cov["mbs_per_frame"], cov["frame_fraction"], *ref["roi_min"])
            if note:
                notes[metric] = note
    return notes


def anchor_clips(folders) -> dict[str, dict]:
    """The anchor's clips by name, from one or more bench folders."""
    clips = {}
    for folder in folders:
        results = load(folder)
        settings = results.get("settings", {})
        roi_min = (settings.get("roi_min_mbs"), settings.get("roi_min_frames"))
        if None in roi_min:
            raise Mismatch(f"{folder}: not a bench result (no ROI thresholds in its settings)")
        for clip in results["clips"]:
            if clip["clip"] in clips:
                raise Mismatch(f"{clip['clip']}: in more than one anchor run ({folder})")
            clips[clip["clip"]] = {**clip, "roi_min": roi_min}
    return clips


def against(clips: dict[str, dict], run: dict) -> list[dict]:
    """One row per clip of `run` and encoder: its BD-rates against the anchor's baseline."""
    rows = []
    for clip in run["clips"]:
        ref = clips.get(clip["clip"])
        if ref is None:
            raise Mismatch(f"{clip['clip']}: in no anchor run")
        for key in ("first_frame", "frames"):
            if clip[key] != ref[key]:
                raise Mismatch(f"{clip['clip']}: {key} {clip[key]} here, {ref[key]} in the "
                               "anchor run: the runs judge different frames")
        ladder = [p["rate_setting"] for p in clip["points"]]
        if ladder != [p["rate_setting"] for p in ref["points"]]:
            raise Mismatch(f"{clip['clip']}: ladder {ladder} here, "
                           f"{[p['rate_setting'] for p in ref['points']]} in the anchor run")
        notes = _roi_notes(ref, clip)
        for kind in ENCODERS:
            points = [{"anchor": a["baseline"], "semantic": p[kind]}
                      for a, p in zip(ref["points"], clip["points"])]
            rows.append({"clip": clip["clip"], "encoder": kind,
                         "bd": bd_rates(points, "anchor", notes)})
    return rows


def _cell(v: dict | None) -> str:
    return "—" if v is None or v["percent"] is None else f"{v['percent']:+.1f}"


def markdown(runs: dict[str, list[dict]]) -> str:
    metrics = list(METRICS)
    lines = ["| run | clip | encoder | " + " | ".join(f"{m} BD %" for m in metrics) + " |",
             "|---" * (3 + len(metrics)) + "|"]
    notes = []
    for name, rows in runs.items():
        for r in rows:
            lines.append(f"| {name} | {r['clip']} | {r['encoder']} | "
                         + " | ".join(_cell(r["bd"].get(m)) for m in metrics) + " |")
            for m, v in r["bd"].items():
                if v["percent"] is None:
                    notes.append(f"- {name}, {r['clip']}, {r['encoder']}, {m}: {v['note']}")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.anchor",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--anchor", action="append", required=True, metavar="DIR",
                   help="a bench folder whose baseline is the anchor for its clips (repeatable)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="bench folders to set against it")
    args = p.parse_args(argv)
    try:
        clips = anchor_clips(args.anchor)
        runs = {run: against(clips, load(run)) for run in args.runs}
    except Mismatch as e:
        p.error(str(e))
    sys.stdout.write(markdown(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
