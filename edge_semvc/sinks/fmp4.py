"""Movie fragments written by hand: one moof+mdat per H.264 or HEVC access unit, ready the
moment the encoder hands it over (ISO/IEC 14496-12, 8.8).

FFmpeg's mov muxer writes a frame's fragment only when the next frame comes (it needs the next
timestamp for the sample's duration, and PyAV cannot ask it to flush), which holds the web page's
picture back one frame interval. Here each sample lasts the interval before it (at most the
stream's usual one) and the fragments lie end to end on a `Timeline`: a sample never waits for
its successor, and a frame the pipeline dropped leaves no hole, which Media Source Extensions
would take for a discontinuity (a gap over twice the last frame's duration) and answer by
dropping every frame up to the next keyframe.
"""
from __future__ import annotations

import collections
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


def boxes(data: bytes):
    """(type, start, end) of each complete top-level box in `data`."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("latin-1")
        if size == 1 and pos + 16 <= len(data):
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        if size < 8 or pos + size > len(data):
            return
        yield kind, pos, pos + size
        pos += size


def as_hvc1(init: bytes) -> bytes:
    """An HEVC init segment from FFmpeg's mov muxer ('hev1': parameter sets may also come
    in-band) as 'hvc1', the sample entry Safari requires: the same hvcC with each parameter-set
    array marked complete. (PyAV's muxer streams take no codec tag to ask for it.)"""
    out = bytearray(init.replace(b"hev1", b"hvc1", 1))
    at = out.find(b"hvcC") + 4  # the HEVCDecoderConfigurationRecord
    if at < 4 or at + 23 > len(out):
        raise ValueError("the init segment has no hvcC box")
    pos = at + 23  # after the 22-byte header and numOfArrays
    for _ in range(out[at + 22]):
        out[pos] |= 0x80  # array_completeness
        count, pos = int.from_bytes(out[pos + 1:pos + 3], "big"), pos + 3
        for _ in range(count):
            pos += 2 + int.from_bytes(out[pos:pos + 2], "big")
    return bytes(out)


def codecs(init: bytes) -> str:
    """The RFC 6381 codecs parameter of an init segment: avc1.PPCCLL from its avcC, or
    hvc1/hev1.<profile>.<compatibility>.<tier><level>.<constraints> from its hvcC."""
    at = init.find(b"avcC") + 4
    if at >= 4:
        return "avc1." + init[at + 1:at + 4].hex().upper()
    at = init.find(b"hvcC") + 4
    if at < 4 or at + 13 > len(init):
        raise ValueError("the init segment has neither an avcC nor an hvcC box")
    entry = "hvc1" if b"hvc1" in init[:at] else "hev1"
    space, tier, profile = init[at + 1] >> 6, init[at + 1] >> 5 & 1, init[at + 1] & 0x1F
    compatible = int("{:032b}".format(int.from_bytes(init[at + 2:at + 6], "big"))[::-1], 2)
    constraints = init[at + 6:at + 12].rstrip(b"\0")
    return ".".join([entry, ("", "A", "B", "C")[space] + str(profile), f"{compatible:X}",
                     "LH"[tier] + str(init[at + 12])] + [f"{b:02X}" for b in constraints])


def fragment(sequence: int, track_id: int, decode_time: int, duration: int, offset: int,
             key: bool, data: bytes) -> bytes:
    """One moof+mdat holding one sample: `decode_time` (tfdt), `duration` and composition
    `offset` in the track's timescale, `data` length-prefixed NAL units."""
    trun = full_box(b"trun", 1, TRUN_FLAGS, struct.pack(
        ">IiIIIi", 1, MOOF_SIZE + 8, duration, len(data),  # the sample starts after mdat's header
        KEY_SAMPLE if key else DELTA_SAMPLE, offset))
    traf = box(b"traf", full_box(b"tfhd", 0, DEFAULT_BASE_IS_MOOF, struct.pack(">I", track_id))
               + full_box(b"tfdt", 1, 0, struct.pack(">Q", decode_time)) + trun)
    moof = box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)) + traf)
    return moof + box(b"mdat", data)


# mfhd 16 + traf (8 + tfhd 16 + tfdt 20 + trun 36) + its own 8: the same for every fragment
MOOF_SIZE = 8 + 16 + 8 + 16 + 20 + 36


class Timeline:
    """Media times end to end: sample n starts where sample n-1 ends and lasts the interval
    since sample n-1, at most the frame interval the stream keeps (the median of the last
    `RECENT` intervals, at first `interval`). So at a steady rate media time follows stream
    time, and after a pause or dropped frames the next sample still lasts one interval: the
    timeline falls behind stream time by the pause (`offset`, media minus stream time, of the
    last sample placed) and the page shows the sample when it comes, never a frame stretched
    over the pause nor a hole in its buffer."""

    RECENT = 9

    def __init__(self, interval: int):
        self._intervals = collections.deque([max(1, interval)], maxlen=self.RECENT)
        self._end: int | None = None  # where the next sample starts
        self._last: int | None = None  # the last sample's stream decode time
        self.offset = 0

    def place(self, dts: int) -> tuple[int, int]:
        """(media decode time, duration) of the sample at stream decode time `dts`."""
        if self._last is not None and dts > self._last:
            self._intervals.append(dts - self._last)
        usual = sorted(self._intervals)[len(self._intervals) // 2]
        gap = usual if self._last is None else dts - self._last
        duration = max(1, min(gap, usual))  # a repeated timestamp still gets a tick
        start = max(0, dts) if self._end is None else self._end
        self._end, self._last = start + duration, dts
        self.offset = start - dts
        return start, duration


def ticks(value: int, time_base: Fraction, timescale: int) -> int:
    """`value` in `time_base` units as whole ticks of `timescale` (rounded)."""
    return round(Fraction(value) * time_base * timescale)
