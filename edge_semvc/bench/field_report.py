"""The field benchmark's report: the run's measurements (``FieldRun``) become one JSON-ready dict
(``build_report``), with the latency distributions, the output's bitrate second by second
(``bitrate_stability``), CPU, memory, thermal and Jetson summaries, and a short summary for the
terminal (``print_summary``). The keys are documented in README, "Field benchmark".
"""
from __future__ import annotations

import argparse
import math
import os
import resource
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..sources.paced import PacedSource
from .sensors import PowerRail, Sampler, Tegrastats, machine_info, proc_stat_cpu

REPORT_VERSION = 1


# --------------------------------------------------------------------------------------------
# The run's measurements


@dataclass
class Measurements:
    """What ``run`` measured around the pipeline, on its clock: per-frame end-to-end latency
    and completion times (``on_frame``), the CPU counters when the first frame was released
    (``open_window``, the source's ``on_start``) and when the run ended (``close_window``), and
    the RSS before the source was opened."""

    started: str  # UTC, ISO 8601
    e2e_ms: list[float] = field(default_factory=list)
    done_at: list[float] = field(default_factory=list)
    rss_before: int = 0
    # set by open_window / close_window:
    t_end: float | None = field(default=None, init=False)
    cpu_start: os.times_result | None = field(default=None, init=False)
    cpu_end: os.times_result | None = field(default=None, init=False)
    machine_start: tuple[float, float] | None = field(default=None, init=False)  # /proc/stat
    machine_end: tuple[float, float] | None = field(default=None, init=False)  # (busy, total)

    def open_window(self, t0: float | None = None) -> None:
        """The first frame was released: the measured window opens."""
        self.cpu_start, self.machine_start = os.times(), proc_stat_cpu()

    def close_window(self, t_end: float) -> None:
        self.t_end = t_end
        self.cpu_end, self.machine_end = os.times(), proc_stat_cpu()


@dataclass
class Sensors:
    """The machine's sensors during one run: the background sampler (CPU, RSS, thermal zones,
    power rails), the Jetson's description (``detect_jetson``), its power rails, and tegrastats
    where it runs."""

    sampler: Sampler
    jetson: dict
    rails: list[PowerRail]
    tegra: Tegrastats | None = None

    def stop(self) -> None:
        self.sampler.stop()
        if self.tegra:
            self.tegra.stop()


@dataclass
class FieldRun:
    """One field-bench run, as ``build_report`` reads it."""

    args: argparse.Namespace  # the command line, echoed in "args"
    paced: PacedSource  # frames offered, dropped, slip, capture times
    output: str
    keep_output: bool  # False: a temporary file, deleted after the report
    stats: dict  # run_encode's statistics (partial_result's after an error)
    error: str | None
    measured: Measurements
    sensors: Sensors


# --------------------------------------------------------------------------------------------
# The report


def build_report(run: FieldRun) -> dict:
    """The JSON report of a run (README, "Field benchmark")."""
    args, paced, stats, m = run.args, run.paced, run.stats, run.measured
    t0 = paced.t0 if paced.t0 is not None else m.t_end
    wall = max(m.t_end - t0, 1e-9)
    enc = stats.get("encoder", {})
    fps = float(paced.fps)
    encoded = stats.get("frames", 0)
    realtime = paced.pacing.realtime

    stages = {}
    for name, v in stats.get("stages", {}).items():
        stages[name] = {k: v.get(k) for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms")}

    pipeline = {k: stats.get(k) for k in ("input", "frames", "bytes", "payload_bytes", "fps",
                                           "wall_s", "label_coverage", "mean_offset_roi",
                                           "mean_offset_background", "semantic", "models",
                                           "complete")}
    return {
        "report": "edge_semvc field benchmark", "version": REPORT_VERSION,
        "started_utc": m.started, "complete": run.error is None, "error": run.error,
        "source": {
            "uri": args.input, "description": paced.description, "width": paced.width,
            "height": paced.height, "fps": round(fps, 4), "time_base": str(paced.time_base),
            "realtime": realtime, "speed": paced.pacing.speed, "loop": bool(args.loop),
            "passes": paced.passes, "ended_by": paced.ended_by,
            "pts_adjusted": paced.pts_adjusted, "slip_s": round(paced.slip_s, 3),
        },
        "output": {"path": run.output if run.keep_output else None, "kept": run.keep_output,
                   "bytes": stats.get("bytes")},
        "duration_s": {"requested": args.seconds or None, "measured": round(wall, 3),
                       "capture": round(paced.t_last - t0, 3) if paced.t_last else None},
        "frames": {
            "offered": paced.offered, "delivered": paced.kept, "encoded": encoded,
            "dropped": paced.dropped,
            "drop_rate": round(paced.dropped / paced.offered, 4) if paced.offered else 0.0,
            "max_consecutive_dropped": paced.max_consecutive_dropped,
        },
        "fps": {
            "source": round(fps, 4),
            "nominal": round(fps * paced.pacing.speed, 4) if realtime else None,
            "offered": round(paced.offered / wall, 3),
            "achieved": round(encoded / wall, 3),
            "pipeline_wall": stats.get("fps"),
        },
        "latency_ms": {
            "end_to_end": distribution(m.e2e_ms),
            "stages": stages,
            "source_read": distribution(paced.read_ms),
            "frame_interval": distribution([(b - a) * 1e3
                                            for a, b in zip(m.done_at, m.done_at[1:])]),
            "notes": _notes(run, enc, wall),
        },
        "encoder": enc,
        "encoder_delay": {k: enc.get(k) for k in ("tune", "bframes", "rc_lookahead", "mb_tree",
                                                   "threads", "vfr_input", "vbv_bufsize_kbit")},
        "cpu": _cpu(m, run.sensors.sampler, t0, wall),
        "memory": {
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_mb": round(m.rss_before / 2**20, 1),
            "rss_max_sampled_mb": round(max((s[2] for s in run.sensors.sampler.samples),
                                            default=0) / 2**20, 1),
        },
        "bitrate": _bitrate(run, enc, encoded),
        "thermal": _thermal(run.sensors.sampler),
        "jetson": _jetson(run.sensors, t0, encoded),
        "machine": machine_info(),
        "pipeline": pipeline,
        "config": stats.get("config"),
        "args": {k: (str(v) if isinstance(v, Fraction) else v) for k, v in vars(args).items()
                 if k != "func" and not callable(v)},
    }


def _notes(run: FieldRun, enc: dict, wall: float) -> list[str]:
    paced, args = run.paced, run.args
    notes = [
        "end_to_end: from the moment a frame became available (realtime: when the camera "
        "thread published it, at its due time; otherwise when the source handed it out) to "
        "the moment the pipeline "
        "had passed it to the encoder and written the packets that were ready (on_frame). "
        "It includes the pipeline's queues (decode and understanding threads, up to 4 frames "
        "each) but not the encoder's own delay, below.",
        "encoder delay: x264 holds frames for its lookahead and B-frames (and one per extra "
        "frame thread) before their packet comes out; see encoder_delay. --tune zerolatency "
        "removes that delay (no lookahead, no B-frames, sliced threads).",
    ]
    if paced.pacing.realtime:
        notes.append("stages.decode is the pipeline's wait for the camera's next frame and so "
                     "includes the pacing; source_read is the time the camera thread actually "
                     "spent reading/decoding the input (in parallel, as a capture thread would).")
    if paced.dropped and enc.get("vfr_input") is False:
        notes.append("x264 runs with vfr_input off (e.g. tune zerolatency): its rate control "
                     "assumes every frame lasts 1/fps, so with dropped frames the bitrate per "
                     "second falls below the target.")
    if paced.pacing.realtime and paced.slip_s > 0.05 * wall:
        notes.append(f"the camera thread could not publish every frame on time (reading the "
                     f"input took too long, see source_read, or the CPU was too busy to wake it): "
                     f"the schedule slipped by {paced.slip_s:.2f} s in total, so fps.offered is "
                     "below fps.nominal; drops then measure the pipeline against what the source "
                     "could deliver.")
    if args.seconds and paced.ended_by == "end of input":
        notes.append(f"the input ended before {args.seconds:g} s (use --loop to repeat it)")
    return notes


def _cpu(m: Measurements, sampler: Sampler, t0: float, wall: float) -> dict:
    cpu1, sys1 = m.cpu_end, m.machine_end
    cpu0 = m.cpu_start or cpu1
    user, system = cpu1.user - cpu0.user, cpu1.system - cpu0.system
    cores = os.cpu_count() or 1
    proc_pct = 100.0 * (user + system) / wall
    sys0 = m.machine_start
    system_pct = (round(100.0 * (sys1[0] - sys0[0]) / (sys1[1] - sys0[1]), 1)
                  if sys0 and sys1 and sys1[1] > sys0[1] else None)
    samples = [s for s in sampler.samples if s[0] >= t0]
    cpu_samples = [100.0 * (b[1] - a[1]) / (b[0] - a[0])
                   for a, b in zip(samples, samples[1:]) if b[0] > a[0]]
    return {
        "process_percent": round(proc_pct, 1),
        "process_percent_of_machine": round(proc_pct / cores, 1),
        "cores": cores, "user_s": round(user, 3), "system_s": round(system, 3),
        "machine_busy_percent": system_pct,
        "samples_percent": _percent_summary(cpu_samples),
    }


def _bitrate(run: FieldRun, enc: dict, encoded: int) -> dict:
    bitrate: dict
    output = run.output
    enc_cfg = (run.stats.get("config") or {}).get("encoder", {})
    # abr/cbr aim at the bitrate; with crf it is only a VBV cap, not a target
    target = enc_cfg.get("bitrate") or None if enc_cfg.get("rc") in ("abr", "cbr") else None
    if Path(output).is_file() and encoded:  # (not a device: /dev/full reads forever)
        try:
            bitrate = bitrate_stability(output, target, run.paced.fps)
        except Exception as e:  # a truncated file after an error: say so, keep the report
            bitrate = {"target_kbps": round(target / 1e3, 3) if target else None,
                       "error": f"cannot read {output}: {e}"}
    else:
        bitrate = {"target_kbps": round(target / 1e3, 3) if target else None,
                   "error": "no output"}
    bitrate["rc"] = enc.get("rc")
    if enc_cfg.get("rc") == "crf" and enc_cfg.get("bitrate"):
        bitrate["vbv_cap_kbps"] = round(enc_cfg["bitrate"] / 1e3, 3)
    return bitrate


def _thermal(sampler: Sampler) -> dict:
    thermal = {"available": bool(sampler.zones)}
    if sampler.zones:
        thermal["zones_c"] = {z.name: _series([s[3].get(z.name) for s in sampler.samples])
                              for z in sampler.zones}
    else:
        thermal["reason"] = "no /sys/class/thermal/thermal_zone*/temp on this machine"
    return thermal


def _jetson(sensors: Sensors, t0: float, encoded: int) -> dict:
    jet = dict(sensors.jetson)
    if sensors.jetson["available"]:
        jet["power_rails"] = power_summary(sensors.sampler, sensors.rails, t0, encoded)
        if sensors.tegra is None:
            jet["tegrastats"] = {"available": False,
                                 "reason": "tegrastats is not on PATH"}
        else:
            jet["tegrastats"] = tegrastats_summary(sensors.tegra)
        jet["root"] = os.geteuid() == 0
    return jet


# --------------------------------------------------------------------------------------------
# Summaries


def distribution(ms: list[float]) -> dict:
    """n, mean, p50, p95, p99, max (ms); None when there are no samples."""
    if not ms:
        return {"n": 0, "mean_ms": None, "p50_ms": None, "p95_ms": None, "p99_ms": None,
                "max_ms": None}
    a = np.asarray(ms, dtype=np.float64)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    r = lambda v: round(float(v), 3)  # noqa: E731
    return {"n": int(a.size), "mean_ms": r(a.mean()), "p50_ms": r(p50), "p95_ms": r(p95),
            "p99_ms": r(p99), "max_ms": r(a.max())}


def _series(values: list[float | None]) -> dict | None:
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"start": round(v[0], 2), "end": round(v[-1], 2), "mean": round(float(np.mean(v)), 2),
            "max": round(max(v), 2), "min": round(min(v), 2)}


def bitrate_stability(path: str, target_bps: int | None, fps: Fraction) -> dict:
    """Demux ``path``; bucket packet sizes by presentation second (complete seconds only)."""
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        tb = s.time_base
        pkts = [(p.pts, p.size) for p in c.demux(s) if p.size]
    out: dict = {"target_kbps": round(target_bps / 1e3, 3) if target_bps else None}
    if not pkts:
        return {**out, "seconds": 0, "note": "no packets in the output"}
    if all(p is not None for p, _ in pkts) and tb:
        first = min(p for p, _ in pkts)
        t = np.array([float((p - first) * tb) for p, _ in pkts])
        out["timing"] = "packet pts"
    else:  # raw .h264 carries no timestamps: assume the nominal rate (drops are invisible)
        t = np.arange(len(pkts)) / float(fps)
        out["timing"] = "packet count at the nominal frame rate (no timestamps in the output)"
    bits = np.array([b for _, b in pkts], dtype=np.float64) * 8
    span = float(t.max()) + 1.0 / float(fps)
    out["media_s"] = round(span, 3)
    out["whole_kbps"] = round(float(bits.sum()) / span / 1e3, 3)
    n = int(math.floor(span + 1e-9))
    out["seconds"] = n
    if n < 1:
        return out
    idx = np.floor(t).astype(int)
    keep = idx < n
    per = np.bincount(idx[keep], weights=bits[keep], minlength=n)[:n] / 1e3
    mean, std = float(per.mean()), float(per.std())
    out.update({
        "per_second_kbps": [round(float(x), 1) for x in per],
        "mean_kbps": round(mean, 3), "std_kbps": round(std, 3),
        "min_kbps": round(float(per.min()), 3), "max_kbps": round(float(per.max()), 3),
        "cv": round(std / mean, 4) if mean else None,
    })
    if target_bps:
        tk = target_bps / 1e3
        out["mean_error_pct"] = round(100 * (mean - tk) / tk, 2)
        out["max_deviation_pct"] = round(100 * float(np.abs(per - tk).max()) / tk, 2)
        out["seconds_within_10pct"] = round(float(np.mean(np.abs(per - tk) <= 0.1 * tk)), 4)
    return out


def _percent_summary(values: list[float]) -> dict | None:
    """Per-interval process CPU % (100 = one core busy): mean, p50, p95, max."""
    if not values:
        return None
    a = np.asarray(values)
    p50, p95 = np.percentile(a, [50, 95])
    return {"n": int(a.size), "mean": round(float(a.mean()), 1), "p50": round(float(p50), 1),
            "p95": round(float(p95), 1), "max": round(float(a.max()), 1)}


def power_summary(sampler: Sampler, rails: list[PowerRail], t0: float, frames: int) -> dict:
    if not rails:
        return {"available": False,
                "reason": "no INA3221 channels under /sys/bus/i2c/drivers/ina3221*/ (absent on "
                          "this module, e.g. Jetson Nano 2GB, or not readable)"}
    out: dict = {"available": True, "rails": {}}
    win = [s for s in sampler.samples if s[0] >= t0]
    for r in rails:
        pts = [(s[0], s[4].get(r.name)) for s in win if s[4].get(r.name) is not None]
        if not pts:
            out["rails"][r.name] = None
            continue
        t = np.array([p[0] for p in pts])
        w = np.array([p[1] for p in pts])
        energy = float(np.sum((w[1:] + w[:-1]) / 2 * np.diff(t))) / 1e3 if len(w) > 1 else None
        out["rails"][r.name] = {
            "mean_mw": round(float(w.mean()), 1), "max_mw": round(float(w.max()), 1),
            "energy_j": round(energy, 3) if energy is not None else None,
            "mj_per_frame": round(energy * 1e3 / frames, 2) if energy and frames else None,
        }
    return out


def tegrastats_summary(tegra: Tegrastats) -> dict:
    if not tegra.samples:
        return {"available": False, "reason": tegra.error or "no output"}
    out: dict = {"available": True, "lines": len(tegra.samples), "first_line": tegra.first_line}
    for key in ("power_mw", "temp_c"):
        names = sorted({n for _, s in tegra.samples for n in s.get(key, {})})
        if names:
            out[key] = {n: _series([s.get(key, {}).get(n) for _, s in tegra.samples])
                        for n in names}
    gpu = [s["gpu_load"] for _, s in tegra.samples if "gpu_load" in s]
    if gpu:
        out["gpu_load_pct"] = _series(gpu)
    loads = [np.mean([x for x in s["cpu_load"] if x is not None])
             for _, s in tegra.samples if s.get("cpu_load") and any(
                 x is not None for x in s["cpu_load"])]
    if loads:
        out["cpu_load_pct"] = _series([float(x) for x in loads])
    ram = [s["ram_used_mb"] for _, s in tegra.samples if "ram_used_mb" in s]
    if ram:
        out["ram_used_mb"] = _series(ram)
    return out


def print_summary(r: dict, stream) -> None:
    f, lat, b = r["frames"], r["latency_ms"]["end_to_end"], r["bitrate"]
    fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    print(f"field-bench: {r['source']['description']}", file=stream)
    print(f"  {r['duration_s']['measured']:.1f} s, {f['encoded']} frames encoded, "
          f"{f['dropped']} dropped ({100 * f['drop_rate']:.1f} %), "
          f"{r['fps']['achieved']:.1f} fps", file=stream)
    print(f"  end-to-end ms p50/p95/p99: {fmt(lat['p50_ms'])}/{fmt(lat['p95_ms'])}/"
          f"{fmt(lat['p99_ms'])}; CPU {r['cpu']['process_percent']:.0f} % "
          f"({r['cpu']['cores']} cores); peak RSS {r['memory']['peak_rss_mb']:.0f} MB", file=stream)
    if b.get("mean_kbps") is not None:
        tgt = f" (target {b['target_kbps']:.0f})" if b.get("target_kbps") else ""
        print(f"  bitrate {b['mean_kbps']:.0f} kbit/s{tgt}, per-second CV {b['cv']}", file=stream)
    j = r["jetson"]
    print("  jetson: " + (j.get("model") or "yes" if j["available"] else j["reason"]),
          file=stream)
