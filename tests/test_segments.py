"""SegmentSink: real x264 encodes of a real clip recorded into segments, read back with PyAV."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from edge_semvc.encoders import EncoderSettings
from edge_semvc.errors import ConfigError, SinkError
from edge_semvc.frame import Frame
from edge_semvc.sinks.config import RecordConfig
from edge_semvc.sinks.segments import SegmentSink

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "video" / "street_pedestrians_vtest_768x576.avi"
TB = Fraction(1, 10)  # the clip is 10 fps
T0 = datetime(2026, 11, 29, 23, 15, 0, tzinfo=timezone.utc)

x264 = pytest.importorskip("edge_semvc.encoders.x264")
X264Encoder = x264.X264Encoder


def _need_clip() -> None:
    if not CLIP.exists():
        pytest.skip(f"test clip {CLIP} is missing (../shared/data/video beside the project)")
    ok, why = X264Encoder.available()
    if not ok:
        pytest.skip(f"x264 backend unavailable: {why}")


@pytest.fixture(scope="module")
def street() -> list[Frame]:
    _need_clip()
    frames = []
    with av.open(str(CLIP)) as c:
        for i, f in enumerate(c.decode(video=0)):
            frames.append(Frame.from_i420(f.to_ndarray(format="yuv420p"), f.width, f.height,
                                          i, TB, i))
            if len(frames) == 150:
                break
    return frames


class Clock:
    """now(): T0 + 1 s more at every call (a segment's name says which call opened it)."""

    def __init__(self, start: datetime = T0, step: float = 1.0):
        self.t, self.step = start, timedelta(seconds=step)

    def __call__(self) -> datetime:
        self.t += self.step
        return self.t


def name_at(call: int, ext: str = ".ts", start: datetime = T0) -> str:
    return (start + timedelta(seconds=call)).strftime("%Y%m%dT%H%M%SZ") + ext


def record(frames, cfg: RecordConfig, camera="cam", hook=None, force=True, now=None, **kw):
    """Encode `frames` into a SegmentSink the way the serve loop does; returns (events, all
    packets, headers, sink). `hook(i, events)` runs before frame i (fault injection)."""
    events = []
    settings = EncoderSettings(width=frames[0].width, height=frames[0].height, fps=Fraction(10),
                               time_base=TB, global_headers=SegmentSink.wants_global_headers(cfg),
                               **kw)
    packets = []
    with X264Encoder(settings) as enc:
        with SegmentSink(cfg, camera, settings, enc.headers(), now=now or Clock(),
                         on_event=lambda name, **f: events.append((name, f))) as sink:
            for i, f in enumerate(frames):
                if hook:
                    hook(i, events)
                out = enc.encode(f, None, force_idr=force and sink.wants_idr(f.pts))
                packets += out
                sink.write(out)
            out = enc.flush()
            packets += out
            sink.write(out)
        headers = enc.headers()
    return events, packets, headers, sink


def named(events, name):
    return [f for n, f in events if n == name]


def decode_file(path) -> list[av.VideoFrame]:
    with av.open(str(path)) as c:
        return list(c.decode(video=0))


def decode_stream(packets, headers: bytes) -> dict[int, np.ndarray]:
    """The continuous stream's pictures by pts: what every segment must reproduce alone."""
    data = headers + b"".join(p.data for p in packets)
    pts = sorted(p.pts for p in packets)
    with av.open(io.BytesIO(data), format="h264") as c:
        pics = [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]
    assert len(pics) == len(pts)
    return dict(zip(pts, pics))


def files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".lock")


def check_segments_alone(closed, reference):
    """Each closed segment decodes alone from its first frame, keyframe first, to the same
    pictures as the continuous stream."""
    for ev in closed:
        pics = decode_file(ev["path"])
        assert len(pics) == ev["frames"], ev
        assert pics[0].key_frame, ev
        for k, pic in enumerate(pics):
            assert np.array_equal(pic.to_ndarray(format="yuv420p"), reference[ev["start_pts"] + k])


# --- the normal case ---------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["ts", "mp4"])
def test_segments_lengths_names_and_each_decodes_alone(street, tmp_path, fmt):
    frames = street[:65]
    (tmp_path / "rec").mkdir()  # record.dir must exist: the sink makes only the camera folder
    cfg = RecordConfig(dir=str(tmp_path / "rec"), segment_seconds=2, format=fmt)
    events, packets, headers, sink = record(frames, cfg)
    closed = named(events, "segment_closed")
    ext = "." + fmt
    assert [e["frames"] for e in closed] == [20, 20, 20, 5]
    assert [e["seconds"] for e in closed] == [2.0, 2.0, 2.0, 0.5]
    assert sum(e["seconds"] for e in closed) == pytest.approx(len(frames) / 10)
    assert [e["start_pts"] for e in closed] == [0, 20, 40, 60]
    # named by the UTC time each was opened (the injected clock), in order; no .part left
    names = [name_at(k, ext) for k in (1, 2, 3, 4)]
    assert files(tmp_path / "rec" / "cam") == names
    assert [Path(e["path"]).name for e in closed] == names
    assert [e["bytes"] for e in closed] == [(tmp_path / "rec" / "cam" / n).stat().st_size
                                            for n in names]
    check_segments_alone(closed, decode_stream(packets, headers))
    if fmt == "ts":  # TS keeps the camera's timestamps: segment k starts at 2k s
        for k, e in enumerate(closed):
            pics = decode_file(e["path"])
            assert float(pics[0].time) == pytest.approx(2 * k)
            assert float(pics[-1].time - pics[0].time) + 0.1 == pytest.approx(e["seconds"])
    assert sink.stats() == {"frames": 65, "frames_lost": 0, "segments": 4,
                            "bytes": sum(e["bytes"] for e in closed), "deleted": 0,
                            "deleted_bytes": 0, "write_errors": 0,
                            "track_packets_lost": 0}
    assert not named(events, "write_error")
    with pytest.raises(SinkError, match="closed"):
        sink.write([])


@pytest.mark.parametrize("gop", ["closed", "open"])
def test_without_forced_idr_cuts_at_natural_idrs(street, tmp_path, gop):
    """A caller that never forces an IDR still gets whole segments: cut at the encoder's own
    IDRs once the length is reached, never at an open-GOP I-frame (x264 flags it a keyframe,
    but the B-frames coded after it reference the previous segment)."""
    cfg = RecordConfig(dir=str(tmp_path), segment_seconds=2)
    params = {"open-gop": "1"} if gop == "open" else {}
    events, packets, headers, _ = record(street[:65], cfg, force=False, keyint=15, params=params)
    closed = named(events, "segment_closed")
    assert sorted(p.pts for p in packets if p.keyframe) == [0, 15, 30, 45, 60]
    assert [e["start_pts"] for e in closed] == ([0, 30, 60] if gop == "closed" else [0])
    assert sum(e["frames"] for e in closed) == 65
    check_segments_alone(closed, decode_stream(packets, headers))


def test_names_get_a_suffix_when_taken(street, tmp_path):
    cfg = RecordConfig(dir=str(tmp_path), segment_seconds=1)
    events, _, _, _ = record(street[:25], cfg, now=lambda: T0)  # a stuck clock
    stamp = T0.strftime("%Y%m%dT%H%M%SZ")
    # listed by name, they come in recording order
    assert files(tmp_path / "cam") == [f"{stamp}.ts", f"{stamp}_0001.ts", f"{stamp}_0002.ts"]


def test_config_validation_names_the_key(tmp_path):
    good = dict(dir=str(tmp_path))
    for key, value in (("segment_seconds", 0), ("format", "avi"), ("max_bytes", -1),
                       ("max_age_hours", -2), ("retry_frames", 0), ("dir", " ")):
        with pytest.raises(ConfigError, match=f"record.{key}"):
            RecordConfig(**{**good, key: value}).validate()
    assert RecordConfig(**good).validate().extension == ".ts"
    s = EncoderSettings(width=64, height=48, fps=10, time_base=TB)
    with pytest.raises(ConfigError, match="record.format"):  # the sink validates too
        SegmentSink(RecordConfig(dir=str(tmp_path), format="mkv"), "cam", s)
    with pytest.raises(SinkError, match="camera name"):
        SegmentSink(RecordConfig(dir=str(tmp_path)), "../x", s)


def test_one_sink_per_camera_and_stale_parts_removed(tmp_path):
    cam = tmp_path / "cam"
    cam.mkdir()
    (cam / ".20261129T230000Z.ts.part").write_bytes(b"x" * 100)  # a crashed run's open segment
    (cam / "notes.txt").write_text("not ours")
    s = EncoderSettings(width=64, height=48, fps=10, time_base=TB)
    events = []
    cfg = RecordConfig(dir=str(tmp_path))
    sink = SegmentSink(cfg, "cam", s, on_event=lambda n, **f: events.append((n, f)))
    assert events == [("segment_deleted", {"path": str(cam / ".20261129T230000Z.ts.part"),
                                           "bytes": 100, "reason": "stale_part"})]
    assert files(cam) == ["notes.txt"]
    with pytest.raises(SinkError, match="already being recorded"):
        SegmentSink(cfg, "cam", s)
    sink.close()
    SegmentSink(cfg, "cam", s).close()  # the lock went with close()


def test_wants_idr_once_per_segment_by_pts(tmp_path):
    s = EncoderSettings(width=64, height=48, fps=10, time_base=Fraction(1, 1000))
    with SegmentSink(RecordConfig(dir=str(tmp_path), segment_seconds=2), "cam", s) as sink:
        asked = [ms for ms in range(0, 7000, 100) if sink.wants_idr(ms)]
    assert asked == [0, 2000, 4000, 6000]
    with SegmentSink(RecordConfig(dir=str(tmp_path), segment_seconds=2), "cam", s) as sink:
        # frames without timestamps are numbered by the frame rate, as the encoder does
        assert [i for i in range(70) if sink.wants_idr(None)] == [0, 20, 40, 60]
        assert sink.wants_idr(6500) is False  # then timestamps again: due at 8000
        assert sink.wants_idr(8000) is True
    assert sink.wants_idr(10_000) is False  # closed


# --- retention ---------------------------------------------------------------------------------

def test_retention_by_bytes_deletes_the_oldest(street, tmp_path):
    cam = tmp_path / "cam"
    cam.mkdir()
    (cam / "20200101T000000Z.ts").write_bytes(b"\0" * 50_000)  # an older recording
    (cam / "keep.txt").write_bytes(b"\0" * 10_000_000)  # not ours: never counted or deleted
    cfg = RecordConfig(dir=str(tmp_path), segment_seconds=2, max_bytes=450_000)
    events, _, _, sink = record(street[:65], cfg)
    closed, deleted = named(events, "segment_closed"), named(events, "segment_deleted")
    assert len(closed) == 4 and max(e["bytes"] for e in closed) < 450_000
    order = ["20200101T000000Z.ts", *(Path(e["path"]).name for e in closed)]  # oldest first
    assert len(deleted) >= 2  # the old recording and at least one of this run's
    assert [Path(d["path"]).name for d in deleted] == order[:len(deleted)]
    assert all(d["reason"] == "max_bytes" for d in deleted)
    left = [n for n in files(cam) if n != "keep.txt"]
    assert left == order[len(deleted):] and (cam / "keep.txt").exists()
    assert sum((cam / n).stat().st_size for n in left) <= 450_000
    assert sink.deleted == len(deleted) and sink.deleted_bytes == sum(d["bytes"] for d in deleted)


def _old_segments(cam: Path) -> tuple[list[str], str]:
    cam.mkdir()
    old = [name_at(-3600 * h) for h in (30, 26)]  # older than 24 h when the run starts
    young = name_at(-3600 * 20)
    for n in (*old, young):
        (cam / n).write_bytes(b"\0" * 1000)
    return old, young


def test_retention_by_age_deletes_the_oldest(street, tmp_path):
    old, young = _old_segments(tmp_path / "cam")
    cfg = RecordConfig(dir=str(tmp_path), segment_seconds=2, max_age_hours=24)
    events, _, _, _ = record(street[:25], cfg)
    deleted = named(events, "segment_deleted")
    assert [(Path(d["path"]).name, d["reason"]) for d in deleted] == [(n, "max_age") for n in old]
    assert files(tmp_path / "cam") == [young, *(Path(e["path"]).name
                                                for e in named(events, "segment_closed"))]


def test_retention_keeps_the_newest_segment(street, tmp_path):
    old, young = _old_segments(tmp_path / "cam")
    cfg = RecordConfig(dir=str(tmp_path), segment_seconds=2, max_age_hours=24, max_bytes=1)
    events, _, _, _ = record(street[:45], cfg)
    deleted = [Path(d["path"]).name for d in named(events, "segment_deleted")]
    closed = [Path(e["path"]).name for e in named(events, "segment_closed")]
    # a cap smaller than one segment deletes all but the newest, oldest first
    assert deleted == [*old, young, *closed[:-1]]
    assert files(tmp_path / "cam") == closed[-1:]


# --- a crash -----------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from fractions import Fraction
    import av
    from edge_semvc.encoders import EncoderSettings
    from edge_semvc.encoders.x264 import X264Encoder
    from edge_semvc.frame import Frame
    from edge_semvc.sinks.config import RecordConfig
    from edge_semvc.sinks.segments import SegmentSink

    clip, folder, fmt = sys.argv[1:4]
    tb = Fraction(1, 10)
    pics = []
    with av.open(clip) as c:
        for f in c.decode(video=0):
            pics.append((f.to_ndarray(format="yuv420p"), f.width, f.height))
            if len(pics) == 30:
                break
    cfg = RecordConfig(dir=folder, segment_seconds=2, format=fmt)
    s = EncoderSettings(width=pics[0][1], height=pics[0][2], fps=10, time_base=tb,
                        global_headers=SegmentSink.wants_global_headers(cfg))

    def report(name, **f):
        print(name, f.get("path"), f.get("frames"), flush=True)

    with X264Encoder(s) as enc, SegmentSink(cfg, "cam", s, enc.headers(), on_event=report) as sink:
        i = 0
        while True:  # until killed
            buf, w, h = pics[i % len(pics)]
            frame = Frame.from_i420(buf, w, h, i, tb, i)
            sink.write(enc.encode(frame, None, force_idr=sink.wants_idr(i)))
            print("written", sink.frames, flush=True)
            i += 1
            time.sleep(0.01)
""")


@pytest.mark.parametrize("fmt", ["ts", "mp4"])
def test_sigkill_leaves_completed_segments_whole(tmp_path, fmt):
    _need_clip()
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    folder = tmp_path / "rec"
    folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, str(script), str(CLIP), str(folder), fmt],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    closed = []
    watchdog = threading.Timer(120, child.kill)  # a child that hangs silently fails the test
    watchdog.start()
    try:  # killed once three segments closed and 15 frames of the fourth (1.5 s) were written
        while True:
            line = child.stdout.readline()
            if not line:
                break
            if line.startswith("segment_closed"):
                closed.append(line.split())
            if len(closed) >= 3 and line.startswith("written") and \
                    int(line.split()[1]) >= 15 + sum(int(c[2]) for c in closed):
                break
    finally:
        watchdog.cancel()
        child.send_signal(signal.SIGKILL)
        _, err = child.communicate(timeout=30)
    assert len(closed) >= 3, err[-2000:]
    cam = folder / "cam"
    names = files(cam)
    done = [n for n in names if not n.startswith(".")]
    parts = [n for n in names if n.startswith(".")]
    # every completed segment is there and whole; the open one is at most a .part
    assert len(parts) <= 1 and all(p.endswith(f".{fmt}.part") for p in parts)
    assert {Path(c[1]).name for c in closed} <= set(done)
    for name in done:
        pics = decode_file(cam / name)
        assert pics[0].key_frame and len(pics) == 20, name
    # the next start finalises the killed run's open segment from its whole packets (the
    # killed child's lock went with it), in its own container though record.format changed:
    # a crash loses a few frames, not the segment
    events = []
    s = EncoderSettings(width=768, height=576, fps=10, time_base=TB)
    SegmentSink(RecordConfig(dir=str(folder), format="mp4" if fmt == "ts" else "ts"), "cam", s,
                on_event=lambda n, **f: events.append((n, f))).close()
    recovered = named(events, "segment_recovered")
    assert len(recovered) == len(parts) == 1, (events, parts)
    final = cam / parts[0][1:-len(".part")]
    assert recovered[0]["path"] == str(final) and recovered[0]["bytes"] == final.stat().st_size
    with av.open(str(final)) as c:
        assert ("mpegts" if fmt == "ts" else "mp4") in c.format.name.split(",")
    pics = decode_file(final)
    # TS: every packet but the last; fMP4: the fragment of the first second, less one frame
    assert pics[0].key_frame and len(pics) == recovered[0]["frames"] >= 9
    assert files(cam) == sorted([*done, final.name])
