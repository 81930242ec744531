"""The outputs that need GStreamer (sinks/gstreamer.py): the built-in RTSP server and MPEG-TS
over SRT, driven with packets from the real x264 (and x265) encoder and pulled by real
receivers on 127.0.0.1: FFmpeg through PyAV, and GStreamer's rtspsrc/srtsrc in a system-Python
process (tests/gst_receiver.py) whose stream PyAV decodes. Nothing waits on the wall clock
but hang guards: frames, packets and events are counted."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest

from edge_semvc.encoders import EncoderSettings, get_encoder
from edge_semvc.errors import SinkError
from edge_semvc.sinks import gstreamer as gst
from edge_semvc.sinks import open_output
from edge_semvc.sinks.base import Outputs, StreamInfo
from edge_semvc.sources import open_source

RECEIVER = Path(__file__).with_name("gst_receiver.py")
GUARD_S = 60  # a hang guard only: every wait below ends on a count or an event


def require(kind: str) -> None:
    what = gst._missing(gst.gst_python(), kind)
    if what is not None:
        pytest.skip(f"the {kind} output cannot run here: {what} is missing (make apt)")


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Events:
    """on_event's calls, kept; `wait` blocks until one matches (hang guard only)."""

    def __init__(self):
        self.seen: list[tuple[str, dict]] = []
        self._cond = threading.Condition()

    def __call__(self, name, **fields):
        with self._cond:
            self.seen.append((name, fields))
            self._cond.notify_all()

    def names(self) -> list[str]:
        with self._cond:
            return [n for n, _ in self.seen]

    def wait(self, name: str, count: int = 1, **match) -> dict:
        def found():
            hits = [f for n, f in self.seen if n == name and
                    all(f.get(k) == v for k, v in match.items())]
            return hits[count - 1] if len(hits) >= count else None

        with self._cond:
            assert self._cond.wait_for(found, timeout=GUARD_S), \
                f"no {name} {match} (#{count}) among {self.seen}"
            return found()


@pytest.fixture(scope="module")
def frames():
    return list(open_source("demo://astronaut").frames())  # 640x360, 90 frames


class LiveEncoder:
    """The real encoder fed with the demo frames, looped, at about 30 frames a second in a
    thread, into `outputs` (an Outputs), an IDR forced whenever an output asks (as the
    pipeline does). IDRs come only when asked: keyint is unbounded and nothing else inserts
    one, so a receiver that decodes got an IDR someone asked for."""

    def __init__(self, frames, outputs: Outputs, backend="x264", global_headers=False,
                 paced=True):
        f0 = frames[0]
        settings = EncoderSettings(width=f0.width, height=f0.height, fps=Fraction(30),
                                   time_base=Fraction(1, 30), preset="ultrafast",
                                   tune="zerolatency", keyint=1_000_000, caller_idr=True,
                                   global_headers=global_headers)
        self.encoder = get_encoder(backend)(settings)
        self.info = StreamInfo(f0.width, f0.height, settings.fps, settings.time_base,
                               self.encoder.codec, self.encoder.headers(), global_headers)
        self.frames, self.outputs, self.paced = frames, outputs, paced
        self.count = 0  # frames encoded
        self.idrs: list[int] = []  # their indexes
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.outputs.open(self.info)
        if self.paced:  # else the test calls `step`
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.paced:
            self._thread.join(timeout=GUARD_S)
        self.outputs.write(self.encoder.flush())
        self.outputs.close()
        self.encoder.close()

    def step(self, force_idr: bool = False) -> bytes:
        """Encodes the next frame into the outputs; its bytes."""
        n = self.count
        frame = self.frames[n % len(self.frames)]
        frame.pts = frame.index = n
        idr = self.outputs.wants_idr(n) or n == 0 or force_idr
        if idr:
            self.idrs.append(n)
        packets = self.encoder.encode(frame, None, force_idr=idr)
        self.outputs.write(packets)
        self.count = n + 1
        return b"".join(bytes(p.data) for p in packets)

    def _run(self):
        while not self._stop.is_set():
            self.step()
            time.sleep(1 / 30)

    def wait_frames(self, n: int) -> None:
        """Until `n` more frames are encoded."""
        target = self.count + n
        for _ in range(GUARD_S * 100):
            if self.count >= target:
                return
            time.sleep(0.01)
        raise AssertionError(f"the encoder stalled at frame {self.count}")


class Decoded:
    """A receiver's stream decoded by PyAV in a thread: frames counted, the first kept, and
    the frames that were corrupt or would not decode once the first had (before it, data
    from the middle of the stream is expected not to decode)."""

    def __init__(self, open_container):
        self.frames = 0
        self.packets = 0  # demuxed
        self.pts: list[int | None] = []  # of each decoded frame
        self.first = None
        self.broken: list[int] = []  # frame counts at which a picture was corrupt or failed
        self.error: Exception | None = None
        self._open = open_container
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            with self._open() as c:
                c.streams.video[0].thread_type = "NONE"
                for packet in c.demux(video=0):
                    self.packets += 1
                    try:
                        pictures = packet.decode()
                    except av.error.InvalidDataError:
                        pictures = [None] if self.first is not None else []
                    for f in pictures:
                        with self._cond:
                            if f is None or f.is_corrupt:
                                self.broken.append(self.frames)
                            if f is not None:
                                self.first = self.first or f
                                self.frames += 1
                                self.pts.append(f.pts)
                            self._cond.notify_all()
        except (av.error.FFmpegError, OSError, ValueError) as e:
            self.error = e
        with self._cond:
            self._cond.notify_all()

    def wait(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.frames >= n or not self._thread.is_alive(),
                                       timeout=GUARD_S), \
                f"decoded {self.frames} < {n} frames ({self.error}; {self.packets} packets)"
        assert self.frames >= n, f"the receiver ended after {self.frames} frames: {self.error}"
        self.checked = n

    def join(self):
        self._thread.join(timeout=GUARD_S)


def ffmpeg_rtsp(url: str, transport: str) -> Decoded:
    return Decoded(lambda: av.open(url, options={"rtsp_transport": transport},
                                   timeout=(GUARD_S, GUARD_S)))


class GstReceiver:
    """tests/gst_receiver.py in the system Python; its output decoded by PyAV."""

    def __init__(self, *args: str, fmt: str):
        self.proc = subprocess.Popen([gst.gst_python(), str(RECEIVER), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.decoded = Decoded(lambda: av.open(self.proc.stdout, format=fmt))

    def stop(self):
        self.proc.kill()
        self.proc.wait()
        self.decoded.join()


def good_start(decoded: Decoded) -> None:
    """The receiver's first picture is a key frame, and all it decoded until the last `wait`
    is whole (a receiver killed mid-picture may break the ones after)."""
    assert decoded.first is not None and decoded.first.key_frame
    assert [i for i in decoded.broken if i < decoded.checked] == []


class RawReceiver:
    """tests/gst_receiver.py's output kept as bytes as they come (the elementary stream):
    `wait_for(data)` until they hold `data`, the last bytes of an access unit, its own."""

    KEEP = 1 << 20

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([gst.gst_python(), str(RECEIVER), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.data = bytearray()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        while chunk := os.read(self.proc.stdout.fileno(), 1 << 16):
            with self._cond:
                self.data = self.data[-self.KEEP:] + chunk
                self._cond.notify_all()

    def started(self) -> bool:
        with self._cond:
            return bool(self.data)

    def wait_for(self, data: bytes) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: data in self.data, timeout=GUARD_S), \
                "the receiver never got the frame written last"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


FRAME_S, LATE_S = 1 / 30, 0.015
LOCKSTEP_FRAMES = 20
TICKS = 3000  # one frame in the 90 kHz clock of RTP and MPEG-TS


def each_frame_at_once(live: LiveEncoder, joined, raw: RawReceiver, decoded: Decoded) -> None:
    """Frame n is written at n x FRAME_S, every other one LATE_S later (never sooner: a frame
    ahead of its time is stamped when it comes). Once a receiver joined (`joined()`) and `raw`
    has bytes, each frame, from an IDR on, is written only once `raw` holds the whole frame
    before: a frame held back until the next one comes would stall this until the hang guard.
    Ends after LOCKSTEP_FRAMES such frames and 40 decoded by `decoded`."""
    t0, locked = time.monotonic(), 0
    while locked < LOCKSTEP_FRAMES or decoded.frames < 40:
        assert live.count < GUARD_S * 30, \
            f"{decoded.frames} decoded ({decoded.error}; {decoded.packets} packets), {locked} in " \
            f"lockstep, IDRs {live.idrs}"
        n = live.count
        time.sleep(max(0.0, t0 + n * FRAME_S + LATE_S * (n % 2) - time.monotonic()))
        first = not locked and joined() and raw.started()
        data = live.step(force_idr=first)
        if locked or first:
            raw.wait_for(data[-32:])
            locked += 1


def encoder_cadence(decoded: Decoded) -> None:
    """The receiver's timestamps step by one frame at the encoder's rate, not in the rhythm
    the frames were written in (a few may not, where a frame came sooner than all before).
    The first frames are left out: the RTSP server sends what it held for its SDP when a
    client plays."""
    pts = decoded.pts[6:]
    steps = [b - a for a, b in zip(pts, pts[1:])]
    off = [d for d in steps if abs(d - TICKS) > TICKS // 30]  # over 1 ms
    assert len(steps) >= 30 and len(off) <= len(steps) // 10, steps


# --- RTSP -------------------------------------------------------------------------------------

def test_rtsp_two_clients_one_leaves_the_other_and_the_recording_go_on(frames, tmp_path):
    require("rtsp")
    port, events = free_port(), Events()
    url = f"rtsp://127.0.0.1:{port}/cam"
    server = open_output(f"rtsp://@:{port}/cam", events)
    recording = open_output(str(tmp_path / "rec.ts"))
    with LiveEncoder(frames, Outputs([recording, server])) as live:
        tcp = ffmpeg_rtsp(url, "tcp")
        udp = GstReceiver(url, "h264", "udp", fmt="h264")
        tcp.wait(30)
        udp.decoded.wait(30)
        assert sorted(f["transport"] for f in (events.wait("client_joined", 1),
                                               events.wait("client_joined", 2))) == ["tcp", "udp"]
        assert server.stats()["clients"] == 2
        udp.stop()  # one leaves mid-stream
        left = events.wait("client_left")
        assert left["transport"] == "udp" and left["address"].startswith("127.0.0.1:")
        before = tcp.frames
        live.wait_frames(45)
        tcp.wait(before + 30)  # the other goes on
        stats = server.stats()
        assert stats["clients"] == 1 and stats["state"] == "open"
        assert stats["bytes_sent"] > 0 and stats["packets"] > 0 and stats["dropped"] == 0
    good_start(tcp)
    good_start(udp.decoded)
    with av.open(str(tmp_path / "rec.ts")) as c:  # the recording has every frame
        assert sum(1 for _ in c.decode(video=0)) == live.count
    assert events.names().count("output_lost") == 0


def test_rtsp_late_joiner_gets_an_idr_at_once_even_with_global_headers(frames):
    """Parameter sets out of band (an mp4 beside it): the server prepends them to each IDR, and
    a client joining long after the only IDR so far gets a new one at once."""
    require("rtsp")
    port, events = free_port(), Events()
    server = open_output(f"rtsp://127.0.0.1:{port}/live", events)
    with LiveEncoder(frames, Outputs([server]), global_headers=True) as live:
        live.wait_frames(60)
        assert live.idrs == [0]
        joiner = ffmpeg_rtsp(f"rtsp://127.0.0.1:{port}/live", "tcp")
        events.wait("client_joined")
        joined_at = live.count
        joiner.wait(20)
        forced = [i for i in live.idrs if i >= joined_at - 1]
        assert forced and forced[0] - joined_at <= 15  # frames, not seconds: at once
    good_start(joiner)


def test_rtsp_credentials_from_the_environment(frames, monkeypatch, caplog):
    require("rtsp")
    monkeypatch.setenv("TEST_RTSP_USER", "viewer")
    monkeypatch.setenv("TEST_RTSP_PASS", "s3cret-pw")
    port, events = free_port(), Events()
    uri = f"rtsp://@:{port}/cam?user_env=TEST_RTSP_USER&password_env=TEST_RTSP_PASS"
    server = open_output(uri, events)
    with LiveEncoder(frames, Outputs([server])):
        for url in (f"rtsp://127.0.0.1:{port}/cam",
                    f"rtsp://viewer:wrong@127.0.0.1:{port}/cam"):
            refused = ffmpeg_rtsp(url, "tcp")
            refused.join()
            assert refused.frames == 0 and "401" in str(refused.error)
        accepted = ffmpeg_rtsp(f"rtsp://viewer:s3cret-pw@127.0.0.1:{port}/cam", "tcp")
        accepted.wait(10)
        gst_client = GstReceiver(f"rtsp://127.0.0.1:{port}/cam", "h264", "tcp", "viewer",
                                 "s3cret-pw", fmt="h264")
        gst_client.decoded.wait(10)
        gst_client.stop()
    good_start(accepted)
    assert events.names().count("client_joined") == 2
    assert "s3cret-pw" not in caplog.text + repr(events.seen) + repr(server.stats())


def test_rtsp_credentials_refused_when_a_variable_is_unset(monkeypatch):
    require("rtsp")
    monkeypatch.setenv("TEST_RTSP_USER", "viewer")
    monkeypatch.delenv("TEST_RTSP_NOPE", raising=False)
    with pytest.raises(SinkError, match="TEST_RTSP_NOPE .*not set"):
        open_output(f"rtsp://@:{free_port()}/cam?user_env=TEST_RTSP_USER"
                    f"&password_env=TEST_RTSP_NOPE")
    with pytest.raises(SinkError, match="both user_env and password_env"):
        open_output(f"rtsp://@:{free_port()}/cam?user_env=TEST_RTSP_USER")
    with pytest.raises(SinkError, match="credentials do not belong in the URI.*user_env=NAME"):
        open_output(f"rtsp://viewer:pw@127.0.0.1:{free_port()}/cam")


def test_rtsp_hevc(frames):
    require("rtsp")
    encoder = get_encoder("x265")
    ok, why = encoder.available()
    if not ok:
        pytest.skip(f"x265 unavailable: {why}")
    port = free_port()
    server = open_output(f"rtsp://@:{port}/cam")
    with LiveEncoder(frames, Outputs([server]), backend="x265"):
        client = GstReceiver(f"rtsp://127.0.0.1:{port}/cam", "hevc", "tcp", fmt="hevc")
        client.decoded.wait(15)
        client.stop()
    good_start(client.decoded)


def test_rtsp_sends_each_frame_before_the_next_with_the_encoders_timestamps(frames):
    require("rtsp")
    port, events = free_port(), Events()
    url = f"rtsp://127.0.0.1:{port}/cam"
    server = open_output(f"rtsp://@:{port}/cam", events)
    with LiveEncoder(frames, Outputs([server]), paced=False) as live:
        raw = RawReceiver(url, "h264", "tcp")
        decoded = ffmpeg_rtsp(url, "tcp")
        try:
            each_frame_at_once(live, lambda: events.names().count("client_joined") == 2,
                               raw, decoded)
        finally:
            raw.stop()
    encoder_cadence(decoded)


def test_a_dead_child_is_restarted_and_a_stalled_one_never_blocks_the_encoder(frames):
    require("rtsp")
    port, events = free_port(), Events()
    server = open_output(f"rtsp://@:{port}/cam", events)
    with LiveEncoder(frames, Outputs([server])) as live:
        server._child.kill()  # the GStreamer side dies
        assert "GStreamer child ended" in events.wait("output_lost")["reason"]
        events.wait("output_back")
        assert server.stats()["reconnects"] == 1 and server.stats()["state"] == "open"
        client = ffmpeg_rtsp(f"rtsp://127.0.0.1:{port}/cam", "tcp")
        client.wait(15)
        os.kill(server._child.pid, signal.SIGSTOP)  # alive but reading nothing
        try:
            stalled_at = live.count
            live.wait_frames(120)  # the encoder goes on: its writes drop, never block
            assert server.stats()["dropped"] > 0
            assert len([i for i in live.idrs if i >= stalled_at]) <= 1  # no IDR per frame
        finally:
            os.kill(server._child.pid, signal.SIGCONT)
        resumed_at = live.count
        client.wait(client.frames + 60)  # past what was queued before the stall
        assert [i for i in live.idrs if i >= resumed_at]  # asked for once the queue drained
    good_start(client)


# --- SRT ----------------------------------------------------------------------------------------

def test_srt_caller_peer_gone_then_back(frames):
    require("srt")
    port, events = free_port(socket.SOCK_DGRAM), Events()
    listener = f"srt://127.0.0.1:{port}?mode=listener"
    receiver = GstReceiver(listener, fmt="mpegts")
    out = open_output(f"srt://127.0.0.1:{port}?mode=caller&latency=50", events)
    with LiveEncoder(frames, Outputs([out])):
        receiver.decoded.wait(20)
        assert out.stats()["state"] == "open" and out.stats()["clients"] == 1
        receiver.stop()  # the peer goes
        events.wait("output_lost")
        assert out.stats()["state"] == "lost"
        back = GstReceiver(listener, fmt="mpegts")
        events.wait("output_back")
        back.decoded.wait(20)  # frames decode after
        back.stop()
        stats = out.stats()
        assert stats["reconnects"] >= 1 and stats["bytes_sent"] > 0
    good_start(receiver.decoded)
    good_start(back.decoded)
    names = events.names()
    assert names.index("output_lost") < names.index("output_back")


def test_srt_listener_serves_callers(frames):
    require("srt")
    port, events = free_port(socket.SOCK_DGRAM), Events()
    out = open_output(f"srt://@:{port}?mode=listener&latency=50", events)
    with LiveEncoder(frames, Outputs([out])):
        first = GstReceiver(f"srt://127.0.0.1:{port}?mode=caller", fmt="mpegts")
        first.decoded.wait(15)
        joined = events.wait("client_joined")
        assert joined["transport"] == "srt" and joined["address"].startswith("127.0.0.1:")
        second = GstReceiver(f"srt://127.0.0.1:{port}?mode=caller", fmt="mpegts")
        second.decoded.wait(15)  # a second caller at once, from an IDR
        assert out.stats()["clients"] == 2
        first.stop()
        second.stop()
    good_start(first.decoded)
    good_start(second.decoded)


def test_srt_sends_each_frame_before_the_next_with_the_encoders_timestamps(frames):
    require("srt")
    port, events = free_port(socket.SOCK_DGRAM), Events()
    out = open_output(f"srt://@:{port}?mode=listener&latency=50", events)
    caller = f"srt://127.0.0.1:{port}?mode=caller"
    with LiveEncoder(frames, Outputs([out]), paced=False) as live:
        raw = RawReceiver(caller, "es")
        decoded = GstReceiver(caller, fmt="mpegts")
        try:
            each_frame_at_once(live, lambda: events.names().count("client_joined") == 2,
                               raw, decoded.decoded)
        finally:
            raw.stop()
            decoded.stop()
    encoder_cadence(decoded.decoded)


# --- errors before the first frame ------------------------------------------------------------

def test_ports_in_use_are_refused_before_any_frame():
    require("rtsp")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SinkError, match=f"cannot listen on 127.0.0.1:{port}"):
            open_output(f"rtsp://127.0.0.1:{port}/cam")
    require("srt")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(SinkError, match=f"cannot listen on 127.0.0.1:{port}"):
            open_output(f"srt://127.0.0.1:{port}?mode=listener")


@pytest.mark.parametrize("uri, message", [
    ("srt://127.0.0.1:9?mode=rendezvous", "mode must be caller or listener"),
    ("srt://127.0.0.1:9?latency=fast", "invalid value 'fast' for option 'latency'"),
    ("srt://:9", "needs a host"),
    ("srt://127.0.0.1:9?passphrase=x", "unknown option 'passphrase'"),
    ("rtsp://@:8554", "needs a path"),
    ("rtsp://@/cam", "needs a port"),
])
def test_bad_uris_are_refused_by_name(uri, message):
    with pytest.raises(SinkError, match=message):
        open_output(uri)


@pytest.mark.parametrize("python, missing", [
    ("/nonexistent/python3", "system Python /nonexistent/python3 .*python3"),
    (sys.executable, "PyGObject .*python3-gi"),  # the project's venv has no gi
])
def test_a_missing_system_part_is_named_with_its_debian_package(monkeypatch, python, missing):
    monkeypatch.setenv(gst.PYTHON_ENV, python)
    for uri in ("rtsp://@:8554/cam", "srt://127.0.0.1:9000"):
        with pytest.raises(SinkError, match=missing):
            open_output(uri)


def test_gst_child_names_what_is_missing():
    """The child's check names the element and its package (asked for one that cannot exist
    here, through the same code path)."""
    require("srt")
    code = ("import sys; sys.path.insert(0, %r); import gst_child as c; "
            "c.NEEDS['srt'].append(('nosuchelement', 'gstreamer1.0-nosuch')); "
            "print(c.missing('srt'))" % str(Path(gst.CHILD).parent))
    out = subprocess.run([gst.gst_python(), "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert "nosuchelement" in out and "gstreamer1.0-nosuch" in out


