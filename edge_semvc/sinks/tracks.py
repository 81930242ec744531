"""The passed-through streams (audio, subtitles, data; `edge_semvc/tracks.py`) in PyAV output
containers: whether a muxer takes a stream, its output stream, and its packets copied as they
are (nothing is decoded or re-encoded).

Whether a muxer takes a stream is tried once per muxer and stream on a container in memory
(its header written, then closed): some refusals only come when the header is written, and
there they would cost the real output its video.
"""
from __future__ import annotations

import io
import logging

import av
from av.bitstream import BitStreamFilterContext

from ..tracks import Track, TrackPacket

log = logging.getLogger(__name__)

_TRIED: dict[tuple[str, Track], str | None] = {}


def unsupported(muxer: str, track: Track) -> str | None:
    """Why FFmpeg's `muxer` cannot carry `track` (None: it can)."""
    key = (muxer, track)
    if key not in _TRIED:
        _TRIED[key] = _try(muxer, track)
    return _TRIED[key]


# The audio and subtitle codecs MPEG-TS has a stream type for (FFmpeg's mpegtsenc): it
# writes any other (PCM, FLAC, text subtitles) as private data that no reader decodes.
# Data streams (GoPro GPMF) go as private data on purpose: our own reader passes them on.
_TS_STREAM_TYPES = {
    "audio": {"aac", "aac_latm", "mp2", "mp3", "ac3", "eac3", "dts", "truehd", "opus", "s302m"},
    "subtitle": {"dvb_subtitle", "dvb_teletext", "arib_caption"},
}


def _codec_id_name(decoder: str) -> str:
    """The codec a decoder decodes (`mp3float` -> mp3, `dca` -> dts), else the name itself."""
    try:
        return av.codec.Codec(decoder, "r").canonical_name
    except (ValueError, av.error.FFmpegError):
        return decoder


def _try(muxer: str, track: Track) -> str | None:
    if track.params is None:
        return "its codec parameters are unknown"
    codec = _codec_id_name(track.codec)  # the decoder's name is not the codec's: mp3float
    if muxer == "mpegts" and codec not in _TS_STREAM_TYPES.get(track.kind, {codec}):
        return (f"MPEG-TS has no stream type for {codec} (FFmpeg would write it as "
                "private data that players do not decode)")
    container = av.open(io.BytesIO(), "w", format=muxer)
    try:
        container.add_stream_from_template(track.params)
        container.start_encoding()
    except (ValueError, av.error.FFmpegError) as e:
        log.debug("%s with %s: %s", muxer, track.describe(), e)
        return f"FFmpeg's {muxer} muxer does not take a {track.kind} stream of {track.codec}"
    finally:
        try:
            container.close()
        except (ValueError, av.error.FFmpegError):  # a header that failed: nothing to finish
            pass
    return None


class TrackMuxer:
    """The output streams of the passed-through `tracks` in one PyAV output container (added
    before its first packet), and their packets muxed with the right stream and time base."""

    def __init__(self, container, tracks: list[Track] | tuple[Track, ...]):
        self.container = container
        self.streams = {t.index: container.add_stream_from_template(t.params) for t in tracks}
        # AAC in ADTS (an MPEG-TS input's) into MP4: FFmpeg's muxer converts it itself, but not
        # where it writes the moov before the first packet (fragmented: the recording's
        # segments), where it refused the first packet ('Malformed AAC bitstream') and so every
        # segment. Into RTP: FFmpeg's packetiser takes 7 bytes off each packet of a stream
        # without a configuration, where an ADTS header with a CRC has 9 (2 bytes of CRC stayed
        # in each access unit, which no receiver decoded). Both: raw AAC, its configuration
        # apart (RawAac; RTP: the stream's, which the SDP also says)
        self._raw = RawAac(tracks if tracks and container.format.name in ("mp4", "rtp") else ())
        if tracks and container.format.name == "rtp":
            for t in tracks:
                if t.codec == "aac" and not t.extradata:
                    self.streams[t.index].codec_context.extradata = aac_config(t)

    def mux(self, packet: TrackPacket) -> bool:
        """Mux one packet; False when its track is not in this container."""
        stream = self.streams.get(packet.track)
        if stream is None:
            return False
        pkt = av.Packet(packet.data)
        pkt.stream = stream
        pkt.time_base = packet.time_base
        pkt.pts, pkt.dts = packet.pts, packet.dts
        pkt.duration = packet.duration
        pkt.is_keyframe = packet.keyframe
        for out in self._raw.filter(packet.track, pkt):
            out.stream = stream
            self.container.mux(out)
        return True


class RawAac:
    """AAC in ADTS (an MPEG-TS input's: a header before each frame, no configuration of its
    own) as raw AAC, for the outputs that give its configuration (`aac_config`) apart: an MP4's
    moov, the RTP output's SDP, the RTSP server's caps. FFmpeg's aac_adtstoasc, per track, once
    a packet shows ADTS: it takes the header off, 7 bytes, or 9 with a CRC. Other packets pass
    as they are."""

    def __init__(self, tracks: list[Track] | tuple[Track, ...]):
        self._params = {t.index: t.params for t in tracks if t.codec == "aac"}
        self._filters: dict[int, BitStreamFilterContext] = {}

    def filter(self, track: int, pkt: av.Packet) -> list[av.Packet]:
        """What goes out of `pkt` of the input's stream `track`."""
        bsf = self._filters.get(track)
        if bsf is None and track in self._params and bytes(memoryview(pkt)[:2]) >= b"\xff\xf0":
            bsf = self._filters[track] = BitStreamFilterContext(
                "aac_adtstoasc", self._params[track])
        return bsf.filter(pkt) if bsf is not None else [pkt]


# MPEG-4 audio object types of FFmpeg's AAC profile names, and the sampling frequency indexes
_AAC_OBJECT_TYPES = {"Main": 1, "LC": 2, "SSR": 3, "LTP": 4}
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000,
              7350)


def aac_config(track: Track) -> bytes:
    """The AudioSpecificConfig (ISO 14496-3 1.6.2.1) of an AAC track: its own, else (an MPEG-TS
    input's, in ADTS, whose headers say it per frame) made as the ADTS header says it: the
    object type of the profile (HE-AAC in ADTS is LC at the core rate, half the output's, mono
    under v2's parametric stereo, its SBR found by the decoder), the rate's index (or the rate
    itself) and the channel configuration. RFC 3640 requires it in the SDP (`config=`; empty,
    GStreamer's receiver played nothing), GStreamer's payloader in its caps."""
    if track.extradata:
        return track.extradata
    profile = str(getattr(track.params, "profile", None) or "LC")
    rate, channels = track.sample_rate, track.channels
    if profile.startswith("HE-AAC"):
        rate, channels = rate // 2, (1 if profile == "HE-AACv2" else channels)
    bits, size = _AAC_OBJECT_TYPES.get(profile, 2), 5
    if rate in _AAC_RATES:
        bits, size = bits << 4 | _AAC_RATES.index(rate), size + 4
    else:
        bits, size = (bits << 4 | 0xF) << 24 | rate, size + 28
    layout = {8: 7}.get(channels, channels if 0 < channels <= 6 else 0)
    bits, size = (bits << 4 | layout) << 3, size + 7  # GASpecificConfig: three 0 flags
    pad = -size % 8
    return (bits << pad).to_bytes((size + pad) // 8, "big")
