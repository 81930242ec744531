"""`srt://` inputs: MPEG-TS over SRT, as a drone, a field encoder (Haivision, OBS) or a companion
computer's GStreamer sends it.

- `srt://@:PORT` (`?mode=listener`; `srt://HOST:PORT?mode=listener` binds that address alone):
  waits for a sender to call, and for the next one after it goes (a drone calling the ground
  station);
- `srt://HOST:PORT` (`?mode=caller`): calls a sender that listens, again after it went;
- `latency=MS` (default SRT's 120 ms; the larger of both ends' wins), `passphrase_env=NAME`
  (the variable holding the passphrase; never the URI, which is logged) and a caller's
  `streamid=ID` (what a server such as MediaMTX serves it: `read:cam1`; a listener logs each
  caller's), read as the `srt://` output reads them (`uris.srt_uri`).

PyAV's FFmpeg has no libsrt: a child process of the system Python (`srt_child.py`, GStreamer's
srtsrc) receives the stream and writes its MPEG-TS into a pipe that PyAV reads (`PipeReader`),
so that everything after is the `udp://` input's path: audio and data streams passed through,
a live input that never ends on its own, a sender that stops told by the read timeout in its
own words. The child ends with the input (`close`), and by itself when this process dies (its
standard input ends)."""
from __future__ import annotations

import fcntl
import json
import logging
import os
import select
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import av

from ..errors import DecodeError, SourceError
from ..uris import SRT_LATENCY_MS, SrtUri, srt_uri
from . import pyav
from .base import RawVideoOptions, Receiver
from .opening import check_host
from .pyav import PyAVSource
from .udp import check_free

log = logging.getLogger(__name__)

PYTHON_ENV = "EDGE_SEMVC_GST_PYTHON"  # the Python with PyGObject, as the outputs' child's
DEFAULT_PYTHON = "/usr/bin/python3"
CHILD = Path(__file__).with_name("srt_child.py")
READY_TIMEOUT_S = 15.0  # the child's start: importing GStreamer, binding the port
STOP_S = 2.0  # for the child to end once asked, before it is killed
PIPE_BYTES = 1 << 20  # the pipe's buffer (Linux's most for a user), beside the child's queue
# the child's queue: a burst PyAV cannot take at once (the models loading, a slow machine)
# waits there; past it, the oldest is dropped, as FFmpeg's UDP FIFO drops (the demuxer counts
# the transport packets lost) rather than the input ending
QUEUE_BYTES = 8 << 20
TIMED_OUT = -0x54495845  # AVERROR_EXIT, what FFmpeg's interrupt check returns on a timeout


def check_uri(uri: str) -> tuple[int, ...]:
    """What an `srt://` input's URI says is possible (SourceError else): the UDP port a
    listener takes alone."""
    srt = srt_uri(uri, SourceError, "input")
    return (srt.port,) if srt.mode == "listener" else ()


def open_srt(uri: str, raw: RawVideoOptions) -> SrtSource:
    return SrtSource(uri, raw)


@dataclass(frozen=True)
class SrtReceiver(Receiver):
    """A silence told in SRT's terms: a caller's by the listener it calls (`where`: 'the SRT
    listener at HOST:PORT'); an encrypted input's possibly a sender with another passphrase
    (a listener is not told of the callers it turned away)."""

    caller: bool = False
    encrypted: bool = False

    def nothing_within(self, seconds: float) -> str:
        same = ", with the same passphrase" if self.encrypted else ""
        if self.caller:
            return f"no stream came from {self.where} within {seconds:g} s (is its sender on?)"
        return (f"no stream came on {self.where} within {seconds:g} s (is the sender on, and "
                f"calling this machine{same}?)")

    def no_packet_for(self, seconds: float) -> str:
        if not self.caller:
            return super().no_packet_for(seconds)
        return (f"no packet from {self.where} for {seconds:.0f} s (the sender stopped, or its "
                "link dropped)")


class SrtSource(PyAVSource):
    """An `srt://` input: PyAV reading the MPEG-TS its `SrtChild` receives."""

    def __init__(self, uri: str, raw: RawVideoOptions):
        srt = srt_uri(uri, SourceError, "input")
        if srt.mode == "listener":
            check_free(uri, "" if srt.host == "0.0.0.0" else srt.host, (srt.port,))
        elif srt.mode == "caller":
            check_host(uri)  # srtsrc would say "Could not open resource for reading"
        caller = srt.mode == "caller"
        where = f"the SRT listener at {srt.host}:{srt.port}" if caller else f"srt port {srt.port}"
        receiver = SrtReceiver(uri, where, caller, srt.passphrase_env is not None)
        self._child = SrtChild(uri, srt)
        try:
            super().__init__(uri, raw, live={}, receiver=receiver,
                             reader=PipeReader(self._child.fd))
        except SourceError as e:
            raise self._child.explained(e) from None
        except BaseException:
            self._child.stop()
            raise

    def frames(self):
        yield from super().frames()
        # the pipe ended: the child did (a live input never ends on its own)
        self._child.stop()
        code = self._child.proc.returncode
        raise DecodeError(f"{self.path}: its SRT receiver ended: " + (
            self._child.error or "it exited" + (f" (signal {-code})" if code and code < 0 else
                                                f" (exit status {code})" if code else "")))

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._child.stop()


class PipeReader:
    """The child's pipe as PyAV reads it: each read waits on the pipe (poll) up to the live
    input's timeout. A timeout before the first bytes ends the open as FFmpeg's own timeout
    does (ExitError); one after ends the input (`timed_out`), so that what FFmpeg's demuxer
    still holds, the last picture, comes out first (an error would be raised before it).
    FFmpeg reading the pipe itself polled it every millisecond while it was empty (130 ms of
    CPU in 5 s waiting for a sender)."""

    def __init__(self, fd: int):
        self.fd, self.timed_out, self._opened = fd, False, False
        self._poll = select.poll()  # not select(): no limit on the descriptor's number
        self._poll.register(fd, select.POLLIN)

    def read(self, size: int) -> bytes:
        timeout = pyav.LIVE_TIMEOUT_S[1 if self._opened else 0]
        deadline = time.monotonic() + timeout
        while not self.timed_out:
            left = deadline - time.monotonic()
            if left <= 0 and not self._opened:
                raise av.error.ExitError(TIMED_OUT, f"no bytes for {timeout:g} s")
            if left <= 0:
                self.timed_out = True
                break
            try:
                if not self._poll.poll(left * 1000):
                    continue
                data = os.read(self.fd, size)
            except BlockingIOError:
                continue
            except OSError:  # the pipe closed by SrtChild.stop: the end
                break
            self._opened = True
            return data
        return b""


class SrtChild:
    """The child process receiving the stream (`srt_child.py`): started and ready (else
    SourceError), its events read on a thread, stopped with the input."""

    def __init__(self, uri: str, srt: SrtUri):
        self.uri, self.srt = uri, srt
        self.error: str | None = None  # what it said as it ended
        self.warning: str | None = None  # srtsrc's latest (a caller's connection failing)
        self.refusal_said = False  # a refused call warned of (a caller retries at once)
        self._ready = threading.Event()
        self._stop_lock = threading.Lock()
        self._pipe_closed = False  # by stop(), while the child still wrote into it
        read, write = os.pipe()
        try:
            fcntl.fcntl(read, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # a smaller pipe: the child's queue holds a burst
            pass
        os.set_blocking(read, False)
        self.fd: int | None = read
        python = os.environ.get(PYTHON_ENV) or DEFAULT_PYTHON
        try:
            # its own session: a Ctrl-C meant for this process is not the child's; it ends
            # when this process closes the input or dies (its standard input ends)
            self.proc = subprocess.Popen(
                [python, str(CHILD), json.dumps(self._config(write))], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=(write,),
                start_new_session=True)
        except OSError as e:
            os.close(read)
            self.fd = None
            raise SourceError(f"cannot open {uri}: it needs the system Python {python} "
                              f"({e.strerror or e}; Debian package python3, or set "
                              f"{PYTHON_ENV} to a Python with PyGObject)") from None
        finally:
            os.close(write)  # the child's alone: its end ends the pipe
        self._events = threading.Thread(target=self._read_events, daemon=True,
                                        name="srt child")
        self._events.start()
        if not self._ready.wait(READY_TIMEOUT_S):
            self.error = f"its GStreamer child did not start within {READY_TIMEOUT_S:g} s"
        if self.error is not None or self.proc.poll() is not None:
            self.stop()
            raise SourceError(f"cannot open {uri}: {self.error or 'its GStreamer child exited'}")

    def _config(self, fd: int) -> dict:
        s = self.srt
        host = "" if s.mode == "listener" and s.host == "0.0.0.0" else s.address()
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        return {"uri": f"srt://{host}:{s.port}?mode={s.mode}", "fd": fd,
                "latency": SRT_LATENCY_MS if s.latency is None else s.latency,
                "passphrase_env": s.passphrase_env, "streamid": s.streamid,
                "queue_bytes": QUEUE_BYTES}

    def _read_events(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
                name = event.pop("event")
            except (ValueError, KeyError, AttributeError, TypeError):
                text = line.decode(errors="replace").strip()
                if text:  # GStreamer's or Python's own words (on standard error)
                    log.debug("%s: %s", self.uri, text)
                continue
            if name == "ready":
                self._ready.set()
            elif name == "error" and not self._pipe_closed:
                self.error = str(event.get("message"))
            elif name == "warning":
                self.warning = str(event.get("message"))
                log.debug("%s: %s", self.uri, self.warning)
            elif name == "caller_refused":  # said once while the same sender sends
                (log.debug if self.refusal_said else log.warning)(
                    "%s: the SRT sender %s called while another sends: refused (one sender at "
                    "a time; it may call again once that one left)", self.uri,
                    event.get("address"))
                self.refusal_said = True
            elif name in ("caller_added", "caller_removed"):
                self.refusal_said = False
                stream_id = event.get("stream_id")
                log.info("%s: the SRT sender %s %s%s", self.uri, event.get("address"),
                         "called" if name == "caller_added" else "left",
                         f" (stream id {stream_id!r})" if stream_id else "")
        self._ready.set()  # it ended

    def explained(self, error: SourceError) -> SourceError:
        """`error` (PyAV could not open the stream), or what the child said of it: it could
        not receive (its error), or a caller's call failed (srtsrc's warning: no listener
        answered, or it wants another passphrase)."""
        self.stop()  # its events are all read once it ended
        if self.error:
            return SourceError(f"cannot open {self.uri}: {self.error}")
        if self.srt.mode == "caller" and self.warning:  # GStreamer's words, less its retry
            return SourceError(f"cannot open {self.uri}: the SRT listener at {self.srt.host}:"
                               f"{self.srt.port} did not take the call within "
                               f"{pyav.LIVE_TIMEOUT_S[0]:g} s: "
                               f"{self.warning.removesuffix('. Trying to reconnect')}")
        return error

    def stop(self) -> None:
        """Ends the child (asked, by its standard input ending; then its pipe closed, should it
        be stuck writing into it; then killed) and the pipe; once, from any thread."""
        with self._stop_lock:
            if self.fd is None:
                return
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self._pipe_closed = True  # what it says of its write failing is ours
                os.close(self.fd)
                self.fd = None
                try:
                    self.proc.wait(STOP_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None
        self._events.join(STOP_S)
