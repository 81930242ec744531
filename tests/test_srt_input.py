"""`srt://` as an input (sources/srt.py, GStreamer's srtsrc in a system-Python child writing the
MPEG-TS into a pipe PyAV reads), from real senders: our own `srt://` output in another process
(`encode --realtime`), as a caller into `srt://@:PORT` and as a listener that `srt://HOST:PORT`
calls, with and without a passphrase. The sender stopping ends `encode` (exit 3) and loses a
`serve` camera, which takes the next sender; the child never outlives its input."""
from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from gst_helpers import require
from test_serve_faults import camera, pipeline_config, stopped
from test_telemetry import wait_until
from test_udp_inputs import (
    QUIET_S,
    bound_by_another,
    encode_until_the_sender_stops,
    first_seconds,
    free_udp_port,
    lost_and_back,
    probe,
    read_all,
    send_when_bound,
)

from edge_semvc.cli import main
from edge_semvc.errors import ConfigError, DecodeError, SourceError
from edge_semvc.serve.config import ServeConfig
from edge_semvc.sources import check_input, is_live, open_source, pyav
from edge_semvc.sources import srt as srt_input


@pytest.fixture(autouse=True)
def srt(monkeypatch):
    require("srt")  # srtsink and srtsrc come in one package
    monkeypatch.setattr(pyav, "LIVE_TIMEOUT_S", (6.0, QUIET_S))  # a sender gone, told sooner
    monkeypatch.setenv("EDGE_SEMVC_TEST_SRT_PW", "drone-downlink-1")
    monkeypatch.setenv("EDGE_SEMVC_TEST_SRT_OTHER", "someone-else-22")


@pytest.fixture
def clip3(tmp_path):
    """The first 3 s of the udp inputs' clip (38 frames at 12.5 fps, and its sound)."""
    return first_seconds(tmp_path, 3)


def sender(clip, uri: str) -> list[str]:
    """Our own SRT output in another process, the clip at its own rate."""
    return [sys.executable, "-m", "edge_semvc", "encode", str(clip), uri, "--no-map",
            "--realtime"]


def listening_sender(clip, port: int, passphrase_env: str) -> subprocess.Popen:
    """Our SRT output listening on `port` with a passphrase, in another process."""
    uri = f"srt://127.0.0.1:{port}?mode=listener&passphrase_env={passphrase_env}"
    return subprocess.Popen(sender(clip, uri), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def children(port: int) -> list[int]:
    """The srtsrc children on `port` still running (read from /proc)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "srt_child.py" in command and f":{port}?" in command:
            found.append(int(pid))
    return found


def test_a_caller_into_a_listener_input_is_encoded_with_its_sound_until_it_stops(tmp_path,
                                                                               clip3):
    """`encode srt://@:PORT`: our SRT output calls it; every frame and the sound are written,
    and the sender stopping ends the run as a camera gone (exit 3, in the input's own words),
    with no child left."""
    port = free_udp_port()
    sent = len(probe(clip3, "packet=pts"))
    thread = send_when_bound(port, sender(clip3, f"srt://127.0.0.1:{port}?mode=caller"))
    status, result, out = encode_until_the_sender_stops(f"srt://@:{port}", thread, tmp_path)
    assert status == 3 and not result["complete"], result
    assert result["error"] == (f"srt://@:{port}: no packet on srt port {port} for 2 s (the "
                               "sender stopped, or its link dropped)")
    assert result["frames"] == sent, (sent, result["frames"])
    assert len(probe(out, "packet=pts")) == result["frames"]
    assert probe(out, "stream=codec_name", "a") == [["aac"]]
    assert len(probe(out, "packet=pts", "a")) > 100  # 3 s of 48 kHz AAC: 140 packets
    assert children(port) == []


def test_ctrl_c_leaves_no_child(clip3, tmp_path):
    """Ctrl-C (SIGINT) on `encode srt://@:PORT` while a sender streams: the run stops (exit
    130) and its GStreamer child with it (the child has its own session: a terminal's Ctrl-C
    reaches the parent alone, which ends it)."""
    port = free_udp_port()
    thread = send_when_bound(port, sender(clip3, f"srt://127.0.0.1:{port}?mode=caller"))
    encode = subprocess.Popen([sys.executable, "-m", "edge_semvc", "encode", f"srt://@:{port}",
                               str(tmp_path / "out.mkv"), "--no-map"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in encode.stderr:
            if "the SRT sender" in line and "called" in line:
                break
        assert len(children(port)) == 1
        encode.send_signal(signal.SIGINT)
        encode.stderr.read()
        assert encode.wait(60) == 130
    finally:
        encode.kill()
        thread.join(60)
    assert children(port) == []


def test_a_caller_input_with_a_passphrase_reads_an_encrypted_listener(clip3):
    """`srt://HOST:PORT?passphrase_env=NAME` calls our SRT output listening with the same
    passphrase: the frames decode, and its end is told as the listener's."""
    port = free_udp_port()
    proc = listening_sender(clip3, port, "EDGE_SEMVC_TEST_SRT_PW")
    try:
        wait_until(lambda: bound_by_another(port), timeout=60, what="the sender listening")
        uri = f"srt://127.0.0.1:{port}?passphrase_env=EDGE_SEMVC_TEST_SRT_PW"
        source = open_source(uri)
        assert (source.width, source.height) == (768, 432)
        frames, error = read_all(source)
    finally:
        proc.wait(60)
    assert len(frames) > 10
    assert isinstance(error, DecodeError)
    assert str(error) == (f"{uri}: no packet from the SRT listener at 127.0.0.1:{port} for 2 s "
                          "(the sender stopped, or its link dropped)")
    assert children(port) == []


def test_a_reader_that_stalls_loses_packets_not_the_input(clip3, monkeypatch):
    """What PyAV cannot take at once (the models loading, a slow machine) waits in the pipe and
    the child's queue; past them the oldest is dropped, as FFmpeg's UDP FIFO drops, and the
    input goes on until the sender stops (here the reader stalls while the whole clip is sent:
    some 50 kB hold under a second of it; a child that blocked instead would stall SRT's
    receiver, and the sender's frames would come late)."""
    monkeypatch.setattr(srt_input, "PIPE_BYTES", 4096)
    monkeypatch.setattr(srt_input, "QUEUE_BYTES", 16_000)
    port = free_udp_port()
    thread = send_when_bound(port, sender(clip3, f"srt://127.0.0.1:{port}?mode=caller"))
    source = open_source(f"srt://@:{port}")
    frames, error = source.frames(), None
    next(frames)
    thread.join(60)  # the reader stalled until the sender stopped
    count = 1
    try:
        for _ in frames:
            count += 1
    except SourceError as e:
        error = e
    source.close()
    assert f"no packet on srt port {port}" in str(error), error
    assert count < len(probe(clip3, "packet=pts"))  # what did not fit is lost, not waited for


def test_the_pipe_is_waited_on_not_read_every_millisecond(monkeypatch):
    """FFmpeg read the child's pipe itself, and every millisecond while it was empty (130 ms of
    CPU in 5 s waiting for a sender, against 10 ms for udp://); a read now waits on it once
    until bytes come or the live timeout: the open's before the first bytes, which ends the
    open as FFmpeg's own timeout does, the read's after, which ends the input (what the
    demuxer holds, the last picture, still comes out: an error would come before it)."""
    import av

    monkeypatch.setattr(pyav, "LIVE_TIMEOUT_S", (0.4, 0.2))
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    reader, waits = srt_input.PipeReader(read_end), []

    class Counted:
        def __init__(self, poll):
            self.wrapped = poll

        def poll(self, ms):
            waits.append(ms)
            return self.wrapped.poll(ms)

    reader._poll = Counted(reader._poll)
    try:
        with pytest.raises(av.error.ExitError):
            reader.read(65536)
        assert 1 <= len(waits) <= 2 and 100 < waits[0] <= 400, waits  # not one a millisecond
        os.write(write_end, b"G" * 188)
        assert reader.read(65536) == b"G" * 188
        waits.clear()
        assert reader.read(65536) == b"" and reader.timed_out
        assert 1 <= len(waits) <= 2 and waits[0] <= 200, waits
        os.write(write_end, b"late")
        assert reader.read(65536) == b""  # ended
        closed = srt_input.PipeReader(read_end)
        os.close(write_end)
        assert closed.read(65536) == b"late" and closed.read(65536) == b""
        assert not closed.timed_out  # the child's end: not a timeout
    finally:
        os.close(read_end)


def test_a_callers_stream_id_reaches_our_listener_input(clip3, caplog):
    """Our SRT output calling with `streamid=` (as it would publish to MediaMTX): srtsink sends
    it (a '+' and a %2F kept as themselves), and our listener input, told it by srtsrc, logs it
    with the sender."""
    port = free_udp_port()
    thread = send_when_bound(port, sender(
        clip3, f"srt://127.0.0.1:{port}?streamid=publish:cam+1%2Fa"))
    caplog.set_level(logging.INFO, logger="edge_semvc.sources.srt")
    frames, _ = read_all(open_source(f"srt://@:{port}"))
    thread.join(60)
    assert len(frames) > 10
    assert "called (stream id 'publish:cam+1/a')" in caplog.text, caplog.text


def test_a_second_caller_is_refused_while_one_sends_and_taken_once_it_left(clip3, tmp_path,
                                                                           caplog):
    """srtsrc takes a second caller's call while the first sends, drops what it sends, and
    takes no caller once the first left (the input then ended with the second still sending):
    a caller is refused while another sends, said once, and taken when it calls again after
    the first left (our output calls again with back-off)."""
    longer = first_seconds(tmp_path, 6)
    port = free_udp_port()
    caplog.set_level(logging.INFO, logger="edge_semvc.sources.srt")
    first = send_when_bound(port, sender(clip3, f"srt://127.0.0.1:{port}"))

    def second_once_the_first_sends():
        wait_until(lambda: " called" in caplog.text, timeout=120, what="the first sender")
        subprocess.run(sender(longer, f"srt://127.0.0.1:{port}"), stdout=subprocess.DEVNULL)

    second = threading.Thread(target=second_once_the_first_sends, daemon=True)
    second.start()
    frames, error = read_all(open_source(f"srt://@:{port}"))
    first.join(60)
    second.join(60)
    assert isinstance(error, SourceError), error
    refusals = [r for r in caplog.records if "called while another sends: refused" in
                r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.WARNING], caplog.text
    calls = [m for m in caplog.messages if m.endswith((" called", " left"))]
    assert [m.rsplit(" ", 1)[1] for m in calls] == ["called", "left"] * 2, caplog.text
    assert len(frames) > len(probe(clip3, "packet=pts")) + 10  # the second's frames too


def test_our_caller_inputs_stream_id_reaches_our_listener_output(clip3):
    """`srt://HOST:PORT?streamid=read:cam1` (as it would read from MediaMTX): srtsrc sends it,
    and our SRT output listening in another process, told it by srtsink, says it with the
    caller that joined."""
    port = free_udp_port()
    proc = subprocess.Popen(sender(clip3, f"srt://127.0.0.1:{port}?mode=listener"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: bound_by_another(port), timeout=60, what="the sender listening")
        frames, _ = read_all(open_source(f"srt://127.0.0.1:{port}?streamid=read:cam1"))
    finally:
        _, said = proc.communicate(timeout=60)
    assert len(frames) > 10
    assert re.search(r"client_joined .* transport=srt stream_id=read:cam1\n", said), said


def test_a_call_nobody_takes_is_said_with_srts_reason():
    """A caller whose listener is down: the open fails (exit 2 in `encode`) saying so, in SRT's
    words, with no child left; a host with no address is said as such (srtsrc: "Could not open
    resource for reading")."""
    port = free_udp_port()
    with pytest.raises(SourceError, match=f"^cannot open srt://127.0.0.1:{port}: the SRT "
                       f"listener at 127.0.0.1:{port} did not take the call within 6 s: .*"
                       "Connection timeout$"):
        open_source(f"srt://127.0.0.1:{port}")
    assert children(port) == []
    with pytest.raises(SourceError, match="^cannot open srt://camera.invalid:9000: its host "
                                          "'camera.invalid' has no address"):
        open_source("srt://camera.invalid:9000")


def test_a_caller_with_another_passphrase_is_told_it(clip3):
    port = free_udp_port()
    proc = listening_sender(clip3, port, "EDGE_SEMVC_TEST_SRT_PW")
    try:
        wait_until(lambda: bound_by_another(port), timeout=60, what="the sender listening")
        with pytest.raises(SourceError, match="did not take the call within 6 s: Failed to "
                                              "authenticate"):
            open_source(f"srt://127.0.0.1:{port}?passphrase_env=EDGE_SEMVC_TEST_SRT_OTHER")
    finally:
        proc.wait(60)


@pytest.mark.parametrize("uri, message", [
    ("srt://@:9000?passphrase=MySrtSecret1", r"^input 'srt://@:9000': the passphrase does not "
     r"belong in the URI \(URIs are logged\): name .*\?passphrase_env=NAME$"),
    ("srt://@:9000?passphrase_env=EDGE_SEMVC_UNSET_PW", "EDGE_SEMVC_UNSET_PW .* not set"),
    ("srt://@:9000?latency=fast", "invalid value 'fast' for option 'latency' in input"),
    ("srt://@:9000?streamid=x", r"^input 'srt://@:9000\?streamid=x': streamid='x' is what a "
     r"caller tells the listener it calls \(a server such as MediaMTX\); a listener sends none"),
    ("srt://@:9000?id=x", r"unknown option 'id' in input 'srt://@:9000\?id=x' "
                          r"\(known: mode, latency, passphrase_env, streamid\)"),
    ("srt://10.0.0.5:9000?streamid=", "streamid='' is not a stream id SRT takes: 1-512 "),
    ("srt://10.0.0.5:9000?streamid=#!::r=cam1", "a '#' ends the URI there"),
    ("srt://@:9000?mode=rendezvous", "mode must be caller or listener, got 'rendezvous'"),
    ("srt://@:9000?mode=caller", r"input 'srt://@:9000\?mode=caller' needs a host, e.g. "
                                 r"srt://127.0.0.1:9000"),
    ("srt://@", "needs a port, e.g. srt://@:9000"),
    ("srt://@:70000", "its port '70000' is not one of 1-65535"),
])
def test_bad_srt_input_uris_are_refused_before_anything_is_read(uri, message):
    with pytest.raises(SourceError, match=message):
        open_source(uri)
    with pytest.raises(SourceError, match=message):
        check_input(uri)  # serve refuses the camera at the start


@pytest.mark.parametrize("python, missing", [
    ("/nonexistent/python3", r"needs the system Python /nonexistent/python3 \(No such file"),
    (sys.executable, "PyGObject .*python3-gi"),  # the project's venv has no gi
])
def test_a_missing_system_part_is_named_with_its_debian_package(monkeypatch, python, missing):
    monkeypatch.setenv(srt_input.PYTHON_ENV, python)
    port = free_udp_port()
    with pytest.raises(SourceError, match=f"^cannot open srt://@:{port}: .*{missing}"):
        open_source(f"srt://@:{port}")
    assert children(port) == []


def test_an_ipv6_listeners_port_in_use_is_refused_in_its_own_words():
    """`srt://[::1]:PORT?mode=listener` on a port another program holds: said as an IPv4
    listener's is (srtsrc said 'Could not open resource for reading'), no child left."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as taken:
        taken.bind(("::1", 0))
        port = taken.getsockname()[1]
        uri = f"srt://[::1]:{port}?mode=listener"
        with pytest.raises(SourceError, match=re.escape(
                f"cannot open {uri}: udp port {port} on ::1 cannot be bound: another program "
                "receives on it")):
            open_source(uri)
    assert children(port) == []


def test_a_port_in_use_is_refused_at_once_and_serve_takes_a_port_once(tmp_path):
    assert is_live("srt://@:9000") and check_input("srt://@:9000") == (9000,)
    assert check_input("srt://10.0.0.5:9000") == ()  # a caller binds no port of its own
    assert check_input("srt://0.0.0.0:9000") == (9000,)  # every address: nothing to call
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("", 0))
        port = taken.getsockname()[1]
        with pytest.raises(SourceError, match=f"^cannot open srt://@:{port}: udp port {port} "
                           "cannot be bound: another program receives on it"):
            open_source(f"srt://@:{port}")
        assert main(["encode", f"srt://@:{port}", str(tmp_path / "o.mp4"), "--no-map"]) == 2
    assert children(port) == []
    cfg = ServeConfig(cameras={"a": "srt://@:9000", "b": "udp://@:9000"},
                      state_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="listens on udp port 9000"):
        cfg.validate()


def test_a_serve_camera_on_srt_opens_and_leaves_no_child_when_removed(tmp_path, clip3):
    (tmp_path / "rec").mkdir()
    port = free_udp_port()
    thread = send_when_bound(port, sender(clip3, f"srt://127.0.0.1:{port}?mode=caller"))
    cam, events = camera(tmp_path, f"srt://@:{port}", cfg=pipeline_config())
    cam.start()
    try:
        wait_until(lambda: cam.frames_total > 0, timeout=120, what="frames")
        assert len(children(port)) == 1
    finally:
        stopped(cam)  # what the service does to a camera removed from its file
    assert children(port) == []
    thread.join(60)


def test_a_serve_camera_on_srt_takes_the_next_sender_after_one_stops(tmp_path, clip3):
    port = free_udp_port()
    command = sender(clip3, f"srt://127.0.0.1:{port}?mode=caller")
    lost_and_back(tmp_path, f"srt://@:{port}", lambda: send_when_bound(port, command),
                  f"no packet on srt port {port}")
    assert children(port) == []
