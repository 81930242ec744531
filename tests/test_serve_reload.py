"""SIGHUP reloads the configuration file of a running `serve` (systemd's ExecReload=): a real
service process, a real signal, a real broker; what changed is read from its MQTT messages and
counted in frames, never in seconds."""
from __future__ import annotations

import json
import signal
import threading
from contextlib import contextmanager

import pytest
import yaml
from test_serve import CLIP, needs_clip, service_log, start_service, stop
from test_telemetry import MOSQUITTO, Broker, Watcher, free_port, wait_until


@contextmanager
def reloading_service(path):
    """A Service on the file at `path` (written before), run in a thread until the block
    ends; its reloads read the file again."""
    from edge_semvc import preflight
    from edge_semvc.config import load_config
    from edge_semvc.serve.config import ServeConfig
    from edge_semvc.serve.service import Service

    def load():
        cfg = load_config(path, cls=ServeConfig)
        preflight.resolve(cfg)
        return cfg

    service = Service(load(), load=load)
    run = threading.Thread(target=service.run, daemon=True)
    run.start()
    try:
        yield service
    finally:
        service.stop_event.set()
        run.join(60)

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


def write_cameras(path, names):
    """A serve file at `path` with a looped camera of each name, recording beside it."""
    path.write_text(yaml.safe_dump({
        "cameras": {n: {"input": f"file://{CLIP}", "loop": True} for n in names},
        "record": {"dir": str(path.parent)}, "labeler": {"cpu_budget": 0.05}}))


def test_sighup_applies_live_keys_restarts_changed_cameras_alone_and_refuses_a_bad_file(
        tmp_path):
    needs_clip()
    (tmp_path / "rec").mkdir()
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", free_port()).start()
    camera = {"input": f"file://{CLIP}", "loop": True}
    cfg = {"cameras": {"a": dict(camera), "b": dict(camera)},
           "record": {"dir": str(tmp_path / "rec"), "segment_seconds": 2},
           "labeler": {"cpu_budget": 0.05},
           "mqtt": {"enabled": True, "host": "127.0.0.1", "port": broker.port,
                    "stats_interval": 1, "home_assistant": True}}
    path = tmp_path / "serve.yml"
    path.write_text(yaml.safe_dump(cfg))
    watcher = Watcher(broker.port, "#")

    def on(topic):
        return [json.loads(m[1]) for m in list(watcher.messages) if m[0] == topic]

    def events(cam, name):
        return [e for e in on(f"edge_semvc/{cam}/events") if e["event"] == name]

    def frames(cam):
        return [s["frames"] for s in on(f"edge_semvc/{cam}/stats")]

    def more_frames(cam, than):
        wait_until(lambda: frames(cam) and frames(cam)[-1] > than + 20, timeout=120,
                   what=f"camera {cam} to encode more frames")

    proc = start_service(path)
    try:
        more_frames("a", 0)
        more_frames("b", 0)
        # 1. a live key for every camera, camera b's entry changed, camera c added
        cfg["qp"] = {"importance_gain": 8.0}
        cfg["cameras"]["b"]["queue_frames"] = 2
        cfg["cameras"]["c"] = dict(camera)
        path.write_text(yaml.safe_dump(cfg))
        before_a = frames("a")[-1]
        proc.send_signal(signal.SIGHUP)
        applied = wait_until(lambda: events("a", "config_applied"), timeout=120,
                             what="the live key on camera a")
        assert applied[0]["change"] == {"qp": {"importance_gain": 8.0}}
        assert applied[0]["source"] == "reload"
        restarted = wait_until(lambda: events("b", "camera_restarted"), what="b restarted")
        assert restarted[0]["reason"] == "cameras.b changed"
        wait_until(lambda: events("c", "camera_added"), what="c added")
        more_frames("c", 0)
        more_frames("a", before_a)
        assert on("edge_semvc/a/config/state")[-1]["qp"]["importance_gain"] == 8.0
        assert on("edge_semvc/c/config/state")[-1]["qp"]["importance_gain"] == 8.0
        # the restart did not store the reload's change as a remote one (the file holds it)
        assert not (tmp_path / "rec" / ".state" / "a.yml").exists()

        # 2. a bad file: refused whole, the running configuration kept
        path.write_text(yaml.safe_dump({**cfg, "qp": {"importance_gain": 99}}))
        proc.send_signal(signal.SIGHUP)
        rejected = wait_until(lambda: events("a", "reload_rejected"), what="the refusal")
        assert "qp.importance_gain" in rejected[0]["reason"] and "99" in rejected[0]["reason"]
        more_frames("a", frames("a")[-1])
        more_frames("c", frames("c")[-1])

        # 3. camera c removed
        del cfg["cameras"]["c"]
        path.write_text(yaml.safe_dump(cfg))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: events("c", "camera_removed"), what="c removed")
        # its entities leave Home Assistant: the retained discovery configs are cleared
        gone = "homeassistant/sensor/edge_semvc/c_fps/config"
        wait_until(lambda: [m for m in list(watcher.messages) if m[0] == gone and not m[1]],
                   what="c's discovery config cleared")
        more_frames("a", frames("a")[-1])
        assert proc.poll() is None, service_log(path)
        # camera a ran through all three reloads without a gap: one run, frames always rising
        counts = frames("a")
        assert counts == sorted(counts) and len(counts) > 3
        assert all(s["reconnects"] == 0 for s in on("edge_semvc/a/stats"))
        # camera b, restarted in place, counts on from its frames before the restart
        assert frames("b") == sorted(frames("b")), frames("b")
        assert not events("a", "camera_restarted") and not events("a", "config_rejected")
        assert len(events("a", "config_applied")) == 1
    finally:
        code = stop(proc)
        watcher.client.loop_stop()
        broker.stop()
    assert code == 0, service_log(path)
    assert "reload refused, the running configuration is kept" in service_log(path)


@pytest.mark.parametrize("before, after, reason", [
    (0.5, 0.25, None),  # between positive shares: live, the camera keeps running
    (0.5, 0.0, "labeler.live_share changed (it needs a restart)"),  # no budget from now on
    (0.0, 0.5, "labeler.live_share changed (it needs a restart)"),  # a budget where none was
])
def test_a_reloaded_live_share_is_live_between_shares_and_restarts_to_or_from_none(
        tmp_path, before, after, reason):
    from edge_semvc.serve.config import RecordConfig, ServeConfig
    from edge_semvc.serve.remote import live_difference
    from edge_semvc.serve.service import _restart_reason

    def file(share):
        cfg = ServeConfig(cameras={"a": "demo://astronaut"}, record=RecordConfig(str(tmp_path)))
        cfg.labeler.live_share = share
        return cfg.validate()

    old, new = file(before), file(after)
    good, base = old.pipeline_config("a"), new.pipeline_config("a")
    assert _restart_reason("a", old, new, good, base) == reason
    if reason is None:  # what reaches the running camera as a live change
        assert live_difference(good, base) == {"labeler": {"live_share": after}}


@pytest.mark.parametrize("when", ["parsing the arguments", "reading the configuration"])
def test_a_sighup_during_the_start_up_reloads_once_it_runs(tmp_path, caplog, monkeypatch,
                                                           when):
    """Sent while the command line or the configuration is read (before the service could
    take it): not the end of the service, a reload once it runs."""
    import os

    import edge_semvc.cli as cli
    import edge_semvc.preflight as preflight
    from edge_semvc.cli import main

    needs_clip()
    (tmp_path / "rec").mkdir()
    path = tmp_path / "serve.yml"
    path.write_text(yaml.safe_dump({"cameras": {"a": {"input": f"file://{CLIP}"}},
                                    "record": {"dir": str(tmp_path / "rec")}}))
    resolve = preflight.resolve

    build_parser = cli.build_parser

    def hang_up(then, *args):  # the first time only
        if not caplog.text:
            os.kill(os.getpid(), signal.SIGHUP)
        return then(*args)

    if when == "parsing the arguments":
        monkeypatch.setattr(cli, "build_parser", lambda: hang_up(build_parser))
    else:
        monkeypatch.setattr(preflight, "resolve", lambda cfg: hang_up(resolve, cfg))
    caplog.set_level("INFO", logger="edge_semvc")
    assert main(["serve", "--config", str(path), "--seconds", "2"]) == 0
    assert "configuration reloaded" in caplog.text


def test_the_command_lines_module_loads_light_so_sighup_is_taken_early():
    """`serve` takes SIGHUP from the moment edge_semvc.cli is loaded (before that SIGHUP's
    default ends the process): that module must not pull numpy and the pipeline in."""
    import subprocess
    import sys

    probe = "import sys, edge_semvc.cli; print(sorted({'numpy', 'av', 'edge_semvc.sinks'} " \
        "& set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_a_reload_does_not_refuse_the_ports_its_own_outputs_hold(tmp_path):
    """An RTSP server and an SRT listener that run hold their ports: a reload of the same file
    must not call them taken (every SIGHUP was refused so); a new output on a port in use is."""
    import socket

    from edge_semvc.config import load_config
    from edge_semvc.errors import SinkError
    from edge_semvc.serve.config import ServeConfig
    from edge_semvc.serve.service import _check_service_config
    from edge_semvc.sinks.gstreamer import check_gstreamer

    needs_clip()
    try:
        check_gstreamer("rtsp", "rtsp://@:1/x")
    except SinkError as e:
        pytest.skip(str(e))
    tcp, udp = socket.socket(), socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp.bind(("0.0.0.0", 0))
    tcp.listen()
    udp.bind(("0.0.0.0", 0))
    outputs = [f"rtsp://@:{tcp.getsockname()[1]}/a", f"srt://@:{udp.getsockname()[1]}"
               "?mode=listener"]
    def loaded(cameras):
        path = tmp_path / "serve.yml"
        path.write_text(yaml.safe_dump({"cameras": cameras, "record": {"dir": str(tmp_path)},
                                        "labeler": {"cpu_budget": 0.05}}))
        return load_config(path, cls=ServeConfig)

    a = {"input": f"file://{CLIP}", "loop": True, "outputs": outputs}
    running = loaded({"a": a})  # as the service runs it: its outputs open
    try:
        _check_service_config(running, running=running)  # the same file again
        with pytest.raises(SinkError, match="Address already in use"):
            _check_service_config(running)  # a start: they are taken
        added = loaded({"a": a, "b": {"input": f"file://{CLIP}", "outputs": [
            outputs[0].replace("/a", "/b")]}})
        with pytest.raises(SinkError, match="Address already in use"):
            _check_service_config(added, running=running)
        copied = loaded({"a": a, "b": {"input": f"file://{CLIP}", "outputs": [outputs[1]]}})
        with pytest.raises(SinkError, match="Address already in use"):  # a's SRT listener
            _check_service_config(copied, running=running)
        into_one = loaded({n: {"input": f"file://{CLIP}", "outputs": ["udp://127.0.0.1:9"]}
                           for n in ("a", "b")})
        with pytest.raises(SinkError, match="both use 127.0.0.1:9"):  # one receiver, two streams
            _check_service_config(into_one, running=running)
    finally:
        tcp.close()
        udp.close()


def test_a_camera_a_reload_removes_is_let_go(tmp_path):
    """Nothing keeps a removed camera (with its last frame, models, encoder): a service reloaded
    again and again must not grow by a camera each time. Its figures stay for the summary."""
    import gc
    import weakref

    needs_clip()
    path = tmp_path / "serve.yml"

    write_cameras(path, ["a", "c"])
    with reloading_service(path) as service:
        wait_until(lambda: service.cameras["c"].frames_total > 10, what="frames from c")
        removed = weakref.ref(service.cameras["c"])
        write_cameras(path, ["a"])
        service.reload_event.set()
        wait_until(lambda: "c" not in service.cameras, what="c removed")
    gc.collect()
    assert removed() is None
    assert service.summary["cameras"]["c"]["frames"] > 10


def test_a_camera_a_reload_removes_and_a_later_one_adds_back_counts_from_0(tmp_path):
    """A camera removed is gone: added back by a later reload (same name) it is a new camera,
    its counts from 0 in its stats, the web page, /metrics and the summary (they went on from
    its counts before the removal)."""
    from edge_semvc.serve.stats import Carried

    needs_clip()
    path = tmp_path / "serve.yml"

    write_cameras(path, ["a", "c"])
    with reloading_service(path) as service:
        wait_until(lambda: service.cameras["c"].frames_total > 10, what="frames from c")
        write_cameras(path, ["a"])
        service.reload_event.set()
        wait_until(lambda: "c" not in service.cameras, what="c removed")
        write_cameras(path, ["a", "c"])
        service.reload_event.set()
        wait_until(lambda: "c" in service.cameras, what="c added back")
        assert service.windows["c"].carried == Carried()  # its MQTT stats
        assert service.whole_run["c"].carried == Carried()  # the web page, /metrics, summary
    back = service.cameras["c"]
    assert service.summary["cameras"]["c"]["frames"] == back.frames_total
    assert service.summary["cameras"]["c"]["reconnects"] == back.runs - 1


def test_a_scene_cut_after_a_reload_restart_is_numbered_as_the_storage_idr_it_made(tmp_path):
    """A camera a reload restarts counts its frames on (stats, storage IDRs): its scene cuts'
    `frame` too (it counted from 0 again, so an event named another frame than the IDR)."""


    clip = CLIP.parent / "bikes_street_scene_cuts_640x272.mp4"
    if not clip.exists():
        pytest.skip(f"shared clip missing: {clip}")
    path = tmp_path / "serve.yml"

    def write(queue_frames):
        path.write_text(yaml.safe_dump({
            "cameras": {"b": {"input": f"file://{clip}", "loop": True, "realtime": False,
                              "queue_frames": queue_frames, "record": False,
                              "outputs": [f"udp://127.0.0.1:{free_port()}"]}},
            "encoder": {"profile": "storage"}, "labeler": {"cpu_budget": 0.05},
            "state_dir": str(tmp_path / "state")}))

    write(1)
    cuts = []
    with reloading_service(path) as service:
        service._event = lambda camera, event, fields: cuts.append(fields["frame"]) \
            if event == "scene_cut" else None
        first = service.cameras["b"]
        wait_until(lambda: first.frames_total > 20, what="frames before the reload")
        write(2)  # queue_frames: the camera restarts
        service.reload_event.set()
        wait_until(lambda: service.cameras.get("b") not in (None, first), what="b restarted")
        before = service.whole_run["b"].carried.frames
        assert before >= 20
        wait_until(lambda: any(c >= before for c in cuts), timeout=120,
                   what="a scene cut after the restart")
        idrs = service.whole_run["b"].totals().storage["idrs"]
    cut = next(c for c in cuts if c >= before)
    assert {"frame": cut, "reason": "scene_cut"} in [
        {"frame": i["frame"], "reason": i["reason"]} for i in idrs], (cut, idrs)


def test_a_reloaded_key_that_a_stored_remote_change_overrides_is_said(tmp_path, caplog):
    """A remote change kept in .state/<camera>.yml applies on top of the file (said at the
    start); a reload that changes the same key in the file changes nothing for that camera,
    and the log says so, naming the key and the file that overrides it."""
    import logging


    needs_clip()
    path = tmp_path / "serve.yml"
    (tmp_path / ".state").mkdir()
    (tmp_path / ".state" / "a.yml").write_text("qp: {importance_gain: 9.0}\n")

    def write(gain, offset_max):
        path.write_text(yaml.safe_dump({
            "cameras": {"a": {"input": f"file://{CLIP}", "loop": True}},
            "record": {"dir": str(tmp_path)}, "labeler": {"cpu_budget": 0.05},
            "qp": {"importance_gain": gain, "offset_max": offset_max}}))

    caplog.set_level(logging.INFO, logger="edge_semvc")
    write(8.0, 10)
    with reloading_service(path) as service:
        wait_until(lambda: service.cameras["a"].frames_total > 10, what="frames from a")
        write(7.0, 11)  # the second is not overridden: not named
        service.reload_event.set()
        wait_until(lambda: "configuration reloaded" in caplog.text, what="the reload")
    assert service.cameras["a"].cfg.qp.importance_gain == 9.0
    assert "a: the remote changes kept in " in caplog.text and "(qp.importance_gain)" in caplog.text
    said = [r.getMessage() for r in caplog.records if "does not apply" in r.getMessage()]
    assert len(said) == 1 and "qp.importance_gain" in said[0], said
    assert "offset_max" not in said[0] and str(tmp_path / ".state" / "a.yml") in said[0]


def test_a_camera_a_reload_restarts_keeps_its_stream_outputs_viewers(tmp_path):
    """A reload that restarts a camera (here: its queue_frames) started its stream outputs
    anew: RTSP and SRT viewers were dropped, a UDP or RTP receiver that stayed got a new
    MPEG-TS muxer (continuity counters from 0, the tables' version 0 again) or a new RTP
    session. The camera started in its place takes them over as its own run after a hiccup:
    here a UDP receiver's MPEG-TS goes on, every TS packet's continuity counter following on."""
    from test_outputs import Datagrams

    needs_clip()
    with Datagrams() as rx:
        camera = {"input": f"file://{CLIP}", "loop": True,
                  "outputs": [f"udp://127.0.0.1:{rx.port}"]}
        cfg = {"cameras": {"a": camera}, "record": {"dir": str(tmp_path)},
               "labeler": {"cpu_budget": 0.05}}
        path = tmp_path / "serve.yml"
        path.write_text(yaml.safe_dump(cfg))
        proc = start_service(path)
        try:
            wait_until(lambda: len(rx.got) > 100, timeout=120, what="the stream")
            camera["queue_frames"] = 2  # restarts the camera
            path.write_text(yaml.safe_dump(cfg))
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: "configuration reloaded" in service_log(path), what="the reload")
            after = len(rx.got)
            wait_until(lambda: len(rx.got) > after + 100, timeout=120, what="the stream after")
        finally:
            code = stop(proc)
    assert code == 0, service_log(path)
    assert "camera_restarted" in service_log(path)
    ts = [d[i:i + 188] for d in rx.got for i in range(0, len(d), 188)]
    counters: dict[int, int] = {}
    for packet in ts:
        pid, cc = ((packet[1] & 0x1F) << 8) | packet[2], packet[3] & 0x0F
        if packet[3] & 0x10:  # carries a payload: the counter moves
            if pid in counters:
                assert cc == (counters[pid] + 1) % 16, (pid, counters[pid], cc)
            counters[pid] = cc
    assert {0, 0x100} <= set(counters)
