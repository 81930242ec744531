"""Stream outputs with real receivers on 127.0.0.1: FFmpeg (PyAV) reading the RTP output's SDP
and the UDP output's MPEG-TS, a reader closing standard output early, several outputs fed by one
encoder. Counts frames and bytes; waits only as hang guards (a receiver's read timeout).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
from fractions import Fraction
from pathlib import Path

import av
import pytest
from test_telemetry import free_port, wait_until

from edge_semvc.bench.link import udp_bound
from edge_semvc.encoders import get_encoder
from edge_semvc.encoders.base import EncoderSettings
from edge_semvc.errors import SinkError
from edge_semvc.sinks import open_output
from edge_semvc.sinks.base import Outputs, StreamInfo
from edge_semvc.sinks.rtp import sdp_text
from edge_semvc.sources import open_source

ROOT = Path(__file__).resolve().parents[1]


class Datagrams:
    """Every datagram sent to a UDP port of 127.0.0.1 (0: a free one, then `port`), as sent,
    collected in `got` by a thread until the block ends."""

    def __init__(self, port: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.port, self.got = self.sock.getsockname()[1], []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)

    def _receive(self) -> None:
        while not self._done.is_set():
            try:
                self.got.append(self.sock.recv(65536))
            except socket.timeout:
                pass

    def __enter__(self) -> "Datagrams":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.sock.close()


class Receiver(threading.Thread):
    """Decodes what arrives at `url` until nothing came for `idle_s` (its read timeout)."""

    def __init__(self, url: str, fmt: str | None = None, options: dict | None = None,
                 idle_s: float = 4.0, sizes: bool = False):
        super().__init__(daemon=True)
        self.url, self.fmt, self.options, self.idle_s = url, fmt, options or {}, idle_s
        self.frames: list[tuple[int, bool, bool]] = []  # (pts, key frame, corrupt)
        self.sizes: list[tuple[int, int]] | None = [] if sizes else None  # (width, height)
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with av.open(self.url, format=self.fmt, options=self.options,
                         timeout=(60, self.idle_s)) as c:
                for f in c.decode(video=0):
                    self.frames.append((f.pts, f.key_frame, bool(getattr(f, "is_corrupt", 0))))
                    if self.sizes is not None:
                        self.sizes.append((f.width, f.height))
        except (av.error.ExitError, av.error.FFmpegError, OSError) as e:  # the read timeout
            self.error = e


def encoded(frames: int, keyint: int = 10, global_headers: bool = False,
            intra_refresh: bool = False, size: tuple[int, int] | None = None,
            backend: str = "x264"):
    """(StreamInfo, packets) of `frames` demo frames through the real x264 (or `backend`)
    encoder; `size` (even width, height): the frames' top left corner of that size."""
    src = open_source("demo://astronaut")
    width, height = size or (src.width, src.height)
    s = EncoderSettings(width=width, height=height, fps=src.fps,
                        time_base=src.time_base, tune="zerolatency", keyint=keyint,
                        global_headers=global_headers, intra_refresh=intra_refresh)
    packets = []
    with get_encoder(backend)(s) as enc:
        for i, f in enumerate(src.frames()):
            if i == frames:
                break
            if size:
                f = dataclasses.replace(f, y=f.y[:height, :width].copy(),
                                        u=f.u[:height // 2, :width // 2].copy(),
                                        v=f.v[:height // 2, :width // 2].copy())
            packets += enc.encode(f)
        packets += enc.flush()
        info = StreamInfo(s.width, s.height, s.fps, s.time_base, enc.codec, enc.headers(),
                          global_headers)
    src.close()
    return info, packets


def test_rtp_receiver_reads_the_written_sdp_and_decodes_every_frame(tmp_path):
    info, packets = encoded(40, global_headers=True)  # headers out of band: the output adds them
    port, sdp = free_port(), tmp_path / "out.sdp"
    out = open_output(f"rtp://127.0.0.1:{port}?sdp={sdp}")
    out.open(info)
    try:
        assert "m=video %d RTP/AVP 96" % port in sdp.read_text()
        rx = Receiver(str(sdp), "sdp", {"protocol_whitelist": "file,udp,rtp",
                                        "reorder_queue_size": "0"})
        rx.start()
        wait_until(lambda: udp_bound(port), what="the RTP receiver's socket")
        for p in packets:
            out.write(p)
    finally:
        out.close()
    rx.join(60)
    assert len(rx.frames) == len(packets) == 40
    assert not any(corrupt for _, _, corrupt in rx.frames)
    assert out.stats()["packets"] == 40 and out.stats()["dropped"] == 0


def test_a_late_rtp_receiver_decodes_from_its_first_idr(tmp_path):
    info, packets = encoded(60, keyint=10)
    port, sdp = free_port(), tmp_path / "late.sdp"
    out = open_output(f"rtp://127.0.0.1:{port}?sdp={sdp}")
    out.open(info)
    rx = Receiver(str(sdp), "sdp", {"protocol_whitelist": "file,udp,rtp"})
    try:
        for p in packets[:25]:  # nobody listens yet: normal for RTP
            out.write(p)
        rx.start()
        wait_until(lambda: udp_bound(port), what="the late receiver's socket")
        for p in packets[25:]:
            out.write(p)
    finally:
        out.close()
    rx.join(60)
    assert rx.frames, rx.error
    assert rx.frames[0][1], "the first frame decoded must be an IDR"
    assert not any(corrupt for _, _, corrupt in rx.frames)
    assert 30 <= len(rx.frames) <= 35  # from the IDR at frame 30 on


def test_sdp_describes_the_audio_as_ffmpegs_rtp_muxer_packs_it():
    from edge_semvc.tracks import Track

    info = StreamInfo(64, 64, Fraction(25), Fraction(1, 25), "h264", b"", False)

    def audio(codec, rate, channels, extradata=b""):
        track = Track(1, "audio", codec, Fraction(1, rate), rate, channels, extradata)
        text = sdp_text(info, "10.0.0.5", 5600, audio=track, audio_port=5602)
        return text.split("m=audio ")[1].splitlines()

    assert audio("aac", 48000, 2, b"\x11\x90") == [
        "5602 RTP/AVP 97", "a=rtpmap:97 MPEG4-GENERIC/48000/2",
        "a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
        "indexdeltalength=3;config=1190"]
    assert audio("opus", 48000, 2) == ["5602 RTP/AVP 97", "a=rtpmap:97 opus/48000/2",
                                       "a=fmtp:97 sprop-stereo=1"]
    assert audio("opus", 48000, 1) == ["5602 RTP/AVP 97", "a=rtpmap:97 opus/48000/2"]
    assert audio("pcm_mulaw", 8000, 1) == ["5602 RTP/AVP 97", "a=rtpmap:97 PCMU/8000"]
    assert audio("pcm_alaw", 16000, 2) == ["5602 RTP/AVP 97", "a=rtpmap:97 PCMA/16000/2"]
    assert "m=audio" not in sdp_text(info, "10.0.0.5", 5600)


def test_sdp_carries_the_parameter_sets_and_the_multicast_ttl():
    info, _ = encoded(1)
    text = sdp_text(info, "239.1.2.3", 5600, ttl=4)
    assert "c=IN IP4 239.1.2.3/4" in text and "a=rtpmap:96 H264/90000" in text
    assert "sprop-parameter-sets=Z" in text  # base64 of an SPS (0x67...)


def test_udp_mpegts_is_received_and_decoded():
    info, packets = encoded(40)
    port = free_port()
    out = open_output(f"udp://127.0.0.1:{port}")
    out.open(info)
    rx = Receiver(f"udp://127.0.0.1:{port}?overrun_nonfatal=1&fifo_size=500000", "mpegts")
    try:
        rx.start()
        wait_until(lambda: udp_bound(port), what="the UDP receiver's socket")
        for p in packets:
            out.write(p)
    finally:
        out.close()
    rx.join(60)
    assert len(rx.frames) >= 38, rx.error  # the probe may swallow the very first
    assert not any(corrupt for _, _, corrupt in rx.frames)


def test_nobody_listening_is_normal():
    info, packets = encoded(20)
    outs = Outputs([open_output(f"rtp://127.0.0.1:{free_port()}"),
                    open_output(f"udp://127.0.0.1:{free_port()}")])
    with outs.open(info):
        outs.write(packets)
    assert [s["packets"] for s in outs.stats()] == [20, 20]
    assert all(s["errors"] == 0 for s in outs.stats())


@pytest.mark.parametrize("uri, message", [
    ("rtp://127.0.0.1", "needs a port"),
    ("rtp://:5600", "needs a host"),
    ("rtp://127.0.0.1:5600?tll=3", "unknown option 'tll'"),
    ("udp://127.0.0.1:5600?ttl=300", "invalid value '300'"),
    ("rtmp://example.com/live", "unsupported output URI scheme"),
    ("-?format=vp9", "format must be ts, h264 or hevc"),
    ("out.avi", "unsupported output extension"),
])
def test_bad_output_uris_are_refused_naming_what_is_wrong(uri, message):
    with pytest.raises(SinkError, match=message):
        open_output(uri)


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "edge_semvc", *map(str, args)], cwd=ROOT,
                          capture_output=True, **kw)


def test_one_encode_feeds_a_file_and_streams(tmp_path):
    out, stats = tmp_path / "a.mp4", tmp_path / "s.json"
    r = run_cli("encode", "demo://astronaut", out, f"udp://127.0.0.1:{free_port()}",
                f"rtp://127.0.0.1:{free_port()}", "--frames", 30, "--stats-json", stats)
    assert r.returncode == 0, r.stderr.decode()
    s = json.loads(stats.read_text())
    assert [o["packets"] for o in s["outputs"]] == [30, 30, 30]
    assert s["bytes"] == out.stat().st_size
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == 30
    assert b"SDP for rtp://" in r.stderr


def test_standard_output_closed_by_its_reader_is_exit_3_with_statistics(tmp_path):
    """`encode ... - | reader` where the reader leaves after 20 kB: exit 3, the statistics
    written, the other output (a file) written to the end of the input and decodable."""
    out, stats = tmp_path / "b.ts", tmp_path / "s.json"
    reader = "import sys; sys.stdin.buffer.read(20000)"
    enc = subprocess.Popen([sys.executable, "-m", "edge_semvc", "encode", "demo://astronaut",
                            "-", str(out), "--stats-json", str(stats), "--no-map"],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    head = subprocess.run([sys.executable, "-c", reader], stdin=enc.stdout)
    enc.stdout.close()
    _, err = enc.communicate(timeout=120)
    assert head.returncode == 0
    assert enc.returncode == 3, err.decode()
    assert b"standard output was closed by its reader" in err and b"Traceback" not in err
    s = json.loads(stats.read_text())
    assert s["complete"] is False and s["frames"] > 0
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == s["outputs"][1]["packets"] > 0
    assert s["frames"] == s["outputs"][1]["packets"] == 90  # the whole demo clip
    assert s["outputs"][0]["state"] == "failed" and "closed by its reader" in \
        s["outputs"][0]["error"]
    assert b"the run goes on for " + str(out).encode() in err


def test_standard_output_raw_annexb_decodes():
    r = run_cli("encode", "demo://astronaut", "-", "--stdout-format", "h264", "--frames", 20,
                "--no-map")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.startswith(b"\x00\x00\x00\x01") or r.stdout.startswith(b"\x00\x00\x01")
    codec = av.CodecContext.create("h264", "r")
    packets = codec.parse(r.stdout) + codec.parse(None)  # None: the parser's last unit
    frames = sum(len(codec.decode(p)) for p in packets) + len(codec.decode(None))
    assert frames == 20


def test_standard_output_given_twice_is_refused():
    r = run_cli("encode", "demo://astronaut", "-", "-")
    assert r.returncode == 2 and b"standard output (-) can be given once" in r.stderr


def test_outputs_want_in_band_headers_when_any_stream_is_there():
    assert Outputs([open_output("x.mp4")]).global_headers
    assert not Outputs([open_output("x.mp4"), open_output("udp://127.0.0.1:9")]).global_headers


def test_fps_is_kept_in_stream_info():
    info, _ = encoded(1)
    assert info.fps == Fraction(30) and info.codec == "h264"


SENDER = """
import dataclasses, sys, time
sys.path.insert(0, {tests!r})
from test_outputs import encoded
from edge_semvc.sinks import open_output
events = []
out = open_output("rtp://127.0.0.1:5004", on_event=lambda name, **f: print(name, flush=True))
info, packets = encoded(30, intra_refresh={refresh!r})
step = packets[1].pts - packets[0].pts
out.open(info)
for n in range(100000):
    p = packets[n if n < len(packets) else 1 + (n - 1) % (len(packets) - 1)]  # one first IDR
    out.write(dataclasses.replace(p, pts=n * step, dts=n * step))
    if n == 30:
        print("ready", flush=True)
    if sys.stdin.closed:
        break
    time.sleep(0.005)
    if out.stats()["state"] == "streaming" and n > 60 and out.stats()["errors"]:
        break
print("stats", out.stats(), flush=True)
out.close()
"""


@pytest.mark.parametrize("refresh", [False, True], ids=["idrs", "intra-refresh"])
def test_a_stream_output_reports_a_lost_route_and_its_return(tmp_path, refresh):
    """A real network fault in a network namespace of the test's own: a routing rule
    prohibits the receiver's address (sendto: EACCES), then is removed. The output reports
    output_lost once, keeps going, and output_back when packets leave again: at the next IDR,
    or with intra refresh, which makes none, at the next recovery point (it never came back,
    before)."""
    import os
    import shutil

    ns = f"semvc{os.getpid()}"
    if shutil.which("ip") is None or os.geteuid() != 0 or subprocess.run(
            ["ip", "netns", "add", ns], capture_output=True).returncode:
        pytest.skip("needs root and `ip netns` (iproute2) for a network namespace")
    try:
        for cmd in (["link", "set", "lo", "up"], ["rule", "add", "pref", "100", "table", "local"],
                    ["rule", "del", "pref", "0"]):  # local routes after our rule from now on
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        route = ["ip", "-n", ns, "rule", "{}", "to", "127.0.0.1", "prohibit", "pref", "10"]
        code = SENDER.format(tests=str(Path(__file__).parent), refresh=refresh)
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code],
                                cwd=ROOT, stdout=subprocess.PIPE, text=True)
        guard = threading.Timer(180, proc.kill)  # a hang guard, not a time being measured
        guard.start()
        lines = []

        def expect(word):
            for line in proc.stdout:
                lines.append(line.strip())
                if line.startswith(word):
                    return
            raise AssertionError(f"no {word!r}: {lines}")

        expect("ready")
        subprocess.run([a.replace("{}", "add") for a in route], check=True)  # route gone
        expect("output_lost")
        subprocess.run([a.replace("{}", "del") for a in route], check=True)  # route back
        expect("output_back")
        expect("stats")
        assert proc.wait(60) == 0
        guard.cancel()
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    assert lines.count("output_lost") == 1 and lines.count("output_back") == 1, lines
    stats = lines[-1]
    assert "'state': 'streaming'" in stats and "'errors': 0" not in stats


def test_a_send_that_keeps_failing_is_never_said_to_be_back(tmp_path):
    """An input with audio: the MPEG-TS muxer holds the IDR it resumes at until the audio
    packet after it, and the send fails only then. Nothing ever leaves (a broadcast address
    without ?broadcast=1): output_lost once, never output_back (it said back at every IDR, 25
    ms before lost again, and counted each as a reconnect)."""
    from conftest import shared_file

    clip = shared_file("data", "video", "drone_karma_coast_854x480.mp4")
    stats = tmp_path / "s.json"
    r = run_cli("encode", clip, f"udp://255.255.255.255:{free_port()}", "--frames", 130,
                "--no-map", "--stats-json", stats)  # IDRs at 0, 60 and 120
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(stats.read_text())["outputs"][0]
    log = r.stderr.decode()
    assert log.count("output_lost") == 1 and "output_back" not in log, log
    assert out["state"] == "lost" and out["reconnects"] == 0 and out["errors"] == 3


def test_udp_to_a_broadcast_address_needs_broadcast_1():
    """The kernel refuses a broadcast destination unless asked (EACCES): said with its fix;
    with `?broadcast=1` a socket listening on every address gets the stream."""
    info, packets = encoded(10)
    port, events = free_port(), []
    refused = open_output(f"udp://255.255.255.255:{port}",
                          lambda name, **fields: events.append((name, fields)))
    with Outputs([refused]).open(info) as outs:
        outs.write(packets)
    assert refused.state == "lost" and refused.packets == 0
    assert events[0][0] == "output_lost" and "?broadcast=1" in events[0][1]["reason"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("0.0.0.0", port))
        rx.settimeout(10)
        out = open_output(f"udp://255.255.255.255:{port}?broadcast=1")
        with Outputs([out]).open(info) as outs:
            outs.write(packets)
        assert out.packets == 10 and out.errors == 0
        assert rx.recv(65536)[0] == 0x47  # an MPEG-TS sync byte


@pytest.mark.parametrize("uri, ttl", [("rtp://239.1.2.3:5600", 1), ("udp://239.1.2.3:5600", 1),
                                      ("udp://239.1.2.3:5600?ttl=8", 8)])
def test_multicast_stays_on_this_network_unless_a_ttl_is_given(uri, ttl):
    """FFmpeg's own default TTL is 16: the URL it is given always names one (the SDP says 1)."""
    out = open_output(uri)
    url = out._url(5600) if uri.startswith("rtp") else out._target()[0]
    assert f"ttl={ttl}" in url.split("?")[1].split("&")


def test_a_receivers_request_waits_for_an_idr_not_an_intra_refresh_recovery_point():
    """With intra refresh every refresh period ends in a recovery point, which x264 flags as a
    keyframe; the RTSP and SRT children start a receiver at an IDR only, and ask once. A
    request past the receivers' budget was dropped by the next recovery point: that client
    waited until someone else joined. It now waits for the IDR its budget grants."""
    from edge_semvc.sinks.base import Output
    from edge_semvc.sinks.nal import is_idr

    class Asking(Output):  # a receiver asking at these frames, as a client pressing play
        asks_for_receivers, uri = True, "asking"

        def open(self, info):
            pass

        def write(self, packet):
            pass

        def wants_idr(self, pts):
            return pts in (0, 1, 2, 3)  # the fourth is past the burst of three

        def close(self):
            pass

    src = open_source("demo://astronaut")
    s = EncoderSettings(width=src.width, height=src.height, fps=Fraction(30),
                        time_base=Fraction(1, 30), tune="zerolatency", keyint=10,
                        intra_refresh=True)
    granted, recovery = [], []
    with get_encoder("x264")(s) as enc, Outputs([Asking()]) as outputs:
        outputs.open(StreamInfo(s.width, s.height, s.fps, s.time_base, enc.codec, enc.headers(),
                                False))
        for n, frame in zip(range(60), src.frames()):
            frame.pts = n
            if outputs.wants_idr(n):
                granted.append(n)
            packets = enc.encode(frame, None, force_idr=bool(granted) and granted[-1] == n)
            recovery += [p.pts for p in packets if p.keyframe and not is_idr(p.data)]
            outputs.write(packets)
    src.close()
    assert granted[:3] == [0, 1, 2] and recovery and recovery[0] < 30, (granted, recovery)
    assert len(granted) == 4 and 30 <= granted[3] <= 34, granted  # once the budget refilled


def test_the_sdp_is_never_written_through_a_link_someone_left_beside_it(tmp_path):
    """In a shared folder (/tmp) another user may leave `<sdp>.part` as a link to a file of
    the user who streams: the SDP goes to its own file, the other file stays as it was, and the
    SDP is readable as a file made by open() is (the umask's mode)."""
    info, _ = encoded(2)
    victim, sdp = tmp_path / "config.yml", tmp_path / "drone.sdp"
    victim.write_text("precious\n")
    (tmp_path / "drone.sdp.part").symlink_to(victim)
    out = open_output(f"rtp://127.0.0.1:{free_port()}?sdp={sdp}")
    out.open(info)
    out.close()
    assert victim.read_text() == "precious\n"
    assert sdp.read_text().startswith("v=0") and not sdp.is_symlink()
    umask = os.umask(0o022)
    os.umask(umask)
    assert sdp.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yml", "drone.sdp",
                                                          "drone.sdp.part"]
    sdp.chmod(0o640)  # made for a receiver's group: its mode stays when it is written anew
    out = open_output(f"rtp://127.0.0.1:{free_port()}?sdp={sdp}")
    out.open(info)
    out.close()
    assert sdp.stat().st_mode & 0o777 == 0o640
