"""What an input says of itself as it opens, checked before any frame is read: a raw file's
geometry, a believable frame rate, a network host with an address, the colour description the
encoder writes, and what the encoding loses of it (bit depth, interlacing)."""
from __future__ import annotations

import logging
import os
import sys
import threading
from fractions import Fraction
from urllib.parse import urlsplit

import av

from ..errors import SourceError
from ..uris import address_problem
from .base import RawVideoOptions

log = logging.getLogger(__name__)

MAX_FPS = 1000  # frames per second: a rate above this is a time base misread (frame_rate)
MAX_SIDE = 16384  # pixels: raw geometry beyond this is a typo (x264 takes at most 16384)


def frame_rate(stream, raw: RawVideoOptions, path: str) -> Fraction:
    """The stream's frame rate: the container's average, else FFmpeg's guess; one above
    MAX_FPS is a time base read as a rate (an H.264 stream's timing says 1/time base, e.g.
    90000 from an RTP camera), not believed."""
    rates = [Fraction(r) for r in (stream.average_rate, stream.guessed_rate, raw.rate) if r]
    fps = next((r for r in rates if 0 < r <= MAX_FPS), None)
    if fps is None:
        log.warning("%s: no believable frame rate (%s); taking 25 fps", path,
                    ", ".join(f"{float(r):g}" for r in rates) or "none given")
        return Fraction(25)
    return fps


def open_container(target, *, format: str | None, options: dict, timeout: tuple | None):
    """av.open(...); a live input's (`timeout`: FFmpeg's open and read timeouts) in a thread of
    its own, waited for so that a stop signal (Ctrl-C, SIGTERM) ends the wait at once: FFmpeg
    waits up to its open timeout for a silent sender or camera and looks at no signal meanwhile.
    The open is then left to finish on its own, and what it opened is closed by that thread."""
    if timeout is None:
        return av.open(target, format=format, options=options)
    opening = _Opening(lambda: av.open(target, format=format, options=options, timeout=timeout))
    return opening.wait()


_ABANDONED: list[threading.Thread] = []  # opens a stop signal left to finish on their own


def open_abandoned() -> bool:
    """Whether a stop signal abandoned an open: the process must then end without Python's
    finalization, which now and then crashes in PyAV (exit -11), whether the open still runs
    or the signal ended it too (FFmpeg's poll interrupted)."""
    return bool(_ABANDONED)


class _Opening:
    """An open in a thread of its own that the caller may stop waiting for (`wait`)."""

    def __init__(self, open_):
        self._lock = threading.Lock()
        self._result = self._error = None
        self._abandoned = False
        self._thread = threading.Thread(target=self._run, args=(open_,), daemon=True,
                                        name="opening-input")

    def _run(self, open_) -> None:
        try:
            result = open_()
        except BaseException as e:  # the caller's to raise
            self._error = e
            return
        with self._lock:
            self._result = result
            if not self._abandoned:
                return
        result.close()  # nobody waits for it any more

    def wait(self):
        self._thread.start()
        try:
            self._thread.join()  # a signal's handler interrupts it (Stopped)
        except BaseException:
            with self._lock:
                self._abandoned, opened = True, self._result
            _ABANDONED.append(self._thread)
            if opened is not None:  # it opened just now: closed here, not by the thread
                opened.close()
            raise
        if self._error is not None:
            raise self._error
        return self._result


def check_host(url: str) -> None:
    """A network input's host has an address (FFmpeg would say "Input/output error")."""
    host = urlsplit(url).hostname
    problem = address_problem(host)
    if problem:
        raise SourceError(f"cannot open {url}: its host {host!r} has no address ({problem})")


def check_size(container, width: int, height: int, path: str) -> None:
    """A picture size the encoder takes (else the container is closed and SourceError)."""
    if not width or not height:
        container.close()
        raise SourceError(f"cannot read the picture size of {path} (corrupt or not a video)")
    if width % 2 or height % 2:
        container.close()
        raise SourceError(f"{path} is {width}x{height}: H.264 4:2:0 needs an even width and "
                          "height")


def colour_of(first: av.VideoFrame | None) -> tuple[int, int, int]:
    """The input's colour description as the encoder should write it (H.273 codes: primaries,
    transfer, matrix; 2 unspecified). RGB is turned into YUV by FFmpeg's default matrix, BT.601
    (6)."""
    if first is None:
        return (2, 2, 2)
    matrix = 6 if first.format.is_rgb else first.colorspace
    return (first.color_primaries, first.color_trc, matrix)


def say_what_is_lost(first: av.VideoFrame | None, path: str) -> None:
    """Once, at the start: deeper input is encoded at 8 bits, interlaced input as progressive."""
    if first is None:
        return
    if first.interlaced_frame:
        log.warning("%s is interlaced: its fields are encoded together as progressive frames "
                    "(deinterlace it first, e.g. ffmpeg -vf bwdif)", path)
    if max(c.bits for c in first.format.components) > 8:
        log.warning("%s is %s: encoded at 8 bits (its colour description is kept)", path,
                    first.format.name)


def check_raw(raw: RawVideoOptions, pix_fmt: str) -> None:
    """Raw geometry FFmpeg would refuse with no more than "Invalid argument"."""
    if not 0 < raw.rate <= MAX_FPS:
        raise SourceError(f"--input-rate {float(raw.rate):g} is out of range: more than 0, at "
                          f"most {MAX_FPS} frames a second")
    if not (0 < raw.width <= MAX_SIDE and 0 < raw.height <= MAX_SIDE):
        raise SourceError(f"--input-width x --input-height {raw.width}x{raw.height} is out of "
                          f"range: 1 to {MAX_SIDE} pixels a side")
    try:
        av.VideoFormat(pix_fmt)
    except (ValueError, av.error.FFmpegError):
        raise SourceError(f"--input-pix-fmt {pix_fmt!r} is no pixel format FFmpeg knows "
                          "(e.g. yuv420p, nv12, yuyv422)") from None


class CountedInput:
    """The standard input as FFmpeg reads it, counted: a raw or y4m stream cut inside a
    picture is then told by its size, as a file's is. Reads return what the pipe holds (a live
    pipe is not held back to fill FFmpeg's buffer)."""

    def __init__(self):
        self.fd = sys.stdin.fileno()
        self.count = 0
        self.first_line = 0  # bytes up to the first newline (a y4m header), once found
        self._header = b""

    def read(self, size: int) -> bytes:
        data = os.read(self.fd, size)
        if not self.first_line and len(self._header) < 4096:
            self._header += data[:4096]
            if b"\n" in self._header:
                self.first_line = self._header.index(b"\n") + 1
        self.count += len(data)
        return data
