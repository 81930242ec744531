"""Reading a network output's URI: its query options (each typed, an unknown one refused by
name) and its host and port; and what `encode` checks of its network outputs before the run (a
host that resolves, no port taken twice)."""
from __future__ import annotations

from .. import uris
from ..errors import SinkError
from ..uris import address_problem, int_in  # noqa: F401  (int_in: the outputs' converter)


def uri_options(uri: str, known: dict[str, type]) -> tuple[object, dict[str, object]]:
    """(urlsplit result, {option: value}) of an output URI; each query option converted to its
    type in `known`, an unknown or malformed one refused naming it (`uris.query_options`)."""
    return uris.query_options(uri, known, SinkError)


def non_empty(text: str) -> str:
    """A converter for `uri_options`: text that is not empty (a file name)."""
    if not text:
        raise ValueError(text)
    return text


def host_port(uri: str, parts, *, listen: bool = False) -> tuple[str, int]:
    """HOST and PORT of a network output URI. `listen`: `@` or no host means every address."""
    return uris.host_port(uri, parts, SinkError, listen=listen)


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
