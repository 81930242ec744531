"""The service's events under faults, each camera run in process with the real pipeline (real
models, x264, segments on disk): a frozen input (on an injected clock), a missing or blocked
recording folder, a second recorder, a full disk (a real tmpfs), and a remote change that
makes the pipeline fail (rolled back, not kept). Each fault is reported as what it is —
source, sink or configuration — and nothing asserts how long anything took.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import VIDEO
from test_segments import TB, named, record, street  # noqa: F401  (street: a fixture)
from test_telemetry import wait_until

from edge_semvc.config import Config
from edge_semvc.errors import SinkError
from edge_semvc.frame import Frame
from edge_semvc.serve.camera import STALL_S, TRIAL_FRAMES, Backoff, Camera, CameraSeams
from edge_semvc.serve.changes import RemoteChanges
from edge_semvc.serve.config import CameraConfig
from edge_semvc.serve.remote import OverrideStore
from edge_semvc.sinks.config import RecordConfig
from edge_semvc.sinks.gstreamer import check_gstreamer

ROOT = Path(__file__).resolve().parents[1]
CLIP = VIDEO / "carphone_qcif_pristine.mp4"  # 4 s at 30 fps, a person: maps from the start
WAIT = 120.0


def needs_clip():
    if not CLIP.exists():
        pytest.skip(f"{CLIP} is missing (../shared beside the project holds the clips)")


def pipeline_config() -> Config:
    cfg = Config()
    cfg.labeler.cpu_budget = 0.05
    return cfg.validate()


class Events(list):
    """What a camera emitted: (camera, event, fields)."""

    def __call__(self, camera, event, fields):
        self.append((camera, event, dict(fields)))

    def named(self, event):
        return [f for _, e, f in self if e == event]

    def names(self):
        return [e for _, e, _ in self]


def camera(tmp_path, uri=None, events=None, cfg=None, loop=False, realtime=True, outputs=(),
           **seams) -> tuple[Camera, Events]:
    events = events if events is not None else Events()
    record = RecordConfig(dir=str(tmp_path / "rec"), segment_seconds=1)
    entry = CameraConfig(input=uri or f"file://{CLIP}", loop=loop, realtime=realtime,
                         outputs=list(outputs))
    seams.setdefault("backoff", Backoff(0.05, 0.05))
    cam = Camera("front", entry, cfg or pipeline_config(), record, events,
                 seams=CameraSeams(**seams))
    return cam, events


def stopped(cam: Camera) -> None:
    cam.stop()
    cam.thread.join(60)
    assert not cam.thread.is_alive()


# --- the input -------------------------------------------------------------------------------

class Clock:
    """Seconds that pass only when the camera waits for a frame's due time (`sleep`) or the
    test moves them (`advance`)."""

    def __init__(self):
        self.now, self.lock = 1000.0, threading.Lock()

    def __call__(self):
        with self.lock:
            return self.now

    def sleep(self, seconds):
        self.advance(max(seconds, 0.0))
        time.sleep(0.001)  # let the pipeline take the frame, as a real frame period would

    def advance(self, seconds):
        with self.lock:
            self.now += seconds


class Feed:
    """A live camera's frames (a moving bar, 10 fps, pts continuing across reconnections):
    `freeze_after` frames, then a read that hangs until `thaw` (a camera that froze without
    closing its stream); or without `freeze_after`, frames for as long as asked."""

    width, height, fps, time_base = 128, 96, Fraction(10), Fraction(1, 10)
    frame_count, description = 0, "test feed"

    def __init__(self, start=0, freeze_after=None):
        self.start, self.freeze_after = start, freeze_after
        self.frozen, self.thaw = threading.Event(), threading.Event()

    def frames(self):
        for i in range(self.start, self.start + 100_000):
            if self.freeze_after is not None and i - self.start == self.freeze_after:
                self.frozen.set()
                self.thaw.wait(120)
                return
            y = np.full((96, 128), 60, np.uint8)
            y[:, (i * 4) % 112:(i * 4) % 112 + 16] = 200
            c = np.full((48, 64), 128, np.uint8)
            yield Frame(y, c, c.copy(), i, self.time_base, i)

    def close(self):
        pass


def test_a_frozen_input_is_lost_after_stall_s_on_the_clock_and_comes_back(tmp_path):
    """A camera whose stream freezes (the connection stays open, no frame comes) is lost once
    STALL_S seconds passed on the injected clock — reported as the input's failure, its state
    not `running` — and when it is opened again and delivers, `source_back` comes once."""
    (tmp_path / "rec").mkdir()
    clock = Clock()
    feeds = [Feed(freeze_after=40), Feed(start=1000)]
    opened = []

    def open_input(uri):
        opened.append(feeds[len(opened)])
        return opened[-1]

    cam, events = camera(tmp_path, "rtsp://camera.invalid/stream", open_input=open_input,
                         clock=clock, sleep=clock.sleep)
    cam.start()
    try:
        assert feeds[0].frozen.wait(WAIT)
        wait_until(lambda: cam.frames_total > 0, timeout=WAIT, what="frames")
        assert cam.state == "running" and not events.named("source_lost")
        clock.advance(STALL_S)
        wait_until(lambda: events.named("source_lost"), timeout=WAIT, what="the camera lost")
        lost = events.named("source_lost")[0]
        assert "no frame for 5 s (the input froze)" in lost["reason"], lost
        assert lost["input"] == "rtsp://camera.invalid/stream" and not lost["repeated"]
        wait_until(lambda: events.named("source_back"), timeout=WAIT, what="the camera back")
        wait_until(lambda: cam.state == "running", timeout=WAIT, what="running again")
    finally:
        feeds[0].thaw.set()
        stopped(cam)
    names = [n for n in events.names() if n in ("source_lost", "source_back", "error",
                                               "sink_error")]
    assert names == ["source_lost", "source_back"], events


def test_a_camera_that_keeps_failing_to_open_says_so_once_per_retry_and_back_once(tmp_path):
    """Each failed attempt is one `source_lost` (later ones `repeated`); opening again is not
    `source_back`: the first frame is. The stats carry the error while it is lost."""
    (tmp_path / "rec").mkdir()
    from edge_semvc.errors import SourceError
    from edge_semvc.serve.stats import StatsWindow

    attempts = []

    def open_input(uri):
        attempts.append(uri)
        if len(attempts) <= 3:
            raise SourceError("connection refused")
        return Feed(start=len(attempts) * 1000)

    clock = Clock()
    cam, events = camera(tmp_path, "rtsp://camera.invalid/stream", open_input=open_input,
                         clock=clock, sleep=clock.sleep)
    cam.start()
    try:
        wait_until(lambda: events.named("source_lost"), timeout=WAIT, what="the first failure")
        assert cam.settled and cam.frames_total == 0  # READY need not wait for this camera
        # its stats say why (the web page shows it over the empty picture)
        stats = StatsWindow(cam).snapshot()
        assert (stats["state"], stats["error"]) == ("lost", "connection refused")
        wait_until(lambda: events.named("source_back"), timeout=WAIT, what="the camera back")
        assert StatsWindow(cam).snapshot()["error"] is None
    finally:
        stopped(cam)
    lost = events.named("source_lost")
    assert [e["repeated"] for e in lost] == [False, True, True]
    assert len(events.named("source_back")) == 1
    assert events.names().index("source_back") > events.names().index("source_lost")


class CutFeed(Feed):
    """A live feed whose stream ends when the test says (`cut`): the camera is lost."""

    def __init__(self, start=0):
        super().__init__(start)
        self.cut = threading.Event()

    def frames(self):
        for frame in super().frames():
            if self.cut.is_set():
                return
            yield frame


def test_a_viewer_of_the_rtsp_server_stays_connected_while_the_camera_comes_back(tmp_path):
    """The camera's stream outputs are kept open across its runs (sinks/kept.py): an RTSP
    client watching when the input is lost goes on receiving, without reconnecting, once the
    camera is back (before, the server closed with the run and the client was dropped)."""
    from gst_helpers import free_port, require
    from test_gst_rtsp import ffmpeg_rtsp

    require("rtsp")
    (tmp_path / "rec").mkdir()
    clock, port = Clock(), free_port()
    feeds = [CutFeed(), CutFeed(start=1000)]
    cam, events = camera(tmp_path, "rtsp://camera.invalid/stream",
                         open_input=lambda uri: feeds[min(cam.runs, 1)], clock=clock,
                         sleep=clock.sleep, outputs=[f"rtsp://@:{port}/cam"])
    cam.start()
    try:
        wait_until(lambda: cam.state == "running", timeout=WAIT, what="the camera running")
        viewer = ffmpeg_rtsp(f"rtsp://127.0.0.1:{port}/cam", "tcp")
        viewer.wait(10)
        feeds[0].cut.set()
        wait_until(lambda: events.named("source_back"), timeout=WAIT, what="the camera back")
        viewer.wait(viewer.frames + 20)  # the same connection, the second run's frames
    finally:
        stopped(cam)
    viewer.join()
    assert [n for n in events.names() if n.startswith("client_")] == ["client_joined",
                                                                     "client_left"]
    assert events.names().index("client_left") > events.names().index("source_back")
    assert viewer.first.key_frame and viewer.broken == []  # the second run decodes whole
    assert cam.streams == [] and cam.runs == 2


# --- the recording ---------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["record_dir_missing", "camera_folder_is_a_file",
                                   "second_recorder", "output_port_taken"])
def test_recording_faults_are_sink_errors_not_a_lost_source(tmp_path, fault):
    """The recording cannot start: record.dir missing (an unmounted disk: never created),
    the camera folder blocked, another process holding the camera's lock. Each is a
    `sink_error` naming the reason, retried; the input is fine, so no `source_lost`. Once the
    fault goes, recording starts (`recovered`)."""
    needs_clip()
    rec = tmp_path / "rec"
    if fault != "record_dir_missing":
        rec.mkdir()
    if fault == "camera_folder_is_a_file":
        (rec / "front").write_text("in the way")
    lock = None
    if fault == "second_recorder":  # another process's lock on the camera folder
        (rec / "front").mkdir()
        lock = subprocess.Popen([sys.executable, "-c", (
            "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()"),
            str(rec / "front" / ".lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        assert lock.stdout.readline().strip() == "locked"
    taken, outputs = None, ()
    if fault == "output_port_taken":  # another camera's SRT listener, say
        rec.mkdir(exist_ok=True)
        taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        taken.bind(("0.0.0.0", 0))
        outputs = [f"srt://@:{taken.getsockname()[1]}?mode=listener"]
        try:
            check_gstreamer("srt", outputs[0])
        except SinkError as e:
            pytest.skip(str(e))
    cam, events = camera(tmp_path, loop=True, outputs=outputs)
    cam.start()
    try:
        wait_until(lambda: len(events.named("sink_error")) >= 2, timeout=WAIT,
                   what="the fault reported and retried")
        assert not rec.exists() if fault == "record_dir_missing" else True
        # failed, or already trying again (the backoff here is 0.05 s): never running
        assert cam.state in ("failed", "starting") and cam.frames_total == 0
        reason = events.named("sink_error")[0]["reason"]
        assert {"record_dir_missing": "is missing (an unmounted disk?)",
                "camera_folder_is_a_file": "cannot record camera 'front'",
                "second_recorder": "already being recorded",
                "output_port_taken": "Address already in use"}[fault] in reason, reason
        if fault == "record_dir_missing":
            rec.mkdir()
        elif fault == "camera_folder_is_a_file":
            (rec / "front").unlink()
        elif fault == "output_port_taken":
            taken.close()
        else:
            lock.stdin.close()
            lock.wait(30)
        wait_until(lambda: cam.frames_total > 0 and events.named("recovered"), timeout=WAIT,
                   what="recording after the fault went")
    finally:
        if lock is not None and lock.poll() is None:
            lock.kill()
        stopped(cam)
    assert not events.named("source_lost") and not events.named("error")
    assert events.named("recovered") == [{"after": "sink_error"}]
    assert [e["repeated"] for e in events.named("sink_error")][:2] == [False, True]
    assert events.named("segment_closed")


def test_frames_are_counted_once(tmp_path):
    """A file camera read to its end: the frame count is the clip's, as in its segments."""
    needs_clip()
    (tmp_path / "rec").mkdir()
    cam, events = camera(tmp_path, realtime=False)
    cam.start()
    cam.thread.join(WAIT)
    assert cam.state == "ended" and events.names()[-1] == "source_ended"
    frames = sum(e["frames"] for e in events.named("segment_closed"))
    assert cam.frames_total == frames == 120  # carphone: 4 s at 30 fps


def test_a_full_disk_backs_off_and_resumes_only_once_a_segment_completes(street,  # noqa: F811
                                                                           tmpfs):
    """A full disk that still takes a segment's first bytes: each try fails part-way, the wait
    before the next doubles up to one segment (20 frames here), and `write_resumed` comes only
    after a segment was completed again — not when the first bytes of a doomed one fit."""
    cam = tmpfs / "cam"
    cam.mkdir()
    filler = tmpfs / "filler"
    with open(filler, "wb") as f:  # leave 120 kB: a few frames, not a segment (~190 kB)
        f.write(b"\0" * (3 * 2**20 - 120_000))

    def hook(i, events):
        if len(named(events, "write_error")) == 5 and filler.exists():
            filler.unlink()  # space is back

    cfg = RecordConfig(dir=str(tmpfs), segment_seconds=2, retry_frames=5)
    events, _, _, sink = record(street[:150], cfg, hook=hook)
    names = [n for n, _ in events]
    errors = named(events, "write_error")
    assert len(errors) == 5 and all(e["errno"] == 28 for e in errors), errors
    assert any(e["frames_lost"] > 1 for e in errors)  # tries that wrote frames, then failed
    assert [e["retry_in_frames"] for e in errors] == [5, 10, 20, 20, 20]  # up to a segment
    # nothing completed while the disk was full; resumed once, with the first segment after
    assert names[:5] == ["write_error"] * 5 and names[5:7] == ["write_resumed", "segment_closed"]
    resumed, closed = named(events, "write_resumed"), named(events, "segment_closed")
    assert resumed == [{"path": closed[0]["path"], "frames_lost": sink.frames_lost,
                        "errors": 5}]
    assert sum(e["frames"] for e in closed) + sink.frames_lost == 150


# --- a remote change that breaks the pipeline -------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy on the NaN map: the point
def test_a_change_that_makes_the_pipeline_fail_is_rolled_back_and_not_kept(tmp_path,
                                                                            monkeypatch):
    """Were a live key's range missing (here: validation switched off for `qp`), a change
    that makes every map NaN (`qp.q_gain: 1e308`, the issue's example) fails the pipeline at
    its first mapped frame: it is rolled back to the last good configuration at once, refused
    with one `config_rejected` naming the key and the reason, and not stored; recording goes
    on. A good change afterwards is kept after TRIAL_FRAMES frames and stored."""
    needs_clip()
    from edge_semvc.qp.config import QpConfig

    (tmp_path / "rec").mkdir()
    events = Events()
    cam, _ = camera(tmp_path, events=events, loop=True)
    store = OverrideStore(tmp_path / "rec" / ".state")
    states = []
    changes = RemoteChanges({"front": cam}, store, events,
                            lambda name, state: states.append(state))
    cam.start()
    changes.start()
    try:
        wait_until(lambda: cam.frames_total >= 30, timeout=WAIT, what="frames")
        good = cam.cfg
        monkeypatch.setattr(QpConfig, "validate", lambda self: None)  # a range forgotten
        changes.submit("front", b'{"qp": {"q_gain": 1e308}}')
        wait_until(lambda: events.named("config_rejected"), timeout=WAIT, what="the rollback")
        monkeypatch.undo()
        rejected = events.named("config_rejected")
        assert len(rejected) == 1 and rejected[0]["key"] == "qp.q_gain", rejected
        assert "rolled back" in rejected[0]["reason"] and "NaN" in rejected[0]["reason"]
        assert cam.cfg is good and cam.cfg.qp.q_gain == 4.0
        frames = cam.frames_total
        wait_until(lambda: cam.frames_total > frames + 30, timeout=WAIT, what="recording on")
        changes.submit("front", b'{"qp": {"q_gain": 5}}')
        wait_until(lambda: events.named("config_applied"), timeout=WAIT, what="a good change")
    finally:
        changes.close()
        stopped(cam)
    assert store.load("front") == {"qp": {"q_gain": 5}}  # the rolled-back one never stored
    assert states[-1]["qp"]["q_gain"] == 5.0 and cam.cfg.qp.q_gain == 5.0
    assert events.named("config_applied") == [{"change": {"qp": {"q_gain": 5}}}]
    assert not events.named("source_lost") and not events.named("error")
    assert TRIAL_FRAMES <= 30


# --- a remote change with no frames to try it on -----------------------------------------------

def test_a_change_with_no_frames_to_try_it_on_still_ends_in_one_event(tmp_path):
    """A change for a camera whose input is away or ended waited, unsaid, for frames that
    might never come (no event, no log line, the config/state unchanged): it is refused at
    once, naming the camera's state. One on trial when the camera stops (a frozen feed: no
    frame after it) is refused too, not stored; nothing is kept from either."""
    needs_clip()
    from edge_semvc.errors import SourceError

    for name in ("lost", "ended", "frozen"):  # each camera records into a folder of its own
        (tmp_path / name / "rec").mkdir(parents=True)

    def unreachable(uri):
        raise SourceError("connection refused")

    clock, feed = Clock(), Feed(freeze_after=10)
    lost, _ = camera(tmp_path / "lost", "rtsp://camera.invalid/a", open_input=unreachable)
    ended, _ = camera(tmp_path / "ended", realtime=False)
    frozen, _ = camera(tmp_path / "frozen", "rtsp://camera.invalid/b", clock=clock,
                       sleep=clock.sleep, open_input=lambda uri: feed)
    cams = {"lost": lost, "ended": ended, "frozen": frozen}
    events = Events()
    store = OverrideStore(tmp_path / "frozen" / "rec" / ".state")
    changes = RemoteChanges(cams, store, events, lambda name, state: None).start()
    for cam in cams.values():
        cam.start()
    try:
        wait_until(lambda: lost.state == "lost" and ended.state == "ended" and feed.frozen
                   .is_set() and frozen.state == "running", timeout=WAIT, what="the states")
        for name in cams:
            changes.submit(name, b'{"qp": {"q_gain": 6}}')
        wait_until(lambda: len(events) == 2 and frozen._trial, timeout=WAIT,
                   what="two refusals, one change on trial")
        assert frozen.state == "running" and not events.named("config_applied")
        frozen.stop()
        feed.thaw.set()  # the hanging read returns: the camera stops
        stopped(frozen)
        changes.settle("frozen", frozen)
    finally:
        feed.thaw.set()
        changes.close()
        for cam in cams.values():
            stopped(cam)
    rejected = {camera: fields for camera, _, fields in events}
    assert events.names() == ["config_rejected"] * 3, events
    assert rejected["lost"]["key"] == "qp.q_gain" and "camera is lost" in rejected["lost"][
        "reason"]
    assert "camera is ended" in rejected["ended"]["reason"]
    assert "not kept: the camera stopped" in rejected["frozen"]["reason"]
    assert store.load("frozen") == {} and frozen.good.qp.q_gain == 4.0
