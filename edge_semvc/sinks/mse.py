"""The browser's live picture: the encoder's own H.264 packets muxed to fragmented MP4 (one
fragment per frame) for Media Source Extensions, fanned out to the page's readers.

Nothing is re-encoded: `MseOutput` is one more `Output` of the camera's encoder, muxing each
access unit with PyAV (`mux.py`: a stream without a codec context) into an in-memory buffer that
is cut into the init segment (ftyp+moov) and one moof+mdat per frame. FFmpeg's mov muxer writes
a frame's fragment when the next frame comes (`frag_every_frame`), so the page sees a frame one
frame interval after it was encoded.

`LiveFeed` lives as long as the camera (outputs are made anew for every run): each reader gets
the latest init segment, then fragments from the next keyframe on, through its own bounded
queue. The encoder's thread only appends to queues: a reader that falls behind (a slow browser,
a slow network) loses its own fragments up to the next keyframe and never holds the encoder. A
reader that joins asks for an IDR (`wants_idr`), so it does not wait a whole GOP.
"""
from __future__ import annotations

import io
import queue
import threading

from ..errors import SinkError
from .base import Output, StreamInfo

QUEUE_FRAGMENTS = 60  # per reader; a reader further behind skips to the next keyframe
MOVFLAGS = "empty_moov+default_base_moof+frag_every_frame+omit_tfhd_offset"
END = None  # queued to a reader: the stream ended (a new run starts with a new init segment)


class Reader:
    """One browser's view of a `LiveFeed`: `get()` blocks for the next chunk of MP4 bytes
    (None: the stream ended)."""

    def __init__(self, init: bytes):
        self.queue: queue.Queue = queue.Queue(QUEUE_FRAGMENTS)
        self.queue.put(init)
        self.waiting_for_key = True
        self.dropped = 0  # fragments this reader lost by falling behind

    def offer(self, fragment: bytes | None, key: bool) -> None:
        if fragment is END:
            self._put_end()
            return
        if self.waiting_for_key and not key:
            self.dropped += 1
            return
        try:
            self.queue.put_nowait(fragment)
            self.waiting_for_key = False
        except queue.Full:  # behind: what it has plays, then it resumes at a keyframe
            self.waiting_for_key = True
            self.dropped += 1

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
        self._joined = False  # a reader came since the last frame: ask for an IDR

    def subscribe(self) -> Reader | None:
        """A new reader, or None while no stream runs."""
        with self._lock:
            if self._init is None:
                return None
            reader = Reader(self._init)
            self._readers.add(reader)
            self._joined = True
            return reader

    def unsubscribe(self, reader: Reader) -> None:
        with self._lock:
            self._readers.discard(reader)

    def clients(self) -> int:
        with self._lock:
            return len(self._readers)

    def take_joined(self) -> bool:
        with self._lock:
            joined, self._joined = self._joined, False
            return joined

    def start(self, init: bytes, mime: str) -> None:
        self.mime = mime
        with self._lock:
            self._init = init

    def publish(self, fragment: bytes, key: bool) -> None:
        with self._lock:
            readers = list(self._readers)
        for reader in readers:
            reader.offer(fragment, key)

    def end(self) -> None:
        """The run ended: readers get END (the page reconnects for the next run's stream)."""
        with self._lock:
            readers, self._readers, self._init = list(self._readers), set(), None
        for reader in readers:
            reader.offer(END, True)


class MseOutput(Output):
    """Muxes one run's packets to fMP4 fragments into `feed` (see the module's docstring)."""

    global_headers = True  # the parameter sets go into the init segment (avcC)

    def __init__(self, feed: LiveFeed, uri: str = "web page"):
        self.feed, self.uri = feed, uri
        self._buffer = _Sink()
        self._container = None
        self._stream = None
        self._keys: list[bool] = []  # keyframe flag of each packet muxed, not yet cut out
        self._started = False
        self._info: StreamInfo | None = None
        self.frames = 0

    def open(self, info: StreamInfo) -> None:
        import av

        from . import mux

        if info.codec != "h264":
            raise SinkError(f"the web page's live picture needs H.264 (browsers' MSE), the "
                            f"encoder writes {info.codec.upper()}: set encoder.codec: h264 or "
                            "turn http.live off")
        self._info = info
        self._container = av.open(self._buffer, mode="w", format="mp4",
                                  options={"movflags": MOVFLAGS, "flush_packets": "1"})
        self._stream = mux.add_stream(self._container, "h264", info.fps, info.width, info.height,
                                      info.time_base, True)

    def wants_idr(self, pts: int | None) -> bool:
        return self.feed.take_joined()

    def write(self, packet) -> None:
        import av

        from . import mux
        from .file import has_parameter_sets

        info = self._info
        data = bytes(packet.data)
        if self.frames == 0:
            if not packet.keyframe:
                return  # a fragment stream starts at a keyframe
            if not has_parameter_sets(data):
                data = info.headers + data
            if self._stream is None:  # PyAV 17 (mux.py)
                self._stream = mux.stream_from_first_packet(self._container, "h264", data,
                                                            info.width, info.height,
                                                            info.time_base)
        pkt = av.Packet(data)
        pkt.stream, pkt.time_base = self._stream, info.time_base
        pkt.pts, pkt.dts, pkt.is_keyframe = int(packet.pts), int(packet.dts), bool(packet.keyframe)
        self._keys.append(bool(packet.keyframe))
        self._container.mux(pkt)
        self.frames += 1
        self._cut()

    def _cut(self) -> None:
        """Hand the complete boxes written so far to the feed: ftyp+moov as the init segment,
        each moof+mdat as one fragment."""
        data = self._buffer.data.getvalue()
        done = 0
        boxes = list(_boxes(data))
        if not self._started:
            types = [b[0] for b in boxes]
            if "moov" not in types:
                return
            end = boxes[types.index("moov")][2]
            self.feed.start(data[:end], _mime(data[:end]))
            self._started, done = True, end
            boxes = [b for b in boxes if b[1] >= end]
        i = 0
        while i + 1 < len(boxes):
            if boxes[i][0] == "moof" and boxes[i + 1][0] == "mdat":
                key = self._keys.pop(0) if self._keys else False
                self.feed.publish(data[boxes[i][1]:boxes[i + 1][2]], key)
                done = boxes[i + 1][2]
                i += 2
            else:
                done = boxes[i][2]
                i += 1
        if done:
            rest = data[done:]
            self._buffer.data = io.BytesIO()
            self._buffer.data.write(rest)

    def stats(self) -> dict:
        return {"uri": self.uri, "state": "open" if self._started else "starting",
                "clients": self.feed.clients()}

    def close(self) -> None:
        container, self._container = self._container, None
        if container is not None:
            try:
                if self.frames:
                    container.close()  # writes the last frame's fragment
                    self._cut()
            except Exception:  # noqa: BLE001 - a reader's page must never fail a run
                pass
        self.feed.end()


class _Sink:
    """Where the muxer writes: append only (no seek, so FFmpeg never goes back over what was
    already handed out)."""

    def __init__(self) -> None:
        self.data = io.BytesIO()

    def write(self, chunk) -> int:
        return self.data.write(chunk)


def _boxes(data: bytes):
    """(type, start, end) of each complete top-level MP4 box in `data`."""
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8].decode("latin-1")
        if size == 1 and pos + 16 <= len(data):
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        if size < 8 or pos + size > len(data):
            return
        yield kind, pos, pos + size
        pos += size


def _mime(init: bytes) -> str:
    """The MSE type of an H.264 init segment: avc1.PPCCLL from its avcC box."""
    at = init.find(b"avcC")
    if at < 0 or at + 8 > len(init):
        return 'video/mp4; codecs="avc1.42E01E"'
    profile, compat, level = init[at + 5], init[at + 6], init[at + 7]
    return f'video/mp4; codecs="avc1.{profile:02X}{compat:02X}{level:02X}"'

