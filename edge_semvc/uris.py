"""What inputs and outputs share of their URIs, below both: the path a file URI names, and
whether a network host has an address (each side raises its own error with its own words)."""
from __future__ import annotations

import socket
from urllib.parse import unquote


def file_path(uri: str) -> str:
    """The path a file input or output names: a plain path as it is, a `file://` URI's
    percent-decoded (RFC 8089: `file:///tmp/a%20b.mp4` and `file://localhost/tmp/a%20b.mp4`
    are `/tmp/a b.mp4`)."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() != "file":
        return uri
    return unquote(rest[len("localhost"):] if rest.lower().startswith("localhost/") else rest)


def address_problem(host: str | None) -> str | None:
    """Why `host` has no address (the resolver's reason), or None when it has one."""
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError) as e:
        return str(getattr(e, "strerror", None) or e)
    return None
