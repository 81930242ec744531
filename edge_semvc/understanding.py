"""The understanding step: one frame in, one `FrameResult` out (the pipeline's middle thread).

    scene  = scene analysis (analysis/scene.py)     the frame's one scene-cut decision
    labels = labeler.label(frame, scene.cut)        a cut runs every model (a NullLabeler: none)
    qp     = mapper: analyse, then the QP map       only where something is labelled
    obs    = storage observer (storage.py)          the storage profile's view, with the cut

The cut is computed here once and carried in the result: the labeler, the storage profile,
the scene extension (extensions.py), the statistics and the service's events all read it.

The map is made behind one protocol (`QpMapper`): `CpuQpMapper` (numpy: analysis/, the
extensions, qp/qpmap.py) and `CudaQpMapper` (qp/cuda/, analysis and map in the kernels; the
extensions are not applied there).
"""
from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np

from .analysis import Analyser
from .analysis.scene import SceneAnalyser, SceneResult
from .config import Config
from .extensions import Extensions
from .frame import Frame
from .labeler import Labeler
from .labeler.schedule import camera_share
from .qp import QP_DEVICES
from .qp.qpmap import build_qp_map, importance_vector
from .storage import Observation, Observer
from .values import LabelMap, QpMap

log = logging.getLogger("edge_semvc")
MapFilter = Callable[[QpMap], QpMap]


@dataclass(frozen=True)
class FrameResult:
    """What the understanding step learnt of one frame: all the encoding thread needs."""

    frame: Frame
    labels: LabelMap
    qp: QpMap  # zeros where nothing is labelled
    mapped: bool  # something is labelled: the encoder gets the map (else none: plain x264)
    cut: bool  # the frame starts a new scene (analysis/scene.py)
    observation: Observation | None  # the storage profile's (None without it)


class NullLabeler:
    """The labeler of a run without one (the plain-x264 baseline): nothing is labelled."""

    classes: list[str] = []
    model_names: list[str] = []

    def label(self, frame: Frame, cut: bool = False) -> LabelMap:
        return LabelMap.from_probs(np.zeros((0, frame.mb_h, frame.mb_w)), [], 1.0, [])

    def last_boxes(self, name: str) -> None:
        return None

    def stats(self) -> dict:
        return {}

    def budget_stats(self) -> None:
        return None

    def schedule(self) -> None:
        return None

    def reconfigure(self, cfg, live_share: float | None) -> None:
        pass

    def close(self) -> None:
        pass


class QpMapper(Protocol):
    """Makes a frame's QP map from its labels, in two timed steps."""

    # the encoder gives reused blocks more bits itself (x264's mb-tree): no reuse term in the map
    encoder_weighs_reuse: bool

    def analyse(self, frame: Frame, labels: LabelMap, scene: SceneResult) -> object:
        """The measures of a frame with something labelled (analysis stage)."""

    def qp_map(self, measures: object, labels: LabelMap, importance: np.ndarray,
               cfg: Config) -> QpMap:
        """The map from them (qp_map stage)."""

    def skip(self, frame: Frame, labels: LabelMap, scene: SceneResult) -> None:
        """A frame with nothing labelled: no map; state that runs over time follows it."""

    def reconfigure(self, cfg: Config) -> None:
        """A live change, between frames."""


class CpuQpMapper:
    """numpy: the analysis (C, V, regions), the method's extensions, then Q and offsets."""

    def __init__(self, cfg: Config, extensions: Extensions | None):
        self.analyser, self.extensions = Analyser(cfg.analysis), extensions
        self.encoder_weighs_reuse = False

    def analyse(self, frame: Frame, labels: LabelMap, scene: SceneResult):
        region = self.analyser.analyse(frame, labels)
        mod = (self.extensions.modulation(frame, labels, region.regions, scene)
               if self.extensions is not None else None)
        return region, mod

    def qp_map(self, measures, labels: LabelMap, importance: np.ndarray, cfg: Config) -> QpMap:
        region, mod = measures
        adjust = (lambda q: self.extensions.adjust(q, mod)) if mod is not None else None
        return build_qp_map(region, labels, importance, cfg.qp, adjust,
                            self.encoder_weighs_reuse)

    def skip(self, frame: Frame, labels: LabelMap, scene: SceneResult) -> None:
        self.analyser.reset()
        if self.extensions is not None:  # their state runs over every frame
            self.extensions.modulation(frame, labels, None, scene)

    def reconfigure(self, cfg: Config) -> None:
        self.analyser.cfg = cfg.analysis
        if self.extensions is not None:
            self.extensions.reconfigure(cfg)


class CudaQpMapper:
    """The GPU (qp/cuda/): analysis and map in the kernels, timed as the map."""

    encoder_weighs_reuse = False

    def __init__(self):
        # optional: CuPy or PyCUDA, and a GPU; CudaError (exit 2) names what is missing
        self.gpu = QP_DEVICES.get("cuda")()

    def describe(self) -> str:
        return self.gpu.describe()

    def analyse(self, frame: Frame, labels: LabelMap, scene: SceneResult) -> Frame:
        return frame

    def qp_map(self, frame: Frame, labels: LabelMap, importance: np.ndarray,
               cfg: Config) -> QpMap:
        return self.gpu.map(frame, labels, importance, cfg.qp, cfg.analysis,
                            encoder_weighs_reuse=self.encoder_weighs_reuse)

    def skip(self, frame: Frame, labels: LabelMap, scene: SceneResult) -> None:
        self.gpu.reset()

    def reconfigure(self, cfg: Config) -> None:
        pass  # `qp_map` reads the configuration of each frame


def build_understanding(cfg: Config, semantic: bool, input_path: str | None,
                        observer: Observer | None, timings: dict,
                        map_filter: MapFilter | None = None,
                        cameras: int = 0) -> Understanding:
    """The run's understanding step: its labeler (a NullLabeler when not `semantic`; a live
    input, one of `cameras` (0: a file encode), has its camera's share of labeler.live_share
    of each frame period, else labeler.cpu_budget), the map on the CPU or the GPU
    (`qp.device`), the enabled extensions."""
    labeler = (Labeler(cfg.labeler, cfg.cache_dir(), log=log.info,
                       live_share=_live_share(cfg, cameras))
               if semantic else NullLabeler())
    if semantic and cfg.qp.device == "cuda":  # C, V, regions, Q and offsets on the GPU
        mapper = CudaQpMapper()
        log.info("QP map on the GPU: %s", mapper.describe())
    else:
        extensions = Extensions(cfg, labeler, input_path) if semantic else None
        mapper = CpuQpMapper(cfg, extensions if extensions and extensions.active else None)
    # The plain baseline pays for no analysis it does not use: the cut only with the storage
    # profile (~0.4 ms a frame at 720p, ~0.8 ms at 1080p; benchmarks compare against the plain
    # run).
    scene = SceneAnalyser(cfg.scene) if semantic or observer is not None else None
    return Understanding(cfg, labeler, mapper, observer, timings, scene, map_filter, cameras)


def _live_share(cfg: Config, cameras: int) -> float | None:
    """One camera's labeler budget, at the start and after each live change."""
    return camera_share(cfg.labeler.live_share, cameras) if cameras else None


class _NoCuts:
    """The scene analysis of a plain run without the storage profile: nobody reads a cut."""

    cfg = None

    def analyse(self, frame: Frame) -> SceneResult:
        zeros = np.zeros((frame.mb_h, frame.mb_w), np.float32)
        return SceneResult(zeros, zeros, False, 0.0, 0.0)


class Understanding:
    """`understanding(frame) -> FrameResult`, frames in order, in one thread. `reconfigure`
    (any thread) hands it a live change (only keys safe to change live differ:
    serve/remote.py), applied before the next frame. `timings`: lists (or deques) of ms per
    stage it appends to; `map_filter`: what the encoder can take of each map (bench: 8 ROI
    rectangles, rects.py)."""

    def __init__(self, cfg: Config, labeler, mapper: QpMapper, observer: Observer | None,
                 timings: dict, scene: SceneAnalyser | None, map_filter: MapFilter | None = None,
                 cameras: int = 0):
        self.cfg, self.labeler, self.mapper, self.observer = cfg, labeler, mapper, observer
        self.cameras = cameras
        self.timings, self.map_filter = timings, map_filter
        self.scene = scene or _NoCuts()
        self.importance = importance_vector(["background", *labeler.classes], cfg.qp)
        self._changes: queue.SimpleQueue[Config] = queue.SimpleQueue()

    def reconfigure(self, cfg: Config) -> None:
        self._changes.put(cfg)

    def encoder_opened(self, weighs_reuse: bool) -> None:
        """Before the first frame: whether the encoder weighs reuse itself (the map's reuse
        term then stays out, `qp.reuse: auto`)."""
        self.mapper.encoder_weighs_reuse = weighs_reuse

    def _apply_changes(self) -> None:
        new = None
        while not self._changes.empty():  # the latest change wins
            new = self._changes.get()
        if new is None:
            return
        self.cfg = new
        self.labeler.reconfigure(new.labeler, _live_share(new, self.cameras))
        self.scene.cfg = new.scene
        self.mapper.reconfigure(new)
        self.importance = importance_vector(["background", *self.labeler.classes], new.qp)

    def __call__(self, frame: Frame) -> FrameResult:
        self._apply_changes()
        t0 = time.perf_counter()
        scene = self.scene.analyse(frame)
        t1 = time.perf_counter()
        labels = self.labeler.label(frame, scene.cut)
        t2 = time.perf_counter()
        # Nothing labelled (or qp.enabled false, a live switch): x264 gets no map at all, exactly
        # plain x264 (a uniform shift is not neutral: it moves x264's own adaptive
        # quantisation), so nothing to compute.
        mapped = self.cfg.qp.enabled and bool(labels.labels.any())  # off: plain encoding
        if mapped:
            measures = self.mapper.analyse(frame, labels, scene)
            t3 = time.perf_counter()
            qp = self.mapper.qp_map(measures, labels, self.importance, self.cfg)
            if self.map_filter is not None:
                qp = self.map_filter(qp)
        else:
            self.mapper.skip(frame, labels, scene)
            t3 = time.perf_counter()
            qp = QpMap(np.zeros(labels.shape, np.float32))
        obs = (self.observer.observe(frame, labels, scene.cut)
               if self.observer is not None else None)
        t4 = time.perf_counter()
        for name, ms in (("labeler", t2 - t1), ("analysis", t1 - t0 + t3 - t2),
                         ("qp_map", t4 - t3)):
            self.timings[name].append(ms * 1e3)
        return FrameResult(frame, labels, qp, mapped, scene.cut, obs)
