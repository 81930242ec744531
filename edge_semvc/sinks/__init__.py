"""Outputs by URI, in jetson-utils' `videoOutput` style: a path or `file://PATH` (its extension
picks the container), `-` (standard output), `rtp://HOST:PORT`, `udp://HOST:PORT` (MPEG-TS),
`srt://HOST:PORT`, `rtsp://@:PORT/PATH` (a built-in server). Per-output options are the URI's
query parameters (`rtp://239.0.0.1:5600?ttl=4&sdp=out.sdp`); unknown ones are refused by name.
The interface is `base.Output`; `base.Outputs` feeds one encoder's packets to all of them.
"""
from __future__ import annotations

from importlib import import_module
from urllib.parse import parse_qsl, urlsplit

from ..errors import SinkError
from .base import EventCallback, Output

# scheme -> "module:class", imported when used (GStreamer's outputs need no import here)
SCHEMES = {
    "file": "file:FileOutput",
    "-": "stream:StdoutOutput",
    "rtp": "stream:RtpOutput",
    "udp": "stream:UdpOutput",
    "srt": "gstreamer:SrtOutput",
    "rtsp": "gstreamer:RtspServerOutput",
}


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
    if scheme not in SCHEMES:
        raise SinkError(f"unsupported output URI scheme {scheme + '://'!r} in {uri!r} "
                        f"(supported: a file path, -, "
                        f"{', '.join(s + '://' for s in SCHEMES if s != '-')})")
    module, cls = SCHEMES[scheme].split(":")
    return getattr(import_module(f"{__name__}.{module}"), cls)(uri, on_event)


def uri_options(uri: str, known: dict[str, type]) -> tuple[object, dict[str, object]]:
    """(urlsplit result, {option: value}) of an output URI; each query option converted to its
    type in `known`, an unknown or malformed one refused naming it."""
    parts = urlsplit(uri)
    options: dict[str, object] = {}
    for name, text in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name not in known:
            raise SinkError(f"unknown option {name!r} in output {uri!r} (known: "
                            f"{', '.join(known) or 'none'})")
        if name in options:
            raise SinkError(f"option {name!r} given twice in output {uri!r}")
        try:
            options[name] = known[name](text)
        except ValueError:
            raise SinkError(f"invalid value {text!r} for option {name!r} in output "
                            f"{uri!r}") from None
    return parts, options


def int_in(lo: int, hi: int):
    """A converter for `uri_options`: an integer in [lo, hi] (else ValueError: refused)."""
    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(text)
        return value
    return parse


def host_port(uri: str, parts, *, listen: bool = False) -> tuple[str, int]:
    """HOST and PORT of a network output URI. `listen`: `@` or no host means every address."""
    try:
        port = parts.port
    except ValueError:
        port = None
    if not port:
        raise SinkError(f"output {uri!r} needs a port, e.g. "
                        f"{parts.scheme}://{'@' if listen else '127.0.0.1'}:5600")
    host = parts.hostname or ""
    if not host and not listen:
        raise SinkError(f"output {uri!r} needs a host, e.g. {parts.scheme}://127.0.0.1:{port}")
    return host or "0.0.0.0", port
