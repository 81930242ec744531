"""Reading a network output's URI: its query options (each typed, an unknown one refused by
name) and its host and port; and what `encode` checks of its network outputs before the run (a
host that resolves, no port taken twice)."""
from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

from ..errors import SinkError
from ..uris import address_problem

# a URI each scheme takes, for messages ({host}: scheme and host)
EXAMPLES = {"rtsp": "{host}:8554/cam", "srt": "{host}:9000"}


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


def non_empty(text: str) -> str:
    """A converter for `uri_options`: text that is not empty (a file name)."""
    if not text:
        raise ValueError(text)
    return text


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
    except ValueError:  # beyond 65535, or not a number
        port = -1
    if port is None:
        example = EXAMPLES.get(parts.scheme, "{host}:5600").format(
            host=f"{parts.scheme}://{'@' if listen else '127.0.0.1'}")
        raise SinkError(f"output {uri!r} needs a port, e.g. {example}")
    if not 1 <= port <= 65535:
        raise SinkError(f"output {uri!r}: its port {parts.netloc.rpartition(':')[2]!r} is not "
                        "one of 1-65535")
    host = parts.hostname or ""
    if not host and not listen:
        raise SinkError(f"output {uri!r} needs a host, e.g. {parts.scheme}://127.0.0.1:{port}")
    return host or "0.0.0.0", port


def check_ports(outputs) -> None:
    """Refuse two outputs that take one network port: two streams sent into one receiver's
    port (an RTP output's RTCP goes to its port + 1), or two servers on one port."""
    taken: dict[tuple, str] = {}
    for out in outputs:
        for port in out.ports:
            if port in taken:
                where = f"{port[1]}:{port[2]}" if port[0] == "to" else \
                    f"{port[0].split()[1].upper()} port {port[1]}"
                raise SinkError(f"outputs {taken[port]!r} and {out.uri!r} both use {where}: "
                                "give each its own")
            taken[port] = out.uri


def check_resolves(uri: str, host: str) -> None:
    """The host an output sends to has an address (SinkError naming it, else)."""
    problem = address_problem(host)
    if problem:
        raise SinkError(f"output {uri!r}: host {host!r} has no address ({problem})")
