"""A stream output kept open across the runs of one camera (`serve`).

A camera's run ends whenever its input is lost, its pipeline fails or a remote change is rolled
back; the next run opens a new encoder, whose timestamps start again. Built per run, the
camera's RTSP server and SRT listener closed at each such hiccup, and their viewers had to
connect again. `KeptOutput` keeps one output for the camera's whole life: a run's `close` only
ends the run, and the next run's packets, of every stream, are shifted by one amount so that
they follow on from the last ones sent after the time that passed in between (a receiver's
clock sees the pause as it was; nothing it gets goes back in time). That time is measured on
each packet's delay from its timestamp to its sending, the smallest (allowed to rise by DRIFT
of the stream's time since, a camera's clock being slower than this one): the frames an
encoder's lookahead held (1-2 s with x264's defaults) leave when the run ends, the input lost
5 s before, and timed by their sending the pause came out that much shorter, the next run's
frames arriving seconds behind their times. A next run whose
stream differs (size, rate, codec, the tracks passed through) is first offered to the open
output (`Output.restream`: the RTP and MPEG-TS muxers take another size or rate where they
are, a receiver that stays keeps its RTP session or TS stream); else it closes the output and
opens it anew: its receivers then join again, as they must for a new stream, and its times go
on after the pause all the same.
"""
from __future__ import annotations

import dataclasses
import logging
from fractions import Fraction
from typing import Callable

from ..tracks import TrackPacket
from .base import Output, StreamInfo

log = logging.getLogger(__name__)
DRIFT = 0.01  # how fast the smallest delay may rise, s per s of stream: a camera 1 % slow

# what the output takes from the one it keeps (base.Output's traits)
TRAITS = ("uri", "global_headers", "fatal", "keeps_timestamps", "asks_for_receivers",
          "loses_packets", "reports_link", "files", "sends_to", "ports")


class KeptOutput(Output):
    """`make()` (the output, checked, not open) kept open across runs; `clock()` in seconds
    measures the pause between two runs. `close_for_good` closes it."""

    def __init__(self, make: Callable[[], Output], clock: Callable[[], float]):
        self._make, self._clock = make, clock
        self.inner = make()
        for name in TRAITS:
            setattr(self, name, getattr(self.inner, name))
        self.reopened = 0  # times a run's new stream made it open anew
        self._tried = False  # inner.open was called
        self._period = Fraction(0)  # a frame interval, s
        self._stream: StreamInfo | None = None  # what it carries (parameter sets aside)
        self._shift: Fraction | None = Fraction(0)  # s added to this run's times (None: not yet)
        self._last_s: Fraction | None = None  # the latest time sent, any stream, shifted
        self._lag: float | None = None  # s from a packet's time to its sending: the smallest
        self._order = 0.0  # the last packet's time, s (a video packet's dts)
        self._between_runs = False  # a run ended and the next has not opened: nothing is sent

    def open(self, info: StreamInfo) -> None:
        self._between_runs = False
        stream = dataclasses.replace(info, headers=b"")  # in-band before each IDR anyway
        if stream != self._stream and self._stream is not None and self.inner.restream(info):
            log.info("%s: the stream changed (%dx%d at %s fps): goes on where it was, its "
                     "receivers stay", self.uri, info.width, info.height, info.fps)
            self._stream = stream
            self._period = 1 / Fraction(info.fps) if info.fps else Fraction(0)
        elif stream != self._stream:  # the first run, or a new stream: opened (anew)
            if self._stream is not None:
                log.info("%s: the stream changed (%dx%d at %s fps, %s, %d tracks): opened anew, "
                         "its receivers join again", self.uri, info.width, info.height,
                         info.fps, info.codec, len(info.tracks))
                self.reopened += 1
            if self._tried:  # open before, or failed to: an output opens once
                self.inner.close()
                previous, self.inner = self.inner, self._make()
                self.inner.follows(previous)
            self._tried, self._stream = True, None
            self.inner.open(info)
            self._stream = stream
            self._period = 1 / Fraction(info.fps) if info.fps else Fraction(0)
        # the times go on after the pause, across a hiccup and a new stream alike: a receiver
        # that stays (UDP, RTP) or records never sees them go back
        self._shift = None if self._last_s is not None else Fraction(0)

    def _shifted(self, first_s: Fraction) -> Fraction:
        """This run's shift, set by its first packet (`first_s`, its decode time): its time is
        when it is sent less the smallest delay seen (so it follows the last frame before the
        pause by the pause), and at least a frame interval after the last time sent."""
        if self._shift is None:
            start = self._last_s + self._period
            if self._lag is not None:
                start = max(start, Fraction(self._clock() - self._lag))
            tb = self._stream.time_base  # a whole number of the video's ticks
            self._shift = round((start - first_s) / tb) * tb
        return self._shift

    def _sent(self, latest_s: Fraction, order_s: Fraction) -> None:
        """A packet went out: `latest_s` its latest time (pts), `order_s` the time it is sent
        in order of (a video packet's dts)."""
        self._last_s = latest_s if self._last_s is None else max(self._last_s, latest_s)
        lag = self._clock() - float(order_s)
        if self._lag is not None:
            lag = min(lag, self._lag + DRIFT * max(0.0, float(order_s) - self._order))
        self._lag, self._order = lag, float(order_s)

    def write(self, packet) -> None:
        tb = self._stream.time_base
        ticks = int(self._shifted(packet.dts * tb) / tb)
        if ticks:
            packet = dataclasses.replace(packet, pts=packet.pts + ticks, dts=packet.dts + ticks)
        self.inner.write(packet)
        self._sent(packet.pts * tb, packet.dts * tb)

    def write_track(self, packet: TrackPacket) -> None:
        if packet.time is None:  # no time to shift: as it came
            self.inner.write_track(packet)
            return
        shift = self._shifted(packet.time)
        packet = packet.shifted(shift) if shift else packet
        self.inner.write_track(packet)
        self._sent(packet.time, packet.time)

    def wants_idr(self, pts: int | None) -> bool:
        return self.inner.wants_idr(pts)

    def left_out(self, pts: int | None) -> None:
        self.inner.left_out(pts)

    def cannot_carry(self, track) -> str | None:
        return self.inner.cannot_carry(track)

    def link_report(self):
        return self.inner.link_report()

    def stats(self) -> dict:
        """The output's, with `paused` (the camera between runs: nothing is sent, whatever its
        state says) and `reopened` (times a new stream opened it anew)."""
        return {**self.inner.stats(), "paused": self._between_runs,
                **({"reopened": self.reopened} if self.reopened else {})}

    def close(self) -> None:
        """The run ended: the output stays open for the next."""
        self._between_runs = True

    def close_for_good(self) -> None:
        self.inner.close()
