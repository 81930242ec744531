"""What the machine exposes during a field benchmark: Linux thermal zones, the INA3221 power rails
and ``tegrastats`` of a Jetson (and whether it is one), a background ``Sampler`` of process CPU
time, RSS and those sensors, and a description of the machine (``machine_info``).

Everything is read from ``/proc``, ``/sys`` and ``/etc`` (under ``root`` where a function takes
one, for tests) and from ``tegrastats`` when it is on PATH; nothing needs root.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import platform
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from ..platform import detect as detect_platform

PACKAGES = ("edge_semvc", "numpy", "av", "onnxruntime", "cffi", "PyYAML", "pillow",
            "scikit-image")


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
    """{"available": bool, ...}: model, L4T release and power mode, or the reason it is not
    (`platform.detect`)."""
    plat = detect_platform(root)
    if not plat.jetson:
        return {"available": False, "reason": f"not a Jetson: {plat.reason}"}
    out = {"available": True, "model": plat.model, "l4t": plat.release, "nvpmodel": None}
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
        self.samples.append((self.clock(), t.user + t.system, rss_bytes(),
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


def rss_bytes() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def proc_stat_cpu() -> tuple[float, float] | None:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    try:
        f = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = f[3] + (f[4] if len(f) > 4 else 0.0)
    return sum(f) - idle, sum(f)


def machine_info() -> dict:
    """The machine and the versions of the packages that matter, for the report's "machine"."""
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
