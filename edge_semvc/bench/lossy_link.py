"""The lossy link of the loss benchmark (bench/loss.py): a seeded burst-loss model, and the
relays that put it between a sender and its receivers on loopback: `LossyRelay` for RTP and
MPEG-TS over UDP (one way, a clean copy to a second receiver), `SrtProxy` for SRT (both ways,
with a round trip).
"""
from __future__ import annotations

import heapq
import multiprocessing
import select
import socket
import threading
import time
from typing import NamedTuple

import numpy as np

from ..errors import EdgeSemvcError

# the SRT proxy's process starts as a copy of this one: its sockets and loss model as they are
_FORK = multiprocessing.get_context("fork")


class LossError(EdgeSemvcError, ValueError):
    """A loss model or a measurement that cannot stand: the value and why."""


class Link(NamedTuple):
    """The SRT proxy's link beside its loss: a round trip, and a capacity that changes
    (`SrtProxy`'s `capacity`, ((from_s, bits_per_s), ...); empty: none) with a buffer of
    `queue_ms`."""

    rtt_ms: float = 0.0
    capacity: tuple[tuple[float, float], ...] = ()
    queue_ms: float = 250.0


def parse_capacity(text: str) -> tuple[tuple[float, float], ...]:
    """'2.5M@0,800k@10,1.5M' -> ((0, 2.5e6), (10, 8e5), (20, 1.5e6)): each rate from a time in
    seconds (without @: when the one before has lasted as long as the one before it)."""
    steps: list[tuple[float, float]] = []
    for part in filter(None, text.split(",")):
        rate, _, at = part.partition("@")
        scale = {"k": 1e3, "M": 1e6}.get(rate[-1:], 1.0)
        try:
            bps = float(rate[:-1] if scale != 1.0 else rate) * scale
            start = float(at) if at else (2 * steps[-1][0] - steps[-2][0] if len(steps) > 1
                                          else 0.0 if not steps else None)
        except (ValueError, IndexError):
            start = bps = None
        if start is None or bps is None or bps <= 0 or (steps and start <= steps[-1][0]):
            raise LossError(f"capacity {part!r} of {text!r}: RATE[@SECONDS], rates positive, "
                            "times rising from 0")
        steps.append((start, bps))
    return tuple(steps)


class BurstLoss:
    """Gilbert-Elliott loss: every packet in the bad state is lost. `rate`: the long-run share
    lost; `burst`: the mean number lost in a row (the bad state's mean stay). Seeded: one
    draw per packet, so the same packets go on every run."""

    def __init__(self, rate: float, burst: float = 1.0, seed: int = 1):
        if not 0.0 <= rate < 0.5:
            raise LossError(f"loss rate {rate!r}: a share in [0, 0.5)")
        if not burst >= 1.0:
            raise LossError(f"loss burst {burst!r}: a mean run of packets, >= 1")
        self.rate, self.burst = rate, burst
        self.leave = 1.0 / burst  # bad -> good
        self.enter = rate * self.leave / (1.0 - rate)  # good -> bad: P(bad) = rate in the long run
        self._rng = np.random.default_rng(seed)
        self._bad = False

    def lost(self) -> bool:
        u = self._rng.random()
        self._bad = u >= self.leave if self._bad else u < self.enter
        return self._bad


def port_pair() -> int:
    """An even UDP port whose successor is free too (RTP and its RTCP)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1] & ~1
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise LossError("no free pair of UDP ports on 127.0.0.1")


def bind_udp(port: int) -> socket.socket:
    """A UDP socket on 127.0.0.1:`port` (0: any) with room for a burst."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("127.0.0.1", port))
    return s


class RtpPackets:
    """What the relay reads of an RTP packet: its sequence number (a gap: lost before the
    relay) and the marker bit that ends a frame."""

    def __init__(self):
        self.frames = 0  # the frame the next packet belongs to
        self._seq: int | None = None

    def read(self, data: bytes) -> tuple[int, int]:
        """(packets missing before this one, the frame it belongs to)."""
        seq = int.from_bytes(data[2:4], "big")
        gaps = 0 if self._seq is None else (seq - self._seq - 1) % 65536
        self._seq, frame = seq, self.frames
        self.frames += bool(data[1] & 0x80)
        return gaps, frame


class TsPackets:
    """What the relay reads of a UDP datagram of MPEG-TS: each stream's continuity counter (a
    gap: lost before the relay, counted modulo 16) and where a video PES starts a frame; a
    datagram belongs to the last frame it starts, else to the one it continues."""

    def __init__(self):
        self.frames = 0
        self._started = False
        self._counters: dict[int, int] = {}

    def read(self, data: bytes) -> tuple[int, int]:
        gaps = 0
        for i in range(0, len(data) - 187, 188):
            ts = data[i:i + 188]
            pid, payload = ((ts[1] & 0x1F) << 8) | ts[2], ts[3] & 0x10
            if ts[0] != 0x47 or pid == 0x1FFF or not payload:
                continue
            counter, last = ts[3] & 0x0F, self._counters.get(pid)
            if last is not None and counter != last:
                gaps += (counter - last - 1) % 16
            self._counters[pid] = counter
            start = 5 + ts[4] if ts[3] & 0x20 else 4  # after the adaptation field
            if ts[1] & 0x40 and ts[start:start + 3] == b"\0\0\1" and \
                    0xE0 <= ts[start + 3] <= 0xEF:  # a video PES begins: a frame
                self.frames += self._started
                self._started = True
        return gaps, self.frames


class LossyRelay(threading.Thread):
    """Between a sender and two receivers: every datagram to `clean_port`, those `loss` keeps
    to `lossy_port`; RTCP (each port + 1) to both, whole. `payload` "rtp" (RtpPackets) or
    "mpegts" (TsPackets, 7 TS packets a datagram) says how frames and gaps are read. The first
    `spare_frames` frames pass whole. `hit`: the frames (counted as sent, from 0) that lost a
    datagram; `gaps`: datagrams missing on the way in, a loss the relay did not make."""

    def __init__(self, loss: BurstLoss, clean_port: int, lossy_port: int, spare_frames: int,
                 payload: str = "rtp"):
        super().__init__(daemon=True)
        self.loss, self.spare_frames = loss, spare_frames
        self.targets = (clean_port, lossy_port)
        self.port = port_pair()
        self._rtp, self._rtcp = (bind_udp(self.port + i) for i in (0, 1))
        self._reader = {"rtp": RtpPackets, "mpegts": TsPackets}[payload]()
        self.packets = self.lost = self.bytes = self.gaps = 0
        self.hit: list[int] = []
        self._done = threading.Event()

    @property
    def frames(self) -> int:
        return self._reader.frames

    def run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            while not self._done.is_set():
                ready, _, _ = select.select([self._rtp, self._rtcp], [], [], 0.05)
                for s in ready:
                    data = s.recv(65536)
                    if s is self._rtcp:
                        for port in self.targets:
                            out.sendto(data, ("127.0.0.1", port + 1))
                    else:
                        self._forward(out, data)
        self._rtp.close()
        self._rtcp.close()

    def _forward(self, out: socket.socket, data: bytes) -> None:
        if len(data) < 12:
            return
        gaps, frame = self._reader.read(data)
        self.gaps += gaps
        self.packets += 1
        self.bytes += len(data)
        out.sendto(data, ("127.0.0.1", self.targets[0]))
        if frame >= self.spare_frames and self.loss.lost():
            self.lost += 1
            if not self.hit or self.hit[-1] != frame:
                self.hit.append(frame)
        else:
            out.sendto(data, ("127.0.0.1", self.targets[1]))

    def stop(self) -> None:
        self._done.set()
        self.join(5)


class SrtProxy(_FORK.Process):
    """Between an SRT caller and its listener (SRT needs both ways): the data packets going
    forward through `loss`, the first `spare` of them whole; control packets and everything
    coming back whole; each packet held `delay_s` each way (a link's round trip is twice
    that). SRT resends what is lost, and its resent packets can be lost again. A process of
    its own, so that the encoder beside it (its GIL) cannot hold back a packet or a resend;
    `packets`, `lost`, `bytes` and `overflowed` are read back from shared memory.

    `capacity`: a narrow link, ((from_s, bits_per_s), ...) from the first packet on: what goes
    forward leaves no faster than that, queued (a radio's buffer) up to `queue_s` of waiting,
    and what would wait longer is lost (`overflowed`, beside `lost`). Empty: no limit."""

    def __init__(self, loss: BurstLoss, target_port: int, spare: int, delay_s: float = 0.0,
                 capacity: tuple[tuple[float, float], ...] = (), queue_s: float = 0.25):
        super().__init__(daemon=True)
        self.loss, self.target, self.spare = loss, ("127.0.0.1", target_port), spare
        self.delay_s, self.capacity, self.queue_s = delay_s, tuple(capacity), queue_s
        self._front, self._back = bind_udp(0), bind_udp(0)
        self.port = self._front.getsockname()[1]
        self._counts = _FORK.RawArray("q", 4)  # packets, lost, bytes, overflowed
        self._peer = None
        self._queue: list[tuple[float, int, socket.socket, bytes, tuple]] = []  # a heap
        self._start: float | None = None  # the first packet's time
        self._free_at = 0.0  # when the narrow link has sent what it holds
        self._done = _FORK.Event()

    packets = property(lambda self: self._counts[0])
    lost = property(lambda self: self._counts[1])
    bytes = property(lambda self: self._counts[2])
    overflowed = property(lambda self: self._counts[3])

    def start(self) -> None:
        super().start()
        self._front.close()  # the child has them
        self._back.close()

    def run(self) -> None:
        n = 0
        while not self._done.is_set():
            now = time.monotonic()
            while self._queue and self._queue[0][0] <= now:
                _, _, sock, data, to = heapq.heappop(self._queue)
                sock.sendto(data, to)
            wait = min(0.05, self._queue[0][0] - now) if self._queue else 0.05
            ready, _, _ = select.select([self._front, self._back], [], [], max(wait, 0.0))
            for s in ready:
                data, addr = s.recvfrom(65536)
                out = self._route(s, data, addr)
                leaves = None if out is None else \
                    self._leaves(len(data)) if s is self._front else time.monotonic()
                if leaves is not None:
                    n += 1
                    heapq.heappush(self._queue, (leaves + self.delay_s, n, *out))
        self._front.close()
        self._back.close()

    def _route(self, s: socket.socket, data: bytes, addr) -> tuple | None:
        if s is self._back:
            return None if self._peer is None else (self._front, data, self._peer)
        self._peer = addr
        if data and not data[0] & 0x80:  # a data packet (the F bit clear)
            counts = self._counts
            counts[0] += 1
            counts[2] += len(data)
            if counts[0] > self.spare and self.loss.lost():
                counts[1] += 1
                return None
        return self._back, data, self.target

    def _leaves(self, size: int) -> float | None:
        """When a packet going forward leaves the narrow link, or None: its queue is full."""
        now = time.monotonic()
        if not self.capacity:
            return now
        self._start = now if self._start is None else self._start
        rate = [bps for at, bps in self.capacity if now - self._start >= at][-1:] or \
            [self.capacity[0][1]]
        start = max(now, self._free_at)
        if start - now > self.queue_s:
            self._counts[3] += 1
            return None
        self._free_at = start + size * 8 / rate[0]
        return self._free_at

    def stop(self) -> None:
        self._done.set()
        self.join(5)
        if self.is_alive():
            self.terminate()
            self.join(5)
