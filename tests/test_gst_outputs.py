"""MPEG-TS over SRT (sinks/gstreamer.py, sinks/gst_srt.py in the child), caller and listener,
driven with packets from the real x264 encoder and pulled by GStreamer's srtsrc in a
system-Python process (tests/gst_receiver.py) whose stream PyAV decodes; and what both GStreamer
outputs refuse before the first frame (ports in use, bad URIs, a missing system part). Nothing
waits on the wall clock but hang guards: frames, packets and events are counted. The RTSP
server's tests: test_gst_rtsp.py."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path

import pytest
from conftest import shared_file
from gst_helpers import (
    GUARD_S,
    Events,
    GstReceiver,
    LiveEncoder,
    RawReceiver,
    each_frame_at_once,
    encoder_cadence,
    free_port,
    good_start,
    require,
)

from edge_semvc.encoders import EncoderSettings, get_encoder
from edge_semvc.errors import SinkError
from edge_semvc.sinks import gstreamer as gst
from edge_semvc.sinks import open_output
from edge_semvc.sinks.base import Outputs, StreamInfo
from edge_semvc.sources import open_source

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


def test_srt_caller_to_localhost_reaches_an_ipv4_listener(frames):
    """`srt://localhost:PORT`: srtsink called the first address its resolver gave, ::1, where
    the README's listener (IPv4) never answered; the name is resolved IPv4 first."""
    require("srt")
    port = free_port(socket.SOCK_DGRAM)
    receiver = GstReceiver(f"srt://127.0.0.1:{port}?mode=listener", fmt="mpegts")
    out = open_output(f"srt://localhost:{port}?mode=caller&latency=50")
    try:
        with LiveEncoder(frames, Outputs([out])):
            receiver.decoded.wait(20)
    finally:
        receiver.stop()
    good_start(receiver.decoded)


def test_srt_caller_with_no_listener_says_so_then_connects_when_one_comes(frames):
    """A listener that is not there: `output_lost` naming it (SRT's connect timeout), never a
    silent run; when one comes, `output_back` and frames."""
    require("srt")
    port, events = free_port(socket.SOCK_DGRAM), Events()
    out = open_output(f"srt://127.0.0.1:{port}?mode=caller&latency=50", events)
    with LiveEncoder(frames, Outputs([out])):
        lost = events.wait("output_lost")
        assert f"no SRT listener at 127.0.0.1:{port} answered" in lost["reason"]
        receiver = GstReceiver(f"srt://127.0.0.1:{port}?mode=listener", fmt="mpegts")
        events.wait("output_back")
        receiver.decoded.wait(20)
        receiver.stop()
    good_start(receiver.decoded)


def test_srt_caller_connected_before_the_first_frame_gets_it_with_the_inputs_audio():
    """A listener that was there before the run (a ground station) with an input that has
    audio: the first IDR, muxed before any audio, leaves the MPEG-TS muxer only with the next
    audio packet; the child must still start the receiver there. With intra refresh that IDR
    is the stream's only one (it was: nothing was ever sent, the run said nothing)."""
    require("srt")
    source = open_source(str(shared_file("data", "video", "drone_karma_coast_854x480.mp4")))
    settings = EncoderSettings(width=source.width, height=source.height, fps=source.fps,
                               time_base=source.time_base, preset="ultrafast",
                               tune="zerolatency", rc="cbr", bitrate=1_000_000, keyint=30,
                               intra_refresh=True)
    tracks = tuple(t for t in source.tracks if t.kind == "audio")
    port, events = free_port(socket.SOCK_DGRAM), Events()
    receiver = GstReceiver(f"srt://127.0.0.1:{port}?mode=listener", fmt="mpegts")
    out = open_output(f"srt://127.0.0.1:{port}?mode=caller&latency=50", events)
    try:
        with get_encoder("x264")(settings) as enc, Outputs([out]) as sink:
            sink.open(StreamInfo(source.width, source.height, settings.fps, settings.time_base,
                                 enc.codec, enc.headers(), False, tracks))
            for _ in range(GUARD_S * 100):  # connected: its IDR is the first frame's
                if out.stats()["clients"]:
                    break
                time.sleep(0.01)
            for frame in islice(source.frames(), 60):
                time.sleep(1 / 30)  # as a camera (a flood would overflow the child's queue)
                sink.add_track_packets(source.take_packets())
                sink.write(enc.encode(frame, None, force_idr=sink.wants_idr(frame.pts)))
            receiver.decoded.wait(30)
        assert out.stats()["bytes_sent"] > 0
    finally:
        receiver.stop()
        source.close()
    good_start(receiver.decoded)


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
        report = _link_report(out, peers=2)  # both callers' acknowledgements, for the follower
        assert report.sent > 0 and report.resent == report.dropped == 0
        first.stop()
        second.stop()
    good_start(first.decoded)
    good_start(second.decoded)


def test_a_second_caller_joining_leaves_the_first_ones_packets_counted(frames):
    """The link report at a viewer's join counted nothing: the sender matched its callers'
    counts by their place in srtsink's list, where the newest comes first, and left the whole
    report out when the callers changed, blinding the rate follower for a report at each
    join. Callers are told apart by their address: the first one's packets count on."""
    require("srt")
    port = free_port(socket.SOCK_DGRAM)
    out = open_output(f"srt://@:{port}?mode=listener&latency=50", Events())
    receivers = []
    with LiveEncoder(frames, Outputs([out])):
        try:
            receivers.append(GstReceiver(f"srt://127.0.0.1:{port}?mode=caller", fmt="mpegts"))
            alone = _link_report(out, peers=1)
            receivers.append(GstReceiver(f"srt://127.0.0.1:{port}?mode=caller", fmt="mpegts"))
            seen = {alone.seq: alone}
            deadline = time.monotonic() + GUARD_S  # a hang guard only
            while not any(r.peers == 2 for r in seen.values()) and time.monotonic() < deadline:
                report = out.link_report()
                if report is not None:
                    seen[report.seq] = report
                time.sleep(0.02)
        finally:
            for receiver in receivers:
                receiver.stop()
    joined = min(r.seq for r in seen.values() if r.peers == 2)
    before = seen.get(joined - 1)
    assert before is not None and before.peers == 1, sorted(seen.items())  # read each report
    assert seen[joined].sent > before.sent, (before, seen[joined])


def test_srt_with_a_passphrase_serves_only_callers_that_have_it(frames, monkeypatch):
    """`passphrase_env=NAME`: the stream is encrypted with the passphrase that variable holds
    (given to the child through its environment); a caller without it, or with another, is
    refused and gets nothing. A caller output with it reaches a listener that has it."""
    require("srt")
    secret = "S3cret-passphrase"
    monkeypatch.setenv("EDGE_SEMVC_TEST_SRT_PASSPHRASE", secret)
    port, events = free_port(socket.SOCK_DGRAM), Events()
    out = open_output(f"srt://@:{port}?mode=listener&latency=50"
                      "&passphrase_env=EDGE_SEMVC_TEST_SRT_PASSPHRASE", events)
    assert secret not in " ".join(map(str, out._config().values()))
    strangers, friend = [], None
    try:
        with LiveEncoder(frames, Outputs([out])):
            strangers = [GstReceiver(f"srt://127.0.0.1:{port}?mode=caller{extra}",
                                     fmt="mpegts")
                         for extra in ("", "&passphrase=Wrong-passphrase")]
            friend = GstReceiver(f"srt://127.0.0.1:{port}?mode=caller&passphrase={secret}",
                                 fmt="mpegts")
            friend.decoded.wait(15)  # meanwhile the strangers, refused, keep calling
    finally:
        for receiver in (friend, *strangers):
            if receiver is not None:
                receiver.stop()
    assert [s.decoded.packets for s in strangers] == [0, 0]
    good_start(friend.decoded)
    assert events.names().count("client_joined") == 1
    port = free_port(socket.SOCK_DGRAM)
    listener = GstReceiver(f"srt://127.0.0.1:{port}?mode=listener&passphrase={secret}",
                           fmt="mpegts")
    out = open_output(f"srt://127.0.0.1:{port}?latency=50"
                      "&passphrase_env=EDGE_SEMVC_TEST_SRT_PASSPHRASE", Events())
    try:
        with LiveEncoder(frames, Outputs([out])):
            listener.decoded.wait(15)
    finally:
        listener.stop()
    good_start(listener.decoded)


def test_a_server_open_to_the_network_without_credentials_is_warned_of_at_open(
        frames, monkeypatch, caplog):
    """An RTSP server or SRT listener on a network address that asks nothing of its clients
    is said once at open (as serve says of its web page); on loopback, or with credentials or
    a passphrase, nothing is said."""
    require("rtsp")
    require("srt")
    monkeypatch.setenv("EDGE_SEMVC_TEST_USER", "viewer")
    monkeypatch.setenv("EDGE_SEMVC_TEST_PW", "S3cret-passphrase")
    tcp = [free_port() for _ in range(3)]
    udp = [free_port(socket.SOCK_DGRAM) for _ in range(3)]
    open_to_anyone = [f"rtsp://@:{tcp[0]}/cam", f"srt://@:{udp[0]}?mode=listener"]
    guarded = [f"rtsp://127.0.0.1:{tcp[1]}/cam",
               f"rtsp://@:{tcp[2]}/cam?user_env=EDGE_SEMVC_TEST_USER"
               "&password_env=EDGE_SEMVC_TEST_PW",
               f"srt://127.0.0.1:{udp[1]}?mode=listener",
               f"srt://@:{udp[2]}?mode=listener&passphrase_env=EDGE_SEMVC_TEST_PW"]
    outputs = [open_output(uri) for uri in open_to_anyone + guarded]
    with caplog.at_level("WARNING"), LiveEncoder(frames, Outputs(outputs)) as live:
        live.wait_frames(2)
    warned = [r.getMessage() for r in caplog.records if "anyone who reaches" in r.getMessage()]
    assert sorted(warned) == sorted([
        f"rtsp://@:{tcp[0]}/cam: no credentials (?user_env=NAME&password_env=NAME): anyone "
        f"who reaches port {tcp[0]} watches the stream",
        f"srt://@:{udp[0]}?mode=listener: no passphrase (?passphrase_env=NAME): anyone who "
        f"reaches port {udp[0]} takes the stream, unencrypted"])


def _link_report(out, peers: int):
    """The output's first link report on `peers` receivers that counts packets (the child
    sends one a second; one in which the receivers changed counts nothing)."""
    deadline = time.monotonic() + GUARD_S  # a hang guard only
    while time.monotonic() < deadline:
        report = out.link_report()
        if report is not None and report.peers == peers and report.sent:
            return report
        time.sleep(0.05)
    raise AssertionError(f"no link report on {peers} peers: {out.link_report()}")


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


def test_srt_delivers_the_last_frames_before_it_closes(frames):
    """The last frames reach the receiver: SRT's receiver holds each packet for the latency
    and drops what it holds when the sender closes, so the sender waits that long."""
    require("srt")
    port = free_port(socket.SOCK_DGRAM)
    receiver = GstReceiver(f"srt://127.0.0.1:{port}?mode=listener", fmt="mpegts")
    out = open_output(f"srt://127.0.0.1:{port}?mode=caller&latency=300", Events())
    try:
        with LiveEncoder(frames, Outputs([out]), paced=False) as live:
            for _ in range(GUARD_S * 100):  # until the caller is connected and its IDR out
                live.step()
                if out.stats()["clients"] and live.idrs[-1] > 0:
                    break
                time.sleep(0.01)
            first = live.idrs[-1]
            for _ in range(30):
                live.step()
        receiver.decoded.wait(live.count - first)

        def whole() -> bool:  # 90 kHz, 3000 a frame: from the IDR it started at to the last
            pts = [p for p in receiver.decoded.pts if p is not None]
            return bool(pts) and any((pts[-1] - pts[0]) // 3000 == live.count - 1 - i
                                     for i in live.idrs)

        # it may have started at an earlier IDR (connected before it): then the count above
        # came before the last frames, which are still on their way (latency 300 ms)
        for _ in range(GUARD_S * 100):
            if whole():
                break
            time.sleep(0.01)
        pts = receiver.decoded.pts
        assert whole(), (pts[0], pts[-1], live.count, live.idrs)
    finally:
        receiver.stop()


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
    ("srt://127.0.0.1:9?passphrase=MySrtSecret1", r"'srt://127.0.0.1:9': the passphrase does "
     r"not belong in the URI \(URIs are logged\): name .*\?passphrase_env=NAME$"),
    ("srt://127.0.0.1:9?passphrase_env=EDGE_SEMVC_UNSET_PW", "EDGE_SEMVC_UNSET_PW .* not set"),
    ("srt://127.0.0.1:9?passphrase_env=EDGE_SEMVC_TEST_SHORT_PW",
     "EDGE_SEMVC_TEST_SHORT_PW has 5 bytes; SRT takes 10-79"),
    ("srt://127.0.0.1:9?passphrase_env=EDGE_SEMVC_TEST_WIDE_PW",  # 40 characters, 80 bytes
     "EDGE_SEMVC_TEST_WIDE_PW has 80 bytes; SRT takes 10-79"),
    ("srt://@:9?mode=listener&streamid=cam1", r"streamid='cam1' is what a caller tells the "
     "listener it calls"),
    ("srt://127.0.0.1:9?streamid=" + "a" * 513, "1-512 printable characters .* it has 513 "
     "bytes"),
    ("srt://127.0.0.1:9?streamid=cam%0A1", r"streamid='cam\\n1' is not a stream id SRT takes: "
     ".* with a control character"),
    ("srt://127.0.0.1:9?streamid=#!::r=cam1,m=publish", "a '#' ends the URI there .* write it "
     "%23"),
    ("rtsp://@:8554", "needs a path"),
    ("rtsp://@/cam", "needs a port"),
])
def test_bad_uris_are_refused_by_name(uri, message, monkeypatch):
    monkeypatch.setenv("EDGE_SEMVC_TEST_SHORT_PW", "short")
    monkeypatch.setenv("EDGE_SEMVC_TEST_WIDE_PW", "é" * 40)
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
