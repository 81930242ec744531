"""SegmentSink when writing fails (a full disk, a folder gone, an unmounted disk, an event
callback that raises): real x264 encodes of a real clip, read back with PyAV; the helpers and
the clip are test_segments.py's."""
from __future__ import annotations

import os
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest
from test_segments import (  # noqa: F401  (street: a fixture)
    TB,
    Clock,
    X264Encoder,
    check_segments_alone,
    decode_stream,
    files,
    name_at,
    named,
    record,
    street,
)

from edge_semvc.encoders import EncoderSettings
from edge_semvc.errors import SinkError
from edge_semvc.sinks.config import RecordConfig
from edge_semvc.sinks.segments import SegmentSink


def test_disk_full_then_recording_resumes(street, tmp_path, monkeypatch):  # noqa: F811
    """The third segment's file is /dev/full (ENOSPC from the kernel): that segment is lost,
    write_error is reported, the next try (a forced IDR retry_frames later) records again.
    (The sink opens with O_NOFOLLOW, so a symlink cannot stand in: os.open is redirected.)"""
    from edge_semvc.sinks import segments

    cam = tmp_path / "cam"
    full = cam / f".{name_at(3)}.part"
    real_open = os.open

    def open_full(path, flags, *args, **kw):
        if str(path) == str(full):
            return real_open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(segments.os, "open", open_full)
    cfg = RecordConfig(dir=str(tmp_path), segment_seconds=2, retry_frames=5)
    events, packets, headers, sink = record(street[:100], cfg)
    monkeypatch.undo()
    names = [n for n, _ in events]
    errors = named(events, "write_error")
    assert errors and all(e["errno"] == 28 for e in errors), errors
    assert errors[0]["path"] == str(full) and "No space left" in errors[0]["reason"]
    assert errors[0]["retry_in_frames"] == 5
    assert names.index("write_resumed") > names.index("write_error")
    closed = named(events, "segment_closed")
    assert [Path(e["path"]).name for e in closed][:2] == [name_at(1), name_at(2)]
    assert closed[2]["path"] == named(events, "write_resumed")[0]["path"]
    assert named(events, "write_resumed")[0]["frames_lost"] == sink.frames_lost > 0
    assert sum(e["frames"] for e in closed) + sink.frames_lost == 100
    assert files(cam) == [Path(e["path"]).name for e in closed]  # nothing else left
    check_segments_alone(closed, decode_stream(packets, headers))


@pytest.mark.parametrize("how", ["camera_dir_becomes_file", "record_dir_unmounted"])
def test_folder_gone_then_recording_resumes(street, tmp_path, how):  # noqa: F811
    root = tmp_path / "rec"
    root.mkdir()
    cam = root / "cam"
    cfg = RecordConfig(dir=str(root), segment_seconds=2, retry_frames=5)

    state = []

    def hook(i, events):  # by events, not frame numbers: packets lag frames (encoder delay)
        if not state and named(events, "segment_closed"):  # the second segment is open
            state.append("gone")
            if how == "camera_dir_becomes_file":
                shutil.rmtree(cam)
                cam.write_text("in the way")
            else:
                root.rename(tmp_path / "away")
        if state == ["gone"] and len(named(events, "write_error")) == 3:  # the folder returns
            state.append("back")
            if how == "camera_dir_becomes_file":
                cam.unlink()  # the sink re-creates the camera folder itself
            else:  # the sink must not have re-created record.dir meanwhile (rename would fail)
                (tmp_path / "away").rename(root)

    events, packets, headers, sink = record(street, cfg, hook=hook)
    closed = named(events, "segment_closed")
    errors = named(events, "write_error")
    # the second segment (frames 20-39) cannot be renamed into place, a new one cannot be
    # opened at once, nor at the retries 5 and then 10 frames later; then the folder is back
    assert [e["frames_lost"] for e in errors] == [20, 0, 0]
    assert errors[0]["path"].endswith(".ts.part") and errors[1]["path"] == str(cam)
    assert [e["retry_in_frames"] for e in errors] == [0, 5, 10]
    assert closed[0]["start_pts"] == 0 and closed[0]["frames"] == 20 and len(closed) >= 3
    assert named(events, "write_resumed") == [{"path": closed[1]["path"],
                                               "frames_lost": sink.frames_lost,
                                               "errors": len(errors)}]
    assert sum(e["frames"] for e in closed) + sink.frames_lost == len(street)
    assert sink.write_errors == len(errors)
    # no .part left: the one that could not be deleted while away was deleted on resuming
    kept = closed[1:] if how == "camera_dir_becomes_file" else closed  # rmtree took the first
    assert files(cam) == [Path(e["path"]).name for e in kept]
    check_segments_alone(kept, decode_stream(packets, headers))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"),
                    reason="mounting a tmpfs needs root and mount(8)")
def test_a_disk_unmounted_from_record_dir_is_waited_for(street, tmp_path):  # noqa: F811
    """record.dir is the disk's mount point: unmounted, it is an empty folder on the root disk,
    which must stay empty; mounted again (empty), the camera folder is made and locked again."""
    root = tmp_path / "rec"
    root.mkdir()
    seen, state = [], []

    def mount(*args):
        subprocess.run(["mount", *args, str(root)], check=True, capture_output=True)

    def hook(i, events):
        if not state and named(events, "segment_closed"):
            state.append("gone")
            subprocess.run(["umount", "-l", str(root)], check=True)
        if state == ["gone"] and len(named(events, "write_error")) == 3:
            seen.extend(root.iterdir())  # what was recorded onto the root disk meanwhile
            state.append("back")
            mount("-t", "tmpfs", "-o", "size=64m", "tmpfs")
        if state == ["gone", "back"] and named(events, "write_resumed"):
            state.append("locked")  # the new camera folder is the sink's alone
            with pytest.raises(SinkError, match="already being recorded"):
                SegmentSink(cfg, "cam", EncoderSettings(width=64, height=48, fps=10,
                                                        time_base=TB))

    mount("-t", "tmpfs", "-o", "size=64m", "tmpfs")
    try:
        cfg = RecordConfig(dir=str(root), segment_seconds=2, retry_frames=5)
        events, *_ = record(street, cfg, hook=hook)
        assert state == ["gone", "back", "locked"] and seen == []
        closed = named(events, "segment_closed")  # the first went with the first disk
        assert files(root / "cam") == [Path(e["path"]).name for e in closed[1:]]
    finally:
        subprocess.run(["umount", str(root)], capture_output=True)


def test_a_failing_event_callback_does_not_stop_recording(street, tmp_path):  # noqa: F811
    def boom(name, **fields):
        raise RuntimeError("reporting broke")

    cfg = RecordConfig(dir=str(tmp_path), segment_seconds=1)
    settings = EncoderSettings(width=768, height=576, fps=Fraction(10), time_base=TB)
    with X264Encoder(settings) as enc, SegmentSink(cfg, "cam", settings, enc.headers(),
                                                   on_event=boom, now=Clock()) as sink:
        for f in street[:15]:
            sink.write(enc.encode(f, None, force_idr=sink.wants_idr(f.pts)))
        sink.write(enc.flush())
    assert sink.segments == 2 and files(tmp_path / "cam") == [name_at(1), name_at(2)]




def test_a_recording_whose_writes_fail_says_so_in_its_state(tmp_path, monkeypatch):
    """While segments fail (a full disk) the output's state is `failing`, not `recording`."""
    from test_outputs import encoded

    from edge_semvc.sinks import segments

    info, packets = encoded(12, keyint=5)
    real_open = os.open
    monkeypatch.setattr(segments.os, "open", lambda path, flags, *a, **k: real_open(
        "/dev/full", os.O_WRONLY | os.O_CLOEXEC))
    out = segments.SegmentOutput(RecordConfig(dir=str(tmp_path), retry_frames=1), "cam")
    out.open(info)
    out.write(packets[:6])
    assert out.stats()["state"] == "failing" and out.stats()["write_errors"] > 0
    out.close()
    assert out.stats()["state"] == "closed"
