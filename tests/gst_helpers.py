"""What the GStreamer outputs' tests (test_gst_rtsp.py, test_rtsp_reports.py, test_gst_outputs.py,
test_gst_child.py) share: the skip when the system Python lacks a part, a free port, the
outputs' events kept, the real encoder fed live into the outputs, and the real receivers: FFmpeg
through PyAV, and GStreamer's rtspsrc/srtsrc in a system-Python process (tests/gst_receiver.py)
whose stream PyAV decodes, with the checks on what they got. Nothing waits on the wall clock but
hang guards. Assertions here are rewritten by pytest (conftest.py registers this module), so a
failing check reports its values."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest

from edge_semvc.encoders import EncoderSettings, get_encoder
from edge_semvc.sinks import gstreamer as gst
from edge_semvc.sinks.base import Outputs, StreamInfo

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


class LiveEncoder:
    """The real encoder fed with the demo frames, looped, at about 30 frames a second in a
    thread, into `outputs` (an Outputs), an IDR forced whenever an output asks (as the
    pipeline does). IDRs come only when asked: keyint is unbounded and nothing else inserts
    one, so a receiver that decodes got an IDR someone asked for. `audio`: a track and its
    packets (from a real file), looped beside the video, each written once due."""

    def __init__(self, frames, outputs: Outputs, backend="x264", global_headers=False,
                 paced=True, tune="zerolatency", audio=None):
        f0 = frames[0]
        # tune None: x264's B-frames (veryfast, the encoder's default preset, as ultrafast has
        # none)
        settings = EncoderSettings(width=f0.width, height=f0.height, fps=Fraction(30),
                                   time_base=Fraction(1, 30),
                                   preset="ultrafast" if tune else "veryfast",
                                   tune=tune, keyint=1_000_000, caller_idr=True,
                                   global_headers=global_headers)
        self.encoder = get_encoder(backend)(settings)
        self.info = StreamInfo(f0.width, f0.height, settings.fps, settings.time_base,
                               self.encoder.codec, self.encoder.headers(), global_headers,
                               (audio[0],) if audio else ())
        self.audio = audio[1] if audio else []
        self._audio_sent = 0  # packets of `audio` written, its loops counted
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
        self._add_audio(Fraction(n + 1) * self.info.time_base)
        idr = self.outputs.wants_idr(n) or n == 0 or force_idr
        if idr:
            self.idrs.append(n)
        packets = self.encoder.encode(frame, None, force_idr=idr)
        self.outputs.write(packets)
        self.count = n + 1
        return b"".join(bytes(p.data) for p in packets)

    def _add_audio(self, until: Fraction) -> None:
        """The audio packets (looped, the first at the video's start) due before `until`
        (seconds)."""
        if not self.audio:
            return
        first, last = self.audio[0], self.audio[-1]
        span = (last.pts + last.duration - first.pts) * last.time_base
        due = []
        while True:
            loop, i = divmod(self._audio_sent, len(self.audio))
            p = self.audio[i].shifted(loop * span - first.time)
            if p.time >= until:
                break
            due.append(p)
            self._audio_sent += 1
        self.outputs.add_track_packets(due)

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


class ScriptedRtspClient:
    """An RTSP client as a VMS scripts one: OPTIONS, DESCRIBE and SETUP of every stream
    (interleaved over TCP, or `transport` "udp": RTP and RTCP on a pair of UDP ports of its
    own per stream), then PLAY when the test says (`play`); `read` the RTP packets that
    follow as (stream, seq, rtptime, marker, payload), streams numbered as the SDP has them."""

    def __init__(self, url: str, transport: str = "tcp"):
        import re

        host, port = re.match(r"rtsp://([^:/]+):(\d+)", url).groups()
        self.url, self.sock = url, socket.create_connection((host, int(port)), timeout=GUARD_S)
        self.buf, self.cseq, self.session = b"", 0, None
        self.udp: list[tuple[socket.socket, socket.socket, tuple]] = []  # per stream: RTP,
        # RTCP and the server's RTCP address
        self.request("OPTIONS")
        _, self.sdp = self.request("DESCRIBE", "Accept: application/sdp\r\n")
        controls = [c for c in re.findall(r"a=control:(\S+)", self.sdp) if "stream=" in c]
        for n, control in enumerate(controls):
            session = f"Session: {self.session}\r\n" if self.session else ""
            if transport == "udp":
                rtp, rtcp = _udp_pair()
                spec = (f"RTP/AVP;unicast;client_port={rtp.getsockname()[1]}-"
                        f"{rtcp.getsockname()[1]}")
            else:
                spec = f"RTP/AVP/TCP;unicast;interleaved={2 * n}-{2 * n + 1}"
            head, _ = self.request("SETUP", f"Transport: {spec}\r\n{session}",
                                   control if "://" in control else f"{url}/{control}")
            self.session = self.session or re.search(r"Session: ([^;\r\n]+)", head).group(1)
            if transport == "udp":
                server_rtcp = int(re.search(r"server_port=\d+-(\d+)", head).group(1))
                self.udp.append((rtp, rtcp, (host, server_rtcp)))
        self.rtp_info: list[dict] = []  # per stream: seq and rtptime, from PLAY's RTP-Info

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "the server closed the connection"
            self.buf += chunk

    def request(self, method: str, headers: str = "", uri: str = "") -> tuple[str, str]:
        import re

        self.cseq += 1
        self.sock.sendall(f"{method} {uri or self.url} RTSP/1.0\r\nCSeq: {self.cseq}\r\n"
                          f"{headers}\r\n".encode())
        while True:  # the interleaved packets before the reply (after PLAY) are left out
            self._fill(4)
            if self.buf[0] != 0x24:
                break
            self._fill(4 + int.from_bytes(self.buf[2:4], "big"))
            self.buf = self.buf[4 + int.from_bytes(self.buf[2:4], "big"):]
        while b"\r\n\r\n" not in self.buf:
            self._fill(len(self.buf) + 1)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        text = head.decode()
        assert " 200 " in text.splitlines()[0], text
        length = re.search(r"Content-Length: (\d+)", text, re.I)
        n = int(length.group(1)) if length else 0
        self._fill(n)
        body, self.buf = self.buf[:n], self.buf[n:]
        return text, body.decode()

    def play(self) -> None:
        import re

        head, _ = self.request("PLAY", f"Session: {self.session}\r\nRange: npt=0-\r\n")
        info = re.search(r"RTP-Info: (.*)", head).group(1)
        self.rtp_info = [{k: int(v) for k, v in re.findall(r"(seq|rtptime)=(\d+)", s)}
                         for s in info.split(",")]

    def read(self) -> tuple[int, int, int, bool, bytes]:
        """The next RTP packet (RTCP left out)."""
        while True:
            channel, packet = self.read_any()
            if channel % 2 == 0:
                return (channel // 2, int.from_bytes(packet[2:4], "big"),
                        int.from_bytes(packet[4:8], "big"), bool(packet[1] & 0x80), packet[12:])

    def read_any(self) -> tuple[int, bytes]:
        """The next packet, RTP or RTCP: (its channel as interleaved: 2n RTP, 2n + 1 RTCP of
        stream n; the packet)."""
        if self.udp:
            import select

            socks = [s for pair in self.udp for s in pair[:2]]
            ready, _, _ = select.select(socks, [], [], GUARD_S)
            assert ready, "nothing came from the server"
            return socks.index(ready[0]), ready[0].recv(1 << 16)
        self._fill(4)
        assert self.buf[0] == 0x24, self.buf[:16]
        channel, n = self.buf[1], int.from_bytes(self.buf[2:4], "big")
        self._fill(4 + n)
        packet, self.buf = self.buf[4:4 + n], self.buf[4 + n:]
        return channel, packet

    def send(self, channel: int, packet: bytes) -> None:
        """A packet to the server (an RTCP report on an odd channel)."""
        if self.udp:
            _, rtcp, server = self.udp[channel // 2]
            rtcp.sendto(packet, server)
            return
        self.sock.sendall(bytes([0x24, channel]) + len(packet).to_bytes(2, "big") + packet)

    def close(self) -> None:
        self.sock.close()
        for rtp, rtcp, _ in self.udp:
            rtp.close()
            rtcp.close()


def _udp_pair() -> tuple[socket.socket, socket.socket]:
    """Two UDP sockets on 127.0.0.1, on an even port and the next (RTP, RTCP)."""
    while True:
        rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rtp.bind(("127.0.0.1", 0))
        port = rtp.getsockname()[1]
        if port % 2 == 0 and port < 65535:
            rtcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                rtcp.bind(("127.0.0.1", port + 1))
                return rtp, rtcp
            except OSError:
                rtcp.close()
        rtp.close()
