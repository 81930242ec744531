"""Frame sources behind one small interface, chosen by URI (jetson-utils' videoSource style):
`file://clip.mp4` or a plain path (anything PyAV opens, raw .yuv with explicit geometry), and
`demo://astronaut` (the built-in default input)."""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Protocol

from ..errors import DecodeError, SourceError  # noqa: F401  (re-exported)
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


def open_source(uri: str, raw: RawVideoOptions | None = None) -> Source:
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "file", uri
    if scheme == "file":
        from .pyav import PyAVSource
        return PyAVSource(rest, raw or RawVideoOptions())
    if scheme == "demo":
        from .demo import DemoSource
        return DemoSource(rest or "astronaut")
    raise SourceError(f"unsupported input URI scheme {scheme + '://'!r} in {uri!r} "
                      "(supported: file://, demo://, or a plain path)")
