"""Fusion of additional data sources (METHOD embodiment 5): the data-source and weight-coefficient
modules of the apparatus.

Three optional sources say which regions matter; each gives a term D_k per macroblock and a
weight theta_k, and `qp/fusion.py` applies Q_D = Q + sum_k theta_k * D_k.

- audio: the input's voice activity a in [0, 1] (`sources/sidedata.py`). Voices come from
  people: D_audio = -strength * a on the macroblocks labelled with a `voice_classes` class
  (person, face), 0 elsewhere.
- subtitles: the texts of the cues on screen. While any cue is active, D_sub = -strength on
  the `text` macroblocks and on those of every class a cue names ("a man gets out of the car":
  person and vehicle), 0 elsewhere; no active cue gives D_sub = 0.
- description: `fusion.description` ("watch the vehicles at the gate"), settable at run time:
  D_desc = -strength on the macroblocks of the classes it names.

Words become classes through `WORD_CLASSES` (plurals by rule: -s, -es, -ies; irregular ones
listed), extended by `fusion.words`. Only classes the LabelMap has can be marked.

theta_k: the configured `weights` of the sources present this frame, renormalised to sum to 1.
A source is present when it has a statement for this frame: an audio track that covers the
frame's time (silence included: it says "no voice"), a subtitle source (a frame between cues
included: D = 0), a description that names at least one class. An absent source contributes
nothing and the others share its weight. So Q_D moves at most by `strength` (every present
source marks the macroblock at full relevance); a macroblock only one of n equally weighted
sources marks moves by strength / n.
"""
from __future__ import annotations

import re

import numpy as np

from ..values import LabelMap
from .config import FusionConfig  # noqa: F401  (its section, defined with the others)

# Word -> product class (the labeler's classes: registry.yaml `class_map`). Singular forms;
# regular plurals (cars, buses, lorries) are found by rule, irregular ones are listed.
WORD_CLASSES: dict[str, str] = {
    **dict.fromkeys(["vehicle", "car", "truck", "lorry", "bus", "busses", "van", "taxi", "cab",
                     "motorcycle", "motorbike", "bike", "bicycle", "scooter", "suv", "jeep",
                     "pickup", "traffic"], "vehicle"),
    **dict.fromkeys(["person", "people", "man", "men", "woman", "women", "pedestrian", "child",
                     "children", "kid", "boy", "girl", "crowd", "cyclist", "rider", "driver",
                     "worker", "human", "someone", "somebody", "visitor", "guard"], "person"),
    **dict.fromkeys(["face", "faces"], "face"),
    **dict.fromkeys(["text", "sign", "signage", "signboard", "plate", "numberplate", "caption",
                     "writing", "logo", "billboard", "banner"], "text"),
}


def words_to_classes(text: str, extra: dict[str, str] | None = None) -> set[str]:
    """The classes a text names, through WORD_CLASSES (+ `extra`): 'watch the vehicles at the
    gate' -> {'vehicle'}. Case and punctuation are ignored; no negation ('no cars' names cars)."""
    table = {**WORD_CLASSES, **(extra or {})}
    found = set()
    for word in re.findall(r"[a-z]+", text.lower()):
        cls = table.get(word) or table.get(_singular(word, table), None)
        if cls:
            found.add(cls)
    return found


def _singular(word: str, table: dict[str, str]) -> str:
    if word.endswith("ies") and word[:-3] + "y" in table:
        return word[:-3] + "y"  # lorries
    if word.endswith("es") and word[:-2] in table:
        return word[:-2]  # buses
    return word[:-1] if word.endswith("s") else word  # cars, faces


class FusionAnalyser:
    """Per frame: (LabelMap, the side data's plain values, the description) -> the (theta_k,
    D_k) list of `Modulation.data`. `cfg` may be replaced between frames (live updates):
    the description's classes are recomputed when its text or the word table changes."""

    def __init__(self, cfg: FusionConfig):
        self.cfg = cfg
        self.last_sources: list[str] = []  # the sources present in the last frame, in order
        self._described: tuple[tuple, set[str]] | None = None

    def reset(self) -> None:
        """Forget what the last frame said (nothing else is carried between frames)."""
        self.last_sources = []
        self._described = None

    def description_classes(self) -> set[str]:
        key = (self.cfg.description, tuple(sorted(self.cfg.words.items())))
        if self._described is None or self._described[0] != key:
            self._described = (key, words_to_classes(self.cfg.description, self.cfg.words))
        return self._described[1]

    def analyse(self, labels: LabelMap, voice: float | None = None,
                cues: list[str] | None = None) -> list[tuple[float, np.ndarray]]:
        """`voice`: activity in [0, 1] or None (no audio for this frame); `cues`: texts of the
        active cues, [] between cues, None without subtitles."""
        cfg = self.cfg
        terms: dict[str, np.ndarray] = {}
        if cfg.audio and voice is not None:
            activity = float(np.clip(voice, 0.0, 1.0))
            terms["audio"] = _lowering(cfg.strength * activity,
                                       class_mask(labels, set(cfg.voice_classes)))
        if cfg.subtitles and cues is not None:
            named = {"text"}.union(*(words_to_classes(c, cfg.words) for c in cues)) if cues \
                else set()
            terms["subtitles"] = _lowering(cfg.strength, class_mask(labels, named))
        described = self.description_classes()
        if described:
            terms["description"] = _lowering(cfg.strength, class_mask(labels, described))
        weights = {k: cfg.weights.get(k, 1.0) for k in terms}
        total = sum(weights.values())
        self.last_sources = [k for k in terms if weights[k] > 0] if total > 0 else []
        return [(weights[k] / total, terms[k]) for k in self.last_sources]


def _lowering(amount: float, mask: np.ndarray) -> np.ndarray:
    """D_k: -amount on the marked macroblocks, exactly 0 (not -0.0) elsewhere."""
    return np.where(mask > 0, np.float32(0.0 - amount), np.float32(0.0)).astype(np.float32)


def class_mask(labels: LabelMap, classes: set[str]) -> np.ndarray:
    """float32[mb_h, mb_w]: 1 where the macroblock is labelled with one of `classes`."""
    index = [i for i, name in enumerate(labels.classes) if name in classes and i > 0]
    return np.isin(labels.labels, index).astype(np.float32)
