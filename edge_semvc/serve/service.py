"""`edge-semvc serve`: every camera of the configuration in one process, recorded into
segments, watched over MQTT and by systemd, retuned remotely.

The main thread only supervises: it starts one `Camera` thread per entry of `cameras:`, then
once a second feeds systemd's watchdog (only while every camera that runs delivers frames: a
camera lost or failing retries on its own and stops no one), reports READY once every camera
delivered a frame or failed its first attempt, publishes each camera's statistics every
`mqtt.stats_interval` seconds and, on SIGTERM/SIGINT, stops the cameras (each drains its
encoder and closes its open segment) and says `offline`. Nothing in a camera's frame loop
waits on the network: telemetry is queued and sent by its own thread, remote changes are
handled by their own (serve/changes.py). A missing record.dir (an unmounted disk) refuses
the start.

On SIGHUP (`systemctl reload`) it reads the configuration file again (`reload`): a file that
does not load or check is refused whole (`reload_rejected`, the running configuration kept);
else a camera that was added starts, one that was removed stops, one whose entry or non-live
keys changed restarts alone, and the live keys that changed reach the others as a remote
change would (on trial, then kept or rolled back: serve/changes.py), not stored as one.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Callable

from ..config import Config
from ..errors import ConfigError, EdgeSemvcError, SinkError
from ..sinks import open_output
from ..sinks.config import RecordConfig
from ..sinks.uri import check_input_ports, check_ports
from ..sources.ports import input_ports
from ..stop import finalising
from . import homeassistant
from .camera import Camera, release_freed_memory
from .changes import RemoteChanges
from .config import ServeConfig
from .notify import Watchdog, notify_ready, notify_status, notify_stopping
from .remote import (
    OverrideStore,
    apply_change,
    changed_keys,
    dotted_keys,
    each_key,
    live_difference,
    one_line,
)
from .stats import Carried, CpuMeter, StatsWindow
from .telemetry import open_telemetry
from .web import CameraView, WebView

log = logging.getLogger("edge_semvc")
STOP_TIMEOUT_S = 25.0  # every camera drains its encoder and closes its segment in this time


class Service:
    """`load()` reads the configuration file again (SIGHUP: `reload_event`); None: no reload."""

    def __init__(self, cfg: ServeConfig, clock: Callable[[], float] = time.monotonic,
                 load: Callable[[], ServeConfig] | None = None):
        self.cfg, self.clock, self.load = cfg, clock, load
        self.stop_event = threading.Event()
        self.reload_event = threading.Event()
        self._watchdog = Watchdog(None)  # run() reads systemd's
        self._frames_at_ping: dict[str, int] = {}  # each camera's frames at the last ping
        _check_service_config(cfg)
        self.store = OverrideStore(cfg.state_folder())
        self.cameras: dict[str, Camera] = {}
        self.views: dict[str, CameraView] = {}  # the web page's, per camera (http.enabled)
        # a missing credential or a port in use refuses the start before MQTT hears of it
        self.windows: dict[str, StatsWindow] = {}  # per stats interval
        self.whole_run: dict[str, StatsWindow] = {}  # over the whole run (the summary)
        self.web = WebView(cfg, self.cameras, self.views, clock, self.whole_run).listen() \
            if cfg.http.enabled else None
        self.changes = RemoteChanges(self.cameras, self.store, self._event,
                                     lambda camera, state: self.telemetry.publish_config_state(
                                         camera, state))
        self.telemetry = open_telemetry(cfg.mqtt)
        self._fps: dict[str, float] = {}
        self._dropped: dict[str, int] = {}  # MQTT messages dropped, as last said
        self._presence: dict[str, dict] = {}
        self._ended: dict[str, dict] = {}  # the last figures of cameras a reload stopped
        self._carried: dict[str, Carried] = {}  # their counts, for a camera started in place
        self.summary: dict = {}  # over the whole run, once it ended (`serve --stats-json`)
        for name in cfg.cameras:
            self.cameras[name] = self._camera(name, cfg)
        self.telemetry.listen(self.changes.submit)  # commands meet the cameras they name

    def _camera(self, name: str, cfg: ServeConfig) -> Camera:
        cam = cfg.cameras[name]
        self.telemetry.add_camera(name)
        if cfg.http.enabled and name not in self.views:
            self.views[name] = CameraView(cfg.http.live)
        return Camera(name, cam, self._restored(name, cfg.pipeline_config(name)),
                      cfg.record if cam.record else None, self._event,
                      view=self.views.get(name), cameras=len(cfg.cameras))

    # --- events and remote configuration -----------------------------------------------------
    def _event(self, camera: str, event: str, fields: dict) -> None:
        log.info("%s: %s %s", camera, event, fields or "")
        self.telemetry.publish_event(camera, event, fields)

    def _restored(self, camera: str, base: Config) -> Config:
        """The camera's configuration with the remote changes kept from earlier runs; where
        the configuration file now refuses them together, each key that it accepts alone (the
        store keeps them all: a file put right takes them back at the next start)."""
        try:
            doc = self.store.load(camera)
            if not doc:
                return base
            log.info("%s: the remote changes kept in %s apply on top of the configuration "
                     "file (%s)", camera, self.store.path(camera), ", ".join(dotted_keys(doc)))
            try:
                return apply_change(base, doc)
            except ConfigError:
                changes = each_key(doc)
        except ConfigError as e:  # an unreadable store, a key that is no name
            self._event(camera, "config_rejected", {"key": e.key, "reason": one_line(
                f"stored remote changes not applied: {e}")})
            return base
        cfg = base
        for key, change in changes:
            try:
                cfg = apply_change(cfg, change)
            except ConfigError as e:  # a stored change the new configuration file refuses
                self._event(camera, "config_rejected", {"key": e.key or key, "reason": one_line(
                    f"stored remote change: {e} (the other stored changes apply)")})
        return cfg

    # --- running ---------------------------------------------------------------------------
    def run(self, max_seconds: float = 0.0) -> int:
        """Supervise until `stop_event` is set (the command line sets it on SIGTERM and SIGINT;
        SIGHUP sets `reload_event`) or, with `max_seconds`, for that long (tests, benchmarks).
        Returns 0."""
        self._watchdog = Watchdog.from_environment()
        cpu = CpuMeter(self.clock)
        whole_cpu = CpuMeter(self.clock)
        if self.web is not None:
            self.web.start()
        for name in self.cameras:
            self._start(name)
        self.changes.start()
        start = last_stats = last_web = self.clock()
        ready = False
        try:
            while not self.stop_event.wait(0.5):
                if self.reload_event.is_set():
                    self.reload_event.clear()
                    self.reload()
                now = self.clock()
                self._feed_watchdog()
                if not ready and all(c.settled or c.state == "ended"
                                     for c in self.cameras.values()):
                    ready = True
                    notify_ready(self._status())
                    log.info("serving %d camera(s)", len(self.cameras))
                stats_due = now - last_stats >= self.cfg.mqtt.stats_interval
                if self.cfg.mqtt.home_assistant:
                    self._home_assistant(snapshots=stats_due)
                if stats_due:
                    percent = cpu.percent()
                    for name, window in self.windows.items():
                        snapshot = window.snapshot(percent)
                        self._fps[name] = snapshot["fps"]
                        self.telemetry.publish_stats(name, snapshot)
                    self._say_dropped()
                    notify_status(self._status())
                    last_stats = now
                if self.web is not None and now - last_web >= self.cfg.http.stats_interval:
                    self.web.refresh()
                    last_web = now
                if max_seconds and now - start >= max_seconds:
                    break
                if all(c.state == "ended" for c in self.cameras.values()):
                    break
        except KeyboardInterrupt as e:
            log.info("stopping (%s)", e or "interrupted")
        finally:
            percent = whole_cpu.percent()
            seconds = round(self.clock() - start, 2)
            states = {n: c.state for n, c in self.cameras.items()}  # how the run ended
            self.shutdown()  # the figures after it: the drained frames, the last segment
            self.summary = {"seconds": seconds, "cpu_percent": percent, "cameras": {
                **self._ended,
                **{n: {**w.snapshot(percent), **({"state": states[n]} if n in states else {})}
                   for n, w in self.whole_run.items()}}}
        return 0

    def _say_dropped(self) -> None:
        """A warning when MQTT messages were dropped since the last stats (the queue of
        mqtt.queue_size was full: a broker away, or slower than the messages came)."""
        counts = self.telemetry.counters()
        dropped = {k: counts.get(k, 0) for k in ("dropped_events", "dropped_stats")}
        # (a reload that changes `mqtt` starts the counts again)
        new = {k: max(0, n - self._dropped.get(k, 0)) for k, n in dropped.items()}
        if any(new.values()):
            log.warning("MQTT: %d events and %d stats messages dropped (mqtt.queue_size %d "
                        "full)", new["dropped_events"], new["dropped_stats"],
                        self.cfg.mqtt.queue_size)
        self._dropped = dropped

    def _feed_watchdog(self) -> None:
        """Pings systemd's watchdog while no camera is stuck (`stuck_cameras`: a hung pipeline
        stops the pings, a camera whose input is away does not): from the loop, and while a
        reload waits for a camera to stop."""
        if not stuck_cameras(self.cameras, self._frames_at_ping):
            self._watchdog.frame_delivered()
        if self._watchdog.tick(self.clock()):
            self._frames_at_ping = {n: c.frames_total for n, c in self.cameras.items()}

    def _start(self, name: str) -> None:
        cam = self.cameras[name]
        carried = self._carried.pop(name, Carried())  # a reload restarted it: counts go on
        cam.frames_before = carried.frames
        self.windows[name] = StatsWindow(cam, self.clock, dataclasses.replace(carried, since=None))
        self.whole_run[name] = StatsWindow(cam, self.clock, carried)
        self.telemetry.publish_config_state(name, cam.cfg.to_dict())
        cam.start()

    def _stop(self, name: str, carry: bool = True) -> None:
        """Stop camera `name`; `carry`: a camera started in its place counts on from its counts
        (a reload restarts it), else its figures stay for the summary alone."""
        cam = self.cameras.pop(name)
        self.windows.pop(name, None)
        cam.stop()
        for _ in range(int(STOP_TIMEOUT_S / 0.5)):  # a reload stops cameras one by one: the
            cam.thread.join(timeout=0.5)           # others' frames keep the watchdog fed
            if not cam.thread.is_alive():
                break
            self._feed_watchdog()
        self.changes.settle(name, cam)
        whole = self.whole_run.pop(name)
        if carry:
            self._carried[name] = whole.totals()
        self._ended[name] = whole.snapshot()  # not the camera itself
        del cam
        release_freed_memory()

    def _home_assistant(self, snapshots: bool) -> None:
        """Presence when it changed; a snapshot of each camera's current frame when due. A
        camera that encodes no frame (lost, failed, ended) has neither: its last frame is not
        current, its presence unknown."""
        for name, cam in self.cameras.items():
            seen = cam.last_seen if cam.state == "running" else None
            state = homeassistant.presence(seen[1]) if seen else homeassistant.PRESENCE_UNKNOWN
            if state != self._presence.get(name):
                self._presence[name] = state
                self.telemetry.publish_presence(name, state)
            if snapshots and seen is not None:
                self.telemetry.publish_snapshot(name, homeassistant.snapshot_jpeg(seen[0]))

    # --- reloading the configuration file (SIGHUP) ------------------------------------------
    def reload(self) -> None:
        """Apply the configuration file as it is now, or refuse it whole (module docstring)."""
        try:
            if self.load is None:
                raise ConfigError("this service was started without a configuration file")
            new = self.load()
            _check_service_config(new, running=self.cfg)
        except (EdgeSemvcError, OSError) as e:
            log.error("reload refused, the running configuration is kept: %s", e)
            for name in self.cameras:
                self._event(name, "reload_rejected", {"reason": one_line(str(e))})
            return
        old, kept = self.cfg, []
        if new.mqtt != old.mqtt:  # one connection, its last will and client id: not swapped
            kept.append("mqtt kept: it changes with a restart")
            new.mqtt = old.mqtt
        if new.http != old.http:  # the listening socket and the credentials: not swapped
            kept.append("http kept: it changes with a restart")
            new.http = old.http
        if new.state_folder() != old.state_folder():
            kept.append("state_dir kept: it changes with a restart")
            new.state_dir = old.state_folder()
        self.cfg = new
        if self.web is not None:
            self.web.cfg = new
        for name in [n for n in self.cameras if n not in new.cameras]:
            self._event(name, "camera_removed", {})
            self._stop(name, carry=False)  # gone: one added back later is a new camera
            self._presence.pop(name, None)
            self.views.pop(name, None)
            self.telemetry.remove_camera(name)
        for name in new.cameras:
            self._say_overridden(name, old, new)
            base = self._restored(name, new.pipeline_config(name))
            cam = self.cameras.get(name)
            reason = _restart_reason(name, old, new, cam.good, base) if cam else "added"
            if reason is None:
                doc = live_difference(cam.good, base)
                if doc:
                    self.changes.submit_reload(name, doc)
                continue
            if cam is not None:
                cam.hand_over = True  # its viewers stay with the camera started in its place
                self._stop(name)
            self.cameras[name] = self._camera(name, new)
            if cam is not None:
                self.cameras[name].take_streams(cam)
            self._start(name)
            self._event(name, "camera_restarted" if cam else "camera_added",
                        {"reason": reason} if cam else {})
        log.info("configuration reloaded%s", f" ({'; '.join(kept)})" if kept else "")

    def _say_overridden(self, name: str, old: ServeConfig, new: ServeConfig) -> None:
        """A warning for each key the file changed for camera `name` that a stored remote
        change overrides: the file's new value does not apply."""
        if name not in old.cameras:
            return
        try:
            stored = set(dotted_keys(self.store.load(name)))
        except ConfigError:  # _restored says why
            return
        masked = changed_keys(old.pipeline_config(name), new.pipeline_config(name)) & stored
        if masked:
            log.warning("%s: the file's change to %s does not apply: the remote change kept in "
                        "%s overrides it (remove it there, or send the value over MQTT)", name,
                        ", ".join(sorted(masked)), self.store.path(name))

    def _status(self) -> str:
        """systemd's STATUS= line: each camera's frame rate over the last stats interval."""
        return ", ".join(f"{n}: {self._fps[n]:.1f} fps" if c.state == "running" and n in self._fps
                         else f"{n}: {c.state}" for n, c in self.cameras.items())

    def shutdown(self) -> None:
        finalising(True)  # a second SIGTERM must not cut the segments' finalisation short
        notify_stopping("finalising the open segments")
        self.stop_event.set()
        self.changes.close()
        for cam in self.cameras.values():
            cam.stop()
        deadline = self.clock() + STOP_TIMEOUT_S  # inside the unit's TimeoutStopSec=30
        for cam in self.cameras.values():
            cam.thread.join(timeout=max(0.1, deadline - self.clock()))
        for name, cam in self.cameras.items():
            self.changes.settle(name, cam)
        self.telemetry.close()
        if self.web is not None:
            self.web.close()


def _check_service_config(cfg: ServeConfig, running: ServeConfig | None = None) -> None:
    """What the start refuses (exit 2) and a reload refuses (the old configuration kept). On a
    reload the outputs `running` has open are not checked again: their ports are theirs."""
    _check_record_dir(cfg.record)
    _check_models_prepared(cfg.pipeline_config())  # never downloads: `make install-service`
    open_now = {(name, uri) for name, cam in running.cameras.items() for uri in cam.outputs} \
        if running else set()
    outputs = []
    for name, cam in cfg.cameras.items():
        for uri in cam.outputs:  # pre-flight: a bad output URI, missing GStreamer, a port
            try:
                outputs.append(open_output(uri))
            except SinkError:
                if (name, uri) not in open_now:  # else: the camera holds that port itself
                    raise
    check_ports(outputs)  # two outputs sending into one receiver, two servers on one port
    # an output on a port a camera's input takes or calls here (any camera's: its own output,
    # another's sent into it)
    check_input_ports([(cam.input, input_ports(cam.input)) for cam in cfg.cameras.values()],
                      outputs)


def _restart_reason(name: str, old: ServeConfig, new: ServeConfig, good: Config,
                    base: Config) -> str | None:
    """Why camera `name` must restart to take the new file, or None when the live keys
    (or nothing) changed."""
    if old.cameras[name] != new.cameras[name]:
        return f"cameras.{name} changed"
    if new.cameras[name].record and old.record != new.record:
        return "record changed"
    try:
        live_difference(good, base, strict=True)
    except ConfigError as e:
        return f"{e.key} changed (it needs a restart)" if e.key else str(e)
    return None


def _check_record_dir(record: RecordConfig) -> None:
    """Refuse to start (exit 2) when record.dir is missing: an unmounted disk, whose recordings
    must not go to the root disk instead (systemd's Restart= tries again; a disk that goes
    away while running is waited for: sinks/segments.py)."""
    root = Path(record.dir).expanduser()
    if not root.is_dir():
        raise SinkError(f"record.dir {root} does not exist or is not a folder (an unmounted "
                        "disk?): mount or create it; the service does not create it")


def _check_models_prepared(cfg: Config) -> None:
    """Refuse to start (exit 2, naming the command) when a model is not in the cache, rather
    than have every camera fail and retry."""
    from ..labeler.registry import describe, model_specs, prepared_file

    entries = [(spec.key, spec.description) for spec in model_specs(cfg.labeler.models)]
    if cfg.emotion.enabled:
        entries.append(("emotion.model", describe(cfg.emotion.model, "emotion.model")))
    for key, description in entries:
        prepared_file(description, key, cfg.cache_dir())


def stuck_cameras(cameras: dict, frames_at_ping: dict[str, int]) -> list[str]:
    """The cameras that say they run but delivered no frame since the watchdog's last ping (a
    pipeline that hangs). A camera lost or failing is not stuck: it retries on its own clock,
    and restarting the service would not bring its input back."""
    return [n for n, c in cameras.items()
            if c.state == "running" and c.frames_total <= frames_at_ping.get(n, -1)]
