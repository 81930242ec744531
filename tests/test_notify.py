"""systemd notification over a real AF_UNIX datagram socket, and the watchdog on a fake clock."""
import os
import socket
import uuid

import pytest

from edge_semvc.serve import notify
from edge_semvc.serve.notify import Watchdog, sd_notify, watchdog_interval


@pytest.fixture
def receiver(tmp_path, monkeypatch):
    """A datagram socket bound in tmp_path, named by $NOTIFY_SOCKET as systemd would."""
    path = tmp_path / "notify"
    if len(str(path)) >= 100:  # sun_path holds 108 bytes
        pytest.skip(f"tmp_path too long for an AF_UNIX socket: {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(10)  # a missing datagram fails the test instead of hanging it
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def pending(sock) -> list[str]:
    """Every datagram already queued on the socket, without waiting."""
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except BlockingIOError:
        return out
    finally:
        sock.settimeout(10)


def test_sd_notify_sends_one_datagram(receiver):
    assert sd_notify("READY=1")
    assert receiver.recv(4096) == b"READY=1"


def test_ready_status_and_stopping_helpers(receiver):
    assert notify.notify_ready("recording 2 cameras")
    assert receiver.recv(4096) == b"READY=1\nSTATUS=recording 2 cameras"
    assert notify.notify_status("front: 25 fps\nback: waiting")  # newline would be a new key
    assert receiver.recv(4096) == b"STATUS=front: 25 fps back: waiting"
    assert notify.notify_stopping()
    assert receiver.recv(4096) == b"STOPPING=1"


def test_abstract_socket_name(monkeypatch):
    name = f"edge-semvc-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_no_socket_is_a_no_op(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    # systemd gone (the socket file removed): reported, never raised
    assert sd_notify("READY=1", environ={"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_full_receiver_never_blocks(tmp_path):
    """A receiver that does not read fills up; sends then fail at once instead of waiting."""
    path = tmp_path / "n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        env = {"NOTIFY_SOCKET": str(path)}
        results = [sd_notify("STATUS=" + "x" * 1000, environ=env) for _ in range(5000)]
    assert results[0] is True
    assert results[-1] is False  # the queue filled (max_dgram_qlen, then the buffer)


@pytest.mark.parametrize("env, expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "30000000"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # another process's
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
])
def test_watchdog_interval_from_environment(env, expected):
    assert watchdog_interval(env, pid=4242) == expected


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def advance(self, seconds):
        self.now += seconds
        return self.now


def test_watchdog_pings_only_while_frames_flow():
    sent = []
    dog = Watchdog.from_environment({"WATCHDOG_USEC": "30000000"}, send=sent.append)
    clock = FakeClock()
    assert dog.enabled and dog.ping_interval == 15.0

    assert not dog.tick(clock.now)  # no frame yet: nothing to vouch for
    dog.frame_delivered()
    assert dog.tick(clock.now)  # the first frame is reported at once
    assert sent == ["WATCHDOG=1"]

    # frames at 25 fps for 40 s: one ping per 15 s, not one per frame
    for _ in range(1000):
        dog.frame_delivered()
        dog.tick(clock.advance(0.04))
    assert sent == ["WATCHDOG=1"] * 3 and dog.pings == 3

    # the pipeline stalls: one more ping vouches for the frames before the stall, then none
    # while ticks go on without frames: systemd's timer runs out and it restarts the service
    assert sum(dog.tick(clock.advance(1.0)) for _ in range(100)) == 1
    assert not any(dog.tick(clock.advance(1.0)) for _ in range(100))
    assert dog.pings == 4

    # frames resume: the next tick reports them without waiting another interval
    dog.frame_delivered()
    assert dog.tick(clock.advance(0.04))
    assert dog.pings == 5


def test_watchdog_ping_needs_a_frame_since_the_last_ping():
    sent = []
    dog = Watchdog(timeout=10.0, send=sent.append)  # pings at most every 5 s
    clock = FakeClock()
    dog.frame_delivered()
    assert dog.tick(clock.now)
    dog.frame_delivered()
    assert not dog.tick(clock.advance(1.0))  # a frame, but too soon
    assert dog.tick(clock.advance(5.0))  # that frame is vouched for once the interval passed
    assert not dog.tick(clock.advance(6.0))  # interval passed, no frame since the last ping
    assert sent == ["WATCHDOG=1", "WATCHDOG=1"]


def test_disabled_watchdog_never_sends():
    sent = []
    dog = Watchdog.from_environment({}, send=sent.append)
    dog.frame_delivered()
    assert not dog.enabled
    assert not dog.tick(0.0) and not dog.tick(1e9)
    assert sent == []


def test_watchdog_over_the_real_socket(receiver):
    dog = Watchdog.from_environment({"WATCHDOG_USEC": "2000000",
                                     "WATCHDOG_PID": str(os.getpid())})
    clock = FakeClock()
    for _ in range(100):  # 4 s of frames at 25 fps, pings every 1 s
        dog.frame_delivered()
        dog.tick(clock.advance(0.04))
    assert dog.pings == 4
    assert pending(receiver) == ["WATCHDOG=1"] * 4


def test_only_a_running_camera_without_new_frames_stops_the_watchdog():
    """A camera whose input is away (lost, failing: it retries on its own) must not get the
    whole service restarted; one that says it runs but delivers nothing (a hung pipeline)
    does."""
    from types import SimpleNamespace as Cam

    from edge_semvc.serve.service import stuck_cameras

    cams = {"a": Cam(state="running", frames_total=120), "b": Cam(state="lost", frames_total=7),
            "c": Cam(state="failed", frames_total=0), "d": Cam(state="starting", frames_total=0)}
    assert stuck_cameras(cams, {}) == []  # no ping yet: nothing to compare with
    assert stuck_cameras(cams, {"a": 100, "b": 7, "c": 0}) == []
    assert stuck_cameras(cams, {"a": 120, "b": 7}) == ["a"]
