"""A narrow, lossy link between the built-in RTSP server and its clients on loopback: an RTSP
proxy that puts a relay in the path of RTP over UDP (the server sends to the address and the
`client_port` of a client's SETUP, which the proxy points at relay ports of its own).

    python -m edge_semvc.bench.rtsp_link CLIP [--receiver ffmpeg|gst|gst-tcp] [--bitrate 1.5M]
        [--capacity 700k] [--narrow-at 10] [--seconds 40]

measures how `encoder.follow_link` follows one viewer's link from its RTCP receiver reports:
the clip paced as a camera into the built-in RTSP server (plain x264, CBR, zerolatency), one
real viewer through the link, which narrows to `capacity` at `narrow-at` seconds; each rate
change is printed with its time after the narrowing, then the follower's statistics. A clip
shorter than `seconds` is looped (FFmpeg's -stream_loop, into a Matroska copy).
"""
from __future__ import annotations

import argparse
import heapq
import json
import re
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .lossy_link import BurstLoss, bind_udp, port_pair

CLIENT_PORT = re.compile(rb"client_port=(\d+)-(\d+)")


class RtspLink(threading.Thread):
    """Listens on 127.0.0.1:`port` and relays each RTSP connection to the server at
    127.0.0.1:`server_port` as it is, but for a SETUP's `client_port=A-B` (RTP over UDP), which
    becomes a pair of relay ports (and A-B again in the reply). What the server sends to the
    relay, its RTP and its RTCP sender reports, goes on to the client's ports A and B through
    the link: no faster than `capacity` bits/s (0: no limit), queued up to `queue_s` of waiting
    (a radio's buffer), what would wait longer lost (`overflowed`), and the RTP packets through
    `loss` too (`lost`). What the client sends back (its receiver reports) goes to the server
    straight, as the reply's `server_port` says. What the server sends on a connection (its
    replies, RTP over TCP) goes through the link too, queued without a limit (TCP loses
    nothing: its queue grows)."""

    def __init__(self, server_port: int, capacity: float = 0.0, queue_s: float = 0.25,
                 loss: BurstLoss | None = None):
        super().__init__(daemon=True)
        self.server = ("127.0.0.1", server_port)
        self.capacity, self.queue_s, self.loss = capacity, queue_s, loss or BurstLoss(0.0)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.packets = self.lost = self.overflowed = 0
        self._peer: dict[socket.socket, socket.socket] = {}  # each TCP side -> the other
        self._to_server: set[socket.socket] = set()  # the server's side of each connection
        self._relays: dict[socket.socket, tuple[tuple[str, int], bool]] = {}  # -> (to, rtp)
        self._ports: dict[bytes, bytes] = {}  # relay ports -> the client's, as in Transport
        self._queue: list[tuple[float, int, socket.socket, bytes, tuple]] = []  # a heap
        self._free_at, self._n = 0.0, 0
        self._done = threading.Event()

    def run(self) -> None:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        while not self._done.is_set():
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _, _, sock, data, to = heapq.heappop(self._queue)
                try:
                    if to is None:  # the server's side of a connection, to its client
                        sock.sendall(data)
                    else:
                        sock.sendto(data, to)
                except OSError:  # that client went
                    pass
            wait = min(0.05, self._queue[0][0] - now) if self._queue else 0.05
            ready, _, _ = select.select([self.listener, *self._peer, *self._relays], [], [],
                                        max(wait, 0.0))
            for s in ready:
                if s is self.listener:
                    self._accept()
                elif s in self._relays:
                    self._relay(out, s)
                else:
                    self._tcp(s)
        out.close()
        for s in [self.listener, *self._peer, *self._relays]:
            s.close()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        try:
            server = socket.create_connection(self.server)
        except OSError:  # the server is not up (yet): the client's connection fails
            client.close()
            return
        self._peer.update({client: server, server: client})
        self._to_server.add(server)

    def _tcp(self, s: socket.socket) -> None:
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        other = self._peer.get(s)
        if not data or other is None:
            for x in (s, other):
                if x is not None:
                    self._peer.pop(x, None)
                    self._to_server.discard(x)
                    x.close()
            return
        if s in self._to_server:  # a reply: the client's own ports again
            data = CLIENT_PORT.sub(lambda m: self._ports.get(m.group(0), m.group(0)), data)
            self._n += 1  # through the link: RTP over TCP too, queued as long as it takes
            heapq.heappush(self._queue, (self._leaves(len(data), tcp=True), self._n, other,
                                         data, None))
        else:
            other.sendall(CLIENT_PORT.sub(lambda m: self._setup(s, m), data))

    def _setup(self, client: socket.socket, m: re.Match) -> bytes:
        """A relay pair for the client's RTP and RTCP ports in a SETUP."""
        port, host = port_pair(), client.getpeername()[0]
        for i, sock in enumerate(bind_udp(port + n) for n in (0, 1)):
            self._relays[sock] = ((host, int(m.group(1 + i))), i == 0)
        ours = b"client_port=%d-%d" % (port, port + 1)
        self._ports[ours] = m.group(0)
        return ours

    def _relay(self, out: socket.socket, s: socket.socket) -> None:
        data = s.recv(65536)
        to, rtp = self._relays[s]
        if rtp:
            self.packets += 1
            if self.loss.lost():
                self.lost += 1
                return
        leaves = self._leaves(len(data))
        if leaves is not None:
            self._n += 1
            heapq.heappush(self._queue, (leaves, self._n, out, data, to))

    def _leaves(self, size: int, tcp: bool = False) -> float | None:
        """When a datagram (or what came on a TCP connection) leaves the narrow link, or
        None: its queue is full (TCP's waits)."""
        now = time.monotonic()
        if not self.capacity:
            return now
        start = max(now, self._free_at)
        if start - now > self.queue_s and not tcp:
            self.overflowed += 1
            return None
        self._free_at = start + size * 8 / self.capacity
        return self._free_at

    def stop(self) -> None:
        self._done.set()
        self.join(5)


RECEIVERS = {  # a viewer of URL, its RTP over UDP (FFmpeg, GStreamer) or TCP (GStreamer)
    "ffmpeg": ["ffmpeg", "-nostdin", "-v", "quiet", "-rtsp_transport", "udp", "-i", "URL",
               "-f", "null", "-"],
    "gst": ["gst-launch-1.0", "-q", "rtspsrc", "location=URL", "protocols=udp", "!",
            "fakesink"],
    "gst-tcp": ["gst-launch-1.0", "-q", "rtspsrc", "location=URL", "protocols=tcp", "!",
                "fakesink"],
}
CHANGE = re.compile(r"bit rate ([\d.]+) -> ([\d.]+) kbit/s")


def react(clip: str, receiver: str, bitrate: str, capacity: float, narrow_at: float,
          seconds: float) -> dict:
    """One run (module docstring): the rate changes [(s after the narrowing, kbit/s)], the
    follower's statistics and the link's counts (`overflowed_after_first_cut`: those lost in
    its buffer after the follower's first change, not those before it reacted)."""
    import av

    from ..options import parse_bitrate

    with av.open(clip) as c:
        fps = float(c.streams.video[0].average_rate or 25)
    frames = round(seconds * fps)
    with tempfile.TemporaryDirectory() as tmp:
        clip = _looped(clip, frames, Path(tmp) / "looped.mkv")
        server_port = _free_tcp_port()
        link = RtspLink(server_port)
        link.start()
        stats = Path(tmp) / "stats.json"
        encoder = subprocess.Popen(
            [sys.executable, "-m", "edge_semvc", "encode", clip,
             f"rtsp://127.0.0.1:{server_port}/live", "--realtime", "--no-map", "--rc", "cbr",
             "--bitrate", str(parse_bitrate(bitrate)), "--tune", "zerolatency",
             "--frames", str(frames), "--progress", "off", "--stats-json",
             str(stats), "--set", "encoder.follow_link.enabled=true"],
            stderr=subprocess.PIPE, text=True)
        while encoder.poll() is None:  # the server listens
            try:
                socket.create_connection(("127.0.0.1", server_port), 0.5).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"rtsp://127.0.0.1:{link.port}/live"
        viewer = subprocess.Popen([a.replace("URL", url) for a in RECEIVERS[receiver]])
        start = time.monotonic()

        def narrow() -> None:
            time.sleep(narrow_at)
            link.capacity = capacity

        threading.Thread(target=narrow, daemon=True).start()
        changes, first_cut = [], None  # the link's overflowed packets at the first change
        for line in encoder.stderr:
            m = CHANGE.search(line)
            if m:
                first_cut = link.overflowed if first_cut is None else first_cut
                changes.append((round(time.monotonic() - start - narrow_at, 1),
                                float(m.group(2))))
                print(f"{changes[-1][0]:+.1f} s: {m.group(1)} -> {m.group(2)} kbit/s",
                      flush=True)
        encoder.wait()
        viewer.kill()
        viewer.wait()
        link.stop()
        follow = json.loads(stats.read_text())["follow_link"] if stats.exists() else None
    return {"receiver": receiver, "changes": changes, "follow_link": follow,
            "relayed": link.packets, "overflowed": link.overflowed, "lost": link.lost,
            "overflowed_after_first_cut": None if first_cut is None else
            link.overflowed - first_cut}


def _looped(clip: str, frames: int, out: Path) -> str:
    """`clip`, or where it has fewer than `frames` video frames, a copy of it looped to that
    many (else the run ended with the clip: the 15 s street clip, narrowed at 10 s, left the
    follower 5 s and often showed no change at all). ValueError when it cannot be looped (a
    raw stream FFmpeg cannot seek)."""
    import av

    def count(path: str) -> int:
        with av.open(path) as c:
            return sum(1 for p in c.demux(video=0) if p.size)

    have = count(clip)
    if have >= frames:
        return clip
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-stream_loop", "-1", "-i", clip,
                    "-map", "0:v:0", "-c", "copy", "-frames:v", str(frames), str(out)],
                   check=True)
    if count(str(out)) < frames:
        raise ValueError(f"{clip} has {have} frames, fewer than --seconds asks for ({frames}), "
                         "and FFmpeg cannot loop it: give fewer --seconds or a longer clip")
    return str(out)


def _free_tcp_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    from ..options import parse_bitrate

    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.rtsp_link", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("clip")
    p.add_argument("--receiver", choices=list(RECEIVERS), default="ffmpeg")
    p.add_argument("--bitrate", default="1.5M", help="the CBR target and ceiling")
    p.add_argument("--capacity", type=parse_bitrate, default=700_000,
                   help="the link's rate after the narrowing")
    p.add_argument("--narrow-at", type=float, default=10.0, help="seconds after the viewer")
    p.add_argument("--seconds", type=float, default=40.0, help="seconds of video sent")
    a = p.parse_args(argv)
    try:
        result = react(a.clip, a.receiver, a.bitrate, float(a.capacity), a.narrow_at, a.seconds)
    except ValueError as e:
        print(f"rtsp_link: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
