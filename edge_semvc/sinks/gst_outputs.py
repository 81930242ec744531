"""The two outputs on the GStreamer child (`gstreamer.py`, `GstChildOutput`, supervises it):
MPEG-TS over SRT (`srt://`), muxed here with PyAV as `udp://` muxes it, with every stream
MPEG-TS takes, and the built-in RTSP server (`rtsp://@:PORT/PATH`), with the input's AAC or
G.711 audio beside the video."""
from __future__ import annotations

import logging
import math
import os
import socket

from ..errors import SinkError
from ..uris import SRT_LATENCY_MS, int_in, is_loopback, srt_uri
from .base import EventCallback
from .gst_child import RTSP_AUDIO
from .gstreamer import GstChildOutput, check_gstreamer, check_port_free, ns
from .stream import TsBytes, starts_key_frame
from .tracks import RawAac, aac_config, unsupported
from .uri import host_port, uri_options

log = logging.getLogger(__name__)
RTSP_MAX_CLIENTS = 16  # the RTSP server's connections at once, by default (`max_clients`)
RTSP_IDLE_S = 60.0  # how long an RTSP connection may stay without playing (GstRTSPServer's
# session timeout)


def srt_latency_ms(fps: float) -> int:
    """SRT's latency for a stream of `fps` frames a second: SRT's own default (SRT_LATENCY_MS),
    which assumes a loss is seen at once, after a frame interval: a camera's packets come in
    bursts, one frame apart, so a frame's last packet lost is seen only when the next frame's
    first arrives, and its resend gets SRT_LATENCY_MS once that interval has gone (BENCHMARKS.md,
    "SRT under the same loss")."""
    return SRT_LATENCY_MS + (math.ceil(1000 / fps) if fps > 0 else 0)


class SrtOutput(GstChildOutput):
    """`srt://HOST:PORT[?mode=caller|listener&latency=MS]`: MPEG-TS over SRT (GStreamer's
    srtsink). A caller (the default) connects to HOST:PORT and, when its peer goes, reconnects
    with back-off; a listener (`srt://@:PORT?mode=listener`, or a HOST to bind) waits for
    callers, any number at once. `latency` is SRT's receive latency (the larger of both ends'
    wins); by default SRT's own 120 ms plus one frame interval (`srt_latency_ms`).
    `passphrase_env=NAME`: the stream is encrypted (AES) with the passphrase that variable
    holds, and a peer without it gets nothing; never in the URI, which is logged. A caller's
    `streamid=ID`: what the server it calls (MediaMTX: `publish:cam1`) takes it for; a
    listener's callers' stream ids come with their `client_joined`."""

    kind = "srt"
    role = "SRT output"
    loses_packets = True  # SRT gives up on a packet its resend cannot bring within `latency`
    reports_link = True  # resends and round trip, from its acknowledgements (`link_report`)

    def __init__(self, uri: str, on_event: EventCallback | None = None):
        super().__init__(uri, on_event)
        srt = srt_uri(uri, SinkError, "output", default_mode="caller")  # shared with the input
        self.passphrase_env, self.mode = srt.passphrase_env, srt.mode
        self.streamid = srt.streamid  # a caller's, for the server it calls
        self.latency: int | None = srt.latency  # None: srt_latency_ms at open
        self.host, self.port = srt.host, srt.port
        self._address = srt.address
        self.sends_to = self.host if self.mode == "caller" else ""
        self.ports = (("to", self.host, self.port) if self.sends_to else ("on udp", self.port),)
        check_gstreamer(self.kind, uri)
        if self.mode == "listener":
            check_port_free(uri, self.host, self.port, socket.SOCK_DGRAM)

    def _prepare(self) -> None:
        self._ts = TsBytes(self.info, self.carried)

    def cannot_carry(self, track) -> str | None:
        return unsupported("mpegts", track)

    def _payload(self, data: bytes, packet, key: bool) -> bytes:
        return self._mux(self._ts.video, data, packet, key)

    def _put_track(self, packet) -> None:
        t = ns(packet.dts if packet.dts is not None else packet.pts or 0, packet.time_base)
        self._put(self._mux(self._ts.track, packet), False, t, t)

    def _put(self, data: bytes, key: bool, pts_ns: int, dts_ns: int, stream: int = 0) -> None:
        # the child starts a receiver at a key frame: the bytes that hold an IDR's start, which
        # the muxer may release with a later packet (an audio one: `starts_key_frame`)
        super()._put(data, starts_key_frame(data), pts_ns, dts_ns, stream)

    def _mux(self, mux, *args) -> bytes:
        import av

        try:
            return mux(*args)
        except av.error.FFmpegError as e:  # this packet only: the muxer goes on
            log.warning("%s: a packet could not be muxed (%s); dropped", self.uri, e)
            self._count_drop()
            return b""

    def close(self) -> None:
        if self.info is not None and not self._closing.is_set():
            self._put(self._mux(self._ts.close), False, 0, 0)
        super().close()

    def _config(self) -> dict:
        if self.latency is None:
            self.latency = srt_latency_ms(float(self.info.fps))
        return {"kind": "srt", "host": self.host, "port": self.port, "mode": self.mode,
                "latency": self.latency, "address": self._address(),
                "passphrase_env": self.passphrase_env, "streamid": self.streamid}

    def stats(self) -> dict:
        return {**super().stats(), "latency_ms": self.latency}

    def _up_when_ready(self) -> bool:
        return self.mode == "listener"

    def _open_to_anyone(self) -> str | None:
        if self.mode == "listener" and not self.passphrase_env and not is_loopback(self.host):
            return (f"no passphrase (?passphrase_env=NAME): anyone who reaches port "
                    f"{self.port} takes the stream, unencrypted")
        return None

    def _receivers(self) -> int:
        if self.mode == "caller":  # its one peer
            return int(self.state == "open")
        return len(self.clients)


class RtspServerOutput(GstChildOutput):
    """`rtsp://@:PORT/PATH` (every address) or `rtsp://HOST:PORT/PATH` (that address): a
    built-in RTSP server (GStreamer's GstRtspServer) for clients over TCP or UDP, each fed the
    same packets from an IDR asked for when it starts playing.
    `?user_env=NAME&password_env=NAME`: clients must give that user and password (digest
    authentication), read from those environment variables (refused when unset).
    `?max_clients=N`: connections at once (RTSP_MAX_CLIENTS by default; more are refused)."""

    kind = "rtsp"
    role = "RTSP server"
    loses_packets = True  # clients may take RTP over UDP (FFmpeg's and VLC's default)
    reports_link = True  # loss and round trip, from its clients' RTCP receiver reports
    credentials_hint = ": name the variables that hold them, ?user_env=NAME&password_env=NAME"

    def __init__(self, uri: str, on_event: EventCallback | None = None):
        super().__init__(uri, on_event)
        parts, options = uri_options(uri, {"user_env": str, "password_env": str,
                                           "max_clients": int_in(1, 1000)})
        self.host, self.port = host_port(uri, parts, listen=True)
        self.ports = (("on tcp", self.port),)
        self.path = parts.path.rstrip("/") or "/"
        if self.path == "/":
            raise SinkError(f"output {uri!r} needs a path, e.g. rtsp://@:{self.port}/cam")
        self.user_env = options.get("user_env")
        self.max_clients = options.get("max_clients", RTSP_MAX_CLIENTS)
        self.password_env = options.get("password_env")
        if (self.user_env is None) != (self.password_env is None):
            raise SinkError(f"output {uri!r}: give both user_env and password_env, or neither")
        for what, name in (("user", self.user_env), ("password", self.password_env)):
            if name is not None and not os.environ.get(name):
                raise SinkError(f"output {uri!r}: environment variable {name} (the RTSP "
                                f"{what}) is not set")
        check_gstreamer(self.kind, uri)
        check_port_free(uri, self.host, self.port, socket.SOCK_STREAM)

    def _prepare(self) -> None:
        self._streams = {t.index: n + 1 for n, t in enumerate(self.carried)}  # 0: the video
        # AAC in ADTS (an MPEG-TS input's) goes to the child raw, its configuration in the
        # caps: as it comes, its caps would wait for a packet (aacparse), so a client's media
        # could not be prepared before PLAY, and each join cost a second IDR
        self._raw = RawAac(self.carried)
        self._told_unreadable = False

    def _open_to_anyone(self) -> str | None:
        if not self.user_env and not is_loopback(self.host):
            return (f"no credentials (?user_env=NAME&password_env=NAME): anyone who reaches "
                    f"port {self.port} watches the stream")
        return None

    def cannot_carry(self, track) -> str | None:
        if track.kind != "audio" or track.codec not in RTSP_AUDIO:
            return (f"the RTSP server sends {', '.join(sorted(RTSP_AUDIO))} audio beside the "
                    f"video")
        if not (track.sample_rate and track.channels):
            return "its sample rate or channels are unknown"
        if track.codec == "opus" and track.channels > 2:  # RFC 7587 is mono or stereo
            return f"Opus with {track.channels} channels (RTP carries mono or stereo Opus)"
        return None

    def _put_track(self, packet) -> None:
        import av

        ticks = packet.pts if packet.pts is not None else packet.dts
        if ticks is None:  # RTP needs a time for each packet
            return
        try:
            raw = self._raw.filter(packet.track, av.Packet(packet.data))
        except av.error.FFmpegError as e:  # this packet only; said once, counted each time
            if not self._told_unreadable:
                self._told_unreadable = True
                log.warning("%s: an AAC packet could not be read (%s); dropped (and any "
                            "more such, counted in 'dropped')", self.uri, e)
            self._count_drop()
            return
        for pkt in raw:
            self._put(bytes(pkt), False, ns(ticks, packet.time_base), 0,
                      self._streams[packet.track])

    def _config(self) -> dict:
        return {"kind": "rtsp", "host": self.host, "port": self.port, "path": self.path,
                "user_env": self.user_env, "password_env": self.password_env,
                "max_clients": self.max_clients, "idle_s": RTSP_IDLE_S,
                "tracks": [{"codec": t.codec, "rate": t.sample_rate, "channels": t.channels,
                            "extradata": (aac_config(t) if t.codec == "aac" else t.extradata
                                          ).hex()} for t in self.carried]}

