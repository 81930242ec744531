"""Outputs by URI, in jetson-utils' `videoOutput` style: a path or `file://PATH` (its extension
picks the container), `-` (standard output), `rtp://HOST:PORT`, `udp://HOST:PORT` (MPEG-TS),
`srt://HOST:PORT`, `rtsp://@:PORT/PATH` (a built-in server). Per-output options are the URI's
query parameters (`rtp://239.0.0.1:5600?ttl=4&sdp=out.sdp`); unknown ones are refused by name.
The interface is `base.Output`; `base.Outputs` feeds one encoder's packets to all of them.
"""
from __future__ import annotations

from ..errors import SinkError
from ..registry import Registry
from .base import EventCallback, Output

# imported when used (GStreamer's outputs need no import here)
OUTPUTS = Registry("output URI scheme", {
    "file": f"{__name__}.file:FileOutput",
    "-": f"{__name__}.stream:StdoutOutput",
    "rtp": f"{__name__}.rtp:RtpOutput",
    "udp": f"{__name__}.stream:UdpOutput",
    "srt": f"{__name__}.gst_outputs:SrtOutput",
    "rtsp": f"{__name__}.gst_outputs:RtspServerOutput",
}, SinkError)


def scheme_of(uri: str) -> str:
    """The output kind a URI names: `file` for plain paths, `-` for standard output."""
    if uri == "-" or uri.startswith("-?"):
        return "-"
    scheme, sep, _ = uri.partition("://")
    return scheme.lower() if sep else "file"


def is_stream(uri: str) -> bool:
    """Whether `uri` names a stream output (anything but a file)."""
    return scheme_of(uri) != "file"


def open_output(uri: str, on_event: EventCallback | None = None) -> Output:
    """The output `uri` names, checked (SinkError naming what is wrong) but not yet open."""
    scheme = scheme_of(uri)
    if scheme not in OUTPUTS:
        raise SinkError(f"unsupported output URI scheme {scheme + '://'!r} in {uri!r} "
                        f"(supported: a file path, -, "
                        f"{', '.join(s + '://' for s in OUTPUTS.names() if s != '-')})")
    return OUTPUTS.get(scheme)(uri, on_event)
