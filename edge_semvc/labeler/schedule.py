"""When each model runs: a budget per frame, and a worker beside the pipeline so that the
frames never wait for a model.

Budget, in the resource's own terms. A file encode: the models may spend `share` of the CPU
time the rest of the process spends (decoding, encoding, analysis; `labeler.cpu_budget`): with
share 0.1, a frame on which x264 and the rest took 12 ms of CPU earns 1.2 ms for the models.
A live run (a camera, `serve`): the frames come at their own rate whatever the encoder costs,
so the models may spend `share` of each frame period of one core (`labeler.live_share`, split
between the cameras by `camera_share`); the period is measured from the frames' timestamps,
never from a clock, and a gap in them (frames dropped before the pipeline) lowers the share
until frames flow again (`Budget._follow_drops`). `intervals()` turns that into an interval per
model by water-filling: models are served cheapest first, each taking its part of what is left,
so cheap models (BlazeFace, ~1 ms) run often and what they leave goes to the expensive
detector, which then runs every k-th frame (k = its cost / its part). A model's part is in
proportion to its weight: 1 (a detector's tile: 1/number of tiles, so that its tiles together
weigh as much as its whole view), halved for every run in a row that found nothing (down to 1/8
of that), back to it when it finds something: a face detector on a road camera leaves its share
to the detector that sees cars.
Costs are measured per run (CPU time of the worker thread) and averaged; the rest of the process
is measured per frame. Both clocks are injectable, so tests count instead of timing.

Worker. In budget mode the models run in one background thread on the frames the budget
picks; the labeler keeps using the last results (carried to the current frame by motion) until
new ones arrive. The first frame and scene cuts wait for their results: carried labels mean
nothing there and an I-frame is referenced by everything after it.

Replay. Which frames the models ran on, and from which frame their results were used, depend
on the CPU clock: two encodes of the same clip differ (by 1-4 BD-rate points in `bench` on a
busy machine). A
file encode records its runs (`Labeler.run_log`, `label_runs` in its statistics); `Replay`
runs them again, the same models on the same frames, each result used from the same frame
(`labeler.replay`; `bench --label-schedule`): every rate point and configuration then sees
the label timing of one real run.
"""
from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
from collections import deque
from typing import Callable

from ..errors import ConfigError, LabelerError

PERIOD_WINDOW = 50  # frame steps over which the live period is the shortest one seen
# Live back-off: a step between timestamps of more than DROP_STEP periods means frames were
# dropped before the pipeline (the box is short of CPU): the models' share falls by BACK_OFF, to
# no less than MIN_SHARE of the configured one, and comes back by RECOVER of it a frame.
DROP_STEP, BACK_OFF, MIN_SHARE, RECOVER = 1.5, 0.7, 1 / 16, 1 / 250
EMA = 0.2  # weight of a new cost sample (costs drift slowly; one slow run should not dominate)
MIN_WEIGHT = 1 / 8  # a model that keeps finding nothing still gets an eighth of a share


def camera_share(share: float, cameras: int, cores: int | None = None) -> float:
    """One camera's share of its frame period: `share` of one core each, as long as the
    cameras' models together take no more than `share` of the cores; beyond that the share
    shrinks with each camera added, so that the encoders keep their time and drop nothing.
    At most one core: the models of a camera run in one thread."""
    cores = cores or len(os.sched_getaffinity(0))
    return min(share * min(1.0, cores / max(cameras, 1)), 1.0)


class Budget:
    """Per-model intervals from measured costs and the budget per frame: a share of the CPU
    the rest of the process uses, or (`live`) of the frame period."""

    def __init__(self, share: float, min_intervals: list[int],
                 clock: Callable[[], float] = time.process_time, live: bool = False):
        self.share, self.live = share, live
        self.configured = share  # `share` falls below it while frames are dropped (live)
        self.backoffs = 0  # steps with dropped frames that lowered it
        self.min_intervals: list[int] = []
        self.costs: list[float | None] = []  # CPU s per run
        self.weights: list[float] = []
        self.base: list[float] = []  # each model's full weight (a tile: a share of its detector's)
        for interval in min_intervals:
            self.add_model(interval)
        self.clock = clock
        self.rest: float | None = None  # CPU s per frame outside the models (EMA)
        # s of video per frame: the shortest recent step between timestamps, so that frames a
        # late pipeline dropped do not lengthen it (more time for the models, more drops)
        self.period: float | None = None
        self._steps: deque[float] = deque(maxlen=PERIOD_WINDOW)
        self._t = None
        self._t_video: float | None = None
        self._spent = 0.0  # model CPU since the last frame

    def add_model(self, min_interval: int, weight: float = 1.0) -> None:
        """One more model (a detector's tile) to schedule, cost not yet known, at full
        `weight`."""
        self.min_intervals.append(min_interval)
        self.costs.append(None)
        self.weights.append(weight)
        self.base.append(weight)

    def add_run(self, model: int, seconds: float) -> None:
        """A run of `model` took `seconds` of CPU."""
        c = self.costs[model]
        self.costs[model] = seconds if c is None else c + EMA * (seconds - c)
        self._spent += seconds

    def found(self, model: int, anything: bool) -> None:
        """What the latest run of `model` contributed to the labels: something or nothing."""
        base = self.base[model]
        self.weights[model] = base if anything else max(self.weights[model] / 2,
                                                        base * MIN_WEIGHT)

    def frame(self, video_s: float | None = None) -> None:
        """One frame went by (at `video_s` seconds of video, when it has a timestamp): measure
        its period (live) or what the rest of the process spent on it."""
        if self.live:
            if video_s is not None and self._t_video is not None and video_s > self._t_video:
                step = video_s - self._t_video
                self._steps.append(step)
                self.period = min(self._steps)
                self._follow_drops(step > DROP_STEP * self.period)
            self._t_video = video_s
            return
        now = self.clock()
        if self._t is not None:
            rest = max(now - self._t - self._spent, 0.0)
            self.rest = rest if self.rest is None else self.rest + EMA * (rest - self.rest)
        self._t, self._spent = now, 0.0

    def _follow_drops(self, dropped: bool) -> None:
        """Live: give way while frames are dropped upstream, take the share back slowly when
        none are (the models run beside the encoder, which must not lose frames to them)."""
        if dropped:
            self.share = max(self.share * BACK_OFF, self.configured * MIN_SHARE)
            self.backoffs += 1
        else:
            self.share = min(self.share + self.configured * RECOVER, self.configured)

    def set_share(self, share: float) -> None:
        """A new configured share (a live change, from the next frame). The reference the
        back-off returns to becomes `share`, and the share now keeps its place below it: a
        back-off under way goes on from the same fraction of the new share (raising it on a
        box that drops frames must not undo the back-off at once), none under way gives
        `share` now."""
        self.share *= share / self.configured
        self.configured = share

    def per_frame(self) -> float:
        """CPU seconds per frame the models may use."""
        return self.share * ((self.period if self.live else self.rest) or 0.0)

    def intervals(self) -> list[int]:
        """Each model's interval in frames (its minimum until its cost is known)."""
        out = list(self.min_intervals)
        known = sorted((c, m) for m, c in enumerate(self.costs) if c is not None)
        left = self.per_frame()
        weight_left = sum(self.weights[m] for _, m in known)
        for cost, m in known:
            part = left * self.weights[m] / weight_left
            k = math.ceil(cost / part) if part > 0 else 1 << 30
            out[m] = max(self.min_intervals[m], k)
            left -= cost / out[m]
            weight_left -= self.weights[m]
        return out


class Worker:
    """Runs jobs (a frame and the models to run on it) in one background thread, one at a
    time; `results()` hands back what finished. `inline=True` runs each job at `submit`
    (deterministic: tests and `cpu_budget: 0`)."""

    def __init__(self, run: Callable, inline: bool = False,
                 thread_clock: Callable[[], float] = time.thread_time):
        self._run, self.inline, self.clock = run, inline, thread_clock
        self._jobs: queue.Queue = queue.Queue(1)
        self._done: queue.Queue = queue.Queue()
        self.busy = False
        self._thread = None
        if not inline:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="labeler-models")
            self._thread.start()

    def submit(self, tag, frame, models: list[int]) -> None:
        """Run `models` on `frame`; results come back with `tag`. Only when not busy."""
        assert not self.busy, "one job at a time"
        self.busy = True
        if self.inline:
            self._do((tag, frame, models))
        else:
            self._jobs.put((tag, frame, models))

    def _do(self, job) -> None:
        tag, frame, models = job
        out = []
        try:
            for m in models:
                t0 = self.clock()
                planes = self._run(m, frame)
                out.append((m, planes, self.clock() - t0))
        except BaseException as e:  # handed to the caller, which raises it
            self._done.put((tag, e))
            return
        self._done.put((tag, out))

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._do(job)

    def results(self, wait: bool = False) -> list:
        """Finished jobs as (tag, [(model, planes, cpu seconds)]); `wait`: block until the
        running job finishes. A model's exception is raised here."""
        out = []
        if wait and self.busy:
            out.append(self._done.get())
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                break
        if out:
            self.busy = False
        for _, r in out:
            if isinstance(r, BaseException):
                raise r
        return out

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout=5)
            self._thread = None


class Replay:
    """A recorded schedule (`Labeler.run_log`): {"models": [names], "frames": n, "runs":
    [{"frame": f, "models": [k...], "arrived": a}, ...]}, checked against the models that
    replay it; `where` names it in errors."""

    def __init__(self, doc, models: list[str], where: str):
        def bad(what: str):
            return ConfigError(f"labeler.replay: {where}: {what}")
        if not isinstance(doc, dict) or not isinstance(doc.get("runs"), list):
            raise bad("not a recorded schedule (a mapping with `models`, `frames` and `runs`, "
                      "as `label_runs` in an encode's statistics)")
        if doc.get("models") != models:
            raise bad(f"recorded with the models {doc.get('models')!r}, not {models!r}")
        frames = doc.get("frames")
        if not _count(frames):
            raise bad(f"frames {frames!r} is not a frame count")
        self.frames, self.where = frames, where
        self._due: dict[int, list[int]] = {}
        self._arrival: dict[int, int] = {}
        for run in doc["runs"]:
            f, a, ks = (run.get(key) if isinstance(run, dict) else None
                        for key in ("frame", "arrived", "models"))
            if not (_count(f) and _count(a) and f <= a < frames and f not in self._due
                    and isinstance(ks, list) and ks and all(_count(k) and k < len(models)
                                                            for k in ks)):
                raise bad(f"run {run!r}: needs frame <= arrived < frames ({frames}), each frame "
                          f"once, and models among 0..{len(models) - 1}")
            self._due[f], self._arrival[f] = ks, a

    @classmethod
    def load(cls, path: str, models: list[str]) -> "Replay":
        try:
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError) as e:
            raise ConfigError(f"labeler.replay: cannot read {path}: {e}") from None
        if isinstance(doc, dict) and "label_runs" in doc:  # an encode's --stats-json
            doc = doc["label_runs"]
        return cls(doc, models, path)

    def due(self, n: int) -> list[int]:
        """The models that ran on frame n (numbered from 0)."""
        if n >= self.frames:
            raise LabelerError(f"labeler.replay: {self.where} covers {self.frames} frames; this "
                               "encode has more (record the schedule on the same frames)")
        return self._due.get(n, [])

    def arrival(self, n: int) -> int:
        """The frame from which the results of the run started on frame n were used."""
        return self._arrival[n]


def _count(v) -> bool:
    return type(v) is int and v >= 0
