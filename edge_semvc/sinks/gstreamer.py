"""The parent side of the outputs that need GStreamer (`GstChildOutput`; the two outputs,
MPEG-TS over SRT and the built-in RTSP server, are in `gst_outputs.py`).

PyAV's bundled FFmpeg has no libsrt and no RTSP server for many clients; Debian's GStreamer
has both (srtsink in gstreamer1.0-plugins-bad, GstRtspServer in gir1.2-gst-rtsp-server-1.0),
reached through PyGObject, which only the system Python has. So each output runs
`gst_child.py` in a child process of that Python (`/usr/bin/python3`, or `$EDGE_SEMVC_GST_PYTHON`)
and feeds it over a pipe the encoded access units and the carried audio packets (RTSP) or the
MPEG-TS muxed here (SRT: `stream.TsBytes`, as `udp://`, with every stream MPEG-TS takes); the
child reports receivers as JSON lines.

Receivers never stop the encoder: `write` only puts the packet on a bounded queue (a thread
writes it to the child); a full queue drops it (counted), skips to the next key frame and
asks the encoder for one. A child that dies is restarted with back-off (`output_lost`, then
`output_back`). Events (`on_event(name, output=URI, **fields)`) arrive on the output's own
thread.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import queue
import socket
import subprocess
import threading
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import SinkError
from ..values import LinkReport
from .base import EventCallback, Output, StreamInfo, emit_event
from .gst_child import HEADER, KEYFRAME, STREAM_SHIFT
from .nal import has_parameter_sets, is_idr

log = logging.getLogger(__name__)

PYTHON_ENV = "EDGE_SEMVC_GST_PYTHON"
DEFAULT_PYTHON = "/usr/bin/python3"
CHILD = Path(__file__).with_name("gst_child.py")
QUEUE_PACKETS = 30  # about a second of video between the encoder and the child
READY_TIMEOUT_S = 15.0  # the child's start: importing GStreamer, binding the port
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)


def gst_python() -> str:
    """The Python that runs the child: one with PyGObject and GStreamer's typelibs."""
    return os.environ.get(PYTHON_ENV) or DEFAULT_PYTHON


@functools.lru_cache(maxsize=None)
def _missing(python: str, kind: str) -> str | None:
    if not os.access(python, os.X_OK):
        return (f"the system Python {python} (Debian package python3; or set {PYTHON_ENV} to "
                f"a Python with PyGObject)")
    try:
        done = subprocess.run([python, str(CHILD), "check", kind], capture_output=True,
                              text=True, timeout=60, check=False)
        return json.loads(done.stdout.strip().splitlines()[-1])["missing"]
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError, KeyError) as e:
        return f"a working {python} ({e})"


def check_gstreamer(kind: str, uri: str) -> None:
    """SinkError naming what output `uri` needs (Python, gi, typelib, element) and which Debian
    package brings it, when the system Python lacks it."""
    what = _missing(gst_python(), kind)
    if what is not None:
        raise SinkError(f"output {uri} needs {what}: it is missing")


def check_port_free(uri: str, host: str, port: int, kind: int) -> None:
    """SinkError when HOST:PORT cannot be bound (in use, or not this machine's address)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            s.bind((host, port))
        except OSError as e:
            raise SinkError(f"output {uri}: cannot listen on {host}:{port}: "
                            f"{e.strerror or e}") from None


class GstChildOutput(Output):
    """One child process of the system Python running `gst_child.py`, supervised."""

    kind = ""
    role = ""
    credentials_hint = ""
    asks_for_receivers = True  # an RTSP client pressed play, an SRT caller came

    def __init__(self, uri: str, on_event: EventCallback | None = None):
        self.uri = uri
        self._on_event = on_event
        self.info: StreamInfo | None = None
        self.carried: list = []  # the passed-through tracks it carries, in stream order
        self.state = "new"
        self.clients: dict[str, str] = {}  # address -> transport
        self.reconnects = 0
        self._dropped = 0  # here, on the way to the child (the child counts its own)
        self._count_lock = threading.Lock()
        self._gone = dict(_NO_STATS)  # what children that ended sent
        self._child_stats = dict(_NO_STATS)  # what the running child sent so far
        self._queue: queue.Queue = queue.Queue(QUEUE_PACKETS)
        self._child: subprocess.Popen | None = None  # started
        self._proc: subprocess.Popen | None = None  # ready for packets
        self._lost = False
        self._want_idr = False
        self._link: LinkReport | None = None  # the running child's latest
        self._link_reports = 0  # every child's (LinkReport.seq)
        self._told_refused = False  # a client beyond max_clients was said
        self._resync = True  # drop packets until a key frame
        self._closing = threading.Event()
        self._ready = threading.Event()
        self._start_error: str | None = None
        self._threads: list[threading.Thread] = []
        if _credentials_in(uri):
            raise SinkError(f"output {uri!r}: credentials do not belong in the URI (URIs are "
                            f"logged){self.credentials_hint}")

    # -- to be provided

    def _config(self) -> dict:
        """What the child needs (JSON; never a secret)."""
        raise NotImplementedError

    def _up_when_ready(self) -> bool:
        """Whether the child being ready means the output is up (else it says `peer_back`)."""
        return True

    def _receivers(self) -> int:
        return len(self.clients)

    def _prepare(self) -> None:
        """Once open gave `info` and `carried`, before the child starts."""

    def _open_to_anyone(self) -> str | None:
        """Why anyone on the network may take the stream (a server or listener on a network
        address without credentials), said once at open; None when not."""
        return None

    # -- Output

    def open(self, info: StreamInfo) -> None:
        self.info = info
        self.carried = [t for t in info.tracks if self.cannot_carry(t) is None]
        # an AAC track adds about one and a half packets a video frame: the queue holds about
        # as much time as with the video alone
        self._queue = queue.Queue(QUEUE_PACKETS * (1 + 2 * len(self.carried)))
        self._prepare()
        exposed = self._open_to_anyone()
        if exposed:
            log.warning("%s: %s", self.uri, exposed)
        self.state = "starting"
        self._threads = [threading.Thread(target=target, name=f"{self.kind} {what}", daemon=True)
                         for target, what in ((self._supervise, "child"),
                                              (self._send, "sender"))]
        for t in self._threads:
            t.start()
        if not self._ready.wait(READY_TIMEOUT_S):
            self._start_error = f"its GStreamer child did not start within {READY_TIMEOUT_S:g} s"
        if self._start_error is not None:
            error = self._start_error
            self.close()
            raise SinkError(f"cannot open {self.role} {self.uri}: {error}")

    def write(self, packet) -> None:
        if self.info is None or self._closing.is_set():
            return
        key = bool(packet.keyframe) and is_idr(packet.data, self.info.codec)
        if self._resync:
            if not key:
                self._count_drop()
                return
            self._resync = False
        data = bytes(packet.data)
        if key and not has_parameter_sets(data, self.info.codec):
            data = self.info.headers + data  # a receiver may start at any IDR
        self._put(self._payload(data, packet, key), key, ns(packet.pts, self.info.time_base),
                  ns(packet.dts, self.info.time_base))

    def _payload(self, data: bytes, packet, key: bool) -> bytes:
        """What the child gets of an access unit: its Annex-B bytes (`data`)."""
        return data

    def write_track(self, packet) -> None:
        if self.info is None or self._closing.is_set() or self._resync:
            return  # nothing goes out until the video can be decoded again
        self._put_track(packet)

    def _put_track(self, packet) -> None:
        """A carried track's packet onto the queue (`_put`), for outputs that carry tracks."""
        raise NotImplementedError

    def _put(self, data: bytes, key: bool, pts_ns: int, dts_ns: int, stream: int = 0) -> None:
        """Onto the queue to the child (`stream`: 0 the video, 1... a carried track), or
        dropped (counted; receivers wait for an IDR)."""
        if not data:
            return
        flags = (KEYFRAME if key else 0) | stream << STREAM_SHIFT
        try:
            self._queue.put_nowait(HEADER.pack(len(data), flags, pts_ns, dts_ns) + data)
        except queue.Full:
            self._drop()

    def wants_idr(self, pts: int | None) -> bool:
        # asked once the queue has room again: an IDR into a full queue would only be dropped
        # (and while the child stalls, every frame would become one)
        if self._want_idr and self._queue.qsize() <= QUEUE_PACKETS // 2:
            self._want_idr = False
            return True
        return False

    def stats(self) -> dict:
        child = self._child_stats
        total = {k: self._gone[k] + child[k] for k in _NO_STATS}
        return {"uri": self.uri, "state": self.state, "clients": self._receivers(),
                "bytes_sent": total["bytes_sent"], "packets": total["packets"],
                "dropped": self._dropped + total["dropped"], "reconnects": self.reconnects}

    def link_report(self) -> LinkReport | None:
        return self._link

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()  # from now on: no packet taken, no child restarted
        self.state = "closed"
        if not self._threads:
            return
        supervisor, sender = self._threads
        _put_end(self._queue)
        sender.join(timeout=2)  # what is queued reaches the child, unless it stalls
        child = self._child
        if child is not None:
            _stop(child, graceful=not sender.is_alive())
        _put_end(self._queue)  # in case the queue was full: the sender drained it meanwhile
        for t in (sender, supervisor):
            t.join(timeout=5)

    # -- the sender thread: queue -> the child's standard input

    def _send(self) -> None:
        while (item := self._queue.get()) is not None:
            proc = self._proc
            if proc is None:  # no child now: the next one asks for an IDR when it is ready
                self._drop(ask_idr=False)
                continue
            try:
                proc.stdin.write(item)
                proc.stdin.flush()
            except (OSError, ValueError):  # the child died: the supervisor restarts it
                self._drop(ask_idr=False)

    def _drop(self, ask_idr: bool = True) -> None:
        """A packet lost on the way to the child: receivers wait for the next IDR."""
        self._count_drop()
        self._resync = True
        if ask_idr:
            self._want_idr = True

    def _count_drop(self) -> None:
        with self._count_lock:  # the encoding and the sending thread both drop
            self._dropped += 1

    # -- the supervisor thread: start, read events, restart with back-off

    def _supervise(self) -> None:
        attempt = 0
        while not self._closing.is_set():
            reason, was_ready = self._run_child()
            if self._closing.is_set():
                return
            if not self._ready.is_set():  # the first start failed: open() raises
                self._start_error = reason
                self._ready.set()
                return
            if was_ready:
                attempt = 0
            self._set_lost(f"its GStreamer child ended: {reason}")
            delay = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
            attempt += 1
            if self._closing.wait(delay):
                return

    def _run_child(self) -> tuple[str, bool]:
        """Runs one child until it ends: (why it ended, whether it got ready)."""
        config = dict(self._config(), codec=self.info.codec)
        try:
            proc = subprocess.Popen([gst_python(), str(CHILD), "run", json.dumps(config)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT)
        except OSError as e:
            return f"cannot start {gst_python()}: {e.strerror or e}", False
        self._child = proc
        if self._closing.is_set():  # close() ran meanwhile and did not see this child
            _stop(proc, graceful=False)
        ready, last = False, "it exited"
        for line in proc.stdout:
            try:
                event = json.loads(line)
                name = event.pop("event")
            except (ValueError, KeyError, AttributeError, TypeError):
                text = line.decode(errors="replace").strip()
                if text:
                    log.debug("%s: %s", self.uri, text)
                    last = text
                continue
            if name == "ready":
                ready = True
                self._started(proc)
            elif name == "error":
                last = str(event.get("message"))
            else:
                self._child_event(name, event)
        self._proc = None
        _stop(proc, graceful=False)  # it closed its output: it is ending anyway
        proc.stdout.close()  # now, not when the garbage collector finds the Popen
        self._stopped()
        code = proc.returncode
        return (last if code in (0, 1) else f"{last} (exit status {code})"), ready

    def _started(self, proc: subprocess.Popen) -> None:
        self._child_stats = dict(_NO_STATS)
        self._resync = True
        self._want_idr = True
        self._proc = proc
        self._ready.set()
        if self._up_when_ready():
            self._set_up("restarted")
        elif not self._lost:
            self.state = "connecting"

    def _stopped(self) -> None:
        self._link = None
        for k in _NO_STATS:
            self._gone[k] += self._child_stats[k]
        self._child_stats = dict(_NO_STATS)
        for address, transport in list(self.clients.items()):
            self._client("client_left", address, transport)

    def _child_event(self, name: str, event: dict) -> None:
        if name == "stats":
            self._child_stats = {k: _count(event.get(k)) for k in _NO_STATS}
        elif name == "link":
            rtt = event.get("rtt_ms")
            self._link_reports += 1
            self._link = LinkReport(
                self._link_reports, _count(event.get("peers")),
                float(rtt) if isinstance(rtt, (int, float)) and 0 <= rtt < 1e6 else 0.0,
                *(_count(event.get(k)) for k in ("sent", "resent", "dropped")),
                _count(event.get("silent")))
        elif name == "idr":
            self._want_idr = True
        elif name in ("client_joined", "client_left"):
            self._client(name, str(event.get("address")), str(event.get("transport")),
                         event.get("stream_id"))
        elif name == "client_refused":
            self._refused(str(event.get("address")), _count(event.get("max_clients")))
        elif name == "peer_lost":
            self._set_lost(str(event.get("reason")))
        elif name == "peer_back":
            self._set_up("reconnected")

    def _client(self, name: str, address: str, transport: str,
                stream_id: str | None = None) -> None:
        if name == "client_joined":
            self.clients[address] = transport
        elif self.clients.pop(address, None) is None:
            return
        # an SRT caller's stream id (what it asked for), where it sent one
        extra = {"stream_id": str(stream_id)} if stream_id else {}
        self._emit(name, address=address, transport=transport, **extra)

    def _refused(self, address: str, most: int) -> None:
        """A client beyond the server's max_clients: said once in a warning."""
        if self._told_refused:
            log.debug("%s: refused %s (max_clients=%d)", self.uri, address, most)
            return
        self._told_refused = True
        log.warning("%s: refused a client (%s): the server has max_clients=%d connections "
                    "(each further one is refused, not said again)", self.uri, address, most)

    def _set_up(self, how: str) -> None:
        self.state = "open"
        if self._lost:
            self._lost = False
            self.reconnects += 1
            log.info("%s: back (%s)", self.uri, how)
            self._emit("output_back", reason=how)

    def _set_lost(self, reason: str) -> None:
        if self._closing.is_set():
            return
        self.state = "lost"
        if not self._lost:
            self._lost = True
            log.warning("%s: %s", self.uri, reason)
            self._emit("output_lost", reason=reason)

    def _emit(self, name: str, **fields) -> None:
        emit_event(self._on_event, name, self.uri, **fields)


_NO_STATS = {"bytes_sent": 0, "packets": 0, "dropped": 0}


def ns(t: int, time_base) -> int:
    """A time in `time_base`, in nanoseconds (the child's unit)."""
    return t * time_base.numerator * 1_000_000_000 // time_base.denominator


def _count(value) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _credentials_in(uri: str) -> bool:
    parts = urlsplit(uri)
    return bool(parts.username) or parts.password is not None


def _put_end(q: queue.Queue) -> None:
    try:
        q.put(None, timeout=2)
    except queue.Full:
        pass


def _stop(proc: subprocess.Popen, graceful: bool) -> None:
    """Ends a child: asked first when `graceful` (its input closed, it stops by itself; not
    while a write to it may hang), then terminated, then killed."""
    steps = ([proc.stdin.close] if graceful else []) + [proc.terminate, proc.kill]
    for step in steps:
        try:
            step()
        except OSError:
            pass
        try:
            proc.wait(timeout=2)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        proc.stdin.close()
    except OSError:
        pass
