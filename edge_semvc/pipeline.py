"""The per-frame loop: Source -> Labeler -> Analyser -> QP map -> Encoder -> Sink.

Three threads overlap: decoding, understanding (labeler, analysis, QP map) and encoding
(the caller's thread; x264 adds its own). Every stage is timed; the run
returns its statistics. Whatever happens, the output file is finalised with the frames encoded
so far.
"""
from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .analysis import Analyser
from .config import Config
from .encoders import get_encoder
from .encoders.base import EncoderSettings
from .encoders.config import EncoderConfig
from .errors import SinkError, WriteError
from .extensions import Extensions
from .frame import Frame
from .labeler import Labeler
from .qp.qpmap import build_qp_map, importance_vector
from .sinks import open_output
from .sinks.base import Output, Outputs, StreamInfo
from .sources import DecodeError, Source
from .stop import exit_status, finalising
from .storage import Observer, StoragePolicy
from .values import LabelMap, QpMap

log = logging.getLogger("edge_semvc")

STAGES = ("decode", "labeler", "analysis", "qp_map", "encode")


@dataclass
class Visuals:
    """Optional visual outputs: a PNG of one frame's overlay, a video of all overlays."""

    png: str | None = None
    png_frame: int | None = None  # None: the middle frame (or the last, if the count is unknown)
    video: str | None = None


@dataclass
class Live:
    """What a long-running caller (the service, a link benchmark) adds to a run:
    configuration changes applied between frames (the encoder's rate at the next frame encoded,
    the map's keys at the next frame understood), and statistics it reads while the run goes
    on, with per-stage timings kept over the last `timing_window` frames only (a run lasts
    months)."""

    updates: Callable[[], Config | None] | None = None  # polled before each frame
    stats: RunStats | None = None
    timing_window: int = 0  # 0: every frame (a batch run)
    queue_frames: int = 4  # between the threads: latency vs smoothing out a slow frame
    # what the encoder can take of each map (bench: 8 ROI rectangles, edge_semvc/rects.py)
    map_filter: Callable[[QpMap], QpMap] | None = None


@dataclass
class RunStats:
    timings: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    frames: int = 0
    frames_mapped: int = 0  # frames that had something labelled and so got a map
    bytes: int = 0
    label_counts: np.ndarray | None = None
    offset_sum_roi: float = 0.0
    mb_roi: int = 0
    offset_sum_bg: float = 0.0
    mb_bg: int = 0
    labeler: Labeler | None = None  # the run's labeler, for its statistics
    idr_requested: int = 0  # IDR pictures asked for (scene cuts, segment starts)
    rate_changes: int = 0  # live changes of the encoder's target rate
    scene_cuts: int = 0  # cuts the `scene` extension found
    storage: StoragePolicy | None = None  # the storage profile's decisions (storage.py)

    def add_frame(self, labels: LabelMap, qp: QpMap) -> None:
        counts = np.bincount(labels.labels.ravel(), minlength=len(labels.classes))
        self.label_counts = counts if self.label_counts is None else self.label_counts + counts
        roi = labels.labels > 0
        self.offset_sum_roi += float(qp.offsets[roi].sum())
        self.mb_roi += int(roi.sum())
        self.offset_sum_bg += float(qp.offsets[~roi].sum())
        self.mb_bg += int((~roi).sum())


def encoder_settings(cfg: Config, source: Source, global_headers: bool) -> EncoderSettings:
    e = cfg.encoder
    keyint, caller_idr, sparse = e.keyint or None, False, False
    if e.profile == "storage":  # the pipeline places the IDRs, or a fixed gop_s
        caller_idr, sparse = e.storage.dynamic_gop, e.storage.dynamic_fps
        keyint = None if caller_idr else max(1, round(e.storage.gop_s * source.fps))
    return EncoderSettings(
        width=source.width, height=source.height, fps=source.fps, time_base=source.time_base,
        rc=e.rc, bitrate=e.bitrate or None, crf=e.crf, preset=e.preset, tune=e.tune or None,
        keyint=keyint, threads=e.threads, global_headers=global_headers,
        caller_idr=caller_idr, sparse_frames=sparse, intra_refresh=e.intra_refresh,
        params=dict(e.params))


def _storage(cfg: Config, source: Source, outputs: Outputs, scene_cuts: bool):
    """The storage profile's observer and policy (storage.py), or (None, None)."""
    e = cfg.encoder
    if e.profile != "storage":
        return None, None
    raw = [o.uri for o in outputs.outputs if not o.keeps_timestamps]
    if e.storage.dynamic_fps and raw:
        raise SinkError(f"{raw[0]}: a raw stream keeps no timestamps, so the frames the "
                        "storage profile leaves out would shorten it; write .mp4, .mkv or .ts, "
                        "or set encoder.storage.dynamic_fps=false")
    cuts = e.storage.dynamic_gop and not scene_cuts
    return (Observer(e.storage, source.fps, cfg.scene, cuts=cuts),
            StoragePolicy(e.storage, source.fps, source.time_base))


def run_encode(source: Source, output: str | Sequence[str | Output], cfg: Config, *,
               visuals: Visuals | None = None,
               progress: bool = False, semantic: bool = True, max_frames: int = 0,
               on_frame: Callable[[Frame, LabelMap, QpMap], None] | None = None,
               live: Live | None = None) -> dict:
    """Encode `source` into `output`: a file path or output URI, or several (`sinks/`: one
    encoder feeds them all). Returns the statistics (see README, "Statistics").

    `semantic=False` is the plain-x264 baseline: same decode, encoder and settings, no labeler,
    analysis or map (x264 gets no quant_offsets). `on_frame` sees every frame with its labels
    and map (benchmarks use it to know the region of interest). `max_frames` > 0 stops early.

    Raises DecodeError after finalising the output if decoding fails part-way; the stats of
    the frames written so far are attached to the exception as `.stats`. `live`: the
    service's additions (`Live`).
    """
    visuals = visuals or Visuals()
    live = live or Live()
    outputs = Outputs(open_output(o) if isinstance(o, str) else o
                      for o in ([output] if isinstance(output, str) else output))
    labeler = Labeler(cfg.labeler, cfg.cache_dir(), log=log.info) if semantic else None
    importance = importance_vector(["background", *labeler.classes], cfg.qp) if semantic else None
    analyser = Analyser(cfg.analysis)
    mapper = None
    if semantic and cfg.qp.device == "cuda":  # C, V, regions, Q and offsets on the GPU
        from .qp.cuda import CudaQpMapper

        mapper = CudaQpMapper()  # CudaError (exit 2) names what is missing
        log.info("QP map on the GPU: %s", mapper.describe())
    extensions = Extensions(cfg, labeler, getattr(source, "path", None)) if semantic else None
    extensions = extensions if extensions is not None and extensions.active else None
    no_labels = no_map = None
    stats = live.stats or RunStats()
    stats.labeler = labeler
    if live.timing_window:
        stats.timings = {s: deque(maxlen=live.timing_window) for s in STAGES}
    expected = min(source.frame_count or max_frames, max_frames or source.frame_count)
    png_index = visuals.png_frame if visuals.png_frame is not None else \
        (expected // 2 if expected else sys.maxsize)
    png_shot = None
    overlay_video = None
    settings = encoder_settings(cfg, source, outputs.global_headers)
    observer, stats.storage = _storage(cfg, source, outputs,
                                       extensions is not None and extensions.scene is not None)
    qp_cfg = cfg.qp
    retuned: queue.SimpleQueue[Config] = queue.SimpleQueue()  # live changes for the map

    def understand(frame: Frame):
        nonlocal importance, qp_cfg
        new = None
        while not retuned.empty():  # the latest change wins
            new = retuned.get()
        if new is not None:  # only keys safe to change live differ (serve/remote.py)
            qp_cfg, analyser.cfg, labeler.cfg = new.qp, new.analysis, new.labeler
            importance = importance_vector(["background", *labeler.classes], new.qp)
            if extensions is not None:
                extensions.reconfigure(new)
        t0 = time.perf_counter()
        labels = labeler.label(frame)
        t1 = time.perf_counter()
        # Nothing labelled: x264 gets no map at all, exactly plain x264 (a uniform shift is
        # not neutral: it moves x264's own adaptive quantisation), so nothing to compute.
        mapped = bool(labels.labels.any())
        mod = None
        if mapped and mapper is not None:  # analysis runs in the kernels: timed as qp_map
            t2 = time.perf_counter()
            qp = mapper.map(frame, labels, importance, qp_cfg, analyser.cfg,
                            encoder_weighs_reuse=weighs_reuse)
            if live.map_filter is not None:
                qp = live.map_filter(qp)
        elif mapped:
            region = analyser.analyse(frame, labels)
            if extensions is not None:
                mod = extensions.modulation(frame, labels, region.regions, analyser.blocks)
            t2 = time.perf_counter()
            adjust = (lambda q: extensions.adjust(q, mod)) if mod is not None else None
            qp = build_qp_map(region, labels, importance, qp_cfg, adjust, weighs_reuse)
            if live.map_filter is not None:
                qp = live.map_filter(qp)
        else:
            analyser.reset()
            if mapper is not None:
                mapper.reset()
            if extensions is not None:  # their state runs over every frame; a cut still counts
                mod = extensions.modulation(frame, labels, None)
            t2 = time.perf_counter()
            qp = QpMap(np.zeros(labels.shape, np.float32))
        cut = bool(mod is not None and mod.cut)
        blocks = analyser.blocks if mapped and mapper is None else None  # else stale: not run
        obs = observer.observe(frame, labels, blocks, cut) \
            if observer is not None else None
        t3 = time.perf_counter()
        for name, dt in (("labeler", t1 - t0), ("analysis", t2 - t1), ("qp_map", t3 - t2)):
            stats.timings[name].append(dt * 1e3)
        return frame, labels, qp, mapped, cut, obs

    t_start = time.perf_counter()
    finalising(False)
    reporter = _Progress(expected) if progress else None
    error: BaseException | None = None
    stages: list[_Stage] = []
    with get_encoder(cfg.encoder.backend)(settings) as enc, outputs.open(StreamInfo(
            source.width, source.height, settings.fps, settings.time_base, enc.codec,
            enc.headers(), settings.global_headers)) as sink:
        weighs_reuse = enc.weighs_reuse  # read by `understand`: the map's reuse term or not
        recorder = _Recorder(enc, sink, stats, cfg.encoder)
        try:
            decoded = islice(source.frames(), max_frames or None)
            stages.append(_Stage(_timed(decoded, stats.timings["decode"]), None, "decode",
                                 live.queue_frames))
            if semantic:
                stages.append(_Stage(stages[-1], understand, "semantic", live.queue_frames))
            elif observer is not None:  # plain x264 with the storage profile's decisions
                stages.append(_Stage(stages[-1], lambda f: (f, observer.observe(f, None)),
                                     "observe", live.queue_frames))
            if visuals.video:
                from .visualize import OverlayVideo
                overlay_video = OverlayVideo(visuals.video, source.width, source.height,
                                             source.fps)
            for item in stages[-1]:
                new = live.updates() if live.updates else None
                if new is not None:  # the rate now, the map from the next frame understood
                    recorder.retune(new.encoder)
                    retuned.put(new)
                obs = None
                if semantic:
                    frame, labels, qp, mapped, cut, obs = item
                else:
                    mapped = cut = False
                    frame, obs = item if observer is not None else (item, None)
                    if no_labels is None:
                        no_labels = LabelMap.from_probs(
                            np.zeros((0, frame.mb_h, frame.mb_w)), [], 1.0, [])
                        no_map = QpMap(np.zeros((frame.mb_h, frame.mb_w), np.float32))
                    labels, qp = no_labels, no_map
                stats.frames_mapped += mapped
                recorder.record(frame, qp.offsets if mapped else None, cut, obs)
                stats.add_frame(labels, qp)
                if on_frame:
                    on_frame(frame, labels, qp)
                if visuals.png and (frame.index <= png_index or png_shot is None):
                    png_shot = (frame, qp, labels)
                if overlay_video:
                    from .visualize import overlay
                    overlay_video.write(overlay(frame, qp, labels))
                if reporter:
                    reporter.update(stats.frames)
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
            # Drain the encoder even after an error: delayed frames belong in the file.
            try:
                recorder.write(enc.flush())
            except OSError as e:
                error = error or _write_error(output, e)
            try:  # trailers now, so that the statistics see the files' final sizes
                sink.close()
            except OSError as e:  # closing a file failed (its last bytes did not fit)
                error = error or _write_error(output, e)
            if overlay_video:
                overlay_video.close()
            if reporter:
                reporter.done()
            if labeler:
                labeler.close()
        summary = enc.settings_summary()
    wall = time.perf_counter() - t_start
    if png_shot is not None:
        from .visualize import overlay, save_png
        save_png(overlay(*png_shot), visuals.png)
    result = _summarise(stats, wall, source, labeler, summary, cfg, outputs)
    if stats.storage is not None:
        result["storage"] = stats.storage.stats()
    if error is not None:
        result["complete"] = False
        result["error"] = str(error) or type(error).__name__
        error.stats = result
        raise error
    result["complete"] = True
    return result


class _Recorder:
    """Each frame to the encoder, its packets to the sink. Before each frame it asks the sink
    whether a segment starts there and, with the storage profile, the policy whether to encode
    the frame at all and whether as an IDR (else: a cut or a segment start is one)."""

    def __init__(self, enc, sink: Outputs, stats: RunStats, rate: EncoderConfig):
        self.enc, self.sink, self.stats = enc, sink, stats
        self.rate = (rate.bitrate, rate.crf)  # what the encoder runs with (a copy: values)
        self.left_out = None  # the last frame the storage profile left out, and its map

    def retune(self, new: EncoderConfig) -> None:
        """A live change of the target rate (following a link): from the next frame encoded,
        no IDR, no break in any output."""
        if (new.bitrate, new.crf) != self.rate:
            self.enc.reconfigure(bitrate=new.bitrate or None, crf=new.crf)
            self.stats.rate_changes += 1
            self.rate = (new.bitrate, new.crf)

    def record(self, frame: Frame, offsets: np.ndarray | None, cut: bool, obs) -> None:
        t0, stats = time.perf_counter(), self.stats
        segment_start = self.sink.wants_idr(frame.pts)  # a segment starts, a receiver joined
        if stats.storage is not None:
            decision = stats.storage.decide(frame, obs, segment_start)
            encode, idr = decision.encode, decision.idr is not None
        else:
            encode, idr = True, cut or segment_start
        stats.scene_cuts += cut
        if not encode:
            self.left_out = (frame, offsets, obs)
            stats.frames += 1
            return
        self.left_out = None
        self.write(self.enc.encode(frame, offsets, force_idr=True) if idr
                   else self.enc.encode(frame, offsets))
        stats.frames += 1  # only now: a stop signal inside encode() leaves it uncounted
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


def _summarise(stats: RunStats, wall: float, source: Source, labeler: Labeler | None,
               encoder: dict, cfg: Config, outputs: Outputs) -> dict:
    duration = stats.frames / float(source.fps) if stats.frames else 0.0
    classes = ["background", *(labeler.classes if labeler else [])]
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
        "semantic": labeler is not None,
        "frames_with_map": stats.frames_mapped,
        "models": labeler.model_names if labeler else [],
        "labeler": labeler.stats() if labeler else {},
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


def _timed(items: Iterator, timings: list[float]) -> Iterator:
    """Yield from `items`, recording how long each item took to produce (ms)."""
    while True:
        t0 = time.perf_counter()
        try:
            item = next(items)
        except StopIteration:
            return
        timings.append((time.perf_counter() - t0) * 1e3)
        yield item


class _Stage:
    """Runs `step` over `upstream` in its own thread, a few items ahead of the consumer.

    Decoding, understanding (labeler, analysis, map) and encoding overlap this way: PyAV,
    ONNX Runtime and x264 all release the GIL. The upstream's exceptions reach the consumer.
    """

    _END = object()

    def __init__(self, upstream: Iterable, step: Callable | None, name: str, depth: int = 4):
        self.q: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(upstream, step), daemon=True,
                                       name=name)
        self.thread.start()

    def _run(self, upstream: Iterable, step: Callable | None) -> None:
        try:
            for item in upstream:
                if self._stop.is_set():
                    return
                self._put(step(item) if step else item)
        except BaseException as e:  # handed to the consumer, which decides
            self._put(e)
        self._put(self._END)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while not self._stop.is_set():
            try:
                item = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)


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
