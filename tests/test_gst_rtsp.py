"""The built-in RTSP server output (sinks/gstreamer.py, sinks/gst_rtsp.py in the child), driven
with packets from the real x264 (and x265) encoder and pulled by real receivers on 127.0.0.1:
FFmpeg through PyAV, the ffmpeg command recording it, and GStreamer's rtspsrc in a system-Python
process (tests/gst_receiver.py) whose stream PyAV decodes; and its GStreamer child killed and
stalled. Nothing waits on the wall clock but hang guards: frames, packets and events are
counted."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from contextlib import contextmanager

import av
import pytest
from gst_helpers import (
    GUARD_S,
    TICKS,
    Decoded,
    Events,
    GstReceiver,
    LiveEncoder,
    RawReceiver,
    ScriptedRtspClient,
    each_frame_at_once,
    encoder_cadence,
    free_port,
    good_start,
    require,
)
from test_passthrough import PARK, excerpt, remux

from edge_semvc.encoders import get_encoder
from edge_semvc.errors import SinkError
from edge_semvc.sinks import open_output
from edge_semvc.sinks.base import Outputs
from edge_semvc.sources import open_source
from edge_semvc.sources.tracks import track_packet


def ffmpeg_rtsp(url: str, transport: str) -> Decoded:
    return Decoded(lambda: av.open(url, options={"rtsp_transport": transport},
                                   timeout=(GUARD_S, GUARD_S)))


# README, Known issues: FFmpeg's RTSP input gives the first frame no time (its parser, whatever
# the server), which a copy with B-frames cannot mux into .ts or .mkv; this gives it its
# decode time
FIRST_PTS = r"setts=pts=if(eq(PTS\,NOPTS)\,DTS\,PTS)"


@pytest.mark.parametrize("tune, args", [("zerolatency", []), (None, ["-bsf:v", FIRST_PTS])])
def test_ffmpeg_records_the_rtsp_stream_into_ts_and_mkv_every_packet_timed(frames, tmp_path,
                                                                          tune, args):
    """What an NVR does: `ffmpeg -i rtsp://... -c copy rec.ts` (or .mkv), with the system's
    FFmpeg, as the README says: as is without B-frames, with the bitstream filter with them."""
    require("rtsp")
    ffmpeg = shutil.which("ffmpeg") or pytest.skip("no ffmpeg on PATH")
    port = free_port()
    server = open_output(f"rtsp://@:{port}/live")
    with LiveEncoder(frames, Outputs([server]), tune=tune):
        for suffix in (".ts", ".mkv"):
            out = tmp_path / f"rec{suffix}"
            done = subprocess.run([ffmpeg, "-nostdin", "-v", "error", "-rtsp_transport", "tcp",
                                   "-i", f"rtsp://127.0.0.1:{port}/live", "-c", "copy", *args,
                                   "-frames:v", "30", "-y", str(out)],
                                  capture_output=True, text=True, timeout=GUARD_S)
            assert done.returncode == 0, done.stderr
            with av.open(str(out)) as c:
                packets = [p for p in c.demux(video=0) if p.size]
                assert len(packets) == 30
                assert all(p.pts is not None for p in packets)
                if suffix == ".ts":  # Matroska keeps presentation times only
                    assert all(p.dts is not None for p in packets)
            with av.open(str(out)) as c:
                assert sum(1 for _ in c.decode(video=0)) == 30


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


@pytest.mark.parametrize("tune, audio", [("zerolatency", None), (None, None),
                                         ("zerolatency", "adts")])
def test_an_rtsp_join_costs_one_idr_and_starts_at_it(frames, tmp_path, tune, audio):
    """A client's media is prepared (DESCRIBE) on the last key frame's parameter sets, not on
    a key frame of its own: the encoder makes one IDR per join (asked for at PLAY), and the
    client's first picture is that IDR, not one from DESCRIBE held until PLAY (it was: two
    IDRs per join, a stale first picture, 0.6 s before the second at the default tune). With
    an MPEG-TS input's AAC (ADTS) too: it goes to the media raw with its configuration in the
    caps (it went as ADTS, whose caps waited for a packet, so its media was prepared on an IDR
    asked for at DESCRIBE)."""
    require("rtsp")
    port = free_port()
    server = open_output(f"rtsp://@:{port}/live")
    track = adts_audio(tmp_path) if audio else None
    with LiveEncoder(frames, Outputs([server]), tune=tune, audio=track) as live:
        live.wait_frames(20)
        joined_at = live.count
        keys = []
        with av.open(f"rtsp://127.0.0.1:{port}/live", options={"rtsp_transport": "tcp"},
                     timeout=(GUARD_S, GUARD_S)) as c:
            for f in c.decode(video=0):
                keys.append(f.key_frame)
                if len(keys) == 30:
                    break
        assert len([i for i in live.idrs if i >= joined_at]) == 1, live.idrs
    assert keys[0] and not any(keys[1:]), keys


@contextmanager
def scripted_client(frames, events=None, transport="tcp"):
    """The RTSP server fed by the live encoder and one scripted client that has set up (OPTIONS,
    DESCRIBE, SETUP over TCP or UDP) and plays when the test says: (server, live, client)."""
    require("rtsp")
    port = free_port()
    server = open_output(f"rtsp://@:{port}/cam", on_event=events)
    with LiveEncoder(frames, Outputs([server])) as live:
        client = ScriptedRtspClient(f"rtsp://127.0.0.1:{port}/cam", transport)
        try:
            yield server, live, client
        finally:
            client.close()


def test_a_client_that_plays_long_after_setup_gets_its_first_picture_at_its_start(frames):
    """A VMS that probes (DESCRIBE, SETUP), then plays two seconds later: the first picture's
    RTP time is the start RTP-Info gives (its media was prepared on parameter sets stamped at
    DESCRIBE), not two seconds after it, which a player buffering to the RTP clock holds as a
    frozen start (the media's running time went on between SETUP and PLAY)."""
    with scripted_client(frames) as (_, live, client):
        live.wait_frames(60)  # two seconds of the camera between SETUP and PLAY
        client.play()
        while True:
            _, _, rtptime, _, payload = client.read()
            if payload[0] & 0x1F in (5, 28):  # the IDR (whole or in fragments)
                break
    late = (rtptime - client.rtp_info[0]["rtptime"]) % (1 << 32)
    assert late < 15 * TICKS, late  # the frames from PLAY to the IDR, not the 60 before


def test_the_frames_an_encoder_held_reach_a_staying_client_at_their_own_times(frames):
    """The input ends or is lost (`serve`'s camera: a run ends, the output kept open): the
    encoder hands out at once the frames its lookahead and B-frames held, a second of them.
    A client that stays gets them one frame apart, as they were encoded (they went out within
    a millisecond of each other, some at the same time: each re-anchored the stamps at the
    moment it came, sooner than any before)."""
    require("rtsp")
    port = free_port()
    server = open_output(f"rtsp://@:{port}/cam")
    live = LiveEncoder(frames, Outputs([server]), tune=None).__enter__()
    try:
        client = ScriptedRtspClient(f"rtsp://127.0.0.1:{port}/cam")
        client.play()
        stamps, idr = [], None
        while len(stamps) < 30:  # the stream from the IDR asked for at PLAY, 30 frames
            _, _, rtptime, marker, payload = client.read()
            idr = idr or payload[0] & 0x1F in (5, 28) or None
            if idr and marker:
                stamps.append(rtptime)
        live._stop.set()  # the input ends: what the encoder held comes out at once
        live._thread.join(GUARD_S)
        start = live.idrs[-1]
        held = live.encoder.flush()
        live.outputs.write(held)
        assert len(held) >= 10
        while len(stamps) < live.count - start:
            _, _, rtptime, marker, _ = client.read()
            if marker:
                stamps.append(rtptime)
        client.close()
    finally:
        live.paced = False
        live.__exit__(None, None, None)
    times = sorted((t - stamps[0]) % (1 << 32) for t in stamps)  # presentation order
    steps = [b - a for a, b in zip(times, times[1:])]
    assert min(steps) >= TICKS // 4, steps  # not bunched (they were 4 ticks apart)


def adts_audio(tmp_path):
    """The car park's AAC as an MPEG-TS input gives it (ADTS, no configuration): its Track and
    packets."""
    src = remux(excerpt(tmp_path, PARK, 2), tmp_path / "park.ts")
    source = open_source(str(src))
    try:
        (track,) = source.tracks
    finally:
        source.close()
    assert track.codec == "aac" and not track.extradata
    with av.open(str(src)) as c:
        return track, [p for p in map(track_packet, c.demux(audio=0)) if p is not None]


def test_a_client_that_tears_down_and_keeps_its_connection_has_left(frames):
    """A VMS ends its session (TEARDOWN) and keeps its RTSP connection to play again later: it
    left then (before: it stayed a client until the connection closed, counted and its link
    judged)."""
    events = Events()
    with scripted_client(frames, events) as (server, _, client):
        client.play()
        client.read()
        events.wait("client_joined")
        client.request("TEARDOWN", f"Session: {client.session}\r\n")
        events.wait("client_left")
        assert server.stats()["clients"] == 0, server.stats()
    assert events.names().count("client_left") == 1, events.seen


def _rtsp_request(sock, port: int, method: str = "DESCRIBE") -> str:
    """One request on a raw connection; its answer's status line."""
    sock.sendall(f"{method} rtsp://127.0.0.1:{port}/cam RTSP/1.0\r\nCSeq: 1\r\n\r\n".encode())
    return sock.recv(1 << 16).decode(errors="replace").split("\r\n")[0]


def test_connections_beyond_max_clients_are_refused_and_idle_ones_closed(frames, monkeypatch,
                                                                          caplog):
    """max_clients=2: a viewer plays, a scanner DESCRIBEs and stays; the next connections'
    requests are answered 503 (OPTIONS: 200) and they are closed, as is one that asks nothing
    (said once in a warning), the viewer plays on; the scanner, never
    playing, is closed after idle_s, and a real client then plays (before: every connection
    was taken and held its prepared media until it closed)."""
    import socket

    from edge_semvc.sinks import gst_outputs

    require("rtsp")
    with pytest.raises(SinkError, match="'0' for option 'max_clients'"):
        open_output(f"rtsp://@:{free_port()}/cam?max_clients=0")
    monkeypatch.setattr(gst_outputs, "RTSP_IDLE_S", 3.0)
    port = free_port()
    server = open_output(f"rtsp://@:{port}/cam?max_clients=2")
    with LiveEncoder(frames, Outputs([server])):
        viewer = ScriptedRtspClient(f"rtsp://127.0.0.1:{port}/cam")
        viewer.play()
        viewer.read()
        scanner = socket.create_connection(("127.0.0.1", port), timeout=GUARD_S)
        assert _rtsp_request(scanner, port) == "RTSP/1.0 200 OK"
        with socket.create_connection(("127.0.0.1", port), timeout=GUARD_S) as refused:
            assert _rtsp_request(refused, port, "OPTIONS") == "RTSP/1.0 200 OK"
            assert _rtsp_request(refused, port) == "RTSP/1.0 503 Service Unavailable"
            assert refused.recv(1 << 16) == b""  # closed by the server
        with socket.create_connection(("127.0.0.1", port), timeout=GUARD_S) as silent:
            assert silent.recv(1 << 16) == b""  # refused, asking nothing: closed too
        for _ in range(60):  # the viewer plays on
            viewer.read()
        assert scanner.recv(1 << 16) == b""  # closed by the server: it never played
        scanner.close()
        late = ffmpeg_rtsp(f"rtsp://127.0.0.1:{port}/cam", "tcp")
        late.wait(10)
        viewer.read()
        viewer.close()
    good_start(late)
    assert caplog.text.count("refused a client") == 1, caplog.text


def test_a_udp_viewer_that_falls_silent_has_its_session_ended(frames, monkeypatch):
    """A viewer over UDP whose network goes (no receiver report, no keep-alive, its RTSP
    connection left open): its session times out, it has left, and soon nothing more is sent
    to it (before: it was sent the stream for ever, a client and a slot); an FFmpeg viewer
    over UDP, which reports, and one over TCP, which keeps its session alive, play on."""
    from edge_semvc.sinks import gst_outputs

    monkeypatch.setattr(gst_outputs, "RTSP_IDLE_S", 1.0)  # the session timeout: 1 s + 5
    events = Events()
    with scripted_client(frames, events, transport="udp") as (server, live, silent):
        silent.play()
        silent.read()
        viewers = [ffmpeg_rtsp(server.uri.replace("@", "127.0.0.1"), t) for t in ("udp", "tcp")]
        events.wait("client_left", address="%s:%d" % silent.sock.getsockname())
        rtp, quiet = silent.udp[0][0], 0
        rtp.setblocking(False)
        while quiet < 3:  # a second (30 frames) with nothing, three times in a row
            assert live.count < 30 * GUARD_S, "the stream still goes to the silent viewer"
            live.wait_frames(30)
            got = 0
            while True:
                try:
                    got += len(rtp.recv(1 << 16))
                except BlockingIOError:
                    break
            quiet = 0 if got else quiet + 1
        assert server.stats()["clients"] == 2, server.stats()
        for viewer in viewers:
            viewer.wait(viewer.frames + 30)
        assert events.names().count("client_left") == 1, events.seen
