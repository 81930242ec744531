"""Field benchmark: the live pipeline on one source for N seconds, as a device in the field runs it.

Records throughput, dropped frames, end-to-end and per-stage latency (p50/p95/p99), CPU and
peak memory, the output bitrate second by second against the target, and whatever temperature
and power sensors the machine exposes (Linux thermal zones; on a Jetson the INA3221 power
rails and ``tegrastats``). Writes one JSON report. The same code runs on a PC.

    edge-semvc field-bench URI [OUTPUT] --seconds 10 [--realtime | --no-realtime]
        [--speed X] [--loop] [--config FILE] [--set KEY=VALUE ...]
        [--bitrate 800k --rc cbr] [--json FILE]

A live camera delivers frames at its own rate whether or not the encoder keeps up. In
``--realtime`` mode (the default for files and ``demo://``) the source is paced like one: a
camera thread publishes frame *i* at ``t0 + (pts_i - pts_0) / speed`` into a one-frame buffer,
and a frame the pipeline has not taken when the next one arrives is overwritten, as a camera
driver does, and counted as dropped. The kept frames keep their own timestamps, so the output
plays at the real rate with the gaps a live encoder would have.

Only the pipeline's public entry point is used (``run_encode`` with ``on_frame``) plus the
output file, which is demuxed afterwards for the per-second bitrate.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import glob
import json
import logging
import math
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from ..frame import Frame

log = logging.getLogger("edge_semvc")

REPORT_VERSION = 1
# URI schemes of sources that are live by nature (pace themselves): --realtime is off by default.
LIVE_SCHEMES = {"v4l2", "csi", "rtsp", "rtp", "udp", "srt", "webrtc"}
PACKAGES = ("edge_semvc", "numpy", "av", "onnxruntime", "cffi", "PyYAML", "pillow",
            "scikit-image")


# --------------------------------------------------------------------------------------------
# Pacing: a Source that behaves like a camera


class PacedSource:
    """Wraps a Source (same protocol) and releases its frames like a live camera.

    ``realtime=True``: a camera thread reads the input ahead and publishes frame *i* at
    ``t0 + (pts_i - pts_0) * time_base / speed`` into a one-frame buffer, as a camera driver
    does; ``frames()`` hands out what is in the buffer. A frame overwritten before the pipeline
    took it is dropped (``dropped``): the pipeline fell a frame period or more behind. When the
    input itself cannot be read in time (a slow decoder, a very high ``speed``) the schedule
    slips by the delay instead of bursting (``slip_s``): the source, not the pipeline, set the
    pace then. ``realtime=False``: frames are handed out as fast as they are asked for.

    ``seconds`` > 0 stops after that much wall-clock time. ``reopen`` (a callable returning a
    fresh Source) loops the input: its timestamps continue one frame after the last.

    Kept frames are renumbered 0, 1, 2, ... (``Frame.index``: the labeler's interval counts
    processed frames) and keep their (loop-adjusted) pts, strictly increasing; where the
    input's own pts would not increase they are bumped by one tick (``pts_adjusted``).
    ``capture_times[index]``: when each kept frame became available (``time.perf_counter``).
    """

    def __init__(self, source, *, realtime: bool = True, speed: float = 1.0,
                 seconds: float = 0.0, reopen: Callable[[], object] | None = None,
                 on_start: Callable[[float], None] | None = None):
        if speed <= 0:
            raise ValueError(f"speed must be > 0, got {speed}")
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        self._src = source
        self.width, self.height = source.width, source.height
        self.fps, self.time_base = Fraction(source.fps), Fraction(source.time_base)
        self.frame_count = 0  # unknown: drops, looping and the time limit decide
        self.realtime, self.speed, self.seconds = realtime, float(speed), float(seconds)
        self._reopen, self._on_start = reopen, on_start
        mode = f"realtime x{self.speed:g}" if realtime else "as fast as possible"
        self.description = f"{source.description} [paced: {mode}" + \
            (", looped" if reopen else "") + (f", {self.seconds:g} s" if seconds else "") + "]"
        self._ticks = max(1, round(1 / (self.fps * self.time_base)))  # one frame in time_base
        self.capture_times: dict[int, float] = {}
        self.read_ms: list[float] = []  # time spent reading the wrapped source, per frame
        self.offered = self.kept = self.dropped = 0
        self.max_consecutive_dropped = 0
        self.passes = 0
        self.pts_adjusted = 0
        self.slip_s = 0.0
        self.t0: float | None = None
        self.t_last: float | None = None  # when the last frame was published / handed out
        self.ended_by: str | None = None  # "seconds" | "end of input" | "stopped" | "error"
        self._cond = threading.Condition()
        self._slot = None  # ((pts, frame), published_at), waiting for the consumer
        self._run = 0  # frames overwritten since the consumer last took one
        self._ended = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _raw(self) -> Iterator[tuple[int, Frame]]:
        """(pts, frame) over every pass of the input; pts strictly increasing across loops."""
        last: int | None = None
        src = self._src
        while True:
            self.passes += 1
            offset, n = 0, 0
            for f in src.frames():
                pts = int(f.pts) if f.pts is not None else round(n * self._ticks)
                if n == 0 and last is not None:  # a new pass continues one frame after the last
                    offset = last + self._ticks - pts
                n += 1
                pts += offset
                if last is not None and pts <= last:
                    pts = last + 1
                    self.pts_adjusted += 1
                last = pts
                yield pts, f
            if self._reopen is None or n == 0 or self._stop.is_set():
                return
            src.close()
            src = self._src = self._reopen()

    def _timed_read(self, it):
        t = time.perf_counter()
        item = next(it, None)
        now = time.perf_counter()
        if item is not None:
            self.read_ms.append((now - t) * 1e3)
        return item, now

    def _start(self, now: float) -> None:
        self.t0 = now
        if self._on_start:
            self._on_start(now)

    def frames(self) -> Iterator[Frame]:
        return self._paced() if self.realtime else self._unpaced()

    def _unpaced(self) -> Iterator[Frame]:
        it = self._raw()
        index = 0
        while True:
            item, now = self._timed_read(it)
            if item is None:
                self.ended_by = "end of input"
                return
            if self.t0 is None:
                self._start(now)
            elif self.seconds and now - self.t0 >= self.seconds:
                self.ended_by = "seconds"
                return
            self.offered += 1
            self.kept += 1
            self.capture_times[index] = self.t_last = now
            yield dataclasses.replace(item[1], pts=item[0], index=index)
            index += 1

    def _paced(self) -> Iterator[Frame]:
        self._thread = threading.Thread(target=self._camera, daemon=True, name="field-camera")
        self._thread.start()
        index = 0
        try:
            while True:
                with self._cond:
                    while self._slot is None and not self._ended:
                        self._cond.wait(0.1)
                    item, self._slot = self._slot, None
                    self._run = 0
                    error = self._error
                if item is None:  # ended, and the last frame was taken
                    if error is not None:
                        raise error
                    return
                (pts, f), published = item
                self.capture_times[index] = published
                self.kept += 1
                yield dataclasses.replace(f, pts=pts, index=index)
                index += 1
        finally:
            self._stop.set()

    def _camera(self) -> None:
        """The camera: read ahead, wait for each frame's due time, publish (overwriting)."""
        it = self._raw()
        base = pts0 = 0
        try:
            while not self._stop.is_set():
                item, now = self._timed_read(it)
                if item is None:
                    self.ended_by = "end of input"
                    return
                if self.t0 is None:
                    self._start(now)
                    base, pts0 = now, item[0]
                media = float((item[0] - pts0) * self.time_base) / self.speed
                due = base + media
                if now > due:  # the input could not be read in time: the camera runs late
                    self.slip_s += now - due
                    base += now - due
                    due = now
                # Elapsed time as (slip) + (media time): exact where nothing slipped, whereas
                # (t0 + 0.4) - t0 can fall short of 0.4 when t0 is a large clock reading.
                if self.seconds and (base - self.t0) + media >= self.seconds:
                    self.ended_by = "seconds"
                    return
                if due > now and self._stop.wait(due - now):
                    break
                with self._cond:
                    if self._slot is not None:  # never taken: overwritten, as a camera does
                        self.dropped += 1
                        self._run += 1
                        self.max_consecutive_dropped = max(self.max_consecutive_dropped,
                                                           self._run)
                    self._slot = (item, time.perf_counter())
                    self.t_last = self._slot[1]
                    self.offered += 1
                    self._cond.notify_all()
            self.ended_by = self.ended_by or "stopped"
        except BaseException as e:  # handed to the consumer (a DecodeError ends the run)
            self._error = e
            self.ended_by = "error"
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def close(self) -> None:
        """Stop the camera thread (after its current read) and close the input."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            if self._thread.is_alive():  # still inside a read: closing now could crash it
                log.warning("field-bench: the source is still being read; not closing it")
                return
        self._src.close()


# --------------------------------------------------------------------------------------------
# Sensors: thermal zones, INA3221 power rails, tegrastats


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip().strip("\x00")
    except OSError:
        return None


def _read_number(path: str | Path) -> float | None:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


@dataclasses.dataclass
class ThermalZone:
    name: str
    path: str  # .../thermal_zoneN/temp (millidegrees C)

    def read(self) -> float | None:
        v = _read_number(self.path)
        if v is None:
            return None
        c = v / 1000.0
        return c if -40.0 < c < 200.0 else None  # Jetson reports -256 C for powered-off zones


def find_thermal_zones(root: str = "/") -> list[ThermalZone]:
    zones = []
    paths = sorted(glob.glob(os.path.join(root, "sys/class/thermal/thermal_zone*")),
                   key=lambda p: int(re.sub(r"\D", "", os.path.basename(p)) or 0))
    seen: dict[str, int] = {}
    for zone in paths:
        kind = _read(os.path.join(zone, "type"))
        temp = os.path.join(zone, "temp")
        if not kind or not os.path.exists(temp):
            continue
        seen[kind] = seen.get(kind, 0) + 1
        name = kind if seen[kind] == 1 else f"{kind}#{os.path.basename(zone)[12:]}"
        zones.append(ThermalZone(name, temp))
    return zones


@dataclasses.dataclass
class PowerRail:
    """One INA3221 channel. L4T >= 34 (JetPack 5/6): hwmon files ``in<N>_label``,
    ``in<N>_input`` (mV), ``curr<N>_input`` (mA). L4T 32 (JetPack 4): iio files
    ``rail_name_<N>``, ``in_power<N>_input`` (mW)."""

    name: str
    device: str
    power: str | None = None  # mW
    voltage: str | None = None  # mV
    current: str | None = None  # mA

    def read(self) -> float | None:
        """Instantaneous power in mW."""
        if self.power:
            return _read_number(self.power)
        mv, ma = _read_number(self.voltage), _read_number(self.current)
        return mv * ma / 1000.0 if mv is not None and ma is not None else None


def find_power_rails(root: str = "/") -> list[PowerRail]:
    rails: list[PowerRail] = []
    drivers = os.path.join(root, "sys/bus/i2c/drivers")
    # JetPack 5/6 (L4T 34+): /sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmonN/in1_label ...
    for label in sorted(glob.glob(os.path.join(drivers, "ina3221*/*/hwmon/hwmon*/in*_label"))):
        d, m = os.path.dirname(label), re.match(r"in(\d+)_label$", os.path.basename(label))
        name = _read(label)
        curr, volt = os.path.join(d, f"curr{m.group(1)}_input"), \
            os.path.join(d, f"in{m.group(1)}_input")
        if name and os.path.exists(curr) and os.path.exists(volt):  # skips "sum of shunt ..."
            rails.append(PowerRail(name, label.split(os.sep)[-4], voltage=volt, current=curr))
    # JetPack 4 (L4T 32): /sys/bus/i2c/drivers/ina3221x/7-0040/iio:device0/rail_name_0 ...
    for label in sorted(glob.glob(os.path.join(drivers, "ina3221*/*/iio:device*/rail_name_*"))):
        d, ch = os.path.dirname(label), label.rsplit("_", 1)[-1]
        name, pw = _read(label), os.path.join(d, f"in_power{ch}_input")
        if name and os.path.exists(pw):
            rails.append(PowerRail(name, label.split(os.sep)[-3], power=pw))
    counts: dict[str, int] = {}
    for r in rails:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in rails:  # the same label on two monitors: tell them apart
        if counts[r.name] > 1:
            r.name = f"{r.name}@{r.device}"
    return rails


def detect_jetson(root: str = "/") -> dict:
    """{"available": bool, ...}: model, L4T release and power mode, or the reason it is not."""
    model = None
    for p in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        model = _read(os.path.join(root, p))
        if model:
            break
    release = _read(os.path.join(root, "etc/nv_tegra_release"))
    if release:
        release = release.splitlines()[0].lstrip("# ").strip()
    if not (release or (model and "jetson" in model.lower())):
        return {"available": False,
                "reason": "not a Jetson: no /etc/nv_tegra_release and the device-tree model is "
                          + (repr(model) if model else "absent")}
    out = {"available": True, "model": model, "l4t": release, "nvpmodel": None}
    if root == "/" and shutil.which("nvpmodel"):
        try:
            q = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5)
            out["nvpmodel"] = " ".join(q.stdout.split()) or None
        except (OSError, subprocess.SubprocessError):
            pass
    return out


_TS_POWER = re.compile(r"(?<![\w@])([A-Za-z][\w]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?![\w])")
_TS_TEMP = re.compile(r"(?<![\w])([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
_TS_CPU = re.compile(r"CPU \[([^\]]*)\]")
_TS_GPU = re.compile(r"GR3D_FREQ (\d+)%")
_TS_RAM = re.compile(r"RAM (\d+)/(\d+)MB")


def parse_tegrastats(line: str) -> dict:
    """One tegrastats line -> {"power_mw": {rail: now}, "temp_c": {...}, "cpu_load": [...],
    "gpu_load": %, "ram_used_mb": MB}; fields the line lacks are left out."""
    out: dict = {}
    power = {m.group(1): float(m.group(2)) for m in _TS_POWER.finditer(line)
             if m.group(1) not in ("RAM", "SWAP", "IRAM")}
    if power:
        out["power_mw"] = power
    temps = {m.group(1): float(m.group(2)) for m in _TS_TEMP.finditer(line)
             if -40.0 < float(m.group(2)) < 200.0}
    if temps:
        out["temp_c"] = temps
    m = _TS_CPU.search(line)
    if m:
        out["cpu_load"] = [float(x.split("%")[0]) if "%" in x else None
                           for x in m.group(1).split(",")]
    m = _TS_GPU.search(line)
    if m:
        out["gpu_load"] = float(m.group(1))
    m = _TS_RAM.search(line)
    if m:
        out["ram_used_mb"] = float(m.group(1))
    return out


class Tegrastats:
    """``tegrastats --interval MS`` in the background, each line parsed and timestamped."""

    def __init__(self, interval_s: float, clock: Callable[[], float]):
        self.interval_ms = max(100, int(interval_s * 1000))
        self.clock = clock
        self.samples: list[tuple[float, dict]] = []
        self.first_line: str | None = None
        self.error: str | None = None
        self.proc = None
        self.thread: threading.Thread | None = None

    def start(self) -> "Tegrastats":
        try:
            self.proc = subprocess.Popen(["tegrastats", "--interval", str(self.interval_ms)],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True, bufsize=1)
        except OSError as e:
            self.error = f"cannot run tegrastats: {e}"
            return self
        self.thread = threading.Thread(target=self._read, daemon=True, name="tegrastats")
        self.thread.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.strip()
            if line:
                self.first_line = self.first_line or line
                self.samples.append((self.clock(), parse_tegrastats(line)))

    def stop(self) -> None:
        if not self.proc:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.thread:
            self.thread.join(timeout=2)  # the reader ends at the end of the pipe
        err = self.proc.stderr.read() if self.proc.stderr else ""
        if not self.samples:
            self.error = "tegrastats printed nothing" + (f": {err.strip()[:200]}" if err else "")


class Sampler:
    """Every ``interval`` s in a background thread: process CPU time, RSS, thermal zones and
    power rails. ``samples``: (t, cpu_s, rss_bytes, {zone: C}, {rail: mW})."""

    def __init__(self, interval: float, zones: list[ThermalZone], rails: list[PowerRail],
                 clock: Callable[[], float] = time.perf_counter):
        self.interval, self.zones, self.rails, self.clock = interval, zones, rails, clock
        self.samples: list[tuple[float, float, int, dict, dict]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="field-sampler")

    def sample(self) -> None:
        t = os.times()
        self.samples.append((self.clock(), t.user + t.system, _rss_bytes(),
                             {z.name: z.read() for z in self.zones},
                             {r.name: r.read() for r in self.rails}))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> "Sampler":
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.sample()


def _rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _proc_stat_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        f = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = f[3] + (f[4] if len(f) > 4 else 0.0)
    return sum(f) - idle, sum(f)


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


def machine_info() -> dict:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip().lower(), value.strip())
    except OSError:
        pass
    # x86: "model name"; ARM: "model name" or "Hardware"/"Model" (x86 "model" is a number)
    cpu_model = next((info[k] for k in ("model name", "hardware", "model", "cpu model")
                      if info.get(k) and not info[k].isdigit()), None)
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 1024)
    except (OSError, ValueError):
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    from importlib import metadata

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        import av

        versions["ffmpeg_libs"] = {k: ".".join(map(str, v))
                                   for k, v in av.library_versions.items()}
    except Exception:  # informative only
        pass
    return {
        "hostname": platform.node(), "platform": platform.platform(),
        "machine": platform.machine(), "cpu_model": cpu_model or platform.processor() or None,
        "cores": os.cpu_count(), "cores_usable": usable, "memory_mb": mem_total,
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
    }


# --------------------------------------------------------------------------------------------
# Command line


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not v > 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return v


def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    if not v >= 0 or not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The field benchmark's arguments (``edge-semvc field-bench`` and ``python -m``)."""
    from ..options import add_encoder_arguments

    p.add_argument("input", help="source: file path or URI (file://, demo://astronaut)")
    p.add_argument("output", nargs="?",
                   help="encoded output (.mp4 .mkv .ts .h264); default: a temporary .mp4, "
                        "deleted after the bitrate analysis")
    p.add_argument("--seconds", type=_non_negative, default=10.0,
                   help="run for this many seconds of wall-clock time (default 10; 0: until the "
                        "input ends or Ctrl-C)")
    p.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                   help="pace the source at its frame rate like a camera, dropping frames the "
                        "pipeline cannot take in time (default: on for files and demo://)")
    p.add_argument("--speed", type=_positive, default=1.0,
                   help="realtime pacing at this multiple of the source's frame rate "
                        "(default 1; e.g. 4 plays a 30 fps file as a 120 fps camera)")
    p.add_argument("--loop", action="store_true",
                   help="reopen the input when it ends (timestamps continue)")
    add_encoder_arguments(p)
    p.add_argument("--sample-interval", type=_positive, default=0.5, metavar="S",
                   help="sensor/CPU sampling period in seconds (default 0.5)")
    p.add_argument("--json", metavar="FILE", help="write the report here (default: stdout)")


def run(args) -> int:
    """Run the benchmark for parsed ``args``; writes the JSON report. Returns the exit status
    (0; 3 when the input broke part-way; 130 on Ctrl-C — the report is written in both cases).
    Configuration, source, model and encoder errors propagate (the CLI reports them, exit 2)."""
    from ..options import config_overrides
    from ..config import load_config
    from ..pipeline import partial_result, run_encode
    from ..sinks.file import SinkError, check_distinct_files, check_writable, wants_global_headers
    from ..sources import RawVideoOptions, open_source

    check_distinct_files({"INPUT": args.input, "OUTPUT": args.output, "--json": args.json})
    if args.json:
        try:  # the report's folder is made if missing, now rather than after the run
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SinkError(f"cannot write --json {args.json}: {e.strerror}") from None
    check_writable({"OUTPUT": args.output, "--json": args.json})
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    cfg = load_config(args.config, config_overrides(args))
    tmpdir = None
    output = args.output
    if not output:
        tmpdir = tempfile.mkdtemp(prefix="edge_semvc_field_")
        output = os.path.join(tmpdir, "field.mp4")
    wants_global_headers(output)  # an unsupported extension fails before any work
    raw = RawVideoOptions(args.input_width, args.input_height, args.input_rate,
                          args.input_pix_fmt)
    scheme = args.input.partition("://")[0] if "://" in args.input else "file"
    realtime = args.realtime if args.realtime is not None else scheme not in LIVE_SCHEMES

    clock = time.perf_counter
    jetson = detect_jetson()
    zones, rails = find_thermal_zones(), find_power_rails()
    sampler = Sampler(args.sample_interval, zones, rails, clock)
    tegra = None
    window: dict = {}

    def on_start(t0: float) -> None:  # first frame released: the measured window opens
        window["cpu0"], window["sys0"] = os.times(), _proc_stat_cpu()

    e2e_ms: list[float] = []
    done_at: list[float] = []

    def on_frame(frame, labels, qp) -> None:
        now = clock()
        cap = paced.capture_times.pop(frame.index, None)
        if cap is not None:
            e2e_ms.append((now - cap) * 1e3)
        done_at.append(now)

    rss_before = _rss_bytes()
    source = open_source(args.input, raw)
    paced = PacedSource(source, realtime=realtime, speed=args.speed, seconds=args.seconds,
                        reopen=(lambda: open_source(args.input, raw)) if args.loop else None,
                        on_start=on_start)
    status, error, stats = 0, None, None
    try:
        if jetson["available"] and shutil.which("tegrastats"):
            tegra = Tegrastats(args.sample_interval, clock).start()
        sampler.start()
        stats = run_encode(paced, output, cfg, semantic=not args.no_map, on_frame=on_frame)
    except (KeyboardInterrupt, Exception) as e:
        stats, status, error = partial_result(e)
    finally:
        t_end = clock()
        cpu1, sys1 = os.times(), _proc_stat_cpu()
        paced.close()
        sampler.stop()
        if tegra:
            tegra.stop()

    try:
        report = _report(args, cfg, stats, paced, realtime, started, output, tmpdir is None,
                         e2e_ms, done_at, window, t_end, cpu1, sys1, rss_before, sampler,
                         jetson, rails, tegra, error)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    else:
        print(text)
    _print_summary(report, sys.stderr if not args.json else sys.stdout)
    if error:
        print(f"edge-semvc: error: {error}; the report covers the "
              f"{report['frames']['encoded']} frames before it", file=sys.stderr)
    return status


def _report(args, cfg, stats: dict, paced: PacedSource, realtime: bool, started: str,
            output: str, keep_output: bool, e2e_ms, done_at, window, t_end, cpu1, sys1,
            rss_before, sampler: Sampler, jetson: dict, rails, tegra, error) -> dict:
    t0 = paced.t0 if paced.t0 is not None else t_end
    wall = max(t_end - t0, 1e-9)
    cpu0 = window.get("cpu0") or cpu1
    user, system = cpu1.user - cpu0.user, cpu1.system - cpu0.system
    cores = os.cpu_count() or 1
    proc_pct = 100.0 * (user + system) / wall
    sys0 = window.get("sys0")
    system_pct = (round(100.0 * (sys1[0] - sys0[0]) / (sys1[1] - sys0[1]), 1)
                  if sys0 and sys1 and sys1[1] > sys0[1] else None)
    samples = [s for s in sampler.samples if s[0] >= t0]
    cpu_samples = [100.0 * (b[1] - a[1]) / (b[0] - a[0])
                   for a, b in zip(samples, samples[1:]) if b[0] > a[0]]
    enc = stats.get("encoder", {})
    fps = float(paced.fps)
    encoded = stats.get("frames", 0)

    stages = {}
    for name, v in stats.get("stages", {}).items():
        stages[name] = {k: v.get(k) for k in ("mean_ms", "p50_ms", "p95_ms", "p99_ms")}

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
    if realtime:
        notes.append("stages.decode is the pipeline's wait for the camera's next frame and so "
                     "includes the pacing; source_read is the time the camera thread actually "
                     "spent reading/decoding the input (in parallel, as a capture thread would).")
    if paced.dropped and enc.get("vfr_input") is False:
        notes.append("x264 runs with vfr_input off (e.g. tune zerolatency): its rate control "
                     "assumes every frame lasts 1/fps, so with dropped frames the bitrate per "
                     "second falls below the target.")
    if realtime and paced.slip_s > 0.05 * wall:
        notes.append(f"the camera thread could not publish every frame on time (reading the "
                     f"input took too long, see source_read, or the CPU was too busy to wake it): "
                     f"the schedule slipped by {paced.slip_s:.2f} s in total, so fps.offered is "
                     "below fps.nominal; drops then measure the pipeline against what the source "
                     "could deliver.")
    if args.seconds and paced.ended_by == "end of input":
        notes.append(f"the input ended before {args.seconds:g} s (use --loop to repeat it)")

    bitrate: dict
    enc_cfg = (stats.get("config") or {}).get("encoder", {})
    # abr/cbr aim at the bitrate; with crf it is only a VBV cap, not a target
    target = enc_cfg.get("bitrate") or None if enc_cfg.get("rc") in ("abr", "cbr") else None
    if Path(output).is_file() and encoded:  # (not a device: /dev/full reads forever)
        try:
            bitrate = bitrate_stability(output, target, paced.fps)
        except Exception as e:  # a truncated file after an error: say so, keep the report
            bitrate = {"target_kbps": round(target / 1e3, 3) if target else None,
                       "error": f"cannot read {output}: {e}"}
    else:
        bitrate = {"target_kbps": round(target / 1e3, 3) if target else None,
                   "error": "no output"}
    bitrate["rc"] = enc.get("rc")
    if enc_cfg.get("rc") == "crf" and enc_cfg.get("bitrate"):
        bitrate["vbv_cap_kbps"] = round(enc_cfg["bitrate"] / 1e3, 3)

    thermal = {"available": bool(sampler.zones)}
    if sampler.zones:
        thermal["zones_c"] = {z.name: _series([s[3].get(z.name) for s in sampler.samples])
                              for z in sampler.zones}
    else:
        thermal["reason"] = "no /sys/class/thermal/thermal_zone*/temp on this machine"

    jet = dict(jetson)
    if jetson["available"]:
        jet["power_rails"] = _power_summary(sampler, rails, t0, encoded)
        if tegra is None:
            jet["tegrastats"] = {"available": False,
                                 "reason": "tegrastats is not on PATH"}
        else:
            jet["tegrastats"] = _tegrastats_summary(tegra)
        jet["root"] = os.geteuid() == 0

    pipeline = {k: stats.get(k) for k in ("input", "frames", "bytes", "payload_bytes", "fps",
                                           "wall_s", "label_coverage", "mean_offset_roi",
                                           "mean_offset_background", "semantic", "models",
                                           "complete")}
    return {
        "report": "edge_semvc field benchmark", "version": REPORT_VERSION,
        "started_utc": started, "complete": error is None, "error": error,
        "source": {
            "uri": args.input, "description": paced.description, "width": paced.width,
            "height": paced.height, "fps": round(fps, 4), "time_base": str(paced.time_base),
            "realtime": realtime, "speed": paced.speed, "loop": bool(args.loop),
            "passes": paced.passes, "ended_by": paced.ended_by,
            "pts_adjusted": paced.pts_adjusted, "slip_s": round(paced.slip_s, 3),
        },
        "output": {"path": output if keep_output else None, "kept": keep_output,
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
            "nominal": round(fps * paced.speed, 4) if realtime else None,
            "offered": round(paced.offered / wall, 3),
            "achieved": round(encoded / wall, 3),
            "pipeline_wall": stats.get("fps"),
        },
        "latency_ms": {
            "end_to_end": distribution(e2e_ms),
            "stages": stages,
            "source_read": distribution(paced.read_ms),
            "frame_interval": distribution([(b - a) * 1e3 for a, b in zip(done_at, done_at[1:])]),
            "notes": notes,
        },
        "encoder": enc,
        "encoder_delay": {k: enc.get(k) for k in ("tune", "bframes", "rc_lookahead", "mb_tree",
                                                   "threads", "vfr_input", "vbv_bufsize_kbit")},
        "cpu": {
            "process_percent": round(proc_pct, 1),
            "process_percent_of_machine": round(proc_pct / cores, 1),
            "cores": cores, "user_s": round(user, 3), "system_s": round(system, 3),
            "machine_busy_percent": system_pct,
            "samples_percent": _percent_summary(cpu_samples),
        },
        "memory": {
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_before_mb": round(rss_before / 2**20, 1),
            "rss_max_sampled_mb": round(max((s[2] for s in sampler.samples), default=0) / 2**20,
                                        1),
        },
        "bitrate": bitrate,
        "thermal": thermal,
        "jetson": jet,
        "machine": machine_info(),
        "pipeline": pipeline,
        "config": stats.get("config"),
        "args": {k: (str(v) if isinstance(v, Fraction) else v) for k, v in vars(args).items()
                 if k != "func" and not callable(v)},
    }


def _percent_summary(values: list[float]) -> dict | None:
    """Per-interval process CPU % (100 = one core busy): mean, p50, p95, max."""
    if not values:
        return None
    a = np.asarray(values)
    p50, p95 = np.percentile(a, [50, 95])
    return {"n": int(a.size), "mean": round(float(a.mean()), 1), "p50": round(float(p50), 1),
            "p95": round(float(p95), 1), "max": round(float(a.max()), 1)}


def _power_summary(sampler: Sampler, rails: list[PowerRail], t0: float, frames: int) -> dict:
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


def _tegrastats_summary(tegra: Tegrastats) -> dict:
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


def _print_summary(r: dict, stream) -> None:
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
