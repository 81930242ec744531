"""One recording segment on disk: written under a temporary ``.<name>.part`` name, given its
trailer, fsynced, renamed to its final name and its folder fsynced, or given up and deleted
after an error (``sinks/segments.py`` decides when); and the recovery of a ``.part`` a crash
left behind.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import av

from . import mux
from .tracks import TrackMuxer

log = logging.getLogger(__name__)

# Each packet goes to the file as it is muxed (flush_packets), and fMP4 closes a fragment at
# least every second: what a crash leaves in a .part is all but the last frame (TS) or all but
# the last second (fMP4), and `recover` keeps it. As FileSink, TS keeps the exact pts.
# delay_moov: the fMP4 moov (with each track's edit list) waits for the first fragment, when
# every track's first timestamp is known; with empty_moov alone each track would start at 0 on
# its own, putting a segment's audio and video out of sync by their first packets' distance.
MUXERS = {"ts": ("mpegts", {"avoid_negative_ts": "disabled", "flush_packets": "1"}),
          "mp4": ("mp4", {"movflags": "frag_keyframe+empty_moov+default_base_moof+delay_moov",
                          "frag_duration": "1000000", "flush_packets": "1"})}


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
                 codec: str = "h264", tracks=()) -> None:
        self.time_base = settings.time_base  # the stream's own changes when the header is written
        self.final = final
        self.part = final.with_name(f".{final.name}.part")
        self.start_pts = self.max_pts = start_pts
        self.codec, self.size = codec, (settings.width, settings.height)
        # fMP4 segments start at 0 (a player would show an empty edit of the camera's time
        # first); every track moves by the same amount, so they stay in sync
        self.origin = start_pts if fmt == "mp4" else 0
        self.frames = 0
        self.file = _File(self.part)
        muxer, options = MUXERS[fmt]
        try:
            self.container = av.open(self.file, mode="w", format=muxer, options=dict(options))
            self.stream = mux.add_stream(self.container, codec, settings.fps, settings.width,
                                         settings.height, settings.time_base,
                                         fmt == "mp4")  # fragmented: the moov comes first
            self.tracks = TrackMuxer(self.container, tracks)  # passed-through audio, data
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
        pkt.pts, pkt.dts = int(packet.pts) - self.origin, int(packet.dts) - self.origin
        pkt.is_keyframe = bool(packet.keyframe)
        self.container.mux(pkt)
        self.frames += 1
        self.max_pts = max(self.max_pts, int(packet.pts))

    def write_track(self, packet) -> None:
        """One packet of a passed-through track (`tracks.TrackPacket`)."""
        self.tracks.mux(packet.shifted(-self.origin * self.time_base) if self.origin else packet)

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


def recover(part: Path) -> tuple[int, int] | None:
    """Finalise the ``.part`` of a run that died (SIGKILL, power cut) as the segment it was
    going to be: its packets from the first keyframe up to the last whole one, remuxed under
    the final name in the container the name says (written as another ``.part``, fsynced and
    renamed, like a segment; `record.format` may have changed since).
    (frames, bytes), or None when nothing whole is in it or the final name is taken; the
    caller deletes the ``.part`` either way. Raises OSError / FFmpegError when it cannot be
    read or written."""
    final = part.with_name(part.name[1:-len(".part")])
    fmt = final.suffix.lstrip(".")
    if os.path.lexists(final) or fmt not in MUXERS:
        return None
    with av.open(str(part)) as src:
        if not src.streams.video:
            return None
        stream = src.streams.video[0]
        # the passed-through streams too (audio, data), from the video's first IDR on
        streams = [stream, *(s for s in src.streams if s.type in ("audio", "subtitle", "data"))]
        packets = []
        try:
            for packet in src.demux(streams):
                if packet.size == 0 or packet.is_corrupt:  # the end, or cut short
                    break
                if packets or (packet.stream is stream and packet.is_keyframe):
                    packets.append(packet)  # a segment starts with its IDR
        except av.error.FFmpegError:  # the file ends inside a packet or a fragment
            pass
        # the killed writer's last buffer ended anywhere: its last packet may be cut short
        packets = packets[:-1]
        frames = sum(p.stream is stream for p in packets)
        if not frames:
            return None
        tmp = part.with_name(f".{final.name}.recovering.part")
        file = _File(tmp)
        try:
            muxer, options = MUXERS[fmt]
            with av.open(file, mode="w", format=muxer, options=dict(options)) as dst:
                out = {s.index: dst.add_stream_from_template(s) for s in streams}
                for packet in packets:
                    packet.stream = out[packet.stream.index]
                    dst.mux(packet)
            os.fsync(file.fd)
            size = os.fstat(file.fd).st_size
        except BaseException:
            file.release()
            unlink_part(tmp)
            raise
        file.release()
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return frames, size


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
