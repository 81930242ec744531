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
from fractions import Fraction

import av

from ..tracks import KINDS, Track, TrackPacket

log = logging.getLogger(__name__)

# a track whose time goes back further than this was joined on (a step back this small is
# reordering: the interleaver leaves such a packet out and counts it)
JOINED_S = Fraction(1, 2)

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


class FollowOn:
    """Per track, the packets after a step back in time of more than JOINED_S (files joined end
    to end: the second's clock starts again) shifted to follow on from the track's last packet,
    as the video's frames are (`PyAvSource._rising_pts`): the second file's audio is kept, in
    step with its pictures within a frame or so. Counts the packets it shifted."""

    def __init__(self, path: str):
        self.path = path
        self.retimed = 0
        self._shift: dict[int, Fraction] = {}  # track -> seconds added
        self._end: dict[int, Fraction] = {}  # track -> its last packet's end, as shifted

    def __call__(self, p: TrackPacket | None) -> TrackPacket | None:
        if p is None or p.time is None:
            return p
        shift = self._shift.get(p.track, Fraction(0))
        end = self._end.get(p.track)
        if end is not None and p.time + shift < end - JOINED_S:
            if not self.retimed:
                log.warning("%s: stream #%d goes back in time at %.2f s (files joined end to "
                            "end?): its packets from there follow on from the ones before "
                            "(counted: passthrough.retimed)", self.path, p.track, float(end))
            shift = self._shift[p.track] = end - p.time
        if shift:
            p = p.shifted(shift)
            self.retimed += 1
        self._end[p.track] = p.time + p.duration * p.time_base
        return p


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
