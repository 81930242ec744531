"""libx265 (HEVC) through cffi, with a per-16x16-block QP-offset map (``quantOffsets``).

The binding (compiled on first use, cached) is ``x265_binding.py``; x265 is GPL, like x264.

x265 adds ``x265_picture.quantOffsets`` to its adaptive-quantisation offsets, so the map is
ignored when AQ is off (presets ultrafast/superfast and tune grain set aq-mode 0, tune psnr
aq-strength 0), in constant-QP and lossless mode, with hevc-aq (its own AQ, which never reads
the map), when a second pass reads stats, and it is read per 8x8 block with qg-size 8. This
backend turns AQ back on (x265's defaults, with a warning recorded in ``settings_summary()``)
and refuses the others, so a map is never silently ignored.

Quantisation groups are 16x16 by default (x265's own default is 32x32, which averages the map
over 2x2 blocks); an explicit ``qg-size`` in params is kept.

GOPs are closed by default (x265's own default is open): with ``open-gop=1`` in params x265 codes
every keyframe as a CRA picture, so ``force_idr`` then gives a CRA (a random access point with
``keyframe=True``, decodable from there on) instead of an IDR.

Usage::

    with X265Encoder(settings) as enc:
        packets = enc.encode(frame, qp_map)   # qp_map: float32[mb_h, mb_w] or None
        packets += enc.flush()
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading

import numpy as np

from ..frame import Frame
from . import base
from .base import Encoder, EncoderError, EncoderSettings, Packet
from .x265_binding import get_api, preset_names, profile_names, tune_names

log = logging.getLogger(__name__)

# keys handled by EncoderSettings; setting them through params would break the packet contract
_MANAGED = {"annexb", "repeat-headers", "fps", "input-res", "input-csp", "input-depth",
            "output-depth", "interlace", "field", "frame-dup"}
_IRAP = range(16, 22)  # BLA, IDR, CRA NAL unit types: random access points
_PARAMETER_SETS = (32, 33, 34)  # VPS, SPS, PPS
_LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO,
           "debug": logging.DEBUG, "full": logging.DEBUG}
_LINE = re.compile(rb"^x265 \[(\w+)\]: ?(.*)$")
_stderr_lock = threading.Lock()


@contextlib.contextmanager
def _x265_messages(errors: list[str]):
    """x265 3.5 has no log callback: it prints to the C stderr. Around ``x265_encoder_open``
    (where it explains a refusal) fd 2 is pointed at a temporary file; x265's lines then become
    log records (errors also go to ``errors``) and anything another thread wrote meanwhile is
    written back to stderr, late but not lost."""
    with _stderr_lock:
        try:
            if sys.stderr is not None:
                sys.stderr.flush()
            tmp = tempfile.TemporaryFile()
        except (OSError, ValueError):  # nowhere to capture to: x265 prints as it likes
            yield
            return
        with tmp:
            try:
                saved = os.dup(2)
            except OSError:  # no stderr (a daemon): nothing to capture
                yield
                return
            try:
                os.dup2(tmp.fileno(), 2)
                try:
                    yield
                finally:
                    os.dup2(saved, 2)
                    tmp.seek(0)
                    _route(tmp.read(), errors)
            finally:
                os.close(saved)


def _route(data: bytes, errors: list[str]) -> None:
    """x265's captured lines to the log (errors also to `errors`); other lines back to stderr."""
    other = []
    for line in data.splitlines(keepends=True):
        m = _LINE.match(line.rstrip(b"\r\n"))
        if m is None:
            other.append(line)
            continue
        level = _LEVELS.get(m.group(1).decode("ascii", "replace").lower(), logging.INFO)
        text = m.group(2).decode("utf-8", "replace").strip()
        if level >= logging.ERROR:
            errors.append(text)
        log.log(level, "x265: %s", text)
    if other:
        with contextlib.suppress(OSError):
            os.write(2, b"".join(other))


class X265Encoder(Encoder):
    """HEVC through libx265. Output: Annex-B access units with x265's pts/dts."""

    type_key = "x265"
    codec = "hevc"

    def __init__(self, settings: EncoderSettings) -> None:
        super().__init__(settings)
        self._param = self._eff_param = self._pic_in = self._pic_out = None
        base.check_even_size(settings, "HEVC 4:2:0 needs even sizes; crop or pad the source by one "
                             "pixel")
        self._ffi, self._lib, self._api = get_api()
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        s, ffi, lib, api = self.settings, self._ffi, self._lib, self._api
        keys = {base.norm_key(k) for k in s.params}
        self._check_preset_tune()
        p = self._param = api.param_alloc()
        if p == ffi.NULL:
            self._param = None
            raise EncoderError("x265_param_alloc failed (out of memory)")
        if api.param_default_preset(p, s.preset.encode(),
                                    s.tune.encode() if s.tune else ffi.NULL) < 0:
            raise EncoderError(f"x265 rejected preset {s.preset!r} / tune {s.tune!r}")
        p.logLevel = lib.X265_LOG_INFO if log.isEnabledFor(logging.DEBUG) else lib.X265_LOG_WARNING
        p.sourceWidth, p.sourceHeight = s.width, s.height
        p.internalCsp = lib.X265_CSP_I420
        p.fpsNum, p.fpsDenom = s.fps.numerator, s.fps.denominator
        p.bAnnexB = 1  # packets are Annex-B, like x264's; the muxers convert for mp4/mkv
        p.bRepeatHeaders = 0 if s.global_headers else 1
        # closed GOP, x264's default: under x265's open GOP every keyframe, a forced IDR too, is
        # coded as a CRA picture, so force_idr would give no IDR (params open-gop=1 still can)
        p.bOpenGOP = 0
        if s.threads:
            self._set("pools", s.threads)  # x265 sizes its frame threads from the pool
        if s.height < 720 and "lookahead-slices" not in keys:
            # what x265 does below 720p anyway, without its warning on every open
            self._set("lookahead-slices", 0)
        self._apply_rc()
        profile = base.apply_params({**base.colour_params(s.colour), **s.params}, _MANAGED,
                                     "size, fps, global_headers, 8-bit 4:2:0",
                                     self._parse, "x265")
        if "qg-size" not in keys and p.minCUSize <= 16:
            # the map's resolution: at x265's default qg-size 32 the 16x16 offsets are averaged
            # over 32x32 quantisation groups (a map of single blocks then does nothing)
            self._set("qg-size", 16)
        if profile is not None:
            base.check_profile(profile, profile_names(), "x265")
            if api.param_apply_profile(p, profile.encode()) < 0:
                raise EncoderError(f"x265 profile {profile!r} cannot be applied to these settings "
                                   "(e.g. an intra or 4:4:4 profile)")
        self._check_rc_and_aq()

        errors: list[str] = []
        with _x265_messages(errors):
            enc = api.encoder_open(p)
        if enc == ffi.NULL:
            why = "; ".join(errors) or "no reason given (see x265's messages above)"
            raise EncoderError(f"x265_encoder_open failed: {why}")
        self._enc = enc
        eff = self._eff_param = api.param_alloc()
        api.encoder_parameters(enc, eff)
        self._eff_rc = self._rc(eff)
        rc = self._eff_rc
        if rc.aq_mode == 0 or not rc.aq_strength > 0 or rc.hevc_aq or rc.qg_size == 8:
            raise EncoderError("x265 changed adaptive quantisation after validation (aq-mode "
                               f"{rc.aq_mode}, aq-strength {rc.aq_strength:g}, hevc-aq "
                               f"{rc.hevc_aq}, qg-size {rc.qg_size}); it would ignore or misread "
                               "the QP-offset map")
        # x265 reads one offset per 16x16 block of its picture, which it pads to a multiple of
        # the minimum CU size: that grid can be a block wider/taller than mb_w x mb_h.
        self._grid = (-(-(eff.sourceHeight // 2) // 8), -(-(eff.sourceWidth // 2) // 8))
        self._eff = {"threads": int(eff.frameNumThreads), "bframes": int(eff.bframes),
                     "keyint": int(eff.keyframeMax), "open_gop": bool(eff.bOpenGOP),
                     "ctu": int(eff.maxCUSize), "min_cu": int(eff.minCUSize),
                     "rc_lookahead": int(eff.lookaheadDepth)}
        self._pp_nal = ffi.new("x265_nal **")
        self._pi_nal = ffi.new("uint32_t *")
        self._headers = self._read_headers()

        # per-frame state, allocated once
        self._pic_in = api.picture_alloc()
        self._pic_out = api.picture_alloc()
        if self._pic_in == ffi.NULL or self._pic_out == ffi.NULL:
            raise EncoderError("x265_picture_alloc failed (out of memory)")
        api.picture_init(eff, self._pic_in)
        api.picture_init(eff, self._pic_out)
        self._pic_in.bitDepth = 8
        self._pic_in.colorSpace = lib.X265_CSP_I420

    # -- setup helpers

    def _check_preset_tune(self) -> None:
        s = self.settings
        base.check_preset(s.preset, preset_names(), "x265")
        if s.tune:
            tunes = tune_names()
            if s.tune not in tunes:  # x265 takes one tune, not x264's combinations
                raise EncoderError(f"unknown x265 tune {s.tune!r} (one of: {', '.join(tunes)})")

    def _parse(self, name: str, value) -> str | None:
        ffi, lib = self._ffi, self._lib
        v = None if value is None else str(value)
        ret = self._api.param_parse(self._param, str(name).encode(),
                                    ffi.NULL if v is None else v.encode())
        return base.option_error(ret, name, v, lib.X265_PARAM_BAD_NAME, lib.X265_PARAM_BAD_VALUE)

    def _set(self, name: str, value) -> None:
        err = self._parse(name, value)
        if err:
            raise EncoderError(f"invalid x265 setting: {err}")

    def _apply_rc(self) -> None:
        s = self.settings
        base.check_rate_control(s, "x265", "quantOffsets")
        for name, value in base.rate_options(s):
            self._set(name, value)
        if s.caller_idr:  # x265: keyint -1 = one GOP, no scene-cut IDRs;
            self._set("keyint", -1)  # params may still change it: the user's word is last
        if s.intra_refresh:  # keyint is then the refresh period
            self._set("intra-refresh", "1")

    def _rc(self, param=None):
        out = self._ffi.new("semvc265_rc_t *")
        self._lib.semvc265_get_rc(self._param if param is None else param, out)
        return out

    def _defaults(self) -> tuple[int, float]:
        """x265's own aq-mode and aq-strength (what a correction restores)."""
        scratch = self._api.param_alloc()
        try:
            self._api.param_default(scratch)
            rc = self._rc(scratch)
            return int(rc.aq_mode), float(rc.aq_strength)
        finally:
            self._api.param_free(scratch)

    def _check_rc_and_aq(self) -> None:
        s = self.settings
        rc = self._rc()
        if self._param.bLossless:
            raise EncoderError("lossless refused: x265 codes lossless as constant QP and ignores "
                               "quantOffsets (the QP-offset map) there; drop 'lossless'")
        base.check_quantiser(rc, self._lib.X265_RC_CQP, "x265", "quantOffsets")
        if rc.hevc_aq:
            raise EncoderError("hevc-aq refused: x265's hevc-aq replaces the adaptive "
                               "quantisation that reads quantOffsets, so the QP-offset map would "
                               "be ignored; drop 'hevc-aq'")
        if rc.stat_read:
            raise EncoderError("multi-pass refused: a pass that reads stats keeps the first "
                               "pass's quantiser offsets and ignores the QP-offset map; drop "
                               "'pass'/'stats'")
        if rc.qg_size == 8:
            raise EncoderError("qg-size=8 refused: x265 then reads one offset per 8x8 block, and "
                               "the map has one per 16x16 block; use qg-size 16, 32 or 64")
        keys = {base.norm_key(k) for k in s.params}
        preset = f"preset {s.preset!r}"
        default_mode, default_strength = self._defaults()
        if rc.aq_mode == 0:
            src = ("params aq-mode=0" if "aq-mode" in keys else
                   f"tune {s.tune!r}" if s.tune == "grain" else preset)
            self._set("aq-mode", default_mode)
            self._correct(f"aq-mode 0 (from {src}) changed to aq-mode {default_mode} (x265's "
                          "default): x265 ignores the QP-offset map with adaptive quantisation "
                          "off")
        rc = self._rc()
        if not rc.aq_strength > 0:
            src = ("params aq-strength" if "aq-strength" in keys else
                   f"tune {s.tune!r}" if s.tune == "psnr" else preset)
            self._set("aq-strength", f"{default_strength:g}")
            self._correct(f"aq-strength {rc.aq_strength:g} (from {src}) changed to "
                          f"{default_strength:g} (x265's default): x265 turns adaptive "
                          "quantisation, and with it the QP-offset map, off at strength 0")

    def _read_headers(self) -> bytes:
        """VPS, SPS and PPS (Annex-B); x265's info SEI is left out."""
        if self._api.encoder_headers(self._enc, self._pp_nal, self._pi_nal) < 0:
            raise EncoderError("x265_encoder_headers failed")
        nals = self._pp_nal[0]
        return b"".join(bytes(self._ffi.buffer(nals[i].payload, nals[i].sizeBytes))
                        for i in range(self._pi_nal[0]) if nals[i].type in _PARAMETER_SETS)

    # -- Encoder API

    @classmethod
    def available(cls) -> tuple[bool, str]:
        return base.availability(get_api)

    def _packets(self, ret: int) -> list[Packet]:
        if ret < 0:
            raise EncoderError(f"x265_encoder_encode failed (error {ret}; x265's reason is on "
                               "stderr)")
        n = self._pi_nal[0]
        if ret == 0 or n == 0:
            return []
        nals, ffi = self._pp_nal[0], self._ffi
        # copy now: the NALs are overwritten by the next call
        data = b"".join(bytes(ffi.buffer(nals[i].payload, nals[i].sizeBytes)) for i in range(n))
        first_vcl = next((int(nals[i].type) for i in range(n) if nals[i].type < 32), -1)
        o = self._pic_out
        return [Packet(data, int(o.pts), int(o.dts), first_vcl in _IRAP)]

    def _offsets(self, qp_offsets) -> np.ndarray:
        q = self._qp_map(qp_offsets)
        gh, gw = self._grid
        if (gh, gw) != q.shape:  # x265 reads gh*gw floats: extend the edge blocks
            q = np.pad(q, ((0, gh - q.shape[0]), (0, gw - q.shape[1])), mode="edge")
        return q

    def encode(self, frame: Frame, qp_offsets: np.ndarray | None = None,
               force_idr: bool = False) -> list[Packet]:
        self._check_frame(frame)
        ffi, lib = self._ffi, self._lib
        planes = self._i420_planes(frame)
        pic = self._pic_in
        for i, a in enumerate(planes):
            pic.planes[i] = ffi.cast("void *", a.ctypes.data)
            pic.stride[i] = a.strides[0]
        q = None if qp_offsets is None else self._offsets(qp_offsets)
        qbuf = ffi.NULL if q is None else ffi.from_buffer("float[]", q)
        pic.quantOffsets = qbuf
        pic.pts = base.pts_of(frame, self.settings)
        # IDR: closed, even under x265's default open GOP, so a segment decodes alone
        pic.sliceType = lib.X265_TYPE_IDR if force_idr else lib.X265_TYPE_AUTO
        try:
            ret = self._api.encoder_encode(self._enc, self._pp_nal, self._pi_nal, pic,
                                           self._pic_out)
        finally:  # x265 copied planes and offsets; drop the borrowed pointers
            pic.quantOffsets = ffi.NULL
            for i in range(3):
                pic.planes[i] = ffi.NULL
        del planes, qbuf, q
        return self._packets(ret)

    def flush(self) -> list[Packet]:
        self._require_open()
        self._flushed = True
        out: list[Packet] = []
        while True:  # x265 returns 0 once every delayed picture is out
            ret = self._api.encoder_encode(self._enc, self._pp_nal, self._pi_nal, self._ffi.NULL,
                                           self._pic_out)
            if ret == 0:
                return out
            out += self._packets(ret)

    def reconfigure(self, bitrate: int | None, crf: float) -> None:
        """Refused: libx265 does not follow a rate change while encoding (3.5 measured, the same
        code read in upstream's 4.0-4.2). ``x265_encoder_reconfig`` stores the new bit rate, VBV
        and CRF and reads them back, but it re-points the encoder at its copy of the parameters
        while the rate control keeps the struct it was opened with, so the stream stays at the
        old rate (tests/test_live_rate.py counts the bytes: identical with and without)."""
        self._require_open()
        version = self._ffi.string(self._api.version_str).decode()
        raise EncoderError(
            f"x265 {version} cannot change its rate while encoding (asked: bitrate {bitrate}, "
            f"crf {crf:g}): x265_encoder_reconfig accepts the new values but its rate control "
            "keeps the ones the encoder was opened with, so the stream would stay at the old "
            "rate; restart with the new rate, or use encoder.backend x264 to follow a link")

    def headers(self) -> bytes:
        """VPS, SPS and PPS (Annex-B, with start codes), read when the encoder opened."""
        self._require_open()
        return self._headers

    def close(self) -> None:
        api = getattr(self, "_api", None)
        if api is None:
            return
        enc = getattr(self, "_enc", None)
        if enc is not None:
            self._enc = None
            api.encoder_close(enc)
        for attr, free in (("_param", api.param_free), ("_eff_param", api.param_free),
                           ("_pic_in", api.picture_free), ("_pic_out", api.picture_free)):
            ptr = getattr(self, attr, None)
            if ptr is not None:
                setattr(self, attr, None)
                if ptr != self._ffi.NULL:
                    free(ptr)

    @property
    def weighs_reuse(self) -> bool:
        return bool(self._eff_rc.cu_tree) and self._eff["rc_lookahead"] > 0

    def settings_summary(self) -> dict:
        api, ffi, lib = self._api, self._ffi, self._lib
        rc = getattr(self, "_eff_rc", None)
        out = self._summary(codec=self.codec, x265_build=int(api.api_build_number),
                            x265_version=ffi.string(api.version_str).decode())
        if rc is not None:
            out.update({
                **base.rc_summary(rc, {lib.X265_RC_CQP: "cqp", lib.X265_RC_CRF: "crf",
                                       lib.X265_RC_ABR: "abr"}, qg_size=int(rc.qg_size)),
                "cu_tree": bool(rc.cu_tree),
                **self._eff,
            })
        return out
