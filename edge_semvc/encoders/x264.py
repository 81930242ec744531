"""libx264 through cffi (API / out-of-line mode), with a per-macroblock QP-offset map.

The binding (compiled on first use, cached) is ``x264_binding.py``.

x264 applies ``x264_picture_t.prop.quant_offsets`` only with adaptive quantisation on, and never
in constant-QP mode. This backend refuses CQP and turns AQ back on (with a warning) where a
preset, tune or parameter switched it off, so a map is never silently ignored.

Usage::

    with X264Encoder(settings) as enc:
        packets = enc.encode(frame, qp_map)   # qp_map: float32[mb_h, mb_w] or None
        packets += enc.flush()
"""
from __future__ import annotations

import logging
from fractions import Fraction

import numpy as np

from ..frame import Frame
from .base import RATE_CONTROLS, Encoder, EncoderError, EncoderSettings, Packet
from .x264_binding import _get_binding, preset_names, profile_names, tune_names

log = logging.getLogger(__name__)


class _LogSink:
    """Receives x264's log lines (from any thread); keeps errors for exception messages."""

    def __init__(self, levels) -> None:
        self.errors: list[str] = []
        self._map = {levels.X264_LOG_ERROR: logging.ERROR, levels.X264_LOG_WARNING: logging.WARNING,
                     levels.X264_LOG_INFO: logging.INFO, levels.X264_LOG_DEBUG: logging.DEBUG}
        self._error_level = levels.X264_LOG_ERROR

    def emit(self, level: int, text: str) -> None:
        if level <= self._error_level:
            self.errors.append(text)
            if len(self.errors) > 20:
                del self.errors[0]
        log.log(self._map.get(level, logging.DEBUG), "x264: %s", text)


# --- the encoder --------------------------------------------------------------------------------

# keys handled by EncoderSettings; setting them through params would break the packet contract
_MANAGED = {"annexb", "repeat-headers", "fps", "timebase", "input-csp", "input-res", "input-depth",
            "csp", "output-csp", "bitdepth", "input-fmt"}


def _norm_key(k: str) -> str:
    return k.strip().lower().replace("_", "-")


class X264Encoder(Encoder):
    """H.264 through libx264. Output: Annex-B access units with x264's pts/dts."""

    type_key = "x264"

    def __init__(self, settings: EncoderSettings) -> None:
        super().__init__(settings)
        self._enc = None
        self._param = None
        self._flushed = False
        self._corrections: list[str] = []
        s = settings
        if s.width % 2 or s.height % 2:
            raise EncoderError(
                f"frame size {s.width}x{s.height} has an odd dimension: H.264 4:2:0 can only crop "
                "to even sizes; crop or pad the source by one pixel")
        self._ffi, self._lib = _get_binding()
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        s, ffi, lib = self.settings, self._ffi, self._lib
        self._check_preset_tune()
        self._log = _LogSink(lib)
        self._log_handle = ffi.new_handle(self._log)

        p = self._param = ffi.new("x264_param_t *")
        if lib.x264_param_default_preset(p, s.preset.encode(),
                                         s.tune.encode() if s.tune else ffi.NULL) < 0:
            raise EncoderError(f"x264 rejected preset {s.preset!r} / tune {s.tune!r}")
        level = lib.X264_LOG_INFO if log.isEnabledFor(logging.DEBUG) else lib.X264_LOG_WARNING
        lib.semvc_set_log(p, self._log_handle, level)
        p.i_width, p.i_height, p.i_csp = s.width, s.height, lib.X264_CSP_I420
        p.i_fps_num, p.i_fps_den = s.fps.numerator, s.fps.denominator
        p.i_timebase_num, p.i_timebase_den = s.time_base.numerator, s.time_base.denominator
        # b_vfr_input stays as preset/tune set it: 1 (rate control follows the timestamps) except
        # with tune zerolatency, which sets 0 (force-cfr): VFR costs one frame of delay.
        p.b_annexb = 1
        p.b_repeat_headers = 0 if s.global_headers else 1
        p.i_threads = s.threads

        self._apply_rc()
        bad, profile = [], None
        for k, v in s.params.items():
            if _norm_key(k) in _MANAGED:
                raise EncoderError(f"x264 param {k!r} is set from EncoderSettings "
                                   "(size, fps, time_base, global_headers); remove it from params")
            if _norm_key(k) == "profile":  # not a param_parse option: applied last, as x264's
                # command line does
                profile = str(v)
                continue
            err = self._parse(k, v)
            if err:
                bad.append(err)
        if bad:
            raise EncoderError("invalid x264 params: " + "; ".join(bad))
        if profile is not None:
            known = profile_names()
            if profile not in known:
                raise EncoderError(f"unknown x264 profile {profile!r}; known: {', '.join(known)}")
            if lib.x264_param_apply_profile(p, profile.encode()) < 0:
                raise EncoderError(f"x264 profile {profile!r} cannot be applied to these settings "
                                   "(e.g. lossless or 4:4:4 with a lower profile)")
        self._check_rc_and_aq()

        self._enc = lib.x264_encoder_open(p)
        if self._enc == ffi.NULL:
            self._enc = None
            why = "; ".join(self._log.errors) or "no reason given"
            raise EncoderError(f"x264_encoder_open failed: {why}")
        eff = ffi.new("x264_param_t *")
        lib.x264_encoder_parameters(self._enc, eff)
        self._eff_rc = ffi.new("semvc_rc_t *")
        lib.semvc_get_rc(eff, self._eff_rc)
        self._eff = {"threads": eff.i_threads, "bframes": eff.i_bframe, "keyint": eff.i_keyint_max,
                     "vfr_input": bool(eff.b_vfr_input)}
        if self._eff_rc.aq_mode == 0 or self._eff_rc.aq_strength <= 0:
            raise EncoderError("x264 turned adaptive quantisation off after validation; it would "
                               "ignore the QP-offset map")
        self._headers: bytes | None = None

        # per-frame state, allocated once
        self._pic_in = ffi.new("x264_picture_t *")
        lib.x264_picture_init(self._pic_in)
        self._pic_in.img.i_csp = lib.X264_CSP_I420
        self._pic_in.img.i_plane = 3
        self._pic_out = ffi.new("x264_picture_t *")
        self._pp_nal = ffi.new("x264_nal_t **")
        self._pi_nal = ffi.new("int *")
        self._ticks_per_frame = 1 / (s.fps * s.time_base)

    # -- setup helpers

    def _check_preset_tune(self) -> None:
        s = self.settings
        presets = preset_names()
        if s.preset not in presets and not (s.preset.isdigit() and int(s.preset) < len(presets)):
            raise EncoderError(f"unknown x264 preset {s.preset!r}; known: {', '.join(presets)}")
        if s.tune:
            tunes = tune_names()
            parts = [t for t in s.tune.replace(".", ",").replace("/", ",").replace("-", ",")
                     .replace("+", ",").split(",") if t]
            unknown = [t for t in parts if t not in tunes]
            if unknown or not parts:
                raise EncoderError(f"unknown x264 tune {s.tune!r}; known: {', '.join(tunes)}")
            psy = [t for t in parts if t not in ("fastdecode", "zerolatency")]
            if len(psy) > 1:
                raise EncoderError(f"x264 tune {s.tune!r} combines {psy}: only one of "
                                   "film/animation/grain/stillimage/psnr/ssim may be used")

    def _parse(self, name: str, value) -> str | None:
        ffi, lib = self._ffi, self._lib
        v = None if value is None else str(value)
        ret = lib.x264_param_parse(self._param, str(name).encode(),
                                   ffi.NULL if v is None else v.encode())
        if ret == lib.X264_PARAM_BAD_NAME:
            return f"unknown option {name!r}"
        if ret == lib.X264_PARAM_BAD_VALUE:
            return f"bad value {v!r} for {name!r}"
        if ret < 0:
            return f"{name!r}={v!r} failed (error {ret})"
        return None

    def _set(self, name: str, value) -> None:
        err = self._parse(name, value)
        if err:
            raise EncoderError(f"invalid x264 setting: {err}")

    def _apply_rc(self) -> None:
        s = self.settings
        if s.rc not in RATE_CONTROLS:
            if str(s.rc).lower() in ("cqp", "qp", "constqp", "const_qp"):
                raise EncoderError(
                    f"rc={s.rc!r} refused: x264 ignores quant_offsets (the QP-offset map) in "
                    "constant-QP mode; use rc='crf', 'abr' or 'cbr'")
            raise EncoderError(f"unknown rate control {s.rc!r}; use one of "
                               f"{', '.join(RATE_CONTROLS)}")
        if s.keyint is not None:
            self._set("keyint", s.keyint)
        if s.caller_idr:  # params may still change these: the user's word is last
            self._set("keyint", "infinite")
            self._set("scenecut", "0")
        if s.sparse_frames:  # else mb-tree weighs each frame by its duration: measured +13 %
            self._set("force-cfr", "1")  # bytes on a car park (BENCHMARKS.md, storage profile)
        kbps = None if s.bitrate is None else max(1, round(s.bitrate / 1000))
        if s.rc == "crf":
            self._set("crf", f"{float(s.crf):g}")
            if kbps is not None:
                self._set("vbv-maxrate", kbps)
                self._set("vbv-bufsize", kbps)
        elif s.rc == "abr":
            self._set("bitrate", kbps)
        else:  # cbr: 1 s VBV buffer at the target rate
            self._set("bitrate", kbps)
            self._set("vbv-maxrate", kbps)
            self._set("vbv-bufsize", kbps)

    def _rc(self):
        out = self._ffi.new("semvc_rc_t *")
        self._lib.semvc_get_rc(self._param, out)
        return out

    def _check_rc_and_aq(self) -> None:
        s, lib = self.settings, self._lib
        rc = self._rc()
        if rc.rc_method == lib.X264_RC_CQP:
            raise EncoderError(
                "constant-QP rate control requested (a 'qp' param): x264 ignores quant_offsets "
                "(the QP-offset map) in CQP; use rc='crf', 'abr' or 'cbr' and drop 'qp'")
        if rc.qp_min >= rc.qp_max:
            raise EncoderError(
                f"qpmin={rc.qp_min} >= qpmax={rc.qp_max} pins the quantiser, so x264 could not "
                "apply the QP-offset map; widen the qpmin/qpmax range")
        keys = {_norm_key(k) for k in s.params}
        if rc.aq_mode == 0:
            if "aq-mode" in keys:
                src = "params aq-mode=0"
            elif s.preset in ("ultrafast", "0"):
                src = f"preset {s.preset!r}"
            elif s.tune and "psnr" in s.tune:
                src = f"tune {s.tune!r}"
            else:
                src = "the preset/tune"
            self._set("aq-mode", "1")
            msg = (f"aq-mode 0 (from {src}) changed to aq-mode 1: x264 ignores the QP-offset map "
                   "with adaptive quantisation off")
            self._corrections.append(msg)
            log.warning("x264: %s", msg)
        rc = self._rc()
        if not rc.aq_strength > 0:
            self._set("aq-strength", "1.0")
            msg = (f"aq-strength {rc.aq_strength:g} changed to 1.0: x264 turns adaptive "
                   "quantisation, and with it the QP-offset map, off at strength 0")
            self._corrections.append(msg)
            log.warning("x264: %s", msg)

    # -- Encoder API

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            _get_binding()
        except EncoderError as e:
            return False, str(e)
        return True, ""

    def _require_open(self) -> None:
        if self._enc is None:
            raise EncoderError("encoder is closed")

    def _packets(self, ret: int) -> list[Packet]:
        if ret < 0:
            why = "; ".join(self._log.errors[-3:]) or f"error {ret}"
            raise EncoderError(f"x264_encoder_encode failed: {why}")
        if ret == 0:
            return []
        nal = self._pp_nal[0]
        data = bytes(self._ffi.buffer(nal[0].p_payload, ret))  # copy: invalid after next call
        o = self._pic_out
        return [Packet(data, int(o.i_pts), int(o.i_dts), bool(o.b_keyframe))]

    def _pts_for(self, frame: Frame) -> int:
        s = self.settings
        if frame.pts is None:
            pts = round(frame.index * self._ticks_per_frame)
        elif frame.time_base is not None and Fraction(frame.time_base) != s.time_base:
            pts = round(frame.pts * Fraction(frame.time_base) / s.time_base)
        else:
            pts = int(frame.pts)
        return pts

    def _plane(self, a: np.ndarray, h: int, w: int, name: str) -> np.ndarray:
        if a.dtype != np.uint8 or a.ndim != 2:
            raise EncoderError(f"{name} plane must be 2-D uint8, got {a.dtype} {a.shape}")
        if a.shape[0] < h or a.shape[1] < w:
            raise EncoderError(f"{name} plane is {a.shape[1]}x{a.shape[0]}, expected {w}x{h}")
        if a.strides[1] != 1 or a.strides[0] < w:
            a = np.ascontiguousarray(a)
        return a

    def encode(self, frame: Frame, qp_offsets: np.ndarray | None = None,
               force_idr: bool = False) -> list[Packet]:
        self._require_open()
        if self._flushed:
            raise EncoderError("encode() after flush(): the stream has ended; open a new encoder")
        s, ffi, lib = self.settings, self._ffi, self._lib
        if frame.width != s.width or frame.height != s.height:
            raise EncoderError(f"frame is {frame.width}x{frame.height}, encoder was opened for "
                               f"{s.width}x{s.height}")
        cw, ch = s.width // 2, s.height // 2
        planes = (self._plane(frame.y, s.height, s.width, "Y"),
                  self._plane(frame.u, ch, cw, "U"),
                  self._plane(frame.v, ch, cw, "V"))
        pic = self._pic_in
        for i, a in enumerate(planes):
            pic.img.plane[i] = ffi.cast("uint8_t *", a.ctypes.data)
            pic.img.i_stride[i] = a.strides[0]
        qbuf = None
        if qp_offsets is not None:
            q = np.ascontiguousarray(qp_offsets, dtype=np.float32)
            if q.shape != (s.mb_h, s.mb_w):
                raise EncoderError(f"QP-offset map has shape {tuple(np.shape(qp_offsets))}, "
                                   f"expected (mb_h, mb_w) = ({s.mb_h}, {s.mb_w}) for "
                                   f"{s.width}x{s.height}")
            if not np.isfinite(q).all():
                raise EncoderError("QP-offset map contains NaN or infinite values")
            qbuf = ffi.from_buffer("float[]", q)
            pic.prop.quant_offsets = qbuf
        else:
            pic.prop.quant_offsets = ffi.NULL
        pts = self._pts_for(frame)
        pic.i_pts = pts
        # IDR (not X264_TYPE_KEYFRAME, an I-frame under open-GOP): a segment must decode alone.
        pic.i_type = lib.X264_TYPE_IDR if force_idr else lib.X264_TYPE_AUTO
        try:
            ret = lib.x264_encoder_encode(self._enc, self._pp_nal, self._pi_nal, pic, self._pic_out)
        finally:  # x264 copied planes and offsets; drop the borrowed pointers
            pic.prop.quant_offsets = ffi.NULL
            for i in range(3):
                pic.img.plane[i] = ffi.NULL
        del planes, qbuf
        return self._packets(ret)

    def flush(self) -> list[Packet]:
        self._require_open()
        self._flushed = True
        out: list[Packet] = []
        lib, ffi = self._lib, self._ffi
        while lib.x264_encoder_delayed_frames(self._enc) > 0:
            ret = lib.x264_encoder_encode(self._enc, self._pp_nal, self._pi_nal, ffi.NULL,
                                          self._pic_out)
            out += self._packets(ret)
        return out

    def headers(self) -> bytes:
        """SPS and PPS (Annex-B, with start codes); x264's version SEI is left out."""
        self._require_open()
        if self._headers is None:
            ret = self._lib.x264_encoder_headers(self._enc, self._pp_nal, self._pi_nal)
            if ret < 0:
                raise EncoderError("x264_encoder_headers failed")
            nals = self._pp_nal[0]
            self._headers = b"".join(bytes(self._ffi.buffer(nals[i].p_payload, nals[i].i_payload))
                                     for i in range(self._pi_nal[0]) if nals[i].i_type in (7, 8))
        return self._headers

    def close(self) -> None:
        enc = getattr(self, "_enc", None)
        if enc is not None:
            self._enc = None
            self._lib.x264_encoder_close(enc)
        param = getattr(self, "_param", None)
        if param is not None:
            self._param = None
            self._lib.semvc_param_cleanup(param)

    def settings_summary(self) -> dict:
        s = self.settings
        rc = getattr(self, "_eff_rc", None)
        ffi, lib = self._ffi, self._lib
        out = {
            "backend": self.type_key,
            "x264_build": int(lib.X264_BUILD),
            "x264_version": ffi.string(lib.semvc_version()).decode(),
            "width": s.width, "height": s.height,
            "fps": str(s.fps), "time_base": str(s.time_base),
            "preset": s.preset, "tune": s.tune, "rc": s.rc,
            "crf": float(s.crf) if s.rc == "crf" else None,
            "bitrate": s.bitrate,
            "global_headers": s.global_headers,
            "params": dict(s.params),
            "corrections": list(self._corrections),
        }
        if rc is not None:
            out.update({
                "rc_method": {lib.X264_RC_CQP: "cqp", lib.X264_RC_CRF: "crf",
                              lib.X264_RC_ABR: "abr"}.get(int(rc.rc_method), str(rc.rc_method)),
                "aq_mode": int(rc.aq_mode), "aq_strength": round(float(rc.aq_strength), 4),
                "vbv_maxrate_kbps": int(rc.vbv_max_bitrate),
                "vbv_bufsize_kbit": int(rc.vbv_buffer_size),
                "mb_tree": bool(rc.mb_tree), "rc_lookahead": int(rc.lookahead),
                **self._eff,
            })
        return out
