"""Aggregation of per-macroblock measures over labelled regions (METHOD S120: "for every
labelled region").

A region is a 4-connected component of macroblocks with the same label; all background
macroblocks form region 0. Each macroblock receives its region's mean C and V.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..values import RegionStats

_FOUR = ndimage.generate_binary_structure(2, 1)  # 4-connected (ndimage's default, made once)


def label_regions(labels: np.ndarray) -> np.ndarray:
    """int32[mb_h, mb_w] region ids: 0 for background, 1.. for connected same-class components."""
    if not (_classes_touch(labels[:, 1:], labels[:, :-1])
            or _classes_touch(labels[1:], labels[:-1])):
        # the usual frame: the labelled components are each of one class, so one pass finds
        # them all (the same regions as the pass per class below, numbered in raster order)
        return ndimage.label(labels > 0, _FOUR)[0].astype(np.int32, copy=False)
    regions = np.zeros(labels.shape, np.int32)
    next_id = 1
    for cls in np.unique(labels):
        if cls == 0:
            continue
        comp, n = ndimage.label(labels == cls, _FOUR)
        regions[comp > 0] = comp[comp > 0] + (next_id - 1)
        next_id += n
    return regions


def _classes_touch(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two neighbouring labelled macroblocks (a and b, shifted views) differ in class."""
    return bool(((a != b) & (a > 0) & (b > 0)).any())


def region_means(regions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each macroblock's value replaced by the mean over its region."""
    flat = regions.ravel()
    sums = np.bincount(flat, weights=values.ravel())
    counts = np.bincount(flat)
    means = sums / np.maximum(counts, 1)
    return means[flat].reshape(regions.shape).astype(np.float32)


def region_stats(labels: np.ndarray, c: np.ndarray, v: np.ndarray) -> RegionStats:
    regions = label_regions(labels)
    return RegionStats(c, v, region_means(regions, c), region_means(regions, v), regions)
