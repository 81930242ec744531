"""A muxer stream for already-encoded H.264/HEVC packets, on every PyAV the locks pin.

PyAV >= 18 (`requirements.txt`): ``OutputContainer.add_mux_stream`` makes a stream without a
codec context and, for MP4 and Matroska, takes the parameter sets from the first packet itself
(FFmpeg's ``extract_extradata`` filter) before the header is written.
PyAV 17 (the newest with Python 3.10 wheels: `requirements/py310.txt`) has ``add_mux_stream`` but
neither that step nor a way to set a stream's extradata. A muxer that writes the parameter sets
into its header (Matroska refuses to start without them; fragmented MP4 would write an unplayable
moov) then gets its stream at the first packet instead: copied (``add_stream_from_template``, no
codec context opened) from that packet demuxed as raw Annex-B, whose parameter sets FFmpeg's
probing turns into extradata. Plain MP4 (moov at the end) and MPEG-TS (in-band) never wait.
"""
from __future__ import annotations

import io
from fractions import Fraction

import av

WAITS_FOR_FIRST_PACKET = int(av.__version__.split(".")[0]) < 18
RAW_DEMUXER = {"h264": "h264", "hevc": "hevc"}


def add_stream(container, codec: str, fps: Fraction, width: int, height: int,
               time_base: Fraction, header_needs_parameter_sets: bool):
    """The container's video stream, or None where it must wait for the first packet
    (`stream_from_first_packet`): PyAV 17 with a muxer that writes the parameter sets into its
    header (`header_needs_parameter_sets`: Matroska, fragmented MP4)."""
    if WAITS_FOR_FIRST_PACKET and header_needs_parameter_sets:
        return None
    stream = container.add_mux_stream(codec, rate=fps, width=width, height=height)
    stream.time_base = time_base
    return stream


def stream_from_first_packet(container, codec: str, data: bytes, width: int, height: int,
                             time_base: Fraction):
    """The stream, copied from the first packet (Annex-B, carrying the parameter sets); the
    size is set again (probing one packet reports a padded width)."""
    with av.open(io.BytesIO(data), format=RAW_DEMUXER[codec]) as raw:
        stream = container.add_stream_from_template(raw.streams.video[0], opaque=True,
                                                    width=width, height=height)
    stream.time_base = time_base
    return stream
