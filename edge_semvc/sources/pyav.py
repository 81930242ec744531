"""Files and streams through PyAV (FFmpeg): containers, raw Annex-B, .y4m and raw .yuv.

The video stream is decoded into upright `Frame`s (`orientation.py`: its display matrix applied);
the packets of the streams passed through (`tracks.py`: audio, subtitles, data) are read in the
same pass and wait in `take_packets()` for the pipeline's encoding thread, which interleaves
them with the encoded video.
"""
from __future__ import annotations

import errno
import logging
import time
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from ..errors import DecodeError, SourceError
from ..frame import Frame
from ..tracks import PacketQueue
from ..uris import file_path
from . import opening
from .base import NETWORK_SCHEMES, RawVideoOptions, Receiver
from .opening import check_host, check_raw, check_size, colour_of, frame_rate, say_what_is_lost
from .orientation import Orientation
from .reads import GuardedReads
from .tracks import FollowOn, HiddenLead, passthrough_tracks, track_packet

log = logging.getLogger(__name__)

DEEP_PROBE = {"analyzeduration": str(60_000_000), "probesize": str(200_000_000)}  # 60 s, 200 MB
# headerless raw video, with the pixel format each name implies (--input-pix-fmt overrides)
RAW_EXTENSIONS = {".yuv": "yuv420p", ".raw": "yuv420p", ".nv12": "nv12", ".rgb": "rgb24"}
# Network streams and devices: (open, read) seconds before a silent input counts as lost.
LIVE_TIMEOUT_S = (10.0, 5.0)
JOIN_S = 20.0  # a stream sent to this machine: the longest wait for its first key frame
READ_ON_S = 10  # read_tracks_on: how far past the video's end a track may lag in the file
TS_PACKET_BYTES = (188, 192, 204)  # MPEG-TS, M2TS (a timestamp before each), with RS parity


def open_file(uri: str, raw: RawVideoOptions) -> PyAVSource:
    return PyAVSource(file_path(uri), raw)


def open_network(uri: str, raw: RawVideoOptions) -> PyAVSource:
    return PyAVSource(uri, raw, live=NETWORK_SCHEMES[uri.partition("://")[0]])


def open_v4l2(uri: str, raw: RawVideoOptions) -> PyAVSource:
    return PyAVSource(uri.partition("://")[2], raw, device="video4linux2")


class PyAVSource:
    """`path`: a file, `-` (the standard input), a network URL (`rtsp://...`: `live` options
    such as the transport and a read timeout) or a capture device (`device` names FFmpeg's
    input format, e.g. video4linux2 for /dev/videoN). `receiver`: a stream sent to this
    machine (`udp.py`), named and told silent in its own words. `reader`: a file-like object
    FFmpeg reads instead of opening `path` (an `srt://` input's pipe), its timeouts its own
    (`timed_out`: the input's end was its read timeout)."""

    def __init__(self, path: str, raw: RawVideoOptions, *, live: dict | None = None,
                 device: str | None = None, receiver: Receiver | None = None, reader=None):
        if not path:
            raise SourceError("the input is an empty name: give a file path or URI")
        p = Path(path)
        stdin = path == "-"  # like FFmpeg: read the standard input (a container that streams)
        stream_like = stdin or live is not None or device is not None
        if not stream_like and p.is_dir():
            raise SourceError(f"{path} is a directory, not a video file")
        if not stream_like and not p.exists():
            sequence = "%" in p.name  # FFmpeg's image sequence pattern, img%03d.png
            raise SourceError(f"input file not found: {path}" + (
                " (image sequences are not read: make a video of them first, e.g. ffmpeg "
                "-framerate 25 -i img%03d.png -c:v ffv1 seq.mkv)" if sequence else ""))
        if not stream_like and p.is_file() and p.stat().st_size == 0:
            raise SourceError(f"{path} is empty (0 bytes)")
        if device and not p.exists():
            raise SourceError(f"capture device not found: {path}")
        fmt, options = device, dict(live or {})
        # Raw geometry options apply to raw files, and to the standard input when given.
        if p.suffix.lower() in RAW_EXTENSIONS or (stdin and (raw.width or raw.height)):
            if not (raw.width and raw.height and raw.rate):
                raise SourceError(f"{path} is raw video: give --input-width, --input-height and "
                                  "--input-rate (and --input-pix-fmt if not yuv420p)")
            pix_fmt = raw.pix_fmt or RAW_EXTENSIONS.get(p.suffix.lower(), "yuv420p")
            check_raw(raw, pix_fmt)
            fmt = "rawvideo"
            options = {"video_size": f"{raw.width}x{raw.height}", "pixel_format": pix_fmt,
                       "framerate": str(raw.rate)}
        self.raw = fmt == "rawvideo"
        timed = stream_like and not stdin  # a silent network stream or device times out
        self._read_timeout = LIVE_TIMEOUT_S[1] if timed else None
        if live is not None and receiver is None:
            check_host(path)
        started = time.monotonic()
        try:
            self._stdin = opening.CountedInput() if stdin else None
            # a pipe cannot be read again (a file is, below, when the probe found no picture)
            probe = DEEP_PROBE if stdin and fmt is None else {}
            self.container = opening.open_container(
                self._stdin if stdin else reader or (path if live is not None else str(p)),
                format=fmt, options={**options, **probe},
                timeout=LIVE_TIMEOUT_S if timed else None)
        except (av.error.FFmpegError, ValueError) as e:
            silent = timed and time.monotonic() - started >= LIVE_TIMEOUT_S[0] - 0.5
            raise SourceError(f"cannot open {receiver.uri if receiver else path}: " + (
                receiver.nothing_within(LIVE_TIMEOUT_S[0]) if silent and receiver else
                f"no answer within {LIVE_TIMEOUT_S[0]:g} s (off, or not at this address?)"
                if silent else
                f"{receiver.where} is in use: another program receives on it"
                if receiver and getattr(e, "errno", None) == errno.EADDRINUSE else
                _reason(e))) from None
        path = receiver.uri if receiver else path  # the input as the user named it
        self._receiver, self._reads = receiver, GuardedReads(path, LIVE_TIMEOUT_S[1] + 1)
        self._reader = reader
        video = self.container.streams.video
        if video and not video[0].codec_context.width and not stream_like:
            # FFmpeg probes the first 5 s: a video that starts later (its audio first) has no
            # picture size yet; a file can be read further
            self.container.close()
            self.container = av.open(str(p), format=fmt, options={**options, **DEEP_PROBE})
        if not self.container.streams.video:
            self.container.close()
            raise SourceError(f"{path} has no video stream")
        stream = self.container.streams.video[0]
        # A camera's frame is decoded as it comes: frame threads would hold one frame each but
        # one (the thread count is the cores + 1: 2 frames of delay on a 2-core PC, 8 or more
        # on a Jetson's cores, 270 ms at 30 fps); a file is read for throughput
        self.live_decode = live is not None or device is not None
        stream.thread_type = "SLICE" if self.live_decode else "AUTO"
        # Crop exactly as the stream says: by default FFmpeg keeps unaligned left-crop columns
        # (the 300x168 conformance clip would decode 326 wide).
        stream.codec_context.options = {"flags": "unaligned"}
        cc = stream.codec_context
        self.width, self.height = cc.width, cc.height
        # a stream joined between two key frames (the parameter sets come with the next one,
        # after FFmpeg's probe): its size is its first picture's, decoded below
        joined = receiver is not None and not (self.width and self.height)
        if not joined:
            check_size(self.container, self.width, self.height, path)
        self.fps = frame_rate(stream, raw, path)
        # Raw Annex-B and raw video carry no timestamps: number frames in 1/fps.
        self._synth_pts = fmt == "rawvideo" or self.container.format.name in ("h264", "hevc") \
            or p.suffix.lower() in (".h264", ".264", ".h265", ".265", ".hevc")
        self.time_base = 1 / self.fps if self._synth_pts else Fraction(stream.time_base)
        if stream.frames:
            self.frame_count = stream.frames
        elif self.container.duration:
            self.frame_count = int(self.container.duration / 1e6 * self.fps)
        else:  # raw: counted below, once a picture's size is known
            self.frame_count = 0
        self.stream = stream
        self.path = path
        self.tracks, self.skipped = passthrough_tracks(self.container, stream)
        self._picture_bytes = 0  # the first video packet's size (raw: one picture)
        self._packets = PacketQueue()  # demuxed, not yet taken
        self._follow_on = FollowOn(path, self.live_decode)  # files joined, a sender restarted
        self._hidden_lead = HiddenLead()  # what an edit list hides before the sound starts
        self.take_packets = self._packets.take  # (any thread) those read since the last call
        # The first picture is decoded now: its display matrix decides the frames' size.
        self._last_packet = time.monotonic()  # when the input last gave a packet (receivers)
        self._av_frames = self._demux()
        self._first = self._first_error = None
        self._video_end: Fraction | None = None  # the latest frame's time plus one frame (s)
        self._last_pts: int | None = None
        self.damaged_packets, self._damaged = 0, ""  # video packets the decoder refused
        self.concealed_frames = 0  # pictures decoded with parts the decoder made up
        # video packets the demuxer found parts of missing (an MPEG-TS lost TS packets)
        self.corrupt_packets = 0
        # video packets an edit list hides (a cut made without re-encoding starts at the
        # keyframe before it): decoded for the pictures after them, never shown, yet counted
        # in the container's frame count
        self._hidden = 0
        self.repaired_pts = 0  # frames whose timestamp was missing or did not rise
        try:
            self._first = next(self._av_frames, None)
        except (av.error.FFmpegError, _ReadTimedOut) as e:  # frames() says it, at frame 0
            self._first_error = e
        if joined and self._first is not None:
            self.width, self.height = self._first.width, self._first.height
        if joined and self._first is None and not self._picture_bytes:  # no packet came
            self.container.close()  # (RTP through an SDP opens at once: its first read waits)
            raise SourceError(f"cannot open {path}: " + receiver.nothing_within(
                round(time.monotonic() - started)))
        if joined:
            check_size(self.container, self.width, self.height, path)
        self._coded = (self.width, self.height)
        self.orientation = Orientation.of(self._first)
        self.width, self.height = self.orientation.size(self.width, self.height)
        self.colour = colour_of(self._first)
        say_what_is_lost(self._first, path)
        # What the file says it holds, to tell a truncated file from a complete one at its end.
        self._declared = stream.frames or 0
        # raw / y4m: bytes of a picture (its first packet's when whole, i.e. it decoded: every
        # pixel format) and of the picture data (y4m: 6 more per FRAME line), from the file or
        # as read from a pipe
        y4m = self.container.format.name == "yuv4mpegpipe"
        whole = self._picture_bytes if self._first is not None else 0
        self._frame_bytes = (whole or self.width * self.height * 3 // 2) + \
            (len(b"FRAME\n") if y4m else 0)
        if fmt == "rawvideo" and not stdin:
            self.frame_count = p.stat().st_size // self._frame_bytes
        self._payload = None
        if stdin and (fmt == "rawvideo" or y4m):
            self._payload = lambda: self._stdin.count - (self._stdin.first_line if y4m else 0)
        elif stream_like or not p.is_file():  # a device or stream: no end to measure
            pass
        elif fmt == "rawvideo":
            self._payload = lambda: p.stat().st_size
        elif y4m:
            with open(p, "rb") as f:
                header = len(f.readline())
            self._payload = lambda: p.stat().st_size - header
        # an MPEG-TS declares no end, but a whole file is whole transport packets
        self._ts_file = p if self.container.format.name == "mpegts" and not stdin and \
            not stream_like and p.is_file() else None
        self.description = f"{path} ({self.width}x{self.height}, {float(self.fps):.3g} fps, " \
                           f"{stream.codec_context.name}" + \
                           (f"; {self.orientation.describe()}" if self.orientation else "") + ")"

    @property
    def retimed_packets(self) -> int:
        """Packets shifted to follow on where files were joined (`FollowOn`)."""
        return self._follow_on.retimed

    def _demux(self) -> Iterator[av.VideoFrame]:
        """The video stream's decoded pictures; the other streams' packets go to take_packets.
        A live input's packet that took the read timeout to come is FFmpeg's parser handing
        out the frame it held for the next one to start (RTSP): the input froze then, and
        its picture is the last (`_ReadTimedOut`), not one after a pause."""
        passed = [self.container.streams[t.index] for t in self.tracks]
        asked = began = time.monotonic()
        # a stream sent to this machine is joined anywhere: what comes before its first key
        # frame does not decode, and is not damage
        joining = self._receiver is not None
        # an MPEG-TS read that timed out left FFmpeg's input at its end: what its demuxer and
        # parser still hold (the last picture) comes at once after it, then the end
        ts, ended = self.container.format.name == "mpegts", False
        for packet in self.container.demux([self.stream, *passed]):
            self._last_packet = time.monotonic()
            if joining and self._last_packet - began >= JOIN_S:
                raise _ReadTimedOut  # packets, yet no picture: not this codec?
            timed_out = self._read_timeout is not None and \
                self._last_packet - asked >= self._read_timeout
            if packet.size:
                self._follow_on(packet)
            if packet.stream.index == self.stream.index:
                self._picture_bytes = self._picture_bytes or packet.size
                self._hidden += bool(packet.size and packet.is_discard)
                if packet.is_corrupt:
                    self._corrupt(packet)
                try:
                    pictures = packet.decode()
                except av.error.InvalidDataError as e:  # one damaged packet: go on past it
                    if joining:  # before the first key frame: waited for, not damage
                        asked = time.monotonic()
                        continue
                    if not self.damaged_packets:
                        self._damaged = _reason(e)
                        log.warning("%s: a damaged video packet is skipped (%s); decoding goes "
                                    "on (counted: damaged_packets)", self.path, self._damaged)
                    self.damaged_packets += 1
                    continue
                joining = joining and not pictures
                yield from pictures
            else:
                value = track_packet(packet)
                for shown in self._hidden_lead(packet, value) if value is not None else ():
                    self._packets.put(shown)
            if timed_out and (ended or not ts):
                raise _ReadTimedOut
            ended = ended or timed_out
            asked = time.monotonic()  # after the pictures were taken: the read starts now
        if ended or getattr(self._reader, "timed_out", False):  # a reader times out by an end
            raise _ReadTimedOut

    def quiet_reason(self) -> str | None:
        """What a stream sent to this machine says of a stall (PacedSource asks when no frame
        came): no packet for a second or more, in its own words; else None."""
        quiet = time.monotonic() - self._last_packet
        if self._receiver is None or quiet < 1:
            return None
        return f"{self.path}: " + self._receiver.no_packet_for(quiet)

    def read_tracks_on(self) -> None:
        """After a run cut short by a frame count: the file read on, without decoding, until
        every passed-through track has reached the video's end (at most READ_ON_S past it), so
        that a packet that starts before that end reaches the outputs: a GoPro's telemetry,
        one packet a second, is stored after the second of video it describes. Files only (a
        stream or device would block); a broken tail ends it quietly."""
        if not self.tracks or self._video_end is None or self._read_timeout is not None or \
                self.path == "-":
            return
        behind = {t.index for t in self.tracks}
        passed = [self.container.streams[t.index] for t in self.tracks]
        try:
            for packet in self.container.demux([self.stream, *passed]):
                if packet.size:
                    self._follow_on(packet)
                value = track_packet(packet) if packet.stream.index in behind else None
                for shown in self._hidden_lead(packet, value) if value is not None else ():
                    self._packets.put(shown)
                    if shown.time is not None and shown.time >= self._video_end:
                        behind.discard(shown.track)
                at = packet.pts if packet.pts is not None else packet.dts
                if not behind or (at is not None and
                                  at * packet.time_base > self._video_end + READ_ON_S):
                    return
        except av.error.FFmpegError:
            return

    def _decoded(self) -> Iterator[av.VideoFrame]:
        if self._first_error is not None:
            raise self._first_error
        if self._first is not None:
            yield self._first
            self._first = None
            yield from self._av_frames

    def _held_pictures(self) -> list[av.VideoFrame]:
        """What the decoder still holds (frame threads keep a picture each), told the input
        ended."""
        try:
            return list(self.stream.codec_context.decode(None))
        except (av.error.FFmpegError, ValueError):
            return []

    def frames(self) -> Iterator[Frame]:  # closing waits for a read (GuardedReads)
        return self._reads.each(self._frames())

    def _frames(self) -> Iterator[Frame]:
        index, last_corrupt = 0, False
        try:
            for av_frame in self._decoded():
                last_corrupt = av_frame.is_corrupt
                if last_corrupt:
                    self._concealed(index)
                yield self._to_frame(av_frame, index)
                index += 1
        except (av.error.FFmpegError, _ReadTimedOut) as e:
            if isinstance(e, (av.error.ExitError, _ReadTimedOut)) and \
                    self._read_timeout is not None:
                # the read timed out: the same loss as a stall seen by PacedSource, which this
                # timeout may beat to it; the pictures the decoder's threads still hold first
                for av_frame in self._held_pictures():
                    yield self._to_frame(av_frame, index)
                    index += 1
                raise DecodeError(f"{self.path}: " + (
                    self._receiver.no_packet_for(self._read_timeout) if self._receiver else
                    f"no frame for {self._read_timeout:g} s (the input froze)")) from None
            # A raw/y4m file cut mid-frame: that says more than FFmpeg's error about it.
            raise self._partial_frame(index) or DecodeError(
                f"decoding {self.path} failed after {index} frames: {_reason(e)}") from None
        # The input ended: say so when it was damaged or ended early (a truncated file),
        # rather than report a complete run.
        if self.damaged_packets:
            raise DecodeError(f"{self.path} is damaged: {self.damaged_packets} of its video "
                              f"packets could not be decoded ({self._damaged}) and were "
                              "skipped; the pictures around them were encoded")
        shown = self._declared - self._hidden  # what a player shows of what it declares
        if self._declared and index < shown:
            raise DecodeError(f"{self.path} ends early: {index} of the {shown} "
                              f"frames its container declares were decoded (truncated?)")
        error = self._shorter_than_declared()
        if error:
            raise error
        error = self._partial_frame(index) or self._partial_ts_packet()
        if error:
            raise error
        # A stream cut inside its last picture (raw H.264 cut mid-NAL) decodes with the missing
        # part concealed, and FFmpeg flags that picture as corrupt.
        if last_corrupt:
            raise DecodeError(f"{self.path} ends in a damaged picture: frame {index - 1}, the "
                              "last, could not be decoded whole and is written as concealed "
                              "(truncated?)")

    def _corrupt(self, packet: av.Packet) -> None:
        """A video packet the demuxer flagged corrupt (parts of it lost in transport: an
        MPEG-TS's continuity broken): decoded as it came, counted, and said once."""
        if not self.corrupt_packets:
            at = packet.pts if packet.pts is not None else packet.dts
            when = f" at {float(at * packet.time_base):.3f} s" if at is not None else ""
            log.warning("%s: a video packet%s came with parts missing (lost in transport?): "
                        "the pictures around it may be concealed or lost (counted: "
                        "corrupt_packets)", self.path, when)
        self.corrupt_packets += 1

    def _concealed(self, index: int) -> None:
        """Frame `index` decoded with damaged parts concealed (FFmpeg flags it corrupt): it is
        encoded as it came, counted, and said once."""
        if not self.concealed_frames:
            log.warning("%s: frame %d is damaged: decoded with its missing parts concealed and "
                        "encoded so (counted: concealed_frames)", self.path, index)
        self.concealed_frames += 1

    def _shorter_than_declared(self) -> DecodeError | None:
        """Matroska declares no frame count but where the video ends (its DURATION tag, in the
        header), a fragmented MP4 neither but its track's duration (its fragments' samples, as
        far as they were read when the file was opened): a file cut short, or damaged, ends
        before it."""
        declared = _seconds(self.stream.metadata.get("DURATION", ""))
        c, s = self.container, self.stream
        if not declared and "matroska" in c.format.name and len(c.streams) == 1 and c.duration:
            declared = ((c.start_time or 0) + c.duration) / 1e6  # the segment's, video alone
        if not declared and c.format.name.startswith("mov") and not s.frames and s.duration:
            declared = float(((s.start_time or 0) + s.duration) * s.time_base)
        if not declared or self._video_end is None:
            return None
        ended = float(self._video_end)
        if ended >= declared - max(0.5, 2 / float(self.fps)):
            return None
        return DecodeError(f"{self.path} ends early: its video ended at {ended:.2f} s, where its "
                           f"container says {declared:.2f} s (truncated or damaged?)")

    def _partial_frame(self, decoded: int) -> DecodeError | None:
        left = self._payload() % self._frame_bytes if self._payload is not None else 0
        if not left:
            return None
        return DecodeError(f"{self.path} ends in a partial frame: "
                           f"{left} bytes after the last of "
                           f"{decoded} whole frames of {self._frame_bytes} bytes (truncated?)")

    def _partial_ts_packet(self) -> DecodeError | None:
        size = self._ts_file.stat().st_size if self._ts_file is not None else 0
        if not size or any(size % n == 0 for n in TS_PACKET_BYTES):
            return None
        return DecodeError(f"{self.path} ends in a partial transport packet: {size} bytes are "
                           f"not whole packets of {' or '.join(map(str, TS_PACKET_BYTES))} bytes "
                           "(truncated?)")

    def _to_frame(self, f: av.VideoFrame, index: int) -> Frame:
        width, height = self._coded
        if (f.width, f.height) != (width, height):
            raise DecodeError(f"{self.path}: picture size changed to {f.width}x{f.height} at frame "
                              f"{index} (was {width}x{height}); not supported")
        if f.format.name != "yuv420p" or f.color_range == 2:
            # Full-range (yuvj) input is converted to the limited range the encoder signals.
            f = f.reformat(format="yuv420p", src_color_range=2 if f.color_range == 2 else None,
                           dst_color_range=1)
        buf = f.to_ndarray(format="yuv420p")
        pts = self._rising_pts(index if self._synth_pts else f.pts, index)
        shown = (f.duration or 0) * self.time_base if not self._synth_pts else 0  # held long?
        self._video_end = pts * self.time_base + max(1 / self.fps, shown)
        frame = Frame.from_i420(np.ascontiguousarray(buf), width, height, pts, self.time_base,
                                index)
        if self.orientation:
            turn = self.orientation.plane
            frame.y, frame.u, frame.v = turn(frame.y), turn(frame.u), turn(frame.v)
        return frame

    def _rising_pts(self, pts: int | None, index: int) -> int:
        """`pts`, or where it is missing, repeats or goes back (files joined end to end, a
        33-bit MPEG-TS clock that wrapped, timestamps rounded to the same tick) the previous
        one plus a frame period: a muxer refuses a timestamp that does not rise."""
        last = self._last_pts
        if pts is None and last is None:  # an RTSP stream's first picture, before its clock
            pts = 0
        elif pts is None or (last is not None and pts <= last):
            if not self.repaired_pts:
                log.warning("%s: frame %d %s; it and any like it get the timestamp before "
                            "plus a frame period (counted: repaired_pts)", self.path, index,
                            "has no timestamp" if pts is None else
                            f"has timestamp {pts}, not above {last}")
            self.repaired_pts += 1
            pts = 0 if last is None else last + max(1, round(1 / (self.fps * self.time_base)))
        self._last_pts = pts
        return pts

    def close(self) -> None:
        self._reads.close(self.container.close)


class _ReadTimedOut(Exception):
    """A live input's read took the read timeout (`PyAVSource._demux`)."""


def _seconds(hms: str) -> float:
    """`HH:MM:SS.fraction` (Matroska's DURATION tag) in seconds; 0.0 when it is not one."""
    parts = hms.split(":")
    try:
        return float(int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])) \
            if len(parts) == 3 else 0.0
    except ValueError:
        return 0.0


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e).splitlines()[0]
