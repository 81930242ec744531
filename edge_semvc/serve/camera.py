"""One camera of the service: its input (reopened with capped exponential backoff when it is
lost), its pipeline run into recorded segments, its live statistics and its events.

capture -> process -> record, as `encode` does, in the camera's own thread:

    source = open_source(uri)              # retried with backoff while it fails
    paced = PacedSource(source, ...)       # a one-frame buffer: a late pipeline drops frames
    run_encode(paced, [segments, *streams], ..., live=Live(updates=pending_config, stats=stats))

A run ends when the input ends (a file without `loop`), is lost (a decode error, a stream
that stops) or the service stops; a lost input is opened again, the other cameras never notice.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from ..config import Config
from ..errors import DecodeError, EdgeSemvcError
from ..pipeline import Live, RunStats, run_encode
from ..sinks import open_output
from ..sinks.base import Outputs
from ..sinks.config import RecordConfig
from ..sinks.segments import SegmentOutput
from ..sources import LIVE_SCHEMES, open_source
from ..sources.paced import PacedSource

log = logging.getLogger("edge_semvc")

TIMING_WINDOW = 1000  # frames over which stage latencies are reported
PACED_HISTORY = 1000  # per-frame timing entries the paced source keeps


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


class Camera:
    """Runs one camera until `stop` is set. `emit(camera, event, fields)` reports events."""

    def __init__(self, name: str, uri: str, cfg: Config, record: RecordConfig | None,
                 emit: Callable[[str, str, dict], None], *, outputs: tuple[str, ...] = (),
                 loop: bool = False, realtime: bool = True, queue_frames: int = 1,
                 backoff: Backoff | None = None):
        self.name, self.uri, self.cfg, self.record = name, uri, cfg, record
        self.output_uris = tuple(outputs)  # stream outputs beside the recording (None: none)
        self.outputs: Outputs | None = None  # the current run's
        self.emit = lambda event, **fields: emit(name, event, fields)
        self.loop, self.realtime, self.queue_frames = loop, realtime, queue_frames
        self.backoff = backoff or Backoff()
        self.live = uri.partition("://")[0] in LIVE_SCHEMES
        self.stop_event = threading.Event()
        self.stats = RunStats()
        self.latency_ms: deque[float] = deque(maxlen=TIMING_WINDOW)  # capture to encoded
        self.frames_total = 0  # over every run: the count a watchdog and READY look at
        self.dropped_total = 0
        self.runs = 0
        self.state = "starting"  # starting | running | lost | ended | stopped
        self._paced: PacedSource | None = None
        self._pending: Config | None = None
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

    def reconfigure(self, cfg: Config) -> None:
        """Use `cfg` from the next frame on (only live-safe keys may differ: serve/remote.py)."""
        with self._lock:
            self._pending = self.cfg = cfg

    def output_stats(self) -> list[dict]:
        outputs = self.outputs
        return outputs.stats() if outputs is not None else []

    def dropped(self) -> int:
        paced = self._paced
        return self.dropped_total + (paced.dropped if paced else 0)

    # --- the camera thread ---------------------------------------------------------------------
    def _take_update(self) -> Config | None:
        with self._lock:
            cfg, self._pending = self._pending, None
        return cfg

    def _run(self) -> None:
        lost = False
        while not self.stop_event.is_set():
            try:
                source = open_source(self.uri)
            except EdgeSemvcError as e:
                lost = self._lost(str(e), lost)
                continue
            reopen = (lambda: open_source(self.uri)) if self.loop else None
            paced = PacedSource(source, realtime=self.realtime, reopen=reopen,
                                history=PACED_HISTORY)
            self._paced = paced
            if self.stop_event.is_set():  # stop() came while the input was being opened
                paced.close()
                break
            if lost:
                self.emit("source_back", input=self.uri)
                lost = False
            self.state = "running"
            error = self._record(paced)
            self.dropped_total += paced.dropped
            self._paced = None
            paced.close()
            if self.stop_event.is_set():
                break
            if error is None and self.live:  # a camera does not end: it was lost
                error = "the stream ended"
            if error is None:  # the input ended: a file without `loop`
                self.state = "ended"
                self.emit("source_ended", input=self.uri)
                return
            lost = self._lost(error, lost)
        self.state = "stopped"

    def _record(self, paced: PacedSource) -> str | None:
        """One run of the pipeline on `paced`; the reason it broke, or None at its end."""
        self.runs += 1
        stats = self.stats = RunStats()
        outputs = self.outputs = Outputs(
            ([SegmentOutput(self.record, self.name, self.emit)] if self.record else [])
            + [open_output(uri, on_event=self.emit) for uri in self.output_uris])
        live = Live(updates=self._take_update, stats=stats,
                    timing_window=TIMING_WINDOW, queue_frames=self.queue_frames)
        self._pending = None  # this run starts from self.cfg
        start = self.frames_total
        seen_cuts = [0]

        def on_frame(frame, labels, qp) -> None:
            self.frames_total = start + stats.frames + 1
            # the scene extension's detector when it runs, else the labeler's own
            cuts = (stats.scene_cuts if self.cfg.scene.enabled else
                    stats.labeler.scene_cuts if stats.labeler else 0)
            if cuts > seen_cuts[0]:
                seen_cuts[0] = cuts
                self.emit("scene_cut", frame=self.frames_total, pts=frame.pts)
            captured = paced.capture_times.pop(frame.index, None)
            if captured is not None:
                self.latency_ms.append((time.perf_counter() - captured) * 1e3)
            self.backoff.reset()

        try:
            run_encode(paced, outputs, self.cfg, on_frame=on_frame, live=live)
        except DecodeError as e:
            return str(e)
        except EdgeSemvcError as e:  # an encoder or model problem: report it, try again
            self.emit("error", reason=str(e))
            return str(e)
        except Exception as e:  # noqa: BLE001 - a bug must not take the other cameras down
            log.exception("%s: the pipeline failed", self.name)
            self.emit("error", reason=f"{type(e).__name__}: {e}")
            return f"{type(e).__name__}: {e}"
        return None

    def _lost(self, reason: str, already: bool) -> bool:
        self.state = "lost"
        delay = self.backoff.next()
        self.emit("source_lost", input=self.uri, reason=reason, retry_in_s=delay,
                  repeated=already)
        log.warning("%s: %s; retrying in %.0f s", self.name, reason, delay)
        self.stop_event.wait(delay)
        return True

