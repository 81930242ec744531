"""One recording segment on disk: written under a temporary ``.<name>.part`` name, given its
trailer, fsynced, renamed to its final name and its folder fsynced, or given up and deleted
after an error (``sinks/segments.py`` decides when).
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import av

from . import mux

log = logging.getLogger(__name__)

MUXERS = {"ts": ("mpegts", {"avoid_negative_ts": "disabled"}),  # as FileSink: exact pts
           "mp4": ("mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof"})}


class _File:
    """The file PyAV muxes into, opened by us rather than by FFmpeg's file protocol: a write
    error reaches us as the OSError (with errno) of the failing write, we fsync the very
    descriptor, and we know whether the disk accepted any bytes. No ``close`` attribute on
    purpose: PyAV would call it when the container closes, before our fsync."""

    def __init__(self, path: Path) -> None:
        # O_NOFOLLOW: a link planted under the temporary name must not make us truncate and
        # write another file (the service may run as root)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                          | os.O_NOFOLLOW, 0o644)
        self.written = 0

    def write(self, data) -> int:
        view = memoryview(data)
        while view:  # os.write may write less than asked near a full disk
            view = view[os.write(self.fd, view):]
        self.written += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        return os.lseek(self.fd, offset, whence)

    def tell(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def release(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class Segment:
    """One segment being written under its temporary name."""

    def __init__(self, final: Path, fmt: str, settings, start_pts: int,
                 codec: str = "h264") -> None:
        self.time_base = settings.time_base  # the stream's own changes when the header is written
        self.final = final
        self.part = final.with_name(f".{final.name}.part")
        self.start_pts = self.max_pts = start_pts
        self.codec, self.size = codec, (settings.width, settings.height)
        self.frames = 0
        self.file = _File(self.part)
        muxer, options = MUXERS[fmt]
        try:
            self.container = av.open(self.file, mode="w", format=muxer, options=dict(options))
            self.stream = mux.add_stream(self.container, codec, settings.fps, settings.width,
                                         settings.height, settings.time_base,
                                         fmt == "mp4")  # fragmented: the moov comes first
        except BaseException:
            self.file.release()
            raise

    def write(self, packet, data: bytes) -> None:
        if self.stream is None:  # PyAV 17 with fragmented mp4 (mux.py)
            self.stream = mux.stream_from_first_packet(self.container, self.codec, data,
                                                       *self.size, self.time_base)
        pkt = av.Packet(data)
        pkt.stream = self.stream
        pkt.time_base = self.time_base
        pkt.pts, pkt.dts = int(packet.pts), int(packet.dts)
        pkt.is_keyframe = bool(packet.keyframe)
        self.container.mux(pkt)
        self.frames += 1
        self.max_pts = max(self.max_pts, int(packet.pts))

    def finish(self) -> int:
        """Trailer, fsync, rename, fsync of the folder; returns the size. Raises on failure."""
        self.container.close()
        os.fsync(self.file.fd)
        size = os.fstat(self.file.fd).st_size
        self.file.release()
        os.replace(self.part, self.final)
        fsync_dir(self.final.parent)
        return size

    def abort(self) -> bool:
        """Give the segment up after an error: close what can be closed, delete the .part.
        False when the .part could not be deleted (its folder is unreachable just now)."""
        with contextlib.suppress(Exception):  # the trailer fails after an I/O error: expected
            self.container.close()
        with contextlib.suppress(OSError):
            self.file.release()
        return unlink_part(self.part)


def unlink_part(part: Path) -> bool:
    """Delete a .part; False if it may still exist (its folder is away: a disk unmounted)."""
    try:
        os.unlink(part)
    except FileNotFoundError:
        return part.parent.is_dir()
    except OSError:
        return False
    return True


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (a power cut right after it must not bring the .part back)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:  # the segment is written; only its name's durability is at stake
        log.warning("fsync of folder %s failed: %s", folder, e)
