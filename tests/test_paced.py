"""PacedSource (sources/paced.py): a Source released like a live camera, run on a virtual clock.

Every test but the last injects ``VirtualClock``: its seconds pass only when the camera thread
and the consumer (the test) are both waiting, so each run takes the same steps on any machine
and the counts, drops and timestamps below are exact. Work times are chosen off the frame
period so that no frame is due at the very moment the consumer comes back for one.
"""
import math
import threading
from fractions import Fraction

import numpy as np
import pytest

from edge_semvc.frame import Frame
from edge_semvc.sources import DecodeError
from edge_semvc.sources.paced import PacedSource, Pacing

_END = object()  # what next_frame returns when the source has ended


class VirtualClock:
    """Time for one PacedSource and the test that consumes its frames.

    ``clock()`` reads the virtual time; ``sleep(s)`` (the camera's waits for a frame's due time,
    a ``FakeSource`` read taking ``read_s``, or the consumer's work on a frame) parks the
    calling thread until the time has moved on by ``s``. The time moves only when both sides
    are parked: the camera in ``sleep`` (or finished), the consumer in ``sleep``, finished, or
    inside ``next_frame`` with nothing in the source's one-frame buffer. It then jumps to the
    earliest wake-up. The source's own counters tell whether the buffer holds a frame:
    ``offered - dropped`` frames went through it and the consumer received ``_received``.
    """

    def __init__(self, start=5000.0):
        self.start = self.now = start  # an arbitrary reading, like a perf_counter's
        self.sleeps = []  # every wait asked for
        self.paced = None  # set by consume()
        self._cv = threading.Condition()
        self._wake = {}  # thread id -> virtual wake-up time, while parked in sleep()
        self._consumer = threading.get_ident()
        self._waiting = False  # the consumer is inside next_frame
        self._received = 0
        self._done = False

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        me = threading.get_ident()
        with self._cv:
            self.sleeps.append(seconds)
            self._wake[me] = self.now + max(seconds, 0.0)
            self._cv.notify_all()
            while self.now < self._wake[me]:
                earliest = min(self._wake.values())
                if earliest > self.now and self._all_parked():
                    self.now = earliest
                    self._cv.notify_all()
                else:  # someone is running or due to; (polls: the camera ending tells no one)
                    self._cv.wait(0.01)
            del self._wake[me]
            self._cv.notify_all()

    def _all_parked(self):
        p = self.paced
        buffer_empty = p.offered - p.dropped == self._received
        consumer = self._consumer in self._wake or self._done or (self._waiting and buffer_empty)
        camera = (not p.pacing.realtime or p.ended_by is not None
                  or any(t != self._consumer for t in self._wake))
        return consumer and camera

    def next_frame(self, it):
        """The consumer asks for the next frame (``_END`` at the end)."""
        with self._cv:
            self._waiting = True
            self._cv.notify_all()
        f = _END
        try:
            f = next(it, _END)
        finally:
            with self._cv:
                self._waiting = False
                self._received += f is not _END
                self._cv.notify_all()
        return f

    def finish(self):
        with self._cv:
            self._done = True
            self._cv.notify_all()


class FakeSource:
    """n tiny frames at `fps`, pts in 1/fps (from `pts_start`); a read takes `read_s` on
    `sleep` (the virtual clock's)."""

    def __init__(self, n=50, fps=100, read_s=0.0, pts_start=0, fail_at=None, sleep=None,
                 jump=(0, 0)):
        self.width = self.height = 16
        self.jump = jump  # (from frame, ticks): the pts jump ahead there
        self.fps, self.time_base = Fraction(fps), 1 / Fraction(fps)
        self.frame_count, self.description = n, f"fake {n} frames"
        self.n, self.read_s, self.pts_start, self.fail_at = n, read_s, pts_start, fail_at
        self.sleep = sleep
        self.closed = False

    def frames(self):
        plane = np.zeros((16, 16), np.uint8)
        chroma = np.zeros((8, 8), np.uint8)
        for i in range(self.n):
            if self.read_s:
                self.sleep(self.read_s)
            if i == self.fail_at:
                raise DecodeError(f"broken at {i}")
            ahead = self.jump[1] if self.jump[1] and i >= self.jump[0] else 0
            yield Frame(plane, chroma, chroma, self.pts_start + i + ahead, self.time_base, i)

    def close(self):
        self.closed = True


def paced_source(source, clock, reopen=None, on_start=None, **pacing):
    paced = PacedSource(source, Pacing(**pacing), reopen=reopen, on_start=on_start, clock=clock,
                        sleep=clock.sleep)
    clock.paced = paced
    return paced


def consume(paced, clock, work_s=0.0, take=None, into=None):
    """Take frames (all, or `take`) as a consumer busy `work_s` virtual seconds on each would;
    then close. Returns the frames (also appended to `into`) and the virtual time each was
    received at."""
    frames, got = (into if into is not None else []), []
    it = paced.frames()
    try:
        while take is None or len(frames) < take:
            f = clock.next_frame(it)
            if f is _END:
                break
            frames.append(f)
            got.append(clock())
            if work_s:
                clock.sleep(work_s)
    finally:
        it.close()  # stops the camera (as the pipeline's decode stage does when it ends)
        clock.finish()
        paced.close()
    return frames, got


def captures(paced):
    return [paced.capture_times[i] for i in range(paced.kept)]


def test_fast_consumer_gets_every_frame_at_the_source_rate():
    clock, started = VirtualClock(), []
    paced = paced_source(FakeSource(100, 25), clock, seconds=0.4, on_start=started.append)
    frames, got = consume(paced, clock)
    assert paced.ended_by == "seconds" and paced.dropped == 0 and paced.slip_s == 0
    assert paced.offered == paced.kept == 10  # 0.4 s at 25 fps
    assert [f.index for f in frames] == list(range(10)) and [f.pts for f in frames] == \
        list(range(10))
    assert started == [clock.start] == [paced.t0]
    # published at the source rate (not in a burst) and taken the moment they were
    assert captures(paced) == got
    assert np.diff(got) == pytest.approx([0.04] * 9, abs=1e-9)
    assert got[-1] - got[0] == pytest.approx(0.36, abs=1e-9)
    assert paced.t_last == got[-1]


def test_slow_consumer_drops_like_a_camera():
    clock = VirtualClock()
    paced = paced_source(FakeSource(500, 200), clock, seconds=0.5)
    frames, got = consume(paced, clock, work_s=0.0213)  # ~47 fps of work on a 200 fps camera
    # the consumer comes back every 0.0213 s (4.26 frame periods) and takes the newest frame;
    # the camera ends after frame 99 (0.5 s) and the consumer still takes that one
    expected = [math.floor(k * 4.26) for k in range(24)] + [99]
    assert [f.pts for f in frames] == expected  # the gaps stay in the timestamps
    assert [f.index for f in frames] == list(range(25))  # renumbered densely
    assert paced.offered == 100 and paced.kept == 25 and paced.dropped == 75
    assert paced.max_consecutive_dropped == 4 and paced.slip_s == 0
    assert captures(paced) == pytest.approx([clock.start + p / 200 for p in expected],
                                            abs=1e-9)  # published on time, taken later
    assert got[:24] == pytest.approx([clock.start + k * 0.0213 for k in range(24)], abs=1e-9)


def test_speed_factor_overloads_the_pipeline():
    clock = VirtualClock()
    # a 20 fps input offered as a 200 fps camera, to a consumer of ~33 fps
    paced = paced_source(FakeSource(1000, 20), clock, speed=10, seconds=0.5)
    frames, _ = consume(paced, clock, work_s=0.0307)
    assert paced.offered == 100 == paced.kept + paced.dropped  # 0.5 s at 200 fps
    assert paced.kept == 18 and paced.dropped == 82
    caps = captures(paced)
    assert caps == pytest.approx([clock.start + f.pts / 200 for f in frames], abs=1e-9)


def test_slow_input_slips_instead_of_counting_drops():
    clock = VirtualClock()
    src = FakeSource(100, 100, read_s=0.03, sleep=clock.sleep)  # 33 fps of decoding
    paced = paced_source(src, clock, seconds=0.61)
    frames, got = consume(paced, clock)
    assert paced.dropped == 0 and paced.ended_by == "seconds"  # the source, not the pipeline
    assert len(frames) == 21  # 0.03 s a frame, 0.61 s: what the input could deliver
    # every read after the first came 20 ms late, the 22nd (which ended the run) included
    assert paced.slip_s == pytest.approx(21 * 0.02, abs=1e-9)
    assert paced.read_ms == pytest.approx([30.0] * 22, abs=1e-6)
    assert paced.t0 == pytest.approx(clock.start + 0.03, abs=1e-9)  # after the first read
    assert np.diff(got) == pytest.approx([0.03] * 20, abs=1e-9)
    assert [f.pts for f in frames] == list(range(21))


def test_end_of_input_and_loop_continue_timestamps():
    clock = VirtualClock()
    paced = paced_source(FakeSource(5, 100), clock)
    frames, got = consume(paced, clock)
    assert [f.pts for f in frames] == list(range(5)) and paced.ended_by == "end of input"
    assert np.diff(got) == pytest.approx([0.01] * 4, abs=1e-9)
    opened = []

    def reopen():
        opened.append(FakeSource(5, 100, pts_start=1000))  # a pass starting elsewhere
        return opened[-1]

    clock = VirtualClock()
    src = FakeSource(5, 100)
    paced = paced_source(src, clock, seconds=0.2, reopen=reopen)
    frames, got = consume(paced, clock)
    assert [f.pts for f in frames] == list(range(20)) and paced.dropped == 0
    assert np.diff(got) == pytest.approx([0.01] * 19, abs=1e-9)  # no pause between passes
    # the 5th pass's first frame (pts 20, at 0.2 s) ended the run
    assert paced.passes == 5 and len(opened) == 4 and paced.ended_by == "seconds"
    assert src.closed and all(s.closed for s in opened)


def test_a_jump_ahead_in_the_timestamps_is_taken_out_not_waited_for():
    """A camera whose clock jumps 20 s while its frames keep coming: they go on at once, with
    continuous timestamps, over a loop's passes too (a stall of 20 s would look like a frozen
    camera that still says it runs)."""
    clock = VirtualClock()
    paced = paced_source(FakeSource(10, 100, jump=(5, 2000)), clock, seconds=0.3,
                         reopen=lambda: FakeSource(10, 100, jump=(5, 2000)))
    frames, got = consume(paced, clock)
    assert [f.pts for f in frames] == list(range(30)) and paced.dropped == 0
    assert np.diff(got) == pytest.approx([0.01] * 29, abs=1e-9)
    assert paced.pts_jumps == 3  # once a pass


def test_not_realtime_never_waits_or_drops():
    clock = VirtualClock()
    paced = paced_source(FakeSource(40, 1), clock, realtime=False)  # 1 fps: 40 s paced
    frames, _ = consume(paced, clock)
    assert len(frames) == 40 and paced.dropped == 0 and paced.ended_by == "end of input"
    assert clock.sleeps == [] and clock.now == clock.start  # not one wait
    assert set(captures(paced)) == {clock.start}


def test_not_realtime_stops_after_the_seconds_on_its_clock():
    clock = VirtualClock()
    src = FakeSource(100, 25, read_s=0.1, sleep=clock.sleep)  # reads take 0.1 s: 10 fps
    paced = paced_source(src, clock, realtime=False, seconds=1.05)
    frames, _ = consume(paced, clock)
    assert paced.ended_by == "seconds" and len(frames) == 11 and paced.dropped == 0
    assert clock.sleeps == [0.1] * 12  # only the reads waited


def test_non_increasing_input_pts_are_bumped():
    class Dup(FakeSource):
        def frames(self):
            for i, f in enumerate(super().frames()):
                yield Frame(f.y, f.u, f.v, i // 2, f.time_base, i)  # 0 0 1 1 2 2 ...

    clock = VirtualClock()
    paced = paced_source(Dup(6, 100), clock, realtime=False)
    pts = [f.pts for f in consume(paced, clock)[0]]
    assert pts == [0, 1, 2, 3, 4, 5] and paced.pts_adjusted == 5


@pytest.mark.parametrize("realtime", [True, False])
def test_decode_error_reaches_the_consumer_after_the_frames_before_it(realtime):
    clock = VirtualClock()
    paced = paced_source(FakeSource(10, 20, fail_at=4), clock, realtime=realtime)
    frames = []
    with pytest.raises(DecodeError):  # raised where the consumer asked for the 5th frame
        consume(paced, clock, work_s=0.01, into=frames)
    assert [f.pts for f in frames] == [0, 1, 2, 3]
    assert paced.offered == 4 == paced.kept and paced.dropped == 0
    got = [paced.capture_times[i] - clock.start for i in range(4)]
    if realtime:
        assert paced.ended_by == "error"
        assert got == pytest.approx([0, 0.05, 0.1, 0.15], abs=1e-9)  # paced up to the error
    else:
        assert got == pytest.approx([0, 0.01, 0.02, 0.03], abs=1e-9)  # as fast as asked


def test_consumer_that_stops_stops_the_camera():
    clock = VirtualClock()
    src = FakeSource(1000, 100)
    paced = paced_source(src, clock, seconds=5)
    frames, _ = consume(paced, clock, take=3)
    assert [f.pts for f in frames] == [0, 1, 2] and paced.kept == paced.offered == 3
    assert paced.ended_by == "stopped" and src.closed


def test_close_wakes_a_camera_waiting_in_real_time():
    """The default wait (no injected sleep) is cut short by close(): a camera whose next frame
    is due in 1000 s still ends, and the input is closed."""
    src = FakeSource(3, Fraction(1, 1000))
    paced = PacedSource(src)
    it = paced.frames()
    assert next(it).pts == 0
    paced.close()
    assert paced.ended_by == "stopped" and src.closed and paced.offered == 1


class FreezingSource(FakeSource):
    """`before` frames, then a read that hangs (a camera that froze without closing its
    stream) until `thaw` is set."""

    def __init__(self, before, **kw):
        super().__init__(n=before, **kw)
        self.frozen, self.thaw = threading.Event(), threading.Event()

    def frames(self):
        yield from super().frames()
        self.frozen.set()
        self.thaw.wait(60)


@pytest.mark.parametrize("before, limit", [(3, 5.0), (0, 20.0)], ids=["running", "first-frame"])
def test_an_input_that_froze_ends_the_frames_after_stall_s_on_the_clock(before, limit):
    """A read that has not returned after `stall_s` of clock time (20 s for the first frame: a
    stream joined mid-GOP decodes from its next IDR) ends the frames with a DecodeError; the
    hung read is left alone and the input closed when it returns."""
    clock = VirtualClock()
    src = FreezingSource(before, fps=10)
    paced = paced_source(src, clock, stall_s=5.0)
    it = paced.frames()
    assert [clock.next_frame(it).pts for _ in range(before)] == list(range(before))
    outcome = []

    def consumer():
        try:
            clock.next_frame(it)
        except DecodeError as e:
            outcome.append(str(e))

    waiting = threading.Thread(target=consumer)
    waiting.start()
    assert src.frozen.wait(30)
    with clock._cv:  # nobody sleeps while a read hangs: the test moves the time
        clock.now += limit - 0.1
    waiting.join(0.5)  # it polls every 0.1 s: still waiting for its frame
    assert waiting.is_alive() and not outcome
    with clock._cv:
        clock.now += 0.1
    waiting.join(30)
    assert outcome == [f"fake {before} frames: no frame for {limit:g} s (the input froze)"]
    paced.close()  # returns at once: the read still hangs, so the input stays open ...
    assert not src.closed
    src.thaw.set()  # ... until the read returns
    wait = threading.Event()
    for _ in range(300):
        if src.closed:
            break
        wait.wait(0.1)
    assert src.closed


def test_not_realtime_close_waits_for_the_consumers_read_before_closing_the_input():
    """Not realtime, the consumer's own thread reads: close() from another (a service
    stopping a camera) closed the input inside that read; it now waits for the read to end,
    and the consumer's frames end there."""
    src = FreezingSource(3)
    paced = PacedSource(src, Pacing(realtime=False))
    got = []
    consumer = threading.Thread(target=lambda: got.extend(paced.frames()), daemon=True)
    consumer.start()
    assert src.frozen.wait(30)
    closing = threading.Thread(target=paced.close, daemon=True)
    closing.start()
    closing.join(0.5)
    assert closing.is_alive() and not src.closed  # waiting for the read, the input open
    src.thaw.set()
    closing.join(30)
    consumer.join(30)
    assert src.closed and not consumer.is_alive()
    assert len(got) == 3  # the read that hung returned the input's end: nothing after it


def test_not_realtime_real_input_closed_from_another_thread_mid_run(clip):
    """The crash itself: FFmpeg's demuxer closed while the consumer's thread demuxed (a
    `serve` camera with `realtime: false` stopped) took the process down with a segfault."""
    from edge_semvc.sources import open_source

    path = str(clip("bikes_street_scene_cuts_640x272.mp4"))
    for _ in range(5):
        paced = PacedSource(open_source(path), Pacing(realtime=False),
                            reopen=lambda: open_source(path))
        counted, enough = [], threading.Event()

        def consume(paced=paced, counted=counted, enough=enough):
            for f in paced.frames():
                counted.append(f.index)
                if len(counted) == 30:
                    enough.set()

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        assert enough.wait(60)
        paced.close()
        consumer.join(30)
        assert not consumer.is_alive() and paced.ended_by == "stopped"
