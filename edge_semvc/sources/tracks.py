"""Which of an input's other streams are passed through, and their packets as value types.

Audio, subtitle and data streams are (`tracks.KINDS`); a second video stream or a cover picture
is not, nor a data stream whose codec FFmpeg does not know (GoPro's timecode and `SOS` tracks:
no muxer takes them). Those are listed with the reason (`skipped`), never dropped silently.

Each passed stream's codec parameters are copied into a stream of a private, never-written
container (`Track.params`): outputs that open later (a new recording segment, after the input
was looped and reopened) add their stream from that copy, not from an input that may be closed.
"""
from __future__ import annotations

import io
import logging
import time
from fractions import Fraction

import av

from ..tracks import KINDS, Track, TrackPacket

log = logging.getLogger(__name__)

# a stream whose time goes back further than this was joined on (a smaller step back is
# reordering: the interleaver leaves such a track packet out and counts it)
JOINED_S = Fraction(1, 2)
# a live input: a stream whose time runs ahead of its packets' arrival by more than this jumped
# (a sender restarted with another clock: an RTP sender's starts anywhere in 13 h)
JUMPED_S = 2.0

# containers tried, in order, to hold a copy of a stream's codec parameters (each refuses some
# codecs when a stream is added; none is ever written)
_HOLDERS = ("matroska", "nut", "mov")


def passthrough_tracks(container, video) -> tuple[list[Track], list[dict]]:
    """(tracks passed through, [{stream, kind, codec, reason}] of the others) of an open input
    whose `video` stream is encoded."""
    tracks, skipped = [], []
    for stream in container.streams:
        if stream.index == video.index:
            continue
        codec = _codec_name(stream)
        reason = None
        if stream.type not in KINDS:
            reason = f"only the first video stream is encoded; this {stream.type} stream is " \
                     "not passed through"
        elif not codec:
            reason = "FFmpeg knows no codec for it, so no muxer takes it"
        params = None if reason else _detached(stream)
        if reason is None and params is None:
            reason = f"FFmpeg cannot copy its codec parameters ({codec})"
        if reason:
            skipped.append({"stream": stream.index, "kind": stream.type, "codec": codec or "none",
                            "reason": reason})
            continue
        cc = stream.codec_context
        tracks.append(Track(
            index=stream.index, kind=stream.type, codec=codec,
            time_base=Fraction(stream.time_base),
            sample_rate=cc.sample_rate if stream.type == "audio" else 0,
            channels=cc.channels if stream.type == "audio" else 0,
            extradata=bytes(cc.extradata or b"") if cc is not None else b"",
            language=stream.language or "", params=params))
    return tracks, skipped


def track_packet(packet) -> TrackPacket | None:
    """The value of one demuxed packet; None for the demuxer's empty end-of-stream packets."""
    if not packet.size or (packet.pts is None and packet.dts is None):
        return None
    return TrackPacket(track=packet.stream.index, data=bytes(packet), pts=packet.pts,
                       dts=packet.dts, duration=packet.duration or 0,
                       time_base=Fraction(packet.time_base), keyframe=packet.is_keyframe)


class HiddenLead:
    """The packets an MP4's edit list hides before a track's first shown one (a cut made without
    re-encoding keeps the sound from the keyframe before the cut: a player never plays it, and
    passed on it would play before the first picture in MPEG-TS and push it late in Matroska).
    Held until the track's first shown packet, then left out but for the last of them, the
    decoder's pre-roll (AAC's priming packet, which an MP4 with AAC has from its start: without
    it the first shown packet decodes wrong)."""

    def __init__(self):
        self._held: dict[int, TrackPacket] = {}
        self._started: set[int] = set()

    def __call__(self, packet, value: TrackPacket) -> list[TrackPacket]:
        """What to pass on of `value` (of the demuxed `packet`) and of what was held."""
        track = value.track
        if track in self._started:
            return [value]
        if packet.is_discard:
            self._held[track] = value
            return []
        self._started.add(track)
        held = self._held.pop(track, None)
        return [value] if held is None else [held, value]


class FollowOn:
    """Files joined end to end (`cat a.ts b.ts`: the second's clocks start again). Where a
    stream's time steps back by more than JOINED_S, its packets from there on belong to the
    next joined part, and every part has one shift for all its streams: set by the stream that
    steps back first, to follow on from its own last packet. So the second file's streams keep
    their offsets to one another (its sound stays with its pictures) and a stream that starts
    later in it leaves that gap. Applied to PyAV's packets as they are demuxed, the video's
    before they are decoded (by its decode time: presentation times step back between
    B-frames). Counts the packets it shifted.

    `live` (a stream sent to this machine, a camera): a step back is a sender that restarted,
    or a clock reset, and so is a step ahead by more than JUMPED_S beyond the time its packets
    took to come (`clock`: when each came); the part from there follows on alike."""

    def __init__(self, path: str, live: bool = False, clock=time.monotonic):
        self.path, self.live, self._clock = path, live, clock
        self._came: dict[int, float] = {}  # live: stream index -> when its last packet came
        self.retimed = 0
        self._shifts = [Fraction(0)]  # seconds added to each joined part's packets
        self._part: dict[int, int] = {}  # stream index -> the part its packets are in
        # stream index -> its last packet's decode end and its latest presentation end, shifted
        self._end: dict[int, tuple[Fraction, Fraction]] = {}

    def __call__(self, packet) -> None:
        stream, base = packet.stream.index, Fraction(packet.time_base)
        ticks = packet.dts if packet.dts is not None or packet.stream.type == "video" \
            else packet.pts
        part = self._part.get(stream, 0)
        if ticks is None:  # no time to judge by: shifted as its stream's part is
            self._shift(packet, self._shifts[part], base)
            return
        decoded_at = ticks * base
        shown_at = decoded_at if packet.pts is None else packet.pts * base
        decoded, presented = self._end.get(stream, (None, None))
        now, came = (self._clock(), self._came.get(stream)) if self.live else (0.0, None)
        self._came[stream] = now
        step = None if decoded is None else decoded_at + self._shifts[part] - decoded
        ahead = came is not None and step is not None and float(step) > now - came + JUMPED_S
        if step is not None and (step < -JOINED_S or ahead):
            part = self._part[stream] = part + 1
            if part == len(self._shifts):  # the first of its streams to step: after its
                # last packet in decode order, and its last picture on screen
                self._shifts.append(max(decoded - decoded_at, presented - shown_at))
                self._say(stream, decoded, step)
        shift = self._shifts[part]
        self._shift(packet, shift, base)
        length = (packet.duration or 0) * base
        end = shown_at + shift + length
        self._end[stream] = (decoded_at + shift + length,
                             end if presented is None else max(presented, end))

    def _say(self, stream: int, at: Fraction, step: Fraction) -> None:
        if not self.live:
            log.warning("%s: stream #%d goes back in time at %.2f s (files joined end to end?): "
                        "the part from there follows on, every stream shifted alike (counted: "
                        "retimed_packets)", self.path, stream, float(at))
            return
        log.warning("%s: stream #%d's clock %s at %.2f s while its packets kept coming (the "
                    "sender restarted, or its clock was reset?): the stream goes on from there "
                    "without a break, every stream shifted alike (counted: retimed_packets)",
                    self.path, stream, "went back" if step < 0 else
                    f"jumped {float(step):.1f} s ahead", float(at))

    def _shift(self, packet, seconds: Fraction, base: Fraction) -> None:
        if seconds:
            moved = round(seconds / base)
            packet.pts = None if packet.pts is None else packet.pts + moved
            packet.dts = None if packet.dts is None else packet.dts + moved
            self.retimed += 1


def _codec_name(stream) -> str:
    if stream.codec_context is not None:
        return stream.codec_context.name or ""
    return getattr(stream, "name", None) or ""


def _detached(stream):
    """A copy of `stream`'s codec parameters that outlives its container, or None."""
    for fmt in _HOLDERS:
        holder = av.open(io.BytesIO(), "w", format=fmt)
        try:
            return holder.add_stream_from_template(stream)  # keeps `holder` alive
        except (ValueError, av.error.FFmpegError):
            holder.close()
    return None
