"""Home Assistant MQTT discovery: what the service announces under `mqtt.discovery_prefix`,
and the two commands Home Assistant sends back.

One device per box (the topic prefix names it), available while `<prefix>/available` says
`online` (the connection's last will says `offline`). Per camera:

- camera `<camera> snapshot`: a JPEG of the current frame on `<prefix>/<camera>/snapshot`, once
  every `mqtt.stats_interval` s (a modest rate: a picture to look at, not a stream);
- sensors `fps`, `bitrate`, `dropped frames`, `label age` (frames), `frames`, read from
  `<prefix>/<camera>/stats`;
- binary sensors `person` and `vehicle` (occupancy) from the labeler, on
  `<prefix>/<camera>/presence` (retained, sent when it changes);
- switch `semantic map` (off: plain encoding, the labeler still runs) and number
  `importance gain`: commands on `<prefix>/<camera>/semantic_map/set` and
  `.../importance_gain/set`, turned into the remote change `qp.enabled` / `qp.importance_gain`
  (`command_change`) and handled as any `config/set` payload (serve/changes.py: checked, on
  trial, kept, refused with an event); their state is read back from the retained
  `<prefix>/<camera>/config/state` once the change is kept.

Ids: `unique_id` `<node>_<camera>_<key>`, node the topic prefix with '/' as '_' (e.g.
`edge_semvc_front_fps`), discovery topics `<discovery_prefix>/<platform>/<node>/<camera>_<key>/
config`; a node or camera with a character Home Assistant does not take in an id (`.`) has it
as '_' and its CRC-32 appended (`topic_id`). Full key names, no abbreviations.
"""
from __future__ import annotations

import io
import json
import math
import re
import zlib
from typing import Iterator

import numpy as np

SNAPSHOT_WIDTH = 640  # the snapshot's width at most (aspect kept)
SNAPSHOT_QUALITY = 75
COMMAND_CHARS = 64  # a command payload's most bytes (a value, not a document)
# (stats key, name, unit, device_class, state_class)
SENSORS = (
    ("fps", "fps", "fps", None, "measurement"),
    ("bitrate_kbps", "bitrate", "kbit/s", "data_rate", "measurement"),
    ("dropped_frames", "dropped frames", None, None, "total_increasing"),
    ("label_age_frames", "label age", "frames", None, "measurement"),
    ("frames", "frames", None, None, "total_increasing"),
)
# binary sensor -> the product classes whose presence turns it on
PRESENCE = {"person": ("person", "face"), "vehicle": ("vehicle",)}
# while a camera encodes no frame: Home Assistant's payload for "unknown" (not OFF: unseen)
PRESENCE_UNKNOWN = {name: "None" for name in PRESENCE}
# command topic leaf -> the live key it sets (serve/remote.py LIVE_KEYS)
COMMANDS = {"semantic_map": ("qp", "enabled"), "importance_gain": ("qp", "importance_gain"),
            "labeler_share": ("labeler", "live_share")}


NOT_ID = re.compile(r"[^A-Za-z0-9_-]")  # Home Assistant ignores a discovery topic whose ids
# (node_id, object_id) hold any other character ("illegal discovery topic")


def topic_id(name: str) -> str:
    """`name` as a discovery topic's node or object id: itself when it is one, else its other
    characters as '_' and the name's CRC-32, so that cameras `gate.north` and `gate_north`
    keep two ids."""
    clean = NOT_ID.sub("_", name)
    return name if clean == name else f"{clean}_{zlib.crc32(name.encode()):08x}"


def node_id(prefix: str) -> str:
    return topic_id(prefix.replace("/", "_"))


def discovery_configs(prefix: str, discovery_prefix: str, camera: str
                      ) -> Iterator[tuple[str, bytes]]:
    """(topic, retained payload) of every entity of `camera`."""
    node, obj = node_id(prefix), topic_id(camera)
    common = {"availability_topic": f"{prefix}/available", "payload_available": "online",
              "payload_not_available": "offline",
              "device": {"identifiers": [node], "name": prefix, "manufacturer": "edge_semvc",
                         "model": "edge-semvc serve"}}

    def entity(platform: str, key: str, name: str, **fields) -> tuple[str, bytes]:
        config = {"name": f"{camera} {name}", "unique_id": f"{node}_{obj}_{key}",
                  **common, **{k: v for k, v in fields.items() if v is not None}}
        return (f"{discovery_prefix}/{platform}/{node}/{obj}_{key}/config",
                json.dumps(config).encode())

    yield entity("camera", "snapshot", "snapshot", topic=f"{prefix}/{camera}/snapshot")
    for key, name, unit, device_class, state_class in SENSORS:
        yield entity("sensor", key, name, state_topic=f"{prefix}/{camera}/stats",
                     value_template="{{ value_json.%s }}" % key, unit_of_measurement=unit,
                     device_class=device_class, state_class=state_class)
    for key in PRESENCE:
        yield entity("binary_sensor", key, key, state_topic=f"{prefix}/{camera}/presence",
                     value_template="{{ value_json.%s }}" % key, payload_on="ON",
                     payload_off="OFF", device_class="occupancy")
    state = f"{prefix}/{camera}/config/state"
    yield entity("switch", "semantic_map", "semantic map", state_topic=state,
                 command_topic=f"{prefix}/{camera}/semantic_map/set",
                 value_template="{{ 'ON' if value_json.qp.enabled else 'OFF' }}",
                 payload_on="ON", payload_off="OFF", icon="mdi:target")
    yield entity("number", "importance_gain", "importance gain", state_topic=state,
                 command_topic=f"{prefix}/{camera}/importance_gain/set",
                 value_template="{{ value_json.qp.importance_gain }}", min=0, max=51,
                 step=0.5, unit_of_measurement="QP", mode="box")
    # the models' share of each frame period of one core (0, no budget, is not a live value)
    yield entity("number", "labeler_share", "labeler share", state_topic=state,
                 command_topic=f"{prefix}/{camera}/labeler_share/set",
                 value_template="{{ value_json.labeler.live_share }}", min=0.05, max=1,
                 step=0.05, mode="box", icon="mdi:cpu-64-bit")


def command_topics(prefix: str) -> list[str]:
    return [f"{prefix}/+/{leaf}/set" for leaf in COMMANDS]


def command_change(leaf: str, payload: bytes) -> bytes:
    """A command's payload as the `config/set` document it stands for. A value that is not
    one (not ON/OFF, not a finite number, longer than COMMAND_CHARS) goes into the document as
    text, so that the change's own checks refuse it, with their event, naming the key."""
    section, key = COMMANDS[leaf]
    text = payload[:COMMAND_CHARS].decode("utf-8", "replace").strip()
    value: object = text
    if len(payload) > COMMAND_CHARS:  # not cut to a value: "ON" and 10 MB after it is none
        value = f"a payload of {len(payload)} bytes (at most {COMMAND_CHARS})"
    elif leaf == "semantic_map" and text.upper() in ("ON", "OFF"):
        value = text.upper() == "ON"
    elif leaf != "semantic_map":
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            value = number if math.isfinite(number) else text
    return json.dumps({section: {key: value}}).encode()


def presence(labels) -> dict[str, str]:
    """`{"person": "ON"|"OFF", "vehicle": ...}` for one frame's LabelMap (None: all OFF)."""
    seen = set()
    if labels is not None:
        seen = {labels.classes[i] for i in np.unique(labels.labels) if i}
    return {name: "ON" if seen.intersection(classes) else "OFF"
            for name, classes in PRESENCE.items()}


def snapshot_jpeg(frame) -> bytes:
    """The frame as a JPEG at most SNAPSHOT_WIDTH wide."""
    from PIL import Image

    image = Image.fromarray(frame.rgb())
    if image.width > SNAPSHOT_WIDTH:
        image = image.resize((SNAPSHOT_WIDTH, max(1, round(image.height * SNAPSHOT_WIDTH
                                                            / image.width))))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=SNAPSHOT_QUALITY)
    return out.getvalue()
