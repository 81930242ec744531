"""Desktop NVENC (NVIDIA GPUs, Jetson Thor) with a per-picture QP delta map.

Written against ``nvEncodeAPI.h`` (nv-codec-headers 11.1, Debian's ``libffmpeg-nvenc-dev``); NOT
YET RUN ON NVENC HARDWARE. The binding (compiled on first use, cached) is ``nvenc_binding.py``.

What NVENC takes (the header's comments, FACTS.md): ``NV_ENC_RC_PARAMS.qpMapMode =
NV_ENC_QP_MAP_DELTA`` and per picture ``NV_ENC_PIC_PARAMS.qpDeltaMap``, a signed byte per 16x16
macroblock (H.264) or per coding tree block (HEVC; the header allows only 32x32 CTBs), raster
order, added to the rate-control QP. It does not combine with NVENC's own spatial/temporal AQ
(both are switched off), and a picture sent without a map reuses the previous one, so frames
without a map get an explicit zero map. No B-frames and no lookahead: one packet per frame.

Rate control: ``crf`` becomes NVENC's constant-quality VBR (target quality = crf, ``bitrate`` a
cap), ``abr`` VBR, ``cbr`` CBR with a 1 s VBV buffer. A live change (``reconfigure``) goes through
``NvEncReconfigureEncoder`` with the session's initialisation parameters and the new rate, no IDR
and no reset of the rate control. ``intra_refresh``: NVENC's intra refresh over ``keyint``
frames, an infinite GOP (one IDR at the start; recovery point SEIs in H.264).
``params`` keys: ``codec`` (h264, hevc),
``min_qp``/``max_qp``, ``idr_interval``, ``peak_bitrate`` (VBR), ``gpu`` (CUDA ordinal).
Presets: ``p1``..``p7`` or x264's names (mapped); tunes: ``hq``, ``ll``, ``ull`` or zerolatency.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
from collections import deque
from dataclasses import dataclass

import numpy as np

from ..config_model import check
from ..errors import ConfigError
from ..frame import Frame
from . import base
from .base import Encoder, EncoderError, EncoderSettings, Packet, pts_of

log = logging.getLogger(__name__)

# The parameter helpers below are shared with the Jetson backend (jetson_v4l2.py).

QP_MAX = 51  # 8-bit H.264/H.265: a delta beyond this changes nothing
HEVC_CTB = 32  # nvEncodeAPI.h: "only supports maxCUSize equal to NV_ENC_HEVC_CUSIZE_32x32"
INFINITE = 0xFFFFFFFF  # NVENC_INFINITE_GOPLENGTH: no automatic keyframes
CODECS = {"h264": "h264", "avc": "h264", "hevc": "hevc", "h265": "hevc"}
CQP_NAMES = base.CQP_NAMES  # refused by base.refuse_cqp; still importable from here
PARAM_KEYS = ("codec", "min_qp", "max_qp", "idr_interval", "peak_bitrate", "gpu")
PARAM_INTS = {"peak_bitrate": (1, 2**32 - 1), "idr_interval": (1, 2**32 - 2), "gpu": (0, 63)}
PRESETS = {**{f"p{i}": i for i in range(1, 8)},
           "ultrafast": 1, "superfast": 2, "veryfast": 3, "faster": 4, "fast": 4, "medium": 5,
           "slow": 6, "slower": 7, "veryslow": 7, "placebo": 7}
TUNINGS = {"hq": "HIGH_QUALITY", "ll": "LOW_LATENCY", "ull": "ULTRA_LOW_LATENCY",
           "zerolatency": "ULTRA_LOW_LATENCY"}
RC_MODES = {"cq": 0, "vbr": 1, "cbr": 2}
REFRESH_PERIOD = 250  # frames an intra refresh takes without keyint: x264's default keyint
_SLOTS = 4  # input/output buffer pairs; one is in flight at a time without B-frames/lookahead


# --- parameters shared by the NVIDIA backends ---------------------------------------------------

def check_param_keys(params: dict, known: tuple[str, ...], backend: str) -> None:
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise EncoderError(f"unknown {backend} param(s) {', '.join(map(repr, unknown))}; "
                           f"known: {', '.join(known)}")


def check_params(params: dict, keys: tuple[str, ...], backend: str,
                 ints: dict[str, tuple[int, int]]) -> None:
    """`encoder.params` of an NVIDIA backend checked alone, at load (its `check_params`): the
    known keys, the codec, the QP range and the integer keys in `ints` (key: (lo, hi)); a
    refusal is a ConfigError naming `encoder.params.KEY`."""
    for key, value in params.items():
        check(key in keys, f"encoder.params.{key}", value,
              f"a {backend} param ({', '.join(keys)})")
    checks = {"codec": lambda: codec_param(params), "min_qp": lambda: qp_range_param(params),
              **{k: (lambda k=k: int_param(params, k, *ints[k])) for k in ints}}
    for key, run in checks.items():
        try:
            run()
        except EncoderError as e:
            raise ConfigError(f"invalid value for encoder.params.{key}: {e} ({backend})",
                              f"encoder.params.{key}") from None


def codec_param(params: dict) -> str:
    """``params["codec"]`` as ``h264`` or ``hevc`` (default h264)."""
    raw = str(params.get("codec", "h264")).strip().lower()
    if raw not in CODECS:
        raise EncoderError(f"invalid codec {raw!r}; use h264 or hevc")
    return CODECS[raw]


def int_param(params: dict, key: str, lo: int, hi: int) -> int | None:
    if key not in params or str(params[key]).strip() == "":
        return None
    try:
        v = int(str(params[key]).strip())
    except ValueError:
        raise EncoderError(f"invalid {key} {params[key]!r}: an integer") from None
    if not lo <= v <= hi:
        raise EncoderError(f"invalid {key} {v}: between {lo} and {hi}")
    return v


def qp_range_param(params: dict) -> tuple[int | None, int | None]:
    """(min_qp, max_qp) from params, each None when unset. Equal bounds are refused: the
    encoder clamps QP + delta into the range, so a single-value range disables the map."""
    lo, hi = int_param(params, "min_qp", 0, QP_MAX), int_param(params, "max_qp", 0, QP_MAX)
    if lo is not None and hi is not None:
        if lo == hi:
            raise EncoderError(
                f"min_qp == max_qp ({lo}) pins the quantiser: the encoder clamps every QP delta "
                "of the map back into [min_qp, max_qp], so the map would do nothing; widen the "
                "range (e.g. min_qp 10, max_qp 45) or leave both unset")
        if lo > hi:
            raise EncoderError(f"min_qp {lo} > max_qp {hi}; swap them")
    return lo, hi


def retuned(s: EncoderSettings, bitrate: int | None, crf: float, backend: str) -> EncoderSettings:
    """The settings after a live rate change (``Encoder.reconfigure``), checked as every backend
    checks one (``base.check_rate_change``; a VBR average may change here); a VBR peak
    (``params["peak_bitrate"]``) keeps its ratio to the average."""
    base.check_rate_change(s, bitrate, crf, backend, average=True)
    params = dict(s.params)
    peak = int_param(params, "peak_bitrate", 1, 2**32 - 1)
    if peak is not None and bitrate and s.bitrate:
        params["peak_bitrate"] = str(max(bitrate, round(peak * bitrate / s.bitrate)))
    return dataclasses.replace(s, bitrate=bitrate, crf=crf, params=params)


def delta_limit(min_qp: int | None, max_qp: int | None) -> int:
    """The largest |delta| that can still change a QP: the span of the allowed range."""
    return (max_qp if max_qp is not None else QP_MAX) - (min_qp if min_qp is not None else 0)


# --- the delta map ------------------------------------------------------------------------------

def map_grid(width: int, height: int, codec: str) -> tuple[int, int]:
    """(rows, columns) of the delta map: macroblocks for H.264, 32x32 CTBs for HEVC (the
    header's qpDeltaMapSize: picWidthInMbs * picHeightInMbs, or in CTBs)."""
    block = HEVC_CTB if codec == "hevc" else 16
    return -(-height // block), -(-width // block)


def delta_map(offsets: np.ndarray, codec: str, limit: int = QP_MAX) -> np.ndarray:
    """int8[rows, cols] for ``qpDeltaMap`` from a float32[mb_h, mb_w] QP map: HEVC takes the
    mean of the (up to) 2x2 macroblocks of each CTB (the least-squares value), then rounding and
    clamping to [-limit, limit]."""
    m = np.asarray(offsets, np.float32)
    if codec == "hevc":
        h, w = m.shape
        padded = np.full((h + h % 2, w + w % 2), np.nan, np.float32)  # edge CTBs: fewer MBs
        padded[:h, :w] = m
        m = np.nanmean(padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2),
                       axis=(1, 3))
    return np.clip(np.rint(m), -limit, limit).astype(np.int8)


def applied_map(dm: np.ndarray, codec: str, mb_shape: tuple[int, int]) -> np.ndarray:
    """The per-macroblock offsets the encoder applies for a delta map (float32[mb_h, mb_w])."""
    a = dm.astype(np.float32)
    if codec == "hevc":
        a = a.repeat(2, 0).repeat(2, 1)
    return a[:mb_shape[0], :mb_shape[1]]


def map_error(offsets: np.ndarray, dm: np.ndarray, codec: str) -> float:
    """Mean squared difference (QP^2) between the map asked for and the one applied."""
    m = np.asarray(offsets, np.float32)
    return float(np.mean((applied_map(dm, codec, m.shape) - m) ** 2)) if m.size else 0.0


def nv12_into(dst: np.ndarray, pitch: int, frame: Frame) -> None:
    """Write an I420 frame into a locked NV12 buffer (uint8, ``pitch`` bytes a row; the chroma
    plane starts after ``height`` luma rows, U and V interleaved)."""
    h, w = frame.height, frame.width
    dst[:h * pitch].reshape(h, pitch)[:, :w] = frame.y[:h, :w]
    uv = dst[h * pitch:h * pitch + (h // 2) * pitch].reshape(h // 2, pitch)
    uv[:, 0:w:2] = frame.u[:h // 2, :w // 2]
    uv[:, 1:w:2] = frame.v[:h // 2, :w // 2]


# --- settings -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class NvencParams:
    codec: str
    preset: int  # 1..7 (P1 fastest)
    tuning: str  # HIGH_QUALITY, LOW_LATENCY, ULTRA_LOW_LATENCY
    rc: str  # cq, vbr, cbr
    bitrate: int  # bits/s; 0 with cq = no cap
    max_bitrate: int
    vbv_size: int  # bits; 0 = the driver's
    cq: float  # target quality (rc cq)
    min_qp: int | None
    max_qp: int | None
    gop: int  # 0 = the preset's
    idr_period: int  # 0 = gop
    global_headers: bool
    gpu: int
    intra_refresh: int = 0  # frames a refresh sweeps the picture in (instead of IDRs); 0: off
    colour: tuple[int, int, int] = (2, 2, 2)  # H.273 codes into the VUI (EncoderSettings.colour)

    def fill(self, o) -> None:
        """Set the binding's ``semvc_nvenc_opts_t``."""
        o.hevc = self.codec == "hevc"
        o.rc_mode = RC_MODES[self.rc]
        o.bitrate, o.max_bitrate, o.vbv_size = self.bitrate, self.max_bitrate, self.vbv_size
        o.cq_q8 = round(self.cq * 256)
        o.min_qp = -1 if self.min_qp is None else self.min_qp
        o.max_qp = -1 if self.max_qp is None else self.max_qp
        o.gop, o.idr_period = self.gop, self.idr_period
        o.repeat_headers = not self.global_headers  # every IDR decodes alone, as with x264
        o.no_headers = self.global_headers
        o.intra_refresh = self.intra_refresh
        o.colour = list(self.colour)


def build_params(s: EncoderSettings) -> NvencParams:
    """Validate the settings for NVENC and map them; EncoderError naming the value and the fix."""
    p = s.params
    check_param_keys(p, PARAM_KEYS, "nvenc")
    rc = base.refuse_cqp(s, "NVENC's constant-QP mode would leave the map's deltas as the only "
                            "rate control; use rc='crf', 'abr' or 'cbr'")
    if rc not in ("crf", "abr", "cbr"):
        raise EncoderError(f"unknown rate control {s.rc!r}; use crf, abr or cbr")
    if rc == "crf" and not 1 <= s.crf <= QP_MAX:
        raise EncoderError(f"crf {s.crf:g} is outside NVENC's constant-quality range 1-51 (0 "
                           "means 'automatic' there); use 1 to 51")
    if rc != "crf" and not s.bitrate:
        raise EncoderError(f"rc={rc!r} needs a bitrate (bits/s)")
    base.check_even_size(s, "NVENC 4:2:0 takes even sizes only; crop or pad by one pixel")
    preset = str(s.preset).lower()
    if preset not in PRESETS:
        raise EncoderError(f"unknown NVENC preset {s.preset!r}; use p1..p7 (fastest..best) or "
                           f"an x264 name ({', '.join(k for k in PRESETS if k[0] != 'p')})")
    tune = (s.tune or "hq").lower()
    if tune not in TUNINGS:
        raise EncoderError(f"unknown NVENC tune {s.tune!r}; use {', '.join(TUNINGS)}")
    lo, hi = qp_range_param(p)
    bitrate = int(s.bitrate or 0)
    peak = int_param(p, "peak_bitrate", 1, 2**32 - 1)
    if peak is not None and rc == "abr" and peak < bitrate:
        raise EncoderError(f"peak_bitrate {peak} is below the bitrate {bitrate}; raise it")
    gop = s.keyint or 0
    idr = int_param(p, "idr_interval", 1, 2**32 - 2) or 0
    refresh = (s.keyint or REFRESH_PERIOD) if s.intra_refresh else 0
    if refresh and idr:
        raise EncoderError("idr_interval with intra_refresh: the refresh replaces IDRs (NVENC "
                           "runs it only with an infinite GOP); drop idr_interval")
    if s.caller_idr or refresh:  # IDRs come from force_idr only (NVENC's refresh needs this)
        gop = idr = INFINITE
    return NvencParams(
        codec=codec_param(p), preset=PRESETS[preset], tuning=TUNINGS[tune],
        rc={"crf": "cq", "abr": "vbr", "cbr": "cbr"}[rc], bitrate=bitrate if rc != "crf" else 0,
        max_bitrate=(bitrate if rc == "crf" else peak or (bitrate if rc == "cbr" else 0)),
        vbv_size=bitrate if rc in ("crf", "cbr") else 0,  # crf: a cap, cbr: a 1 s buffer
        cq=float(s.crf), min_qp=lo, max_qp=hi, gop=gop, idr_period=idr,
        global_headers=bool(s.global_headers), gpu=int_param(p, "gpu", 0, 63) or 0,
        intra_refresh=refresh, colour=s.colour)


# --- the encoder --------------------------------------------------------------------------------

class NvencEncoder(Encoder):
    """H.264/HEVC through NVENC, the QP map as a per-picture delta map."""

    type_key = "nvenc"

    def __init__(self, settings: EncoderSettings) -> None:
        super().__init__(settings)
        self._ctx = None
        self._slots: list = []
        self.params = build_params(settings)  # settings errors first, on any machine
        self.codec = self.params.codec
        self._limit = delta_limit(self.params.min_qp, self.params.max_qp)
        from .nvenc_binding import get_binding, load_runtime
        self._ffi, self._lib = get_binding()
        load_runtime()
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    @classmethod
    def check_params(cls, params: dict[str, str]) -> None:
        check_params(params, PARAM_KEYS, "nvenc", PARAM_INTS)

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:  # cheap first: no compiler run on machines without the driver
            ctypes.CDLL("libnvidia-encode.so.1")
        except OSError as e:
            return False, f"libnvidia-encode.so.1 not found: {e}"
        from .nvenc_binding import get_binding, load_runtime
        return base.availability(get_binding, load_runtime)

    def _check(self, st: int, what: str) -> None:
        if st != self._lib.NV_ENC_SUCCESS:
            why = ""
            if self._enc is not None:
                why = self._ffi.string(self._fl.nvEncGetLastErrorString(self._enc)).decode(
                    errors="replace")
            raise EncoderError(f"NVENC: {what} failed (status {st}{': ' + why if why else ''})")

    def _open(self) -> None:
        ffi, lib, p, s = self._ffi, self._lib, self.params, self.settings
        err, ctx = ffi.new("char[]", 512), ffi.new("void **")
        if lib.semvc_cuda_ctx_create(p.gpu, ctx, err, 512):
            raise EncoderError("NVENC: " + ffi.string(err).decode(errors="replace"))
        self._ctx = ctx[0]
        self._fl = ffi.new("NV_ENCODE_API_FUNCTION_LIST *")
        self._check(lib.semvc_nvenc_create(self._fl), "NvEncodeAPICreateInstance")
        enc = ffi.new("void **")
        self._check(lib.semvc_nvenc_open(self._fl, self._ctx, enc), "opening a session")
        self._enc = enc[0]
        opts = ffi.new("semvc_nvenc_opts_t *")
        p.fill(opts)
        if p.intra_refresh and not self._cap(lib.NV_ENC_CAPS_SUPPORT_INTRA_REFRESH):
            raise EncoderError(f"this GPU's NVENC has no intra refresh for {p.codec}; drop "
                               "intra_refresh")
        # both kept for the session's life: a live rate change re-initialises with them
        self._cfg = ffi.new("NV_ENC_CONFIG *")
        self._init = ffi.new("NV_ENC_INITIALIZE_PARAMS *")
        self._check(lib.semvc_nvenc_init(self._fl, self._enc, opts, p.preset,
                                         getattr(lib, f"NV_ENC_TUNING_INFO_{p.tuning}"),
                                         s.width, s.height, s.fps.numerator, s.fps.denominator,
                                         self._cfg, self._init),
                    f"initialising ({s.width}x{s.height}, {p.codec}, preset P{p.preset})")
        self._eff = ffi.new("semvc_nvenc_opts_t *")
        lib.semvc_nvenc_read(self._cfg, p.codec == "hevc", self._eff)
        if self._eff.qp_map_mode != lib.NV_ENC_QP_MAP_DELTA or self._eff.aq:
            raise EncoderError("NVENC configuration lost the delta QP map mode or turned AQ on")
        if self._eff.intra_refresh != p.intra_refresh:
            raise EncoderError(f"NVENC intra refresh is {self._eff.intra_refresh} frames, asked "
                               f"{p.intra_refresh}")
        if p.codec == "hevc" and self._eff.ctb != HEVC_CTB:
            raise EncoderError(f"NVENC HEVC CTB is {self._eff.ctb}, the map assumes {HEVC_CTB}")
        for _ in range(_SLOTS):
            cin = ffi.new("NV_ENC_CREATE_INPUT_BUFFER *")
            cin.version = lib.NV_ENC_CREATE_INPUT_BUFFER_VER
            cin.width, cin.height = s.width, s.height
            cin.bufferFmt = lib.NV_ENC_BUFFER_FORMAT_NV12
            self._check(self._fl.nvEncCreateInputBuffer(self._enc, cin), "creating input buffers")
            cout = ffi.new("NV_ENC_CREATE_BITSTREAM_BUFFER *")
            cout.version = lib.NV_ENC_CREATE_BITSTREAM_BUFFER_VER
            st = self._fl.nvEncCreateBitstreamBuffer(self._enc, cout)
            self._slots.append((cin.inputBuffer, cout.bitstreamBuffer if st == 0 else None))
            self._check(st, "creating bitstream buffers")
        log.info("nvenc: %dx%d %s P%d %s, effective rc mode %d, gop %d, idr %d", s.width,
                 s.height, p.codec, p.preset, p.tuning, self._eff.rc_mode, self._eff.gop,
                 self._eff.idr_period)
        self._free = deque(range(_SLOTS))
        self._pending: deque = deque()  # (slot, pts, delta map kept alive), in submission order
        self._zero = np.zeros(map_grid(s.width, s.height, p.codec), np.int8)
        self._headers: bytes | None = None
        self._stats = {"frames": 0, "frames_with_map": 0, "mse": 0.0}

    def _cap(self, cap: int) -> int:
        return self._lib.semvc_nvenc_cap(self._fl, self._enc, self.params.codec == "hevc", cap)

    def _collect(self) -> list[Packet]:
        """Lock every submitted picture's bitstream, in submission order."""
        ffi, lib, out = self._ffi, self._lib, []
        while self._pending:
            slot, pts, _ = self._pending.popleft()
            lk = ffi.new("NV_ENC_LOCK_BITSTREAM *")
            lk.version, lk.outputBitstream = lib.NV_ENC_LOCK_BITSTREAM_VER, self._slots[slot][1]
            self._check(self._fl.nvEncLockBitstream(self._enc, lk), "locking the bitstream")
            data = bytes(ffi.buffer(lk.bitstreamBufferPtr, lk.bitstreamSizeInBytes))
            key = lk.pictureType == lib.NV_ENC_PIC_TYPE_IDR
            self._check(self._fl.nvEncUnlockBitstream(self._enc, lk.outputBitstream), "unlocking")
            self._free.append(slot)
            out.append(Packet(data, pts, pts, key))  # no B-frames: dts = pts
        return out

    def encode(self, frame: Frame, qp_offsets: np.ndarray | None = None,
               force_idr: bool = False) -> list[Packet]:
        self._check_frame(frame)
        ffi, lib, s = self._ffi, self._lib, self.settings
        dm = self._zero  # explicit zeros: a picture without a map would reuse the last one
        if qp_offsets is not None:
            q = self._qp_map(qp_offsets)
            dm = np.ascontiguousarray(delta_map(q, self.codec, self._limit))
            self._stats["frames_with_map"] += 1
            self._stats["mse"] += map_error(q, dm, self.codec)
        self._stats["frames"] += 1
        if not self._free:
            raise EncoderError(f"NVENC holds more than {_SLOTS} pictures; it should hold one")
        slot = self._free.popleft()
        inbuf, outbuf = self._slots[slot]
        lk = ffi.new("NV_ENC_LOCK_INPUT_BUFFER *")
        lk.version, lk.inputBuffer = lib.NV_ENC_LOCK_INPUT_BUFFER_VER, inbuf
        self._check(self._fl.nvEncLockInputBuffer(self._enc, lk), "locking an input buffer")
        pitch = lk.pitch
        try:
            size = pitch * (s.height + s.height // 2)
            nv12_into(np.frombuffer(ffi.buffer(lk.bufferDataPtr, size), np.uint8), pitch, frame)
        finally:
            self._check(self._fl.nvEncUnlockInputBuffer(self._enc, inbuf), "unlocking input")
        pic = ffi.new("NV_ENC_PIC_PARAMS *")
        pic.version = lib.NV_ENC_PIC_PARAMS_VER
        pic.inputWidth, pic.inputHeight, pic.inputPitch = s.width, s.height, pitch
        pic.inputBuffer, pic.outputBitstream = inbuf, outbuf
        pic.bufferFmt = lib.NV_ENC_BUFFER_FORMAT_NV12
        pic.pictureStruct = lib.NV_ENC_PIC_STRUCT_FRAME
        pts = pts_of(frame, s)
        if force_idr:
            pic.encodePicFlags = lib.NV_ENC_PIC_FLAG_FORCEIDR | (
                0 if s.global_headers else lib.NV_ENC_PIC_FLAG_OUTPUT_SPSPPS)
        pic.qpDeltaMap = ffi.cast("int8_t *", dm.ctypes.data)
        pic.qpDeltaMapSize = dm.size
        self._pending.append((slot, pts, dm))
        st = self._fl.nvEncEncodePicture(self._enc, pic)
        if st == lib.NV_ENC_ERR_NEED_MORE_INPUT:
            return []
        self._check(st, "encoding a picture")
        return self._collect()

    def flush(self) -> list[Packet]:
        self._require_open()
        self._flushed = True
        pic = self._ffi.new("NV_ENC_PIC_PARAMS *")
        pic.version = self._lib.NV_ENC_PIC_PARAMS_VER
        pic.encodePicFlags = self._lib.NV_ENC_PIC_FLAG_EOS  # no picture: drain and end
        self._check(self._fl.nvEncEncodePicture(self._enc, pic), "ending the stream")
        return self._collect()

    def reconfigure(self, bitrate: int | None, crf: float) -> None:
        """The new rate from the next picture: the settings mapped again (``build_params``)
        and handed to ``NvEncReconfigureEncoder`` (resetEncoder 0, forceIDR 0)."""
        self._require_open()
        s = retuned(self.settings, bitrate, crf, "nvenc")
        p = build_params(s)
        ffi, lib = self._ffi, self._lib
        if not self._cap(lib.NV_ENC_CAPS_SUPPORT_DYN_BITRATE_CHANGE):
            raise EncoderError("this GPU's NVENC cannot change its bit rate while encoding "
                               "(NV_ENC_CAPS_SUPPORT_DYN_BITRATE_CHANGE is 0)")
        opts = ffi.new("semvc_nvenc_opts_t *")
        p.fill(opts)
        self._check(lib.semvc_nvenc_reconfig(self._fl, self._enc, self._init, opts),
                    f"NvEncReconfigureEncoder (bitrate {p.bitrate}, peak {p.max_bitrate}, "
                    f"quality {p.cq:g})")
        lib.semvc_nvenc_read(self._cfg, p.codec == "hevc", self._eff)
        self.settings, self.params = s, p

    def headers(self) -> bytes:
        """SPS/PPS (+VPS for HEVC), Annex-B, from nvEncGetSequenceParams."""
        self._require_open()
        if self._headers is None:
            ffi, lib = self._ffi, self._lib
            buf, size = ffi.new("uint8_t[]", lib.NV_MAX_SEQ_HDR_LEN), ffi.new("uint32_t *")
            sp = ffi.new("NV_ENC_SEQUENCE_PARAM_PAYLOAD *")
            sp.version = lib.NV_ENC_SEQUENCE_PARAM_PAYLOAD_VER
            sp.inBufferSize = lib.NV_MAX_SEQ_HDR_LEN
            sp.spsppsBuffer, sp.outSPSPPSPayloadSize = buf, size
            self._check(self._fl.nvEncGetSequenceParams(self._enc, sp), "reading SPS/PPS")
            self._headers = bytes(ffi.buffer(buf, size[0]))
        return self._headers

    def close(self) -> None:
        enc, self._enc = getattr(self, "_enc", None), None
        if enc is not None:
            fl = self._fl
            for inbuf, outbuf in self._slots:
                if inbuf is not None:
                    fl.nvEncDestroyInputBuffer(enc, inbuf)
                if outbuf is not None:
                    fl.nvEncDestroyBitstreamBuffer(enc, outbuf)
            self._slots = []
            fl.nvEncDestroyEncoder(enc)
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx is not None:
            self._lib.semvc_cuda_ctx_destroy(ctx)

    def settings_summary(self) -> dict:
        p, eff = self.params, getattr(self, "_eff", None)
        st = getattr(self, "_stats", {"frames": 0, "frames_with_map": 0, "mse": 0.0})
        out = {"backend": self.type_key, "codec": p.codec, "width": self.settings.width,
               "height": self.settings.height, "fps": str(self.settings.fps),
               "preset": f"p{p.preset}", "tuning": p.tuning, "rc": p.rc, "cq": p.cq,
               "bitrate": p.bitrate, "max_bitrate": p.max_bitrate, "min_qp": p.min_qp,
               "max_qp": p.max_qp, "gop": p.gop, "idr_period": p.idr_period,
               "intra_refresh": p.intra_refresh, "global_headers": p.global_headers,
               "map": {"block": HEVC_CTB if p.codec == "hevc" else 16,
                       "delta_limit": self._limit, "frames_with_map": st["frames_with_map"],
                       "mean_mse_qp2": st["mse"] / max(1, st["frames_with_map"])}}
        if eff is not None:  # what the driver's preset plus our settings came to
            out["effective"] = {k: int(getattr(eff, k)) for k in (
                "rc_mode", "bitrate", "max_bitrate", "vbv_size", "min_qp", "max_qp", "gop",
                "idr_period", "qp_map_mode", "aq", "lookahead", "frame_interval_p", "ctb",
                "intra_refresh")}
        return out
