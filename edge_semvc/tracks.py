"""Value types for the input's other streams, passed through untouched beside the encoded video:
audio, subtitles, data (a drone's telemetry). Sources describe them (`Track`) and hand out their
compressed packets (`TrackPacket`); outputs that can carry them copy the packets as they are.
"""
from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

KINDS = ("audio", "subtitle", "data")


@dataclass(frozen=True)
class Track:
    """One stream of the input passed through: what an output needs to carry it."""

    index: int  # the input's stream number (names it in messages and statistics)
    kind: str  # one of KINDS
    codec: str  # FFmpeg's codec name: "aac", "opus", "mov_text", "bin_data" (GoPro GPMF) ...
    time_base: Fraction  # of its packets' pts, dts and duration
    sample_rate: int = 0  # audio
    channels: int = 0  # audio
    extradata: bytes = b""  # the codec's configuration (AAC: AudioSpecificConfig)
    language: str = ""
    # PyAV's copy of the stream's codec parameters, detached from the input (it outlives the
    # input being closed or looped): what PyAV muxers add the output stream from. Other muxers
    # (GStreamer) build their caps from the fields above.
    params: object = dataclasses.field(default=None, compare=False, repr=False)

    def describe(self) -> str:
        return f"{self.kind} stream #{self.index} ({self.codec})"

    def summary(self) -> dict:
        return {"stream": self.index, "kind": self.kind, "codec": self.codec}


@dataclass(frozen=True)
class TrackPacket:
    """One compressed packet of a `Track`, with its timestamps in the track's time base."""

    track: int  # Track.index
    data: bytes
    pts: int | None
    dts: int | None
    duration: int
    time_base: Fraction
    keyframe: bool = True

    @property
    def time(self) -> Fraction | None:
        """When it is decoded, in seconds (dts, else pts): the muxers' order."""
        ticks = self.dts if self.dts is not None else self.pts
        return None if ticks is None else ticks * self.time_base

    def shifted(self, seconds: Fraction) -> "TrackPacket":
        """The same packet `seconds` later (an input looped: its next pass continues)."""
        ticks = round(seconds / self.time_base)
        return dataclasses.replace(
            self, pts=None if self.pts is None else self.pts + ticks,
            dts=None if self.dts is None else self.dts + ticks)


class PacketQueue:
    """Packets a source reads in one thread and the pipeline takes in another (a deque's append
    and popleft are safe without a lock)."""

    def __init__(self):
        self._q: deque[TrackPacket] = deque()

    def put(self, packet: TrackPacket) -> None:
        self._q.append(packet)

    def take(self) -> list[TrackPacket]:
        """Every packet put since the last call, in order."""
        out = []
        while self._q:
            out.append(self._q.popleft())
        return out
