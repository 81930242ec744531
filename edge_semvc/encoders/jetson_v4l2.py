"""Jetson's hardware encoder (Jetson Multimedia API, V4L2) with per-frame ROI rectangles.

Written against the Multimedia API's headers and samples; NOT YET RUN ON A JETSON. The binding
(compiled on the device against the JetPack's ``v4l2_nv_extensions.h``) is
``jetson_v4l2_binding.py``.

What the encoder takes (FACTS.md, v4l2_nv_extensions.h): no per-macroblock map, but at most
``V4L2_MAX_ROI_REGIONS`` (8) rectangles per frame, each with an integer QP delta added to the
rate-control QP and then clamped into [min QP, max QP]. So the QP map becomes 8 rectangles
(``rects.to_rects``) with rounded deltas, and min QP == max QP, which would leave every delta
clamped away, is refused. Rate control is VBR or CBR at a bitrate: rc=crf and constant QP are
refused. H.264 and H.265 (``params["codec"]``: ``h264`` or ``hevc``).

A live rate change (``reconfigure``) sets the bit rate (and a VBR peak) with VIDIOC_S_EXT_CTRLS
while streaming, as ``NvVideoEncoder::setBitrate``/``setPeakBitrate`` do. ``intra_refresh``: the
encoder's slice intra refresh every ``keyint`` frames, one IDR at the start.

``params`` keys: ``codec``, ``min_qp``, ``max_qp`` (0-51; unset: the encoder's), ``idr_interval``
(frames; default ``keyint``), ``peak_bitrate`` (VBR, bits/s), ``device`` (default: the first of
/dev/v4l2-nvenc, /dev/nvhost-msenc that exists).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..frame import Frame
from ..rects import to_rects
from ..values import QpMap, Rect
from . import base
from .base import Encoder, EncoderError, EncoderSettings, Packet, pts_of
from .nvenc import (
    QP_MAX,
    REFRESH_PERIOD,
    check_param_keys,
    check_params,
    codec_param,
    delta_limit,
    int_param,
    qp_range_param,
    retuned,
)

log = logging.getLogger(__name__)

MAX_ROI = 8  # V4L2_MAX_ROI_REGIONS in every JetPack header read; the binding checks it
DEVICES = ("/dev/v4l2-nvenc", "/dev/nvhost-msenc")  # JetPack 6+ / earlier (read, not run)
NO_KEYFRAMES = 2**31 - 1  # interval "never": the caller places every IDR (caller_idr)
PARAM_KEYS = ("codec", "min_qp", "max_qp", "idr_interval", "peak_bitrate", "device")
PARAM_INTS = {"peak_bitrate": (1, 2**31 - 1), "idr_interval": (1, 2**31 - 1)}
# the controls the Multimedia API lets change while streaming ("runtime configurable")
LIVE_CONTROLS = ("V4L2_CID_MPEG_VIDEO_BITRATE", "V4L2_CID_MPEG_VIDEO_BITRATE_PEAK")
# x264 preset names (the configuration's vocabulary) -> Jetson's four hardware presets
HW_PRESETS = {"ultrafast": "ULTRAFAST", "superfast": "ULTRAFAST", "veryfast": "FAST",
              "faster": "FAST", "fast": "FAST", "medium": "MEDIUM", "slow": "SLOW",
              "slower": "SLOW", "veryslow": "SLOW", "placebo": "SLOW"}


# --- the QP map as rectangles -------------------------------------------------------------------

@dataclass(frozen=True)
class RoiPlan:
    """The rectangles sent for one frame and what they cost against the full map (QP^2, mean
    over macroblocks): ``mse_rects`` from cutting the map into rectangles (float deltas),
    ``mse_total`` after rounding and clamping; ``max_rounding`` is the largest |rounded - exact|
    delta, clamping included."""

    rects: tuple[Rect, ...]  # integer deltas, in macroblocks
    mse_rects: float
    mse_total: float
    max_rounding: float


def plan_rois(offsets: np.ndarray, max_rects: int = MAX_ROI,
              limit: int = QP_MAX) -> RoiPlan:
    """The QP map (float32[mb_h, mb_w]) as at most ``max_rects`` rectangles with integer deltas
    in [-limit, limit]; a delta that rounds to 0 needs no rectangle."""
    m = np.asarray(offsets, np.float32)
    exact = to_rects(QpMap(m), max_rects)
    ints, worst = [], 0.0
    for r in exact:
        d = int(np.clip(np.rint(r.delta), -limit, limit))
        worst = max(worst, abs(d - r.delta))
        if d:
            ints.append(Rect(r.x, r.y, r.w, r.h, d))
    mse = lambda rs: float(np.mean((QpMap.from_rects(rs, m.shape).offsets - m) ** 2))  # noqa: E731
    return RoiPlan(tuple(ints), mse(exact) if m.size else 0.0, mse(ints) if m.size else 0.0,
                   worst)


def roi_pixels(rects, width: int, height: int) -> list[tuple[int, int, int, int, int]]:
    """(left, top, width, height, delta) in pixels, clipped to the frame (the last macroblock
    row/column may be partial)."""
    out = []
    for r in rects:
        left, top = r.x * 16, r.y * 16
        w, h = min(r.w * 16, width - left), min(r.h * 16, height - top)
        if w > 0 and h > 0:
            out.append((left, top, w, h, int(r.delta)))
    return out


# --- Annex-B helpers (the encoder hands out bitstream, nothing else) ---------------------------

_PARAM_SETS = {"h264": (7, 8), "hevc": (32, 33, 34)}  # SPS, PPS (+ VPS)
_IDR = {"h264": (5,), "hevc": (19, 20)}
_SLICE = {"h264": range(1, 6), "hevc": range(0, 32)}


def split_nals(data: bytes) -> list[bytes]:
    """NAL units of an Annex-B stream, each with its start code."""
    starts, i = [], data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i - 1 if i > 0 and data[i - 1] == 0 else i)
        i = data.find(b"\x00\x00\x01", i + 3)
    return [data[a:b] for a, b in zip(starts, starts[1:] + [len(data)])]


def nal_type(nal: bytes, codec: str) -> int:
    i = nal.find(b"\x00\x00\x01") + 3
    if i < 3 or i >= len(nal):
        return -1  # no header byte: a truncated unit
    return nal[i] & 0x1F if codec == "h264" else (nal[i] >> 1) & 0x3F


def is_idr(data: bytes, codec: str) -> bool:
    return any(nal_type(n, codec) in _IDR[codec] for n in split_nals(data))


def has_picture(data: bytes, codec: str) -> bool:
    return any(nal_type(n, codec) in _SLICE[codec] for n in split_nals(data))


def param_sets(data: bytes, codec: str) -> bytes:
    return b"".join(n for n in split_nals(data) if nal_type(n, codec) in _PARAM_SETS[codec])


def strip_param_sets(data: bytes, codec: str) -> bytes:
    return b"".join(n for n in split_nals(data) if nal_type(n, codec) not in _PARAM_SETS[codec])


# --- settings -> V4L2 controls ------------------------------------------------------------------

@dataclass(frozen=True)
class JetsonParams:
    codec: str
    width: int
    height: int
    fps: Fraction
    rate_control: str  # "vbr" or "cbr"
    bitrate: int
    peak_bitrate: int | None
    iframe_interval: int | None  # None: the encoder's default
    idr_interval: int | None
    min_qp: int | None
    max_qp: int | None
    hw_preset: str  # ULTRAFAST, FAST, MEDIUM, SLOW
    device: str | None  # None: the first of DEVICES that exists
    intra_refresh: int = 0  # frames between intra refreshes (instead of IDRs); 0: off

    def controls(self) -> list[tuple[str, int | str]]:
        """The integer controls in the order the Multimedia API sample sets them, as
        (control name, value or enum name): names, not numbers, because the IDs moved between
        JetPack releases; the binding looks each up in the compiled header."""
        hevc = self.codec == "hevc"
        out: list[tuple[str, int | str]] = [
            ("V4L2_CID_MPEG_VIDEO_BITRATE", self.bitrate),
            ("V4L2_CID_MPEG_VIDEO_H265_PROFILE" if hevc else "V4L2_CID_MPEG_VIDEO_H264_PROFILE",
             "V4L2_MPEG_VIDEO_H265_PROFILE_MAIN" if hevc else "V4L2_MPEG_VIDEO_H264_PROFILE_HIGH"),
            ("V4L2_CID_MPEG_VIDEO_BITRATE_MODE",
             f"V4L2_MPEG_VIDEO_BITRATE_MODE_{self.rate_control.upper()}"),
        ]
        if self.rate_control == "vbr" and self.peak_bitrate:
            out.append(("V4L2_CID_MPEG_VIDEO_BITRATE_PEAK", self.peak_bitrate))
        if self.idr_interval is not None:
            out.append(("V4L2_CID_MPEG_VIDEO_IDR_INTERVAL", self.idr_interval))
        if self.iframe_interval is not None:
            out.append(("V4L2_CID_MPEG_VIDEO_GOP_SIZE", self.iframe_interval))
        out += [("V4L2_CID_MPEG_VIDEOENC_HW_PRESET_TYPE_PARAM",
                 f"V4L2_ENC_HW_PRESET_{self.hw_preset}"),
                ("V4L2_CID_MPEG_VIDEOENC_NUM_BFRAMES", 0),  # output order = input order
                ("V4L2_CID_MPEG_VIDEOENC_INSERT_SPS_PPS_AT_IDR", 1)]  # every IDR decodes alone
        return out

    def live_controls(self) -> list[tuple[str, int | str]]:
        """The controls a live rate change sets again (LIVE_CONTROLS), in the same order."""
        return [(name, value) for name, value in self.controls() if name in LIVE_CONTROLS]


def build_params(s: EncoderSettings) -> JetsonParams:
    """Validate the settings for this encoder and map them; EncoderError naming the value and
    what to use instead."""
    p = s.params
    check_param_keys(p, PARAM_KEYS, "jetson-v4l2")
    rc = base.refuse_cqp(s, "in constant-QP mode the Jetson encoder applies no ROI deltas; use "
                            "rc='abr' (VBR) or rc='cbr' with a bitrate")
    if rc == "crf":
        raise EncoderError("rc='crf' is not available on Jetson's hardware encoder (V4L2 offers "
                           "VBR and CBR only); use rc='abr' (VBR) or rc='cbr' and set a bitrate")
    if rc not in ("abr", "cbr"):
        raise EncoderError(f"unknown rate control {s.rc!r}; use 'abr' (VBR) or 'cbr'")
    if not s.bitrate:
        raise EncoderError(f"rc={rc!r} needs a bitrate (bits/s) on the Jetson encoder")
    base.check_even_size(s, "the Jetson encoder takes even sizes only; crop or pad by one pixel")
    if s.tune and s.tune != "zerolatency":  # the hardware has no tunes; zerolatency is its way
        raise EncoderError(f"tune {s.tune!r} is not available on the Jetson encoder; leave it "
                           "empty or use zerolatency (no B-frames, which is what it does)")
    preset = str(s.preset).lower()
    if preset not in HW_PRESETS:
        raise EncoderError(f"unknown preset {s.preset!r} for the Jetson encoder; use one of "
                           f"{', '.join(HW_PRESETS)}")
    lo, hi = qp_range_param(p)
    peak = int_param(p, "peak_bitrate", 1, 2**31 - 1)
    if peak is not None and peak < s.bitrate:
        raise EncoderError(f"peak_bitrate {peak} is below the bitrate {s.bitrate}; raise it")
    idr = int_param(p, "idr_interval", 1, NO_KEYFRAMES)
    iframe = s.keyint
    refresh = (s.keyint or REFRESH_PERIOD) if s.intra_refresh else 0
    if refresh and idr is not None:
        raise EncoderError("idr_interval with intra_refresh: the refresh replaces IDRs; drop "
                           "idr_interval")
    if s.caller_idr or refresh:  # IDRs come from force_idr only
        iframe = idr = NO_KEYFRAMES
    elif idr is None:
        idr = s.keyint  # each I-frame an IDR: a closed GOP, as with x264's keyint
    return JetsonParams(codec=codec_param(p), width=s.width, height=s.height, fps=s.fps,
                        rate_control="vbr" if rc == "abr" else "cbr", bitrate=int(s.bitrate),
                        peak_bitrate=peak, iframe_interval=iframe, idr_interval=idr,
                        min_qp=lo, max_qp=hi, hw_preset=HW_PRESETS[preset],
                        device=p.get("device") or None, intra_refresh=refresh)


def find_device(device: str | None) -> str:
    if device:
        return device
    for d in DEVICES:
        if os.path.exists(d):
            return d
    raise EncoderError(f"no Jetson encoder device ({' or '.join(DEVICES)}); this backend runs "
                       "on a Jetson with a hardware encoder (the Orin Nano has none: use x264)")


# --- the encoder --------------------------------------------------------------------------------

_TIMEOUT_S = 2.0


class _Session:
    """One open encoder (the binding's handle), configured and streaming."""

    def __init__(self, ffi, lib, p: JetsonParams, device: str) -> None:
        self.ffi, self.lib = ffi, lib
        self.cap_size = max(2 << 20, p.width * p.height * 3 // 2)
        err = ffi.new("char[]", 512)
        e = lib.semvc_jenc_open(device.encode(), p.codec == "hevc", p.width, p.height,
                                self.cap_size, err, 512)
        if e == ffi.NULL:
            raise EncoderError("Jetson encoder: " + ffi.string(err).decode(errors="replace"))
        self.e = e
        try:
            self.set_controls(p.controls())
            self._check(lib.semvc_jenc_set_fps(e, p.fps.numerator, p.fps.denominator), "fps")
            if p.intra_refresh:
                self._check(lib.semvc_jenc_set_intra_refresh(e, p.intra_refresh),
                            f"intra refresh every {p.intra_refresh} frames")
            if p.min_qp is not None or p.max_qp is not None:
                self._check(lib.semvc_jenc_set_qp_range(
                    e, -1 if p.min_qp is None else p.min_qp,
                    -1 if p.max_qp is None else p.max_qp), "QP range")
            self._check(lib.semvc_jenc_enable_roi(e), "ROI")
            self._check(lib.semvc_jenc_start(e, 6, 8), "buffers")
        except BaseException:
            self.close()
            raise
        self.buf = ffi.new("uint8_t[]", self.cap_size)
        self.len, self.seq = ffi.new("uint32_t *"), ffi.new("uint64_t *")
        self.rois = ffi.new("semvc_roi_t[]", MAX_ROI)

    def set_controls(self, controls) -> None:
        """(control name, value or enum name) pairs, each looked up in the compiled header."""
        for name, value in controls:
            v = getattr(self.lib, value) if isinstance(value, str) else value
            self._check(self.lib.semvc_jenc_set_ctrl(self.e, getattr(self.lib, name), v),
                        f"{name}={value}")

    def _check(self, ret: int, what: str) -> None:
        if ret < 0:
            why = self.ffi.string(self.lib.semvc_jenc_error(self.e)).decode(errors="replace")
            raise EncoderError(f"Jetson encoder: setting {what} failed: {why}")

    def get(self):
        """(bytes, seq), None (nothing ready) or "eos"."""
        r = self.lib.semvc_jenc_get(self.e, self.buf, self.cap_size, self.len, self.seq)
        self._check(r, "DQBUF")
        if r == 2:
            return "eos"
        return (bytes(self.ffi.buffer(self.buf, self.len[0])), int(self.seq[0])) if r else None

    def close(self) -> None:
        e, self.e = getattr(self, "e", None), None
        if e is not None:
            self.lib.semvc_jenc_close(e)


class JetsonV4l2Encoder(Encoder):
    """H.264/H.265 on Jetson's NVENC block, the QP map as ROI rectangles."""

    type_key = "jetson-v4l2"

    def __init__(self, settings: EncoderSettings) -> None:
        super().__init__(settings)
        self._s = None
        self.params = build_params(settings)  # settings errors first, on any machine
        self.codec = self.params.codec
        self._limit = delta_limit(self.params.min_qp, self.params.max_qp)
        from .jetson_v4l2_binding import get_binding, load_runtime
        self._ffi, self._lib = get_binding()
        if self._lib.V4L2_MAX_ROI_REGIONS < MAX_ROI:
            raise EncoderError(f"this JetPack takes {self._lib.V4L2_MAX_ROI_REGIONS} ROI "
                               f"rectangles, fewer than the {MAX_ROI} planned")
        load_runtime()
        self._device = find_device(self.params.device)
        self._s = _Session(self._ffi, self._lib, self.params, self._device)
        self._seq, self._pts, self._held = 0, {}, b""
        self._headers: bytes | None = None
        self._eos = False
        self._stats = {"frames": 0, "frames_with_map": 0, "frames_with_rois": 0, "rects": 0,
                       "mse_total": 0.0, "max_rounding": 0.0}

    @classmethod
    def check_params(cls, params: dict[str, str]) -> None:
        check_params(params, PARAM_KEYS, "jetson-v4l2", PARAM_INTS)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        from .jetson_v4l2_binding import get_binding, load_runtime
        return base.availability(get_binding, load_runtime, lambda: find_device(None))

    def _require_open(self) -> None:  # the open encoder is the session
        if self._s is None:
            raise EncoderError("encoder is closed")

    def _drain(self, until_eos: bool = False) -> list[Packet]:
        out, deadline = [], time.monotonic() + _TIMEOUT_S
        while True:
            got = self._s.get()
            if got == "eos":
                self._eos = True
                break
            if got is None:
                if not until_eos:
                    break
                if time.monotonic() > deadline:
                    raise EncoderError(f"the Jetson encoder did not finish within {_TIMEOUT_S} s")
                time.sleep(0.001)
                continue
            data, seq = got
            data = self._held + data
            if not has_picture(data, self.codec):  # parameter sets alone: keep for the picture
                self._held = data
                continue
            self._held = b""
            out.append(self._packet(data, self._pts.pop(seq, seq)))
        return out

    def _packet(self, data: bytes, pts: int) -> Packet:
        key = is_idr(data, self.codec)
        if self.settings.global_headers:
            inband = param_sets(data, self.codec)
            if inband and self._headers is not None and inband != self._headers:
                raise EncoderError("the Jetson encoder's in-band parameter sets differ from "
                                   "headers(); use a container without global headers (.ts, "
                                   ".h264)")
            data = strip_param_sets(data, self.codec)
        return Packet(data, pts, pts, key)  # no B-frames: dts = pts

    def encode(self, frame: Frame, qp_offsets: np.ndarray | None = None,
               force_idr: bool = False) -> list[Packet]:
        self._check_frame(frame)
        s = self.settings
        n = 0
        if qp_offsets is not None:
            plan = plan_rois(self._qp_map(qp_offsets), MAX_ROI, self._limit)
            for i, (left, top, w, h, d) in enumerate(roi_pixels(plan.rects, s.width, s.height)):
                r = self._s.rois[i]
                r.left, r.top, r.width, r.height, r.delta = left, top, w, h, d
                n = i + 1
            st = self._stats
            st["frames_with_map"] += 1
            st["frames_with_rois"] += bool(n)
            st["rects"] += n
            st["mse_total"] += plan.mse_total
            st["max_rounding"] = max(st["max_rounding"], plan.max_rounding)
        self._stats["frames"] += 1
        planes = [np.ascontiguousarray(a) for a in (frame.y, frame.u, frame.v)]
        seq, self._seq = self._seq, self._seq + 1
        self._pts[seq] = pts_of(frame, s)
        ptr = [self._ffi.cast("uint8_t *", a.ctypes.data) for a in planes]
        out, deadline = [], time.monotonic() + _TIMEOUT_S
        while True:  # all input buffers busy: collect output until one comes back
            r = self._lib.semvc_jenc_put(self._s.e, ptr[0], planes[0].strides[0], ptr[1],
                                         planes[1].strides[0], ptr[2], planes[2].strides[0],
                                         seq, self._s.rois, n, bool(force_idr))
            self._s._check(r, "QBUF")
            if r:
                break
            out += self._drain()
            if time.monotonic() > deadline:
                raise EncoderError(f"the Jetson encoder took no frame for {_TIMEOUT_S} s")
            time.sleep(0.001)
        return out + self._drain()

    def flush(self) -> list[Packet]:
        self._require_open()
        self._flushed = True
        out, deadline = [], time.monotonic() + _TIMEOUT_S
        while True:
            r = self._lib.semvc_jenc_eos(self._s.e)
            self._s._check(r, "end of stream")
            if r:
                break
            out += self._drain()
            if time.monotonic() > deadline:
                raise EncoderError("the Jetson encoder took no end-of-stream buffer")
            time.sleep(0.001)
        return out + (self._drain(until_eos=True) if not self._eos else [])

    def reconfigure(self, bitrate: int | None, crf: float) -> None:
        """The new bit rate (and a VBR peak in proportion) from the next frames, set while
        streaming; no IDR. Jetson has no CRF (refused when the encoder is opened)."""
        self._require_open()
        s = retuned(self.settings, bitrate, crf, "jetson-v4l2")
        p = build_params(s)
        self._s.set_controls(p.live_controls())
        self.settings, self.params = s, p

    def headers(self) -> bytes:
        """SPS/PPS (+VPS). The V4L2 encoder writes them only with the first picture, so they
        come from a second, identically configured session that encodes one grey frame."""
        self._require_open()
        if self._headers is None:
            log.info("jetson-v4l2: probing SPS/PPS with a second session on %s", self._device)
            probe = _Session(self._ffi, self._lib, self.params, self._device)
            try:
                grey = [np.full((h, w), 128, np.uint8) for w, h in
                        ((self.params.width, self.params.height),
                         ((self.params.width + 1) // 2, (self.params.height + 1) // 2))]
                ptr = [self._ffi.cast("uint8_t *", a.ctypes.data) for a in grey]
                probe._check(self._lib.semvc_jenc_put(
                    probe.e, ptr[0], grey[0].strides[0], ptr[1], grey[1].strides[0], ptr[1],
                    grey[1].strides[0], 0, probe.rois, 0, 1), "QBUF")
                deadline, data = time.monotonic() + _TIMEOUT_S, b""
                while not param_sets(data, self.codec) and time.monotonic() < deadline:
                    got = probe.get()
                    if isinstance(got, tuple):
                        data += got[0]
                    else:
                        time.sleep(0.001)
            finally:
                probe.close()
            self._headers = param_sets(data, self.codec)
            if not self._headers:
                raise EncoderError("the Jetson encoder produced no parameter sets")
        return self._headers

    def close(self) -> None:
        s, self._s = getattr(self, "_s", None), None
        if s is not None:
            s.close()

    def settings_summary(self) -> dict:
        p, st = self.params, self._stats
        mapped = max(1, st["frames_with_map"])
        return {"backend": self.type_key, "codec": p.codec, "width": p.width,
                "height": p.height, "fps": str(p.fps), "rc": p.rate_control,
                "bitrate": p.bitrate, "peak_bitrate": p.peak_bitrate,
                "iframe_interval": p.iframe_interval, "idr_interval": p.idr_interval,
                "intra_refresh": p.intra_refresh,
                "min_qp": p.min_qp, "max_qp": p.max_qp, "hw_preset": p.hw_preset,
                "device": getattr(self, "_device", p.device),
                "global_headers": self.settings.global_headers,
                "roi": {"max_rects": MAX_ROI, "delta_limit": self._limit,
                        "frames_with_map": st["frames_with_map"],
                        "frames_with_rois": st["frames_with_rois"],
                        "mean_rects": st["rects"] / mapped,
                        "mean_mse_qp2": st["mse_total"] / mapped,
                        "max_rounding_qp": st["max_rounding"]}}

