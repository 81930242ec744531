"""The common encoder interface (one small ABC, one module per backend, a registry by name).

Every backend takes a :class:`~edge_semvc.frame.Frame` plus an optional per-macroblock QP-offset
map (``float32[mb_h, mb_w]``, signed, added by the encoder to its own QP decisions) and returns
already-encoded :class:`Packet` s (H.264 Annex-B for x264).

Usage::

    with get_encoder("x264")(EncoderSettings(width=1280, height=720, fps=Fraction(30),
                                             time_base=Fraction(1, 30))) as enc:
        for frame, qp in ...:
            sink.write(enc.encode(frame, qp))
        sink.write(enc.flush())
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar

import numpy as np

from ..errors import EncoderError  # noqa: F401  (re-exported)
from ..frame import Frame

RATE_CONTROLS = ("crf", "abr", "cbr")


def _rational(x, what: str) -> Fraction:
    """A Fraction that fits the encoders' 32-bit num/den (floats like 29.97 become 2997/100)."""
    try:
        f = Fraction(x) if not isinstance(x, float) else Fraction(x).limit_denominator(1_000_000)
    except (TypeError, ValueError) as e:
        raise EncoderError(f"invalid {what} {x!r}") from e
    if f.numerator >= 2**31 or f.denominator >= 2**31:
        f = f.limit_denominator(1_000_000)
    return f


@dataclass
class EncoderSettings:
    """What every backend understands. Backend-specific extras go in ``params``.

    rc: ``"crf"`` (quality target, ``crf``; ``bitrate`` given = VBV cap), ``"abr"`` (average
    ``bitrate``) or ``"cbr"`` (``bitrate`` with a 1 s VBV buffer). Constant-QP is not offered: no
    encoder here applies a QP-offset map in CQP mode.
    bitrate: bits per second.
    global_headers: True for containers that keep SPS/PPS out of band (mp4, mkv): the stream
    then carries no parameter sets in-band and the sink takes them from ``Encoder.headers()``.
    Frames may be left out (a dynamic frame rate): the encoder follows their timestamps.
    """

    width: int
    height: int
    fps: Fraction
    time_base: Fraction
    rc: str = "crf"
    bitrate: int | None = None
    crf: float = 23.0
    preset: str = "veryfast"
    tune: str | None = None
    keyint: int | None = None
    threads: int = 0
    global_headers: bool = False
    # the caller places every IDR (`encode(..., force_idr=True)`): the encoder inserts none of
    # its own, periodic or at scene changes (the storage profile's dynamic GOP)
    caller_idr: bool = False
    # frames may be left out (the storage profile's dynamic frame rate): rate control counts
    # the frames it gets, not the time they stand for (a held frame is not worth more bits)
    sparse_frames: bool = False
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fps = _rational(self.fps, "fps")
        self.time_base = _rational(self.time_base, "time_base")
        if self.width <= 0 or self.height <= 0:
            raise EncoderError(f"invalid frame size {self.width}x{self.height}")
        if self.fps <= 0:
            raise EncoderError(f"invalid fps {self.fps}")
        if self.time_base <= 0:
            raise EncoderError(f"invalid time_base {self.time_base}")
        if self.bitrate is not None and self.bitrate <= 0:
            raise EncoderError(f"invalid bitrate {self.bitrate} (bits/s, must be > 0)")
        if self.rc in ("abr", "cbr") and self.bitrate is None:
            raise EncoderError(f"rc={self.rc!r} needs a bitrate (bits/s)")
        if self.keyint is not None and self.keyint <= 0:
            raise EncoderError(f"invalid keyint {self.keyint}")
        if self.threads < 0:
            raise EncoderError(f"invalid threads {self.threads} (0 = auto)")
        self.params = {str(k): str(v) for k, v in (self.params or {}).items()}

    @property
    def mb_w(self) -> int:
        return -(-self.width // 16)

    @property
    def mb_h(self) -> int:
        return -(-self.height // 16)


@dataclass
class Packet:
    """One encoded access unit (all NAL units of one picture); timestamps in the settings'
    time_base."""

    data: bytes
    pts: int
    dts: int
    keyframe: bool


class Encoder(ABC):
    """A video encoder that honours a per-macroblock QP-offset map."""

    type_key: ClassVar[str] = ""
    # the bitstream's codec, as FFmpeg names it ("h264", "hevc"): sinks pick muxer and NAL parsing
    codec: ClassVar[str] = "h264"

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, "") when this backend can run here, else (False, why not and how to fix)."""
        return True, ""

    @abstractmethod
    def encode(self, frame: Frame, qp_offsets: np.ndarray | None = None,
               force_idr: bool = False) -> list[Packet]:
        """Encode one frame; returns the packets that became ready (possibly none: delay).

        ``force_idr``: code this frame as an IDR picture (a random access point that nothing
        after it references across), e.g. to start a new recording segment there. Its packet
        comes out ``keyframe=True``, possibly some calls later (encoder delay); in-band SPS/PPS
        come with it unless ``global_headers``. False leaves the choice to the encoder.
        """

    @abstractmethod
    def flush(self) -> list[Packet]:
        """Drain all delayed frames (end of stream)."""

    @abstractmethod
    def headers(self) -> bytes:
        """SPS/PPS (Annex-B) for containers that want them out of band."""

    @abstractmethod
    def close(self) -> None:
        """Free the encoder. Idempotent."""

    @abstractmethod
    def settings_summary(self) -> dict:
        """The effective settings (after presets and corrections), for stats."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self):  # last resort; close() is idempotent
        try:
            self.close()
        except Exception:
            pass
