"""Record one camera into time-named segments, for months, unattended.

``SegmentSink`` takes the same ``write(packets)`` / ``close()`` calls as ``FileSink`` and writes
``<record.dir>/<camera>/20261129T231500Z.ts`` (or ``.mp4``, fragmented), each about
``record.segment_seconds`` long. The caller asks the sink before encoding each frame::

    settings = EncoderSettings(..., global_headers=SegmentSink.wants_global_headers(cfg))
    with X264Encoder(settings) as enc, SegmentSink(cfg, "cam1", settings, enc.headers(),
                                                   on_event=report) as sink:
        for frame in frames:
            sink.write(enc.encode(frame, qp, force_idr=sink.wants_idr(frame.pts)))
        sink.write(enc.flush())

Guarantees and choices:

- **Every segment starts with an IDR and decodes alone**: it is cut only at an IDR packet once
  ``segment_seconds`` long; ``wants_idr(pts)`` says when the next frame should be that IDR.
  TS carries SPS/PPS before every keyframe, fMP4 in each segment's header. TS segments keep
  the camera's timestamps; fMP4 segments start at 0 (every track moved by the segment's start,
  the moov written with the first fragment so that its edit lists keep the tracks in sync:
  `segment_file.py`).
- **Completed means complete**: a segment is written as ``.<name>.part`` and renamed only
  after its trailer and an fsync (then the folder is fsynced), so a crash leaves every named
  segment whole and at most the open one as a ``.part``. A new sink finalises a stale
  ``.part`` as the segment it was going to be, with its whole packets from its first keyframe
  (``segment_recovered``: a crash loses the last few frames, not the segment); one with
  nothing whole is deleted (``segment_deleted``, reason ``stale_part``). The camera's lock
  (``<camera>/.lock``, flock) proves no live sink still writes them.
- **Time is the packets' pts** (settings' ``time_base``); the injectable ``now()`` only names
  segments (UTC start time, ``_0001``, ``_0002``... if taken, so names sort in recording
  order) and ages them for retention.
- **A write failure never raises** from ``write``/``close`` (disk full, read-only, folder
  removed, device gone): the open segment is dropped (its ``.part`` deleted: that frees space,
  and a cut segment is not a complete one), ``write_error`` is reported, and a new segment is
  tried at a keyframe ``retry_frames`` later, doubling up to one segment's length while the
  failures go on; ``write_resumed`` once a segment was completed again (a disk that takes a
  header and fails on the next packet has not recovered). Only the camera folder is
  re-created: a missing ``record.dir``, or one that is no longer the mount point it was (an
  unmounted disk), is waited for, not recorded onto the root disk (``camera_folder.py``).
- **Retention**, after each completed segment: the oldest completed segments (by the start
  time in their names) are deleted while the camera's total exceeds ``max_bytes`` or while
  older than ``max_age_hours``; never the newest one, nor files the sink did not name.

- **Passed-through streams** (audio, data: ``StreamInfo.tracks``) go into each segment beside
  the video where the format takes them, each packet into the segment of its time (`Outputs`
  interleaves them); a packet while no segment is open (waiting for an IDR after an error) is
  counted in ``track_packets_lost``.

Events (``on_event(name, **fields)``; a callback that raises is logged, never propagated):
``segment_closed`` {path, frames, seconds, bytes, start_pts}, ``segment_deleted`` {path, bytes,
reason: max_bytes | max_age | stale_part}, ``segment_recovered`` {path, frames, bytes},
``write_error`` {path, reason, errno, frames_lost, retry_in_frames}, ``write_resumed`` {path,
frames_lost, errors}.
"""
from __future__ import annotations

import bisect
import contextlib
import errno as errno_mod
import logging
import math
import os
import re
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av

from ..errors import SinkError
from .base import Output, StreamInfo
from .camera_folder import CameraFolder
from .config import RecordConfig
from .nal import check_codec, has_parameter_sets, is_idr
from .segment_file import MUXERS, Segment, recover, unlink_part
from .tracks import unsupported

log = logging.getLogger(__name__)

_STAMP = "%Y%m%dT%H%M%SZ"
# A second segment started within the same second gets `_0001`, `_0002` ...: '_' sorts after
# '.', so names list in recording order (faster-than-real-time input starts several a second).
_NAME = re.compile(r"^(\d{8}T\d{6}Z)(?:_(\d{4}))?\.(ts|mp4)$")
# PyAV re-raises our file object's OSError; its own failures (a trailer after an I/O error,
# timestamps a muxer refuses) are FFmpegError, not an OSError: both end the segment, not the run
_WRITE_ERRORS = (OSError, av.error.FFmpegError)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _segment_key(name: str):
    """(start time, suffix) of one of our segment names, else None: sorts oldest first."""
    m = _NAME.match(name)
    if not m:
        return None
    start = datetime.strptime(m.group(1), _STAMP).replace(tzinfo=timezone.utc)
    return start, int(m.group(2) or 0)


class SegmentSink:
    """Writes ``<cfg.dir>/<camera>/`` segments; see the module's docstring.

    ``settings``: the encoder's ``EncoderSettings`` (width, height, fps, time_base: packets and
    ``wants_idr`` pts are in its ``time_base``). ``headers``: ``Encoder.headers()`` (SPS/PPS),
    needed when the encoder keeps them out of band. ``codec``: ``Encoder.codec`` (``"h264"``,
    ``"hevc"``). ``now``: returns the UTC time (an aware or
    naive-UTC ``datetime``). Raises ``SinkError`` only here, before the first
    frame (camera folder cannot be made, another sink records this camera) and for misuse.
    """

    def __init__(self, cfg: RecordConfig, camera: str, settings, headers: bytes = b"", *,
                 on_event: Callable[..., None] | None = None,
                 now: Callable[[], datetime] | None = None, codec: str = "h264") -> None:
        cfg.validate()
        self.codec = check_codec(codec)
        if not camera or camera in (".", "..") or "/" in camera or "\0" in camera:
            raise SinkError(f"invalid camera name {camera!r} (a folder name: no '/')")
        self.cfg, self.camera = cfg, camera
        self.root = Path(cfg.dir).expanduser()
        self.path = self.root / camera
        self.settings = settings
        # StreamInfo names the passed-through tracks (EncoderSettings none): those the format takes
        self.tracks = [t for t in getattr(settings, "tracks", ())
                       if unsupported(MUXERS[cfg.format][0], t) is None]
        self.time_base = Fraction(settings.time_base)
        self.headers = bytes(headers or b"")
        self.error = None  # FileSink's attribute; failures here are events, never errors
        self._on_event = on_event
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._seg_ticks = Fraction(cfg.segment_seconds) / self.time_base
        self._frame_ticks = 1 / (Fraction(settings.fps) * self.time_base)
        self._max_backoff = max(cfg.retry_frames, math.ceil(self._seg_ticks / self._frame_ticks))
        self._seg: Segment | None = None
        # pts from which wants_idr() asks for the next IDR (None: the next frame). Kept on the
        # input side: packets come out frames later (lookahead, B-frames), so the open segment's
        # start cannot say when to ask.
        self._due: int | Fraction | None = None
        self._retry_pts: int | None = None  # failing: no segment before a keyframe at this pts
        self._failures = 0  # failures since recording last worked (reset once the disk takes bytes)
        self._backoffs = 0  # of them, those that wait before the next try (the doubling)
        self._litter: list[Path] = []  # .part files of given-up segments not yet deletable
        self._lost_since_error = 0
        self._calls = 0  # wants_idr() calls
        self._closed = True  # until the folder is locked: close() then has nothing to undo
        self._folder = CameraFolder(self.root, camera)
        self._closed = False
        # stats(): packets given to write(), those in no completed segment (write errors,
        # waiting for an IDR), segments and bytes completed, segments deleted, write errors
        self.frames = self.frames_lost = self.segments = self.bytes = 0
        self.deleted = self.deleted_bytes = self.write_errors = 0
        self.track_packets_lost = 0
        self._index: list[tuple[tuple, str, int]] = []  # (key, name, bytes), oldest first
        try:
            self._scan()
        except OSError as e:
            self.close()
            raise SinkError(f"cannot list {self.path}: {e.strerror or e}") from None

    # -- the interface

    @staticmethod
    def wants_global_headers(cfg: RecordConfig) -> bool:
        """As FileSink's: mp4 keeps SPS/PPS out of band, TS in every keyframe."""
        return cfg.format == "mp4"

    def wants_idr(self, pts: int | None) -> bool:
        """Whether the frame with this pts (settings.time_base) should be forced to an IDR.
        Call before encoding each frame, in input order. True for the first frame, then once
        per ``segment_seconds`` of pts (counted from the last IDR asked for), and when a retry
        after a write error is due; the segment is cut when that IDR's packet arrives.
        ``None`` (a frame without timestamp): numbered like the encoder does, by frame rate."""
        self._calls += 1
        if pts is None:
            pts = round((self._calls - 1) * self._frame_ticks)
        if self._closed or (self._due is not None and pts < self._due):
            return False
        self._due = pts + self._seg_ticks  # the segment this IDR starts is due then
        return True

    def write(self, packets) -> None:
        """Append packets (an ``encoders.Packet`` or an iterable of them) in decode order."""
        if self._closed:
            raise SinkError(f"SegmentSink {self.path} is closed")
        if hasattr(packets, "data"):
            packets = [packets]
        for p in packets:
            self._write_one(p)

    def close(self) -> None:
        """Finalise and rename the open segment (a stop signal's path). Idempotent; reports
        failures as events."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._seg is not None:
                self._finish(None)
        finally:
            self._folder.close()

    def write_track(self, packet) -> None:
        """One packet of a passed-through track (`tracks.TrackPacket`), into the open segment."""
        if self._closed:
            raise SinkError(f"SegmentSink {self.path} is closed")
        seg = self._seg
        if seg is None:
            self.track_packets_lost += 1
            return
        try:
            seg.write_track(packet)
        except _WRITE_ERRORS as e:
            self._seg = None
            self._give_up(seg)
            self._failed(seg.part, e, seg.frames, seg.max_pts)

    def stats(self) -> dict:
        return {k: getattr(self, k) for k in ("frames", "frames_lost", "segments", "bytes",
                                              "deleted", "deleted_bytes", "write_errors",
                                              "track_packets_lost")}

    def __enter__(self) -> "SegmentSink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    # -- packets

    def _write_one(self, p) -> None:
        self.frames += 1
        # only an IDR starts a segment: x264 also flags open-GOP I-frames as keyframes, and
        # the B-frames after one in decode order reference the previous segment
        pts, key = int(p.pts), bool(p.keyframe) and is_idr(p.data, self.codec)
        if self._seg is not None and key and pts - self._seg.start_pts >= self._seg_ticks:
            self._finish(pts)
        if self._seg is None:
            if not key or (self._retry_pts is not None and pts < self._retry_pts):
                self._lose(1)  # a segment can only start at a keyframe
                return
            if not self._open(pts):
                self._lose(1)
                return
        seg = self._seg
        data = self._with_headers(bytes(p.data), key, seg.frames == 0)
        try:
            seg.write(p, data)
        except _WRITE_ERRORS as e:
            self._seg = None
            self._give_up(seg)
            self._failed(seg.part, e, seg.frames + 1, pts)

    def _with_headers(self, data: bytes, keyframe: bool, first: bool) -> bytes:
        if not has_parameter_sets(data, self.codec):
            # TS: decoders need SPS/PPS at every random access point; mp4 takes them from the
            # segment's first packet (PyAV's extract_extradata).
            if self.headers and (first or (keyframe and self.cfg.format == "ts")):
                data = self.headers + data
            elif first:
                raise SinkError(f"{self.path}: a segment's first packet carries no SPS/PPS and "
                                "no headers were given; pass Encoder.headers()")
        return data

    # -- segments

    def _open(self, pts: int) -> bool:
        try:
            self._folder.ready()  # an unmounted disk: wait, do not record onto / instead
            self._seg = Segment(self._free_name(), self.cfg.format, self.settings, pts,
                                 self.codec, self.tracks)
        except _WRITE_ERRORS as e:
            self._failed(self.path, e, 0, pts)
            return False
        # the folder is back: delete what could not be deleted while it was away
        self._litter = [part for part in self._litter if not unlink_part(part)]
        self._retry_pts = None
        # an ignored request (the caller did not force it): count from the actual start
        self._due = max(self._due if self._due is not None else pts, pts + self._seg_ticks)
        return True

    def _free_name(self) -> Path:
        stamp = _utc(self._now()).astimezone(timezone.utc).strftime(_STAMP)
        ext = self.cfg.extension
        for n in range(10_000):
            name = f"{stamp}{f'_{n:04d}' if n else ''}{ext}"
            if not os.path.lexists(self.path / name):
                return self.path / name
        raise FileExistsError(errno_mod.EEXIST, "no free segment name", str(self.path / stamp))

    def _finish(self, next_pts: int | None) -> None:
        seg, self._seg = self._seg, None
        try:
            size = seg.finish()
        except _WRITE_ERRORS as e:
            self._give_up(seg)
            # no backoff: the next keyframe (this one, on a rotation) may open a new segment
            # at once, e.g. after the camera folder was removed under the open segment
            self._failed(seg.part, e, seg.frames, None)
            return
        end = next_pts if next_pts is not None else seg.max_pts + self._frame_ticks
        seconds = float((end - seg.start_pts) * self.time_base)
        self.segments += 1
        self.bytes += size
        if self._failures:
            self._resumed(seg)
        if self.cfg.max_bytes or self.cfg.max_age_s:  # else no need to remember (months)
            bisect.insort(self._index, (_segment_key(seg.final.name), seg.final.name, size))
        self._emit("segment_closed", path=str(seg.final), frames=seg.frames,
                   seconds=round(seconds, 6), bytes=size, start_pts=seg.start_pts)
        self._retain(seg.final.name)

    def _give_up(self, seg: Segment) -> None:
        if not seg.abort():
            self._litter.append(seg.part)

    def _lose(self, frames: int) -> None:
        self.frames_lost += frames
        self._lost_since_error += frames

    def _failed(self, path, e: BaseException, frames: int, pts: int | None) -> None:
        self._lose(frames)
        self.write_errors += 1
        self._failures += 1
        wait = min(self.cfg.retry_frames * 2 ** min(self._backoffs, 30), self._max_backoff)
        if pts is not None:
            self._backoffs += 1
            self._retry_pts = self._due = pts + math.ceil(wait * self._frame_ticks)
        reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
        log.warning("recording %s: writing %s failed (%s); %d frames lost, retrying in %d frames",
                    self.camera, path, reason, frames, wait if pts is not None else 0)
        self._emit("write_error", path=str(path), reason=reason, errno=getattr(e, "errno", None),
                   frames_lost=frames, retry_in_frames=wait if pts is not None else 0)

    def _resumed(self, seg: Segment) -> None:
        self._emit("write_resumed", path=str(seg.final), frames_lost=self._lost_since_error,
                   errors=self._failures)
        self._failures = self._backoffs = 0
        self._lost_since_error = 0

    # -- retention and start-up

    def _scan(self) -> None:
        for entry in list(os.scandir(self.path)):  # a snapshot: recovery adds files
            if entry.name.startswith(".") and entry.name.endswith(".part"):
                self._stale_part(Path(entry.path))
            elif _segment_key(entry.name) and entry.is_file(follow_symlinks=False):
                self._remember(entry.name, entry.stat(follow_symlinks=False).st_size)
        self._index.sort()

    def _stale_part(self, part: Path) -> None:
        """A crashed run's open segment: its whole packets become the named segment it was
        going to be (`segment_recovered`), else it is deleted (`segment_deleted`)."""
        name = part.name[1:-len(".part")]
        recovered = None
        if _segment_key(name) and part.is_file() and not part.is_symlink():
            try:
                recovered = recover(part)
            except _WRITE_ERRORS as e:
                log.warning("cannot recover %s: %s", part, e)
        if recovered is not None:
            frames, size = recovered
            self._emit("segment_recovered", path=str(part.with_name(name)), frames=frames,
                       bytes=size)
            self._remember(name, size)
        try:
            size = part.lstat().st_size
            os.unlink(part)
        except OSError as e:
            log.warning("cannot delete stale %s: %s", part, e)
            return
        if recovered is None:
            self._emit("segment_deleted", path=str(part), bytes=size, reason="stale_part")

    def _remember(self, name: str, size: int) -> None:
        if self.cfg.max_bytes or self.cfg.max_age_s:  # else no need to list them (months)
            self._index.append((_segment_key(name), name, size))

    def _retain(self, newest: str) -> None:
        """Delete the oldest completed segments over max_bytes or max_age (never `newest`)."""
        max_bytes, max_age = self.cfg.max_bytes, self.cfg.max_age_s
        if not (max_bytes or max_age):
            return
        total = sum(size for _, _, size in self._index)
        now = _utc(self._now())
        kept, done = [], False
        for entry in self._index:  # oldest first
            key, name, size = entry
            reason = None
            if not done and name != newest:
                if max_bytes and total > max_bytes:
                    reason = "max_bytes"
                elif max_age and (now - key[0]).total_seconds() > max_age:
                    reason = "max_age"
                else:  # within both limits: so are the newer ones
                    done = True
            if reason is None or not self._delete(name, size, reason):
                kept.append(entry)
            else:
                total -= size
        self._index = kept

    def _delete(self, name: str, size: int, reason: str) -> bool:
        """Delete one completed segment; False when it could not be (it stays listed)."""
        path = self.path / name
        try:
            os.unlink(path)
        except FileNotFoundError:  # deleted behind our back: forget it, nothing to report
            return True
        except OSError as e:
            log.warning("cannot delete old segment %s: %s", path, e)
            return False
        self.deleted += 1
        self.deleted_bytes += size
        self._emit("segment_deleted", path=str(path), bytes=size, reason=reason)
        return True

    def _emit(self, name: str, **fields) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(name, **fields)
        except Exception:  # a reporting bug must not stop the recording
            log.exception("on_event(%r) failed", name)


class SegmentOutput(Output):
    """A camera's recorded segments as one output of its run (`SegmentSink` once open): never
    fatal, its write failures are events (see the module's docstring)."""

    def __init__(self, cfg: RecordConfig, camera: str, on_event: Callable[..., None] | None = None,
                 now: Callable[[], datetime] | None = None):
        self.cfg, self.camera, self.on_event, self.now = cfg, camera, on_event, now
        self.uri = f"{cfg.dir}/{camera}"
        self.global_headers = SegmentSink.wants_global_headers(cfg)
        self.sink: SegmentSink | None = None

    def open(self, info: StreamInfo) -> None:
        self.sink = SegmentSink(self.cfg, self.camera, info, info.headers,
                                on_event=self.on_event, now=self.now, codec=info.codec)

    def wants_idr(self, pts: int | None) -> bool:
        return self.sink.wants_idr(pts)

    def cannot_carry(self, track) -> str | None:
        return unsupported(MUXERS[self.cfg.format][0], track)

    def write(self, packet) -> None:
        self.sink.write(packet)

    def write_track(self, packet) -> None:
        self.sink.write_track(packet)

    def stats(self) -> dict:
        sink = self.sink
        state = "closed" if sink is None or sink._closed else \
            "failing" if sink._failures else "recording"  # failing: until a segment completes
        return {"uri": self.uri, "state": state, **(sink.stats() if sink else {})}

    def close(self) -> None:
        if self.sink is not None:
            self.sink.close()
