"""What every source is (`Source`) and the options of raw input, apart from the choice by
URI (sources/__init__.py), so that each source imports them without an import circle."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Protocol

from ..frame import Frame


@dataclass
class RawVideoOptions:
    """Geometry for headerless raw video (.yuv): PyAV cannot guess it."""

    width: int = 0
    height: int = 0
    rate: Fraction = Fraction(0)
    pix_fmt: str = "yuv420p"


class Source(Protocol):
    width: int
    height: int
    fps: Fraction
    time_base: Fraction
    frame_count: int  # 0 when unknown
    description: str

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...
