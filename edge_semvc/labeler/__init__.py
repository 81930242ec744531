"""The labeler (METHOD S110, the label computation module): what is where in each frame.

Each model in `labeler.models` is described by the registry (`registry.yaml`) or by its config
entry, and wrapped by the adapter of its `decoder`: the adapter turns a Frame into one probability
plane per product class (person, face, text, vehicle, ...) on the macroblock grid. The Labeler
fuses the planes of all models into one LabelMap:

1. the same class from several models combines by maximum: probs[c] = max_m P_m[c];
2. a class is a candidate in a macroblock where some model's plane for it exceeds that model's
   threshold (its `threshold`, default `labeler.threshold`);
3. the macroblock takes the candidate that comes first in `labeler.priority` (default face, text,
   person, vehicle: the smaller, more specific region wins where regions overlap); candidates
   not in the list come after the listed ones, the most probable first; no candidate: background.

Each model runs every `interval` frames (its own, default `labeler.interval`); in between, its
last planes are carried to the current frame by per-macroblock motion compensation
(`labeler.reuse: motion`, reuse.py) or held unchanged (`hold`). A detected scene cut makes every
model run.

A box detector on a frame much larger than its input also runs on overlapping tiles
(`labeler.tiles`, tiles.py), each tile scheduled as one more model within the budget.
"""
from __future__ import annotations

from .adapters import (  # noqa: F401  (the package's names)
    ADAPTERS,
    Adapter,
    BoxesAdapter,
    MaskAdapter,
    NanodetAdapter,
    SsdAnchorAdapter,
    YoloxAdapter,
    _BoxPlanes,
)
from .fuse import fuse, gate  # noqa: F401
from .labeler import Labeler  # noqa: F401
