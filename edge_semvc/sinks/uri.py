"""Reading a network output's URI: its query options (each typed, an unknown one refused by
name) and its host and port; and what `encode` checks of its network outputs before the run (a
host that resolves, no port taken twice, by two outputs or an output and the input)."""
from __future__ import annotations

from itertools import product

from .. import uris
from ..errors import SinkError
from ..uris import address_problem


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


def check_input_ports(inputs, outputs) -> None:
    """Refuse an output on a port an input takes or calls on this machine (`inputs`: (URI,
    `sources.input_ports`) pairs): an output sending into the input's port, a server on it, or
    an input calling this machine's port that an output serves (its own output: a loop that
    never gets a frame)."""
    for (uri, ports), out in product(inputs, outputs):
        for ours, theirs in product(ports, out.ports):
            where = _shared(ours, theirs)
            if where:
                raise SinkError(f"input {uri!r} and output {out.uri!r} both use {where}: give "
                                "each its own (an input fed by its own output never gets a "
                                "frame)")


def _shared(ours: tuple, theirs: tuple) -> str | None:
    """The port an input's (`ours`) and an output's (`theirs`) share, said; None if none."""
    if ours[0] == "on udp":  # the input receives on it
        if theirs == ours:
            return f"UDP port {ours[1]}"
        if theirs[0] == "to" and theirs[2] == ours[1] and uris.is_this_machine(theirs[1]):
            return f"UDP port {ours[1]} of this machine ({theirs[1]})"
    elif theirs == ("on " + ours[0][3:], ours[2]) and uris.is_this_machine(ours[1]):
        return f"{ours[0][3:].upper()} port {ours[2]} of this machine ({ours[1]})"
    return None


def check_resolves(uri: str, host: str) -> None:
    """The host an output sends to has an address (SinkError naming it, else)."""
    problem = address_problem(host)
    if problem:
        raise SinkError(f"output {uri!r}: host {host!r} has no address ({problem})")
