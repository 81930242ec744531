"""What `edge-semvc serve` refuses at its start (exit 2, one line, before anything runs):
a service file that cannot work, a missing record.dir (an unmounted disk), a web page that
cannot start (before MQTT hears of the service); `models prepare` reading a service file; and a
camera's password, which nothing the service says may show."""
from __future__ import annotations

import socket

import pytest
import yaml
from test_serve import ROOT, service_log, start_service, with_broker, write_config
from test_telemetry import Watcher, free_port, wait_until

BAD_SERVICE_FILES = [  # (YAML, what the one line names): none may start and loop on errors
    ("cameras: {cam: {input: 123}}", "cameras.cam.input: 123"),
    ("cameras: {cam: [1, 2]}", "cameras.cam: [1, 2]"),
    ("cameras: {cam: 7}", "cameras.cam: 7"),
    ("cameras: {cam: {input: null}}", "cameras.cam.input: None"),
    ('cameras: {"a\\nb": {input: demo://astronaut}}', "cameras: 'a\\nb'"),
    (f"cameras: {{{'c' * 300}: {{input: demo://astronaut}}}}", "cameras: 'cccc"),
    ('cameras: {"../up": {input: demo://astronaut}}', "cameras: '../up'"),
    ('cameras: {".hidden": {input: demo://astronaut}}', "cameras: '.hidden'"),
    ("cameras: {cam: {input: 'gopher://host/x'}}", "cameras.cam.input: 'gopher://host/x'"),
    ("cameras: {cam: {input: '-'}}", "a service has no standard input"),
    ("cameras: {cam: {input: 'udp://@:70000'}}",
     "cameras.cam.input: input 'udp://@:70000': its port '70000' is not one of 1-65535"),
    ("cameras: {cam: {input: 'rtp://@:5600?codec=vp8'}}", "codec 'vp8' is not one of h264, hevc"),
    ("cameras: {a: {input: 'rtp://@:5600'}, b: {input: 'udp://@:5601'}}",
     "cameras.b.input: 'udp://@:5601' (expected a port of its own: cameras.a.input listens on "
     "udp port 5601)"),
    # an output into a camera's input (another camera's), a server on a camera's input port
    ("cameras: {a: {input: 'udp://@:19130'}, b: {input: demo://astronaut, outputs: "
     "['udp://127.0.0.1:19130']}}", "input 'udp://@:19130' and output 'udp://127.0.0.1:19130' "
     "both use UDP port 19130 of this machine (127.0.0.1): give each its own"),
    ("cameras: {a: {input: 'srt://@:19131', outputs: ['srt://@:19131?mode=listener']}}",
     "input 'srt://@:19131' and output 'srt://@:19131?mode=listener' both use UDP port 19131"),
    # a long password: the URI's password hidden before it is cut short (the '@' cut away)
    (f"cameras: {{cam: {{input: 'rstp://admin:{'k8Jd92nF' * 8}@cam.lan/h264'}}}}",
     "cameras.cam.input: 'rstp://admin:***@cam.lan/h264'"),
    ('cameras: {cam: {input: "file:///x\\n"}}', "cameras.cam.input"),
    ("cameras: {cam: {input: demo://astronaut, loop: 'yes'}}", "cameras.cam.loop: 'yes'"),
    ("cameras: {cam: {input: demo://astronaut, queue_frames: '2'}}",
     "cameras.cam.queue_frames: '2'"),
    ("record: {segment_seconds: '60'}", "record.segment_seconds: '60'"),
    ("record: {segment_seconds: 1:30}", "record.segment_seconds: '1:30'"),
    ("qp: {q_gain: 1e308}", "qp.q_gain: 1e+308"),
    ("analysis: {change_full_mad: 1e-300}", "analysis.change_full_mad: 1e-300"),
    ("fusion: {description: 123}", "fusion.description: 123"),
    ("mqtt: {port: '1883'}", "mqtt.port: '1883'"),
    ("record: {max_bytes: " + "9" * 50 + "}", "a number of 50 characters"),
    ("qp: {importance: {[a]: 1}}", "a key must be a name"),
]


@pytest.mark.parametrize("text, named", BAD_SERVICE_FILES)
def test_a_service_file_that_cannot_work_exits_2_with_one_line(tmp_path, capsys, text, named):
    from edge_semvc.cli import main

    rec = tmp_path / "rec"
    rec.mkdir()
    if "cameras:" not in text:  # the rest of a file that works
        text += "\ncameras: {cam: {input: 'demo://astronaut'}}"
    if "record:" in text:
        text = text.replace("record: {", f"record: {{dir: '{rec}', ")
    else:
        text += f"\nrecord: {{dir: '{rec}'}}"
    path = tmp_path / "serve.yml"
    path.write_text(text + "\n")
    assert main(["serve", "--config", str(path), "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edge-semvc: error: "), err
    assert named in err, err


@pytest.mark.parametrize("password", ["20261207", "[S3cretA, S3cretB]", "{pin: 4711}"])
def test_a_password_of_the_wrong_type_is_refused_without_quoting_it(tmp_path, capsys, password):
    """`mqtt.password: 20261207` (YAML reads a number) is refused, and the one line that goes
    to the journal names the key, not the password."""
    from edge_semvc.cli import main

    rec = tmp_path / "rec"
    rec.mkdir()
    path = tmp_path / "serve.yml"
    path.write_text(f"cameras: {{cam: {{input: 'demo://astronaut'}}}}\nrecord: {{dir: '{rec}'}}\n"
                    f"mqtt: {{host: 127.0.0.1, password: {password}}}\n")
    assert main(["serve", "--config", str(path), "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert "mqtt.password: '***'" in err, err
    assert not [s for s in ("20261207", "S3cret", "4711") if s in err], err


@pytest.mark.parametrize("http", [{"username_env": "EDGE_SEMVC_UNSET_USER",
                                   "password_env": "EDGE_SEMVC_UNSET_PASSWORD"}, "port in use"])
def test_a_refused_start_tells_mqtt_nothing(tmp_path, http):
    """A web page that cannot start (a credential's variable unset, its port taken) refuses
    the start before the service connects: no availability, no retained discovery entities
    for Home Assistant of a service that never ran."""

    broker, config = with_broker(tmp_path)
    watcher = Watcher(broker.port, "#")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1] if http == "port in use" else free_port()
    doc = yaml.safe_load(config.read_text())
    doc["mqtt"]["home_assistant"] = True
    doc["http"] = {"enabled": True, "host": "127.0.0.1", "port": port,
                   **(http if isinstance(http, dict) else {})}
    config.write_text(yaml.safe_dump(doc))
    try:
        proc = start_service(config, "--seconds", "1")  # what it published is in before it ends
        assert proc.wait(timeout=120) == 2 and "http." in service_log(config)
        watcher.client.publish("probe", b"1", qos=1).wait_for_publish(10)
        wait_until(lambda: any(m[0] == "probe" for m in watcher.messages), timeout=10,
                   what="the probe")
        assert [m[0] for m in watcher.messages] == ["probe"]
    finally:
        taken.close()
        broker.stop()


def test_a_missing_record_dir_refuses_the_start(tmp_path, capsys):
    """An unmounted disk: refused with one line, and not created on the root file system."""
    from edge_semvc.cli import main

    path = write_config(tmp_path, {"cam": {"input": "demo://astronaut"}})
    (tmp_path / "rec").rmdir()
    assert main(["serve", "--config", str(path), "--seconds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "record.dir" in err and "does not exist" in err, err
    assert not (tmp_path / "rec").exists()


def test_models_prepare_reads_a_service_configuration(capsys):
    """`make install-service` runs `models prepare --config /etc/edge-semvc/config.yml`: a file
    with `cameras:` is read as the service's configuration."""
    from edge_semvc.cli import main

    assert main(["models", "verify", "--config", str(ROOT / "systemd" / "config.example.yml")]) == 0
    assert "nanodet_g: ok" in capsys.readouterr().out


def test_a_cameras_password_is_shown_nowhere(tmp_path):
    """A camera URI with its password (there is no other place for an RTSP camera's): the
    events, the retained configuration, the web page's JSON and the log show '***'."""
    import json
    import urllib.request

    from test_serve import stop

    broker, config = with_broker(tmp_path)
    secret, camera_port, web_port = "S3cret-Pass", free_port(), free_port()
    doc = yaml.safe_load(config.read_text())
    doc["cameras"] = {"door": {"input": f"rtsp://bob:{secret}@127.0.0.1:{camera_port}/cam"}}
    doc["http"] = {"enabled": True, "host": "127.0.0.1", "port": web_port}
    config.write_text(yaml.safe_dump(doc))
    watcher = Watcher(broker.port, "edge_semvc/#")
    proc = start_service(config)
    try:
        lost = watcher.wait_for("edge_semvc/door/events",
                                lambda p: json.loads(p)["event"] == "source_lost",
                                what="source_lost")
        pages = [urllib.request.urlopen(f"http://127.0.0.1:{web_port}{path}", timeout=30).read()
                 for path in ("/api/config", "/api/stats")]
    finally:
        stop(proc)
        watcher.close()
        broker.stop()
    assert "rtsp://bob:***@127.0.0.1" in json.loads(lost[0])["input"]
    said = [p for _, p, _ in watcher.messages] + pages + [service_log(config).encode()]
    assert not [s for s in said if secret.encode() in s]
