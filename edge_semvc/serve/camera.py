"""One camera of the service: its input (reopened with capped exponential backoff when it is
lost), its pipeline run into recorded segments, its live statistics, its remote changes on
trial and its events.

capture -> process -> record, as `encode` does, in the camera's own thread:

    source = open_source(uri)              # retried with backoff while it fails
    paced = PacedSource(source, ...)       # a one-frame buffer: a late pipeline drops frames
    run_encode(paced, [segments, *streams], ..., live=Live(updates=pending_config, stats=stats))

A run ends when the input ends (a file without `loop`), fails or the service stops. What
failed is reported as what it is: the input (`source_lost`: cannot be opened, broke, ended or
froze for `STALL_S`), the recording (`sink_error`: record.dir missing, a folder that cannot be
written, another process recording this camera) or the pipeline (`error`: the encoder, a
model, a bug); then the run starts again after a backoff, the other cameras never notice.

A remote change is on trial until `TRIAL_FRAMES` frames were encoded with it: a pipeline that
fails meanwhile (not the input, not the recording: a live key touches neither) rolls it back
to the last good configuration, with a `config_rejected` naming its keys, and starts again at
once; one that passes is kept (`take_passed`: the service then stores it).
"""
from __future__ import annotations

import ctypes
import gc
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Callable

from ..config import Config
from ..errors import EdgeSemvcError, SinkError, SourceError, WriteError
from ..follow import merge_stats as merge_follow
from ..pipeline import Live, RunStats, run_encode
from ..sinks import open_output
from ..sinks.base import Outputs
from ..sinks.config import RecordConfig
from ..sinks.kept import KeptOutput
from ..sinks.mse import MseOutput
from ..sinks.segments import SegmentOutput
from ..sources import is_live, open_source
from ..sources.paced import PacedSource, Pacing
from ..storage import merge_stats
from .config import CameraConfig
from .remote import dotted_keys, one_line

if TYPE_CHECKING:
    from .web import CameraView

log = logging.getLogger("edge_semvc")
TIMING_WINDOW = 1000  # frames over which stage latencies are reported
PACED_HISTORY = 1000  # per-frame timing entries the paced source keeps
STALL_S = 5.0  # an input that delivers no frame for this long is lost (README: 5 s)
TRIAL_FRAMES = 25  # a remote change is kept once this many frames were encoded with it
# what failed -> (event, state)
FAILURES = {"source": ("source_lost", "lost"), "sink": ("sink_error", "failed"),
            "pipeline": ("error", "failed")}
# the recording's counts (sinks/segments.py), which go on over the camera's runs
RECORDING_COUNTS = ("frames", "frames_lost", "segments", "bytes", "deleted", "deleted_bytes",
                    "write_errors", "track_packets_lost")


@dataclass
class Backoff:
    """Capped exponential backoff: 1, 2, 4 ... `max_s` seconds; reset once frames flow."""

    min_s: float = 1.0
    max_s: float = 60.0
    current: float = 0.0

    def next(self) -> float:
        self.current = min(self.max_s, self.current * 2 if self.current else self.min_s)
        return self.current

    def reset(self) -> None:
        self.current = 0.0


@dataclass(frozen=True)
class CameraSeams:
    """What a camera is given rather than picks itself, so a test can drive it: the backoff
    between runs, `open_input(uri)` (sources.open_source), and the paced source's `clock` and
    `sleep` (seconds; a frozen input is lost after STALL_S of `clock` time)."""

    backoff: Backoff = field(default_factory=Backoff)
    open_input: Callable[[str], Any] = open_source
    clock: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], None] | None = None


class Camera:
    """Runs one camera, its `entry` in the service's `cameras:` (input, outputs, loop,
    realtime, queue_frames), until `stop` is set. `emit(camera, event, fields)` reports events.
    `cameras`: how many cameras share the cores."""

    def __init__(self, name: str, entry: CameraConfig, cfg: Config, record: RecordConfig | None,
                 emit: Callable[[str, str, dict], None], *, view: CameraView | None = None,
                 cameras: int = 1, seams: CameraSeams | None = None):
        seams = seams or CameraSeams()  # a Backoff of its own
        self.name, self.uri, self.record = name, entry.input, record  # record None: stream only
        self.cfg = self.good = cfg  # in use / last kept (cfg differs while a change is on trial)
        self.output_uris = tuple(entry.outputs)  # stream outputs beside the recording
        self.streams: list[KeptOutput] = []  # theirs, open across runs once all could be made
        self.hand_over = False  # at the end: the streams go to the camera a reload starts
        self.view = view  # the web page's: live feed and overlay (http.enabled)
        self.outputs: Outputs | None = None  # the current run's
        self.emit = lambda event, **fields: emit(name, event, fields)
        self.live = is_live(self.uri)
        self.loop, self.queue_frames = entry.loop, entry.queue_frames
        self.cameras = cameras  # the service's: they share the cores (labeler.live_share)
        self.realtime = entry.realtime or self.live  # a live input is watched for freezing
        self.backoff = seams.backoff
        self.open_input, self.clock, self.sleep = seams.open_input, seams.clock, seams.sleep
        self.stop_event = threading.Event()
        self.stats = RunStats()
        self.latency_ms: deque[float] = deque(maxlen=TIMING_WINDOW)  # capture to encoded
        self.frames_total = 0  # over every run: the count a watchdog and READY look at
        # the frames of the camera a reload restarted this one in place of: a scene cut's
        # `frame` counts on from them, as the stats' frames and storage IDRs do
        self.frames_before = 0
        self.settled = False  # a first frame came, or a first attempt failed (READY waits)
        self.dropped_total = 0
        self.last_seen: tuple[Any, Any] | None = None  # the last (Frame, LabelMap) encoded
        self.runs = 0
        self._bytes_before = 0  # what the runs before this one encoded (encoded_bytes)
        self._mapped_before = 0  # their frames encoded with a map (frames_mapped)
        self._storage_before: dict | None = None  # their storage decisions (storage_stats)
        self._recorded_before: dict | None = None  # their recording's counts (recording_stats)
        self._follow_before: dict | None = None  # their rate followers' (follow_stats)
        self.follow_start: int | None = None  # the rate the next follower starts at (_link_rate)
        self._video_before = 0.0  # the seconds of video they encoded (video_seconds)
        self._run_video: tuple[float, float, float] | None = None  # this run's first, last, frame
        self._run_start = 0  # frames_total as this run began
        self.state = "starting"  # starting | running | lost | failed | ended | stopped
        self.error: str | None = None  # why it is lost or failed (None once frames flow)
        self._failing: str | None = None  # the failure event reported since frames last flowed
        self._paced: PacedSource | None = None
        self._pending: Config | None = None
        self._trial: list[dict] = []  # remote changes in self.cfg not yet kept
        self._trial_frames: int | None = None  # frames encoded with them (None: not yet used)
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"camera-{name}", daemon=True)

    # --- control (any thread) ------------------------------------------------------------------
    def start(self) -> "Camera":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        paced = self._paced
        if paced is not None:
            paced.close()  # ends the run: the encoder is drained and the segment finalised

    def propose(self, cfg: Config, change: dict, base: Config) -> bool:
        """Use `cfg` (`base` with the remote `change`; only live-safe keys differ:
        serve/remote.py) from the next frame on, on trial. False when the configuration is no
        longer `base` (a rollback came in between): compute it again."""
        with self._lock:
            if self.cfg is not base:
                return False
            self._pending = self.cfg = cfg
            self._trial.append(change)
            self._trial_frames = None
        return True

    def take_passed(self) -> tuple[list[dict], Config, Config] | None:
        """(changes, kept configuration, previous one) once the changes on trial passed it:
        they are kept from now on. None while none did."""
        with self._lock:
            if not self._trial or (self._trial_frames or 0) < TRIAL_FRAMES:
                return None
            changes, self._trial = self._trial, []
            previous, self.good = self.good, self.cfg
            return changes, self.good, previous

    def take_unkept(self) -> list[dict]:
        """The changes still on trial, taken once the camera stopped: they are never kept."""
        with self._lock:
            changes, self._trial = self._trial, []
        return changes

    def restore(self, cfg: Config) -> None:
        """Go back to `cfg` (kept changes that could not be stored), from the next frame on."""
        with self._lock:
            self.cfg = self.good = self._pending = cfg

    def output_stats(self, before: dict | None = None) -> list[dict]:
        """Each output's figures, the recording's counts over every run (a new recording each
        run) and after `before` (those of the camera a reload restarted this one in place of)."""
        with self._lock:
            out = self._output_stats()
            recording = self._recording_so_far(out)
        if recording is not None:
            out[0] = add_recordings(before, recording)
        return out

    def recording_stats(self) -> dict | None:
        """The recording's figures over every run (None: none recorded)."""
        with self._lock:
            return self._recording_so_far(self._output_stats())

    def _output_stats(self) -> list[dict]:
        outputs = self.outputs
        return outputs.stats() if outputs is not None else []

    def _recording_so_far(self, out: list[dict]) -> dict | None:
        outputs = self.outputs
        now = out[0] if outputs is not None and outputs.outputs and \
            isinstance(outputs.outputs[0], SegmentOutput) else None
        return add_recordings(self._recorded_before, now)

    def encoded_bytes(self) -> int:
        """The bytes encoded over every run: the statistics' bit rate over a window that
        spans runs (a camera lost and back, the whole run's summary)."""
        with self._lock:
            return self._bytes_before + self.stats.bytes

    def frames_mapped(self) -> int:
        """The frames encoded with a map over every run."""
        with self._lock:
            return self._mapped_before + self.stats.frames_mapped

    def storage_stats(self) -> dict | None:
        """The storage profile's decisions over every run (storage.merge_stats), each IDR's
        frame counted over them as `frames_total`; None without the storage profile."""
        with self._lock:
            for _ in range(2):  # the run goes on meanwhile
                try:
                    return self._storage_so_far()
                except RuntimeError:  # its IDR log or reasons changed size while copied
                    continue
            return self._storage_so_far()

    def _storage_so_far(self) -> dict | None:
        policy = self.stats.storage
        if policy is None:
            return self._storage_before
        # the run's times go on from the video of the runs before, as its frames do
        first = policy.first_seen
        return merge_stats(self._storage_before, policy.stats(), self._run_start,
                           self._video_before - first if first is not None else 0.0)

    def follow_stats(self) -> dict | None:
        """The rate follower's figures over every run (follow.merge_stats): the current run's
        rate, the changes and reports of all; None without encoder.follow_link."""
        with self._lock:
            return self._follow_so_far()

    def _follow_so_far(self) -> dict | None:
        follower = self.stats.follower
        return merge_follow(self._follow_before, follower.stats() if follower else None)

    def _link_rate(self) -> int | None:
        """The rate the last run's follower reached on the stream outputs' link (None: none
        followed it): the next run's starts there, its outputs kept open, not at the ceiling
        (a link found narrow, hit at the full rate after each hiccup)."""
        follower = self.stats.follower
        return follower.bitrate if follower is not None else self.follow_start

    def video_seconds(self) -> float:
        """The seconds of video encoded over every run, each run's from its first frame to one
        frame after its last (the pauses between runs not counted, as `frames_total` counts
        none): the storage IDRs' `time_s` go on from it."""
        with self._lock:
            return self._video_before + self._run_seconds()

    def _run_seconds(self) -> float:
        span = self._run_video
        return span[1] - span[0] + span[2] if span else 0.0

    def dropped(self) -> int:
        with self._lock:  # the run's drops counted once, as the run ends too
            paced = self._paced
            return self.dropped_total + (paced.dropped if paced else 0)

    # --- the camera thread ---------------------------------------------------------------------
    def _take_update(self) -> Config | None:  # polled by the pipeline before each frame
        with self._lock:
            cfg, self._pending = self._pending, None
            if cfg is not None and self._trial:
                self._trial_frames = 0
        return cfg

    def _run(self) -> None:
        try:
            self._runs()
        finally:  # the camera is done: its viewers are let go, or handed over (`take_streams`)
            if not self.hand_over:
                for stream in self.streams:
                    stream.close_for_good()
                self.streams = []

    def take_streams(self, before: "Camera") -> None:
        """The stream outputs of the camera this one replaces (a reload restarted it; `before`
        has ended and was to hand them over): kept open, their viewers stay, when the outputs
        are the same; else closed."""
        if before.thread.is_alive():  # stuck past the reload's wait: it closes its own
            before.hand_over = False
            return
        streams, before.streams = before.streams, []
        if before.output_uris == self.output_uris and streams:
            self.streams = streams
            self.follow_start = before._link_rate()  # the same link: the rate it had found
            return
        for stream in streams:
            stream.close_for_good()

    def _runs(self) -> None:
        while not self.stop_event.is_set():
            try:
                source = self.open_input(self.uri)
            except EdgeSemvcError as e:
                if self.stop_event.is_set():  # stopped while it opened: not an input lost
                    break
                self._failed("source", str(e))
                continue
            reopen = (lambda: self.open_input(self.uri)) if self.loop else None
            pacing = Pacing(realtime=self.realtime, history=PACED_HISTORY, stall_s=STALL_S)
            paced = PacedSource(source, pacing, reopen=reopen, clock=self.clock,
                                sleep=self.sleep)
            self._paced = paced
            if self.stop_event.is_set():  # stop() came while the input was being opened
                paced.close()
                break
            self.state = "starting"
            failure = self._record(paced)
            with self._lock:
                self.dropped_total += paced.dropped
                self._paced = None
            paced.close()
            source = paced = None  # the run's input, models and encoder, let go ...
            release_freed_memory()  # ... and their pages handed back: a camera lost and
            if self.stop_event.is_set():  # back all day does not grow the process
                break
            if failure is None and self.live:  # a camera does not end: it was lost
                failure = ("source", "the stream ended")
            if failure is None:  # the input ended: a file without `loop`
                self.state = "ended"
                self.emit("source_ended", input=self.uri)
                return
            kind, reason = failure
            if kind == "pipeline" and self._roll_back(reason):
                continue  # at once, with the last good configuration
            self._failed(kind, reason)
        self.state = "stopped"

    def _record(self, paced: PacedSource) -> tuple[str, str] | None:
        """One run of the pipeline on `paced`; (what failed, why), or None at its end."""
        self.runs += 1
        with self._lock:  # each run's counts counted once, whenever they are read
            self._bytes_before += self.stats.bytes
            self._mapped_before += self.stats.frames_mapped
            self._storage_before = self._storage_so_far()
            self._follow_before = self._follow_so_far()
            self.follow_start = self._link_rate()
            self._recorded_before = self._recording_so_far(self._output_stats())
            self.outputs = None  # counted: the next run's are made below
            self._video_before += self._run_seconds()
            self._run_video = None
            self._run_start = self.frames_total
            stats = self.stats = RunStats()
        try:  # a port another camera holds: a sink error, retried like any other
            self._keep_streams()
            outputs = self.outputs = Outputs(
                ([SegmentOutput(self.record, self.name, self.emit)] if self.record else [])
                + self.streams
                + ([MseOutput(self.view.feed)] if self.view and self.view.feed else []))
        except (SinkError, OSError) as e:
            return "sink", str(e)
        live = Live(updates=self._take_update, stats=stats,
                    timing_window=TIMING_WINDOW, queue_frames=self.queue_frames,
                    cameras=self.cameras, follow_start=self.follow_start)
        with self._lock:
            self._pending = None  # this run starts from self.cfg, changes on trial included
            self._trial_frames = 0 if self._trial else None
            cfg = self.cfg
        start = self.frames_total
        seen_cuts = [0]
        period = 1 / float(paced.fps)

        def on_frame(frame, labels, qp) -> None:
            self.frames_total = start + stats.frames
            t = float(frame.pts * Fraction(frame.time_base or paced.time_base)) \
                if frame.pts is not None else frame.index * period
            span = self._run_video
            self._run_video = (span[0] if span else t, t, period)
            self.last_seen = frame, labels  # read by the supervisor: snapshot, presence
            if self.state != "running":
                self._flowing()
            with self._lock:
                if self._trial_frames is not None:
                    self._trial_frames += 1
            if stats.scene_cuts > seen_cuts[0]:  # the run's one decision (analysis/scene.py)
                seen_cuts[0] = stats.scene_cuts
                # its index over the camera's runs, from 0 (as the storage stats count it)
                self.emit("scene_cut", frame=self.frames_before + self.frames_total - 1,
                          pts=frame.pts)
            if self.view is not None:
                self.view.frame(frame, labels, qp)
            captured = paced.capture_times.pop(frame.index, None)
            if captured is not None:
                self.latency_ms.append((self.clock() - captured) * 1e3)

        try:
            run_encode(paced, outputs, cfg, on_frame=on_frame, live=live)
        except SourceError as e:  # DecodeError included: the input broke, ended early, froze
            return "source", str(e)
        except (SinkError, WriteError) as e:
            return "sink", str(e)
        except EdgeSemvcError as e:  # an encoder or model problem: report it, try again
            return "pipeline", str(e)
        except Exception as e:  # noqa: BLE001 - a bug must not take the other cameras down
            log.exception("%s: the pipeline failed", self.name)
            return "pipeline", f"{type(e).__name__}: {e}"
        return None

    def _keep_streams(self) -> None:
        """The stream outputs, made at the first run that can make them all, then kept open
        across runs (`sinks/kept.py`): a camera's hiccup does not disconnect their viewers."""
        if self.streams or not self.output_uris:
            return
        made: list[KeptOutput] = []
        try:
            for uri in self.output_uris:
                made.append(KeptOutput(lambda uri=uri: open_output(uri, on_event=self.emit),
                                       self.clock))
        except BaseException:
            for stream in made:
                stream.close_for_good()
            raise
        self.streams = made

    def _flowing(self) -> None:
        """The run's first frame: the camera runs again, and says so after a failure."""
        self.state, self.settled, self.error = "running", True, None
        self.backoff.reset()
        failing, self._failing = self._failing, None
        if failing == "source_lost":
            self.emit("source_back", input=self.uri)
        elif failing is not None:
            self.emit("recovered", after=failing)

    def _roll_back(self, reason: str) -> bool:
        """The run failed with remote changes on trial: back to the last good configuration,
        each change refused by its keys. False when none was on trial."""
        with self._lock:
            changes, self._trial = self._trial, []
            if changes:
                self.cfg, self._pending, self._trial_frames = self.good, None, None
        for change in changes:
            self.emit("config_rejected", key=", ".join(dotted_keys(change)),
                      reason=one_line(f"rolled back: the pipeline failed within {TRIAL_FRAMES} "
                                      f"frames of this change ({reason})"))
        return bool(changes)

    def _failed(self, kind: str, reason: str) -> None:
        event, self.state = FAILURES[kind]
        self.error = one_line(reason)
        self.settled = True
        delay = self.backoff.next()
        fields = {"input": self.uri} if kind == "source" else {}
        self.emit(event, **fields, reason=one_line(reason), retry_in_s=delay,
                  repeated=self._failing == event)
        self._failing = event
        self.stop_event.wait(delay)


def add_recordings(before: dict | None, now: dict | None) -> dict | None:
    """The recording's figures `now` with the counts of `before` (earlier runs') added: the
    same folder's, else `now`'s alone (None: `before`, as between runs)."""
    if now is None or before is None or before.get("uri") != now.get("uri"):
        return before if now is None else now
    return {**now, **{k: before.get(k, 0) + now.get(k, 0) for k in RECORDING_COUNTS}}


def release_freed_memory() -> None:
    """Collect the cycles a run left and hand the heap's free pages back to the system: glibc
    keeps what a run's threads freed (its models, frames, encoder) in their arenas, so a
    service grew with each run, 50-90 MB a camera a reload stopped, 10-40 MB each time a camera
    was lost and came back. Not glibc: collected only."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
