"""Write already-encoded H.264 or HEVC packets to a file: raw Annex-B, MP4, Matroska or MPEG-TS.

Nothing is re-encoded. Containers go through PyAV's muxers: the stream has no codec context
(`mux.py`, ``OutputContainer.add_mux_stream``: no libx264 instance is opened behind our back and
nothing overwrites the parameter sets). Such a stream offers no extradata setter; for mp4/mkv the
SPS/PPS (HEVC: VPS/SPS/PPS) come from the first packet instead (PyAV 18 runs FFmpeg's
``extract_extradata`` filter on it; on PyAV 17 the mp4 muxer reads them itself and `mux.py`
copies the mkv stream from it). The sink therefore makes sure the first packet carries them: it
prepends ``headers`` when the encoder kept them out of band (``EncoderSettings.global_headers``).
The muxers then convert the Annex-B packets to length-prefixed samples (avcC, hvcC) themselves.
``codec`` (``Encoder.codec``: ``"h264"`` or
``"hevc"``) names the stream for the muxer and says how to read the NAL unit headers.

Timestamps: packets carry pts/dts in ``time_base``; the muxer rescales to its own clock
(mp4: a multiple of the rate, mkv: always 1 ms, ts: 90 kHz), so read back as seconds they are
the input's (mkv rounded to the millisecond). For mpegts the negative dts x264 gives the first
frames (B-frame delay) are written as they are (TS timestamps wrap at 2^33) instead of letting
FFmpeg shift the whole stream, so the pts stay exact there too. An mp4 or mkv file starts at 0,
as FFmpeg makes them: every stream moves back by the first packet's time (a broadcast or
recorder's MPEG-TS whose clock reads ten hours would otherwise open on ten hours of nothing,
and one whose clock wrapped below zero would hide its first frames behind the mp4's edit list);
a .ts keeps the input's clock.

The input's passed-through streams (audio, subtitles, data) go into the containers beside the
video where the muxer takes them (`tracks.py`); a raw file holds the video alone.
"""
from __future__ import annotations

import errno
import logging
import math
import os
from fractions import Fraction
from pathlib import Path

from ..errors import SinkError, WriteError
from ..tracks import Track, TrackPacket
from ..uris import file_path
from .base import Output, StreamInfo
from .nal import PARAMETER_SETS, check_codec, has_parameter_sets
from .tracks import TrackMuxer, unsupported

log = logging.getLogger(__name__)


# extension -> FFmpeg muxer name (None: raw Annex-B written by hand)
FORMATS: dict[str, str | None] = {".h264": None, ".264": None, ".h265": None, ".265": None,
                                  ".hevc": None, ".mp4": "mp4", ".mkv": "matroska",
                                  ".ts": "mpegts"}
# containers that keep SPS/PPS out of band (in the sample description), not in the stream
GLOBAL_HEADERS: dict[str, bool] = {".h264": False, ".264": False, ".h265": False, ".265": False,
                                   ".hevc": False, ".mp4": True, ".mkv": True, ".ts": False}
# the codec a raw extension holds (containers take either)
RAW_CODEC: dict[str, str] = {".h264": "h264", ".264": "h264", ".h265": "hevc", ".265": "hevc",
                             ".hevc": "hevc"}


def _ext(path) -> str:
    ext = Path(path).suffix.lower()
    if Path(path).expanduser().is_dir():
        raise SinkError(f"output {str(path)!r} is a directory: name a file in it (e.g. "
                        f"{str(Path(path) / 'out.mp4')!r})")
    if ext not in FORMATS:
        raise SinkError(f"unsupported output extension {ext or '(none)'!r} for {str(path)!r}; "
                        f"supported: {', '.join(FORMATS)}")
    return ext


def check_distinct_files(files: dict[str, str | None]) -> None:
    """Refuse two of `files` ({what: path or file:// URI, None: not given}) that name the same
    file: writing one would destroy the other (an output over its own input, statistics over
    the video). Same file = same device and inode where it exists (symlinks, hard links,
    ../ detours), else the same absolute path. Other URI schemes (demo://, rtsp://) are skipped."""
    seen: dict[object, str] = {}
    for what, path in files.items():
        if not path:
            continue
        if "://" in path and not path.lower().startswith("file://"):
            continue
        path = file_path(path)
        p = Path(path).expanduser()
        try:
            st = p.stat()
            key: object = (st.st_dev, st.st_ino)
        except OSError:
            key = Path(os.path.abspath(p)).resolve()
        if key in seen:
            raise SinkError(f"{seen[key]} and {what} name the same file ({path}): refusing, "
                            f"writing {what} would destroy {seen[key]}")
        seen[key] = what


def check_writable(files: dict[str, str | None], images: tuple[str, ...] = ()) -> None:
    """Before the first frame: every given output path ({what: path}) can be written (its folder
    exists and is writable; an existing file is a writable file), and those named in `images`
    have an extension the image writer knows. Finding out after the whole run loses the run."""
    for what, path in files.items():
        if not path:
            continue
        p = Path(path).expanduser()
        folder = p.parent if str(p.parent) else Path(".")
        if p.is_dir():
            raise SinkError(f"{what} {path} is a directory, not a file")
        if not folder.is_dir():
            raise SinkError(f"cannot write {what} {path}: folder {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
            read_only = os.statvfs(folder).f_flag & os.ST_RDONLY
            raise SinkError(f"cannot write {what} {path}: " + (
                f"{folder} is on a read-only file system" if read_only else "permission denied"))
        if what in images:
            from PIL import Image

            known = Image.registered_extensions()
            if p.suffix.lower() not in known:
                raise SinkError(f"{what} {path}: unknown image extension {p.suffix or '(none)'!r} "
                                f"(e.g. .png)")


def wants_global_headers(path) -> bool:
    """True when the container for ``path`` stores SPS/PPS out of band (mp4, mkv)."""
    return GLOBAL_HEADERS[_ext(path)]


class FileSink:
    """``with FileSink(path, w, h, time_base, fps, headers) as sink: sink.write(packets)``.

    ``headers``: Annex-B SPS/PPS (``Encoder.headers()``); needed when the encoder ran with
    ``global_headers=True``, harmless otherwise. The container follows the extension
    (``.h264``/``.264`` raw H.264, ``.h265``/``.265``/``.hevc`` raw HEVC, ``.mp4``, ``.mkv``,
    ``.ts``). ``codec``: the packets' codec (``Encoder.codec``), ``"h264"`` or ``"hevc"``; a raw
    extension of the other codec is refused.
    """

    FORMATS = FORMATS
    GLOBAL_HEADERS = GLOBAL_HEADERS
    wants_global_headers = staticmethod(wants_global_headers)

    def __init__(self, path, width: int, height: int, time_base: Fraction, fps: Fraction,
                 headers: bytes = b"", *, codec: str = "h264") -> None:
        self.path = Path(path)
        self.error: OSError | None = None  # closing failed (disk full): set by close()
        self.ext = _ext(self.path)
        self.codec = check_codec(codec)
        if RAW_CODEC.get(self.ext, codec) != codec:
            raw = [e for e, c in RAW_CODEC.items() if c == codec]
            raise SinkError(f"{str(path)!r}: a raw {self.ext} file holds "
                            f"{RAW_CODEC[self.ext].upper()}, but the encoder writes "
                            f"{codec.upper()}; use {' or '.join(raw)}, or a container "
                            "(.mp4, .mkv, .ts)")
        self.format = FORMATS[self.ext]
        self.global_headers = GLOBAL_HEADERS[self.ext]
        self.width, self.height = int(width), int(height)
        self.time_base = Fraction(time_base)
        self.fps = Fraction(fps)
        self.headers = bytes(headers or b"")
        self.frames = 0
        self.bytes = 0
        self._closed = False
        self._file = None
        self._container = None
        self._stream = None
        self._tracks: TrackMuxer | None = None
        # s taken off every time (mp4, mkv: the first packet's; None until it came)
        self._origin: Fraction | None = None if self.format in ("mp4", "matroska") else \
            Fraction(0)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.format is None:
            self._file = open(self.path, "wb")
        else:
            import av

            from . import mux

            # x264 hands out negative dts for the first frames when B-frames delay output.
            # mp4 keeps the pts through an edit list and mkv stores pts only, but for mpegts
            # FFmpeg's default (make_non_negative) would shift every timestamp by that delay;
            # TS timestamps are 33-bit modular, so writing the negative dts as they are keeps
            # the pts exact and demuxers unwrap them.
            options = {"avoid_negative_ts": "disabled"} if self.format == "mpegts" else {}
            self._container = av.open(str(self.path), mode="w", format=self.format,
                                      options=options)
            try:
                self._stream = mux.add_stream(self._container, self.codec, self.fps,
                                              self.width, self.height, self.time_base,
                                              self.format == "matroska")
            except Exception:
                self._container.close()
                raise

    def cannot_carry(self, track: Track) -> str | None:
        """Why this file cannot hold `track` beside the video (None: it can)."""
        if self.format is None:
            return f"a raw {self.ext} file holds the video stream alone (use .mp4, .mkv or .ts)"
        return unsupported(self.format, track)

    def add_tracks(self, tracks: list[Track]) -> None:
        """Streams for passed-through tracks (each one `cannot_carry` allows), before the first
        packet."""
        if self.frames:
            raise SinkError(f"{self.path}: tracks are added before the first packet")
        self._tracks = TrackMuxer(self._container, tracks)

    def write_track(self, packet: TrackPacket) -> None:
        """One packet of an added track, in time order with the video."""
        if self._closed:
            raise SinkError(f"FileSink {self.path} is closed")
        if self._tracks is None:
            return
        origin = self._start(packet.time)
        if self._tracks.mux(packet.shifted(-origin) if origin else packet):
            self.bytes += len(packet.data)

    def _start(self, time: Fraction | None) -> Fraction:
        """The time taken off every packet: the first packet's (`time`, s), in whole ticks of
        the video, for a container that starts at 0."""
        if self._origin is None and time is not None:
            self._origin = math.floor(time / self.time_base) * self.time_base
        return self._origin or Fraction(0)

    def write(self, packets) -> None:
        """Append packets (an ``encoders.Packet`` or an iterable of them) in decode order."""
        if self._closed:
            raise SinkError(f"FileSink {self.path} is closed")
        if hasattr(packets, "data"):
            packets = [packets]
        for p in packets:
            self._write_one(p)

    def _prepend_headers(self, data: bytes, keyframe: bool) -> bytes:
        if not self.headers or has_parameter_sets(data, self.codec):
            return data
        if self.format in ("mp4", "matroska"):
            need = self.frames == 0  # extradata comes from the first packet
        else:  # raw / ts: decoders need the parameter sets in-band at every random access point
            need = keyframe or self.frames == 0
        return self.headers + data if need else data

    def _write_one(self, p) -> None:
        data = self._prepend_headers(bytes(p.data), bool(p.keyframe))
        if self.frames == 0 and not has_parameter_sets(data, self.codec):
            raise SinkError(f"{self.path}: the first packet carries no "
                            f"{PARAMETER_SETS[self.codec]} and no headers were given; pass "
                            "Encoder.headers() when the encoder uses global_headers")
        if self._file is not None:
            self._file.write(data)
        else:
            import av

            from . import mux

            if self._stream is None:  # PyAV 17 with mkv (mux.py)
                self._stream = mux.stream_from_first_packet(self._container, self.codec, data,
                                                            self.width, self.height,
                                                            self.time_base)
            pkt = av.Packet(data)
            pkt.stream = self._stream
            pkt.time_base = self.time_base
            shift = int(self._start(p.pts * self.time_base) / self.time_base)
            pkt.pts = int(p.pts) - shift
            pkt.dts = int(p.dts) - shift
            pkt.is_keyframe = bool(p.keyframe)
            self._container.mux(pkt)
        self.frames += 1
        self.bytes += len(data)

    def close(self) -> None:
        """Finish the file (trailer, index) so that what was written plays. Idempotent; safe after
        an error in the middle of writing."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            try:
                self._file.close()
            except OSError as e:  # the buffered tail did not fit: the caller reports it
                log.error("finalising %s failed: %s", self.path, e.strerror or e)
                self.error = e
        if self._container is not None:
            try:
                self._container.close()
            except (OSError, ValueError) as e:  # OSError, or FFmpeg's: the file is released
                hint = "; its index is not written, so it does not play (a .mkv or .ts keeps " \
                    "what reached the disk)" if self.format == "mp4" else ""
                raise WriteError(getattr(e, "errno", None) or errno.EIO, f"finalising "
                                 f"{self.path} failed: {getattr(e, 'strerror', None) or e}"
                                 f"{hint}") from e

    def __enter__(self) -> "FileSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class FileOutput(Output):
    """A file the user named (a path or `file://PATH`): the extension picks the container. A
    write failure (disk full) is final: exit 3 with what was written, the other outputs going on."""

    fatal = True

    def __init__(self, uri: str, on_event=None) -> None:
        self.uri = uri
        self.path = file_path(uri)
        self.files = {"OUTPUT": self.path}
        self.global_headers = wants_global_headers(self.path)  # unknown extensions fail here
        self.keeps_timestamps = FORMATS[_ext(self.path)] is not None
        self.sink: FileSink | None = None
        self._write_failed = False

    def open(self, info: StreamInfo) -> None:
        self.sink = FileSink(self.path, info.width, info.height, info.time_base, info.fps,
                             info.headers, codec=info.codec)
        if info.tracks and self.sink.format is not None:
            self.sink.add_tracks([t for t in info.tracks if self.sink.cannot_carry(t) is None])

    def cannot_carry(self, track: Track) -> str | None:
        return self.sink.cannot_carry(track)

    def write(self, packet) -> None:
        self._written(self.sink.write, packet)

    def write_track(self, packet: TrackPacket) -> None:
        self._written(self.sink.write_track, packet)

    def _written(self, write, packet) -> None:
        try:
            write(packet)
        except OSError as e:  # the output cannot be written (disk full, device gone)
            self._write_failed = True
            raise WriteError(e.errno, f"writing {self.path} failed: {e.strerror or e}") from e
        except Exception as e:  # FFmpeg's muxer refused the packet (av.error.ArgumentError,
            import av  # PatchWelcomeError: a time step an MP4 cannot store)

            if not isinstance(e, av.error.FFmpegError):
                raise
            self._write_failed = True
            jump = " (an MP4 stores less than 2^31 ticks between two frames: does the input's " \
                "time jump by hours? .mkv and .ts keep it)" if self.sink.format == "mp4" else ""
            raise WriteError(errno.EINVAL, f"writing {self.path} failed: the muxer refused "
                             f"a packet ({e.strerror or e}){jump}") from e

    def stats(self) -> dict:
        sink = self.sink
        closed = sink is None or sink._closed
        try:  # the container's size once finalised, else what went in so far
            size = Path(self.path).stat().st_size if closed else sink.bytes
        except OSError:
            size = 0
        return {"uri": self.uri, "state": "closed" if closed else "open", "bytes": size,
                "packets": sink.frames if sink else 0}

    def close(self) -> None:
        if self.sink is None or self.sink._closed:
            return
        try:
            self.sink.close()
        except WriteError:
            # after a failed write only an MP4's failing index is news (it does not play)
            if not self._write_failed or self.sink.format == "mp4":
                raise
            log.debug("%s: not finalised after the failed write", self.path)
        if self.sink.error is not None and not self._write_failed:  # its last bytes did not fit
            e = self.sink.error
            raise WriteError(e.errno, f"writing {self.path} failed: {e.strerror or e}")
