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

import dataclasses
import logging

import numpy as np

from ..frame import Frame
from . import base
from .base import Encoder, EncoderError, EncoderSettings, Packet
from .x264_binding import _get_binding, preset_names, profile_names, tune_names

log = logging.getLogger(__name__)

# x264's variance AQ (aq-mode 1) adds 1.0397 x aq-strength x (log2(energy) - 14.427) QP to each
# macroblock, energy its luma AC energy (256 x the variance) plus its chroma's.
_AQ_SLOPE = 1.0397


# x264 warns "forced frame type (1) at N was changed to frame type (2)" for some IDRs asked for
# (a serve soak with receivers joining: 109 of 749 log lines); probes forcing IDRs at random
# frames, within keyint_min of each other, at the live and zerolatency profiles got an IDR
# every time, and an output still waiting for one asks again (sinks/base.Outputs): debug here.
_IDR_TOO_SOON = "forced frame type (1) at "


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
        quiet = text.startswith(_IDR_TOO_SOON)  # x264's own rule, no fault
        log.log(logging.DEBUG if quiet else self._map.get(level, logging.DEBUG), "x264: %s", text)


# --- the encoder --------------------------------------------------------------------------------

# keys handled by EncoderSettings; setting them through params would break the packet contract
_MANAGED = {"annexb", "repeat-headers", "fps", "timebase", "input-csp", "input-res", "input-depth",
            "csp", "output-csp", "bitdepth", "input-fmt"}


class X264Encoder(Encoder):
    """H.264 through libx264. Output: Annex-B access units with x264's pts/dts."""

    type_key = "x264"

    def __init__(self, settings: EncoderSettings) -> None:
        super().__init__(settings)
        self._param = None
        base.check_even_size(settings, "H.264 4:2:0 can only crop to even sizes; crop or pad the "
                             "source by one pixel")
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
        profile = base.apply_params({**base.colour_params(s.colour), **s.params}, _MANAGED,
                                     "size, fps, time_base, global_headers",
                                     self._parse, "x264")
        if profile is not None:
            base.check_profile(profile, profile_names(), "x264")
            if lib.x264_param_apply_profile(p, profile.encode()) < 0:
                raise EncoderError(f"x264 profile {profile!r} cannot be applied to these settings "
                                   "(e.g. lossless or 4:4:4 with a lower profile)")
        self._check_rc_and_aq()
        self._avoid_avx512_mbtree()
        # x264 writes 1/timebase into the SPS as the frame rate: with the timestamps followed
        # (vfr_input; force-cfr sets the timebase to 1/fps itself) it counts in frames
        self._grid = base.FrameGrid(s.time_base, s.fps) if p.b_vfr_input else None
        if self._grid is not None:
            p.i_timebase_num, p.i_timebase_den = s.fps.denominator, s.fps.numerator

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
            lossless = s.rc == "crf" and s.crf < 1
            raise EncoderError(
                f"encoder.crf {s.crf:g} is lossless in x264, which turns adaptive quantisation "
                "and with it the QP-offset map off: give a CRF of 1 or more" if lossless else
                "x264 turned adaptive quantisation off after validation; it would ignore the "
                "QP-offset map")
        self._aq_kept = self._aq_share_kept()
        # QP per doubling of a macroblock's energy taken off x264's AQ on frames with a map
        self._aq_back = (1.0 - self._aq_kept) * _AQ_SLOPE * float(self._eff_rc.aq_strength)
        self._headers: bytes | None = None
        self._retune = None  # a rate change x264 takes with the next frame (reconfigure)

        # per-frame state, allocated once
        self._pic_in = ffi.new("x264_picture_t *")
        lib.x264_picture_init(self._pic_in)
        self._pic_in.img.i_csp = lib.X264_CSP_I420
        self._pic_in.img.i_plane = 3
        self._pic_out = ffi.new("x264_picture_t *")
        self._pp_nal = ffi.new("x264_nal_t **")
        self._pi_nal = ffi.new("int *")

    # -- setup helpers

    def _check_preset_tune(self) -> None:
        s = self.settings
        base.check_preset(s.preset, preset_names(), "x264")
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
        return base.option_error(ret, name, v, lib.X264_PARAM_BAD_NAME, lib.X264_PARAM_BAD_VALUE)

    def _set(self, name: str, value) -> None:
        err = self._parse(name, value)
        if err:
            raise EncoderError(f"invalid x264 setting: {err}")

    def _apply_rc(self) -> None:
        s = self.settings
        base.check_rate_control(s, "x264", "quant_offsets")
        for name, value in base.rate_options(s):
            self._set(name, value)
        if s.caller_idr:  # params may still change these: the user's word is last
            self._set("keyint", "infinite")
            self._set("scenecut", "0")
        if s.sparse_frames:  # else mb-tree weighs each frame by its duration: measured +13 %
            self._set("force-cfr", "1")  # bytes on a car park (BENCHMARKS.md, storage profile)
        if s.intra_refresh:  # keyint is then the refresh period; IDRs only when asked for
            self._set("intra-refresh", "1")

    def _rc(self):
        out = self._ffi.new("semvc_rc_t *")
        self._lib.semvc_get_rc(self._param, out)
        return out

    def _check_rc_and_aq(self) -> None:
        s, lib = self.settings, self._lib
        rc = self._rc()
        base.check_quantiser(rc, lib.X264_RC_CQP, "x264", "quant_offsets")
        keys = {base.norm_key(k) for k in s.params}
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
            self._correct(f"aq-mode 0 (from {src}) changed to aq-mode 1: x264 ignores the "
                          "QP-offset map with adaptive quantisation off")
        rc = self._rc()
        if not rc.aq_strength > 0:
            self._set("aq-strength", "1.0")
            self._correct(f"aq-strength {rc.aq_strength:g} changed to 1.0: x264 turns adaptive "
                          "quantisation, and with it the QP-offset map, off at strength 0")

    def _aq_share_kept(self) -> float:
        """The share of x264's own AQ kept on frames with a map: `aq_with_map` where x264's AQ
        is the variance one (aq-mode 1), else all of it. The map's complexity term masks
        texture too; the two stacked mask it twice (BENCHMARKS, "x264's own AQ under the
        map")."""
        share, mode = self.settings.aq_with_map, self._eff_rc.aq_mode
        if share < 1.0 and mode != 1:
            log.warning("x264 aq-mode %d is kept whole under the map: aq_with_map %g applies "
                        "to aq-mode 1 (variance) only", mode, share)
            return 1.0
        return share

    def _avoid_avx512_mbtree(self) -> None:
        """libx264's AVX-512 mb-tree kernel (``mbtree_propagate_list_internal_avx512``, build 164
        and upstream) walks a macroblock row 8 macroblocks at a time and never masks the lanes
        past the row's end: when the width in macroblocks is not a multiple of 8 it adds costs
        made of past-the-row data (the next row's; after the last row, memory x264 allocated
        but never wrote) into the reference frames' propagation costs, so the QPs and the bytes
        followed what the heap held. x264's AVX2 kernel stops at the row's end (and gives the
        AVX-512 one's bytes where that one is right)."""
        if self._rc().mb_tree and self.settings.mb_w % 8:
            self._param.cpu &= ~self._lib.X264_CPU_AVX512

    # -- Encoder API

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return base.availability(_get_binding)

    def _packets(self, ret: int) -> list[Packet]:
        if ret < 0:
            why = "; ".join(self._log.errors[-3:]) or f"error {ret}"
            raise EncoderError(f"x264_encoder_encode failed: {why}")
        if ret == 0:
            return []
        nal = self._pp_nal[0]
        data = bytes(self._ffi.buffer(nal[0].p_payload, ret))  # copy: invalid after next call
        o = self._pic_out
        pts, dts = int(o.i_pts), int(o.i_dts)
        if self._grid is not None:
            pts, dts = self._grid.packet(pts, dts)
        return [Packet(data, pts, dts, bool(o.b_keyframe))]

    def encode(self, frame: Frame, qp_offsets: np.ndarray | None = None,
               force_idr: bool = False) -> list[Packet]:
        self._check_frame(frame)
        ffi, lib = self._ffi, self._lib
        planes = self._i420_planes(frame)
        pic = self._pic_in
        for i, a in enumerate(planes):
            pic.img.plane[i] = ffi.cast("uint8_t *", a.ctypes.data)
            pic.img.i_stride[i] = a.strides[0]
        qbuf = None
        if qp_offsets is not None:
            if self._aq_back:
                qp_offsets = qp_offsets - self._aq_back * _relative_log_energy(frame)
            qbuf = ffi.from_buffer("float[]", self._qp_map(qp_offsets))
            pic.prop.quant_offsets = qbuf
        else:
            pic.prop.quant_offsets = ffi.NULL
        pic.i_pts = base.pts_of(frame, self.settings)
        if self._grid is not None:
            pic.i_pts = self._grid.tick(pic.i_pts)
        # IDR (not X264_TYPE_KEYFRAME, an I-frame under open-GOP): a segment must decode alone.
        pic.i_type = lib.X264_TYPE_IDR if force_idr else lib.X264_TYPE_AUTO
        try:
            ret = lib.x264_encoder_encode(self._enc, self._pp_nal, self._pi_nal, pic, self._pic_out)
        finally:  # x264 copied planes and offsets; drop the borrowed pointers
            pic.prop.quant_offsets = ffi.NULL
            for i in range(3):
                pic.img.plane[i] = ffi.NULL
        del planes, qbuf
        if self._retune is not None:
            self._check_retune()
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

    def reconfigure(self, bitrate: int | None, crf: float) -> None:
        self._require_open()
        s = self.settings
        kbps, vbv, rf = base.rate_change(s, bitrate, crf, "x264")
        now = self._ffi.new("semvc_rc_t *")
        if self._lib.semvc_reconfig_rate(self._enc, kbps, vbv, vbv, rf, now) < 0:
            why = "; ".join(self._log.errors[-3:]) or "no reason given"
            raise EncoderError(f"x264_encoder_reconfig failed: {why}")
        # x264 applies it with the next frame it encodes: checked then (_check_retune)
        self._retune = (kbps, vbv, rf)
        self.settings = dataclasses.replace(s, bitrate=bitrate, crf=crf)

    def _check_retune(self) -> None:
        """After the first frame encoded since reconfigure(): x264 runs with the new rate."""
        kbps, vbv, rf = self._retune
        self._retune = None
        p = self._ffi.new("x264_param_t *")
        self._lib.x264_encoder_parameters(self._enc, p)
        now = self._ffi.new("semvc_rc_t *")
        self._lib.semvc_get_rc(p, now)
        if ((kbps and now.bitrate != kbps) or (vbv and now.vbv_max_bitrate != vbv)
                or (rf >= 0 and abs(now.rf_constant - rf) > 1e-3)):
            raise EncoderError(f"x264 did not take the new rate (bitrate {kbps} kbit/s, VBV "
                               f"{vbv} kbit/s, crf {rf:g}): it runs at {now.bitrate} kbit/s, "
                               f"VBV {now.vbv_max_bitrate} kbit/s, crf {now.rf_constant:g}")
        self._eff_rc = now

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

    @property
    def weighs_reuse(self) -> bool:
        return bool(self._eff_rc.mb_tree)

    def settings_summary(self) -> dict:
        rc = getattr(self, "_eff_rc", None)
        ffi, lib = self._ffi, self._lib
        out = self._summary(x264_build=int(lib.X264_BUILD),
                            x264_version=ffi.string(lib.semvc_version()).decode())
        if rc is not None:
            out.update({
                **base.rc_summary(rc, {lib.X264_RC_CQP: "cqp", lib.X264_RC_CRF: "crf",
                                       lib.X264_RC_ABR: "abr"}),
                "mb_tree": bool(rc.mb_tree), "rc_lookahead": int(rc.lookahead),
                "aq_with_map": self._aq_kept,
                **self._eff,
            })
        return out


def _relative_log_energy(frame: Frame) -> np.ndarray:
    """float32[mb_h, mb_w]: log2 of each macroblock's luma energy as x264's AQ weighs it (256 x
    its variance, at least 1; from the luma grid, the chroma left out), less the frame's mean:
    taking a multiple of it off the map changes x264's AQ between macroblocks, not the frame's
    mean QP (what CRF spends)."""
    e = np.log2(np.maximum(frame.luma_variance * 256.0, 1.0))
    return e - e.mean()
