"""Stream outputs through PyAV's muxers: MPEG-TS over UDP (`udp://HOST:PORT`) and standard
output (`-`: MPEG-TS, or `-?format=h264` for raw Annex-B); the base of the RTP output (rtp.py).

Nothing is re-encoded: the encoder's Annex-B access units go to FFmpeg's `rtp` or `mpegts`
muxer. Parameter sets travel in-band before every IDR (the encoder writes them when any stream
output is in the run; `StreamInfo.headers` is prepended where it did not). Datagrams leave as
each packet is muxed (`flush_packets`), so a frame is on the wire when the encoder hands it out.

Nobody listening is normal for RTP and UDP (datagrams to a port nobody reads are simply lost).
A send that fails (no route, the interface down) is counted; the output reports
`output_lost` once, keeps trying with each keyframe, and reports `output_back` when a packet
goes out again. Standard output closed by its reader ends the run (exit 3, statistics written,
every other output finalised).

The input's passed-through streams (audio, data) travel in the MPEG-TS outputs (UDP, standard
output, and SRT, whose MPEG-TS `TsBytes` makes here) beside the video; raw Annex-B on standard
output carries the video alone and says so.
"""
from __future__ import annotations

import errno as errno_mod
import logging
import os
import sys

from ..errors import SinkError, WriteError
from ..uris import int_in
from .base import EventCallback, Output, StreamInfo, emit_event
from .nal import has_parameter_sets, is_idr
from .tracks import TrackMuxer, unsupported
from .uri import host_port, uri_options

log = logging.getLogger(__name__)

# MPEG-TS packets per UDP datagram: 7 x 188 = 1316 bytes, under any Ethernet MTU
TS_DATAGRAM = 1316
# TS muxer settings for live use: no added muxing delay, each packet out as it is muxed,
# timestamps as the encoder gave them (as FileSink's .ts); `Outputs` already puts the streams in
# order, and FFmpeg's own interleaving would hold the video back until a sparse stream's next
# packet (GPMF: one a second), up to max_interleave_delta (default 10 s): 1 us here. Each
# video PES states its length (FFmpeg leaves it out by default): a demuxer then hands a frame
# on when its last TS packet comes, not when the next frame's first does
_TS_LIVE = {"max_delay": "0", "flush_packets": "1", "avoid_negative_ts": "disabled",
            "max_interleave_delta": "1", "omit_video_pes_length": "0"}


def open_muxer(target, fmt: str, options: dict, info: StreamInfo, tracks: list):
    """A PyAV output container writing to `target` (a URL or a file object), its video stream
    and the streams of the passed-through `tracks`: (container, video stream, TrackMuxer)."""
    import av

    container = av.open(target, mode="w", format=fmt, options=options)
    stream = container.add_mux_stream(info.codec, rate=info.fps, width=info.width,
                                      height=info.height)
    stream.time_base = info.time_base
    return container, stream, TrackMuxer(container, tracks)


def video_packet(stream, info: StreamInfo, data: bytes, packet, key: bool):
    """An encoded access unit (`data`: its Annex-B bytes) as a PyAV packet of `stream`."""
    import av

    pkt = av.Packet(data)
    pkt.stream = stream
    pkt.time_base = info.time_base
    pkt.pts, pkt.dts = int(packet.pts), int(packet.dts)
    pkt.is_keyframe = key
    return pkt


class TsBytes:
    """MPEG-TS made in memory, as the UDP output makes it: each packet muxed comes back as its
    TS packets (`flush_packets`), for an output that sends the bytes itself (SRT)."""

    def __init__(self, info: StreamInfo, tracks: list):
        self.info = info
        self._out = Collect()
        self._container, self._stream, self._tracks = open_muxer(
            self._out, "mpegts", dict(_TS_LIVE), info, tracks)

    def video(self, data: bytes, packet, key: bool) -> bytes:
        self._container.mux(video_packet(self._stream, self.info, data, packet, key))
        return self._out.take()

    def track(self, packet) -> bytes:
        self._tracks.mux(packet)
        return self._out.take()

    def close(self) -> bytes:
        self._container.close()
        return self._out.take()


def starts_key_frame(ts: bytes) -> bool:
    """Whether MPEG-TS bytes hold the start of a video key frame's PES: a TS packet that starts
    a video PES (stream id 0xE0-0xEF) with the random access indicator, which FFmpeg's muxer
    sets on key frames. The muxer may hold an access unit back until another stream's packet
    comes (it interleaves by time): an IDR muxed before any audio comes out with the next
    audio packet, so the bytes, not the packet muxed, say where a receiver can start."""
    for i in range(0, len(ts) - 187, 188):
        p = ts[i:i + 188]
        if p[0] != 0x47 or not p[1] & 0x40 or not p[3] & 0x20 or p[4] == 0:
            continue  # not a PES start with an adaptation field
        start = 5 + p[4]
        if p[5] & 0x40 and p[start:start + 3] == b"\0\0\1" and 0xE0 <= p[start + 3] <= 0xEF:
            return True
    return False


class Collect:
    """A file object for PyAV that keeps what is written until taken."""

    def __init__(self):
        self._parts: list[bytes] = []

    def write(self, data) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


class _MuxerOutput(Output):
    """One PyAV output container fed with the encoder's packets."""

    format = ""
    role = "stream"  # names the output in messages

    def __init__(self, uri: str, on_event: EventCallback | None = None):
        self.uri = uri
        self._on_event = on_event
        self._container = self._stream = None
        self._tracks: TrackMuxer | None = None
        self.info: StreamInfo | None = None
        self.state = "new"
        self.packets = self.bytes_sent = self.dropped = self.errors = self.reconnects = 0
        self._lost = False
        self._waiting_for_idr = False
        self._held = 0  # bytes of the packet it resumed at, not yet known to have gone out

    # -- to be provided

    def _target(self):
        """What av.open writes to (a URL or a file object), and its options."""
        raise NotImplementedError

    # -- Output

    def open(self, info: StreamInfo) -> None:
        self.info = info
        try:
            self._start()
        except (OSError, Exception) as e:  # noqa: BLE001 - PyAV's errors name the cause
            self.close()
            raise SinkError(f"cannot open {self.role} {self.uri}: {e}") from None
        self.state = "streaming"

    def _start(self) -> None:
        target, options = self._target()
        self._container, self._stream, self._tracks = open_muxer(
            target, self.format, options, self.info,
            [t for t in self.info.tracks if self.cannot_carry(t) is None])

    def cannot_carry(self, track) -> str | None:
        return unsupported(self.format, track)

    def restream(self, info: StreamInfo) -> bool:
        """Another size or frame rate goes on in the same muxer: neither the MPEG-TS nor the
        RTP packing depends on them, the parameter sets travel before each IDR, and a receiver
        that stays keeps the stream it locked on (the TS continuity counters, the RTP SSRC,
        sequence numbers and timestamps). Another codec or other tracks take a new muxer."""
        if self.info is None or (info.codec, info.tracks) != (self.info.codec, self.info.tracks):
            return False
        self.info = info
        return True

    def write_track(self, packet) -> None:
        import av

        if self._waiting_for_idr or self._container is None:
            return  # nothing goes out until the video can be decoded again
        try:
            self._tracks.mux(packet)
        except (av.error.FFmpegError, OSError) as e:
            self._failed(e)

    def write(self, packet) -> None:
        import av

        key = bool(packet.keyframe) and is_idr(packet.data, self.info.codec)
        # after a failure it goes on where a receiver can start: an IDR, or with intra refresh
        # (no IDR comes) a recovery point, which the encoder marks a keyframe too
        resuming = self._waiting_for_idr
        if resuming and not packet.keyframe:
            self.dropped += 1
            return
        data = bytes(packet.data)
        if (key or resuming) and not has_parameter_sets(data, self.info.codec):
            data = self.info.headers + data  # receivers may start at any IDR
        try:
            if self._container is None:  # after a failure: FFmpeg's I/O error is sticky
                self._start()
            self._container.mux(video_packet(self._stream, self.info, data, packet, key))
        except (av.error.FFmpegError, OSError) as e:
            self._failed(e)
            return
        self._waiting_for_idr = False
        if resuming:  # the muxer may hold it until the next packet (it interleaves the input's
            # audio by time), and a send that fails says so only then: it went out once the
            # next video packet goes without error
            self._held = len(data)
            return
        self.packets += 1 + bool(self._held)
        self.bytes_sent += len(data) + self._held
        self._held = 0
        if self._lost:
            self._lost = False
            self.state = "streaming"
            self.reconnects += 1
            self._emit("output_back", errors=self.errors, dropped=self.dropped)

    def _failed(self, e: BaseException) -> None:
        self.errors += 1
        self.dropped += 1 + bool(self._held)
        self._held = 0
        self._waiting_for_idr = True  # a receiver cannot decode past the gap until an IDR
        self._drop_container()  # opened again at the next IDR
        if not self._lost:
            self._lost = True
            self.state = "lost"
            reason = (getattr(e, "strerror", None) or str(e)) + self._hint(e)
            log.warning("%s: sending failed (%s); retrying at each keyframe", self.uri, reason)
            self._emit("output_lost", reason=reason)

    def _hint(self, e: BaseException) -> str:
        """What the user can do about a failed send, where the error says it (else "")."""
        return ""

    def _drop_container(self) -> None:
        container, self._container = self._container, None
        close_quietly(container)

    def stats(self) -> dict:
        return {"uri": self.uri, "state": self.state, "packets": self.packets,
                "bytes_sent": self.bytes_sent, "dropped": self.dropped, "errors": self.errors,
                "reconnects": self.reconnects}

    def close(self) -> None:
        container, self._container = self._container, None
        if container is None:
            return
        self.state = "closed"
        try:
            container.close()
        except Exception as e:  # noqa: BLE001 - a receiver's trouble must not fail the run
            if self.fatal:
                raise
            log.warning("closing %s: %s", self.uri, e)

    def _emit(self, name: str, **fields) -> None:
        emit_event(self._on_event, name, self.uri, **fields)


class UdpOutput(_MuxerOutput):
    """`udp://HOST:PORT[?ttl=N&pkt_size=BYTES&broadcast=1]`: MPEG-TS over UDP, 7 TS packets a
    datagram; a multicast address takes `ttl` (default 1: this network only). `broadcast=1`
    lets it send to a broadcast address (the kernel refuses one otherwise: EACCES)."""

    format = "mpegts"
    role = "UDP output"
    loses_packets = True

    def __init__(self, uri: str, on_event: EventCallback | None = None):
        super().__init__(uri, on_event)
        parts, self.options = uri_options(uri, {"ttl": int_in(0, 255),
                                                "pkt_size": int_in(188, 65424),
                                                "broadcast": int_in(0, 1)})
        self.host, self.port = host_port(uri, parts)
        self.sends_to = self.host
        self.ports = (("to", self.host, self.port),)
        self.tables_version = 0  # of its PAT and PMT: one more each time it follows another

    def follows(self, previous) -> None:
        """Another codec or other tracks: the new muxer's PAT and PMT say they changed (their
        version, 0-31), and the first packet of each PID that its continuity counter starts
        again (a receiver that stays would take the new tables for the old ones, and the
        counters' jump for lost packets)."""
        self.tables_version = (getattr(previous, "tables_version", 0) + 1) % 32

    def _target(self):
        size = self.options.get("pkt_size", TS_DATAGRAM)
        # ttl always: FFmpeg's own default (16) would take multicast past this network's routers
        query = [f"pkt_size={size - size % 188}", f"ttl={self.options.get('ttl', 1)}"]
        if "broadcast" in self.options:
            query.append(f"broadcast={self.options['broadcast']}")
        options = dict(_TS_LIVE)
        if self.tables_version:
            options.update(tables_version=str(self.tables_version),
                           mpegts_flags="+initial_discontinuity")
        return f"udp://{_url_host(self.host)}:{self.port}?{'&'.join(query)}", options

    def _hint(self, e: BaseException) -> str:
        if getattr(e, "errno", None) == errno_mod.EACCES and not self.options.get("broadcast"):
            return " (a broadcast address needs ?broadcast=1)"
        return ""


class StdoutOutput(_MuxerOutput):
    """`-`: MPEG-TS on standard output; `-?format=h264` (or `hevc`): raw Annex-B. Its reader
    closing the pipe ends the run (exit 3) once every other output is finalised."""

    role = "standard output"
    fatal = True

    def __init__(self, uri: str, on_event: EventCallback | None = None):
        super().__init__("-", on_event)  # as the user wrote it (the format from --stdout-format)
        _, options = uri_options(uri.replace("-?", "stdout://-?", 1) if uri != "-" else
                                 "stdout://-", {"format": str})
        fmt = options.get("format", "ts")
        if fmt not in ("ts", "h264", "hevc"):
            raise SinkError(f"output {uri!r}: format must be ts, h264 or hevc, got {fmt!r}")
        self.raw = fmt != "ts"
        self.keeps_timestamps = not self.raw  # a raw stream numbers its frames
        self.raw_codec = fmt if self.raw else None
        self.format = "mpegts"
        self._fd = sys.stdout.fileno()

    def _target(self):
        return _Pipe(self._fd), dict(_TS_LIVE)

    def cannot_carry(self, track) -> str | None:
        if self.raw:
            return f"raw {self.raw_codec.upper()} on standard output is the video stream alone"
        return super().cannot_carry(track)

    def open(self, info: StreamInfo) -> None:
        if self.raw and self.raw_codec != info.codec:
            backend = "x265" if self.raw_codec == "hevc" else "x264"
            raise SinkError(f"--stdout-format {self.raw_codec} asks for raw "
                            f"{self.raw_codec.upper()}, but the encoder writes "
                            f"{info.codec.upper()}: add --set encoder.backend={backend}")
        sys.stdout.flush()  # nothing of ours may follow the video into the pipe
        if self.raw:
            self.info, self.state = info, "streaming"
            return
        super().open(info)

    def write(self, packet) -> None:
        if not self.raw:
            return super().write(packet)
        data = bytes(packet.data)
        if packet.keyframe and not has_parameter_sets(data, self.info.codec):
            data = self.info.headers + data
        try:
            _write_all(self._fd, data)
        except OSError as e:
            self._failed(e)
        self.packets += 1
        self.bytes_sent += len(data)

    def _failed(self, e: BaseException) -> None:
        self.state = "closed by its reader" if _broken_pipe(e) else "failed"
        reason = ("standard output was closed by its reader" if _broken_pipe(e) else
                  f"writing standard output failed: {getattr(e, 'strerror', None) or e}")
        raise WriteError(getattr(e, "errno", None) or errno_mod.EPIPE, reason) from None

    def close(self) -> None:
        failed = self.state.startswith(("closed by", "failed"))
        if not self.raw:
            try:
                super().close()
            except (OSError, Exception) as e:  # noqa: BLE001 - the muxer's last bytes
                if not failed:  # a failure already reported ended the run: not twice
                    self._failed(e)
        if not failed:
            self.state = "closed"


class _Pipe:
    """Standard output as a file object for PyAV: our writes, so a closed pipe is an OSError
    (EPIPE) we see, not a Python-level SIGPIPE death."""

    def __init__(self, fd: int):
        self.fd = fd

    def write(self, data) -> int:
        _write_all(self.fd, data)
        return len(data)


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _broken_pipe(e: BaseException) -> bool:
    return isinstance(e, BrokenPipeError) or getattr(e, "errno", None) == errno_mod.EPIPE or \
        "Broken pipe" in str(e)


def close_quietly(container) -> None:
    """Close a muxer that failed already: its socket goes, whatever it says."""
    if container is not None:
        try:
            container.close()
        except Exception:  # noqa: BLE001 - it failed already
            pass


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def nal_units(annexb: bytes) -> list[bytes]:
    """The NAL units of an Annex-B buffer, start codes removed."""
    out, starts, i = [], [], 0
    while (j := annexb.find(b"\x00\x00\x01", i)) >= 0:
        starts.append(j + 3)
        i = j + 3
    for k, s in enumerate(starts):
        end = starts[k + 1] - 3 if k + 1 < len(starts) else len(annexb)
        nal = annexb[s:end]
        out.append(nal.rstrip(b"\x00") if k + 1 < len(starts) else nal)
    return [n for n in out if n]

