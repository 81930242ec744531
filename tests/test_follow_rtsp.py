"""The rate follows an RTSP viewer's link (`encoder.follow_link` on the RTSP server's clients'
RTCP receiver reports, sinks/gst_rtsp.py): the real encoder serving RTSP (the CLI, in real
time), real clients (FFmpeg over UDP, which reports every 280 kB it receives) and between them
a narrow link on loopback (bench/rtsp_link.py: an RTSP proxy that puts a relay in the path of
RTP). Reports and rate changes are counted, never timed; the waits are hang guards."""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from gst_helpers import GUARD_S, free_port, require

from edge_semvc.bench.rtsp_link import RtspLink
from edge_semvc.follow import DECREASE

RATE = 1_500_000


def _listening(port: int) -> None:
    deadline = time.monotonic() + GUARD_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _viewer(url: str) -> subprocess.Popen:
    ffmpeg = shutil.which("ffmpeg") or pytest.skip("no ffmpeg on PATH")
    return subprocess.Popen([ffmpeg, "-nostdin", "-v", "quiet", "-rtsp_transport", "udp",
                             "-i", url, "-f", "null", "-"])


def _serve(clip, tmp_path, frames: int, capacity: float, viewers: int = 1,
           kill_after_packets: int = 0) -> tuple[dict, RtspLink]:
    """The street clip served over RTSP at RATE, followed, to `viewers` FFmpeg clients through
    a link of `capacity` bits/s (0: no limit); the first viewer killed once the link carried
    `kill_after_packets` RTP packets (0: never). The follower's statistics and the link."""
    require("rtsp")
    port, stats = free_port(), tmp_path / "stats.json"
    link = RtspLink(port, capacity=capacity, queue_s=0.25)
    link.start()
    encoder = subprocess.Popen([
        sys.executable, "-m", "edge_semvc", "encode", str(clip("street_pedestrians_vtest_768x576.avi")),
        f"rtsp://127.0.0.1:{port}/live", "--realtime", "--frames", str(frames), "--no-map",
        "--bitrate", str(RATE), "--tune", "zerolatency", "--progress", "off",
        "--set", "encoder.follow_link.enabled=true",
        "--set", "encoder.follow_link.min_bitrate=200000", "--stats-json", str(stats)],
        stdout=subprocess.PIPE, text=True)
    clients = []
    try:
        _listening(port)
        clients = [_viewer(f"rtsp://127.0.0.1:{link.port}/live") for _ in range(viewers)]
        deadline = time.monotonic() + GUARD_S
        while kill_after_packets and link.packets < kill_after_packets and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        if kill_after_packets:
            clients[0].send_signal(signal.SIGKILL)
        summary, _ = encoder.communicate(timeout=GUARD_S + frames / 10)
        assert encoder.returncode == 0
    finally:
        for p in (encoder, *clients):
            p.kill()
            p.wait()
        link.stop()
    return {**json.loads(stats.read_text())["follow_link"], "summary": summary}, link


def test_a_viewer_on_a_clean_link_is_heard_and_keeps_the_rate_one_killed_changes_nothing(
        clip, tmp_path):
    """Two viewers, each heard in its receiver reports; one killed mid-stream (it reported a
    clean link, then nothing): the rate stays, and the other's reports go on being judged."""
    follow, link = _serve(clip, tmp_path, 90, 0.0, viewers=2, kill_after_packets=800)
    assert link.packets >= 800 and link.lost == link.overflowed == 0
    assert follow["reports"] >= 4, follow  # each ~1.5 s at this rate, per viewer
    assert follow["decreases"] == 0 and follow["bitrate"] == RATE, follow


def test_a_viewer_behind_a_link_narrower_than_the_stream_brings_the_rate_down(clip, tmp_path):
    """1.5 Mbit/s into 700 kbit/s with a 250 ms buffer: the viewer's reports say packets lost
    with the round trip grown, and the rate comes down after two of them (before: it stayed at
    1.5 Mbit/s, half the packets lost for as long as the viewer watched)."""
    follow, link = _serve(clip, tmp_path, 110, 700_000.0)
    assert link.overflowed > 0
    assert follow["decreases"] >= 1 and follow["lowest"] < RATE * DECREASE, follow
    assert follow["target"] == RATE
    # the summary says what the follower did (it said "the encoder runs N kbit/s: whole
    # kbit/s" of the follower's last rate)
    assert (f"target 1500 kbit/s (follow_link: {follow['decreases']} decreases, "
            f"{follow['increases']} increases; {follow['bitrate'] / 1e3:g} kbit/s at the end"
            ) in follow["summary"], follow["summary"]


def test_the_benchmark_loops_a_clip_shorter_than_its_seconds(clip, tmp_path):
    """bench/rtsp_link.py's run sends `seconds` of video: the 15 s street clip (150 frames) is
    looped to the 400 frames of 40 s (before: the run ended with the clip, 5 s after the
    default narrowing at 10 s); one long enough is sent as it is; a raw stream FFmpeg cannot
    loop is refused, not sent short."""
    import av

    from edge_semvc.bench.rtsp_link import _looped

    street = str(clip("street_pedestrians_vtest_768x576.avi"))
    looped = _looped(street, 400, tmp_path / "looped.mkv")
    with av.open(looped) as c:
        assert sum(1 for p in c.demux(video=0) if p.size) == 400
    assert _looped(street, 150, tmp_path / "unused.mkv") == street
    with pytest.raises(ValueError, match="cannot loop"):
        _looped(str(clip("foreman_cif.h264")), 1000, tmp_path / "raw.mkv")
