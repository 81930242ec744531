"""Bench outputs: results.json, results.csv, one rate-distortion PNG per clip and metric, and a
report.md table."""
from __future__ import annotations

import csv
import json
from pathlib import Path

PLOT_METRICS = {"psnr_roi": "ROI Y-PSNR (dB)", "psnr": "Y-PSNR (dB)",
                "psnr_background": "background Y-PSNR (dB)", "vmaf": "VMAF-NEG",
                "f1": "detection F1 (IoU 0.5)"}


def write_outputs(results: dict, out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=2))
    _write_csv(results, out / "results.csv")
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


def _write_csv(results: dict, path: Path) -> None:
    rows = list(_rows(results))
    if not rows:
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


def report_markdown(results: dict) -> str:
    s = results["settings"]
    lines = [f"# edge-semvc bench: rc={s['rc']}, preset={s['preset']}"
             f"{', tune=' + s['tune'] if s['tune'] else ''}", "",
             f"ROI mask: {s['roi_mask']}. Detector for F1: {s['roi_model'] or 'none'}.", ""]
    for clip in results["clips"]:
        lines += [f"## {clip['clip']} ({clip['width']}x{clip['height']}, {clip['frames']} "
                  f"frames, ROI {100 * clip['roi_fraction']:.1f} %)", ""]
        kinds = [k for k, v in clip["points"][0].items() if isinstance(v, dict)]
        metrics = [m for m in PLOT_METRICS if m in clip["points"][0]["semantic"]]
        lines.append("| rate | encoder | kbit/s | fps | " + " | ".join(metrics) + " |")
        lines.append("|---|---|---|---|" + "---|" * len(metrics))
        for p in clip["points"]:
            for k in kinds:
                r = p[k]
                lines.append(f"| {p['rate_setting']:g} | {k} | {r['bitrate_kbps']:.1f} | "
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
