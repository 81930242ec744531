"""`serve` with stream outputs beside the recording, and the bitrate following a link: a real
mosquitto broker carries `{"encoder": {"bitrate": ...}}`, the recorded segments' bytes per frame
show the new rate, an RTP receiver decodes through the change. Counts bytes and frames."""
from __future__ import annotations

import json

import av
import pytest
from test_outputs import Receiver, udp_bound
from test_serve import CLIP, needs_clip, segments, service_log, start_service, stop, write_config
from test_telemetry import MOSQUITTO, Broker, Watcher, free_port, wait_until

BEFORE, AFTER = 200_000, 50_000  # bits/s
FPS = 30  # the carphone clip's


def kbps(path) -> float:
    """The segment's video bit rate from its packets (bytes per frame x frame rate)."""
    with av.open(str(path)) as c:
        sizes = [p.size for p in c.demux(video=0) if p.size]
    return sum(sizes) * 8 * FPS / len(sizes) / 1e3


def test_bitrate_changed_over_mqtt_follows_in_recording_and_stream(tmp_path):
    needs_clip()
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker", free_port()).start()
    port, sdp = free_port(), tmp_path / "front.sdp"
    config = write_config(
        tmp_path, {"front": {"input": f"file://{CLIP}", "loop": True,
                             "outputs": [f"rtp://127.0.0.1:{port}?sdp={sdp}"]}},
        mqtt={"enabled": True, "port": broker.port, "host": "127.0.0.1",
              "stats_interval": 1})
    doc = config.read_text()
    config.write_text(doc + "encoder: {rc: cbr, bitrate: %d, tune: zerolatency}\n" % BEFORE)
    watcher = Watcher(broker.port, "edge_semvc/#")
    proc = start_service(config)
    rec = tmp_path / "rec" / "front"
    rx = None
    try:
        wait_until(lambda: sdp.exists() or proc.poll() is not None, timeout=120, what="the SDP")
        rx = Receiver(str(sdp), "sdp", {"protocol_whitelist": "file,udp,rtp"}, idle_s=8)
        rx.start()
        wait_until(lambda: udp_bound(port), what="the RTP receiver's socket")
        wait_until(lambda: len(segments(rec)) >= 2 or proc.poll() is not None, timeout=180,
                   what="two segments at the first rate")
        changed_after = len(segments(rec))
        watcher.client.publish("edge_semvc/front/config/set",
                               json.dumps({"encoder": {"bitrate": AFTER}}), qos=1)
        watcher.wait_for("edge_semvc/front/events",
                         lambda p: json.loads(p).get("event") == "config_applied",
                         what="config_applied")
        # two whole segments recorded after the change
        wait_until(lambda: len(segments(rec)) >= changed_after + 3 or proc.poll() is not None,
                   timeout=180, what="segments at the new rate")
        stats = watcher.json_on("edge_semvc/front/stats")
    finally:
        code = stop(proc)
        watcher.close()
        broker.stop()
    assert code == 0, service_log(config)
    files = segments(rec)
    before, after = kbps(files[0]), kbps(files[-2])  # the last one may be cut short
    assert before > 2.5 * after, (before, after)
    assert abs(after - AFTER / 1e3) <= 0.2 * AFTER / 1e3, after
    # the stream went on through the change: frames decoded on both sides of it, none damaged
    rx.join(60)
    assert len(rx.frames) >= (len(files) - 1) * 2 * FPS * 0.8, len(rx.frames)
    assert not any(corrupt for _, _, corrupt in rx.frames)
    outputs = stats[-1]["outputs"]
    assert [o["uri"].split("/")[-1] for o in outputs][0] == "front"
    assert outputs[1]["packets"] > 0 and outputs[1]["state"] == "streaming"
    assert stats[-1]["target_kbps"] == AFTER / 1e3
