"""Frame sources behind one small interface, chosen by URI (jetson-utils' videoSource style):
`file://clip.mp4` or a plain path (anything PyAV opens, raw .yuv with explicit geometry),
`demo://astronaut` (the built-in default input), `rtsp://` and `rtsps://` streams, streams sent
to this machine (`udp://@:PORT` MPEG-TS, `rtp://@:PORT` RTP without an SDP, an `.sdp` file,
`srt://@:PORT` MPEG-TS over SRT, or called for: `srt://HOST:PORT`) and `v4l2:///dev/videoN`
capture devices (through PyAV), `csi://N` (jetson-utils, on a Jetson)."""
from __future__ import annotations

from ..errors import DecodeError, SourceError  # noqa: F401  (re-exported)
from ..registry import Registry
from ..uris import file_path
from .base import LIVE_SCHEMES, NETWORK_SCHEMES, RawVideoOptions, Source  # noqa: F401

# scheme -> its opener, `open(uri, raw) -> Source` (a plain path is a file)
SOURCES = Registry("input URI scheme", {
    "file": "edge_semvc.sources.pyav:open_file",
    "demo": "edge_semvc.sources.demo:open_demo",
    "rtsp": "edge_semvc.sources.pyav:open_network",
    "rtsps": "edge_semvc.sources.pyav:open_network",
    "udp": "edge_semvc.sources.udp:open_udp",  # MPEG-TS sent to this machine: udp://@:5600
    "rtp": "edge_semvc.sources.udp:open_rtp",  # RTP H.264/H.265 without an SDP: rtp://@:5600
    "srt": "edge_semvc.sources.srt:open_srt",  # MPEG-TS over SRT: srt://@:9000, srt://HOST:9000
    "v4l2": "edge_semvc.sources.pyav:open_v4l2",  # v4l2:///dev/video0
    "csi": "edge_semvc.sources.jetson:open_csi",  # a MIPI CSI camera (Jetson only)
}, SourceError)
SCHEMES = tuple(SOURCES.names())  # what open_source takes (or a plain path)


def open_source(uri: str, raw: RawVideoOptions | None = None) -> Source:
    scheme, sep, _ = uri.partition("://")
    scheme = scheme if sep else "file"
    if scheme not in SOURCES:
        raise SourceError(f"unsupported input URI scheme {scheme + '://'!r} in {uri!r} "
                          "(supported: file://, demo://, rtsp://, rtsps://, udp://, rtp://, "
                          "srt://, v4l2://, csi://, or a plain path)")
    if _is_sdp(uri):  # an RTP stream the file describes, sent to this machine
        from .udp import open_sdp

        return open_sdp(uri, raw or RawVideoOptions())
    return SOURCES.get(scheme)(uri, raw or RawVideoOptions())


def check_input(uri: str) -> tuple[int, ...]:
    """What can be told of an input from its URI alone, before it is opened (SourceError):
    a `udp://`, `rtp://` or `srt://` input's port, address, options and codec; the UDP ports
    it takes."""
    scheme = uri.partition("://")[0]
    if scheme in ("udp", "rtp", "srt"):
        from . import srt, udp

        return (srt if scheme == "srt" else udp).check_uri(uri)
    return ()


def is_live(uri: str) -> bool:
    """Whether the input never ends on its own: a camera, a network stream, or the stream an
    `.sdp` file describes."""
    scheme, sep, _ = uri.partition("://")
    return (scheme if sep else "file") in LIVE_SCHEMES or _is_sdp(uri)


def _is_sdp(uri: str) -> bool:
    scheme, sep, _ = uri.partition("://")
    return (not sep or scheme == "file") and file_path(uri).lower().endswith(".sdp")
