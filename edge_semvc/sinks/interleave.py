"""Interleaving the passed-through streams' packets with the encoded video.

The source reads audio as it reads the video, frames ahead of what the encoder hands out
(queues, lookahead, B-frames), and the storage profile leaves frames out. So the packets are
held here and released in time order with the video: every packet up to one frame past the
latest video packet's decode time goes out before that video packet, and before a keyframe every
packet up to its presentation time (a closed GOP: every picture before it is out). A muxer then
gets both in order; a recording segment, cut at an IDR, gets the audio of its own pictures' time
(also where B-frames or frames left out put the IDR's decode time well before it); and a live
muxer sends each video packet at once (FFmpeg holds a packet until every stream has one queued:
the audio it holds is then the one that is a frame ahead, never the video).

At the end, what starts before the video's end (its last picture's time plus one frame) is
released and the rest cut: `--frames N`, a stop or a broken input cut the audio where the video
ends. A packet that does not come after its track's previous one (a looped input's next pass
overlapping the last) is left out and counted.
"""
from __future__ import annotations

import heapq
import logging
from fractions import Fraction
from itertools import count

from ..tracks import Track, TrackPacket

log = logging.getLogger("edge_semvc")

MAX_HELD_S = 10  # a track running further ahead than this (its clock is off) is released anyway


class Interleaver:
    def __init__(self, time_base: Fraction, fps: Fraction, tracks: tuple[Track, ...]):
        self.time_base = Fraction(time_base)
        self.frame = 1 / Fraction(fps)
        self.due: Fraction | None = None  # packets before this time (s) are due
        self.video_end: Fraction | None = None  # the latest picture's time plus one frame
        self._held: list[tuple[Fraction, int, TrackPacket]] = []  # heap of (time, order, packet)
        self._newest: Fraction | None = None  # the latest time held
        self._order = count()
        self._last: dict[int, int] = {}  # track -> the last released packet's dts (or pts)
        # per track: released, cut after the video's end, left out as out of order
        self.counts = {t.index: {"packets": 0, "cut": 0, "out_of_order": 0} for t in tracks}

    def add(self, packets) -> list[TrackPacket]:
        """Take the source's packets; returns those due now."""
        due = []
        for p in packets:
            if p.track not in self.counts:
                continue  # not passed through (configured out)
            if p.time is None:  # cannot be placed: out at once
                due += self._checked(p)
            else:
                heapq.heappush(self._held, (p.time, next(self._order), p))
                self._newest = p.time if self._newest is None else max(self._newest, p.time)
        while self._held and self._newest - self._held[0][0] > MAX_HELD_S:
            due += self._checked(heapq.heappop(self._held)[2])
        return due + self._release()

    def video(self, packet) -> list[TrackPacket]:
        """An encoded video packet is about to be written: the packets due before it."""
        dts = packet.dts if packet.dts is not None else packet.pts
        due = [dts * self.time_base + self.frame] if dts is not None else []
        if packet.pts is not None:
            end = packet.pts * self.time_base + self.frame
            self.video_end = end if self.video_end is None else max(self.video_end, end)
            if packet.keyframe:
                due.append(packet.pts * self.time_base)
        if due:
            self.due = max(due) if self.due is None else max(self.due, *due)
        return self._release()

    def finish(self) -> list[TrackPacket]:
        """The video ended: what starts before its end; the rest is cut."""
        due = []
        while self._held:
            t, _, p = heapq.heappop(self._held)
            if self.video_end is not None and t < self.video_end:
                due += self._checked(p)
            else:
                self.counts[p.track]["cut"] += 1
        return due

    def _release(self) -> list[TrackPacket]:
        if self.due is None:
            return []
        limit, due = self.due, []
        if self.video_end is not None:
            limit = min(limit, self.video_end)
        while self._held and self._held[0][0] < limit:
            due += self._checked(heapq.heappop(self._held)[2])
        return due

    def _checked(self, p: TrackPacket) -> list[TrackPacket]:
        ticks = p.dts if p.dts is not None else p.pts
        last = self._last.get(p.track)
        if ticks is not None and last is not None and ticks <= last:
            if not self.counts[p.track]["out_of_order"]:
                log.warning("stream #%d goes back in time (%d after %d: a pass of a loop "
                            "overlapping the last?): its packets are left out until it passes "
                            "its last time (counted: out_of_order)", p.track, ticks, last)
            self.counts[p.track]["out_of_order"] += 1
            return []
        if ticks is not None:
            self._last[p.track] = ticks
        self.counts[p.track]["packets"] += 1
        return [p]
