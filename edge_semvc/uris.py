"""What inputs and outputs share of their URIs, below both: the path a file URI names,
whether a network host has an address (each side raises its own error with its own words), and
a URI's password kept out of what is shown."""
from __future__ import annotations

import ipaddress
import re
import socket
from typing import Any
from urllib.parse import unquote

# scheme://user:password@ (RFC 3986 userinfo: no '/', '@' or whitespace in it)
_USERINFO_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^/@\s:]*:)[^/@\s]+@")
# ?passphrase=… / &password=… in a query (an SRT passphrase, a camera's password), any case
_QUERY_SECRET = re.compile(r"([?&](?:passphrase|password|passwd|pwd)=)[^&#\s'\"]+", re.I)


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


def is_loopback(host: str) -> bool:
    """Whether `host` (an address, or a name) is this machine alone: nothing it is sent or
    serves crosses a network."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower().rstrip(".") == "localhost"


def hide_passwords(value: Any) -> Any:
    """`value` (a string, or lists and dicts of them) with every URI's password shown as '***'
    (`rtsp://admin:***@10.0.0.5/stream`, `srt://host:9000?passphrase=***`): a camera's URI
    reaches logs, events and pages."""
    if isinstance(value, str):
        if "://" not in value:
            return value
        return _QUERY_SECRET.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", value))
    if isinstance(value, dict):
        return {k: hide_passwords(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [hide_passwords(v) for v in value]
    return value
