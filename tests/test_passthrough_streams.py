"""The input's audio through the stream outputs: SRT's MPEG-TS and the RTSP server's RTP (AAC,
G.711, Opus), received by real receivers (GStreamer's srtsrc, FFmpeg's RTSP client) and compared
packet for packet with the input's (test_passthrough.py: the files and the helpers)."""
from __future__ import annotations

import socket
import subprocess
import threading
from difflib import SequenceMatcher
from fractions import Fraction
from pathlib import Path

import av
import pytest
from gst_helpers import RECEIVER as GST_RECEIVER
from gst_helpers import free_port as free_socket_port
from gst_helpers import require
from test_passthrough import PARK, _raw_aac, clip, excerpt, packets, remux
from test_telemetry import free_port, wait_until

from edge_semvc.config import load_config
from edge_semvc.pipeline import run_encode
from edge_semvc.sinks import open_output
from edge_semvc.sinks.gstreamer import gst_python
from edge_semvc.sources import open_source
from edge_semvc.sources.paced import PacedSource, Pacing
from edge_semvc.tracks import Track


class AudioReceiver(threading.Thread):
    """FFmpeg receiving MPEG-TS from a UDP port (or a pipe: `source`, a file object; or an
    RTSP server: `rtsp`, its URL): counts video frames and audio packets (their payloads kept)
    until idle or the end."""

    def __init__(self, port: int = 0, source=None, rtsp: str = "", sdp: str = ""):
        super().__init__(daemon=True)
        self.url = f"udp://127.0.0.1:{port}?overrun_nonfatal=1&fifo_size=500000"
        self.source, self.rtsp, self.sdp = source, rtsp, sdp
        self.video = self.audio = 0
        self.audio_data: list[bytes] = []
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with self._open() as c:
                for p in c.demux():
                    if p.size and p.stream.type == "audio":
                        self.audio += 1
                        aac = p.stream.codec_context.name == "aac"
                        self.audio_data.append(_raw_aac(bytes(p)) if aac else bytes(p))
                    elif p.stream.type == "video":
                        self.video += len(p.decode())
        except (av.error.ExitError, av.error.FFmpegError, OSError) as e:  # the read timeout
            self.error = e

    def _open(self):
        if self.source is not None:
            return av.open(self.source, format="mpegts")
        if self.rtsp:
            return av.open(self.rtsp, options={"rtsp_transport": "tcp"}, timeout=(60, 4))
        if self.sdp:
            return av.open(self.sdp, format="sdp", timeout=(60, 4),
                           options={"protocol_whitelist": "file,udp,rtp"})
        return av.open(self.url, format="mpegts", timeout=(60, 4))


def test_srt_carries_the_audio(tmp_path):
    """srt:// sends the MPEG-TS the UDP output makes: GStreamer's srtsrc (a listener, the
    output calls it) receives the video and the car park's AAC packets, byte for byte."""
    require("srt")
    src = excerpt(tmp_path, PARK, 4)  # 50 frames, 188 AAC packets
    port = free_socket_port(socket.SOCK_DGRAM)
    receiver = subprocess.Popen([gst_python(), str(GST_RECEIVER),
                                 f"srt://127.0.0.1:{port}?mode=listener"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    rx = AudioReceiver(source=receiver.stdout)
    rx.start()
    output = open_output(f"srt://127.0.0.1:{port}?latency=50")
    # as a camera: the caller connects while the first frames go out
    source = PacedSource(open_source(str(src)), Pacing(realtime=True))
    try:
        stats = run_encode(source, [output], load_config(None, ["encoder.tune=zerolatency"]),
                           semantic=False)
        wait_until(lambda: rx.video >= 40 or not rx.is_alive(), what="the SRT receiver's frames")
    finally:
        source.close()
        receiver.kill()
        receiver.wait()
    rx.join(10)
    (out,) = stats["outputs"]
    assert "streams_not_carried" not in out and out["dropped"] == 0
    sent = [d for _, d in packets(src, "audio")]
    assert rx.video >= 40 and rx.audio >= 150, rx.error  # those before the connection are lost
    assert_runs_of(rx.audio_data, sent, runs=1)


@pytest.mark.parametrize("container", ["mp4", "ts"])  # AAC with its configuration; ADTS
def test_the_rtsp_server_sends_the_audio(tmp_path, container):
    """A client of the built-in RTSP server (FFmpeg's) gets the car park's AAC packets byte
    for byte (RFC 3640) beside the video, from the IDR it started at."""
    require("rtsp")
    src = excerpt(tmp_path, PARK, 4)  # 50 frames, 188 AAC packets
    if container == "ts":
        src = remux(src, tmp_path / "park.ts")
    rx = rtsp_viewer(src)
    sent = [d for _, d in packets(src, "audio")]
    assert rx.video >= 35 and rx.audio >= 120, rx.error  # the client's start-up is lost
    # all from the IDR asked for at PLAY: nothing from before (the media prepared on a gap),
    # ADTS too (raw, its configuration in the caps; it went between DESCRIBE and PLAY)
    assert_runs_of(rx.audio_data, sent, runs=1)


def assert_runs_of(got: list[bytes], sent: list[bytes], runs: int) -> None:
    """`got` is at most `runs` runs of consecutive packets of `sent`, in order, nothing else."""
    blocks = [b for b in SequenceMatcher(a=sent, b=got, autojunk=False).get_matching_blocks()
              if b.size]
    assert sum(b.size for b in blocks) == len(got) and len(blocks) <= runs, blocks


@pytest.mark.parametrize("codec", ["pcm_mulaw", "pcm_alaw"])
def test_the_rtsp_server_sends_an_ip_camera_s_g711_audio(tmp_path, codec):
    """G.711 as IP cameras send it (8 kHz mono) reaches the RTSP client as PCMU / PCMA, its
    samples as they were (RTP packs them into packets of its own size). Noise, not the car
    park's silence: every second of it is its own."""
    require("rtsp")
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    src = tmp_path / f"park_{codec}.mkv"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(clip(PARK)), "-f", "lavfi", "-i",
                    "anoisesrc=r=8000:a=0.3:seed=7", "-t", "4", "-map", "0:v", "-map", "1:a",
                    "-c:v", "copy", "-c:a", codec, "-ac", "1", str(src)], check=True)
    rx = rtsp_viewer(src)
    sent = b"".join(d for _, d in packets(src, "audio"))  # 32000 samples, a byte each
    got = b"".join(rx.audio_data)
    assert rx.video >= 35 and len(got) >= len(sent) // 2, rx.error
    assert got[-8000:] in sent  # the last second received, sample for sample


def test_the_rtsp_server_sends_opus(tmp_path):
    """Opus (what WebRTC-era cameras and phones record) reaches the RTSP client as RFC 7587,
    each packet as it was; more than two channels are named as not carried."""
    require("rtsp")
    ffmpeg = pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()
    src = tmp_path / "park_opus.mkv"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(clip(PARK)), "-f", "lavfi", "-i",
                    "anoisesrc=r=48000:a=0.3:seed=7", "-t", "4", "-map", "0:v", "-map", "1:a",
                    "-c:v", "copy", "-c:a", "libopus", "-ac", "2", str(src)], check=True)
    rx = rtsp_viewer(src)
    sent = [d for _, d in packets(src, "audio")]  # 20 ms each
    assert rx.video >= 35 and rx.audio >= len(sent) // 2, rx.error
    assert_runs_of(rx.audio_data, sent, runs=1)
    surround = Track(1, "audio", "opus", Fraction(1, 48000), sample_rate=48000, channels=6)
    assert "6 channels" in open_output(f"rtsp://@:{free_port()}/cam").cannot_carry(surround)


def rtsp_viewer(src: Path) -> AudioReceiver:
    """`src` encoded live (paced) to the RTSP server, watched by FFmpeg from when the server
    listens, as a viewer does; what it received, once the server passed every stream."""
    port = free_port()
    rx = AudioReceiver(rtsp=f"rtsp://127.0.0.1:{port}/cam")

    def join():
        wait_until(lambda: _listening(port), what="the RTSP server")
        rx.start()

    threading.Thread(target=join, daemon=True).start()
    source = PacedSource(open_source(str(src)), Pacing(realtime=True))
    try:
        stats = run_encode(source, [open_output(f"rtsp://@:{port}/cam")],
                           load_config(None, ["encoder.tune=zerolatency"]), semantic=False)
    finally:
        source.close()
    rx.join(30)
    assert "streams_not_carried" not in stats["outputs"][0]
    return rx


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
