"""The method's extensions (METHOD embodiments 2-5) between the analysis and the QP map: each
switched on by its section's `enabled`, each an analyser (its term per macroblock, gathered in a
`Modulation`) and a formula on Q (qp/attention.py, qp/emotion.py, qp/scene.py, qp/fusion.py),
applied in the method's order:

    Q_A = attention_q(Q, P_t)        embodiment 2 (policy "attention"; "masking" = the core method)
    Q_E = Q_A * (1 - gamma * |E|)    embodiment 3, faces
    Q_S = Q_E * (1 - delta * S)      embodiment 4, a cut also asks the encoder for an IDR
    Q_D = Q_S + sum theta_k * D_k    embodiment 5, audio, subtitles, a description

Every analyser sees every frame (their state runs over time), including frames with nothing
labelled, which get no map. The scene cut is not theirs: the run computes it once per frame
(analysis/scene.py, understanding.py) and embodiment 4 reads its S_mb per region from it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .analysis.fusion import FusionAnalyser
from .analysis.recurrent import RecurrentChange
from .analysis.scene import SceneResult, scene_values
from .config import Config
from .frame import Frame
from .qp.attention import attention_q
from .qp.emotion import emotion_q
from .qp.fusion import fuse_data_sources
from .qp.scene import scene_q
from .values import LabelMap, Modulation

log = logging.getLogger("edge_semvc")


class Extensions:
    """`labeler`: the run's Labeler, whose face detections the emotion analyser reads."""

    def __init__(self, cfg: Config, labeler, input_path: str | None = None):
        self.cfg, self.labeler = cfg, labeler
        self.attention = RecurrentChange(cfg.attention) if cfg.attention.enabled else None
        self.emotion = None
        if cfg.emotion.enabled:
            from .labeler.emotion import EmotionAnalyser

            self.emotion = EmotionAnalyser(cfg.emotion, cfg.cache_dir())
        self.scene = cfg.scene.enabled  # S from the run's scene analysis (understanding.py)
        self.fusion = FusionAnalyser(cfg.fusion) if cfg.fusion.enabled else None
        self.side = _side_data(cfg, input_path) if self.fusion else None

    @property
    def active(self) -> bool:
        return self.scene or any(a is not None for a in self._analysers())

    def _analysers(self):
        return self.attention, self.emotion, self.fusion

    def reconfigure(self, cfg: Config) -> None:
        """Live changes between frames (serve): thresholds and factors, not which are on."""
        self.cfg = cfg
        for analyser, section in ((self.attention, cfg.attention), (self.emotion, cfg.emotion),
                                  (self.fusion, cfg.fusion)):
            if analyser is not None:
                analyser.cfg = section

    def modulation(self, frame: Frame, labels: LabelMap, regions: np.ndarray | None,
                   scene: SceneResult) -> Modulation:
        """Every enabled analyser's term for this frame (`regions`: RegionStats.regions, or
        None on a frame with nothing labelled; `scene`: the frame's scene analysis)."""
        mod = Modulation()
        if self.attention is not None:
            mod.attention = self.attention.analyse(frame, regions)
        if self.emotion is not None:
            from .labeler.emotion import face_boxes

            mod.emotion = self.emotion.analyse(frame, face_boxes(self.labeler))
        if self.scene:
            mod.scene = scene_values(scene.change, regions, self.cfg.scene.s_threshold)
        if self.fusion is not None:
            side = self.side.for_frame(frame) if self.side is not None else None
            mod.data = self.fusion.analyse(labels, voice=side.voice if side else None,
                                           cues=side.cues if side else None)
        return mod

    def adjust(self, q: np.ndarray, mod: Modulation) -> np.ndarray:
        """Q after every enabled formula, in the method's order."""
        if mod.attention is not None:
            q = attention_q(q, mod.attention, self.cfg.attention)
        if mod.emotion is not None:
            q = emotion_q(q, mod.emotion, self.cfg.emotion)
        if mod.scene is not None:
            q = scene_q(q, mod.scene, self.cfg.scene)
        if mod.data:
            q = fuse_data_sources(q, mod.data)
        return q

    def reset(self) -> None:
        for analyser in self._analysers():
            if analyser is not None:
                analyser.reset()


def _side_data(cfg: Config, input_path: str | None):
    """The input's own audio and subtitles, and a sidecar subtitle file: what embodiment 5
    reads besides the pictures. Inputs that are no file (a stream, a camera) give only the
    sidecar file; a missing source contributes nothing."""
    from .sources.sidedata import SideData

    f = cfg.fusion
    if not (f.audio or f.subtitles):
        return None
    path = input_path if input_path and Path(input_path).is_file() else None
    if path is None and not f.subtitle_file:
        log.info("fusion: the input is not a file: no audio or embedded subtitles")
        return None
    return SideData.open(path, audio=f.audio and path is not None, subtitles=f.subtitles,
                         subtitle_file=f.subtitle_file, window_s=f.voice_window_s,
                         normalisation=(f.noise_percentile, f.activity_span_db, f.silence_db))
