"""MQTT telemetry against a real mosquitto broker, checked by a real paho subscriber.

The network is waited on by polling for messages with generous timeouts; nothing asserts on
elapsed time. The broker runs on a free port of 127.0.0.1, started and stopped by the tests
(also killed and restarted, and started late).
"""
import json
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from edge_semvc.errors import ConfigError  # noqa: E402
from edge_semvc.serve.config import MqttConfig, MqttTlsConfig  # noqa: E402
from edge_semvc.serve.telemetry import NullTelemetry, Telemetry, open_telemetry  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)),
    None)
pytestmark = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto is not installed (apt-get install mosquitto; `make` "
                              "installs it with the other apt packages)")

WAIT = 30.0  # seconds to wait for something over the network before failing


def wait_until(predicate, timeout=WAIT, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on one port, which it keeps across stop/start. Its persistence file keeps
    sessions across a clean stop (SIGTERM), not across a kill."""

    def __init__(self, folder: Path, port: int, passwords: dict[str, str] | None = None):
        self.folder, self.port, self.proc = folder, port, None
        # `user`: run as root, mosquitto would switch to its own user and lose access to
        # the test's private folder; naming the current user keeps it.
        lines = [f"listener {port} 127.0.0.1", f"user {pwd.getpwuid(os.getuid()).pw_name}",
                 "persistence true",
                 f"persistence_location {folder}/", "queue_qos0_messages true",
                 "log_dest stderr", "log_type error", "log_type warning"]
        if passwords:
            pwfile = folder / "passwd"
            pwfile.touch()
            for user, password in passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, password],
                               check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self):
        self.log = open(self.folder / "mosquitto.log", "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log,
                                     stderr=subprocess.STDOUT)

        def accepting():
            if self.proc.poll() is not None:
                raise AssertionError(f"mosquitto exited: {self.read_log()}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_until(accepting, what="mosquitto to listen")
        return self

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(WAIT)
        self.proc = None
        self.log.close()

    def read_log(self):
        return (self.folder / "mosquitto.log").read_text(errors="replace")


@pytest.fixture
def broker_factory(tmp_path):
    brokers = []

    def make(passwords=None, start=True):
        folder = tmp_path / f"broker{len(brokers)}"
        folder.mkdir()
        b = Broker(folder, free_port(), passwords)
        brokers.append(b)
        return b.start() if start else b
    yield make
    for b in brokers:
        if b.proc is not None:
            b.stop(signal.SIGKILL)


@pytest.fixture
def broker(broker_factory):
    return broker_factory()


class Watcher:
    """A plain paho subscriber that records every message it receives."""

    def __init__(self, port, topic="#", client_id=None, clean_session=True, auth=None):
        self.messages, self.lock = [], threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or "",
                                  clean_session=clean_session)
        if auth:
            self.client.username_pw_set(*auth)
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._record
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(WAIT), "the watcher could not subscribe"

    def _record(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, topic):
        with self.lock:
            return [m for m in self.messages if m[0] == topic]

    def json_on(self, topic):
        return [json.loads(p) for _, p, _ in self.on(topic)]

    def wait_for(self, topic, predicate=lambda payload: True, what=None):
        return wait_until(lambda: [p for _, p, _ in self.on(topic) if predicate(p)],
                          what=what or f"a message on {topic}")

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def watchers():
    made = []

    def make(*args, **kwargs):
        made.append(Watcher(*args, **kwargs))
        return made[-1]
    yield make
    for w in made:
        w.close()


def config(port, **kw):
    kw.setdefault("client_id", f"test-{os.getpid()}-{port}-{time.monotonic_ns()}")
    return MqttConfig(enabled=True, host="127.0.0.1", port=port, reconnect_max_delay=1, **kw)


@pytest.fixture
def telemetries():
    made = []

    def make(*args, **kwargs):
        made.append(Telemetry(*args, **kwargs))
        return made[-1]
    yield make
    for t in made:
        t.close(timeout=5)


# --- the happy path ----------------------------------------------------------------------------

def test_online_stats_events_and_offline(broker, watchers, telemetries):
    watch = watchers(broker.port)
    tel = telemetries(config(broker.port), cameras=["front"])
    watch.wait_for("edge_semvc/available", lambda p: p == b"online")
    wait_until(lambda: tel.connected, what="telemetry connected")

    tel.publish_stats("front", {"fps": 25.0, "frames": 250, "nan": float("nan")})
    tel.publish_event("front", "segment_closed", {"path": "/r/a.ts", "event": "not this"})
    stats = watch.wait_for("edge_semvc/front/stats")
    body = json.loads(stats[0])
    assert body["fps"] == 25.0 and body["frames"] == 250 and body["nan"] is None
    events = [json.loads(p) for p in watch.wait_for("edge_semvc/front/events")]
    assert events[0]["event"] == "segment_closed" and events[0]["path"] == "/r/a.ts"
    assert datetime.fromisoformat(events[0]["time"]).tzinfo is not None

    tel.close()
    watch.wait_for("edge_semvc/available", lambda p: p == b"offline")
    assert tel.counters()["dropped_stats"] == 0
    tel.publish_stats("front", {"fps": 1})  # after close: ignored, not an error


def test_a_burst_of_events_waits_for_the_broker_instead_of_being_dropped(broker, watchers,
                                                                         telemetries):
    """A broker that does not acknowledge for a while (stopped) fills paho's own queue: the
    events behind it wait in ours (they were dropped) and all arrive once it answers."""
    watch = watchers(broker.port, "edge_semvc/front/events")
    tel = telemetries(config(broker.port, queue_size=16), cameras=["front"])
    wait_until(lambda: tel.connected, what="telemetry connected")
    broker.proc.send_signal(signal.SIGSTOP)
    try:
        for i in range(16):  # paho's queue: 16
            tel.publish_event("front", "burst", {"i": i})
        wait_until(lambda: tel.counters()["queued"] == 0, what="paho to take 16")
        for i in range(16, 28):  # ours: these wait
            tel.publish_event("front", "burst", {"i": i})
    finally:
        broker.proc.send_signal(signal.SIGCONT)
    wait_until(lambda: len(watch.on("edge_semvc/front/events")) == 28, what="28 events")
    assert [e["i"] for e in watch.json_on("edge_semvc/front/events")] == list(range(28))
    assert tel.counters()["dropped_events"] == 0


def test_config_set_reaches_the_callback(broker, watchers, telemetries):
    """Every config/set message reaches the callback, with whether it was retained: refusing
    one (a retained command, an oversized payload) is the callback's, with its event."""
    received = []

    def on_set(camera, payload, retained):
        received.append((camera, payload, retained))
        if payload == b"boom":
            raise ValueError("the handler's own bug")  # must not end paho's thread

    pub = watchers(broker.port, topic="edge_semvc/#")
    # A retained command left on the broker is replayed to every new subscription.
    pub.client.publish("edge_semvc/front/config/set", b"stale", qos=1, retain=True)
    pub.wait_for("edge_semvc/front/config/set", what="the retained command stored")
    tel = telemetries(config(broker.port), on_config_set=on_set)
    wait_until(lambda: received == [("front", b"stale", True)], what="the replay, marked")

    pub.client.publish("edge_semvc/back/config/set", b"boom", qos=1)
    pub.client.publish("edge_semvc/front/config/set", b'{"qp": {"gain": 8}}', qos=1)
    pub.client.publish("edge_semvc/front/config/set", b"x" * 100_000, qos=1)  # too large
    pub.client.publish("edge_semvc/front/config/state", b"not a command", qos=1)
    wait_until(lambda: len(received) == 4, what="three more")
    assert received[1:] == [("back", b"boom", False), ("front", b'{"qp": {"gain": 8}}', False),
                            ("front", b"x" * 100_000, False)]
    assert tel.connected  # the raising handler did not stop the connection
    pub.client.publish("edge_semvc/front/config/set", b"again", qos=1)
    wait_until(lambda: len(received) == 5, what="a config/set after the handler raised")
    pub.client.publish("edge_semvc/front/config/set", b"", qos=1, retain=True)  # clear it


def test_config_state_is_retained(broker, watchers, telemetries):
    tel = telemetries(config(broker.port))
    tel.publish_config_state("front", {"record": {"segment_seconds": 60}})
    tel.publish_config_state("front", {"record": {"segment_seconds": 30}})  # the latest wins
    wait_until(lambda: tel.counters()["sent"] >= 2, what="states sent")
    late = watchers(broker.port)  # subscribes after the fact: gets the retained copies
    state = late.wait_for("edge_semvc/front/config/state")
    assert json.loads(state[-1]) == {"record": {"segment_seconds": 30}}
    assert all(retain for _, _, retain in late.on("edge_semvc/front/config/state"))
    assert late.on("edge_semvc/available")[0][2] is True  # availability is retained too


def test_home_assistant_discovery(broker, watchers, telemetries):
    """The ids name the box once (schema checks: tests/test_homeassistant.py)."""
    watch = watchers(broker.port, topic="homeassistant/#")
    telemetries(config(broker.port, home_assistant=True), cameras=["front"])
    topic = "homeassistant/sensor/edge_semvc/front_fps/config"
    doc = json.loads(watch.wait_for(topic)[0])
    assert doc["unique_id"] == "edge_semvc_front_fps"
    assert doc["state_topic"] == "edge_semvc/front/stats"
    assert doc["availability_topic"] == "edge_semvc/available"
    assert doc["value_template"] == "{{ value_json.fps }}"


# --- the broker misbehaves ---------------------------------------------------------------------

def test_last_will_when_the_process_is_killed(broker, watchers, tmp_path):
    """A client process killed with SIGKILL cannot say goodbye: the broker sends the will."""
    watch = watchers(broker.port, topic="edge_semvc/available")
    script = textwrap.dedent(f"""
        import sys, time
        from edge_semvc.serve.config import MqttConfig
        from edge_semvc.serve.telemetry import Telemetry
        tel = Telemetry(MqttConfig(enabled=True, host="127.0.0.1", port={broker.port},
                                   client_id="will-test"))
        while not tel.counters()["sent"]:
            time.sleep(0.02)
        print("online", flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout.readline().strip() == b"online"
        watch.wait_for("edge_semvc/available", lambda p: p == b"online")
        proc.kill()
        proc.wait(WAIT)
        watch.wait_for("edge_semvc/available", lambda p: p == b"offline", what="the last will")
    finally:
        proc.kill()
        proc.wait(WAIT)


def test_broker_down_at_start(broker_factory, watchers, telemetries):
    """Publishes return at once with no broker; what was queued arrives once it is up. The
    watcher's persistent session is made first, so it is subscribed the moment the broker
    starts, before the telemetry's reconnection (no race)."""
    broker = broker_factory()
    watch = watchers(broker.port, client_id="late-watcher", clean_session=False)
    watch.close()
    broker.stop()  # clean stop: the watcher's session and subscription are saved

    tel = telemetries(config(broker.port, queue_size=50), cameras=["front"])
    tel.publish_config_state("front", {"n": 1})
    publisher = threading.Thread(target=lambda: [
        tel.publish_stats("front", {"seq": i}) for i in range(200)] + [
        tel.publish_event("front", "started")])
    publisher.start()
    publisher.join(WAIT)
    assert not publisher.is_alive(), "publish_* blocked with the broker down"
    counts = tel.counters()
    assert not counts["connected"] and counts["queued"] == 50
    assert counts["dropped_stats"] == 151 and counts["dropped_events"] == 0  # 201 in, 50 kept

    broker.start()
    watch = watchers(broker.port, client_id="late-watcher", clean_session=False)
    watch.wait_for("edge_semvc/front/events", what="the event queued while down")
    stats = wait_until(lambda: len(watch.on("edge_semvc/front/stats")) >= 49 and
                       watch.json_on("edge_semvc/front/stats"), what="49 queued stats")
    assert [s["seq"] for s in stats] == list(range(151, 200))  # the newest, in order
    watch.wait_for("edge_semvc/front/config/state")
    watch.wait_for("edge_semvc/available", lambda p: p == b"online")


def test_broker_that_never_answers(telemetries):
    """A broker that accepts TCP but never answers CONNECT: publishes still return."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        tel = telemetries(config(silent.getsockname()[1], queue_size=10))
        done = threading.Event()

        def publish_many():
            for i in range(1000):
                tel.publish_stats("front", {"seq": i})
                tel.publish_event("front", "tick")
            done.set()
        threading.Thread(target=publish_many, daemon=True).start()
        assert done.wait(WAIT), "publish_* blocked on an unresponsive broker"
        counts = tel.counters()
        assert counts["queued"] == 10 and not counts["connected"]
        assert counts["dropped_stats"] == 1000 and counts["dropped_events"] == 990
        closer = threading.Thread(target=tel.close, kwargs={"timeout": 2})
        closer.start()
        closer.join(WAIT)
        assert not closer.is_alive(), "close() did not return"


def test_broker_killed_and_restarted(broker, watchers, telemetries):
    received = []
    tel = telemetries(config(broker.port), cameras=["front"],
                      on_config_set=lambda cam, payload, _: received.append((cam, payload)))
    tel.publish_config_state("front", {"record": {"dir": "/var/lib/edge-semvc"}})
    watch = watchers(broker.port)
    watch.wait_for("edge_semvc/front/config/state")
    wait_until(lambda: tel.counters()["connects"] == 1, what="first connection")

    broker.stop(signal.SIGKILL)  # no persistence saved: retained messages are gone
    wait_until(lambda: not tel.connected, what="the loss noticed")
    for i in range(5):
        tel.publish_stats("front", {"seq": i, "while": "down"})  # returns: queued
    broker.start()
    wait_until(lambda: tel.counters()["connects"] == 2, what="reconnection")

    late = watchers(broker.port)  # retained topics were re-published after the reconnect
    late.wait_for("edge_semvc/available", lambda p: p == b"online")
    assert json.loads(late.wait_for("edge_semvc/front/config/state")[0]) == {
        "record": {"dir": "/var/lib/edge-semvc"}}

    seq = iter(range(100, 10_000))
    # Stats resume: keep publishing (as the service would every interval) until one arrives.
    wait_until(lambda: tel.publish_stats("front", {"seq": next(seq)}) or
               any(s["seq"] >= 100 for s in late.json_on("edge_semvc/front/stats")),
               what="stats after the restart")
    # config/set works again: the subscription was renewed on the new connection
    late.client.publish("edge_semvc/front/config/set", b"{}", qos=1)
    wait_until(lambda: received == [("front", b"{}")], what="config/set after the restart")


# --- secrets -----------------------------------------------------------------------------------

SECRET = "s3cr3t-Pa55word"


def test_secrets_stay_secret(broker_factory, watchers, telemetries, monkeypatch):
    broker = broker_factory(passwords={"camera": SECRET, "ops": "ops-password"})
    monkeypatch.setenv("EDGE_SEMVC_TEST_MQTT_PASSWORD", SECRET)
    cfg = config(broker.port, username="camera", password_env="EDGE_SEMVC_TEST_MQTT_PASSWORD")
    watch = watchers(broker.port, auth=("ops", "ops-password"))
    tel = telemetries(cfg, cameras=["front"])
    wait_until(lambda: tel.connected, what="authenticated connection")  # the env var worked

    # a careless caller publishes its whole configuration, secrets included
    leaky = {"mqtt": {**MqttConfig(password=SECRET).__dict__, "tls": None},
             "rtsp_url": f"rtsp://admin:{SECRET}@10.0.0.5/stream", "token": "abc",
             "api_key": "", "note": "fine"}
    tel.publish_config_state("front", leaky)
    tel.publish_event("front", "config_applied", leaky)
    tel.publish_stats("front", {"source": f"rtsp://admin:{SECRET}@cam"})
    watch.wait_for("edge_semvc/front/stats")
    watch.wait_for("edge_semvc/front/events")
    state = json.loads(watch.wait_for("edge_semvc/front/config/state")[0])
    assert state["mqtt"]["password"] == "***" and state["token"] == "***"
    assert state["note"] == "fine" and state["api_key"] == ""
    with watch.lock:
        payloads = [p for _, p, _ in watch.messages]
    assert payloads and not any(SECRET.encode() in p for p in payloads)

    for text in (repr(cfg), repr(MqttConfig(password=SECRET)), repr(tel), str(cfg),
                 json.dumps(MqttConfig(password=SECRET).public_dict())):
        assert SECRET not in text
    assert "password='***'" in repr(MqttConfig(password=SECRET))


def test_missing_password_variable_is_a_config_error(monkeypatch):
    monkeypatch.delenv("EDGE_SEMVC_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match="EDGE_SEMVC_TEST_UNSET"):
        Telemetry(config(1883, password_env="EDGE_SEMVC_TEST_UNSET"))


@pytest.mark.parametrize("change, key", [
    ({"port": 0}, "mqtt.port"), ({"topic_prefix": "a/+/b"}, "mqtt.topic_prefix"),
    ({"topic_prefix": ""}, "mqtt.topic_prefix"), ({"stats_interval": 0}, "mqtt.stats_interval"),
    ({"password": "x", "password_env": "X"}, "mqtt.password"),
    ({"tls": MqttTlsConfig(ca_certs="/etc/ca.pem")}, "mqtt.tls.ca_certs"),
])
def test_config_validation_names_the_key(change, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        MqttConfig(**change).validate()


def test_bad_camera_names_and_disabled_mqtt():
    null = open_telemetry(MqttConfig(enabled=False))
    assert isinstance(null, NullTelemetry)
    null.publish_stats("front", {"fps": 1})
    null.close()
    with pytest.raises(ConfigError, match="camera name"):
        null.add_camera("front/back")


def test_unreadable_tls_files_are_a_config_error(tmp_path):
    cfg = config(1883, tls=MqttTlsConfig(enabled=True, ca_certs=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError, match="mqtt.tls"):
        Telemetry(cfg)


@pytest.mark.parametrize("host, tls, warned", [("192.0.2.1", False, True),
                                               ("192.0.2.1", True, False),
                                               ("127.0.0.1", False, False)])
def test_a_password_sent_in_clear_over_a_network_is_said(caplog, telemetries, host, tls,
                                                         warned):
    cfg = MqttConfig(enabled=True, host=host, port=1, password="s3cret", username="u",
                     tls=MqttTlsConfig(enabled=tls))
    with caplog.at_level(logging.WARNING, logger="edge_semvc"):
        telemetries(cfg).close(timeout=0.1)
    assert ("goes to 192.0.2.1 in clear" in caplog.text) == warned
    assert "s3cret" not in caplog.text
