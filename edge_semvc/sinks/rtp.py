"""The RTP output (`rtp://HOST:PORT`): the video over RTP through FFmpeg's `rtp` muxer, and the
input's audio beside it on a port of its own, with the SDP (RFC 4566) a receiver needs for both.

RTP carries one stream per port, so the audio gets a second muxer and the next RTP port pair
(`PORT + 2`; the video's RTCP uses `PORT + 1`), both described in one SDP: a receiver that
opens it plays both (FFmpeg and GStreamer's sdpdemux are tested), on the clock of their RTCP
sender reports; one that listens on the video port alone (QGroundControl's 5600) is not
disturbed.
The audio codecs with an SDP description here (AAC as RFC 3640 `mpeg4-generic`, Opus as RFC
7587, G.711 as PCMU / PCMA) travel; others are named as not carried, as is a second audio
stream, a subtitle or a data stream.
"""
from __future__ import annotations

import base64
import ipaddress
import logging
import os
import secrets
import stat
import sys
import tempfile
from pathlib import Path

from ..errors import SinkError
from ..uris import int_in
from .base import EventCallback, StreamInfo
from .stream import _MuxerOutput, _url_host, close_quietly, nal_units, open_muxer
from .tracks import TrackMuxer, aac_config, unsupported
from .uri import host_port, non_empty, uri_options

log = logging.getLogger(__name__)

RTP_PAYLOAD_TYPE = 96  # the first dynamic payload type: what ground stations expect
RTP_AUDIO_PAYLOAD_TYPE = 97
# the audio codecs the SDP describes: codec -> its rtpmap encoding name
RTP_AUDIO = {"aac": "MPEG4-GENERIC", "opus": "opus", "pcm_mulaw": "PCMU", "pcm_alaw": "PCMA"}


class RtpOutput(_MuxerOutput):
    """`rtp://HOST:PORT[?ttl=N&sdp=FILE&pkt_size=BYTES&audio_port=N]`: H.264 or HEVC over RTP,
    payload type 96 (what QGroundControl, GStreamer's `rtph264depay`, FFmpeg and VLC take), and
    the input's first audio stream of a codec in RTP_AUDIO on `audio_port` (default PORT + 2),
    payload type 97. The SDP a receiver needs is written to `sdp=FILE` when given and printed
    either way. A multicast address (224.0.0.0/4, ff00::/8) takes `ttl` (default 1: this
    network only)."""

    format = "rtp"
    role = "RTP output"
    loses_packets = True

    def __init__(self, uri: str, on_event: EventCallback | None = None):
        super().__init__(uri, on_event)
        parts, self.options = uri_options(uri, {"ttl": int_in(0, 255), "sdp": non_empty,
                                                "pkt_size": int_in(300, 65000),
                                                "audio_port": int_in(1, 65535)})
        self.host, self.port = host_port(uri, parts)
        self.sends_to = self.host
        self.ports = (("to", self.host, self.port), ("to", self.host, self.port + 1))  # RTCP
        self.audio_port = self.options.get("audio_port", self.port + 2)
        if self.audio_port in (self.port, self.port + 1):
            raise SinkError(f"output {uri!r}: audio_port {self.audio_port} is the video's "
                            f"{'RTP' if self.audio_port == self.port else 'RTCP'} port")
        self.sdp_path = self.options.get("sdp")
        if self.sdp_path:
            self.files = {f"the SDP of {self.host}:{self.port} (sdp=)": self.sdp_path}
            folder = Path(self.sdp_path).expanduser().resolve().parent
            if not folder.is_dir():
                raise SinkError(f"cannot write the SDP of {uri}: folder {folder} does not exist")
        self.sdp = ""
        # one SSRC per stream for the output's life: a receiver keeps the streams when the
        # output is reopened
        self.ssrc, self.audio_ssrc = secrets.randbits(31), secrets.randbits(31)
        self._audio_container = None

    def _audio(self):
        """The track this output carries: the input's first audio stream that RTP_AUDIO and
        FFmpeg's rtp muxer take, when its port is one."""
        if self.info is None or self.audio_port > 65535:
            return None
        return next((t for t in self.info.tracks if t.kind == "audio" and t.codec in RTP_AUDIO
                     and unsupported(self.format, t) is None), None)

    def cannot_carry(self, track) -> str | None:
        audio = self._audio()
        if track == audio:
            return None
        if track.kind != "audio":
            return f"RTP carries the video and one audio stream, not a {track.kind} stream"
        if audio is not None:
            return (f"RTP carries one audio stream (#{audio.index}, to port "
                    f"{self.audio_port})")
        if track.codec not in RTP_AUDIO:
            return (f"this output describes AAC, Opus and G.711 audio in its SDP, not "
                    f"{track.codec}")
        if self.audio_port > 65535:
            return f"its port would be {self.audio_port}; set audio_port"
        return unsupported(self.format, track)

    def _url(self, port: int) -> str:
        # ttl always: FFmpeg's own default (16) would take multicast past this network's routers
        query = [f"pkt_size={self.options.get('pkt_size', 1200)}",
                 f"ttl={self.options.get('ttl', 1)}"]
        return f"rtp://{_url_host(self.host)}:{port}?{'&'.join(query)}"

    def _target(self):
        return self._url(self.port), {"payload_type": str(RTP_PAYLOAD_TYPE),
                                      "ssrc": str(self.ssrc)}

    def _start(self) -> None:
        target, options = self._target()
        self._container, self._stream, _ = open_muxer(target, self.format, options, self.info,
                                                      [])
        self._start_audio()

    def _start_audio(self) -> None:
        import av

        close_quietly(self._audio_container)
        self._audio_container = None
        audio = self._audio()
        if audio is not None:
            self._audio_container = av.open(
                self._url(self.audio_port), mode="w", format="rtp",
                options={"payload_type": str(RTP_AUDIO_PAYLOAD_TYPE),
                         "ssrc": str(self.audio_ssrc)})
        self._tracks = TrackMuxer(self._audio_container, [audio] if audio else [])

    def _drop_container(self) -> None:
        super()._drop_container()
        audio, self._audio_container = self._audio_container, None
        close_quietly(audio)

    def open(self, info: StreamInfo) -> None:
        super().open(info)
        self._publish_sdp()

    def restream(self, info: StreamInfo) -> bool:
        """Another size, frame rate or audio: the video goes on in its RTP session (a receiver
        on the video port alone never notices), the audio's muxer opened anew where it
        changed, and the SDP written anew (its parameter sets, its audio). Another codec: a
        new payload, opened anew."""
        if self.info is None or info.codec != self.info.codec:
            return False
        audio, self.info = self._audio(), info
        if self._audio() != audio and self._container is not None:  # else at the next IDR
            try:
                self._start_audio()
            except (OSError, Exception) as e:  # noqa: BLE001 - PyAV's errors name the cause
                log.warning("%s: opening the audio's muxer anew: %s", self.uri, e)
                return False  # then the whole output is opened anew
        self._publish_sdp()
        return True

    def _publish_sdp(self) -> None:
        info, audio = self.info, self._audio()
        self.sdp = sdp_text(info, self.host, self.port, ttl=self.options.get("ttl"),
                            audio=audio, audio_port=self.audio_port)
        if self.sdp_path:  # whole or not at all: a receiver may read it as it changes
            _write_whole(Path(self.sdp_path).expanduser(), self.sdp)
        # where a receiver reads it: stderr when standard output carries video
        print(f"SDP for {self.uri}{f' (also in {self.sdp_path})' if self.sdp_path else ''}:\n"
              f"{self.sdp}", file=sys.stderr, flush=True)

    def close(self) -> None:
        audio, self._audio_container = self._audio_container, None
        super().close()
        if audio is not None:
            try:
                audio.close()
            except Exception as e:  # noqa: BLE001 - a receiver's trouble must not fail the run
                log.warning("closing %s's audio: %s", self.uri, e)


# --- SDP (RFC 4566) for the RTP output: what receivers need to decode the streams ------------

def _write_whole(path: Path, text: str) -> None:
    """`text` into `path`, replaced whole: written to a new file of a name nobody could guess
    beside it, then renamed. Never through a name someone else made: in a shared folder such
    as /tmp a fixed `.part` name could be a link that has the SDP overwrite another file."""
    try:  # an SDP made beforehand keeps its mode (a receiver's group may read it)
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        mode = 0o666 & ~_umask()  # as open() makes a file: the receiver reads it
    fd, part = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(part, path)
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask, read without setting it (os.umask sets it for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0o022


def sdp_text(info: StreamInfo, host: str, port: int, ttl: int | None = None, audio=None,
             audio_port: int = 0) -> str:
    """The session description of an RTP output: the address, payload type 96 and the
    parameter sets (RFC 6184 for H.264, RFC 7798 for HEVC), so a receiver can decode from the
    first IDR it gets; and `audio` (a Track of a codec in RTP_AUDIO) on `audio_port`."""
    address = ipaddress.ip_address(host) if _is_ip(host) else None
    family = "IP6" if address is not None and address.version == 6 else "IP4"
    connection = host
    if address is not None and address.is_multicast and family == "IP4":
        connection = f"{host}/{ttl if ttl is not None else 1}"
    nals = nal_units(info.headers)
    if info.codec == "hevc":
        by_type = {t: b64 for t, b64 in ((((n[0] >> 1) & 0x3F), _b64(n)) for n in nals)}
        fmtp = ";".join(f"sprop-{name}={by_type[t]}" for name, t in
                        (("vps", 32), ("sps", 33), ("pps", 34)) if t in by_type)
        rtpmap = "H265/90000"
    else:
        sps = next((n for n in nals if n[0] & 0x1F == 7), b"")
        sets = ",".join(_b64(n) for n in nals if n[0] & 0x1F in (7, 8))
        fmtp = "packetization-mode=1"
        if len(sps) >= 4:
            fmtp += f";profile-level-id={sps[1:4].hex().upper()}"
        if sets:
            fmtp += f";sprop-parameter-sets={sets}"
        rtpmap = "H264/90000"
    lines = ["v=0", f"o=- 0 0 IN {family} {host}", "s=edge_semvc", f"c=IN {family} {connection}",
             "t=0 0", f"m=video {port} RTP/AVP {RTP_PAYLOAD_TYPE}",
             f"a=rtpmap:{RTP_PAYLOAD_TYPE} {rtpmap}", f"a=fmtp:{RTP_PAYLOAD_TYPE} {fmtp}",
             f"a=framerate:{float(info.fps):g}"]
    if audio is not None:
        lines += _audio_lines(audio, audio_port)
    return "\r\n".join(lines) + "\r\n"


def _audio_lines(track, port: int) -> list[str]:
    """The media description of an audio track as FFmpeg's rtp muxer packs it."""
    pt, name = RTP_AUDIO_PAYLOAD_TYPE, RTP_AUDIO[track.codec]
    fmtp = ""
    if track.codec == "aac":  # RFC 3640 AAC-hbr, the AU headers FFmpeg writes
        rtpmap = f"{name}/{track.sample_rate}/{track.channels}"
        fmtp = ("profile-level-id=1;mode=AAC-hbr;sizelength=13;indexlength=3;"
                f"indexdeltalength=3;config={aac_config(track).hex()}")
    elif track.codec == "opus":  # RFC 7587: always 48000/2 in the rtpmap
        rtpmap = f"{name}/48000/2"
        fmtp = "sprop-stereo=1" if track.channels == 2 else ""
    else:
        rtpmap = f"{name}/{track.sample_rate}" + (f"/{track.channels}"
                                                  if track.channels > 1 else "")
    return [f"m=audio {port} RTP/AVP {pt}", f"a=rtpmap:{pt} {rtpmap}",
            *([f"a=fmtp:{pt} {fmtp}"] if fmtp else [])]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _b64(nal: bytes) -> str:
    return base64.b64encode(nal).decode("ascii")
