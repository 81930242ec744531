"""One sink interface for every output of the encoded stream: a file, a camera's recorded
segments, and the stream outputs (RTP, MPEG-TS over UDP, SRT, the built-in RTSP server,
standard output). One encoder feeds them all through `Outputs`.

An output's life: made from its URI before the encoder opens (so a bad URI or an unwritable
file fails before any work, and `global_headers` can shape the encoder's settings), `open`ed
once the encoder's parameter sets are known, then `write` per access unit, `wants_idr` before
each frame, `stats` whenever asked, `close` at the end (idempotent).

Receivers never stop the encoder: a stream output reports its receivers coming and going as
events (`output_lost`, `output_back`, `client_joined`, `client_left`) and counts what it could
not send; only an output whose failure ends the run (`fatal`: a file, standard output closed by
its reader) raises, a `WriteError` (exit 3 after every other output is finalised).
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable

from ..errors import WriteError

log = logging.getLogger(__name__)

# on_event(name, **fields): the service publishes them over MQTT, `encode` logs them
EventCallback = Callable[..., None]


def emit_event(on_event: EventCallback | None, name: str, output: str, **fields) -> None:
    """on_event(name, output=URI, **fields); a callback that raises is logged, never
    propagated: a reporting bug must not stop the stream."""
    if on_event is not None:
        try:
            on_event(name, output=output, **fields)
        except Exception:  # noqa: BLE001
            log.exception("on_event(%r) failed", name)


@dataclass(frozen=True)
class StreamInfo:
    """What an output needs to know of the encoded stream once the encoder is open."""

    width: int
    height: int
    fps: Fraction
    time_base: Fraction  # of every packet's pts/dts
    codec: str  # "h264" or "hevc" (Encoder.codec)
    headers: bytes  # Annex-B parameter sets (Encoder.headers())
    global_headers: bool  # the encoder keeps them out of band: outputs that need them in-band
    #                       prepend `headers` to each IDR


class Output(ABC):
    """One destination of the encoded stream (see the module's docstring)."""

    uri: str = ""  # as the user gave it: names the output in statistics and events
    # the container keeps parameter sets out of band (mp4, mkv): the encoder then writes none
    # in-band, but only if every output of the run agrees
    global_headers: bool = False
    # a write failure ends the run (a file the user asked for); else it is reported and retried
    fatal: bool = False
    # the packets' timestamps reach the receiver (a raw .h264 file keeps none: frames left out
    # by the storage profile would shorten it)
    keeps_timestamps: bool = True

    @abstractmethod
    def open(self, info: StreamInfo) -> None:
        """Start: from now on packets come."""

    @abstractmethod
    def write(self, packet) -> None:
        """One encoded access unit (`encoders.Packet`), in decode order. Raises only when
        `fatal` (a WriteError)."""

    def wants_idr(self, pts: int | None) -> bool:
        """Asked before each frame, in input order: whether that frame should be an IDR (a
        segment starts, a receiver joined). Must be cheap: it runs per frame."""
        return False

    def stats(self) -> dict:
        """{uri, state, ...}: at least `state`; stream outputs add clients, bytes_sent,
        reconnects, dropped."""
        return {"uri": self.uri, "state": "open"}

    @abstractmethod
    def close(self) -> None:
        """Finish (trailer, sockets, child processes). Idempotent; never raises for a
        receiver's sake."""


class Outputs:
    """The run's outputs behind one sink: each packet to every output, an IDR when any output
    asks for one, every output closed whatever happened to the others."""

    def __init__(self, outputs: Iterable[Output]):
        self.outputs = list(outputs)
        self._closed = False
        if not self.outputs:
            raise ValueError("a run needs at least one output")

    @property
    def global_headers(self) -> bool:
        return all(o.global_headers for o in self.outputs)

    def open(self, info: StreamInfo) -> "Outputs":
        opened = []
        try:
            for o in self.outputs:
                o.open(info)
                opened.append(o)
        except BaseException:
            for o in opened:
                _close_quietly(o)
            raise
        return self

    def wants_idr(self, pts: int | None) -> bool:
        # every output is asked (no short cut): segments count their frames in wants_idr
        return any([o.wants_idr(pts) for o in self.outputs])

    def write(self, packets) -> None:
        if hasattr(packets, "data"):
            packets = [packets]
        failed: WriteError | None = None
        for p in packets:
            for o in self.outputs:
                try:
                    o.write(p)
                except WriteError as e:  # only a fatal output raises: the others still get it
                    failed = failed or e
        if failed is not None:
            raise failed

    def stats(self) -> list[dict]:
        return [o.stats() for o in self.outputs]

    def close(self) -> None:
        """Close every output (once: later calls do nothing); the first failure is raised
        after all are closed."""
        if self._closed:
            return
        self._closed = True
        errors = []
        for o in self.outputs:
            try:
                o.close()
            except Exception as e:  # noqa: BLE001 - the other outputs are still finalised
                log.error("closing %s failed: %s", o.uri, e)
                errors.append(e)
        if errors:
            raise errors[0]

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close_quietly(o: Output) -> None:
    try:
        o.close()
    except Exception as e:  # noqa: BLE001
        log.error("closing %s failed: %s", o.uri, e)
