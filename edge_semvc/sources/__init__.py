"""Frame sources behind one small interface, chosen by URI (jetson-utils' videoSource style):
`file://clip.mp4` or a plain path (anything PyAV opens, raw .yuv with explicit geometry),
`demo://astronaut` (the built-in default input), `rtsp://` and `rtsps://` streams and
`v4l2:///dev/videoN` capture devices (through PyAV), `csi://N` (jetson-utils, on a Jetson)."""
from __future__ import annotations

from ..errors import DecodeError, SourceError  # noqa: F401  (re-exported)
from ..registry import Registry
from .base import LIVE_SCHEMES, NETWORK_SCHEMES, RawVideoOptions, Source  # noqa: F401

# scheme -> its opener, `open(uri, raw) -> Source` (a plain path is a file)
SOURCES = Registry("input URI scheme", {
    "file": "edge_semvc.sources.pyav:open_file",
    "demo": "edge_semvc.sources.demo:open_demo",
    "rtsp": "edge_semvc.sources.pyav:open_network",
    "rtsps": "edge_semvc.sources.pyav:open_network",
    "v4l2": "edge_semvc.sources.pyav:open_v4l2",  # v4l2:///dev/video0
    "csi": "edge_semvc.sources.jetson:open_csi",  # a MIPI CSI camera (Jetson only)
}, SourceError)
SCHEMES = tuple(SOURCES.names())  # what open_source takes (or a plain path)


def open_source(uri: str, raw: RawVideoOptions | None = None) -> Source:
    scheme, sep, _ = uri.partition("://")
    scheme = scheme if sep else "file"
    if scheme not in SOURCES:
        raise SourceError(f"unsupported input URI scheme {scheme + '://'!r} in {uri!r} "
                          "(supported: file://, demo://, rtsp://, rtsps://, v4l2://, csi://, or a "
                          "plain path)")
    return SOURCES.get(scheme)(uri, raw or RawVideoOptions())
