"""Home Assistant MQTT discovery: every payload checked against the discovery schema Home
Assistant documents for its platform (home-assistant.io, integrations/<platform>.mqtt and
integrations/mqtt#discovery: required keys, allowed keys, the device block, availability,
command and state topics), and the commands of the switch and the number carried through the
real broker into the remote-change path; end to end in a real `serve` process
(tests/test_serve.py's helpers): the map switched off encodes without a map, the gain changes,
and both states come back on config/state."""
from __future__ import annotations

import io
import json
import re

import pytest
import yaml
from PIL import Image
from test_serve import CLIP, _state, service_log, start_service, stop, with_broker, write_config
from test_telemetry import (  # noqa: F401 - fixtures
    MOSQUITTO,
    Watcher,
    broker,
    broker_factory,
    config,
    telemetries,
    wait_until,
    watchers,
)

from edge_semvc.config import Config
from edge_semvc.serve.camera import Camera
from edge_semvc.serve.config import CameraConfig, MqttConfig
from edge_semvc.serve.homeassistant import COMMANDS, discovery_configs
from edge_semvc.serve.stats import StatsWindow

pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed")

# Keys every MQTT entity takes (the docs' shared entity and availability options).
COMMON = {"availability", "availability_mode", "availability_template", "availability_topic",
          "device", "enabled_by_default", "encoding", "entity_category", "entity_picture",
          "icon", "json_attributes_template", "json_attributes_topic", "name", "object_id",
          "default_entity_id", "origin", "payload_available", "payload_not_available", "qos",
          "unique_id"}
# platform -> (required keys, the platform's own optional keys)
PLATFORMS = {
    "camera": ({"topic"}, {"image_encoding"}),
    "sensor": ({"state_topic"}, {"device_class", "expire_after", "force_update",
                                 "last_reset_value_template", "options",
                                 "suggested_display_precision", "state_class",
                                 "unit_of_measurement", "value_template"}),
    "binary_sensor": ({"state_topic"}, {"device_class", "expire_after", "force_update",
                                        "off_delay", "payload_off", "payload_on",
                                        "value_template"}),
    "switch": ({"command_topic"}, {"command_template", "device_class", "optimistic",
                                   "payload_off", "payload_on", "retain", "state_off",
                                   "state_on", "state_topic", "value_template"}),
    "number": ({"command_topic"}, {"command_template", "device_class", "max", "min", "mode",
                                   "optimistic", "payload_reset", "retain", "state_topic",
                                   "step", "unit_of_measurement", "value_template"}),
}
DEVICE_KEYS = {"configuration_url", "connections", "hw_version", "identifiers", "manufacturer",
               "model", "model_id", "name", "serial_number", "suggested_area", "sw_version",
               "via_device"}
SENSOR_CLASSES = {"data_rate", None}  # the ones used here, from the sensor device classes
BINARY_CLASSES = {"occupancy", "presence", "motion", None}
STATE_CLASSES = {"measurement", "total", "total_increasing", None}
ID = re.compile(r"[a-zA-Z0-9_-]+")  # node_id and object_id in a discovery topic


def check_discovery(topic: str, doc: dict, discovery_prefix="homeassistant") -> str:
    """The platform of one discovery message, or an AssertionError naming what is wrong."""
    parts = topic.split("/")
    assert len(parts) == 5 and parts[0] == discovery_prefix and parts[4] == "config", topic
    platform, node, obj = parts[1:4]
    assert platform in PLATFORMS and ID.fullmatch(node) and ID.fullmatch(obj), topic
    required, own = PLATFORMS[platform]
    assert required <= set(doc), f"{topic}: missing {required - set(doc)}"
    unknown = set(doc) - COMMON - own - required
    assert not unknown, f"{topic}: keys Home Assistant does not take: {unknown}"
    assert not ({"availability", "availability_topic"} <= set(doc)), "one availability form"
    assert isinstance(doc["unique_id"], str) and doc["unique_id"]
    device = doc["device"]  # needs unique_id, and identifiers or connections
    assert set(device) <= DEVICE_KEYS and (device.get("identifiers") or device.get("connections"))
    for key in ("topic", "state_topic", "command_topic", "availability_topic"):
        if key in doc:
            assert isinstance(doc[key], str) and doc[key] and not set("+#") & set(doc[key])
    if platform == "sensor":
        assert doc.get("device_class") in SENSOR_CLASSES
        assert doc.get("state_class") in STATE_CLASSES
    if platform == "binary_sensor":
        assert doc.get("device_class") in BINARY_CLASSES
    if platform == "number":
        assert doc["min"] < doc["max"] and doc["step"] >= 0.001
        assert doc.get("mode", "auto") in ("auto", "box", "slider")
    return platform


def test_every_discovery_payload_follows_home_assistants_schema():
    prefix = "site1/edge_semvc"
    found = {}
    for camera in ("front", "gate"):
        for topic, payload in discovery_configs(prefix, "homeassistant", camera):
            doc = json.loads(payload)
            found.setdefault(check_discovery(topic, doc), []).append(doc)
            assert doc["availability_topic"] == f"{prefix}/available"
            # one device for the box; ids name the prefix and the camera once each
            assert doc["device"]["identifiers"] == ["site1_edge_semvc"]
            assert doc["unique_id"].startswith(f"site1_edge_semvc_{camera}_")
            assert doc["unique_id"].count("edge_semvc") == 1
    ids = [d["unique_id"] for docs in found.values() for d in docs]
    assert len(ids) == len(set(ids)) == 2 * 11
    assert {k: len(v) for k, v in found.items()} == {
        "camera": 2, "sensor": 10, "binary_sensor": 4, "switch": 2, "number": 4}
    # the sensors read keys a real stats message has
    keys = {d["value_template"].split(".")[1].split()[0] for d in found["sensor"]}
    camera = Camera("front", CameraConfig(input="demo://astronaut"), Config(), None,
                    lambda *_: None)
    assert keys == {"fps", "bitrate_kbps", "dropped_frames", "label_age_frames", "frames"}
    assert keys <= set(StatsWindow(camera).snapshot())


def test_names_home_assistant_would_ignore_get_ids_it_takes():
    """A camera name may hold '.', a topic prefix almost anything: Home Assistant ignores a
    discovery topic whose node or object id holds a character outside [a-zA-Z0-9_-] ("illegal
    discovery topic"), so such a camera had no entity at all. Its ids are made of the allowed
    characters, distinct for names that differ only there; plain names keep theirs."""
    seen = {}
    for prefix, camera in (("site 1/edge.semvc", "gate.north"), ("site 1/edge.semvc",
                                                                 "gate_north"),
                           ("edge_semvc", "gate.north"), ("edge_semvc", "gate_north")):
        for topic, payload in discovery_configs(prefix, "homeassistant", camera):
            doc = json.loads(payload)
            check_discovery(topic, doc)
            assert doc["name"].startswith(f"{camera} ")  # the name shown is the camera's
            assert doc["state_topic" if "state_topic" in doc else "topic"].startswith(
                f"{prefix}/{camera}/")
            seen.setdefault((topic, doc["unique_id"]), []).append((prefix, camera))
    assert all(len(v) == 1 for v in seen.values()), "two cameras, one entity"
    topics = {t for t, _ in seen}
    assert "homeassistant/sensor/edge_semvc/gate_north_fps/config" in topics  # unchanged


def test_a_wrong_payload_fails_the_check():
    """The check itself can fail: an unknown key, a missing command topic."""
    topic, payload = next(t for t in discovery_configs("edge_semvc", "homeassistant", "front")
                          if "/switch/" in t[0])
    doc = json.loads(payload)
    with pytest.raises(AssertionError, match="do not take|does not take"):
        check_discovery(topic, {**doc, "stat_t": "x"})
    with pytest.raises(AssertionError, match="missing"):
        check_discovery(topic, {k: v for k, v in doc.items() if k != "command_topic"})


def test_commands_reach_the_remote_change_path(broker, watchers, telemetries):  # noqa: F811
    received = []
    tel = telemetries(config(broker.port, home_assistant=True),
                      lambda camera, payload, retained: received.append((camera, payload)),
                      cameras=["front"])
    wait_until(lambda: tel.connected, what="telemetry connected")
    watch = watchers(broker.port, topic="homeassistant/#")
    docs = wait_until(lambda: watch.on("homeassistant/number/edge_semvc/front_importance_gain/"
                                       "config"), what="the number's discovery")
    number = json.loads(docs[0][1])
    switch = json.loads(watch.wait_for("homeassistant/switch/edge_semvc/front_semantic_map/"
                                       "config")[0])
    for topic, payload in ((switch["command_topic"], b"OFF"),
                           (number["command_topic"], b"6.5"),
                           (number["command_topic"], b"nan"),
                           (switch["command_topic"], b"maybe"),
                           ("edge_semvc/front/labeler_share/set", b"0.25"),
                           # over 64 bytes: not a value (they were cut to "OFF" and 5.0)
                           (switch["command_topic"], b"OFF" + b"\n" * 100_000),
                           (number["command_topic"], b"5" + b" " * 20_000)):
        watch.client.publish(topic, payload, qos=1)
    wait_until(lambda: len(received) == 7, what="seven commands")
    assert [(c, json.loads(p)) for c, p in received] == [
        ("front", {"qp": {"enabled": False}}), ("front", {"qp": {"importance_gain": 6.5}}),
        # not values: handed on as text, for the change's checks to refuse with their event
        ("front", {"qp": {"importance_gain": "nan"}}), ("front", {"qp": {"enabled": "maybe"}}),
        ("front", {"labeler": {"live_share": 0.25}}),
        ("front", {"qp": {"enabled": "a payload of 100003 bytes (at most 64)"}}),
        ("front", {"qp": {"importance_gain": "a payload of 20001 bytes (at most 64)"}})]
    assert set(COMMANDS) == {"semantic_map", "importance_gain", "labeler_share"}
    assert MqttConfig().discovery_prefix == "homeassistant"


def test_the_switch_turns_the_map_off_and_the_number_sets_the_gain(tmp_path):
    mosquitto, path = with_broker(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    cfg["mqtt"]["home_assistant"] = True
    path.write_text(json.dumps(cfg))
    watcher = Watcher(mosquitto.port, "#")
    proc = start_service(path)

    def on(topic):
        return [m[1] for m in watcher.messages if m[0] == topic]

    def events(name):
        return [e for e in map(json.loads, on("edge_semvc/front/events")) if e["event"] == name]

    def stats():
        return [json.loads(p) for p in on("edge_semvc/front/stats")]
    try:
        # the discovery configs, all valid, and what they point at
        wait_until(lambda: len([m for m in watcher.messages
                                if m[0].startswith("homeassistant/")]) == 11, timeout=120,
                   what="the discovery configs")
        for topic, payload, _ in list(watcher.messages):
            if topic.startswith("homeassistant/"):
                check_discovery(topic, json.loads(payload))
        wait_until(lambda: [s for s in stats() if s["frames_with_map"] > 0], timeout=120,
                   what="frames encoded with a map")
        jpeg = wait_until(lambda: on("edge_semvc/front/snapshot"), what="a snapshot")[-1]
        with Image.open(io.BytesIO(jpeg)) as image:
            assert image.format == "JPEG" and image.size == (176, 144)  # the QCIF clip
        presence = wait_until(lambda: on("edge_semvc/front/presence"), what="presence")
        assert json.loads(presence[-1]) == {"person": "ON", "vehicle": "OFF"}  # a face talks

        watcher.client.publish("edge_semvc/front/semantic_map/set", b"OFF", qos=1)
        wait_until(lambda: events("config_applied"), timeout=60, what="the switch's change")
        assert _state(watcher)["qp"]["enabled"] is False  # the state Home Assistant reads
        # stats queued after the event (one sender, in order): the frames understood before
        # the switch (up to the queues between the pipeline's threads) are all encoded by then
        seen = len(list(watcher.messages))
        after = wait_until(lambda: [json.loads(m[1]) for m in list(watcher.messages)[seen:]
                                    if m[0] == "edge_semvc/front/stats"],
                           what="stats after the switch")[0]
        later = wait_until(lambda: [s for s in stats() if s["frames"] > after["frames"] + 30
                                    and s["reconnects"] == after["reconnects"]],
                           timeout=60, what="frames after the switch")[-1]
        assert later["frames_with_map"] == after["frames_with_map"]  # plain encoding

        watcher.client.publish("edge_semvc/front/importance_gain/set", b"6", qos=1)
        wait_until(lambda: len(events("config_applied")) == 2, timeout=60, what="the gain")
        assert _state(watcher)["qp"]["importance_gain"] == 6.0
        watcher.client.publish("edge_semvc/front/importance_gain/set", b"99", qos=1)
        rejected = wait_until(lambda: events("config_rejected"), timeout=60, what="a refusal")
        assert "qp.importance_gain" in rejected[0]["reason"]
        assert _state(watcher)["qp"]["importance_gain"] == 6.0

        watcher.client.publish("edge_semvc/front/labeler_share/set", b"0.25", qos=1)
        wait_until(lambda: len(events("config_applied")) == 3, timeout=60, what="the share")
        assert _state(watcher)["labeler"]["live_share"] == 0.25
        wait_until(lambda: [s for s in stats()
                            if (s.get("label_budget") or {}).get("configured_share") == 0.25],
                   timeout=60, what="the labeler running on the new share")
    finally:
        code = stop(proc)
        watcher.client.loop_stop()
        mosquitto.stop()
    assert code == 0, service_log(path)


def test_a_camera_that_ended_sends_no_stale_snapshot_and_an_unknown_presence(tmp_path):
    """A camera whose input ended (or is lost) kept sending its last frame as the snapshot
    every interval and its last presence (a person ON, on a dead camera). It sends no
    snapshot once it stops encoding, and its presence becomes unknown (`None`)."""
    mosquitto, path = with_broker(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    path = write_config(tmp_path, {"front": {"input": f"file://{CLIP}", "loop": True},
                                   "once": {"input": f"file://{CLIP}"}},
                        mqtt={**cfg["mqtt"], "home_assistant": True})
    watcher = Watcher(mosquitto.port, "edge_semvc/once/#")
    proc = start_service(path)

    def ended_stats():
        return [i for i, (topic, payload, _) in enumerate(list(watcher.messages))
                if topic == "edge_semvc/once/stats" and json.loads(payload)["state"] == "ended"]
    try:
        wait_until(lambda: len(ended_stats()) >= 3, timeout=120, what="three stats, ended")
    finally:
        code = stop(proc)
        watcher.client.loop_stop()
        mosquitto.stop()
    assert code == 0, service_log(path)
    messages = list(watcher.messages)
    first_ended = ended_stats()[0]
    before = [json.loads(p) for t, p, _ in messages[:first_ended]
              if t == "edge_semvc/once/presence"]
    assert {"person": "ON", "vehicle": "OFF"} in before  # a face talks while the clip plays
    after = messages[first_ended + 1:]
    assert not [t for t, _, _ in after if t == "edge_semvc/once/snapshot"]
    presence = [json.loads(p) for t, p, _ in messages if t == "edge_semvc/once/presence"]
    assert presence[-1] == {"person": "None", "vehicle": "None"}
