"""What inputs and outputs share of their URIs, below both: the path a file URI names,
whether a network host has an address or is this machine, a network URI's options, host and
port, an `srt://` URI read (each side raises its own error with its own words), and a URI's
password kept out of what is shown."""
from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

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


def is_this_machine(host: str) -> bool:
    """Whether `host` (an address, or a name) reaches this machine: loopback, every address
    (0.0.0.0), or an address one of its interfaces has (a socket binds it); not a multicast
    group, which a socket binds too."""
    if is_loopback(host):
        return True
    try:
        found = socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError):
        return False
    for family, kind, _, _, address in found:
        if ipaddress.ip_address(address[0].partition("%")[0]).is_multicast:
            continue
        try:
            with socket.socket(family, kind) as s:
                s.bind((address[0], 0, *address[2:]))
            return True
        except OSError:
            continue
    return False


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


# --- network URIs: options, host and port (each side passes its error and its word) ----------

# a URI each scheme takes, for messages ({host}: scheme and host)
EXAMPLES = {"rtsp": "{host}:8554/cam", "srt": "{host}:9000"}


def query_options(uri: str, known: dict[str, Any], error: type[Exception],
                  what: str = "output") -> tuple[Any, dict[str, Any]]:
    """(urlsplit result, {option: value}) of a network URI (`what`: output or input); each
    query option converted to its type in `known`, an unknown or malformed one refused naming
    it (`error`)."""
    parts = urlsplit(uri)
    options: dict[str, Any] = {}
    # a '+' is itself (RFC 3986), not a form's space: an SRT stream id or a name keeps it
    for name, text in parse_qsl(parts.query.replace("+", "%2B"), keep_blank_values=True,
                                strict_parsing=False):
        if name not in known:
            raise error(f"unknown option {name!r} in {what} {uri!r} (known: "
                        f"{', '.join(known) or 'none'})")
        if name in options:
            raise error(f"option {name!r} given twice in {what} {uri!r}")
        try:
            options[name] = known[name](text)
        except ValueError:
            raise error(f"invalid value {text!r} for option {name!r} in {what} "
                        f"{uri!r}") from None
    return parts, options


def host_port(uri: str, parts, error: type[Exception], what: str = "output", *,
              listen: bool = False) -> tuple[str, int]:
    """HOST and PORT of a network URI. `listen`: `@` or no host means every address
    ("0.0.0.0")."""
    try:
        port = parts.port
    except ValueError:  # beyond 65535, or not a number
        port = -1
    if port is None:
        example = EXAMPLES.get(parts.scheme, "{host}:5600").format(
            host=f"{parts.scheme}://{'@' if listen else '127.0.0.1'}")
        raise error(f"{what} {uri!r} needs a port, e.g. {example}")
    if not 1 <= port <= 65535:
        raise error(f"{what} {uri!r}: its port {parts.netloc.rpartition(':')[2]!r} is not "
                    "one of 1-65535")
    host = parts.hostname or ""
    if not host and not listen:
        raise error(f"{what} {uri!r} needs a host, e.g. {parts.scheme}://127.0.0.1:{port}")
    return host or "0.0.0.0", port


def int_in(lo: int, hi: int):
    """A converter for `query_options`: an integer in [lo, hi] (else ValueError: refused)."""
    def parse(text: str) -> int:
        value = int(text)
        if not lo <= value <= hi:
            raise ValueError(text)
        return value
    return parse


# --- SRT: one reading of an srt:// URI for the output (sinks) and the input (sources) --------

# SRT's own default latency (ms), which assumes a loss is seen at once (the output adds a frame
# interval: gst_outputs.srt_latency_ms)
SRT_LATENCY_MS = 120
PASSPHRASE_BYTES = (10, 79)  # what SRT takes (SRTO_PASSPHRASE), in UTF-8 bytes
STREAMID_BYTES = 512  # what SRT takes (SRTO_STREAMID), in UTF-8 bytes


@dataclass(frozen=True)
class SrtUri:
    """`srt://HOST:PORT[?mode=caller|listener&latency=MS&passphrase_env=NAME&streamid=ID]`,
    read."""

    host: str  # a listener's "0.0.0.0": every address
    port: int
    mode: str  # caller or listener
    latency: int | None  # ms; None: the side's default
    passphrase_env: str | None  # the variable that holds the passphrase (never the URI)
    streamid: str | None = None  # what a caller tells the listener it calls (SRTO_STREAMID)

    def address(self) -> str:
        """The address of HOST that GStreamer binds or calls, resolved here with IPv4 first:
        srtsink and srtsrc take the first address their resolver gives, `localhost`'s ::1,
        where a peer on 0.0.0.0 or 127.0.0.1 never answers. HOST itself when it does not
        resolve (GStreamer then says so)."""
        try:
            found = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError):
            return self.host
        ipv4 = [f for f in found if f[0] == socket.AF_INET]
        return str((ipv4 or found)[0][4][0])


def srt_uri(uri: str, error: type[Exception], what: str, default_mode: str = "") -> SrtUri:
    """An `srt://` URI read, or `error` saying what is wrong with it (`what`: output or
    input). `default_mode`: the mode without `mode=`; "" (the input): a listener without a
    host (`srt://@:PORT`, or every address: 0.0.0.0), a caller with one."""
    query = urlsplit(uri).query
    if {name.lower() for name, _ in parse_qsl(query)} & {"passphrase", "pbkeylen"}:
        raise error(f"{what} {uri.replace('?' + query, '')!r}: the passphrase does not "
                    "belong in the URI (URIs are logged): name the environment "
                    "variable that holds it, ?passphrase_env=NAME")
    if urlsplit(uri).fragment:  # a stream id's '#' (`#!::r=cam1,m=publish`) ends the query
        raise error(f"{what} {uri!r}: a '#' ends the URI there and what follows it is lost; "
                    "in a streamid, write it %23 (streamid=%23!::r=cam1,m=publish)")
    parts, options = query_options(uri, {"mode": str, "latency": int_in(0, 60000),
                                         "passphrase_env": str, "streamid": str}, error, what)
    passphrase_env = options.get("passphrase_env")
    if passphrase_env is not None:
        size = len(os.environ.get(passphrase_env, "").encode(errors="surrogateescape"))
        if not size:
            raise error(f"{what} {uri!r}: environment variable {passphrase_env} "
                        "(the SRT passphrase) is not set")
        if not PASSPHRASE_BYTES[0] <= size <= PASSPHRASE_BYTES[1]:
            raise error(f"{what} {uri!r}: the SRT passphrase in {passphrase_env} "
                        f"has {size} bytes; SRT takes %d-%d" % PASSPHRASE_BYTES)
    # the input's default: an address to call, or none (`@`, every address: 0.0.0.0, ::) to
    # listen on
    called = parts.hostname not in (None, "0.0.0.0", "::")
    mode = options.get("mode", default_mode or ("caller" if called else "listener"))
    if mode not in ("caller", "listener"):
        raise error(f"{what} {uri!r}: mode must be caller or listener, got {mode!r}")
    streamid = options.get("streamid")
    if streamid is not None:
        _check_streamid(uri, streamid, mode, error, what)
    host, port = host_port(uri, parts, error, what, listen=mode == "listener")
    return SrtUri(host, port, mode, options.get("latency"), passphrase_env, streamid)


def _check_streamid(uri: str, streamid: str, mode: str, error: type[Exception],
                    what: str) -> None:
    """A caller's stream id (`publish:cam1`, `#!::r=cam1,m=publish`) as SRT takes it, else
    `error` naming it."""
    if mode == "listener":
        raise error(f"{what} {uri!r}: streamid={streamid!r} is what a caller tells the "
                    "listener it calls (a server such as MediaMTX); a listener sends none "
                    "(it is told each caller's, which is logged as the caller joins)")
    size = len(streamid.encode(errors="surrogateescape"))
    if not 0 < size <= STREAMID_BYTES or not streamid.isprintable():
        raise error(f"{what} {uri!r}: streamid={streamid!r} is not a stream id SRT takes: "
                    f"1-{STREAMID_BYTES} printable characters (UTF-8 bytes), it has "
                    f"{size} bytes" + ("" if streamid.isprintable() else
                                       ", with a control character"))
