"""The fusion rule (labeler/__init__.py) and the `requires` gate: how the planes of several
models become one LabelMap."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ..values import LabelMap

if TYPE_CHECKING:
    from .adapters import Adapter


def fuse(contributions: list[tuple[list[str], np.ndarray, float]], priority: list[str],
         models: list[str] = (), shape: tuple[int, int] | None = None) -> LabelMap:
    """The fusion rule (module docstring): `contributions` are (classes, planes, threshold) per
    model. Returns a LabelMap with classes in order of first appearance."""
    classes: list[str] = []
    for cls, _, _ in contributions:
        classes += [c for c in cls if c not in classes]
    if shape is None:
        shape = contributions[0][1].shape[1:] if contributions else (0, 0)
    probs = np.zeros((len(classes), *shape), np.float32)
    above = np.zeros((len(classes), *shape), bool)
    for cls, planes, threshold in contributions:
        for c, plane in zip(cls, planes):
            i = classes.index(c)
            np.maximum(probs[i], plane, out=probs[i])
            above[i] |= plane > threshold
    labels = np.zeros(shape, np.int16)
    ranked = [c for c in priority if c in classes]
    rest = [classes.index(c) for c in classes if c not in ranked]
    if rest:  # unlisted classes: the most probable candidate
        p = np.where(above[rest], probs[rest], -1.0)
        best = p.argmax(axis=0)
        hit = p.max(axis=0) >= 0
        labels[hit] = np.asarray(rest)[best[hit]] + 1
    for c in reversed(ranked):  # listed classes, the first one last: it wins
        i = classes.index(c)
        labels[above[i]] = i + 1
    return LabelMap(probs, ["background", *classes], labels, list(models))


def gate(models: list[tuple[str, Adapter]], planes: list[np.ndarray], k: int) -> np.ndarray:
    """Model k's planes, restricted to its regions that touch a region of its `requires` class
    (from any model) when it has one: e.g. a selfie segmenter's person only where a face was
    found, which drops the walls, trees and cliffs such a model mistakes for people."""
    m = models[k][1]
    if not m.requires:
        return planes[k]
    required = requirement(models, planes, k)
    out = planes[k].copy()
    if required is None:  # no model labels that class (the Labeler warns and drops `requires`)
        required = np.zeros(out.shape[1:], bool)
    if not required.any():  # nothing to touch: every region goes
        for plane in out:
            plane[plane > m.threshold] = 0.0
        return out
    near = ndimage.binary_dilation(required)  # touching counts
    for plane in out:
        regions, n = ndimage.label(plane > m.threshold)
        if n:
            keep = np.zeros(n + 1, bool)
            keep[np.unique(regions[near & (regions > 0)])] = True
            plane[(regions > 0) & ~keep[regions]] = 0.0
    return out


def requirement(models: list[tuple[str, Adapter]], planes: list[np.ndarray | None],
                k: int) -> np.ndarray | None:
    """Where model k's `requires` class is found, by any model: bool[mb_h, mb_w]; None when k
    requires nothing, or when a model that labels that class has no planes here yet."""
    cls = models[k][1].requires
    if not cls:
        return None
    found = None
    for (_, other), p in zip(models, planes):
        if cls in other.classes:
            if p is None:
                return None
            hit = p[other.classes.index(cls)] > other.threshold
            found = hit if found is None else found | hit
    return found
