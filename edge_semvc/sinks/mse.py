"""The browser's live picture: the encoder's own H.264 or HEVC packets as fragmented MP4 (one
fragment per frame) for Media Source Extensions, fanned out to the page's readers.

Nothing is re-encoded: `MseOutput` is one more `Output` of the camera's encoder. FFmpeg's mov
muxer (PyAV, `mux.py`) writes the init segment (ftyp+moov) from the first packet; each access
unit then becomes one moof+mdat the moment the encoder hands it over (`fmp4.py`: FFmpeg's muxer
would hold each frame until the next came, one frame interval on the page).

`LiveFeed` lives as long as the camera (outputs are made anew for every run): each reader gets
the latest init segment, then fragments from the next keyframe on, through its own bounded
queue. The encoder's thread only appends to queues: a reader that falls behind (a slow browser,
a slow network) loses its own fragments up to the next keyframe and never holds the encoder. A
reader that joins asks for an IDR (`wants_idr`), so it does not wait a whole GOP, and so does
one that fell behind once it has read its queue down to half (one that reads nothing asks for
nothing; receivers' requests are granted within a budget: `Outputs.wants_idr`).
"""
from __future__ import annotations

import queue
import threading
from fractions import Fraction

from ..errors import SinkError
from . import fmp4
from .base import Output, StreamInfo

QUEUE_FRAGMENTS = 60  # per reader; a reader further behind skips to the next keyframe
RESUME_ROOM = QUEUE_FRAGMENTS // 2  # a reader behind asks for an IDR with this many still queued
MOVFLAGS = "empty_moov+default_base_moof"  # the init segment only (MseOutput._start)
END = None  # queued to a reader: the stream ended (a new run starts with a new init segment)


class Reader:
    """One browser's view of a `LiveFeed`: `get()` blocks for the next chunk of MP4 bytes
    (None: the stream ended)."""

    def __init__(self, init: bytes):
        self.queue: queue.Queue = queue.Queue(QUEUE_FRAGMENTS)
        self.queue.put(init)
        self.waiting_for_key = True
        self.behind = False  # it fell behind and has not asked for a keyframe since
        self.dropped = 0  # fragments this reader lost by falling behind

    def offer(self, fragment: bytes | None, key: bool) -> bool:
        """Queue a fragment; True when this reader, behind, has caught up to RESUME_ROOM and
        asks for an IDR (once each time it falls behind) rather than wait for the next
        keyframe, up to a whole GOP away."""
        if fragment is END:
            self._put_end()
            return False
        if self.waiting_for_key and not key:
            self.dropped += 1
            if self.behind and self.queue.qsize() <= RESUME_ROOM:
                self.behind = False  # asked once
                return True
            return False
        try:
            self.queue.put_nowait(fragment)
            self.waiting_for_key = self.behind = False
        except queue.Full:  # behind: what it has plays, then it resumes at a keyframe
            self.waiting_for_key = self.behind = True
            self.dropped += 1
        return False

    def _put_end(self) -> None:
        while True:
            try:
                self.queue.put_nowait(END)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    pass

    def get(self, timeout: float) -> bytes | None:
        """The next chunk; raises queue.Empty after `timeout` seconds without one."""
        return self.queue.get(timeout=timeout)


class LiveFeed:
    """A camera's live fMP4 stream, for any number of readers (see the module's docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readers: set[Reader] = set()
        self._init: bytes | None = None
        self.mime = ""  # 'video/mp4; codecs="avc1.PPCCLL"' once a run started
        self._idr_wanted = False  # a reader came or caught up since the last frame
        self.media_offset = 0.0  # the picture's media time minus stream time, seconds (fmp4.py)

    def subscribe(self) -> Reader | None:
        """A new reader, or None while no stream runs."""
        with self._lock:
            if self._init is None:
                return None
            reader = Reader(self._init)
            self._readers.add(reader)
            self._idr_wanted = True
            return reader

    def running(self) -> bool:
        """Whether a stream runs (a reader that subscribes now gets one)."""
        with self._lock:
            return self._init is not None

    def unsubscribe(self, reader: Reader) -> None:
        with self._lock:
            self._readers.discard(reader)

    def clients(self) -> int:
        with self._lock:
            return len(self._readers)

    def take_idr_request(self) -> bool:
        """Whether a reader asked for an IDR since the last call (a new one, or one that
        caught up after falling behind)."""
        with self._lock:
            wanted, self._idr_wanted = self._idr_wanted, False
            return wanted

    def start(self, init: bytes, mime: str) -> None:
        self.mime = mime
        with self._lock:
            self._init = init

    def publish(self, fragment: bytes, key: bool, media_offset: float = 0.0) -> None:
        self.media_offset = media_offset
        with self._lock:
            readers = list(self._readers)
        asks = [reader.offer(fragment, key) for reader in readers]
        if any(asks):
            with self._lock:
                self._idr_wanted = True

    def end(self) -> None:
        """The run ended: readers get END (the page reconnects for the next run's stream)."""
        with self._lock:
            readers, self._readers, self._init = list(self._readers), set(), None
        for reader in readers:
            reader.offer(END, True)


class MseOutput(Output):
    """Each run's packets as fMP4 fragments into `feed` (see the module's docstring)."""

    global_headers = True  # the parameter sets go into the init segment (avcC, hvcC)
    asks_for_receivers = True  # a page joined

    def __init__(self, feed: LiveFeed, uri: str = "web page"):
        self.feed, self.uri = feed, uri
        self._info: StreamInfo | None = None
        self._track: tuple[int, int] | None = None  # (track_ID, timescale) of the init segment
        self._timeline: fmp4.Timeline | None = None
        self.frames = 0
        self._closed = False

    def open(self, info: StreamInfo) -> None:
        if info.codec not in ("h264", "hevc"):
            raise SinkError(f"the web page's live picture takes H.264 or HEVC, the encoder "
                            f"writes {info.codec!r}: turn http.live off")
        self._info = info
        interval = 1 / info.fps if info.fps else Fraction(1, 30)
        self._timeline = fmp4.Timeline(max(1, round(interval / info.time_base)))

    def wants_idr(self, pts: int | None) -> bool:
        if pts is not None:  # every frame, in input order: where the pauses are
            self._timeline.frame(int(pts))
        return self.feed.take_idr_request()

    def left_out(self, pts: int | None) -> None:
        if pts is not None:
            self._timeline.left_out()

    def write(self, packet) -> None:
        from .nal import has_parameter_sets

        info, data, key = self._info, bytes(packet.data), bool(packet.keyframe)
        if self.frames == 0:
            if not key:
                return  # a fragment stream starts at a keyframe
            if not has_parameter_sets(data):
                data = info.headers + data
            self._start(data, packet)
        track_id, timescale = self._track
        # placed whether or not anyone watches
        start, duration, shown = self._timeline.place(int(packet.dts), int(packet.pts))
        self.frames += 1
        if not self.feed.clients():
            return  # a reader that joins waits for a keyframe: nothing to write for nobody

        def media(ticks: int) -> int:
            return fmp4.ticks(ticks, info.time_base, timescale)

        self.feed.publish(fmp4.fragment(self.frames, track_id, media(start), media(duration),
                                        media(start + shown) - media(start), key,
                                        fmp4.length_prefixed(data)),
                          key, float(self._timeline.offset * info.time_base))

    def _start(self, first: bytes, packet) -> None:
        """The init segment (ftyp+moov, the parameter sets in its avcC or hvcC) from FFmpeg's
        mov muxer given the first packet (`first`: its bytes with the parameter sets); the
        fragments are written here (fmp4.py)."""
        import av

        from . import mux
        from .stream import Collect, video_packet

        info, sink = self._info, Collect()
        container = av.open(sink, mode="w", format="mp4", options={"movflags": MOVFLAGS})
        stream = mux.add_stream(container, info.codec, info.fps, info.width, info.height,
                                info.time_base, True)
        if stream is None:  # PyAV 17 (mux.py)
            stream = mux.stream_from_first_packet(container, info.codec, first, info.width,
                                                  info.height, info.time_base)
        container.mux(video_packet(stream, info, first, packet, True))
        container.close()
        data = sink.take()
        moov = next((end for kind, _, end in fmp4.boxes(data) if kind == "moov"), None)
        if moov is None:
            raise SinkError("the web page's live picture: FFmpeg's mov muxer wrote no moov box")
        init = data[:moov] if info.codec == "h264" else fmp4.as_hvc1(data[:moov])
        self._track = fmp4.track_of(init)
        self.feed.start(init, f'video/mp4; codecs="{fmp4.codecs(init)}"')

    def stats(self) -> dict:
        state = "closed" if self._closed else "open" if self.frames else "starting"
        return {"uri": self.uri, "state": state, "clients": self.feed.clients()}

    def close(self) -> None:
        self._closed = True
        self.feed.end()
