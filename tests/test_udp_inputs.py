"""Streams sent to this machine without a server (sources/udp.py), from real senders: MPEG-TS
over UDP from FFmpeg, RTP H.264/H.265 without an SDP from GStreamer (QGroundControl's
convention), and our own `rtp://` output's `.sdp` file; the sender stopping ends `encode`
(exit 3) and loses `serve`'s camera, which comes back when the sender starts again."""
from __future__ import annotations

import json
import logging
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import VIDEO
from test_serve_faults import Clock, camera, pipeline_config, stopped
from test_telemetry import wait_until

from edge_semvc.cli import main
from edge_semvc.errors import DecodeError, SourceError
from edge_semvc.sources import open_source, pyav, udp
from edge_semvc.sources.paced import PacedSource, Pacing

CLIP = VIDEO / "overhead_parking_cars_768x432.mp4"  # 12.5 fps, with AAC
QUIET_S = 1.5  # the read timeout in these tests (5 s in use): a sender gone is told sooner


def first_seconds(tmp_path, seconds: int) -> Path:
    """The first `seconds` of CLIP (12.5 frames a second, and its sound)."""
    if not CLIP.exists() or not shutil.which("ffmpeg"):
        pytest.skip("the clip or ffmpeg is missing")
    path = tmp_path / f"clip{seconds}.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(CLIP), "-t", str(seconds), "-c",
                    "copy", str(path)], check=True)
    return path


@pytest.fixture
def clip3(tmp_path):
    """The first 3 s of CLIP (38 frames)."""
    return first_seconds(tmp_path, 3)


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(pyav, "LIVE_TIMEOUT_S", (10.0, QUIET_S))


def free_udp_port(pair: bool = False) -> int:
    """A free UDP port (`pair`: an even one with the next free too: RTP and its RTCP)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if not pair or (port % 2 == 0 and port < 65535 and bound_by_another(port + 1) is False):
            return port


def bound_by_another(port: int) -> bool:
    """Whether a UDP socket is bound to `port` (read from /proc: binding it to see would race
    with the receiver's own bind)."""
    lines = []
    for table in ("/proc/net/udp", "/proc/net/udp6"):  # IPv6 sockets in the second
        with open(table) as f:
            lines += list(f)[1:]
    return any(line.split()[1].endswith(f":{port:04X}") for line in lines)


def send_when_bound(port: int, command: list[str]) -> threading.Thread:
    """Runs `command` (a sender) once something listens on UDP `port`: nothing is lost before
    the receiver is there."""
    def run():
        wait_until(lambda: bound_by_another(port), timeout=120, what=f"a receiver on {port}")
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def ffmpeg_ts(clip, port: int) -> list[str]:
    return ["ffmpeg", "-v", "error", "-re", "-i", str(clip), "-c", "copy", "-f", "mpegts",
            f"udp://127.0.0.1:{port}?pkt_size=1316"]


def gst_rtp(port: int, frames: int, codec: str = "h264") -> list[str]:
    enc = {"h264": ["x264enc", "tune=zerolatency", "speed-preset=ultrafast", "key-int-max=25",
                    "!", "rtph264pay", "config-interval=1", "pt=96"],
           "hevc": ["x265enc", "tune=zerolatency", "speed-preset=ultrafast", "key-int-max=25",
                    "!", "rtph265pay", "config-interval=1", "pt=96"]}[codec]
    return ["gst-launch-1.0", "-q", "videotestsrc", "is-live=true", f"num-buffers={frames}", "!",
            "video/x-raw,format=I420,width=320,height=240,framerate=25/1", "!", *enc, "!",
            "udpsink", "host=127.0.0.1", f"port={port}"]


def probe(path, entries: str, stream: str = "v") -> list[list[str]]:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", stream, "-show_entries",
                          entries, "-of", "csv=p=0", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return [line.split(",") for line in out.split()]


def encode_until_the_sender_stops(uri: str, sender: threading.Thread, tmp_path):
    """`encode URI out.mkv --no-map` of a live input until `sender` stopped sending: the exit
    status, the run's statistics, the file written."""
    out, stats = tmp_path / "out.mkv", tmp_path / "stats.json"
    status = main(["encode", uri, str(out), "--no-map", "--stats-json", str(stats)])
    sender.join(60)
    return status, json.loads(stats.read_text()), out


def read_all(source) -> tuple[list, Exception | None]:
    frames, error = [], None
    try:
        for f in source.frames():
            frames.append(f)
    except SourceError as e:
        error = e
    finally:
        source.close()
    return frames, error


def test_mpegts_over_udp_is_encoded_with_its_sound_until_the_sender_stops(tmp_path, clip3,
                                                                         quick):
    """`encode udp://@:PORT`: FFmpeg's MPEG-TS at its own rate; every frame is encoded with its
    timestamps and the sound, the last too (FFmpeg's demuxer holds it until the next one
    starts, and gives it out once the read timeout ends its input: before, it was lost); the
    sender stopping ends the run as a camera gone: exit 3, saying so."""
    port = free_udp_port()
    sent = len(probe(clip3, "packet=pts"))
    sender = send_when_bound(port, ffmpeg_ts(clip3, port))
    status, result, out = encode_until_the_sender_stops(f"udp://@:{port}", sender, tmp_path)
    assert status == 3 and not result["complete"], result
    assert f"no packet on udp port {port} for 2 s (the sender stopped" in result["error"]
    assert result["frames"] == sent, (sent, result["frames"])
    assert result["corrupt_packets"] == result["concealed_frames"] == 0
    times = sorted(float(t) for (t,) in probe(out, "packet=pts_time"))
    assert len(times) == result["frames"]
    assert all(abs(b - a - 0.08) < 0.002 for a, b in zip(times, times[1:])), times  # 12.5 fps
    assert probe(out, "stream=codec_name", "a") == [["aac"]]
    assert len(probe(out, "packet=pts", "a")) > 100  # 3 s of 48 kHz AAC: 140 packets


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_rtp_without_sdp_from_gstreamer(codec, quick):
    """QGroundControl's convention, `rtph26Xpay config-interval=1 pt=96 ! udpsink`: every
    frame, timestamps one frame apart, and the sender stopping said as such."""
    if not shutil.which("gst-launch-1.0"):
        pytest.skip("GStreamer is missing")
    port = free_udp_port(pair=True)
    sender = send_when_bound(port, gst_rtp(port, 30, codec))
    source = open_source(f"rtp://@:{port}?codec={codec}&pt=96")
    assert (source.width, source.height, source.fps) == (320, 240, 25)
    frames, error = read_all(source)
    sender.join(60)
    assert len(frames) == 30
    assert [b.pts - a.pts for a, b in zip(frames, frames[1:])] == [3600] * 29  # 90 kHz, 25 fps
    assert isinstance(error, DecodeError)
    assert str(error) == (f"rtp://@:{port}?codec={codec}&pt=96: no packet on udp port {port} "
                          "for 2 s (the sender stopped, or its link dropped)")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize("given", ["udp://[::]:{port}", "rtp://[::]:{port}"])
def test_ipv6_inputs_receive_an_ipv6_sender(given, clip3, quick):
    """`udp://[::]:PORT` and `rtp://[::]:PORT` listen on every address, IPv6 too, as FFmpeg
    does (before: refused, "'::' has no IPv4 address")."""
    if not ipv6_loopback() or not shutil.which("gst-launch-1.0"):
        pytest.skip("no IPv6 loopback, or GStreamer is missing")
    port = free_udp_port(pair=True)
    if given.startswith("udp"):
        sent = len(probe(clip3, "packet=pts"))
        command = [*ffmpeg_ts(clip3, port)[:-1], f"udp://[::1]:{port}?pkt_size=1316"]
    else:
        sent, command = 30, [*gst_rtp(port, 30)[:-2], "host=::1", f"port={port}"]
    sender = send_when_bound(port, command)
    frames, error = read_all(open_source(given.format(port=port)))
    sender.join(60)
    assert sent - 1 <= len(frames) <= sent and "no packet on udp port" in str(error), error


@pytest.mark.parametrize("sent", ["ts", "rtp"])
def test_a_sender_that_restarts_is_followed_on_without_a_break(sent, tmp_path, caplog, quick):
    """A sender that restarts within the read timeout: FFmpeg's MPEG-TS clock starts again
    (back), an RTP sender's timestamps start anywhere (here 100 s back, which FFmpeg unwraps as
    13 h ahead: written so, the MP4 muxer failed with a traceback, "Not yet implemented in
    FFmpeg"). Every frame goes on one frame after the one before, said as a restart (before:
    "files joined end to end?", and the jump ahead kept)."""
    if not CLIP.exists() or not shutil.which("gst-launch-1.0"):
        pytest.skip("the clip or GStreamer is missing")
    port = free_udp_port(pair=True)
    if sent == "ts":
        clip = tmp_path / "clip2.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(CLIP), "-t", "2", "-an", "-c",
                        "copy", str(clip)], check=True)
        frames, step = 2 * len(probe(clip, "packet=pts")), 7200  # 12.5 fps at 90 kHz
        once = [shlex.join(ffmpeg_ts(clip, port))] * 2
    else:
        frames, step = 60, 3600  # 25 fps
        once = [shlex.join(gst_rtp(port, 30)).replace(  # sequence numbers ahead (else dropped)
            "pt=96", f"pt=96 timestamp-offset={ts} seqnum-offset={seq}")
            for ts, seq in ((9_000_000, 1000), (0, 20000))]
    sender = send_when_bound(port, ["bash", "-c", f"{once[0]}; sleep 0.5; {once[1]}"])
    with caplog.at_level(logging.WARNING):
        got, error = read_all(open_source(f"{sent if sent == 'rtp' else 'udp'}://@:{port}"))
    sender.join(60)
    assert "no packet on udp port" in str(error), error
    assert frames - 2 <= len(got) <= frames
    assert [b.pts - a.pts for a, b in zip(got, got[1:])] == [step] * (len(got) - 1)
    said = "clock went back at" if sent == "ts" else "clock jumped 47620.7 s ahead"
    assert said in caplog.text
    assert "(the sender restarted, or its clock was reset?)" in caplog.text


def test_our_rtp_outputs_sdp_file_is_an_input_with_its_sound(tmp_path, clip3, quick):
    """The `.sdp` our `rtp://` output writes beside itself, given as the input: the video and
    the AAC on the next port pair, every frame."""
    port = free_udp_port(pair=True)
    sdp = tmp_path / "cam.sdp"
    send = [sys.executable, "-m", "edge_semvc", "encode", str(clip3),
            f"rtp://127.0.0.1:{port}?sdp={sdp}", "--no-map"]
    subprocess.run(send, check=True, capture_output=True)  # the SDP, before any receiver
    sender = send_when_bound(port, [*send, "--realtime"])
    status, result, out = encode_until_the_sender_stops(str(sdp), sender, tmp_path)
    assert status == 3 and result["frames"] == len(probe(clip3, "packet=pts")), result
    assert f"no packet on udp ports {port}, {port + 2} for 2 s" in result["error"]
    assert probe(out, "stream=codec_name", "a") == [["aac"]]


def test_a_reader_slower_than_the_stream_loses_packets_not_the_input(clip3, monkeypatch, quick):
    """FFmpeg's UDP FIFO overflowing (a reader that fell behind: the models loading, a slow
    machine) drops what does not fit; the input goes on until the sender stops (FFmpeg's
    default ends it: "Input/output error")."""
    monkeypatch.setattr(udp, "UDP_OPTIONS", {**udp.UDP_OPTIONS, "fifo_size": "100"})
    port = free_udp_port()
    sender = send_when_bound(port, ffmpeg_ts(clip3, port))
    source = open_source(f"udp://@:{port}")
    frames, error = [], None
    try:
        for f in source.frames():
            frames.append(f)
            time.sleep(0.12)  # slower than 12.5 fps
    except SourceError as e:
        error = e
    source.close()
    sender.join(60)
    assert "no packet on udp port" in str(error), error


def test_a_stream_joined_between_key_frames_starts_at_the_next_one(tmp_path, monkeypatch):
    """A receiver started after its sender, with key frames 7 s apart: FFmpeg's probe gives up
    (its open timeout, here 3 s) before parameter sets come; the input opens at the next key
    frame, the packets before it not counted as damage (before: "cannot read the picture size
    of udp://@:PORT (corrupt or not a video)")."""
    monkeypatch.setattr(pyav, "LIVE_TIMEOUT_S", (3.0, QUIET_S))
    if not CLIP.exists():
        pytest.skip("the clip is missing")
    ts = tmp_path / "gop7.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(CLIP), "-t", "9", "-an", "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", "88", "-keyint_min", "88", "-sc_threshold",
                    "0", str(ts)], check=True)
    packets = probe(ts, "packet=pts,flags")
    key = [int(p[0]) for p in packets if "K" in p[1]][1]  # at 7.04 s
    after = sum(int(p[0]) >= key for p in packets)
    port = free_udp_port()
    sender = subprocess.Popen(ffmpeg_ts(ts, port))
    try:
        time.sleep(1)  # the first key frame, at 0 s, is gone when the receiver starts
        source = open_source(f"udp://@:{port}")
        assert (source.width, source.height) == (768, 432)
        frames, error = read_all(source)
    finally:
        sender.wait(60)
    assert "no packet on udp port" in str(error), error
    assert frames[0].pts == key and after - 1 <= len(frames) <= after
    assert source.damaged_packets == source.concealed_frames == 0


def test_a_stall_seen_by_the_pacing_says_no_packet_came(clip3):
    """`serve` watches a camera's frames (PacedSource's stall_s on its clock): a stream sent to
    this machine whose sender stopped is said as that, not as a frozen input."""
    port = free_udp_port()
    sender = send_when_bound(port, ffmpeg_ts(clip3, port))
    source = open_source(f"udp://@:{port}")
    clock = Clock()
    paced = PacedSource(source, Pacing(realtime=True, stall_s=5), clock=clock, sleep=clock.sleep)
    frames = paced.frames()
    next(frames)
    sender.join(60)
    wait_until(source.quiet_reason, timeout=30, what="a second without a packet")
    clock.advance(5)  # before the source's own 5 s read timeout
    with pytest.raises(DecodeError, match=f"^udp://@:{port}: no packet on udp port {port} for "):
        for _ in frames:
            pass
    paced.close()


def lost_and_back(tmp_path, uri: str, start_sender, said: str) -> None:
    """A serve camera on live input `uri`: lost when the sender `start_sender()` starts stops
    (in the words `said`), and back, with new frames, when it starts sending again."""
    (tmp_path / "rec").mkdir()
    sender = start_sender()
    cam, events = camera(tmp_path, uri, cfg=pipeline_config())
    cam.start()
    try:
        wait_until(lambda: cam.frames_total > 0, timeout=120, what="frames")
        sender.join(60)
        wait_until(lambda: events.named("source_lost"), timeout=60, what="the camera lost")
        lost = events.named("source_lost")[0]
        assert said in lost["reason"], lost
        assert cam.state in ("lost", "starting")
        frames_before = cam.frames_total
        sender = start_sender()  # it listens again meanwhile
        wait_until(lambda: events.named("source_back"), timeout=60, what="the camera back")
        wait_until(lambda: cam.frames_total > frames_before, timeout=60, what="new frames")
        sender.join(60)
    finally:
        stopped(cam)
    names = [n for n in events.names() if n in ("source_lost", "source_back")]
    assert names[:2] == ["source_lost", "source_back"], events


def test_a_serve_camera_on_udp_is_lost_when_the_sender_stops_and_back_when_it_starts(
        tmp_path, clip3, quick):
    port = free_udp_port()
    lost_and_back(tmp_path, f"udp://@:{port}",
                  lambda: send_when_bound(port, ffmpeg_ts(clip3, port)),
                  f"no packet on udp port {port}")


def test_an_rtp_input_with_no_sender_says_so(monkeypatch):
    """RTP through an SDP opens at once, whatever comes: a silent port was said as "cannot read
    the picture size of rtp://@:PORT (corrupt or not a video)", after the open and first read
    timeouts."""
    monkeypatch.setattr(pyav, "LIVE_TIMEOUT_S", (1.0, 1.0))
    port = free_udp_port(pair=True)
    with pytest.raises(SourceError, match=f"^cannot open rtp://@:{port}: no stream came on udp "
                       f"port {port} within \\d+ s \\(is the sender on"):
        open_source(f"rtp://@:{port}")


def test_a_serve_camera_stopped_while_its_input_opens_is_not_said_lost(tmp_path, monkeypatch):
    """`serve` stopped (or a reload removing the camera) while FFmpeg waits for a sender: the
    camera stops once the open gives up, without a `source_lost` (before: one, at shutdown)."""
    monkeypatch.setattr(pyav, "LIVE_TIMEOUT_S", (2.0, QUIET_S))
    (tmp_path / "rec").mkdir()
    port = free_udp_port()
    cam, events = camera(tmp_path, f"udp://@:{port}", cfg=pipeline_config())
    cam.start()
    wait_until(lambda: bound_by_another(port), timeout=60, what="the input opening")
    stopped(cam)
    assert events.named("source_lost") == [] and cam.state == "stopped", events


@pytest.mark.parametrize("sent, given, message", [
    ("rtp97", "udp://@:{port}", "cannot open udp://@:{port}: RTP with payload type 97 comes on "
                                "udp port {port}, not MPEG-TS: give rtp://@:{port}?pt=97"),
    ("rtp97", "rtp://@:{port}", "cannot open rtp://@:{port}: RTP with payload type 97 comes on "
                                "udp port {port}, not 96: give rtp://@:{port}?pt=97"),
    ("hevc", "rtp://@:{port}", "RTP of payload type 96 comes on udp port {port} but no picture "
                               "decoded as H264: is it codec=hevc?"),
    ("ts", "rtp://@:{port}", "cannot open rtp://@:{port}: MPEG-TS comes on udp port {port}, not "
                             "RTP: give udp://@:{port}"),
])
def test_a_stream_the_input_does_not_take_is_named_with_the_input_to_give(
        sent, given, message, clip3, monkeypatch):
    """FFmpeg drops RTP of another payload type unsaid, and says no more than "Invalid data" or
    nothing of MPEG-TS given to an RTP input and the reverse: what comes on the port is said."""
    if not shutil.which("gst-launch-1.0"):
        pytest.skip("GStreamer is missing")
    monkeypatch.setattr(pyav, "LIVE_TIMEOUT_S", (3.0, QUIET_S))
    monkeypatch.setattr(pyav, "JOIN_S", 3.0)
    port = free_udp_port(pair=True)
    if sent == "ts":
        command = ["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", *ffmpeg_ts(clip3, port)[4:]]
    else:
        command = [a for a in gst_rtp(port, 0, "hevc" if sent == "hevc" else "h264")
                   if a != "num-buffers=0"]
        command = [a.replace("pt=96", "pt=97") if sent == "rtp97" else a for a in command]
    sender = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    try:
        with pytest.raises(SourceError) as e:
            open_source(given.format(port=port))
    finally:
        sender.terminate()
        sender.wait(30)
    assert message.format(port=port) in str(e.value)


@pytest.mark.parametrize("uri, message", [
    ("udp://@:70000", "its port '70000' is not one of 1-65535"),
    ("udp://@", "needs a port to listen on, e.g. udp://@:5600"),
    ("udp://@:5600?fifo=3", "unknown option 'fifo' in input 'udp://@:5600?fifo=3' (known: none)"),
    ("udp://10.255.255.1:5600", "10.255.255.1 is no address of this machine"),
    ("udp://camera.invalid:5600", "'camera.invalid' has no IPv4 address"),
    ("rtp://@:65535", "its port '65535' is not one of 1-65534"),
    ("rtp://@:5600?codec=vp8", "codec 'vp8' is not one of h264, hevc"),
    ("rtp://@:5600?pt=33", "payload type pt='33' is not one of the dynamic types 96-127"),
    ("rtp://@:5600?ssrc=1", "unknown option 'ssrc'"),
    ("rtp://192.168.1.20:5600", "an RTP input listens on every address of this machine: give "
                                "rtp://@:5600"),
    ("udp://[fd00::dead:beef]:5600", "fd00::dead:beef is no address of this machine"),
])
def test_bad_receiver_uris_are_refused_saying_why(uri, message):
    with pytest.raises(SourceError) as e:
        open_source(uri)
    assert message in str(e.value)


def test_ctrl_c_while_the_input_opens_stops_at_once(tmp_path):
    """Ctrl-C while FFmpeg waits for a sender that is not there: the run stops with 130 before
    the open would give up (before: the open waited its 10 s, then exit 2)."""
    import signal

    port = free_udp_port()
    run = subprocess.Popen([sys.executable, "-m", "edge_semvc", "encode", f"udp://@:{port}",
                            str(tmp_path / "o.mp4"), "--no-map"], stderr=subprocess.PIPE,
                           text=True)
    try:
        wait_until(lambda: bound_by_another(port), timeout=120, what="the input opening")
        run.send_signal(signal.SIGINT)
        status = run.wait(timeout=pyav.LIVE_TIMEOUT_S[0])  # what the open alone would take
    finally:
        run.kill()
    assert status == 130, run.stderr.read()
    assert "interrupted (SIGINT) before any frame was encoded" in run.stderr.read()


CLOSE_WHILE_READING = """
import sys, threading
from edge_semvc.sources import open_source, pyav
from test_telemetry import wait_until
pyav.LIVE_TIMEOUT_S = (10.0, {quiet})
source = open_source("udp://@:{port}")
said = []
def read():
    try:
        for _ in source.frames():
            pass
    except Exception as e:
        said.append(str(e))
reader = threading.Thread(target=read)
reader.start()
wait_until(source.quiet_reason, timeout=60, what="the reader waiting for a packet")
source.close()
reader.join()
print("the read ended:", *said, flush=True)
"""


def test_closing_an_input_while_it_is_read_waits_for_the_read(clip3):
    """`encode` closes its input once the run is over, while the decode thread may still wait in
    a read for its timeout (a sender that stopped): the close waits for the read to end (before:
    FFmpeg's demuxer was freed under the read, a segmentation fault)."""
    port = free_udp_port()
    sender = send_when_bound(port, ffmpeg_ts(clip3, port))
    run = subprocess.run([sys.executable, "-c", CLOSE_WHILE_READING.format(quiet=QUIET_S,
                                                                           port=port)],
                         capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).parent))
    sender.join(60)
    assert run.returncode == 0, run.stderr
    # by its timeout, or between two reads (the one after a timeout hands out a held picture)
    before, found, said = run.stdout.strip().partition("the read ended:")
    timed_out = said.startswith(f" udp://@:{port}: no packet on udp port")
    assert not before and found and (timed_out or not said), run.stdout


def test_a_port_in_use_is_refused_at_once(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("", 0))
        port = taken.getsockname()[1]
        sdp = tmp_path / "cam.sdp"  # before: "Invalid data found when processing input"
        sdp.write_text(f"v=0\r\nc=IN IP4 127.0.0.1\r\nm=video {port} RTP/AVP 96\r\n"
                       "a=rtpmap:96 H264/90000\r\n")
        for uri in (f"udp://@:{port}", f"rtp://@:{port - 1}", str(sdp)):
            with pytest.raises(SourceError, match=f"cannot open {uri}: udp port {port} cannot "
                               "be bound: another program receives on it"):
                open_source(uri)
        assert main(["encode", f"udp://@:{port}", str(tmp_path / "o.mp4"), "--no-map"]) == 2
    (tmp_path / "empty.sdp").write_text("v=0\n")
    with pytest.raises(SourceError, match="describes no stream"):
        open_source(str(tmp_path / "empty.sdp"))
