"""The RTP output carries the input's audio on the next port pair, described in the SDP it
writes: real clips encoded by the real pipeline, received by FFmpeg (PyAV) and by GStreamer's
sdpdemux from that SDP, the AAC packets compared byte for byte with the input's; what RTP does
not carry is named (the passed-through streams' other outputs: test_passthrough.py).
"""
from __future__ import annotations

import dataclasses
import re
import subprocess
import time
import types
from fractions import Fraction
from pathlib import Path

import av
import pytest
from gst_helpers import RECEIVER as GST_RECEIVER
from gst_helpers import require
from test_kept_outputs import camera_runs
from test_outputs import Datagrams, Receiver, encoded, udp_bound
from test_passthrough import PARK, _raw_aac, excerpt, packets, remux
from test_passthrough_streams import AudioReceiver, assert_runs_of
from test_telemetry import free_port, wait_until

from edge_semvc.config import load_config
from edge_semvc.errors import SinkError
from edge_semvc.pipeline import run_encode
from edge_semvc.sinks import open_output
from edge_semvc.sinks.base import StreamInfo
from edge_semvc.sinks.gstreamer import gst_python
from edge_semvc.sinks.kept import KeptOutput
from edge_semvc.sinks.rtp import sdp_text
from edge_semvc.sinks.tracks import aac_config
from edge_semvc.sources import open_source
from edge_semvc.sources.paced import PacedSource, Pacing
from edge_semvc.tracks import Track, TrackPacket


@pytest.mark.parametrize("container", ["mp4", "ts_crc"])
def test_udp_and_rtp_carry_the_audio(tmp_path, container):
    """MPEG-TS over UDP carries the car park's AAC beside the video; RTP sends it to the next
    port pair, described in the same SDP: FFmpeg opening that SDP gets both, the AAC packets
    byte for byte (RFC 3640). From MPEG-TS whose ADTS headers have a CRC too: FFmpeg's RTP
    packetiser took 7 header bytes off each, the CRC's 2 stayed, and no frame decoded."""
    src = excerpt(tmp_path, PARK, 4)  # 50 frames, 188 AAC packets
    if container == "ts_crc":
        src = with_adts_crc(remux(src, tmp_path / "park.ts"), tmp_path / "park_crc.ts")
    udp, rtp, rtp_audio = free_port(), free_port(), free_port()
    source = open_source(str(src))
    (aac,) = source.tracks
    # the receiver listens before the run: its SDP as the output writes it, less the
    # parameter sets (they come in-band before each IDR)
    expected = tmp_path / "expected.sdp"
    expected.write_text(sdp_text(StreamInfo(source.width, source.height, source.fps,
                                            source.time_base, "h264", b"", False, (aac,)),
                                 "127.0.0.1", rtp, audio=aac, audio_port=rtp_audio))
    receivers = [AudioReceiver(udp), AudioReceiver(sdp=str(expected))]
    for rx in receivers:
        rx.start()
    for port in (udp, rtp, rtp_audio):
        wait_until(lambda p=port: udp_bound(p), what=f"a receiver's socket {port}")
    written = tmp_path / "out.sdp"
    try:
        stats = run_encode(source, [open_output(f"udp://127.0.0.1:{udp}"), open_output(
            f"rtp://127.0.0.1:{rtp}?audio_port={rtp_audio}&sdp={written}")],
            load_config(None, ["encoder.tune=zerolatency"]), semantic=False)
    finally:
        source.close()
    sent = [d for _, d in packets(src, "audio")]
    for rx in receivers:
        rx.join(60)
        assert rx.video >= 48 and rx.audio >= 180, rx.error  # the probe may swallow the first
        assert_runs_of(rx.audio_data, sent, runs=1)
    assert all("streams_not_carried" not in out for out in stats["outputs"])
    lines = written.read_text().splitlines()
    assert lines[[line.startswith("m=audio") for line in lines].index(True):] == [f"m=audio {rtp_audio} RTP/AVP 97", "a=rtpmap:97 MPEG4-GENERIC/48000/2",
                           "a=fmtp:97 profile-level-id=1;mode=AAC-hbr;sizelength=13;"
                           f"indexlength=3;indexdeltalength=3;config={aac_config(aac).hex()}"]
    assert container == "mp4" or not aac.extradata  # ADTS: the configuration made here


@pytest.mark.parametrize("container", ["mp4", "ts", "ts_crc"])
def test_gstreamer_plays_the_rtp_outputs_audio_from_its_sdp(tmp_path, container):
    """GStreamer's sdpdemux reads the SDP the RTP output writes and depayloads its AAC: the
    car park's packets, byte for byte (the ADTS headers aacparse adds taken off); from MPEG-TS
    too, whose AAC (ADTS) has no AudioSpecificConfig: the SDP said `config=` and GStreamer
    got no sound at all; and with a CRC in each ADTS header, which stayed in each frame."""
    require("rtsp")  # GStreamer's RTP (de)payloaders, from plugins-good
    require("srt")  # plugins-bad, where sdpdemux is
    src = excerpt(tmp_path, PARK, 4)  # 50 frames, 188 AAC packets
    if container != "mp4":
        src = remux(src, tmp_path / "park.ts")
    if container == "ts_crc":
        src = with_adts_crc(src, tmp_path / "park_crc.ts")
    port, audio_port, sdp = free_port(), free_port(), tmp_path / "in.sdp"
    source = open_source(str(src))
    (aac,) = source.tracks
    sdp.write_text(sdp_text(StreamInfo(source.width, source.height, source.fps,
                                       source.time_base, "h264", b"", False, (aac,)),
                            "127.0.0.1", port, audio=aac, audio_port=audio_port))
    receiver = subprocess.Popen([gst_python(), str(GST_RECEIVER), str(sdp)],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for p in (port, audio_port):
            wait_until(lambda p=p: udp_bound(p), what=f"GStreamer's socket {p}")
        run_encode(PacedSource(source, Pacing(realtime=True)),
                   [f"rtp://127.0.0.1:{port}?audio_port={audio_port}"],
                   load_config(None, ["encoder.tune=zerolatency"]), semantic=False)
        time.sleep(1)
    finally:
        source.close()
        receiver.kill()
        got = receiver.communicate()[0]
    frames = []
    while len(got) >= 7:  # ADTS: the frame's length is in its header
        size = ((got[3] & 3) << 11) | (got[4] << 3) | (got[5] >> 5)
        frames.append(_raw_aac(got[:size]))
        got = got[size:]
    sent = [d for _, d in packets(src, "audio")]
    assert len(frames) >= 150
    assert_runs_of(frames, sent, runs=1)


def with_adts_crc(src: Path, out: Path) -> Path:
    """MPEG-TS `src` (FFmpeg's, its ADTS headers 7 bytes) with a CRC in each ADTS header
    (protection_absent 0: 9 bytes), as some cameras and broadcast encoders write it; the CRC
    is the header's CRC-16 (no decoder here checks it). Every other packet as it was."""
    with av.open(str(src)) as i, av.open(str(out), "w", format="mpegts") as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for p in i.demux():
            if not p.size:
                continue
            stream = streams[p.stream_index]
            if p.stream.type == "audio":
                data = bytes(p)
                assert data[1] & 1, "its ADTS header has a CRC already"
                size = len(data) + 2
                head = bytearray(data[:7])
                head[1] &= 0xFE
                head[3:6] = (head[3] & 0xFC | size >> 11, size >> 3 & 0xFF,
                             head[5] & 0x1F | (size & 7) << 5)
                q = av.Packet(bytes(head) + _crc16(head).to_bytes(2, "big") + data[7:])
                q.pts, q.dts, q.time_base, q.duration = p.pts, p.dts, p.time_base, p.duration
                p = q
            p.stream = stream
            o.mux(p)
    return out


def _crc16(data: bytes) -> int:
    """CRC-16 of ISO 14496-3's ADTS (polynomial 0x8005, start 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = (crc << 1 ^ 0x8005 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def test_the_sdp_gives_an_mpeg_ts_input_s_aac_its_configuration(tmp_path):
    """AAC in ADTS has no AudioSpecificConfig: the SDP's `config=` is made as its headers say
    it, the same as the MP4's of the same packets."""
    mp4 = excerpt(tmp_path, PARK, 1)
    configs = {}
    for path in (mp4, remux(mp4, tmp_path / "park.ts")):
        source = open_source(str(path))
        (aac,) = source.tracks
        source.close()
        info = StreamInfo(64, 64, Fraction(10), Fraction(1, 10), "h264", b"", False, (aac,))
        sdp = sdp_text(info, "127.0.0.1", 5600, audio=aac, audio_port=5602)
        configs[path.suffix] = (aac.extradata, re.search(r"config=(\w*)", sdp).group(1))
    assert configs[".ts"][0] == b"" and configs[".mp4"][0]  # ADTS: none of its own
    assert configs[".ts"][1] == configs[".mp4"][1] == configs[".mp4"][0].hex()
    he = dataclasses.replace(aac, sample_rate=44100, channels=2,  # HE-AAC v2 in ADTS: LC mono
                             params=types.SimpleNamespace(profile="HE-AACv2"))  # at 22050
    assert aac_config(he).hex() == "1388"
    odd = dataclasses.replace(aac, sample_rate=20000, channels=1, params=None)  # no index
    assert aac_config(odd).hex() == "1780271008"  # escape 0xF, the rate in 24 bits


def test_rtp_names_what_it_does_not_carry(tmp_path):
    """One audio stream, of a codec its SDP describes; the rest is named, not dropped
    silently."""
    source = open_source(str(excerpt(tmp_path, PARK, 1)))
    (aac,) = source.tracks
    source.close()
    second = dataclasses.replace(aac, index=5)
    data = Track(3, "data", "bin_data", Fraction(1, 1000))
    mp3 = Track(2, "audio", "mp3", Fraction(1, 44100), sample_rate=44100, channels=2)
    out = open_output(f"rtp://127.0.0.1:{free_port()}")
    out.info = StreamInfo(64, 64, Fraction(10), Fraction(1, 10), "h264", b"", False,
                          (aac, second, data))
    assert out.cannot_carry(aac) is None
    assert "one audio stream (#1, to port" in out.cannot_carry(second)
    assert "not a data stream" in out.cannot_carry(data)
    out.info = dataclasses.replace(out.info, tracks=(mp3,))
    assert "describes AAC, Opus and G.711 audio in its SDP, not mp3" in out.cannot_carry(mp3)
    for port in (5600, 5601):
        with pytest.raises(SinkError, match=f"audio_port {port} is the video's RTC?P port"):
            open_output(f"rtp://127.0.0.1:5600?audio_port={port}")
    top = open_output("rtp://127.0.0.1:65534")
    top.info = dataclasses.replace(out.info, tracks=(aac,))
    assert "its port would be 65536; set audio_port" in top.cannot_carry(aac)


def test_a_camera_back_with_audio_keeps_the_rtp_video_session_going(tmp_path):
    """A serve camera that came back with audio opened its kept RTP output anew: the video
    got a new SSRC, new sequence numbers and a random RTP timestamp base, and a receiver that
    stayed on the video port (a ground station on 5600, or FFmpeg on the first SDP) saw its
    time jump hours. The video goes on in its session; the audio starts on its own port, in
    the SDP written anew."""
    src = excerpt(tmp_path, PARK, 2)
    with av.open(str(src)) as c:
        stream = c.streams.audio[0]
        audio = [TrackPacket(stream.index, bytes(p), p.pts, p.dts, p.duration, p.time_base)
                 for p in c.demux(stream) if p.size]
    source = open_source(str(src))
    (aac,) = source.tracks
    source.close()
    info, video = encoded(20)
    port, audio_port, sdp, now = free_port(), free_port(), tmp_path / "cam.sdp", [100.0]
    kept = KeptOutput(lambda: open_output(
        f"rtp://127.0.0.1:{port}?audio_port={audio_port}&sdp={sdp}"), lambda: now[0])
    with Datagrams(audio_port) as audio_rx:
        rx = Receiver(str(sdp), "sdp", {"protocol_whitelist": "file,udp,rtp",
                                        "reorder_queue_size": "0"})
        def opened(run, outputs):
            if not run.tracks:  # the receiver reads the first SDP: the video alone
                rx.start()
                wait_until(lambda: udp_bound(port), what="the RTP receiver's socket")
            else:
                outputs.add_track_packets(audio)

        camera_runs(kept, now, [(info, video), (dataclasses.replace(info, tracks=(aac,)),
                                                video)], opened)
        kept.close_for_good()
        rx.join(60)
    times = [pts for pts, _key, _corrupt in rx.frames]
    assert len(times) == 40, rx.error
    assert times[20] - times[19] == 3000 + 2 * 90000, times  # a frame, then the pause
    assert "reopened" not in kept.stats() and f"m=audio {audio_port} RTP/AVP 97" in \
        sdp.read_text()
    assert audio_rx.got and all(d[1] & 0x7F == 97 for d in audio_rx.got)  # the AAC, in RTP
