"""The Labeler: all models of `labeler.models`, scheduled (schedule.py), carried between their
runs (reuse.py), gated and fused (fuse.py)."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..frame import Frame
from ..values import LabelMap
from .adapters import ADAPTERS, Adapter, SsdAnchorAdapter, _BoxPlanes
from .config import LabelerConfig
from .fuse import fuse, gate, requirement
from .registry import model_specs, prepared_file
from .reuse import PlaneCarrier
from .runtime import open_runtime
from .schedule import Budget, Replay, Worker
from .tiles import Tile, tile_rects


class Labeler:
    """All models of `labeler.models`, scheduled, carried between their runs and fused."""

    def __init__(self, cfg: LabelerConfig, cache_dir: Path, log=print,
                 clock=None, thread_clock=None, live_share: float | None = None,
                 record: bool | None = None):
        """`live_share`: a live run, whose models may use this share of each frame period
        (schedule.camera_share); None: a file encode, on `cfg.cpu_budget`. `record`: keep the
        runs for `schedule()` (None: in a file encode; a live run lasts months)."""
        self.cfg = cfg
        self.models: list[tuple[str, Adapter]] = []
        for spec in model_specs(cfg.models):
            path = prepared_file(spec.description, spec.key, cache_dir)
            runtime = open_runtime(cfg.runtime, path, cfg.threads)
            adapter = ADAPTERS.get(spec.decoder)(spec.description, runtime, cfg, spec.key)
            self.models.append((spec.name, adapter))
        self.classes: list[str] = []
        for _, m in self.models:
            self.classes += [c for c in m.classes if c not in self.classes]
        self.model_names = [name for name, _ in self.models]
        for i, (_, m) in enumerate(self.models):
            if m.requires and m.requires not in self.classes:
                logging.getLogger("edge_semvc").warning(
                    "labeler.models[%d] (%s) requires %r, which no model here labels: its "
                    "regions are used without that check (set its `requires: null` to "
                    "silence this)", i, m.name, m.requires)
                m.requires = None
        self.carrier = PlaneCarrier(cfg.reuse)
        intervals = [m.interval for _, m in self.models]
        if cfg.replay and live_share is not None:
            raise ConfigError("labeler.replay: a recorded schedule replays a file encode, "
                              "not a live input")
        self.replay = Replay.load(cfg.replay, self.model_names) if cfg.replay else None
        share = 0 if self.replay else cfg.cpu_budget if live_share is None else live_share
        self.budget = (Budget(share, intervals, live=live_share is not None,
                              **({"clock": clock} if clock else {})) if share > 0 else None)
        self.whole = len(self.models)  # the models' own views; tiles come after (first frame)
        self.worker = Worker(self._run_model, inline=self.budget is None or not cfg.parallel,
                             **({"thread_clock": thread_clock} if thread_clock else {}))
        self._n = -1  # frames seen
        self._live: list[int | None] = [None] * len(self.models)  # frame of each model's planes
        self._last_run = [-(1 << 30)] * len(self.models)
        self._last_run_s = [float("-inf")] * len(self.models)  # stream time of that frame
        self._now_s = 0.0
        self.runs = [0] * len(self.models)
        # How old each model's labels were on each frame: a histogram (runs last for months).
        self.staleness = [Counter() for _ in self.models]
        self._fresh: set[int] = set()  # models whose new results arrived on this frame
        self._grid = None
        self._grid_changed = True  # the current frame starts a new picture size (or the first)
        # The model runs, for `labeler.replay` (schedule.py); None: not kept (a live run)
        keep_runs = live_share is None if record is None else record
        self.run_log: list[dict] | None = [] if keep_runs else None
        self._in_flight: dict[int, dict] = {}  # submitted frame -> its run_log entry
        self._held: dict[int, list] = {}  # replay: frame -> results to be used from it

    def _run_model(self, k: int, frame: Frame) -> np.ndarray:
        return self.models[k][1](frame)

    def _add_tiles(self, frame: Frame) -> None:
        """The box detectors' tiles for this frame size, scheduled within a live budget. None
        in a file encode: its CPU budget pays for a tile run every few hundred frames, while
        carrying and fusing the tiles' planes costs on every frame (the speed goal); none
        without a budget: fixed intervals would run them all at once."""
        if self.budget is None or not self.budget.live or self.cfg.tiles <= 0:
            return
        for _, m in self.models[:self.whole]:
            if not isinstance(m, _BoxPlanes):
                continue
            rects = tile_rects(frame.width, frame.height, *m.input.size, self.cfg.tiles)
            for i, rect in enumerate(rects):
                tile = Tile(m, rect, i + 1, len(rects))
                self.models.append((tile.name, tile))
                self.budget.add_model(tile.interval, 1 / len(rects))  # all: one whole view
                self._live.append(None)
                self._last_run.append(-(1 << 30))
                self._last_run_s.append(float("-inf"))
                self.runs.append(0)
                self.staleness.append(Counter())

    def _due(self, cut: bool) -> list[int]:
        """The models to run on the current frame: all whole views on the first frame and
        at a cut (their results are waited for; tiles come as the budget allows)."""
        if self.replay:
            return self.replay.due(self._n)
        if cut or self._grid_changed:
            return list(range(self.whole))
        intervals = (self.budget.intervals() if self.budget else
                     [m.interval for _, m in self.models])
        if self.budget is None:  # fixed intervals: every k-th frame
            return [k for k, iv in enumerate(intervals) if self._n % iv == 0]
        # The budget's interval, or sooner when the labels would get older than max_age_s
        # (whole views only: that floor is paid outside the budget, tiles are within it).
        due = [k for k, iv in enumerate(intervals) if self._n - self._last_run[k] >= iv
               or (k < self.whole and self._now_s - self._last_run_s[k] >= self.cfg.max_age_s)]
        tiles = [k for k in due if k >= self.whole]
        if len(tiles) > 1:  # one tile a job, the longest waiting: no job holds a whole grid
            due = [k for k in due if k < self.whole] + [min(tiles, key=self._last_run.__getitem__)]
        return due

    def _collect(self, results) -> None:
        for n, out in results:
            used = self.replay.arrival(n) if self.replay else self._n
            if used > self._n:  # replayed: computed now, used from its recorded frame
                self._held.setdefault(used, []).append((n, out))
                continue
            if n in self._in_flight:
                self._in_flight.pop(n)["arrived"] = self._n
            for k, planes, cost in out:
                if self.budget:
                    self.budget.add_run(k, cost)
                    self._fresh.add(k)
                if (k, n) not in self.carrier:  # computed before the picture size changed
                    continue
                if self._live[k] is not None and self._live[k] != n:
                    self.carrier.drop((k, self._live[k]))
                self.carrier.fill((k, n), planes)
                self._live[k] = n

    def label(self, frame: Frame, cut: bool = False) -> LabelMap:
        """This frame's labels: advance the clocks and the carrier, run the models that are
        due, carry every model's latest planes here, gate them, then fuse. `cut`: the frame
        starts a new scene (the run's one decision, analysis/scene.py): every model runs on it
        and it waits for their labels."""
        grid = self._start_frame(frame)
        continues = self._n > 0 and not self._grid_changed
        if continues:
            self.carrier.follow()
        self._schedule(frame, cut and continues)
        gated = self._gate(self._carried_planes(grid))
        return fuse([(m.classes, gated[k], m.threshold) for k, (_, m) in enumerate(self.models)],
                    self.cfg.priority, self.model_names, grid)

    def _start_frame(self, frame: Frame) -> tuple[int, int]:
        """Count the frame, step the stream clock, the carrier and the budget; forget what
        cannot be carried to a new picture size; collect finished runs. Returns the grid."""
        self._n += 1
        if frame.pts is not None and frame.time_base:
            self._now_s = float(frame.pts * frame.time_base)
        self.carrier.step(frame.luma_sums)
        if self.budget:
            self.budget.frame(self._now_s if frame.pts is not None and frame.time_base
                              else None)
        grid = (frame.mb_h, frame.mb_w)
        self._grid_changed = grid != self._grid
        if self._grid is None:
            self._add_tiles(frame)
        if self._grid_changed:  # first frame or a new picture size: nothing to carry
            self._live = [None] * len(self.models)
            self._grid = grid
        self._collect(self._held.pop(self._n, []) + self.worker.results())
        return grid

    def _schedule(self, frame: Frame, cut: bool) -> None:
        """Submit the models that are due on this frame (all of them on a cut)."""
        due = self._due(cut)
        if cut and self.worker.busy:  # what is running started before the cut
            self._collect(self.worker.results(wait=True))
        if cut:  # the tiles' planes from before the cut mean nothing after it
            for k in range(self.whole, len(self.models)):
                if self._live[k] is not None:
                    self.carrier.drop((k, self._live[k]))
                    self._live[k] = None
        if due and not self.worker.busy:
            for k in due:
                # Box planes: each box is moved whole (reuse.py).
                interp = "nearest" if isinstance(self.models[k][1],
                                                 (SsdAnchorAdapter, _BoxPlanes, Tile)) else None
                self.carrier.mark((k, self._n), interp)
                self._last_run[k], self._last_run_s[k] = self._n, self._now_s
                self.runs[k] += 1
            self.worker.submit(self._n, frame, due)
            if self.run_log is not None:
                self._in_flight[self._n] = {"frame": self._n, "models": due}
                self.run_log.append(self._in_flight[self._n])
            # The first frame and a cut wait for their own labels (see schedule.py).
            self._collect(self.worker.results(wait=cut or self._grid_changed
                                              or self.worker.inline))

    def _carried_planes(self, grid: tuple[int, int]) -> list[np.ndarray]:
        """Each model's latest planes carried to this frame (zeros before its first run). A
        model with a `requires` class found nowhere here gets zeros too: the gate would drop
        all it labels (carrying its planes cost ~0.1 ms a frame at 720p for nothing)."""
        planes: list[np.ndarray | None] = [None] * len(self.models)
        for k in sorted(range(len(self.models)), key=lambda k: bool(self.models[k][1].requires)):
            m, n = self.models[k][1], self._live[k]
            if n is not None:
                self.staleness[k][self._n - n] += 1
                found = requirement(self.models, planes, k)
                if found is None or found.any():
                    planes[k] = self.carrier.get((k, n))
            if planes[k] is None:
                planes[k] = np.zeros((len(m.classes), *grid), np.float32)
        return planes

    def _gate(self, planes: list[np.ndarray]) -> list[np.ndarray]:
        """The `requires` gate on every model's planes; tells the budget what new results
        found."""
        gated = [gate(self.models, planes, k) for k in range(len(self.models))]
        for k in self._fresh:  # what a new result added, after its `requires` check
            self.budget.found(k, bool((gated[k] > self.models[k][1].threshold).any()))
        self._fresh.clear()
        return gated

    def last_boxes(self, name: str) -> np.ndarray | None:
        """Read-only: the face boxes of the ssd-anchors model `name` from its latest run,
        float32[n, 5] (x1, y1, x2, y2 in frame pixels, score); None when no such model runs
        here. Under a CPU budget that run may be a few frames old (its planes are carried with
        the motion; these boxes are not)."""
        for model_name, m in self.models:
            if model_name == name and isinstance(m, SsdAnchorAdapter):
                return m.last_boxes
        return None

    def stats(self) -> dict:
        """Per model (and tile): runs, how stale its labels were (frames), mean CPU per
        run."""
        out = {}
        for k, (name, _) in enumerate(self.models):
            hist = self.staleness[k] or Counter({0: 1})
            ages = np.array(sorted(hist))
            counts = np.array([hist[a] for a in ages])
            cum = np.cumsum(counts)
            cost = self.budget.costs[k] if self.budget else None
            out[name] = {"runs": self.runs[k],
                         "staleness_frames": {
                             "mean": round(float((ages * counts).sum() / cum[-1]), 2),
                             "p95": int(ages[np.searchsorted(cum, 0.95 * cum[-1])]),
                             "max": int(ages[-1])},
                         "cpu_ms_per_run": round(cost * 1e3, 2) if cost else None}
        return out

    def schedule(self) -> dict | None:
        """The runs of a file encode so far, for `labeler.replay` (schedule.Replay): the
        models, the frames seen, each finished run's frame, models and the frame its results
        were used from; None for a live run."""
        if self.run_log is None:
            return None
        return {"models": self.model_names, "frames": self._n + 1,
                "runs": [dict(r) for r in self.run_log if "arrived" in r]}

    def reconfigure(self, cfg: LabelerConfig, live_share: float | None) -> None:
        """A live change (serve/remote.py LIVE_KEYS), from the next frame: `cfg`, and the
        live budget's new share (camera_share; None: not a live run). A live share is never
        switched to or from 0 here (labeler/config.py check_live_share)."""
        self.cfg = cfg
        if live_share is not None and self.budget is not None and self.budget.live:
            self.budget.set_share(live_share)

    def budget_stats(self) -> dict | None:
        """The budget: `live` (a share of each frame period) or `cpu` (of the rest of the
        process's CPU), its share and what it gives the models per frame; None without one."""
        b = self.budget
        if b is None:
            return None
        out = {"kind": "live" if b.live else "cpu", "share": round(b.share, 4),
               "ms_per_frame": round(b.per_frame() * 1e3, 3)}
        if b.live:  # the share now, after backing off for dropped frames (schedule.py)
            out.update(configured_share=round(b.configured, 4), backoffs=b.backoffs)
        return out

    def close(self) -> None:
        self.worker.close()
