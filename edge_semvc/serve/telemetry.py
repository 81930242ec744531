"""MQTT telemetry and remote configuration for the service (paho-mqtt 2.x).

Topics, under ``mqtt.topic_prefix`` (Frigate's layout):

- ``<prefix>/available``: ``online`` / ``offline``, retained; ``offline`` is also the last will,
  so the broker announces a crashed or unplugged device by itself.
- ``<prefix>/box``: which box publishes under the prefix, retained and subscribed (serve/box.py):
  another box's is told, this box's from before a restart has its cameras' retained messages
  cleared where this one has not those cameras.
- ``<prefix>/<camera>/stats``: JSON, every ``mqtt.stats_interval`` s (the caller's timing).
- ``<prefix>/<camera>/events``: JSON ``{"event": name, "time": ISO-8601, ...}``.
- ``<prefix>/<camera>/config/state``: the camera's effective configuration, retained JSON.
- ``<prefix>/+/config/set``: subscribed; each message goes to ``on_config_set(camera, payload,
  retained)``, which checks it (this module only hands bytes over: the size, a retained
  message, the content are the callback's to refuse, with its event).
- with ``mqtt.home_assistant``: retained discovery configs under ``<discovery_prefix>/``, the
  ``<prefix>/<camera>/snapshot`` JPEG and ``<prefix>/<camera>/presence`` state, and the
  subscribed commands ``<prefix>/+/semantic_map/set``, ``<prefix>/+/importance_gain/set``,
  handed to ``on_config_set`` as the config/set payload they stand for (serve/homeassistant.py).

Nothing the frame loop calls touches the network: ``publish_*`` serialise the payload, append
it to a bounded queue and return. A sender thread moves queued messages to paho while
connected; paho's own thread connects, reconnects with back-off, and resubscribes. While the
broker is unreachable, or while paho's own queue (``mqtt.queue_size`` too) waits for the
broker's acknowledgements, the queue holds ``mqtt.queue_size`` messages; past that the oldest
stats (then the oldest event) are dropped and counted (the service warns). Retained messages
(availability, config states, discovery) are kept as a table and re-published after every
(re)connect, because a broker that restarted without persistence has forgotten them and the
last will has replaced ``online``.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from ..errors import ConfigError
from ..uris import hide_passwords, is_loopback
from . import box, homeassistant
from .config import REDACTED, MqttConfig, check_topic_level

log = logging.getLogger(__name__)

ConfigSetCallback = Callable[[str, bytes, bool], None]  # (camera, payload, retained)

# Keys whose values are never published, whatever the caller passes in a state or event.
SECRET_KEYS = ("password", "passwd", "secret", "token", "api_key", "apikey")



@dataclass
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    kind: str  # "stats", "events" (the drop counter a discarded one adds to) or "retained"


class Telemetry:
    """One MQTT connection for the whole service (all cameras share it and its last will).

    ``on_config_set`` runs on paho's network thread: it must return at once (queue the payload
    for a thread of its own: serve/changes.py). Its exceptions are logged, never raised.
    """

    def __init__(self, config: MqttConfig, on_config_set: ConfigSetCallback | None = None,
                 cameras: tuple[str, ...] | list[str] = (), *,
                 environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        config.validate()
        self._config = config
        self._prefix = config.topic_prefix
        self._on_config_set = on_config_set
        self._clock = clock
        username, password = config.credentials(environ)
        if password and not config.tls.enabled and not is_loopback(config.host):
            log.warning("MQTT: the password goes to %s in clear (mqtt.tls.enabled is false): "
                        "anyone on the way can read it", config.host)
        self._secrets = tuple(s for s in (password,) if s)
        self.availability_topic = f"{self._prefix}/available"

        self._lock = threading.Condition()
        self._queue: deque[_Outgoing] = deque()
        self._retained: dict[str, bytes] = {}  # topic -> payload, re-published on each connect
        self._pending_retained: dict[str, None] = {}  # ordered set: topics to (re)publish
        self._cameras: set[str] = set()
        self._connected = False
        self._closing = False
        self._counts: Counter[str] = Counter()
        self.last_error: str | None = None  # why the last connection attempt failed or ended

        self._retained[self.availability_topic] = b"online"
        self.box_topic = f"{self._prefix}/box"
        self._box = box.this_box(self._now_iso())
        self._retained[self.box_topic] = self._encode({**self._box, "cameras": []})
        self._before: dict | None = None  # this box's message from before a restart
        self.other_box: str | None = None  # another box seen under the prefix, as told
        for camera in cameras:
            self.add_camera(camera)

        self._client = self._make_client(username, password)
        self._sender = threading.Thread(target=self._send_loop, name="edge-semvc-mqtt-send",
                                        daemon=True)
        self._sender.start()
        # connect_async: the first connection is made by paho's thread, so a broker that is
        # down (or a host that does not resolve) at start never blocks the caller.
        self._client.connect_async(config.host, config.port, keepalive=config.keepalive)
        self._client.loop_start()

    # --- what the service calls --------------------------------------------------------------
    def listen(self, on_config_set: ConfigSetCallback) -> None:
        """Take commands from now on (`on_config_set`): the service calls it once its cameras
        exist, so that one sent earlier, a retained one above all, meets them."""
        with self._lock:
            self._on_config_set = on_config_set
            if self._connected:
                self._subscribe()
            self._clear_cameras_left()

    def add_camera(self, camera: str) -> None:
        """Declare a camera (checked as a topic level); publishes its discovery configs when
        Home Assistant discovery is on. publish_* add cameras they have not seen."""
        check_topic_level(camera, "camera name")
        with self._lock:
            if camera in self._cameras:
                return
            self._cameras.add(camera)
            self._set_box()
            if self._config.home_assistant:
                for topic, payload in homeassistant.discovery_configs(
                        self._prefix, self._config.discovery_prefix, camera):
                    self._set_retained(topic, payload)

    def remove_camera(self, camera: str) -> None:
        """A camera gone (a reload): its retained messages, discovery configs included, are
        cleared (an empty retained payload), so Home Assistant drops its entities."""
        with self._lock:
            self._cameras.discard(camera)
            self._set_box()
            self._clear_camera(camera)

    def publish_stats(self, camera: str, stats: Mapping[str, Any]) -> None:
        """Queue one stats message (a JSON object; ``time`` added when absent)."""
        body = dict(stats)
        body.setdefault("time", self._now_iso())
        self._enqueue(_Outgoing(self._topic(camera, "stats"), self._encode(body), 0, "stats"))

    def publish_event(self, camera: str, event: str,
                      details: Mapping[str, Any] | None = None) -> None:
        """Queue ``{"event": event, "time": now, **details}`` (QoS 1: an event is not lost to
        a reconnection once paho has it)."""
        body: dict[str, Any] = {"event": event, "time": self._now_iso()}
        body.update((k, v) for k, v in (details or {}).items() if k not in body)
        self._enqueue(_Outgoing(self._topic(camera, "events"), self._encode(body), 1, "events"))

    def publish_snapshot(self, camera: str, jpeg: bytes) -> None:
        """Queue a JPEG of the camera's current frame (QoS 0, dropped first like stats)."""
        self._enqueue(_Outgoing(self._topic(camera, "snapshot"), jpeg, 0, "stats"))

    def publish_presence(self, camera: str, state: Mapping[str, str]) -> None:
        """Set the camera's retained presence state (`{"person": "ON", ...}`)."""
        topic, payload = self._topic(camera, "presence"), self._encode(state)
        with self._lock:
            self._set_retained(topic, payload)

    def publish_config_state(self, camera: str, state: Mapping[str, Any]) -> None:
        """Set the camera's retained config/state (kept, and re-sent after every reconnect)."""
        topic = self._topic(camera, "config/state")
        payload = self._encode(state)
        with self._lock:
            self._set_retained(topic, payload)

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    def counters(self) -> dict[str, Any]:
        """Connection state and message counts, for the service's own stats."""
        with self._lock:
            return {"connected": self._connected, "queued": len(self._queue),
                    "sent": self._counts["sent"], "connects": self._counts["connects"],
                    "dropped_stats": self._counts["dropped_stats"],
                    "dropped_events": self._counts["dropped_events"],
                    "other_box": self.other_box}

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued and ``offline`` (retained), then disconnect; returns within
        about ``timeout`` seconds whatever the broker does. Idempotent."""
        deadline = time.monotonic() + timeout
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._lock.notify_all()
        self._sender.join(max(0.0, timeout / 2))  # flushes while connected, else returns
        if self.connected:
            info = self._client.publish(self.availability_topic, b"offline", qos=1, retain=True)
            while not info.is_published() and self.connected and time.monotonic() < deadline:
                time.sleep(0.02)  # bounded polling: wait_for_publish may wait for ever
        # A clean DISCONNECT makes the broker discard the last will: offline was sent above.
        self._client.disconnect()
        # loop_stop joins paho's thread with no timeout (it may sit in a TCP connect): join it
        # from a helper thread so that close() keeps its bound.
        stopper = threading.Thread(target=self._client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> "Telemetry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        cfg = self._config
        return (f"Telemetry({cfg.host}:{cfg.port}, prefix={self._prefix!r}, "
                f"connected={self.connected})")

    # --- payloads ----------------------------------------------------------------------------
    def _topic(self, camera: str, leaf: str) -> str:
        if camera not in self._cameras:
            self.add_camera(camera)
        return f"{self._prefix}/{camera}/{leaf}"

    def _now_iso(self) -> str:
        return datetime.fromtimestamp(self._clock(), timezone.utc).isoformat(
            timespec="milliseconds")

    def _encode(self, obj: Any) -> bytes:
        return json.dumps(self._scrub(obj), default=_json_default, separators=(",", ":"),
                          allow_nan=False).encode()

    def _scrub(self, obj: Any) -> Any:
        """Secrets out (by key name, any string holding the broker password, a URI's password:
        a camera's input), NaN and infinities to null (not JSON), tuples to lists."""
        if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
            obj = obj.tolist()  # numpy scalars and arrays, without importing numpy
        if isinstance(obj, Mapping):
            return {str(k): (REDACTED if _is_secret_key(str(k)) and v not in ("", None)
                             else self._scrub(v)) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self._scrub(v) for v in obj]
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, str) and any(_leaks(obj, s) for s in self._secrets):
            return REDACTED
        return hide_passwords(obj) if isinstance(obj, str) else obj

    # --- the queue (caller's side) -----------------------------------------------------------
    def _enqueue(self, item: _Outgoing) -> None:
        with self._lock:
            if self._closing:
                return
            if len(self._queue) >= self._config.queue_size:
                victim = next((m for m in self._queue if m.kind == "stats"), self._queue[0])
                self._queue.remove(victim)
                self._counts[f"dropped_{victim.kind}"] += 1
            self._queue.append(item)
            self._lock.notify_all()

    def _clear_camera(self, camera: str) -> None:  # under self._lock
        topics = [t for t in self._retained if t.startswith(f"{self._prefix}/{camera}/")]
        topics += [f"{self._prefix}/{camera}/{leaf}" for leaf in ("config/state", "presence")]
        if self._config.home_assistant:
            topics += [t for t, _ in homeassistant.discovery_configs(
                self._prefix, self._config.discovery_prefix, camera)]
        for topic in dict.fromkeys(topics):
            self._set_retained(topic, b"")

    def _set_box(self) -> None:  # under self._lock
        self._set_retained(self.box_topic,
                           self._encode({**self._box, "cameras": sorted(self._cameras)}))

    def _clear_cameras_left(self) -> None:  # under self._lock
        """The cameras this box had before a restart and has not now: their retained
        messages cleared, once the service has declared its cameras (`listen`)."""
        if self._before is None or self._on_config_set is None:
            return
        left, self._before = box.cameras_left(self._before, self._cameras), None
        for camera in left:
            self._clear_camera(camera)
        if left:
            log.info("MQTT: cleared the retained messages of cameras this box had before "
                     "it restarted: %s", ", ".join(left))

    def _set_retained(self, topic: str, payload: bytes) -> None:  # under self._lock
        self._retained[topic] = payload
        self._pending_retained[topic] = None
        self._lock.notify_all()

    # --- the sender thread -------------------------------------------------------------------
    def _send_loop(self) -> None:
        while True:
            with self._lock:
                while not (self._connected and (self._pending_retained or self._queue)):
                    if self._closing:
                        return
                    self._lock.wait()
                if self._pending_retained:
                    topic = next(iter(self._pending_retained))
                    del self._pending_retained[topic]
                    item = _Outgoing(topic, self._retained[topic], 1, "retained")
                else:
                    item = self._queue.popleft()
            info = self._client.publish(item.topic, item.payload, qos=item.qos,
                                        retain=item.kind == "retained")
            with self._lock:
                if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                    self._counts["sent"] += 1
                elif info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
                    # The connection dropped between the check and the publish: keep the
                    # message for the next connection (paho discards QoS 0 when unconnected,
                    # keeps QoS 1), and give paho's thread a moment to report the loss.
                    if item.kind == "retained":
                        self._pending_retained.setdefault(item.topic, None)
                    elif item.qos == 0:
                        self._queue.appendleft(item)
                    self._lock.wait(0.05)
                else:  # paho's own queue is full: wait for the broker's acknowledgements
                    if item.kind == "retained":
                        self._pending_retained.setdefault(item.topic, None)
                    else:  # ours stays bounded: _enqueue drops the oldest stats first
                        self._queue.appendleft(item)
                    self._lock.wait(0.05)

    # --- paho's thread -----------------------------------------------------------------------
    def _make_client(self, username: str | None, password: str | None) -> mqtt.Client:
        cfg = self._config
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.effective_client_id(),
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.will_set(self.availability_topic, b"offline", qos=1, retain=True)
        if username is not None or password is not None:
            client.username_pw_set(username or "", password)
        if cfg.tls.enabled:
            try:
                client.tls_set(ca_certs=cfg.tls.ca_certs or None,
                               certfile=cfg.tls.certfile or None, keyfile=cfg.tls.keyfile or None)
            except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
                raise ConfigError(f"mqtt.tls: cannot load the certificates ({e})") from None
        client.reconnect_delay_set(min_delay=1, max_delay=cfg.reconnect_max_delay)
        client.max_queued_messages_set(cfg.queue_size)  # paho's own queue of QoS 1 messages
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._note_error(f"broker refused the connection: {reason_code}")
            return
        with self._lock:
            client.subscribe(self.box_topic, qos=1)
            if self._on_config_set is not None:  # clean session: every time
                self._subscribe()
            self._connected = True
            self._counts["connects"] += 1
            self._pending_retained = dict.fromkeys(self._retained)  # availability first
            self._lock.notify_all()
        self.last_error = None
        log.info("MQTT: connected to %s:%d", self._config.host, self._config.port)

    def _subscribe(self) -> None:
        self._client.subscribe(f"{self._prefix}/+/config/set", qos=1)
        if self._config.home_assistant:
            for topic in homeassistant.command_topics(self._prefix):
                self._client.subscribe(topic, qos=1)

    def _on_connect_fail(self, client, userdata) -> None:
        self._note_error(f"cannot connect to {self._config.host}:{self._config.port}")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._lock:
            was_connected, self._connected = self._connected, False
        if was_connected and not self._closing:
            self._note_error(f"connection to the broker lost ({reason_code})")

    def _note_error(self, message: str) -> None:
        if message != self.last_error:  # once per change: reconnect attempts repeat it
            log.warning("MQTT: %s; retrying in the background", message)
        self.last_error = message

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.box_topic:
            self._box_seen(message.payload, bool(message.retain))
            return
        if self._on_config_set is None:
            return
        camera, _, leaf = message.topic[len(self._prefix) + 1:].partition("/")
        payload = message.payload
        if leaf != "config/set":  # a Home Assistant command: the change it stands for
            payload = homeassistant.command_change(leaf.removesuffix("/set"), payload)
        try:
            self._on_config_set(camera, payload, bool(message.retain))
        except Exception:  # an exception here would end paho's thread, and telemetry with it
            log.exception("MQTT: the config/set handler failed for camera %r", camera)


    def _box_seen(self, payload: bytes, retained: bool) -> None:
        seen = box.read_box(payload)
        verdict = box.judge(self._box, seen, retained)
        if verdict == "before":
            with self._lock:
                self._before = seen
                self._clear_cameras_left()
        elif verdict == "other" and box.describe(seen) != self.other_box:
            self.other_box = box.describe(seen)
            log.warning("MQTT: another box publishes under topic_prefix %r (%s): Home "
                        "Assistant sees the two as one device, and each one's offline marks "
                        "the other's cameras unavailable; give each box its own topic_prefix",
                        self._prefix, self.other_box)


class NullTelemetry:
    """The same calls, doing nothing: for ``mqtt.enabled: false``."""

    connected = False
    last_error = None

    def listen(self, on_config_set: ConfigSetCallback) -> None:
        pass

    def add_camera(self, camera: str) -> None:
        check_topic_level(camera, "camera name")

    def remove_camera(self, camera: str) -> None:
        pass

    def publish_stats(self, camera: str, stats: Mapping[str, Any]) -> None:
        pass

    def publish_event(self, camera: str, event: str,
                      details: Mapping[str, Any] | None = None) -> None:
        pass

    def publish_config_state(self, camera: str, state: Mapping[str, Any]) -> None:
        pass

    def publish_snapshot(self, camera: str, jpeg: bytes) -> None:
        pass

    def publish_presence(self, camera: str, state: Mapping[str, str]) -> None:
        pass

    def counters(self) -> dict[str, Any]:
        return {"connected": False}

    def close(self, timeout: float = 5.0) -> None:
        pass

    def __enter__(self) -> "NullTelemetry":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def open_telemetry(config: MqttConfig, on_config_set: ConfigSetCallback | None = None,
                   cameras: tuple[str, ...] | list[str] = (), **kwargs: Any):
    """A connected-in-the-background `Telemetry`, or a `NullTelemetry` when MQTT is off."""
    if not config.enabled:
        config.validate()
        return NullTelemetry()
    return Telemetry(config, on_config_set, cameras, **kwargs)


def _is_secret_key(key: str) -> bool:
    low = key.lower()
    return any(low == s or low.endswith("_" + s) for s in SECRET_KEYS)


def _leaks(text: str, secret: str) -> bool:
    # A short password would match ordinary text: then only the whole value counts.
    return secret in text if len(secret) >= 4 else text == secret


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    return str(obj)
