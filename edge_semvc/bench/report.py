"""Bench outputs: results.json, results.csv (one row per clip, rate point and encoder),
summary.csv (one row per clip and comparison), one rate-distortion PNG per clip and metric, and
report.md: the summary tables (BENCHMARKS.md's layout), then every point."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

PLOT_METRICS = {"psnr_roi": "ROI Y-PSNR (dB)", "psnr_roi_own": "own-models ROI Y-PSNR (dB)",
                "psnr": "Y-PSNR (dB)",
                "psnr_background": "background Y-PSNR (dB)", "vmaf": "VMAF-NEG",
                "f1": "detection F1 (IoU 0.5)"}


def rate_label(rate: float, rc: str) -> str:
    """A rate point as the user types it, in file names, logs and report.md: a CRF as it is
    (28, 22.5), a bitrate in bits/s as 1200k where it is whole kbit/s, else the whole number."""
    if rc == "crf":
        return f"{float(rate):g}"
    bits = round(rate)
    return f"{bits // 1000}k" if bits % 1000 == 0 else str(bits)


def _finite(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def settings(args, analysis, roi_model) -> dict:
    """The run's settings as results.json and report.md give them."""
    return {"clips": args.clips, "rc": args.rc, "profile": args.profile, "preset": args.preset,
            "tune": args.tune, "ladder": args.ladder, "bpp": args.bpp,
            "roi_model": str(roi_model) if roi_model else None,
            "start": args.start, "frames": args.frames, "eval_every": args.eval_every,
            "f1_targets": list(analysis.f1_targets), "roi_min_mbs": analysis.roi_min_mbs,
            "roi_min_frames": analysis.roi_min_frames,
            "f1_min_objects": analysis.f1_min_objects,
            "roi_mask": "psnr_roi: person and vehicle boxes of the independent detector on the "
                        "original frames; psnr_roi_own: macroblocks labelled by the semantic "
                        "run's models run on every original frame (no budget, no carry)"}


def write_interrupted(results: dict, stop: BaseException, out: Path) -> str:
    """After a stop signal: the clips done and the clip in progress with its finished rate
    points (`stop.partial`: its summary from those alone) are written with "complete": false;
    returns the line that says so."""
    done, partial = len(results["clips"]), getattr(stop, "partial", None)
    if partial:
        results["clips"].append(partial)
    results["complete"] = False
    results["interrupted"] = (
        f"interrupted{f' ({stop})' if str(stop) else ''}: {done} of "
        f"{len(results['settings']['clips'])} clips complete"
        + (f", {len(partial['points'])} of {partial['ladder_points']} rate points of "
           f"{partial['clip']}" if partial else ""))
    write_outputs(results, out)
    return (f"edge-semvc bench: {results['interrupted']}; the partial results are in {out}/ "
            "(results.json: \"complete\": false)")


def write_outputs(results: dict, out: Path) -> None:
    # strict JSON: a figure that could not be computed (an empty ROI's PSNR) is null
    (out / "results.json").write_text(json.dumps(_finite(results), indent=2, allow_nan=False))
    _write_csv(list(_rows(results)), out / "results.csv")
    _write_csv(list(_summary_rows(results)), out / "summary.csv")
    _plot(results, out / "plots")
    (out / "report.md").write_text(report_markdown(results))


def _rows(results: dict):
    for clip in results["clips"]:
        for point in clip["points"]:
            for kind, r in point.items():
                if isinstance(r, dict):
                    yield {"clip": clip["clip"], "rate_setting": point["rate_setting"],
                           "encoder": kind,
                           **{k: v for k, v in r.items() if not isinstance(v, dict)}}


def _summary_rows(results: dict):
    """One row per clip and comparison (semantic vs each anchor): ROI coverage, BD-rates, bits
    to each F1 target, F1 gain, speed ratio."""
    for clip in results["clips"]:
        for pair, bds in clip["bd_rate"].items():
            anchor = pair.removeprefix("semantic_vs_")
            row = {"clip": clip["clip"], "comparison": pair,
                   "first_frame": clip.get("first_frame", 0), "frames": clip["frames"]}
            for key in ("", "_own"):
                cov = clip.get(f"roi_coverage{key}", {})
                row.update({f"roi{key}_fraction": clip.get(f"roi_fraction{key}"),
                            f"roi{key}_mbs_per_frame": cov.get("mbs_per_frame"),
                            f"roi{key}_frame_fraction": cov.get("frame_fraction")})
            for m, v in bds.items():
                row[f"bd_{m}"], row[f"bd_{m}_note"] = v["percent"], v["note"]
            for t, need in clip.get("kbps_at_f1", {}).items():
                for role, kind in (("anchor", anchor), ("semantic", "semantic")):
                    row[f"f1_{t}_{role}_kbps"] = need[kind]["kbps"]
                    row[f"f1_{t}_{role}_note"] = need[kind]["note"]
                    row[f"f1_{t}_{role}_bound_kbps"] = need[kind]["bound_kbps"]
                saving = clip["f1_rate_saving"][pair][t]
                row[f"f1_{t}_saving"] = saving["percent"]
                bound = saving.get("bound")
                row[f"f1_{t}_saving_bound"] = bound and f"{bound['op']} {bound['percent']}"
            if "f1_gain" in clip:
                row["f1_gain"] = clip["f1_gain"][pair]
            if "f1_objects" in clip:
                row["f1_objects"], row["f1_note"] = clip["f1_objects"], clip.get("f1_note", "")
            row["speed_ratio"] = clip["speed_ratio"][pair]
            yield row


def _write_csv(rows: list[dict], path: Path) -> None:
    if not rows:  # an earlier run's rows must not pass for this one's
        path.unlink(missing_ok=True)
        return
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def _plot(results: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    for clip in results["clips"]:
        kinds = [k for k, v in clip["points"][0].items() if isinstance(v, dict)]
        for metric, label in PLOT_METRICS.items():
            if metric not in clip["points"][0]["semantic"]:
                continue
            curves = {kind: sorted((p[kind]["bitrate_kbps"], p[kind][metric])
                                   for p in clip["points"] if p[kind][metric] is not None)
                      for kind in kinds}
            if not any(curves.values()):  # e.g. ROI-PSNR of a clip where nothing was labelled
                continue
            fig, ax = plt.subplots(figsize=(5, 3.6), dpi=100)
            for kind, pts in curves.items():
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=kind)
            ax.set_xlabel("bitrate (kbit/s)")
            ax.set_ylabel(label)
            ax.set_title(clip["clip"], fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            fig.savefig(folder / f"{Path(clip['clip']).stem}.{metric}.png")
            plt.close(fig)


def _fmt(v, digits=2, suffix=""):
    return "n/a" if v is None else f"{v:.{digits}f}{suffix}"


def _signed(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.3f}"


def _bd_cell(v: dict) -> str:
    if v["percent"] is None:
        return "too little data" if v["note"].startswith("too little data") else "n/a"
    return f"{v['percent']:+.1f} %" + (" ¹" if "overlap" in v["note"] else "")


def _need_cell(n: dict) -> str:
    """Bits to an F1 target: the rate, or what the ladder says about it."""
    if n["kbps"] is not None:
        return f"{n['kbps']:.1f}"
    if n["note"] == "below ladder":
        return f"below ladder (≤ {n['bound_kbps']:.1f})"
    if n["note"] == "not reached":
        return f"not reached (> {n['bound_kbps']:.1f})"
    return "n/a"


def _f1_cell(clip: dict, pair: str, anchor: str, target: str) -> str:
    if "f1_note" in clip:
        return "too little data"
    if target not in clip.get("kbps_at_f1", {}):
        return "n/a"
    need = clip["kbps_at_f1"][target]
    saving = clip["f1_rate_saving"][pair][target]
    cell = f"{_need_cell(need[anchor])} → {_need_cell(need['semantic'])}"
    if saving["percent"] is not None:
        return cell + f" ({saving['percent']:+.1f} %)"
    if saving.get("bound"):
        op = {"<=": "≤", ">=": "≥"}[saving["bound"]["op"]]
        return cell + f" ({op} {saving['bound']['percent']:+.1f} %)"
    return cell


def _f1_gain_cell(clip: dict, pair: str) -> str:
    return "too little data" if "f1_note" in clip else _signed(clip.get("f1_gain", {}).get(pair))


def _roi_cells(c: dict, key: str) -> list[str]:
    """An ROI's share of the frame, macroblocks a frame, share of frames with any."""
    cov = c.get(f"roi_coverage{key}", {})
    share = c.get(f"roi_fraction{key}")
    return [_fmt(None if share is None else 100 * share, 1, " %"),
            _fmt(cov.get("mbs_per_frame"), 1),
            _fmt(None if "frame_fraction" not in cov else 100 * cov["frame_fraction"], 0, " %")]


def _clip_cell(c: dict) -> str:
    first = c.get("first_frame", 0)
    frames = f"frames {first}-{first + c['frames'] - 1}" if first else f"{c['frames']} fr"
    cut = f", {len(c['points'])} of {c['ladder_points']} rates" if "ladder_points" in c else ""
    return f"{c['clip']} ({c['width']}x{c['height']}, {frames}{cut})"


def _summary_table(clips: list[dict], pair: str, targets: list[str]) -> list[str]:
    """One comparison's table: a row per clip. ROI: the independent detector's; own ROI: the
    semantic configuration's models'."""
    anchor = pair.removeprefix("semantic_vs_")
    metrics = list(dict.fromkeys(m for c in clips for m in c["bd_rate"][pair]))
    rois = [key for key in ("", "_own") if any(f"roi_coverage{key}" in c for c in clips)]
    head = (["clip"]
            + [f"{name} {what}" for key in rois for name in ["ROI" if not key else "own ROI"]
               for what in ("share", "MB/frame", "frames")]
            + [f"BD-rate {m}" for m in metrics]
            + [f"kbit/s to F1 {t}" for t in targets] + ["mean F1 gain"] * bool(targets)
            + ["speed ratio"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for c in clips:
        cells = ([_clip_cell(c)] + [cell for key in rois for cell in _roi_cells(c, key)]
                 + [_bd_cell(c["bd_rate"][pair][m]) for m in metrics]
                 + [_f1_cell(c, pair, anchor, t) for t in targets]
                 + [_f1_gain_cell(c, pair)] * bool(targets)
                 + [_fmt(c["speed_ratio"][pair], 2)])
        lines.append("| " + " | ".join(cells) + " |")
        notes += [f"- {c['clip']}, {m}: {v['note']}" for m, v in c["bd_rate"][pair].items()
                  if v["note"]]
        if targets and "f1_note" in c:
            notes.append(f"- {c['clip']}, detection F1: {c['f1_note']}")
    return lines + [""] + notes


def summary_markdown(results: dict) -> str:
    """The summary tables, one per comparison (semantic vs baseline, vs ffmpeg), in the layout of
    BENCHMARKS.md's tables."""
    clips = results["clips"]
    if not clips:
        return ""
    s = results["settings"]
    targets = [f"{t:g}" for t in s.get("f1_targets", [])] if s.get("roi_model") else []
    lines = []
    for pair in clips[0]["bd_rate"]:
        lines += [f"**{pair.replace('_', ' ')}**", ""]
        lines += _summary_table(clips, pair, targets) + [""]
    lines.append("¹ the two curves share less than 75 % of their quality range. ROI-PSNR BD-rate "
                 f"only where the ROI averages >= {s.get('roi_min_mbs', 0):g} macroblocks a "
                 f"frame and is present in >= {100 * s.get('roi_min_frames', 0):.0f} % of the "
                 "frames, else \"too little data\".")
    if targets:
        lines.append("kbit/s to F1 t: what the anchor → semantic need to reach detection F1 t "
                     "(semantic's saving, negative: fewer bits; ≤/≥: a bound where one side is "
                     "off the ladder), interpolated on the ladder's monotone F1 envelope; "
                     "\"below ladder (≤ r)\": the lowest rate already reaches it, \"not reached "
                     "(> r)\": the highest does not. Mean F1 gain: semantic minus anchor, averaged "
                     "over the ladder points. F1 figures only where the independent detector "
                     f"finds >= {s.get('f1_min_objects', 0)} objects on the judged original "
                     "frames, else \"too little data\".")
    return "\n".join(lines) + "\n"


def _backends(results: dict) -> str:
    """The encoder backends the encodes ran on (x264, x265, ...; `encoder.backend` as
    configured before any encode is done, which may read "auto")."""
    ran = {r["encoder"]["backend"] for c in results["clips"] for p in c["points"]
           for r in p.values() if isinstance(r, dict) and "backend" in (r.get("encoder") or {})}
    return " + ".join(sorted(ran)) or results.get("config", {}).get("encoder", {}).get(
        "backend", "?")


def report_markdown(results: dict) -> str:
    s = results["settings"]
    lines = [f"# edge-semvc bench: encoder {_backends(results)}, rc={s['rc']}, "
             f"preset={s['preset']}"
             f"{', tune=' + s['tune'] if s['tune'] else ''}", ""]
    if not results.get("complete", True):  # stopped, or still running (or killed)
        lines += ["**Incomplete**: " + (results.get("interrupted") or f"written after "
                  f"{len(results['clips'])} of {len(s['clips'])} clips") + ".", ""]
    lines += [f"ROI masks: {s['roi_mask']}. Independent detector: {s['roi_model'] or 'none'}.",
              "", "## Summary", "", summary_markdown(results)]
    for clip in results["clips"]:
        share = clip.get("roi_fraction", clip.get("roi_fraction_own"))
        lines += [f"## {_clip_cell(clip)}, ROI {_fmt(None if share is None else 100 * share, 1)}"
                  " %", ""]
        kinds = [k for k, v in clip["points"][0].items() if isinstance(v, dict)]
        metrics = [m for m in PLOT_METRICS if m in clip["points"][0]["semantic"]]
        lines.append("| rate | encoder | kbit/s | fps | " + " | ".join(metrics) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(metrics))
        for p in clip["points"]:
            rate = rate_label(p["rate_setting"], s["rc"])
            for k in kinds:
                r = p[k]
                lines.append(f"| {rate} | {k} | {r['bitrate_kbps']:.1f} | "
                             f"{r['fps']:.1f} | " + " | ".join(_fmt(r[m], 3) for m in metrics)
                             + " |")
        lines.append("")
        for pair, bds in clip["bd_rate"].items():
            cells = ", ".join(f"{m} {_fmt(v['percent'], 1, ' %')}"
                              + (f" ({v['note']})" if v["note"] else "")
                              for m, v in bds.items())
            lines.append(f"- BD-rate {pair.replace('_', ' ')}: {cells}; speed ratio "
                         f"{clip['speed_ratio'][pair]:.3f}")
        lines.append("")
    return "\n".join(lines)
