"""`serve` cameras side by side: a storage-profile camera beside a live one on the same clip,
and more cameras than cores sharing them (the labeler's live share). Same harness as
test_serve.py: the service as a child process, its segments and `--stats-json` read back."""
from __future__ import annotations

import json
import os
from pathlib import Path

import av
import pytest
from conftest import VIDEO
from test_serve import (
    CLIP,
    check_segments,
    decode,
    needs_clip,
    segments,
    service_log,
    start_service,
    write_config,
)


def audio_beside_video(path: Path) -> tuple[float, float, float, float]:
    """(video start, video end, audio start, audio end) of a segment, in seconds; its audio must
    start with its first picture (within one frame of the car park's 12.5 fps)."""
    spans = {}
    with av.open(str(path)) as c:
        for s in (c.streams.video[0], c.streams.audio[0]):
            frames = list(c.decode(s))
            first, last = frames[0], frames[-1]
            step = last.samples / last.sample_rate if s.type == "audio" else 0.08
            spans[s.type] = (float(first.time), float(last.time) + step)
            c.seek(0)
    (v0, v1), (a0, a1) = spans["video"], spans["audio"]
    assert abs(a0 - v0) <= 0.08, (path.name, spans)
    return v0, v1, a0, a1


def test_a_storage_camera_leaves_out_still_frames_and_says_why_it_placed_each_idr(tmp_path):
    """`cameras.<name>.profile: storage` beside a live camera on the same clip: the storage
    camera's segments hold fewer frames, each still starts with an IDR and keeps real time,
    and the stats say what was left out and why each IDR is where it is. The clip's AAC
    audio is in every segment of both, in sync, whole: left-out frames leave no gap in it."""
    clip = VIDEO / "overhead_parking_cars_768x432.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} is missing (../shared beside the project holds the clips)")
    cams = {"lot": {"input": f"file://{clip}", "realtime": False, "profile": "storage"},
            "live": {"input": f"file://{clip}", "realtime": False}}
    config = write_config(tmp_path, cams, segment_seconds=10)
    summary_file = tmp_path / "summary.json"
    proc = start_service(config, "--stats-json", str(summary_file))
    assert proc.wait(300) == 0, service_log(config)
    summary = json.loads(summary_file.read_text())["cameras"]
    assert summary["live"]["storage"] is None
    s = summary["lot"]["storage"]
    assert s["frames_encoded"] + s["frames_skipped"] == 377 and s["frames_skipped"] > 0
    assert s["idr_reasons"]["start"] == 1 and s["idr_reasons"]["segment"] >= 2
    assert s["idrs"][-1]["reason"] in ("segment", "interval", "scene_cut")
    frames = 0
    for path in segments(tmp_path / "rec" / "lot"):
        decoded = decode(path)
        assert decoded[0][1], f"{path.name} does not start with a keyframe"
        frames += len(decoded)
    assert frames == s["frames_encoded"]
    live_frames, seconds = check_segments(tmp_path / "rec" / "live")
    assert live_frames == 377 and frames < live_frames
    for camera in ("lot", "live"):
        spans = [audio_beside_video(p) for p in segments(tmp_path / "rec" / camera)]
        assert spans[-1][1] - spans[0][0] == pytest.approx(30.16, abs=0.01), spans
        for (*_, end), (*_, start, _) in zip(spans, spans[1:]):  # no gap, nothing twice
            assert abs(start - end) < 0.022, spans  # one AAC frame
        assert abs(spans[-1][3] - spans[-1][1]) <= 0.08, spans


def test_cameras_beyond_the_cores_share_them_and_record_every_frame(tmp_path):
    """More cameras than cores: each camera's models get the live share of its frame period
    split so that all of them together keep to `live_share` of the cores (camera_share), the
    period read from the clip's timestamps; every camera records every frame of its clip."""
    needs_clip()
    from edge_semvc.labeler.schedule import camera_share

    n = max(3, len(os.sched_getaffinity(0)) + 1)
    cams = {f"cam{i}": {"input": f"file://{CLIP}", "realtime": False} for i in range(n)}
    config = write_config(tmp_path, cams)
    summary_file = tmp_path / "summary.json"
    proc = start_service(config, "--stats-json", str(summary_file))
    assert proc.wait(300) == 0, service_log(config)
    summary = json.loads(summary_file.read_text())["cameras"]
    share = camera_share(0.5, n)
    assert share < 0.5
    for i in range(n):
        s = summary[f"cam{i}"]
        assert s["label_budget"]["kind"] == "live"
        assert s["label_budget"]["share"] == pytest.approx(share, abs=1e-4)
        assert s["label_budget"]["ms_per_frame"] == pytest.approx(share * 1000 / 30, rel=0.01)
        assert s["dropped_frames"] == 0
        frames, _ = check_segments(tmp_path / "rec" / f"cam{i}")
        assert frames == s["frames"] > 0
