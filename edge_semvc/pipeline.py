"""The per-frame loop: capture (Source) -> understand (understanding.py: scene cut, labeler,
analysis, QP map) -> encode (Encoder) -> write (Outputs: one encoder, many outputs).

`run_encode` builds the parts, then runs the loop. Three threads overlap (stages.py):
decoding, understanding and encoding (the caller's thread; x264 adds its own). Every stage is
timed; the run returns its statistics. Whatever happens, the output file is finalised with
the frames encoded so far.

The input's other streams (audio, subtitles, data) bypass the understanding stage: the encoding
thread takes their packets from the source as they are read and hands them to the outputs,
which write them in time order with the encoded video (`sinks/interleave.py`).
"""
from __future__ import annotations

import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Sequence

import numpy as np

from .config import Config
from .encoder_setup import encoder_settings, link_follower, storage_policy, tell_loss
from .encoders import get_encoder
from .encoders.config import EncoderConfig
from .errors import WriteError
from .follow import LinkFollower
from .frame import Frame
from .labeler import Labeler
from .sinks import open_output
from .sinks.base import Output, Outputs, StreamInfo
from .sources import DecodeError, Source
from .stages import Stage, timed
from .stop import deferred, exit_status, finalising
from .storage import StoragePolicy
from .tracks import Track, TrackPacket
from .understanding import FrameResult, MapFilter, NullLabeler, build_understanding
from .values import LabelMap, QpMap
from .visualize import OverlayVideo, overlay, save_png

log = logging.getLogger("edge_semvc")

STAGES = ("decode", "labeler", "analysis", "qp_map", "encode")


@dataclass
class Extras:
    """What a caller may add to a run besides its outputs: pictures of the map (a PNG of one
    frame's overlay, a video of all overlays), a progress line, and a filter on each map (what
    the encoder can take of it; bench: 8 ROI rectangles, edge_semvc/rects.py)."""

    png: str | None = None
    png_frame: int | None = None  # None: the middle frame (or the last, if the count is unknown)
    video: str | None = None
    progress: bool = False
    map_filter: MapFilter | None = None


@dataclass
class Live:
    """What a long-running caller (the service, a link benchmark) adds to a run:
    configuration changes applied between frames (the encoder's rate at the next frame encoded,
    the map's keys at the next frame understood), and statistics it reads while the run goes
    on (`RunStats.snapshot`), with per-stage timings kept over the last `timing_window` frames
    only (a run lasts months)."""

    updates: Callable[[], Config | None] | None = None  # polled before each frame
    stats: RunStats | None = None
    timing_window: int = 0  # 0: every frame (a batch run)
    queue_frames: int = 4  # between the threads: latency vs smoothing out a slow frame
    # > 0: a live input, one of this many cameras sharing the cores: the labeler's budget is
    # a share of each frame period (labeler.live_share, labeler/schedule.py); 0: a file
    cameras: int = 0
    # the rate the follower (encoder.follow_link) and the encoder start at, under
    # encoder.bitrate: the one a camera's last run reached on the same link; None: the ceiling
    follow_start: int | None = None


@dataclass(frozen=True)
class RunSnapshot:
    """A run's statistics so far, as values (what the service reads while the run goes on)."""

    frames: int
    frames_mapped: int
    bytes: int
    timings: dict[str, tuple[float, ...]]
    classes: tuple[str, ...]  # "background" first
    label_counts: tuple[int, ...]  # macroblocks per class, over the run
    mean_offset_roi: float | None
    mean_offset_background: float | None
    idr_requested: int
    rate_changes: int
    scene_cuts: int
    labeler: dict  # per model: runs, staleness, CPU per run (Labeler.stats)
    label_budget: dict | None  # what the budget gives the models (Labeler.budget_stats)
    storage: dict | None  # the storage profile's decisions (StoragePolicy.stats), or None
    follow_link: dict | None  # the rate follower's (LinkFollower.stats), or None


@dataclass
class RunStats:
    """The run's counters, written by the run's threads; others read `snapshot()`."""

    timings: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    frames: int = 0
    frames_mapped: int = 0  # frames that had something labelled and so got a map
    bytes: int = 0
    label_counts: np.ndarray | None = None
    offset_sum_roi: float = 0.0
    mb_roi: int = 0
    offset_sum_bg: float = 0.0
    mb_bg: int = 0
    idr_requested: int = 0  # IDR pictures asked for (scene cuts, segment starts)
    rate_changes: int = 0  # live changes of the encoder's target rate
    scene_cuts: int = 0  # frames that started a new scene (analysis/scene.py)
    labeler: Labeler | NullLabeler = field(default_factory=NullLabeler, repr=False)
    storage: StoragePolicy | None = None  # the storage profile's decisions (storage.py)
    follower: LinkFollower | None = None  # encoder.follow_link (follow.py)

    def add(self, result: FrameResult) -> None:
        labels, qp = result.labels, result.qp
        self.frames_mapped += result.mapped
        counts = np.bincount(labels.labels.ravel(), minlength=len(labels.classes))
        self.label_counts = counts if self.label_counts is None else self.label_counts + counts
        roi_sum = float(qp.offsets[labels.labels > 0].sum(dtype=np.float64))
        self.offset_sum_roi += roi_sum
        self.offset_sum_bg += float(qp.offsets.sum(dtype=np.float64)) - roi_sum
        self.mb_bg += int(counts[0])
        self.mb_roi += labels.labels.size - int(counts[0])

    def snapshot(self) -> RunSnapshot:
        """The counters now, copied (any thread: a list that grew while read is read again)."""
        for _ in range(3):
            try:
                return self._snapshot()
            except RuntimeError:  # a histogram or deque changed size while being copied
                continue
        return self._snapshot()

    def _snapshot(self) -> RunSnapshot:
        counts = self.label_counts
        return RunSnapshot(
            frames=self.frames, frames_mapped=self.frames_mapped, bytes=self.bytes,
            timings={name: tuple(v) for name, v in self.timings.items()},
            classes=("background", *self.labeler.classes),
            label_counts=tuple(int(n) for n in counts) if counts is not None else (),
            mean_offset_roi=self.offset_sum_roi / self.mb_roi if self.mb_roi else None,
            mean_offset_background=self.offset_sum_bg / self.mb_bg if self.mb_bg else None,
            idr_requested=self.idr_requested, rate_changes=self.rate_changes,
            scene_cuts=self.scene_cuts, labeler=self.labeler.stats(),
            label_budget=self.labeler.budget_stats(),
            storage=self.storage.stats() if self.storage is not None else None,
            follow_link=self.follower.stats() if self.follower is not None else None)


def passthrough(source: Source, cfg: Config) -> tuple[tuple[Track, ...], list[dict],
                                                       Callable[[], list[TrackPacket]]]:
    """(the source's tracks the outputs get, those left out with the reason, the call that takes
    their packets as read). A source without tracks (demo://) passes nothing."""
    tracks = tuple(getattr(source, "tracks", ()))
    kept = tuple(t for t in tracks if t.kind in cfg.streams.passthrough)
    skipped = list(getattr(source, "skipped", [])) + [
        {**t.summary(), "reason": f"streams.passthrough leaves out {t.kind}"}
        for t in tracks if t not in kept]
    for s in skipped:
        log.warning("the input's %s stream #%d (%s) is not passed through: %s", s["kind"],
                    s["stream"], s["codec"], s["reason"])
    return kept, skipped, getattr(source, "take_packets", list)


def open_outputs(output: str | Sequence[str | Output] | Outputs) -> Outputs:
    if isinstance(output, Outputs):
        return output
    return Outputs(open_output(o) if isinstance(o, str) else o
                   for o in ([output] if isinstance(output, str) else output))


def run_encode(source: Source, output: str | Sequence[str | Output] | Outputs, cfg: Config, *,
               semantic: bool = True, max_frames: int = 0,
               on_frame: Callable[[Frame, LabelMap, QpMap], None] | None = None,
               extras: Extras | None = None, live: Live | None = None) -> dict:
    """Encode `source` into `output`: a file path or output URI, or several, or an `Outputs`
    not yet open (`sinks/`: one encoder feeds them all). Returns the statistics (see README,
    "Statistics").

    `semantic=False` is the plain-x264 baseline: same decode, encoder and settings, a labeler
    that labels nothing, so no map (x264 gets no quant_offsets). `on_frame` sees every frame
    with its labels and map (benchmarks use it to know the region of interest). `max_frames`
    > 0 stops early. `extras`: pictures, progress, a map filter (`Extras`); `live`: the
    service's additions (`Live`).

    Raises DecodeError after finalising the output if decoding fails part-way; the stats of
    the frames written so far are attached to the exception as `.stats`.
    """
    extras, live = extras or Extras(), live or Live()
    outputs = open_outputs(output)
    stats = live.stats or RunStats()
    if live.timing_window:
        stats.timings = {s: deque(maxlen=live.timing_window) for s in STAGES}
    observer, stats.storage = storage_policy(cfg, source, outputs)
    understanding = build_understanding(cfg, semantic, getattr(source, "path", None), observer,
                                        stats.timings, extras.map_filter, live.cameras)
    stats.labeler = understanding.labeler
    stats.follower = link_follower(cfg, outputs, live.follow_start)
    settings = encoder_settings(cfg, source, outputs, stats.follower)
    tracks, skipped, take_packets = passthrough(source, cfg)
    shown = _Shown(extras, source, max_frames)
    t_start = time.perf_counter()
    finalising(False)
    error: BaseException | None = None
    stages: list[Stage] = []
    with get_encoder(cfg.encoder.backend)(settings) as enc, outputs.open(StreamInfo(
            source.width, source.height, settings.fps, settings.time_base, enc.codec,
            enc.headers(), settings.global_headers, tracks)) as sink:
        # a cut asks for an IDR with the scene extension (embodiment 4)
        recorder = _Recorder(enc, sink, stats, cfg.encoder, semantic and cfg.scene.enabled)
        if cfg.encoder.profile == "live":  # the storage profile places its IDRs itself
            tell_loss(cfg.encoder, outputs, enc, settings)
        understanding.encoder_opened(enc.weighs_reuse)
        try:
            decoded = timed(islice(source.frames(), max_frames or None), stats.timings["decode"])
            stages.append(Stage(decoded, None, "decode", live.queue_frames))
            stages.append(Stage(stages[-1], understanding, "understand", live.queue_frames))
            for result in stages[-1]:  # capture -> understand (threads) -> encode -> write
                sink.add_track_packets(take_packets())
                new = live.updates() if live.updates else None
                if new is not None:  # the rate now, the map from the next frame understood
                    recorder.retune(new.encoder)
                    understanding.reconfigure(new)
                recorder.record(result)
                stats.add(result)
                if on_frame:
                    on_frame(result.frame, result.labels, result.qp)
                shown.add(result, stats.frames)
            recorder.finish()
        except (DecodeError, KeyboardInterrupt) as e:
            error = e
        except OSError as e:  # an output cannot be written (disk full, reader gone)
            error = _write_error(output, e)
        finally:
            # From here on a stop signal is only noted: it must not cut the flush, the file's
            # trailer or the statistics short (the run is ending anyway).
            finalising(True)
            for stage in stages:
                stage.stop()
            if max_frames and stats.frames >= max_frames:  # the tracks to the video's end
                getattr(source, "read_tracks_on", lambda: None)()
            drained = _drain(recorder, sink, take_packets, output)
            error = error or drained  # the first error is the one reported
            shown.close()
            understanding.labeler.close()
        summary = enc.settings_summary()
    wall = time.perf_counter() - t_start
    shown.save_png()
    result = _summarise(stats, wall, source, summary, cfg, outputs)
    result["passthrough"] = {"streams": outputs.track_stats(), "skipped": skipped}
    result["repaired_pts"] = getattr(source, "repaired_pts", 0)
    result["retimed_packets"] = getattr(source, "retimed_packets", 0)
    result["damaged_packets"] = getattr(source, "damaged_packets", 0)
    result["concealed_frames"] = getattr(source, "concealed_frames", 0)
    result["corrupt_packets"] = getattr(source, "corrupt_packets", 0)
    if stats.storage is not None:
        result["storage"] = stats.storage.stats()
    if stats.follower is not None:
        result["follow_link"] = stats.follower.stats()
    if error is not None:
        result["complete"] = False
        result["error"] = str(error) or type(error).__name__
        error.stats = result
        raise error
    result["complete"] = True
    return result


def _drain(recorder: _Recorder, sink: Outputs, take_packets, output) -> WriteError | None:
    """Drain the encoder even after an error (delayed frames belong in the file), then the
    outputs' trailers, so that the statistics see the files' final sizes."""
    error = None
    try:
        recorder.write(recorder.enc.flush())
        sink.add_track_packets(take_packets())  # what was read, up to the video's end
    except OSError as e:
        error = _write_error(output, e)
    try:
        sink.close()
    except OSError as e:  # closing a file failed (its last bytes did not fit)
        error = error or _write_error(output, e)
    return error


class _Shown:
    """The run's pictures of the map (`Extras`: PNG, overlay video) and its progress line."""

    def __init__(self, extras: Extras, source: Source, max_frames: int):
        self.extras = extras
        expected = min(source.frame_count or max_frames, max_frames or source.frame_count)
        self.png_index = extras.png_frame if extras.png_frame is not None else \
            (expected // 2 if expected else sys.maxsize)
        self.png_shot = None
        self.video = None
        if extras.video:
            self.video = OverlayVideo(extras.video, source.width, source.height, source.fps)
        self.reporter = _Progress(expected) if extras.progress else None

    def add(self, r: FrameResult, frames: int) -> None:
        if self.extras.png and (r.frame.index <= self.png_index or self.png_shot is None):
            self.png_shot = (r.frame, r.qp, r.labels)
        if self.video:
            self.video.write(overlay(r.frame, r.qp, r.labels))
        if self.reporter:
            self.reporter.update(frames)

    def close(self) -> None:
        if self.video:
            self.video.close()
        if self.reporter:
            self.reporter.done()

    def save_png(self) -> None:
        if self.png_shot is not None:
            save_png(overlay(*self.png_shot), self.extras.png)


class _Recorder:
    """Each frame to the encoder, its packets to the sink. Before each frame it asks the sink
    whether a segment starts there and, with the storage profile, the policy whether to encode
    the frame at all and whether as an IDR (else: a segment start is one, and a cut where
    `idr_on_cut`)."""

    def __init__(self, enc, sink: Outputs, stats: RunStats, rate: EncoderConfig,
                 idr_on_cut: bool):
        self.enc, self.sink, self.stats, self.idr_on_cut = enc, sink, stats, idr_on_cut
        # what the encoder runs with (a copy: values): the follower's rate, if it follows a link
        self.rate = (stats.follower.bitrate if stats.follower else rate.bitrate, rate.crf)
        self.left_out = None  # the last frame the storage profile left out, and its map

    def retune(self, new: EncoderConfig) -> None:
        """A live change of the target rate (over MQTT; with the follower, its ceiling): from
        the next frame encoded, no IDR, no break in any output."""
        bitrate, follower = new.bitrate, self.stats.follower
        if follower is not None:
            follower.retarget(new.bitrate)
            bitrate = follower.bitrate
        self._set_rate(bitrate, new.crf)

    def _set_rate(self, bitrate: int, crf: float) -> None:
        if (bitrate, crf) != self.rate:
            self.enc.reconfigure(bitrate=bitrate or None, crf=crf)
            self.stats.rate_changes += 1
            self.rate = (bitrate, crf)

    def record(self, r: FrameResult) -> None:
        t0, stats, frame = time.perf_counter(), self.stats, r.frame
        if stats.follower is not None and (rate := stats.follower.update(
                self.sink.link_reports())) is not None:  # the link narrowed or widened
            self._set_rate(rate, self.rate[1])
        offsets = r.qp.offsets if r.mapped else None
        segment_start = self.sink.wants_idr(frame.pts)  # a segment starts, a receiver joined
        if stats.storage is not None:
            decision = stats.storage.decide(frame, r.observation, self.sink.idr_asked_by
                                            if segment_start else None)
            encode, idr = decision.encode, decision.idr is not None
        else:
            encode, idr = True, (r.cut and self.idr_on_cut) or segment_start
        stats.scene_cuts += r.cut
        if not encode:
            self.left_out = (frame, offsets, r.observation)
            self.sink.left_out(frame.pts)
            stats.frames += 1
            return
        self.left_out = None
        with deferred():  # a stop signal waits until the frame is encoded, written and counted
            packets = self.enc.encode(frame, offsets, force_idr=True) if idr \
                else self.enc.encode(frame, offsets)
            stats.frames += 1  # encoded: the outputs still writing get it if another fails
            self.write(packets)
        stats.idr_requested += idr
        stats.timings["encode"].append((time.perf_counter() - t0) * 1e3)

    def finish(self) -> None:
        """The input ended: a frame left out last is encoded, so the recording lasts as long."""
        if self.left_out is not None:
            frame, offsets, obs = self.left_out
            self.stats.storage.encode_anyway(frame, obs)
            self.write(self.enc.encode(frame, offsets))

    def write(self, packets) -> None:
        self.sink.write(packets)
        self.stats.bytes += sum(len(p.data) for p in packets)


EXIT_INCOMPLETE = 3


def _write_error(output, e: OSError) -> WriteError:
    if isinstance(e, WriteError):  # an output's own, naming it
        return e
    return WriteError(e.errno, f"writing {output} failed: {e.strerror or e}")


def partial_result(e: BaseException) -> tuple[dict, int, str]:
    """(statistics, exit status, message) of a run that stopped early: run_encode attaches
    `.stats` to a DecodeError or KeyboardInterrupt after finalising the output. Anything else
    (an error before the first frame, a bug) is re-raised."""
    if not hasattr(e, "stats"):
        raise e
    if isinstance(e, KeyboardInterrupt):
        return e.stats, exit_status(e), f"interrupted ({e})" if str(e) else "interrupted"
    return e.stats, EXIT_INCOMPLETE, str(e)


def _summarise(stats: RunStats, wall: float, source: Source, encoder: dict, cfg: Config,
               outputs: Outputs) -> dict:
    duration = stats.frames / float(source.fps) if stats.frames else 0.0
    labeler = stats.labeler
    classes = ["background", *labeler.classes]
    counts = stats.label_counts if stats.label_counts is not None else np.zeros(len(classes))
    total = max(int(counts.sum()), 1)
    return {
        "input": source.description,
        "output": outputs.outputs[0].uri,
        "outputs": outputs.stats(),
        "frames": stats.frames,
        # the first output's size where it is a file (its container's bytes), else the payload
        "bytes": next((o.stats()["bytes"] for o in outputs.outputs if "bytes" in o.stats()),
                      stats.bytes),
        "payload_bytes": stats.bytes,
        "bitrate_kbps": round(stats.bytes * 8 / duration / 1e3, 3) if duration else 0.0,
        "fps": round(stats.frames / wall, 3) if wall else 0.0,
        "wall_s": round(wall, 3),
        "stages": {name: _timing(v) for name, v in stats.timings.items()},
        "label_coverage": {c: round(float(n) / total, 5) for c, n in zip(classes, counts)},
        "mean_offset_roi": round(stats.offset_sum_roi / stats.mb_roi, 4) if stats.mb_roi else None,
        "mean_offset_background": (round(stats.offset_sum_bg / stats.mb_bg, 4)
                                   if stats.mb_bg else None),
        "semantic": not isinstance(labeler, NullLabeler),
        "frames_with_map": stats.frames_mapped,
        "scene_cuts": stats.scene_cuts,
        "models": labeler.model_names,
        "labeler": labeler.stats(),
        "labeler_budget": labeler.budget_stats(),
        # a file encode's model runs: `--set labeler.replay=` a file of them runs them again
        "label_runs": labeler.schedule(),
        "encoder": encoder,
        "config": cfg.to_dict(),
    }


def _timing(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"mean_ms": 0.0, "p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0}
    a = np.asarray(ms)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"mean_ms": round(float(a.mean()), 4), "p50_ms": round(float(p50), 4),
            "p95_ms": round(float(p95), 4), "p99_ms": round(float(p99), 4)}


class _Progress:
    """A one-line progress report on stderr (only used on a TTY)."""

    def __init__(self, total: int):
        self.total, self.t0, self.last = total, time.perf_counter(), 0.0

    def update(self, n: int) -> None:
        now = time.perf_counter()
        if now - self.last < 0.25:
            return
        self.last = now
        fps = n / max(now - self.t0, 1e-9)
        if self.total:
            eta = max(self.total - n, 0) / max(fps, 1e-9)
            msg = f"\rframe {n}/{self.total} ({100 * n / self.total:.0f}%)  {fps:.1f} fps  " \
                  f"ETA {eta:.0f}s "
        else:
            msg = f"\rframe {n}  {fps:.1f} fps "
        sys.stderr.write(msg)
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()
