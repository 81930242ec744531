"""`<prefix>/box` (serve/box.py): which box publishes under an MQTT topic prefix, with a real
broker (mosquitto) and real Telemetry connections."""
from __future__ import annotations

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from test_telemetry import (  # noqa: F401 - the fixtures
    MOSQUITTO,
    WAIT,
    broker,
    broker_factory,
    config,
    telemetries,
    wait_until,
    watchers,
)

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")


def test_another_box_on_the_prefix_is_told(broker, watchers, telemetries, caplog):  # noqa: F811
    """Two boxes on one topic_prefix are one device to Home Assistant: each says so once it
    sees the other's `<prefix>/box` (sent now, or retained by another host); this box's own,
    retained from before a restart, is not another box."""
    watch = watchers(broker.port)
    first = telemetries(config(broker.port), clock=lambda: 1000.0)
    watch.wait_for("edge_semvc/box")
    restarted = telemetries(config(broker.port), clock=lambda: 2000.0)  # same host, later
    wait_until(lambda: first.other_box, what="the first box told of the second")
    assert "started 1970-01-01T00:33:20" in first.other_box
    assert restarted.connected and restarted.other_box is None
    stranger = mqtt.Client(CallbackAPIVersion.VERSION2)
    stranger.connect("127.0.0.1", broker.port)
    stranger.loop_start()
    stranger.publish("edge_semvc/box", b'{"host": "gate-cam", "pid": 7}', qos=1,
                     retain=True).wait_for_publish(WAIT)
    stranger.disconnect()
    stranger.loop_stop()
    third = telemetries(config(broker.port))
    wait_until(lambda: third.other_box, what="the retained box of another host told")
    assert "'gate-cam'" in third.other_box and third.counters()["other_box"] == third.other_box
    assert "give each box its own topic_prefix" in caplog.text


def test_cameras_this_box_had_before_a_restart_are_cleared(  # noqa: F811
        broker, watchers, telemetries):  # noqa: F811
    """A camera taken out of the file while the service was stopped: its retained state and
    Home Assistant entities are cleared at the next start, once the cameras are declared;
    another box's cameras are not this box's to clear."""
    before = telemetries(config(broker.port, home_assistant=True), cameras=["front", "back"])
    before.publish_config_state("back", {"qp": {"enabled": True}})
    watch = watchers(broker.port)
    watch.wait_for("edge_semvc/box", lambda p: b'"back"' in p)
    watch.wait_for("edge_semvc/back/config/state")
    before.close()
    discovery = "homeassistant/sensor/edge_semvc/back_fps/config"
    assert watch.on(discovery)[-1][1] != b""
    after = telemetries(config(broker.port, home_assistant=True), cameras=["front"])
    wait_until(lambda: after.connected, what="connected")
    after.listen(lambda *_: None)
    for topic in (discovery, "edge_semvc/back/config/state", "edge_semvc/back/presence"):
        watch.wait_for(topic, lambda p: p == b"", what=f"{topic} cleared")
    assert all(p != b"" for _, p, _ in watch.on("homeassistant/sensor/edge_semvc/front_fps/config"))
    assert after.other_box is None


@pytest.mark.parametrize("payload", [b"", b"\xff\xfe", b"[1]", b"null", b"[" * 100_000,
                                     b'{"cameras": "front"}', b'{"cameras": [1, "a/b", "#", ""]}',
                                     b'{"host": {"x": 1}, "pid": true, "cameras": null}',
                                     b'{"cameras": ["x"]}' + b" " * 70_000,
                                     b'{"pid": "1\\n2026-12-07 ERROR forged", "started": '
                                     b'"\\u001b[2J", "host": "a\\u2028b"}'])
def test_a_hostile_box_message_clears_nothing_and_says_what_it_can(payload):
    """... and what it says is one line of printable characters (no forged log line)."""
    from edge_semvc.serve import box

    me = box.this_box("2026-12-07T00:00:00.000+00:00")
    seen = box.read_box(payload)
    told = box.describe(seen)
    assert box.cameras_left(seen, set()) == [] and len(told) < 300 and told.isprintable()
    assert box.judge(me, seen, retained=True) == "other"  # no host of this box's
