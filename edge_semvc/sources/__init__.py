"""Frame sources behind one small interface, chosen by URI (jetson-utils' videoSource style):
`file://clip.mp4` or a plain path (anything PyAV opens, raw .yuv with explicit geometry),
`demo://astronaut` (the built-in default input), `rtsp://` and `rtsps://` streams and
`v4l2:///dev/videoN` capture devices (through PyAV), `csi://N` (jetson-utils, on a Jetson)."""
from __future__ import annotations

from ..errors import DecodeError, SourceError  # noqa: F401  (re-exported)
from .base import RawVideoOptions, Source  # noqa: F401  (re-exported)


def open_source(uri: str, raw: RawVideoOptions | None = None) -> Source:
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "file", uri
    if scheme == "file":
        from .pyav import PyAVSource
        return PyAVSource(rest, raw or RawVideoOptions())
    if scheme == "demo":
        from .demo import DemoSource
        return DemoSource(rest or "astronaut")
    if scheme in NETWORK_SCHEMES:
        from .pyav import PyAVSource
        return PyAVSource(uri, raw or RawVideoOptions(), live=NETWORK_SCHEMES[scheme])
    if scheme == "v4l2":  # v4l2:///dev/video0
        from .pyav import PyAVSource
        return PyAVSource(rest, raw or RawVideoOptions(), device="video4linux2")
    if scheme == "csi":  # csi://0: a MIPI CSI camera through jetson-utils (Jetson only)
        from .jetson import JetsonSource
        return JetsonSource(uri)
    raise SourceError(f"unsupported input URI scheme {scheme + '://'!r} in {uri!r} "
                      "(supported: file://, demo://, rtsp://, rtsps://, v4l2://, csi://, or a "
                      "plain path)")


# FFmpeg options per network scheme: RTSP over TCP (no lost UDP packets smearing the picture).
# Reads time out (pyav.LIVE_TIMEOUT_S) so that a camera that disappears ends the read instead
# of hanging it: the service then reconnects.
NETWORK_SCHEMES = {"rtsp": {"rtsp_transport": "tcp"}, "rtsps": {"rtsp_transport": "tcp"}}
LIVE_SCHEMES = (*NETWORK_SCHEMES, "v4l2", "csi")  # inputs that never end on their own
SCHEMES = ("file", "demo", *LIVE_SCHEMES)  # what open_source takes (or a plain path)
