"""`edge-semvc serve` end to end: real clips looped as cameras, a real RTSP server, the real
encoder, segments on disk, a real mosquitto broker, and signals (SIGTERM, SIGKILL) from outside.

Each test runs the service as a child process, as systemd would, and reads what it leaves:
segments that must each decode alone, and MQTT messages. Waits poll with generous timeouts;
nothing asserts how long something took.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import av
import pytest
import yaml
from conftest import VIDEO
from test_telemetry import MOSQUITTO, Broker, Watcher, free_port, wait_until

ROOT = Path(__file__).resolve().parents[1]
CLIP = VIDEO / "carphone_qcif_pristine.mp4"  # 4 s at 30 fps, small: cheap to loop
SYSTEM_PYTHON = "/usr/bin/python3"


def needs_clip():
    if not CLIP.exists():
        pytest.skip(f"{CLIP} is missing (../shared beside the project holds the clips)")


def write_config(tmp_path, cameras, mqtt=None, **record):
    (tmp_path / "rec").mkdir(exist_ok=True)  # record.dir must exist: the service never makes it
    cfg = {"cameras": cameras,
           "record": {"dir": str(tmp_path / "rec"), "segment_seconds": 2, **record},
           "labeler": {"cpu_budget": 0.05}}
    if mqtt:
        cfg["mqtt"] = mqtt
    path = tmp_path / "serve.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def start_service(config: Path, *args: str) -> subprocess.Popen:
    log = open(config.with_suffix(".log"), "wb")
    return subprocess.Popen([sys.executable, "-m", "edge_semvc", "serve", "--config",
                             str(config), *args], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT)


def service_log(config: Path) -> str:
    return config.with_suffix(".log").read_text(errors="replace")


def segments(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.ts"))


def decode(path: Path) -> list[tuple[int, bool]]:
    """(pts, keyframe) of every frame; raises if the file does not decode whole."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(f.pts, f.key_frame) for f in c.decode(s)]


def check_segments(folder: Path) -> tuple[int, float]:
    """Every segment decodes alone from an IDR, timestamps continue from one to the next.
    Returns (frames, seconds) over all segments."""
    files = segments(folder)
    assert files, f"no segments in {folder}"
    frames, seconds, last_end = 0, 0.0, None
    for path in files:
        decoded = decode(path)
        assert decoded and decoded[0][1], f"{path.name} does not start with a keyframe"
        with av.open(str(path)) as c:
            tb = c.streams.video[0].time_base
        pts = sorted(p for p, _ in decoded)
        step = min(b - a for a, b in zip(pts, pts[1:])) if len(pts) > 1 else 0
        frames += len(pts)
        seconds += float((pts[-1] - pts[0] + step) * tb)
        if last_end is not None:  # the same run: no overlap, no gap between segments but the
            # few frames a loaded box's camera may drop (one-frame buffer) at the boundary
            assert -step <= pts[0] - last_end <= 3 * step, (path.name, pts[0], last_end)
        last_end = pts[-1] + step
    return frames, seconds


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(120)
    finally:  # never leave a service running behind a failed test
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_looped_clip_is_recorded_in_segments_that_decode_alone(tmp_path):
    needs_clip()
    config = write_config(tmp_path, {"front": {"input": f"file://{CLIP}", "loop": True}})
    summary = tmp_path / "summary.json"
    proc = start_service(config, "--stats-json", str(summary))
    rec = tmp_path / "rec" / "front"
    try:  # wait for frames, not for a time: four segments of 2 s
        wait_until(lambda: len(segments(rec)) >= 4 or proc.poll() is not None, timeout=180,
                   what="four segments")
    finally:
        code = stop(proc)
    assert code == 0, service_log(config)
    frames, seconds = check_segments(rec)
    # the summary counts the recording after the drain: the last segment's frames too
    (recording,) = [o for o in json.loads(summary.read_text())["cameras"]["front"]["outputs"]
                    if "segments" in o]
    assert (recording["frames"], recording["segments"]) == (frames, len(segments(rec)))
    assert not list(rec.glob(".*.part")), "SIGTERM must close the open segment"
    assert frames >= 4 * 2 * 30 * 0.9 and seconds == pytest.approx(frames / 30, rel=0.05)
    assert "front: source_lost" not in service_log(config)


def test_sigkill_loses_at_most_the_open_segment(tmp_path):
    needs_clip()
    config = write_config(tmp_path, {"front": {"input": f"file://{CLIP}", "loop": True}})
    proc = start_service(config)
    rec = tmp_path / "rec" / "front"
    try:
        wait_until(lambda: len(segments(rec)) >= 2 or proc.poll() is not None, timeout=180,
                   what="two segments")
    finally:
        proc.kill()
        proc.wait(60)
    check_segments(rec)  # every completed one decodes whole
    assert len(list(rec.glob(".*.part"))) <= 1


def rtsp_server() -> tuple[subprocess.Popen, int]:
    """A real RTSP camera (tests/rtsp_server.py) on a free port, serving; skips without it."""
    needs_clip()
    check = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version("
                            "'GstRtspServer', '1.0')"], capture_output=True)
    if check.returncode:
        pytest.skip("GStreamer's RTSP server (gir1.2-gst-rtsp-server-1.0) is not installed")
    port = free_port()
    server = subprocess.Popen([SYSTEM_PYTHON, str(ROOT / "tests" / "rtsp_server.py"),
                               str(port)], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    return server, port


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no system Python for the "
                                                               "RTSP server")
def test_a_lost_rtsp_camera_does_not_stop_the_other(tmp_path):
    server, port = rtsp_server()
    config = write_config(tmp_path, {
        "front": {"input": f"file://{CLIP}", "loop": True},
        "gate": {"input": f"rtsp://127.0.0.1:{port}/cam"}})
    proc = start_service(config)
    front, gate = tmp_path / "rec" / "front", tmp_path / "rec" / "gate"
    try:
        wait_until(lambda: len(segments(gate)) >= 2 or proc.poll() is not None, timeout=180,
                   what="two segments from the RTSP camera")
        server.kill()  # the camera disappears
        server.wait(30)
        before = len(segments(front))
        wait_until(lambda: "gate: source_lost" in service_log(config), timeout=120,
                   what="the lost camera to be reported")
        wait_until(lambda: len(segments(front)) >= before + 2, timeout=180,
                   what="the file camera to record on")
    finally:
        server.kill()
        code = stop(proc)
    assert code == 0, service_log(config)
    check_segments(front)
    for path in segments(gate):  # what the RTSP camera recorded before it went away
        assert decode(path)[0][1]


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no system Python for the "
                                                               "RTSP server")
def test_encode_from_a_camera_that_goes_away_is_incomplete(tmp_path):
    """`encode rtsp://...`: a camera's stream does not end on its own, so its end is exit 3
    (what came before is kept, playable), as `serve` calls it `source_lost`."""
    server, port = rtsp_server()
    out, stats = tmp_path / "cam.mkv", tmp_path / "s.json"
    proc = subprocess.Popen([sys.executable, "-m", "edge_semvc", "encode",
                             f"rtsp://127.0.0.1:{port}/cam", "-", str(out), "--no-map",
                             "--stats-json", str(stats), "--progress", "off"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert len(proc.stdout.read(20 * 188)) == 20 * 188  # the stream flows (MPEG-TS)
    finally:
        server.kill()  # the camera disappears
        server.wait(30)
    proc.stdout.read()
    assert proc.wait(120) == 3
    s = json.loads(stats.read_text())
    assert s["complete"] is False and s["frames"] > 0
    assert "the stream ended after" in s["error"] or "the input froze" in s["error"], s["error"]
    assert len(decode(out)) == s["frames"]


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no system Python for the "
                                                               "RTSP server")
def test_a_network_read_that_times_out_is_the_input_freezing():
    """FFmpeg's own read timeout (5 s without data) and the service's stall (5 s without a
    frame) see the same loss: whichever comes first, the input froze, in the same words."""
    from edge_semvc.errors import DecodeError
    from edge_semvc.sources import open_source

    server, port = rtsp_server()
    source = open_source(f"rtsp://127.0.0.1:{port}/cam")
    try:
        frames = source.frames()
        for _ in range(5):
            next(frames)
        server.send_signal(signal.SIGSTOP)  # connected, silent
        with pytest.raises(DecodeError, match=r"no frame for 5 s \(the input froze\)"):
            for _ in frames:
                pass
        # a camera is decoded without frame threads, which would hold frames back (a file
        # keeps them: test_input_formats), and nothing is left held when it froze
        assert source.stream.thread_type.name == "SLICE" and not source._held_pictures()
    finally:
        source.close()
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait(30)


@pytest.mark.skipif(not os.path.exists(SYSTEM_PYTHON), reason="no system Python for the "
                                                               "RTSP server")
def test_a_frozen_rtsp_camera_is_lost_not_running(tmp_path):
    """The RTSP server is stopped (SIGSTOP), not killed: the connection stays open and no frame
    comes. The camera is lost (the input froze: 5 s on its clock, not asserted here: see
    test_serve_faults.py), its state is `lost`, not `running` at 0 fps, and nothing else is
    blamed."""
    server, port = rtsp_server()
    config = write_config(tmp_path, {"gate": {"input": f"rtsp://127.0.0.1:{port}/cam"}})
    summary = tmp_path / "summary.json"
    proc = start_service(config, "--stats-json", str(summary))
    gate = tmp_path / "rec" / "gate"
    try:
        wait_until(lambda: len(segments(gate)) >= 1 or proc.poll() is not None, timeout=180,
                   what="a segment from the RTSP camera")
        server.send_signal(signal.SIGSTOP)  # the camera freezes
        wait_until(lambda: "gate: source_lost" in service_log(config), timeout=120,
                   what="the frozen camera to be reported")
    finally:
        code = stop(proc)
        server.send_signal(signal.SIGCONT)
        server.kill()
        server.wait(30)
    log = service_log(config)
    assert code == 0, log
    lost = log[log.index("gate: source_lost"):].splitlines()[0]
    assert "no frame for 5 s (the input froze)" in lost, lost
    assert json.loads(summary.read_text())["cameras"]["gate"]["state"] == "lost"
    assert "sink_error" not in log and "gate: error" not in log and "source_back" not in log


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
def test_stats_resume_after_the_broker_restarts(tmp_path):
    broker, config = with_broker(tmp_path)
    proc = start_service(config)
    try:
        watcher = Watcher(broker.port, "edge_semvc/#")
        stats = lambda: [json.loads(m[1]) for m in watcher.messages  # noqa: E731
                         if m[0] == "edge_semvc/front/stats"]
        wait_until(lambda: len(stats()) >= 2, timeout=120, what="stats")
        assert any(m[0] == "edge_semvc/available" and m[1] == b"online"
                   for m in watcher.messages)
        seen = len(stats())
        broker.stop(signal.SIGKILL)
        broker.start()
        watcher.client.reconnect()
        wait_until(lambda: len(stats()) >= seen + 2, timeout=120, what="stats after restart")
        frames = [s["frames"] for s in stats()]
        assert frames == sorted(frames) and frames[-1] > frames[seen - 1], frames
        last = stats()[-1]
        assert last["fps"] > 0 and "encode" in last["latency_ms"]
    finally:
        code = stop(proc)
        broker.stop()
    assert code == 0, service_log(config)


def with_broker(tmp_path: Path) -> tuple[Broker, Path]:
    """A running mosquitto and a one-camera configuration reporting to it every second."""
    needs_clip()
    folder = tmp_path / "broker"
    folder.mkdir()
    broker = Broker(folder, free_port()).start()
    config = write_config(tmp_path, {"front": {"input": f"file://{CLIP}", "loop": True}},
                          mqtt={"enabled": True, "port": broker.port, "host": "127.0.0.1",
                                "stats_interval": 1})
    return broker, config


def malformed_payloads() -> list[bytes]:
    """100 remote changes the service must refuse, each for a reason a user could make."""
    out = [b"", b"{", b"not: [closed", b"\xff\xfe", b"[]", b"42", b"null", b'"qp"', b"{}",
           b'{"qp": {"q_gain": 1, "q_gain": 2}}', b"x" * 20000,
           json.dumps({"qp": {"importance": {"person": 1}}, "pad": "y" * 17000}).encode()]
    not_live = ["labeler.models", "labeler.runtime", "labeler.cache_dir", "encoder.params",
                "encoder.backend", "encoder.preset", "record.dir", "state_dir", "mqtt.host",
                "cameras.front.input", "qp.device", "labeler.threads", "encoder.bitrate"]
    values = {"labeler.models": [{"path": "/tmp/evil.onnx"}], "record.dir": "/etc",
              "state_dir": "../../etc", "cameras.front.input": "file:///etc/passwd",
              "encoder.params": {"plugin": "/tmp/x.so"}, "labeler.cache_dir": "/"}
    for key in not_live:
        out.append(json.dumps(_nested(key, values.get(key, "x"))).encode())
    bad_values = {
        "qp.q_gain": [-1, "abc", None, [1], {"a": 1}, True, 1e400],
        "qp.offset_min": [1, -52, "low"], "qp.offset_max": [-1, 52, "high"],
        "qp.target_mean": [100, -100, "mid"], "qp.v_threshold": [-0.1, 1.5, "x"],
        "qp.importance": ["abc", [1, 2], 5], "qp.importance.person": [2, -1, "hi", None],
        "qp.importance.dog": [0.5], "qp.alpha_slow": [-2, "a"], "qp.beta_fast": [-0.5, {}],
        "qp.importance_gain": [-3, "g"], "qp.importance_budget": [-1, []],
        "analysis.complexity_full_var": [0, -5, "v"], "analysis.change_full_mad": [0, -1, "m"],
        "labeler.priority": [["dog"], ["face", "face"], ["background"], 7, [""]],
        "labeler.max_age_s": [0, -1, "old", None],
        "qp.nonsense": [1], "analysis.nonsense": [1], "labeler.nonsense": [1], "nonsense": [1],
    }
    for key, vals in bad_values.items():
        out += [json.dumps(_nested(key, v)).encode() if v != 1e400 else
                b'{"qp": {"q_gain": 1e400}}' for v in vals]
    out += [b"qp:\n  q_gain: [1, 2\n", b"qp: {q_gain: !!python/object:os.system x}",
            b"--- !!binary AAAA", b'{"qp": "q_gain=1"}', b'{"qp": null}',
            b'{"qp": {"offset_min": -2, "offset_max": 1, "target_mean": 5}}',
            b"qp:\n\tq_gain: 1\n", b'{"1": 2}', b'{"qp": {"importance": {"": 0.5}}}',
            b'{"labeler": {"priority": "face,dog"}}', b'{"qp": {"q_gain": "1e"}}',
            b'{"analysis": {"change_full_mad": "NaN"}}', b'{"qp": {"q_gain": ".inf"}}',
            b'{"qp": {"target_mean": 13}}', b'{"labeler": {"max_age_s": "2s"}}',
            b'{"qp": {"importance": {"background": 1.5}}}', b'{"qp": {"q_gain": [1, 2]}}',
            b'{"analysis": null}', b'{"labeler": {"priority": {"face": 1}}}',
            b'{"qp": {"offset_max": 60}}', b'{"qp": {"offset_min": 0.5}}']
    return out[:100]


def _nested(dotted: str, value):
    doc: dict = {}
    node = doc
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return doc


def test_malformed_remote_changes_are_refused_and_change_nothing():
    """The checks behind `config/set`, in process: 100 payloads, each refused naming why."""
    from edge_semvc.config import Config
    from edge_semvc.serve.remote import RemoteChangeRejected, apply_change, parse_change

    payloads = malformed_payloads()
    assert len(payloads) == 100
    base = Config()
    before = base.to_dict()
    for payload in payloads:
        with pytest.raises(RemoteChangeRejected):
            apply_change(base, parse_change(payload))
    assert base.to_dict() == before
    good = apply_change(base, parse_change(b'{"qp": {"importance": {"person": 1.0}}}'))
    assert good.qp.importance["person"] == 1.0 and base.qp.importance["person"] == 0.8


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")
def test_remote_configuration_over_mqtt_survives_a_restart(tmp_path):
    """A change kept over a restart; a retained command waiting at the broker at the start is
    refused as one (not as a camera the service does not know yet); a stored change the
    edited file refuses is dropped alone, the others apply."""
    broker, config = with_broker(tmp_path)
    watcher = Watcher(broker.port, "edge_semvc/#")
    events = lambda name: [e for e in (json.loads(m[1]) for m in watcher.messages  # noqa: E731
                                       if m[0] == "edge_semvc/front/events")
                           if e["event"] == name]
    watcher.client.publish("edge_semvc/front/config/set", b'{"qp": {"q_gain": 5}}', qos=1,
                           retain=True).wait_for_publish(10)
    proc = start_service(config)
    try:
        wait_until(lambda: events("config_rejected"), timeout=120, what="the retained command")
        assert "a retained message (a command" in json.dumps(events("config_rejected"))
        watcher.client.publish("edge_semvc/front/config/set", b"", qos=1, retain=True)
        # (refusals: tests/test_hostile_config.py)
        watcher.client.publish("edge_semvc/front/config/set",
                               b'{"qp": {"importance": {"person": 1.0}, "target_mean": 3}}',
                               qos=1)
        wait_until(lambda: events("config_applied"), timeout=60, what="the valid change")
        assert _state(watcher)["qp"]["importance"]["person"] == 1.0
    finally:
        assert stop(proc) == 0, service_log(config)
    watcher.messages.clear()
    edited = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**edited, "qp": {"offset_max": 2}}))  # refuses mean 3
    proc = start_service(config)  # a restart keeps the remote change
    try:
        wait_until(lambda: _state(watcher), timeout=120, what="config/state")
        assert _state(watcher)["qp"]["importance"]["person"] == 1.0
        assert _state(watcher)["qp"]["target_mean"] == 1.5
        # events are queued, config/state is retained and sent on connection: either comes first
        wait_until(lambda: events("config_rejected"), timeout=30, what="the stored refusal")
        (refused,) = events("config_rejected")
        assert refused["key"] == "qp.target_mean" and "the other stored" in refused["reason"]
    finally:
        assert stop(proc) == 0, service_log(config)
        broker.stop()


def _state(watcher) -> dict | None:
    states = [json.loads(m[1]) for m in watcher.messages
              if m[0] == "edge_semvc/front/config/state"]
    return states[-1] if states else None


@pytest.mark.slow
def test_a_minute_of_recording_keeps_within_its_retention(tmp_path):
    """Slow (`make test-all`): a minute of 1 s segments under a byte cap of about five of
    them: the oldest are deleted as new ones close, and what is kept decodes."""
    needs_clip()
    config = write_config(tmp_path, {"front": {"input": f"file://{CLIP}", "loop": True}},
                          segment_seconds=1, max_bytes=5 * 20_000)
    proc = start_service(config, "--seconds", "60")
    assert proc.wait(300) == 0, service_log(config)
    rec = tmp_path / "rec" / "front"
    kept = segments(rec)
    assert 2 <= len(kept) <= 8 and sum(p.stat().st_size for p in kept) <= 5 * 20_000 + 40_000
    assert service_log(config).count("segment_deleted") >= 40
    for path in kept:
        assert decode(path)[0][1]


def test_a_file_camera_ends_and_reports_its_scene_cuts(tmp_path):
    """A file without `loop`, read as fast as it decodes: the camera ends after its last frame
    (`source_ended`), the service exits 0 once every camera ended, and the cuts of the bikes
    clip (frames 30, 76, 137, 187, 242) come out as `scene_cut` events."""
    clip = VIDEO / "bikes_street_scene_cuts_640x272.mp4"
    if not clip.exists():
        pytest.skip(f"{clip} is missing (../shared beside the project holds the clips)")
    config = write_config(tmp_path, {"bikes": {"input": f"file://{clip}", "realtime": False}})
    proc = start_service(config)
    assert proc.wait(300) == 0, service_log(config)
    log = service_log(config)
    assert "bikes: source_ended" in log
    assert 3 <= log.count("bikes: scene_cut") <= 8, log
    cuts = [int(n) for n in re.findall(r"bikes: scene_cut .*?'frame': (\d+)", log)]
    assert set(cuts) <= {30, 76, 137, 187, 242}, cuts  # each the first frame of its shot
    frames, _ = check_segments(tmp_path / "rec" / "bikes")
    assert frames == 250
