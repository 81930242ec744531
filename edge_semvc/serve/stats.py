"""What `<prefix>/<camera>/stats` says: rates over the last interval, latencies over the last
frames, drops, what was labelled and how the map treated it, CPU and temperatures."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..follow import merge_stats as merge_follow
from ..storage import merge_stats
from .camera import Camera, add_recordings

THERMAL = Path("/sys/class/thermal")
STORAGE_IDRS = 10  # the most recent IDRs a stats message lists with their reasons


@dataclass(frozen=True)
class Carried:
    """What a camera counted before a reload restarted it (its earlier `Camera` objects): the
    counts go on from these, and the whole run's rates are over the time `since` it began."""

    frames: int = 0
    encoded_bytes: int = 0
    dropped: int = 0
    reconnects: int = 0
    frames_mapped: int = 0  # encoded with a map
    storage: dict | None = None  # the storage profile's decisions (storage.merge_stats)
    video_s: float = 0.0  # the seconds of video encoded (Camera.video_seconds)
    follow_link: dict | None = None  # the rate followers' figures (follow.merge_stats)
    recording: dict | None = None  # the recording's (camera.add_recordings)
    since: float | None = None  # the whole run's start (None: a window that starts now)


class StatsWindow:
    """Turns a camera's running counters into one stats message per interval (or, read once at
    the end, over the whole run), its counts going on from `carried`."""

    def __init__(self, camera: Camera, clock: Callable[[], float] = time.monotonic,
                 carried: Carried = Carried()):
        self.camera, self.clock, self.carried = camera, clock, carried
        start = clock() if carried.since is None else carried.since
        self._since = start
        self._last = ((start, 0, 0) if carried.since is not None else
                      (start, self._frames(), self._bytes()))

    def _frames(self) -> int:
        return self.carried.frames + self.camera.frames_total

    def _bytes(self) -> int:
        return self.carried.encoded_bytes + self.camera.encoded_bytes()

    def _storage(self) -> dict | None:  # its IDRs' frames counted as `frames`
        return merge_stats(self.carried.storage, self.camera.storage_stats(),
                           self.carried.frames, self.carried.video_s)

    def _follow(self) -> dict | None:  # over every run, the rate the current one's
        return merge_follow(self.carried.follow_link, self.camera.follow_stats())

    def totals(self) -> Carried:
        """The counts so far, for the window of the camera that a reload starts in its place."""
        cam = self.camera
        return Carried(self._frames(), self._bytes(), self.carried.dropped + cam.dropped(),
                       self.carried.reconnects + max(cam.runs - 1, 0),
                       self.carried.frames_mapped + cam.frames_mapped(), self._storage(),
                       self.carried.video_s + cam.video_seconds(), self._follow(),
                       add_recordings(self.carried.recording, cam.recording_stats()),
                       self._since)

    def snapshot(self, cpu_percent: float | None = None) -> dict:
        cam = self.camera
        stats = cam.stats.snapshot()  # values: the run goes on meanwhile
        now, frames, nbytes = self.clock(), self._frames(), self._bytes()
        t0, f0, b0 = self._last
        self._last = (now, frames, nbytes)
        dt = max(now - t0, 1e-9)
        new_bytes = nbytes - b0  # the runs that ended in the window included
        # the encoder's target now: the rate follower's, under encoder.bitrate (its ceiling)
        target = stats.follow_link["bitrate"] if stats.follow_link else cam.cfg.encoder.bitrate
        counts = stats.label_counts
        total = sum(counts)
        staleness = {name: m["staleness_frames"]["mean"] for name, m in stats.labeler.items()}
        return {
            "state": cam.state,
            "error": cam.error,  # why it is lost or failed, else null
            "frames": frames,
            "fps": round((frames - f0) / dt, 2),
            "bitrate_kbps": round(new_bytes * 8 / dt / 1e3, 1),
            "target_kbps": round(target / 1e3, 1) if target else None,
            "dropped_frames": self.carried.dropped + cam.dropped(),
            "latency_ms": {"end_to_end": _percentiles(list(cam.latency_ms)),
                           **{name: _percentiles(list(v)) for name, v in stats.timings.items()}},
            "label_coverage": ({c: round(n / total, 4) for c, n in zip(stats.classes, counts)}
                               if total else {}),
            "mean_offset_roi": _round(stats.mean_offset_roi, 3),
            "mean_offset_background": _round(stats.mean_offset_background, 3),
            "label_staleness_frames": staleness,
            # the stalest model's (a Home Assistant sensor)
            "label_age_frames": max((v for v in staleness.values() if v is not None),
                                    default=None),
            # as `frames`, over every run (qp.enabled false: none)
            "frames_with_map": self.carried.frames_mapped + cam.frames_mapped(),
            "label_budget": stats.label_budget,
            # while it runs the storage profile: a reload that made it live leaves none (its
            # decisions are carried, not shown: they go on if a reload makes it storage again)
            "storage": (_storage(self._storage()) if cam.cfg.encoder.profile == "storage"
                        else None),
            # while the run follows the link: its rate now, the changes over every run
            "follow_link": self._follow() if stats.follow_link else None,
            "reconnects": self.carried.reconnects + max(cam.runs - 1, 0),
            "outputs": cam.output_stats(self.carried.recording),
            "cpu_percent": cpu_percent,
            "temperatures_c": temperatures(),
        }


class CpuMeter:
    """The process's CPU use (user + system, all threads) since the last reading, in percent
    of one core."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._last = (clock(), _cpu_seconds())

    def percent(self) -> float:
        now, cpu = self.clock(), _cpu_seconds()
        t0, c0 = self._last
        self._last = (now, cpu)
        return round(100 * (cpu - c0) / max(now - t0, 1e-9), 1)


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _storage(decisions: dict | None) -> dict | None:
    """The storage profile's decisions over the camera's runs (storage.py): frames left out, GOP
    lengths, IDRs by reason and the last few with their frame and time."""
    if decisions is None:
        return None
    return {**decisions, "idrs": decisions["idrs"][-STORAGE_IDRS:]}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(np.asarray(ms), [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2)}


def temperatures(root: Path = THERMAL) -> dict[str, float]:
    """Thermal zones that can be read (°C by zone type); none on most containers."""
    out = {}
    for zone in sorted(root.glob("thermal_zone*")):
        try:
            kind = (zone / "type").read_text().strip() or zone.name
            out[kind] = round(int((zone / "temp").read_text().strip()) / 1000, 1)
        except (OSError, ValueError):
            continue
    return out
