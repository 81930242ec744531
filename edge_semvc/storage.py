"""The storage profile (`encoder.profile: storage`): fewer bytes for recorded video, beside
the semantic map, from two decisions taken before each frame reaches the encoder:

- Long GOP: the pipeline places every IDR (the encoder places none of its own), one every
  `gop_s` (10 s) of real time, and at once where a scene cut starts a new scene (the run's
  one cut decision, analysis/scene.py, which keeps cuts apart itself; nearly free, as a new
  scene's first picture is coded intra anyway). A recording segment's first frame is always
  an IDR (the sink asks). From a fixed camera the intra pictures are most of what a 2-second
  GOP costs (street, CRF 28: 67 % of plain x264's bytes), and a P-frame codes moving people as
  well as an I-frame would: so the GOP is long whether the scene moves or not, and bounded
  only by seeking and by how long a lost packet shows (BENCHMARKS.md, "Storage profile").
  Counted in time, not frames: with the dynamic frame rate x264's keyint would stretch.
- Dynamic frame rate: a frame is not encoded when nothing changed beyond sensor noise since
  the last encoded frame: every macroblock's mean absolute luma difference to that frame
  stays under `noise_factor` x its noise floor + `noise_margin`, and no object appeared.
  Comparing with the last *encoded* frame, not the previous one, lets slow changes add up
  until they count. Timestamps keep real time (players hold the last frame) and at least
  `min_fps` frames a second are encoded. The analysis still sees every frame.

The noise floor of a macroblock is its frame-to-frame difference while nothing happens there:
it follows a lower difference at once halfway and a higher one slowly (over ~2 s), so a
passing object barely lifts it while sensor noise, which is there every frame, sets it.

`Observer` runs in the understanding thread (every frame, in order); `StoragePolicy` in the
encoding thread, where it knows which frames were encoded.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from scipy import ndimage

from .analysis.change import block_mad
from .encoders.config import StorageConfig
from .frame import Frame, block_samples
from .values import LabelMap

NEW_OBJECT_MBS = 2  # a labelled component this big, apart from all of the last second's
IDR_LOG = 1000  # the IDRs whose reasons a run keeps (a service runs for months)


@dataclass
class Observation:
    """What the understanding thread learnt of one frame for the storage policy."""

    blocks: np.ndarray  # luma samples per macroblock (frame.block_samples)
    threshold: np.ndarray  # float32[mb_h, mb_w]: a difference above this is not noise
    cut: bool  # a new scene starts here
    appeared: bool  # a labelled object appeared


class Observer:
    """Per frame, in order: noise floors and objects appearing; the scene cut is the run's
    (understanding.py), passed to `observe`."""

    def __init__(self, cfg: StorageConfig, fps: Fraction):
        self.cfg = cfg
        self._prev: np.ndarray | None = None
        self._floor: np.ndarray | None = None
        self._up = 1.0 / max(2.0 * float(fps), 1.0)  # a higher difference lifts it over ~2 s
        self._seen: deque[np.ndarray] = deque(maxlen=max(1, round(float(fps))))

    def observe(self, frame: Frame, labels: LabelMap | None, cut: bool) -> Observation:
        blocks = block_samples(frame.luma_grid)  # the analysis's samples (Frame caches them)
        prev, self._prev = self._prev, blocks
        # the floor known before this frame: its own difference must not excuse itself (the
        # second frame of a run would always pass for noise)
        floor = self._floor
        if prev is None or prev.shape != blocks.shape:
            self._floor = floor = None
            self._seen.clear()
        else:
            diff = block_mad(prev, blocks)
            if self._floor is None:
                self._floor = diff
            else:
                rate = np.where(diff < self._floor, 0.5, self._up).astype(np.float32)
                self._floor = self._floor + rate * (diff - self._floor)
        cfg = self.cfg
        if floor is None:
            floor = np.zeros(blocks.shape[::2], np.float32)
        threshold = (cfg.noise_factor * floor + cfg.noise_margin).astype(np.float32)
        return Observation(blocks, threshold, cut, self._appeared(labels))

    def _appeared(self, labels: LabelMap | None) -> bool:
        if labels is None:
            return False
        now = labels.labels > 0
        if self._seen and self._seen[0].shape != now.shape:
            self._seen.clear()
        appeared = False
        if self._seen and now.any():
            # an object, not a box edge: a component that touches nothing of the last second
            parts, n = ndimage.label(now)
            recent = np.logical_or.reduce(self._seen)
            touched = np.unique(parts[recent & now])
            sizes = np.bincount(parts.ravel(), minlength=n + 1)
            fresh = np.setdiff1d(np.arange(1, n + 1), touched)
            appeared = bool((sizes[fresh] >= NEW_OBJECT_MBS).any())
        self._seen.append(now)
        return appeared


@dataclass
class Decision:
    encode: bool
    idr: str | None = None  # why this frame is an IDR: start, segment, scene_cut, interval


class StoragePolicy:
    """Per frame, in the encoding thread: encode it or not, and whether as an IDR (why).
    Also keeps what a run reports: frames left out, GOP lengths, each IDR's reason."""

    def __init__(self, cfg: StorageConfig, fps: Fraction, time_base: Fraction):
        self.cfg, self.fps, self.time_base = cfg, Fraction(fps), Fraction(time_base)
        self._ref: np.ndarray | None = None  # samples of the last encoded frame
        self._last_encoded: float | None = None
        self._last_idr: float | None = None
        self._last_seen: float | None = None
        self.first_seen: float | None = None  # the time of the run's first frame
        self.skipped = 0
        self.encoded = 0
        self.reasons: Counter[str] = Counter()
        # seconds between consecutive IDRs: count, sum, min, max (a service runs for months)
        self.gops = [0, 0.0, float("inf"), 0.0]
        self.idr_log: deque[dict] = deque(maxlen=IDR_LOG)

    def _seconds(self, frame: Frame) -> float:
        if frame.pts is None:
            return float(frame.index / self.fps)
        tb = Fraction(frame.time_base) if frame.time_base is not None else self.time_base
        return float(frame.pts * tb)

    def decide(self, frame: Frame, obs: Observation, asked: str | None) -> Decision:
        """`asked`: the reason an output asks this frame to be an IDR ("segment": a recording
        segment starts; "receiver": a viewer or client joined), or None."""
        cfg, t = self.cfg, self._seconds(frame)
        self._last_seen = t
        if self.first_seen is None:
            self.first_seen = t
        idr = self._idr_reason(t, obs, asked)
        encode = idr is not None or not cfg.dynamic_fps or self._something_new(t, obs)
        if not encode:
            self.skipped += 1
            return Decision(False)
        self.encoded += 1
        self._ref, self._last_encoded = obs.blocks, t
        if idr is not None:
            self._start_gop(t, idr, frame.index)
        return Decision(True, idr)

    def encode_anyway(self, frame: Frame, obs: Observation) -> None:
        """A frame `decide` left out is encoded after all (the last one of a stream: the
        recording must last as long as the input)."""
        self.skipped -= 1
        self.encoded += 1
        self._ref, self._last_encoded = obs.blocks, self._seconds(frame)

    def _idr_reason(self, t: float, obs: Observation, asked: str | None) -> str | None:
        cfg, since = self.cfg, None if self._last_idr is None else t - self._last_idr
        if since is None:
            return "start"
        if asked:
            return asked
        if not cfg.dynamic_gop:
            return None  # the encoder's own fixed GOP (keyint = gop_s)
        if obs.cut:  # nearly free: the first picture of a new scene is coded intra anyway
            return "scene_cut"
        if since >= cfg.gop_s - 0.5 / float(self.fps):  # the frame nearest the interval
            return "interval"
        return None

    def _something_new(self, t: float, obs: Observation) -> bool:
        if self._ref is None or self._ref.shape != obs.blocks.shape or obs.appeared:
            return True
        if t - self._last_encoded >= 1.0 / self.cfg.min_fps - 0.5 / float(self.fps):
            return True
        return bool((block_mad(self._ref, obs.blocks) > obs.threshold).any())

    def _start_gop(self, t: float, reason: str, index: int) -> None:
        if self._last_idr is not None:
            self.gops = _with_gop(self.gops, t - self._last_idr)
        self._last_idr = t
        self.reasons[reason] += 1
        self.idr_log.append({"frame": index, "time_s": round(t, 3), "reason": reason})

    def stats(self) -> dict:
        """What the run did so far (the open GOP counts up to the last frame seen)."""
        gops = self.gops
        if self._last_idr is not None:
            gops = _with_gop(gops, self._last_seen - self._last_idr + 1.0 / float(self.fps))
        count, total, shortest, longest = gops
        return {
            "frames_encoded": self.encoded,
            "frames_skipped": self.skipped,
            "idr_reasons": dict(self.reasons),
            "gop_s": ({"min": round(shortest, 3), "mean": round(total / count, 3),
                       "max": round(longest, 3), "count": count} if count else None),
            # the longest wait for a decodable picture when seeking: a whole GOP
            "longest_seek_s": round(longest, 3) if count else None,
            "idrs": list(self.idr_log),
        }


def merge_stats(before: dict | None, run: dict | None, offset: int = 0,
                seconds: float = 0.0) -> dict | None:
    """Two runs' `StoragePolicy.stats` as one, `run` after `before` (a camera lost and back,
    or restarted by a reload): the counts added, the GOPs of both, the last IDR_LOG IDRs, those
    of `run` at their frame counted from `offset` (the frames before it) and their `time_s`
    `seconds` later (the time before it)."""
    if run is not None and (offset or seconds):
        run = {**run, "idrs": [{**i, "frame": i["frame"] + offset,
                                "time_s": round(i["time_s"] + seconds, 3)}
                               for i in run["idrs"]]}
    if before is None or run is None:
        return run if before is None else before
    gops = [g for g in (before["gop_s"], run["gop_s"]) if g]
    count = sum(g["count"] for g in gops)
    gop = {"min": min(g["min"] for g in gops),
           "mean": round(sum(g["mean"] * g["count"] for g in gops) / count, 3),
           "max": max(g["max"] for g in gops), "count": count} if gops else None
    return {
        "frames_encoded": before["frames_encoded"] + run["frames_encoded"],
        "frames_skipped": before["frames_skipped"] + run["frames_skipped"],
        "idr_reasons": dict(Counter(before["idr_reasons"]) + Counter(run["idr_reasons"])),
        "gop_s": gop,
        "longest_seek_s": gop["max"] if gop else None,
        "idrs": (before["idrs"] + run["idrs"])[-IDR_LOG:],
    }


def _with_gop(gops: list, seconds: float) -> list:
    """[count, sum, min, max] of GOP lengths with one more."""
    count, total, shortest, longest = gops
    return [count + 1, total + seconds, min(shortest, seconds), max(longest, seconds)]
