"""`serve` cameras side by side: a storage-profile camera beside a live one on the same clip,
more cameras than cores sharing them (the labeler's live share), and that share changed live. Same harness as
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
    stop,
    with_broker,
    write_config,
)
from test_telemetry import MOSQUITTO, Watcher, wait_until


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
    assert summary["live"]["storage"] is None and summary["live"]["follow_link"] is None
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


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
def test_live_share_changed_over_mqtt_reaches_the_running_labeler(tmp_path):
    """`labeler.live_share` over `config/set`: the camera's budget (its camera_share) follows
    from the frames after the change, as the stats report it; hostile values and a switch to
    no budget (0) are refused naming the key and change nothing."""
    from edge_semvc.labeler.schedule import camera_share

    broker, config = with_broker(tmp_path)
    proc = start_service(config)
    watcher = Watcher(broker.port, "edge_semvc/#")

    def on(topic):
        return [json.loads(m[1]) for m in list(watcher.messages) if m[0] == topic]

    def decisions():
        return [e for e in on("edge_semvc/front/events")
                if e["event"] in ("config_applied", "config_rejected")]

    def budget_after(frames):  # the budget of a stats report on frames after `frames`
        later = [s for s in on("edge_semvc/front/stats") if s["frames"] > frames]
        return later[-1]["label_budget"] if later else None

    try:
        wait_until(lambda: budget_after(0), timeout=120, what="the service to run")
        assert budget_after(0)["configured_share"] == pytest.approx(camera_share(0.5, 1))
        watcher.client.publish("edge_semvc/front/config/set",
                               b'{"labeler": {"live_share": 0.2}}', qos=1)
        wait_until(decisions, timeout=60, what="the answer to the change")
        assert decisions()[-1]["event"] == "config_applied", decisions()
        applied_at = on("edge_semvc/front/stats")[-1]["frames"]
        wait_until(lambda: budget_after(applied_at), timeout=60, what="stats after the change")
        budget = budget_after(applied_at)
        assert budget["configured_share"] == pytest.approx(camera_share(0.2, 1), abs=1e-4)
        assert 0 < budget["share"] <= budget["configured_share"]
        for n, payload in enumerate([b'{"labeler": {"live_share": NaN}}',
                                     b'{"labeler": {"live_share": .nan}}',
                                     b'{"labeler": {"live_share": -1}}',
                                     b'{"labeler": {"live_share": "x"}}',
                                     b'{"labeler": {"live_share": 1e309}}',
                                     b'{"labeler": {"live_share": 0}}'], start=2):
            watcher.client.publish("edge_semvc/front/config/set", payload, qos=1)
            wait_until(lambda n=n: len(decisions()) >= n, timeout=60, what=f"{payload!r}")
            last = decisions()[-1]
            assert last["event"] == "config_rejected", (payload, last)
            assert last["key"] == "labeler.live_share" and last["reason"], (payload, last)
        frames = on("edge_semvc/front/stats")[-1]["frames"]
        wait_until(lambda: budget_after(frames), timeout=60, what="stats after the refusals")
        assert budget_after(frames)["configured_share"] == pytest.approx(camera_share(0.2, 1),
                                                                         abs=1e-4)
        assert on("edge_semvc/front/config/state")[-1]["labeler"]["live_share"] == 0.2
    finally:
        code = stop(proc)
        watcher.close()
        broker.stop()
    assert code == 0, service_log(config)
