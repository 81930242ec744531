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

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import ClassVar

import numpy as np

from ..errors import EncoderError  # noqa: F401  (re-exported)
from ..frame import Frame

RATE_CONTROLS = ("crf", "abr", "cbr")
CQP_NAMES = ("cqp", "qp", "constqp", "const_qp")  # constant QP, refused by every backend


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
    # its own, periodic or at scene changes (the storage profile's long GOP)
    caller_idr: bool = False
    # frames may be left out (the storage profile's dynamic frame rate): rate control counts
    # the frames it gets, not the time they stand for (a held frame is not worth more bits)
    sparse_frames: bool = False
    # periodic intra refresh instead of IDR pictures: a column of intra macroblocks sweeps the
    # picture every keyint frames, so the rate has no I-frame bursts (a radio link)
    intra_refresh: bool = False
    # the share of the encoder's own adaptive quantisation kept on frames that carry a QP map
    # (1: all of it; x264 only, encoders/x264.py)
    aq_with_map: float = 1.0
    # the input's colour description, H.273 codes (primaries, transfer, matrix; 2: unspecified):
    # written into the stream's VUI, so a player reads BT.709 or HDR material as it was made
    colour: tuple[int, int, int] = (2, 2, 2)
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
        if not 0.0 <= self.aq_with_map <= 1.0:
            raise EncoderError(f"invalid aq_with_map {self.aq_with_map} (a share, 0-1)")
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

    _enc = None  # the backend's open encoder; None once closed (close() sets it so)
    _flushed = False  # flush() ran: the stream has ended

    def __init__(self, settings: EncoderSettings) -> None:
        self.settings = settings
        # what the backend changed in the settings so that the map takes effect (with a warning)
        self._corrections: list[str] = []

    @classmethod
    def available(cls) -> tuple[bool, str]:
        """(True, "") when this backend can run here, else (False, why not and how to fix)."""
        return True, ""

    @classmethod
    def check_params(cls, params: dict[str, str]) -> None:
        """Refuse at load (EncoderConfig.validate) an `encoder.params` entry this backend does
        not take, as a ConfigError naming `encoder.params.KEY`. By default every key passes:
        x264 and x265 take the library's own options, which only the library checks (when it
        opens)."""
        return None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """The registry's answer (registry.py): None when this backend runs here, else why."""
        ok, why = cls.available()
        return None if ok else why

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

    def reconfigure(self, bitrate: int | None, crf: float) -> None:
        """A new rate target while frames flow (a link whose capacity changed): the bitrate
        (bits/s; cbr, or the VBV cap of crf) and the CRF, from the next frame encoded on, no
        IDR. The rate-control method cannot change. Raises EncoderError where the backend
        cannot, naming why."""
        raise EncoderError(f"the {self.type_key} backend cannot change its rate while encoding")

    @abstractmethod
    def headers(self) -> bytes:
        """SPS/PPS (Annex-B) for containers that want them out of band."""

    @abstractmethod
    def close(self) -> None:
        """Free the encoder. Idempotent."""

    @abstractmethod
    def settings_summary(self) -> dict:
        """The effective settings (after presets and corrections), for stats."""

    @property
    def weighs_reuse(self) -> bool:
        """The encoder itself gives blocks that later frames reuse more bits (x264's mb-tree,
        x265's cutree: both need a lookahead). Where it does not, the QP map adds that term."""
        return False

    # -- for the backends

    def _require_open(self) -> None:
        if self._enc is None:
            raise EncoderError("encoder is closed")

    def _check_frame(self, frame: Frame) -> None:
        """Before encoding ``frame``: the encoder is open, the stream not ended, the frame the
        size the encoder was opened for."""
        self._require_open()
        if self._flushed:
            raise EncoderError("encode() after flush(): the stream has ended; open a new encoder")
        s = self.settings
        if frame.width != s.width or frame.height != s.height:
            raise EncoderError(f"frame is {frame.width}x{frame.height}, encoder was opened for "
                               f"{s.width}x{s.height}")

    def _i420_planes(self, frame: Frame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Y, U and V of ``frame`` checked against the settings' size, each with unit column
        stride (a copy where they had none)."""
        s = self.settings
        cw, ch = s.width // 2, s.height // 2
        return (_plane(frame.y, s.height, s.width, "Y"), _plane(frame.u, ch, cw, "U"),
                _plane(frame.v, ch, cw, "V"))

    def _qp_map(self, qp_offsets) -> np.ndarray:
        """The QP-offset map as contiguous float32[mb_h, mb_w] of finite values."""
        s = self.settings
        q = np.asarray(qp_offsets, np.float32)
        if q.shape != (s.mb_h, s.mb_w):
            raise EncoderError(f"QP-offset map has shape {tuple(q.shape)}, expected (mb_h, mb_w) "
                               f"= ({s.mb_h}, {s.mb_w}) for {s.width}x{s.height}")
        if not np.isfinite(q).all():
            raise EncoderError("QP-offset map contains NaN or infinite values")
        return np.ascontiguousarray(q)

    def _summary(self, **head) -> dict:
        """The settings as ``settings_summary()`` reports them (x264, x265), after the backend's
        name and ``head``, ending with the corrections."""
        s = self.settings
        return {"backend": self.type_key, **head,
                "width": s.width, "height": s.height,
                "fps": str(s.fps), "time_base": str(s.time_base),
                "preset": s.preset, "tune": s.tune, "rc": s.rc,
                "crf": float(s.crf) if s.rc == "crf" else None,
                "bitrate": s.bitrate,
                "global_headers": s.global_headers,
                "params": dict(s.params),
                "corrections": list(self._corrections)}

    def _correct(self, msg: str) -> None:
        """Record a change to the settings (``settings_summary()["corrections"]``) and warn."""
        self._corrections.append(msg)
        logging.getLogger(type(self).__module__).warning("%s: %s", self.type_key, msg)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self):  # last resort; close() is idempotent
        try:
            self.close()
        except Exception:
            pass


# --- helpers for the backends ---------------------------------------------------------------------

def availability(*checks: Callable[[], object]) -> tuple[bool, str]:
    """``Encoder.available()`` from checks that raise EncoderError saying why not: (True, "")
    when all pass, else (False, the first one's message)."""
    try:
        for check in checks:
            check()
    except EncoderError as e:
        return False, str(e)
    return True, ""


def refuse_cqp(s: EncoderSettings, why: str) -> str:
    """``s.rc`` in lower case; constant QP (any of CQP_NAMES) refused, ``why`` saying what it
    would do to the map and what to use instead."""
    rc = str(s.rc).lower()
    if rc in CQP_NAMES:
        raise EncoderError(f"rc={s.rc!r} refused: {why}")
    return rc


def check_even_size(s: EncoderSettings, why: str) -> None:
    """4:2:0 chroma needs even frame sizes; ``why`` says so for the backend, with the fix."""
    if s.width % 2 or s.height % 2:
        raise EncoderError(f"frame size {s.width}x{s.height} has an odd dimension: {why}")


def pts_of(frame: Frame, s: EncoderSettings) -> int:
    """The frame's timestamp in the settings' time base (numbered at the frame rate if none)."""
    if frame.pts is None:
        return round(frame.index / (s.fps * s.time_base))
    if frame.time_base is not None and Fraction(frame.time_base) != s.time_base:
        return round(frame.pts * Fraction(frame.time_base) / s.time_base)
    return int(frame.pts)


class FrameGrid:
    """Timestamps on the frame rate's grid and back, for an encoder that writes 1/time base
    into its bitstream as the frame rate (x264's SPS, which a player of a raw stream or of RTP
    reads: a 1/90000 time base would say 90000 fps): it is given frame ticks, and each packet
    gets the input's own timestamps back. Frames closer than the grid (a variable rate) are
    kept one tick apart."""

    def __init__(self, time_base: Fraction, fps: Fraction):
        self.ticks_per_unit = Fraction(time_base) * Fraction(fps)
        self._pts: dict[int, int] = {}  # tick -> the input's pts, while a dts may name it
        self._last_tick: int | None = None

    def tick(self, pts: int) -> int:
        t = round(pts * self.ticks_per_unit)
        if self._last_tick is not None and t <= self._last_tick:
            t = self._last_tick + 1
        self._last_tick, self._pts[t] = t, pts
        return t

    def packet(self, pts_tick: int, dts_tick: int) -> tuple[int, int]:
        """(pts, dts) in the input's time base. An encoder's dts are its frames' ticks in
        input order, shifted back by its delay: the frame the tick names gives its pts (so the
        dts rise and never pass the pts as the ticks do); a tick before the first frame is
        counted back from the grid."""
        dts = self._pts.get(dts_tick)
        if dts is None:
            dts = round(dts_tick / self.ticks_per_unit)
        for t in [t for t in self._pts if t < dts_tick]:  # no later dts names them
            del self._pts[t]
        return self._pts[pts_tick], dts


def _plane(a: np.ndarray, h: int, w: int, name: str) -> np.ndarray:
    if a.dtype != np.uint8 or a.ndim != 2:
        raise EncoderError(f"{name} plane must be 2-D uint8, got {a.dtype} {a.shape}")
    if a.shape[0] < h or a.shape[1] < w:
        raise EncoderError(f"{name} plane is {a.shape[1]}x{a.shape[0]}, expected {w}x{h}")
    if a.strides[1] != 1 or a.strides[0] < w:
        a = np.ascontiguousarray(a)
    return a


# --- for the backends set up like x264's command line (x264, x265) ------------------------------
# ``backend`` names the library in messages; ``field`` is its name for the QP-offset map.

def norm_key(k: str) -> str:
    """An option name as the libraries' parsers compare it ("aq_mode" is "aq-mode")."""
    return k.strip().lower().replace("_", "-")


def check_preset(preset: str, presets: list[str], backend: str) -> None:
    """A preset by name or by its index in ``presets``."""
    if preset not in presets and not (preset.isdigit() and int(preset) < len(presets)):
        raise EncoderError(f"unknown {backend} preset {preset!r}; known: {', '.join(presets)}")


def check_profile(profile: str, profiles: list[str], backend: str) -> None:
    if profile not in profiles:
        raise EncoderError(f"unknown {backend} profile {profile!r}; known: {', '.join(profiles)}")


def option_error(ret: int, name: str, value: str | None, bad_name: int,
                 bad_value: int) -> str | None:
    """What a param_parse return code says about ``name=value`` (None: taken)."""
    if ret == bad_name:
        return f"unknown option {name!r}"
    if ret == bad_value:
        return f"bad value {value!r} for {name!r}"
    if ret < 0:
        return f"{name!r}={value!r} failed (error {ret})"
    return None


def check_rate_control(s: EncoderSettings, backend: str, field: str) -> None:
    """``s.rc`` one of RATE_CONTROLS; constant QP refused (the library ignores the map there)."""
    refuse_cqp(s, f"{backend} ignores {field} (the QP-offset map) in constant-QP mode; use "
                  "rc='crf', 'abr' or 'cbr'")
    if s.rc not in RATE_CONTROLS:
        raise EncoderError(f"unknown rate control {s.rc!r}; use one of "
                           f"{', '.join(RATE_CONTROLS)}")


def kbit_per_s(bitrate: int) -> int:
    """bits/s as the whole kbit/s x264 and x265 take: the nearest, a half up (1499 -> 1,
    1500 and 2499 -> 2, 2500 -> 3), at least 1 (Python's round() took a half to the even:
    2500 ran at 2, 3500 at 4)."""
    return max(1, (int(bitrate) + 500) // 1000)


def rate_options(s: EncoderSettings) -> list[tuple[str, object]]:
    """``keyint`` and ``rc`` as the libraries' options: crf (``bitrate`` a VBV cap), abr
    (average bitrate), cbr (bitrate with a 1 s VBV buffer at that rate); bit rates in kbit/s."""
    out: list[tuple[str, object]] = [] if s.keyint is None else [("keyint", s.keyint)]
    kbps = None if s.bitrate is None else kbit_per_s(s.bitrate)
    vbv = [] if kbps is None else [("vbv-maxrate", kbps), ("vbv-bufsize", kbps)]
    if s.rc == "crf":
        return [*out, ("crf", f"{float(s.crf):g}"), *vbv]
    return [*out, ("bitrate", kbps), *(vbv if s.rc == "cbr" else [])]


# x264's and x265's names of the H.273 codes (the same in both; "" where H.273 reserves one)
_COLOUR_NAMES = {
    "colorprim": ("", "bt709", "", "", "bt470m", "bt470bg", "smpte170m", "smpte240m", "film",
                  "bt2020", "smpte428", "smpte431", "smpte432"),
    "transfer": ("", "bt709", "", "", "bt470m", "bt470bg", "smpte170m", "smpte240m", "linear",
                 "log100", "log316", "iec61966-2-4", "bt1361e", "iec61966-2-1", "bt2020-10",
                 "bt2020-12", "smpte2084", "smpte428", "arib-std-b67"),
    "colormatrix": ("gbr", "bt709", "", "", "fcc", "bt470bg", "smpte170m", "smpte240m", "ycgco",
                    "bt2020nc", "bt2020c", "smpte2085", "chroma-derived-nc", "chroma-derived-c",
                    "ictcp"),
}


def colour_params(colour: tuple[int, int, int]) -> dict[str, str]:
    """The x264/x265 options (`colorprim`, `transfer`, `colormatrix`) that write `colour` into
    the VUI; an unspecified or unknown code is left out."""
    return {name: names[code] for (name, names), code in zip(_COLOUR_NAMES.items(), colour)
            if 0 <= code < len(names) and names[code]}


def apply_params(params: dict[str, str], managed: set[str], why_managed: str,
                 parse: Callable[[str, str], str | None], backend: str) -> str | None:
    """Pass ``params`` to ``parse`` (name, value -> what is wrong, or None), every bad one named
    in one EncoderError; the keys in ``managed`` are refused (``why_managed``: the settings they
    come from). Returns the profile, left for the caller to apply last, as the command lines do
    (not a param_parse option)."""
    bad, profile = [], None
    for k, v in params.items():
        if norm_key(k) in managed:
            raise EncoderError(f"{backend} param {k!r} is set from EncoderSettings "
                               f"({why_managed}); remove it from params")
        if norm_key(k) == "profile":
            profile = str(v)
            continue
        err = parse(k, v)
        if err:
            bad.append(err)
    if bad:
        raise EncoderError(f"invalid {backend} params: " + "; ".join(bad))
    return profile


def check_rate_change(s: EncoderSettings, bitrate: int | None, crf: float, backend: str,
                      average: bool = False) -> None:
    """A live rate change (``Encoder.reconfigure``) the backend can take: positive bit rates, a
    CRF in 0-51; the bit rate changes only where it was a target or a cap from the start (cbr,
    crf with a bitrate; abr too where the backend changes an ``average`` live), and a cap can
    be neither added nor removed. EncoderError names the setting to start with."""
    if bitrate is not None and bitrate <= 0:
        raise EncoderError(f"invalid bitrate {bitrate} (bits/s, must be > 0)")
    if not 0 <= crf <= 51:
        raise EncoderError(f"invalid crf {crf} (0-51)")
    if bitrate is not None and bitrate != s.bitrate and (s.rc == "abr" and not average
                                                         or s.bitrate is None):
        start = ("rc cbr" if s.rc == "abr" else "a bitrate (the VBV cap) set at the start")
        raise EncoderError(f"{backend} can change the bitrate while encoding only with VBV on "
                           f"from the start: use {start}")
    if bitrate is None and s.bitrate is not None:
        raise EncoderError(f"{backend} cannot turn its VBV cap off while encoding")


def rate_change(s: EncoderSettings, bitrate: int | None, crf: float,
                backend: str) -> tuple[int, int, float]:
    """What a live rate change asks of an x264-style library: (bitrate kbit/s or 0, the VBV
    max rate and buffer in kbit/s or 0, crf or -1); checked by ``check_rate_change`` (such a
    library changes the bit rate and VBV only where VBV was on from the start)."""
    check_rate_change(s, bitrate, crf, backend)
    kbps = kbit_per_s(bitrate) if bitrate else 0
    return (kbps if s.rc != "crf" else 0), kbps, (float(crf) if s.rc == "crf" else -1.0)


def rc_summary(rc, methods: dict[int, str], **aq) -> dict:
    """The rate control read back from the library (``rc_method``: a name from ``methods``, AQ
    and the backend's ``aq`` extras, VBV) as ``settings_summary()`` reports it."""
    return {"rc_method": methods.get(int(rc.rc_method), str(rc.rc_method)),
            "aq_mode": int(rc.aq_mode), "aq_strength": round(float(rc.aq_strength), 4), **aq,
            "vbv_maxrate_kbps": int(rc.vbv_max_bitrate),
            "vbv_bufsize_kbit": int(rc.vbv_buffer_size)}


def check_quantiser(rc, cqp_method: int, backend: str, field: str) -> None:
    """The rate control read back from the library's param struct (``rc_method``, ``qp_min``,
    ``qp_max``) leaves the map room to act: not constant QP, not one pinned quantiser."""
    if rc.rc_method == cqp_method:
        raise EncoderError(
            f"constant-QP rate control requested (a 'qp' param): {backend} ignores {field} "
            "(the QP-offset map) in CQP; use rc='crf', 'abr' or 'cbr' and drop 'qp'")
    if rc.qp_min >= rc.qp_max:
        raise EncoderError(
            f"qpmin={rc.qp_min} >= qpmax={rc.qp_max} pins the quantiser, so {backend} could not "
            "apply the QP-offset map; widen the qpmin/qpmax range")
