"""`serve`'s HTTP endpoint and pages: a real service on a looped clip, read over HTTP (basic auth
from the environment), `/metrics` parsed by prometheus_client, the live fMP4 decoded by PyAV, the
camera page played in a real headless Chromium (frames advance, the overlay toggles and changes
the pixels where the QP map is negative or positive; past a long GOP's first seconds the picture
still moves). A slow reader of the live feed loses its own fragments, never the encoder's; each
frame's fragment leaves with it, end to end with the others."""
from __future__ import annotations

import base64
import io
import json
import re
import time
import urllib.error
import urllib.request

import av
import numpy as np
import pytest
from conftest import shared_file
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from test_serve import CLIP, needs_clip, service_log, start_service, stop, write_config
from test_telemetry import free_port, wait_until

from edge_semvc.encoders import get_encoder
from edge_semvc.encoders.base import EncoderSettings
from edge_semvc.errors import ConfigError
from edge_semvc.serve.config import HttpConfig
from edge_semvc.sinks import fmp4
from edge_semvc.sinks.base import StreamInfo
from edge_semvc.sinks.mse import END, QUEUE_FRAGMENTS, RESUME_ROOM, LiveFeed, MseOutput
from edge_semvc.sources import open_source

USER, PASSWORD = "viewer", "pa:ss w0rd"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def get(url: str, auth: str | None = AUTH, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except urllib.error.URLError:  # not listening (yet)
        return 0, b""


def slots_free(server) -> int:
    """How many of the web server's connection slots are free now."""
    taken = sum(1 for _ in iter(lambda: server._slots.acquire(blocking=False), False))
    for _ in range(taken):
        server._slots.release()
    return taken


def read_for(url: str, seconds: float, auth: str | None = AUTH) -> bytes:
    """What a streaming response sends in `seconds`."""
    request = urllib.request.Request(url, headers={"Authorization": auth} if auth else {})
    out = b""
    with urllib.request.urlopen(request, timeout=10) as r:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            out += r.read1(1 << 16)
    return out


def test_http_config_is_checked_and_credentials_come_from_the_environment():
    with pytest.raises(ConfigError, match="http.port"):
        HttpConfig(port=70000).validate()
    with pytest.raises(ConfigError, match="http.password_env"):
        HttpConfig(username_env="U").validate()
    cfg = HttpConfig(username_env="WEB_U", password_env="WEB_P").validate()
    assert cfg.credentials({"WEB_U": "a", "WEB_P": "b"}) == ("a", "b")
    with pytest.raises(ConfigError, match="WEB_P"):
        cfg.credentials({"WEB_U": "a"})  # a missing variable is never an open page
    assert HttpConfig().credentials({}) is None
    with pytest.raises(ConfigError, match="WEB_U.*':'"):  # no browser could log in as a:b
        cfg.credentials({"WEB_U": "a:b", "WEB_P": "c"})
    assert cfg.credentials({"WEB_U": "a", "WEB_P": "b:c"}) == ("a", "b:c")


def test_a_slow_reader_loses_its_own_fragments_never_blocks_the_feed():
    feed = LiveFeed()
    assert feed.subscribe() is None  # no stream yet
    feed.start(b"init", 'video/mp4; codecs="avc1.42E01E"')
    slow, fast = feed.subscribe(), feed.subscribe()
    assert feed.take_idr_request() and not feed.take_idr_request()  # one IDR for the joiners
    got = []
    for i in range(5 * QUEUE_FRAGMENTS):  # never blocks: the slow reader reads nothing
        feed.publish(b"f%d" % i, key=i % 30 == 0)
        got.append(fast.get(timeout=1))
    assert got[0] == b"init" and got[1] == b"f0"
    assert slow.dropped > 0 and slow.queue.qsize() == QUEUE_FRAGMENTS
    assert not feed.take_idr_request()  # a reader that reads nothing asks for nothing
    while slow.queue.qsize() > RESUME_ROOM + 1:
        slow.get(timeout=1)
    feed.publish(b"late", key=False)
    assert not feed.take_idr_request()  # not yet caught up
    slow.get(timeout=1)
    feed.publish(b"later", key=False)  # it resumes at a keyframe, not mid-GOP ...
    assert feed.take_idr_request()  # ... and, caught up, asks for one (once)
    feed.publish(b"still later", key=False)
    assert not feed.take_idr_request()
    while not slow.queue.empty():
        slow.get(timeout=1)
    feed.publish(b"key", key=True)
    assert slow.get(timeout=1) == b"key"
    feed.end()
    assert slow.get(timeout=1) is END and feed.subscribe() is None


def test_a_page_that_fell_behind_resumes_at_an_idr_it_asks_for_not_at_the_next_gop():
    """A browser that stopped reading for two seconds (a stalled network) and then reads
    again: with a GOP of 10 000 frames it would wait minutes for the next keyframe; it asks
    for an IDR once it has read half its queue, the run grants it (within the receivers'
    budget) on the next frame, and what it gets from there decodes."""
    from edge_semvc.sinks.base import Outputs

    src = open_source("demo://astronaut")  # 30 fps
    s = EncoderSettings(width=src.width, height=src.height, fps=src.fps,
                        time_base=src.time_base, tune="zerolatency", keyint=10_000,
                        global_headers=True)
    feed = LiveFeed()
    outputs = Outputs([MseOutput(feed)])
    idrs, reader, chunks, stall = [], None, [], range(5, 69)  # 64 frames unread: 4 lost
    with get_encoder("x264")(s) as enc:
        outputs.open(StreamInfo(s.width, s.height, s.fps, s.time_base, enc.codec,
                                enc.headers(), outputs.global_headers))
        for i, frame in enumerate(src.frames()):  # 90
            idr = outputs.wants_idr(frame.pts)
            idrs += [i] if idr else []
            outputs.write(enc.encode(frame, force_idr=idr))
            reader = reader or feed.subscribe()
            # it reads one fragment a frame, four once the network is back
            for _ in range(0 if i in stall else 1 if i < stall.stop else 4):
                if not reader.queue.empty():
                    chunks.append(reader.get(timeout=1))
    outputs.close()
    src.close()
    init, fragments = chunks[0], [c for c in chunks[1:] if c is not END]
    frames = [fragment_time(c)[0] // fragment_time(c)[1] for c in fragments]  # one frame each
    assert reader.dropped > 0 and frames[0] == 1  # its first IDR: the join
    gap = next(k for k in range(1, len(frames)) if frames[k] != frames[k - 1] + 1)
    resumed = frames[gap]
    # it read down to RESUME_ROOM, four fragments a frame from the end of the stall
    caught_up = stall.stop + (QUEUE_FRAGMENTS - RESUME_ROOM) // 4
    assert idrs == [1, resumed]  # the join, the catch-up: nothing else
    assert caught_up <= resumed <= caught_up + 2 and fragment_key(fragments[gap])
    with av.open(io.BytesIO(init + b"".join(fragments[gap:]))) as c:
        pictures = list(c.decode(video=0))
    assert len(pictures) == len(fragments) - gap >= 10 and pictures[0].key_frame


def fragment_key(fragment: bytes) -> bool:
    """Whether a moof+mdat written by fmp4.fragment holds a sync sample (a keyframe)."""
    at = fragment.find(b"trun")
    return fragment.startswith(b"moof", 4) and fragment[at + 24:at + 28] == \
        fmp4.KEY_SAMPLE.to_bytes(4, "big")


def test_each_frame_s_fragment_leaves_with_it_and_the_fragments_lie_end_to_end():
    """The live picture's fragment of a frame is out when the encoder hands the frame over
    (FFmpeg's muxer held it until the next), and a frame the pipeline dropped leaves no hole in
    the media timeline (MSE would drop all up to the next keyframe) nor a frame stretched over
    it: the timeline falls behind by the dropped frames, and the overlay's times follow
    (`media_offset`)."""
    src = open_source("demo://astronaut")
    s = EncoderSettings(width=src.width, height=src.height, fps=src.fps,
                        time_base=src.time_base, tune="zerolatency", keyint=250,
                        global_headers=True)
    feed, dropped = LiveFeed(), range(10, 13)
    out, reader = MseOutput(feed), None
    chunks, offsets = [], []
    with get_encoder("x264")(s) as enc:
        out.open(StreamInfo(s.width, s.height, s.fps, s.time_base, enc.codec, enc.headers(), True))
        for i, frame in enumerate(src.frames()):
            if i == 30:
                break
            if i in dropped:
                continue
            for packet in enc.encode(frame, force_idr=out.wants_idr(frame.pts)):
                out.write(packet)
                offsets.append(feed.media_offset)
            reader = reader or feed.subscribe()  # joins after frame 0: frame 1 is its IDR
            got = []
            while not reader.queue.empty():
                got.append(reader.get(timeout=1))
            assert len(got) == 1  # the init segment, then each frame's fragment at once
            chunks += got
    src.close()
    out.close()
    interval = float(1 / s.fps)
    times, durations = zip(*(fragment_time(c) for c in chunks[1:]))
    assert len(times) == 26  # frames 1-29 but the 3 dropped
    assert all(times[i] + durations[i] == times[i + 1] for i in range(25))  # no hole
    assert len(set(durations)) == 1  # frame 13, after the 3 dropped, too
    assert offsets[9] == 0.0 and abs(offsets[10] + 3 * interval) < 1e-6
    assert abs(offsets[-1] + 3 * interval) < 1e-6
    with av.open(io.BytesIO(b"".join(chunks))) as c:
        pictures = list(c.decode(video=0))
    assert len(pictures) == 26 and pictures[0].key_frame


def test_an_hevc_camera_records_and_its_page_names_what_the_browser_cannot_play(
        tmp_path, chromium):
    """An HEVC encoder (x265 here; Jetson's and NVENC's too) feeds the page as 'hvc1' with its
    RFC 6381 codecs string: a browser with an HEVC decoder plays it, one without (this
    Chromium) says so on the page, and the camera records either way (the page once stopped it:
    the output refused HEVC and the run retried forever)."""
    needs_clip()
    ok, why = get_encoder("x265").available()
    if not ok:
        pytest.skip(f"x265 unavailable: {why}")
    from edge_semvc.bench.browser import Browser

    port = free_port()
    config = write_config(tmp_path, {"front": {"input": f"file://{CLIP}", "loop": True}})
    config.write_text(config.read_text() + "http: {enabled: true, port: %d}\n"
                      "encoder: {tune: zerolatency, backend: x265}\n" % port)
    base = f"http://127.0.0.1:{port}"
    proc = start_service(config)
    try:
        wait_until(lambda: proc.poll() is not None or json.loads(
            get(base + "/api/stats", auth=None)[1] or b"{}").get("front", {}).get("frames"),
            timeout=120, what="frames recorded")
        live = read_for(base + "/api/cameras/front/live.mp4", 2.0, auth=None)
        with av.open(io.BytesIO(live)) as c:
            assert c.streams.video[0].codec_context.name == "hevc"
            assert len(list(c.decode(video=0))) >= 10
        with Browser(chromium) as browser:
            browser.open(base + "/cameras/front")
            shown = browser.wait_for("(e => e && e.textContent.includes('cannot play') && "
                                     "e.textContent)(document.getElementById('name'))")
        assert re.search(r'codecs="hvc1\.1\.6\.L\d+\.[0-9A-F.]+"', shown), shown
    finally:
        code = stop(proc)
    assert code == 0 and "sink_error" not in service_log(config), service_log(config)


def test_a_gop_longer_than_the_browser_s_buffer_restarts_the_stream_not_the_picture(
        tmp_path, chromium):
    """A browser evicts played video a whole GOP at a time; with none ending (keyint 1000,
    intra refresh) its buffer fills (1 MB here, about 150 MB in a desktop Chrome) and appending
    fails. The page then starts the stream again, which the server begins at an IDR, and the
    picture goes on."""
    from edge_semvc.bench.browser import Browser

    street = shared_file("data", "video", "street_pedestrians_vtest_768x576.avi")
    port = free_port()
    config = write_config(tmp_path, {"front": {"input": f"file://{street}", "loop": True}},
                          segment_seconds=600)  # a segment starts at an IDR
    config.write_text(config.read_text() + "http: {enabled: true, port: %d}\n"
                      "encoder: {tune: zerolatency, keyint: 1000, bitrate: 2000000, "
                      "params: {scenecut: 0}}\n" % port)
    proc = start_service(config)
    try:
        wait_until(lambda: proc.poll() is not None or get(
            f"http://127.0.0.1:{port}/api/stats", auth=None)[0] == 200, timeout=120,
            what="the HTTP endpoint")
        with Browser(chromium, flags=("--mse-video-buffer-size-limit-mb=1",)) as browser:
            browser.open(f"http://127.0.0.1:{port}/cameras/front")
            browser.wait_for("window.edgeSemvc && window.edgeSemvc.streams() >= 2", timeout=90)
            shown = browser.wait_for("window.edgeSemvc.shown()")
            time.sleep(3)
            assert browser.evaluate("window.edgeSemvc.shown()") > shown + 15  # of 30
    finally:
        assert stop(proc) == 0, service_log(config)


def test_receivers_get_a_burst_of_idrs_then_one_a_second_a_recording_segment_always(tmp_path):
    """A page reconnecting on every frame (a broken or hostile client) asks for an IDR each
    time: the run grants a burst of three, then one a second of stream time (every IDR it asks
    for counts), never every frame of every output; a recording segment's IDR is never held
    back. With an encoder that holds frames (lookahead, B-frames) a request is answered once."""
    storm = idrs_asked(tmp_path / "storm", "zerolatency", joins=range(90))
    assert storm == [0, 1, 2, 30, 60]  # 60: the recording's second segment
    assert idrs_asked(tmp_path / "delayed", "", joins=[30]) == [0, 31, 60]


def idrs_asked(folder, tune: str, joins) -> list[int]:
    """The frames (of 90, 30 fps) the run made IDRs, a page joining after each frame in
    `joins`, beside a recording of 2-s segments."""
    from edge_semvc.sinks.base import Outputs
    from edge_semvc.sinks.config import RecordConfig
    from edge_semvc.sinks.segments import SegmentOutput

    folder.mkdir()
    src = open_source("demo://astronaut")  # 30 fps
    s = EncoderSettings(width=src.width, height=src.height, fps=src.fps,
                        time_base=src.time_base, tune=tune, keyint=10_000)
    feed = LiveFeed()
    outputs = Outputs([MseOutput(feed),
                       SegmentOutput(RecordConfig(dir=str(folder), segment_seconds=2.0), "cam")])
    idrs = []
    with get_encoder("x264")(s) as enc:
        outputs.open(StreamInfo(s.width, s.height, s.fps, s.time_base, enc.codec,
                                enc.headers(), outputs.global_headers))
        for i, frame in enumerate(src.frames()):
            if i == 90:
                break
            idr = outputs.wants_idr(frame.pts)
            idrs += [i] if idr else []
            outputs.write(enc.encode(frame, force_idr=idr))
            if i in joins:
                assert feed.subscribe() is not None
        outputs.write(enc.flush())
    outputs.close()
    src.close()
    return idrs


def fragment_time(fragment: bytes) -> tuple[int, int]:
    """(tfdt, the one sample's duration) of a moof+mdat written by fmp4.fragment."""
    at = fragment.find(b"tfdt")
    decode_time = int.from_bytes(fragment[at + 8:at + 16], "big")
    at = fragment.find(b"trun")
    return decode_time, int.from_bytes(fragment[at + 16:at + 20], "big")


def test_web_endpoint_and_camera_page_in_chromium(tmp_path, monkeypatch, chromium):
    needs_clip()
    from edge_semvc.bench.browser import Browser

    monkeypatch.setenv("WEB_USER", USER)
    monkeypatch.setenv("WEB_PASSWORD", PASSWORD)
    port = free_port()
    config = write_config(
        tmp_path, {"front": {"input": f"file://{CLIP}", "loop": True}},
        mqtt={"password": "mqtt-s3cret"})
    config.write_text(config.read_text() + (
        "http: {enabled: true, port: %d, stats_interval: 0.5, username_env: WEB_USER, "
        "password_env: WEB_PASSWORD}\n"
        # one IDR when the page joins, then none while the test runs
        "encoder: {tune: zerolatency, keyint: 1000, params: {scenecut: 0}}\n" % port))
    base = f"http://127.0.0.1:{port}"
    proc = start_service(config)
    try:
        wait_until(lambda: proc.poll() is not None or get(base + "/api/stats")[0] == 200,
                   timeout=120, what="the HTTP endpoint")
        # credentials: none or wrong ones are refused
        assert get(base + "/api/stats", auth=None)[0] == 401
        assert get(base + "/api/stats", auth="Basic " + base64.b64encode(b"viewer:x").decode()
                   )[0] == 401
        assert get(base + "/api/cameras/nope/live.mp4")[0] == 404
        assert get(base + "/cameras/front/")[0] == 404  # its page would read no camera name
        head = urllib.request.Request(base + "/", method="HEAD", headers={"Authorization": AUTH})
        with urllib.request.urlopen(head, timeout=10) as r:  # uptime checks ask HEAD
            assert r.status == 200 and int(r.headers["Content-Length"]) > 0 and r.read() == b""
        stats = wait_until(lambda: (lambda s: s if s.get("front", {}).get("frames") else None)(
            json.loads(get(base + "/api/stats")[1])), timeout=120, what="frames in /api/stats")
        assert stats["front"]["state"] == "running" and "latency_ms" in stats["front"]
        status, body = get(base + "/api/config")
        assert status == 200 and b"mqtt-s3cret" not in body
        effective = json.loads(body)
        assert effective["http"]["port"] == port and effective["mqtt"]["password"] == "***"
        assert effective["cameras"]["front"]["input"] == f"file://{CLIP}"
        # the live picture: the encoder's packets as fMP4, decodable from its first bytes
        live = read_for(base + "/api/cameras/front/live.mp4", 3.0)
        with av.open(io.BytesIO(live)) as c:
            frames = [f for f in c.decode(video=0)]
        assert len(frames) >= 20 and frames[0].key_frame
        assert (frames[0].width, frames[0].height) == (176, 144)
        # the page, in a real browser
        with Browser(chromium, 700, 700) as browser:
            browser.open(base + "/", headers={"Authorization": AUTH})
            assert browser.wait_for("document.querySelectorAll('#cameras a').length") == 1
            browser.open(base + "/cameras/front", headers={"Authorization": AUTH})
            first = browser.wait_for("window.edgeSemvc && window.edgeSemvc.frames() > 10 && "
                                     "window.edgeSemvc.frames()", timeout=90)
            later = browser.wait_for(f"window.edgeSemvc.frames() > {first + 15} && "
                                     "window.edgeSemvc.frames()", timeout=60)
            assert later > first  # frames advance
            # what was played stays buffered until the browser evicts it: removing a range
            # also removes the frames after it up to the next keyframe (the picture froze)
            browser.wait_for("(v => v.buffered.length && v.currentTime - v.buffered.start(0)"
                             " > 12)(document.getElementById('video'))", timeout=60)
            shown = browser.evaluate("window.edgeSemvc.shown()")
            time.sleep(2)
            assert browser.evaluate("window.edgeSemvc.shown()") > shown + 20
            browser.wait_for("document.querySelector('#figures').textContent"
                             ".includes('frames per second')")
            check_overlay_toggles(browser)
        metrics = metric_values(get(base + "/metrics")[1].decode())
    finally:
        code = stop(proc)
    assert code == 0, service_log(config)
    assert metrics[("edge_semvc_frames_total", "front")] > 0
    assert ("edge_semvc_latency_seconds_bucket", "front") in metrics
    assert ("edge_semvc_label_coverage_ratio", "front") in metrics
    assert metrics[("edge_semvc_camera_state", "front")] == 1  # the running one


def check_overlay_toggles(browser) -> None:
    """Freeze the picture, screenshot with the QP map on and off: where the map is negative the
    overlay adds blue, where positive red; the label outlines toggle too."""
    browser.evaluate("document.getElementById('freeze').click()")
    time.sleep(0.5)
    assert browser.evaluate("document.getElementById('video').paused")
    drawn = browser.wait_for("window.edgeSemvc.overlay()")
    assert drawn["qp"] and drawn["labels"]
    qp = np.asarray(drawn["map"]["qp"]).reshape(drawn["map"]["h"], drawn["map"]["w"])
    box = browser.evaluate("(() => { const v = document.getElementById('video'); "
                           "const r = v.getBoundingClientRect(); "
                           "return [r.left, r.top, r.width / v.videoWidth]; })()")
    on = screenshot(browser)
    browser.evaluate("document.getElementById('show-qp').click()")
    time.sleep(0.3)
    off = screenshot(browser)
    browser.evaluate("document.getElementById('show-labels').click()")
    time.sleep(0.3)
    bare = screenshot(browser)
    assert browser.evaluate("window.edgeSemvc.overlay()")["qp"] is False
    left, top, scale = box  # CSS pixels per picture pixel
    ys, xs = np.mgrid[0:qp.shape[0], 0:qp.shape[1]]
    px = (left + (xs * 16 + 8) * scale).astype(int)
    py = (top + (ys * 16 + 8) * scale).astype(int)
    diff = on[py, px].astype(int) - off[py, px].astype(int)  # [mb_h, mb_w, rgb]
    assert (qp < 0).any() and (qp > 0).any(), qp
    assert diff[qp < 0][:, 2].mean() > 20  # more bits: tinted blue
    assert diff[qp > 0][:, 0].mean() > 20  # fewer bits: tinted red
    if (qp == 0).any():  # untouched where the map is 0
        assert np.abs(diff[qp == 0]).mean() < np.abs(diff[qp != 0]).mean()
    assert np.abs(off.astype(int) - bare.astype(int)).sum() > 0  # the label outlines went


def screenshot(browser) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB"))


def metric_values(text: str) -> dict:
    """{(sample name, camera): value}, the largest value where several samples share them."""
    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, s.labels.get("camera"))
            out[key] = max(out.get(key, float("-inf")), s.value)
    return out



def test_a_port_in_use_refuses_the_start(tmp_path):
    needs_clip()
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = write_config(tmp_path, {"front": {"input": f"file://{CLIP}", "loop": True}})
        config.write_text(config.read_text() + "http: {enabled: true, port: %d}\n"
                          % busy.getsockname()[1])
        r = subprocess.run([sys.executable, "-m", "edge_semvc", "serve", "--config",
                            str(config)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "http.port" in r.stderr and "in use" in r.stderr
    assert not list((tmp_path / "rec").glob("front/*.ts"))  # no camera ran


def test_connections_beyond_the_cap_are_answered_busy_and_the_slots_come_back(monkeypatch,
                                                                               tmp_path, capfd):
    """Each connection holds a thread (up to IDLE_S when it sends nothing): past
    MAX_CONNECTIONS the endpoint answers 503 and closes, and a slot is free again once its
    connection ends, or when its headers are not whole within REQUEST_S (a slow client)."""
    import socket

    from edge_semvc.serve import web
    from edge_semvc.serve.config import RecordConfig, ServeConfig

    monkeypatch.setattr(web, "MAX_CONNECTIONS", 3)
    cfg = ServeConfig(cameras={"front": "demo://astronaut"}, record=RecordConfig(str(tmp_path)),
                      http=HttpConfig(enabled=True, port=0)).validate()
    view = web.WebView(cfg, {}, {}).start()
    url = f"http://127.0.0.1:{view.port}/api/stats"
    try:
        idle = [socket.create_connection(("127.0.0.1", view.port)) for _ in range(3)]
        for s in idle:  # each holds its slot once the server has accepted it
            s.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never end
        wait_until(lambda: get(url, auth=None)[0] == 503, timeout=30,
                   what="a connection past the cap answered busy")
        assert get(url, auth=None) == (503, b"too many clients\r\n")
        for s in idle:
            s.close()
        wait_until(lambda: get(url, auth=None)[0] == 200, timeout=30,
                   what="the slots free again")
        # the answered request's thread gives its slot back just after the answer is read
        wait_until(lambda: slots_free(view.server) == 3, timeout=30, what="every slot free")
        monkeypatch.setattr(web, "REQUEST_S", 0.5)
        slow = [socket.create_connection(("127.0.0.1", view.port)) for _ in range(3)]
        for s in slow:
            s.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            s.settimeout(30)
            assert s.recv(100) == b""  # shut by the server, the headers still unfinished
        wait_until(lambda: get(url, auth=None)[0] == 200, timeout=30,
                   what="the slow clients' slots free again")
    finally:
        view.close()
    assert "Traceback" not in capfd.readouterr().err  # clients that left are not our errors
