"""Movie fragments written by hand: one moof+mdat per H.264 access unit, ready the moment the
encoder hands it over (ISO/IEC 14496-12, 8.8).

FFmpeg's mov muxer writes a frame's fragment only when the next frame comes (it needs the next
timestamp for the sample's duration, and PyAV cannot ask it to flush), which holds the web page's
picture back one frame interval. Here each sample's duration is the interval *before* it and the
fragments lie end to end on a `Timeline`: a sample never waits for its successor, and a frame
the pipeline dropped leaves no hole, which Media Source Extensions would take for a
discontinuity (a gap over twice the last frame's duration) and answer by dropping every frame up
to the next keyframe.
"""
from __future__ import annotations

import struct
from fractions import Fraction

from .stream import nal_units

KEY_SAMPLE = 0x02000000  # sample_depends_on = 2: decodable alone
DELTA_SAMPLE = 0x01010000  # depends on others, not a sync sample
TRUN_FLAGS = 0x000F01  # data offset, then each sample's duration, size, flags, composition offset
DEFAULT_BASE_IS_MOOF = 0x020000


def box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def full_box(kind: bytes, version: int, flags: int, payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", version << 24 | flags) + payload)


def length_prefixed(annexb: bytes) -> bytes:
    """An Annex-B access unit as MP4 sample data: each NAL unit after its 4-byte length."""
    return b"".join(struct.pack(">I", len(nal)) + nal for nal in nal_units(annexb))


def track_of(init: bytes) -> tuple[int, int]:
    """(track_ID, media timescale) of the first track of an init segment (its tkhd and mdhd)."""
    def fields(kind: bytes, v0: str, v1: str) -> tuple:
        at = init.find(kind)
        if at < 0:
            raise ValueError(f"the init segment has no {kind.decode()} box")
        version = init[at + 4]
        return struct.unpack_from(v1 if version == 1 else v0, init, at + 8)
    track_id = fields(b"tkhd", ">8xI", ">16xI")[0]
    timescale = fields(b"mdhd", ">8xI", ">16xI")[0]
    return track_id, timescale


def fragment(sequence: int, track_id: int, decode_time: int, duration: int, offset: int,
             key: bool, data: bytes) -> bytes:
    """One moof+mdat holding one sample: `decode_time` (tfdt), `duration` and composition
    `offset` in the track's timescale, `data` length-prefixed NAL units."""
    def moof(data_offset: int) -> bytes:
        trun = full_box(b"trun", 1, TRUN_FLAGS, struct.pack(
            ">IiIIIi", 1, data_offset, duration, len(data),
            KEY_SAMPLE if key else DELTA_SAMPLE, offset))
        traf = box(b"traf", full_box(b"tfhd", 0, DEFAULT_BASE_IS_MOOF, struct.pack(">I", track_id))
                   + full_box(b"tfdt", 1, 0, struct.pack(">Q", decode_time)) + trun)
        return box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)) + traf)
    head = moof(0)
    return moof(len(head) + 8) + box(b"mdat", data)


class Timeline:
    """Media times end to end: each sample lasts the interval since the previous one (the first
    `first_duration`), so sample n starts where sample n-1 ends: at sample n-1's stream time
    plus `first_duration`. At the nominal frame rate media time is stream time (the first sample
    starts at its own decode time, never before 0); the sample after a dropped frame starts one
    interval early. `offset`: media time minus stream time of the last sample placed."""

    def __init__(self, first_duration: int):
        self.first_duration = max(1, first_duration)
        self._end: int | None = None  # where the next sample starts
        self._last: int | None = None  # the last sample's stream decode time
        self.offset = 0

    def place(self, dts: int) -> tuple[int, int]:
        """(media decode time, duration) of the sample at stream decode time `dts`."""
        gap = self.first_duration if self._last is None else dts - self._last
        duration = max(1, gap)  # a repeated timestamp still gets a tick
        start = max(0, dts) if self._end is None else self._end
        self._end, self._last = start + duration, dts
        self.offset = start - dts
        return start, duration


def ticks(value: int, time_base: Fraction, timescale: int) -> int:
    """`value` in `time_base` units as whole ticks of `timescale` (rounded)."""
    return round(Fraction(value) * time_base * timescale)
