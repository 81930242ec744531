"""The bit rate follows the link by itself (`encoder.follow_link`): from what an output learns
of its link (`values.LinkReport`: SRT's acknowledgements, about once a second; the RTSP
server's clients' RTCP receiver reports, each 1.5-5 s, where a packet lost stands for one SRT
sends again), the rate the encoder is given, never above `encoder.bitrate`.

A link narrower than the stream shows at the sender as packets sent again while the round trip
is long: the link's buffer filled (the round trip grew) and dropped what it could not hold
(the receiver asked for those again). A burst the buffer cannot hold (an IDR) does the same,
and its resends, queued behind it, often come too late for SRT's latency: the picture breaks
until the next IDR. A radio's own loss is sent again without a queue, and lowering the rate
would not help it. So the follower judges a window of WINDOW reports: a report that shows
resends with a queue, a queue in every report, more than CONGESTED of the window's packets
sent again, or packets given up as too late lower the rate to DECREASE of about what got
through (at least MAX_DECREASE of the rate); a window with next to nothing sent again and no
queue raises it by INCREASE, back up to `encoder.bitrate`. A peer that acknowledges nothing
is not judged (gone or cut off: a lower rate would not reach it either). After each change
the window starts again, and after a decrease the next SETTLE reports are left out: the link's
buffer drains and the encoder's own (a second) empties at the old rate. The reports are counted,
not timed: the same reports give the same rates.
"""
from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass

from .encoders.config import FollowLinkConfig
from .values import LinkReport

log = logging.getLogger(__name__)

WINDOW = 2  # reports judged together (about 2 s): an IDR every 2 s falls in one
SETTLE = 2  # reports left out after a decrease: the link drains, the encoder conforms
CONGESTED = 0.15  # share of the window's packets sent again: resends crowd the link
CLEAN = 0.03  # at most this share sent again (a radio's own loss), without a queue, is clean
QUEUE_MS = 50.0  # a round trip this much above the least seen: the link's buffer fills
BASE_REPORTS = 30  # the least round trip is the least of this many reports
DECREASE = 0.85  # a congested window lowers the rate to this share of what got through
MAX_DECREASE = 0.3  # ... and to at least this share (an overshoot down costs less than up)
INCREASE = 1.15  # a clean window raises it by this factor


@dataclass(frozen=True)
class _Delta:
    sent: int
    resent: int
    dropped: int
    rtt_ms: float


class LinkFollower:
    """`update(reports)` before each frame: the rate to give the encoder when it changes, else
    None. `retarget(bitrate)`: `encoder.bitrate` changed (a ceiling; a lower one holds at
    once). `start`: the rate it starts at, between `min_bitrate` and the ceiling (serve: the
    rate the camera's last run reached on the same link, its outputs kept open); None: the
    ceiling."""

    def __init__(self, cfg: FollowLinkConfig, target: int, start: int | None = None):
        self.cfg, self.target = cfg, target
        self.bitrate = min(target, max(cfg.min_bitrate, start)) if start else target
        self.lowest = self.bitrate
        self.decreases = self.increases = 0
        self.reports = 0  # reports judged: new ones with packets sent to a peer heard
        self._last: dict[int, LinkReport] = {}  # per output (its place in the run)
        self._window: deque[_Delta] = deque(maxlen=WINDOW)
        self._rtts: deque[float] = deque(maxlen=BASE_REPORTS)
        self._settle = 0  # reports still to leave out after a decrease

    def retarget(self, target: int) -> None:
        self.target = target
        self.bitrate = min(self.bitrate, target)

    def update(self, reports: list[LinkReport]) -> int | None:
        delta = self._delta(reports)
        if delta is None:
            return None
        self.reports += 1
        self._rtts.append(delta.rtt_ms)
        if self._settle:
            self._settle -= 1
            return None
        self._window.append(delta)
        if len(self._window) < WINDOW:
            return None
        queue_at = min(self._rtts) + QUEUE_MS
        queued = [d.rtt_ms > queue_at for d in self._window]
        # sent again while the link's buffer was full: the link dropped what it could not hold
        overflowed = [q and d.resent > CLEAN * d.sent for q, d in zip(queued, self._window)]
        sent = sum(d.sent for d in self._window)
        resent = sum(d.resent for d in self._window) / sent if sent else 0.0
        if any(overflowed) or all(queued) or resent > CONGESTED or \
                any(d.dropped for d in self._window):
            # what got through, about (each packet sent again stands for one the link lost
            # and one more it carried again), less a margin: the link carries MPEG-TS and
            # SRT's headers too, some 10 % over the encoder's rate
            dropped = sum(d.dropped for d in self._window)
            return self._set(max(self.cfg.min_bitrate, round(
                self.bitrate * max(MAX_DECREASE, DECREASE * (1 - 2 * resent)))),
                             f"the link is narrower (sent again {resent:.0%}, given up "
                             f"{dropped}, round trip {delta.rtt_ms:.0f} ms)")
        if resent <= CLEAN and not any(queued) and self.bitrate < self.target:
            return self._set(min(self.target, round(self.bitrate * INCREASE)),
                             "the link carries more")
        return None

    def _delta(self, reports: list[LinkReport]) -> _Delta | None:
        """The reports new since the last call, added up (the worst round trip); None when
        none is new or nobody is heard. A peer that sent no acknowledgement while packets went
        to it is not heard: it is gone (SRT waits 5 s before it says so) or its link is cut,
        and what the sender gives up meanwhile says nothing of how wide the link is. The sender
        leaves such a peer out of its counts (`silent`), the others are judged; when no peer of
        an output is heard, the window before is not judged with the reports after it, like
        one before a peer that left. An output's first report that is not its first
        (`seq` > 1: serve keeps a camera's outputs open across its runs, each run with a
        follower of its own) is a baseline: its counts are the output's past."""
        news = [(i, r) for i, r in enumerate(reports)
                if i not in self._last or self._last[i].seq != r.seq]
        if not news:
            return None
        sent = resent = dropped = 0
        unheard = set()
        for i, r in news:
            last = self._last.get(i)
            self._last[i] = r
            if last is None and r.seq > 1:  # reported before this follower ran (serve keeps
                continue  # a camera's outputs open across its runs): its counts from here on
            if last is None or r.sent < last.sent:  # its first, or a new sender's: from 0
                last = LinkReport(0, 0, 0.0, 0, 0, 0)
            if r.peers and r.silent >= r.peers:
                unheard.add(i)
            elif r.peers:
                sent, resent = sent + r.sent - last.sent, resent + max(0, r.resent - last.resent)
                dropped += max(0, r.dropped - last.dropped)
        if unheard or (reports and not any(r.peers for r in reports)):
            self._window.clear()
        rtts = [r.rtt_ms for i, r in enumerate(reports) if r.peers and i not in unheard]
        if not rtts or not sent:
            return None
        return _Delta(sent, resent, dropped, max(rtts))

    def _set(self, bitrate: int, why: str) -> int | None:
        if bitrate == self.bitrate:
            return None
        lower = bitrate < self.bitrate
        self._window.clear()  # the next change is judged on reports of the new rate
        self._settle = SETTLE if lower else 0
        log.info("%s: bit rate %.1f -> %.1f kbit/s", why, self.bitrate / 1e3, bitrate / 1e3)
        self.bitrate, self.lowest = bitrate, min(self.lowest, bitrate)
        self.decreases += lower
        self.increases += not lower
        return bitrate

    def stats(self) -> dict:
        return {"bitrate": self.bitrate, "target": self.target, "lowest": self.lowest,
                "decreases": self.decreases, "increases": self.increases,
                "reports": self.reports}


def merge_stats(before: dict | None, run: dict | None) -> dict | None:
    """Two followers' `stats` as one, `run`'s after `before`'s (serve: a camera's runs, each
    with a follower of its own): its rate and ceiling now, the lowest of both, the changes
    and reports of both added up."""
    if before is None or run is None:
        return run if before is None else before
    return {**run, "lowest": min(before["lowest"], run["lowest"]),
            **{k: before[k] + run[k] for k in ("decreases", "increases", "reports")}}
