"""One sink interface for every output of the encoded stream: a file, a camera's recorded
segments, and the stream outputs (RTP, MPEG-TS over UDP, SRT, the built-in RTSP server,
standard output). One encoder feeds them all through `Outputs`.

An output's life: made from its URI before the encoder opens (so a bad URI or an unwritable
file fails before any work, and `global_headers` can shape the encoder's settings), `open`ed
once the encoder's parameter sets are known, then `write` per access unit, `wants_idr` before
each frame, `stats` whenever asked, `close` at the end (idempotent).

The input's other streams (audio, subtitles, data: `StreamInfo.tracks`) are passed through
untouched: once open, an output says per track whether it carries it (`cannot_carry`: None, or
why not; an output that knows nothing of tracks carries none), and gets the packets of those it
carries through `write_track`, interleaved in time with the video by `Outputs`
(`interleave.py`). A track an output cannot carry is reported (one warning line, and in the
statistics), never dropped silently.

Receivers never stop the encoder: a stream output reports its receivers coming and going as
events (`output_lost`, `output_back`, `client_joined`, `client_left`) and counts what it could
not send; only an output whose failure is final (`fatal`: a file, standard output closed by its
reader) raises, a `WriteError`. That output is closed and gets nothing more, the others go on
(a full disk must not end the live stream beside the recording); the run ends when no output
is left, and its exit is 3 either way (the first failure, after every output is finalised).
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable

from ..errors import WriteError
from ..tracks import Track, TrackPacket
from ..values import LinkReport
from .interleave import Interleaver
from .nal import is_idr

# what receivers may ask for: a burst of IDRs, then one a second of stream time, each IDR the
# run asks of the encoder taking one (a client's DESCRIBE and PLAY pass at once; a reconnect
# loop gets one a second)
RECEIVER_IDR_BURST, RECEIVER_IDRS_PER_S = 3, 1

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
    tracks: tuple[Track, ...] = ()  # the input's streams passed through beside the video


class Output(ABC):
    """One destination of the encoded stream (see the module's docstring)."""

    uri: str = ""  # as the user gave it: names the output in statistics and events
    # the container keeps parameter sets out of band (mp4, mkv): the encoder then writes none
    # in-band, but only if every output of the run agrees
    global_headers: bool = False
    # a write failure is final (a file the user asked for): it gets nothing more and the run's
    # exit is 3, though the other outputs go on; else it is reported and retried
    fatal: bool = False
    # the packets' timestamps reach the receiver (a raw .h264 file keeps none: frames left out
    # by the storage profile would shorten it)
    keeps_timestamps: bool = True
    # its IDRs are asked for by receivers (a client joined): granted within RECEIVER_IDR_BURST
    # and RECEIVER_IDRS_PER_S (`Outputs.wants_idr`), where a segment's always are
    asks_for_receivers: bool = False
    # a packet it sends can be lost for good (UDP resends nothing: RTP, MPEG-TS over UDP, RTSP
    # clients on UDP; SRT gives up on one that cannot arrive within its latency): a lost packet
    # shows until an IDR or a refresh puts the picture right (`encoder.lossy_keyint_s`)
    loses_packets: bool = False
    # its protocol tells the sender how its link fares (`link_report`: SRT's acknowledgements)
    reports_link: bool = False
    # the files it writes, by role ({"OUTPUT": path}; an RTP output's SDP): checked before the
    # run against each other and the input (`sinks.file.check_distinct_files`)
    files: dict[str, str] = {}
    # the host name it sends to, if any: `encode` checks that it resolves before the run (a
    # typo would run to the end with nothing sent); the service keeps retrying instead
    sends_to: str = ""
    # the network ports it takes: ("to", host, port) for each it sends to (UDP), ("on udp" or
    # "on tcp", port) for one it listens on; `encode` refuses two outputs sharing one
    # (`sinks.uri.check_ports`)
    ports: tuple[tuple, ...] = ()

    @abstractmethod
    def open(self, info: StreamInfo) -> None:
        """Start: from now on packets come."""

    @abstractmethod
    def write(self, packet) -> None:
        """One encoded access unit (`encoders.Packet`), in decode order. Raises only when
        `fatal` (a WriteError)."""

    def restream(self, info: StreamInfo) -> bool:
        """Asked of an open output (a kept one, `sinks.kept`) when the camera's next run brings
        another stream (`info`): True when it takes it where it is, its receivers getting it
        from its first IDR as they stay; False (the default) when it must be opened anew."""
        return False

    def follows(self, previous: "Output") -> None:
        """Made (not open yet) in place of `previous`, a kept output opened anew for another
        stream: takes from it what a receiver that stays needs to see the change."""
        return None

    def wants_idr(self, pts: int | None) -> bool:
        """Asked before each frame, in input order: whether that frame should be an IDR (a
        segment starts, a receiver joined). Must be cheap: it runs per frame."""
        return False

    def left_out(self, pts: int | None) -> None:
        """The frame `wants_idr` was asked about last is not encoded (the storage profile
        left it out)."""
        return None  # only a timeline of its own (the web page's) needs to know

    def cannot_carry(self, track: Track) -> str | None:
        """Asked once open, per passed-through track: why this output cannot carry it, or None
        when it does (then `write_track` gets its packets)."""
        return "this output carries the video only"

    def write_track(self, packet: TrackPacket) -> None:
        """One packet of a track this output carries, in time order with the video packets.
        Raises only when `fatal` (a WriteError)."""
        raise NotImplementedError(f"{type(self).__name__} carries tracks but cannot write them")

    def stats(self) -> dict:
        """{uri, state, ...}: at least `state`; stream outputs add clients, bytes_sent,
        reconnects, dropped."""
        return {"uri": self.uri, "state": "open"}

    def link_report(self) -> LinkReport | None:
        """The latest report on the link, for outputs whose protocol tells (SRT); else None.
        Must be cheap: it runs per frame."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Finish (trailer, sockets, child processes). Idempotent; never raises for a
        receiver's sake."""


# Longer than this a lost packet may show on an output that loses packets: worth a warning
LONG_LOSS_S = 5.0


def loss_note(outputs: Iterable[Output], keyint: int | None, refresh: bool,
              fps: float) -> str | None:
    """What to tell the user when an output that loses packets (`Output.loses_packets`) gets
    a stream that takes longer than LONG_LOSS_S to recover: until the next IDR every `keyint`
    frames, or two periods of intra refresh (README, "A link that loses packets")."""
    lossy = [o.uri for o in outputs if o.loses_packets]
    if not lossy or not keyint or fps <= 0:
        return None
    seconds = keyint * (2 if refresh else 1) / fps
    if seconds <= LONG_LOSS_S:
        return None
    what = "two refresh periods" if refresh else "the next IDR"
    here = (f"up to {seconds:.0f} s here (keyint {keyint} at {fps:g} fps)"
            if keyint < 1 << 30 else "which never comes here (keyint infinite)")
    return (f"{', '.join(lossy)}: a packet lost on the way shows until {what}, {here}; for a "
            "link that loses packets leave encoder.keyint at 0 (an IDR every "
            "encoder.lossy_keyint_s) or set it to a second or two of frames (README, \"A link "
            "that loses packets\")")


class Outputs:
    """The run's outputs behind one sink: each packet to every output, an IDR when any output
    needs one or receivers ask within their budget (RECEIVER_IDR_BURST, RECEIVER_IDRS_PER_S),
    every output closed whatever happened to the others."""

    def __init__(self, outputs: Iterable[Output]):
        self.outputs = list(outputs)
        self._closed = False
        self._refill = Fraction(0)  # IDRs receivers may ask for per pts unit, once open
        self._budget = Fraction(RECEIVER_IDR_BURST)  # of those, now (each IDR asked takes one)
        self._last_pts: int | None = None  # of the last frame asked about
        self._receivers_wait = False  # a receiver's request not granted yet
        self._is_idr: Callable[[bytes], bool] = lambda data: True  # set by open
        self.idr_asked_by = ""  # the last IDR wants_idr granted: "segment" or "receiver"
        self._interleaver: Interleaver | None = None
        self._carriers: dict[int, list[Output]] = {}  # track -> the outputs that carry it
        self.tracks: tuple[Track, ...] = ()
        self.dropped: list[dict] = []  # {output, stream, kind, codec, reason}
        self.failed: dict[int, WriteError] = {}  # id(output) -> why it gets nothing more
        if not self.outputs:
            raise ValueError("a run needs at least one output")

    @property
    def global_headers(self) -> bool:
        return all(o.global_headers for o in self.outputs)

    @property
    def loses_packets(self) -> bool:
        return any(o.loses_packets for o in self.outputs)

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
        self._is_idr = lambda data: is_idr(data, info.codec)
        self.tracks = info.tracks
        for track in info.tracks:
            self._carriers[track.index] = []
            for o in self.outputs:
                reason = o.cannot_carry(track)
                if reason is None:
                    self._carriers[track.index].append(o)
                    continue
                log.warning("%s: the input's %s is not passed through: %s", o.uri,
                            track.describe(), reason)
                self.dropped.append({"output": o.uri, **track.summary(), "reason": reason})
        self._refill = RECEIVER_IDRS_PER_S * Fraction(info.time_base)
        self._interleaver = Interleaver(info.time_base, info.fps,
                                        tuple(t for t in info.tracks if self._carriers[t.index]))
        return self

    def wants_idr(self, pts: int | None) -> bool:
        # every output is asked (no short cut): segments count their frames in wants_idr
        asks = [(o.asks_for_receivers, o.wants_idr(pts)) for o in self.outputs]
        self._receivers_wait |= any(a for receivers, a in asks if receivers)
        if pts is not None and self._last_pts is not None and pts > self._last_pts:
            self._budget = min(Fraction(RECEIVER_IDR_BURST),
                               self._budget + (pts - self._last_pts) * self._refill)
        self._last_pts = pts if pts is not None else self._last_pts
        # a client reconnecting in a loop must not make every frame of every output an IDR
        if not (any(a for receivers, a in asks if not receivers)
                or (self._receivers_wait and self._budget >= 1)):
            return False
        # counted when asked (an encoder with a delay writes it frames later)
        self._receivers_wait, self._budget = False, max(Fraction(0), self._budget - 1)
        self.idr_asked_by = "segment" if any(a for receivers, a in asks if not receivers) \
            else "receiver"
        return True

    def left_out(self, pts: int | None) -> None:
        for o in self.outputs:
            o.left_out(pts)

    def write(self, packets) -> None:
        """Encoded video packets, in decode order (the tracks' packets due before each first)."""
        if hasattr(packets, "data"):
            packets = [packets]
        for p in packets:
            # a receiver starts at an IDR (the RTSP and SRT children wait for one): an intra
            # refresh's recovery point, a keyframe too, leaves its request waiting
            if p.keyframe and self._is_idr(p.data):
                self._receivers_wait = False
            if self._interleaver is not None:
                self._write_tracks(self._interleaver.video(p))
            self._each(self.outputs, lambda o: o.write(p))  # noqa: B023
        self._raise_when_none_left()

    def add_track_packets(self, packets: list[TrackPacket]) -> None:
        """The source's packets of the passed-through tracks, as read: written once due."""
        if self._interleaver is not None and packets:
            self._write_tracks(self._interleaver.add(packets))
            self._raise_when_none_left()

    def _write_tracks(self, packets: list[TrackPacket]) -> None:
        for p in packets:
            self._each(self._carriers.get(p.track, ()), lambda o: o.write_track(p))  # noqa: B023

    def _each(self, outputs, call) -> None:
        """`call(o)` for every output still taking the stream. One that fails (only a fatal
        output raises) is closed, said once and given nothing more."""
        for o in outputs:
            if id(o) in self.failed:
                continue
            try:
                call(o)
            except WriteError as e:
                self.failed[id(o)] = e
                _close_quietly(o)  # an output does not repeat its own failure at its close
                going = [x.uri for x in self.outputs if id(x) not in self.failed]
                if going:
                    log.error("%s; the run goes on for %s", e, ", ".join(going))
                elif e is not self._first_failure():  # the first is the run's error
                    log.error("%s", e)

    def _raise_when_none_left(self) -> None:
        if self.failed and len(self.failed) == len(self.outputs):
            raise self._first_failure()

    def _first_failure(self) -> WriteError:
        return next(iter(self.failed.values()))

    def link_reports(self) -> list[LinkReport]:
        """The latest link report of each output that has one (the follower takes the worst)."""
        return [r for o in self.outputs if (r := o.link_report()) is not None]

    def stats(self) -> list[dict]:
        """Each output's statistics, with the passed-through streams it could not carry."""
        out = []
        for o in self.outputs:
            dropped = [{k: v for k, v in d.items() if k != "output"} for d in self.dropped
                       if d["output"] == o.uri]
            failed = self.failed.get(id(o))
            out.append({**o.stats(), **({"state": "failed", "error": str(failed)} if failed
                                        else {}),
                        **({"streams_not_carried": dropped} if dropped else {})})
        return out

    def track_stats(self) -> list[dict]:
        """Per passed-through track: packets written, cut after the video's end, left out as
        out of order, and the outputs that could not carry it."""
        counts = self._interleaver.counts if self._interleaver is not None else {}
        none = {"packets": 0, "cut": 0, "out_of_order": 0}
        return [{**t.summary(), **counts.get(t.index, none),
                 "not_carried_by": {d["output"]: d["reason"] for d in self.dropped
                                    if d["stream"] == t.index}} for t in self.tracks]

    def close(self) -> None:
        """Close every output (once: later calls do nothing); the first failure is raised
        after all are closed."""
        if self._closed:
            return
        self._closed = True
        if self._interleaver is not None:  # what is left of the tracks, up to the video's end
            self._write_tracks(self._interleaver.finish())
        errors, failed_now = [], []
        for o in self.outputs:
            if id(o) in self.failed:  # closed when it failed
                continue
            try:
                o.close()
            except WriteError as e:  # its last bytes did not fit; it names its output
                self.failed[id(o)] = e
                failed_now.append(e)
            except Exception as e:  # noqa: BLE001 - the other outputs are still finalised
                log.error("closing %s failed: %s", o.uri, e)
                errors.append(e)
        if self.failed:  # the first failure is the run's error (its caller says it)
            first = self._first_failure()
            for e in failed_now:
                if e is not first:
                    log.error("%s", e)
            raise first
        if errors:
            raise errors[0]

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close_quietly(o: Output) -> None:
    """Close an output that failed or was never used: its own failure to close is said (an MP4
    whose index did not fit)."""
    try:
        o.close()
    except Exception as e:  # noqa: BLE001
        log.error("%s", e if isinstance(e, WriteError) else f"closing {o.uri} failed: {e}")
