"""`serve`'s HTTP endpoint (`http:`): `/api/stats`, `/metrics`, `/api/config`, a page listing
the cameras and a page per camera with its live picture, QP-map and label overlay and figures.

The standard library's threading HTTP server, in threads of its own: nothing here runs in a
camera's frame loop but `CameraView.frame` (keeps a reference to the frame's maps) and the
`MseOutput` writing the encoder's packets as fragments (sinks/mse.py). The figures are values:
the supervisor calls `WebView.refresh` every `http.stats_interval` s, which makes each camera's
stats snapshot (the MQTT stats message's shape, serve/stats.py) and a copy of its latency
windows; requests only read the latest of those. Streams per camera:

    /api/cameras/NAME/live.mp4   fragmented MP4 (init segment, then one fragment per frame) for
                                 the page's Media Source Extensions; Content-Type carries the codec
    /api/cameras/NAME/events     server-sent events: `overlay` (the newest frame's QP offsets and
                                 labels per macroblock, at most OVERLAY_HZ a second), `stats`
                                 and `removed` (a reload took the camera out; the stream goes
                                 on when it is added back)

Credentials: `http.username_env`/`password_env` name environment variables; then every request
needs HTTP basic auth with them (checked in constant time).
"""
from __future__ import annotations

import base64
import dataclasses
import hmac
import ipaddress
import json
import logging
import queue
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Callable

import numpy as np

from ..sinks.mse import END, LiveFeed
from ..uris import hide_passwords, is_loopback
from .camera import Camera
from .config import ServeConfig
from .stats import Carried, CpuMeter, StatsWindow

log = logging.getLogger("edge_semvc")
OVERLAY_HZ = 10.0  # overlay messages per second and reader at most
KEEPALIVE_S = 10.0  # a comment line on quiet event streams (proxies close idle ones)
IDLE_S = 30.0  # socket timeout of each connection (a request that never comes, a reader gone)
REQUEST_S = 10.0  # a request's line and headers, whole (trickled ones would hold a slot)
MAX_STREAMS = 32  # concurrent live.mp4 and events readers; more get 503
MAX_CONNECTIONS = 64  # open connections (a thread each); more are answered 503 and closed
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 18\r\nConnection: close\r\n\r\ntoo many clients\r\n")
NO_LIVE = b"no live picture now: the camera is not running\n"
LIVE_OFF = b"no live picture: http.live is off\n"  # the page shows these (camera.js)
PAGES = {"/": "index.html", "/camera.js": "camera.js"}
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


@dataclass(frozen=True)
class Overlay:
    """The newest frame's maps, as the pipeline handed them (values, never changed after)."""

    t: float  # the frame's presentation time in the stream, seconds (message(): the page's)
    wall: float  # when the pipeline handed it over (time.time(): the page's latency figure)
    offsets: np.ndarray  # QpMap.offsets, float32[mb_h, mb_w]
    labels: np.ndarray | None  # LabelMap.labels, int16[mb_h, mb_w]
    classes: tuple[str, ...]

    def message(self, media_offset: float = 0.0) -> dict:
        """`media_offset`: the live picture's media time minus stream time (LiveFeed), so the
        page finds the frame by its currentTime."""
        h, w = self.offsets.shape
        labels = self.labels if self.labels is not None and self.labels.shape == (h, w) else None
        return {"t": round(self.t + media_offset, 4), "wall": round(self.wall, 4), "w": w, "h": h,
                "qp": np.round(self.offsets.astype(float), 1).ravel().tolist(),
                "labels": labels.astype(int).ravel().tolist() if labels is not None else [],
                "classes": list(self.classes)}


class CameraView:
    """What the web shows of one camera: its live feed and its newest overlay."""

    def __init__(self, live: bool):
        self.feed = LiveFeed() if live else None
        self.overlay: Overlay | None = None

    def frame(self, frame, labels, qp) -> None:
        """Called in the camera's thread per frame: one reference kept, nothing computed."""
        t = float(frame.pts * frame.time_base) if frame.pts is not None else 0.0
        self.overlay = Overlay(t, time.time(), qp.offsets, getattr(labels, "labels", None),
                               tuple(getattr(labels, "classes", ())))


@dataclass(frozen=True)
class Figures:
    """One camera's figures at one refresh: the stats snapshot and its latency windows (ms)."""

    stats: dict
    latency_ms: dict[str, tuple[float, ...]]  # "end_to_end" and each pipeline stage


class WebView:
    """The endpoint: `listen()` binds, `start()` serves, `refresh()` (supervisor thread)
    updates the figures, `close()` stops it."""

    def __init__(self, cfg: ServeConfig, cameras: dict[str, Camera], views: dict[str, CameraView],
                 clock: Callable[[], float] = time.monotonic,
                 whole_run: dict[str, StatsWindow] | None = None):
        self.cfg, self.cameras, self.views, self.clock = cfg, cameras, views, clock
        # the service's whole-run windows: what a camera a reload restarted counted before
        self.whole_run = whole_run if whole_run is not None else {}
        self.credentials = cfg.http.credentials()  # a missing variable refuses the start
        self.figures: dict[str, Figures] = {}
        self._windows: dict[str, StatsWindow] = {}
        self._cpu = CpuMeter(clock)
        self._streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.stopping = threading.Event()
        self.server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server.server_address[1] if self.server else 0

    def listen(self) -> "WebView":
        """Bind the port (ConfigError when it cannot: the start is refused); `start` serves."""
        from ..errors import ConfigError

        http = self.cfg.http
        try:
            self.server = _BoundedServer((http.host, http.port), _handler(self))
        except OSError as e:
            raise ConfigError(f"http.port {http.port}: cannot listen on {http.host}:{http.port} "
                              f"({e.strerror or e})") from None
        return self

    def start(self) -> "WebView":
        http = self.cfg.http
        if self.server is None:
            self.listen()
        self._thread = threading.Thread(target=self.server.serve_forever, name="http",
                                        daemon=True)
        self._thread.start()
        log.info("http: listening on http://%s:%d/",
                 f"[{http.host}]" if ":" in http.host else http.host, self.port)
        if not http.username_env and not is_loopback(http.host):
            log.warning("http: no credentials (http.username_env/password_env): anyone who "
                        "reaches %s:%d sees every camera's live picture", http.host, self.port)
        return self

    def refresh(self) -> None:
        """New figures for every camera (the supervisor's thread: the only reader of the live
        counters for the web)."""
        percent = self._cpu.percent()
        figures = {}
        self._windows = {n: w for n, w in self._windows.items() if n in self.cameras}
        for name, cam in self.cameras.items():
            window = self._windows.get(name)
            if window is None or window.camera is not cam:  # added or restarted by a reload:
                whole = self.whole_run.get(name)  # its counts go on (the /metrics counters)
                carried = whole.carried if whole is not None and whole.camera is cam \
                    else Carried()
                window = self._windows[name] = StatsWindow(
                    cam, self.clock, dataclasses.replace(carried, since=None))
            # the run's stage timings as values (RunStats.snapshot): the run goes on meanwhile
            latency = {"end_to_end": tuple(cam.latency_ms), **cam.stats.snapshot().timings}
            figures[name] = Figures(window.snapshot(percent), latency)
        self.figures = figures

    def close(self) -> None:
        self.stopping.set()
        if self.server is not None:
            if self._thread is not None:  # shutdown() waits for serve_forever to end
                self.server.shutdown()
            self.server.server_close()

    # --- what the routes answer ----------------------------------------------------------------
    def stats(self) -> dict:
        return {name: f.stats for name, f in self.figures.items()}

    def config(self) -> dict:
        return self.cfg.public_dict()

    def metrics(self) -> bytes:
        from .metrics import exposition

        return exposition(self.figures)

    def host_allowed(self, header: str | None) -> bool:
        """Whether a request may name this host (its Host header): always with credentials;
        without, an address, localhost, this machine's name or `http.allowed_hosts`: a web
        site that resolves its own name to 127.0.0.1 (DNS rebinding) would otherwise read
        every page through the user's browser."""
        if self.credentials is not None or not header:
            return True
        name = header.strip().lower()
        name = name[1:name.find("]")] if name.startswith("[") else name.rsplit(":", 1)[0]
        name = name.rstrip(".")  # a fully qualified name: localhost.
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            pass
        machine = socket.gethostname().lower()
        allowed = {h.lower() for h in (*self.cfg.http.allowed_hosts, self.cfg.http.host)}
        return name in ("localhost", machine, f"{machine}.local") or \
            name.endswith(".localhost") or name in allowed

    def authorised(self, header: str | None) -> bool:
        if self.credentials is None:
            return True
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        want_user, want_password = self.credentials
        return (hmac.compare_digest(user.encode(), want_user.encode())
                & hmac.compare_digest(password.encode(), want_password.encode()))


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, at most MAX_CONNECTIONS of them: connections that send nothing
    (each held up to IDLE_S) would otherwise grow threads without bound."""

    daemon_threads = True
    # connections waiting to be accepted (socketserver's 5 dropped a burst's SYNs: 200 page
    # loads at once left half of them waiting 30-60 s to connect, never answered 503)
    request_queue_size = 128

    def __init__(self, address, handler):
        if ":" in address[0]:  # an IPv6 address: "::" (every interface, IPv4 too), "::1"
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: its slot is free again
            self._slots.release()
            raise

    def handle_error(self, request, client_address) -> None:
        """A client that left mid-answer is no error of ours (socketserver prints a traceback
        for it on stderr)."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("http: %s left: %s", client_address[0], error)
        else:
            log.exception("http: answering %s failed", client_address[0])

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def _handler(web: WebView):
    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-semvc"
        protocol_version = "HTTP/1.1"
        timeout = IDLE_S  # a client that sends nothing, or reads nothing, is dropped

        def end_headers(self) -> None:
            # every answer, refusals included: no other site frames the page (a click-jack),
            # no browser guesses another type than the one sent
            self.send_header("X-Frame-Options", "DENY")
            self.send_header("X-Content-Type-Options", "nosniff")
            super().end_headers()

        def handle_one_request(self) -> None:
            # the deadline of the request's line and headers, from the wait for it on: the
            # socket is shut when it passes (parse_request stops the clock once they are in)
            self._cut = False
            self._deadline = threading.Timer(REQUEST_S, self._too_slow)
            self._deadline.daemon = True
            self._deadline.start()
            try:
                super().handle_one_request()
            finally:
                self._deadline.cancel()

        def parse_request(self) -> bool:
            whole = super().parse_request()  # reads the headers
            self._deadline.cancel()
            if self._cut:  # the shut socket's end ended the headers: no answer
                self.close_connection = True
                return False
            return whole

        def _too_slow(self) -> None:
            self._cut = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def log_message(self, fmt, *args) -> None:  # the service's log, at debug level
            log.debug("http: %s %s", self.address_string(), fmt % args)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self._get(head=False)

        def do_HEAD(self) -> None:  # noqa: N802 - uptime checks and proxies ask it
            self._get(head=True)

        def _get(self, head: bool) -> None:
            self._head = head  # the headers alone
            if self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length",
                                                                         "0").strip() != "0":
                # a body nobody reads would be taken for the next request (a proxy reusing the
                # connection would hand its answer to someone else's): answered, then closed
                self.close_connection = True
            path = self.path.split("?", 1)[0]
            # /metrics holds figures only (no picture, no configuration), and a Prometheus
            # server scrapes it by the box's name: open to any Host
            if path != "/metrics" and not web.host_allowed(self.headers.get("Host")):
                self._send(403, b"this host name is not allowed: add it to http.allowed_hosts\n",
                           "text/plain")
                return
            if not web.authorised(self.headers.get("Authorization")):
                self._send(401, b"credentials needed\n", "text/plain",
                           {"WWW-Authenticate": 'Basic realm="edge-semvc"'})
                return
            parts = path[1:].split("/")  # a trailing slash is one more part: not found
            if path in PAGES or (len(parts) == 2 and parts[0] == "cameras"):
                self._page(PAGES.get(path, "camera.html"), parts)
            elif path == "/api/stats":
                self._json(web.stats())
            elif path == "/api/config":
                self._json(web.config())
            elif path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST

                self._send(200, web.metrics(), CONTENT_TYPE_LATEST)
            elif len(parts) == 4 and parts[:2] == ["api", "cameras"] and parts[2] in web.views:
                if parts[3] == "live.mp4":
                    self._stream(self._live, web.views[parts[2]])
                elif parts[3] == "events":
                    self._stream(self._events, parts[2])
                else:
                    self._send(404, b"not found\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _page(self, name: str, parts: list[str]) -> None:
            if name == "camera.html" and parts[1] not in web.views:
                self._send(404, b"no such camera\n", "text/plain")
                return
            body = resources.files(__package__).joinpath("pages", name).read_bytes()
            self._send(200, body, TYPES[name[name.rindex("."):]])

        def _json(self, doc) -> None:
            self._send(200, json.dumps(hide_passwords(doc), default=str).encode(),
                       "application/json")

        def _send(self, status: int, body: bytes, kind: str, headers: dict | None = None):
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            if self.close_connection:
                self.send_header("Connection", "close")
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if not self._head:
                self.wfile.write(body)

        def _stream(self, serve, what) -> None:
            if self._head:  # what a GET would start with (an uptime check of the picture)
                if serve == self._live and not (what.feed and what.feed.running()):
                    self._send(503, NO_LIVE if what.feed else LIVE_OFF, "text/plain")
                else:
                    self.close_connection = True
                    self._start_stream(what.feed.mime if serve == self._live
                                       else "text/event-stream")
                return
            if not web._streams.acquire(blocking=False):
                self._send(503, b"too many live readers\n", "text/plain")
                return
            self.close_connection = True
            try:
                serve(what)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the browser went away
            finally:
                web._streams.release()

        def _start_stream(self, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()

        def _live(self, view: CameraView) -> None:
            reader = view.feed.subscribe() if view.feed else None
            if reader is None:
                self._send(503, NO_LIVE if view.feed else LIVE_OFF, "text/plain")
                return
            try:
                self._start_stream(view.feed.mime)
                while not web.stopping.is_set():
                    try:
                        chunk = reader.get(timeout=1.0)
                    except queue.Empty:
                        continue
                    if chunk is END:
                        return
                    self.wfile.write(chunk)
                    self.wfile.flush()
            finally:
                view.feed.unsubscribe(reader)

        def _events(self, name: str) -> None:
            self._start_stream("text/event-stream")
            sent_overlay, sent_stats, quiet_since = None, None, web.clock()
            removed = False
            while not web.stopping.wait(1.0 / OVERLAY_HZ):
                out = []
                # the camera's view as it is now: a reload that removed the camera and added it
                # again made a new one (the old one's overlay stood still over the new picture)
                view = web.views.get(name)
                if (view is None) != removed:  # said once; the stream waits for its return
                    removed = view is None
                    if removed:
                        out.append(("removed", {"camera": name}))
                overlay = view.overlay if view is not None else None
                figures = web.figures.get(name)
                if overlay is not None and overlay is not sent_overlay:
                    shift = view.feed.media_offset if view.feed else 0.0
                    out.append(("overlay", overlay.message(shift)))
                    sent_overlay = overlay
                if figures is not None and figures is not sent_stats:
                    out.append(("stats", figures.stats))
                    sent_stats = figures
                chunk = "".join(f"event: {kind}\ndata: "
                                f"{json.dumps(hide_passwords(doc), default=str)}\n\n"
                                for kind, doc in out)
                if not chunk and web.clock() - quiet_since >= KEEPALIVE_S:
                    chunk = ": keep-alive\n\n"
                if chunk:
                    self.wfile.write(chunk.encode())
                    self.wfile.flush()
                    quiet_since = web.clock()

    return Handler
