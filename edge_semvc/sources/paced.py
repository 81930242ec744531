"""A Source that behaves like a live camera: frames released at their own rate into a one-frame
buffer, overwritten (dropped) when the consumer has not taken them in time.

Used by ``field-bench`` to run a file or ``demo://`` as a camera, and by every camera of the
service (which also has it watch for an input that froze: ``stall_s``). Stage layer: it depends
only on ``frame``, ``tracks``, ``errors`` and the standard library.

Time is injected: ``clock`` (seconds, monotonic) is read for every timestamp and deadline, and
``sleep`` waits on it, so a test can run the camera on a clock of its own.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from fractions import Fraction
from typing import Callable, Iterator

from ..errors import DecodeError
from ..frame import Frame
from ..tracks import PacketQueue

log = logging.getLogger("edge_semvc")
FIRST_FRAME_STALL_S = 20.0  # with stall_s: how long the first frame may take
JUMP_S = 2.0  # realtime: a frame due further ahead (and two frame periods) jumped: taken out


@dataclasses.dataclass(frozen=True)
class Pacing:
    """How a PacedSource releases frames: its ``realtime``, ``speed``, ``seconds``,
    ``history`` and ``stall_s``, as PacedSource describes them."""

    realtime: bool = True
    speed: float = 1.0
    seconds: float = 0.0
    history: int = 0
    stall_s: float = 0.0

    def __post_init__(self):
        if self.speed <= 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")
        if self.seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {self.seconds}")


class PacedSource:
    """Wraps a Source (same protocol) and releases its frames like a live camera, as ``pacing``
    (a Pacing) says.

    ``realtime=True``: a camera thread reads the input ahead and publishes frame *i* at
    ``t0 + (pts_i - pts_0) * time_base / speed`` into a one-frame buffer, as a camera driver
    does; ``frames()`` hands out what is in the buffer. A frame overwritten before the pipeline
    took it is dropped (``dropped``): the pipeline fell a frame period or more behind. When the
    input itself cannot be read in time (a slow decoder, a very high ``speed``) the schedule
    slips by the delay instead of bursting (``slip_s``): the source, not the pipeline, set the
    pace then. ``realtime=False``: frames are handed out as fast as they are asked for.

    ``seconds`` > 0 stops after that much time on the clock. ``reopen`` (a callable returning a
    fresh Source) loops the input: its timestamps continue one frame after the last.

    Kept frames are renumbered 0, 1, 2, ... (``Frame.index``: the labeler's interval counts
    processed frames) and keep their (loop-adjusted) pts, strictly increasing; where the
    input's own pts would not increase they are bumped by one tick (``pts_adjusted``).
    ``capture_times[index]``: when each kept frame became available (a ``clock`` reading).
    A frame due more than JUMP_S (and two frame periods) after the one before was read is a
    jump in the input's clock, not a wait: it is published at once and the jump taken out of
    its pts and every later one's (``pts_jumps``), as a camera goes on showing what comes.

    ``clock``: the time in seconds, read for every timestamp (default ``time.perf_counter``).
    ``sleep``: waits that many seconds of ``clock`` time in the camera thread; the default (None)
    waits in real time and is cut short by ``close()``. Inject both or neither.
    ``history`` > 0 bounds ``read_ms`` to the last that many frames; the consumer pops the
    ``capture_times`` it has used.
    ``stall_s`` > 0 (realtime only): a read of the input that has not returned after that many
    seconds of ``clock`` time (``FIRST_FRAME_STALL_S`` for the first frame) ends the frames
    with a DecodeError (a camera that froze without closing its stream); the read is left to
    finish on its own and the input is closed then.

    The input's passed-through streams (``tracks``, ``take_packets``) go on whatever happens to
    the frames (a dropped frame drops no audio); a looped pass's packets are shifted as its
    frames are.
    """

    def __init__(self, source, pacing: Pacing = Pacing(), *,
                 reopen: Callable[[], object] | None = None,
                 on_start: Callable[[float], None] | None = None,
                 clock: Callable[[], float] = time.perf_counter,
                 sleep: Callable[[float], None] | None = None):
        self._src = source
        self.tracks = tuple(getattr(source, "tracks", ()))
        self.skipped = list(getattr(source, "skipped", []))
        self._packets = PacketQueue()  # the passed-through streams', shifted, not yet taken
        self.take_packets = self._packets.take  # (any thread) in the run's time
        self.width, self.height = source.width, source.height
        self.fps, self.time_base = Fraction(source.fps), Fraction(source.time_base)
        self.frame_count = 0  # unknown: drops, looping and the time limit decide
        self.pacing = pacing
        realtime, speed, seconds = pacing.realtime, float(pacing.speed), float(pacing.seconds)
        self._reopen, self._on_start = reopen, on_start
        self._clock, self._sleep = clock, sleep
        mode = f"realtime x{speed:g}" if realtime else "as fast as possible"
        self.description = f"{source.description} [paced: {mode}" + \
            (", looped" if reopen else "") + (f", {seconds:g} s" if seconds else "") + "]"
        self._ticks = max(1, round(1 / (self.fps * self.time_base)))  # one frame in time_base
        self.capture_times: dict[int, float] = {}
        # time spent reading the wrapped source, per frame (the last `history` frames only,
        # when given: a service runs for months)
        self.read_ms: deque[float] = deque(maxlen=pacing.history or None)
        self.offered = self.kept = self.dropped = 0
        self.max_consecutive_dropped = 0
        self.passes = 0
        self.pts_adjusted = 0
        self.pts_jumps = 0  # jumps ahead in the input's timestamps taken out (realtime)
        self._taken_out = 0  # ticks of a jump not yet applied by _raw to later frames
        # a frame due further ahead than this was not read early: its timestamps jumped
        self._jump_s = max(JUMP_S, 2 / (float(self.fps) * pacing.speed))
        self.slip_s = 0.0
        self.t0: float | None = None
        self.t_last: float | None = None  # when the last frame was published / handed out
        self.ended_by: str | None = None  # "seconds" | "end of input" | "stopped" | "error"
        self._cond = threading.Condition()
        self._slot = None  # ((pts, frame), published_at), waiting for the consumer
        self._run = 0  # frames overwritten since the consumer last took one
        self._ended = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reading_since: float | None = None  # clock time the camera's current read began
        self._stalled = False
        self._orphaned = False  # closed while a read hung: the camera thread closes the input
        # not realtime: the consumer's thread reads; close() closes between two of its reads
        self._read_lock = threading.Lock()
        self._closed = False

    def _pass_packets(self, src, offset: int) -> None:
        """Move what `src` demuxed to take_packets(), `offset` (time_base ticks) later."""
        take = getattr(src, "take_packets", None)
        shift = offset * self.time_base
        for p in take() if take else ():
            self._packets.put(p.shifted(shift) if shift else p)

    def _raw(self) -> Iterator[tuple[int, Frame]]:
        """(pts, frame) over every pass of the input; pts strictly increasing across loops, and
        without the jumps ahead the camera thread took out (`_taken_out`)."""
        last: int | None = None
        src = self._src
        while True:
            self.passes += 1
            offset, n = 0, 0
            for f in src.frames():
                offset, last = self._after_jump(offset, last)
                pts = int(f.pts) if f.pts is not None else round(n * self._ticks)
                if n == 0 and last is not None:  # a new pass continues one frame after the last
                    offset = last + self._ticks - pts
                n += 1
                pts += offset
                if last is not None and pts <= last:
                    pts = last + 1
                    self.pts_adjusted += 1
                last = pts
                self._pass_packets(src, offset)
                yield pts, f
            offset, last = self._after_jump(offset, last)
            self._pass_packets(src, offset)
            if self._reopen is None or n == 0 or self._stop.is_set():
                return
            src.close()
            src = self._src = self._reopen()

    def _after_jump(self, offset: int, last: int | None) -> tuple[int, int | None]:
        """The pass's offset and last pts once the jump the camera took out is applied."""
        gap, self._taken_out = self._taken_out, 0
        return offset - gap, (None if last is None else last - gap)

    def _timed_read(self, it):
        t = self._reading_since = self._clock()
        try:
            item = next(it, None)
        finally:
            self._reading_since = None
        now = self._clock()
        if item is not None:
            self.read_ms.append((now - t) * 1e3)
        return item, now

    def _wait(self, seconds: float) -> bool:
        """Wait ``seconds`` on the clock; True when ``close()`` asked the camera to stop."""
        if self._sleep is None:
            return self._stop.wait(seconds)  # real time, woken early by close()
        self._sleep(seconds)
        return self._stop.is_set()

    def _start(self, now: float) -> None:
        self.t0 = now
        if self._on_start:
            self._on_start(now)

    def _read(self, it):
        """(item, read time, first) for the next (pts, frame) of the input, or None at its end
        (`ended_by` says so); the first item starts the clock."""
        item, now = self._timed_read(it)
        if item is None:
            self.ended_by = "end of input"
            return None
        first = self.t0 is None
        if first:
            self._start(now)
        return item, now, first

    def frames(self) -> Iterator[Frame]:
        return self._paced() if self.pacing.realtime else self._unpaced()

    def _unpaced(self) -> Iterator[Frame]:
        it = self._raw()
        index = 0
        while True:
            with self._read_lock:  # close() from another thread waits for the read
                if self._stop.is_set():
                    self.ended_by = self.ended_by or "stopped"
                    if self._orphaned:  # close() gave up waiting: the input is ours to close
                        self._close_input()
                    return
                read = self._read(it)
            if read is None:
                return
            item, now, first = read
            if not first and self.pacing.seconds and now - self.t0 >= self.pacing.seconds:
                self.ended_by = "seconds"
                return
            self.offered += 1
            self.kept += 1
            self.capture_times[index] = self.t_last = now
            yield dataclasses.replace(item[1], pts=item[0], index=index)
            index += 1

    def _paced(self) -> Iterator[Frame]:
        self._thread = threading.Thread(target=self._camera, daemon=True, name="paced-camera")
        self._thread.start()
        index = 0
        try:
            while True:
                with self._cond:
                    while self._slot is None and not self._ended:
                        self._cond.wait(0.1)  # woken by each publish and at the end
                        self._check_stall()
                    item, self._slot = self._slot, None
                    self._run = 0
                    error = self._error
                if item is None:  # ended, and the last frame was taken
                    if error is not None:
                        raise error
                    return
                (pts, f), published = item
                self.capture_times[index] = published
                self.kept += 1
                yield dataclasses.replace(f, pts=pts, index=index)
                index += 1
        finally:
            self._stop.set()

    def _check_stall(self) -> None:
        since = self._reading_since
        # the first frame may take longer: a stream joined mid-GOP decodes from its next IDR
        stall_s = self.pacing.stall_s
        limit = stall_s if self.offered else max(stall_s, FIRST_FRAME_STALL_S)
        if stall_s and since is not None and self._clock() - since >= limit:
            self._stalled = True
            said = getattr(self._src, "quiet_reason", lambda: None)()  # a sender that stopped
            raise DecodeError(said or f"{self._src.description}: no frame for {limit:g} s (the "
                              "input froze)")

    def _camera(self) -> None:
        """The camera: read ahead, wait for each frame's due time, publish (overwriting)."""
        it = self._raw()
        base = pts0 = last = 0
        try:
            while not self._stop.is_set():
                read = self._read(it)
                if read is None:
                    return
                item, now, first = read
                if first:
                    base, pts0 = now, item[0]
                media = float((item[0] - pts0) * self.time_base) / self.pacing.speed
                due = base + media
                if due - now > self._jump_s:  # frames kept coming: the timestamps jumped
                    item = self._take_out_jump(item, last)
                    media = float((item[0] - pts0) * self.time_base) / self.pacing.speed
                    due = base + media
                last = item[0]
                if now > due:  # the input could not be read in time: the camera runs late
                    self.slip_s += now - due
                    base += now - due
                    due = now
                # Elapsed time as (slip) + (media time): exact where nothing slipped, whereas
                # (t0 + 0.4) - t0 can fall short of 0.4 when t0 is a large clock reading.
                if self.pacing.seconds and (base - self.t0) + media >= self.pacing.seconds:
                    self.ended_by = "seconds"
                    return
                if due > now and self._wait(due - now):
                    break
                with self._cond:
                    if self._slot is not None:  # never taken: overwritten, as a camera does
                        self.dropped += 1
                        self._run += 1
                        self.max_consecutive_dropped = max(self.max_consecutive_dropped,
                                                           self._run)
                    self._slot = (item, self._clock())
                    self.t_last = self._slot[1]
                    self.offered += 1
                    self._cond.notify_all()
            self.ended_by = self.ended_by or "stopped"
        except BaseException as e:  # handed to the consumer (a DecodeError ends the run)
            self._error = e
            self.ended_by = "error"
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()
                orphaned = self._orphaned
            if orphaned:  # closed while this read hung: nobody else may close the input now
                self._src.close()

    def _take_out_jump(self, item, last: int):
        """A frame due far ahead, read right after the one before (pts `last`): the input's
        clock jumped (a camera's clock reset, a file with a gap). A camera shows what comes:
        the jump is taken out of this frame's timestamp, now one frame after `last`, and every
        later one's (and their tracks')."""
        gap = item[0] - last - self._ticks
        if not self.pts_jumps:
            log.warning("%s: the timestamps jump %.1f s ahead at frame %d while its frames keep "
                        "coming: taken out, the frames go on",
                        self._src.description, float(gap * self.time_base), self.offered)
        self.pts_jumps += 1
        self._taken_out += gap
        return item[0] - gap, item[1]

    def close(self) -> None:
        """Stop the camera thread (after its current read) and close the input; an input whose
        read hangs is closed by the camera thread once the read returns. Not realtime, the
        consumer's thread reads: the input is closed between two of its reads (closing
        FFmpeg's demuxer inside one crashed the process), or by that thread once a read that
        hangs returns."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=0 if self._stalled else 10)
            with self._cond:
                if not self._ended:  # still inside a read: closing now could crash it
                    self._orphaned = True
                    log.warning("paced source: the input is still being read; it is closed "
                                "when the read returns")
                    return
        elif not self._read_lock.acquire(timeout=10):
            self._orphaned = True  # the reader closes it at its next turn, if not here below
            log.warning("paced source: the input is still being read; it is closed when the "
                        "read returns")
            if not self._read_lock.acquire(blocking=False):
                return
        try:
            self._close_input()
        finally:
            if self._thread is None:
                self._read_lock.release()

    def _close_input(self) -> None:
        if not self._closed:
            self._closed = True
            self._src.close()
