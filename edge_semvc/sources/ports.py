"""The network ports an input takes or calls, read from its URI alone: `encode` and `serve`
refuse an output on one of them before anything opens (`sinks.uri.check_input_ports`)."""
from __future__ import annotations

from urllib.parse import urlsplit

from ..errors import SourceError
from ..uris import srt_uri
from . import check_input


def input_ports(uri: str) -> tuple[tuple, ...]:
    """The network ports an input takes or calls, in the outputs' terms (`Output.ports`), for
    `encode` and `serve` to refuse an output on one of them before anything opens:
    ("on udp", PORT) a port it receives on, ("to udp" | "to tcp", HOST, PORT) one it calls (an
    SRT caller, an RTSP camera); none for a URI it cannot read: its own open says why."""
    scheme = uri.partition("://")[0].lower()
    try:
        taken = tuple(("on udp", port) for port in check_input(uri))
        if scheme == "srt" and not taken:
            srt = srt_uri(uri, SourceError, "input")
            return (("to udp", srt.host, srt.port),)
        if scheme == "rtsp":
            parts = urlsplit(uri)
            return (("to tcp", parts.hostname or "", parts.port or 554),)
    except (SourceError, ValueError):
        return ()
    return taken
