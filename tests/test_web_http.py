"""`serve`'s HTTP endpoint against hostile and unlucky clients, on a WebView of its own (no
camera runs: the views and figures are set by hand): a burst of connections, a request with a
body, HEAD of the live picture, an event stream across a reload that removed and added its
camera, and in Chromium a page whose event stream was refused and the legend of the classes."""
from __future__ import annotations

import json
import logging
import select
import socket
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from test_web import get

from edge_semvc.serve import web
from edge_semvc.serve.config import HttpConfig, RecordConfig, ServeConfig


def web_view(tmp_path, views: dict | None = None) -> web.WebView:
    """An endpoint on a free port, not yet serving (`start()`)."""
    cfg = ServeConfig(cameras={"front": "demo://astronaut"}, record=RecordConfig(str(tmp_path)),
                      http=HttpConfig(enabled=True, port=0)).validate()
    return web.WebView(cfg, {}, views if views is not None else {})


def test_a_burst_of_connections_waits_to_be_accepted_then_each_is_answered(tmp_path):
    """200 page loads at once: the kernel holds the connections the server has not accepted
    yet (socketserver's backlog of 5 dropped the others' SYNs: they waited 30-60 s to
    connect); once served, each is answered, 200 or 503 past MAX_CONNECTIONS, none hangs."""
    view = web_view(tmp_path).listen()  # bound, not accepting yet
    burst = []
    try:
        for _ in range(web.MAX_CONNECTIONS + 36):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", view.port))
            burst.append(s)
        pending, deadline = set(burst), time.monotonic() + 10
        while pending and time.monotonic() < deadline:  # handshakes the kernel completed
            pending -= set(select.select([], list(pending), [], 0.5)[1])
        assert not pending, f"{len(pending)} of {len(burst)} connections not established"
        view.start()
        statuses = []
        for s in burst:
            s.setblocking(True)
            s.settimeout(30)
            s.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            statuses.append(s.recv(12))
        assert set(statuses) <= {b"HTTP/1.1 200", b"HTTP/1.1 503"} and b"HTTP/1.1 200" in statuses
    finally:
        for s in burst:
            s.close()
        view.close()


@pytest.mark.parametrize("body", [b"Content-Length: %d\r\n\r\n", b"Transfer-Encoding: chunked\r\n\r\n"])
def test_a_get_with_a_body_is_answered_once_and_its_body_is_never_a_request(tmp_path, body):
    """A GET may carry a body; unread, it was taken for the next request on the connection
    (smuggled past a reverse proxy, whose next client got its answer)."""
    view = web_view(tmp_path).start()
    inner = b"GET /api/config HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    if b"chunked" in body:
        inner = b"%x\r\n%s\r\n0\r\n\r\n" % (len(inner), inner)
    try:
        with socket.create_connection(("127.0.0.1", view.port), timeout=30) as s:
            s.sendall(b"GET /api/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      + (body % len(inner) if b"%d" in body else body) + inner)
            answer = b""
            while chunk := s.recv(1 << 16):  # the server closes the connection
                answer += chunk
    finally:
        view.close()
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.endswith(b"{}"), answer


def test_the_events_follow_a_camera_that_a_reload_removed_and_added_again(tmp_path, monkeypatch):
    """A reload that removes a camera and adds it back makes a new view: an open event stream
    (the page's) sends the new view's overlays, not the old one's last, drawn for good over
    the new picture."""
    def overlay(t: float) -> web.Overlay:
        return web.Overlay(t, time.time(), np.full((2, 3), -2.0, np.float32), None, ())

    monkeypatch.setattr(web, "KEEPALIVE_S", 0.0)  # a comment at each quiet tick: counted
    views = {"front": web.CameraView(live=False)}
    views["front"].overlay = overlay(5.0)
    view = web_view(tmp_path, views).start()
    request = urllib.request.Request(f"http://127.0.0.1:{view.port}/api/cameras/front/events")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            def next_overlay() -> float | None:  # None: 50 quiet ticks, no overlay
                quiet = 0
                for line in r:
                    if line.startswith(b"data: ") and b'"qp"' in line:
                        return json.loads(line[6:])["t"]
                    quiet += line.startswith(b": keep-alive")
                    if quiet == 50:
                        return None
                raise AssertionError("the event stream ended")

            assert next_overlay() == 5.0
            del views["front"]  # removed by one reload, added by the next
            for line in r:  # the page is told
                if line.startswith(b"event: "):
                    assert line == b"event: removed\n"
                    break
            views["front"] = web.CameraView(live=False)
            views["front"].overlay = overlay(0.5)
            assert next_overlay() == 0.5
    finally:
        view.close()


def test_the_page_s_figures_come_once_a_live_reader_s_slot_frees(tmp_path, chromium):
    """A page opened while the live readers are at their cap gets 503 for its event stream:
    EventSource gives up on an answer that is not 200, so the page tries again itself (its
    figures and overlay never came until it was reloaded by hand)."""
    from edge_semvc.bench.browser import Browser
    view = web_view(tmp_path, {"front": web.CameraView(live=False)}).start()
    view.figures = {"front": web.Figures({"state": "running", "fps": 30.0}, {})}
    base = f"http://127.0.0.1:{view.port}"
    try:
        for _ in range(web.MAX_STREAMS):  # every live reader's slot taken
            view._streams.acquire()
        with Browser(chromium) as browser:
            browser.open(base + "/cameras/front")
            # a resource entry once the answer is whole: the refusal (a stream is never whole)
            browser.wait_for("performance.getEntriesByType('resource').some(e => "
                             "e.name.endsWith('/events'))", timeout=30)
            for _ in range(web.MAX_STREAMS):
                view._streams.release()
            browser.wait_for("document.querySelector('#figures').textContent"
                             ".includes('frames per second')", timeout=30)
    finally:
        view.close()


def test_head_of_a_live_picture_says_what_a_get_would(tmp_path):
    """An uptime check that asks HEAD of the live picture: 503 while no stream runs (it was 200
    with an empty octet-stream whatever the camera did), the stream's type once one does."""
    def head(path: str) -> tuple[int, str]:
        request = urllib.request.Request(base + path, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, r.headers["Content-Type"]
        except urllib.error.HTTPError as e:
            return e.code, e.headers["Content-Type"]

    views = {"front": web.CameraView(live=True), "off": web.CameraView(live=False)}
    view = web_view(tmp_path, views).start()
    base = f"http://127.0.0.1:{view.port}"
    try:
        assert head("/api/cameras/front/live.mp4")[0] == 503  # no run yet
        assert head("/api/cameras/off/live.mp4")[0] == 503  # http.live off
        assert get(base + "/api/cameras/front/live.mp4")[0] == 503  # as GET says
        mime = 'video/mp4; codecs="avc1.42E01E"'
        views["front"].feed.start(b"init", mime)
        assert head("/api/cameras/front/live.mp4") == (200, mime)
        assert head("/api/cameras/front/events") == (200, "text/event-stream")
        views["front"].feed.end()  # the run ended
        assert head("/api/cameras/front/live.mp4")[0] == 503
    finally:
        view.close()


def test_the_page_names_the_class_of_each_outline_colour(tmp_path, chromium):
    """The labelled regions are outlined in a colour per class: the page says which is which
    (label l is classes[l], outlined in camera.js's PALETTE[l - 1])."""
    from edge_semvc.bench.browser import Browser
    views = {"front": web.CameraView(live=False)}
    views["front"].overlay = web.Overlay(0.0, time.time(), np.zeros((2, 3), np.float32),
                                         np.array([[0, 1, 2], [2, 1, 0]], np.int16),
                                         ("background", "person", "face"))
    view = web_view(tmp_path, views).start()
    try:
        with Browser(chromium) as browser:
            browser.open(f"http://127.0.0.1:{view.port}/cameras/front")
            legend = browser.wait_for(
                "(l => l && l.textContent.includes('face') && [l.textContent, "
                "[...l.children].map(s => getComputedStyle(s).backgroundColor)])"
                "(document.getElementById('classes'))", timeout=30)
    finally:
        view.close()
    text, colours = legend
    assert text.split() == ["person", "face"]  # not the background, which has no outline
    assert colours == ["rgb(255, 212, 0)", "rgb(255, 0, 200)"]  # PALETTE[0], PALETTE[1]


def test_a_host_name_a_web_site_could_point_at_127_0_0_1_is_refused(tmp_path, monkeypatch):
    """DNS rebinding: a web site whose name the user's browser resolves to 127.0.0.1 sends its
    own name as Host. Without credentials only an address, localhost, this machine's name and
    http.allowed_hosts are served; with credentials the browser has none to send anyway."""
    def status(view, host: str, path: str = "/api/config") -> int:
        with socket.create_connection(("127.0.0.1", view.port), timeout=30) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                      .encode())
            return int(s.recv(12).split()[1])

    view = web_view(tmp_path).start()
    view.cfg.http.allowed_hosts = ["cam.lan"]
    try:
        got = {h: status(view, h) for h in ("attacker.example", f"attacker.example:{view.port}",
                                            f"127.0.0.1:{view.port}", f"[::1]:{view.port}",
                                            "localhost.", "CAM.lan:80", socket.gethostname())}
        scraped = status(view, "prometheus.example", "/metrics")  # figures only: by any name
    finally:
        view.close()
    assert got == {"attacker.example": 403, f"attacker.example:{view.port}": 403,
                   f"127.0.0.1:{view.port}": 200, f"[::1]:{view.port}": 200, "localhost.": 200,
                   "CAM.lan:80": 200, socket.gethostname(): 200}, got
    assert scraped == 200
    monkeypatch.setenv("WEB_U", "u")
    monkeypatch.setenv("WEB_P", "p")
    cfg = ServeConfig(cameras={"front": "demo://astronaut"}, record=RecordConfig(str(tmp_path)),
                      http=HttpConfig(enabled=True, port=0, username_env="WEB_U",
                                      password_env="WEB_P")).validate()
    view = web.WebView(cfg, {}, {}).start()
    try:
        assert status(view, "attacker.example") == 401  # asked for credentials, as anyone
    finally:
        view.close()


def test_no_other_site_frames_the_page_and_no_browser_guesses_a_type(tmp_path):
    view = web_view(tmp_path, {"front": web.CameraView(live=False)}).start()
    try:
        for path in ("/", "/cameras/front", "/api/config", "/nothing"):
            with socket.create_connection(("127.0.0.1", view.port), timeout=30) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close"
                          "\r\n\r\n".encode())
                head = s.makefile("rb").read().split(b"\r\n\r\n")[0].lower()
            assert b"x-frame-options: deny" in head and \
                b"x-content-type-options: nosniff" in head, (path, head)
    finally:
        view.close()


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 in this Python")
def test_an_ipv6_address_to_listen_on_is_listened_on(tmp_path):
    """`http.host: "::1"` (or `::`, every interface) was refused at the start: 'cannot listen
    on ::1:PORT (Address family for hostname not supported)', the server being IPv4 only."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    cfg = ServeConfig(cameras={"front": "demo://astronaut"}, record=RecordConfig(str(tmp_path)),
                      http=HttpConfig(enabled=True, host="::1", port=0)).validate()
    view = web.WebView(cfg, {}, {}).start()
    try:
        with socket.create_connection(("::1", view.port), timeout=30) as s:
            s.sendall(f"GET /api/config HTTP/1.1\r\nHost: [::1]:{view.port}\r\n"
                      "Connection: close\r\n\r\n".encode())
            assert s.recv(12) == b"HTTP/1.1 200"
    finally:
        view.close()


def test_the_page_says_why_there_is_no_picture(tmp_path, chromium):
    """With `http.live: false`, or a camera that is not running, the page showed a black box
    and nothing else: it now says why (the live picture's refusal, the camera's state and
    error from its stats), and nothing once the picture plays."""
    from edge_semvc.bench.browser import Browser
    views = {"off": web.CameraView(live=False), "down": web.CameraView(live=True)}
    view = web_view(tmp_path, views).start()
    view.figures = {"off": web.Figures({"state": "running", "error": None}, {}),
                    "down": web.Figures({"state": "lost", "error": "input file not found: "
                                         "/cam.mp4"}, {})}
    said = "(e => e && e.offsetHeight && e.textContent)(document.getElementById('why'))"
    try:
        with Browser(chromium) as browser:
            browser.open(f"http://127.0.0.1:{view.port}/cameras/off")
            off = browser.wait_for(f"(t => t && t.includes('http.live') && t)({said})", 30)
            browser.open(f"http://127.0.0.1:{view.port}/cameras/down")
            down = browser.wait_for(f"(t => t && t.includes('camera lost') && t)({said})", 30)
    finally:
        view.close()
    assert off == "no live picture: http.live is off"
    assert down == ("no live picture now: the camera is not running. camera lost: input file "
                    "not found: /cam.mp4")


@pytest.mark.parametrize("host, warned", [("0.0.0.0", True), ("127.0.0.1", False),
                                          ("localhost", False)])
def test_a_page_open_to_the_network_without_credentials_is_said(tmp_path, caplog, host,
                                                                  warned):
    cfg = ServeConfig(cameras={"front": "demo://astronaut"}, record=RecordConfig(str(tmp_path)),
                      http=HttpConfig(enabled=True, host=host, port=0)).validate()
    with caplog.at_level(logging.WARNING, logger="edge_semvc"):
        view = web.WebView(cfg, {}, {}).start()
        view.close()
    assert ("sees every camera's live picture" in caplog.text) == warned
