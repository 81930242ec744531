"""Movie fragments written by hand: one moof+mdat per H.264 or HEVC access unit, ready the
moment the encoder hands it over (ISO/IEC 14496-12, 8.8).

FFmpeg's mov muxer writes a frame's fragment only when the next frame comes (it needs the next
timestamp for the sample's duration, and PyAV cannot ask it to flush), which holds the web page's
picture back one frame interval. Here each sample lasts the stream's usual interval and the
fragments lie end to end on a `Timeline`: a sample never waits for its successor, and a frame
the pipeline dropped leaves no hole, which Media Source Extensions would take for a
discontinuity (a gap over twice the last frame's duration) and answer by dropping every frame
up to the next keyframe, nor two frames at one time (MSE drops the one buffered first, and
what depends on it).
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
    """Media times in stream ticks: stream time with the pauses taken out. The frames'
    presentation times come in input order (`frame`, before each is encoded; `left_out` takes
    back one the storage profile did not encode): where one comes more than 1.5 usual intervals
    after the one before (dropped frames, a pause), the time between is taken out but for one
    interval, so the page shows the next frame when it comes, never a frame stretched over the
    pause nor a hole in its buffer, and the timeline falls behind stream time by what was taken
    out (`offset`). Samples come in decode order (`place`): decode and presentation times go
    through the same mapping, so reordered frames (B-frames) keep their order and never share
    a presentation time; a decode time is kept rising by a tick where a gap folded two
    together."""

    RECENT = 9

    def __init__(self, interval: int):
        self._intervals = collections.deque([max(1, interval)], maxlen=self.RECENT)
        self._last_pts: int | None = None  # the last frame's, input order
        self._undo: tuple[int | None, bool] = (None, False)  # what `left_out` takes back
        self._gaps: collections.deque[tuple[int, int]] = collections.deque()  # (start, length)
        self._folded = 0  # the gaps' length behind every time still to come
        self._base: int | None = None  # added to every time: the first decode time is >= 0
        self._last_dts: int | None = None  # the last sample's media decode time
        self.offset = 0

    @property
    def usual(self) -> int:
        return sorted(self._intervals)[len(self._intervals) // 2]

    def frame(self, pts: int) -> None:
        """A frame's presentation time, in input order, before it is encoded."""
        gap = False
        if self._last_pts is not None and pts > self._last_pts:
            step, usual = pts - self._last_pts, self.usual
            gap = 2 * step > 3 * usual
            if gap:
                self._gaps.append((self._last_pts + usual, step - usual))
            else:
                self._intervals.append(step)
        self._undo = (self._last_pts, gap)
        self._last_pts = pts if self._last_pts is None else max(pts, self._last_pts)

    def left_out(self) -> None:
        """The frame given last is not encoded: the next one's step is measured from the one
        before it."""
        self._last_pts, gap = self._undo
        if gap:
            self._gaps.pop()
        self._undo = (self._last_pts, False)

    def _media(self, t: int) -> int:
        removed = self._folded
        for start, length in self._gaps:
            if t <= start:
                break
            removed += min(length, t - start)
        return t - removed + self._base

    def place(self, dts: int, pts: int) -> tuple[int, int, int]:
        """(media decode time, duration, composition offset) of the sample at stream decode
        time `dts` showing at `pts`."""
        if self._base is None:
            self._base = max(0, -dts)
        while self._gaps and sum(self._gaps[0]) <= dts:  # behind every time to come
            self._folded += self._gaps.popleft()[1]
        start = self._media(dts)
        if self._last_dts is not None:
            start = max(start, self._last_dts + 1)
        self._last_dts = start
        shown = self._media(pts)
        self.offset = shown - pts
        return start, self.usual, shown - start


def ticks(value: int, time_base: Fraction, timescale: int) -> int:
    """`value` in `time_base` units as whole ticks of `timescale` (rounded)."""
    return round(Fraction(value) * time_base * timescale)
